//! A byte-level IMAP client over TLS for tests that need exact control of what is sent
//! (transcripts, attacks); every response it hears can be checked with imap-codec's parser.
use std::time::Duration;

use tokio::{
    io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt},
    net::TcpStream,
};

use super::Dev;

pub trait Stream: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Stream for T {}

/// A byte-level IMAP client that keeps what the server said.
pub struct Client {
    pub stream: Box<dyn Stream>,
    pub pending: Vec<u8>,
    /// Every byte the server sent, for the syntax check at the end.
    pub heard: Vec<u8>,
}

pub async fn tls(stream: TcpStream) -> Box<dyn Stream> {
    let connector = mail_send::smtp::tls::build_tls_connector(true).expect("connector");
    let name = rustls::pki_types::ServerName::try_from("127.0.0.1").expect("name");
    Box::new(
        connector
            .connect(name, stream)
            .await
            .expect("TLS handshake"),
    )
}

impl Client {
    /// Connects to one of dev mode's implicit-TLS ports (`imaps`, `pop3s`, `submissions`); the
    /// line reading works for any line protocol.
    pub async fn connect_tls(dev: &Dev, protocol: &str) -> Client {
        let tcp = TcpStream::connect(("127.0.0.1", dev.port(protocol)))
            .await
            .expect("connect");
        Client {
            stream: tls(tcp).await,
            pending: Vec::new(),
            heard: Vec::new(),
        }
    }

    /// Connects to implicit TLS (993) and reads the greeting.
    pub async fn connect(dev: &Dev) -> Client {
        let mut client = Client::connect_tls(dev, "imaps").await;
        let greeting = client.line().await;
        assert!(greeting.starts_with("* OK [CAPABILITY "), "{greeting}");
        client
    }

    pub async fn login(dev: &Dev, user: &str) -> Client {
        let mut c = Client::connect(dev).await;
        let reply = c
            .command("L", &format!("LOGIN {user} {}", dev.password(user)))
            .await;
        assert!(reply.contains("L OK [CAPABILITY"), "{reply}");
        c
    }

    pub async fn send(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).await.expect("write");
        self.stream.flush().await.expect("flush");
    }

    pub async fn fill(&mut self) {
        let mut buf = [0u8; 8192];
        let n = tokio::time::timeout(Duration::from_secs(10), self.stream.read(&mut buf))
            .await
            .expect("the server answers within 10 s")
            .expect("read");
        assert!(n > 0, "connection closed; heard so far:\n{}", self.text());
        self.pending.extend_from_slice(&buf[..n]);
        self.heard.extend_from_slice(&buf[..n]);
    }

    /// One line (without literals), CRLF removed.
    pub async fn line(&mut self) -> String {
        loop {
            if let Some(end) = self.pending.windows(2).position(|w| w == b"\r\n") {
                let line: Vec<u8> = self.pending.drain(..end + 2).collect();
                return String::from_utf8_lossy(&line[..end]).into_owned();
            }
            self.fill().await;
        }
    }

    /// Everything up to and including the tagged response of `tag`; literals are kept inline.
    pub async fn until_tagged(&mut self, tag: &str) -> String {
        loop {
            if let Some(out) = mail_runtime::imap::write::take_tagged(&mut self.pending, tag) {
                return out;
            }
            self.fill().await;
        }
    }

    pub async fn command(&mut self, tag: &str, command: &str) -> String {
        self.send(format!("{tag} {command}\r\n").as_bytes()).await;
        self.until_tagged(tag).await
    }

    /// Writes bytes and says whether the server still took them.
    pub async fn stream_write(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.stream.write_all(bytes).await?;
        self.stream.flush().await
    }

    /// A command whose last argument is `literal`, sent as LITERAL+.
    pub async fn command_with_literal(
        &mut self,
        tag: &str,
        command: &str,
        literal: &[u8],
    ) -> String {
        let mut bytes = format!("{tag} {command} {{{}+}}\r\n", literal.len()).into_bytes();
        bytes.extend_from_slice(literal);
        bytes.extend_from_slice(b"\r\n");
        self.send(&bytes).await;
        self.until_tagged(tag).await
    }

    /// Sends a command and reads until its tagged answer, a BYE, or the end of the connection
    /// (an empty answer: closed or reset without a word).
    pub async fn command_or_bye(&mut self, tag: &str, command: &str) -> String {
        let _ = self
            .stream_write(format!("{tag} {command}\r\n").as_bytes())
            .await;
        let mut out = String::new();
        let mut buf = [0u8; 8192];
        loop {
            if let Some(end) = self.pending.windows(2).position(|w| w == b"\r\n") {
                let line: Vec<u8> = self.pending.drain(..end + 2).collect();
                let line = String::from_utf8_lossy(&line).into_owned();
                out.push_str(&line);
                if line.starts_with("* BYE") || line.starts_with(&format!("{tag} ")) {
                    return out;
                }
                continue;
            }
            match tokio::time::timeout(Duration::from_secs(10), self.stream.read(&mut buf)).await {
                Ok(Ok(n)) if n > 0 => self.pending.extend_from_slice(&buf[..n]),
                Ok(_) => return out,
                Err(_) => {
                    out.push_str("<no answer within 10 s>");
                    return out;
                }
            }
        }
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.heard).into_owned()
    }

    /// Every response heard parses as IMAP (see `check_responses`).
    pub fn assert_well_formed(&self) {
        if let Err(err) = mail_runtime::imap::write::check_responses(&self.heard) {
            panic!("{err}");
        }
    }
}
