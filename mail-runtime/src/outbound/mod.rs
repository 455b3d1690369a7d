//! Outbound delivery: the durable queue and the task that empties it.
//!
//! ```text
//!   SMTP DATA (relayed recipients) --enqueue (fsync)--> queue/<id>.msg + <id>.json --> 250
//!                                                            |
//!            runner: due entries --send::attempt per domain (or smarthost)--> next hop
//!                      | delivered: recipient done   | 4xx: retry later (backoff, jitter)
//!                      | 5xx or too old: DSN to the sender (local mailbox or queued back)
//! ```
pub mod dkim;
pub mod dsn;
pub mod limits;
pub mod mta_sts;
pub mod queue;
pub mod send;
pub mod srs;

use std::{
    collections::{BTreeMap, HashMap, HashSet},
    path::Path,
    sync::{Arc, Mutex},
    time::Duration,
};

use rand::Rng;
use tokio::sync::{Notify, Semaphore};

use self::{
    queue::{Entry, QueueDir, Rcpt, RcptState},
    send::Outcome,
};
use crate::{
    config::{Recipient, RouteMode},
    runtime::Runtime,
    store::StoreError,
};

/// How long a replica holds a queue entry of the shared (database) queue without renewing
/// it: a replica that dies mid-delivery leaves its entries to the others after this.
pub const LEASE_SECONDS: i64 = 30;

/// Attempts running at once, all destinations together.
const PARALLEL_ATTEMPTS: usize = 16;
/// Connections to one destination domain at once.
const PER_DOMAIN: usize = 4;

/// The queue and its bookkeeping.
#[derive(Debug)]
pub struct Outbound {
    dir: QueueDir,
    entries: Mutex<BTreeMap<String, Entry>>,
    in_flight: Mutex<HashSet<String>>,
    per_domain: Mutex<HashMap<String, Arc<Semaphore>>>,
    wake: Notify,
    /// Rate limits on relaying, shared by every SMTP session.
    pub rates: Arc<limits::RateLimiter>,
    /// Signs the senders of mail forwarded from outside.
    pub srs: srs::SrsKey,
    /// Recipient domains' MTA-STS policies.
    mta_sts: mta_sts::Policies,
    /// The queue in the database, shared by the replicas (the PostgreSQL store); new mail goes
    /// there, and entries left in the directory from before are still delivered from it.
    shared: Option<Shared>,
    /// The entries in `entries` that this process leased from the shared queue.
    leased: Mutex<HashSet<String>>,
}

/// The shared queue and this process's name as a lease holder.
#[derive(Debug)]
struct Shared {
    db: crate::store::postgres::Postgres,
    owner: String,
}

/// What the queue needs to know of a message besides its bytes.
#[derive(Debug, Clone, Default)]
pub struct Envelope {
    /// The envelope sender (empty: the null sender).
    pub from: String,
    /// The recipients in other domains.
    pub recipients: Vec<String>,
    /// The DSN envelope ID the client gave, if any.
    pub env_id: Option<String>,
    /// Mail that arrived from outside and is forwarded: a failure is logged, never reported
    /// to a sender nobody verified (that would be backscatter).
    pub no_report: bool,
}

fn now() -> i64 {
    (crate::store::unix_nanos() / 1_000_000_000) as i64
}

/// A new queue ID: time and randomness, file-name safe.
pub fn new_id() -> String {
    let r: u64 = rand::rng().random();
    format!("{:x}{:012x}", now(), r & 0xffff_ffff_ffff)
}

impl Outbound {
    /// Opens the queue under the data directory; with `shared`, new mail is queued in that
    /// database, and this process delivers what it leases from there too.
    pub fn open(
        data: &Path,
        shared: Option<crate::store::postgres::Postgres>,
    ) -> Result<Self, StoreError> {
        let (dir, entries) = QueueDir::open(data)?;
        let srs = srs::SrsKey::open(data).map_err(StoreError::from_io)?;
        if !entries.is_empty() {
            tracing::info!(queued = entries.len(), "resuming the outbound queue");
        }
        let rates = Arc::new(limits::RateLimiter::default());
        Ok(Self {
            dir,
            entries: Mutex::new(entries.into_iter().map(|e| (e.id.clone(), e)).collect()),
            in_flight: Mutex::new(HashSet::new()),
            per_domain: Mutex::new(HashMap::new()),
            wake: Notify::new(),
            rates: rates.clone(),
            srs,
            mta_sts: mta_sts::Policies::default(),
            shared: shared.map(|db| {
                rates.share(db.clone());
                Shared {
                    db,
                    owner: format!("{}-{}", std::process::id(), new_id()),
                }
            }),
            leased: Mutex::new(HashSet::new()),
        })
    }

    /// Messages in the queue.
    pub fn depth(&self) -> usize {
        self.entries.lock().expect("queue lock").len()
    }

    /// The queue's entries (for status and tests).
    pub fn entries(&self) -> Vec<Entry> {
        self.entries
            .lock()
            .expect("queue lock")
            .values()
            .cloned()
            .collect()
    }

    /// Queues a message: `prefix` header fields, then the spool file's bytes. Blocking; durable
    /// when it returns.
    pub fn enqueue(
        &self,
        envelope: &Envelope,
        prefix: &[u8],
        source: &Path,
        size: u64,
    ) -> Result<String, StoreError> {
        let id = new_id();
        let entry = Entry {
            id: id.clone(),
            from: envelope.from.clone(),
            recipients: envelope
                .recipients
                .iter()
                .map(|r| Rcpt {
                    address: r.clone(),
                    state: RcptState::Pending,
                    last_reply: None,
                    remote_mta: None,
                })
                .collect(),
            created: now(),
            attempts: 0,
            next_attempt: now(),
            size: size + prefix.len() as u64,
            env_id: envelope.env_id.clone(),
            no_report: envelope.no_report,
        };
        if let Some(shared) = &self.shared {
            let mut message = prefix.to_vec();
            message.extend(std::fs::read(source).map_err(StoreError::from_io)?);
            let json = serde_json::to_string(&entry)
                .map_err(|e| StoreError::Io(std::io::Error::other(e)))?;
            shared
                .db
                .queue_add(&id, json, entry.next_attempt, message)?;
            return Ok(id);
        }
        self.dir.add(&entry, prefix, source)?;
        self.entries
            .lock()
            .expect("queue lock")
            .insert(id.clone(), entry);
        crate::metrics::queue_depth(self.depth());
        self.wake.notify_one();
        Ok(id)
    }

    /// Queues bytes (a delivery report) through a spool file.
    fn enqueue_bytes(
        &self,
        runtime: &Runtime,
        from: &str,
        to: &str,
        bytes: &[u8],
    ) -> Result<(), StoreError> {
        let mut spool = runtime.store().spool()?;
        spool.write(bytes)?;
        let spooled = spool.finish()?;
        let envelope = Envelope {
            from: from.to_string(),
            recipients: vec![to.to_string()],
            ..Envelope::default()
        };
        let result = self.enqueue(&envelope, b"", &spooled.path, spooled.size);
        let _ = std::fs::remove_file(&spooled.path);
        result.map(|_| ())
    }

    /// Delivery attempts running now.
    pub fn in_flight(&self) -> usize {
        self.in_flight.lock().expect("queue lock").len()
    }

    /// Runs the queue until the process ends, or until the runtime drains: from then on no
    /// new attempt starts, and those running end by themselves (a message whose attempt the
    /// drain cuts short stays queued and is tried again after the restart).
    pub async fn run(self: Arc<Self>, runtime: Runtime) {
        crate::metrics::queue_depth(self.depth());
        let permits = Arc::new(Semaphore::new(PARALLEL_ATTEMPTS));
        let shared_wake = self.shared.as_ref().map(|s| s.db.queue_wakeup());
        if self.shared.is_some() {
            tokio::spawn(self.clone().renew_leases());
        }
        loop {
            if runtime.is_stopping() {
                return;
            }
            self.claim(permits.available_permits()).await;
            let now = now();
            let (due, next) = {
                let entries = self.entries.lock().expect("queue lock");
                let in_flight = self.in_flight.lock().expect("queue lock");
                let waiting = entries.values().filter(|e| !in_flight.contains(&e.id));
                let due: Vec<String> = waiting
                    .clone()
                    .filter(|e| e.next_attempt <= now)
                    .map(|e| e.id.clone())
                    .collect();
                let next = waiting
                    .filter(|e| e.next_attempt > now)
                    .map(|e| e.next_attempt)
                    .min();
                (due, next)
            };
            for id in due {
                let permit = tokio::select! {
                    biased;
                    () = runtime.stopping() => return,
                    permit = permits.clone().acquire_owned() => permit,
                };
                let Ok(permit) = permit else {
                    return;
                };
                self.in_flight
                    .lock()
                    .expect("queue lock")
                    .insert(id.clone());
                let (this, runtime) = (self.clone(), runtime.clone());
                tokio::spawn(async move {
                    this.attempt(&runtime, &id).await;
                    this.in_flight.lock().expect("queue lock").remove(&id);
                    drop(permit);
                    this.wake.notify_one();
                });
            }
            // The shared queue is looked at again at least every few seconds: entries come due
            // there, and leases run out, without a wake-up.
            let longest: i64 = if self.shared.is_some() { 5 } else { 60 };
            let sleep = next.map_or(Duration::from_secs(longest as u64), |at| {
                Duration::from_secs((at - now).clamp(1, longest) as u64)
            });
            let shared_woken = async {
                match &shared_wake {
                    Some(wake) => wake.notified().await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                () = runtime.stopping() => return,
                () = self.wake.notified() => {}
                () = shared_woken => {}
                () = tokio::time::sleep(sleep) => {}
            }
        }
    }

    fn domain_slot(&self, domain: &str) -> Arc<Semaphore> {
        self.per_domain
            .lock()
            .expect("queue lock")
            .entry(domain.to_string())
            .or_insert_with(|| Arc::new(Semaphore::new(PER_DOMAIN)))
            .clone()
    }

    fn is_leased(&self, id: &str) -> bool {
        self.leased.lock().expect("queue lock").contains(id)
    }

    /// Records an entry's progress. False: it was leased from the shared queue and the lease
    /// is lost (another replica took it over), so this attempt must stop.
    async fn save(&self, entry: &Entry) -> bool {
        if let (Some(shared), true) = (&self.shared, self.is_leased(&entry.id)) {
            let json = serde_json::to_string(entry).unwrap_or_default();
            // Tried again while the database is away (the lease is renewed meanwhile, when it
            // can be): a recipient recorded as delivered is never sent the message again.
            for attempt in 1.. {
                match shared
                    .db
                    .queue_save(
                        &shared.owner,
                        &entry.id,
                        json.clone(),
                        entry.next_attempt,
                        LEASE_SECONDS,
                    )
                    .await
                {
                    Ok(true) => break,
                    Ok(false) => {
                        tracing::warn!(id = %entry.id, "the queue entry's lease was lost; another replica delivers it");
                        return false;
                    }
                    Err(err) if attempt < 5 => {
                        tracing::warn!(id = %entry.id, error = %err, "recording delivery progress, trying again");
                        tokio::time::sleep(Duration::from_secs(2)).await;
                    }
                    Err(err) => {
                        tracing::error!(id = %entry.id, error = %err, "cannot record delivery progress");
                        break;
                    }
                }
            }
        } else if let Err(err) = self.dir.save(entry) {
            tracing::error!(id = %entry.id, error = %err, "cannot record delivery progress");
        }
        self.entries
            .lock()
            .expect("queue lock")
            .insert(entry.id.clone(), entry.clone());
        true
    }

    /// Forgets an entry this process is done with: removed when `finished`, else released
    /// (shared) or saved for its next attempt (directory).
    async fn done_with(&self, entry: &Entry, finished: bool) {
        let id = entry.id.as_str();
        if let (Some(shared), true) = (&self.shared, self.is_leased(id)) {
            let result = if finished {
                shared.db.queue_remove(&shared.owner, id).await
            } else {
                let json = serde_json::to_string(entry).unwrap_or_default();
                shared
                    .db
                    .queue_save(&shared.owner, id, json, entry.next_attempt, 0)
                    .await
                    .map(|_| ())
            };
            if let Err(err) = result {
                tracing::error!(id, error = %err, "cannot record delivery progress");
            }
            self.leased.lock().expect("queue lock").remove(id);
            self.entries.lock().expect("queue lock").remove(id);
        } else if finished {
            if let Err(err) = self.dir.remove(id) {
                tracing::error!(id, error = %err, "cannot remove a finished queue entry");
            }
            self.entries.lock().expect("queue lock").remove(id);
        } else {
            self.save(entry).await;
        }
    }

    /// Leases the shared queue's due entries, as many as `room`, into `entries`.
    async fn claim(&self, room: usize) {
        let Some(shared) = &self.shared else {
            return;
        };
        if room == 0 {
            return;
        }
        let claimed = shared
            .db
            .queue_claim(&shared.owner, now(), LEASE_SECONDS, room as i64)
            .await;
        match claimed {
            Ok(list) => {
                for json in list {
                    match serde_json::from_str::<Entry>(&json) {
                        Ok(entry) => {
                            self.leased
                                .lock()
                                .expect("queue lock")
                                .insert(entry.id.clone());
                            self.entries
                                .lock()
                                .expect("queue lock")
                                .insert(entry.id.clone(), entry);
                        }
                        Err(err) => {
                            tracing::error!(error = %err, "an unreadable shared queue entry")
                        }
                    }
                }
            }
            Err(err) => tracing::warn!(error = %err, "the shared queue cannot be read"),
        }
    }

    /// Keeps this process's leases alive while it delivers (every third of a lease).
    async fn renew_leases(self: Arc<Self>) {
        let Some(shared) = &self.shared else {
            return;
        };
        loop {
            tokio::time::sleep(Duration::from_secs((LEASE_SECONDS / 3) as u64)).await;
            let held: Vec<String> = self
                .leased
                .lock()
                .expect("queue lock")
                .iter()
                .cloned()
                .collect();
            if held.is_empty() {
                continue;
            }
            if let Err(err) = shared
                .db
                .queue_renew(&shared.owner, held, LEASE_SECONDS)
                .await
            {
                tracing::warn!(error = %err, "cannot renew the shared queue's leases");
            }
        }
    }

    /// One attempt at every pending recipient of an entry.
    async fn attempt(&self, runtime: &Runtime, id: &str) {
        let Some(mut entry) = self.entries.lock().expect("queue lock").get(id).cloned() else {
            return;
        };
        let message = match &self.shared {
            Some(shared) if self.is_leased(id) => match shared.db.queue_message(id).await {
                Ok(Some(m)) => m,
                Ok(None) => {
                    tracing::warn!(id, "a leased queue entry is gone");
                    self.leased.lock().expect("queue lock").remove(id);
                    self.entries.lock().expect("queue lock").remove(id);
                    return;
                }
                Err(err) => {
                    tracing::warn!(id, error = %err, "a queued message cannot be read now");
                    entry.next_attempt = now() + 60;
                    self.done_with(&entry, false).await;
                    return;
                }
            },
            _ => match tokio::fs::read(self.dir.message_path(id)).await {
                Ok(m) => m,
                Err(err) => {
                    tracing::error!(id, error = %err, "a queued message cannot be read; dropped");
                    let _ = self.dir.remove(id);
                    self.entries.lock().expect("queue lock").remove(id);
                    return;
                }
            },
        };
        let config = runtime.config().get();
        let resolver = match runtime.resolvers().get(&config.nameservers) {
            Ok(r) => r,
            Err(err) => {
                tracing::error!(error = %err, "no DNS resolver; delivery waits");
                entry.next_attempt = now() + 60;
                self.done_with(&entry, false).await;
                return;
            }
        };
        // Group pending recipients: one group per domain, or one for the smarthost.
        let smarthost = config.raw.relay.route.mode == RouteMode::Smarthost;
        let mut groups: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for r in entry.pending() {
            let domain = r
                .address
                .rsplit_once('@')
                .map(|(_, d)| d.to_ascii_lowercase())
                .unwrap_or_default();
            let key = if smarthost { String::new() } else { domain };
            groups.entry(key).or_default().push(r.address.clone());
        }
        let mut newly_failed = Vec::new();
        for (domain, rcpts) in groups {
            let slot = self.domain_slot(&domain);
            let Ok(_permit) = slot.acquire().await else {
                return;
            };
            let result = send::attempt(
                &config,
                &resolver,
                &self.mta_sts,
                &domain,
                &entry.from,
                &rcpts,
                &message,
            )
            .await;
            for (address, outcome) in rcpts.iter().zip(result.outcomes) {
                let Some(r) = entry.recipients.iter_mut().find(|r| &r.address == address) else {
                    continue;
                };
                r.remote_mta.clone_from(&result.host);
                match outcome {
                    Outcome::Delivered(reply) => {
                        tracing::info!(id, rcpt = %address, host = ?result.host, %reply, "delivered");
                        crate::metrics::message_delivered();
                        r.state = RcptState::Delivered;
                        r.last_reply = Some(reply);
                    }
                    Outcome::Temporary(reply) => {
                        tracing::info!(id, rcpt = %address, %reply, "deferred");
                        crate::metrics::message_deferred();
                        r.last_reply = Some(reply);
                    }
                    Outcome::Permanent(reply) => {
                        tracing::info!(id, rcpt = %address, %reply, "bounced");
                        crate::metrics::message_bounced();
                        r.state = RcptState::Failed;
                        r.last_reply = Some(reply);
                        newly_failed.push(r.clone());
                    }
                }
            }
            // Progress is recorded before the next group: nobody gets the message twice.
            if !self.save(&entry).await {
                self.leased.lock().expect("queue lock").remove(id);
                self.entries.lock().expect("queue lock").remove(id);
                return;
            }
        }
        entry.attempts += 1;
        let retry = &config.raw.relay.retry;
        let mut expired = Vec::new();
        if entry.pending().next().is_some() {
            if now() - entry.created >= retry.max_age_seconds as i64 {
                for r in &mut entry.recipients {
                    if r.state == RcptState::Pending {
                        r.state = RcptState::Failed;
                        expired.push(r.clone());
                    }
                }
            } else {
                let exponent = entry.attempts.saturating_sub(1).min(20);
                let base = retry
                    .initial_interval_seconds
                    .saturating_mul(1 << exponent)
                    .min(retry.max_interval_seconds);
                // Up to a quarter more, so retries of many messages spread out.
                let jitter = rand::rng().random_range(0..=base / 4);
                entry.next_attempt = now() + (base + jitter) as i64;
            }
        }
        for (failed, is_expired) in [(newly_failed, false), (expired, true)] {
            if !failed.is_empty() {
                self.bounce(runtime, &entry, &failed, is_expired, &message);
            }
        }
        let finished = entry.pending().next().is_none();
        self.done_with(&entry, finished).await;
        crate::metrics::queue_depth(self.depth());
    }

    /// Tells the sender about failed recipients. Reports are never sent about reports.
    fn bounce(
        &self,
        runtime: &Runtime,
        entry: &Entry,
        failed: &[Rcpt],
        expired: bool,
        message: &[u8],
    ) {
        if entry.from.is_empty() {
            tracing::warn!(id = %entry.id, "a delivery report could not be delivered; dropped");
            return;
        }
        if entry.no_report {
            for rcpt in failed {
                tracing::warn!(
                    id = %entry.id,
                    recipient = %rcpt.address,
                    reply = rcpt.last_reply.as_deref().unwrap_or_default(),
                    "a message forwarded from outside could not be delivered; no report is sent to its unverified sender"
                );
            }
            return;
        }
        let config = runtime.config().get();
        let report = dsn::report(
            &config.raw.hostname,
            entry,
            failed,
            expired,
            dsn::header_of(message),
            now(),
        );
        let stored = match config.resolve(&entry.from) {
            Recipient::Local(index) => {
                let mailbox = config.mailbox(index).address.to_ascii_lowercase();
                (|| {
                    let mut spool = runtime.store().spool()?;
                    spool.write(&report)?;
                    runtime.store().deliver(spool.finish()?, &[mailbox])
                })()
            }
            _ => self.enqueue_bytes(runtime, "", &entry.from, &report),
        };
        if let Err(err) = stored {
            tracing::error!(id = %entry.id, error = %err, "cannot store a delivery report");
        }
    }
}
