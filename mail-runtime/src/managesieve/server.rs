//! The I/O around a ManageSieve session: STARTTLS, logins with the failed-login limit, and the
//! store's script commands. A login is an IMAP login (the same passwords and app passwords
//! that open IMAP manage the mailbox's scripts), and ends when the mailbox may no longer use
//! IMAP.
use std::{collections::VecDeque, io, time::Duration};

use tokio::{io::AsyncWriteExt, net::TcpListener};

use super::session::{MAX_SCRIPTS, Output, Request, Session, check, no, ok, string};
use crate::{
    auth,
    config::{Listener, LoginProtocol},
    net::{self, Accepted, Conn},
    runtime::Runtime,
    store::StoreError,
};

/// Serves ManageSieve on `socket` forever.
pub async fn serve(socket: TcpListener, listener: Listener, runtime: Runtime) {
    net::serve(
        socket,
        listener,
        runtime,
        |why| format!("BYE \"{why}\"\r\n").into_bytes(),
        session,
    )
    .await;
}

const REVOKED: &[u8] = b"BYE \"this account was suspended or removed, or the password used was changed or revoked\"\r\n";

struct Login {
    mailbox: String,
    hash: String,
}

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
        tls_available && !listener.protocol.implicit_tls(),
        config.raw.security.allow_plaintext_auth,
    );
    let mut login: Option<Login> = None;
    let mut out = Vec::new();
    handle(
        &runtime,
        peer,
        &mut conn,
        &mut session,
        &mut login,
        &mut out,
        vec![greeting],
    )
    .await?;
    let configured = Duration::from_secs(config.raw.limits.command_timeout_seconds.max(600));
    let mut buf = vec![0u8; 8192];
    while !session.closed() {
        let held = login
            .as_ref()
            .map(|l| (l.mailbox.as_str(), l.hash.as_str()));
        // Draining: RFC 5804's TRYLATER; a script half-uploaded is not stored.
        let read = tokio::select! {
            biased;
            () = runtime.revoked(held, LoginProtocol::Imap) => Err(REVOKED),
            () = runtime.stopping() => Err(&b"BYE (TRYLATER) \"shutting down for a restart, please reconnect\"\r\n"[..]),
            read = runtime.read_idle(&mut conn, &mut buf, configured, !session.authenticated()) => Ok(read),
        };
        let n = match read {
            Ok(Some(Ok(0)) | Some(Err(_))) => break,
            Ok(Some(Ok(n))) => n,
            Ok(None) => {
                let _ = conn.write_all(b"BYE \"idle for too long\"\r\n").await;
                break;
            }
            Err(why) => {
                let _ = conn.write_all(why).await;
                break;
            }
        };
        let outputs = session.feed(&buf[..n]);
        handle(
            &runtime,
            peer,
            &mut conn,
            &mut session,
            &mut login,
            &mut out,
            outputs,
        )
        .await?;
    }
    let _ = conn.shutdown().await;
    drop(slot);
    Ok(())
}

async fn handle(
    runtime: &Runtime,
    peer: std::net::IpAddr,
    conn: &mut Conn,
    session: &mut Session,
    login: &mut Option<Login>,
    out: &mut Vec<u8>,
    outputs: Vec<Output>,
) -> io::Result<()> {
    let mut queue: VecDeque<Output> = outputs.into();
    while let Some(output) = queue.pop_front() {
        match output {
            Output::Send(bytes) => out.extend_from_slice(&bytes),
            Output::Close => break,
            Output::StartTls => {
                flush(conn, out).await?;
                let ok = match runtime.tls().get() {
                    Some(config) => conn.start_tls(config).await,
                    None => false,
                };
                queue.extend(session.tls_started(ok));
                queue.extend(session.resume());
            }
            Output::Login { username, password } => {
                let result = authenticate(runtime, peer, &username, &password).await;
                let reply = match result {
                    Ok(l) => {
                        tracing::info!(mailbox = %l.mailbox, "managesieve login");
                        *login = Some(l);
                        session.logged_in(Ok(()))
                    }
                    Err(why) => session.logged_in(Err(why)),
                };
                queue.extend(reply);
                queue.extend(session.resume());
            }
            Output::Request(request) => {
                let Some(l) = login.as_ref() else {
                    continue;
                };
                // A revocation that lands between reads stops the next command.
                if runtime
                    .config()
                    .get()
                    .still_serves(&l.mailbox, &l.hash, LoginProtocol::Imap)
                    .is_none()
                {
                    out.extend_from_slice(REVOKED);
                    flush(conn, out).await?;
                    return Err(io::Error::new(
                        io::ErrorKind::PermissionDenied,
                        "the login was revoked",
                    ));
                }
                let store = runtime.store().clone();
                let mailbox = l.mailbox.clone();
                let reply = tokio::task::spawn_blocking(move || answer(&*store, &mailbox, request))
                    .await
                    .unwrap_or_else(|_| no(Some("TRYLATER"), "the server failed"));
                out.extend_from_slice(&reply);
                queue.extend(session.resume());
            }
        }
    }
    flush(conn, out).await
}

async fn flush(conn: &mut Conn, out: &mut Vec<u8>) -> io::Result<()> {
    if !out.is_empty() {
        conn.write_all(out).await?;
        conn.flush().await?;
        out.clear();
    }
    Ok(())
}

async fn authenticate(
    runtime: &Runtime,
    peer: std::net::IpAddr,
    username: &str,
    password: &str,
) -> Result<Login, &'static str> {
    let config = runtime.config().get();
    let limiter = runtime.auth_limiter();
    match auth::limited_login(
        limiter,
        &config,
        peer,
        username,
        password,
        LoginProtocol::Imap,
        "managesieve",
    )
    .await
    {
        Ok(login) => Ok(Login {
            mailbox: login.address,
            hash: login.credential,
        }),
        Err(auth::Refused::TooManyFailures) => {
            Err("too many failed logins from your address; try again later")
        }
        Err(auth::Refused::Invalid(_)) => Err("authentication failed"),
    }
}

/// Carries out one script command against the store; the reply to send.
fn answer(store: &dyn crate::store::Store, mailbox: &str, request: Request) -> Vec<u8> {
    let unavailable = |err: StoreError| {
        tracing::warn!(mailbox, error = %err, "managesieve: the store failed");
        no(Some("TRYLATER"), "the script store is unavailable")
    };
    let valid = crate::store::maildir::valid_script_name;
    let scripts = match store.sieve_scripts(mailbox) {
        Ok(s) => s,
        Err(err) => return unavailable(err),
    };
    let room = |name: &str, size: u64| -> Option<Vec<u8>> {
        if size > kubemail_sieve::MAX_SCRIPT_BYTES as u64 {
            return Some(no(
                Some("QUOTA/MAXSIZE"),
                &format!(
                    "scripts are at most {} bytes",
                    kubemail_sieve::MAX_SCRIPT_BYTES
                ),
            ));
        }
        if !scripts.names.iter().any(|n| n == name) && scripts.names.len() >= MAX_SCRIPTS {
            return Some(no(
                Some("QUOTA/MAXSCRIPTS"),
                &format!("a mailbox keeps at most {MAX_SCRIPTS} scripts"),
            ));
        }
        None
    };
    match request {
        Request::HaveSpace { name, size } => {
            if !valid(&name) {
                return no(None, "not a script name");
            }
            room(&name, size).unwrap_or_else(|| ok("there is room"))
        }
        Request::Put { name, script } => {
            if !valid(&name) {
                return no(None, "not a script name");
            }
            if let Some(refusal) = room(&name, script.len() as u64) {
                return refusal;
            }
            // A script that does not compile is never stored: nothing half-runs later.
            let checked = check(&script);
            if !checked.starts_with(b"OK") {
                return checked;
            }
            match store.put_sieve_script(mailbox, &name, &script) {
                Ok(()) => ok("stored"),
                Err(err) => unavailable(err),
            }
        }
        Request::List => {
            let mut reply = String::new();
            for name in &scripts.names {
                reply.push_str(&string(name));
                if scripts.active.as_deref() == Some(name.as_str()) {
                    reply.push_str(" ACTIVE");
                }
                reply.push_str("\r\n");
            }
            let mut reply = reply.into_bytes();
            reply.extend_from_slice(&ok("listed"));
            reply
        }
        Request::SetActive { name } => {
            let target = (!name.is_empty()).then_some(name.as_str());
            if let Some(name) = target {
                // Only a script that compiles now becomes active.
                match store.sieve_script(mailbox, name) {
                    Ok(Some(text)) => {
                        if let Err(err) = kubemail_sieve::compile(&text) {
                            return no(None, &err.to_string());
                        }
                    }
                    Ok(None) => return no(Some("NONEXISTENT"), "there is no script of that name"),
                    Err(err) => return unavailable(err),
                }
            }
            match store.set_active_sieve_script(mailbox, target) {
                Ok(()) => ok("active script set"),
                Err(StoreError::NoSuchFolder(_)) => {
                    no(Some("NONEXISTENT"), "there is no script of that name")
                }
                Err(err) => unavailable(err),
            }
        }
        Request::Get { name } => match store.sieve_script(mailbox, &name) {
            Ok(Some(text)) => {
                let mut reply = format!("{{{}}}\r\n{text}\r\n", text.len()).into_bytes();
                reply.extend_from_slice(&ok("got it"));
                reply
            }
            Ok(None) => no(Some("NONEXISTENT"), "there is no script of that name"),
            Err(err) => unavailable(err),
        },
        Request::Delete { name } => {
            if scripts.active.as_deref() == Some(name.as_str()) {
                return no(Some("ACTIVE"), "the active script cannot be deleted");
            }
            match store.delete_sieve_script(mailbox, &name) {
                Ok(()) => ok("deleted"),
                Err(StoreError::NoSuchFolder(_) | StoreError::InvalidName(_)) => {
                    no(Some("NONEXISTENT"), "there is no script of that name")
                }
                Err(err) => unavailable(err),
            }
        }
        Request::Rename { from, to } => {
            if !valid(&to) {
                return no(None, "not a script name");
            }
            match store.rename_sieve_script(mailbox, &from, &to) {
                Ok(()) => ok("renamed"),
                Err(StoreError::NoSuchFolder(_) | StoreError::InvalidName(_)) => {
                    no(Some("NONEXISTENT"), "there is no script of that name")
                }
                Err(StoreError::FolderExists(_)) => {
                    no(Some("ALREADYEXISTS"), "a script of that name exists")
                }
                Err(err) => unavailable(err),
            }
        }
    }
}
