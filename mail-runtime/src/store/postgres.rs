//! The PostgreSQL store: several runtime processes on one database behave as one server.
//!
//! ```text
//!   folders   (mailbox, name) -> uid_validity, uid_next, highest_modseq, keywords
//!   messages  (folder, uid)   -> modseq, flags, internal_date, size, recent, blob
//!   blobs     id              -> the message's bytes (shared by its copies)
//! ```
//!
//! Every change is one transaction that locks its folder's row (`FOR UPDATE`) before it hands
//! out UIDs and mod-sequences, so two replicas never give out one UID twice, nor out of order;
//! `\Recent` is claimed by one `UPDATE ... RETURNING`. Each change also sends
//! `NOTIFY kubemail_changes, '<mailbox>'` (delivered at commit), which every replica LISTENs
//! to: its sessions on that mailbox look again, IDLE included. A database that cannot be
//! reached is [`StoreError::Unavailable`]: a temporary failure, and nothing half-done, since a
//! transaction that does not commit leaves nothing.
//!
//! The calls of [`Store`] block; their work runs on this store's own small tokio runtime and
//! the caller waits for the answer, so they may be made from any thread.
use std::{
    collections::HashMap,
    fs,
    future::Future,
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
    time::Duration,
};

use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod};
use tokio::sync::watch;
use tokio_postgres::{AsyncMessage, Transaction, config::SslMode};
use tokio_postgres_rustls::MakeRustlsConnect;

use super::{
    FlagChange, FlagsSet, FolderIndex, INBOX, MAX_KEYWORDS, MessageMeta, Placement, SieveScripts,
    SpoolWriter, SpooledMessage, Store, StoreError, Usage, keyword_letter, unix_nanos,
};

/// The schema this build reads and writes. A database at a higher version was written by a
/// newer runtime: this one refuses to start on it rather than misread it.
pub const SCHEMA_VERSION: i32 = 4;

/// Connections at most, per process.
pub const POOL_SIZE: usize = 16;

/// The channel every replica listens on; the payload is the mailbox that changed.
const CHANNEL: &str = "kubemail_changes";

/// The key of the advisory lock that one starting replica holds while it migrates.
const MIGRATION_LOCK: i64 = 0x6b75_6265_6d61_696c;

/// Each version's schema change, in order: `MIGRATIONS[n]` takes the schema from n to n + 1.
const MIGRATIONS: [&str; 4] = [
    r#"
CREATE SEQUENCE kubemail_uidvalidity;
SELECT setval('kubemail_uidvalidity', greatest(1, extract(epoch FROM now())::bigint));
CREATE TABLE kubemail_mailboxes (
    address text PRIMARY KEY,
    defaults_made boolean NOT NULL DEFAULT false,
    sieve_active text
);
CREATE TABLE kubemail_folders (
    id bigserial PRIMARY KEY,
    mailbox text NOT NULL,
    name text NOT NULL,
    uid_validity bigint NOT NULL,
    uid_next bigint NOT NULL DEFAULT 1,
    highest_modseq bigint NOT NULL DEFAULT 1,
    keywords text[] NOT NULL DEFAULT '{}',
    UNIQUE (mailbox, name)
);
CREATE TABLE kubemail_blobs (
    id bigserial PRIMARY KEY,
    body bytea NOT NULL,
    header_len integer NOT NULL
);
CREATE TABLE kubemail_messages (
    folder_id bigint NOT NULL REFERENCES kubemail_folders ON DELETE CASCADE,
    uid bigint NOT NULL,
    modseq bigint NOT NULL,
    flags text NOT NULL,
    internal_date bigint NOT NULL,
    size bigint NOT NULL,
    recent boolean NOT NULL,
    blob_id bigint NOT NULL REFERENCES kubemail_blobs,
    PRIMARY KEY (folder_id, uid)
);
CREATE INDEX kubemail_messages_blob ON kubemail_messages (blob_id);
CREATE TABLE kubemail_subscriptions (
    mailbox text NOT NULL,
    name text NOT NULL,
    PRIMARY KEY (mailbox, name)
);
CREATE TABLE kubemail_sieve_scripts (
    mailbox text NOT NULL,
    name text NOT NULL,
    body text NOT NULL,
    PRIMARY KEY (mailbox, name)
);
CREATE TABLE kubemail_vacation (
    mailbox text NOT NULL,
    key text NOT NULL,
    until bigint NOT NULL,
    PRIMARY KEY (mailbox, key)
);
"#,
    // The outbound queue, shared by the replicas: an entry is leased by the one delivering it.
    r#"
CREATE TABLE kubemail_queue (
    id text PRIMARY KEY,
    entry text NOT NULL,
    message bytea NOT NULL,
    next_attempt bigint NOT NULL,
    lease_owner text,
    lease_until bigint NOT NULL DEFAULT 0
);
CREATE INDEX kubemail_queue_due ON kubemail_queue (next_attempt);
"#,
    // POP3's maildrop lock across the replicas, leased by the session that holds it.
    r#"
CREATE TABLE kubemail_maildrop_locks (
    mailbox text PRIMARY KEY,
    holder text NOT NULL,
    until bigint NOT NULL
);
"#,
    // Greylisting's memory and the relay rate limits' windows, shared by the replicas: a
    // sender that retries through another replica is not made to wait again, and a limit is
    // one limit, not one per replica.
    r#"
CREATE TABLE kubemail_greylist (
    network text NOT NULL,
    triplet text NOT NULL,
    first_seen bigint NOT NULL,
    passed boolean NOT NULL,
    expires bigint NOT NULL,
    PRIMARY KEY (network, triplet)
);
CREATE INDEX kubemail_greylist_expires ON kubemail_greylist (expires);
CREATE TABLE kubemail_rate_events (
    key text NOT NULL,
    at_ms bigint NOT NULL
);
CREATE INDEX kubemail_rate_events_key ON kubemail_rate_events (key, at_ms);
"#,
];

/// The PostgreSQL store (see the module's documentation).
#[derive(Clone)]
pub struct Postgres {
    inner: Arc<Inner>,
}

struct Inner {
    pool: Pool,
    /// The store's own runtime, where the database work runs.
    handle: tokio::runtime::Handle,
    /// Where messages being received are spooled before they go into the database.
    spool: PathBuf,
    watchers: Mutex<HashMap<String, watch::Sender<u64>>>,
    /// Woken when any replica queues outbound mail.
    queue_wake: Arc<tokio::sync::Notify>,
    /// Headers read ahead by [`Store::read_header`]: the last batch, taken out as they are
    /// asked for.
    readahead: Mutex<HashMap<(String, String, u32), Vec<u8>>>,
}

/// Headers one header read fetches (that message's and the next ones' by UID), and most bytes
/// a batch may hold: a header SEARCH over a folder makes one query per batch, not per message.
const READAHEAD: i64 = 256;
const READAHEAD_BYTES: usize = 4 << 20;

impl std::fmt::Debug for Postgres {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Postgres")
            .field("spool", &self.inner.spool)
            .field("pool", &self.inner.pool.status())
            .finish()
    }
}

/// What the database says about itself, for the status and the logs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Health {
    /// The schema version the database holds.
    pub schema: i32,
}

fn unavailable(err: impl std::fmt::Display) -> StoreError {
    StoreError::Unavailable(err.to_string())
}

/// A pool's error, with the database's own words when it gave some (a refused login, a missing
/// database) rather than the pool's "creating a new object".
fn pool_error(err: deadpool_postgres::PoolError) -> StoreError {
    match err {
        deadpool_postgres::PoolError::Backend(e) => db(e),
        other => unavailable(other),
    }
}

fn db(err: tokio_postgres::Error) -> StoreError {
    // The database's own words (a refused login, a missing database) say more than "db error".
    match err.as_db_error() {
        Some(e) => StoreError::Unavailable(format!("{}: {}", e.code().code(), e.message())),
        None => unavailable(err),
    }
}

/// One transaction on a connection of the pool: `$body` runs with `$tx` bound to it (a `?`
/// in it rolls back), then each of `$mailboxes` is NOTIFYed and the transaction commits. Its
/// value is the body's.
macro_rules! transaction {
    ($inner:expr, $tx:ident, $mailboxes:expr, $body:block) => {{
        let mut client = $inner.pool.get().await.map_err(pool_error)?;
        let $tx = client.transaction().await.map_err(db)?;
        let value = $body;
        for mailbox in $mailboxes {
            notify(&$tx, mailbox).await?;
        }
        $tx.commit().await.map_err(db)?;
        value
    }};
}

/// INBOX in any case is one folder.
fn folder_key(folder: &str) -> String {
    if folder.eq_ignore_ascii_case(INBOX) {
        INBOX.to_string()
    } else {
        folder.to_string()
    }
}

/// A folder name the store takes: not empty, no NUL, no empty level.
fn checked(folder: &str) -> Result<String, StoreError> {
    if folder.is_empty()
        || folder.contains('\0')
        || folder.starts_with('/')
        || folder.ends_with('/')
        || folder.contains("//")
        || folder.len() > 1024
    {
        return Err(StoreError::InvalidName(folder.into()));
    }
    Ok(folder_key(folder))
}

/// Where a message's header ends: after its first empty line, or the whole message.
fn header_len(body: &[u8]) -> i32 {
    let end = body
        .windows(2)
        .position(|w| w == b"\n\n")
        .map(|i| i + 2)
        .into_iter()
        .chain(
            body.windows(4)
                .position(|w| w == b"\r\n\r\n")
                .map(|i| i + 4),
        )
        .min()
        .unwrap_or(body.len());
    i32::try_from(end).unwrap_or(i32::MAX)
}

fn now_secs() -> i64 {
    (unix_nanos() / 1_000_000_000) as i64
}

/// A folder's row, locked or not.
struct Folder {
    id: i64,
    validity: u32,
    uid_next: i64,
    highest_modseq: i64,
    keywords: Vec<String>,
}

async fn folder_row(
    tx: &Transaction<'_>,
    mailbox: &str,
    name: &str,
    lock: bool,
) -> Result<Option<Folder>, StoreError> {
    let sql = if lock {
        "SELECT id, uid_validity, uid_next, highest_modseq, keywords FROM kubemail_folders \
         WHERE mailbox = $1 AND name = $2 FOR UPDATE"
    } else {
        "SELECT id, uid_validity, uid_next, highest_modseq, keywords FROM kubemail_folders \
         WHERE mailbox = $1 AND name = $2"
    };
    let row = tx.query_opt(sql, &[&mailbox, &name]).await.map_err(db)?;
    Ok(row.map(|r| Folder {
        id: r.get(0),
        validity: u32::try_from(r.get::<_, i64>(1)).unwrap_or(u32::MAX),
        uid_next: r.get(2),
        highest_modseq: r.get(3),
        keywords: r.get(4),
    }))
}

/// The folder, which must exist (INBOX always does: it is made here when missing).
async fn existing(
    tx: &Transaction<'_>,
    mailbox: &str,
    name: &str,
    lock: bool,
) -> Result<Folder, StoreError> {
    if name == INBOX {
        make_folder(tx, mailbox, INBOX).await?;
    }
    folder_row(tx, mailbox, name, lock)
        .await?
        .ok_or_else(|| StoreError::NoSuchFolder(name.into()))
}

/// Makes a folder with a new UIDVALIDITY (from one sequence for the whole database: a folder
/// made again never gets its old value back). False when it was there already.
async fn make_folder(tx: &Transaction<'_>, mailbox: &str, name: &str) -> Result<bool, StoreError> {
    let made = tx
        .query_opt(
            "INSERT INTO kubemail_folders (mailbox, name, uid_validity) \
             VALUES ($1, $2, nextval('kubemail_uidvalidity')) \
             ON CONFLICT (mailbox, name) DO NOTHING RETURNING id",
            &[&mailbox, &name],
        )
        .await
        .map_err(db)?;
    Ok(made.is_some())
}

async fn notify(tx: &Transaction<'_>, mailbox: &str) -> Result<(), StoreError> {
    tx.execute("SELECT pg_notify($1, $2)", &[&CHANNEL, &mailbox])
        .await
        .map_err(db)?;
    Ok(())
}

/// Hands out `count` UIDs and one mod-sequence in a locked folder; returns the first UID and
/// the mod-sequence.
async fn allocate(
    tx: &Transaction<'_>,
    folder: &Folder,
    count: i64,
) -> Result<(i64, i64), StoreError> {
    if folder.uid_next + count > i64::from(u32::MAX) {
        return Err(StoreError::NotAllowed("the folder has used up its UIDs"));
    }
    let modseq = folder.highest_modseq + 1;
    tx.execute(
        "UPDATE kubemail_folders SET uid_next = uid_next + $2, highest_modseq = $3 WHERE id = $1",
        &[&folder.id, &count, &modseq],
    )
    .await
    .map_err(db)?;
    Ok((folder.uid_next, modseq))
}

async fn bump_modseq(tx: &Transaction<'_>, folder: &Folder) -> Result<i64, StoreError> {
    let modseq = folder.highest_modseq + 1;
    tx.execute(
        "UPDATE kubemail_folders SET highest_modseq = $2 WHERE id = $1",
        &[&folder.id, &modseq],
    )
    .await
    .map_err(db)?;
    Ok(modseq)
}

async fn insert_blob(tx: &Transaction<'_>, body: &[u8]) -> Result<i64, StoreError> {
    let row = tx
        .query_one(
            "INSERT INTO kubemail_blobs (body, header_len) VALUES ($1, $2) RETURNING id",
            &[&body, &header_len(body)],
        )
        .await
        .map_err(db)?;
    Ok(row.get(0))
}

/// One new message row.
struct NewRow<'a> {
    folder: i64,
    uid: i64,
    modseq: i64,
    flags: &'a str,
    internal_date: i64,
    size: i64,
    blob: i64,
}

async fn insert_message(tx: &Transaction<'_>, row: NewRow<'_>) -> Result<(), StoreError> {
    tx.execute(
        "INSERT INTO kubemail_messages \
         (folder_id, uid, modseq, flags, internal_date, size, recent, blob_id) \
         VALUES ($1, $2, $3, $4, $5, $6, true, $7)",
        &[
            &row.folder,
            &row.uid,
            &row.modseq,
            &row.flags,
            &row.internal_date,
            &row.size,
            &row.blob,
        ],
    )
    .await
    .map_err(db)?;
    Ok(())
}

/// The letters of `names` in a locked folder, adding new ones to its table (in the same
/// transaction). Keywords compare without regard to case and keep their first spelling.
async fn letters_for(
    tx: &Transaction<'_>,
    folder: &mut Folder,
    names: &[String],
) -> Result<String, StoreError> {
    let mut letters = String::new();
    let mut grown = false;
    for name in names {
        let index = match folder
            .keywords
            .iter()
            .position(|k| k.eq_ignore_ascii_case(name))
        {
            Some(i) => i,
            None => {
                if folder.keywords.len() >= MAX_KEYWORDS {
                    return Err(StoreError::NotAllowed(
                        "this folder has all the keywords it can hold",
                    ));
                }
                folder.keywords.push(name.clone());
                grown = true;
                folder.keywords.len() - 1
            }
        };
        letters.extend(keyword_letter(index));
    }
    if grown {
        tx.execute(
            "UPDATE kubemail_folders SET keywords = $2 WHERE id = $1",
            &[&folder.id, &folder.keywords],
        )
        .await
        .map_err(db)?;
    }
    Ok(letters)
}

/// Removes the blobs no message points to any more. Run after the commit that freed them; a
/// blob a concurrent copy just took is kept by the foreign key (that statement then fails and
/// leaves it to [`sweep_orphans`]).
async fn sweep_blobs(pool: &Pool, blobs: Vec<i64>) {
    if blobs.is_empty() {
        return;
    }
    let Ok(client) = pool.get().await else {
        return;
    };
    let swept = client
        .execute(
            "DELETE FROM kubemail_blobs b WHERE b.id = ANY($1) \
             AND NOT EXISTS (SELECT 1 FROM kubemail_messages m WHERE m.blob_id = b.id)",
            &[&blobs],
        )
        .await;
    if let Err(err) = swept {
        tracing::debug!(error = %err, "blob sweep left for later");
    }
}

/// A libpq connection URI or key=value string (see [`kubemail_config::database::parse_uri`]).
pub fn parse_uri(uri: &str) -> Result<tokio_postgres::Config, StoreError> {
    kubemail_config::database::parse_uri(uri).map_err(StoreError::Unavailable)
}

/// TLS to the database (rustls). With `ca_file` the connection must be TLS, verified against
/// that CA (the server's certificate and its name); without it, `sslmode=require` in the URI
/// verifies against the system's CAs, and any other mode is in the clear (libpq's `prefer`
/// would try TLS and trust any certificate: not done here).
pub fn connector(
    config: &mut tokio_postgres::Config,
    ca_file: Option<&Path>,
) -> Result<MakeRustlsConnect, StoreError> {
    use rustls_pki_types::{CertificateDer, pem::PemObject};
    let mut roots = rustls::RootCertStore::empty();
    match ca_file {
        Some(path) => {
            let pem = fs::read(path).map_err(|e| {
                StoreError::Unavailable(format!("reading the database CA {}: {e}", path.display()))
            })?;
            for cert in CertificateDer::pem_slice_iter(&pem) {
                let cert = cert.map_err(|e| {
                    StoreError::Unavailable(format!("the database CA {}: {e}", path.display()))
                })?;
                roots.add(cert).map_err(|e| {
                    StoreError::Unavailable(format!("the database CA {}: {e}", path.display()))
                })?;
            }
            if roots.is_empty() {
                return Err(StoreError::Unavailable(format!(
                    "the database CA {} holds no certificate",
                    path.display()
                )));
            }
            config.ssl_mode(SslMode::Require);
        }
        None if config.get_ssl_mode() == SslMode::Require => {
            for cert in rustls_native_certs::load_native_certs().certs {
                let _ = roots.add(cert);
            }
        }
        None => {
            config.ssl_mode(SslMode::Disable);
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(unavailable)?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(MakeRustlsConnect::new(tls))
}

/// Every 10 minutes, the blobs no message points to (a sweep after an expunge that did not
/// run: the database was away, or a copy was taking the blob at that moment), and greylisting's
/// expired triplets.
async fn sweep_orphans(pool: Pool) {
    loop {
        tokio::time::sleep(Duration::from_secs(600)).await;
        let Ok(client) = pool.get().await else {
            continue;
        };
        let swept = client
            .execute(
                "DELETE FROM kubemail_blobs b \
                 WHERE NOT EXISTS (SELECT 1 FROM kubemail_messages m WHERE m.blob_id = b.id)",
                &[],
            )
            .await;
        match swept {
            Ok(0) => {}
            Ok(n) => tracing::info!(blobs = n, "unreferenced message blobs removed"),
            Err(err) => tracing::debug!(error = %err, "blob sweep left for later"),
        }
        let _ = client
            .execute(
                "DELETE FROM kubemail_greylist WHERE expires < extract(epoch FROM now())::bigint",
                &[],
            )
            .await;
    }
}

impl Postgres {
    /// Connects to the database at `url` (a libpq URI or key=value string; several hosts with
    /// `target_session_attrs=read-write` follow a promoted standby), applies the schema's
    /// migrations (one replica at a time), and starts listening for other replicas' changes.
    /// `spool` is a local directory for messages being received; `ca_file`, the CA that signed
    /// the server's certificate (see [`connector`]).
    pub fn open(url: &str, spool: &Path, ca_file: Option<&Path>) -> Result<Self, StoreError> {
        let mut config = parse_uri(url)?;
        if config.get_connect_timeout().is_none() {
            config.connect_timeout(Duration::from_secs(5));
        }
        // A database that stops answering (a node lost mid-failover: no reset, no FIN) must not
        // hold sessions for TCP's 15 minutes: unacknowledged data fails the connection after
        // 10 s, keepalives find a silent one within 20, and the server ends a statement or an
        // idle transaction that runs too long.
        config.keepalives_idle(Duration::from_secs(10));
        config.keepalives_interval(Duration::from_secs(5));
        config.keepalives_retries(2);
        config.tcp_user_timeout(Duration::from_secs(10));
        let options = format!(
            "{} -c statement_timeout=60s -c idle_in_transaction_session_timeout=60s",
            config.get_options().unwrap_or_default()
        );
        config.options(options.trim());
        config.application_name("kubemail mail-runtime");
        fs::create_dir_all(spool).map_err(StoreError::from_io)?;
        let tls = connector(&mut config, ca_file)?;
        let handle = store_runtime()?;
        let manager = Manager::from_config(
            config.clone(),
            tls.clone(),
            ManagerConfig {
                recycling_method: RecyclingMethod::Fast,
            },
        );
        let pool = Pool::builder(manager)
            .max_size(POOL_SIZE)
            .runtime(deadpool_postgres::Runtime::Tokio1)
            .wait_timeout(Some(Duration::from_secs(10)))
            .create_timeout(Some(Duration::from_secs(10)))
            .recycle_timeout(Some(Duration::from_secs(5)))
            .build()
            .map_err(unavailable)?;
        let store = Self {
            inner: Arc::new(Inner {
                pool,
                handle,
                spool: spool.to_path_buf(),
                watchers: Mutex::new(HashMap::new()),
                queue_wake: Arc::new(tokio::sync::Notify::new()),
                readahead: Mutex::new(HashMap::new()),
            }),
        };
        store.run(|inner| async move { migrate(&inner.pool).await })?;
        let inner = store.inner.clone();
        store.inner.handle.spawn(listen(config, tls, inner));
        store
            .inner
            .handle
            .spawn(sweep_orphans(store.inner.pool.clone()));
        Ok(store)
    }

    /// Like [`Postgres::run`], but waits at most `limit` (then `Unavailable`, and the work
    /// goes on unwatched): for decisions a session makes in its protocol loop, which must not
    /// hold it while the database is slow.
    fn run_within<T, F>(
        &self,
        limit: Duration,
        work: impl FnOnce(Arc<Inner>) -> F,
    ) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: Future<Output = Result<T, StoreError>> + Send + 'static,
    {
        let future = limited(work(self.inner.clone()));
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        self.inner.handle.spawn(async move {
            let _ = tx.send(future.await);
        });
        rx.recv_timeout(limit).unwrap_or_else(|_| {
            Err(StoreError::Unavailable(format!(
                "the database did not answer within {} ms",
                limit.as_millis()
            )))
        })
    }

    /// Runs `work` on the store's runtime and waits for it.
    fn run<T, F>(&self, work: impl FnOnce(Arc<Inner>) -> F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: Future<Output = Result<T, StoreError>> + Send + 'static,
    {
        // The work itself gives up after CALL_LIMIT: the wait never ends before it does.
        self.run_within(CALL_LIMIT + Duration::from_secs(5), work)
    }

    /// Tells this process's sessions watching these mailboxes to look again (other
    /// processes hear the transaction's NOTIFY).
    fn told(&self, mailboxes: &[&str]) {
        for mailbox in mailboxes {
            bump(&self.inner, mailbox);
        }
    }
}

/// Longest one store call may wait for the database: then it is a temporary failure (what was
/// not committed is rolled back) rather than a session that hangs.
pub const CALL_LIMIT: Duration = Duration::from_secs(60);

async fn limited<T>(work: impl Future<Output = Result<T, StoreError>>) -> Result<T, StoreError> {
    tokio::time::timeout(CALL_LIMIT, work)
        .await
        .unwrap_or_else(|_| {
            Err(StoreError::Unavailable(format!(
                "the database did not answer within {} s",
                CALL_LIMIT.as_secs()
            )))
        })
}

/// Tells the sessions of this process watching `mailbox` to look again.
fn bump(inner: &Inner, mailbox: &str) {
    if let Some(tx) = inner.watchers.lock().expect("watchers").get(mailbox) {
        tx.send_modify(|n| *n = n.wrapping_add(1));
    }
}

/// The store's runtime: two threads of its own, alive as long as the process.
fn store_runtime() -> Result<tokio::runtime::Handle, StoreError> {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::Builder::new()
        .name("kubemail-postgres".into())
        .spawn(move || {
            match tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .thread_name("kubemail-postgres-worker")
                .enable_all()
                .build()
            {
                Ok(runtime) => {
                    let _ = tx.send(Ok(runtime.handle().clone()));
                    runtime.block_on(std::future::pending::<()>());
                }
                Err(err) => {
                    let _ = tx.send(Err(err));
                }
            }
        })
        .map_err(StoreError::from_io)?;
    rx.recv()
        .map_err(|_| unavailable("the database worker did not start"))?
        .map_err(StoreError::from_io)
}

/// Brings the schema to [`SCHEMA_VERSION`], under an advisory lock so replicas starting at once
/// migrate one after the other (the later ones find nothing left to do).
async fn migrate(pool: &Pool) -> Result<(), StoreError> {
    let mut client = pool.get().await.map_err(unavailable)?;
    let tx = client.transaction().await.map_err(db)?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK])
        .await
        .map_err(db)?;
    tx.batch_execute("CREATE TABLE IF NOT EXISTS kubemail_schema (version integer PRIMARY KEY, applied timestamptz NOT NULL DEFAULT now())")
        .await
        .map_err(db)?;
    let current: i32 = tx
        .query_one("SELECT coalesce(max(version), 0) FROM kubemail_schema", &[])
        .await
        .map_err(db)?
        .get(0);
    if current > SCHEMA_VERSION {
        return Err(StoreError::Unavailable(format!(
            "the database's schema is version {current}, newer than this runtime's {SCHEMA_VERSION}: upgrade the runtime"
        )));
    }
    for (from, sql) in MIGRATIONS.iter().enumerate().skip(current as usize) {
        tx.batch_execute(sql).await.map_err(db)?;
        let to = from as i32 + 1;
        tx.execute("INSERT INTO kubemail_schema (version) VALUES ($1)", &[&to])
            .await
            .map_err(db)?;
        tracing::info!(version = to, "database schema migrated");
    }
    tx.commit().await.map_err(db)
}

/// LISTENs for changes on a connection of its own, for as long as the process lives; tells
/// this process's sessions. When the connection drops, every session is told to look again
/// (it may have missed a change meanwhile), and it connects again after a second.
async fn listen(config: tokio_postgres::Config, tls: MakeRustlsConnect, inner: Arc<Inner>) {
    loop {
        match config.connect(tls.clone()).await {
            Ok((client, mut connection)) => {
                let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
                let pump = tokio::spawn(async move {
                    while let Some(message) =
                        std::future::poll_fn(|cx| connection.poll_message(cx)).await
                    {
                        match message {
                            Ok(AsyncMessage::Notification(n)) => {
                                if tx.send(n.payload().to_string()).is_err() {
                                    return;
                                }
                            }
                            Ok(_) => {}
                            Err(err) => {
                                tracing::warn!(error = %err, "the database connection LISTENing for changes ended");
                                return;
                            }
                        }
                    }
                });
                if let Err(err) = client.batch_execute(&format!("LISTEN {CHANNEL}")).await {
                    tracing::warn!(error = %err, "LISTEN failed");
                } else {
                    // Changes made while no connection listened: everyone looks again.
                    bump_all(&inner);
                    inner.queue_wake.notify_one();
                    while let Some(mailbox) = rx.recv().await {
                        if mailbox.is_empty() {
                            inner.queue_wake.notify_one();
                        } else {
                            bump(&inner, &mailbox);
                        }
                    }
                }
                pump.abort();
            }
            Err(err) => tracing::warn!(error = %err, "cannot connect to LISTEN for changes"),
        }
        bump_all(&inner);
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

fn bump_all(inner: &Inner) {
    for tx in inner.watchers.lock().expect("watchers").values() {
        tx.send_modify(|n| *n = n.wrapping_add(1));
    }
}

async fn client(inner: &Inner) -> Result<deadpool_postgres::Object, StoreError> {
    inner.pool.get().await.map_err(pool_error)
}

/// The bytes of a spooled message; the spool file is removed whatever happens.
fn take_spooled(message: SpooledMessage) -> Result<Vec<u8>, StoreError> {
    let body = fs::read(&message.path).map_err(StoreError::from_io);
    let _ = fs::remove_file(&message.path);
    body
}

fn as_u32(n: i64) -> u32 {
    u32::try_from(n).unwrap_or(u32::MAX)
}

fn as_u64(n: i64) -> u64 {
    u64::try_from(n).unwrap_or_default()
}

fn uids_of(messages: &[MessageMeta]) -> Vec<i64> {
    messages.iter().map(|m| i64::from(m.uid)).collect()
}

impl Postgres {
    /// A message's bytes, or its header only.
    fn body(
        &self,
        mailbox: &str,
        folder: &str,
        uid: u32,
        header_only: bool,
    ) -> Result<Option<Vec<u8>>, StoreError> {
        let (mailbox, folder) = (mailbox.to_string(), checked(folder)?);
        let sql = if header_only {
            "SELECT substring(b.body FROM 1 FOR b.header_len) "
        } else {
            "SELECT b.body "
        }
        .to_string()
            + "FROM kubemail_messages m JOIN kubemail_folders f ON f.id = m.folder_id \
               JOIN kubemail_blobs b ON b.id = m.blob_id \
               WHERE f.mailbox = $1 AND f.name = $2 AND m.uid = $3";
        self.run(move |inner| async move {
            let row = client(&inner)
                .await?
                .query_opt(&sql, &[&mailbox, &folder, &i64::from(uid)])
                .await
                .map_err(db)?;
            Ok(row.map(|r| r.get::<_, Vec<u8>>(0)))
        })
    }

    /// One statement whose parameters are all text; the rows it changed.
    fn execute(&self, sql: &'static str, params: &[&str]) -> Result<u64, StoreError> {
        let params: Vec<String> = params.iter().map(|p| p.to_string()).collect();
        self.run(move |inner| async move {
            let refs: Vec<&(dyn tokio_postgres::types::ToSql + Sync)> = params
                .iter()
                .map(|p| p as &(dyn tokio_postgres::types::ToSql + Sync))
                .collect();
            client(&inner).await?.execute(sql, &refs).await.map_err(db)
        })
    }

    /// The names a query of one mailbox's rows gives (`$1`: the mailbox), sorted bytewise.
    fn names(&self, sql: &'static str, mailbox: &str) -> Result<Vec<String>, StoreError> {
        let mailbox = mailbox.to_string();
        self.run(move |inner| async move {
            let rows = client(&inner)
                .await?
                .query(sql, &[&mailbox])
                .await
                .map_err(db)?;
            let mut out: Vec<String> = rows.iter().map(|r| r.get(0)).collect();
            out.sort();
            Ok(out)
        })
    }

    /// Removes messages (those flagged `\Deleted` now, with `only_deleted`); the UIDs removed.
    fn remove(
        &self,
        mailbox: &str,
        folder: &str,
        messages: &[MessageMeta],
        only_deleted: bool,
    ) -> Result<Vec<u32>, StoreError> {
        if messages.is_empty() {
            return Ok(Vec::new());
        }
        let (mailbox, folder) = (mailbox.to_string(), checked(folder)?);
        let uids = uids_of(messages);
        let told = mailbox.clone();
        let removed = self.run(move |inner| async move {
            let (removed, blobs) = transaction!(inner, tx, [&mailbox], {
                let Some(f) = folder_row(&tx, &mailbox, &folder, true).await? else {
                    return Ok(Vec::new());
                };
                let rows = tx
                    .query(
                        "DELETE FROM kubemail_messages WHERE folder_id = $1 AND uid = ANY($2) \
                         AND (NOT $3 OR strpos(flags, 'T') > 0) RETURNING uid, blob_id",
                        &[&f.id, &uids, &only_deleted],
                    )
                    .await
                    .map_err(db)?;
                if !rows.is_empty() {
                    bump_modseq(&tx, &f).await?;
                }
                let mut removed: Vec<u32> = rows.iter().map(|r| as_u32(r.get(0))).collect();
                removed.sort_unstable();
                let blobs: Vec<i64> = rows.iter().map(|r| r.get(1)).collect();
                (removed, blobs)
            });
            sweep_blobs(&inner.pool, blobs).await;
            Ok(removed)
        })?;
        self.told(&[&told]);
        Ok(removed)
    }
}

impl Store for Postgres {
    fn spool(&self) -> Result<SpoolWriter, StoreError> {
        SpoolWriter::create(&self.inner.spool)
    }

    fn deliver_to(
        &self,
        message: SpooledMessage,
        placements: &[Placement],
    ) -> Result<(), StoreError> {
        let body = take_spooled(message)?;
        // Folders are locked in one order by everyone, so two deliveries to the same
        // mailboxes cannot each wait for the other.
        let mut placements = placements
            .iter()
            .map(|p| Ok((p.mailbox.clone(), checked(&p.folder)?, p.flags.clone())))
            .collect::<Result<Vec<_>, StoreError>>()?;
        placements.sort();
        let mut mailboxes: Vec<String> = placements.iter().map(|p| p.0.clone()).collect();
        mailboxes.dedup();
        let told = mailboxes.clone();
        let now = now_secs();
        self.run(move |inner| async move {
            transaction!(inner, tx, &mailboxes, {
                let blob = insert_blob(&tx, &body).await?;
                let size = body.len() as i64;
                for (mailbox, name, flags) in &placements {
                    let f = existing(&tx, mailbox, name, true).await?;
                    let (uid, modseq) = allocate(&tx, &f, 1).await?;
                    insert_message(
                        &tx,
                        NewRow {
                            folder: f.id,
                            uid,
                            modseq,
                            flags,
                            internal_date: now,
                            size,
                            blob,
                        },
                    )
                    .await?;
                }
            });
            Ok(())
        })?;
        self.told(&told.iter().map(String::as_str).collect::<Vec<_>>());
        Ok(())
    }

    fn usage(&self, mailbox: &str) -> Result<Usage, StoreError> {
        let mailbox = mailbox.to_string();
        self.run(move |inner| async move {
            let row = client(&inner)
                .await?
                .query_one(
                    "SELECT coalesce(sum(m.size), 0)::bigint, count(*) FROM kubemail_messages m \
                     JOIN kubemail_folders f ON f.id = m.folder_id WHERE f.mailbox = $1",
                    &[&mailbox],
                )
                .await
                .map_err(db)?;
            Ok(Usage {
                bytes: as_u64(row.get(0)),
                messages: as_u64(row.get(1)),
            })
        })
    }

    fn index(&self, mailbox: &str, folder: &str) -> Result<FolderIndex, StoreError> {
        let (mailbox, folder) = (mailbox.to_string(), checked(folder)?);
        self.run(move |inner| async move {
            let mut client = client(&inner).await?;
            // The folder's row and its messages from one snapshot.
            let tx = client
                .build_transaction()
                .read_only(true)
                .isolation_level(tokio_postgres::IsolationLevel::RepeatableRead)
                .start()
                .await
                .map_err(db)?;
            let Some(f) = folder_row(&tx, &mailbox, &folder, false).await? else {
                if folder == INBOX {
                    return Ok(FolderIndex {
                        uid_validity: 0,
                        uid_next: 1,
                        messages: Vec::new(),
                        keywords: Vec::new(),
                        highest_modseq: 1,
                    });
                }
                return Err(StoreError::NoSuchFolder(folder));
            };
            let rows = tx
                .query(
                    "SELECT uid, size, flags, internal_date, modseq, recent \
                     FROM kubemail_messages WHERE folder_id = $1 ORDER BY uid",
                    &[&f.id],
                )
                .await
                .map_err(db)?;
            let messages = rows
                .iter()
                .map(|r| {
                    let uid = as_u32(r.get(0));
                    MessageMeta {
                        uid,
                        size: as_u64(r.get(1)),
                        flags: r.get(2),
                        internal_date: r.get(3),
                        file_name: uid.to_string(),
                        modseq: as_u64(r.get(4)),
                        in_new: r.get(5),
                    }
                })
                .collect();
            tx.commit().await.map_err(db)?;
            Ok(FolderIndex {
                uid_validity: f.validity,
                uid_next: as_u32(f.uid_next),
                messages,
                keywords: f.keywords,
                highest_modseq: as_u64(f.highest_modseq),
            })
        })
    }

    fn read(
        &self,
        mailbox: &str,
        folder: &str,
        message: &MessageMeta,
    ) -> Result<Option<Vec<u8>>, StoreError> {
        self.body(mailbox, folder, message.uid, false)
    }

    fn read_header(
        &self,
        mailbox: &str,
        folder: &str,
        message: &MessageMeta,
    ) -> Result<Option<Vec<u8>>, StoreError> {
        let (mailbox, folder) = (mailbox.to_string(), checked(folder)?);
        let key = (mailbox.clone(), folder.clone(), message.uid);
        if let Some(head) = self.inner.readahead.lock().expect("readahead").remove(&key) {
            return Ok(Some(head));
        }
        let uid = i64::from(message.uid);
        let rows = self.run(move |inner| async move {
            let rows = client(&inner)
                .await?
                .query(
                    "SELECT m.uid, substring(b.body FROM 1 FOR b.header_len) \
                     FROM kubemail_messages m JOIN kubemail_folders f ON f.id = m.folder_id \
                     JOIN kubemail_blobs b ON b.id = m.blob_id \
                     WHERE f.mailbox = $1 AND f.name = $2 AND m.uid >= $3 ORDER BY m.uid LIMIT $4",
                    &[&mailbox, &folder, &uid, &READAHEAD],
                )
                .await
                .map_err(db)?;
            Ok(rows
                .iter()
                .map(|r| (as_u32(r.get(0)), r.get::<_, Vec<u8>>(1)))
                .collect::<Vec<_>>())
        })?;
        let mut asked = None;
        let mut batch = HashMap::new();
        let mut bytes = 0;
        for (uid, head) in rows {
            if uid == message.uid {
                asked = Some(head);
            } else if bytes + head.len() <= READAHEAD_BYTES {
                bytes += head.len();
                batch.insert((key.0.clone(), key.1.clone(), uid), head);
            }
        }
        *self.inner.readahead.lock().expect("readahead") = batch;
        Ok(asked)
    }

    fn read_message(&self, mailbox: &str, uid: u32) -> Result<Option<Vec<u8>>, StoreError> {
        self.body(mailbox, INBOX, uid, false)
    }

    fn expunge(
        &self,
        mailbox: &str,
        folder: &str,
        messages: &[MessageMeta],
    ) -> Result<(), StoreError> {
        self.remove(mailbox, folder, messages, false).map(|_| ())
    }

    fn keyword_letters(
        &self,
        mailbox: &str,
        folder: &str,
        names: &[String],
    ) -> Result<String, StoreError> {
        let (mailbox, folder) = (mailbox.to_string(), checked(folder)?);
        let names = names.to_vec();
        self.run(move |inner| async move {
            Ok(transaction!(inner, tx, &[] as &[&str], {
                let mut f = existing(&tx, &mailbox, &folder, true).await?;
                letters_for(&tx, &mut f, &names).await?
            }))
        })
    }

    fn expunge_deleted(
        &self,
        mailbox: &str,
        folder: &str,
        messages: &[MessageMeta],
    ) -> Result<Vec<u32>, StoreError> {
        self.remove(mailbox, folder, messages, true)
    }

    fn append(
        &self,
        mailbox: &str,
        folder: &str,
        message: SpooledMessage,
        flags: &str,
        internal_date: Option<i64>,
    ) -> Result<(u32, u32), StoreError> {
        let body = take_spooled(message)?;
        let (mailbox, folder, flags) = (mailbox.to_string(), checked(folder)?, flags.to_string());
        let told = mailbox.clone();
        let date = internal_date.unwrap_or_else(now_secs);
        let appended = self.run(move |inner| async move {
            Ok(transaction!(inner, tx, [&mailbox], {
                let f = existing(&tx, &mailbox, &folder, true).await?;
                let blob = insert_blob(&tx, &body).await?;
                let (uid, modseq) = allocate(&tx, &f, 1).await?;
                insert_message(
                    &tx,
                    NewRow {
                        folder: f.id,
                        uid,
                        modseq,
                        flags: &flags,
                        internal_date: date,
                        size: body.len() as i64,
                        blob,
                    },
                )
                .await?;
                (f.validity, as_u32(uid))
            }))
        })?;
        self.told(&[&told]);
        Ok(appended)
    }

    fn copy(
        &self,
        mailbox: &str,
        from: &str,
        messages: &[MessageMeta],
        to: &str,
    ) -> Result<(u32, Vec<(u32, u32)>), StoreError> {
        let (mailbox, from, to) = (mailbox.to_string(), checked(from)?, checked(to)?);
        let wanted: Vec<u32> = messages.iter().map(|m| m.uid).collect();
        let uids = uids_of(messages);
        let told = mailbox.clone();
        let copied = self.run(move |inner| async move {
            Ok(transaction!(inner, tx, [&mailbox], {
                let mut target = existing(&tx, &mailbox, &to, true).await?;
                let source = if from == to {
                    None
                } else {
                    Some(existing(&tx, &mailbox, &from, false).await?)
                };
                let (source_id, source_keywords) = match &source {
                    Some(s) => (s.id, s.keywords.clone()),
                    None => (target.id, target.keywords.clone()),
                };
                // The flags the messages have now, not those a session last saw. KEY SHARE: a
                // session expunging one of them waits for this copy (or, having committed
                // first, its message is not copied), so its blob is never swept from under the
                // copy's new row (a foreign key violation, seen with 20 sessions at once).
                let rows = tx
                    .query(
                        "SELECT uid, flags, internal_date, size, blob_id FROM kubemail_messages \
                         WHERE folder_id = $1 AND uid = ANY($2) FOR KEY SHARE",
                        &[&source_id, &uids],
                    )
                    .await
                    .map_err(db)?;
                let found: HashMap<u32, (String, i64, i64, i64)> = rows
                    .iter()
                    .map(|r| (as_u32(r.get(0)), (r.get(1), r.get(2), r.get(3), r.get(4))))
                    .collect();
                // Keyword letters are per folder: the target's letters for the keywords the
                // copied messages carry (only those).
                let mut carried: Vec<(char, String)> = Vec::new();
                for uid in &wanted {
                    let Some((flags, ..)) = found.get(uid) else {
                        continue;
                    };
                    for letter in flags.chars().filter(char::is_ascii_lowercase) {
                        let name = source_keywords
                            .get(usize::from(letter as u8 - b'a'))
                            .filter(|k| !k.is_empty());
                        if let Some(name) = name
                            && !carried.iter().any(|(l, _)| *l == letter)
                        {
                            carried.push((letter, name.clone()));
                        }
                    }
                }
                let names: Vec<String> = carried.iter().map(|(_, n)| n.clone()).collect();
                let letters = letters_for(&tx, &mut target, &names).await?;
                let translate: HashMap<char, char> = carried
                    .iter()
                    .map(|(l, _)| *l)
                    .zip(letters.chars())
                    .collect();
                let present = wanted.iter().filter(|u| found.contains_key(u)).count() as i64;
                let mut pairs = Vec::new();
                if present > 0 {
                    let (mut next, modseq) = allocate(&tx, &target, present).await?;
                    for uid in &wanted {
                        let Some((flags, date, size, blob)) = found.get(uid) else {
                            continue;
                        };
                        let flags: String = flags
                            .chars()
                            .filter_map(|c| {
                                if c.is_ascii_lowercase() {
                                    translate.get(&c).copied()
                                } else {
                                    Some(c)
                                }
                            })
                            .collect();
                        let flags = FlagChange::Replace(flags).apply("");
                        insert_message(
                            &tx,
                            NewRow {
                                folder: target.id,
                                uid: next,
                                modseq,
                                flags: &flags,
                                internal_date: *date,
                                size: *size,
                                blob: *blob,
                            },
                        )
                        .await?;
                        pairs.push((*uid, as_u32(next)));
                        next += 1;
                    }
                }
                (target.validity, pairs)
            }))
        })?;
        self.told(&[&told]);
        Ok(copied)
    }

    fn set_flags(
        &self,
        mailbox: &str,
        folder: &str,
        changes: &[(MessageMeta, FlagChange)],
        unchanged_since: Option<u64>,
    ) -> Result<FlagsSet, StoreError> {
        let (mailbox, folder) = (mailbox.to_string(), checked(folder)?);
        let changes = changes.to_vec();
        let told = mailbox.clone();
        let set = self.run(move |inner| async move {
            Ok(transaction!(inner, tx, [&mailbox], {
                let Some(f) = folder_row(&tx, &mailbox, &folder, true).await? else {
                    return Ok(FlagsSet::default());
                };
                let uids: Vec<i64> = changes.iter().map(|(m, _)| i64::from(m.uid)).collect();
                let rows = tx
                    .query(
                        "SELECT uid, flags, modseq, recent FROM kubemail_messages \
                         WHERE folder_id = $1 AND uid = ANY($2)",
                        &[&f.id, &uids],
                    )
                    .await
                    .map_err(db)?;
                let mut current: HashMap<u32, (String, i64, bool)> = rows
                    .iter()
                    .map(|r| (as_u32(r.get(0)), (r.get(1), r.get(2), r.get(3))))
                    .collect();
                let mut out = FlagsSet::default();
                // One mod-sequence for the whole command, taken at the first real change.
                let mut modseq = None;
                for (m, change) in &changes {
                    let Some((flags, seq, recent)) = current.get_mut(&m.uid) else {
                        continue;
                    };
                    if unchanged_since.is_some_and(|limit| as_u64(*seq) > limit) {
                        out.modified.push(m.uid);
                        continue;
                    }
                    let new = change.apply(flags);
                    if new != *flags {
                        let next = *modseq.get_or_insert(f.highest_modseq + 1);
                        tx.execute(
                            "UPDATE kubemail_messages SET flags = $3, modseq = $4, recent = false \
                             WHERE folder_id = $1 AND uid = $2",
                            &[&f.id, &i64::from(m.uid), &new, &next],
                        )
                        .await
                        .map_err(db)?;
                        *flags = new;
                        *seq = next;
                        *recent = false;
                    }
                    out.now.push(MessageMeta {
                        flags: flags.clone(),
                        modseq: as_u64(*seq),
                        in_new: *recent,
                        ..m.clone()
                    });
                }
                if modseq.is_some() {
                    bump_modseq(&tx, &f).await?;
                }
                out
            }))
        })?;
        self.told(&[&told]);
        Ok(set)
    }

    fn claim_recent(&self, mailbox: &str, folder: &str) -> Result<Vec<u32>, StoreError> {
        let (mailbox, folder) = (mailbox.to_string(), checked(folder)?);
        self.run(move |inner| async move {
            let rows = client(&inner)
                .await?
                .query(
                    "UPDATE kubemail_messages m SET recent = false FROM kubemail_folders f \
                     WHERE f.id = m.folder_id AND f.mailbox = $1 AND f.name = $2 AND m.recent \
                     RETURNING m.uid",
                    &[&mailbox, &folder],
                )
                .await
                .map_err(db)?;
            let mut uids: Vec<u32> = rows.iter().map(|r| as_u32(r.get(0))).collect();
            uids.sort_unstable();
            Ok(uids)
        })
    }

    fn folders(&self, mailbox: &str) -> Result<Vec<String>, StoreError> {
        let mut out = self.names(
            "SELECT name FROM kubemail_folders WHERE mailbox = $1 AND name <> 'INBOX'",
            mailbox,
        )?;
        out.insert(0, INBOX.to_string());
        Ok(out)
    }

    fn create_folder(&self, mailbox: &str, folder: &str) -> Result<(), StoreError> {
        let (mailbox, folder) = (mailbox.to_string(), checked(folder)?);
        if folder == INBOX {
            return Err(StoreError::FolderExists(folder));
        }
        let told = mailbox.clone();
        self.run(move |inner| async move {
            transaction!(inner, tx, [&mailbox], {
                make_folder(&tx, &mailbox, INBOX).await?;
                // Parents first, so the hierarchy is listable.
                let parts: Vec<&str> = folder.split('/').collect();
                for n in 1..parts.len() {
                    let parent = folder_key(&parts[..n].join("/"));
                    if parent != INBOX {
                        make_folder(&tx, &mailbox, &parent).await?;
                    }
                }
                if !make_folder(&tx, &mailbox, &folder).await? {
                    return Err(StoreError::FolderExists(folder));
                }
            });
            Ok(())
        })?;
        self.told(&[&told]);
        Ok(())
    }

    fn delete_folder(&self, mailbox: &str, folder: &str) -> Result<(), StoreError> {
        let (mailbox, folder) = (mailbox.to_string(), checked(folder)?);
        if folder == INBOX {
            return Err(StoreError::NotAllowed("INBOX cannot be deleted"));
        }
        let told = mailbox.clone();
        self.run(move |inner| async move {
            let blobs = transaction!(inner, tx, [&mailbox], {
                let Some(f) = folder_row(&tx, &mailbox, &folder, true).await? else {
                    return Err(StoreError::NoSuchFolder(folder));
                };
                let rows = tx
                    .query(
                        "SELECT DISTINCT blob_id FROM kubemail_messages WHERE folder_id = $1",
                        &[&f.id],
                    )
                    .await
                    .map_err(db)?;
                tx.execute("DELETE FROM kubemail_folders WHERE id = $1", &[&f.id])
                    .await
                    .map_err(db)?;
                rows.iter().map(|r| r.get(0)).collect::<Vec<i64>>()
            });
            sweep_blobs(&inner.pool, blobs).await;
            Ok(())
        })?;
        self.told(&[&told]);
        Ok(())
    }

    fn rename_folder(&self, mailbox: &str, from: &str, to: &str) -> Result<(), StoreError> {
        let (from, to) = (checked(from)?, checked(to)?);
        if to == INBOX {
            return Err(StoreError::FolderExists(to));
        }
        if from == INBOX {
            // RFC 3501: renaming INBOX moves its messages and leaves INBOX empty.
            self.create_folder(mailbox, &to)?;
            let messages = self.index(mailbox, INBOX)?.messages;
            self.copy(mailbox, INBOX, &messages, &to)?;
            return self.expunge(mailbox, INBOX, &messages);
        }
        // Into its own subtree (`x` to `x/y`): its parents would be made inside it first.
        if to.starts_with(&format!("{from}/")) {
            return Err(StoreError::NotAllowed(
                "a folder cannot be renamed into itself",
            ));
        }
        let mailbox = mailbox.to_string();
        let told = mailbox.clone();
        self.run(move |inner| async move {
            transaction!(inner, tx, [&mailbox], {
                if folder_row(&tx, &mailbox, &to, false).await?.is_some() {
                    return Err(StoreError::FolderExists(to));
                }
                if folder_row(&tx, &mailbox, &from, true).await?.is_none() {
                    return Err(StoreError::NoSuchFolder(from));
                }
                let parts: Vec<&str> = to.split('/').collect();
                for n in 1..parts.len() {
                    let parent = folder_key(&parts[..n].join("/"));
                    if parent != INBOX {
                        make_folder(&tx, &mailbox, &parent).await?;
                    }
                }
                // Children move with their parent.
                let (old, new) = (format!("{from}/"), format!("{to}/"));
                let length = old.chars().count() as i32;
                tx.execute(
                    "UPDATE kubemail_folders SET name = $3 || substr(name, $4 + 1) \
                     WHERE mailbox = $1 AND left(name, $4) = $2",
                    &[&mailbox, &old, &new, &length],
                )
                .await
                .map_err(db)?;
                tx.execute(
                    "UPDATE kubemail_folders SET name = $3 WHERE mailbox = $1 AND name = $2",
                    &[&mailbox, &from, &to],
                )
                .await
                .map_err(db)?;
            });
            Ok(())
        })?;
        self.told(&[&told]);
        Ok(())
    }

    fn subscriptions(&self, mailbox: &str) -> Result<Vec<String>, StoreError> {
        self.names(
            "SELECT name FROM kubemail_subscriptions WHERE mailbox = $1",
            mailbox,
        )
    }

    fn set_subscribed(&self, mailbox: &str, folder: &str, on: bool) -> Result<(), StoreError> {
        checked(folder)?;
        let sql = if on {
            "INSERT INTO kubemail_subscriptions (mailbox, name) VALUES ($1, $2) ON CONFLICT DO NOTHING"
        } else {
            "DELETE FROM kubemail_subscriptions WHERE mailbox = $1 AND name = $2"
        };
        self.execute(sql, &[mailbox, folder]).map(|_| ())
    }

    fn ensure_default_folders(&self, mailbox: &str) -> Result<(), StoreError> {
        let mailbox = mailbox.to_string();
        self.run(move |inner| async move {
            transaction!(inner, tx, &[] as &[&str], {
                tx.execute(
                    "INSERT INTO kubemail_mailboxes (address) VALUES ($1) ON CONFLICT DO NOTHING",
                    &[&mailbox],
                )
                .await
                .map_err(db)?;
                let done: bool = tx
                    .query_one(
                        "SELECT defaults_made FROM kubemail_mailboxes WHERE address = $1 FOR UPDATE",
                        &[&mailbox],
                    )
                    .await
                    .map_err(db)?
                    .get(0);
                if done {
                    return Ok(());
                }
                make_folder(&tx, &mailbox, INBOX).await?;
                for name in super::DEFAULT_FOLDERS
                    .iter()
                    .map(|(name, _)| *name)
                    .chain([INBOX])
                {
                    make_folder(&tx, &mailbox, name).await?;
                    tx.execute(
                        "INSERT INTO kubemail_subscriptions (mailbox, name) VALUES ($1, $2) \
                         ON CONFLICT DO NOTHING",
                        &[&mailbox, &name],
                    )
                    .await
                    .map_err(db)?;
                }
                tx.execute(
                    "UPDATE kubemail_mailboxes SET defaults_made = true WHERE address = $1",
                    &[&mailbox],
                )
                .await
                .map_err(db)?;
            });
            Ok(())
        })
    }

    fn sieve_scripts(&self, mailbox: &str) -> Result<SieveScripts, StoreError> {
        let mailbox = mailbox.to_string();
        self.run(move |inner| async move {
            let client = client(&inner).await?;
            let rows = client
                .query(
                    "SELECT name FROM kubemail_sieve_scripts WHERE mailbox = $1",
                    &[&mailbox],
                )
                .await
                .map_err(db)?;
            let mut names: Vec<String> = rows.iter().map(|r| r.get(0)).collect();
            names.sort();
            let active = client
                .query_opt(
                    "SELECT sieve_active FROM kubemail_mailboxes WHERE address = $1",
                    &[&mailbox],
                )
                .await
                .map_err(db)?
                .and_then(|r| r.get::<_, Option<String>>(0))
                .filter(|a| names.contains(a));
            Ok(SieveScripts { names, active })
        })
    }

    fn sieve_script(&self, mailbox: &str, name: &str) -> Result<Option<String>, StoreError> {
        let (mailbox, name) = (mailbox.to_string(), name.to_string());
        self.run(move |inner| async move {
            let row = client(&inner)
                .await?
                .query_opt(
                    "SELECT body FROM kubemail_sieve_scripts WHERE mailbox = $1 AND name = $2",
                    &[&mailbox, &name],
                )
                .await
                .map_err(db)?;
            Ok(row.map(|r| r.get(0)))
        })
    }

    fn put_sieve_script(&self, mailbox: &str, name: &str, text: &str) -> Result<(), StoreError> {
        self.execute(
            "INSERT INTO kubemail_sieve_scripts (mailbox, name, body) VALUES ($1, $2, $3) \
             ON CONFLICT (mailbox, name) DO UPDATE SET body = EXCLUDED.body",
            &[mailbox, name, text],
        )
        .map(|_| ())
    }

    fn delete_sieve_script(&self, mailbox: &str, name: &str) -> Result<(), StoreError> {
        let gone = self.execute(
            "DELETE FROM kubemail_sieve_scripts WHERE mailbox = $1 AND name = $2",
            &[mailbox, name],
        )?;
        if gone == 0 {
            return Err(StoreError::NoSuchFolder(name.into()));
        }
        Ok(())
    }

    fn rename_sieve_script(&self, mailbox: &str, from: &str, to: &str) -> Result<(), StoreError> {
        let (mailbox, from, to) = (mailbox.to_string(), from.to_string(), to.to_string());
        self.run(move |inner| async move {
            transaction!(inner, tx, &[] as &[&str], {
                let exists = |name: String| {
                    let (tx, mailbox) = (&tx, &mailbox);
                    async move {
                        tx.query_opt(
                            "SELECT 1 FROM kubemail_sieve_scripts WHERE mailbox = $1 AND name = $2 FOR UPDATE",
                            &[mailbox, &name],
                        )
                        .await
                        .map(|r| r.is_some())
                        .map_err(db)
                    }
                };
                if !exists(from.clone()).await? {
                    return Err(StoreError::NoSuchFolder(from));
                }
                if exists(to.clone()).await? {
                    return Err(StoreError::FolderExists(to));
                }
                tx.execute(
                    "UPDATE kubemail_sieve_scripts SET name = $3 WHERE mailbox = $1 AND name = $2",
                    &[&mailbox, &from, &to],
                )
                .await
                .map_err(db)?;
                tx.execute(
                    "UPDATE kubemail_mailboxes SET sieve_active = $3 \
                     WHERE address = $1 AND sieve_active = $2",
                    &[&mailbox, &from, &to],
                )
                .await
                .map_err(db)?;
            });
            Ok(())
        })
    }

    fn set_active_sieve_script(&self, mailbox: &str, name: Option<&str>) -> Result<(), StoreError> {
        let (mailbox, name) = (mailbox.to_string(), name.map(str::to_string));
        self.run(move |inner| async move {
            transaction!(inner, tx, &[] as &[&str], {
                if let Some(name) = &name {
                    let exists = tx
                        .query_opt(
                            "SELECT 1 FROM kubemail_sieve_scripts WHERE mailbox = $1 AND name = $2",
                            &[&mailbox, name],
                        )
                        .await
                        .map_err(db)?;
                    if exists.is_none() {
                        return Err(StoreError::NoSuchFolder(name.clone()));
                    }
                }
                tx.execute(
                    "INSERT INTO kubemail_mailboxes (address, sieve_active) VALUES ($1, $2) \
                     ON CONFLICT (address) DO UPDATE SET sieve_active = EXCLUDED.sieve_active",
                    &[&mailbox, &name],
                )
                .await
                .map_err(db)?;
            });
            Ok(())
        })
    }

    fn vacation_due(
        &self,
        mailbox: &str,
        key: &str,
        now: i64,
        seconds: u64,
    ) -> Result<bool, StoreError> {
        let (mailbox, key) = (mailbox.to_string(), key.to_string());
        let until = now.saturating_add(i64::try_from(seconds).unwrap_or(i64::MAX));
        self.run(move |inner| async move {
            Ok(transaction!(inner, tx, &[] as &[&str], {
                tx.execute(
                    "DELETE FROM kubemail_vacation WHERE mailbox = $1 AND until <= $2",
                    &[&mailbox, &now],
                )
                .await
                .map_err(db)?;
                // Check and record are one statement: of two replicas asking at once, one
                // inserts (due) and the other finds the row (not due).
                tx.query_opt(
                    "INSERT INTO kubemail_vacation (mailbox, key, until) VALUES ($1, $2, $3) \
                     ON CONFLICT (mailbox, key) DO NOTHING RETURNING 1",
                    &[&mailbox, &key, &until],
                )
                .await
                .map_err(db)?
                .is_some()
            }))
        })
    }

    fn lock_maildrop(&self, mailbox: &str, holder: &str, until: i64) -> Result<bool, StoreError> {
        let (mailbox, holder) = (mailbox.to_string(), holder.to_string());
        // The lease runs on the database's clock (replicas' clocks may differ): `until` counts
        // from this process's now.
        let lease = until - now_secs();
        self.run(move |inner| async move {
            // Taken when free, expired, or already this holder's (a renewal): one statement.
            let row = client(&inner)
                .await?
                .query_opt(
                    "INSERT INTO kubemail_maildrop_locks (mailbox, holder, until) \
                     VALUES ($1, $2, extract(epoch FROM now())::bigint + $3) \
                     ON CONFLICT (mailbox) DO UPDATE SET holder = EXCLUDED.holder, until = EXCLUDED.until \
                     WHERE kubemail_maildrop_locks.holder = EXCLUDED.holder \
                     OR kubemail_maildrop_locks.until < extract(epoch FROM now())::bigint RETURNING 1",
                    &[&mailbox, &holder, &lease],
                )
                .await
                .map_err(db)?;
            Ok(row.is_some())
        })
    }

    fn unlock_maildrop(&self, mailbox: &str, holder: &str) -> Result<(), StoreError> {
        self.execute(
            "DELETE FROM kubemail_maildrop_locks WHERE mailbox = $1 AND holder = $2",
            &[mailbox, holder],
        )
        .map(|_| ())
    }

    fn changes(&self, mailbox: &str) -> watch::Receiver<u64> {
        self.inner
            .watchers
            .lock()
            .expect("watchers")
            .entry(mailbox.to_string())
            .or_insert_with(|| watch::channel(0).0)
            .subscribe()
    }
}

/// The outbound queue in the database (see `crate::outbound`): entries as JSON beside the
/// message, each leased by the replica delivering it until `lease_until`. A replica that dies
/// mid-delivery stops renewing its leases, and another takes the entries over once they expire.
impl Postgres {
    /// Runs `work` on the store's runtime, for async callers.
    async fn run_async<T, F>(&self, work: impl FnOnce(Arc<Inner>) -> F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: Future<Output = Result<T, StoreError>> + Send + 'static,
    {
        self.inner
            .handle
            .spawn(limited(work(self.inner.clone())))
            .await
            .unwrap_or_else(|e| Err(unavailable(e)))
    }

    /// [`Postgres::health`], for async callers.
    pub async fn health_async(&self) -> Result<Health, StoreError> {
        self.run_async(|inner| async move {
            let client = inner.pool.get().await.map_err(pool_error)?;
            let row = client
                .query_one("SELECT max(version) FROM kubemail_schema", &[])
                .await
                .map_err(db)?;
            Ok(Health {
                schema: row.get::<_, Option<i32>>(0).unwrap_or(0),
            })
        })
        .await
    }

    /// Woken when a replica queued something (or the LISTEN connection came back).
    pub fn queue_wakeup(&self) -> Arc<tokio::sync::Notify> {
        self.inner.queue_wake.clone()
    }

    /// Queues a message, durably; every replica's runner is woken.
    pub fn queue_add(
        &self,
        id: &str,
        entry: String,
        next_attempt: i64,
        message: Vec<u8>,
    ) -> Result<(), StoreError> {
        let id = id.to_string();
        self.run(move |inner| async move {
            transaction!(inner, tx, [""], {
                tx.execute(
                    "INSERT INTO kubemail_queue (id, entry, message, next_attempt) \
                     VALUES ($1, $2, $3, $4)",
                    &[&id, &entry, &message, &next_attempt],
                )
                .await
                .map_err(db)?;
            });
            Ok(())
        })
    }

    /// Leases up to `limit` entries due at `now` that nobody holds (or whose holder's lease
    /// ran out) to `owner` for `lease` seconds of the database's clock; their entries (JSON). Rows another replica is
    /// leasing at this moment are skipped, not waited for.
    pub async fn queue_claim(
        &self,
        owner: &str,
        now: i64,
        lease: i64,
        limit: i64,
    ) -> Result<Vec<String>, StoreError> {
        let owner = owner.to_string();
        self.run_async(move |inner| async move {
            let rows = client(&inner)
                .await?
                .query(
                    // Leases run on the database's clock, not each replica's (whose clocks
                    // may differ by more than a lease).
                    "UPDATE kubemail_queue SET lease_owner = $1, \
                     lease_until = extract(epoch FROM now())::bigint + $3 WHERE id IN \
                     (SELECT id FROM kubemail_queue WHERE next_attempt <= $2 \
                      AND lease_until < extract(epoch FROM now())::bigint \
                      ORDER BY next_attempt LIMIT $4 FOR UPDATE SKIP LOCKED) RETURNING entry",
                    &[&owner, &now, &lease, &limit],
                )
                .await
                .map_err(db)?;
            Ok(rows.iter().map(|r| r.get(0)).collect())
        })
        .await
    }

    /// The queue's depth and its earliest next attempt.
    pub async fn queue_depth(&self) -> Result<(usize, Option<i64>), StoreError> {
        self.run_async(move |inner| async move {
            let row = client(&inner)
                .await?
                .query_one(
                    "SELECT count(*), min(greatest(next_attempt, lease_until)) FROM kubemail_queue",
                    &[],
                )
                .await
                .map_err(db)?;
            Ok((as_u64(row.get(0)) as usize, row.get(1)))
        })
        .await
    }

    /// A queued message's bytes.
    pub async fn queue_message(&self, id: &str) -> Result<Option<Vec<u8>>, StoreError> {
        let id = id.to_string();
        self.run_async(move |inner| async move {
            let row = client(&inner)
                .await?
                .query_opt("SELECT message FROM kubemail_queue WHERE id = $1", &[&id])
                .await
                .map_err(db)?;
            Ok(row.map(|r| r.get(0)))
        })
        .await
    }

    /// Records an entry's progress while `owner` holds it, renewing the lease for `lease`
    /// seconds (0: released, for the next attempt at `next_attempt`). False: the lease was lost
    /// (it ran out and another replica took the entry), and nothing was written.
    pub async fn queue_save(
        &self,
        owner: &str,
        id: &str,
        entry: String,
        next_attempt: i64,
        lease: i64,
    ) -> Result<bool, StoreError> {
        let (owner, id) = (owner.to_string(), id.to_string());
        self.run_async(move |inner| async move {
            let holder = (lease > 0).then_some(owner.clone());
            let n = client(&inner)
                .await?
                .execute(
                    "UPDATE kubemail_queue SET entry = $3, next_attempt = $4, \
                     lease_until = CASE WHEN $5::bigint > 0 THEN extract(epoch FROM now())::bigint + $5::bigint ELSE 0 END, \
                     lease_owner = $6 WHERE id = $1 AND lease_owner = $2",
                    &[&id, &owner, &entry, &next_attempt, &lease, &holder],
                )
                .await
                .map_err(db)?;
            Ok(n == 1)
        })
        .await
    }

    /// Renews `owner`'s leases on these entries for `lease` seconds.
    pub async fn queue_renew(
        &self,
        owner: &str,
        ids: Vec<String>,
        lease: i64,
    ) -> Result<(), StoreError> {
        let owner = owner.to_string();
        self.run_async(move |inner| async move {
            client(&inner)
                .await?
                .execute(
                    "UPDATE kubemail_queue SET lease_until = extract(epoch FROM now())::bigint + $3 \
                     WHERE lease_owner = $1 AND id = ANY($2)",
                    &[&owner, &ids, &lease],
                )
                .await
                .map_err(db)?;
            Ok(())
        })
        .await
    }

    /// Removes a finished entry `owner` holds.
    pub async fn queue_remove(&self, owner: &str, id: &str) -> Result<(), StoreError> {
        let (owner, id) = (owner.to_string(), id.to_string());
        self.run_async(move |inner| async move {
            client(&inner)
                .await?
                .execute(
                    "DELETE FROM kubemail_queue WHERE id = $1 AND lease_owner = $2",
                    &[&id, &owner],
                )
                .await
                .map_err(db)?;
            Ok(())
        })
        .await
    }
}

/// A folder as another store has it, for `mail-runtime migrate`.
#[derive(Debug, Clone)]
pub struct ImportedFolder {
    /// The mailbox's address.
    pub mailbox: String,
    /// The folder's name.
    pub name: String,
    /// Its UIDVALIDITY, kept.
    pub validity: u32,
    /// The next UID it hands out.
    pub uid_next: u32,
    /// Its HIGHESTMODSEQ.
    pub highest_modseq: u64,
    /// Its keyword table (flag letter `a + n` is the keyword at `n`).
    pub keywords: Vec<String>,
}

/// A message as another store has it.
#[derive(Debug, Clone)]
pub struct ImportedMessage {
    /// UID, kept.
    pub uid: u32,
    /// Mod-sequence, kept.
    pub modseq: u64,
    /// Flag letters.
    pub flags: String,
    /// Arrival time.
    pub internal_date: i64,
    /// Still `\Recent`.
    pub recent: bool,
    /// The message.
    pub body: Vec<u8>,
}

/// Copying another store in (`mail-runtime migrate`): folders keep UIDVALIDITY, UIDs,
/// mod-sequences, flags, keywords and dates; a message already copied is skipped, so a copy
/// that stopped half-way is resumed by running it again.
impl Postgres {
    /// Every mailbox that has a folder here, sorted.
    pub fn mailboxes(&self) -> Result<Vec<String>, StoreError> {
        self.run(move |inner| async move {
            let rows = client(&inner)
                .await?
                .query(
                    "SELECT DISTINCT mailbox FROM kubemail_folders ORDER BY mailbox",
                    &[],
                )
                .await
                .map_err(db)?;
            Ok(rows.iter().map(|r| r.get(0)).collect())
        })
    }

    /// Makes (or takes over) a folder as another store has it; its id and its keyword table,
    /// which keeps the keywords already here at their letters and adds those it lacks (the
    /// caller translates the copied messages' letters). A folder already here with another
    /// UIDVALIDITY is taken over only while it is empty (the default folders a first login
    /// made); holding other mail, it is refused.
    pub fn import_folder(&self, folder: ImportedFolder) -> Result<(i64, Vec<String>), StoreError> {
        self.run(move |inner| async move {
            let ImportedFolder {
                mailbox,
                name,
                validity,
                uid_next,
                highest_modseq,
                keywords,
            } = folder;
            let name = folder_key(&name);
            let (validity, uid_next, modseq) = (
                i64::from(validity),
                i64::from(uid_next),
                i64::try_from(highest_modseq).unwrap_or(i64::MAX),
            );
            Ok(transaction!(inner, tx, [&mailbox], {
                // New folders never get a UIDVALIDITY at or below one copied in.
                tx.execute(
                    "SELECT setval('kubemail_uidvalidity', greatest((SELECT last_value FROM kubemail_uidvalidity), $1))",
                    &[&validity],
                )
                .await
                .map_err(db)?;
                let here = tx
                    .query_opt(
                        "SELECT f.id, f.uid_validity, f.keywords, \
                         (SELECT count(*) FROM kubemail_messages m WHERE m.folder_id = f.id) \
                         FROM kubemail_folders f WHERE f.mailbox = $1 AND f.name = $2 FOR UPDATE",
                        &[&mailbox, &name],
                    )
                    .await
                    .map_err(db)?;
                match here {
                    None => {
                        let id: i64 = tx
                            .query_one(
                                "INSERT INTO kubemail_folders \
                                 (mailbox, name, uid_validity, uid_next, highest_modseq, keywords) \
                                 VALUES ($1, $2, $3, $4, $5, $6) RETURNING id",
                                &[&mailbox, &name, &validity, &uid_next, &modseq, &keywords],
                            )
                            .await
                            .map_err(db)?
                            .get(0);
                        (id, keywords)
                    }
                    Some(row) => {
                        let (id, here_validity, mut table, count): (i64, i64, Vec<String>, i64) =
                            (row.get(0), row.get(1), row.get(2), row.get(3));
                        if here_validity != validity && count > 0 {
                            return Err(StoreError::NotAllowed(
                                "the folder already holds other mail in the database",
                            ));
                        }
                        for keyword in keywords {
                            if !table.iter().any(|k| k.eq_ignore_ascii_case(&keyword)) {
                                table.push(keyword);
                            }
                        }
                        if table.len() > MAX_KEYWORDS {
                            return Err(StoreError::NotAllowed(
                                "the folder's keywords here and in the copy are more than it can hold",
                            ));
                        }
                        tx.execute(
                            "UPDATE kubemail_folders SET uid_validity = $2, \
                             uid_next = greatest(uid_next, $3), \
                             highest_modseq = greatest(highest_modseq, $4), keywords = $5 \
                             WHERE id = $1",
                            &[&id, &validity, &uid_next, &modseq, &table],
                        )
                        .await
                        .map_err(db)?;
                        (id, table)
                    }
                }
            }))
        })
    }

    /// Copies messages into a folder made by [`Postgres::import_folder`], in one transaction;
    /// how many were new (a UID already there is skipped).
    pub fn import_messages(
        &self,
        folder: i64,
        messages: Vec<ImportedMessage>,
    ) -> Result<usize, StoreError> {
        self.run(move |inner| async move {
            Ok(transaction!(inner, tx, &[] as &[&str], {
                let mut copied = 0;
                for m in &messages {
                    let uid = i64::from(m.uid);
                    let there = tx
                        .query_opt(
                            "SELECT 1 FROM kubemail_messages WHERE folder_id = $1 AND uid = $2",
                            &[&folder, &uid],
                        )
                        .await
                        .map_err(db)?;
                    if there.is_some() {
                        continue;
                    }
                    let blob = insert_blob(&tx, &m.body).await?;
                    tx.execute(
                        "INSERT INTO kubemail_messages \
                         (folder_id, uid, modseq, flags, internal_date, size, recent, blob_id) \
                         VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
                        &[
                            &folder,
                            &uid,
                            &i64::try_from(m.modseq).unwrap_or(i64::MAX),
                            &m.flags,
                            &m.internal_date,
                            &(m.body.len() as i64),
                            &m.recent,
                            &blob,
                        ],
                    )
                    .await
                    .map_err(db)?;
                    copied += 1;
                }
                copied
            }))
        })
    }

    /// Marks a mailbox's default folders as made (a copied mailbox keeps the folders it had:
    /// one the user deleted is not made again at the next login).
    pub fn import_mailbox_done(&self, mailbox: &str) -> Result<(), StoreError> {
        self.execute(
            "INSERT INTO kubemail_mailboxes (address, defaults_made) VALUES ($1, true) \
             ON CONFLICT (address) DO UPDATE SET defaults_made = true",
            &[mailbox],
        )
        .map(|_| ())
    }
}

/// Longest a greylisting or rate-limit decision waits for the database before the process
/// decides alone (the session waits for it in its protocol loop).
pub const QUICK_DECISION: Duration = Duration::from_secs(2);

/// What greylisting asks of a triplet.
#[derive(Debug, Clone, Copy)]
pub struct GreylistAsk<'a> {
    /// The client's network (see `smtp::screen`).
    pub network: &'a str,
    /// Sender and recipient.
    pub triplet: &'a str,
    /// Now, in seconds.
    pub now: i64,
    /// How long a new triplet waits.
    pub delay: i64,
    /// How long a triplet that waited may come back to pass.
    pub retry_window: i64,
    /// How long one that passed is let through.
    pub pass: i64,
    /// Most live triplets one network may have.
    pub per_network: i64,
    /// Most triplets remembered in all.
    pub total: i64,
}

/// Greylisting and relay rate limits in the database, for every replica (see
/// `smtp::screen::Greylist` and `outbound::limits::RateLimiter`, which ask here when the
/// store is PostgreSQL, and decide alone when it cannot be reached).
impl Postgres {
    /// Whether the triplet may come now; if not, in how many seconds. One transaction, the
    /// triplet's row locked.
    pub fn greylist_check(&self, ask: GreylistAsk<'_>) -> Result<Result<(), i64>, StoreError> {
        let (network, triplet) = (ask.network.to_string(), ask.triplet.to_string());
        let GreylistAsk {
            now,
            delay,
            retry_window,
            pass,
            per_network,
            total,
            ..
        } = ask;
        self.run_within(QUICK_DECISION, move |inner| async move {
            Ok(transaction!(inner, tx, &[] as &[&str], {
                let seen = tx
                    .query_opt(
                        "SELECT first_seen, passed, expires FROM kubemail_greylist \
                         WHERE network = $1 AND triplet = $2 FOR UPDATE",
                        &[&network, &triplet],
                    )
                    .await
                    .map_err(db)?;
                match seen {
                    Some(row) if row.get::<_, i64>(2) > now => {
                        let (first, passed): (i64, bool) = (row.get(0), row.get(1));
                        if passed || now >= first + delay {
                            tx.execute(
                                "UPDATE kubemail_greylist SET passed = true, expires = $3 \
                                 WHERE network = $1 AND triplet = $2",
                                &[&network, &triplet, &(now + pass)],
                            )
                            .await
                            .map_err(db)?;
                            Ok(())
                        } else {
                            Err(first + delay - now)
                        }
                    }
                    _ => {
                        let live: i64 = tx
                            .query_one(
                                "SELECT count(*) FROM kubemail_greylist WHERE network = $1 AND expires > $2",
                                &[&network, &now],
                            )
                            .await
                            .map_err(db)?
                            .get(0);
                        // A flood from one network waits without being remembered, and so
                        // does everyone once the table is at its ceiling (the planner's row
                        // estimate: cheap, and kept up by autovacuum).
                        let rows: i64 = tx
                            .query_one(
                                "SELECT greatest(reltuples, 0)::bigint FROM pg_class \
                                 WHERE oid = 'kubemail_greylist'::regclass",
                                &[],
                            )
                            .await
                            .map_err(db)?
                            .get(0);
                        if live < per_network && rows < total {
                            tx.execute(
                                "INSERT INTO kubemail_greylist VALUES ($1, $2, $3, false, $4) \
                                 ON CONFLICT (network, triplet) DO UPDATE SET first_seen = $3, \
                                 passed = false, expires = $4",
                                &[&network, &triplet, &now, &(now + retry_window)],
                            )
                            .await
                            .map_err(db)?;
                        }
                        Err(delay)
                    }
                }
            }))
        })
    }

    /// Whether one more message fits every `(key, messages, period in seconds)`; if it does,
    /// it is counted against all of them. The keys are locked in order (advisory locks), so
    /// two replicas cannot both take the last place.
    pub fn rate_take(&self, limits: Vec<(String, i64, i64)>) -> Result<bool, StoreError> {
        let mut limits = limits;
        limits.sort();
        self.run_within(QUICK_DECISION, move |inner| async move {
            Ok(transaction!(inner, tx, &[] as &[&str], {
                let now_ms: i64 = tx
                    .query_one(
                        "SELECT (extract(epoch FROM clock_timestamp()) * 1000)::bigint",
                        &[],
                    )
                    .await
                    .map_err(db)?
                    .get(0);
                let mut fits = true;
                for (key, messages, period) in &limits {
                    tx.execute("SELECT pg_advisory_xact_lock(hashtext($1))", &[key])
                        .await
                        .map_err(db)?;
                    tx.execute(
                        "DELETE FROM kubemail_rate_events WHERE key = $1 AND at_ms <= $2",
                        &[key, &(now_ms - period * 1000)],
                    )
                    .await
                    .map_err(db)?;
                    let used: i64 = tx
                        .query_one(
                            "SELECT count(*) FROM kubemail_rate_events WHERE key = $1",
                            &[key],
                        )
                        .await
                        .map_err(db)?
                        .get(0);
                    if used >= *messages {
                        fits = false;
                        break;
                    }
                }
                if fits {
                    for (key, ..) in &limits {
                        tx.execute(
                            "INSERT INTO kubemail_rate_events VALUES ($1, $2)",
                            &[key, &now_ms],
                        )
                        .await
                        .map_err(db)?;
                    }
                }
                fits
            }))
        })
    }
}
