//! The ESMTP session (RFC 5321) as a state machine without I/O: bytes in, [`Output`]s out.
//!
//! The driver (`server.rs`) writes replies, performs what needs I/O or time (TLS handshakes,
//! password checks, spooling and delivery) and feeds the results back. Pipelined commands are
//! answered in order; after STARTTLS everything the client pipelined is discarded (RFC 3207).
//!
//! ```text
//!   Command --MAIL--> Command(txn) --RCPT--> ... --DATA--> Data --CRLF.CRLF--> WaitDelivery
//!      |  \--AUTH--> Auth* --> WaitLogin                     \--BDAT n--> Bdat
//!      \--STARTTLS--> WaitTls
//! ```
use std::{net::IpAddr, sync::Arc};

use base64::{Engine, engine::general_purpose::STANDARD as B64};
use smtp_proto::{
    AUTH_LOGIN, AUTH_PLAIN, MAIL_BODY_8BITMIME, MAIL_BODY_BINARYMIME, MAIL_SMTPUTF8, Request,
};

use super::{
    codec::{DataEvent, DataReceiver, Line, take_line},
    reply::Reply,
};
use crate::{
    config::{Config, ListenerProtocol, LoginProtocol, Recipient},
    store::{Store, StoreError},
};

/// What the session asks of its driver.
#[derive(Debug, PartialEq, Eq)]
pub enum Output {
    /// Send a reply.
    Reply(Reply),
    /// Send the replies so far, then run the TLS handshake and call [`Session::tls_started`].
    StartTls,
    /// Check these credentials and call [`Session::login_result`].
    CheckLogin {
        /// The user name (the mailbox address).
        username: String,
        /// The password.
        password: String,
    },
    /// Open a spool file for a new message.
    BeginMessage,
    /// Append to the spool file.
    Body(Vec<u8>),
    /// Finish the spool file, deliver it to [`Session::delivery`] and call
    /// [`Session::delivered`].
    EndMessage,
    /// Discard the spool file: the message was refused.
    AbortMessage,
    /// Close the connection (after sending the replies so far).
    Close,
}

/// Where a session comes from and what it may do.
#[derive(Debug, Clone)]
pub struct SessionInfo {
    /// The listener's protocol: smtp (MX), submission or submissions.
    pub listener: ListenerProtocol,
    /// The client's address (from the PROXY header when the listener uses one).
    pub peer: IpAddr,
    /// Whether TLS is active (always, on an implicit-TLS listener).
    pub tls: bool,
    /// Whether STARTTLS can be offered (a certificate is loaded).
    pub tls_available: bool,
}

/// The outcome of a delivery, as the driver saw it.
#[derive(Debug)]
pub enum Delivered {
    /// Stored durably (and queued durably for other domains).
    Ok,
    /// The store failed.
    Failed(StoreError),
    /// Refused by policy (sender checks, loops, header From): the reply, and the reason's
    /// label for the refusals metric.
    Refused(Reply, &'static str),
}

/// Where a message goes, decided when DATA ends.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Delivery {
    /// Mailbox addresses (lowercase, unique).
    pub mailboxes: Vec<String>,
    /// Addresses in other domains, for the outbound queue (relayed or forwarded).
    pub remote: Vec<String>,
    /// The envelope sender.
    pub from: String,
    /// The HELO/EHLO name the client gave.
    pub helo: String,
    /// Whether the client logged in, or relays from a trusted network (no sender checks).
    pub trusted: bool,
    /// The DSN envelope ID.
    pub env_id: Option<String>,
    /// The mailboxes whose `forwardTo` sends this message to `remote` addresses (loop checks
    /// look for them in `Delivered-To`).
    pub forwarded_by: Vec<String>,
    /// The logged-in mailbox, whose addresses the header From must use.
    pub user: Option<usize>,
    /// The logged-in mailbox's address: its domain's key signs what it sends.
    pub user_address: Option<String>,
}

#[derive(Debug)]
enum State {
    Command,
    AuthPlain,
    AuthLoginUser,
    AuthLoginPass(String),
    Data(DataReceiver),
    /// Reading a BDAT chunk; `discard`: it was refused and is thrown away without a reply.
    Bdat {
        left: u64,
        last: bool,
        discard: bool,
    },
    WaitLogin,
    WaitDelivery,
    WaitTls,
    Closed,
}

#[derive(Debug, Default)]
struct Transaction {
    from: String,
    /// Accepted recipients: (envelope address, mailbox index).
    recipients: Vec<(String, usize)>,
    /// Accepted recipients in other domains (relayed).
    remote: Vec<String>,
    /// Bytes received so far (DATA or BDAT).
    size: u64,
    /// The largest message this transaction may carry: the server's limit, lowered by the
    /// domains of the logged-in sender and of each local recipient.
    limit: u64,
    too_big: bool,
    /// The spool is open.
    begun: bool,
    /// DSN and body parameters, kept for delivery reports.
    body_8bit: bool,
    smtputf8: bool,
    env_id: Option<String>,
    /// The SIZE the client declared in MAIL FROM (0: none).
    declared_size: u64,
    /// Bytes of the header block seen so far, until its end (the first empty line).
    header_bytes: u64,
    header_done: bool,
    /// The last bytes seen while in the header, to find its end across chunks.
    header_tail: [u8; 2],
    /// BDAT: the last byte was CR, and whether a CR or LF stood alone (refused as with DATA).
    bdat_cr: bool,
    bdat_bare: bool,
}

/// Largest header block a message may have (Exim's `max_header_size` is the same): everything
/// that reads headers (DMARC checks, loop and From checks, IMAP's ENVELOPE) builds per-field
/// objects, and 5 million one-line fields in a 20 MB message made one FETCH take 666 MiB.
pub const MAX_HEADER_BYTES: u64 = 1024 * 1024;

/// Too many bad commands in one session end it.
const MAX_ERRORS: u32 = 20;

/// One SMTP session.
#[derive(Debug)]
pub struct Session {
    info: SessionInfo,
    hostname: String,
    config: Arc<Config>,
    store: Arc<dyn Store>,
    state: State,
    buf: Vec<u8>,
    skipping: bool,
    helo: Option<String>,
    esmtp: bool,
    user: Option<(usize, String)>,
    /// The hash of the password the session logged in with (the mailbox's own or an app
    /// password's).
    user_hash: String,
    /// The logged-in mailbox was suspended, removed or its password changed: the session ends.
    revoked: bool,
    txn: Option<Transaction>,
    errors: u32,
    queue_id: String,
    rates: Arc<crate::outbound::limits::RateLimiter>,
    greylist: Arc<crate::smtp::screen::Greylist>,
    /// Why the DNS lists refuse this client, as the driver found before the banner.
    listed: Option<String>,
}

impl Session {
    /// A new session; returns it and the greeting.
    pub fn new(info: SessionInfo, config: Arc<Config>, store: Arc<dyn Store>) -> (Self, Output) {
        let hostname = config.raw.hostname.clone();
        let greeting = Output::Reply(Reply::plain(220, format!("{hostname} ESMTP kubemail")));
        let session = Self {
            info,
            hostname,
            config,
            store,
            state: State::Command,
            buf: Vec::new(),
            skipping: false,
            helo: None,
            esmtp: false,
            user: None,
            user_hash: String::new(),
            revoked: false,
            txn: None,
            errors: 0,
            queue_id: String::new(),
            rates: Arc::new(crate::outbound::limits::RateLimiter::default()),
            greylist: Arc::default(),
            listed: None,
        };
        (session, greeting)
    }

    /// Counts relayed mail against the runtime's shared rate limits.
    pub fn set_rate_limiter(&mut self, rates: Arc<crate::outbound::limits::RateLimiter>) {
        self.rates = rates;
    }

    /// Uses the runtime's shared greylisting memory.
    pub fn set_greylist(&mut self, greylist: Arc<crate::smtp::screen::Greylist>) {
        self.greylist = greylist;
    }

    /// The DNS lists' verdict on the client (`Some(why)`: refused at RCPT).
    pub fn set_listed(&mut self, listed: Option<String>) {
        self.listed = listed;
    }

    /// Whether this client is screened: port 25, not logged in, not from a relay network.
    pub fn screened(&self) -> bool {
        self.info.listener == ListenerProtocol::Smtp
            && self.user.is_none()
            && !self.config.relay_network_allows(self.info.peer)
    }

    /// Uses a newer config for the next commands (a reload never interrupts a session, unless
    /// it suspends, removes or changes the password of the logged-in mailbox).
    pub fn set_config(&mut self, config: Arc<Config>) {
        if let Some((index, address)) = &mut self.user {
            match config.still_serves(address, &self.user_hash, LOGIN_PROTOCOL) {
                Some(now) => *index = now,
                None => self.revoked = true,
            }
        }
        self.config = config;
    }

    /// Whether the session is between transactions: no MAIL given (or its message answered),
    /// no command half-received. A draining server may say 421 here and lose nothing.
    pub fn at_rest(&self) -> bool {
        self.txn.is_none() && matches!(self.state, State::Command) && self.buf.is_empty()
    }

    /// Whether the session waits for the driver (handshake, login check, delivery).
    pub fn waiting(&self) -> bool {
        matches!(
            self.state,
            State::WaitLogin | State::WaitDelivery | State::WaitTls
        )
    }

    /// Whether the session has ended.
    pub fn closed(&self) -> bool {
        matches!(self.state, State::Closed)
    }

    /// The current message's queue ID (as the `250` and the Received field say it).
    pub fn queue_id(&self) -> &str {
        &self.queue_id
    }

    /// The logged-in mailbox's address and the password hash it logged in with.
    pub fn login(&self) -> Option<(String, String)> {
        self.user
            .as_ref()
            .map(|(_, address)| (address.clone(), self.user_hash.clone()))
    }

    /// The logged-in mailbox's address, if any.
    pub fn user(&self) -> Option<&str> {
        self.user.as_ref().map(|(_, a)| a.as_str())
    }

    /// Whether the session is in the middle of a message body (DATA or BDAT).
    pub fn in_body(&self) -> bool {
        matches!(self.state, State::Data(_) | State::Bdat { .. })
    }

    /// Feeds bytes from the client; returns what to do.
    pub fn feed(&mut self, bytes: &[u8]) -> Vec<Output> {
        self.buf.extend_from_slice(bytes);
        self.run()
    }

    /// Processes buffered input until it runs out or the driver must act.
    fn run(&mut self) -> Vec<Output> {
        let mut out = Vec::new();
        loop {
            if self.waiting() || self.closed() {
                return out;
            }
            match &mut self.state {
                State::Data(receiver) => {
                    if self.buf.is_empty() {
                        return out;
                    }
                    let (events, used) = receiver.feed(&self.buf);
                    self.buf.drain(..used);
                    let bare = receiver.bare_line_end;
                    for event in events {
                        match event {
                            DataEvent::Bytes(bytes) => self.body_bytes(bytes, &mut out),
                            DataEvent::End => {
                                self.end_of_message(bare, &mut out);
                                break;
                            }
                        }
                    }
                }
                State::Bdat {
                    left,
                    last,
                    discard,
                } => {
                    let (last, discard) = (*last, *discard);
                    let take = (*left).min(self.buf.len() as u64) as usize;
                    *left -= take as u64;
                    let done = *left == 0;
                    if take > 0 {
                        let bytes: Vec<u8> = self.buf.drain(..take).collect();
                        if !discard {
                            if let Some(txn) = self.txn.as_mut() {
                                for b in &bytes {
                                    if (*b == b'\n') != txn.bdat_cr {
                                        txn.bdat_bare = true;
                                    }
                                    txn.bdat_cr = *b == b'\r';
                                }
                            }
                            self.body_bytes(bytes, &mut out);
                        }
                    }
                    if !done {
                        return out;
                    }
                    if discard {
                        // The refusal was the chunk's one reply.
                        self.state = State::Command;
                    } else if last {
                        // Smuggling guard, as for DATA: a bare CR or LF anywhere, or a CR at the
                        // very end, refuses the whole message.
                        let bare = self.txn.as_ref().is_some_and(|t| t.bdat_bare || t.bdat_cr);
                        self.end_of_message(bare, &mut out);
                    } else {
                        self.state = State::Command;
                        let size = self.txn.as_ref().map_or(0, |t| t.size);
                        out.push(Output::Reply(Reply::new(
                            250,
                            "2.0.0",
                            format!("{size} octets received"),
                        )));
                    }
                }
                _ if self.revoked => {
                    out.push(Output::Reply(Reply::new(
                        421,
                        "4.7.0",
                        "this account was suspended or removed, or the password used was changed or revoked",
                    )));
                    out.push(Output::Close);
                    self.state = State::Closed;
                    return out;
                }
                _ => {
                    let Some(line) = take_line(&mut self.buf, &mut self.skipping) else {
                        return out;
                    };
                    let reply = match line {
                        Line::Command(line) => self.line(line, &mut out),
                        Line::TooLong => Some(Reply::new(500, "5.5.6", "line too long")),
                        Line::BareLf => {
                            Some(Reply::new(500, "5.5.2", "command lines must end with CRLF"))
                        }
                    };
                    if let Some(reply) = reply {
                        self.count_error(&reply);
                        out.push(Output::Reply(reply));
                        if self.errors >= MAX_ERRORS {
                            out.push(Output::Reply(Reply::new(
                                421,
                                "4.7.0",
                                "too many errors, closing the connection",
                            )));
                            out.push(Output::Close);
                            self.state = State::Closed;
                        }
                    }
                }
            }
        }
    }

    fn count_error(&mut self, reply: &Reply) {
        if reply.code >= 500 {
            self.errors += 1;
        }
    }

    fn body_bytes(&mut self, bytes: Vec<u8>, out: &mut Vec<Output>) {
        let Some(txn) = self.txn.as_mut() else {
            return;
        };
        txn.size += bytes.len() as u64;
        if txn.size > txn.limit {
            txn.too_big = true;
        }
        if !txn.header_done {
            for b in &bytes {
                txn.header_bytes += 1;
                // The header ends at the first empty line: LF (CR) LF.
                if *b == b'\n' && (txn.header_tail[1] == b'\n' || txn.header_tail == *b"\n\r") {
                    txn.header_done = true;
                    break;
                }
                txn.header_tail = [txn.header_tail[1], *b];
                if txn.header_bytes > MAX_HEADER_BYTES {
                    txn.too_big = true;
                    txn.header_done = true;
                    break;
                }
            }
        }
        if !txn.too_big && !bytes.is_empty() {
            out.push(Output::Body(bytes));
        }
    }

    fn end_of_message(&mut self, bare_line_end: bool, out: &mut Vec<Output>) {
        let max = self
            .txn
            .as_ref()
            .map_or(self.config.raw.limits.max_message_size, |t| t.limit);
        let too_big = self.txn.as_ref().is_some_and(|t| t.too_big);
        let header_too_big = self
            .txn
            .as_ref()
            .is_some_and(|t| t.header_bytes > MAX_HEADER_BYTES);
        let refusal = if bare_line_end {
            Some(Reply::new(
                550,
                "5.5.2",
                "message refused: it contains a bare CR or LF (lines must end with CRLF)",
            ))
        } else if header_too_big {
            Some(Reply::new(
                552,
                "5.3.4",
                format!("message header exceeds the maximum of {MAX_HEADER_BYTES} bytes"),
            ))
        } else if too_big {
            Some(Reply::new(
                552,
                "5.3.4",
                format!("message exceeds the maximum size of {max} bytes"),
            ))
        } else {
            None
        };
        match refusal {
            Some(reply) => {
                out.push(Output::AbortMessage);
                out.push(Output::Reply(reply));
                self.txn = None;
                self.state = State::Command;
            }
            None => {
                out.push(Output::EndMessage);
                self.state = State::WaitDelivery;
            }
        }
    }

    /// The mailboxes the current message goes to. Forwards to local addresses are followed
    /// (once: forwarding loops end there).
    pub fn delivery(&self) -> Delivery {
        let mut mailboxes = Vec::new();
        let Some(txn) = &self.txn else {
            return Delivery::default();
        };
        let mut remote: Vec<String> = Vec::new();
        let mut forwarded_by: Vec<String> = Vec::new();
        for r in &txn.remote {
            if !remote.iter().any(|x| x.eq_ignore_ascii_case(r)) {
                remote.push(r.clone());
            }
        }
        let mut push = |address: &str| {
            let a = address.to_ascii_lowercase();
            if !mailboxes.contains(&a) {
                mailboxes.push(a);
            }
        };
        for (_, index) in &txn.recipients {
            let mailbox = self.config.mailbox(*index);
            if mailbox.forward_to.is_empty() || mailbox.keep_forwarded_copy {
                push(&mailbox.address);
            }
            for target in &mailbox.forward_to {
                match self.config.resolve(target) {
                    Recipient::Local(i) => push(&self.config.mailbox(i).address),
                    Recipient::Remote => {
                        if !remote.iter().any(|x| x.eq_ignore_ascii_case(target)) {
                            remote.push(target.clone());
                        }
                        let by = mailbox.address.to_ascii_lowercase();
                        if !forwarded_by.contains(&by) {
                            forwarded_by.push(by);
                        }
                    }
                    Recipient::UnknownLocal => {
                        tracing::warn!(
                            mailbox = %mailbox.address,
                            target = %target,
                            "forwarding to an unknown local address; kept a copy"
                        );
                        push(&mailbox.address);
                    }
                }
            }
        }
        Delivery {
            mailboxes,
            remote,
            from: txn.from.clone(),
            helo: self.helo.clone().unwrap_or_default(),
            trusted: self.user.is_some() || self.config.relay_network_allows(self.info.peer),
            env_id: txn.env_id.clone(),
            forwarded_by,
            user: self.user.as_ref().map(|(index, _)| *index),
            user_address: self.user().map(str::to_string),
        }
    }

    /// The driver's report on a delivery.
    pub fn delivered(&mut self, result: Delivered) -> Vec<Output> {
        let reply = match result {
            Delivered::Ok => Reply::new(250, "2.0.0", format!("OK queued as {}", self.queue_id)),
            Delivered::Failed(StoreError::NoSpace) => {
                Reply::new(452, "4.3.1", "insufficient system storage, try again later")
            }
            Delivered::Refused(reply, reason) => {
                crate::metrics::refused(reason);
                reply
            }
            Delivered::Failed(err) => {
                tracing::error!(error = %err, "delivery failed");
                Reply::new(451, "4.3.0", "local error in processing, try again later")
            }
        };
        self.txn = None;
        self.state = State::Command;
        let mut out = vec![Output::Reply(reply)];
        out.extend(self.run());
        out
    }

    /// The driver's report on a TLS handshake.
    pub fn tls_started(&mut self, ok: bool) -> Vec<Output> {
        if !ok {
            self.state = State::Closed;
            return vec![Output::Close];
        }
        // RFC 3207: forget everything learned before TLS, including pipelined input.
        self.info.tls = true;
        self.helo = None;
        self.esmtp = false;
        self.txn = None;
        self.buf.clear();
        self.state = State::Command;
        Vec::new()
    }

    /// The driver's report on a credentials check.
    pub fn login_result(
        &mut self,
        result: Result<crate::auth::Login, LoginFailure>,
    ) -> Vec<Output> {
        self.state = State::Command;
        let reply = match result {
            Ok(login) => {
                self.user_hash = login.credential;
                self.user = Some((login.index, login.address));
                Reply::new(235, "2.7.0", "authentication succeeded")
            }
            Err(LoginFailure::Invalid) => {
                Reply::new(535, "5.7.8", "authentication credentials invalid")
            }
            Err(LoginFailure::TooManyFailures) => Reply::new(
                454,
                "4.7.0",
                "too many failed logins from your address, try again later",
            ),
        };
        self.count_error(&reply);
        let mut out = vec![Output::Reply(reply)];
        out.extend(self.run());
        out
    }

    fn line(&mut self, line: Vec<u8>, out: &mut Vec<Output>) -> Option<Reply> {
        match std::mem::replace(&mut self.state, State::Command) {
            State::AuthPlain => return self.auth_plain_response(&line, out),
            State::AuthLoginUser => return self.auth_login_user(&line),
            State::AuthLoginPass(user) => return self.auth_login_pass(user, &line, out),
            other => self.state = other,
        }
        let mut with_crlf = line;
        with_crlf.extend_from_slice(b"\r\n");
        let request = match Request::parse(&mut with_crlf.iter()) {
            Ok(r) => r,
            Err(err) => return Some(parse_error(err)),
        };
        match request {
            Request::Ehlo { host } => Some(self.ehlo(&host, true)),
            Request::Helo { host } => Some(self.ehlo(&host, false)),
            Request::Lhlo { .. } => Some(Reply::new(500, "5.5.1", "LHLO is for LMTP")),
            Request::StartTls => self.starttls(out),
            Request::Auth {
                mechanism,
                initial_response,
            } => self.auth(mechanism, &initial_response, out),
            Request::Mail { from } => Some(self.mail(from)),
            Request::Rcpt { to } => Some(self.rcpt(to)),
            Request::Data => self.data(out),
            Request::Bdat {
                chunk_size,
                is_last,
            } => self.bdat(chunk_size as u64, is_last, out),
            Request::Rset => {
                self.txn = None;
                Some(Reply::new(250, "2.0.0", "OK"))
            }
            Request::Noop { .. } => Some(Reply::new(250, "2.0.0", "OK")),
            Request::Quit => {
                out.push(Output::Reply(Reply::new(
                    221,
                    "2.0.0",
                    format!("{} closing connection", self.hostname),
                )));
                out.push(Output::Close);
                self.state = State::Closed;
                None
            }
            Request::Vrfy { .. } => Some(Reply::new(
                252,
                "2.5.0",
                "cannot verify the user, but will accept mail for delivery attempts",
            )),
            Request::Expn { .. } => Some(Reply::new(502, "5.5.1", "EXPN is not offered")),
            Request::Help { .. } => Some(Reply::new(
                214,
                "2.0.0",
                "see RFC 5321; commands: EHLO HELO STARTTLS AUTH MAIL RCPT DATA BDAT RSET NOOP QUIT",
            )),
            Request::Etrn { .. } | Request::Atrn { .. } | Request::Burl { .. } => {
                Some(Reply::new(502, "5.5.1", "command not implemented"))
            }
        }
    }

    fn submission(&self) -> bool {
        matches!(
            self.info.listener,
            ListenerProtocol::Submission | ListenerProtocol::Submissions
        )
    }

    fn auth_offered(&self) -> bool {
        self.info.tls || self.config.raw.security.allow_plaintext_auth
    }

    fn ehlo(&mut self, host: &str, esmtp: bool) -> Reply {
        if host.is_empty() || host.len() > 255 {
            return Reply::new(501, "5.5.4", "a host name or address literal is required");
        }
        self.helo = Some(host.to_string());
        self.esmtp = esmtp;
        self.txn = None;
        if !esmtp {
            return Reply::plain(250, format!("{} Hello {host}", self.hostname));
        }
        let mut lines = vec![format!("{} Hello {host}", self.hostname)];
        lines.push("PIPELINING".into());
        lines.push(format!("SIZE {}", self.config.raw.limits.max_message_size));
        lines.push("8BITMIME".into());
        lines.push("ENHANCEDSTATUSCODES".into());
        lines.push("SMTPUTF8".into());
        lines.push("CHUNKING".into());
        lines.push("DSN".into());
        if !self.info.tls && self.info.tls_available {
            lines.push("STARTTLS".into());
        }
        if self.auth_offered() && (self.submission() || self.info.tls) {
            lines.push("AUTH PLAIN LOGIN".into());
        }
        Reply {
            code: 250,
            status: None,
            lines,
        }
    }

    fn starttls(&mut self, out: &mut Vec<Output>) -> Option<Reply> {
        if self.info.tls {
            return Some(Reply::new(503, "5.5.1", "TLS is already active"));
        }
        if !self.info.tls_available {
            return Some(Reply::new(454, "4.7.0", "TLS not available"));
        }
        out.push(Output::Reply(Reply::new(
            220,
            "2.0.0",
            "ready to start TLS",
        )));
        out.push(Output::StartTls);
        // Pipelined commands after STARTTLS are discarded, never run after the handshake.
        self.buf.clear();
        self.state = State::WaitTls;
        None
    }

    fn auth(&mut self, mechanism: u64, initial: &str, out: &mut Vec<Output>) -> Option<Reply> {
        if self.helo.is_none() || !self.esmtp {
            return Some(Reply::new(503, "5.5.1", "send EHLO first"));
        }
        if !self.auth_offered() {
            return Some(Reply::new(
                538,
                "5.7.11",
                "encryption required: use STARTTLS before AUTH",
            ));
        }
        if self.user.is_some() {
            return Some(Reply::new(503, "5.5.1", "already authenticated"));
        }
        if self.txn.is_some() {
            return Some(Reply::new(
                503,
                "5.5.1",
                "AUTH is not allowed during a mail transaction",
            ));
        }
        match mechanism {
            AUTH_PLAIN if initial.is_empty() => {
                self.state = State::AuthPlain;
                Some(Reply::plain(334, ""))
            }
            AUTH_PLAIN => self.auth_plain_response(initial.as_bytes(), out),
            AUTH_LOGIN if initial.is_empty() => {
                self.state = State::AuthLoginUser;
                Some(Reply::plain(334, "VXNlcm5hbWU6"))
            }
            AUTH_LOGIN => self.auth_login_user(initial.as_bytes()),
            _ => Some(Reply::new(
                504,
                "5.5.4",
                "mechanism not supported; use PLAIN or LOGIN",
            )),
        }
    }

    fn auth_plain_response(&mut self, line: &[u8], out: &mut Vec<Output>) -> Option<Reply> {
        if line == b"*" {
            return Some(Reply::new(501, "5.0.0", "authentication cancelled"));
        }
        let Some(decoded) = decode(line) else {
            return Some(Reply::new(501, "5.5.2", "cannot decode the response"));
        };
        let mut parts = decoded.split(|&b| b == 0);
        let (Some(authzid), Some(user), Some(pass), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Some(Reply::new(501, "5.5.2", "malformed PLAIN response"));
        };
        if !authzid.is_empty() && !authzid.eq_ignore_ascii_case(user) {
            return Some(Reply::new(
                535,
                "5.7.8",
                "authorization identity not allowed",
            ));
        }
        self.check_login(user, pass, out)
    }

    fn auth_login_user(&mut self, line: &[u8]) -> Option<Reply> {
        if line == b"*" {
            return Some(Reply::new(501, "5.0.0", "authentication cancelled"));
        }
        match decode(line).and_then(|u| String::from_utf8(u).ok()) {
            Some(user) => {
                self.state = State::AuthLoginPass(user);
                Some(Reply::plain(334, "UGFzc3dvcmQ6"))
            }
            None => Some(Reply::new(501, "5.5.2", "cannot decode the response")),
        }
    }

    fn auth_login_pass(
        &mut self,
        user: String,
        line: &[u8],
        out: &mut Vec<Output>,
    ) -> Option<Reply> {
        if line == b"*" {
            return Some(Reply::new(501, "5.0.0", "authentication cancelled"));
        }
        match decode(line) {
            Some(pass) => self.check_login(user.as_bytes(), &pass, out),
            None => Some(Reply::new(501, "5.5.2", "cannot decode the response")),
        }
    }

    fn check_login(&mut self, user: &[u8], pass: &[u8], out: &mut Vec<Output>) -> Option<Reply> {
        let (Ok(username), Ok(password)) = (std::str::from_utf8(user), std::str::from_utf8(pass))
        else {
            return Some(Reply::new(
                535,
                "5.7.8",
                "authentication credentials invalid",
            ));
        };
        out.push(Output::CheckLogin {
            username: username.to_string(),
            password: password.to_string(),
        });
        self.state = State::WaitLogin;
        None
    }

    fn mail(&mut self, from: smtp_proto::MailFrom<std::borrow::Cow<'_, str>>) -> Reply {
        if self.helo.is_none() {
            return Reply::new(503, "5.5.1", "send EHLO or HELO first");
        }
        if self.txn.is_some() {
            return Reply::new(503, "5.5.1", "nested MAIL command");
        }
        if self.submission() && self.user.is_none() {
            return Reply::new(530, "5.7.0", "authentication required");
        }
        if self.screened()
            && self.config.raw.inbound.helo_checks
            && let Some(why) = self
                .helo
                .as_deref()
                .and_then(|h| crate::smtp::screen::helo_refusal(h, self.info.peer, &self.config))
        {
            crate::metrics::refused("helo");
            return Reply::new(550, "5.7.1", why);
        }
        let limits = &self.config.raw.limits;
        if from.size as u64 > limits.max_message_size {
            return Reply::new(
                552,
                "5.3.4",
                format!(
                    "message size exceeds the maximum of {} bytes",
                    limits.max_message_size
                ),
            );
        }
        let address = from.address.to_string();
        if !address.is_empty() && crate::config::split_address(&address).is_none() {
            return Reply::new(553, "5.1.7", "the sender address is not a valid mailbox");
        }
        if (from.flags & MAIL_SMTPUTF8) == 0 && !address.is_ascii() {
            return Reply::new(553, "5.6.7", "non-ASCII address without SMTPUTF8");
        }
        // RFC 3461 s4.4: an ENVID is at most 100 printable characters once xtext-decoded. It is
        // copied into delivery reports, so a line break in it would write the sender's headers.
        if let Some(env_id) = &from.env_id
            && (env_id.len() > 100 || !env_id.bytes().all(|b| b.is_ascii_graphic()))
        {
            return Reply::new(
                501,
                "5.5.4",
                "ENVID must be at most 100 printable ASCII characters",
            );
        }
        if let Some((index, _)) = &self.user {
            // A logged-in user sends as one of their own addresses (or with a null sender).
            let own = address.is_empty()
                || matches!(self.config.resolve(&address), Recipient::Local(i) if i == *index);
            if !own {
                return Reply::new(
                    553,
                    "5.7.1",
                    format!("sender address <{address}> is not owned by the logged-in user"),
                );
            }
        }
        // A logged-in user's own domain may allow less than the server.
        let limit = match self.user() {
            Some(user) => self.config.message_limit(user),
            None => limits.max_message_size,
        };
        if from.size as u64 > limit {
            return Reply::new(
                552,
                "5.3.4",
                format!("message size exceeds the maximum of {limit} bytes"),
            );
        }
        self.queue_id = new_queue_id();
        self.txn = Some(Transaction {
            limit,
            from: address,
            body_8bit: from.flags & (MAIL_BODY_8BITMIME | MAIL_BODY_BINARYMIME) != 0,
            smtputf8: from.flags & MAIL_SMTPUTF8 != 0,
            env_id: from.env_id.map(|e| e.to_string()),
            declared_size: from.size as u64,
            ..Transaction::default()
        });
        Reply::new(250, "2.1.0", "sender OK")
    }

    fn rcpt(&mut self, to: smtp_proto::RcptTo<std::borrow::Cow<'_, str>>) -> Reply {
        let max_recipients = self.config.raw.limits.max_recipients as usize;
        let Some(txn) = self.txn.as_ref() else {
            return Reply::new(503, "5.5.1", "send MAIL first");
        };
        // Recipients come before the message: BDAT has begun it (and its quota checks and
        // Received line are behind us).
        if txn.begun {
            return Reply::new(503, "5.5.1", "RCPT is not allowed after BDAT");
        }
        // Local and relayed recipients together: the limit bounds the work one message makes.
        if txn.recipients.len() + txn.remote.len() >= max_recipients {
            return Reply::new(452, "4.5.3", "too many recipients");
        }
        let address = to.address.to_string();
        if !txn.smtputf8 && !address.is_ascii() {
            return Reply::new(553, "5.6.7", "non-ASCII address without SMTPUTF8");
        }
        // Only a plain local@domain routes anywhere; the domain decides, never the local part,
        // so percent hacks, bang paths and quoted @ are just unknown local parts.
        if crate::config::split_address(&address).is_none() {
            return Reply::new(550, "5.1.3", "bad recipient address syntax");
        }
        let declared = txn.declared_size;
        match self.config.resolve(&address) {
            Recipient::Local(index) => {
                if let Some(reply) = self.screen_rcpt(&address) {
                    return reply;
                }
                // The recipient's domain may take less than the server.
                let limit = self
                    .config
                    .message_limit(&self.config.mailbox(index).address);
                if declared > limit {
                    return Reply::new(
                        552,
                        "5.3.4",
                        format!(
                            "message size exceeds the maximum of {limit} bytes for this recipient"
                        ),
                    );
                }
                if let Some(txn) = self.txn.as_mut() {
                    txn.limit = txn.limit.min(limit);
                }
                if let Some(reply) = self.quota_check(index, declared) {
                    return reply;
                }
                if let Some(txn) = self.txn.as_mut() {
                    txn.recipients.push((address, index));
                }
                Reply::new(250, "2.1.5", "recipient OK")
            }
            Recipient::UnknownLocal => Reply::new(550, "5.1.1", "no such user here"),
            Recipient::Remote => self.relay_rcpt(address),
        }
    }

    /// DNS lists and greylisting, for a screened client's local recipient.
    fn screen_rcpt(&self, to: &str) -> Option<Reply> {
        if !self.screened() {
            return None;
        }
        if let Some(why) = &self.listed {
            crate::metrics::refused("dnsbl");
            crate::metrics::filter_verdict("dnsbl", "listed");
            return Some(Reply::new(554, "5.7.1", why.clone()));
        }
        let timing = self.config.raw.inbound.greylisting.as_ref()?;
        let from = self.txn.as_ref().map_or("", |t| t.from.as_str());
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        match self.greylist.check(self.info.peer, from, to, now, timing) {
            Ok(()) => {
                crate::metrics::filter_verdict("greylist", "passed");
                None
            }
            Err(wait) => {
                crate::metrics::refused("greylisted");
                crate::metrics::filter_verdict("greylist", "deferred");
                Some(Reply::new(
                    451,
                    "4.7.1",
                    format!("greylisted: please try again in {wait} seconds"),
                ))
            }
        }
    }

    /// A recipient in another domain: who may relay, from which sender domains, to which
    /// recipient domains, and how much (RelayPolicy).
    fn relay_rcpt(&mut self, address: String) -> Reply {
        let relay = &self.config.raw.relay;
        let allowed = (self.user.is_some() && relay.authenticated_users)
            || self.config.relay_network_allows(self.info.peer);
        if !allowed {
            return Reply::new(550, "5.7.1", "relaying denied");
        }
        let Some(txn) = self.txn.as_ref() else {
            return Reply::new(503, "5.5.1", "send MAIL first");
        };
        let domain_of = |a: &str| {
            a.rsplit_once('@')
                .map(|(_, d)| d.to_ascii_lowercase())
                .unwrap_or_default()
        };
        let listed =
            |list: &[String], domain: &str| list.iter().any(|d| d.eq_ignore_ascii_case(domain));
        if !txn.from.is_empty() {
            let sender_domain = domain_of(&txn.from);
            let sender_ok = if relay.sender_domains.is_empty() {
                // Logged-in users send from the served domains (their own addresses, as the
                // header From check says); networks only from the server's own domains, never
                // a hosted tenant's.
                match self.user {
                    Some(_) => self.config.serves_domain(&sender_domain),
                    None => self.config.owns_domain(&sender_domain),
                }
            } else {
                listed(&relay.sender_domains, &sender_domain)
            };
            if !sender_ok {
                return Reply::new(
                    550,
                    "5.7.1",
                    format!("relaying is not allowed for senders in {sender_domain}"),
                );
            }
        }
        let rcpt_domain = domain_of(&address);
        if !relay.recipient_domains.is_empty() && !listed(&relay.recipient_domains, &rcpt_domain) {
            return Reply::new(
                550,
                "5.7.1",
                format!("relaying to {rcpt_domain} is not allowed"),
            );
        }
        // Rate limits count copies: every relayed recipient spends one, so one message to
        // 100 outside addresses is 100 sends, not 1.
        {
            let sender_key = match &self.user {
                Some((_, user)) => format!("user:{user}"),
                None => format!("ip:{}", self.info.peer),
            };
            let mut limits = Vec::new();
            if let Some(rate) = &relay.rate_limits.per_sender {
                limits.push((sender_key, rate));
            }
            if let Some(rate) = &relay.rate_limits.total {
                limits.push(("*".to_string(), rate));
            }
            if !limits.is_empty() && !self.rates.take(&limits) {
                crate::metrics::refused("rate-limit");
                return Reply::new(450, "4.7.1", "relay rate limit reached, try again later");
            }
        }
        if let Some(txn) = self.txn.as_mut() {
            txn.remote.push(address);
        }
        Reply::new(250, "2.1.5", "recipient OK, relayed")
    }

    /// Quotas are checked when a recipient is given, against the SIZE the client declared.
    /// A message that alone exceeds the quota is refused for good; a full mailbox is refused
    /// for now (it may be emptied). One message may end slightly over the quota when its real
    /// size was not declared.
    fn quota_check(&self, index: usize, declared: u64) -> Option<Reply> {
        let mailbox = self.config.mailbox(index);
        let quota = mailbox.quota_bytes?;
        if declared > quota {
            return Some(Reply::new(
                552,
                "5.2.2",
                "message exceeds the mailbox's quota",
            ));
        }
        let used = self
            .store
            .usage(&mailbox.address.to_ascii_lowercase())
            .ok()?
            .bytes;
        if used >= quota || used + declared > quota {
            return Some(Reply::new(452, "4.2.2", "mailbox full, try again later"));
        }
        None
    }

    fn data(&mut self, out: &mut Vec<Output>) -> Option<Reply> {
        match &self.txn {
            None => return Some(Reply::new(503, "5.5.1", "send MAIL first")),
            // RFC 3030 s3: a transaction sends its message with BDAT or with DATA, not both.
            Some(t) if t.begun => {
                return Some(Reply::new(
                    503,
                    "5.5.1",
                    "DATA is not allowed after BDAT in one transaction",
                ));
            }
            Some(t) if t.recipients.is_empty() && t.remote.is_empty() => {
                return Some(Reply::new(554, "5.5.1", "no valid recipients"));
            }
            Some(_) => {}
        }
        out.push(Output::Reply(Reply::plain(
            354,
            "end data with <CR><LF>.<CR><LF>",
        )));
        self.begin_message(out);
        self.state = State::Data(DataReceiver::new());
        None
    }

    fn bdat(&mut self, size: u64, last: bool, out: &mut Vec<Output>) -> Option<Reply> {
        let ready = self
            .txn
            .as_ref()
            .is_some_and(|t| !t.recipients.is_empty() || !t.remote.is_empty());
        if !ready {
            // The chunk must still be read and thrown away, or its bytes would run as
            // commands; the refusal is its only reply (a second one would desynchronise a
            // pipelining client).
            self.txn = None;
            self.state = State::Bdat {
                left: size,
                last: false,
                discard: true,
            };
            return Some(Reply::new(503, "5.5.1", "send MAIL and RCPT first"));
        }
        if !self.txn.as_ref().is_some_and(|t| t.begun) {
            self.begin_message(out);
        }
        self.state = State::Bdat {
            left: size,
            last,
            discard: false,
        };
        None
    }

    fn begin_message(&mut self, out: &mut Vec<Output>) {
        let received = self.received_header();
        if let Some(txn) = self.txn.as_mut() {
            txn.begun = true;
            txn.size = 0;
            // As if after a line break: a message may start with its empty line.
            txn.header_tail = [0, b'\n'];
        }
        out.push(Output::BeginMessage);
        out.push(Output::Body(received.into_bytes()));
    }

    fn received_header(&self) -> String {
        let helo = self.helo.as_deref().unwrap_or("unknown");
        let with = match (self.esmtp, self.info.tls, self.user.is_some()) {
            (false, _, _) => "SMTP",
            (true, false, false) => "ESMTP",
            (true, true, false) => "ESMTPS",
            (true, false, true) => "ESMTPA",
            (true, true, true) => "ESMTPSA",
        };
        let date = time::OffsetDateTime::now_utc()
            .format(&time::format_description::well_known::Rfc2822)
            .unwrap_or_default();
        let sanitize = |s: &str| -> String {
            s.chars()
                .filter(|c| !c.is_control() && *c != '(' && *c != ')')
                .take(255)
                .collect()
        };
        let mut header = format!(
            "Received: from {} ([{}])\r\n\tby {} (kubemail) with {with} id {}",
            sanitize(helo),
            self.info.peer,
            self.hostname,
            self.queue_id
        );
        if let Some(txn) = &self.txn
            && txn.recipients.len() == 1
        {
            header.push_str(&format!("\r\n\tfor <{}>", sanitize(&txn.recipients[0].0)));
        }
        header.push_str(&format!("; {date}\r\n"));
        header
    }

    /// The envelope sender of the current transaction.
    pub fn sender(&self) -> Option<&str> {
        self.txn.as_ref().map(|t| t.from.as_str())
    }

    /// Whether the current message was declared 8-bit, and its DSN envelope id.
    pub fn body_params(&self) -> Option<(bool, Option<&str>)> {
        self.txn
            .as_ref()
            .map(|t| (t.body_8bit, t.env_id.as_deref()))
    }
}

/// Why a login failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LoginFailure {
    /// Wrong user or password, or the mailbox may not use SMTP.
    Invalid,
    /// The client's address failed too often.
    TooManyFailures,
}

/// The protocol a submission login is for.
pub const LOGIN_PROTOCOL: LoginProtocol = LoginProtocol::Smtp;

fn decode(line: &[u8]) -> Option<Vec<u8>> {
    B64.decode(line.trim_ascii()).ok()
}

fn parse_error(err: smtp_proto::Error) -> Reply {
    use smtp_proto::Error;
    match err {
        Error::UnknownCommand => Reply::new(500, "5.5.1", "command unrecognized"),
        Error::InvalidSenderAddress => Reply::new(501, "5.1.7", "bad sender address syntax"),
        Error::InvalidRecipientAddress => Reply::new(501, "5.1.3", "bad recipient address syntax"),
        Error::SyntaxError { syntax } => Reply::new(501, "5.5.4", format!("syntax: {syntax}")),
        Error::InvalidParameter { param } => {
            Reply::new(501, "5.5.4", format!("invalid parameter {param}"))
        }
        Error::UnsupportedParameter { param } => {
            Reply::new(555, "5.5.4", format!("unsupported parameter {param}"))
        }
        Error::NeedsMoreData { .. } | Error::ResponseTooLong | Error::InvalidResponse { .. } => {
            Reply::new(500, "5.5.2", "syntax error")
        }
    }
}

#[cfg(test)]
#[path = "transcripts.rs"]
mod transcripts;

fn new_queue_id() -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static SEQ: AtomicU64 = AtomicU64::new(0);
    let n = SEQ.fetch_add(1, Ordering::Relaxed);
    format!("{:X}{:04X}", crate::store::unix_nanos() / 1000, n & 0xFFFF)
}
