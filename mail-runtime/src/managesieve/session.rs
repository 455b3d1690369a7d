//! ManageSieve (RFC 5804) as a state machine: bytes in, outputs out, no I/O. Commands are
//! words: atoms, quoted strings and literals (`{n+}` or `{n}`, both read without a
//! continuation, as clients send them). Lines and literals are bounded before they are
//! buffered, so a client cannot make the session hold more than one script's worth.
use base64::Engine;

/// The longest command line, literals aside.
const MAX_LINE: usize = 8 * 1024;
/// The longest literal: a script, with room for a client's line endings.
pub const MAX_LITERAL: usize = kubemail_sieve::MAX_SCRIPT_BYTES + 1024;
/// Scripts one mailbox may keep.
pub const MAX_SCRIPTS: usize = 16;
/// Errors in a row before the session is closed.
const MAX_ERRORS: u32 = 10;
/// Failed logins before the session is closed (the address's failed-login limit applies too).
const MAX_FAILED_LOGINS: u32 = 3;

/// What the driver must do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Output {
    Send(Vec<u8>),
    StartTls,
    Login { username: String, password: String },
    Request(Request),
    Close,
}

/// A command of an authenticated session; the driver answers it with [`Session::reply`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Request {
    HaveSpace { name: String, size: u64 },
    Put { name: String, script: String },
    List,
    SetActive { name: String },
    Get { name: String },
    Delete { name: String },
    Rename { from: String, to: String },
}

#[derive(Debug, PartialEq, Eq)]
enum State {
    Greeting,
    /// Waiting for the SASL response of an AUTHENTICATE without an initial one.
    SaslResponse,
    Authenticated,
    Closed,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Word {
    Atom(String),
    Str(String),
}

impl Word {
    fn text(&self) -> &str {
        match self {
            Word::Atom(s) | Word::Str(s) => s,
        }
    }
}

enum Parsed {
    Incomplete,
    Command(usize, Vec<Word>),
    Error(usize, &'static str),
}

/// A session.
#[derive(Debug)]
pub struct Session {
    state: State,
    tls: bool,
    tls_available: bool,
    plaintext_auth: bool,
    host: String,
    buf: Vec<u8>,
    errors: u32,
    failed_logins: u32,
    /// A literal too large is skipped: bytes still to throw away.
    skip: usize,
    /// After an error in a line whose end has not come yet, the rest of that line is thrown
    /// away: it must never be read as a command of its own.
    discard_line: bool,
}

/// A string as ManageSieve sends it: quoted, or a literal when it spans lines.
pub fn string(s: &str) -> String {
    if s.contains(['\r', '\n']) || s.len() > 1024 {
        format!("{{{}}}\r\n{s}", s.len())
    } else {
        format!("\"{}\"", s.replace('\\', "\\\\").replace('"', "\\\""))
    }
}

/// `NO (CODE) "text"` or `NO "text"`.
pub fn no(code: Option<&str>, text: &str) -> Vec<u8> {
    match code {
        Some(code) => format!("NO ({code}) {}\r\n", string(text)).into_bytes(),
        None => format!("NO {}\r\n", string(text)).into_bytes(),
    }
}

pub fn ok(text: &str) -> Vec<u8> {
    format!("OK {}\r\n", string(text)).into_bytes()
}

impl Session {
    /// A new session and its greeting (the capabilities).
    pub fn new(host: &str, tls_available: bool, plaintext_auth: bool) -> (Self, Output) {
        let mut session = Self {
            state: State::Greeting,
            tls: false,
            tls_available,
            plaintext_auth,
            host: host.to_string(),
            buf: Vec::new(),
            errors: 0,
            failed_logins: 0,
            skip: 0,
            discard_line: false,
        };
        let greeting = Output::Send(session.capabilities(&format!("{host} ManageSieve ready")));
        session.state = State::Greeting;
        (session, greeting)
    }

    pub fn closed(&self) -> bool {
        self.state == State::Closed
    }

    pub fn authenticated(&self) -> bool {
        self.state == State::Authenticated
    }

    fn capabilities(&self, ok_text: &str) -> Vec<u8> {
        let mut out = String::new();
        out.push_str("\"IMPLEMENTATION\" \"kubemail\"\r\n");
        out.push_str(&format!(
            "\"SIEVE\" \"{}\"\r\n",
            kubemail_sieve::EXTENSIONS.join(" ")
        ));
        if self.tls || self.plaintext_auth {
            out.push_str("\"SASL\" \"PLAIN\"\r\n");
        } else {
            out.push_str("\"SASL\" \"\"\r\n");
        }
        if !self.tls && self.tls_available {
            out.push_str("\"STARTTLS\"\r\n");
        }
        out.push_str(&format!(
            "\"MAXREDIRECTS\" \"{}\"\r\n",
            kubemail_sieve::MAX_REDIRECTS
        ));
        out.push_str("\"VERSION\" \"1.0\"\r\n");
        out.push_str(&format!("OK {}\r\n", string(ok_text)));
        out.into_bytes()
    }

    /// Bytes from the client.
    pub fn feed(&mut self, bytes: &[u8]) -> Vec<Output> {
        let mut outputs = Vec::new();
        let mut bytes = bytes;
        if self.skip > 0 {
            let n = self.skip.min(bytes.len());
            self.skip -= n;
            bytes = &bytes[n..];
        }
        if self.discard_line {
            match bytes.iter().position(|b| *b == b'\n') {
                Some(end) => {
                    self.discard_line = false;
                    bytes = &bytes[end + 1..];
                }
                None => return outputs,
            }
        }
        self.buf.extend_from_slice(bytes);
        while self.state != State::Closed {
            match parse(&self.buf) {
                Parsed::Incomplete => {
                    if self.buf.len() > MAX_LINE && !self.buf.contains(&b'{') {
                        self.buf.clear();
                        outputs.push(Output::Send(b"BYE \"line too long\"\r\n".to_vec()));
                        outputs.push(Output::Close);
                        self.state = State::Closed;
                    }
                    break;
                }
                Parsed::Error(consumed, "an empty line") => {
                    self.buf.drain(..consumed);
                }
                Parsed::Error(_, why) if why.ends_with("too long") => {
                    // The rest of such a line cannot be told from a next command.
                    self.buf.clear();
                    outputs.push(Output::Send(
                        format!("BYE {}\r\n", string(why)).into_bytes(),
                    ));
                    outputs.push(Output::Close);
                    self.state = State::Closed;
                }
                Parsed::Error(consumed, why) => {
                    if why == "literal too large" {
                        // The literal's bytes are thrown away as they come.
                        let declared = declared_literal(&self.buf[..consumed]);
                        let buffered = self.buf.len() - consumed;
                        self.skip = declared.saturating_sub(buffered);
                        let drop = consumed + declared.min(buffered);
                        self.buf.drain(..drop);
                        outputs.push(Output::Send(no(
                            Some("QUOTA/MAXSIZE"),
                            "the script is too large",
                        )));
                    } else {
                        let ended = consumed > 0 && self.buf.get(consumed - 1) == Some(&b'\n');
                        self.buf.drain(..consumed);
                        if !ended {
                            // The rest of this line is still to come: drop it as it does.
                            match self.buf.iter().position(|b| *b == b'\n') {
                                Some(end) => {
                                    self.buf.drain(..=end);
                                }
                                None => {
                                    self.buf.clear();
                                    self.discard_line = true;
                                }
                            }
                        }
                        outputs.push(Output::Send(no(None, why)));
                        if self.discard_line {
                            self.errors += 1;
                            break;
                        }
                    }
                    self.errors += 1;
                    if self.errors >= MAX_ERRORS {
                        outputs.push(Output::Send(b"BYE \"too many errors\"\r\n".to_vec()));
                        outputs.push(Output::Close);
                        self.state = State::Closed;
                    }
                }
                Parsed::Command(consumed, words) => {
                    self.buf.drain(..consumed);
                    let before = outputs.len();
                    self.command(words, &mut outputs);
                    // Anything after STARTTLS or a login waits for its outcome.
                    if outputs[before..].iter().any(|o| {
                        matches!(
                            o,
                            Output::StartTls | Output::Login { .. } | Output::Request(_)
                        )
                    }) {
                        break;
                    }
                }
            }
        }
        outputs
    }

    /// Parses what was buffered while an outcome was awaited.
    pub fn resume(&mut self) -> Vec<Output> {
        self.feed(&[])
    }

    fn command(&mut self, words: Vec<Word>, out: &mut Vec<Output>) {
        if self.state == State::SaslResponse {
            self.state = State::Greeting;
            let response = words.first().map(Word::text).unwrap_or_default();
            if response == "*" {
                out.push(Output::Send(no(None, "authentication aborted")));
                return;
            }
            self.plain(response, out);
            return;
        }
        let Some(Word::Atom(name)) = words.first() else {
            out.push(Output::Send(no(None, "a command name was expected")));
            return;
        };
        let name = name.to_ascii_uppercase();
        let args: Vec<&str> = words[1..].iter().map(Word::text).collect();
        let authed = self.state == State::Authenticated;
        match (name.as_str(), args.as_slice()) {
            ("CAPABILITY", []) => out.push(Output::Send(self.capabilities("capabilities listed"))),
            ("NOOP", []) => out.push(Output::Send(ok("NOOP done"))),
            ("NOOP", [tag]) => out.push(Output::Send(
                format!("OK (TAG {}) \"done\"\r\n", string(tag)).into_bytes(),
            )),
            ("LOGOUT", []) => {
                out.push(Output::Send(ok("bye")));
                out.push(Output::Close);
                self.state = State::Closed;
            }
            ("STARTTLS", []) if !self.tls && self.tls_available && !authed => {
                out.push(Output::Send(ok("begin TLS negotiation now")));
                out.push(Output::StartTls);
            }
            ("AUTHENTICATE", [mechanism, rest @ ..]) if !authed && rest.len() <= 1 => {
                if !(self.tls || self.plaintext_auth) {
                    out.push(Output::Send(no(
                        Some("ENCRYPT-NEEDED"),
                        "use STARTTLS before AUTHENTICATE",
                    )));
                } else if !mechanism.eq_ignore_ascii_case("PLAIN") {
                    out.push(Output::Send(no(None, "only PLAIN is offered")));
                } else if let [initial] = rest {
                    self.plain(initial, out);
                } else {
                    self.state = State::SaslResponse;
                    out.push(Output::Send(b"\"\"\r\n".to_vec()));
                }
            }
            (_, _) if !authed && is_script_command(&name) => {
                out.push(Output::Send(no(None, "log in first")));
            }
            ("HAVESPACE", [name, size]) => match size.parse() {
                Ok(size) => out.push(Output::Request(Request::HaveSpace {
                    name: name.to_string(),
                    size,
                })),
                Err(_) => out.push(Output::Send(no(None, "the size is not a number"))),
            },
            ("PUTSCRIPT", [name, script]) => out.push(Output::Request(Request::Put {
                name: name.to_string(),
                script: script.to_string(),
            })),
            ("CHECKSCRIPT", [script]) => out.push(Output::Send(check(script))),
            ("LISTSCRIPTS", []) => out.push(Output::Request(Request::List)),
            ("SETACTIVE", [name]) => out.push(Output::Request(Request::SetActive {
                name: name.to_string(),
            })),
            ("GETSCRIPT", [name]) => out.push(Output::Request(Request::Get {
                name: name.to_string(),
            })),
            ("DELETESCRIPT", [name]) => out.push(Output::Request(Request::Delete {
                name: name.to_string(),
            })),
            ("RENAMESCRIPT", [from, to]) => out.push(Output::Request(Request::Rename {
                from: from.to_string(),
                to: to.to_string(),
            })),
            _ => {
                self.errors += 1;
                out.push(Output::Send(no(None, "unknown command or wrong arguments")));
                if self.errors >= MAX_ERRORS {
                    out.push(Output::Send(b"BYE \"too many errors\"\r\n".to_vec()));
                    out.push(Output::Close);
                    self.state = State::Closed;
                }
            }
        }
    }

    fn plain(&mut self, response: &str, out: &mut Vec<Output>) {
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(response.trim())
            .ok()
            .and_then(|d| String::from_utf8(d).ok());
        let mut parts = decoded.as_deref().unwrap_or_default().split('\0');
        match (parts.next(), parts.next(), parts.next(), parts.next()) {
            (Some(authz), Some(user), Some(pass), None)
                if authz.is_empty() || authz.eq_ignore_ascii_case(user) =>
            {
                out.push(Output::Login {
                    username: user.to_string(),
                    password: pass.to_string(),
                });
            }
            _ => out.push(Output::Send(no(None, "a malformed PLAIN response"))),
        }
    }

    /// The driver's report of TLS: the capabilities again (RFC 5804 s2.2), or the end.
    pub fn tls_started(&mut self, ok: bool) -> Vec<Output> {
        if !ok {
            self.state = State::Closed;
            return vec![Output::Close];
        }
        self.tls = true;
        self.buf.clear();
        vec![Output::Send(
            self.capabilities("TLS negotiation successful"),
        )]
    }

    /// The driver's report of a login.
    pub fn logged_in(&mut self, result: Result<(), &str>) -> Vec<Output> {
        match result {
            Ok(()) => {
                self.state = State::Authenticated;
                self.errors = 0;
                vec![Output::Send(ok("logged in"))]
            }
            Err(why) => {
                self.failed_logins += 1;
                let mut out = vec![Output::Send(no(None, why))];
                if self.failed_logins >= MAX_FAILED_LOGINS {
                    out.push(Output::Send(b"BYE \"too many failed logins\"\r\n".to_vec()));
                    out.push(Output::Close);
                    self.state = State::Closed;
                }
                out
            }
        }
    }

    pub fn host(&self) -> &str {
        &self.host
    }
}

fn is_script_command(name: &str) -> bool {
    matches!(
        name,
        "HAVESPACE"
            | "PUTSCRIPT"
            | "CHECKSCRIPT"
            | "LISTSCRIPTS"
            | "SETACTIVE"
            | "GETSCRIPT"
            | "DELETESCRIPT"
            | "RENAMESCRIPT"
    )
}

/// CHECKSCRIPT's answer, and PUTSCRIPT's before it stores.
pub fn check(script: &str) -> Vec<u8> {
    match kubemail_sieve::compile(script) {
        Ok(_) => ok("the script compiles"),
        Err(err) => no(None, &err.to_string()),
    }
}

fn declared_literal(line: &[u8]) -> usize {
    let text = String::from_utf8_lossy(line);
    text.rfind('{')
        .and_then(|i| {
            let digits: String = text[i + 1..]
                .chars()
                .take_while(char::is_ascii_digit)
                .collect();
            digits.parse().ok()
        })
        .unwrap_or(0)
}

/// One command from the front of `buf`.
fn parse(buf: &[u8]) -> Parsed {
    let mut words = Vec::new();
    let mut i = 0;
    // Bytes of literals so far: a line is bounded without them.
    let mut literal_bytes = 0;
    loop {
        if i - literal_bytes > MAX_LINE {
            return Parsed::Error(i, "line too long");
        }
        while i < buf.len() && buf[i] == b' ' {
            i += 1;
        }
        if i >= buf.len() {
            return Parsed::Incomplete;
        }
        match buf[i] {
            b'\r' | b'\n' => {
                let end = if buf[i] == b'\r' {
                    match buf.get(i + 1) {
                        None => return Parsed::Incomplete,
                        Some(b'\n') => i + 2,
                        Some(_) => return Parsed::Error(i + 1, "a bare CR"),
                    }
                } else {
                    i + 1
                };
                if words.is_empty() {
                    // An empty line: skipped.
                    return Parsed::Error(end, "an empty line");
                }
                return Parsed::Command(end, words);
            }
            b'"' => {
                let mut value = Vec::new();
                let mut j = i + 1;
                loop {
                    match buf.get(j) {
                        None => {
                            return if j > MAX_LINE {
                                Parsed::Error(j, "a quoted string is too long")
                            } else {
                                Parsed::Incomplete
                            };
                        }
                        Some(b'"') => break,
                        Some(b'\\') => match buf.get(j + 1) {
                            None => return Parsed::Incomplete,
                            Some(&c) => {
                                value.push(c);
                                j += 2;
                            }
                        },
                        Some(b'\r' | b'\n') => {
                            return Parsed::Error(line_end(buf, j), "a quoted string spans lines");
                        }
                        Some(&c) => {
                            value.push(c);
                            j += 1;
                        }
                    }
                }
                let Ok(text) = String::from_utf8(value) else {
                    return Parsed::Error(line_end(buf, j), "a string is not UTF-8");
                };
                words.push(Word::Str(text));
                i = j + 1;
            }
            b'{' => {
                let Some(close) = buf[i..].iter().position(|b| *b == b'}') else {
                    return if buf.len() - i > 32 {
                        Parsed::Error(line_end(buf, i), "a malformed literal")
                    } else {
                        Parsed::Incomplete
                    };
                };
                let spec = &buf[i + 1..i + close];
                let digits = spec.strip_suffix(b"+").unwrap_or(spec);
                let Some(n) = std::str::from_utf8(digits)
                    .ok()
                    .and_then(|d| d.parse::<usize>().ok())
                else {
                    return Parsed::Error(line_end(buf, i), "a malformed literal");
                };
                let after = i + close + 1;
                let start = match (buf.get(after), buf.get(after + 1)) {
                    (Some(b'\r'), Some(b'\n')) => after + 2,
                    (Some(b'\n'), _) => after + 1,
                    (None, _) | (Some(b'\r'), None) => return Parsed::Incomplete,
                    _ => return Parsed::Error(line_end(buf, i), "a literal must end its line"),
                };
                if n > MAX_LITERAL {
                    return Parsed::Error(start, "literal too large");
                }
                if buf.len() < start + n {
                    return Parsed::Incomplete;
                }
                let Ok(text) = String::from_utf8(buf[start..start + n].to_vec()) else {
                    return Parsed::Error(start + n, "a literal is not UTF-8");
                };
                words.push(Word::Str(text));
                literal_bytes += start + n - i;
                i = start + n;
            }
            _ => {
                let mut j = i;
                while j < buf.len() && !matches!(buf[j], b' ' | b'\r' | b'\n' | b'"' | b'{') {
                    j += 1;
                }
                if j >= buf.len() {
                    return if j > MAX_LINE {
                        Parsed::Error(j, "a word is too long")
                    } else {
                        Parsed::Incomplete
                    };
                }
                words.push(Word::Atom(String::from_utf8_lossy(&buf[i..j]).into_owned()));
                i = j;
            }
        }
        if words.len() > 8 {
            return Parsed::Error(line_end(buf, i), "too many arguments");
        }
    }
}

/// Where the line holding `from` ends (after its LF), or the buffer's end.
fn line_end(buf: &[u8], from: usize) -> usize {
    buf[from.min(buf.len())..]
        .iter()
        .position(|b| *b == b'\n')
        .map_or(buf.len(), |p| from + p + 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sent(outputs: &[Output]) -> String {
        outputs
            .iter()
            .filter_map(|o| match o {
                Output::Send(b) => Some(String::from_utf8_lossy(b).into_owned()),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn auth_waits_for_tls_and_scripts_wait_for_auth() {
        let (mut s, greeting) = Session::new("mail.example.test", true, false);
        let Output::Send(g) = greeting else { panic!() };
        let g = String::from_utf8_lossy(&g).into_owned();
        assert!(
            g.contains("\"STARTTLS\"") && g.contains("\"SASL\" \"\""),
            "{g}"
        );
        assert!(
            sent(&s.feed(b"AUTHENTICATE \"PLAIN\" \"AGEAYg==\"\r\n"))
                .starts_with("NO (ENCRYPT-NEEDED)")
        );
        assert!(sent(&s.feed(b"LISTSCRIPTS\r\n")).starts_with("NO"));
        let out = s.feed(b"STARTTLS\r\n");
        assert!(out.contains(&Output::StartTls));
        let caps = sent(&s.tls_started(true));
        assert!(
            caps.contains("\"SASL\" \"PLAIN\"") && !caps.contains("STARTTLS"),
            "{caps}"
        );
        // The initial response: authzid empty, user "a", password "b".
        let out = s.feed(b"AUTHENTICATE \"PLAIN\" \"AGEAYg==\"\r\n");
        assert_eq!(
            out,
            [Output::Login {
                username: "a".into(),
                password: "b".into()
            }]
        );
        assert!(sent(&s.logged_in(Ok(()))).starts_with("OK"));
        assert_eq!(s.feed(b"LISTSCRIPTS\r\n"), [Output::Request(Request::List)]);
    }

    #[test]
    fn literals_carry_scripts_and_big_ones_are_refused_without_buffering() {
        let (mut s, _) = Session::new("h", true, true);
        s.state = State::Authenticated;
        let script = "require \"fileinto\";\r\nfileinto \"Work\";\r\n";
        let mut cmd = format!("PUTSCRIPT \"work\" {{{}+}}\r\n{script}", script.len()).into_bytes();
        cmd.extend_from_slice(b"\r\n");
        // Byte by byte, as a slow client sends it.
        let mut outputs = Vec::new();
        for b in &cmd {
            outputs.extend(s.feed(std::slice::from_ref(b)));
        }
        assert_eq!(
            outputs,
            [Output::Request(Request::Put {
                name: "work".into(),
                script: script.into()
            })]
        );
        let huge = format!("PUTSCRIPT \"x\" {{{}+}}\r\n", MAX_LITERAL + 1);
        assert!(sent(&s.feed(huge.as_bytes())).contains("QUOTA/MAXSIZE"));
        // The literal's bytes that follow are thrown away, not buffered or parsed.
        assert!(s.feed(&vec![b'x'; 100_000]).is_empty());
        assert!(s.buf.is_empty());
        assert_eq!(s.skip, MAX_LITERAL + 1 - 100_000);
        assert!(sent(&s.feed(b"CHECKSCRIPT \"keep;\"\r\n")).is_empty());
        assert!(s.feed(&vec![b'x'; s.skip]).is_empty());
        assert!(sent(&s.feed(b"\r\nCHECKSCRIPT \"kep;\"\r\n")).contains("NO"));
        assert!(sent(&s.feed(b"CHECKSCRIPT \"keep;\"\r\n")).starts_with("OK"));
    }

    #[test]
    fn the_rest_of_a_refused_line_is_never_a_command() {
        let (mut s, _) = Session::new("h", true, true);
        s.state = State::Authenticated;
        // An outside tester's smuggling: too many words, then a command in the same line,
        // sent in two pieces.
        let mut line = b"NOOP A A A A A A A A A A".to_vec();
        let out = s.feed(&line);
        assert!(sent(&out).starts_with("NO"), "{}", sent(&out));
        line = b" PUTSCRIPT \"smuggled\" {5+}\r\nkeep;\r\n".to_vec();
        let out = s.feed(&line);
        assert!(
            !out.iter().any(|o| matches!(o, Output::Request(_))),
            "{out:?}"
        );
        // The next line is a command again.
        assert_eq!(s.feed(b"LISTSCRIPTS\r\n"), [Output::Request(Request::List)]);
        // A line of spaces longer than the limit ends the session.
        let mut long = b"NOOP".to_vec();
        long.extend(std::iter::repeat_n(b' ', MAX_LINE + 10));
        long.extend_from_slice(b"X\r\n");
        let out = s.feed(&long);
        assert!(sent(&out).contains("BYE"), "{}", sent(&out));
    }

    #[test]
    fn failed_logins_end_the_session() {
        let (mut s, _) = Session::new("h", true, true);
        for _ in 0..2 {
            assert!(!s.logged_in(Err("no")).contains(&Output::Close));
        }
        assert!(s.logged_in(Err("no")).contains(&Output::Close));
        assert!(s.closed());
    }

    #[test]
    fn garbage_is_answered_and_ends_the_session_at_last() {
        let (mut s, _) = Session::new("h", true, false);
        let out = s.feed(&b"\x00\x01 \"unterminated\r\n".repeat(20));
        assert!(s.closed());
        assert!(sent(&out).contains("BYE"));
        let (mut s, _) = Session::new("h", true, false);
        let out = s.feed(&vec![b'a'; MAX_LINE + 10]);
        assert!(sent(&out).contains("BYE"));
        assert!(s.closed());
    }
}
