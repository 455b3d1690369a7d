//! The IMAP session (RFC 3501, and RFC 9051 through ENABLE) without I/O: a command in, its
//! answers buffered and a [`Step`] out that tells the driver what to do next (read on, start
//! TLS or DEFLATE, read a SASL line, wait in IDLE, close).
//!
//! Each command's handler lives in [`super::op`]; this file keeps the state they share, the
//! dispatch, and the report of changes made elsewhere (other sessions, delivery) sent after
//! each command. The only writes a handler makes are [`Session::flush`]es to the [`Outlet`]
//! the driver lends it, so that a large FETCH goes out a few MiB at a time.
//!
//! ```text
//!   bytes --codec::Reader--> Input --Session::run--> answers + Step --driver--> socket
//!                                         |  \--op/<command>.rs
//!                                         \--store (blocking thread)
//! ```
use std::{borrow::Cow, io, net::IpAddr, sync::Arc, time::Duration};

use imap_codec::imap_types::{
    command::{Command, CommandBody, StoreModifier},
    extensions::{binary::LiteralOrLiteral8, thread::ThreadingAlgorithm},
    mailbox::Mailbox,
};
use tokio::{
    io::{AsyncWrite, AsyncWriteExt},
    sync::watch,
};

use super::{
    codec::Input,
    esearch::ReturnOptions,
    op::{search::Arrange, store::FlagStore},
    selected::{Reporting, Selected},
};
use crate::{
    config::LoginProtocol,
    runtime::Runtime,
    store::{INBOX, StoreError},
};

/// Longest a client may take to read the next 64 KiB of what the server sent.
const WRITE_TIMEOUT: Duration = Duration::from_secs(120);
/// The largest mod-sequence a client may name (RFC 7162 `mod-sequence-value`: 63 bits).
pub(super) const MAX_MODSEQ: u64 = i64::MAX as u64;

/// Where a session's answers go: the client's connection, or a test's buffer.
pub type Outlet<'a> = &'a mut (dyn AsyncWrite + Unpin + Send);

/// What the driver does once a command's answers are sent.
#[derive(Debug)]
pub enum Step {
    /// Read the next command.
    Next,
    /// Start TLS with this configuration and call [`Session::tls_started`] (or close when the
    /// handshake fails).
    StartTls(Arc<rustls::ServerConfig>),
    /// Compress both ways from now on (RFC 4978).
    Compress,
    /// Read AUTHENTICATE's response line and call [`Session::authenticate_data`].
    SaslData,
    /// Wait in IDLE: call [`Session::idle_changed`] when the folder changes and
    /// [`Session::idle_end`] when the client's next line arrives.
    Idle,
    /// End the connection.
    Close,
}

/// Where a session comes from.
#[derive(Debug, Clone, Copy)]
pub struct SessionInfo {
    /// The client's address (from the PROXY header when the listener takes one).
    pub peer: IpAddr,
    /// Whether TLS is on from the start (port 993).
    pub tls: bool,
    /// Whether STARTTLS can be offered (a certificate is loaded).
    pub tls_available: bool,
}

pub(super) struct User {
    pub(super) address: String,
    pub(super) quota: Option<u64>,
    /// The hash of the password it logged in with (its own or an app password's): once the
    /// config no longer has it, the password changed or was revoked.
    pub(super) password_hash: String,
}

/// One client's IMAP state.
pub struct Session {
    pub(super) runtime: Runtime,
    pub(super) peer: IpAddr,
    pub(super) out: Vec<u8>,
    pub(super) tls: bool,
    tls_available: bool,
    pub(super) allow_plaintext: bool,
    pub(super) user: Option<User>,
    pub(super) selected: Option<Selected>,
    pub(super) changes: Option<watch::Receiver<u64>>,
    pub(super) rev2: bool,
    /// CONDSTORE and QRESYNC as the client enabled them (RFC 7162).
    pub(super) reporting: Reporting,
    /// The RETURN options of the SEARCH being run (lifted before parsing, see [`super::esearch`]).
    pub(super) search_return: Option<ReturnOptions>,
    /// This session's place among the COMPRESS=DEFLATE sessions, once it asked.
    pub(super) deflate: Option<tokio::sync::OwnedSemaphorePermit>,
    /// The tag of the AUTHENTICATE waiting for its response line.
    pub(super) sasl: Option<String>,
    /// The tag of the IDLE going on.
    pub(super) idling: Option<String>,
    pub(super) closed: bool,
}

/// How a command ended (RFC 9051 s7.1): `Ok` holds the text after the tag's `OK` (a response
/// code first, when there is one), `Err` says why it was not done.
pub(super) type Done = Result<String, Refused>;

/// Why a command was not done.
#[derive(Debug)]
pub(super) enum Refused {
    /// `NO`: a valid command that cannot be done now or on this object.
    No(String),
    /// `BAD`: a protocol error (a command that makes no sense, or not in this state).
    Bad(String),
}

pub(super) fn no(text: impl Into<String>) -> Done {
    Err(Refused::No(text.into()))
}

/// A selected-state command with no folder selected: a protocol error, so BAD (RFC 9051 s6.4,
/// RFC 3691 for UNSELECT), not NO.
pub(super) fn not_selected() -> Done {
    bad("no folder is selected")
}

pub(super) fn bad(text: impl Into<String>) -> Done {
    Err(Refused::Bad(text.into()))
}

/// The tagged line that ends a command.
pub(super) fn tagged(tag: &str, done: Done) -> String {
    match done {
        Ok(text) => format!("{tag} OK {text}\r\n"),
        Err(Refused::No(text)) => format!("{tag} NO {text}\r\n"),
        Err(Refused::Bad(text)) => format!("{tag} BAD {text}\r\n"),
    }
}

/// What a client is told when the store fails: a response code it can act on.
pub(super) fn store_failure(err: &StoreError) -> Refused {
    Refused::No(match err {
        StoreError::NoSpace => "[LIMIT] the mail volume is full, try again later".into(),
        StoreError::NoSuchFolder(f) => format!("[NONEXISTENT] no folder {f:?}"),
        StoreError::FolderExists(f) => format!("[ALREADYEXISTS] folder {f:?} already exists"),
        StoreError::InvalidName(f) => format!("[CANNOT] invalid folder name {f:?}"),
        StoreError::NotAllowed(why) => format!("[CANNOT] {why}"),
        StoreError::Unavailable(err) => {
            tracing::warn!(error = %err, "IMAP: the mail database is unavailable");
            "[UNAVAILABLE] the mail store is unavailable, try again later".into()
        }
        StoreError::Io(err) => {
            // The client sees a code; the operator needs the cause.
            tracing::error!(error = %err, "IMAP storage error");
            "[SERVERBUG] storage error, try again later".into()
        }
    })
}

/// The name a mailbox argument spells, as the client sent it (INBOX in any case is INBOX).
fn named(mailbox: &Mailbox<'_>) -> Result<String, Refused> {
    match mailbox {
        Mailbox::Inbox => Ok(INBOX.to_string()),
        Mailbox::Other(other) => std::str::from_utf8(other.as_ref())
            .map(canonical_inbox)
            .map_err(|_| Refused::Bad("a folder name is UTF-8".into())),
    }
}

/// A name with INBOX (and INBOX's children) spelled the one way: INBOX is case-insensitive.
pub(super) fn canonical_inbox(name: &str) -> String {
    match name.split_once('/') {
        Some((first, rest)) if first.eq_ignore_ascii_case(INBOX) => format!("{INBOX}/{rest}"),
        _ if name.eq_ignore_ascii_case(INBOX) => INBOX.to_string(),
        _ => name.to_string(),
    }
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session")
            .field("peer", &self.peer)
            .field("user", &self.user.as_ref().map(|u| &u.address))
            .field("selected", &self.selected.as_ref().map(|s| &s.folder))
            .finish_non_exhaustive()
    }
}

impl Session {
    /// A session for a client that just connected; [`Session::greeting`] is its first answer.
    pub fn new(info: SessionInfo, runtime: Runtime) -> Self {
        let allow_plaintext = runtime.config().get().raw.security.allow_plaintext_auth;
        Session {
            peer: info.peer,
            out: Vec::new(),
            tls: info.tls,
            tls_available: info.tls_available,
            allow_plaintext,
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
            sasl: None,
            idling: None,
            closed: false,
            runtime,
        }
    }

    /// Buffers the greeting.
    pub fn greeting(&mut self) {
        let greeting = format!(
            "* OK [CAPABILITY {}] {} kubemail IMAP ready\r\n",
            self.capabilities(),
            self.runtime.config().get().raw.hostname
        );
        self.send(greeting);
    }

    /// Whether a user has logged in (the limits before login are tighter).
    pub fn logged_in(&self) -> bool {
        self.user.is_some()
    }

    /// The logged-in mailbox and the password hash it logged in with, for the driver's
    /// suspension check while the client is silent.
    pub fn logged_in_as(&self) -> Option<(String, String)> {
        self.user
            .as_ref()
            .map(|u| (u.address.clone(), u.password_hash.clone()))
    }

    /// Whether the session has ended.
    pub fn closed(&self) -> bool {
        self.closed
    }

    /// The selected folder's change notifications, which IDLE waits on.
    pub fn changes(&mut self) -> Option<&mut watch::Receiver<u64>> {
        self.changes.as_mut()
    }

    pub(super) fn capabilities(&self) -> String {
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

    /// The store's name (modified UTF-7, see [`super::mutf7`]) for a folder a client names
    /// anew (CREATE, RENAME's target): an IMAP4rev2 client's UTF-8 is converted; an IMAP4rev1
    /// client's must already be modified UTF-7, so that one folder has one name. Control
    /// characters are refused in either spelling.
    pub(super) fn new_folder(&self, mailbox: &Mailbox<'_>) -> Result<String, Refused> {
        let name = named(mailbox)?;
        let (stored, utf8) = if self.rev2 {
            (super::mutf7::encode(&name), name)
        } else {
            match super::mutf7::decode(&name) {
                Some(utf8) => (name, utf8),
                None => {
                    return Err(Refused::No(
                        "[CANNOT] folder names are modified UTF-7 (RFC 3501 s5.1.3); UTF-8 \
                         after ENABLE IMAP4rev2"
                            .into(),
                    ));
                }
            }
        };
        if utf8.chars().any(char::is_control) {
            return Err(Refused::No(
                "[CANNOT] a folder name has no control characters".into(),
            ));
        }
        Ok(stored)
    }

    /// The store's name of a folder a client names: as [`Session::new_folder`] spells it, or,
    /// for a folder made before names were checked (`Tom & Jerry`, raw UTF-8), the exact
    /// spelling it was made with.
    pub(super) async fn folder(&self, mailbox: &Mailbox<'_>) -> Result<String, Refused> {
        let strict = self.new_folder(mailbox);
        let raw = named(mailbox)?;
        if super::mutf7::decode(&raw).is_some() && !self.rev2
            || strict.as_ref().is_ok_and(|s| *s == raw)
        {
            return strict;
        }
        // Only when the strict spelling names no folder and the old one does.
        let folders = self
            .blocking(|s, m| s.folders(&m))
            .await
            .unwrap_or_default();
        match strict {
            Ok(stored) if folders.contains(&stored) => Ok(stored),
            _ if folders.contains(&raw) => Ok(raw),
            strict => strict,
        }
    }

    /// A stored folder name as this client reads it: UTF-8 for IMAP4rev2, as stored otherwise.
    pub(super) fn shown<'a>(&self, stored: &'a str) -> Cow<'a, str> {
        match self.rev2.then(|| super::mutf7::decode(stored)).flatten() {
            Some(utf8) => Cow::Owned(utf8),
            None => Cow::Borrowed(stored),
        }
    }

    /// Buffers an answer.
    pub fn send(&mut self, text: impl AsRef<[u8]>) {
        self.out.extend_from_slice(text.as_ref());
    }

    /// Sends what is buffered. A client that takes none of it for two minutes is gone (or
    /// holding the server's memory hostage): the session ends.
    pub async fn flush(&mut self, to: Outlet<'_>) -> io::Result<()> {
        if !self.out.is_empty() {
            // The timeout is for progress, not for the whole answer: a phone on a slow link
            // takes minutes for a large message, a client that takes nothing is gone.
            let stalled = || io::Error::new(io::ErrorKind::TimedOut, "the client reads nothing");
            for piece in self.out.chunks(64 * 1024) {
                tokio::time::timeout(WRITE_TIMEOUT, to.write_all(piece))
                    .await
                    .map_err(|_| stalled())??;
            }
            tokio::time::timeout(WRITE_TIMEOUT, to.flush())
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

    /// Whether the logged-in mailbox was removed, suspended or given another password since
    /// login; the session then ends.
    pub fn revoked(&self) -> bool {
        self.user.as_ref().is_some_and(|user| {
            self.runtime
                .config()
                .get()
                .still_serves(&user.address, &user.password_hash, LoginProtocol::Imap)
                .is_none()
        })
    }

    /// Ends a session whose account was suspended, removed or given another password.
    pub fn end_revoked(&mut self) {
        self.send("* BYE [UNAVAILABLE] this account was suspended or removed, or the password used was changed or revoked\r\n");
        self.closed = true;
    }

    /// Ends a session in the middle of a command whose login was revoked: the BYE goes out at
    /// once, without the command's tagged answer, and the returned error ends the connection.
    pub(super) async fn stop_revoked(&mut self, to: Outlet<'_>) -> io::Error {
        self.out.clear();
        self.end_revoked();
        if let Err(err) = self.flush(to).await {
            return err;
        }
        io::Error::new(io::ErrorKind::PermissionDenied, "the login was revoked")
    }

    /// Acts on what the client sent: the answers are buffered (a large FETCH sends part of
    /// them through `to` as it goes); the [`Step`] says what the driver does next.
    pub async fn run(&mut self, input: Input, to: Outlet<'_>) -> io::Result<Step> {
        match input {
            Input::Reply(line) => self.send(format!("{line}\r\n")),
            Input::Fatal(line) => {
                self.send(format!("{line}\r\n"));
                self.closed = true;
            }
            Input::ExtendedList(list) => self.extended_list_command(list).await,
            Input::Command(command, options) => {
                self.search_return = options;
                return self.command(*command, to).await;
            }
        }
        Ok(self.next_step())
    }

    fn next_step(&self) -> Step {
        if self.closed { Step::Close } else { Step::Next }
    }

    async fn command(&mut self, command: Command<'static>, to: Outlet<'_>) -> io::Result<Step> {
        if self.revoked() {
            self.end_revoked();
            return Ok(Step::Close);
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
            CommandBody::Capability => self.capability(),
            CommandBody::Noop | CommandBody::Check => Ok(format!("{name} completed")),
            CommandBody::Logout => self.logout(),
            CommandBody::Id { .. } => self.id(),
            CommandBody::StartTLS => return Ok(self.start_tls(&tag)),
            CommandBody::Login { username, password } => {
                let username = String::from_utf8_lossy(username.as_ref()).into_owned();
                let password = String::from_utf8_lossy(password.declassify().as_ref()).into_owned();
                self.login(&username, &password).await
            }
            CommandBody::Authenticate {
                mechanism,
                initial_response,
            } => {
                let initial = initial_response.map(|r| r.declassify().to_vec());
                match self.authenticate(&tag, mechanism, initial).await {
                    Some(done) => done,
                    None => return Ok(Step::SaslData),
                }
            }
            _ if self.user.is_none() => no("log in first"),
            CommandBody::Enable { capabilities } => Ok(self.enable(capabilities)),
            CommandBody::Compress { .. } => return Ok(self.compress(&tag)),
            CommandBody::Namespace => self.namespace(),
            CommandBody::List {
                reference,
                mailbox_wildcard,
            } => self.list(&reference, &mailbox_wildcard, false).await,
            CommandBody::Lsub {
                reference,
                mailbox_wildcard,
            } => self.list(&reference, &mailbox_wildcard, true).await,
            CommandBody::Subscribe { mailbox } => self.subscribe(&mailbox, true).await,
            CommandBody::Unsubscribe { mailbox } => self.subscribe(&mailbox, false).await,
            CommandBody::Create { mailbox } => self.create(&mailbox).await,
            CommandBody::Delete { mailbox } => self.delete(&mailbox).await,
            CommandBody::Rename { from, to } => self.rename(&from, &to).await,
            CommandBody::Status {
                mailbox,
                item_names,
            } => self.status(&mailbox, &item_names).await,
            CommandBody::Select {
                mailbox,
                parameters,
            } => self.select(&mailbox, false, &parameters, to).await,
            CommandBody::Examine {
                mailbox,
                parameters,
            } => self.select(&mailbox, true, &parameters, to).await,
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
            CommandBody::GetQuotaRoot { mailbox } => self.get_quota_root(&mailbox).await,
            CommandBody::GetQuota { root } => self.get_quota(root.as_ref()).await,
            CommandBody::SetQuota { .. } => {
                no("[NOPERM] quotas are set on the Mailbox object, not over IMAP")
            }
            // IDLE is the authenticated state's too (RFC 9051 s6.3.13): with no folder
            // selected it reports nothing until DONE.
            CommandBody::Idle => return Ok(self.idle(&tag).await),
            _ if self.selected.is_none() => not_selected(),
            CommandBody::Close => self.close().await,
            CommandBody::Unselect => self.unselect(),
            CommandBody::Expunge => self
                .expunge_deleted(None, true)
                .await
                .map(|_| "EXPUNGE completed".into()),
            CommandBody::ExpungeUid { sequence_set } => self
                .expunge_deleted(Some(&sequence_set), true)
                .await
                .map(|_| "UID EXPUNGE completed".into()),
            CommandBody::Fetch {
                sequence_set,
                macro_or_item_names,
                uid,
                modifiers,
            } => {
                self.fetch(&sequence_set, macro_or_item_names, uid, &modifiers, to)
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
            } => self.search(&tag, charset.as_ref(), criteria, uid).await,
            CommandBody::Sort {
                sort_criteria,
                charset,
                search_criteria,
                uid,
            } => {
                let order = Arrange::Sort(sort_criteria.into_inner());
                self.arrange(order, &charset, search_criteria, uid).await
            }
            CommandBody::Thread {
                algorithm,
                charset,
                search_criteria,
                uid,
            } => match algorithm {
                ThreadingAlgorithm::References => {
                    self.arrange(Arrange::References, &charset, search_criteria, uid)
                        .await
                }
                ThreadingAlgorithm::OrderedSubject => {
                    self.arrange(Arrange::OrderedSubject, &charset, search_criteria, uid)
                        .await
                }
                ThreadingAlgorithm::Other(_) => bad("THREAD offers REFERENCES and ORDEREDSUBJECT"),
            },
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
        self.send(tagged(&tag, done));
        Ok(self.next_step())
    }

    /// Runs a store call for the logged-in mailbox on a blocking thread.
    pub(super) async fn blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce(&dyn crate::store::Store, String) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        let mailbox = self
            .user
            .as_ref()
            .map(|u| u.address.clone())
            .unwrap_or_default();
        let store = self.runtime.store().clone();
        tokio::task::spawn_blocking(move || f(store.as_ref(), mailbox))
            .await
            .map_err(|e| StoreError::Io(io::Error::other(e)))?
    }

    /// Reports changes to the selected folder made elsewhere.
    pub(super) async fn refresh(&mut self, expunges_allowed: bool) {
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
            // Deleted (or renamed away) and made again under its name, by another session or
            // replica: other messages under the same UIDs. The view cannot be carried over.
            (Ok((_, fresh)), Some(selected))
                if selected.uid_validity != 0 && fresh.uid_validity != selected.uid_validity =>
            {
                out.extend_from_slice(
                    b"* BYE the selected folder was deleted or replaced; select it again\r\n",
                );
                self.closed = true;
            }
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
}
