//! The I/O around a POP3 session: TLS, logins with the failed-login limit, the maildrop lock,
//! reading messages and the UPDATE state.
use std::{collections::VecDeque, io, time::Duration};

use tokio::{io::AsyncWriteExt, net::TcpListener};

use super::session::{OpenFailure, Output, Session};
use crate::{
    auth,
    config::{Listener, LoginProtocol},
    net::{self, Accepted, Conn},
    runtime::Runtime,
};

/// Serves POP3 on `socket` forever.
pub async fn serve(socket: TcpListener, listener: Listener, runtime: Runtime) {
    net::serve(
        socket,
        listener,
        runtime,
        |why| format!("-ERR [SYS/TEMP] {why}\r\n").into_bytes(),
        session,
    )
    .await;
}

/// Releases the maildrop lock when the session ends, however it ends.
struct Lock {
    runtime: Runtime,
    mailbox: Option<String>,
    /// This session's name as a holder of the store's maildrop lock (seen by every replica).
    holder: String,
    /// The hash of the password it logged in with (its own or an app password's).
    password_hash: String,
}

impl Lock {
    /// Whether the logged-in mailbox was suspended, removed, given another password, or the
    /// app password it logged in with was revoked.
    fn revoked(&self) -> bool {
        self.mailbox.as_ref().is_some_and(|mailbox| {
            self.runtime
                .config()
                .get()
                .still_serves(mailbox, &self.password_hash, LoginProtocol::Pop3)
                .is_none()
        })
    }
}

impl Lock {
    /// Renews the store's lease on the maildrop; false when another replica has it now.
    async fn renew(&self) -> bool {
        let Some(mailbox) = self.mailbox.clone() else {
            return true;
        };
        let (store, holder) = (self.runtime.store().clone(), self.holder.clone());
        let until = now() + MAILDROP_LEASE_SECONDS;
        // A store that cannot say (the database away) has not given the lock: the session is
        // refused or ended rather than let two sessions change one maildrop.
        tokio::task::spawn_blocking(move || store.lock_maildrop(&mailbox, &holder, until))
            .await
            .ok()
            .and_then(Result::ok)
            .unwrap_or(false)
    }
}

impl Drop for Lock {
    fn drop(&mut self) {
        if let Some(mailbox) = self.mailbox.take() {
            self.runtime
                .pop3_locks()
                .lock()
                .expect("lock set")
                .remove(&mailbox);
            let (store, holder) = (self.runtime.store().clone(), self.holder.clone());
            // Given back at once, not left to expire (an error leaves it to expire).
            tokio::task::spawn_blocking(move || store.unlock_maildrop(&mailbox, &holder));
        }
    }
}

/// How long the store's maildrop lock lasts without renewal: a replica that dies holding one
/// frees it after this. Renewed every [`MAILDROP_RENEWAL`] while the session lives.
const MAILDROP_LEASE_SECONDS: i64 = 90;
const MAILDROP_RENEWAL: Duration = Duration::from_secs(30);

fn now() -> i64 {
    (crate::store::unix_nanos() / 1_000_000_000) as i64
}

/// What a session of a mailbox suspended, removed, re-passworded or revoked is told.
const REVOKED: &[u8] =
    b"-ERR [AUTH] this account was suspended or removed, or the password used was changed or revoked\r\n";

/// What a session whose maildrop lock another replica took (it could not renew it in time) is
/// told; nothing marked is deleted.
const LOCK_LOST: &[u8] =
    b"-ERR [IN-USE] the maildrop lock was lost; reconnect (nothing was deleted)\r\n";

/// What a draining server tells a session waiting for a command (RFC 3206's SYS/TEMP: try
/// again later); nothing marked for deletion is deleted.
const SHUTTING_DOWN: &[u8] =
    b"-ERR [SYS/TEMP] shutting down for a restart, please reconnect; nothing was deleted\r\n";

async fn session(accepted: Accepted, listener: Listener, runtime: Runtime) -> io::Result<()> {
    let Accepted {
        mut conn,
        peer,
        tls_available,
        slot,
    } = accepted;
    let config = runtime.config().get();
    let (mut session, greeting) = Session::new(
        &config.raw.hostname,
        listener.protocol.implicit_tls(),
        tls_available,
        config.raw.security.allow_plaintext_auth,
    );
    let mut lock = Lock {
        runtime: runtime.clone(),
        mailbox: None,
        holder: format!("{}-{}", std::process::id(), crate::outbound::new_id()),
        password_hash: String::new(),
    };
    let mut driver = Driver {
        runtime: runtime.clone(),
        peer,
        out: Vec::new(),
    };
    driver
        .handle(&mut conn, &mut session, &mut lock, vec![greeting])
        .await?;
    let configured = Duration::from_secs(config.raw.limits.command_timeout_seconds.max(600));
    let mut buf = vec![0u8; 8192];
    // When the maildrop lock was last renewed (it is taken at login, see `Driver::open`).
    let mut renewed = tokio::time::Instant::now();
    while !session.closed() {
        let stressable = !session.in_transaction();
        // A silent session learns of its mailbox's suspension too, within a second.
        let login = lock
            .mailbox
            .clone()
            .map(|m| (m, lock.password_hash.clone()));
        // Revoked or draining: nothing marked is deleted (the session never reaches UPDATE),
        // and the maildrop's lock goes with it.
        let read = tokio::select! {
            biased;
            () = runtime.revoked(login.as_ref().map(|(a, h)| (a.as_str(), h.as_str())), LoginProtocol::Pop3) => Err(REVOKED),
            () = runtime.stopping() => Err(SHUTTING_DOWN),
            () = tokio::time::sleep_until(renewed + MAILDROP_RENEWAL), if lock.mailbox.is_some() => {
                if lock.renew().await {
                    renewed = tokio::time::Instant::now();
                    continue;
                }
                Err(LOCK_LOST)
            }
            read = runtime.read_idle(&mut conn, &mut buf, configured, stressable) => Ok(read),
        };
        let n = match read {
            Ok(Some(Ok(0)) | Some(Err(_))) => break,
            Ok(Some(Ok(n))) => n,
            Ok(None) => {
                let _ = conn
                    .write_all(b"-ERR autologout: idle for too long\r\n")
                    .await;
                break;
            }
            Err(why) => {
                let _ = conn.write_all(why).await;
                break;
            }
        };
        if lock.revoked() {
            let _ = conn.write_all(REVOKED).await;
            break;
        }
        let outputs = session.feed(&buf[..n]);
        driver
            .handle(&mut conn, &mut session, &mut lock, outputs)
            .await?;
    }
    // A dropped connection leaves the maildrop as it was: deletions happen only in UPDATE.
    let _ = conn.shutdown().await;
    drop(lock);
    drop(slot);
    Ok(())
}

struct Driver {
    runtime: Runtime,
    peer: std::net::IpAddr,
    out: Vec<u8>,
}

impl Driver {
    async fn handle(
        &mut self,
        conn: &mut Conn,
        session: &mut Session,
        lock: &mut Lock,
        outputs: Vec<Output>,
    ) -> io::Result<()> {
        let mut queue: VecDeque<Output> = outputs.into();
        while let Some(output) = queue.pop_front() {
            // A pipelined batch (RETR 1..n, DELE 1..n, QUIT) is checked before each message
            // and before UPDATE: a revocation that lands mid-batch stops it there, and nothing
            // marked is deleted.
            if matches!(output, Output::Retrieve { .. } | Output::Commit(_)) && lock.revoked() {
                self.out.extend_from_slice(REVOKED);
                self.flush(conn).await?;
                return Err(io::Error::new(
                    io::ErrorKind::PermissionDenied,
                    "the login was revoked",
                ));
            }
            match output {
                Output::Send(bytes) => self.out.extend_from_slice(&bytes),
                Output::Close => {
                    self.flush(conn).await?;
                    return Ok(());
                }
                Output::StartTls => {
                    self.flush(conn).await?;
                    let ok = match self.runtime.tls().get() {
                        Some(config) => conn.start_tls(config).await,
                        None => false,
                    };
                    queue.extend(session.tls_started(ok));
                }
                Output::Login { username, password } => {
                    let result = self.open(&username, &password, lock).await;
                    queue.extend(session.opened(result));
                }
                Output::Retrieve { message, top } => {
                    let Some(mailbox) = lock.mailbox.clone() else {
                        continue;
                    };
                    let store = self.runtime.store().clone();
                    let read = tokio::task::spawn_blocking(move || {
                        store.read(&mailbox, crate::store::INBOX, &message)
                    })
                    .await
                    .map_err(io::Error::other)?;
                    match read {
                        Ok(Some(bytes)) => self
                            .out
                            .extend_from_slice(&Session::format_message(&bytes, top)),
                        Ok(None) => self
                            .out
                            .extend_from_slice(b"-ERR [SYS/TEMP] the message is gone\r\n"),
                        Err(_) => self
                            .out
                            .extend_from_slice(b"-ERR [SYS/TEMP] cannot read the message\r\n"),
                    }
                    // Large messages go out as they are produced, not all at the end.
                    if self.out.len() > 256 * 1024 {
                        self.flush(conn).await?;
                    }
                }
                Output::Commit(doomed) => {
                    let result = match lock.mailbox.clone() {
                        Some(mailbox) if !doomed.is_empty() => {
                            let store = self.runtime.store().clone();
                            let n = doomed.len();
                            tokio::task::spawn_blocking(move || {
                                store.expunge(&mailbox, crate::store::INBOX, &doomed)
                            })
                            .await
                            .map_err(io::Error::other)?
                            .map(|()| n)
                            .map_err(|_| ())
                        }
                        _ => Ok(0),
                    };
                    queue.extend(session.committed(result));
                }
            }
        }
        self.flush(conn).await
    }

    async fn flush(&mut self, conn: &mut Conn) -> io::Result<()> {
        if !self.out.is_empty() {
            conn.write_all(&self.out).await?;
            conn.flush().await?;
            self.out.clear();
        }
        Ok(())
    }

    /// Logs in, takes the maildrop lock and lists the INBOX.
    async fn open(
        &self,
        username: &str,
        password: &str,
        lock: &mut Lock,
    ) -> Result<(u32, Vec<crate::store::MessageMeta>), OpenFailure> {
        let config = self.runtime.config().get();
        let limiter = self.runtime.auth_limiter();
        let login = match auth::limited_login(
            limiter,
            &config,
            self.peer,
            username,
            password,
            LoginProtocol::Pop3,
            "pop3",
        )
        .await
        {
            Ok(login) => login,
            Err(auth::Refused::TooManyFailures) => return Err(OpenFailure::TooManyFailures),
            Err(auth::Refused::Invalid(_)) => return Err(OpenFailure::Invalid),
        };
        let mailbox = login.address;
        if !self
            .runtime
            .pop3_locks()
            .lock()
            .expect("lock set")
            .insert(mailbox.clone())
        {
            return Err(OpenFailure::InUse);
        }
        lock.mailbox = Some(mailbox.clone());
        lock.password_hash = login.credential;
        // Every replica's sessions: the store's lock (the embedded store's is the one above).
        if !lock.renew().await {
            lock.mailbox = None;
            self.runtime
                .pop3_locks()
                .lock()
                .expect("lock set")
                .remove(&mailbox);
            return Err(OpenFailure::InUse);
        }
        let store = self.runtime.store().clone();
        let listed = tokio::task::spawn_blocking(move || store.inbox(&mailbox)).await;
        match listed {
            Ok(Ok(index)) => Ok((index.uid_validity, index.messages)),
            _ => {
                if let Some(m) = lock.mailbox.take() {
                    self.runtime
                        .pop3_locks()
                        .lock()
                        .expect("lock set")
                        .remove(&m);
                }
                Err(OpenFailure::Unavailable)
            }
        }
    }
}
