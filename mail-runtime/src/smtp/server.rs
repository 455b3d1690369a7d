//! The I/O around an SMTP session: accept, connection limits, PROXY header, implicit TLS and
//! STARTTLS, timeouts, spooling and delivery. The protocol itself lives in `session`.
use std::{
    collections::VecDeque,
    io,
    net::SocketAddr,
    pin::Pin,
    task::{Context, Poll},
    time::Duration,
};

use tokio::{
    io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf},
    net::{TcpListener, TcpStream},
};
use tokio_rustls::{TlsAcceptor, server::TlsStream};

use super::{
    Reply,
    session::{Delivered, LOGIN_PROTOCOL, LoginFailure, Output, Session, SessionInfo},
};
use crate::{
    auth,
    config::Listener,
    runtime::Runtime,
    store::{SpoolWriter, StoreError},
};

/// Accepts connections on `socket` forever.
pub async fn serve(socket: TcpListener, listener: Listener, runtime: Runtime) {
    loop {
        let (stream, peer) = match socket.accept().await {
            Ok(c) => c,
            Err(err) => {
                tracing::warn!(error = %err, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let listener = listener.clone();
        let runtime = runtime.clone();
        tokio::spawn(async move {
            if let Err(err) = connection(stream, peer, listener, runtime).await {
                tracing::debug!(%peer, error = %err, "smtp connection ended with an error");
            }
        });
    }
}

/// A plain or TLS connection; STARTTLS turns the first into the second. `Gone` stands in
/// while the TCP stream is inside a TLS handshake (or after a failed one).
enum Conn {
    Plain(TcpStream),
    Tls(Box<TlsStream<TcpStream>>),
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

const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(20);

async fn connection(
    mut stream: TcpStream,
    peer: SocketAddr,
    listener: Listener,
    runtime: Runtime,
) -> io::Result<()> {
    let _ = stream.set_nodelay(true);
    let mut early = Vec::new();
    let mut peer_ip = peer.ip();
    if listener.proxy_protocol {
        match crate::proxy::read_header(&mut stream).await {
            Ok((addr, rest)) => {
                if let Some(addr) = addr {
                    peer_ip = addr.ip();
                }
                early = rest;
            }
            Err(err) => {
                tracing::info!(%peer, error = %err, "connection refused: bad PROXY header");
                return Ok(());
            }
        }
    }
    let slot = match runtime.admit(peer_ip) {
        Ok(slot) => slot,
        Err(why) => {
            let reply = Reply::new(421, "4.7.0", why);
            if !listener.protocol.implicit_tls() {
                let _ = stream.write_all(&reply.to_bytes()).await;
            }
            return Ok(());
        }
    };
    let tls_config = runtime.tls.get();
    let mut conn = if listener.protocol.implicit_tls() {
        let Some(tls) = tls_config.clone() else {
            return Ok(());
        };
        let accepted =
            tokio::time::timeout(HANDSHAKE_TIMEOUT, TlsAcceptor::from(tls).accept(stream)).await;
        match accepted {
            Ok(Ok(s)) => Conn::Tls(Box::new(s)),
            _ => return Ok(()),
        }
    } else {
        Conn::Plain(stream)
    };
    let info = SessionInfo {
        listener: listener.protocol,
        peer: peer_ip,
        tls: listener.protocol.implicit_tls(),
        tls_available: tls_config.is_some(),
    };
    let (mut session, greeting) = Session::new(info, runtime.config.get(), runtime.store.clone());
    let mut driver = Driver {
        runtime: runtime.clone(),
        spool: None,
        spool_error: None,
        out: Vec::new(),
        peer_ip,
    };
    driver
        .handle(&mut conn, &mut session, VecDeque::from([greeting]))
        .await?;
    if !early.is_empty() {
        let outputs = session.feed(&early);
        driver
            .handle(&mut conn, &mut session, outputs.into())
            .await?;
    }
    let timeout = Duration::from_secs(runtime.config.get().raw.limits.command_timeout_seconds);
    let mut buf = vec![0u8; 16 * 1024];
    while !session.closed() {
        let n = match tokio::time::timeout(timeout, conn.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => break,
            Ok(Ok(n)) => n,
            Err(_) => {
                let reply = Reply::new(421, "4.4.2", "timeout waiting for input, closing");
                let _ = conn.write_all(&reply.to_bytes()).await;
                break;
            }
        };
        session.set_config(runtime.config.get());
        let outputs = session.feed(&buf[..n]);
        driver
            .handle(&mut conn, &mut session, outputs.into())
            .await?;
    }
    let _ = conn.shutdown().await;
    drop(slot);
    Ok(())
}

struct Driver {
    runtime: Runtime,
    spool: Option<SpoolWriter>,
    spool_error: Option<StoreError>,
    out: Vec<u8>,
    peer_ip: std::net::IpAddr,
}

impl Driver {
    /// Carries out the session's outputs, feeding results back, then flushes the replies.
    async fn handle(
        &mut self,
        conn: &mut Conn,
        session: &mut Session,
        mut queue: VecDeque<Output>,
    ) -> io::Result<()> {
        while let Some(output) = queue.pop_front() {
            match output {
                Output::Reply(reply) => self.out.extend_from_slice(&reply.to_bytes()),
                Output::Close => {
                    self.flush(conn).await?;
                    return Ok(());
                }
                Output::StartTls => {
                    self.flush(conn).await?;
                    let ok = self.start_tls(conn).await;
                    queue.extend(session.tls_started(ok));
                }
                Output::CheckLogin { username, password } => {
                    let result = self.check_login(&username, &password).await;
                    queue.extend(session.login_result(result));
                }
                Output::BeginMessage => {
                    self.spool_error = None;
                    match self.runtime.store.spool() {
                        Ok(w) => self.spool = Some(w),
                        Err(err) => {
                            self.spool = None;
                            self.spool_error = Some(err);
                        }
                    }
                }
                Output::Body(bytes) => {
                    if let Some(spool) = self.spool.as_mut()
                        && let Err(err) = spool.write(&bytes)
                    {
                        self.spool = None;
                        self.spool_error = Some(err);
                    }
                }
                Output::AbortMessage => {
                    self.spool = None;
                    self.spool_error = None;
                }
                Output::EndMessage => {
                    let result = self.deliver(session).await;
                    queue.extend(session.delivered(result));
                }
            }
        }
        // Replies go out when the session has nothing more to say for now: pipelined commands
        // are answered in one write.
        if !session.in_body() || !self.out.is_empty() {
            self.flush(conn).await?;
        }
        Ok(())
    }

    async fn flush(&mut self, conn: &mut Conn) -> io::Result<()> {
        if !self.out.is_empty() {
            conn.write_all(&self.out).await?;
            conn.flush().await?;
            self.out.clear();
        }
        Ok(())
    }

    async fn start_tls(&mut self, conn: &mut Conn) -> bool {
        let Some(config) = self.runtime.tls.get() else {
            return false;
        };
        let Conn::Plain(stream) = std::mem::replace(conn, Conn::Gone) else {
            return false;
        };
        let accepted =
            tokio::time::timeout(HANDSHAKE_TIMEOUT, TlsAcceptor::from(config).accept(stream)).await;
        match accepted {
            Ok(Ok(tls)) => {
                *conn = Conn::Tls(Box::new(tls));
                true
            }
            _ => false,
        }
    }

    async fn check_login(
        &self,
        username: &str,
        password: &str,
    ) -> Result<(usize, String), LoginFailure> {
        let config = self.runtime.config.get();
        let per_minute = config.raw.limits.auth_failures_per_minute;
        if !self.runtime.auth_limiter.allows(self.peer_ip, per_minute) {
            return Err(LoginFailure::TooManyFailures);
        }
        match auth::login(&config, username, password, LOGIN_PROTOCOL).await {
            Ok(index) => Ok((index, config.mailbox(index).address.to_ascii_lowercase())),
            Err(_) => {
                self.runtime.auth_limiter.record_failure(self.peer_ip);
                // A failed login costs the client a second: guessing gets slow.
                tokio::time::sleep(Duration::from_secs(1)).await;
                Err(LoginFailure::Invalid)
            }
        }
    }

    async fn deliver(&mut self, session: &Session) -> Delivered {
        if let Some(err) = self.spool_error.take() {
            self.spool = None;
            return Delivered::Failed(err);
        }
        let Some(spool) = self.spool.take() else {
            return Delivered::Failed(StoreError::Io(io::Error::other("no spool file")));
        };
        let delivery = session.delivery();
        let store = self.runtime.store.clone();
        let result = tokio::task::spawn_blocking(move || {
            let message = spool.finish()?;
            store.deliver(message, &delivery.mailboxes)
        })
        .await;
        match result {
            Ok(Ok(())) => Delivered::Ok,
            Ok(Err(err)) => Delivered::Failed(err),
            Err(join) => Delivered::Failed(StoreError::Io(io::Error::other(join.to_string()))),
        }
    }
}
