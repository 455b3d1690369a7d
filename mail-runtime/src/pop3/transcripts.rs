//! POP3 transcript tests: `C:` lines in, `S:` prefixes of the lines out. The driver is played
//! by the test: logins succeed for `alice`/`pw`, the maildrop holds three messages, RETR
//! sends a marker, QUIT reports what was deleted.
use super::*;

struct Harness {
    session: Session,
    out: Vec<String>,
    committed: Option<Vec<u32>>,
}

fn message(uid: u32, size: u64) -> MessageMeta {
    MessageMeta {
        uid,
        size,
        flags: String::new(),
        internal_date: 0,
        file_name: format!("m{uid}"),
        modseq: 1,
        in_new: false,
    }
}

impl Harness {
    fn new(tls: bool) -> Self {
        let (session, greeting) = Session::new("mail.example.test", tls, true, false);
        let mut h = Self {
            session,
            out: Vec::new(),
            committed: None,
        };
        h.drive(vec![greeting]);
        h
    }

    fn drive(&mut self, outputs: Vec<Output>) {
        let mut queue: std::collections::VecDeque<Output> = outputs.into();
        while let Some(output) = queue.pop_front() {
            match output {
                Output::Send(bytes) => {
                    let text = String::from_utf8(bytes).expect("utf8");
                    self.out
                        .extend(text.split_terminator("\r\n").map(String::from));
                }
                Output::StartTls => queue.extend(self.session.tls_started(true)),
                Output::Login { username, password } => {
                    let result = if username == "alice" && password == "pw" {
                        Ok((7, vec![message(1, 100), message(2, 200), message(5, 50)]))
                    } else if username == "busy" {
                        Err(OpenFailure::InUse)
                    } else {
                        Err(OpenFailure::Invalid)
                    };
                    queue.extend(self.session.opened(result));
                }
                Output::Retrieve { message, top } => {
                    self.out.push(format!("<retrieve {} {top:?}>", message.uid));
                }
                Output::Commit(doomed) => {
                    self.committed = Some(doomed.iter().map(|m| m.uid).collect());
                    queue.extend(self.session.committed(Ok(doomed.len())));
                }
                Output::Close => self.out.push("<close>".into()),
            }
        }
    }

    fn run(&mut self, transcript: &str) {
        let mut log = Vec::new();
        for line in transcript.lines().map(str::trim).filter(|l| !l.is_empty()) {
            if let Some(c) = line.strip_prefix("C: ") {
                log.push(line.to_string());
                let outputs = self.session.feed(format!("{c}\r\n").as_bytes());
                self.drive(outputs);
            } else if let Some(expected) = line.strip_prefix("S: ") {
                let got = if self.out.is_empty() {
                    None
                } else {
                    Some(self.out.remove(0))
                };
                log.push(format!("S: {}", got.as_deref().unwrap_or("<nothing>")));
                assert!(
                    got.as_deref().is_some_and(|g| g.starts_with(expected)),
                    "expected {expected:?}\n{}",
                    log.join("\n")
                );
            }
        }
        assert!(
            self.out.is_empty(),
            "unexpected {:?}\n{}",
            self.out,
            log.join("\n")
        );
    }
}

#[test]
fn login_waits_for_stls_and_capa_says_so() {
    let mut h = Harness::new(false);
    h.run(
        "S: +OK mail.example.test POP3 kubemail ready
         C: CAPA
         S: +OK capability list follows
         S: TOP
         S: UIDL
         S: RESP-CODES
         S: AUTH-RESP-CODE
         S: PIPELINING
         S: STLS
         S: IMPLEMENTATION kubemail
         S: .
         C: USER alice
         S: -ERR [AUTH] plaintext login is disabled
         C: AUTH PLAIN AGFsaWNlAHB3
         S: -ERR [AUTH] authentication is disabled
         C: STAT
         S: -ERR unknown command or not allowed before login
         C: STLS
         S: +OK begin TLS negotiation
         C: CAPA
         S: +OK
         S: TOP
         S: UIDL
         S: RESP-CODES
         S: AUTH-RESP-CODE
         S: PIPELINING
         S: USER
         S: SASL PLAIN
         S: IMPLEMENTATION
         S: .
         C: USER alice
         S: +OK send PASS
         C: PASS wrong
         S: -ERR [AUTH] invalid credentials
         C: USER busy
         S: +OK
         C: PASS x
         S: -ERR [IN-USE]
         C: AUTH PLAIN AGFsaWNlAHB3
         S: +OK maildrop has 3 messages (350 octets)",
    );
}

#[test]
fn transaction_commands_and_deletion_only_at_quit() {
    let mut h = Harness::new(true);
    h.run(
        "S: +OK
         C: AUTH PLAIN
         S: +
         C: AGFsaWNlAHB3
         S: +OK maildrop has 3 messages
         C: STAT
         S: +OK 3 350
         C: LIST
         S: +OK 3 messages
         S: 1 100
         S: 2 200
         S: 3 50
         S: .
         C: UIDL 3
         S: +OK 3 7.5
         C: RETR 2
         S: <retrieve 2 None>
         C: TOP 1 0
         S: <retrieve 1 Some(0)>
         C: DELE 2
         S: +OK message 2 deleted
         C: RETR 2
         S: -ERR message already deleted
         C: STAT
         S: +OK 2 150
         C: RSET
         S: +OK maildrop has 3 messages
         C: DELE 1
         S: +OK
         C: DELE 9
         S: -ERR no such message
         C: LIST 1
         S: -ERR message already deleted
         C: UIDL
         S: +OK 2 messages
         S: 2 7.2
         S: 3 7.5
         S: .
         C: QUIT
         S: +OK mail.example.test POP3 server signing off (1 messages deleted)
         S: <close>",
    );
    assert_eq!(h.committed, Some(vec![1]));
}

#[test]
fn messages_are_dot_stuffed_and_top_stops_after_n_body_lines() {
    let message = b"Subject: x\r\n.hidden: y\r\n\r\nline1\r\n.line2\r\nline3\r\n";
    let full = String::from_utf8(Session::format_message(message, None)).expect("utf8");
    assert_eq!(
        full,
        format!(
            "+OK {} octets\r\nSubject: x\r\n..hidden: y\r\n\r\nline1\r\n..line2\r\nline3\r\n.\r\n",
            message.len()
        )
    );
    let top = String::from_utf8(Session::format_message(message, Some(1))).expect("utf8");
    assert!(top.ends_with("\r\n\r\nline1\r\n.\r\n"), "{top}");
}

#[test]
fn commands_pipelined_behind_stls_are_discarded() {
    // A man in the middle appends a login to the client's STLS; after the handshake none of
    // it may run (RFC 2595 section 4).
    let mut h = Harness::new(false);
    h.out.clear();
    let outputs = h
        .session
        .feed(b"STLS\r\nUSER alice\r\nPASS pw\r\nSTAT\r\nDELE 1\r\nQUIT\r\n");
    h.drive(outputs);
    assert_eq!(h.out, ["+OK begin TLS negotiation"]);
    assert!(h.committed.is_none(), "nothing was deleted");
    h.out.clear();
    h.run(
        "C: STAT
         S: -ERR unknown command or not allowed before login",
    );
}
