//! What every listener shares: the config in force, the store, TLS, login limits and the
//! connection counters. Listeners are started from the config's `listeners`.
use std::{
    collections::HashMap,
    net::{IpAddr, SocketAddr},
    path::PathBuf,
    sync::{Arc, Mutex},
    time::Duration,
};

use anyhow::{Context, Result};
use tokio::net::TcpListener;

use crate::{
    auth::AuthLimiter,
    config::{ConfigHandle, Listener, ListenerProtocol},
    store::{Store, maildir::Maildir, postgres::Postgres},
    tls::TlsHandle,
};

/// The protocols this build serves; listeners for others are skipped with a warning.
pub const SERVED: [ListenerProtocol; 10] = [
    ListenerProtocol::Smtp,
    ListenerProtocol::Submission,
    ListenerProtocol::Submissions,
    ListenerProtocol::Imap,
    ListenerProtocol::Imaps,
    ListenerProtocol::Pop3,
    ListenerProtocol::Pop3s,
    ListenerProtocol::Managesieve,
    ListenerProtocol::Http,
    ListenerProtocol::Https,
];

/// IMAP sessions with COMPRESS=DEFLATE at once, per pod (about 80 MiB of compressor state).
pub const DEFLATE_SESSIONS: usize = 256;

/// The last count of every mailbox's storage, with when it was made.
pub type UsageCount = Option<(std::time::Instant, Arc<Vec<crate::metrics::MailboxUsage>>)>;

/// Shared state of a running runtime.
#[derive(Debug, Clone)]
pub struct Runtime {
    /// The config in force.
    config: ConfigHandle,
    /// The store.
    store: Arc<dyn Store>,
    /// TLS.
    tls: TlsHandle,
    /// Failed logins per client address.
    auth_limiter: Arc<AuthLimiter>,
    /// Mailboxes held by a POP3 session (RFC 1939's maildrop lock).
    pop3_locks: Arc<Mutex<std::collections::HashSet<String>>>,
    /// The outbound queue.
    outbound: Arc<crate::outbound::Outbound>,
    /// DNS resolvers for delivery and sender checks.
    resolvers: Arc<crate::dns::Resolvers>,
    /// MiB that message bodies being answered (IMAP FETCH) may hold, all sessions together;
    /// a session waits for its share, and gives it back once the client took the bytes.
    answer_memory: Arc<tokio::sync::Semaphore>,
    /// Each mailbox's part of `answer_memory` in use.
    answer_shares: Arc<AnswerShares>,
    /// Header fields IMAP SEARCH read before (see [`crate::imap::search::HeaderCache`]).
    header_cache: Arc<crate::imap::search::HeaderCache>,
    /// IMAP sessions that may run COMPRESS=DEFLATE at once: a compressor holds about 300 KiB.
    deflate_sessions: Arc<tokio::sync::Semaphore>,
    sieve_scripts: Arc<crate::sieve::Compiled>,
    greylist: Arc<crate::smtp::screen::Greylist>,
    /// The last count of every mailbox's storage for `/usage` and `/metrics` (see
    /// [`crate::http`]): made at most every few seconds, once for all requests at that moment.
    usage: Arc<tokio::sync::Mutex<UsageCount>>,
    connections: Arc<Mutex<Connections>>,
    started: Arc<std::sync::atomic::AtomicBool>,
    /// True from the moment the runtime drains (SIGTERM): see [`Runtime::drain`].
    stopping: Arc<tokio::sync::watch::Sender<bool>>,
    /// The PostgreSQL store, when the mail is there.
    database: Option<Postgres>,
    /// Its last health check (every few seconds): the schema version, or why it failed.
    database_health: Arc<Mutex<Option<Result<i32, String>>>>,
}

/// Read access to the shared state; each part keeps its own locking.
impl Runtime {
    /// The last count of every mailbox's storage, with when it was made.
    pub fn usage(&self) -> &tokio::sync::Mutex<UsageCount> {
        &self.usage
    }

    /// The config in force.
    pub fn config(&self) -> &ConfigHandle {
        &self.config
    }

    /// The store.
    pub fn store(&self) -> &Arc<dyn Store> {
        &self.store
    }

    /// TLS.
    pub fn tls(&self) -> &TlsHandle {
        &self.tls
    }

    /// Failed logins per client address.
    pub fn auth_limiter(&self) -> &Arc<AuthLimiter> {
        &self.auth_limiter
    }

    /// Mailboxes held by a POP3 session (RFC 1939's maildrop lock).
    pub fn pop3_locks(&self) -> &Arc<Mutex<std::collections::HashSet<String>>> {
        &self.pop3_locks
    }

    /// The outbound queue.
    pub fn outbound(&self) -> &Arc<crate::outbound::Outbound> {
        &self.outbound
    }

    /// DNS resolvers for delivery and sender checks.
    pub fn resolvers(&self) -> &Arc<crate::dns::Resolvers> {
        &self.resolvers
    }

    /// MiB that message bodies being answered (IMAP FETCH) may hold, all sessions together;
    /// a session waits for its share, and gives it back once the client took the bytes.
    pub fn answer_memory(&self) -> &Arc<tokio::sync::Semaphore> {
        &self.answer_memory
    }

    /// Each mailbox's part of `answer_memory` in use.
    pub fn answer_shares(&self) -> &Arc<AnswerShares> {
        &self.answer_shares
    }

    /// Header fields IMAP SEARCH read before (see [`crate::imap::search::HeaderCache`]).
    pub fn header_cache(&self) -> &Arc<crate::imap::search::HeaderCache> {
        &self.header_cache
    }

    /// IMAP sessions that may run COMPRESS=DEFLATE at once: a compressor holds about 300 KiB.
    pub fn sieve_scripts(&self) -> &Arc<crate::sieve::Compiled> {
        &self.sieve_scripts
    }

    pub fn greylist(&self) -> &Arc<crate::smtp::screen::Greylist> {
        &self.greylist
    }

    pub fn deflate_sessions(&self) -> &Arc<tokio::sync::Semaphore> {
        &self.deflate_sessions
    }
}

#[derive(Debug)]
struct Connections {
    total: u32,
    per_ip: HashMap<IpAddr, u32>,
    /// The limit in force when the last connection was admitted.
    max: u32,
    /// Whether 80% of the connections are in use; sessions waiting for input watch it.
    stress: tokio::sync::watch::Sender<bool>,
}

impl Default for Connections {
    fn default() -> Self {
        Self {
            total: 0,
            per_ip: HashMap::new(),
            max: 0,
            stress: tokio::sync::watch::Sender::new(false),
        }
    }
}

impl Connections {
    fn update_stress(&self) {
        let stressed = self.max > 0 && u64::from(self.total) * 5 >= u64::from(self.max) * 4;
        self.stress.send_if_modified(|s| {
            let changed = *s != stressed;
            *s = stressed;
            changed
        });
    }
}

/// A counted connection; the count drops when it is dropped.
#[derive(Debug)]
pub struct ConnectionSlot {
    connections: Arc<Mutex<Connections>>,
    ip: IpAddr,
}

impl Drop for ConnectionSlot {
    fn drop(&mut self) {
        let mut c = self.connections.lock().expect("connections lock");
        c.total = c.total.saturating_sub(1);
        if let Some(n) = c.per_ip.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                c.per_ip.remove(&self.ip);
            }
        }
        c.update_stress();
    }
}

/// The read timeout of a session not logged in while the server is near its connection limit.
pub const STRESSED_TIMEOUT: Duration = Duration::from_secs(10);

/// What message bodies in flight to clients may hold (see [`Runtime::answer_memory`]): ten
/// sessions fetching a 24 MB message at once reached 766 MB before there was a bound, past a
/// pod's 512 MiB.
pub const ANSWER_MEMORY_MIB: u32 = 160;

/// Most of [`ANSWER_MEMORY_MIB`] one mailbox's sessions may hold together: enough for one
/// answer of the largest message, and the rest is left for everybody else.
pub const ANSWER_MIB_PER_MAILBOX: u32 = 96;

/// Each mailbox's part of the answer memory: a semaphore of [`ANSWER_MIB_PER_MAILBOX`] per
/// mailbox that has fetched (the map holds one entry per such mailbox).
#[derive(Debug, Default)]
pub struct AnswerShares(Mutex<HashMap<String, Arc<tokio::sync::Semaphore>>>);

impl AnswerShares {
    /// `mailbox`'s semaphore.
    pub fn of(&self, mailbox: &str) -> Arc<tokio::sync::Semaphore> {
        self.0
            .lock()
            .expect("answer shares")
            .entry(mailbox.to_string())
            .or_insert_with(|| {
                Arc::new(tokio::sync::Semaphore::new(ANSWER_MIB_PER_MAILBOX as usize))
            })
            .clone()
    }
}

impl Runtime {
    /// Opens the store and loads TLS for a config.
    pub fn new(config: ConfigHandle) -> Result<Self> {
        let current = config.get();
        let storage = &current.raw.storage;
        let database = match &storage.database {
            Some(database) => {
                let uri = std::fs::read_to_string(&database.uri_file).with_context(|| {
                    format!(
                        "reading the database URI from {}",
                        database.uri_file.display()
                    )
                })?;
                Some(
                    Postgres::open(
                        uri.trim(),
                        &storage.path.join("spool"),
                        database.ca_file.as_deref(),
                    )
                    .context("opening the mail database")?,
                )
            }
            None => None,
        };
        let database_handle = database.clone();
        let store: Arc<dyn Store> = match &database {
            Some(db) => Arc::new(db.clone()),
            None => Arc::new(
                Maildir::open(&storage.path, &current.raw.hostname)
                    .with_context(|| format!("opening the store at {}", storage.path.display()))?,
            ),
        };
        let outbound = crate::outbound::Outbound::open(&current.raw.storage.path, database)
            .context("opening the outbound queue")?;
        let tls = TlsHandle::default();
        if let Err(err) = tls.load(&current.raw) {
            // Serving without TLS would turn STARTTLS off; better to say so loudly and go on
            // (the port 25 MX keeps receiving) than to refuse all mail.
            tracing::error!(error = %err, "no usable TLS certificate: STARTTLS and implicit TLS are unavailable");
        }
        Ok(Self {
            config,
            store,
            tls,
            auth_limiter: Arc::new(AuthLimiter::new()),
            pop3_locks: Arc::new(Mutex::new(std::collections::HashSet::new())),
            outbound: Arc::new(outbound),
            resolvers: Arc::new(crate::dns::Resolvers::default()),
            answer_memory: Arc::new(tokio::sync::Semaphore::new(ANSWER_MEMORY_MIB as usize)),
            answer_shares: Arc::new(AnswerShares::default()),
            header_cache: Arc::new(crate::imap::search::HeaderCache::default()),
            deflate_sessions: Arc::new(tokio::sync::Semaphore::new(DEFLATE_SESSIONS)),
            sieve_scripts: Arc::default(),
            greylist: {
                let greylist = Arc::new(crate::smtp::screen::Greylist::default());
                if let Some(db) = &database_handle {
                    greylist.share(db.clone());
                }
                greylist
            },
            usage: Arc::default(),
            connections: Arc::new(Mutex::new(Connections::default())),
            started: Arc::new(std::sync::atomic::AtomicBool::new(false)),
            stopping: Arc::new(tokio::sync::watch::Sender::new(false)),
            database: database_handle,
            database_health: Arc::default(),
        })
    }

    /// Reads the client's next bytes, or `None` when it stays silent too long: `configured`, or
    /// for a session that has not logged in (`stressable`) 10 s once 80% of the connections
    /// are in use — also when that happens while the read waits. A slow or silent client (a
    /// slowloris) then gives its slot back instead of holding it until the server refuses
    /// everyone (Postfix's stress mode does the same).
    /// Resolves once the mailbox a session logged in as (its address, and the password hash it
    /// logged in with) may no longer use `protocol`: removed, suspended, or given another
    /// password, or an app password revoked. Looked at at once (a session waits on this anew
    /// for each read, so a client that keeps sending is caught at its next read) and then every
    /// second; never resolves before login (`None`). Poll it first (`biased` select).
    pub async fn revoked(
        &self,
        login: Option<(&str, &str)>,
        protocol: crate::config::LoginProtocol,
    ) {
        let Some((address, hash)) = login else {
            return std::future::pending().await;
        };
        loop {
            if self
                .config
                .get()
                .still_serves(address, hash, protocol)
                .is_none()
            {
                return;
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    }

    pub async fn read_idle<R>(
        &self,
        conn: &mut R,
        buf: &mut [u8],
        configured: Duration,
        stressable: bool,
    ) -> Option<std::io::Result<usize>>
    where
        R: tokio::io::AsyncRead + Unpin,
    {
        use tokio::io::AsyncReadExt;
        let start = tokio::time::Instant::now();
        let mut stress = self
            .connections
            .lock()
            .expect("connections lock")
            .stress
            .subscribe();
        loop {
            let limit = if stressable && *stress.borrow_and_update() {
                configured.min(STRESSED_TIMEOUT)
            } else {
                configured
            };
            // A read dropped here for a new deadline loses nothing: reads are cancel-safe.
            tokio::select! {
                read = conn.read(buf) => return Some(read),
                () = tokio::time::sleep_until(start + limit) => return None,
                changed = stress.changed(), if stressable => {
                    if changed.is_err() {
                        return None;
                    }
                }
            }
        }
    }

    /// Counts a new connection from `ip`, or says why it is refused.
    pub fn admit(&self, ip: IpAddr) -> Result<ConnectionSlot, &'static str> {
        self.admit_from(ip, false)
    }

    /// Like [`Runtime::admit`]; `own` for a connection from the pod itself (127.0.0.1 or ::1,
    /// with no PROXY header): its probes and `kubectl port-forward`, which the total limit
    /// never refuses, or a flood from outside would get the pod restarted by its own liveness
    /// probe. Addresses are counted per IPv6 /64 (one customer's network hands out a /64 or
    /// more) and per IPv4 address.
    pub fn admit_from(&self, ip: IpAddr, own: bool) -> Result<ConnectionSlot, &'static str> {
        let ip = match crate::config::canonical_ip(ip) {
            IpAddr::V6(v6) => IpAddr::V6(std::net::Ipv6Addr::from(
                u128::from(v6) & !((1u128 << 64) - 1),
            )),
            v4 => v4,
        };
        let limits = self.config.get().raw.limits.clone();
        let mut c = self.connections.lock().expect("connections lock");
        if c.total >= limits.max_connections && !own {
            return Err("too many connections, try again later");
        }
        let per_ip = c.per_ip.entry(ip).or_default();
        if *per_ip >= limits.max_connections_per_ip && !own {
            return Err("too many connections from your address, try again later");
        }
        *per_ip += 1;
        c.total += 1;
        c.max = limits.max_connections;
        c.update_stress();
        Ok(ConnectionSlot {
            connections: self.connections.clone(),
            ip,
        })
    }

    /// Binds every listener of the config and serves them until the process ends. Returns the
    /// bound addresses (a port 0 in the config becomes a real port).
    pub async fn start(&self, config_path: Option<PathBuf>) -> Result<Vec<(Listener, SocketAddr)>> {
        self.start_with(config_path, Vec::new()).await
    }

    /// Like [`Runtime::start`], but a listener whose address is one of `prebound`'s is served
    /// from that socket instead of a new bind (dev mode chooses free ports by holding them, and
    /// letting go before the bind would let another process take one).
    pub async fn start_with(
        &self,
        config_path: Option<PathBuf>,
        mut prebound: Vec<std::net::TcpListener>,
    ) -> Result<Vec<(Listener, SocketAddr)>> {
        let config = self.config.get();
        let mut bound = Vec::new();
        for listener in &config.raw.listeners {
            let held = prebound.iter().position(|s| {
                s.local_addr()
                    .is_ok_and(|a| a.to_string() == listener.address)
            });
            let socket = match held {
                Some(i) => {
                    let socket = prebound.swap_remove(i);
                    socket
                        .set_nonblocking(true)
                        .and_then(|()| TcpListener::from_std(socket))
                }
                None => TcpListener::bind(&listener.address).await,
            }
            .with_context(|| {
                format!(
                    "binding {} ({})",
                    listener.address,
                    listener.protocol.name()
                )
            })?;
            let addr = socket.local_addr()?;
            match listener.protocol {
                ListenerProtocol::Smtp
                | ListenerProtocol::Submission
                | ListenerProtocol::Submissions => {
                    tokio::spawn(crate::smtp::server::serve(
                        socket,
                        listener.clone(),
                        self.clone(),
                    ));
                }
                ListenerProtocol::Imap | ListenerProtocol::Imaps => {
                    tokio::spawn(crate::imap::server::serve(
                        socket,
                        listener.clone(),
                        self.clone(),
                    ));
                }
                ListenerProtocol::Pop3 | ListenerProtocol::Pop3s => {
                    tokio::spawn(crate::pop3::server::serve(
                        socket,
                        listener.clone(),
                        self.clone(),
                    ));
                }
                ListenerProtocol::Managesieve => {
                    tokio::spawn(crate::managesieve::server::serve(
                        socket,
                        listener.clone(),
                        self.clone(),
                    ));
                }
                ListenerProtocol::Http => {
                    tokio::spawn(crate::http::serve(socket, self.clone()));
                }
                ListenerProtocol::Https => {
                    tokio::spawn(crate::http::serve_public(
                        socket,
                        listener.clone(),
                        self.clone(),
                    ));
                }
            }
            tracing::info!(protocol = listener.protocol.name(), %addr, "listening");
            bound.push((listener.clone(), addr));
        }
        if let Some(path) = config_path {
            // A config that names other certificates (a domain added to the server) serves
            // them from the moment it is in force.
            let tls = self.tls.clone();
            tokio::spawn(crate::config::watch(
                path,
                self.config.clone(),
                move |config| {
                    if let Err(err) = tls.load(&config.raw) {
                        tracing::error!(error = %err, "a TLS certificate was refused");
                    }
                },
            ));
        }
        tokio::spawn(report_status(self.clone()));
        if self.database.is_some() {
            tokio::spawn(check_database(self.clone()));
        }
        tokio::spawn(self.outbound.clone().run(self.clone()));
        crate::metrics::init();
        self.started
            .store(true, std::sync::atomic::Ordering::Release);
        tokio::spawn(crate::tls::watch(self.tls.clone(), self.config.clone()));
        Ok(bound)
    }

    /// Ready: every listener is bound, a config is loaded, and the runtime is not draining.
    pub fn ready(&self) -> bool {
        self.started.load(std::sync::atomic::Ordering::Acquire) && !*self.stopping.borrow()
    }

    /// Resolves once the runtime drains (at once if it already does). Listeners stop accepting;
    /// a session ends at its next safe point: an SMTP session between transactions, an IMAP,
    /// POP3 or ManageSieve session waiting for a command (or in IDLE). Poll it before reads.
    pub async fn stopping(&self) {
        let mut rx = self.stopping.subscribe();
        // The sender lives as long as `self`: `wait_for` ends only when the flag is set.
        let _ = rx.wait_for(|stopping| *stopping).await;
    }

    /// Serves until SIGTERM or Ctrl-C, then drains for at most `grace` (see [`Runtime::drain`]);
    /// a second signal ends the drain at once.
    pub async fn serve_until_signal(&self, grace: Duration) {
        crate::dev::wait_for_shutdown().await;
        let began = tokio::time::Instant::now();
        let left = tokio::select! {
            left = self.drain(grace) => Some(left),
            () = crate::dev::wait_for_shutdown() => None,
        };
        let seconds = began.elapsed().as_secs_f64();
        match left {
            Some((0, 0)) => tracing::info!(seconds, "drained: every session and delivery ended"),
            Some((connections, deliveries)) => tracing::warn!(
                seconds,
                connections,
                deliveries,
                "the grace period ended first: these are cut off (queued mail is tried again)"
            ),
            None => tracing::warn!(seconds, "a second signal: stopping without waiting"),
        }
    }

    /// Whether the runtime drains.
    pub fn is_stopping(&self) -> bool {
        *self.stopping.borrow()
    }

    /// Graceful shutdown: readiness turns false, listeners close, sessions end at their next
    /// safe point (an SMTP transaction in flight finishes first), the outbound queue starts no
    /// new attempt and lets those in flight end. Returns when nothing is left or after `grace`,
    /// with the connections and deliveries still open then (0 and 0: a clean drain).
    pub async fn drain(&self, grace: Duration) -> (u32, usize) {
        self.stopping.send_replace(true);
        tracing::info!(
            grace_seconds = grace.as_secs(),
            "draining: no new connections"
        );
        let deadline = tokio::time::Instant::now() + grace;
        loop {
            let left = (
                self.connections.lock().expect("connections lock").total,
                self.outbound.in_flight(),
            );
            if left == (0, 0) || tokio::time::Instant::now() >= deadline {
                return left;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// What the runtime serves now: the config revision, and why a newer config or certificate
    /// was refused, if one was.
    pub fn status(&self) -> serde_json::Value {
        let mut status = serde_json::json!({
            "revision": self.config.get().revision(),
            "configError": self.config.last_error(),
            "tlsError": self.tls.last_error(),
        });
        if self.database.is_some() {
            status["database"] = match &*self.database_health.lock().expect("health lock") {
                Some(Ok(schema)) => serde_json::json!({"schema": schema}),
                Some(Err(error)) => serde_json::json!({"error": error}),
                None => serde_json::json!({}),
            };
        }
        status
    }
}

/// Looks at the database every 5 seconds, for [`Runtime::status`] (and so the operator's
/// `DatabaseReady` condition).
async fn check_database(runtime: Runtime) {
    let Some(db) = runtime.database.clone() else {
        return;
    };
    loop {
        // A database that does not answer within 5 s is reported as such, not by the last
        // answer it gave.
        let checked = match tokio::time::timeout(Duration::from_secs(5), db.health_async()).await {
            Ok(Ok(health)) => Ok(health.schema),
            Ok(Err(err)) => Err(err.to_string()),
            Err(_) => Err("the database did not answer within 5 s".to_string()),
        };
        *runtime.database_health.lock().expect("health lock") = Some(checked);
        tokio::time::sleep(Duration::from_secs(5)).await;
    }
}

/// Keeps `<data>/kubemail-runtime-status.json` equal to [`Runtime::status`], written
/// atomically, so a probe or a person can read which revision is served.
async fn report_status(runtime: Runtime) {
    let mut last = serde_json::Value::Null;
    let mut ticker = tokio::time::interval(Duration::from_millis(250));
    loop {
        ticker.tick().await;
        let status = runtime.status();
        if status == last {
            continue;
        }
        crate::metrics::config_served(runtime.config.get().revision());
        let dir = runtime.config.get().raw.storage.path.clone();
        let tmp = dir.join(".kubemail-runtime-status.json.tmp");
        if std::fs::write(&tmp, status.to_string()).is_ok()
            && std::fs::rename(&tmp, dir.join("kubemail-runtime-status.json")).is_ok()
        {
            last = status;
        }
    }
}
