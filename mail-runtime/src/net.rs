//! What every protocol's listener does before its protocol starts: accept, read a PROXY
//! header when the listener expects one, count the connection against the limits, run the
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
    config::Listener,
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
            Conn::Gone => Poll::Ready(Err(gone())),
        }
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Conn::Plain(s) => Pin::new(s).poll_flush(cx),
            Conn::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
            Conn::Gone => Poll::Ready(Err(gone())),
        }
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Conn::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Conn::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
            Conn::Gone => Poll::Ready(Ok(())),
        }
    }
}

impl Conn {
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
    /// Bytes the client sent right after the PROXY header.
    pub early: Vec<u8>,
    /// Whether a certificate is loaded (STARTTLS can be offered).
    pub tls_available: bool,
    /// Holds the connection's place in the limits until dropped.
    pub slot: ConnectionSlot,
}

/// Accepts connections on `socket` forever, and runs `handler` for each one that passes the
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
        let (stream, peer) = match socket.accept().await {
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

async fn accept(
    mut stream: TcpStream,
    mut peer: IpAddr,
    listener: &Listener,
    runtime: &Runtime,
    busy: fn(&str) -> Vec<u8>,
) -> Option<Accepted> {
    let _ = stream.set_nodelay(true);
    let mut early = Vec::new();
    if listener.proxy_protocol {
        match crate::proxy::read_header(&mut stream).await {
            Ok((addr, rest)) => {
                if let Some(addr) = addr {
                    peer = addr.ip();
                }
                early = rest;
            }
            Err(err) => {
                tracing::info!(%peer, error = %err, "connection refused: bad PROXY header");
                return None;
            }
        }
    }
    let slot = match runtime.admit(peer) {
        Ok(slot) => slot,
        Err(why) => {
            if !listener.protocol.implicit_tls() {
                let _ = stream.write_all(&busy(why)).await;
            }
            return None;
        }
    };
    let tls = runtime.tls.get();
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
        early,
        tls_available: tls.is_some(),
        slot,
    })
}
