//! An IMAP session (RFC 3501 and RFC 9051 via ENABLE): the command loop over imap-codec's
//! fragmentizer (lines and literals, bounded), TLS, logins with the failed-login limit, and
//! every command against the store. Changes made by other sessions or by delivery reach the
//! client as untagged responses after each command and at once while it IDLEs.
use std::{borrow::Cow, io, net::IpAddr, time::Duration};

use imap_codec::{
    AuthenticateDataCodec, CommandCodec, IdleDoneCodec,
    fragmentizer::{DecodeMessageError, FragmentInfo, Fragmentizer, LiteralAnnouncement},
    imap_types::{
        IntoStatic,
        auth::{AuthMechanism, AuthenticateData},
        command::{Command, CommandBody, FetchModifier, SelectParameter, StoreModifier},
        core::{LiteralMode, Vec1},
        extensions::{
            binary::LiteralOrLiteral8, enable::CapabilityEnable, sort::SortCriterion,
            thread::ThreadingAlgorithm,
        },
        fetch::{MacroOrMessageDataItemNames, MessageDataItemName},
        flag::{Flag, StoreResponse, StoreType},
        mailbox::{ListMailbox, Mailbox},
        search::SearchKey,
        sequence::SequenceSet,
        status::StatusDataItemName,
    },
};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpListener,
    sync::watch,
};

use super::{
    esearch::{self, Lifted, ReturnOptions},
    list_extended::{self, ExtendedList},
    message,
    search::{self, Candidate},
    selected::{self as view, Reporting, Selected},
    sort, write,
};
use crate::{
    auth,
    config::{Listener, LoginProtocol},
    net::{self, Accepted, Conn},
    runtime::Runtime,
    store::{DEFAULT_FOLDERS, FlagChange, FlagsSet, INBOX, MessageMeta, StoreError},
};

/// Longest command line (without literals) a client may send.
const LINE_LIMIT: usize = 64 * 1024;
/// Largest literal before login.
const PRE_AUTH_LITERAL_LIMIT: u32 = 8 * 1024;
/// Most bytes one command may hold before login, its literals included: what a stranger can
/// make the server keep per connection.
const PRE_AUTH_COMMAND_LIMIT: usize = LINE_LIMIT + PRE_AUTH_LITERAL_LIMIT as usize;
/// Longest SASL response line (PLAIN's is a few hundred bytes).
const AUTHENTICATE_LINE_LIMIT: usize = 8 * 1024;
/// Autologout of an authenticated session (RFC 9051: at least 30 minutes).
const AUTHENTICATED_TIMEOUT: Duration = Duration::from_secs(30 * 60);
/// How often an idle session looks whether its account was suspended or changed.
const REVOCATION_CHECK: Duration = Duration::from_secs(1);
/// Longest a FETCH waits for its share of the answer memory.
const ANSWER_WAIT: Duration = Duration::from_secs(30);
/// Longest a client may take to read the next 64 KiB of what the server sent.
const WRITE_TIMEOUT: Duration = Duration::from_secs(120);
/// Bytes of FETCH answers rendered before they go to the client.
const RENDER_CHUNK: usize = 4 * 1024 * 1024;
/// The largest mod-sequence a client may name (RFC 7162 `mod-sequence-value`: 63 bits).
const MAX_MODSEQ: u64 = i64::MAX as u64;
/// Messages read per blocking batch in FETCH.
const FETCH_BATCH: usize = 256;

/// Serves IMAP on `socket` forever.
pub async fn serve(socket: TcpListener, listener: Listener, runtime: Runtime) {
    net::serve(
        socket,
        listener,
        runtime,
        |why| format!("* BYE [UNAVAILABLE] {why}\r\n").into_bytes(),
        |accepted, listener, runtime| async move {
            Session::new(accepted, &listener, runtime).run().await
        },
    )
    .await;
}

struct User {
    address: String,
    quota: Option<u64>,
    /// The password hash in force at login: another one means the password changed.
    password_hash: String,
}

struct Session {
    conn: Conn,
    runtime: Runtime,
    peer: IpAddr,
    _slot: crate::runtime::ConnectionSlot,
    frag: Fragmentizer,
    out: Vec<u8>,
    tls: bool,
    tls_available: bool,
    allow_plaintext: bool,
    command_timeout: Duration,
    max_literal: u32,
    user: Option<User>,
    selected: Option<Selected>,
    changes: Option<watch::Receiver<u64>>,
    rev2: bool,
    /// CONDSTORE and QRESYNC as the client enabled them (RFC 7162).
    reporting: Reporting,
    /// The RETURN options of the SEARCH being run (lifted before parsing, see [`esearch`]).
    search_return: Option<ReturnOptions>,
    /// This session's place among the COMPRESS=DEFLATE sessions, once it asked.
    deflate: Option<tokio::sync::OwnedSemaphorePermit>,
    closed: bool,
}

/// How a command ended: the tagged status line's kind, code and text.
type Done = Result<String, String>;

/// The charsets SEARCH, SORT and THREAD take (the strings compared are UTF-8).
fn known_charset(charset: &imap_codec::imap_types::core::Charset<'_>) -> bool {
    let c: &str = charset.as_ref();
    c.eq_ignore_ascii_case("utf-8") || c.eq_ignore_ascii_case("us-ascii")
}

/// The selected folder as SEARCH, SORT and THREAD go through it, on a blocking thread.
struct Matching {
    metas: Vec<MessageMeta>,
    keywords: Vec<String>,
    largest: (u32, u32),
    recent: std::collections::HashSet<u32>,
    folder: String,
    validity: u32,
}

impl Matching {
    fn of(selected: &Selected) -> Self {
        Self {
            metas: selected.messages.clone(),
            keywords: selected.keywords.clone(),
            largest: selected.largest(),
            recent: selected.recent.clone(),
            folder: selected.folder.clone(),
            validity: selected.uid_validity,
        }
    }

    /// Calls `found` with the sequence number, entry and bytes of every message that matches
    /// `key`, in order; `read` gives the bytes the keys need (none, a header block, the whole
    /// message). With `skip_gone`, a message whose bytes are gone (expunged meanwhile) is left
    /// out rather than matched without them.
    fn each(
        &self,
        key: &SearchKey<'_>,
        read: impl Fn(&MessageMeta) -> Result<Option<Vec<u8>>, StoreError>,
        skip_gone: bool,
        mut found: impl FnMut(u32, &MessageMeta, Option<&[u8]>),
    ) -> Result<(), StoreError> {
        let sets = search::SetCache::default();
        for (i, meta) in self.metas.iter().enumerate() {
            let raw = read(meta)?;
            if skip_gone && raw.is_none() {
                continue;
            }
            let seq = i as u32 + 1;
            let candidate = Candidate {
                seq,
                meta,
                largest: self.largest,
                raw: raw.as_deref(),
                sets: &sets,
                keywords: &self.keywords,
                recent: self.recent.contains(&meta.uid),
                contents: Default::default(),
            };
            if search::matches(key, &candidate) {
                found(seq, meta, raw.as_deref());
            }
        }
        Ok(())
    }
}

/// What SORT or THREAD makes of the messages a search finds.
enum Arrange {
    Sort(Vec<SortCriterion>),
    References,
    OrderedSubject,
}

/// A folder's RFC 6154 special use (`\\Sent`), if it is one of the default folders.
fn special_use(name: &str) -> Option<&'static str> {
    DEFAULT_FOLDERS
        .iter()
        .find(|(n, _)| *n == name)
        .map(|(_, s)| *s)
}

/// The attributes of a LIST line: `\\NonExistent` or whether it has children, `\\Subscribed`
/// when `subscribed`, then its special use.
fn list_attributes(name: &str, folders: &[String], subscribed: bool) -> Vec<&'static str> {
    let prefix = format!("{name}/");
    let mut attributes = vec![if !folders.iter().any(|f| f == name) {
        "\\NonExistent"
    } else if folders.iter().any(|f| f.starts_with(&prefix)) {
        "\\HasChildren"
    } else {
        "\\HasNoChildren"
    }];
    if subscribed {
        attributes.push("\\Subscribed");
    }
    attributes.extend(special_use(name));
    attributes
}

/// One STATUS item (`MESSAGES 3`) of a folder, by its name; `None` for an unknown name.
fn status_value(index: &crate::store::FolderIndex, name: &str) -> Option<String> {
    let count = |f: &dyn Fn(&MessageMeta) -> bool| index.messages.iter().filter(|m| f(m)).count();
    let value = match name {
        "MESSAGES" => index.messages.len().to_string(),
        "RECENT" => count(&|m| m.is_new()).to_string(),
        "UIDNEXT" => index.uid_next.to_string(),
        "UIDVALIDITY" => index.uid_validity.to_string(),
        "UNSEEN" => count(&|m| !m.flags.contains('S')).to_string(),
        "DELETED" => count(&|m| m.flags.contains('T')).to_string(),
        "DELETED-STORAGE" => index
            .messages
            .iter()
            .filter(|m| m.flags.contains('T'))
            .map(|m| m.size)
            .sum::<u64>()
            .to_string(),
        "SIZE" => index
            .messages
            .iter()
            .map(|m| m.size)
            .sum::<u64>()
            .to_string(),
        "HIGHESTMODSEQ" => index.highest_modseq.to_string(),
        _ => return None,
    };
    Some(format!("{name} {value}"))
}

/// A STORE's arguments besides the set and the flags.
struct FlagStore {
    kind: StoreType,
    response: StoreResponse,
    uid: bool,
    /// CONDSTORE's UNCHANGEDSINCE.
    unchanged_since: Option<u64>,
}

fn no(text: impl Into<String>) -> Done {
    Err(format!("NO {}", text.into()))
}

/// A selected-state command with no folder selected: a protocol error, so BAD (RFC 9051 s6.4,
/// RFC 3691 for UNSELECT), not NO.
fn not_selected() -> Done {
    bad("no folder is selected")
}

fn bad(text: impl Into<String>) -> Done {
    Err(format!("BAD {}", text.into()))
}

fn store_failure(err: &StoreError) -> String {
    match err {
        StoreError::NoSpace => "NO [LIMIT] the mail volume is full, try again later".into(),
        StoreError::NoSuchFolder(f) => format!("NO [NONEXISTENT] no folder {f:?}"),
        StoreError::FolderExists(f) => format!("NO [ALREADYEXISTS] folder {f:?} already exists"),
        StoreError::InvalidName(f) => format!("NO [CANNOT] invalid folder name {f:?}"),
        StoreError::NotAllowed(why) => format!("NO [CANNOT] {why}"),
        StoreError::Io(err) => {
            // The client sees a code; the operator needs the cause.
            tracing::error!(error = %err, "IMAP storage error");
            "NO [SERVERBUG] storage error, try again later".into()
        }
    }
}

/// The folder name a client's mailbox argument stands for (INBOX in any case is INBOX).
pub fn folder_name(mailbox: &Mailbox<'_>) -> String {
    match mailbox {
        Mailbox::Inbox => INBOX.to_string(),
        Mailbox::Other(other) => canonical_inbox(&String::from_utf8_lossy(other.as_ref())),
    }
}

/// A name with INBOX (and INBOX's children) spelled the one way: INBOX is case-insensitive.
fn canonical_inbox(name: &str) -> String {
    match name.split_once('/') {
        Some((first, rest)) if first.eq_ignore_ascii_case(INBOX) => format!("{INBOX}/{rest}"),
        _ if name.eq_ignore_ascii_case(INBOX) => INBOX.to_string(),
        _ => name.to_string(),
    }
}

/// Maildir flag letters of IMAP's system flags, and the keywords named (their letters are the
/// folder's: see [`Session::keyword_letters`]).
fn letters(flags: &[Flag<'_>]) -> (String, Vec<String>) {
    let mut out: Vec<char> = Vec::new();
    let mut keywords: Vec<String> = Vec::new();
    for flag in flags {
        match flag {
            Flag::Answered => out.push('R'),
            Flag::Flagged => out.push('F'),
            Flag::Deleted => out.push('T'),
            Flag::Seen => out.push('S'),
            Flag::Draft => out.push('D'),
            Flag::Keyword(atom) => {
                let name = atom.inner().to_string();
                if !keywords.iter().any(|k| k.eq_ignore_ascii_case(&name)) {
                    keywords.push(name);
                }
            }
            _ => {}
        }
    }
    out.sort_unstable();
    out.dedup();
    (out.into_iter().collect(), keywords)
}

/// LIST pattern matching: `*` matches anything, `%` anything but the separator. One pass per
/// pattern byte over the name, O(pattern x name): the backtracking way takes exponential time
/// on a pattern such as `*%*%*%...x` (the fuzzer found one that ran for minutes).
pub fn pattern_matches(pattern: &[u8], name: &[u8]) -> bool {
    // reach[j]: the pattern read so far matches name[..j].
    let mut reach = vec![false; name.len() + 1];
    reach[0] = true;
    for &c in pattern {
        match c {
            b'*' => {
                let mut on = false;
                for r in reach.iter_mut() {
                    on |= *r;
                    *r = on;
                }
            }
            b'%' => {
                for j in 1..=name.len() {
                    reach[j] = reach[j] || (reach[j - 1] && name[j - 1] != b'/');
                }
            }
            _ => {
                for j in (1..=name.len()).rev() {
                    reach[j] = reach[j - 1] && name[j - 1] == c;
                }
                reach[0] = false;
            }
        }
        if !reach.contains(&true) {
            return false;
        }
    }
    reach[name.len()]
}

impl Session {
    fn new(accepted: Accepted, listener: &Listener, runtime: Runtime) -> Self {
        let config = runtime.config.get();
        let limits = &config.raw.limits;
        let max_literal = u32::try_from(limits.max_message_size).unwrap_or(u32::MAX);
        Session {
            conn: accepted.conn,
            peer: accepted.peer,
            _slot: accepted.slot,
            frag: Fragmentizer::new(max_literal.saturating_add(LINE_LIMIT as u32)),
            out: Vec::new(),
            tls: listener.protocol.implicit_tls(),
            tls_available: accepted.tls_available,
            allow_plaintext: config.raw.security.allow_plaintext_auth,
            command_timeout: Duration::from_secs(limits.command_timeout_seconds.max(60)),
            max_literal,
            user: None,
            selected: None,
            changes: None,
            rev2: false,
            reporting: Reporting {
                recent: true,
                ..Reporting::default()
            },
            search_return: None,
            deflate: None,
            closed: false,
            runtime,
        }
    }

    fn capabilities(&self) -> String {
        let mut caps = vec!["IMAP4rev1", "IMAP4rev2", "LITERAL+", "ENABLE", "ID", "IDLE"];
        if self.user.is_none() {
            caps.push("SASL-IR");
            if !self.tls && self.tls_available {
                caps.push("STARTTLS");
            }
            if self.tls || self.allow_plaintext {
                caps.push("AUTH=PLAIN");
            } else {
                caps.push("LOGINDISABLED");
            }
        } else {
            caps.extend([
                "NAMESPACE",
                "UNSELECT",
                "UIDPLUS",
                "MOVE",
                "CHILDREN",
                "SPECIAL-USE",
                "QUOTA",
                "QUOTA=RES-STORAGE",
                "BINARY",
                "ESEARCH",
                "STATUS=SIZE",
                "CONDSTORE",
                "QRESYNC",
                "SORT",
                "SORT=DISPLAY",
                "LIST-EXTENDED",
                "LIST-STATUS",
                "COMPRESS=DEFLATE",
                "THREAD=ORDEREDSUBJECT",
                "THREAD=REFERENCES",
            ]);
        }
        caps.join(" ")
    }

    fn send(&mut self, text: impl AsRef<[u8]>) {
        self.out.extend_from_slice(text.as_ref());
    }

    /// Sends what is buffered. A client that takes none of it for two minutes is gone (or
    /// holding the server's memory hostage): the session ends.
    async fn flush(&mut self) -> io::Result<()> {
        if !self.out.is_empty() {
            // The timeout is for progress, not for the whole answer: a phone on a slow link
            // takes minutes for a large message, a client that takes nothing is gone.
            let stalled = || io::Error::new(io::ErrorKind::TimedOut, "the client reads nothing");
            for piece in self.out.chunks(64 * 1024) {
                tokio::time::timeout(WRITE_TIMEOUT, self.conn.write_all(piece))
                    .await
                    .map_err(|_| stalled())??;
            }
            tokio::time::timeout(WRITE_TIMEOUT, self.conn.flush())
                .await
                .map_err(|_| stalled())??;
            // A large answer's buffer is not kept by a session that goes quiet after it.
            if self.out.capacity() > 1 << 20 {
                self.out = Vec::new();
            } else {
                self.out.clear();
            }
        }
        Ok(())
    }

    async fn run(mut self) -> io::Result<()> {
        let config = self.runtime.config.get();
        let greeting = format!(
            "* OK [CAPABILITY {}] {} kubemail IMAP ready\r\n",
            self.capabilities(),
            config.raw.hostname
        );
        drop(config);
        self.send(greeting);
        self.flush().await?;
        let mut pending = 0;
        let mut awaiting_literal = false;
        let mut buf = vec![0u8; 16 * 1024];
        while !self.closed {
            let fragment = self.frag.progress();
            if self.user.is_none() && self.frag.message_bytes().len() > PRE_AUTH_COMMAND_LIMIT {
                self.send("* BYE [TOOBIG] command over the limit before login\r\n");
                self.flush().await?;
                break;
            }
            let Some(fragment) = fragment else {
                if !awaiting_literal && pending > LINE_LIMIT {
                    self.send("* BYE [TOOBIG] command line too long\r\n");
                    self.flush().await?;
                    break;
                }
                let (timeout, stressable) = if self.user.is_some() {
                    (AUTHENTICATED_TIMEOUT, false)
                } else {
                    (self.command_timeout, true)
                };
                // A silent session learns of its mailbox's suspension too, within a second.
                let login = self
                    .user
                    .as_ref()
                    .map(|u| (u.address.clone(), u.password_hash.clone()));
                let read = tokio::select! {
                    read = self.runtime.read_idle(&mut self.conn, &mut buf, timeout, stressable) => Some(read),
                    () = self.runtime.revoked(login.as_ref().map(|(a, h)| (a.as_str(), h.as_str())), LoginProtocol::Imap) => None,
                };
                let n = match read {
                    Some(Some(Ok(0))) | Some(Some(Err(_))) => break,
                    Some(Some(Ok(n))) => n,
                    Some(None) => {
                        self.send("* BYE autologout: idle for too long\r\n");
                        let _ = self.flush().await;
                        break;
                    }
                    None => {
                        self.end_revoked();
                        let _ = self.flush().await;
                        break;
                    }
                };
                self.frag.enqueue_bytes(&buf[..n]);
                pending += n;
                continue;
            };
            pending = 0;
            awaiting_literal = false;
            if let FragmentInfo::Line {
                announcement: Some(LiteralAnnouncement { mode, length }),
                ..
            } = fragment
            {
                let limit = if self.user.is_some() {
                    self.max_literal
                } else {
                    PRE_AUTH_LITERAL_LIMIT
                };
                if length > limit {
                    if mode == LiteralMode::Sync {
                        let tag = self.frag.decode_tag().map(|t| t.inner().to_string());
                        match tag {
                            Some(tag) => {
                                self.send(format!(
                                    "{tag} NO [TOOBIG] literal of {length} bytes is over the limit of {limit}\r\n"
                                ));
                                self.flush().await?;
                                self.frag.skip_message();
                            }
                            None => {
                                self.send("* BYE [TOOBIG] literal over the limit\r\n");
                                self.flush().await?;
                                break;
                            }
                        }
                        continue;
                    }
                    // A non-synchronizing literal is already on its way. Before login the
                    // connection ends: reading it only to drop it is what a stranger wants.
                    if self.user.is_none() {
                        self.send("* BYE [TOOBIG] literal over the limit before login\r\n");
                        self.flush().await?;
                        break;
                    }
                    // After login it is read and dropped (the fragmentizer keeps at most its
                    // limit), then refused.
                    self.frag.poison_message();
                }
                awaiting_literal = true;
                if mode == LiteralMode::Sync && length <= limit {
                    self.send("+ go ahead\r\n");
                    self.flush().await?;
                }
                continue;
            }
            if !self.frag.is_message_complete() {
                continue;
            }
            if self.user.is_some() {
                match list_extended::parse(self.frag.message_bytes()) {
                    list_extended::Parsed::Basic => {}
                    list_extended::Parsed::Extended(list) => {
                        self.frag.skip_message();
                        self.extended_list_command(list).await;
                        self.flush().await?;
                        continue;
                    }
                    list_extended::Parsed::Bad(tag, why) => {
                        self.frag.skip_message();
                        self.send(format!("{tag} BAD {why}\r\n"));
                        self.flush().await?;
                        continue;
                    }
                }
            }
            let lifted = if self.user.is_some() {
                esearch::lift(self.frag.message_bytes())
            } else {
                Lifted::No
            };
            let decoded = match lifted {
                Lifted::Yes(command, options) => {
                    self.frag.skip_message();
                    match imap_codec::decode::Decoder::decode(&CommandCodec::default(), &command) {
                        Ok((_, command)) => {
                            self.search_return = Some(options);
                            Ok(command.into_static())
                        }
                        Err(_) => Err((
                            Some(
                                String::from_utf8_lossy(
                                    command.split(|b| *b == b' ').next().unwrap_or_default(),
                                )
                                .into_owned(),
                            ),
                            "BAD malformed command",
                        )),
                    }
                }
                Lifted::Unsupported(why) => {
                    let tag = self.frag.decode_tag().map(|t| t.inner().to_string());
                    self.frag.skip_message();
                    let tag = tag.unwrap_or_else(|| "*".into());
                    self.send(format!("{tag} BAD {why}\r\n"));
                    self.flush().await?;
                    continue;
                }
                Lifted::No => match self.frag.decode_message(&CommandCodec::default()) {
                    Ok(command) => Ok(command.into_static()),
                    Err(DecodeMessageError::MessagePoisoned { .. })
                    | Err(DecodeMessageError::MessageTooLong { .. }) => Err((
                        self.frag.decode_tag().map(|t| t.inner().to_string()),
                        "NO [TOOBIG] command or literal over the limit",
                    )),
                    Err(err) => {
                        tracing::debug!(peer = %self.peer, error = ?err, "malformed IMAP command");
                        Err((
                            self.frag.decode_tag().map(|t| t.inner().to_string()),
                            "BAD malformed command",
                        ))
                    }
                },
            };
            match decoded {
                Ok(command) => self.command(command).await?,
                Err((tag, text)) => {
                    let tag = tag.unwrap_or_else(|| "*".into());
                    self.send(format!("{tag} {text}\r\n"));
                }
            }
            self.flush().await?;
        }
        let _ = self.conn.shutdown().await;
        Ok(())
    }

    /// Whether the logged-in mailbox was removed, suspended or given another password since
    /// login; the session then ends.
    fn revoked(&self) -> bool {
        self.user.as_ref().is_some_and(|user| {
            self.runtime
                .config
                .get()
                .still_serves(&user.address, &user.password_hash, LoginProtocol::Imap)
                .is_none()
        })
    }

    fn end_revoked(&mut self) {
        self.send("* BYE [UNAVAILABLE] this account was suspended or removed, or its password changed\r\n");
        self.closed = true;
    }

    async fn command(&mut self, command: Command<'static>) -> io::Result<()> {
        if self.revoked() {
            self.end_revoked();
            return Ok(());
        }
        let tag = command.tag.inner().to_string();
        let name = command.body.name();
        let restricts_expunge = matches!(
            &command.body,
            CommandBody::Fetch { uid: false, .. }
                | CommandBody::Store { uid: false, .. }
                | CommandBody::Search { uid: false, .. }
                | CommandBody::Sort { uid: false, .. }
                | CommandBody::Thread { uid: false, .. }
        );
        let done = match command.body {
            CommandBody::Capability => {
                let caps = self.capabilities();
                self.send(format!("* CAPABILITY {caps}\r\n"));
                Ok("OK CAPABILITY completed".into())
            }
            CommandBody::Noop | CommandBody::Check => Ok(format!("OK {name} completed")),
            CommandBody::Logout => {
                self.send("* BYE logging out\r\n");
                self.closed = true;
                Ok("OK LOGOUT completed".into())
            }
            CommandBody::Id { .. } => {
                self.send("* ID (\"name\" \"kubemail\" \"vendor\" \"kubemail\")\r\n");
                Ok("OK ID completed".into())
            }
            CommandBody::StartTLS => return self.start_tls(&tag).await,
            CommandBody::Login { username, password } => {
                let username = String::from_utf8_lossy(username.as_ref()).into_owned();
                let password = String::from_utf8_lossy(password.declassify().as_ref()).into_owned();
                self.login(&username, &password).await
            }
            CommandBody::Authenticate {
                mechanism,
                initial_response,
            } => {
                self.authenticate(mechanism, initial_response.map(|r| r.declassify().to_vec()))
                    .await?
            }
            _ if self.user.is_none() => no("log in first"),
            CommandBody::Enable { capabilities } => Ok(self.enable(capabilities)),
            CommandBody::Compress { .. } => return self.compress(&tag).await,
            CommandBody::Namespace => {
                self.send("* NAMESPACE ((\"\" \"/\")) NIL NIL\r\n");
                Ok("OK NAMESPACE completed".into())
            }
            CommandBody::List {
                reference,
                mailbox_wildcard,
            } => self.list(&reference, &mailbox_wildcard, false).await,
            CommandBody::Lsub {
                reference,
                mailbox_wildcard,
            } => self.list(&reference, &mailbox_wildcard, true).await,
            CommandBody::Subscribe { mailbox } => {
                let folder = folder_name(&mailbox);
                self.blocking(move |s, m| s.set_subscribed(&m, &folder, true))
                    .await
                    .map(|()| "OK SUBSCRIBE completed".into())
                    .map_err(|e| store_failure(&e))
            }
            CommandBody::Unsubscribe { mailbox } => {
                let folder = folder_name(&mailbox);
                self.blocking(move |s, m| s.set_subscribed(&m, &folder, false))
                    .await
                    .map(|()| "OK UNSUBSCRIBE completed".into())
                    .map_err(|e| store_failure(&e))
            }
            CommandBody::Create { mailbox } => {
                let folder = folder_name(&mailbox);
                let folder = folder.trim_end_matches('/').to_string();
                self.blocking(move |s, m| s.create_folder(&m, &folder))
                    .await
                    .map(|()| "OK CREATE completed".into())
                    .map_err(|e| store_failure(&e))
            }
            CommandBody::Delete { mailbox } => {
                let folder = folder_name(&mailbox);
                if self.selected.as_ref().is_some_and(|s| s.folder == folder) {
                    self.selected = None;
                }
                self.blocking(move |s, m| s.delete_folder(&m, &folder))
                    .await
                    .map(|()| "OK DELETE completed".into())
                    .map_err(|e| store_failure(&e))
            }
            CommandBody::Rename { from, to } => {
                let (from, to) = (folder_name(&from), folder_name(&to));
                self.blocking(move |s, m| s.rename_folder(&m, &from, &to))
                    .await
                    .map(|()| "OK RENAME completed".into())
                    .map_err(|e| store_failure(&e))
            }
            CommandBody::Status {
                mailbox,
                item_names,
            } => self.status(&mailbox, &item_names).await,
            CommandBody::Select {
                mailbox,
                parameters,
            } => self.select(&mailbox, false, &parameters).await,
            CommandBody::Examine {
                mailbox,
                parameters,
            } => self.select(&mailbox, true, &parameters).await,
            CommandBody::Append {
                mailbox,
                flags,
                date,
                message,
            } => {
                let bytes = match message {
                    LiteralOrLiteral8::Literal(l) => l.into_inner(),
                    LiteralOrLiteral8::Literal8(l) => l.data,
                };
                let date = date.map(|d| d.as_ref().timestamp());
                self.append(&mailbox, &flags, date, bytes).await
            }
            CommandBody::GetQuotaRoot { mailbox } => {
                let folder = folder_name(&mailbox);
                let mut line = Vec::new();
                write::string(&mut line, folder.as_bytes());
                let line = String::from_utf8_lossy(&line).into_owned();
                if self.user.as_ref().and_then(|u| u.quota).is_some() {
                    self.send(format!("* QUOTAROOT {line} \"\"\r\n"));
                    self.quota().await;
                } else {
                    self.send(format!("* QUOTAROOT {line}\r\n"));
                }
                Ok("OK GETQUOTAROOT completed".into())
            }
            CommandBody::GetQuota { root } => {
                if root.as_ref().is_empty() && self.user.as_ref().and_then(|u| u.quota).is_some() {
                    self.quota().await;
                    Ok("OK GETQUOTA completed".into())
                } else {
                    no("[NONEXISTENT] no such quota root")
                }
            }
            CommandBody::SetQuota { .. } => {
                no("[NOPERM] quotas are set on the Mailbox object, not over IMAP")
            }
            _ if self.selected.is_none() => not_selected(),
            CommandBody::Close => {
                let expunged = self.expunge_deleted(None, false).await;
                self.selected = None;
                self.changes = None;
                expunged.map(|_| "OK CLOSE completed".into())
            }
            CommandBody::Unselect => {
                self.selected = None;
                self.changes = None;
                Ok("OK UNSELECT completed".into())
            }
            CommandBody::Expunge => self
                .expunge_deleted(None, true)
                .await
                .map(|_| "OK EXPUNGE completed".into()),
            CommandBody::ExpungeUid { sequence_set } => self
                .expunge_deleted(Some(&sequence_set), true)
                .await
                .map(|_| "OK UID EXPUNGE completed".into()),
            CommandBody::Fetch {
                sequence_set,
                macro_or_item_names,
                uid,
                modifiers,
            } => {
                self.fetch(&sequence_set, macro_or_item_names, uid, &modifiers)
                    .await?
            }
            CommandBody::Store {
                sequence_set,
                kind,
                response,
                flags,
                uid,
                modifiers,
            } => {
                let unchanged_since = modifiers
                    .iter()
                    .map(|StoreModifier::UnchangedSince(n)| *n)
                    .next();
                let store = FlagStore {
                    kind,
                    response,
                    uid,
                    unchanged_since,
                };
                self.store_flags(&sequence_set, &flags, store).await
            }
            CommandBody::Search {
                charset,
                criteria,
                uid,
            } => {
                if charset.as_ref().is_none_or(known_charset) {
                    self.search(&tag, criteria, uid).await
                } else {
                    no("[BADCHARSET (US-ASCII UTF-8)] unsupported charset")
                }
            }
            CommandBody::Sort {
                sort_criteria,
                charset,
                search_criteria,
                uid,
            } => {
                if known_charset(&charset) {
                    let order = Arrange::Sort(sort_criteria.into_inner());
                    self.arrange(order, search_criteria, uid).await
                } else {
                    no("[BADCHARSET (US-ASCII UTF-8)] unsupported charset")
                }
            }
            CommandBody::Thread {
                algorithm,
                charset,
                search_criteria,
                uid,
            } => {
                let order = match algorithm {
                    ThreadingAlgorithm::References => Some(Arrange::References),
                    ThreadingAlgorithm::OrderedSubject => Some(Arrange::OrderedSubject),
                    ThreadingAlgorithm::Other(_) => None,
                };
                match order {
                    None => bad("THREAD offers REFERENCES and ORDEREDSUBJECT"),
                    Some(_) if !known_charset(&charset) => {
                        no("[BADCHARSET (US-ASCII UTF-8)] unsupported charset")
                    }
                    Some(order) => self.arrange(order, search_criteria, uid).await,
                }
            }
            CommandBody::Copy {
                sequence_set,
                mailbox,
                uid,
            } => self.copy(&sequence_set, &mailbox, uid, false).await,
            CommandBody::Move {
                sequence_set,
                mailbox,
                uid,
            } => self.copy(&sequence_set, &mailbox, uid, true).await,
            CommandBody::Idle => return self.idle(&tag).await,
            // Every command imap-codec parses with the features on is handled above; one a
            // new feature adds is refused until it is.
            #[allow(unreachable_patterns)]
            _ => bad(format!("{name} is not supported")),
        };
        // RETURN options belong to the SEARCH they came with, answered or not.
        self.search_return = None;
        if self.selected.is_some() && !self.closed {
            self.refresh(!restricts_expunge).await;
        }
        match done {
            Ok(text) => self.send(format!("{tag} {text}\r\n")),
            Err(text) => self.send(format!("{tag} {text}\r\n")),
        }
        Ok(())
    }

    /// Runs a store call for the logged-in mailbox on a blocking thread.
    async fn blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce(&dyn crate::store::Store, String) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        let mailbox = self
            .user
            .as_ref()
            .map(|u| u.address.clone())
            .unwrap_or_default();
        let store = self.runtime.store.clone();
        tokio::task::spawn_blocking(move || f(store.as_ref(), mailbox))
            .await
            .map_err(|e| StoreError::Io(io::Error::other(e)))?
    }

    /// Reports changes to the selected folder made elsewhere.
    async fn refresh(&mut self, expunges_allowed: bool) {
        let changed = self
            .changes
            .as_mut()
            .is_some_and(|rx| rx.has_changed().unwrap_or(false));
        if !changed {
            return;
        }
        if let Some(rx) = self.changes.as_mut() {
            rx.borrow_and_update();
        }
        let Some((folder, claims)) = self
            .selected
            .as_ref()
            .map(|s| (s.folder.clone(), !s.read_only && self.reporting.recent))
        else {
            return;
        };
        // New mail is `\Recent` in the first read-write session to hear of it.
        let fresh = self
            .blocking(move |s, m| {
                let claimed = if claims {
                    s.claim_recent(&m, &folder)?
                } else {
                    Vec::new()
                };
                Ok((claimed, s.index(&m, &folder)?))
            })
            .await;
        let mut out = Vec::new();
        match (fresh, self.selected.as_mut()) {
            (Ok((claimed, fresh)), Some(selected)) => {
                let (exists, recent) = (selected.messages.len(), selected.recent_count());
                selected.recent.extend(claimed);
                selected.refresh(fresh, expunges_allowed, self.reporting, &mut out);
                let now = selected.recent_count();
                if self.reporting.recent && (now != recent || selected.messages.len() > exists) {
                    out.extend_from_slice(format!("* {now} RECENT\r\n").as_bytes());
                }
            }
            (Err(StoreError::NoSuchFolder(_)), Some(_)) => {
                out.extend_from_slice(b"* BYE the selected folder was deleted\r\n");
                self.closed = true;
            }
            _ => {}
        }
        if !expunges_allowed {
            // Held-back expunges are reported at the next command that allows them.
            if let Some(rx) = self.changes.as_mut() {
                rx.mark_changed();
            }
        }
        self.out.extend_from_slice(&out);
    }

    /// COMPRESS DEFLATE (RFC 4978): the tagged OK goes out as it is, everything after it both
    /// ways is DEFLATE. A client must wait for the OK before it sends compressed bytes.
    async fn compress(&mut self, tag: &str) -> io::Result<()> {
        if self.deflate.is_some() {
            self.send(format!(
                "{tag} NO [COMPRESSIONACTIVE] DEFLATE is already on\r\n"
            ));
            return Ok(());
        }
        let Ok(permit) = self.runtime.deflate_sessions.clone().try_acquire_owned() else {
            self.send(format!(
                "{tag} NO [LIMIT] too many compressed sessions, go on without\r\n"
            ));
            return Ok(());
        };
        self.send(format!("{tag} OK DEFLATE active\r\n"));
        self.flush().await?;
        self.conn.start_deflate();
        self.deflate = Some(permit);
        Ok(())
    }

    async fn start_tls(&mut self, tag: &str) -> io::Result<()> {
        let config = match self.runtime.tls.get() {
            Some(c) if !self.tls => c,
            _ => {
                self.send(format!("{tag} BAD STARTTLS is not available now\r\n"));
                return Ok(());
            }
        };
        self.send(format!("{tag} OK begin TLS negotiation now\r\n"));
        self.flush().await?;
        if !self.conn.start_tls(config).await {
            self.closed = true;
            return Ok(());
        }
        self.tls = true;
        // RFC 3501 section 6.2.1: anything the client sent after STARTTLS in the clear is
        // discarded, so a man in the middle cannot inject commands into the TLS session.
        self.frag = Fragmentizer::new(self.max_literal.saturating_add(LINE_LIMIT as u32));
        Ok(())
    }

    async fn login(&mut self, username: &str, password: &str) -> Done {
        if self.user.is_some() {
            return bad("already logged in");
        }
        if !self.tls && !self.allow_plaintext {
            return no("[PRIVACYREQUIRED] use STARTTLS or port 993 before logging in");
        }
        let config = self.runtime.config.get();
        if !self
            .runtime
            .auth_limiter
            .begin(self.peer, config.raw.limits.auth_failures_per_minute)
        {
            return no("[UNAVAILABLE] too many failed logins, try again later");
        }
        let index = match auth::login(&config, username, password, LoginProtocol::Imap).await {
            Ok(i) => {
                self.runtime.auth_limiter.succeeded(self.peer);
                i
            }
            Err(_) => {
                crate::metrics::auth_failed("imap");
                tokio::time::sleep(Duration::from_secs(1)).await;
                return no("[AUTHENTICATIONFAILED] invalid credentials");
            }
        };
        let mailbox = config.mailbox(index);
        let address = mailbox.address.to_ascii_lowercase();
        self.user = Some(User {
            address,
            quota: mailbox.quota_bytes,
            password_hash: mailbox.password_hash.clone(),
        });
        if let Err(err) = self.blocking(|s, m| s.ensure_default_folders(&m)).await {
            tracing::warn!(error = %err, "creating the default folders failed");
        }
        Ok(format!("OK [CAPABILITY {}] logged in", self.capabilities()))
    }

    async fn authenticate(
        &mut self,
        mechanism: AuthMechanism<'_>,
        initial: Option<Vec<u8>>,
    ) -> io::Result<Done> {
        if !matches!(mechanism, AuthMechanism::Plain) {
            return Ok(no("unsupported mechanism; use PLAIN"));
        }
        if !self.tls && !self.allow_plaintext {
            return Ok(no(
                "[PRIVACYREQUIRED] use STARTTLS or port 993 before logging in",
            ));
        }
        let response = match initial {
            Some(r) => r,
            None => {
                self.send("+ \r\n");
                self.flush().await?;
                match self.read_authenticate_data().await? {
                    Some(r) => r,
                    None => return Ok(bad("authentication cancelled")),
                }
            }
        };
        let mut fields = response.split(|b| *b == 0);
        let (_authz, user, pass) = (fields.next(), fields.next(), fields.next());
        match (user, pass, fields.next()) {
            (Some(user), Some(pass), None) => {
                let user = String::from_utf8_lossy(user).into_owned();
                let pass = String::from_utf8_lossy(pass).into_owned();
                Ok(self.login(&user, &pass).await)
            }
            _ => Ok(bad("malformed PLAIN response")),
        }
    }

    /// Reads one line of SASL data; `None` when the client cancels.
    async fn read_authenticate_data(&mut self) -> io::Result<Option<Vec<u8>>> {
        let mut buf = vec![0u8; 4096];
        loop {
            if let Some(FragmentInfo::Line { .. }) = self.frag.progress() {
                let data = match self.frag.decode_message(&AuthenticateDataCodec::default()) {
                    Ok(AuthenticateData::Continue(d)) => Some(d.declassify().to_vec()),
                    _ => None,
                };
                return Ok(data);
            }
            let n = tokio::time::timeout(self.command_timeout, self.conn.read(&mut buf))
                .await
                .unwrap_or(Ok(0))?;
            if n == 0 {
                self.closed = true;
                return Ok(None);
            }
            self.frag.enqueue_bytes(&buf[..n]);
            if self.frag.message_bytes().len() + n > AUTHENTICATE_LINE_LIMIT {
                self.send("* BYE [TOOBIG] authentication data over the limit\r\n");
                self.flush().await?;
                self.closed = true;
                return Ok(None);
            }
        }
    }

    fn enable(&mut self, capabilities: Vec1<CapabilityEnable<'_>>) -> String {
        let mut enabled = Vec::new();
        for c in capabilities.as_ref() {
            match c {
                CapabilityEnable::CondStore => {
                    self.enable_condstore();
                    if !enabled.contains(&"CONDSTORE") {
                        enabled.push("CONDSTORE");
                    }
                }
                // QRESYNC implies CONDSTORE (RFC 7162 s3.2.3).
                CapabilityEnable::Other(_) if c.to_string().eq_ignore_ascii_case("QRESYNC") => {
                    self.enable_condstore();
                    self.reporting.vanished = true;
                    if !enabled.contains(&"QRESYNC") {
                        enabled.push("QRESYNC");
                    }
                }
                CapabilityEnable::Other(_) if c.to_string().eq_ignore_ascii_case("IMAP4rev2") => {
                    self.rev2 = true;
                    self.reporting.recent = false;
                    if !enabled.contains(&"IMAP4rev2") {
                        enabled.push("IMAP4rev2");
                    }
                }
                _ => {}
            }
        }
        if !enabled.is_empty() {
            self.send(format!("* ENABLED {}\r\n", enabled.join(" ")));
        }
        "OK ENABLE completed".into()
    }

    /// CONDSTORE on, by ENABLE or by the first command that uses it (RFC 7162 s3.1). With a
    /// folder selected, the client learns its HIGHESTMODSEQ now (s3.1.2.1).
    fn enable_condstore(&mut self) {
        if self.reporting.modseq {
            return;
        }
        self.reporting.modseq = true;
        if let Some(selected) = &self.selected {
            let line = format!(
                "* OK [HIGHESTMODSEQ {}] mod-sequences on\r\n",
                selected.highest_modseq
            );
            self.send(line);
        }
    }

    /// An extended LIST as a command: the same checks before and reports after as the rest.
    async fn extended_list_command(&mut self, list: ExtendedList) {
        if self.revoked() {
            self.end_revoked();
            return;
        }
        let tag = list.tag.clone();
        let done = self.extended_list(list).await;
        if self.selected.is_some() && !self.closed {
            self.refresh(true).await;
        }
        match done {
            Ok(text) | Err(text) => self.send(format!("{tag} {text}\r\n")),
        }
    }

    /// The mailbox's folders and subscriptions, for LIST and LSUB.
    async fn folders_and_subscriptions(&self) -> Result<(Vec<String>, Vec<String>), String> {
        self.blocking(|s, m| Ok((s.folders(&m)?, s.subscriptions(&m)?)))
            .await
            .map_err(|e| store_failure(&e))
    }

    /// LIST-EXTENDED (RFC 5258) and LIST-STATUS (RFC 5819).
    async fn extended_list(&mut self, list: ExtendedList) -> Done {
        let (folders, subscribed) = self.folders_and_subscriptions().await?;
        // (name, CHILDINFO SUBSCRIBED): every name once, in the order the patterns find them.
        let mut shown: Vec<(String, bool)> = Vec::new();
        for pattern in &list.patterns {
            if pattern.is_empty() && !list.subscribed {
                self.send("* LIST (\\Noselect) \"/\" \"\"\r\n");
                continue;
            }
            let full = canonical_inbox(&format!("{}{pattern}", list.reference));
            let matches =
                |name: &str| pattern_matches(full.as_bytes(), canonical_inbox(name).as_bytes());
            let candidates = if list.subscribed {
                &subscribed
            } else {
                &folders
            };
            for name in candidates {
                if matches(name) && !shown.iter().any(|(n, _)| n == name) {
                    shown.push((name.clone(), false));
                }
            }
            if list.recursive_match {
                // A parent that matches while only a child is subscribed (RFC 5258 s3.5).
                for name in &folders {
                    let prefix = format!("{name}/");
                    let child_subscribed = subscribed.iter().any(|s| s.starts_with(&prefix));
                    if child_subscribed && matches(name) && !shown.iter().any(|(n, _)| n == name) {
                        shown.push((name.clone(), true));
                    }
                }
            }
        }
        for (name, child_info) in shown {
            let exists = folders.contains(&name);
            if list.special_use && special_use(&name).is_none() {
                continue;
            }
            let shows_subscribed =
                (list.subscribed || list.return_subscribed) && subscribed.contains(&name);
            let attributes = list_attributes(&name, &folders, shows_subscribed);
            let mut line = format!("* LIST ({}) \"/\" ", attributes.join(" ")).into_bytes();
            write::string(&mut line, name.as_bytes());
            if child_info {
                line.extend_from_slice(b" (\"CHILDINFO\" (\"SUBSCRIBED\"))");
            }
            line.extend_from_slice(b"\r\n");
            self.send(line);
            // RFC 5819: the STATUS of every selectable name, right after its LIST line.
            if let (Some(items), true) = (&list.status, exists) {
                let folder = name.clone();
                let Ok(index) = self.blocking(move |s, m| s.index(&m, &folder)).await else {
                    continue;
                };
                if items.iter().any(|i| i == "HIGHESTMODSEQ") {
                    self.enable_condstore();
                }
                let values: Vec<String> = items
                    .iter()
                    .filter_map(|i| status_value(&index, i))
                    .collect();
                let mut line = b"* STATUS ".to_vec();
                write::string(&mut line, name.as_bytes());
                line.extend_from_slice(format!(" ({})\r\n", values.join(" ")).as_bytes());
                self.send(line);
            }
        }
        Ok("OK LIST completed".into())
    }

    async fn list(
        &mut self,
        reference: &Mailbox<'_>,
        pattern: &ListMailbox<'_>,
        subscribed_only: bool,
    ) -> Done {
        let reference = match reference {
            Mailbox::Inbox => INBOX.to_string(),
            Mailbox::Other(o) => String::from_utf8_lossy(o.as_ref()).into_owned(),
        };
        let pattern = match pattern {
            ListMailbox::Token(t) => String::from_utf8_lossy(t.as_ref()).into_owned(),
            ListMailbox::String(s) => String::from_utf8_lossy(s.as_ref()).into_owned(),
        };
        let command = if subscribed_only { "LSUB" } else { "LIST" };
        if pattern.is_empty() && !subscribed_only {
            self.send("* LIST (\\Noselect) \"/\" \"\"\r\n");
            return Ok("OK LIST completed".into());
        }
        let full = format!("{reference}{pattern}");
        let (folders, subscribed) = self.folders_and_subscriptions().await?;
        let full = canonical_inbox(&full);
        let names: Vec<&String> = if subscribed_only {
            subscribed.iter().collect()
        } else {
            folders.iter().collect()
        };
        for name in names {
            if !pattern_matches(full.as_bytes(), canonical_inbox(name).as_bytes()) {
                continue;
            }
            let attributes = list_attributes(name, &folders, false);
            let mut line = format!("* {command} ({}) \"/\" ", attributes.join(" ")).into_bytes();
            write::string(&mut line, name.as_bytes());
            line.extend_from_slice(b"\r\n");
            self.send(line);
        }
        if subscribed_only && full.contains('%') {
            // RFC 3501 s6.3.9: with `%`, a subscribed `foo/bar` under an unsubscribed `foo`
            // shows as `foo`, flagged \Noselect.
            let mut parents: Vec<String> = Vec::new();
            for name in &subscribed {
                let parts: Vec<&str> = name.split('/').collect();
                for n in 1..parts.len() {
                    let parent = parts[..n].join("/");
                    let shown = subscribed.contains(&parent) || parents.contains(&parent);
                    if !shown
                        && pattern_matches(full.as_bytes(), canonical_inbox(&parent).as_bytes())
                    {
                        parents.push(parent);
                    }
                }
            }
            for parent in parents {
                let mut line = b"* LSUB (\\Noselect) \"/\" ".to_vec();
                write::string(&mut line, parent.as_bytes());
                line.extend_from_slice(b"\r\n");
                self.send(line);
            }
        }
        Ok(format!("OK {command} completed"))
    }

    async fn status(&mut self, mailbox: &Mailbox<'_>, items: &[StatusDataItemName]) -> Done {
        let folder = folder_name(mailbox);
        let name = folder.clone();
        let index = match self.blocking(move |s, m| s.index(&m, &name)).await {
            Ok(i) => i,
            Err(e) => return Err(store_failure(&e)),
        };
        let mut parts = Vec::new();
        for item in items {
            let name = match item {
                StatusDataItemName::Messages => "MESSAGES",
                StatusDataItemName::Recent if self.rev2 => {
                    return bad("RECENT is not IMAP4rev2's");
                }
                StatusDataItemName::Recent => "RECENT",
                StatusDataItemName::UidNext => "UIDNEXT",
                StatusDataItemName::UidValidity => "UIDVALIDITY",
                StatusDataItemName::Unseen => "UNSEEN",
                StatusDataItemName::Deleted => "DELETED",
                StatusDataItemName::DeletedStorage => "DELETED-STORAGE",
                StatusDataItemName::Size => "SIZE",
                StatusDataItemName::HighestModSeq => {
                    self.enable_condstore();
                    "HIGHESTMODSEQ"
                }
                #[allow(unreachable_patterns)]
                _ => continue,
            };
            parts.extend(status_value(&index, name));
        }
        let mut line = b"* STATUS ".to_vec();
        write::string(&mut line, folder.as_bytes());
        line.extend_from_slice(format!(" ({})\r\n", parts.join(" ")).as_bytes());
        self.send(line);
        Ok("OK STATUS completed".into())
    }

    async fn select(
        &mut self,
        mailbox: &Mailbox<'_>,
        read_only: bool,
        parameters: &[SelectParameter],
    ) -> Done {
        let mut resync = None;
        for parameter in parameters {
            match parameter {
                SelectParameter::CondStore => self.enable_condstore(),
                SelectParameter::QResync { .. } if !self.reporting.vanished => {
                    return bad("QRESYNC is not enabled (ENABLE QRESYNC first)");
                }
                SelectParameter::QResync {
                    mod_sequence_value, ..
                } if mod_sequence_value.get() > MAX_MODSEQ => {
                    return bad("a mod-sequence is at most 9223372036854775807");
                }
                SelectParameter::QResync {
                    uid_validity,
                    mod_sequence_value,
                    known_uids,
                    ..
                } => resync = Some((uid_validity.get(), mod_sequence_value.get(), known_uids)),
            }
        }
        // RFC 7162 s3.2.11: what follows is the new folder's, not the one closed.
        if self.selected.take().is_some() {
            self.send("* OK [CLOSED] previous folder closed\r\n");
        }
        self.changes = None;
        let folder = folder_name(mailbox);
        let address = self
            .user
            .as_ref()
            .map(|u| u.address.clone())
            .unwrap_or_default();
        let mut changes = self.runtime.store.changes(&address);
        changes.borrow_and_update();
        let name = folder.clone();
        // SELECT claims the messages nobody has seen: `\Recent` here and nowhere else. EXAMINE
        // changes nothing and shows them as they are.
        // An IMAP4rev2 session has no `\Recent` and claims nothing (it would take it from
        // IMAP4rev1 clients on the same mailbox).
        let claims = !read_only && self.reporting.recent;
        let opened = self
            .blocking(move |s, m| {
                let claimed = if !claims {
                    Vec::new()
                } else {
                    s.claim_recent(&m, &name)?
                };
                Ok((claimed, s.index(&m, &name)?))
            })
            .await;
        let (claimed, index) = match opened {
            Ok(opened) => opened,
            Err(e) => return Err(store_failure(&e)),
        };
        let recent: std::collections::HashSet<u32> = if read_only {
            index
                .messages
                .iter()
                .filter(|m| m.is_new())
                .map(|m| m.uid)
                .collect()
        } else {
            claimed.into_iter().collect()
        };
        let flags = write::folder_flags(&index.keywords);
        self.send(format!("* FLAGS {flags}\r\n"));
        self.send(format!("* {} EXISTS\r\n", index.messages.len()));
        if !self.rev2 {
            let count = index
                .messages
                .iter()
                .filter(|m| recent.contains(&m.uid))
                .count();
            self.send(format!("* {count} RECENT\r\n"));
            if let Some(first) = index.messages.iter().position(|m| !m.flags.contains('S')) {
                self.send(format!("* OK [UNSEEN {}] first unseen\r\n", first + 1));
            }
        }
        if read_only {
            self.send("* OK [PERMANENTFLAGS ()] read-only\r\n");
        } else {
            // `\*`: clients may make new keywords (26 per folder).
            let permanent = format!("{} \\*)", flags.trim_end_matches(')'));
            self.send(format!(
                "* OK [PERMANENTFLAGS {permanent}] flags permitted\r\n"
            ));
        }
        self.send(format!(
            "* OK [UIDVALIDITY {}] UIDs valid\r\n* OK [UIDNEXT {}] predicted next UID\r\n\
             * OK [HIGHESTMODSEQ {}] mod-sequences kept\r\n",
            index.uid_validity, index.uid_next, index.highest_modseq
        ));
        if self.rev2 {
            let mut line = b"* LIST () \"/\" ".to_vec();
            write::string(&mut line, folder.as_bytes());
            line.extend_from_slice(b"\r\n");
            self.send(line);
        }
        let mut selected = Selected::new(folder, read_only, index);
        selected.recent = recent;
        // QRESYNC (RFC 7162 s3.2.5): what changed since the client's last sync, in this
        // answer, when its cache is for this UIDVALIDITY.
        if let Some((validity, since, known)) = resync
            && validity == selected.uid_validity
        {
            // `*` reaches past the last message: UIDs expunged above it are gone too (naming
            // more than the client holds is allowed; it ignores what it never had).
            let known = match known {
                Some(set) => view::ranges(set, u32::MAX),
                None => vec![(1, u32::MAX)],
            };
            let vanished = selected.vanished(&known);
            if !vanished.is_empty() {
                let set = write::range_set(&vanished);
                self.send(format!("* VANISHED (EARLIER) {set}\r\n"));
            }
            for (i, m) in selected.messages.iter().enumerate() {
                if m.modseq > since {
                    let recent = selected.is_recent(m.uid, self.reporting);
                    let line = format!(
                        "* {} FETCH (UID {} FLAGS {} MODSEQ ({}))\r\n",
                        i + 1,
                        m.uid,
                        write::session_flags(&m.flags, &selected.keywords, recent),
                        m.modseq
                    );
                    self.out.extend_from_slice(line.as_bytes());
                    // A folder of 100,000 changed messages: sent as it is written.
                    if self.out.len() > 256 * 1024 && self.flush().await.is_err() {
                        self.closed = true;
                        break;
                    }
                }
            }
        }
        self.selected = Some(selected);
        self.changes = Some(changes);
        Ok(if read_only {
            "OK [READ-ONLY] EXAMINE completed".into()
        } else {
            "OK [READ-WRITE] SELECT completed".into()
        })
    }

    async fn over_quota(&self, adding: u64) -> bool {
        let Some(limit) = self.user.as_ref().and_then(|u| u.quota) else {
            return false;
        };
        match self.blocking(|s, m| s.usage(&m)).await {
            Ok(usage) => usage.bytes + adding > limit,
            Err(_) => false,
        }
    }

    async fn quota(&mut self) {
        let limit = self.user.as_ref().and_then(|u| u.quota).unwrap_or_default();
        let used = self
            .blocking(|s, m| s.usage(&m))
            .await
            .map(|u| u.bytes)
            .unwrap_or_default();
        self.send(format!(
            "* QUOTA \"\" (STORAGE {} {})\r\n",
            used.div_ceil(1024),
            limit / 1024
        ));
    }

    async fn append(
        &mut self,
        mailbox: &Mailbox<'_>,
        flags: &[Flag<'_>],
        date: Option<i64>,
        bytes: Cow<'static, [u8]>,
    ) -> Done {
        let folder = folder_name(mailbox);
        if self.over_quota(bytes.len() as u64).await {
            return no("[OVERQUOTA] the mailbox is over its quota");
        }
        let (mut letters, keywords) = letters(flags);
        let stored = self
            .blocking(move |s, m| {
                letters.push_str(&s.keyword_letters(&m, &folder, &keywords)?);
                // Maildir's info letters in ASCII order.
                let letters = FlagChange::Replace(letters).apply("");
                let mut spool = s.spool()?;
                spool.write(&bytes)?;
                let spooled = spool.finish()?;
                s.append(&m, &folder, spooled, &letters, date)
            })
            .await;
        match stored {
            Ok((validity, uid)) => Ok(format!("OK [APPENDUID {validity} {uid}] APPEND completed")),
            Err(StoreError::NoSuchFolder(f)) => no(format!("[TRYCREATE] no folder {f:?}")),
            Err(e) => Err(store_failure(&e)),
        }
    }

    /// EXPUNGE, UID EXPUNGE and CLOSE: removes \Deleted messages (of `only`, when given).
    async fn expunge_deleted(&mut self, only: Option<&SequenceSet>, report: bool) -> Done {
        let Some(selected) = self.selected.as_ref() else {
            return not_selected();
        };
        if selected.read_only {
            return if report {
                no("[READ-ONLY] the folder is read-only")
            } else {
                Ok(String::new())
            };
        }
        let allowed: Option<Vec<usize>> = match only {
            Some(set) => Some(
                selected
                    .resolve(set, true)
                    .map_err(|e| format!("BAD {e}"))?,
            ),
            None => None,
        };
        let doomed: Vec<usize> = selected
            .messages
            .iter()
            .enumerate()
            .filter(|(i, m)| {
                m.flags.contains('T') && allowed.as_ref().is_none_or(|a| a.contains(i))
            })
            .map(|(i, _)| i)
            .collect();
        if doomed.is_empty() {
            return Ok(String::new());
        }
        let folder = selected.folder.clone();
        let metas: Vec<MessageMeta> = doomed
            .iter()
            .map(|i| selected.messages[*i].clone())
            .collect();
        let removed = match self
            .blocking(move |s, m| s.expunge_deleted(&m, &folder, &metas))
            .await
        {
            Ok(removed) => removed,
            Err(e) => return Err(store_failure(&e)),
        };
        let Some(selected) = self.selected.as_mut() else {
            return Ok(String::new());
        };
        // Only what the store removed: a message another session un-deleted meanwhile stays.
        let mut gone = Vec::new();
        for i in doomed.into_iter().rev() {
            if removed.contains(&selected.messages[i].uid) {
                gone.push((i as u32 + 1, selected.messages.remove(i).uid));
            }
        }
        if report {
            self.reporting.expunged(&gone, &mut self.out);
        }
        Ok(String::new())
    }

    async fn fetch(
        &mut self,
        set: &SequenceSet,
        items: MacroOrMessageDataItemNames<'static>,
        uid: bool,
        modifiers: &[FetchModifier],
    ) -> io::Result<Done> {
        let mut changed_since = None;
        let mut vanished = false;
        for modifier in modifiers {
            match modifier {
                FetchModifier::ChangedSince(n) => changed_since = Some(n.get()),
                FetchModifier::Vanished => vanished = true,
            }
        }
        if changed_since.is_some_and(|n| n > MAX_MODSEQ) {
            return Ok(bad("a mod-sequence is at most 9223372036854775807"));
        }
        // RFC 7162 s3.2.6: VANISHED only in UID FETCH with CHANGEDSINCE, once QRESYNC is on.
        if vanished && !(uid && changed_since.is_some() && self.reporting.vanished) {
            return Ok(bad(
                "VANISHED needs UID FETCH with CHANGEDSINCE and QRESYNC enabled",
            ));
        }
        let mut items = match items {
            MacroOrMessageDataItemNames::Macro(m) => {
                m.expand().into_iter().map(|i| i.into_static()).collect()
            }
            MacroOrMessageDataItemNames::MessageDataItemNames(items) => items,
        };
        let asks_modseq = items
            .iter()
            .any(|i| matches!(i, MessageDataItemName::ModSeq));
        if changed_since.is_some() || asks_modseq {
            self.enable_condstore();
        }
        if changed_since.is_some() && !asks_modseq {
            items.push(MessageDataItemName::ModSeq);
        }
        let Some(selected) = self.selected.as_ref() else {
            return Ok(not_selected());
        };
        let mut indexes = match selected.resolve(set, uid) {
            Ok(i) => i,
            Err(e) => return Ok(bad(e)),
        };
        if let Some(since) = changed_since {
            indexes.retain(|i| selected.messages[*i].modseq > since);
        }
        if vanished {
            let gone = selected.vanished(&view::ranges(set, u32::MAX));
            if !gone.is_empty() {
                let line = format!("* VANISHED (EARLIER) {}\r\n", write::range_set(&gone));
                self.out.extend_from_slice(line.as_bytes());
            }
        }
        let read_only = selected.read_only;
        let sets_seen = !read_only
            && items.iter().any(|i| match i {
                MessageDataItemName::BodyExt { peek, .. }
                | MessageDataItemName::Binary { peek, .. } => !peek,
                MessageDataItemName::Rfc822 | MessageDataItemName::Rfc822Text => true,
                _ => false,
            });
        // RFC 7162 s3.2.4: a FETCH that sets \Seen tells a CONDSTORE client the UID and the new
        // mod-sequence too.
        let with_uid = uid || (sets_seen && self.reporting.modseq);
        if with_uid && !items.iter().any(|i| matches!(i, MessageDataItemName::Uid)) {
            items.insert(0, MessageDataItemName::Uid);
        }
        if sets_seen
            && self.reporting.modseq
            && !items
                .iter()
                .any(|i| matches!(i, MessageDataItemName::ModSeq))
        {
            items.push(MessageDataItemName::ModSeq);
        }
        let needs_contents = items.iter().any(|i| {
            !matches!(
                i,
                MessageDataItemName::Uid
                    | MessageDataItemName::Flags
                    | MessageDataItemName::InternalDate
                    | MessageDataItemName::Rfc822Size
                    | MessageDataItemName::ModSeq
            )
        });
        let folder = selected.folder.clone();
        if !needs_contents && !sets_seen {
            // Only index data: written straight from the view, no disk, no thread hand-off.
            let view = self.selected.take();
            let mut written = Ok(());
            if let Some(view) = &view {
                for i in &indexes {
                    let meta = &view.messages[*i];
                    let shown = SessionFlags {
                        seen_now: false,
                        recent: view.is_recent(meta.uid, self.reporting),
                    };
                    let _ = render_fetch(
                        &mut self.out,
                        *i as u32 + 1,
                        meta,
                        &view.keywords,
                        None,
                        &items,
                        shown,
                    );
                    if self.out.len() > 256 * 1024 {
                        written = self.flush().await;
                        if written.is_err() {
                            break;
                        }
                    }
                }
            }
            self.selected = view;
            written?;
            return Ok(Ok(format!(
                "OK {}FETCH completed",
                if uid { "UID " } else { "" }
            )));
        }
        let items = std::sync::Arc::new(items);
        let (mut expunged_meanwhile, mut over_budget) = (false, false);
        for batch in indexes.chunks(FETCH_BATCH) {
            let Some(selected) = self.selected.as_mut() else {
                break;
            };
            let mut metas: Vec<(usize, MessageMeta, bool)> = batch
                .iter()
                .map(|i| (*i, selected.messages[*i].clone(), false))
                .collect();
            if sets_seen {
                let unseen: Vec<(MessageMeta, FlagChange)> = metas
                    .iter()
                    .filter(|(_, m, _)| !m.flags.contains('S'))
                    .map(|(_, m, _)| (m.clone(), FlagChange::Add("S".into())))
                    .collect();
                if !unseen.is_empty() {
                    let name = folder.clone();
                    if let Ok(updated) = self
                        .blocking(move |s, m| s.set_flags(&m, &name, &unseen, None))
                        .await
                    {
                        for u in updated.now {
                            for (i, m, changed) in metas.iter_mut() {
                                if m.uid == u.uid {
                                    *m = u.clone();
                                    *changed = true;
                                    if let Some(sel) = self.selected.as_mut() {
                                        sel.messages[*i] = u.clone();
                                    }
                                }
                            }
                        }
                    }
                }
            }
            // Rendered a few MiB at a time (256 messages of 25 MiB would otherwise be one 6 GiB
            // buffer), flushed to the client in between.
            let mut pending = metas;
            let keywords = std::sync::Arc::new(
                self.selected
                    .as_ref()
                    .map(|s| s.keywords.clone())
                    .unwrap_or_default(),
            );
            let recent: std::sync::Arc<std::collections::HashSet<u32>> = std::sync::Arc::new(
                self.selected
                    .as_ref()
                    .filter(|_| self.reporting.recent)
                    .map(|s| s.recent.clone())
                    .unwrap_or_default(),
            );
            while !pending.is_empty() {
                let (name, items, keywords) = (folder.clone(), items.clone(), keywords.clone());
                let recent = recent.clone();
                let chunk = std::mem::take(&mut pending);
                // This session's share of the answer memory: the chunk's output, the largest
                // message read, its answer (at most twice it) and one more in the flush.
                let largest = chunk
                    .iter()
                    .map(|(_, m, _)| m.size)
                    .max()
                    .unwrap_or_default();
                let mib = if needs_contents {
                    (largest.saturating_mul(3) + (RENDER_CHUNK as u64) * 2).div_ceil(1 << 20)
                } else {
                    1
                };
                let share = mib.min(u64::from(crate::runtime::ANSWER_MEMORY_MIB)) as u32;
                // One mailbox may hold at most part of the pool, and nobody waits for it long:
                // a user's sessions that read nothing must not stall everyone's mail.
                let address = self
                    .user
                    .as_ref()
                    .map(|u| u.address.clone())
                    .unwrap_or_default();
                let mailbox = self.runtime.answer_shares.of(&address);
                let mine = share.min(crate::runtime::ANSWER_MIB_PER_MAILBOX);
                let memory = self.runtime.answer_memory.clone();
                let shares = async {
                    let mine = mailbox.acquire_many_owned(mine).await?;
                    let pool = memory.acquire_many_owned(share).await?;
                    Ok::<_, tokio::sync::AcquireError>((mine, pool))
                };
                let Ok(Ok(_shares)) = tokio::time::timeout(ANSWER_WAIT, shares).await else {
                    return Ok(no("[UNAVAILABLE] the server is busy, try again shortly"));
                };
                let rendered = self
                    .blocking(move |s, m| {
                        let mut out = Vec::new();
                        let (mut gone, mut over) = (false, false);
                        let mut chunk = chunk.into_iter();
                        for (i, meta, seen_now) in chunk.by_ref() {
                            let raw = if needs_contents {
                                match s.read(&m, &name, &meta)? {
                                    Some(raw) => Some(raw),
                                    None => {
                                        // Expunged by another session meanwhile: no answer
                                        // with other (or empty) content for this UID, ever.
                                        gone = true;
                                        continue;
                                    }
                                }
                            } else {
                                None
                            };
                            let shown = SessionFlags {
                                seen_now,
                                recent: recent.contains(&meta.uid),
                            };
                            over |= !render_fetch(
                                &mut out,
                                i as u32 + 1,
                                &meta,
                                &keywords,
                                raw.as_deref(),
                                &items,
                                shown,
                            );
                            if out.len() > RENDER_CHUNK {
                                break;
                            }
                        }
                        Ok((out, gone, over, chunk.collect::<Vec<_>>()))
                    })
                    .await;
                match rendered {
                    Ok((bytes, gone, over, rest)) => {
                        if self.out.is_empty() {
                            self.out = bytes;
                        } else {
                            self.out.extend_from_slice(&bytes);
                        }
                        expunged_meanwhile |= gone;
                        over_budget |= over;
                        pending = rest;
                    }
                    Err(e) => return Ok(Err(store_failure(&e))),
                }
                // Sent while the share is held: the memory is free once the client has it.
                self.flush().await?;
            }
        }
        if over_budget {
            return Ok(no(
                "[LIMIT] a FETCH may return each message at most twice over; ask for fewer sections",
            ));
        }
        if expunged_meanwhile {
            // RFC 5530, as Dovecot answers: the client learns of the expunge at its next NOOP.
            return Ok(no(
                "[EXPUNGEISSUED] some of the messages were expunged by another session",
            ));
        }
        Ok(Ok(format!(
            "OK {}FETCH completed",
            if uid { "UID " } else { "" }
        )))
    }

    async fn store_flags(
        &mut self,
        set: &SequenceSet,
        flags: &[Flag<'_>],
        store: FlagStore,
    ) -> Done {
        let FlagStore {
            kind,
            response,
            uid,
            unchanged_since,
        } = store;
        if unchanged_since.is_some_and(|n| n > MAX_MODSEQ) {
            return bad("a mod-sequence is at most 9223372036854775807");
        }
        if unchanged_since.is_some() {
            self.enable_condstore();
        }
        let Some(selected) = self.selected.as_ref() else {
            return not_selected();
        };
        if selected.read_only {
            return no("[READ-ONLY] the folder is read-only");
        }
        let indexes = selected.resolve(set, uid).map_err(|e| format!("BAD {e}"))?;
        let (given, keywords) = letters(flags);
        let removing = kind == StoreType::Remove;
        let messages: Vec<MessageMeta> = indexes
            .iter()
            .map(|i| selected.messages[*i].clone())
            .collect();
        let asked: Vec<u32> = messages.iter().map(|m| m.uid).collect();
        let folder = selected.folder.clone();
        let updated = self
            .blocking(move |s, m| {
                // Keywords get their letters in this folder (new ones a letter of their own);
                // one being removed needs none if the folder never had it.
                let letters = if removing {
                    let table = s.index(&m, &folder)?.keywords;
                    keywords
                        .iter()
                        .filter_map(|k| table.iter().position(|t| t.eq_ignore_ascii_case(k)))
                        .filter_map(crate::store::keyword_letter)
                        .collect::<String>()
                } else {
                    s.keyword_letters(&m, &folder, &keywords)?
                };
                let given = format!("{given}{letters}");
                // A delta, applied by the store to the flags the message has now: the
                // session's view may be stale, and writing it back would undo another
                // session's change.
                let change = match kind {
                    StoreType::Replace => FlagChange::Replace(given),
                    StoreType::Add => FlagChange::Add(given),
                    StoreType::Remove => FlagChange::Remove(given),
                };
                let changes: Vec<(MessageMeta, FlagChange)> =
                    messages.into_iter().map(|m| (m, change.clone())).collect();
                let updated = s.set_flags(&m, &folder, &changes, unchanged_since)?;
                Ok((updated, s.index(&m, &folder)?.keywords))
            })
            .await;
        let (FlagsSet { now, modified }, table) = match updated {
            Ok(u) => u,
            Err(e) => return Err(store_failure(&e)),
        };
        let stored: std::collections::HashSet<u32> = now.iter().map(|u| u.uid).collect();
        let Some(selected) = self.selected.as_mut() else {
            return Ok(String::new());
        };
        if table != selected.keywords {
            // New keywords: the folder's FLAGS grew (RFC 9051 s7.3.5).
            selected.keywords = table;
            self.out.extend_from_slice(
                format!("* FLAGS {}\r\n", write::folder_flags(&selected.keywords)).as_bytes(),
            );
        }
        for u in now {
            if let Some(i) = selected.messages.iter().position(|m| m.uid == u.uid) {
                let before = std::mem::replace(&mut selected.messages[i], u.clone());
                // With CONDSTORE every FETCH a STORE causes carries UID and MODSEQ (s3.2.4).
                let uid_part = if uid || self.reporting.modseq {
                    format!("UID {} ", u.uid)
                } else {
                    String::new()
                };
                let line = if response == StoreResponse::Answer {
                    let modseq = self.reporting.modseq_item(&u);
                    let recent = selected.is_recent(u.uid, self.reporting);
                    let flags = write::session_flags(&u.flags, &selected.keywords, recent);
                    format!("* {} FETCH ({uid_part}FLAGS {flags}{modseq})\r\n", i + 1)
                } else if self.reporting.modseq && before.modseq != u.modseq {
                    // .SILENT still tells a CONDSTORE client the new mod-sequence (RFC 7162
                    // s3.1.3), so it need not fetch it back.
                    format!("* {} FETCH ({uid_part}MODSEQ ({}))\r\n", i + 1, u.modseq)
                } else {
                    continue;
                };
                self.out.extend_from_slice(line.as_bytes());
            }
        }
        let what = if uid { "UID STORE" } else { "STORE" };
        // A conditional STORE on a message another session expunged cannot have held: NO with
        // it among the MODIFIED ones (RFC 7162 s3.1.3), so the client does not take it as done.
        let gone: Vec<u32> = if unchanged_since.is_some() {
            let refused: std::collections::HashSet<u32> = modified.iter().copied().collect();
            asked
                .iter()
                .copied()
                .filter(|u| !stored.contains(u) && !refused.contains(u))
                .collect()
        } else {
            Vec::new()
        };
        let verdict = if gone.is_empty() { "OK" } else { "NO" };
        let modified: Vec<u32> = modified.into_iter().chain(gone.iter().copied()).collect();
        if modified.is_empty() {
            return Ok(format!("OK {what} completed"));
        }
        // Left alone because they changed after UNCHANGEDSINCE: by UID for UID STORE, else
        // by sequence number.
        let mut numbers: Vec<u32> = if uid {
            modified
        } else {
            modified
                .iter()
                .filter_map(|u| selected.messages.iter().position(|m| m.uid == *u))
                .map(|i| i as u32 + 1)
                .collect()
        };
        numbers.sort_unstable();
        numbers.dedup();
        let text = format!(
            "[MODIFIED {}] {what} completed, conditional STORE failed for some",
            write::sequence_set(&numbers)
        );
        if verdict == "NO" {
            Err(format!("NO {text}; some of the messages no longer exist"))
        } else {
            Ok(format!("OK {text}"))
        }
    }

    async fn search(&mut self, tag: &str, criteria: Vec1<SearchKey<'static>>, uid: bool) -> Done {
        if self.selected.is_none() {
            return not_selected();
        }
        let key = SearchKey::And(criteria);
        let with_modseq = match self.check_criteria(&key) {
            Ok(m) => m,
            Err(refused) => return Err(refused),
        };
        let contents = search::needs_contents(&key);
        // Header keys only: answered from the header cache, filled from the files on a miss.
        let fields = if contents {
            search::header_fields(&key)
        } else {
            None
        };
        let cache = self.runtime.header_cache.clone();
        let Some(scan) = self.selected.as_ref().map(Matching::of) else {
            return not_selected();
        };
        let found = self
            .blocking(move |s, m| {
                let mut found = Vec::new();
                let mut modseqs: Vec<u64> = Vec::new();
                let read = |meta: &MessageMeta| match &fields {
                    _ if !contents => Ok(None),
                    Some(names) => {
                        let key = (m.clone(), scan.folder.clone(), scan.validity, meta.uid);
                        match cache.get(&key, names) {
                            Some(block) => Ok(Some(block)),
                            None => Ok(s
                                .read(&m, &scan.folder, meta)?
                                .map(|raw| cache.put(key, names, &raw))),
                        }
                    }
                    None => s.read(&m, &scan.folder, meta),
                };
                scan.each(&key, read, false, |seq, meta, _| {
                    found.push(if uid { meta.uid } else { seq });
                    modseqs.push(meta.modseq);
                })?;
                Ok((found, modseqs))
            })
            .await;
        let (found, modseqs) = match found {
            Ok(f) => f,
            Err(e) => return Err(store_failure(&e)),
        };
        let returns = self.search_return.take();
        // RFC 7162 s3.1.5: with a MODSEQ key, the highest mod-sequence of the messages
        // returned: with only MIN and/or MAX, of those (RFC 4731 s3.2), else of all found.
        let highest = match returns {
            Some(r) if !r.all && !r.count => [
                r.min.then(|| modseqs.first().copied()).flatten(),
                r.max.then(|| modseqs.last().copied()).flatten(),
            ]
            .into_iter()
            .flatten()
            .max(),
            _ => modseqs.iter().copied().max(),
        };
        let modseq = highest.filter(|_| with_modseq);
        if self.rev2 || returns.is_some() {
            let mut line = b"* ESEARCH (TAG ".to_vec();
            write::string(&mut line, tag.as_bytes());
            line.push(b')');
            if uid {
                line.extend_from_slice(b" UID");
            }
            let options = returns.unwrap_or(ReturnOptions {
                all: true,
                ..ReturnOptions::default()
            });
            line.extend_from_slice(esearch::results(options, &found).as_bytes());
            if let Some(n) = modseq {
                line.extend_from_slice(format!(" MODSEQ {n}").as_bytes());
            }
            line.extend_from_slice(b"\r\n");
            self.send(line);
        } else {
            let list: String = found.iter().map(|n| format!(" {n}")).collect();
            let modseq = modseq.map(|n| format!(" (MODSEQ {n})")).unwrap_or_default();
            self.send(format!("* SEARCH{list}{modseq}\r\n"));
        }
        Ok(format!(
            "OK {}SEARCH completed",
            if uid { "UID " } else { "" }
        ))
    }

    /// SORT and THREAD (RFC 5256): the messages the criteria find, read once each for their
    /// keys, sorted or threaded.
    async fn arrange(
        &mut self,
        order: Arrange,
        criteria: Vec1<SearchKey<'static>>,
        uid: bool,
    ) -> Done {
        let key = SearchKey::And(criteria);
        let with_modseq = match self.check_criteria(&key) {
            Ok(m) => m,
            Err(refused) => return Err(refused),
        };
        let Some(scan) = self.selected.as_ref().map(Matching::of) else {
            return not_selected();
        };
        let found = self
            .blocking(move |s, m| {
                let mut found = Vec::new();
                let read = |meta: &MessageMeta| s.read(&m, &scan.folder, meta);
                scan.each(&key, read, true, |seq, meta, raw| {
                    found.push(sort::keys(seq, meta, raw.unwrap_or_default()));
                })?;
                Ok(found)
            })
            .await;
        let found = match found {
            Ok(f) => f,
            Err(e) => return Err(store_failure(&e)),
        };
        let id = |k: &sort::Keys| if uid { k.uid } else { k.seq };
        let (name, line) = match order {
            Arrange::Sort(criteria) => {
                let ids: String = sort::sort(&found, &criteria)
                    .into_iter()
                    .map(|i| format!(" {}", id(&found[i])))
                    .collect();
                // RFC 7162 s3.1.5: with a MODSEQ key, the highest mod-sequence found.
                let modseq = found
                    .iter()
                    .map(|k| k.modseq)
                    .max()
                    .filter(|_| with_modseq)
                    .map(|n| format!(" (MODSEQ {n})"))
                    .unwrap_or_default();
                ("SORT", format!("* SORT{ids}{modseq}\r\n"))
            }
            Arrange::References | Arrange::OrderedSubject => {
                let threads = if matches!(order, Arrange::References) {
                    sort::references(&found)
                } else {
                    sort::ordered_subject(&found)
                };
                let text = sort::write(&threads, |i| id(&found[i]));
                let space = if text.is_empty() { "" } else { " " };
                ("THREAD", format!("* THREAD{space}{text}\r\n"))
            }
        };
        self.send(line);
        Ok(format!(
            "OK {}{name} completed",
            if uid { "UID " } else { "" }
        ))
    }

    /// What SEARCH, SORT and THREAD check of their criteria before reading anything; whether
    /// they hold a MODSEQ key (which turns CONDSTORE on).
    fn check_criteria(&mut self, key: &SearchKey<'_>) -> Result<bool, String> {
        if search::content_keys(key) > search::MAX_CONTENT_KEYS {
            return no(format!(
                "[LIMIT] at most {} text, header and date keys",
                search::MAX_CONTENT_KEYS
            ))
            .map(|_| false);
        }
        if search::largest_modseq(key) > MAX_MODSEQ {
            return bad("a mod-sequence is at most 9223372036854775807").map(|_| false);
        }
        if self.rev2 && search::uses_recent(key) {
            return bad("RECENT, NEW and OLD are not IMAP4rev2's (RFC 9051 appendix E)")
                .map(|_| false);
        }
        let with_modseq = search::uses_modseq(key);
        if with_modseq {
            self.enable_condstore();
        }
        Ok(with_modseq)
    }

    async fn copy(&mut self, set: &SequenceSet, to: &Mailbox<'_>, uid: bool, moving: bool) -> Done {
        let Some(selected) = self.selected.as_ref() else {
            return not_selected();
        };
        if moving && selected.read_only {
            return no("[READ-ONLY] the folder is read-only");
        }
        let indexes = selected.resolve(set, uid).map_err(|e| format!("BAD {e}"))?;
        let metas: Vec<MessageMeta> = indexes
            .iter()
            .map(|i| selected.messages[*i].clone())
            .collect();
        let what = if moving { "MOVE" } else { "COPY" };
        if metas.is_empty() {
            return Ok(format!("OK {what} completed (nothing matched)"));
        }
        if self.over_quota(metas.iter().map(|m| m.size).sum()).await {
            return no("[OVERQUOTA] the mailbox is over its quota");
        }
        let from = selected.folder.clone();
        let target = folder_name(to);
        let moved = metas.clone();
        let copied = self
            .blocking(move |s, m| {
                let copied = s.copy(&m, &from, &metas, &target)?;
                if moving {
                    s.expunge(&m, &from, &metas)?;
                }
                Ok(copied)
            })
            .await;
        let (validity, pairs) = match copied {
            Ok(c) => c,
            Err(StoreError::NoSuchFolder(f)) => return no(format!("[TRYCREATE] no folder {f:?}")),
            Err(e) => return Err(store_failure(&e)),
        };
        let source: Vec<u32> = pairs.iter().map(|(s, _)| *s).collect();
        let target: Vec<u32> = pairs.iter().map(|(_, t)| *t).collect();
        let code = format!(
            "COPYUID {validity} {} {}",
            write::sequence_set(&source),
            write::sequence_set(&target)
        );
        if !moving {
            return Ok(format!("OK [{code}] COPY completed"));
        }
        self.send(format!("* OK [{code}] moved\r\n"));
        if let Some(selected) = self.selected.as_mut() {
            let mut gone = Vec::new();
            for m in moved.iter().rev() {
                if let Some(i) = selected.messages.iter().position(|x| x.uid == m.uid) {
                    gone.push((i as u32 + 1, selected.messages.remove(i).uid));
                }
            }
            self.reporting.expunged(&gone, &mut self.out);
        }
        Ok("OK MOVE completed".into())
    }

    async fn idle(&mut self, tag: &str) -> io::Result<()> {
        self.send("+ idling\r\n");
        self.refresh(true).await;
        self.flush().await?;
        let mut buf = vec![0u8; 1024];
        let deadline = tokio::time::Instant::now() + AUTHENTICATED_TIMEOUT;
        // One clock for the whole IDLE: mail arriving more often than once a second must not
        // keep putting the suspension check off.
        let mut check = tokio::time::interval(REVOCATION_CHECK);
        check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            // DONE may already be buffered.
            if let Some(FragmentInfo::Line { .. }) = self.frag.progress() {
                let done = self.frag.decode_message(&IdleDoneCodec::default()).is_ok();
                if done {
                    self.refresh(true).await;
                    self.send(format!("{tag} OK IDLE terminated\r\n"));
                } else {
                    self.send(format!("{tag} BAD expected DONE\r\n"));
                }
                return Ok(());
            }
            let changed = async {
                match self.changes.as_mut() {
                    Some(rx) => rx.changed().await.is_ok(),
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                read = self.conn.read(&mut buf) => {
                    let n = read?;
                    if n == 0 {
                        self.closed = true;
                        return Ok(());
                    }
                    self.frag.enqueue_bytes(&buf[..n]);
                }
                ok = changed => {
                    if ok {
                        if let Some(rx) = self.changes.as_mut() {
                            rx.mark_changed();
                        }
                        self.refresh(true).await;
                        self.flush().await?;
                    }
                }
                () = tokio::time::sleep_until(deadline) => {
                    self.send("* BYE autologout: idle for too long\r\n");
                    self.closed = true;
                    return Ok(());
                }
                // A config reload may have suspended the account: looked at every second.
                _ = check.tick() => {
                    if self.revoked() {
                        self.end_revoked();
                        return Ok(());
                    }
                }
            }
        }
    }
}

/// What a FETCH response shows of a message besides what the store holds.
#[derive(Debug, Clone, Copy, Default)]
pub struct SessionFlags {
    /// This FETCH set `\Seen`: the new FLAGS go with the answer (RFC 9051 s6.4.5).
    pub seen_now: bool,
    /// `\Recent` in this session (IMAP4rev1).
    pub recent: bool,
}

/// Writes one untagged FETCH response.
///
/// One message's answer may hold at most twice the message and 1 MiB (the same sections asked
/// for a hundred times made one FETCH of a 2 MB message take 340 MB); past that nothing is
/// written for it and `false` comes back, for a `NO [LIMIT]`.
pub fn render_fetch(
    out: &mut Vec<u8>,
    seq: u32,
    meta: &MessageMeta,
    keywords: &[String],
    raw: Option<&[u8]>,
    items: &[MessageDataItemName<'_>],
    shown: SessionFlags,
) -> bool {
    let parsed = raw.map(message::parse);
    let parsed = parsed.as_deref();
    let raw = raw.unwrap_or_default();
    let start = out.len();
    let budget = raw.len().saturating_mul(2).saturating_add(1024 * 1024);
    out.extend_from_slice(format!("* {seq} FETCH (").as_bytes());
    for (n, item) in items.iter().enumerate() {
        if out.len() - start > budget {
            out.truncate(start);
            return false;
        }
        if n > 0 {
            out.push(b' ');
        }
        match item {
            MessageDataItemName::Uid => {
                out.extend_from_slice(format!("UID {}", meta.uid).as_bytes())
            }
            MessageDataItemName::Flags => {
                let flags = write::session_flags(&meta.flags, keywords, shown.recent);
                out.extend_from_slice(format!("FLAGS {flags}").as_bytes());
            }
            MessageDataItemName::InternalDate => out.extend_from_slice(
                format!("INTERNALDATE {}", write::date_time(meta.internal_date)).as_bytes(),
            ),
            MessageDataItemName::Rfc822Size => {
                out.extend_from_slice(format!("RFC822.SIZE {}", meta.size).as_bytes());
            }
            MessageDataItemName::ModSeq => {
                out.extend_from_slice(format!("MODSEQ ({})", meta.modseq).as_bytes());
            }
            MessageDataItemName::Envelope => {
                out.extend_from_slice(b"ENVELOPE ");
                match parsed.and_then(message::Node::root) {
                    Some(root) => message::envelope(out, &root),
                    None => out.extend_from_slice(b"(NIL NIL NIL NIL NIL NIL NIL NIL NIL NIL)"),
                }
            }
            MessageDataItemName::Body | MessageDataItemName::BodyStructure => {
                let extended = matches!(item, MessageDataItemName::BodyStructure);
                out.extend_from_slice(if extended {
                    b"BODYSTRUCTURE "
                } else {
                    b"BODY "
                });
                match parsed.and_then(message::Node::root) {
                    Some(root) => message::body_structure(out, &root, extended),
                    None => out.extend_from_slice(
                        b"(\"text\" \"plain\" (\"charset\" \"us-ascii\") NIL NIL \"7bit\" 0 0)",
                    ),
                }
            }
            MessageDataItemName::Rfc822 => {
                out.extend_from_slice(b"RFC822 ");
                write::literal(out, raw);
            }
            MessageDataItemName::Rfc822Header | MessageDataItemName::Rfc822Text => {
                let header = matches!(item, MessageDataItemName::Rfc822Header);
                out.extend_from_slice(if header {
                    b"RFC822.HEADER "
                } else {
                    b"RFC822.TEXT "
                });
                let bytes = parsed
                    .and_then(message::Node::root)
                    .map(|p| {
                        if header {
                            p.raw_headers()
                        } else {
                            p.raw_body()
                        }
                    })
                    .unwrap_or_default();
                write::literal(out, bytes);
            }
            MessageDataItemName::BodyExt {
                section, partial, ..
            } => {
                let bytes = parsed
                    .as_ref()
                    .and_then(|p| message::section_bytes(p, raw, section.as_ref()))
                    .unwrap_or_default();
                out.extend_from_slice(
                    format!("BODY[{}]", message::section_name(section.as_ref())).as_bytes(),
                );
                partial_literal(out, &bytes, *partial, false);
            }
            MessageDataItemName::Binary {
                section, partial, ..
            } => {
                let path: Vec<u32> = section.iter().map(|n| n.get()).collect();
                let decoded = decoded_part(parsed, raw, &path);
                let name: Vec<String> = path.iter().map(u32::to_string).collect();
                out.extend_from_slice(format!("BINARY[{}]", name.join(".")).as_bytes());
                partial_literal(out, decoded.as_deref().unwrap_or_default(), *partial, true);
            }
            MessageDataItemName::BinarySize { section } => {
                let path: Vec<u32> = section.iter().map(|n| n.get()).collect();
                let decoded = decoded_part(parsed, raw, &path);
                let name: Vec<String> = path.iter().map(u32::to_string).collect();
                out.extend_from_slice(
                    format!(
                        "BINARY.SIZE[{}] {}",
                        name.join("."),
                        decoded.map_or(0, |d| d.len())
                    )
                    .as_bytes(),
                );
            }
            #[allow(unreachable_patterns)]
            _ => out.extend_from_slice(b"NIL NIL"),
        }
    }
    // RFC 9051 6.4.5: when fetching sets \Seen, the new flags go with the response.
    if shown.seen_now
        && !items
            .iter()
            .any(|i| matches!(i, MessageDataItemName::Flags))
    {
        let flags = write::session_flags(&meta.flags, keywords, shown.recent);
        out.extend_from_slice(format!(" FLAGS {flags}").as_bytes());
    }
    if out.len() - start > budget {
        out.truncate(start);
        return false;
    }
    out.extend_from_slice(b")\r\n");
    true
}

fn decoded_part<'a>(
    parsed: Option<&'a mail_parser::Message<'_>>,
    raw: &'a [u8],
    path: &[u32],
) -> Option<Cow<'a, [u8]>> {
    let parsed = parsed?;
    if path.is_empty() {
        return Some(Cow::Borrowed(raw));
    }
    message::find_part(parsed, path).map(|p| p.decoded())
}

/// A section's bytes, or the part `<start.length>` asks for; `binary`: a BINARY answer, which
/// may carry NUL in a literal8.
fn partial_literal(
    out: &mut Vec<u8>,
    bytes: &[u8],
    partial: Option<(u32, std::num::NonZeroU32)>,
    binary: bool,
) {
    let bytes = match partial {
        Some((start, length)) => {
            let start = (start as usize).min(bytes.len());
            let end = start.saturating_add(length.get() as usize).min(bytes.len());
            out.extend_from_slice(format!("<{start}> ").as_bytes());
            &bytes[start..end]
        }
        None => {
            out.push(b' ');
            bytes
        }
    };
    if binary {
        write::literal8(out, bytes);
    } else {
        write::literal(out, bytes);
    }
}

#[cfg(test)]
mod tests {
    /// Issue 15 item 9: a message APPENDed with NULs (binary) came back with NUL inside a plain
    /// literal, and BINARY answered `{8}` where RFC 3516 asks `~{8}`.
    #[test]
    fn nul_never_travels_in_a_plain_literal() {
        use imap_codec::{
            CommandCodec,
            decode::Decoder,
            imap_types::{command::CommandBody, fetch::MacroOrMessageDataItemNames},
        };
        let raw = b"Subject: x\r\nContent-Transfer-Encoding: binary\r\n\r\na\0b\r\n";
        let meta = crate::store::MessageMeta {
            uid: 1,
            size: raw.len() as u64,
            flags: String::new(),
            internal_date: 0,
            file_name: "m".into(),
            modseq: 1,
            in_new: false,
        };
        let (_, command) = CommandCodec::default()
            .decode(b"a FETCH 1 (BODY.PEEK[] BINARY.PEEK[1] BINARY.PEEK[])\r\n")
            .expect("a FETCH");
        let CommandBody::Fetch {
            macro_or_item_names: MacroOrMessageDataItemNames::MessageDataItemNames(items),
            ..
        } = command.body
        else {
            panic!("not a FETCH");
        };
        let mut out = Vec::new();
        assert!(super::render_fetch(
            &mut out,
            1,
            &meta,
            &[],
            Some(raw),
            &items,
            super::SessionFlags::default()
        ));
        let text = String::from_utf8_lossy(&out);
        assert!(text.contains("BODY[] {"), "{text}");
        assert!(text.contains("BINARY[1] ~{5}\r\na\0b\r\n"), "{text:?}");
        let body_literal = &out[..out.windows(6).position(|w| w == b"BINARY").expect("BINARY")];
        assert!(!body_literal.contains(&0), "NUL in BODY[]: {text:?}");
    }

    use super::pattern_matches;

    #[test]
    fn list_wildcards() {
        assert!(pattern_matches(b"*", b"Sent/2024"));
        assert!(pattern_matches(b"%", b"Sent"));
        assert!(!pattern_matches(b"%", b"Sent/2024"));
        assert!(pattern_matches(b"Sent/%", b"Sent/2024"));
        assert!(pattern_matches(b"INBOX", b"INBOX"));
        assert!(!pattern_matches(b"Sent", b"Sent/2024"));
    }

    /// The plain recursive definition, as the reference.
    fn reference(pattern: &[u8], name: &[u8]) -> bool {
        match pattern.split_first() {
            None => name.is_empty(),
            Some((b'*', rest)) => (0..=name.len()).any(|i| reference(rest, &name[i..])),
            Some((b'%', rest)) => (0..=name.len())
                .take_while(|i| *i == 0 || name[i - 1] != b'/')
                .any(|i| reference(rest, &name[i..])),
            Some((c, rest)) => name
                .split_first()
                .is_some_and(|(n, tail)| n == c && reference(rest, tail)),
        }
    }

    #[test]
    fn wildcards_agree_with_the_definition_on_every_short_input() {
        // Every pattern of up to 4 bytes over {a, /, *, %} against every name of up to 4 bytes
        // over {a, b, /}.
        fn all(alphabet: &[u8], max: usize) -> Vec<Vec<u8>> {
            let mut out = vec![Vec::new()];
            let mut last = vec![Vec::new()];
            for _ in 0..max {
                last = last
                    .iter()
                    .flat_map(|w: &Vec<u8>| {
                        alphabet.iter().map(move |c| {
                            let mut w = w.clone();
                            w.push(*c);
                            w
                        })
                    })
                    .collect();
                out.extend(last.iter().cloned());
            }
            out
        }
        for pattern in all(b"a/*%", 4) {
            for name in all(b"ab/", 4) {
                assert_eq!(
                    pattern_matches(&pattern, &name),
                    reference(&pattern, &name),
                    "{:?} against {:?}",
                    String::from_utf8_lossy(&pattern),
                    String::from_utf8_lossy(&name)
                );
            }
        }
    }

    #[test]
    fn a_pattern_made_to_backtrack_answers_at_once() {
        let pattern = [&b"*%".repeat(2_000)[..], b"x"].concat();
        let name = b"a".repeat(250);
        let start = std::time::Instant::now();
        assert!(!pattern_matches(&pattern, &name));
        assert!(pattern_matches(&pattern, &[&name[..], b"x"].concat()));
        assert!(start.elapsed() < std::time::Duration::from_secs(2));
    }
}
