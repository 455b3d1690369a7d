//! What every protocol's listener does before its protocol starts: accept, read a PROXY
//! header when the listener expects one and the peer is a trusted proxy, count the connection against the limits, run the
//! implicit-TLS handshake; and the connection type that STARTTLS/STLS upgrades in place.
use std::{
    future::Future,
    io,
    net::IpAddr,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
    time::Duration,
};

use rustls::ServerConfig;
use tokio::{
    io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf},
    net::{TcpListener, TcpStream},
};
use tokio_rustls::{TlsAcceptor, server::TlsStream};

use crate::{
    config::{Config, Listener},
    runtime::{ConnectionSlot, Runtime},
};

/// Longest a TLS handshake may take.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(20);

/// A plain or TLS connection. `Gone` stands in while the TCP stream is inside a TLS handshake
/// (and after a failed one).
#[derive(Debug)]
pub enum Conn {
    /// Before TLS.
    Plain(TcpStream),
    /// After TLS.
    Tls(Box<TlsStream<TcpStream>>),
    /// After IMAP COMPRESS=DEFLATE, over one of the others.
    Deflate(Box<crate::deflate::Deflate>),
    /// Unusable.
    Gone,
}

fn gone() -> io::Error {
    io::Error::new(io::ErrorKind::NotConnected, "connection closed")
}

impl AsyncRead for Conn {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Conn::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Conn::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
            Conn::Deflate(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
            Conn::Gone => Poll::Ready(Err(gone())),
        }
    }
}

impl AsyncWrite for Conn {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Conn::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Conn::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
            Conn::Deflate(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
            Conn::Gone => Poll::Ready(Err(gone())),
        }
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Conn::Plain(s) => Pin::new(s).poll_flush(cx),
            Conn::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
            Conn::Deflate(s) => Pin::new(s.as_mut()).poll_flush(cx),
            Conn::Gone => Poll::Ready(Err(gone())),
        }
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Conn::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Conn::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
            Conn::Deflate(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
            Conn::Gone => Poll::Ready(Ok(())),
        }
    }
}

impl Conn {
    /// Turns on DEFLATE both ways (IMAP COMPRESS); `false` if it already is on.
    pub fn start_deflate(&mut self) -> bool {
        match std::mem::replace(self, Conn::Gone) {
            Conn::Deflate(d) => {
                *self = Conn::Deflate(d);
                false
            }
            other => {
                *self = Conn::Deflate(Box::new(crate::deflate::Deflate::new(other)));
                true
            }
        }
    }

    /// Upgrades a plain connection to TLS (STARTTLS, STLS). On failure the connection is gone.
    pub async fn start_tls(&mut self, config: Arc<ServerConfig>) -> bool {
        let Conn::Plain(stream) = std::mem::replace(self, Conn::Gone) else {
            return false;
        };
        let accepted =
            tokio::time::timeout(HANDSHAKE_TIMEOUT, TlsAcceptor::from(config).accept(stream)).await;
        match accepted {
            Ok(Ok(tls)) => {
                *self = Conn::Tls(Box::new(tls));
                true
            }
            _ => false,
        }
    }
}

/// A connection that passed the listener's checks.
#[derive(Debug)]
pub struct Accepted {
    /// The connection, already in TLS on an implicit-TLS listener.
    pub conn: Conn,
    /// The client's address (from the PROXY header when there is one).
    pub peer: IpAddr,
    /// Whether a certificate is loaded (STARTTLS can be offered).
    pub tls_available: bool,
    /// Holds the connection's place in the limits until dropped.
    pub slot: ConnectionSlot,
}

/// Accepts connections on `socket` until the runtime drains, and runs `handler` for each one that passes the
/// checks. `busy` is the protocol's way of saying "too many connections".
pub async fn serve<H, F>(
    socket: TcpListener,
    listener: Listener,
    runtime: Runtime,
    busy: fn(&str) -> Vec<u8>,
    handler: H,
) where
    H: Fn(Accepted, Listener, Runtime) -> F + Clone + Send + Sync + 'static,
    F: Future<Output = io::Result<()>> + Send + 'static,
{
    loop {
        let accepted = tokio::select! {
            biased;
            // The socket closes here: a client's new connection is refused at once and goes
            // to another replica, or retries, instead of waiting in the backlog.
            () = runtime.stopping() => return,
            accepted = socket.accept() => accepted,
        };
        let (stream, peer) = match accepted {
            Ok(c) => c,
            Err(err) => {
                tracing::warn!(error = %err, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let (listener, runtime, handler) = (listener.clone(), runtime.clone(), handler.clone());
        tokio::spawn(async move {
            let protocol = listener.protocol.name();
            let Some(accepted) = accept(stream, peer.ip(), &listener, &runtime, busy).await else {
                return;
            };
            crate::metrics::session_started(protocol);
            if let Err(err) = handler(accepted, listener, runtime).await {
                tracing::debug!(%peer, protocol, error = %err, "connection ended with an error");
            }
            crate::metrics::session_ended(protocol);
        });
    }
}

/// Whether a listener reads PROXY headers, as the config in force says: a live reload that
/// switches `proxyProtocol` applies to the listener's next connection (its socket stays bound).
/// A listener the config no longer has keeps what it started with.
fn expects_proxy(config: &Config, listener: &Listener) -> bool {
    config
        .raw
        .listeners
        .iter()
        .find(|l| l.protocol == listener.protocol && l.address == listener.address)
        .map_or(listener.proxy_protocol, |l| l.proxy_protocol)
}

async fn accept(
    mut stream: TcpStream,
    mut peer: IpAddr,
    listener: &Listener,
    runtime: &Runtime,
    busy: fn(&str) -> Vec<u8>,
) -> Option<Accepted> {
    let _ = stream.set_nodelay(true);
    // Only a trusted load balancer speaks first with a header; anyone else (a pod's probe, an
    // in-cluster client, an attacker) is a direct client whose header would be a bad command.
    let config = runtime.config().get();
    let expects_header = expects_proxy(&config, listener) && config.trusts_proxy(peer);
    drop(config);
    if expects_header {
        match crate::proxy::read_header(&mut stream).await {
            Ok(Some(addr)) => peer = crate::config::canonical_ip(addr.ip()),
            // The proxy's own health check (v2 LOCAL, v1 UNKNOWN) keeps its address.
            Ok(None) => {}
            Err(err) => {
                tracing::info!(%peer, error = %err, "connection from a trusted proxy refused: bad PROXY header");
                return None;
            }
        }
    }
    // The pod's own probes and port-forwards: the loopback address itself, straight.
    let own = !expects_header
        && matches!(
            crate::config::canonical_ip(peer),
            IpAddr::V4(std::net::Ipv4Addr::LOCALHOST) | IpAddr::V6(std::net::Ipv6Addr::LOCALHOST)
        );
    let slot = match runtime.admit_from(peer, own) {
        Ok(slot) => slot,
        Err(why) => {
            if !listener.protocol.implicit_tls() {
                let _ = stream.write_all(&busy(why)).await;
            }
            return None;
        }
    };
    let tls = runtime.tls().get();
    let conn = if listener.protocol.implicit_tls() {
        let mut conn = Conn::Plain(stream);
        if !conn.start_tls(tls.clone()?).await {
            return None;
        }
        conn
    } else {
        Conn::Plain(stream)
    };
    Some(Accepted {
        conn,
        peer,
        tls_available: tls.is_some(),
        slot,
    })
}

#[cfg(test)]
mod tests {
    use tokio::{io::AsyncReadExt, net::TcpSocket};

    use super::*;
    use crate::config::{ConfigHandle, ListenerProtocol};

    /// A runtime whose only trusted proxy is 127.0.0.2.
    fn runtime(dir: &std::path::Path) -> Runtime {
        let config = Config::parse(&format!(
            r#"
apiVersion: runtime.kubemail.io/v1
kind: RuntimeConfig
hostname: mail.example.test
domains: [{{name: example.test}}]
tls: {{certFile: /nonexistent.crt, keyFile: /nonexistent.key}}
listeners: [{{protocol: smtp, address: "127.0.0.1:0", proxyProtocol: true}}]
storage: {{path: {dir:?}}}
security: {{trustedProxies: [127.0.0.2/32]}}
"#
        ))
        .expect("valid config");
        Runtime::new(ConfigHandle::new(config)).expect("runtime")
    }

    /// Connects from `source` (a loopback alias), sends `sent`, and runs `accept` on the other
    /// end for a listener started with `proxy_protocol`; returns what it made of the connection
    /// and the bytes it left unread.
    async fn accept_from(
        source: &str,
        proxy_protocol: bool,
        sent: &[u8],
    ) -> Option<(IpAddr, Vec<u8>)> {
        accept_with(source, proxy_protocol, None, sent).await
    }

    /// Like `accept_from`, and the config in force later says `reloaded` for the listener.
    async fn accept_with(
        source: &str,
        proxy_protocol: bool,
        reloaded: Option<bool>,
        sent: &[u8],
    ) -> Option<(IpAddr, Vec<u8>)> {
        let dir = tempfile::tempdir().expect("tmp");
        let runtime = runtime(dir.path());
        let socket = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let address = socket.local_addr().expect("addr").to_string();
        if let Some(reloaded) = reloaded {
            let mut raw = runtime.config().get().raw.clone();
            raw.listeners[0].address = address.clone();
            raw.listeners[0].proxy_protocol = reloaded;
            runtime
                .config()
                .set(Config::validate(raw).expect("valid reload"));
        }
        let client = TcpSocket::new_v4().expect("socket");
        client
            .bind(format!("{source}:0").parse().expect("source"))
            .expect("bind source");
        let mut client = client
            .connect(socket.local_addr().expect("addr"))
            .await
            .expect("connect");
        client.write_all(sent).await.expect("send");
        client.shutdown().await.expect("shutdown");
        let (stream, peer) = socket.accept().await.expect("accept");
        let listener = Listener {
            protocol: ListenerProtocol::Smtp,
            address,
            proxy_protocol,
        };
        let mut accepted = accept(stream, peer.ip(), &listener, &runtime, |_| Vec::new()).await?;
        let mut rest = Vec::new();
        accepted
            .conn
            .read_to_end(&mut rest)
            .await
            .expect("read the rest");
        Some((accepted.peer, rest))
    }

    const HEADER: &[u8] = b"PROXY TCP4 192.0.2.9 192.0.2.1 40000 25\r\nEHLO x\r\n";

    #[test]
    fn addresses_are_counted_per_ipv6_64_and_the_pods_own_are_never_refused() {
        let dir = tempfile::tempdir().expect("tmp");
        let runtime = runtime(dir.path());
        let mut raw = runtime.config().get().raw.clone();
        raw.limits.max_connections = 3;
        raw.limits.max_connections_per_ip = 1;
        runtime
            .config()
            .set(Config::validate(raw).expect("valid limits"));
        let ip = |s: &str| s.parse::<IpAddr>().expect("ip");
        let first = runtime
            .admit(ip("2001:db8:1:2::1"))
            .expect("the first of a /64");
        // Another address of the same /64 is the same customer.
        assert!(runtime.admit(ip("2001:db8:1:2::ffff")).is_err());
        let other = runtime.admit(ip("2001:db8:1:3::1")).expect("another /64");
        let v4 = runtime.admit(ip("192.0.2.7")).expect("an IPv4 address");
        // The total is reached: outsiders wait, the pod's own probes do not.
        assert!(runtime.admit(ip("192.0.2.8")).is_err());
        let probes: Vec<_> = (0..3)
            .map(|_| {
                runtime
                    .admit_from(ip("127.0.0.1"), true)
                    .expect("the pod's own")
            })
            .collect();
        drop((first, other, v4, probes));
        assert!(runtime.admit(ip("192.0.2.8")).is_ok());
    }

    #[tokio::test]
    async fn a_trusted_proxy_names_the_client_and_nothing_after_its_header_is_consumed() {
        let (peer, rest) = accept_from("127.0.0.2", true, HEADER)
            .await
            .expect("accepted");
        assert_eq!(peer, "192.0.2.9".parse::<IpAddr>().expect("ip"));
        assert_eq!(rest, b"EHLO x\r\n");
    }

    #[tokio::test]
    async fn a_trusted_proxy_without_a_header_is_refused() {
        assert!(
            accept_from("127.0.0.2", true, b"EHLO x\r\n")
                .await
                .is_none()
        );
    }

    #[tokio::test]
    async fn anyone_else_is_a_direct_client_whose_header_is_not_honoured() {
        // An attacker claiming an address in the relay networks, or rotating addresses.
        let (peer, rest) = accept_from("127.0.0.3", true, HEADER)
            .await
            .expect("accepted");
        assert_eq!(peer, "127.0.0.3".parse::<IpAddr>().expect("ip"));
        assert_eq!(
            rest, HEADER,
            "the header reaches the protocol as a bad command"
        );
        // A probe from loopback, no header.
        let (peer, rest) = accept_from("127.0.0.1", true, b"QUIT\r\n")
            .await
            .expect("accepted");
        assert_eq!(peer, "127.0.0.1".parse::<IpAddr>().expect("ip"));
        assert_eq!(rest, b"QUIT\r\n");
    }

    #[tokio::test]
    async fn a_listener_without_proxy_protocol_believes_no_header() {
        let (peer, rest) = accept_from("127.0.0.2", false, HEADER)
            .await
            .expect("accepted");
        assert_eq!(peer, "127.0.0.2".parse::<IpAddr>().expect("ip"));
        assert_eq!(rest, HEADER);
    }

    #[tokio::test]
    async fn a_reload_that_switches_proxy_protocol_applies_to_the_next_connection() {
        let (peer, _) = accept_with("127.0.0.2", false, Some(true), HEADER)
            .await
            .expect("accepted");
        assert_eq!(peer, "192.0.2.9".parse::<IpAddr>().expect("ip"));
        let (peer, rest) = accept_with("127.0.0.2", true, Some(false), HEADER)
            .await
            .expect("accepted");
        assert_eq!(peer, "127.0.0.2".parse::<IpAddr>().expect("ip"));
        assert_eq!(rest, HEADER);
    }
}
