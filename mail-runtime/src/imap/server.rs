//! The IMAP driver: the one place that touches the connection. It reads what the client sends
//! into the [`Reader`], hands each command to the [`Session`], sends the answers, and does
//! what the session's [`Step`] asks: a TLS handshake, DEFLATE, a SASL line, the wait in IDLE.
//! It owns the clocks too: autologout, the suspension check while the client is silent.
use std::{io, time::Duration};

use tokio::{io::AsyncReadExt, net::TcpListener};

use super::{
    codec::Reader,
    session::{Session, SessionInfo, Step},
};
use crate::{
    config::{Listener, LoginProtocol},
    net::{self, Accepted, Conn},
    runtime::Runtime,
};

/// Autologout of an authenticated session (RFC 9051: at least 30 minutes).
const AUTHENTICATED_TIMEOUT: Duration = Duration::from_secs(30 * 60);
/// How often an idle session looks whether its account was suspended or changed.
const REVOCATION_CHECK: Duration = Duration::from_secs(1);
/// What one read takes from the connection at most.
const READ_BUFFER: usize = 16 * 1024;

/// What a draining server says to a session between commands (RFC 9051 s7.1: UNAVAILABLE,
/// the client may try again): clients reconnect, to another replica when there is one.
const SHUTTING_DOWN: &str = "* BYE [UNAVAILABLE] shutting down for a restart, please reconnect\r\n";

/// Why a session ends while it waits for the client.
enum Ended {
    /// Its account was suspended, removed or given another password.
    Revoked,
    /// The server drains.
    Stopping,
}

/// Serves IMAP on `socket` until the runtime drains.
pub async fn serve(socket: TcpListener, listener: Listener, runtime: Runtime) {
    net::serve(
        socket,
        listener,
        runtime,
        |why| format!("* BYE [UNAVAILABLE] {why}\r\n").into_bytes(),
        |accepted, listener, runtime| async move { drive(accepted, &listener, runtime).await },
    )
    .await;
}

/// One client's connection from greeting to close.
async fn drive(accepted: Accepted, listener: &Listener, runtime: Runtime) -> io::Result<()> {
    let Accepted {
        mut conn,
        peer,
        slot: _slot,
        tls_available,
    } = accepted;
    let (max_literal, command_timeout) = {
        let config = runtime.config().get();
        let limits = &config.raw.limits;
        (
            u32::try_from(limits.max_message_size).unwrap_or(u32::MAX),
            Duration::from_secs(limits.command_timeout_seconds.max(60)),
        )
    };
    let info = SessionInfo {
        peer,
        tls: listener.protocol.implicit_tls(),
        tls_available,
    };
    let mut session = Session::new(info, runtime.clone());
    let mut reader = Reader::new(max_literal);
    session.greeting();
    session.flush(&mut conn).await?;
    // The read buffer is given back while the session waits in IDLE (most of an idle
    // session's memory: 16 KiB of its 21) and taken again at the next read.
    let mut buf = Vec::new();
    while !session.closed() {
        let Some(input) = reader.next(session.logged_in()) else {
            if buf.is_empty() {
                buf = vec![0u8; READ_BUFFER];
            }
            let (timeout, stressable) = if session.logged_in() {
                (AUTHENTICATED_TIMEOUT, false)
            } else {
                (command_timeout, true)
            };
            // A silent session learns of its mailbox's suspension too, within a second.
            let login = session.logged_in_as();
            let login = login.as_ref().map(|(a, h)| (a.as_str(), h.as_str()));
            // A draining server says BYE between commands; one half-sent (an APPEND's
            // literal) is read and run first.
            let between = !reader.mid_command();
            let read = tokio::select! {
                biased;
                () = runtime.revoked(login, LoginProtocol::Imap) => Err(Ended::Revoked),
                () = runtime.stopping(), if between => Err(Ended::Stopping),
                read = runtime.read_idle(&mut conn, &mut buf, timeout, stressable) => Ok(read),
            };
            match read {
                Ok(Some(Ok(0)) | Some(Err(_))) => break,
                Ok(Some(Ok(n))) => reader.enqueue(&buf[..n]),
                Ok(None) => {
                    session.send("* BYE autologout: idle for too long\r\n");
                    let _ = session.flush(&mut conn).await;
                    break;
                }
                Err(Ended::Revoked) => {
                    session.end_revoked();
                    let _ = session.flush(&mut conn).await;
                    break;
                }
                Err(Ended::Stopping) => {
                    session.send(SHUTTING_DOWN);
                    let _ = session.flush(&mut conn).await;
                    break;
                }
            }
            continue;
        };
        let mut step = session.run(input, &mut conn).await?;
        loop {
            session.flush(&mut conn).await?;
            step = match step {
                Step::Next => break,
                Step::Close => {
                    let _ = tokio::io::AsyncWriteExt::shutdown(&mut conn).await;
                    return Ok(());
                }
                Step::StartTls(config) => {
                    if !conn.start_tls(config).await {
                        return Ok(());
                    }
                    session.tls_started();
                    reader.reset();
                    break;
                }
                Step::Compress => {
                    conn.start_deflate();
                    // What the client sent before the OK was not compressed, and RFC 4978 says
                    // to wait for it: dropped, as after STARTTLS, rather than inflated.
                    reader.reset();
                    break;
                }
                Step::SaslData => match sasl_line(&mut conn, &mut reader, command_timeout).await? {
                    Ok(data) => session.authenticate_data(data).await,
                    Err(bye) => {
                        session.send(format!("{bye}\r\n"));
                        Step::Close
                    }
                },
                Step::Idle => {
                    buf = Vec::new();
                    idle(&mut conn, &mut reader, &mut session, &runtime).await?
                }
            };
        }
    }
    let _ = tokio::io::AsyncWriteExt::shutdown(&mut conn).await;
    Ok(())
}

/// Reads AUTHENTICATE's response line: `Ok(None)` when the client cancels, `Err(bye)` when
/// the line is over its limit or does not come; an error when the client leaves.
async fn sasl_line(
    conn: &mut Conn,
    reader: &mut Reader,
    timeout: Duration,
) -> io::Result<Result<Option<Vec<u8>>, String>> {
    let mut buf = vec![0u8; 4096];
    loop {
        if let Some(line) = reader.sasl_line() {
            return Ok(line);
        }
        let Ok(read) = tokio::time::timeout(timeout, conn.read(&mut buf)).await else {
            return Ok(Err("* BYE autologout: no authentication response".into()));
        };
        let n = read?;
        if n == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        reader.enqueue(&buf[..n]);
    }
}

/// IDLE's wait: the client's DONE, changes to the folder (sent at once), autologout, the
/// account's suspension (looked at every second) and the server's drain.
async fn idle(
    conn: &mut Conn,
    reader: &mut Reader,
    session: &mut Session,
    runtime: &Runtime,
) -> io::Result<Step> {
    let mut buf = vec![0u8; 1024];
    let deadline = tokio::time::Instant::now() + AUTHENTICATED_TIMEOUT;
    // One clock for the whole IDLE: mail arriving more often than once a second must not keep
    // putting the suspension check off.
    let mut check = tokio::time::interval(REVOCATION_CHECK);
    check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        // DONE may already be buffered.
        if let Some(done) = reader.idle_done() {
            return Ok(session.idle_end(done).await);
        }
        let changed = async {
            match session.changes() {
                Some(rx) => rx.changed().await.is_ok(),
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            read = conn.read(&mut buf) => {
                let n = read?;
                if n == 0 {
                    return Ok(Step::Close);
                }
                reader.enqueue(&buf[..n]);
            }
            ok = changed => {
                if ok {
                    session.idle_changed().await;
                    session.flush(conn).await?;
                }
            }
            () = tokio::time::sleep_until(deadline) => {
                session.send("* BYE autologout: idle for too long\r\n");
                return Ok(Step::Close);
            }
            () = runtime.stopping() => {
                session.send(SHUTTING_DOWN);
                return Ok(Step::Close);
            }
            // A config reload may have suspended the account: looked at every second.
            _ = check.tick() => {
                if session.revoked() {
                    session.end_revoked();
                    return Ok(Step::Close);
                }
            }
        }
    }
}
