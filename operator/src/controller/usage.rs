//! Mailbox usage: read from the domain's runtime (`/usage` on the metrics Service) by the
//! MailDomain reconcile, written to each Mailbox's `status.usage`. Writes are rate-limited: a
//! Mailbox gets its first figures at once and later ones at most once per
//! [`Options::usage_every`](super::Options), and one pass writes at most
//! [`WRITES_PER_PASS`] Mailboxes, so a thousand busy mailboxes make a steady trickle of
//! writes, never a storm. Nothing here decides anything about mail: the runtime enforces
//! quotas itself.
use std::{
    collections::HashMap,
    time::{Duration, Instant},
};

use kube::{
    Api, ResourceExt,
    api::{Patch, PatchParams},
};
use kubemail_crds::{Mailbox, mailbox::MailboxUsage};
use serde::Deserialize;

use super::Context;

/// The most Mailboxes one pass (every 30 s) writes; the rest wait for the next pass. A new
/// domain of 1,000 Mailboxes shows all their figures after 5 passes.
pub const WRITES_PER_PASS: usize = 200;

/// One mailbox in the runtime's `/usage` answer.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Reported {
    /// The address.
    pub address: String,
    /// Bytes stored.
    pub bytes: u64,
    /// Messages stored.
    pub messages: u64,
    /// The quota the runtime enforces.
    #[serde(default)]
    pub quota_bytes: Option<u64>,
}

/// The runtime's `/usage` answer.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Report {
    /// The mailboxes of the config it serves.
    pub mailboxes: Vec<Reported>,
    /// Messages waiting in its outbound queue.
    #[serde(default)]
    pub queue_depth: i64,
}

/// When each Mailbox's usage was last written, by (namespace, name).
pub type UsageWrites = HashMap<(String, String), Instant>;

/// Whether a figure (a Mailbox's usage, a domain's queue) is written now: when it differs from
/// what status says, at once if status has none yet, otherwise once the last write is `every`
/// old.
pub fn due<T: PartialEq>(
    stored: Option<&T>,
    current: &T,
    last_write: Option<Instant>,
    now: Instant,
    every: Duration,
) -> bool {
    match stored {
        None => true,
        Some(stored) if stored == current => false,
        Some(_) => last_write.is_none_or(|at| now.duration_since(at) >= every),
    }
}

/// The Mailboxes of `mailboxes` whose usage in `report` is due (see [`due`]), with it: the
/// longest unwritten first, at most [`WRITES_PER_PASS`].
fn select(
    namespace: &str,
    mailboxes: &[std::sync::Arc<Mailbox>],
    report: &Report,
    writes: &UsageWrites,
    now: Instant,
    every: Duration,
) -> Vec<((String, String), MailboxUsage)> {
    let by_address: HashMap<String, &Reported> = report
        .mailboxes
        .iter()
        .map(|r| (r.address.to_ascii_lowercase(), r))
        .collect();
    let mut due_now = Vec::new();
    for mailbox in mailboxes {
        let Some(reported) = by_address.get(&mailbox.spec.address.to_ascii_lowercase()) else {
            continue;
        };
        let current = MailboxUsage::of(reported.bytes, reported.messages, reported.quota_bytes);
        let stored = mailbox.status.as_ref().and_then(|s| s.usage.as_ref());
        let key = (namespace.to_string(), mailbox.name_any());
        let last = writes.get(&key).copied();
        if due(stored, &current, last, now, every) {
            due_now.push((last, key, current));
        }
    }
    // Never written (None) first, then the oldest writes: none waits behind busier ones.
    due_now.sort_by_key(|(last, _, _)| *last);
    due_now
        .into_iter()
        .take(WRITES_PER_PASS)
        .map(|(_, key, usage)| (key, usage))
        .collect()
}

/// Writes the usage in `report` to those of `mailboxes` (a domain's, in `namespace`) that are
/// due (see [`due`]), at most [`WRITES_PER_PASS`]. A write that fails is logged and tried again
/// on a later pass. Returns how many were written.
pub async fn write(
    ctx: &Context,
    namespace: &str,
    mailboxes: &[std::sync::Arc<Mailbox>],
    report: &Report,
) -> usize {
    let due_now = {
        let writes = ctx.usage_writes.lock().expect("usage writes");
        select(
            namespace,
            mailboxes,
            report,
            &writes,
            Instant::now(),
            ctx.options.usage_every,
        )
    };
    let api: Api<Mailbox> = Api::namespaced(ctx.client.clone(), namespace);
    let mut written = 0;
    for (key, usage) in due_now {
        // A merge patch of this one field: the Mailbox's own reconcile applies the rest of the
        // status, and keeps the usage it finds there.
        let patch = serde_json::json!({"status": {"usage": usage}});
        match api
            .patch_status(&key.1, &PatchParams::default(), &Patch::Merge(&patch))
            .await
        {
            Ok(_) => {
                written += 1;
                ctx.usage_writes
                    .lock()
                    .expect("usage writes")
                    .insert(key, Instant::now());
            }
            Err(err) => {
                tracing::debug!(mailbox = %key.1, error = %err, "the usage could not be written")
            }
        }
    }
    written
}

/// The queue size a MailDomain's status shows: the reported one when [`due`], else what it
/// showed before.
pub fn queued(
    ctx: &Context,
    namespace: &str,
    name: &str,
    previous: Option<i64>,
    report: Option<&Report>,
) -> Option<i64> {
    let Some(report) = report else {
        return previous;
    };
    let key = (format!("MailDomain/{namespace}"), name.to_string());
    let mut writes = ctx.usage_writes.lock().expect("usage writes");
    let now = Instant::now();
    if due(
        previous.as_ref(),
        &report.queue_depth,
        writes.get(&key).copied(),
        now,
        ctx.options.usage_every,
    ) {
        writes.insert(key, now);
        Some(report.queue_depth)
    } else {
        previous
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pass_writes_at_most_two_hundred_the_longest_unwritten_first() {
        let mailboxes: Vec<std::sync::Arc<Mailbox>> = (0..250)
            .map(|n| {
                std::sync::Arc::new(
                    serde_json::from_value(serde_json::json!({
                        "apiVersion": "kubemail.io/v1alpha1", "kind": "Mailbox",
                        "metadata": {"name": format!("u{n}"), "namespace": "mail"},
                        "spec": {"address": format!("u{n}@example.test"),
                                 "passwordSecretRef": {"name": "p"}},
                    }))
                    .expect("a Mailbox"),
                )
            })
            .collect();
        let report = Report {
            mailboxes: (0..250)
                .map(|n| Reported {
                    address: format!("U{n}@example.test"),
                    bytes: n,
                    messages: 1,
                    quota_bytes: None,
                })
                .collect(),
            queue_depth: 0,
        };
        let now = Instant::now();
        let every = Duration::from_secs(300);
        let first = select("mail", &mailboxes, &report, &UsageWrites::new(), now, every);
        assert_eq!(first.len(), WRITES_PER_PASS);
        // Those written get their turn after the 50 never written.
        let written: UsageWrites = first.iter().map(|(k, _)| (k.clone(), now)).collect();
        // (Their status here still shows no usage, so all 250 are due again.)
        let second = select("mail", &mailboxes, &report, &written, now, every);
        assert_eq!(second.len(), WRITES_PER_PASS);
        assert!(second[..50].iter().all(|(k, _)| !written.contains_key(k)));
    }

    #[test]
    fn usage_is_written_first_at_once_then_at_most_once_per_interval_and_only_when_changed() {
        let every = Duration::from_secs(300);
        let now = Instant::now();
        let a = MailboxUsage::of(1000, 1, Some(10_000));
        let b = MailboxUsage::of(2000, 2, Some(10_000));
        // No figures yet: at once, even just after another write.
        assert!(due(None, &a, Some(now), now, every));
        // Unchanged: never.
        assert!(!due(Some(&a), &a, None, now, every));
        // Changed: when the last write is old enough, or was before this operator started.
        assert!(due(Some(&a), &b, None, now, every));
        let recently = now.checked_sub(Duration::from_secs(10)).unwrap_or(now);
        assert!(!due(Some(&a), &b, Some(recently), now, every));
        let long_ago = now.checked_sub(every).unwrap_or(now);
        assert!(due(Some(&a), &b, Some(long_ago), now, every));
    }
}
