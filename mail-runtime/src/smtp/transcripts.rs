//! Transcript tests of the SMTP session: `C:` lines go in (CRLF appended), `R:` lines go in as
//! raw bytes with `\r` and `\n` escapes, `S:` lines must prefix the next reply lines out, and
//! `E:` skips the continuation lines of a multi-line reply (EHLO's) up to its last line, which
//! it must prefix. A
//! small synchronous driver stands in for the server: TLS handshakes succeed, logins are checked
//! against the config, messages are spooled and delivered to a Maildir in a temp directory.
use std::{collections::VecDeque, sync::Arc};

use super::*;
use crate::{
    config::{Limits, RawConfig},
    store::{SpoolWriter, maildir::Maildir},
};

struct Harness {
    session: Session,
    store: Arc<Maildir>,
    config: Arc<Config>,
    spool: Option<SpoolWriter>,
    replies: VecDeque<String>,
    closed: bool,
    _tmp: tempfile::TempDir,
}

fn config(tmp: &std::path::Path) -> Config {
    let mailbox = crate::testing::mailbox;
    let mut alice = mailbox("alice@example.test", "alice-pw");
    alice.aliases = vec!["postmaster@example.test".into()];
    let bob = mailbox("bob@example.test", "bob-pw");
    let mut full = mailbox("full@example.test", "full-pw");
    full.quota_bytes = Some(10);
    let mut imap_only = mailbox("imaponly@example.test", "imap-pw");
    imap_only.protocols = vec![LoginProtocol::Imap];
    let limits = Limits {
        max_message_size: 2048,
        max_recipients: 3,
        ..Limits::default()
    };
    crate::testing::config(
        tmp,
        vec![alice, bob, full, imap_only],
        limits,
        ListenerProtocol::Smtp,
    )
}

impl Harness {
    fn new(listener: ListenerProtocol, peer: &str) -> Self {
        let tmp = tempfile::tempdir().expect("tmp");
        let config = Arc::new(config(tmp.path()));
        let store = Arc::new(Maildir::open(tmp.path(), "mail.example.test").expect("store"));
        let info = SessionInfo {
            listener,
            peer: peer.parse().expect("ip"),
            tls: listener.implicit_tls(),
            tls_available: true,
        };
        let (session, greeting) = Session::new(info, config.clone(), store.clone());
        let mut h = Self {
            session,
            store,
            config,
            spool: None,
            replies: VecDeque::new(),
            closed: false,
            _tmp: tmp,
        };
        h.drive(vec![greeting]);
        h
    }

    fn drive(&mut self, outputs: Vec<Output>) {
        let mut queue: VecDeque<Output> = outputs.into();
        while let Some(output) = queue.pop_front() {
            match output {
                Output::Reply(reply) => {
                    let text = String::from_utf8(reply.to_bytes()).expect("utf8");
                    self.replies
                        .extend(text.split_terminator("\r\n").map(String::from));
                }
                Output::Close => self.closed = true,
                Output::StartTls => queue.extend(self.session.tls_started(true)),
                Output::CheckLogin { username, password } => {
                    // The driver's check (auth::login), without its hashing threads.
                    let result = self
                        .config
                        .mailbox_by_address(&username)
                        .and_then(|index| {
                            let mailbox = self.config.mailbox(index);
                            let credential = mailbox.credentials().find(|c| {
                                crate::auth::PasswordHash::parse(c.hash)
                                    .is_ok_and(|h| h.verify(password.as_bytes()))
                            })?;
                            credential.opens(mailbox, LoginProtocol::Smtp).then(|| {
                                crate::auth::Login {
                                    index,
                                    address: mailbox.address.to_ascii_lowercase(),
                                    credential: credential.hash.to_string(),
                                    app_password: credential.app_password.map(str::to_string),
                                }
                            })
                        })
                        .ok_or(LoginFailure::Invalid);
                    queue.extend(self.session.login_result(result));
                }
                Output::BeginMessage => self.spool = Some(self.store.spool().expect("spool")),
                Output::Body(bytes) => self
                    .spool
                    .as_mut()
                    .expect("spool open")
                    .write(&bytes)
                    .expect("write"),
                Output::AbortMessage => self.spool = None,
                Output::EndMessage => {
                    let message = self.spool.take().expect("spool").finish().expect("finish");
                    let delivery = self.session.delivery();
                    let result = match self.store.deliver(message, &delivery.mailboxes) {
                        Ok(()) => Delivered::Ok,
                        Err(e) => Delivered::Failed(e),
                    };
                    queue.extend(self.session.delivered(result));
                }
            }
        }
    }

    /// Runs a transcript; panics with the whole exchange on the first mismatch.
    fn run(&mut self, transcript: &str) {
        let mut log = Vec::new();
        for line in transcript.lines().map(str::trim).filter(|l| !l.is_empty()) {
            if let Some(c) = line.strip_prefix("C:") {
                let c = c.strip_prefix(' ').unwrap_or(c);
                log.push(format!("C: {c}"));
                let outputs = self.session.feed(format!("{c}\r\n").as_bytes());
                self.drive(outputs);
            } else if let Some(r) = line.strip_prefix("R: ") {
                log.push(format!("R: {r}"));
                let raw = r.replace("\\r", "\r").replace("\\n", "\n");
                let outputs = self.session.feed(raw.as_bytes());
                self.drive(outputs);
            } else if let Some(expected) = line.strip_prefix("E: ") {
                while self
                    .replies
                    .front()
                    .is_some_and(|r| r.as_bytes().get(3) == Some(&b'-'))
                {
                    self.replies.pop_front();
                }
                let got = self.replies.pop_front();
                log.push(format!("S: {}", got.as_deref().unwrap_or("<nothing>")));
                assert!(
                    got.as_deref().is_some_and(|g| g.starts_with(expected)),
                    "expected a last reply line starting {expected:?}\n{}",
                    log.join("\n")
                );
            } else if let Some(expected) = line.strip_prefix("S: ") {
                let got = self.replies.pop_front();
                log.push(format!("S: {}", got.as_deref().unwrap_or("<nothing>")));
                assert!(
                    got.as_deref().is_some_and(|g| g.starts_with(expected)),
                    "expected a reply starting {expected:?}\n{}",
                    log.join("\n")
                );
            } else {
                panic!("bad transcript line {line:?}");
            }
        }
        assert!(
            self.replies.is_empty(),
            "unexpected replies {:?}\n{}",
            self.replies,
            log.join("\n")
        );
    }

    /// Serves a changed config from now on, as a live reload would.
    fn reconfigure(&mut self, change: impl FnOnce(&mut RawConfig)) {
        let mut raw = self.config.raw.clone();
        change(&mut raw);
        self.config = Arc::new(Config::validate(raw).expect("valid"));
        self.session.set_config(self.config.clone());
    }

    fn inbox_len(&self, mailbox: &str) -> usize {
        self.store.inbox(mailbox).expect("inbox").messages.len()
    }
}

fn mx() -> Harness {
    Harness::new(ListenerProtocol::Smtp, "198.51.100.7")
}

fn submission() -> Harness {
    Harness::new(ListenerProtocol::Submission, "198.51.100.7")
}

const PLAIN_ALICE: &str = "AGFsaWNlQGV4YW1wbGUudGVzdABhbGljZS1wdw=="; // \0alice@example.test\0alice-pw

#[test]
fn ehlo_on_port_25_offers_starttls_and_no_auth_before_tls() {
    let mut h = mx();
    h.run(
        "S: 220 mail.example.test ESMTP
         C: EHLO client.example
         S: 250-mail.example.test Hello client.example
         S: 250-PIPELINING
         S: 250-SIZE 2048
         S: 250-8BITMIME
         S: 250-ENHANCEDSTATUSCODES
         S: 250-SMTPUTF8
         S: 250-CHUNKING
         S: 250-DSN
         S: 250 STARTTLS
         C: HELO client.example
         S: 250 mail.example.test Hello client.example",
    );
}

#[test]
fn local_delivery_with_received_header() {
    let mut h = mx();
    h.run(
        "S: 220
         C: EHLO client.example
         E: 250 STARTTLS
         C: MAIL FROM:<someone@example.net>
         S: 250 2.1.0
         C: RCPT TO:<bob@example.test>
         S: 250 2.1.5
         C: RCPT TO:<postmaster@example.org>
         S: 250 2.1.5
         C: DATA
         S: 354
         C: Subject: hi
         C:
         C: ..leading dot
         C: .
         S: 250 2.0.0 OK queued as",
    );
    assert_eq!(h.inbox_len("bob@example.test"), 1);
    assert_eq!(
        h.inbox_len("alice@example.test"),
        1,
        "alias in the alias domain"
    );
    let bytes = h
        .store
        .read_message("bob@example.test", 1)
        .expect("read")
        .expect("message");
    let text = String::from_utf8(bytes).expect("utf8");
    assert!(text.starts_with("Received: from client.example ([198.51.100.7])\r\n\tby mail.example.test (kubemail) with ESMTP id "), "{text}");
    assert!(
        text.ends_with("Subject: hi\r\n\r\n.leading dot\r\n"),
        "{text}"
    );
}

#[test]
fn commands_out_of_order_and_unknown_ones() {
    let mut h = mx();
    h.run(
        "S: 220
         C: MAIL FROM:<a@example.net>
         S: 503 5.5.1 send EHLO or HELO first
         C: HELO c.example
         S: 250
         C: RCPT TO:<bob@example.test>
         S: 503 5.5.1 send MAIL first
         C: DATA
         S: 503 5.5.1 send MAIL first
         C: MAIL FROM:<a@example.net>
         S: 250
         C: MAIL FROM:<a@example.net>
         S: 503 5.5.1 nested MAIL
         C: DATA
         S: 554 5.5.1 no valid recipients
         C: FROB
         S: 500 5.5.1 command unrecognized
         C: MAIL FROM:<not an address>
         S: 501
         C: RSET
         S: 250 2.0.0
         C: NOOP
         S: 250 2.0.0
         C: VRFY bob
         S: 252 2.5.0
         C: EXPN staff
         S: 502 5.5.1
         C: HELP
         S: 214 2.0.0
         C: ETRN example.test
         S: 502 5.5.1
         C: QUIT
         S: 221 2.0.0 mail.example.test closing",
    );
    assert!(h.closed);
}

#[test]
fn unknown_users_relaying_and_relay_networks() {
    let mut h = mx();
    h.run(
        "S: 220
         C: HELO c.example
         S: 250
         C: MAIL FROM:<a@example.net>
         S: 250
         C: RCPT TO:<nobody@example.test>
         S: 550 5.1.1 no such user here
         C: RCPT TO:<victim@example.net>
         S: 550 5.7.1 relaying denied
         C: RCPT TO:<victim%example.net@example.test>
         S: 550 5.1.1
         C: RCPT TO:<bob@example.test.>
         S: 550 5.1.3
         C: RCPT TO:<bob@example.test>
         S: 250
         C: RCPT TO:<alice@example.test>
         S: 250
         C: RCPT TO:<postmaster@example.test>
         S: 250
         C: RCPT TO:<bob+tag@example.test>
         S: 452 4.5.3 too many recipients",
    );
    let mut trusted = Harness::new(ListenerProtocol::Smtp, "192.0.2.10");
    trusted.run(
        "S: 220
         C: HELO app.cluster.local
         S: 250
         C: MAIL FROM:<app@example.test>
         S: 250
         C: RCPT TO:<customer@example.net>
         S: 250 2.1.5 recipient OK, relayed
         C: RSET
         S: 250
         C: MAIL FROM:<app@elsewhere.test>
         S: 250
         C: RCPT TO:<customer@example.net>
         S: 550 5.7.1 relaying is not allowed for senders in elsewhere.test",
    );
}

#[test]
fn submission_requires_tls_then_auth() {
    let mut h = submission();
    h.run(&format!(
        "S: 220
         C: EHLO laptop
         E: 250 STARTTLS
         C: AUTH PLAIN {PLAIN_ALICE}
         S: 538 5.7.11 encryption required
         C: MAIL FROM:<alice@example.test>
         S: 530 5.7.0 authentication required
         C: STARTTLS
         S: 220 2.0.0 ready to start TLS
         C: MAIL FROM:<alice@example.test>
         S: 503 5.5.1 send EHLO or HELO first
         C: EHLO laptop
         E: 250 AUTH PLAIN LOGIN
         C: AUTH PLAIN AGFsaWNlQGV4YW1wbGUudGVzdAB3cm9uZw==
         S: 535 5.7.8 authentication credentials invalid
         C: AUTH PLAIN
         S: 334
         C: *
         S: 501 5.0.0 authentication cancelled
         C: AUTH LOGIN
         S: 334 VXNlcm5hbWU6
         C: YWxpY2VAZXhhbXBsZS50ZXN0
         S: 334 UGFzc3dvcmQ6
         C: YWxpY2UtcHc=
         S: 235 2.7.0 authentication succeeded
         C: AUTH PLAIN {PLAIN_ALICE}
         S: 503 5.5.1 already authenticated
         C: MAIL FROM:<bob@example.test>
         S: 553 5.7.1 sender address <bob@example.test> is not owned
         C: MAIL FROM:<postmaster@example.test>
         S: 250 2.1.0
         C: RCPT TO:<bob@example.test>
         S: 250
         C: RCPT TO:<friend@example.net>
         S: 250 2.1.5
         C: DATA
         S: 354
         C: Subject: from alice
         C: .
         S: 250 2.0.0"
    ));
    assert_eq!(h.inbox_len("bob@example.test"), 1);
    let text = String::from_utf8(
        h.store
            .read_message("bob@example.test", 1)
            .expect("r")
            .expect("m"),
    )
    .expect("utf8");
    assert!(text.contains("with ESMTPSA id"), "{text}");
}

#[test]
fn a_mailbox_without_smtp_permission_cannot_submit() {
    let mut h = Harness::new(ListenerProtocol::Submissions, "198.51.100.7");
    h.run(
        "S: 220
         C: EHLO laptop
         E: 250 AUTH PLAIN LOGIN
         C: AUTH PLAIN AGltYXBvbmx5QGV4YW1wbGUudGVzdABpbWFwLXB3
         S: 535 5.7.8",
    );
}

#[test]
fn pipelined_commands_are_answered_in_order() {
    let mut h = mx();
    h.run(
        "S: 220
         R: HELO c.example\\r\\nMAIL FROM:<a@example.net>\\r\\nRCPT TO:<bob@example.test>\\r\\nRCPT TO:<x@example.net>\\r\\nDATA\\r\\n
         S: 250
         S: 250 2.1.0
         S: 250 2.1.5
         S: 550 5.7.1
         S: 354
         R: Subject: p\\r\\n\\r\\nbody\\r\\n.\\r\\nQUIT\\r\\n
         S: 250 2.0.0
         S: 221",
    );
    assert_eq!(h.inbox_len("bob@example.test"), 1);
}

#[test]
fn commands_pipelined_after_starttls_are_discarded() {
    let mut h = mx();
    h.run(
        "S: 220
         C: EHLO c.example
         E: 250 STARTTLS
         R: STARTTLS\\r\\nMAIL FROM:<injected@example.net>\\r\\nRCPT TO:<bob@example.test>\\r\\n
         S: 220 2.0.0
         C: MAIL FROM:<a@example.net>
         S: 503 5.5.1 send EHLO or HELO first
         C: STARTTLS
         S: 503 5.5.1 TLS is already active",
    );
}

#[test]
fn smuggled_messages_are_refused_whole() {
    for trick in [
        "\\n.\\n",
        "\\r.\\r",
        "\\n.\\r\\n",
        "\\r.\\r\\n",
        "\\r\\n.\\n",
    ] {
        let mut h = mx();
        h.run(&format!(
            "S: 220
             C: HELO c.example
             S: 250
             C: MAIL FROM:<a@example.net>
             S: 250
             C: RCPT TO:<bob@example.test>
             S: 250
             C: DATA
             S: 354
             R: Subject: real\\r\\n\\r\\nhello{trick}MAIL FROM:<admin@example.test>\\r\\nRCPT TO:<bob@example.test>\\r\\nDATA\\r\\nSubject: smuggled\\r\\n\\r\\n.\\r\\n
             S: 550 5.5.2 message refused: it contains a bare CR or LF
             C: NOOP
             S: 250"
        ));
        assert_eq!(h.inbox_len("bob@example.test"), 0, "{trick}");
    }
}

#[test]
fn sizes_recipients_and_quotas_are_bounded() {
    let mut h = mx();
    let big = "x".repeat(1000);
    h.run(&format!(
        "S: 220
         C: HELO c.example
         S: 250
         C: MAIL FROM:<a@example.net> SIZE=999999
         S: 552 5.3.4
         C: MAIL FROM:<a@example.net>
         S: 250
         C: RCPT TO:<bob@example.test>
         S: 250
         C: DATA
         S: 354
         C: {big}
         C: {big}
         C: {big}
         C: .
         S: 552 5.3.4 message exceeds the maximum size of 2048 bytes
         C: MAIL FROM:<a@example.net> SIZE=100
         S: 250
         C: RCPT TO:<full@example.test>
         S: 552 5.2.2",
    ));
    assert_eq!(h.inbox_len("bob@example.test"), 0);
}

#[test]
fn a_full_mailbox_is_refused_for_now() {
    let mut h = mx();
    h.run(
        "S: 220
         C: HELO c.example
         S: 250
         C: MAIL FROM:<a@example.net>
         S: 250
         C: RCPT TO:<full@example.test>
         S: 250
         C: DATA
         S: 354
         C: Subject: fills the mailbox
         C: .
         S: 250
         C: MAIL FROM:<a@example.net>
         S: 250
         C: RCPT TO:<full@example.test>
         S: 452 4.2.2 mailbox full",
    );
}

#[test]
fn bdat_chunks_make_one_message() {
    let mut h = mx();
    h.run(
        "S: 220
         C: EHLO c.example
         E: 250 STARTTLS
         R: BDAT 4\\r\\nabcd
         S: 503 5.5.1 send MAIL and RCPT first
         C: MAIL FROM:<a@example.net> BODY=8BITMIME
         S: 250
         C: RCPT TO:<bob@example.test>
         S: 250
         R: BDAT 12\\r\\nSubject:
         R:  x\\r\\n
         S: 250 2.0.0 12 octets received
         R: BDAT 6 LAST\\r\\n\\r\\nhi\\r\\n
         S: 250 2.0.0 OK queued as",
    );
    let text = String::from_utf8(
        h.store
            .read_message("bob@example.test", 1)
            .expect("r")
            .expect("m"),
    )
    .expect("utf8");
    assert!(text.ends_with("Subject: x\r\n\r\nhi\r\n"), "{text}");
}

#[test]
fn hostile_lines_get_errors_and_too_many_end_the_session() {
    let mut h = mx();
    let long = "A".repeat(super::super::codec::MAX_LINE + 100);
    let mut transcript = format!(
        "S: 220
         C: {long}
         S: 500 5.5.6 line too long
         R: NOOP\\n
         S: 500 5.5.2 command lines must end with CRLF
         C: MAIL FROM:<j\u{00e9}@example.net>
         S: 503"
    );
    for _ in 0..17 {
        transcript.push_str("\nC: BOGUS\nS: 500 5.5.1");
    }
    transcript.push_str("\nS: 421 4.7.0 too many errors");
    h.run(&transcript);
    assert!(h.closed);
}

#[test]
fn utf8_addresses_need_smtputf8_and_dsn_parameters_are_accepted() {
    let mut h = mx();
    h.run(
        "S: 220
         C: EHLO c.example
         E: 250 STARTTLS
         C: MAIL FROM:<j\u{00e9}@example.net>
         S: 553 5.6.7
         C: MAIL FROM:<j\u{00e9}@example.net> SMTPUTF8
         S: 250
         C: RCPT TO:<bob@example.test> NOTIFY=FAILURE,DELAY ORCPT=rfc822;bob@example.test
         S: 250
         C: RSET
         S: 250
         C: MAIL FROM:<> RET=HDRS ENVID=abc123
         S: 250",
    );
}

#[test]
fn a_full_disk_is_a_temporary_failure() {
    let mut h = mx();
    h.run(
        "S: 220
         C: HELO c.example
         S: 250
         C: MAIL FROM:<a@example.net>
         S: 250
         C: RCPT TO:<bob@example.test>
         S: 250",
    );
    let outputs = h.session.delivered(Delivered::Failed(StoreError::NoSpace));
    h.drive(outputs);
    h.run("S: 452 4.3.1 insufficient system storage");
}

/// Issue 17 item 13: `BDAT` refused for want of MAIL answered 503 and then, once the chunk's
/// bytes arrived in a later segment, a second `250`, which a pipelining client takes for the
/// next command's reply; and an ENVID with an encoded line break wrote the sender's lines into
/// delivery reports.
#[test]
fn a_refused_bdat_chunk_gets_one_reply_and_envid_cannot_break_lines() {
    let mut h = mx();
    h.run(
        "S: 220
         C: EHLO c.example
         E: 250 STARTTLS
         R: BDAT 10\\r\\n01234
         S: 503 5.5.1 send MAIL and RCPT first
         R: 56789
         C: NOOP
         S: 250 2.0.0 OK
         C: MAIL FROM:<a@example.net> ENVID=x+0D+0AX-Injected:+yes
         S: 501 5.5.4 ENVID must be
         C: MAIL FROM:<a@example.net> ENVID=QQ314159
         S: 250",
    );
}

/// Issue 17 item 6: the recipient limit applied to local recipients only (300 relayed ones
/// were taken in one message), and the relay rate limit counted a message once.
#[test]
fn relayed_recipients_count_against_the_limit() {
    let mut trusted = Harness::new(ListenerProtocol::Smtp, "192.0.2.10");
    trusted.run(
        "S: 220
         C: HELO app.cluster.local
         S: 250
         C: MAIL FROM:<app@example.test>
         S: 250
         C: RCPT TO:<one@example.net>
         S: 250 2.1.5 recipient OK, relayed
         C: RCPT TO:<bob@example.test>
         S: 250
         C: RCPT TO:<two@example.net>
         S: 250 2.1.5 recipient OK, relayed
         C: RCPT TO:<three@example.net>
         S: 452 4.5.3 too many recipients",
    );
}

/// A header block over 1 MiB (5 million one-line fields took one IMAP FETCH to 666 MiB) is
/// refused at the end of DATA; a normal one, even one that starts with its empty line, passes.
#[test]
fn a_header_block_over_a_mebibyte_is_refused() {
    let mut h = mx();
    h.reconfigure(|raw| raw.limits.max_message_size = 8 * 1024 * 1024);
    let fields = "a:\r\n".repeat(300_000);
    h.run(&format!(
        "S: 220
         C: HELO c.example
         S: 250
         C: MAIL FROM:<a@example.net>
         S: 250
         C: RCPT TO:<bob@example.test>
         S: 250
         C: DATA
         S: 354
         R: {}\\r\\nbody\\r\\n.\\r\\n
         S: 552 5.3.4 message header exceeds
         C: MAIL FROM:<a@example.net>
         S: 250
         C: RCPT TO:<bob@example.test>
         S: 250
         C: DATA
         S: 354
         R: \\r\\nno header at all\\r\\n.\\r\\n
         S: 250",
        fields.replace("\r\n", "\\r\\n")
    ));
}

/// Found by an outside tester: BDAT took bare LF and CR that DATA refuses (`550 5.5.2`), and
/// DATA after a BDAT chunk answered 354.
#[test]
fn bdat_refuses_bare_line_ends_and_data_after_it() {
    let mut h = mx();
    h.run(
        "S: 220
         C: EHLO c.example
         E: 250 STARTTLS
         C: MAIL FROM:<a@example.net>
         S: 250
         C: RCPT TO:<bob@example.test>
         S: 250
         R: BDAT 15 LAST\\r\\nSubject: x\\n\\r\\nhi
         S: 550 5.5.2
         C: MAIL FROM:<a@example.net>
         S: 250
         C: RCPT TO:<bob@example.test>
         S: 250
         R: BDAT 4\\r\\nab\\rc
         S: 250 2.0.0 4 octets received
         R: BDAT 0 LAST\\r\\n
         S: 550 5.5.2
         C: MAIL FROM:<a@example.net>
         S: 250
         C: RCPT TO:<bob@example.test>
         S: 250
         R: BDAT 4\\r\\nab\\r\\n
         S: 250 2.0.0 4 octets received
         C: RCPT TO:<alice@example.test>
         S: 503 5.5.1 RCPT is not allowed after BDAT
         C: DATA
         S: 503 5.5.1 DATA is not allowed after BDAT
         R: BDAT 3 LAST\\r\\nc\\r\\n
         S: 250 2.0.0 OK queued as",
    );
    assert_eq!(h.inbox_len("bob@example.test"), 1);
}

/// Issue 17 item 6, the rate half: a message to many outside addresses spent one unit of the
/// relay rate limit; now each relayed recipient spends one.
#[test]
fn the_relay_rate_limit_counts_every_relayed_recipient() {
    let mut trusted = Harness::new(ListenerProtocol::Smtp, "192.0.2.10");
    trusted.reconfigure(|raw| {
        raw.relay.rate_limits.per_sender = Some(crate::config::RateConfig {
            messages: 2,
            period_seconds: 3600,
        });
    });
    trusted.run(
        "S: 220
         C: HELO app.cluster.local
         S: 250
         C: MAIL FROM:<app@example.test>
         S: 250
         C: RCPT TO:<one@example.net>
         S: 250 2.1.5 recipient OK, relayed
         C: RCPT TO:<two@example.net>
         S: 250 2.1.5 recipient OK, relayed
         C: RCPT TO:<three@example.net>
         S: 450 4.7.1 relay rate limit reached",
    );
}

/// A domain on a shared server may take less than the server: its recipients (and its logged-in
/// senders) are held to its own `maxMessageSize`, the other domains' are not.
#[test]
fn a_domain_with_a_smaller_message_limit_is_held_to_it() {
    let mut h = mx();
    h.reconfigure(|raw| {
        raw.domains.push(kubemail_config::DomainConfig {
            name: "small.test".into(),
            hostname: Some("mail.small.test".into()),
            max_message_size: Some(1000),
            ..Default::default()
        });
        raw.mailboxes
            .push(crate::testing::mailbox("carol@small.test", "carol-pw"));
    });
    let body = "x".repeat(700);
    h.run(&format!(
        "S: 220
         C: HELO c.example
         S: 250
         C: MAIL FROM:<a@example.net> SIZE=1500
         S: 250
         C: RCPT TO:<carol@small.test>
         S: 552 5.3.4 message size exceeds the maximum of 1000 bytes for this recipient
         C: RCPT TO:<bob@example.test>
         S: 250
         C: RSET
         S: 250
         C: MAIL FROM:<a@example.net>
         S: 250
         C: RCPT TO:<carol@small.test>
         S: 250
         C: RCPT TO:<bob@example.test>
         S: 250
         C: DATA
         S: 354
         C: {body}
         C: {body}
         C: .
         S: 552 5.3.4 message exceeds the maximum size of 1000 bytes
         C: MAIL FROM:<a@example.net>
         S: 250
         C: RCPT TO:<bob@example.test>
         S: 250
         C: DATA
         S: 354
         C: {body}
         C: {body}
         C: .
         S: 250",
    ));
    assert_eq!(h.inbox_len("bob@example.test"), 1);
    assert_eq!(h.inbox_len("carol@small.test"), 0);
}
