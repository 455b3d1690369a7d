//! Health checks that speak each protocol, as a client would: SMTP with `mail-send`, IMAP with
//! `async-imap`, POP3 with a small client of its own. The pod's exec probes and the operator
//! both run them (`mail-runtime probe smtp|imap|pop3 HOST:PORT`), and they work against any
//! server (tested against Postfix and Dovecot too), not only this one.
//!
//! A probe passes when the greeting is positive and, unless the port is implicit TLS, STARTTLS
//! (STLS) is advertised and negotiated. Deep mode also logs in.
mod relay;
mod round_trip;

use std::time::{Duration, Instant};

use futures::StreamExt;
use serde::Serialize;
use tokio::{
    io::{AsyncBufReadExt, AsyncRead, AsyncWrite, AsyncWriteExt, BufReader},
    net::TcpStream,
};
use tokio_rustls::TlsConnector;

pub use relay::{RelayVerdict, relay_attempt};
pub use round_trip::{RoundTrip, round_trip};

/// The protocol to probe.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    /// SMTP (25, 587) or SMTPS (465).
    Smtp,
    /// IMAP (143) or IMAPS (993).
    Imap,
    /// POP3 (110) or POP3S (995).
    Pop3,
    /// ManageSieve (4190).
    Managesieve,
    /// HTTPS (443): the MTA-STS policy is served.
    Https,
}

impl std::str::FromStr for Kind {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "smtp" => Ok(Kind::Smtp),
            "imap" => Ok(Kind::Imap),
            "pop3" => Ok(Kind::Pop3),
            "managesieve" => Ok(Kind::Managesieve),
            "https" => Ok(Kind::Https),
            other => Err(format!(
                "unknown protocol {other:?}: use smtp, imap, pop3, managesieve or https"
            )),
        }
    }
}

/// How to probe.
#[derive(Debug, Clone)]
pub struct Options {
    /// TLS from the first byte (465, 993, 995) instead of STARTTLS.
    pub implicit_tls: bool,
    /// Give up after this long.
    pub timeout: Duration,
    /// Verify the certificate chain and name (off by default: the probe checks that TLS works,
    /// and pods often serve a certificate for their public name only).
    pub verify_tls: bool,
    /// The TLS server name; defaults to the host.
    pub tls_name: Option<String>,
    /// Deep mode: log in with these credentials.
    pub login: Option<(String, String)>,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            implicit_tls: false,
            timeout: Duration::from_secs(5),
            verify_tls: false,
            tls_name: None,
            login: None,
        }
    }
}

/// What a probe found; printed as one line of JSON.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct Report {
    /// The protocol.
    pub protocol: Kind,
    /// `HOST:PORT`.
    pub address: String,
    /// Whether every check passed.
    pub ok: bool,
    /// Time taken, milliseconds.
    pub latency_ms: u64,
    /// The server's greeting line.
    pub greeting: Option<String>,
    /// Capabilities seen (after TLS when TLS was negotiated).
    pub capabilities: Vec<String>,
    /// Whether TLS was negotiated (STARTTLS/STLS, or implicit).
    pub tls: bool,
    /// Deep mode: whether the login worked.
    pub logged_in: Option<bool>,
    /// What failed, in words.
    pub error: Option<String>,
}

#[derive(Default)]
struct Found {
    greeting: Option<String>,
    capabilities: Vec<String>,
    tls: bool,
    logged_in: Option<bool>,
}

/// Runs one probe.
pub async fn probe(kind: Kind, address: &str, options: &Options) -> Report {
    let start = Instant::now();
    let mut found = Found::default();
    // Credentials with a line break (or NUL) would end the command they are sent in and start
    // another one of the caller's choosing: refused before anything is sent.
    let unsafe_login = options.login.as_ref().is_some_and(|(user, password)| {
        [user, password]
            .iter()
            .any(|v| v.contains(['\r', '\n', '\0']))
    });
    let checked = if unsafe_login {
        Err("the login contains a line break or NUL; refused before connecting".to_string())
    } else {
        Ok(())
    };
    // Name resolution happens first and on its own clock: how long a resolver takes to say
    // "no such name" varies, and the probe's verdict must not vary with it.
    if let Err(error) = match checked {
        Ok(()) => resolve(address).await,
        Err(e) => Err(e),
    } {
        return Report {
            protocol: kind,
            address: address.to_string(),
            ok: false,
            latency_ms: start.elapsed().as_millis() as u64,
            greeting: None,
            capabilities: Vec::new(),
            tls: false,
            logged_in: None,
            error: Some(error),
        };
    }
    let result = tokio::time::timeout(options.timeout, async {
        match kind {
            Kind::Smtp => smtp(address, options, &mut found).await,
            Kind::Imap => imap(address, options, &mut found).await,
            Kind::Pop3 => pop3(address, options, &mut found).await,
            Kind::Managesieve => managesieve(address, options, &mut found).await,
            Kind::Https => https(address, options, &mut found).await,
        }
    })
    .await
    .unwrap_or_else(|_| Err(format!("no complete answer within {:?}", options.timeout)));
    let error = result.err();
    Report {
        protocol: kind,
        address: address.to_string(),
        ok: error.is_none(),
        latency_ms: start.elapsed().as_millis() as u64,
        greeting: found.greeting,
        capabilities: found.capabilities,
        tls: found.tls,
        logged_in: found.logged_in,
        error,
    }
}

fn host_of(address: &str) -> &str {
    let host = address.rsplit_once(':').map_or(address, |(h, _)| h);
    host.trim_start_matches('[').trim_end_matches(']')
}

fn connector(options: &Options) -> Result<TlsConnector, String> {
    mail_send::smtp::tls::build_tls_connector(!options.verify_tls)
}

fn tls_name(
    address: &str,
    options: &Options,
) -> Result<rustls::pki_types::ServerName<'static>, String> {
    let name = options
        .tls_name
        .clone()
        .unwrap_or_else(|| host_of(address).to_string());
    rustls::pki_types::ServerName::try_from(name).map_err(|e| format!("invalid TLS name: {e}"))
}

/// Resolves an address. A name that does not resolve gives the same error every time,
/// whether the resolver says no or says nothing: a status built from it stays stable.
async fn resolve(address: &str) -> Result<Vec<std::net::SocketAddr>, String> {
    let lookup = tokio::net::lookup_host(address);
    let addrs: Vec<std::net::SocketAddr> =
        match tokio::time::timeout(Duration::from_secs(5), lookup).await {
            Ok(Ok(addrs)) => addrs.collect(),
            Ok(Err(_)) | Err(_) => Vec::new(),
        };
    if addrs.is_empty() {
        return Err(format!("cannot resolve {}", host_of(address)));
    }
    Ok(addrs)
}

/// Resolves and connects.
async fn connect(address: &str) -> Result<TcpStream, String> {
    let addrs = resolve(address).await?;
    let mut last = None;
    for addr in addrs {
        match TcpStream::connect(addr).await {
            Ok(stream) => return Ok(stream),
            Err(e) => last = Some(e),
        }
    }
    Err(format!(
        "cannot connect to {address}: {}",
        last.map(|e| e.to_string()).unwrap_or_default()
    ))
}

/// The TLS stream every probe and the round trip speak over.
type Tls = tokio_rustls::client::TlsStream<TcpStream>;

async fn smtp(address: &str, options: &Options, found: &mut Found) -> Result<(), String> {
    let (mut client, ehlo) = smtp_session(address, options, found).await?;
    if let Some((user, password)) = &options.login {
        let credentials = mail_send::Credentials::new(user.as_str(), password.as_str());
        let result = client.authenticate(&credentials, &ehlo).await;
        found.logged_in = Some(result.is_ok());
        result.map_err(|e| format!("login failed: {e}"))?;
    }
    let _ = client.quit().await;
    Ok(())
}

/// Connects to an SMTP server over TLS (implicit, or STARTTLS, which must be advertised),
/// checking the greeting, and says EHLO after TLS; `found` records what was seen.
async fn smtp_session(
    address: &str,
    options: &Options,
    found: &mut Found,
) -> Result<(mail_send::SmtpClient<Tls>, smtp_proto::EhloResponse<String>), String> {
    use mail_send::SmtpClient;
    use smtp_proto::{EXT_START_TLS, EhloResponse};

    fn names(ehlo: &EhloResponse<String>) -> Vec<String> {
        use smtp_proto::*;
        [
            (EXT_PIPELINING, "PIPELINING"),
            (EXT_SIZE, "SIZE"),
            (EXT_8BIT_MIME, "8BITMIME"),
            (EXT_ENHANCED_STATUS_CODES, "ENHANCEDSTATUSCODES"),
            (EXT_SMTP_UTF8, "SMTPUTF8"),
            (EXT_CHUNKING, "CHUNKING"),
            (EXT_DSN, "DSN"),
            (EXT_START_TLS, "STARTTLS"),
            (EXT_AUTH, "AUTH"),
            (EXT_REQUIRE_TLS, "REQUIRETLS"),
        ]
        .iter()
        .filter(|(bit, _)| ehlo.has_capability(*bit))
        .map(|(_, name)| name.to_string())
        .collect()
    }
    let timeout = options.timeout;
    let connector = connector(options)?;
    let name = options
        .tls_name
        .clone()
        .unwrap_or_else(|| host_of(address).to_string());
    let stream = connect(address).await?;
    let client = SmtpClient { stream, timeout };
    let mut client = if options.implicit_tls {
        let c = client
            .into_tls(&connector, &name)
            .await
            .map_err(|e| format!("TLS handshake failed: {e}"))?;
        found.tls = true;
        c
    } else {
        let mut client = client;
        smtp_greeting(&mut client, found).await?;
        let ehlo = client
            .ehlo("kubemail-probe")
            .await
            .map_err(|e| format!("EHLO failed: {e}"))?;
        found.capabilities = names(&ehlo);
        if !ehlo.has_capability(EXT_START_TLS) {
            return Err("STARTTLS is not advertised".into());
        }
        let c = client
            .start_tls(&connector, &name)
            .await
            .map_err(|e| format!("STARTTLS failed: {e}"))?;
        found.tls = true;
        c
    };
    if options.implicit_tls {
        smtp_greeting(&mut client, found).await?;
    }
    let ehlo = client
        .ehlo("kubemail-probe")
        .await
        .map_err(|e| format!("EHLO after TLS failed: {e}"))?;
    found.capabilities = names(&ehlo);
    Ok((client, ehlo))
}

/// Reads the SMTP greeting, which must be 220.
async fn smtp_greeting<T: AsyncRead + AsyncWrite + Unpin>(
    client: &mut mail_send::SmtpClient<T>,
    found: &mut Found,
) -> Result<(), String> {
    let greeting = client
        .read()
        .await
        .map_err(|e| format!("no SMTP greeting: {e}"))?;
    found.greeting = Some(format!("{} {}", greeting.code(), greeting.message()));
    if greeting.code() != 220 {
        return Err(format!("greeting is {} instead of 220", greeting.code()));
    }
    Ok(())
}

async fn imap(address: &str, options: &Options, found: &mut Found) -> Result<(), String> {
    let client = imap_session(address, options, found).await?;
    imap_login(client, options, found).await
}

/// Connects to an IMAP server over TLS (implicit, or STARTTLS, which must be advertised),
/// checking the greeting and reading the capabilities after TLS; `found` records what was seen.
async fn imap_session(
    address: &str,
    options: &Options,
    found: &mut Found,
) -> Result<async_imap::Client<Tls>, String> {
    let connector = connector(options)?;
    let name = tls_name(address, options)?;
    let stream = connect(address).await?;
    if options.implicit_tls {
        let tls = connector
            .connect(name, stream)
            .await
            .map_err(|e| format!("TLS handshake failed: {e}"))?;
        found.tls = true;
        let mut client = async_imap::Client::new(tls);
        imap_greeting(&mut client, found).await?;
        found.capabilities = imap_capabilities(&mut client).await?;
        return Ok(client);
    }
    let mut client = async_imap::Client::new(stream);
    imap_greeting(&mut client, found).await?;
    found.capabilities = imap_capabilities(&mut client).await?;
    if !found
        .capabilities
        .iter()
        .any(|c| c.eq_ignore_ascii_case("STARTTLS"))
    {
        return Err("STARTTLS is not advertised".into());
    }
    client
        .run_command_and_check_ok("STARTTLS", None)
        .await
        .map_err(|e| format!("STARTTLS failed: {e}"))?;
    let tls = connector
        .connect(name, client.into_inner())
        .await
        .map_err(|e| format!("TLS handshake failed: {e}"))?;
    found.tls = true;
    let mut client = async_imap::Client::new(tls);
    found.capabilities = imap_capabilities(&mut client).await?;
    Ok(client)
}

async fn imap_greeting<T>(
    client: &mut async_imap::Client<T>,
    found: &mut Found,
) -> Result<(), String>
where
    T: AsyncRead + AsyncWrite + Unpin + std::fmt::Debug + Send,
{
    use async_imap::imap_proto::{Response, Status};
    let greeting = client
        .read_response()
        .await
        .map_err(|e| {
            // The parser's error ends with the text it could not read: show that, not bytes.
            let text = e.to_string();
            let seen = text
                .rsplit_once("during parsing of ")
                .map_or(text.as_str(), |(_, s)| s);
            format!("not an IMAP greeting: {seen}")
        })?
        .ok_or("the server closed the connection before greeting")?;
    match greeting.parsed() {
        Response::Data { status, .. } => {
            found.greeting = Some(format!("* {status:?}"));
            if !matches!(status, Status::Ok | Status::PreAuth) {
                return Err(format!("greeting is {status:?} instead of OK"));
            }
            Ok(())
        }
        other => Err(format!("not an IMAP greeting: {other:?}")),
    }
}

async fn imap_capabilities<T>(client: &mut async_imap::Client<T>) -> Result<Vec<String>, String>
where
    T: AsyncRead + AsyncWrite + Unpin + std::fmt::Debug + Send,
{
    use async_imap::{
        imap_proto::{Capability, Response},
        types::UnsolicitedResponse,
    };
    // The untagged CAPABILITY answer arrives on the unsolicited channel.
    let (tx, rx) = async_channel::unbounded();
    client
        .run_command_and_check_ok("CAPABILITY", Some(tx))
        .await
        .map_err(|e| format!("CAPABILITY failed: {e}"))?;
    let mut caps = Vec::new();
    while let Ok(UnsolicitedResponse::Other(data)) = rx.try_recv() {
        if let Response::Capabilities(list) = data.parsed() {
            caps = list
                .iter()
                .map(|c| match c {
                    Capability::Imap4rev1 => "IMAP4rev1".to_string(),
                    Capability::Auth(m) => format!("AUTH={m}"),
                    Capability::Atom(a) => a.to_string(),
                })
                .collect();
        }
    }
    if caps.is_empty() {
        return Err("CAPABILITY listed nothing".into());
    }
    Ok(caps)
}

async fn imap_login<T>(
    client: async_imap::Client<T>,
    options: &Options,
    found: &mut Found,
) -> Result<(), String>
where
    T: AsyncRead + AsyncWrite + Unpin + std::fmt::Debug + Send,
{
    let Some((user, password)) = &options.login else {
        return Ok(());
    };
    match client.login(user, password).await {
        Ok(mut session) => {
            found.logged_in = Some(true);
            let _ = session.logout().await;
            Ok(())
        }
        Err((e, _)) => {
            found.logged_in = Some(false);
            Err(format!("login failed: {e}"))
        }
    }
}

async fn pop3(address: &str, options: &Options, found: &mut Found) -> Result<(), String> {
    let connector = connector(options)?;
    let name = tls_name(address, options)?;
    let stream = connect(address).await?;
    if options.implicit_tls {
        let tls = connector
            .connect(name, stream)
            .await
            .map_err(|e| format!("TLS handshake failed: {e}"))?;
        found.tls = true;
        let mut conn = BufReader::new(tls);
        pop3_greeting(&mut conn, found).await?;
        found.capabilities = pop3_capa(&mut conn).await?;
        return pop3_login(&mut conn, options, found).await;
    }
    let mut conn = BufReader::new(stream);
    pop3_greeting(&mut conn, found).await?;
    found.capabilities = pop3_capa(&mut conn).await?;
    advertised(found, "STLS")?;
    pop3_command(&mut conn, "STLS").await?;
    let mut conn = upgrade(&connector, name, conn, found).await?;
    found.capabilities = pop3_capa(&mut conn).await?;
    pop3_login(&mut conn, options, found).await
}

/// HTTPS: a TLS handshake (always implicit), then `GET /.well-known/mta-sts.txt`, which must be
/// a 200 with a policy (`version: STSv1`). The status line is the greeting.
async fn https(address: &str, options: &Options, found: &mut Found) -> Result<(), String> {
    use tokio::io::AsyncReadExt;
    let connector = connector(options)?;
    let name = tls_name(address, options)?;
    let stream = connect(address).await?;
    let mut tls = connector
        .connect(name, stream)
        .await
        .map_err(|e| format!("TLS handshake failed: {e}"))?;
    found.tls = true;
    let host = options
        .tls_name
        .clone()
        .unwrap_or_else(|| host_of(address).to_string());
    tls.write_all(
        format!(
            "GET /.well-known/mta-sts.txt HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n"
        )
        .as_bytes(),
    )
    .await
    .map_err(|e| format!("sending the request: {e}"))?;
    let mut answer = Vec::new();
    (&mut tls)
        .take(64 * 1024)
        .read_to_end(&mut answer)
        .await
        .map_err(|e| format!("reading the answer: {e}"))?;
    let answer = String::from_utf8_lossy(&answer);
    let status = answer.lines().next().unwrap_or_default().to_string();
    found.greeting = Some(status.clone());
    if !status.starts_with("HTTP/1.1 200") {
        return Err(format!("the MTA-STS policy answered {status:?}"));
    }
    if !answer.contains("\r\n\r\nversion: STSv1") {
        return Err("the answer is not an MTA-STS policy".into());
    }
    Ok(())
}

/// An error unless the capabilities name `starttls` (STLS, STARTTLS).
fn advertised(found: &Found, starttls: &str) -> Result<(), String> {
    if found
        .capabilities
        .iter()
        .any(|c| c.eq_ignore_ascii_case(starttls))
    {
        Ok(())
    } else {
        Err(format!("{starttls} is not advertised"))
    }
}

/// The TLS handshake after a line protocol's STARTTLS was answered.
async fn upgrade(
    connector: &TlsConnector,
    name: rustls::pki_types::ServerName<'static>,
    conn: BufReader<TcpStream>,
    found: &mut Found,
) -> Result<BufReader<tokio_rustls::client::TlsStream<TcpStream>>, String> {
    let tls = connector
        .connect(name, conn.into_inner())
        .await
        .map_err(|e| format!("TLS handshake failed: {e}"))?;
    found.tls = true;
    Ok(BufReader::new(tls))
}

async fn pop3_line<S: AsyncRead + AsyncWrite + Unpin>(
    conn: &mut BufReader<S>,
) -> Result<String, String> {
    // Bounded: a hostile server cannot make the probe buffer an endless line.
    let mut line = Vec::new();
    loop {
        let chunk = conn.fill_buf().await.map_err(|e| format!("reading: {e}"))?;
        if chunk.is_empty() {
            return Err("the server closed the connection".into());
        }
        let (take, done) = match chunk.iter().position(|&b| b == b'\n') {
            Some(i) => (i + 1, true),
            None => (chunk.len(), false),
        };
        line.extend_from_slice(&chunk[..take]);
        conn.consume(take);
        if done {
            break;
        }
        if line.len() > 4096 {
            return Err("reply line too long".into());
        }
    }
    Ok(String::from_utf8_lossy(&line).trim_end().to_string())
}

async fn pop3_command<S: AsyncRead + AsyncWrite + Unpin>(
    conn: &mut BufReader<S>,
    command: &str,
) -> Result<String, String> {
    line_command(conn, command, "+OK").await
}

/// Sends one command line and reads the one-line reply, an error unless it starts with `ok`
/// (a password is never repeated in the error).
async fn line_command<S: AsyncRead + AsyncWrite + Unpin>(
    conn: &mut BufReader<S>,
    command: &str,
    ok: &str,
) -> Result<String, String> {
    conn.get_mut()
        .write_all(format!("{command}\r\n").as_bytes())
        .await
        .map_err(|e| format!("writing: {e}"))?;
    let reply = pop3_line(conn).await?;
    if !reply.to_ascii_uppercase().starts_with(ok) {
        let shown = command.split(' ').next().unwrap_or_default();
        return Err(format!("{shown} answered {reply}"));
    }
    Ok(reply)
}

async fn pop3_greeting<S: AsyncRead + AsyncWrite + Unpin>(
    conn: &mut BufReader<S>,
    found: &mut Found,
) -> Result<(), String> {
    let greeting = pop3_line(conn).await?;
    found.greeting = Some(greeting.clone());
    if !greeting.starts_with("+OK") {
        return Err(format!("not a POP3 greeting: {greeting:?}"));
    }
    Ok(())
}

async fn pop3_capa<S: AsyncRead + AsyncWrite + Unpin>(
    conn: &mut BufReader<S>,
) -> Result<Vec<String>, String> {
    pop3_command(conn, "CAPA").await?;
    let mut caps = Vec::new();
    loop {
        let line = pop3_line(conn).await?;
        if line == "." {
            return Ok(caps);
        }
        if caps.len() > 100 {
            return Err("CAPA listing too long".into());
        }
        caps.push(line);
    }
}

async fn pop3_login<S: AsyncRead + AsyncWrite + Unpin>(
    conn: &mut BufReader<S>,
    options: &Options,
    found: &mut Found,
) -> Result<(), String> {
    if let Some((user, password)) = &options.login {
        let result = async {
            pop3_command(conn, &format!("USER {user}")).await?;
            pop3_command(conn, &format!("PASS {password}")).await
        }
        .await;
        found.logged_in = Some(result.is_ok());
        result.map_err(|e| format!("login failed: {e}"))?;
    }
    let _ = pop3_command(conn, "QUIT").await;
    Ok(())
}

/// ManageSieve (RFC 5804): the capabilities end with an `OK` line; STARTTLS is advertised and
/// negotiated, and the server lists its capabilities again over TLS.
async fn managesieve(address: &str, options: &Options, found: &mut Found) -> Result<(), String> {
    let connector = connector(options)?;
    let name = tls_name(address, options)?;
    let mut conn = BufReader::new(connect(address).await?);
    found.capabilities = sieve_capabilities(&mut conn, found).await?;
    advertised(found, "STARTTLS")?;
    sieve_command(&mut conn, "STARTTLS").await?;
    let mut conn = upgrade(&connector, name, conn, found).await?;
    found.capabilities = sieve_capabilities(&mut conn, found).await?;
    if let Some((user, password)) = &options.login {
        use base64::Engine;
        let token =
            base64::engine::general_purpose::STANDARD.encode(format!("\0{user}\0{password}"));
        let result = sieve_command(&mut conn, &format!("AUTHENTICATE \"PLAIN\" \"{token}\"")).await;
        found.logged_in = Some(result.is_ok());
        result.map_err(|e| format!("login failed: {e}"))?;
    }
    let _ = sieve_command(&mut conn, "LOGOUT").await;
    Ok(())
}

/// The capability lines up to the `OK` that ends them; the `OK` line is the greeting.
async fn sieve_capabilities<S: AsyncRead + AsyncWrite + Unpin>(
    conn: &mut BufReader<S>,
    found: &mut Found,
) -> Result<Vec<String>, String> {
    let mut capabilities = Vec::new();
    for _ in 0..64 {
        let line = pop3_line(conn).await?;
        let upper = line.to_ascii_uppercase();
        if upper.starts_with("OK") {
            found.greeting = Some(line);
            return Ok(capabilities);
        }
        if upper.starts_with("NO") || upper.starts_with("BYE") {
            return Err(format!("the server refused: {line}"));
        }
        let name = line.trim_start_matches('"');
        let name = name.split('"').next().unwrap_or_default();
        capabilities.push(name.to_string());
    }
    Err("more than 64 capability lines".into())
}

async fn sieve_command<S: AsyncRead + AsyncWrite + Unpin>(
    conn: &mut BufReader<S>,
    command: &str,
) -> Result<String, String> {
    line_command(conn, command, "OK").await
}

/// A collection of probes into one summary (for several ports in one exec probe).
pub async fn probe_all(targets: &[(Kind, String, Options)]) -> Vec<Report> {
    futures::stream::iter(targets.iter())
        .then(|(kind, address, options)| probe(*kind, address, options))
        .collect()
        .await
}

/// The probes for a config's mail listeners, aimed at loopback (the pod's own view).
pub fn targets_of(listeners: &[kubemail_config::Listener]) -> Vec<(Kind, String, Options)> {
    use kubemail_config::ListenerProtocol as P;
    listeners
        .iter()
        .filter_map(|l| {
            let kind = match l.protocol {
                P::Smtp | P::Submission | P::Submissions => Kind::Smtp,
                P::Imap | P::Imaps => Kind::Imap,
                P::Pop3 | P::Pop3s => Kind::Pop3,
                P::Managesieve => Kind::Managesieve,
                P::Https => Kind::Https,
                P::Http => return None,
            };
            // A listener behind the PROXY protocol reads a header only from trusted proxies,
            // which never include loopback: the probe is served as a direct client.
            let port = l.address.rsplit_once(':').map(|(_, p)| p.to_string())?;
            let options = Options {
                implicit_tls: l.protocol.implicit_tls(),
                ..Options::default()
            };
            Some((kind, format!("127.0.0.1:{port}"), options))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use kubemail_config::{Listener, ListenerProtocol};

    #[test]
    fn listeners_behind_the_proxy_protocol_are_probed_too() {
        let listener = |protocol, address: &str| Listener {
            protocol,
            address: address.into(),
            proxy_protocol: true,
        };
        let targets = targets_of(&[
            listener(ListenerProtocol::Smtp, "0.0.0.0:25"),
            listener(ListenerProtocol::Imaps, "0.0.0.0:993"),
            listener(ListenerProtocol::Http, "0.0.0.0:8080"),
        ]);
        let found: Vec<(Kind, &str, bool)> = targets
            .iter()
            .map(|(kind, address, options)| (*kind, address.as_str(), options.implicit_tls))
            .collect();
        assert_eq!(
            found,
            [
                (Kind::Smtp, "127.0.0.1:25", false),
                (Kind::Imap, "127.0.0.1:993", true)
            ]
        );
    }
}
