//! The HTTP side of the runtime, on its own port: `/healthz`, `/readyz` (with the config
//! revision served), `/metrics`, `/usage` (each mailbox's storage, for the operator),
//! Thunderbird autoconfig, Outlook autodiscover and the MTA-STS policy. Plain HTTP: inside the
//! cluster it is read by the kubelet, the operator and Prometheus. The `https` listener serves
//! the public part only (autoconfig, autodiscover, MTA-STS) over TLS with the domain's
//! certificate, for mail clients and other servers outside (`/usage` and `/metrics` name every
//! mailbox, `/readyz` tells config errors: never there).
use std::convert::Infallible;

use http_body_util::Full;
use hyper::{
    Method, Request, Response, StatusCode, body::Bytes, header, server::conn::http1,
    service::service_fn,
};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;

use crate::{
    config::{Config, DomainConfig, Listener, ListenerProtocol},
    runtime::Runtime,
};

/// HTTP connections served at once; the next wait in the listen queue. Health checks, the
/// operator and Prometheus need a handful; nobody gets to tie up the runtime with thousands.
const MAX_CONNECTIONS: usize = 64;

/// How long a count of every mailbox's storage is served again before it is made anew: a
/// scrape sees figures at most this old.
const USAGE_FRESH_FOR: std::time::Duration = std::time::Duration::from_secs(1);

/// The most a connection's read buffer holds (hyper's default is about 400 KiB: a few
/// thousand half-sent headers held that much each). Requests here are a line and a few
/// headers; a larger header gets 431.
const MAX_BUFFER: usize = 16 * 1024;

/// How long one connection may last, keep-alive included: a client that pipelines requests
/// and never reads the answers holds its slot no longer than this.
const CONNECTION_LIFETIME: std::time::Duration = std::time::Duration::from_secs(60);

/// Serves HTTP on `socket` forever.
pub async fn serve(socket: TcpListener, runtime: Runtime) {
    let slots = std::sync::Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    loop {
        let Ok(slot) = slots.clone().acquire_owned().await else {
            return;
        };
        let Ok((stream, _)) = socket.accept().await else {
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            continue;
        };
        let runtime = runtime.clone();
        tokio::spawn(async move {
            let _slot = slot;
            let service = service_fn(move |req| {
                let runtime = runtime.clone();
                async move { Ok::<_, Infallible>(handle(&runtime, req).await) }
            });
            speak(stream, service).await;
        });
    }
}

/// Serves the public documents over HTTPS on `socket` forever, with the domain's certificate:
/// connections are admitted like the mail protocols' (per-address and total limits, PROXY
/// headers from trusted proxies, the TLS handshake), then spoken HTTP/1.1 to.
pub async fn serve_public(socket: TcpListener, listener: Listener, runtime: Runtime) {
    crate::net::serve(
        socket,
        listener,
        runtime,
        |_| Vec::new(),
        |accepted, _, runtime| async move {
            let crate::net::Accepted { conn, slot, .. } = accepted;
            let _slot = slot;
            let service = service_fn(move |req| {
                let runtime = runtime.clone();
                async move { Ok::<_, Infallible>(public(&runtime, req)) }
            });
            speak(conn, service).await;
            Ok(())
        },
    )
    .await;
}

/// HTTP/1.1 on one connection, within the bounds both listeners keep: 10 s for a request's
/// header, [`MAX_BUFFER`] of it, [`CONNECTION_LIFETIME`] in all.
async fn speak<I, S>(io: I, service: S)
where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    S: hyper::service::HttpService<hyper::body::Incoming, ResBody = Full<Bytes>>,
    S::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let connection = http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(std::time::Duration::from_secs(10))
        .max_buf_size(MAX_BUFFER)
        .serve_connection(TokioIo::new(io), service);
    let _ = tokio::time::timeout(CONNECTION_LIFETIME, connection).await;
}

fn respond(
    status: StatusCode,
    content_type: &str,
    body: impl Into<Bytes>,
) -> Response<Full<Bytes>> {
    Response::builder()
        .status(status)
        .header(header::CONTENT_TYPE, content_type)
        .header(header::CACHE_CONTROL, "no-store")
        .body(Full::new(body.into()))
        .unwrap_or_else(|_| Response::new(Full::new(Bytes::new())))
}

/// The two answers that read the store (each served mailbox's storage), on a blocking thread;
/// everything else from memory.
async fn handle<B>(runtime: &Runtime, req: Request<B>) -> Response<Full<Bytes>> {
    let path = req.uri().path();
    if req.method() != Method::GET || !matches!(path, "/metrics" | "/usage") {
        return route(runtime, req);
    }
    let usage = {
        // One count for everyone asking at once, and again only after a few seconds: a
        // scrape loop cannot make the runtime walk every mailbox over and over.
        let mut cached = runtime.usage().lock().await;
        match cached.as_ref() {
            Some((at, usage)) if at.elapsed() < USAGE_FRESH_FOR => usage.clone(),
            _ => {
                let counting = runtime.clone();
                let usage = std::sync::Arc::new(
                    tokio::task::spawn_blocking(move || mailbox_usage(&counting))
                        .await
                        .unwrap_or_default(),
                );
                *cached = Some((std::time::Instant::now(), usage.clone()));
                usage
            }
        }
    };
    if path == "/metrics" {
        return respond(
            StatusCode::OK,
            "text/plain; version=0.0.4; charset=utf-8",
            crate::metrics::render(&usage),
        );
    }
    let body = serde_json::json!({
        "revision": runtime.config().get().raw.revision,
        "mailboxes": usage.as_slice(),
        "queueDepth": crate::metrics::queue_depth_now(),
    });
    respond(StatusCode::OK, "application/json", body.to_string())
}

/// Each served mailbox's storage, from the store's running totals (a mailbox not counted since
/// the start is counted once, here). One the store cannot read is left out, and logged.
fn mailbox_usage(runtime: &Runtime) -> Vec<crate::metrics::MailboxUsage> {
    let config = runtime.config().get();
    config
        .raw
        .mailboxes
        .iter()
        .filter_map(|m| {
            let address = m.address.to_ascii_lowercase();
            match runtime.store().usage(&address) {
                Ok(u) => Some(crate::metrics::MailboxUsage {
                    address,
                    bytes: u.bytes,
                    messages: u.messages,
                    quota_bytes: m.quota_bytes,
                }),
                Err(err) => {
                    tracing::warn!(mailbox = %address, error = %err, "its storage cannot be counted");
                    None
                }
            }
        })
        .collect()
}

/// What the HTTPS listener answers: the documents for mail clients and other servers, and
/// nothing of the runtime's own state.
fn public<B>(runtime: &Runtime, req: Request<B>) -> Response<Full<Bytes>> {
    // An allowlist: a path added to `route` later is not public until it is named here.
    let path = req.uri().path();
    if matches!(
        path,
        "/.well-known/mta-sts.txt"
            | "/mail/config-v1.1.xml"
            | "/.well-known/autoconfig/mail/config-v1.1.xml"
    ) || path.eq_ignore_ascii_case("/autodiscover/autodiscover.xml")
    {
        route(runtime, req)
    } else {
        respond(StatusCode::NOT_FOUND, "text/plain", "not found\n")
    }
}

fn route<B>(runtime: &Runtime, req: Request<B>) -> Response<Full<Bytes>> {
    let config = runtime.config().get();
    let path = req.uri().path();
    match (req.method(), path) {
        (&Method::GET, "/healthz") => respond(StatusCode::OK, "text/plain", "ok\n"),
        (&Method::GET, "/readyz") => {
            let status = runtime.status();
            let ready = runtime.ready();
            let code = if ready {
                StatusCode::OK
            } else {
                StatusCode::SERVICE_UNAVAILABLE
            };
            let body = serde_json::json!({"ready": ready, "status": status});
            respond(code, "application/json", body.to_string())
        }
        (
            &Method::GET,
            "/mail/config-v1.1.xml" | "/.well-known/autoconfig/mail/config-v1.1.xml",
        ) => respond(
            StatusCode::OK,
            "application/xml",
            autoconfig(&config, asked_for(&config, &req)),
        ),
        (&Method::GET | &Method::POST, p)
            if p.eq_ignore_ascii_case("/autodiscover/autodiscover.xml") =>
        {
            respond(
                StatusCode::OK,
                "application/xml",
                autodiscover(&config, asked_for(&config, &req)),
            )
        }
        (&Method::GET, "/.well-known/mta-sts.txt") => {
            let domain = asked_for(&config, &req);
            let mode = domain
                .and_then(|d| d.mta_sts_mode.as_deref())
                .unwrap_or(&config.raw.advertised.mta_sts_mode);
            respond(
                StatusCode::OK,
                "text/plain",
                kubemail_config::mta_sts_policy(mode, config.hostname_of(domain)),
            )
        }
        _ => respond(StatusCode::NOT_FOUND, "text/plain", "not found\n"),
    }
}

/// The served domain a request is for, by its Host (`mta-sts.example.com`,
/// `autoconfig.example.com`): on a server hosting several domains each gets its own answer.
/// Another host (or none): the server's first own domain.
fn asked_for<'a, B>(config: &'a Config, req: &Request<B>) -> Option<&'a DomainConfig> {
    let host = req
        .headers()
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .or_else(|| req.uri().host())
        .unwrap_or_default();
    // `name:port`, or `[v6]:port`, which no domain owns.
    let name = host.rsplit_once(':').map_or(host, |(name, _)| name);
    config
        .domain_named(name)
        .or_else(|| config.raw.domains.iter().find(|d| d.hostname.is_none()))
}

fn serves(config: &Config, protocol: ListenerProtocol) -> bool {
    config.raw.listeners.iter().any(|l| l.protocol == protocol)
}

/// Escapes text for XML content and attributes. Config values are validated names, but the
/// escaping keeps any value from becoming markup.
fn xml(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
        .replace('\'', "&apos;")
}

/// Thunderbird's autoconfig format (also read by K-9/Thunderbird for Android and Evolution).
fn autoconfig(config: &Config, domain: Option<&DomainConfig>) -> String {
    let host = xml(config.hostname_of(domain));
    let a = &config.raw.advertised;
    let mut servers = String::new();
    let mut server = |tag: &str, kind: &str, port: u16, socket: &str| {
        servers.push_str(&format!(
            "    <{tag} type=\"{kind}\">\n      <hostname>{host}</hostname>\n      <port>{port}</port>\n      \
             <socketType>{socket}</socketType>\n      <authentication>password-cleartext</authentication>\n      \
             <username>%EMAILADDRESS%</username>\n    </{tag}>\n"
        ));
    };
    if serves(config, ListenerProtocol::Imaps) {
        server("incomingServer", "imap", a.imaps, "SSL");
    }
    if serves(config, ListenerProtocol::Imap) {
        server("incomingServer", "imap", a.imap, "STARTTLS");
    }
    if serves(config, ListenerProtocol::Pop3s) {
        server("incomingServer", "pop3", a.pop3s, "SSL");
    }
    if serves(config, ListenerProtocol::Pop3) {
        server("incomingServer", "pop3", a.pop3, "STARTTLS");
    }
    if serves(config, ListenerProtocol::Submissions) {
        server("outgoingServer", "smtp", a.submissions, "SSL");
    }
    if serves(config, ListenerProtocol::Submission) {
        server("outgoingServer", "smtp", a.submission, "STARTTLS");
    }
    // The format has no element for ManageSieve; a comment tells people who read it (clients
    // find it by the `_sieve._tcp` SRV record of RFC 5804).
    if serves(config, ListenerProtocol::Managesieve) {
        servers.push_str(&format!(
            "    <!-- ManageSieve (RFC 5804), for server-side filters: {host} port {}, STARTTLS, the same login -->\n",
            a.managesieve
        ));
    }
    // The domains that share this answer: a hosted domain (one with a host name of its own)
    // only its own names, so one tenant's answer does not list another's domains.
    let domains: String = config
        .raw
        .domains
        .iter()
        .filter(|d| match domain {
            Some(chosen) if chosen.hostname.is_some() => d.name == chosen.name,
            _ => d.hostname.is_none(),
        })
        .flat_map(|d| std::iter::once(&d.name).chain(&d.aliases))
        .map(|d| format!("    <domain>{}</domain>\n", xml(d)))
        .collect();
    let id = xml(domain.map_or("kubemail", |d| d.name.as_str()));
    format!(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<clientConfig version=\"1.1\">\n  \
         <emailProvider id=\"{id}\">\n{domains}    <displayName>{id} mail</displayName>\n    \
         <displayShortName>{id}</displayShortName>\n{servers}  </emailProvider>\n</clientConfig>\n"
    )
}

/// Outlook's POX autodiscover response.
fn autodiscover(config: &Config, domain: Option<&DomainConfig>) -> String {
    let host = xml(config.hostname_of(domain));
    let a = &config.raw.advertised;
    let mut protocols = String::new();
    let mut protocol = |kind: &str, port: u16, ssl: bool, encryption: &str| {
        protocols.push_str(&format!(
            "      <Protocol>\n        <Type>{kind}</Type>\n        <Server>{host}</Server>\n        \
             <Port>{port}</Port>\n        <LoginName></LoginName>\n        <SPA>off</SPA>\n        \
             <SSL>{}</SSL>\n        <Encryption>{encryption}</Encryption>\n        \
             <AuthRequired>on</AuthRequired>\n      </Protocol>\n",
            if ssl { "on" } else { "off" }
        ));
    };
    if serves(config, ListenerProtocol::Imaps) {
        protocol("IMAP", a.imaps, true, "SSL");
    }
    if serves(config, ListenerProtocol::Pop3s) {
        protocol("POP3", a.pop3s, true, "SSL");
    }
    if serves(config, ListenerProtocol::Submissions) {
        protocol("SMTP", a.submissions, true, "SSL");
    } else if serves(config, ListenerProtocol::Submission) {
        protocol("SMTP", a.submission, true, "TLS");
    }
    format!(
        "<?xml version=\"1.0\" encoding=\"utf-8\"?>\n\
         <Autodiscover xmlns=\"http://schemas.microsoft.com/exchange/autodiscover/responseschema/2006\">\n  \
         <Response xmlns=\"http://schemas.microsoft.com/exchange/autodiscover/outlook/responseschema/2006a\">\n    \
         <Account>\n      <AccountType>email</AccountType>\n      <Action>settings</Action>\n{protocols}    \
         </Account>\n  </Response>\n</Autodiscover>\n"
    )
}
