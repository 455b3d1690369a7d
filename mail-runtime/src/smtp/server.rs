//! The I/O around an SMTP session: accept, connection limits, PROXY header, implicit TLS and
//! STARTTLS, timeouts, spooling and delivery. The protocol itself lives in `session`.
use std::{collections::VecDeque, io, time::Duration};

use tokio::{io::AsyncWriteExt, net::TcpListener};

use super::{
    Reply, checks, policy,
    session::{Delivered, LOGIN_PROTOCOL, LoginFailure, Output, Session, SessionInfo},
};
use crate::{
    auth,
    config::Listener,
    net::{self, Accepted, Conn},
    runtime::Runtime,
    store::{SpoolWriter, SpooledMessage, StoreError},
};

/// Serves SMTP on `socket` forever.
pub async fn serve(socket: TcpListener, listener: Listener, runtime: Runtime) {
    net::serve(
        socket,
        listener,
        runtime,
        |why| Reply::new(421, "4.7.0", why).to_bytes(),
        session,
    )
    .await;
}

async fn session(accepted: Accepted, listener: Listener, runtime: Runtime) -> io::Result<()> {
    let Accepted {
        mut conn,
        peer,
        tls_available,
        slot,
    } = accepted;
    let info = SessionInfo {
        listener: listener.protocol,
        peer,
        tls: listener.protocol.implicit_tls(),
        tls_available,
    };
    let (mut session, greeting) =
        Session::new(info, runtime.config().get(), runtime.store().clone());
    session.set_rate_limiter(runtime.outbound().rates.clone());
    session.set_greylist(runtime.greylist().clone());
    if session.screened() && !screen_before_banner(&runtime, &mut conn, &mut session, peer).await {
        let _ = conn.shutdown().await;
        drop(slot);
        return Ok(());
    }
    let mut driver = Driver {
        runtime: runtime.clone(),
        spool: None,
        spool_error: None,
        out: Vec::new(),
        peer_ip: peer,
        mx: listener.protocol == crate::config::ListenerProtocol::Smtp,
    };
    driver
        .handle(&mut conn, &mut session, VecDeque::from([greeting]))
        .await?;
    let configured = Duration::from_secs(runtime.config().get().raw.limits.command_timeout_seconds);
    let mut buf = vec![0u8; 16 * 1024];
    while !session.closed() {
        // SMTP clients send without pause; under stress every session gets the short timeout.
        // A logged-in session learns of its mailbox's suspension within a second, silent or
        // in the middle of a message (which is then not delivered).
        // A draining server lets a transaction in flight finish, and says 421 between them
        // (RFC 5321 s3.8): the client sends the rest to another replica or retries later.
        let login = session.login();
        let at_rest = session.at_rest();
        let read = tokio::select! {
            biased;
            () = runtime.revoked(login.as_ref().map(|(a, h)| (a.as_str(), h.as_str())), LOGIN_PROTOCOL) => Err(Reply::new(
                421,
                "4.7.0",
                "this account was suspended or removed, or the password used was changed or revoked",
            )),
            () = runtime.stopping(), if at_rest => Err(Reply::new(
                421,
                "4.3.2",
                "shutting down for a restart, please try again",
            )),
            read = runtime.read_idle(&mut conn, &mut buf, configured, true) => Ok(read),
        };
        let n = match read {
            Ok(Some(Ok(0)) | Some(Err(_))) => break,
            Ok(Some(Ok(n))) => n,
            Ok(None) => {
                let reply = Reply::new(421, "4.4.2", "timeout waiting for input, closing");
                let _ = conn.write_all(&reply.to_bytes()).await;
                break;
            }
            Err(reply) => {
                let _ = conn.write_all(&reply.to_bytes()).await;
                break;
            }
        };
        session.set_config(runtime.config().get());
        let outputs = session.feed(&buf[..n]);
        driver
            .handle(&mut conn, &mut session, outputs.into())
            .await?;
    }
    let _ = conn.shutdown().await;
    drop(slot);
    Ok(())
}

/// Before the banner, for a client from outside on port 25: its DNS lists, and the pause a
/// client must wait through in silence, both at once. False: it talked first and was refused.
async fn screen_before_banner(
    runtime: &Runtime,
    conn: &mut Conn,
    session: &mut Session,
    peer: std::net::IpAddr,
) -> bool {
    use tokio::io::AsyncReadExt;
    let config = runtime.config().get();
    let inbound = &config.raw.inbound;
    let pause = Duration::from_millis(u64::from(inbound.greet_pause_millis));
    let lists = async {
        if inbound.dnsbl.is_empty() {
            return None;
        }
        let resolver = runtime.resolvers().get(&config.nameservers).ok()?;
        super::screen::dns_lists(&resolver, &inbound.dnsbl, inbound.dnsbl_threshold, peer).await
    };
    let talked = async {
        if pause.is_zero() {
            return false;
        }
        let mut byte = [0u8; 1];
        matches!(
            tokio::time::timeout(pause, conn.read(&mut byte)).await,
            Ok(Ok(n)) if n > 0
        )
    };
    let (listed, talked) = tokio::join!(lists, talked);
    if talked {
        crate::metrics::refused("early-talker");
        let reply = Reply::new(554, "5.5.1", "you talked before the greeting; goodbye");
        let _ = conn.write_all(&reply.to_bytes()).await;
        return false;
    }
    session.set_listed(listed);
    true
}

struct Driver {
    runtime: Runtime,
    spool: Option<SpoolWriter>,
    spool_error: Option<StoreError>,
    out: Vec<u8>,
    peer_ip: std::net::IpAddr,
    /// Port 25: mail from outside, whose senders are checked.
    mx: bool,
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
                    match self.runtime.store().spool() {
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
                    crate::metrics::refused("content");
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
        match self.runtime.tls().get() {
            Some(config) => conn.start_tls(config).await,
            None => false,
        }
    }

    async fn check_login(
        &self,
        username: &str,
        password: &str,
    ) -> Result<auth::Login, LoginFailure> {
        let config = self.runtime.config().get();
        let limiter = self.runtime.auth_limiter();
        auth::limited_login(
            limiter,
            &config,
            self.peer_ip,
            username,
            password,
            LOGIN_PROTOCOL,
            "smtp",
        )
        .await
        .map_err(|refused| match refused {
            auth::Refused::TooManyFailures => LoginFailure::TooManyFailures,
            auth::Refused::Invalid(_) => LoginFailure::Invalid,
        })
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
        let runtime = self.runtime.clone();
        let config = runtime.config().get();
        let login = session.login();
        let count = delivery.mailboxes.len();
        let filtered = self.mx && !delivery.trusted;
        let verify = filtered && config.raw.inbound.verify && !delivery.mailboxes.is_empty();
        let scanned = |scan_submission: bool| scan_submission || filtered;
        let clamd = config
            .raw
            .inbound
            .clamd
            .as_ref()
            .filter(|c| scanned(c.scan_submission));
        let rspamd = config.raw.inbound.rspamd.as_ref();
        let rspamd = rspamd.filter(|r| scanned(r.scan_submission));
        // Each trip to a blocking thread is two thread wake-ups, most of the CPU a message costs
        // on a virtual machine: with no check to wait for over the network, the message is
        // synced, checked and stored in one trip; otherwise in one trip before the checks and
        // one after.
        if !verify && clamd.is_none() && rspamd.is_none() {
            let result = tokio::task::spawn_blocking(move || {
                let message = admit(spool, login, &delivery, &config)?;
                let stored =
                    store_message(&runtime, &config, delivery, message, Checked::default());
                Ok(stored)
            })
            .await;
            return outcome(result, count);
        }
        let admitted = {
            let (delivery, config) = (delivery.clone(), config.clone());
            tokio::task::spawn_blocking(move || admit(spool, login, &delivery, &config)).await
        };
        let message = match admitted {
            Ok(Ok(m)) => m,
            Ok(Err(refused)) => return refused,
            Err(join) => {
                return Delivered::Failed(StoreError::Io(io::Error::other(join.to_string())));
            }
        };
        // Mail from outside, on port 25: SPF, DKIM and DMARC, before anything is stored.
        let mut results_header = None;
        if verify {
            let checked = match (
                tokio::fs::read(&message.path).await,
                runtime.resolvers().get(&config.nameservers),
            ) {
                (Ok(bytes), Ok(resolver)) => {
                    checks::check(
                        &resolver,
                        &config.raw.hostname,
                        self.peer_ip,
                        &delivery.helo,
                        &delivery.from,
                        &bytes,
                        config.raw.inbound.reject_on_dmarc_policy,
                    )
                    .await
                }
                _ => None,
            };
            if let Some(verdict) = checked {
                if let Some(why) = verdict.refuse {
                    let _ = std::fs::remove_file(&message.path);
                    return Delivered::Refused(Reply::new(550, "5.7.1", why), "dmarc");
                }
                results_header = Some(verdict.header);
            }
        }
        // clamd, for mail from outside (and, by a setting, from logged-in users too).
        if let Some(clamd) = clamd {
            let timeout = Duration::from_secs(u64::from(clamd.timeout_seconds));
            let started = std::time::Instant::now();
            let verdict = super::scan::clamd(&clamd.address, &message.path, timeout).await;
            crate::metrics::filter_duration("clamd", started.elapsed().as_secs_f64());
            crate::metrics::filter_verdict(
                "clamd",
                match &verdict {
                    Ok(super::scan::Verdict::Clean) => "clean",
                    Ok(super::scan::Verdict::Infected(_)) => "infected",
                    Err(_) => "failed",
                },
            );
            match verdict {
                Ok(super::scan::Verdict::Clean) => {}
                Ok(super::scan::Verdict::Infected(name)) => {
                    let _ = std::fs::remove_file(&message.path);
                    return Delivered::Refused(
                        Reply::new(
                            554,
                            "5.7.1",
                            format!("the message contains malware: {name}"),
                        ),
                        "malware",
                    );
                }
                Err(why) => {
                    if let Some(refused) = scanner_failed(
                        "virus scanner",
                        &why,
                        clamd.accept_on_failure,
                        &message.path,
                    ) {
                        return refused;
                    }
                }
            }
        }
        // rspamd scores mail from outside (and, by a setting, from logged-in users too).
        let mut spam = None;
        let mut checked_for_spam = false;
        if let Some(rspamd) = rspamd {
            let timeout = Duration::from_secs(u64::from(rspamd.timeout_seconds));
            let checked = match tokio::fs::read(&message.path).await {
                Ok(bytes) => {
                    let mut envelope = vec![
                        ("IP", self.peer_ip.to_string()),
                        ("Helo", delivery.helo.clone()),
                        ("From", delivery.from.clone()),
                        ("Queue-Id", session.queue_id().to_string()),
                    ];
                    for rcpt in delivery.mailboxes.iter().chain(&delivery.remote) {
                        envelope.push(("Rcpt", rcpt.clone()));
                    }
                    if let Some((user, _)) = session.login() {
                        envelope.push(("User", user));
                    }
                    let started = std::time::Instant::now();
                    let checked =
                        super::rspamd::check(&rspamd.url, &envelope, bytes, timeout).await;
                    crate::metrics::filter_duration("rspamd", started.elapsed().as_secs_f64());
                    checked
                }
                Err(e) => Err(format!("cannot read the spooled message: {e}")),
            };
            crate::metrics::filter_verdict(
                "rspamd",
                checked.as_ref().map_or("failed", |c| c.action.as_str()),
            );
            match checked {
                Ok(checked) => {
                    let refusal = match checked.action.as_str() {
                        "reject" => Some(Reply::new(
                            550,
                            "5.7.1",
                            checked
                                .message
                                .clone()
                                .unwrap_or_else(|| "spam message rejected".into()),
                        )),
                        "soft reject" => Some(Reply::new(
                            451,
                            "4.7.1",
                            checked
                                .message
                                .clone()
                                .unwrap_or_else(|| "try again later".into()),
                        )),
                        "greylist" => Some(Reply::new(
                            451,
                            "4.7.1",
                            "greylisted by the content filter, try again later",
                        )),
                        _ => None,
                    };
                    if let Some(reply) = refusal {
                        let _ = std::fs::remove_file(&message.path);
                        return Delivered::Refused(reply, "spam");
                    }
                    spam = Some(crate::sieve::Spam {
                        score: checked.score,
                        marked: checked.is_spam(),
                    });
                    checked_for_spam = true;
                    let header = checked.header();
                    results_header = Some(match results_header {
                        Some(before) => before + &header,
                        None => header,
                    });
                }
                Err(why) => {
                    if let Some(refused) =
                        scanner_failed("spam filter", &why, rspamd.accept_on_failure, &message.path)
                    {
                        return refused;
                    }
                }
            }
        }
        let checked = Checked {
            results_header,
            spam,
            checked_for_spam,
        };
        let result = tokio::task::spawn_blocking(move || {
            Ok(store_message(&runtime, &config, delivery, message, checked))
        })
        .await;
        outcome(result, count)
    }
}

/// What the checks over the network found, for the stored message.
#[derive(Debug, Default)]
struct Checked {
    /// Authentication-Results and the spam filter's fields, put on top of the message.
    results_header: Option<String>,
    spam: Option<crate::sieve::Spam>,
    checked_for_spam: bool,
}

/// Syncs the spooled message and reads its header back, then the refusals that come before
/// anything is stored: a mailbox suspended (or given a new password) while its message was on
/// the wire, a loop, a logged-in user writing someone else's address in From. A refused
/// message's spool file is removed. Runs on a blocking thread.
fn admit(
    spool: SpoolWriter,
    login: Option<(String, String)>,
    delivery: &super::session::Delivery,
    config: &crate::config::Config,
) -> Result<SpooledMessage, Delivered> {
    let message = spool.finish().map_err(Delivered::Failed)?;
    let refuse = |delivered: Delivered| {
        let _ = std::fs::remove_file(&message.path);
        Err(delivered)
    };
    if let Some((address, hash)) = &login
        && config.still_serves(address, hash, LOGIN_PROTOCOL).is_none()
    {
        return refuse(Delivered::Refused(
            Reply::new(
                421,
                "4.7.0",
                "this account was suspended or removed, or the password used was changed or revoked",
            ),
            "revoked",
        ));
    }
    let Some(head) = read_head(&message.path) else {
        return refuse(Delivered::Failed(StoreError::Io(io::Error::other(
            "the spooled message cannot be read back",
        ))));
    };
    if let Some(reply) = policy::loop_check(&head, config, &delivery.forwarded_by) {
        return refuse(Delivered::Refused(reply, "loop"));
    }
    // The mailbox as the config in force knows it (a reload may have moved its index).
    let user = delivery.user.and_then(|_| {
        let (address, hash) = login.as_ref()?;
        config.still_serves(address, hash, LOGIN_PROTOCOL)
    });
    if let Some(user) = user
        && let Some(reply) = policy::author_check(&head, config, user)
    {
        return refuse(Delivered::Refused(reply, "header-from"));
    }
    Ok(message)
}

/// Queues the message for its remote recipients and stores it for its local ones, through
/// their Sieve rules. Runs on a blocking thread.
fn store_message(
    runtime: &Runtime,
    config: &crate::config::Config,
    delivery: super::session::Delivery,
    message: SpooledMessage,
    checked: Checked,
) -> Result<crate::sieve::Delivered, StoreError> {
    let store = runtime.store();
    let outbound = runtime.outbound();
    if !delivery.remote.is_empty() {
        let envelope = outbound_envelope(config, &outbound.srs, &delivery);
        // Only mail from a logged-in user or a relay network is signed: a message from
        // outside that a mailbox forwards keeps its own authentication, not ours.
        let mut prefix = if delivery.trusted {
            sign(
                config,
                delivery.user_address.as_deref(),
                &delivery.from,
                &message.path,
            )
        } else {
            String::new()
        };
        for mailbox in &delivery.forwarded_by {
            prefix.push_str(&format!("Delivered-To: {mailbox}\r\n"));
        }
        let queued = outbound.enqueue(&envelope, prefix.as_bytes(), &message.path, message.size);
        if let Err(err) = queued {
            let _ = std::fs::remove_file(&message.path);
            return Err(err);
        }
    }
    if delivery.mailboxes.is_empty() {
        let _ = std::fs::remove_file(&message.path);
        return Ok(crate::sieve::Delivered::Done);
    }
    let message = match checked.results_header {
        Some(header) => prepend(
            &**store,
            header.as_bytes(),
            message,
            checked.checked_for_spam,
        )?,
        None => message,
    };
    // Each recipient's Sieve rules say where it goes (INBOX when there are none).
    crate::sieve::deliver(
        runtime,
        message,
        &delivery.mailboxes,
        &delivery.from,
        delivery.trusted.then_some(delivery.user_address.as_deref()),
        !delivery.remote.is_empty(),
        checked.spam,
    )
}

/// The session's answer for a stored (or refused) message; `count` recipients are counted as
/// accepted when it was stored.
fn outcome(
    result: Result<
        Result<Result<crate::sieve::Delivered, StoreError>, Delivered>,
        tokio::task::JoinError,
    >,
    count: usize,
) -> Delivered {
    match result {
        Ok(Ok(Ok(crate::sieve::Delivered::Done))) => {
            crate::metrics::message_accepted(count);
            Delivered::Ok
        }
        Ok(Ok(Ok(crate::sieve::Delivered::Rejected(reason)))) => {
            let reason: String = reason
                .chars()
                .map(|c| if c.is_control() { ' ' } else { c })
                .take(400)
                .collect();
            Delivered::Refused(Reply::new(550, "5.7.1", reason), "sieve")
        }
        Ok(Ok(Err(err))) => Delivered::Failed(err),
        Ok(Err(refused)) => refused,
        Err(join) => Delivered::Failed(StoreError::Io(io::Error::other(join.to_string()))),
    }
}

/// A content scanner that could not judge a message: it is taken unscanned when the MailDomain
/// says so (`None`), or the sender is asked to retry (the refusal; the spool file is removed).
fn scanner_failed(
    scanner: &str,
    why: &str,
    accept: bool,
    path: &std::path::Path,
) -> Option<Delivered> {
    if accept {
        tracing::warn!(scanner, error = %why, "a content scanner failed; the message is taken unscanned");
        return None;
    }
    tracing::warn!(scanner, error = %why, "a content scanner failed; the sender is asked to retry");
    let _ = std::fs::remove_file(path);
    Some(Delivered::Refused(
        Reply::new(
            451,
            "4.7.1",
            format!("the {scanner} is unavailable, try again later"),
        ),
        "scanner-unavailable",
    ))
}

/// The header block of a spooled message, whole: the session refused any over
/// [`MAX_HEADER_BYTES`](super::session::MAX_HEADER_BYTES), and a From placed after a long run of
/// other fields must still be seen by the checks.
fn read_head(path: &std::path::Path) -> Option<Vec<u8>> {
    use std::io::Read;
    // Our own Received field comes on top of what the client sent.
    let most = super::session::MAX_HEADER_BYTES + 16 * 1024;
    let mut head = Vec::new();
    let file = std::fs::File::open(path).ok()?;
    file.take(most).read_to_end(&mut head).ok()?;
    let end = crate::header::split(&head).map_or(head.len(), |(header, _)| header);
    head.truncate(end);
    Some(head)
}

/// The queue's envelope for a message's remote recipients. Mail from outside that a mailbox
/// forwards travels under an SRS address of the forwarding domain and is never reported back:
/// its sender is unverified, and a report to a forged sender is backscatter.
fn outbound_envelope(
    config: &crate::config::Config,
    srs: &crate::outbound::srs::SrsKey,
    delivery: &super::session::Delivery,
) -> crate::outbound::Envelope {
    let from = if delivery.trusted || delivery.from.is_empty() {
        delivery.from.clone()
    } else {
        let forwarder = delivery
            .forwarded_by
            .first()
            .and_then(|a| a.rsplit_once('@'))
            .map_or(config.raw.hostname.as_str(), |(_, domain)| domain);
        srs.rewrite(&delivery.from, forwarder, crate::outbound::srs::today())
    };
    crate::outbound::Envelope {
        from,
        recipients: delivery.remote.clone(),
        env_id: delivery.env_id.clone(),
        no_report: !delivery.trusted,
    }
}

/// A new spool file with `header` in front of the message; the old one is removed. With
/// `drop_spam_fields`, `X-Spam-*` fields the sender wrote are left out, so only the filter's
/// verdict speaks (a spammer's `X-Spam-Status: No` would mislead users and their rules).
fn prepend(
    store: &dyn crate::store::Store,
    header: &[u8],
    message: SpooledMessage,
    drop_spam_fields: bool,
) -> Result<SpooledMessage, StoreError> {
    let result = (|| {
        let mut spool = store.spool()?;
        spool.write(header)?;
        let mut file = std::fs::File::open(&message.path).map_err(StoreError::from_io)?;
        if drop_spam_fields {
            // The header block is bounded by the session; read it whole and filter it.
            let most = super::session::MAX_HEADER_BYTES + 16 * 1024;
            let mut head = Vec::new();
            io::Read::read_to_end(&mut io::Read::take(&mut file, most), &mut head)
                .map_err(StoreError::from_io)?;
            let end = crate::header::split(&head).map_or(0, |(h, _)| h);
            let mut dropping = false;
            for line in head[..end].split_inclusive(|b| *b == b'\n') {
                if !line.starts_with(b" ") && !line.starts_with(b"\t") {
                    let named = |prefix: &[u8]| {
                        line.len() >= prefix.len()
                            && line[..prefix.len()].eq_ignore_ascii_case(prefix)
                    };
                    // X-Spam-*, X-Spamd-* and X-Rspamd-*: what a filter would have said.
                    dropping = named(b"x-spam") || named(b"x-rspamd-");
                }
                if !dropping {
                    spool.write(line)?;
                }
            }
            spool.write(&head[end..])?;
        }
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            let n = io::Read::read(&mut file, &mut buf).map_err(StoreError::from_io)?;
            if n == 0 {
                break;
            }
            spool.write(&buf[..n])?;
        }
        spool.finish()
    })();
    let _ = std::fs::remove_file(&message.path);
    result
}

/// The DKIM-Signature header for relayed mail, made with the key of the domain entitled to
/// it; empty when there is no key or nothing to sign for. A logged-in mailbox (or the mailbox
/// whose Sieve rules send) signs as its own domain: as its header From domain when that is the
/// same domain or one of its aliases, else as the domain itself, never with another tenant's
/// key whatever the header says. Mail without one (a relay network) is signed only for the
/// server's own domains (those without a host name of their own). A signing failure is logged
/// and the mail goes unsigned rather than not at all.
pub(crate) fn sign(
    config: &crate::config::Config,
    user: Option<&str>,
    from: &str,
    path: &std::path::Path,
) -> String {
    if config.raw.dkim.is_none() && config.raw.domains.iter().all(|d| d.dkim.is_none()) {
        return String::new();
    }
    let Ok(bytes) = std::fs::read(path) else {
        return String::new();
    };
    let header_from = crate::outbound::dsn::header_of(&bytes)
        .split(|b| *b == b'\n')
        .find(|l| l.len() > 5 && l[..5].eq_ignore_ascii_case(b"from:"))
        .map(|l| String::from_utf8_lossy(l).into_owned())
        .and_then(|l| {
            let start = l.rfind('@')?;
            let domain: String = l[start + 1..]
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '.' || *c == '-')
                .collect();
            Some(domain.to_ascii_lowercase())
        });
    let envelope = from.rsplit_once('@').map(|(_, d)| d.to_ascii_lowercase());
    let candidates = [header_from, envelope].into_iter().flatten();
    let domain = match user.and_then(|u| u.rsplit_once('@')) {
        Some((_, own)) => {
            let Some(primary) = config.primary_domain(own) else {
                return String::new();
            };
            let primary = primary.to_string();
            candidates
                .into_iter()
                .find(|d| config.primary_domain(d) == Some(primary.as_str()))
                .unwrap_or(primary)
        }
        None => match candidates.into_iter().find(|d| config.owns_domain(d)) {
            Some(domain) => domain,
            None => return String::new(),
        },
    };
    // Each domain's own key; a hosted domain without one goes unsigned, never under another
    // tenant's key.
    let Some(dkim) = config.dkim_for(&domain) else {
        return String::new();
    };
    match crate::outbound::dkim::sign(dkim, &domain, &bytes) {
        Ok(header) => header,
        Err(err) => {
            tracing::error!(error = %err, "DKIM signing failed; the message goes unsigned");
            String::new()
        }
    }
}
