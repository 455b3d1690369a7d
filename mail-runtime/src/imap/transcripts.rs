//! IMAP transcripts in memory: byte-exact requests (literals, pipelining, hostile input) go
//! through the same [`Reader`] and [`Session`] the driver uses, over a real Maildir store in a
//! temporary directory, with no socket. Every answer is checked by imap-codec's response
//! parser at the end of each test ([`Client::assert_well_formed`]).
//!
//! The small driver here does what `server.rs` does without the clocks: it sends what the
//! session buffers, passes AUTHENTICATE's line and IDLE's DONE, and lets an IDLE hear of
//! changes when the test asks ([`Client::poll`]). What needs a socket stays in
//! `tests/imap_transcripts.rs`: TLS and STARTTLS, DEFLATE, delivery over SMTP to an IDLE.
use std::sync::Arc;

use super::{
    codec::Reader,
    session::{Session, SessionInfo, Step},
};
use crate::{
    config::{ConfigHandle, Limits, ListenerProtocol},
    runtime::Runtime,
    store::Store,
};

const BOB: &str = "bob@example.test";
const ALICE: &str = "alice@example.test";

/// A runtime over a temporary store, with bob (1 GiB quota) and alice (passwords `bob-pw`,
/// `alice-pw`).
struct Server {
    runtime: Runtime,
    /// Messages delivered so far (their Message-Ids differ).
    sent: std::sync::atomic::AtomicU64,
    _tmp: tempfile::TempDir,
}

impl Server {
    fn start() -> Self {
        let tmp = tempfile::tempdir().expect("tmp");
        let mut bob = crate::testing::mailbox(BOB, "bob-pw");
        bob.quota_bytes = Some(1 << 30);
        let mailboxes = vec![bob, crate::testing::mailbox(ALICE, "alice-pw")];
        let config = crate::testing::config(
            tmp.path(),
            mailboxes,
            Limits::default(),
            ListenerProtocol::Imaps,
        );
        let runtime = Runtime::new(ConfigHandle::new(config)).expect("runtime");
        Self {
            runtime,
            sent: Default::default(),
            _tmp: tmp,
        }
    }

    fn password(&self, address: &str) -> String {
        format!("{}-pw", address.split('@').next().unwrap_or_default())
    }

    /// A session on port 993 (TLS from the start), greeting read.
    async fn connect(&self) -> Client {
        let info = SessionInfo {
            peer: "198.51.100.7".parse().expect("ip"),
            tls: true,
            tls_available: true,
        };
        let max_literal =
            u32::try_from(self.runtime.config().get().raw.limits.max_message_size).expect("u32");
        let mut session = Session::new(info, self.runtime.clone());
        session.greeting();
        let mut c = Client {
            session,
            reader: Reader::new(max_literal),
            mode: Mode::Commands,
            pending: Vec::new(),
            heard: Vec::new(),
            closed: false,
        };
        c.flush().await;
        let greeting = c.line().await;
        assert!(greeting.starts_with("* OK [CAPABILITY "), "{greeting}");
        c
    }

    async fn login(&self, user: &str) -> Client {
        let mut c = self.connect().await;
        let reply = c
            .command("L", &format!("LOGIN {user} {}", self.password(user)))
            .await;
        assert!(reply.contains("L OK [CAPABILITY"), "{reply}");
        c
    }

    /// Delivers a message from carol to `to`, as the SMTP server would.
    fn deliver(&self, to: &str, subject: &str, body: &str) {
        let raw = format!(
            "From: Carol <carol@example.net>\r\nTo: {to}\r\nSubject: {subject}\r\n\
             Date: Mon, 30 Nov 2026 10:00:00 +0000\r\n\
             Message-Id: <{}@example.net>\r\n\r\n{body}\r\n",
            self.sent.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
        );
        self.deliver_raw(to, raw.as_bytes());
    }

    fn deliver_raw(&self, to: &str, raw: &[u8]) {
        let store: &Arc<dyn Store> = self.runtime.store();
        let mut spool = store.spool().expect("spool");
        spool.write(raw).expect("spool write");
        let message = spool.finish().expect("spool finish");
        store.deliver(message, &[to.to_string()]).expect("deliver");
    }

    /// The messages in a mailbox's INBOX, as the store reads them.
    fn messages(&self, address: &str) -> Vec<String> {
        let store = &self.runtime.store();
        let inbox = store.inbox(address).expect("inbox");
        inbox
            .messages
            .iter()
            .map(|m| {
                let raw = store
                    .read(address, crate::store::INBOX, m)
                    .expect("read")
                    .expect("present");
                String::from_utf8_lossy(&raw).into_owned()
            })
            .collect()
    }
}

/// What the client's next bytes are for.
#[derive(Debug, PartialEq, Eq)]
enum Mode {
    Commands,
    Sasl,
    Idle,
}

/// One session and what it said, read like a client reads a socket.
struct Client {
    session: Session,
    reader: Reader,
    mode: Mode,
    /// Said and not yet read by the test.
    pending: Vec<u8>,
    /// Everything the session said, for the syntax check.
    heard: Vec<u8>,
    closed: bool,
}

impl Client {
    async fn flush(&mut self) {
        let mut wire: Vec<u8> = Vec::new();
        self.session.flush(&mut wire).await.expect("to memory");
        self.pending.extend_from_slice(&wire);
        self.heard.extend_from_slice(&wire);
    }

    /// Sends bytes and lets the session act on every complete command in them.
    async fn send(&mut self, bytes: &[u8]) {
        assert!(!self.closed, "the session has ended");
        self.reader.enqueue(bytes);
        loop {
            let step = match self.mode {
                Mode::Commands => {
                    let Some(input) = self.reader.next(self.session.logged_in()) else {
                        break;
                    };
                    let mut wire: Vec<u8> = Vec::new();
                    let step = self.session.run(input, &mut wire).await.expect("memory");
                    self.pending.extend_from_slice(&wire);
                    self.heard.extend_from_slice(&wire);
                    step
                }
                Mode::Sasl => match self.reader.sasl_line() {
                    None => break,
                    Some(Ok(data)) => self.session.authenticate_data(data).await,
                    Some(Err(bye)) => {
                        self.session.send(format!("{bye}\r\n"));
                        Step::Close
                    }
                },
                Mode::Idle => match self.reader.idle_done() {
                    None => break,
                    Some(done) => self.session.idle_end(done).await,
                },
            };
            self.flush().await;
            self.mode = match step {
                Step::Next => Mode::Commands,
                Step::SaslData => Mode::Sasl,
                Step::Idle => Mode::Idle,
                Step::StartTls(_) | Step::Compress => {
                    panic!("TLS and DEFLATE are tested over sockets")
                }
                Step::Close => {
                    self.closed = true;
                    break;
                }
            };
        }
    }

    /// An IDLE hears what changed meanwhile, as the driver's wait on the folder would.
    async fn poll(&mut self) {
        let changed = self
            .session
            .changes()
            .is_some_and(|rx| rx.has_changed().unwrap_or(false));
        if self.mode == Mode::Idle && changed {
            self.session.idle_changed().await;
            self.flush().await;
        }
    }

    /// One line (without literals), CRLF removed.
    async fn line(&mut self) -> String {
        let end = self
            .pending
            .windows(2)
            .position(|w| w == b"\r\n")
            .unwrap_or_else(|| {
                panic!(
                    "the session said no more; heard so far:\n{}",
                    String::from_utf8_lossy(&self.heard)
                )
            });
        let line: Vec<u8> = self.pending.drain(..end + 2).collect();
        String::from_utf8_lossy(&line[..end]).into_owned()
    }

    /// Everything up to and including the tagged response of `tag`; literals are kept inline.
    async fn until_tagged(&mut self, tag: &str) -> String {
        super::write::take_tagged(&mut self.pending, tag).unwrap_or_else(|| {
            panic!(
                "no tagged answer for {tag}; heard so far:\n{}",
                String::from_utf8_lossy(&self.heard)
            )
        })
    }

    async fn command(&mut self, tag: &str, command: &str) -> String {
        self.send(format!("{tag} {command}\r\n").as_bytes()).await;
        self.until_tagged(tag).await
    }

    /// A command whose last argument is `literal`, sent as LITERAL+.
    async fn command_with_literal(&mut self, tag: &str, command: &str, literal: &[u8]) -> String {
        let mut bytes = format!("{tag} {command} {{{}+}}\r\n", literal.len()).into_bytes();
        bytes.extend_from_slice(literal);
        bytes.extend_from_slice(b"\r\n");
        self.send(&bytes).await;
        self.until_tagged(tag).await
    }

    /// What was said and not yet read, as text (the session's answers to a hostile input).
    fn rest(&mut self) -> String {
        String::from_utf8_lossy(&std::mem::take(&mut self.pending)).into_owned()
    }

    fn assert_well_formed(&self) {
        if let Err(err) = super::write::check_responses(&self.heard) {
            panic!("{err}");
        }
    }
}

#[tokio::test]
async fn folders_list_status_and_subscriptions() {
    let server = Server::start();
    let mut c = server.login(BOB).await;

    let list = c.command("a", "LIST \"\" *").await;
    for (name, special) in [
        ("Sent", "\\Sent"),
        ("Drafts", "\\Drafts"),
        ("Trash", "\\Trash"),
        ("Junk", "\\Junk"),
        ("Archive", "\\Archive"),
    ] {
        assert!(
            list.lines()
                .any(|l| l.contains(special) && l.ends_with(&format!("\"{name}\""))),
            "{name} with {special} missing: {list}"
        );
    }
    assert!(list.contains("\"/\" \"INBOX\""), "{list}");
    let root = c.command("b", "LIST \"\" \"\"").await;
    assert!(root.contains("* LIST (\\Noselect) \"/\" \"\""), "{root}");

    assert!(
        c.command("c", "CREATE Projects/2026/")
            .await
            .contains("c OK")
    );
    let exists = c.command("d", "CREATE Projects").await;
    assert!(exists.contains("d NO [ALREADYEXISTS]"), "{exists}");
    let top = c.command("e", "LIST \"\" %").await;
    assert!(top.contains("(\\HasChildren) \"/\" \"Projects\""), "{top}");
    assert!(!top.contains("Projects/2026"), "% matched a child: {top}");
    let children = c.command("f", "LIST Projects/ *").await;
    assert!(children.contains("\"Projects/2026\""), "{children}");

    assert!(
        c.command("g", "RENAME Projects Work")
            .await
            .contains("g OK")
    );
    let renamed = c.command("h", "LIST \"\" Work*").await;
    assert!(
        renamed.contains("\"Work/2026\"") && renamed.contains("\"Work\""),
        "{renamed}"
    );
    assert!(c.command("i", "SUBSCRIBE Work").await.contains("i OK"));
    let lsub = c.command("j", "LSUB \"\" *").await;
    assert!(
        lsub.contains("\"Work\"") && lsub.contains("\"Sent\""),
        "{lsub}"
    );
    assert!(c.command("k", "UNSUBSCRIBE Work").await.contains("k OK"));
    assert!(!c.command("l", "LSUB \"\" W*").await.contains("\"Work\""));
    assert!(c.command("m", "DELETE Work/2026").await.contains("m OK"));
    let gone = c.command("n", "STATUS Work/2026 (MESSAGES)").await;
    assert!(gone.contains("n NO [NONEXISTENT]"), "{gone}");
    let inbox = c.command("o", "DELETE INBOX").await;
    assert!(inbox.contains("o NO"), "{inbox}");

    server.deliver(BOB, "one", "first body");
    let status = c
        .command(
            "p",
            "STATUS INBOX (MESSAGES UIDNEXT UIDVALIDITY UNSEEN DELETED)",
        )
        .await;
    assert!(
        status.contains("MESSAGES 1 UIDNEXT 2 UIDVALIDITY ")
            && status.contains("UNSEEN 1 DELETED 0"),
        "{status}"
    );
    let quota = c.command("q", "GETQUOTAROOT INBOX").await;
    assert!(quota.contains("* QUOTAROOT \"INBOX\" \"\""), "{quota}");
    assert!(
        quota.contains("* QUOTA \"\" (STORAGE 1 1048576)"),
        "{quota}"
    );
    assert!(
        c.command("r", "GETQUOTA \"\"")
            .await
            .contains("(STORAGE 1 1048576)")
    );
    let set = c.command("s", "SETQUOTA \"\" (STORAGE 10)").await;
    assert!(set.contains("s NO [NOPERM]"), "{set}");
    c.assert_well_formed();
}

#[tokio::test]
async fn select_fetch_store_search_and_expunge() {
    let server = Server::start();
    server.deliver(BOB, "alpha report", "quarterly numbers");
    server.deliver(BOB, "beta", "nothing to see");
    server.deliver(BOB, "gamma", "more quarterly things");
    // Another device saw them first: `\Recent` is its, the flags below are the stored ones.
    let mut other = server.login(BOB).await;
    assert!(
        other
            .command("z", "SELECT INBOX")
            .await
            .contains("* 3 RECENT")
    );
    let mut c = server.login(BOB).await;

    let select = c.command("a", "SELECT INBOX").await;
    for expected in [
        "* FLAGS (\\Answered \\Flagged \\Deleted \\Seen \\Draft)",
        "* 3 EXISTS",
        "* OK [UIDNEXT 4]",
        "* OK [UNSEEN 1]",
        "a OK [READ-WRITE]",
    ] {
        assert!(select.contains(expected), "{expected} missing: {select}");
    }

    let fast = c.command("b", "FETCH 1:* FAST").await;
    assert_eq!(
        fast.matches("FETCH (FLAGS () INTERNALDATE \"").count(),
        3,
        "{fast}"
    );
    let env = c
        .command("c", "FETCH 1 (ENVELOPE BODYSTRUCTURE RFC822.SIZE UID)")
        .await;
    assert!(env.contains("\"alpha report\""), "{env}");
    assert!(
        env.contains("((\"Carol\" NIL \"carol\" \"example.net\"))"),
        "{env}"
    );
    assert!(env.contains("BODYSTRUCTURE (\"text\" \"plain\""), "{env}");
    let peek = c
        .command(
            "d",
            "FETCH 2 (BODY.PEEK[HEADER.FIELDS (SUBJECT)] BODY.PEEK[TEXT]<0.7>)",
        )
        .await;
    assert!(
        peek.contains("BODY[HEADER.FIELDS (\"SUBJECT\")] {15}\r\nSubject: beta\r\n\r\n")
            || peek.contains("Subject: beta"),
        "{peek}"
    );
    assert!(peek.contains("BODY[TEXT]<0> {7}\nnothing"), "{peek}");
    let flags = c.command("e", "FETCH 2 FLAGS").await;
    assert!(flags.contains("FLAGS ()"), "PEEK set \\Seen: {flags}");
    let body = c.command("f", "FETCH 2 (BODY[1] BINARY.SIZE[1])").await;
    assert!(
        body.contains("FLAGS (\\Seen)"),
        "BODY[] did not set \\Seen: {body}"
    );
    assert!(body.contains("nothing to see"), "{body}");
    let rfc822 = c
        .command("g", "UID FETCH 3 (RFC822.HEADER RFC822.TEXT)")
        .await;
    assert!(
        rfc822.contains("UID 3") && rfc822.contains("Subject: gamma"),
        "{rfc822}"
    );
    let out_of_range = c.command("h", "FETCH 9 FLAGS").await;
    assert!(out_of_range.contains("h BAD"), "{out_of_range}");
    let uid_beyond = c.command("i", "UID FETCH 9:* FLAGS").await;
    assert!(uid_beyond.contains("i OK"), "{uid_beyond}");

    let store = c
        .command("j", "STORE 1 +FLAGS (\\Flagged \\Answered)")
        .await;
    assert!(
        store.contains("* 1 FETCH (FLAGS (\\Answered \\Flagged))"),
        "{store}"
    );
    let silent = c
        .command("k", "UID STORE 3 +FLAGS.SILENT (\\Deleted)")
        .await;
    assert!(!silent.contains("FETCH"), "{silent}");
    let removed = c.command("l", "STORE 1 -FLAGS (\\Answered)").await;
    assert!(removed.contains("FLAGS (\\Flagged)"), "{removed}");
    let replaced = c.command("m", "UID STORE 1 FLAGS (\\Seen)").await;
    assert!(replaced.contains("(UID 1 FLAGS (\\Seen))"), "{replaced}");

    let searches = [
        ("SEARCH ALL", "* SEARCH 1 2 3"),
        // RFC822.TEXT above set \Seen on 3, like BODY[] on 2; 1 got it from STORE.
        ("SEARCH SEEN", "* SEARCH 1 2 3"),
        ("SEARCH UNSEEN", "* SEARCH"),
        ("SEARCH FLAGGED", "* SEARCH"),
        ("SEARCH DELETED", "* SEARCH 3"),
        ("SEARCH SUBJECT alpha", "* SEARCH 1"),
        ("SEARCH BODY quarterly", "* SEARCH 1 3"),
        ("SEARCH TEXT Carol", "* SEARCH 1 2 3"),
        (
            "SEARCH FROM carol@example.net NOT SUBJECT beta",
            "* SEARCH 1 3",
        ),
        ("SEARCH OR SUBJECT beta SUBJECT gamma", "* SEARCH 2 3"),
        ("SEARCH HEADER Subject gamma", "* SEARCH 3"),
        ("SEARCH LARGER 1 SMALLER 100000", "* SEARCH 1 2 3"),
        (
            "SEARCH SINCE 1-Jan-2020 BEFORE 1-Jan-2100",
            "* SEARCH 1 2 3",
        ),
        ("SEARCH SENTSINCE 1-Jan-2020", "* SEARCH 1 2 3"),
        ("SEARCH BEFORE 1-Jan-2020", "* SEARCH"),
        ("SEARCH 2:*", "* SEARCH 2 3"),
        ("UID SEARCH UID 2:3 UNDELETED", "* SEARCH 2"),
        ("SEARCH CHARSET UTF-8 SUBJECT beta", "* SEARCH 2"),
    ];
    for (i, (query, expected)) in searches.iter().enumerate() {
        let tag = format!("s{i}");
        let reply = c.command(&tag, query).await;
        assert!(
            reply.lines().any(|l| l == *expected),
            "{query}: expected {expected:?}, got {reply}"
        );
    }
    let bad_charset = c.command("t", "SEARCH CHARSET KOI8-R ALL").await;
    assert!(bad_charset.contains("[BADCHARSET"), "{bad_charset}");

    let expunge = c.command("u", "EXPUNGE").await;
    assert!(
        expunge.contains("* 3 EXPUNGE") && expunge.contains("u OK"),
        "{expunge}"
    );
    c.command("v", "STORE 1:2 +FLAGS (\\Deleted)").await;
    let uid_expunge = c.command("w", "UID EXPUNGE 2").await;
    assert!(
        uid_expunge.contains("* 2 EXPUNGE") && !uid_expunge.contains("* 1 EXPUNGE"),
        "{uid_expunge}"
    );
    let examine = c.command("x", "EXAMINE INBOX").await;
    assert!(
        examine.contains("* 1 EXISTS") && examine.contains("x OK [READ-ONLY]"),
        "{examine}"
    );
    let read_only = c.command("y", "STORE 1 +FLAGS (\\Seen)").await;
    assert!(read_only.contains("y NO"), "{read_only}");
    assert!(c.command("z", "CLOSE").await.contains("z OK"));
    // EXAMINE + CLOSE expunges nothing.
    assert_eq!(server.messages(BOB).len(), 1);
    c.command("A", "SELECT INBOX").await;
    assert!(c.command("B", "UNSELECT").await.contains("B OK"));
    assert_eq!(server.messages(BOB).len(), 1, "UNSELECT expunged");
    c.command("C", "SELECT INBOX").await;
    assert!(c.command("D", "CLOSE").await.contains("D OK"));
    assert!(
        server.messages(BOB).is_empty(),
        "CLOSE did not expunge the \\Deleted message"
    );

    // IMAP4rev2: ESEARCH instead of SEARCH, and no RECENT on SELECT.
    c.command("E", "ENABLE IMAP4rev2").await;
    server.deliver(BOB, "delta", "x");
    let select = c.command("F", "SELECT INBOX").await;
    assert!(
        !select.contains("RECENT") && select.contains("* LIST () \"/\" \"INBOX\""),
        "{select}"
    );
    let esearch = c.command("G", "UID SEARCH ALL").await;
    assert!(
        esearch.contains("* ESEARCH (TAG \"G\") UID ALL 4"),
        "{esearch}"
    );
    c.assert_well_formed();
}

#[tokio::test]
async fn append_copy_move_with_uidplus_and_literals() {
    let server = Server::start();
    let mut c = server.login(BOB).await;

    // A synchronizing literal, sent in three writes: the command line, then the message in
    // two pieces split inside a line.
    let message = b"From: bob@example.test\r\nSubject: draft one\r\n\r\nhello there\r\n";
    c.send(
        format!(
            "a APPEND Drafts (\\Draft \\Seen) \"26-Nov-2026 10:00:00 +0000\" {{{}}}\r\n",
            message.len()
        )
        .as_bytes(),
    )
    .await;
    let go = c.line().await;
    assert!(go.starts_with("+ "), "{go}");
    c.send(&message[..20]).await;
    c.send(&message[20..]).await;
    c.send(b"\r\n").await;
    let appended = c.until_tagged("a").await;
    assert!(appended.contains("a OK [APPENDUID "), "{appended}");
    let uid_validity: u32 = appended
        .split("APPENDUID ")
        .nth(1)
        .and_then(|s| s.split(' ').next())
        .and_then(|s| s.parse().ok())
        .expect("APPENDUID validity");

    // LITERAL+: no continuation, data right behind the command line, in the same write.
    let second = b"Subject: draft two\r\n\r\nsecond\r\n";
    let mut bytes = format!("b APPEND Drafts {{{}+}}\r\n", second.len()).into_bytes();
    bytes.extend_from_slice(second);
    bytes.extend_from_slice(b"\r\n");
    c.send(&bytes).await;
    let appended = c.until_tagged("b").await;
    assert!(
        appended.contains(&format!("b OK [APPENDUID {uid_validity} 2]")),
        "{appended}"
    );

    let missing = c.command("c", "APPEND Nowhere {2+}\r\nhi").await;
    assert!(missing.contains("c NO [TRYCREATE]"), "{missing}");

    let select = c.command("d", "SELECT Drafts").await;
    assert!(select.contains("* 2 EXISTS"), "{select}");
    let fetched = c
        .command("e", "FETCH 1 (FLAGS INTERNALDATE BODY.PEEK[])")
        .await;
    assert!(
        fetched.contains("FLAGS (\\Seen \\Draft)")
            || fetched.contains("FLAGS (\\Draft \\Seen)")
            || fetched.contains("\\Seen") && fetched.contains("\\Draft"),
        "{fetched}"
    );
    assert!(
        fetched.contains("INTERNALDATE \"26-Nov-2026 10:00:00 +0000\""),
        "{fetched}"
    );
    assert!(fetched.contains("hello there"), "{fetched}");

    let copy = c.command("f", "COPY 1:2 Archive").await;
    assert!(
        copy.contains("f OK [COPYUID ") && copy.contains(" 1:2 1:2]"),
        "{copy}"
    );
    let moved = c.command("g", "UID MOVE 2 Trash").await;
    assert!(
        moved.contains("* OK [COPYUID ") && moved.contains("* 2 EXPUNGE"),
        "{moved}"
    );
    let trycreate = c.command("h", "COPY 1 Nowhere").await;
    assert!(trycreate.contains("h NO [TRYCREATE]"), "{trycreate}");
    let status = c.command("i", "STATUS Archive (MESSAGES)").await;
    assert!(status.contains("(MESSAGES 2)"), "{status}");
    let status = c.command("j", "STATUS Trash (MESSAGES)").await;
    assert!(status.contains("(MESSAGES 1)"), "{status}");
    let status = c.command("k", "STATUS Drafts (MESSAGES UIDNEXT)").await;
    assert!(status.contains("(MESSAGES 1 UIDNEXT 3)"), "{status}");
    c.assert_well_formed();
}

#[tokio::test]
async fn hostile_input_gets_bad_and_the_session_goes_on() {
    let server = Server::start();

    // Before login, literals are small: a 1 MB literal is refused before a byte of it is sent.
    let mut c = server.connect().await;
    c.send(b"a LOGIN {1000000}\r\n").await;
    let refused = c.line().await;
    assert!(refused.starts_with("a NO [TOOBIG]"), "{refused}");
    let garbage = c.command("b", "FROB the widget").await;
    assert!(garbage.contains("b BAD"), "{garbage}");
    let unbalanced = c.command("c", "LOGIN \"unterminated").await;
    assert!(unbalanced.contains("c BAD"), "{unbalanced}");
    assert!(c.command("d", "NOOP").await.contains("d OK"));

    // After login, a literal over the message size limit is refused before its data.
    let mut c = server.login(BOB).await;
    c.send(b"e APPEND INBOX {999999999}\r\n").await;
    let refused = c.line().await;
    assert!(refused.starts_with("e NO [TOOBIG]"), "{refused}");
    // A non-synchronizing literal over the limit is read, dropped and refused.
    let size = 30 * 1024 * 1024;
    let mut bytes = format!("f APPEND INBOX {{{size}+}}\r\n").into_bytes();
    bytes.resize(bytes.len() + size, b'x');
    bytes.extend_from_slice(b"\r\n");
    c.send(&bytes).await;
    let refused = c.until_tagged("f").await;
    assert!(refused.contains("f NO [TOOBIG]"), "{refused}");
    assert!(server.messages(BOB).is_empty());
    let bad_set = c.command("g", "SELECT INBOX").await;
    assert!(bad_set.contains("g OK"));
    let bad = c.command("h", "FETCH 0:x FLAGS").await;
    assert!(bad.contains("h BAD"), "{bad}");
    assert!(c.command("i", "NOOP").await.contains("i OK"));
    c.assert_well_formed();

    // A line longer than 64 KiB ends the session with BYE instead of growing a buffer.
    let mut c = server.connect().await;
    let mut long = b"j NOOP ".to_vec();
    long.resize(200 * 1024, b'a');
    c.send(&long).await;
    let ended = c.rest();
    assert!(
        ended.starts_with("* BYE [TOOBIG]"),
        "the session went on: {ended}"
    );
    assert!(c.closed, "the session went on after BYE");
}

/// Issue 15 items 13 and 14: LSUB left out the unsubscribed parent of a subscribed child (RFC
/// 3501 s6.3.9 wants it, flagged \Noselect, for `%`), and UNSELECT or SEARCH without a selected
/// folder answered NO where RFC 3691 and RFC 9051 say BAD.
#[tokio::test]
async fn lsub_shows_unsubscribed_parents_and_selected_state_commands_need_a_folder() {
    let server = Server::start();
    let mut c = server.login(BOB).await;
    assert!(c.command("c", "CREATE Work/2026").await.contains("c OK"));
    assert!(c.command("s", "SUBSCRIBE Work/2026").await.contains("s OK"));
    let _ = c.command("u", "UNSUBSCRIBE Work").await;
    let top = c.command("l", "LSUB \"\" %").await;
    assert!(top.contains("* LSUB (\\Noselect) \"/\" \"Work\""), "{top}");
    assert!(!top.contains("Work/2026"), "{top}");
    let all = c.command("a", "LSUB \"\" *").await;
    assert!(all.contains("\"Work/2026\""), "{all}");
    // Issue 15 item 8 (part): STATUS with SIZE (RFC 8438) and DELETED.
    let appended = c
        .command_with_literal(
            "p",
            "APPEND INBOX (\\Deleted)",
            b"Subject: s\r\n\r\n12345\r\n",
        )
        .await;
    assert!(appended.contains("p OK"), "{appended}");
    let status = c.command("t", "STATUS INBOX (MESSAGES SIZE DELETED)").await;
    assert!(
        status.contains("(MESSAGES 1 SIZE 21 DELETED 1)"),
        "{status}"
    );
    // A name longer than a directory name may be is refused as a name, not a storage failure.
    let long = c.command("n", &format!("CREATE {}", "x".repeat(300))).await;
    assert!(long.contains("n NO [CANNOT]"), "{long}");
    for (tag, command) in [
        ("x", "UNSELECT"),
        ("y", "SEARCH ALL"),
        ("z", "FETCH 1 FLAGS"),
    ] {
        let answer = c.command(tag, command).await;
        assert!(
            answer.contains(&format!("{tag} BAD")),
            "{command}: {answer}"
        );
    }
    c.assert_well_formed();
}

/// Issue 15 item 6: keywords (`$Junk`, `$Forwarded`, Thunderbird's tags) were dropped, and
/// PERMANENTFLAGS had no `\*`. They are kept per folder (Dovecot's `dovecot-keywords` letters),
/// shown to other sessions, searchable, and carried by COPY into a folder with other letters.
#[tokio::test]
async fn keywords_are_kept_shown_searched_and_copied() {
    let server = Server::start();
    let mut a = server.login(BOB).await;
    let mut b = server.login(BOB).await;
    assert!(a.command("c", "CREATE Tagged").await.contains("c OK"));
    // Tagged gets `work` first, so its letters differ from INBOX's.
    let appended = a
        .command_with_literal("p", "APPEND Tagged (work)", b"Subject: t\r\n\r\nx\r\n")
        .await;
    assert!(appended.contains("p OK"), "{appended}");
    let appended = a
        .command_with_literal(
            "q",
            "APPEND INBOX ($Junk \\Seen)",
            b"Subject: j\r\n\r\nx\r\n",
        )
        .await;
    assert!(appended.contains("q OK"), "{appended}");
    // Another device sees the new messages first: `\Recent` is its, not a's or b's.
    let mut claimer = server.login(BOB).await;
    assert!(
        claimer
            .command("cl", "SELECT INBOX")
            .await
            .contains("cl OK")
    );
    let selected = a.command("s", "SELECT INBOX").await;
    assert!(
        selected
            .contains("[PERMANENTFLAGS (\\Answered \\Flagged \\Deleted \\Seen \\Draft $Junk \\*)]"),
        "{selected}"
    );
    assert!(b.command("s", "SELECT INBOX").await.contains("s OK"));
    let fetched = a.command("f", "FETCH 1 FLAGS").await;
    assert!(fetched.contains("FLAGS (\\Seen $Junk)"), "{fetched}");
    let stored = a.command("t", "STORE 1 +FLAGS ($Forwarded work)").await;
    assert!(
        stored.contains("* FLAGS ("),
        "the folder's FLAGS grew: {stored}"
    );
    assert!(
        stored.contains("FLAGS (\\Seen $Junk $Forwarded work)"),
        "{stored}"
    );
    // The other session hears of both.
    let heard = b.command("n", "NOOP").await;
    assert!(heard.contains("$Forwarded"), "{heard}");
    assert!(
        heard.contains("FETCH (UID 1 FLAGS (\\Seen $Junk $Forwarded work))"),
        "{heard}"
    );
    let found = a
        .command("k", "SEARCH KEYWORD $junk UNKEYWORD nothing")
        .await;
    assert!(found.contains("* SEARCH 1"), "{found}");
    let none = a.command("u", "SEARCH UNKEYWORD $Junk").await;
    assert!(
        none.contains("* SEARCH\r") || none.contains("* SEARCH\n"),
        "{none}"
    );
    assert!(a.command("y", "COPY 1 Tagged").await.contains("y OK"));
    assert!(
        claimer
            .command("cm", "SELECT Tagged")
            .await
            .contains("cm OK")
    );
    assert!(a.command("x", "SELECT Tagged").await.contains("x OK"));
    // Order within a flag list means nothing; Tagged's own table has `work` first.
    let copied = a.command("g", "FETCH 2 FLAGS").await;
    assert!(
        copied.contains("FLAGS (\\Seen work $Junk $Forwarded)"),
        "{copied}"
    );
    let removed = a.command("r", "STORE 2 -FLAGS ($Junk)").await;
    assert!(
        removed.contains("FLAGS (\\Seen work $Forwarded)"),
        "{removed}"
    );
    // 26 keywords per folder; the 27th is refused and nothing else changes.
    let many: Vec<String> = (0..24).map(|i| format!("tag{i}")).collect();
    let more = a
        .command("m", &format!("STORE 2 +FLAGS ({})", many.join(" ")))
        .await;
    assert!(more.contains("m NO [CANNOT]"), "{more}");
    a.assert_well_formed();
    b.assert_well_formed();
}

/// The number after `key` in a response (`[HIGHESTMODSEQ 12]`, `UIDVALIDITY 3`).
fn number_after(text: &str, key: &str) -> u64 {
    let at = text
        .find(key)
        .unwrap_or_else(|| panic!("{key} missing: {text}"))
        + key.len();
    text[at..]
        .trim_start()
        .split(|c: char| !c.is_ascii_digit())
        .next()
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no number after {key}: {text}"))
}

/// Issue 15: CONDSTORE and QRESYNC (RFC 7162), the fast resync phones use. A device that was
/// away learns, in its SELECT, exactly what changed since its last HIGHESTMODSEQ (flags, new
/// mail, expunges as VANISHED) and nothing else; a conditional STORE loses to a change made
/// meanwhile; a session with QRESYNC on hears expunges as VANISHED.
#[tokio::test]
async fn condstore_and_qresync_resync_what_changed_and_nothing_else() {
    let server = Server::start();
    for n in 1..=4 {
        server.deliver(BOB, &format!("message {n}"), "body");
    }

    // The phone syncs once and goes away with (UIDVALIDITY, HIGHESTMODSEQ).
    let mut phone = server.login(BOB).await;
    let caps = phone.command("a", "CAPABILITY").await;
    assert!(
        caps.contains(" CONDSTORE") && caps.contains(" QRESYNC"),
        "{caps}"
    );
    let enabled = phone.command("b", "ENABLE QRESYNC").await;
    assert!(enabled.contains("* ENABLED QRESYNC"), "{enabled}");
    let select = phone.command("c", "SELECT INBOX").await;
    let validity = number_after(&select, "[UIDVALIDITY");
    let synced = number_after(&select, "[HIGHESTMODSEQ");
    let all = phone.command("d", "FETCH 1:* (UID FLAGS MODSEQ)").await;
    assert_eq!(all.matches(" MODSEQ (").count(), 4, "{all}");
    assert!(
        all.lines()
            .filter(|l| l.contains("MODSEQ ("))
            .all(|l| number_after(l, "MODSEQ (") <= synced),
        "{all}"
    );
    phone.assert_well_formed();
    drop(phone);

    // Meanwhile the laptop reads one, deletes one, and new mail comes.
    let mut laptop = server.login(BOB).await;
    assert!(laptop.command("e", "SELECT INBOX").await.contains("e OK"));
    assert!(
        laptop
            .command("f", "STORE 2 +FLAGS.SILENT (\\Seen)")
            .await
            .contains("f OK")
    );
    assert!(
        laptop
            .command("g", "STORE 3 +FLAGS.SILENT (\\Deleted)")
            .await
            .contains("g OK")
    );
    let expunged = laptop.command("h", "EXPUNGE").await;
    assert!(expunged.contains("* 3 EXPUNGE"), "{expunged}");
    server.deliver(BOB, "message 5", "body");
    // A conditional STORE: UID 1 is unchanged since the phone's sync, UID 2 is not.
    let conditional = laptop
        .command(
            "i",
            &format!("UID STORE 1,2 (UNCHANGEDSINCE {synced}) +FLAGS (\\Flagged)"),
        )
        .await;
    assert!(
        conditional.contains("i OK [MODIFIED 2]"),
        "UID 2 changed after {synced}: {conditional}"
    );
    assert!(
        conditional.contains("FETCH (UID 1 FLAGS (\\Flagged) MODSEQ ("),
        "{conditional}"
    );
    assert!(!conditional.contains("UID 2 FLAGS"), "{conditional}");
    laptop.assert_well_formed();

    // The phone comes back: VANISHED for the expunged UID, FETCH for UIDs 1, 2 and 5 only.
    let mut phone = server.login(BOB).await;
    assert!(phone.command("j", "ENABLE QRESYNC").await.contains("j OK"));
    let resync = phone
        .command(
            "k",
            &format!("SELECT INBOX (QRESYNC ({validity} {synced} 1:4))"),
        )
        .await;
    assert!(resync.contains("* VANISHED (EARLIER) 3\n"), "{resync}");
    let fetched: Vec<&str> = resync.lines().filter(|l| l.contains(" FETCH (")).collect();
    assert_eq!(fetched.len(), 3, "{resync}");
    for (line, expected) in fetched.iter().zip([
        "UID 1 FLAGS (\\Flagged)",
        "UID 2 FLAGS (\\Seen)",
        "UID 5 FLAGS ()",
    ]) {
        assert!(line.contains(expected), "{expected}: {resync}");
        assert!(number_after(line, "MODSEQ (") > synced, "{resync}");
    }
    let highest = number_after(&resync, "[HIGHESTMODSEQ");
    assert!(highest > synced, "{resync}");
    // The same answer by UID FETCH ... (CHANGEDSINCE ... VANISHED).
    let changed = phone
        .command(
            "l",
            &format!("UID FETCH 1:* (FLAGS) (CHANGEDSINCE {synced} VANISHED)"),
        )
        .await;
    assert!(changed.contains("* VANISHED (EARLIER) 3\n"), "{changed}");
    assert_eq!(changed.matches(" FETCH (").count(), 3, "{changed}");
    let nothing = phone
        .command("m", &format!("FETCH 1:* (FLAGS) (CHANGEDSINCE {highest})"))
        .await;
    assert!(!nothing.contains(" FETCH ("), "{nothing}");

    // Live: the laptop's changes reach the phone with MODSEQ, its expunge as VANISHED.
    assert!(
        laptop
            .command("n", "UID STORE 1 -FLAGS (\\Flagged)")
            .await
            .contains("n OK")
    );
    assert!(
        laptop
            .command("o", "UID STORE 4 +FLAGS (\\Deleted)")
            .await
            .contains("o OK")
    );
    assert!(laptop.command("p", "EXPUNGE").await.contains("p OK"));
    let heard = phone.command("q", "NOOP").await;
    assert!(heard.contains("* VANISHED 4\n"), "{heard}");
    assert!(!heard.contains("EXPUNGE"), "{heard}");
    assert!(heard.contains("FETCH (UID 1 FLAGS () MODSEQ ("), "{heard}");
    let latest = number_after(
        heard.lines().find(|l| l.contains("UID 1")).unwrap_or(""),
        "MODSEQ (",
    );
    let found = phone.command("r", &format!("SEARCH MODSEQ {latest}")).await;
    assert!(
        found.contains(&format!("* SEARCH 1 (MODSEQ {latest})")),
        "{found}"
    );
    let status = phone
        .command("s", "STATUS INBOX (HIGHESTMODSEQ MESSAGES)")
        .await;
    assert!(number_after(&status, "HIGHESTMODSEQ") > latest, "{status}");

    // A cache for another UIDVALIDITY gets a plain SELECT; the closed folder is marked.
    let stale = phone
        .command("t", "SELECT INBOX (QRESYNC (1 1 1:10))")
        .await;
    assert!(stale.contains("* OK [CLOSED]"), "{stale}");
    assert!(
        !stale.contains("VANISHED") && !stale.contains(" FETCH ("),
        "{stale}"
    );
    phone.assert_well_formed();

    // QRESYNC in SELECT without ENABLE is a protocol error; CONDSTORE in SELECT turns it on.
    let mut other = server.login(BOB).await;
    let refused = other
        .command("u", &format!("SELECT INBOX (QRESYNC ({validity} 1))"))
        .await;
    assert!(refused.contains("u BAD"), "{refused}");
    let select = other.command("v", "EXAMINE INBOX (CONDSTORE)").await;
    assert!(select.contains("[HIGHESTMODSEQ"), "{select}");
    let flags = other.command("w", "FETCH 1 (FLAGS)").await;
    assert!(!flags.contains("MODSEQ"), "asked for FLAGS only: {flags}");
    other.assert_well_formed();
}

/// Issue 15 item 7: `\Recent` was never set and SEARCH RECENT / NEW were always empty. A message
/// is `\Recent` in exactly one session: the first read-write one to see it, at SELECT or when it
/// arrives while selected (RFC 3501 s2.3.2); EXAMINE shows what nobody claimed and claims
/// nothing; IMAP4rev2 shows none of it.
#[tokio::test]
async fn recent_belongs_to_the_first_session_that_sees_a_message() {
    let server = Server::start();
    server.deliver(BOB, "one", "x");
    server.deliver(BOB, "two", "x");

    let mut a = server.login(BOB).await;
    let status = a.command("a", "STATUS INBOX (RECENT MESSAGES)").await;
    assert!(status.contains("RECENT 2"), "{status}");
    let select = a.command("b", "SELECT INBOX").await;
    assert!(select.contains("* 2 RECENT"), "{select}");
    let flags = a.command("c", "FETCH 1:* FLAGS").await;
    assert_eq!(flags.matches("FLAGS (\\Recent)").count(), 2, "{flags}");
    let stored = a.command("d", "STORE 1 +FLAGS (\\Seen)").await;
    assert!(stored.contains("FLAGS (\\Seen \\Recent)"), "{stored}");
    assert!(
        a.command("e", "SEARCH RECENT")
            .await
            .contains("* SEARCH 1 2")
    );
    let new = a.command("f", "SEARCH NEW").await;
    assert!(new.contains("* SEARCH 2\n"), "{new}");
    let old = a.command("g", "SEARCH OLD").await;
    assert!(old.contains("* SEARCH\n"), "{old}");

    // Another session: nothing is recent for it, and nothing is left to claim.
    let mut b = server.login(BOB).await;
    let status = b.command("h", "STATUS INBOX (RECENT)").await;
    assert!(status.contains("RECENT 0"), "{status}");
    let select = b.command("i", "SELECT INBOX").await;
    assert!(select.contains("* 0 RECENT"), "{select}");
    let flags = b.command("j", "FETCH 1:* FLAGS").await;
    assert!(!flags.contains("\\Recent"), "{flags}");
    let old = b.command("k", "SEARCH OLD").await;
    assert!(old.contains("* SEARCH 1 2"), "{old}");

    // Mail arriving while both have INBOX selected is recent in the first to hear of it.
    server.deliver(BOB, "three", "x");
    let heard = a.command("l", "NOOP").await;
    assert!(
        heard.contains("* 3 EXISTS") && heard.contains("* 3 RECENT"),
        "{heard}"
    );
    let heard = b.command("m", "NOOP").await;
    assert!(
        heard.contains("* 3 EXISTS") && heard.contains("* 0 RECENT"),
        "{heard}"
    );
    let flags = a.command("n", "FETCH 3 FLAGS").await;
    assert!(flags.contains("FLAGS (\\Recent)"), "{flags}");

    // EXAMINE shows what nobody claimed and leaves it for the next SELECT.
    let mut c = server.login(BOB).await;
    assert!(c.command("o", "UNSELECT").await.contains("o BAD"));
    let mut d = server.login(BOB).await;
    server.deliver(BOB, "four", "x");
    let examine = c.command("p", "EXAMINE INBOX").await;
    assert!(examine.contains("* 1 RECENT"), "{examine}");
    let select = d.command("q", "SELECT INBOX").await;
    assert!(select.contains("* 1 RECENT"), "{select}");

    // IMAP4rev2 has no \Recent, and claims nothing from IMAP4rev1 clients.
    let mut e = server.login(BOB).await;
    assert!(e.command("r", "ENABLE IMAP4rev2").await.contains("r OK"));
    server.deliver(BOB, "five", "x");
    let select = e.command("s", "SELECT INBOX").await;
    assert!(!select.contains("RECENT"), "{select}");
    let flags = e.command("t", "FETCH 1:* FLAGS").await;
    assert!(!flags.contains("\\Recent"), "{flags}");
    for (tag, command) in [("u", "SEARCH RECENT"), ("v", "STATUS INBOX (RECENT)")] {
        let refused = e.command(tag, command).await;
        assert!(refused.contains(&format!("{tag} BAD")), "{refused}");
    }
    let mut f = server.login(BOB).await;
    let select = f.command("w", "SELECT INBOX").await;
    assert!(
        select.contains("* 1 RECENT"),
        "five is still unclaimed: {select}"
    );
    // A message that arrives with flags (a client's copy in Sent, a COPY) is recent too.
    let appended = f
        .command_with_literal("x", "APPEND INBOX (\\Seen)", b"Subject: six\r\n\r\nx\r\n")
        .await;
    assert!(
        appended.contains("* 2 RECENT") && appended.contains("x OK"),
        "{appended}"
    );
    assert!(f.command("y", "CREATE Copies").await.contains("y OK"));
    assert!(f.command("z", "COPY 1:* Copies").await.contains("z OK"));
    let status = f.command("za", "STATUS Copies (MESSAGES RECENT)").await;
    assert!(status.contains("RECENT 6"), "{status}");
    for client in [&a, &b, &c, &d, &e, &f] {
        client.assert_well_formed();
    }
}

/// Issue 15 item 8: `SEARCH RETURN (...)` (RFC 4731, IMAP4rev2) was refused with BAD although
/// ESEARCH is advertised. MIN, MAX, ALL and COUNT come back as asked, in IMAP4rev1 and rev2,
/// with UID and MODSEQ; an option the server does not offer is a clear BAD.
#[tokio::test]
async fn search_return_options_answer_esearch() {
    let server = Server::start();
    for n in 1..=5 {
        server.deliver(BOB, &format!("report {n}"), "quarterly");
    }
    let mut c = server.login(BOB).await;
    assert!(c.command("a", "SELECT INBOX").await.contains("a OK"));
    assert!(
        c.command("b", "STORE 2,4 +FLAGS (\\Seen)")
            .await
            .contains("b OK")
    );
    let all = c.command("c", "SEARCH RETURN (ALL) ALL").await;
    assert!(all.contains("* ESEARCH (TAG \"c\") ALL 1:5\n"), "{all}");
    let unseen = c.command("d", "SEARCH RETURN (MIN MAX COUNT) UNSEEN").await;
    assert!(
        unseen.contains("* ESEARCH (TAG \"d\") MIN 1 MAX 5 COUNT 3\n"),
        "{unseen}"
    );
    let by_uid = c.command("e", "UID SEARCH RETURN () SEEN").await;
    assert!(
        by_uid.contains("* ESEARCH (TAG \"e\") UID ALL 2,4\n"),
        "{by_uid}"
    );
    let none = c
        .command("f", "SEARCH RETURN (MIN COUNT) SUBJECT {7+}\r\nnothing")
        .await;
    assert!(none.contains("* ESEARCH (TAG \"f\") COUNT 0\n"), "{none}");
    let modseq = c.command("g", "SEARCH RETURN (COUNT) MODSEQ 1").await;
    assert!(
        modseq.contains("* ESEARCH (TAG \"g\") COUNT 5 MODSEQ "),
        "{modseq}"
    );
    // With MIN (or MAX) alone, the MODSEQ is the returned message's (RFC 4731 s3.2).
    let first = c.command("ga", "FETCH 1 (MODSEQ)").await;
    let at = first.find("MODSEQ (").expect("MODSEQ") + 8;
    let first_modseq: String = first[at..]
        .chars()
        .take_while(char::is_ascii_digit)
        .collect();
    let min = c.command("gb", "SEARCH RETURN (MIN) MODSEQ 1").await;
    assert!(
        min.contains(&format!("MIN 1 MODSEQ {first_modseq}\n")),
        "{min}"
    );
    let save = c.command("h", "SEARCH RETURN (SAVE) ALL").await;
    assert!(save.contains("h BAD"), "{save}");
    // The plain form is unchanged, and RETURN options do not leak into the next SEARCH.
    let plain = c.command("i", "SEARCH SEEN").await;
    assert!(plain.contains("* SEARCH 2 4\n"), "{plain}");
    assert!(c.command("j", "ENABLE IMAP4rev2").await.contains("j OK"));
    let rev2 = c.command("k", "SEARCH RETURN (MAX) ALL").await;
    assert!(rev2.contains("* ESEARCH (TAG \"k\") MAX 5\n"), "{rev2}");
    c.assert_well_formed();
}

/// What an outside review of CONDSTORE/QRESYNC found: FETCH answers caused by STORE or by an
/// implicit `\Seen` lacked UID or MODSEQ (RFC 7162 s3.2.4); `1:*` in VANISHED missed UIDs
/// expunged above the last message; a conditional STORE on a message another session expunged
/// answered OK; mod-sequences above 63 bits were taken.
#[tokio::test]
async fn condstore_answers_carry_uid_and_modseq_and_refuse_what_they_must() {
    let server = Server::start();
    for n in 1..=4 {
        server.deliver(BOB, &format!("message {n}"), "body");
    }
    let mut a = server.login(BOB).await;
    let mut b = server.login(BOB).await;
    assert!(a.command("a", "ENABLE QRESYNC").await.contains("a OK"));
    let select = a.command("b", "SELECT INBOX").await;
    let synced = number_after(&select, "[HIGHESTMODSEQ");
    assert!(b.command("c", "SELECT INBOX").await.contains("c OK"));

    let stored = a.command("d", "STORE 1 +FLAGS (\\Seen)").await;
    assert!(
        stored.contains("* 1 FETCH (UID 1 FLAGS (\\Seen \\Recent) MODSEQ ("),
        "{stored}"
    );
    let silent = a.command("e", "STORE 2 +FLAGS.SILENT (\\Flagged)").await;
    assert!(silent.contains("* 2 FETCH (UID 2 MODSEQ ("), "{silent}");
    let read = a.command("f", "FETCH 3 (BODY[TEXT])").await;
    let line = read
        .lines()
        .find(|l| l.starts_with("* 3 FETCH"))
        .unwrap_or("");
    assert!(
        line.contains("UID 3") && read.contains("MODSEQ ("),
        "implicit \\Seen: {read}"
    );

    // The last message goes: `1:*` still reports it.
    assert!(
        b.command("g", "UID STORE 4 +FLAGS.SILENT (\\Deleted)")
            .await
            .contains("g OK")
    );
    assert!(b.command("h", "EXPUNGE").await.contains("h OK"));
    let changed = a
        .command(
            "i",
            &format!("UID FETCH 1:* (FLAGS) (CHANGEDSINCE {synced} VANISHED)"),
        )
        .await;
    assert!(changed.contains("VANISHED 4\n"), "{changed}");

    // A conditional STORE on a message another session expunged meanwhile: NO [MODIFIED].
    assert!(
        b.command("j", "UID STORE 3 +FLAGS.SILENT (\\Deleted)")
            .await
            .contains("j OK")
    );
    assert!(b.command("k", "EXPUNGE").await.contains("k OK"));
    let conditional = a
        .command(
            "l",
            "UID STORE 3 (UNCHANGEDSINCE 9999999) +FLAGS (\\Answered)",
        )
        .await;
    assert!(conditional.contains("l NO [MODIFIED 3]"), "{conditional}");

    for (tag, command) in [
        (
            "m",
            "UID FETCH 1:* (FLAGS) (CHANGEDSINCE 9223372036854775808)",
        ),
        (
            "n",
            "UID STORE 1 (UNCHANGEDSINCE 9223372036854775808) +FLAGS (\\Seen)",
        ),
        ("o", "SEARCH MODSEQ 9223372036854775808"),
    ] {
        let refused = a.command(tag, command).await;
        assert!(refused.contains(&format!("{tag} BAD")), "{refused}");
    }
    let twice = a.command("p", "ENABLE CONDSTORE CONDSTORE").await;
    assert!(twice.contains("* ENABLED CONDSTORE\n"), "{twice}");
    a.assert_well_formed();
    b.assert_well_formed();
}

/// Issue 15: SORT and THREAD (RFC 5256), which webmail clients list folders with; the answers'
/// syntax is checked by imap-codec's response parser.
#[tokio::test]
async fn sort_and_thread_order_a_folder_as_webmail_asks() {
    let server = Server::start();
    let mut c = server.login(BOB).await;
    let messages = [
        (
            "<a@x>",
            "",
            "topic",
            "Thu, 1 Jan 2026 10:00:00 +0000",
            "Zed <zed@x.test>",
        ),
        (
            "<b@x>",
            "References: <a@x>\r\n",
            "Re: topic",
            "Fri, 2 Jan 2026 10:00:00 +0000",
            "Amy <amy@x.test>",
        ),
        (
            "<c@x>",
            "In-Reply-To: <b@x>\r\n",
            "RE: topic",
            "Sat, 3 Jan 2026 10:00:00 +0000",
            "bob@x.test",
        ),
        (
            "<d@x>",
            "",
            "other",
            "Mon, 1 Dec 2025 10:00:00 +0000",
            "Carl <carl@x.test>",
        ),
    ];
    for (n, (id, refs, subject, date, from)) in messages.iter().enumerate() {
        let body = format!(
            "Message-ID: {id}\r\n{refs}Subject: {subject}\r\nDate: {date}\r\nFrom: {from}\r\n\r\n{}\r\n",
            "x".repeat(100 * (4 - n))
        );
        let appended = c
            .command_with_literal(
                &format!("a{n}"),
                &format!("APPEND INBOX () \"1{n}-Jan-2026 10:00:00 +0000\""),
                body.as_bytes(),
            )
            .await;
        assert!(appended.contains(&format!("a{n} OK")), "{appended}");
    }
    assert!(c.command("s", "SELECT INBOX").await.contains("s OK"));
    let caps = c.command("k", "CAPABILITY").await;
    assert!(
        caps.contains(" SORT ") && caps.contains("THREAD=REFERENCES"),
        "{caps}"
    );
    for (tag, command, expected) in [
        ("b", "SORT (DATE) UTF-8 ALL", "* SORT 4 1 2 3\n"),
        ("c", "SORT (REVERSE ARRIVAL) UTF-8 ALL", "* SORT 4 3 2 1\n"),
        ("d", "SORT (FROM) UTF-8 ALL", "* SORT 2 3 4 1\n"),
        ("e", "SORT (DISPLAYFROM) UTF-8 ALL", "* SORT 2 3 4 1\n"),
        (
            "f",
            "SORT (SUBJECT REVERSE DATE) UTF-8 ALL",
            "* SORT 4 3 2 1\n",
        ),
        (
            "g",
            "SORT (SIZE) US-ASCII NOT SUBJECT other",
            "* SORT 3 2 1\n",
        ),
        ("h", "UID SORT (DATE) UTF-8 SEEN", "* SORT\n"),
        ("i", "THREAD REFERENCES UTF-8 ALL", "* THREAD (4)(1 2 3)\n"),
        (
            "j",
            "THREAD ORDEREDSUBJECT UTF-8 ALL",
            "* THREAD (4)(1 (2)(3))\n",
        ),
        (
            "l",
            "UID THREAD REFERENCES UTF-8 SUBJECT topic",
            "* THREAD (1 2 3)\n",
        ),
        (
            "la",
            "SORT (DATE) UTF-8 MODSEQ 1",
            "* SORT 4 1 2 3 (MODSEQ ",
        ),
    ] {
        let answer = c.command(tag, command).await;
        assert!(
            answer.contains(expected) && answer.contains(&format!("{tag} OK")),
            "{command}: {answer}"
        );
    }
    let unknown = c.command("m", "THREAD FOO UTF-8 ALL").await;
    assert!(unknown.contains("m BAD"), "{unknown}");
    let charset = c.command("n", "SORT (DATE) KOI8-R ALL").await;
    assert!(charset.contains("n NO [BADCHARSET"), "{charset}");
    c.assert_well_formed();
}

/// Issue 15 item 8: LIST-EXTENDED (RFC 5258) and LIST-STATUS (RFC 5819), part of IMAP4rev2,
/// were refused with BAD: selection options, several patterns, RETURN (SUBSCRIBED SPECIAL-USE
/// STATUS (...)), CHILDINFO for RECURSIVEMATCH.
#[tokio::test]
async fn extended_list_selects_returns_and_reports_status() {
    let server = Server::start();
    server.deliver(BOB, "one", "x");
    server.deliver(BOB, "two", "x");
    let mut c = server.login(BOB).await;
    for (tag, command) in [
        ("a", "CREATE Work/2026"),
        ("b", "SUBSCRIBE Work/2026"),
        ("c", "SUBSCRIBE Gone"),
        ("d", "SELECT INBOX"),
        ("e", "STORE 1 +FLAGS (\\Seen)"),
        ("f", "UNSELECT"),
    ] {
        let done = c.command(tag, command).await;
        assert!(done.contains(&format!("{tag} OK")), "{command}: {done}");
    }
    let caps = c.command("g", "CAPABILITY").await;
    assert!(
        caps.contains("LIST-EXTENDED") && caps.contains("LIST-STATUS"),
        "{caps}"
    );

    let subscribed = c.command("h", "LIST (SUBSCRIBED) \"\" \"*\"").await;
    for line in [
        "* LIST (\\HasNoChildren \\Subscribed) \"/\" \"Work/2026\"",
        "* LIST (\\NonExistent \\Subscribed) \"/\" \"Gone\"",
        "* LIST (\\HasNoChildren \\Subscribed \\Sent) \"/\" \"Sent\"",
    ] {
        assert!(subscribed.contains(line), "{line}: {subscribed}");
    }
    assert!(!subscribed.contains("\"Work\"\n"), "{subscribed}");

    let recursive = c
        .command("i", "LIST (SUBSCRIBED RECURSIVEMATCH) \"\" \"%\"")
        .await;
    assert!(
        recursive
            .contains("* LIST (\\HasChildren) \"/\" \"Work\" (\"CHILDINFO\" (\"SUBSCRIBED\"))"),
        "{recursive}"
    );

    let special = c.command("j", "LIST (SPECIAL-USE) \"\" \"*\"").await;
    assert!(special.contains("\\Trash) \"/\" \"Trash\""), "{special}");
    assert!(
        !special.contains("\"INBOX\"") && !special.contains("\"Work"),
        "{special}"
    );

    let status = c
        .command(
            "k",
            "LIST \"\" (\"INBOX\" \"Work/%\") RETURN (SUBSCRIBED STATUS (MESSAGES UNSEEN))",
        )
        .await;
    for line in [
        "* LIST (\\HasNoChildren \\Subscribed) \"/\" \"INBOX\"\n* STATUS \"INBOX\" (MESSAGES 2 UNSEEN 1)",
        "* LIST (\\HasNoChildren \\Subscribed) \"/\" \"Work/2026\"\n* STATUS \"Work/2026\" (MESSAGES 0 UNSEEN 0)",
    ] {
        assert!(status.contains(line), "{line}: {status}");
    }
    assert!(!status.contains("\"Sent\""), "{status}");

    let refused = c.command("l", "LIST (FOO) \"\" \"*\"").await;
    assert!(refused.contains("l BAD"), "{refused}");
    let refused = c.command("m", "LIST (RECURSIVEMATCH) \"\" \"*\"").await;
    assert!(refused.contains("m BAD"), "{refused}");

    // What the compliance suite sent after ENABLE IMAP4rev2.
    assert!(c.command("n", "ENABLE IMAP4rev2").await.contains("n OK"));
    let rev2 = c
        .command(
            "o",
            "LIST \"\" \"*\" RETURN (SPECIAL-USE STATUS (MESSAGES SIZE DELETED))",
        )
        .await;
    assert!(
        rev2.contains("* STATUS \"INBOX\" (MESSAGES 2 SIZE ") && rev2.contains("o OK"),
        "{rev2}"
    );
    let plain = c.command("p", "STATUS INBOX (MESSAGES SIZE DELETED)").await;
    assert!(
        plain.contains("DELETED 0)") && plain.contains("p OK"),
        "{plain}"
    );
    let basic = c.command("q", "LIST \"\" \"%\"").await;
    assert!(
        basic.contains("\"Work\"") && basic.contains("q OK"),
        "{basic}"
    );
    c.assert_well_formed();
}

/// Header SEARCHes are answered from a cache of the fields asked before: a second SEARCH finds
/// what the first found, new mail is found too, and a folder deleted and made again (a new
/// UIDVALIDITY, the same UIDs) never answers with the old messages' fields.
#[tokio::test]
async fn cached_header_searches_follow_the_folder() {
    let server = Server::start();
    let mut c = server.login(BOB).await;
    assert!(c.command("a", "CREATE Cached").await.contains("a OK"));
    let append =
        |subject: &str| format!("Subject: {subject}\r\nFrom: carol@example.net\r\n\r\nx\r\n");
    for (n, subject) in ["needle one", "hay", "needle two"].iter().enumerate() {
        let done = c
            .command_with_literal(
                &format!("b{n}"),
                "APPEND Cached",
                append(subject).as_bytes(),
            )
            .await;
        assert!(done.contains(&format!("b{n} OK")), "{done}");
    }
    assert!(c.command("c", "SELECT Cached").await.contains("c OK"));
    for tag in ["d", "e"] {
        let found = c.command(tag, "SEARCH SUBJECT needle").await;
        assert!(found.contains("* SEARCH 1 3\n"), "{found}");
    }
    let done = c
        .command_with_literal("f", "APPEND Cached", append("needle three").as_bytes())
        .await;
    assert!(done.contains("f OK"), "{done}");
    let found = c.command("g", "SEARCH SUBJECT needle NOT FROM dave").await;
    assert!(found.contains("* SEARCH 1 3 4\n"), "{found}");

    assert!(c.command("h", "UNSELECT").await.contains("h OK"));
    assert!(c.command("i", "DELETE Cached").await.contains("i OK"));
    assert!(c.command("j", "CREATE Cached").await.contains("j OK"));
    for (n, subject) in ["hay", "needle again"].iter().enumerate() {
        let done = c
            .command_with_literal(
                &format!("k{n}"),
                "APPEND Cached",
                append(subject).as_bytes(),
            )
            .await;
        assert!(done.contains(&format!("k{n} OK")), "{done}");
    }
    assert!(c.command("l", "SELECT Cached").await.contains("l OK"));
    let found = c.command("m", "SEARCH SUBJECT needle").await;
    assert!(found.contains("* SEARCH 2\n"), "{found}");
    c.assert_well_formed();
}

/// The steps the driver takes for a session: AUTHENTICATE's continuation line (and its
/// cancellation and bound), IDLE's wait and DONE, pipelined commands answered in order.
#[tokio::test]
async fn continuations_idle_and_pipelining_go_through_the_driver_steps() {
    use base64::Engine as _;
    let server = Server::start();
    let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);

    // AUTHENTICATE PLAIN without an initial response: `+ `, then the line.
    let mut c = server.connect().await;
    c.send(b"a AUTHENTICATE PLAIN\r\n").await;
    assert_eq!(c.line().await, "+ ");
    c.send(format!("{}\r\n", b64("\0bob@example.test\0bob-pw")).as_bytes())
        .await;
    let ok = c.until_tagged("a").await;
    assert!(ok.starts_with("a OK [CAPABILITY "), "{ok}");

    // A cancelled exchange (`*`) is BAD, and the session goes on unauthenticated.
    let mut c = server.connect().await;
    c.send(b"b AUTHENTICATE PLAIN\r\n").await;
    assert_eq!(c.line().await, "+ ");
    c.send(b"*\r\n").await;
    assert!(c.until_tagged("b").await.contains("b BAD"));
    assert!(c.command("c", "SELECT INBOX").await.contains("c NO"));
    // A response line over 8 KiB ends the session instead of growing a buffer.
    c.send(b"d AUTHENTICATE PLAIN\r\n").await;
    assert_eq!(c.line().await, "+ ");
    c.send(&vec![b'A'; 20 * 1024]).await;
    assert!(c.rest().starts_with("* BYE [TOOBIG]"));
    assert!(c.closed);
    // Under the limit, in pieces, it is read whole (and refused as PLAIN, not as too long).
    let mut c = server.connect().await;
    c.send(b"d2 AUTHENTICATE PLAIN\r\n").await;
    assert_eq!(c.line().await, "+ ");
    for _ in 0..5 {
        c.send(&[b'A'; 1400]).await;
    }
    c.send(b"\r\n").await;
    let answer = c.until_tagged("d2").await;
    assert!(
        answer.starts_with("d2 NO") || answer.starts_with("d2 BAD"),
        "{answer}"
    );

    // Three commands in one write: three answers, in order.
    let mut c = server.login(BOB).await;
    c.send(b"e NOOP\r\nf SELECT INBOX\r\ng NOOP\r\n").await;
    let all = c.until_tagged("g").await;
    let (e, f, g) = (
        all.find("e OK").expect("e"),
        all.find("f OK").expect("f"),
        all.find("g OK").expect("g"),
    );
    assert!(e < f && f < g, "{all}");

    // IDLE hears a delivery, DONE ends it with the tagged OK.
    c.send(b"h IDLE\r\n").await;
    assert_eq!(c.line().await, "+ idling");
    server.deliver(BOB, "while idling", "x");
    c.poll().await;
    assert_eq!(c.line().await, "* 1 EXISTS");
    assert_eq!(c.line().await, "* 1 RECENT");
    c.send(b"DONE\r\n").await;
    assert_eq!(c.line().await, "h OK IDLE terminated");
    // Anything else ends it as BAD, and the next command runs.
    c.send(b"i IDLE\r\n").await;
    assert_eq!(c.line().await, "+ idling");
    c.send(b"j NOOP\r\n").await;
    assert_eq!(c.line().await, "i BAD expected DONE");
    assert!(c.command("k", "NOOP").await.contains("k OK"));
    c.assert_well_formed();
}

/// Folder names (from a review of issue 15): an IMAP4rev1 client names folders in modified
/// UTF-7 and an IMAP4rev2 client in UTF-8, and both must reach the same folder; the store keeps
/// modified UTF-7 on disk, as Dovecot's Maildir++ does.
#[tokio::test]
async fn folder_names_are_modified_utf7_to_imap4rev1_and_utf8_to_imap4rev2() {
    let server = Server::start();
    let mut old = server.login(BOB).await;
    let mut new = server.login(BOB).await;
    assert!(new.command("a", "ENABLE IMAP4rev2").await.contains("a OK"));

    // RFC 3501's example, created by the old client, listed in UTF-8 to the new one.
    let created = old.command("b", "CREATE \"&ZeVnLIqe-\"").await;
    assert!(created.contains("b OK"), "{created}");
    let list = new.command("c", "LIST \"\" *").await;
    // Not printable ASCII: a literal (RFC 9051 allows it quoted as well).
    assert!(
        list.contains("\"/\" {9}\n\u{65e5}\u{672c}\u{8a9e}"),
        "{list}"
    );
    assert!(!list.contains("&ZeVnLIqe-"), "{list}");

    // Created in UTF-8 by the new client (quoted, and as a literal), seen in modified UTF-7 by
    // the old one; a pattern in UTF-8 matches.
    let created = new.command("d", "CREATE \"Gr\u{fc}\u{df}e\"").await;
    assert!(created.contains("d OK"), "{created}");
    let created = new
        .command_with_literal("e", "CREATE", "\u{e9}t\u{e9}/Juin".as_bytes())
        .await;
    assert!(created.contains("e OK"), "{created}");
    let list = old.command("f", "LIST \"\" *").await;
    for name in ["\"Gr&APwA3w-e\"", "\"&AOk-t&AOk-\"", "\"&AOk-t&AOk-/Juin\""] {
        assert!(list.contains(name), "{name} missing: {list}");
    }
    let list = new.command("g", "LIST \"\" \"\u{e9}t\u{e9}/%\"").await;
    assert!(list.contains("{10}\n\u{e9}t\u{e9}/Juin"), "{list}");

    // One folder under both names: APPENDed to by one client, counted by the other.
    let appended = new
        .command_with_literal(
            "h",
            "APPEND \"Gr\u{fc}\u{df}e\"",
            b"Subject: x\r\n\r\nx\r\n",
        )
        .await;
    assert!(appended.contains("h OK"), "{appended}");
    let status = old.command("i", "STATUS \"Gr&APwA3w-e\" (MESSAGES)").await;
    assert!(
        status.contains("* STATUS \"Gr&APwA3w-e\" (MESSAGES 1)"),
        "{status}"
    );
    let status = new
        .command("j", "STATUS \"Gr\u{fc}\u{df}e\" (MESSAGES)")
        .await;
    assert!(
        status.contains("* STATUS {7}\nGr\u{fc}\u{df}e (MESSAGES 1)"),
        "{status}"
    );
    let selected = new.command("k", "SELECT \"Gr\u{fc}\u{df}e\"").await;
    assert!(
        selected.contains("* LIST () \"/\" {7}\nGr\u{fc}\u{df}e"),
        "{selected}"
    );

    // The old client may not use what is not modified UTF-7: raw UTF-8, a bare `&`. A `&`
    // spelled `&-` is one.
    let raw = old
        .command_with_literal("l", "CREATE", "Gr\u{fc}\u{df}e2".as_bytes())
        .await;
    assert!(raw.contains("l NO [CANNOT]"), "{raw}");
    let bare = old.command("m", "CREATE \"Tom & Jerry\"").await;
    assert!(bare.contains("m NO [CANNOT]"), "{bare}");
    assert!(
        old.command("n", "CREATE \"Tom &- Jerry\"")
            .await
            .contains("n OK")
    );
    let list = new.command("o", "LIST \"\" Tom*").await;
    assert!(list.contains("\"Tom & Jerry\""), "{list}");

    // No control characters in either spelling.
    let control = new
        .command_with_literal("p", "CREATE", "x\u{1}y".as_bytes())
        .await;
    assert!(control.contains("p NO [CANNOT]"), "{control}");
    let control = old.command("q", "CREATE \"&AAE-\"").await;
    assert!(control.contains("q NO [CANNOT]"), "{control}");

    // A folder made before names were checked keeps its exact spelling as a way in.
    server
        .runtime
        .store()
        .create_folder(BOB, "Old & Raw")
        .expect("a folder as an earlier version made it");
    for c in [&mut old, &mut new] {
        let selected = c.command("r", "SELECT \"Old & Raw\"").await;
        assert!(selected.contains("r OK"), "{selected}");
    }
    // A name that is not UTF-8 is BAD and leaves the selected folder selected.
    let mut bytes = b"s SELECT {2+}\r\n".to_vec();
    bytes.extend_from_slice(&[0xff, 0xfe]);
    bytes.extend_from_slice(b"\r\n");
    new.send(&bytes).await;
    assert!(new.until_tagged("s").await.contains("s BAD"));
    let still = new.command("t", "UID SEARCH ALL").await;
    assert!(still.contains("t OK"), "the folder was closed: {still}");

    // On disk, Dovecot's spelling: `.Gr&APwA3w-e`, `.&AOk-t&AOk-.Juin`.
    let folders = server.runtime.store().folders(BOB).expect("folders");
    for name in ["Gr&APwA3w-e", "&AOk-t&AOk-/Juin", "Tom &- Jerry"] {
        assert!(folders.iter().any(|f| f == name), "{name}: {folders:?}");
    }
    assert!(!folders.iter().any(|f| f.contains('\u{fc}')), "{folders:?}");
    old.assert_well_formed();
    new.assert_well_formed();
}

/// Issue 15 item 11: `BODY[1.TEXT]` of a message/rfc822 part is the encapsulated message's
/// body whole, its own epilogue included, up to the CRLF that belongs to the outer boundary
/// (RFC 2046 s5.1.1).
#[tokio::test]
async fn the_text_of_an_attached_message_keeps_its_epilogue() {
    let server = Server::start();
    let inner_body =
        "--in\r\nContent-Type: text/plain\r\n\r\ninner one\r\n--in--\r\nthe inner epilogue";
    let raw = format!(
        "From: a@example.net\r\nSubject: outer\r\nMIME-Version: 1.0\r\n\
         Content-Type: multipart/mixed; boundary=out\r\n\r\npreamble\r\n--out\r\n\
         Content-Type: message/rfc822\r\n\r\nSubject: inner\r\n\
         Content-Type: multipart/alternative; boundary=in\r\n\r\n{inner_body}\r\n\
         --out--\r\nthe outer epilogue\r\n"
    );
    server.deliver_raw(BOB, raw.as_bytes());
    let mut c = server.login(BOB).await;
    assert!(c.command("a", "SELECT INBOX").await.contains("a OK"));
    let text = c.command("b", "FETCH 1 BODY.PEEK[1.TEXT]").await;
    let expected = format!("BODY[1.TEXT] {{{}}}\n{inner_body})", inner_body.len());
    assert!(text.contains(&expected), "{text}");
    let whole = c.command("c", "FETCH 1 BODY.PEEK[1]").await;
    assert!(whole.contains("\r\nthe inner epilogue)"), "{whole}");
    let outer = c.command("d", "FETCH 1 BODY.PEEK[TEXT]").await;
    assert!(outer.contains("the outer epilogue\r\n)"), "{outer}");
    c.assert_well_formed();
}

/// Issue 15 items 1 to 5, two sessions in turn (the stress test does the same at random):
/// UIDVALIDITY stays, two EXPUNGEs of one message both succeed, a message expunged by the other
/// session is never served with other content, `+FLAGS` and `-FLAGS` change only what they
/// name, and a folder made again under a deleted one's name gets a greater UIDVALIDITY.
#[tokio::test]
async fn two_sessions_on_one_folder_keep_its_state_whole() {
    let server = Server::start();
    server.deliver(BOB, "one", "first");
    server.deliver(BOB, "two", "second");
    let mut a = server.login(BOB).await;
    let mut b = server.login(BOB).await;
    let first = a.command("a1", "SELECT INBOX").await;
    let second = b.command("b1", "SELECT INBOX").await;
    let validity = number_after(&first, "[UIDVALIDITY");
    assert_eq!(number_after(&second, "[UIDVALIDITY"), validity);

    // Item 4: flags are deltas, not what a session last read.
    assert!(
        a.command("a2", "STORE 1 +FLAGS (\\Seen)")
            .await
            .contains("a2 OK")
    );
    assert!(b.command("b2", "NOOP").await.contains("FLAGS (\\Seen)"));
    a.command("a3", "STORE 1 +FLAGS.SILENT (\\Answered)").await;
    b.command("b3", "STORE 1 -FLAGS.SILENT (\\Seen)").await;
    // a hears of b's change (its own view said \Seen), and then reads both changes kept.
    let heard = a.command("a4", "NOOP").await;
    assert!(heard.contains("FLAGS (\\Answered \\Recent))"), "{heard}");
    let flags = a.command("a4f", "FETCH 1 FLAGS").await;
    assert!(
        flags.contains("* 1 FETCH (FLAGS (\\Answered \\Recent))"),
        "{flags}"
    );

    // Item 3: b still shows message 2 (no expunge is reported during FETCH) but may not serve
    // it once a expunged it: NO [EXPUNGEISSUED], never an empty body.
    a.command("a5", "STORE 2 +FLAGS.SILENT (\\Deleted)").await;
    assert!(a.command("a6", "EXPUNGE").await.contains("* 2 EXPUNGE"));
    let gone = b.command("b4", "FETCH 2 BODY.PEEK[]").await;
    assert!(gone.contains("b4 NO [EXPUNGEISSUED]"), "{gone}");
    assert!(!gone.contains("{0}"), "{gone}");
    assert!(b.command("b5", "NOOP").await.contains("* 2 EXPUNGE"));

    // Item 2: both expunge the same message; both OK, nothing lost besides it.
    a.command("a7", "STORE 1 +FLAGS.SILENT (\\Deleted)").await;
    assert!(b.command("b6", "NOOP").await.contains("\\Deleted"));
    let (x, y) = (
        a.command("a8", "EXPUNGE").await,
        b.command("b7", "EXPUNGE").await,
    );
    assert!(x.contains("a8 OK") && y.contains("b7 OK"), "{x}{y}");
    assert!(y.contains("* 1 EXPUNGE"), "{y}");

    // Item 1: UIDVALIDITY is what it was.
    let again = b.command("b8", "SELECT INBOX").await;
    assert_eq!(number_after(&again, "[UIDVALIDITY"), validity);
    assert!(again.contains("[UIDNEXT 3]"), "{again}");

    // Item 5: DELETE and CREATE again: a new UIDVALIDITY, greater, and UIDs from 1.
    assert!(a.command("a9", "CREATE Project").await.contains("a9 OK"));
    let appended = a
        .command_with_literal("a10", "APPEND Project", b"Subject: p\r\n\r\np\r\n")
        .await;
    let old = number_after(&appended, "[APPENDUID");
    assert!(a.command("a11", "DELETE Project").await.contains("a11 OK"));
    assert!(a.command("a12", "CREATE Project").await.contains("a12 OK"));
    let appended = a
        .command_with_literal("a13", "APPEND Project", b"Subject: q\r\n\r\nq\r\n")
        .await;
    let new = number_after(&appended, "[APPENDUID");
    assert!(new > old, "UIDVALIDITY {new} after {old}: {appended}");
    assert!(
        appended.contains(&format!("[APPENDUID {new} 1]")),
        "{appended}"
    );
    a.assert_well_formed();
    b.assert_well_formed();
}

/// From an outside attack on this stop's build: a folder renamed into its own subtree, levels
/// of the hierarchy missing from LIST once their folder was deleted, IDLE refused without a
/// selected folder, and PLAIN's authorization identity ignored.
#[tokio::test]
async fn hierarchy_levels_renames_idle_and_plain_identities() {
    use base64::Engine as _;
    let server = Server::start();
    let mut c = server.login(BOB).await;
    assert!(c.command("a", "CREATE x").await.contains("a OK"));
    let into_itself = c.command("b", "RENAME x x/y/z").await;
    assert!(into_itself.contains("b NO [CANNOT]"), "{into_itself}");
    let list = c.command("c", "LIST \"\" x*").await;
    assert!(!list.contains("x/y"), "{list}");

    // A deleted parent stays a level of the hierarchy while it has children.
    assert!(c.command("d", "CREATE b2/b").await.contains("d OK"));
    assert!(c.command("e", "DELETE b2").await.contains("e OK"));
    let level = c.command("f", "LIST \"\" %").await;
    assert!(
        level.contains("* LIST (\\Noselect \\HasChildren) \"/\" \"b2\""),
        "{level}"
    );
    let below = c.command("g", "LIST \"\" b2/%").await;
    assert!(below.contains("\"b2/b\""), "{below}");
    assert!(c.command("h", "ENABLE IMAP4rev2").await.contains("h OK"));
    let level = c.command("i", "LIST \"\" b2").await;
    assert!(
        level.contains("* LIST (\\NonExistent \\HasChildren) \"/\" \"b2\""),
        "{level}"
    );

    // IDLE with no folder selected: allowed (RFC 9051 s6.3.13), quiet until DONE.
    c.send(b"j IDLE\r\n").await;
    assert_eq!(c.line().await, "+ idling");
    c.send(b"DONE\r\n").await;
    assert_eq!(c.line().await, "j OK IDLE terminated");
    c.assert_well_formed();

    // PLAIN as someone else (authzid alice, bob's credentials) is refused; naming oneself is
    // fine.
    let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
    let mut c = server.connect().await;
    let other = c
        .command(
            "k",
            &format!(
                "AUTHENTICATE PLAIN {}",
                b64(&format!("{ALICE}\0{BOB}\0bob-pw"))
            ),
        )
        .await;
    assert!(other.contains("k NO [AUTHORIZATIONFAILED]"), "{other}");
    let me = c
        .command(
            "l",
            &format!(
                "AUTHENTICATE PLAIN {}",
                b64(&format!("{BOB}\0{BOB}\0bob-pw"))
            ),
        )
        .await;
    assert!(me.contains("l OK"), "{me}");
}

/// SEARCH ignores case beyond ASCII too (RFC 9051 s6.4.4; an outside attack found `été`
/// missing `Été`): in a raw UTF-8 header, in an encoded word, and in a body.
#[tokio::test]
async fn search_ignores_case_beyond_ascii() {
    let server = Server::start();
    server.deliver_raw(
        BOB,
        "From: a@example.net\r\nSubject: \u{c9}t\u{e9} \u{e0} Paris\r\n\r\nhello\r\n".as_bytes(),
    );
    server.deliver_raw(
        BOB,
        b"From: a@example.net\r\nSubject: =?UTF-8?Q?=C3=89T=C3=89?=\r\n\r\nhello\r\n",
    );
    server.deliver_raw(
        BOB,
        "From: a@example.net\r\nSubject: winter\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n\u{c9}T\u{c9} next year\r\n"
            .as_bytes(),
    );
    let mut c = server.login(BOB).await;
    assert!(c.command("a", "SELECT INBOX").await.contains("a OK"));
    let subject = c
        .command_with_literal(
            "b",
            "SEARCH CHARSET UTF-8 SUBJECT",
            "\u{e9}t\u{e9}".as_bytes(),
        )
        .await;
    assert!(subject.contains("* SEARCH 1 2\n"), "{subject}");
    let text = c
        .command_with_literal("c", "SEARCH CHARSET UTF-8 BODY", "\u{e9}t\u{e9}".as_bytes())
        .await;
    assert!(text.contains("* SEARCH 3\n"), "{text}");
    c.assert_well_formed();
}
