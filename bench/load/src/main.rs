//! The benchmark's load client, run by bench/run.py for the timed IMAP, POP3 and SMTP sessions.
//!
//! Python's imaplib and poplib took more of a core than the servers they measured (58-84% of the
//! time of a `FETCH 1:*`), so the figures were partly the client's. This client reads only the
//! protocols' framing (lines, IMAP literals, POP3's terminating dot) and counts what the
//! benchmark checks; SMTP goes through mail-send, message by message, as a submitting client
//! does. Each run prints one JSON line. The benchmark's servers use self-signed certificates,
//! so certificates are not checked.

use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand};
use serde_json::json;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

#[derive(Debug, Parser)]
#[command(about = "Times IMAP, POP3 and SMTP sessions against a server on 127.0.0.1")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// IMAP over implicit TLS: logs in, runs the --setup commands one by one, then sends the
    /// --timed commands together and reads to the last one's tagged OK. Prints the seconds, the
    /// untagged FETCH responses, the numbers in SEARCH answers and the literal bytes read.
    Imap {
        #[command(flatten)]
        login: Login,
        /// Commands (without a tag) answered before the clock starts.
        #[arg(long)]
        setup: Vec<String>,
        /// Commands (without a tag) the clock runs over.
        #[arg(long, required = true)]
        timed: Vec<String>,
        /// Starts the clock before connecting: TLS, the login and --setup are timed too.
        #[arg(long)]
        from_connect: bool,
    },
    /// POP3 over implicit TLS. Without --retr: login, STAT and UIDL timed from connecting.
    /// With --retr N: RETR of messages 1 to N, one after another, timed after the login, then
    /// RSET (nothing deleted).
    Pop3 {
        #[command(flatten)]
        login: Login,
        #[arg(long)]
        retr: Option<u32>,
    },
    /// SMTP without TLS through mail-send: one session sends the message in --message
    /// --messages times and prints the p50 and p99 of the time each took to be accepted.
    SmtpLatency {
        #[arg(long)]
        port: u16,
        #[arg(long)]
        from: String,
        #[arg(long)]
        to: String,
        #[arg(long)]
        message: std::path::PathBuf,
        #[arg(long, default_value_t = 500)]
        messages: usize,
    },
}

#[derive(Debug, clap::Args)]
struct Login {
    #[arg(long)]
    port: u16,
    #[arg(long)]
    user: String,
    #[arg(long)]
    password: String,
}

type Tls = BufReader<tokio_rustls::client::TlsStream<TcpStream>>;

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<()> {
    let out = match Cli::parse().command {
        Command::Imap {
            login,
            setup,
            timed,
            from_connect,
        } => imap(&login, &setup, &timed, from_connect).await?,
        Command::Pop3 { login, retr } => pop3(&login, retr).await?,
        Command::SmtpLatency {
            port,
            from,
            to,
            message,
            messages,
        } => smtp_latency(port, &from, &to, &std::fs::read(message)?, messages).await?,
    };
    println!("{out}");
    Ok(())
}

async fn connect(port: u16) -> Result<Tls> {
    let connector = mail_send::smtp::tls::build_tls_connector(true).map_err(anyhow::Error::msg)?;
    let tcp = TcpStream::connect(("127.0.0.1", port))
        .await
        .with_context(|| format!("connecting to port {port}"))?;
    tcp.set_nodelay(true)?;
    let name = tokio_rustls::rustls::pki_types::ServerName::try_from("localhost")?;
    Ok(BufReader::with_capacity(
        64 * 1024,
        connector.connect(name, tcp).await?,
    ))
}

/// Connects over TLS and reads the greeting, which must start with `ok`.
async fn greeted(port: u16, ok: &[u8]) -> Result<Tls> {
    let mut stream = connect(port).await?;
    let mut buf = Vec::new();
    line(&mut stream, &mut buf).await?;
    if !buf.starts_with(ok) {
        bail!("greeting: {}", String::from_utf8_lossy(&buf).trim_end());
    }
    Ok(stream)
}

/// One line, CRLF included; a closed connection is an error.
async fn line(stream: &mut Tls, buf: &mut Vec<u8>) -> Result<()> {
    buf.clear();
    if stream.read_until(b'\n', buf).await? == 0 {
        bail!("the server closed the connection");
    }
    Ok(())
}

/// What the untagged answers of an IMAP exchange held.
#[derive(Debug, Default)]
struct Seen {
    fetch: u64,
    search: u64,
    literal_bytes: u64,
}

/// The size of the literal a line announces at its end (`{N}` or `{N+}` before CRLF).
fn literal(line: &[u8]) -> Option<u64> {
    let line = line.strip_suffix(b"\r\n")?.strip_suffix(b"}")?;
    let line = line.strip_suffix(b"+").unwrap_or(line);
    let open = line.iter().rposition(|&b| b == b'{')?;
    std::str::from_utf8(&line[open + 1..]).ok()?.parse().ok()
}

/// Reads responses up to the one tagged `tag`, which must be OK; counts what `seen` records.
async fn imap_until(stream: &mut Tls, tag: &str, seen: &mut Seen) -> Result<()> {
    let mut buf = Vec::with_capacity(4096);
    loop {
        line(stream, &mut buf).await?;
        if buf.starts_with(b"* ") {
            let rest = &buf[2..];
            let digits = rest.iter().take_while(|b| b.is_ascii_digit()).count();
            if digits > 0 && rest[digits..].starts_with(b" FETCH ") {
                seen.fetch += 1;
            } else if let Some(numbers) = rest.strip_prefix(b"SEARCH") {
                seen.search += numbers
                    .split(|&b| b == b' ')
                    .filter(|w| w.first().is_some_and(u8::is_ascii_digit))
                    .count() as u64;
            }
        } else if buf.starts_with(tag.as_bytes()) && buf.get(tag.len()) == Some(&b' ') {
            if !buf[tag.len() + 1..].starts_with(b"OK") {
                bail!("{}", String::from_utf8_lossy(&buf).trim_end());
            }
            return Ok(());
        }
        // A literal, then the rest of its response on the lines after it.
        while let Some(n) = literal(&buf) {
            let mut left = n;
            while left > 0 {
                let chunk = stream.fill_buf().await?;
                if chunk.is_empty() {
                    bail!("the server closed the connection inside a literal");
                }
                let take = chunk.len().min(left as usize);
                stream.consume(take);
                left -= take as u64;
            }
            seen.literal_bytes += n;
            line(stream, &mut buf).await?;
        }
    }
}

async fn imap(
    login: &Login,
    setup: &[String],
    timed: &[String],
    from_connect: bool,
) -> Result<String> {
    let start = Instant::now();
    let mut stream = greeted(login.port, b"* OK").await?;
    let mut seen = Seen::default();
    let login_command = format!("l LOGIN \"{}\" \"{}\"\r\n", login.user, login.password);
    stream.get_mut().write_all(login_command.as_bytes()).await?;
    imap_until(&mut stream, "l", &mut seen)
        .await
        .context("LOGIN")?;
    for (i, command) in setup.iter().enumerate() {
        let tag = format!("s{i}");
        stream
            .get_mut()
            .write_all(format!("{tag} {command}\r\n").as_bytes())
            .await?;
        imap_until(&mut stream, &tag, &mut seen)
            .await
            .with_context(|| command.clone())?;
    }
    let mut seen = Seen::default();
    let clock = if from_connect { start } else { Instant::now() };
    let batch: String = timed
        .iter()
        .enumerate()
        .map(|(i, command)| format!("t{i} {command}\r\n"))
        .collect();
    stream.get_mut().write_all(batch.as_bytes()).await?;
    for (i, command) in timed.iter().enumerate() {
        imap_until(&mut stream, &format!("t{i}"), &mut seen)
            .await
            .with_context(|| command.clone())?;
    }
    let seconds = clock.elapsed().as_secs_f64();
    stream.get_mut().write_all(b"z LOGOUT\r\n").await?;
    let _ = imap_until(&mut stream, "z", &mut Seen::default()).await;
    Ok(
        json!({"seconds": seconds, "fetch": seen.fetch, "search": seen.search,
              "literal_bytes": seen.literal_bytes})
        .to_string(),
    )
}

/// Sends a POP3 command and reads its `+OK` line; with `multi`, also the lines up to the
/// terminating dot, whose count it returns.
async fn pop3_command(stream: &mut Tls, command: &str, multi: bool) -> Result<u64> {
    stream
        .get_mut()
        .write_all(format!("{command}\r\n").as_bytes())
        .await?;
    let mut buf = Vec::with_capacity(4096);
    line(stream, &mut buf).await?;
    if !buf.starts_with(b"+OK") {
        let shown = command.split(' ').next().unwrap_or(command);
        bail!("{shown}: {}", String::from_utf8_lossy(&buf).trim_end());
    }
    let mut lines = 0;
    if multi {
        loop {
            line(stream, &mut buf).await?;
            if buf == b".\r\n" {
                break;
            }
            lines += 1;
        }
    }
    Ok(lines)
}

async fn pop3(login: &Login, retr: Option<u32>) -> Result<String> {
    let start = Instant::now();
    let mut stream = greeted(login.port, b"+OK").await?;
    pop3_command(&mut stream, &format!("USER {}", login.user), false).await?;
    pop3_command(&mut stream, &format!("PASS {}", login.password), false).await?;
    let out = match retr {
        None => {
            pop3_command(&mut stream, "STAT", false).await?;
            let messages = pop3_command(&mut stream, "UIDL", true).await?;
            json!({"seconds": start.elapsed().as_secs_f64(), "messages": messages})
        }
        Some(n) => {
            let clock = Instant::now();
            for i in 1..=n {
                pop3_command(&mut stream, &format!("RETR {i}"), true).await?;
            }
            let seconds = clock.elapsed().as_secs_f64();
            pop3_command(&mut stream, "RSET", false).await?;
            json!({"seconds": seconds, "messages": n})
        }
    };
    pop3_command(&mut stream, "QUIT", false).await?;
    // The remaining bytes (TLS close) are not waited for.
    let _ = stream.read(&mut [0u8; 64]).await;
    Ok(out.to_string())
}

async fn smtp_latency(
    port: u16,
    from: &str,
    to: &str,
    body: &[u8],
    messages: usize,
) -> Result<String> {
    let stream = TcpStream::connect(("127.0.0.1", port)).await?;
    stream.set_nodelay(true)?;
    let mut client = mail_send::SmtpClient {
        stream,
        timeout: Duration::from_secs(60),
    };
    let greeting = client.read().await?;
    if greeting.code() != 220 {
        bail!("greeting: {} {}", greeting.code(), greeting.message());
    }
    client.ehlo("bench.example.net").await?;
    let mut took = Vec::with_capacity(messages);
    for _ in 0..messages {
        let t = Instant::now();
        let message = mail_send::smtp::message::Message::new(from, [to], body);
        let reply = client.send(message).await?;
        if reply.code() != 250 {
            bail!("DATA answered {} {}", reply.code(), reply.message());
        }
        took.push(t.elapsed().as_secs_f64() * 1000.0);
    }
    let _ = client.quit().await;
    took.sort_by(f64::total_cmp);
    let at = |q: f64| took[((took.len() as f64 * q) as usize).min(took.len() - 1)];
    Ok(json!({"p50_ms": at(0.5), "p99_ms": at(0.99), "messages": messages}).to_string())
}
