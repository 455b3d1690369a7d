//! The POP3 session as a state machine without I/O.
//!
//! ```text
//!   AUTHORIZATION --USER/PASS, AUTH PLAIN--> WaitLogin --(driver: login + lock + list)-->
//!   TRANSACTION --QUIT--> UPDATE (driver expunges) --> closed
//! ```
use base64::{Engine, engine::general_purpose::STANDARD as B64};

use crate::{
    smtp::codec::{Line, take_line},
    store::MessageMeta,
};

/// What the session asks of its driver.
#[derive(Debug, PartialEq, Eq)]
pub enum Output {
    /// Send these bytes.
    Send(Vec<u8>),
    /// Send what is queued, run the TLS handshake, then call [`Session::tls_started`].
    StartTls,
    /// Check the credentials, lock the maildrop and list it; then call [`Session::opened`].
    Login {
        /// The user name (the mailbox address).
        username: String,
        /// The password.
        password: String,
    },
    /// Send a message: `+OK`, its bytes dot-stuffed (only `lines` body lines for TOP), `.`.
    Retrieve {
        /// The message.
        message: MessageMeta,
        /// For TOP: how many body lines.
        top: Option<usize>,
    },
    /// Enter UPDATE: expunge these messages, then call [`Session::committed`].
    Commit(Vec<MessageMeta>),
    /// Close the connection after sending what is queued.
    Close,
}

/// Why opening the maildrop failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OpenFailure {
    /// Wrong credentials, or the mailbox may not use POP3.
    Invalid,
    /// Too many failures from this address.
    TooManyFailures,
    /// Another session holds the maildrop.
    InUse,
    /// The store failed.
    Unavailable,
}

#[derive(Debug)]
enum State {
    Authorization { user: Option<String> },
    AuthPlain,
    Wait,
    Transaction,
    Closed,
}

/// Too many bad commands end the session.
const MAX_ERRORS: u32 = 20;

/// One POP3 session.
#[derive(Debug)]
pub struct Session {
    state: State,
    buf: Vec<u8>,
    skipping: bool,
    tls: bool,
    tls_available: bool,
    plaintext_allowed: bool,
    uid_validity: u32,
    messages: Vec<MessageMeta>,
    deleted: Vec<bool>,
    errors: u32,
    hostname: String,
}

fn ok(text: &str) -> Output {
    Output::Send(format!("+OK {text}\r\n").into_bytes())
}

fn err(text: &str) -> Output {
    Output::Send(format!("-ERR {text}\r\n").into_bytes())
}

impl Session {
    /// A new session and its greeting.
    pub fn new(
        hostname: &str,
        tls: bool,
        tls_available: bool,
        plaintext_allowed: bool,
    ) -> (Self, Output) {
        let session = Self {
            state: State::Authorization { user: None },
            buf: Vec::new(),
            skipping: false,
            tls,
            tls_available,
            plaintext_allowed,
            uid_validity: 0,
            messages: Vec::new(),
            deleted: Vec::new(),
            errors: 0,
            hostname: hostname.to_string(),
        };
        let greeting = ok(&format!("{hostname} POP3 kubemail ready"));
        (session, greeting)
    }

    /// Whether the session has ended.
    pub fn closed(&self) -> bool {
        matches!(self.state, State::Closed)
    }

    /// Whether a maildrop is open (and locked).
    pub fn in_transaction(&self) -> bool {
        matches!(self.state, State::Transaction)
    }

    fn login_allowed(&self) -> bool {
        self.tls || self.plaintext_allowed
    }

    /// Feeds bytes from the client.
    pub fn feed(&mut self, bytes: &[u8]) -> Vec<Output> {
        self.buf.extend_from_slice(bytes);
        self.run()
    }

    fn run(&mut self) -> Vec<Output> {
        let mut out = Vec::new();
        while !matches!(self.state, State::Wait | State::Closed) {
            let Some(line) = take_line(&mut self.buf, &mut self.skipping) else {
                break;
            };
            let before = out.len();
            match line {
                Line::Command(line) => self.line(&line, &mut out),
                Line::TooLong => out.push(err("line too long")),
                Line::BareLf => out.push(err("lines must end with CRLF")),
            }
            if out[before..]
                .iter()
                .any(|o| matches!(o, Output::Send(b) if b.starts_with(b"-ERR")))
            {
                self.errors += 1;
                if self.errors >= MAX_ERRORS {
                    out.push(err("too many errors, closing"));
                    out.push(Output::Close);
                    self.state = State::Closed;
                }
            }
        }
        out
    }

    fn line(&mut self, line: &[u8], out: &mut Vec<Output>) {
        if matches!(self.state, State::AuthPlain) {
            self.state = State::Authorization { user: None };
            self.auth_plain(line, out);
            return;
        }
        let text = String::from_utf8_lossy(line);
        let mut parts = text.splitn(2, ' ');
        let command = parts.next().unwrap_or_default().to_ascii_uppercase();
        let arg = parts.next().unwrap_or_default().trim().to_string();
        match (&self.state, command.as_str()) {
            (_, "CAPA") => out.push(self.capa()),
            (_, "QUIT") => self.quit(out),
            (_, "NOOP") if self.in_transaction() => out.push(ok("")),
            (State::Authorization { .. }, "STLS") => self.stls(out),
            (State::Authorization { .. }, "USER") => {
                if !self.login_allowed() {
                    out.push(err("[AUTH] plaintext login is disabled: use STLS first"));
                } else if arg.is_empty() {
                    out.push(err("USER needs a name"));
                } else {
                    self.state = State::Authorization { user: Some(arg) };
                    out.push(ok("send PASS"));
                }
            }
            (State::Authorization { user }, "PASS") => match user.clone() {
                Some(user) if self.login_allowed() => {
                    out.push(Output::Login {
                        username: user,
                        password: arg,
                    });
                    self.state = State::Wait;
                }
                _ => out.push(err("send USER first")),
            },
            (State::Authorization { .. }, "AUTH") => {
                let mut words = arg.split_whitespace();
                let mechanism = words.next().unwrap_or_default().to_ascii_uppercase();
                let initial = words.next();
                if !self.login_allowed() {
                    out.push(err("[AUTH] authentication is disabled: use STLS first"));
                } else if mechanism != "PLAIN" {
                    out.push(err("unsupported mechanism; use PLAIN"));
                } else if let Some(initial) = initial {
                    self.auth_plain(initial.as_bytes(), out);
                } else {
                    self.state = State::AuthPlain;
                    out.push(Output::Send(b"+ \r\n".to_vec()));
                }
            }
            (State::Transaction, "STAT") => {
                let (count, size) = self
                    .live()
                    .fold((0, 0), |(n, s), (_, m)| (n + 1, s + m.size));
                out.push(ok(&format!("{count} {size}")));
            }
            (State::Transaction, "LIST") => self.listing(&arg, out, |_, m| m.size.to_string()),
            (State::Transaction, "UIDL") => {
                let validity = self.uid_validity;
                self.listing(&arg, out, move |_, m| format!("{validity}.{}", m.uid));
            }
            (State::Transaction, "RETR") => match self.message(&arg) {
                Ok(i) => out.push(Output::Retrieve {
                    message: self.messages[i].clone(),
                    top: None,
                }),
                Err(e) => out.push(e),
            },
            (State::Transaction, "TOP") => {
                let mut words = arg.split_whitespace();
                let n = words.next().unwrap_or_default().to_string();
                match (self.message(&n), words.next().map(str::parse::<usize>)) {
                    (Ok(i), Some(Ok(lines))) => out.push(Output::Retrieve {
                        message: self.messages[i].clone(),
                        top: Some(lines),
                    }),
                    (Err(e), _) => out.push(e),
                    _ => out.push(err("TOP needs a message number and a line count")),
                }
            }
            (State::Transaction, "DELE") => match self.message(&arg) {
                Ok(i) => {
                    self.deleted[i] = true;
                    out.push(ok(&format!("message {} deleted", i + 1)));
                }
                Err(e) => out.push(e),
            },
            (State::Transaction, "RSET") => {
                self.deleted.iter_mut().for_each(|d| *d = false);
                out.push(ok(&format!(
                    "maildrop has {} messages",
                    self.messages.len()
                )));
            }
            (State::Authorization { .. }, _) => {
                out.push(err("unknown command or not allowed before login"))
            }
            (_, _) => out.push(err("unknown command")),
        }
    }

    fn capa(&self) -> Output {
        let mut lines = vec!["+OK capability list follows".to_string()];
        lines.extend(
            ["TOP", "UIDL", "RESP-CODES", "AUTH-RESP-CODE", "PIPELINING"].map(String::from),
        );
        if !self.tls && self.tls_available {
            lines.push("STLS".into());
        }
        if self.login_allowed() {
            lines.push("USER".into());
            lines.push("SASL PLAIN".into());
        }
        lines.push("IMPLEMENTATION kubemail".into());
        lines.push(".".into());
        Output::Send((lines.join("\r\n") + "\r\n").into_bytes())
    }

    fn stls(&mut self, out: &mut Vec<Output>) {
        if self.tls {
            out.push(err("TLS is already active"));
        } else if !self.tls_available {
            out.push(err("TLS is not available"));
        } else {
            out.push(ok("begin TLS negotiation"));
            out.push(Output::StartTls);
            // Anything pipelined after STLS was sent in the clear: discard it (RFC 2595).
            self.buf.clear();
            self.state = State::Wait;
        }
    }

    fn auth_plain(&mut self, response: &[u8], out: &mut Vec<Output>) {
        if response == b"*" {
            out.push(err("authentication cancelled"));
            return;
        }
        let decoded = B64.decode(response.trim_ascii()).ok();
        let fields: Option<Vec<Vec<u8>>> =
            decoded.map(|d| d.split(|&b| b == 0).map(<[u8]>::to_vec).collect());
        match fields.as_deref() {
            Some([authzid, user, pass]) if authzid.is_empty() || authzid == user => {
                match (
                    String::from_utf8(user.clone()),
                    String::from_utf8(pass.clone()),
                ) {
                    (Ok(username), Ok(password)) => {
                        out.push(Output::Login { username, password });
                        self.state = State::Wait;
                    }
                    _ => out.push(err("[AUTH] invalid credentials")),
                }
            }
            _ => out.push(err("malformed PLAIN response")),
        }
    }

    fn quit(&mut self, out: &mut Vec<Output>) {
        if self.in_transaction() {
            let doomed: Vec<MessageMeta> = self
                .messages
                .iter()
                .zip(&self.deleted)
                .filter(|(_, d)| **d)
                .map(|(m, _)| m.clone())
                .collect();
            out.push(Output::Commit(doomed));
            self.state = State::Wait;
        } else {
            out.push(ok(&format!("{} POP3 server signing off", self.hostname)));
            out.push(Output::Close);
            self.state = State::Closed;
        }
    }

    fn live(&self) -> impl Iterator<Item = (usize, &MessageMeta)> {
        self.messages
            .iter()
            .enumerate()
            .filter(|(i, _)| !self.deleted[*i])
    }

    /// A message number (1-based) that exists and is not deleted.
    fn message(&self, arg: &str) -> Result<usize, Output> {
        let n: usize = arg
            .trim()
            .parse()
            .map_err(|_| err("a message number is needed"))?;
        if n == 0 || n > self.messages.len() {
            return Err(err("no such message"));
        }
        if self.deleted[n - 1] {
            return Err(err("message already deleted"));
        }
        Ok(n - 1)
    }

    fn listing(
        &self,
        arg: &str,
        out: &mut Vec<Output>,
        field: impl Fn(usize, &MessageMeta) -> String,
    ) {
        if arg.is_empty() {
            let mut text = format!("+OK {} messages\r\n", self.live().count());
            for (i, m) in self.live() {
                text.push_str(&format!("{} {}\r\n", i + 1, field(i, m)));
            }
            text.push_str(".\r\n");
            out.push(Output::Send(text.into_bytes()));
        } else {
            match self.message(arg) {
                Ok(i) => out.push(ok(&format!("{} {}", i + 1, field(i, &self.messages[i])))),
                Err(e) => out.push(e),
            }
        }
    }

    /// The driver's report on the TLS handshake.
    pub fn tls_started(&mut self, success: bool) -> Vec<Output> {
        if !success {
            self.state = State::Closed;
            return vec![Output::Close];
        }
        self.tls = true;
        self.buf.clear();
        self.state = State::Authorization { user: None };
        Vec::new()
    }

    /// The driver's report on login: the maildrop's listing, or why not.
    pub fn opened(&mut self, result: Result<(u32, Vec<MessageMeta>), OpenFailure>) -> Vec<Output> {
        let mut out = Vec::new();
        match result {
            Ok((uid_validity, messages)) => {
                let size: u64 = messages.iter().map(|m| m.size).sum();
                out.push(ok(&format!(
                    "maildrop has {} messages ({size} octets)",
                    messages.len()
                )));
                self.uid_validity = uid_validity;
                self.deleted = vec![false; messages.len()];
                self.messages = messages;
                self.state = State::Transaction;
            }
            Err(failure) => {
                out.push(err(match failure {
                    OpenFailure::Invalid => "[AUTH] invalid credentials",
                    OpenFailure::TooManyFailures => {
                        "[SYS/TEMP] too many failed logins from your address, try later"
                    }
                    OpenFailure::InUse => "[IN-USE] the maildrop is open in another session",
                    OpenFailure::Unavailable => "[SYS/TEMP] the maildrop is unavailable, try later",
                }));
                self.errors += 1;
                self.state = State::Authorization { user: None };
            }
        }
        out.extend(self.run());
        out
    }

    /// The driver's report on UPDATE.
    pub fn committed(&mut self, removed: Result<usize, ()>) -> Vec<Output> {
        self.state = State::Closed;
        let reply = match removed {
            Ok(n) => ok(&format!(
                "{} POP3 server signing off ({n} messages deleted)",
                self.hostname
            )),
            Err(()) => err("[SYS/TEMP] some deleted messages were not removed"),
        };
        vec![reply, Output::Close]
    }

    /// Formats a message for RETR or TOP: `+OK`, dot-stuffed lines, `.`.
    pub fn format_message(bytes: &[u8], top: Option<usize>) -> Vec<u8> {
        let mut out = Vec::with_capacity(bytes.len() + 64);
        out.extend_from_slice(format!("+OK {} octets\r\n", bytes.len()).as_bytes());
        let mut in_body = false;
        let mut body_lines = 0;
        for line in bytes.split_inclusive(|&b| b == b'\n') {
            if in_body && top.is_some_and(|n| body_lines >= n) {
                break;
            }
            if line.first() == Some(&b'.') {
                out.push(b'.');
            }
            out.extend_from_slice(line);
            if !line.ends_with(b"\n") {
                out.extend_from_slice(b"\r\n");
            }
            if in_body {
                body_lines += 1;
            } else if line == b"\r\n" || line == b"\n" {
                in_body = true;
            }
        }
        out.extend_from_slice(b".\r\n");
        out
    }
}

#[cfg(test)]
#[path = "transcripts.rs"]
mod transcripts;
