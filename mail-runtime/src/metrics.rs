//! Prometheus metrics of the runtime, process-wide, encoded in the text format at `/metrics`.
use std::sync::{
    OnceLock,
    atomic::{AtomicI64, AtomicU64},
};

use prometheus_client::{
    encoding::text::encode,
    metrics::{
        counter::Counter,
        family::Family,
        gauge::Gauge,
        histogram::{Histogram, exponential_buckets},
    },
    registry::Registry,
};

type Labels = Vec<(&'static str, String)>;

struct Metrics {
    registry: Registry,
    sessions: Family<Labels, Counter<u64, AtomicU64>>,
    active: Family<Labels, Gauge<i64, AtomicI64>>,
    accepted: Counter<u64, AtomicU64>,
    delivered: Counter<u64, AtomicU64>,
    deferred: Counter<u64, AtomicU64>,
    bounced: Counter<u64, AtomicU64>,
    refused: Family<Labels, Counter<u64, AtomicU64>>,
    auth_failures: Family<Labels, Counter<u64, AtomicU64>>,
    queue_depth: Gauge<i64, AtomicI64>,
    config: Family<Labels, Gauge<i64, AtomicI64>>,
    mailbox_bytes: Family<Labels, Gauge<i64, AtomicI64>>,
    mailbox_messages: Family<Labels, Gauge<i64, AtomicI64>>,
    mailbox_quota: Family<Labels, Gauge<i64, AtomicI64>>,
    sieve_replies: Counter<u64, AtomicU64>,
    filter_verdicts: Family<Labels, Counter<u64, AtomicU64>>,
    filter_seconds: Family<Labels, Histogram, fn() -> Histogram>,
    /// Held while the mailbox gauges are refilled and the text encoded, so two scrapes at once
    /// never see each other's half-filled families.
    scrape: std::sync::Mutex<()>,
}

fn metrics() -> &'static Metrics {
    static METRICS: OnceLock<Metrics> = OnceLock::new();
    METRICS.get_or_init(|| {
        let mut registry = Registry::with_prefix("kubemail");
        let m = Metrics {
            registry: Registry::default(),
            sessions: Family::default(),
            active: Family::default(),
            accepted: Counter::default(),
            delivered: Counter::default(),
            deferred: Counter::default(),
            bounced: Counter::default(),
            refused: Family::default(),
            auth_failures: Family::default(),
            queue_depth: Gauge::default(),
            config: Family::default(),
            mailbox_bytes: Family::default(),
            mailbox_messages: Family::default(),
            mailbox_quota: Family::default(),
            sieve_replies: Counter::default(),
            filter_verdicts: Family::default(),
            filter_seconds: Family::new_with_constructor(|| {
                Histogram::new(exponential_buckets(0.005, 2.0, 12))
            }),
            scrape: std::sync::Mutex::new(()),
        };
        registry.register(
            "sessions",
            "Sessions started, by protocol",
            m.sessions.clone(),
        );
        registry.register(
            "sessions_active",
            "Sessions open now, by protocol",
            m.active.clone(),
        );
        registry.register(
            "filter_verdicts",
            "Verdicts of the inbound filters, by stage (dnsbl, greylist, clamd, rspamd) and verdict",
            m.filter_verdicts.clone(),
        );
        registry.register(
            "filter_duration_seconds",
            "Time a content scanner took per message, by stage (clamd, rspamd)",
            m.filter_seconds.clone(),
        );
        registry.register(
            "sieve_replies",
            "Vacation and out-of-office replies sent",
            m.sieve_replies.clone(),
        );
        registry.register(
            "messages_accepted",
            "Messages accepted with a 250 reply",
            m.accepted.clone(),
        );
        registry.register(
            "messages_delivered",
            "Messages stored in a mailbox (one per mailbox)",
            m.delivered.clone(),
        );
        registry.register(
            "messages_deferred",
            "Outbound delivery attempts deferred for a retry",
            m.deferred.clone(),
        );
        registry.register(
            "messages_bounced",
            "Messages returned to their sender",
            m.bounced.clone(),
        );
        registry.register(
            "messages_refused",
            "Messages or recipients refused, by reason",
            m.refused.clone(),
        );
        registry.register(
            "auth_failures",
            "Failed logins, by protocol",
            m.auth_failures.clone(),
        );
        registry.register(
            "queue_depth",
            "Messages waiting in the outbound queue",
            m.queue_depth.clone(),
        );
        registry.register(
            "config_info",
            "The runtime config revision served (value 1)",
            m.config.clone(),
        );
        registry.register(
            "mailbox_used_bytes",
            "Bytes stored in a mailbox, all folders together",
            m.mailbox_bytes.clone(),
        );
        registry.register(
            "mailbox_messages",
            "Messages stored in a mailbox, all folders together",
            m.mailbox_messages.clone(),
        );
        registry.register(
            "mailbox_quota_bytes",
            "A mailbox's quota (mailboxes that have one)",
            m.mailbox_quota.clone(),
        );
        Metrics { registry, ..m }
    })
}

/// A session began.
pub fn session_started(protocol: &'static str) {
    let m = metrics();
    m.sessions
        .get_or_create(&vec![("protocol", protocol.to_string())])
        .inc();
    m.active
        .get_or_create(&vec![("protocol", protocol.to_string())])
        .inc();
}

/// A session ended.
pub fn session_ended(protocol: &'static str) {
    metrics()
        .active
        .get_or_create(&vec![("protocol", protocol.to_string())])
        .dec();
}

/// A message was accepted and stored in `mailboxes` mailboxes.
pub fn message_accepted(mailboxes: usize) {
    let m = metrics();
    m.accepted.inc();
    m.delivered.inc_by(mailboxes as u64);
}

/// An inbound filter's verdict (`stage`: dnsbl, greylist, clamd, rspamd).
pub fn filter_verdict(stage: &'static str, verdict: &str) {
    metrics()
        .filter_verdicts
        .get_or_create(&vec![
            ("stage", stage.to_string()),
            ("verdict", verdict.to_string()),
        ])
        .inc();
}

/// How long a content scanner took on one message.
pub fn filter_duration(stage: &'static str, seconds: f64) {
    metrics()
        .filter_seconds
        .get_or_create(&vec![("stage", stage.to_string())])
        .observe(seconds);
}

/// A vacation or out-of-office reply was sent.
pub fn sieve_reply() {
    metrics().sieve_replies.inc();
}

/// An outbound recipient was taken by the next hop.
pub fn message_delivered() {
    metrics().delivered.inc();
}

/// An outbound delivery attempt was deferred.
pub fn message_deferred() {
    metrics().deferred.inc();
}

/// An outbound recipient failed for good (the sender gets a report).
pub fn message_bounced() {
    metrics().bounced.inc();
}

/// Messages waiting in the outbound queue.
pub fn queue_depth(depth: usize) {
    metrics().queue_depth.set(depth as i64);
}

/// Messages waiting in the outbound queue, as last reported.
pub fn queue_depth_now() -> i64 {
    metrics().queue_depth.get()
}

/// A message or recipient was refused.
pub fn refused(reason: &'static str) {
    metrics()
        .refused
        .get_or_create(&vec![("reason", reason.to_string())])
        .inc();
}

/// A login failed.
pub fn auth_failed(protocol: &'static str) {
    metrics()
        .auth_failures
        .get_or_create(&vec![("protocol", protocol.to_string())])
        .inc();
}

/// The config revision now served.
pub fn config_served(revision: &str) {
    let m = metrics();
    m.config.clear();
    m.config
        .get_or_create(&vec![("revision", revision.to_string())])
        .set(1);
}

/// Touches the outbound counters so they are exported (at zero) before outbound delivery runs.
pub fn init() {
    let m = metrics();
    m.deferred.inc_by(0);
    m.bounced.inc_by(0);
    m.queue_depth.set(0);
}

/// One mailbox's storage, as `/metrics` and `/usage` report it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct MailboxUsage {
    /// The address.
    pub address: String,
    /// Bytes stored.
    pub bytes: u64,
    /// Messages stored.
    pub messages: u64,
    /// Its quota, if it has one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub quota_bytes: Option<u64>,
}

/// The text exposition, with each served mailbox's storage.
pub fn render(mailboxes: &[MailboxUsage]) -> String {
    let m = metrics();
    let _scrape = m.scrape.lock().unwrap_or_else(|e| e.into_inner());
    // Refilled from the config's mailboxes each time: a mailbox removed from the config leaves
    // no stale series behind.
    m.mailbox_bytes.clear();
    m.mailbox_messages.clear();
    m.mailbox_quota.clear();
    for u in mailboxes {
        let labels = vec![("mailbox", u.address.clone())];
        let gauge = |n: u64| i64::try_from(n).unwrap_or(i64::MAX);
        m.mailbox_bytes.get_or_create(&labels).set(gauge(u.bytes));
        m.mailbox_messages
            .get_or_create(&labels)
            .set(gauge(u.messages));
        if let Some(q) = u.quota_bytes {
            m.mailbox_quota.get_or_create(&labels).set(gauge(q));
        }
    }
    let mut out = String::new();
    if encode(&mut out, &metrics().registry).is_err() {
        out.clear();
    }
    out
}
