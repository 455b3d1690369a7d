//! The controllers: one per kind, each a short pipeline (read what the object refers to ->
//! validate -> render with the pure builders -> server-side apply under one field manager ->
//! write status, only when it changed).
//!
//! ```text
//!   Mailbox --address domain--> MailDomain <--relayPolicyRef-- RelayPolicy
//!      \--passwordSecretRef--> Secret          (a change to any of these reconciles the domain)
//! ```
pub mod dkim;
pub mod hosted;
pub mod index;
pub mod mail_domain;
pub mod mailbox;
pub mod relay_policy;
pub mod usage;

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
};

use k8s_openapi::api::{
    apps::v1::Deployment,
    core::v1::{PersistentVolumeClaim, Secret, Service, ServiceAccount},
    networking::v1::NetworkPolicy,
};
use kube::{
    Api, Client, Resource, ResourceExt,
    api::{Patch, PatchParams},
    core::PartialObjectMeta,
    runtime::reflector::{ObjectRef, Store},
};
use kubemail_crds::{MailDomain, Mailbox};
use serde::{Serialize, de::DeserializeOwned};
use sha2::{Digest, Sha256};

use crate::render::objects::RuntimeOptions;

/// The field manager of every write.
pub const FIELD_MANAGER: &str = "kubemail-operator";

/// Operator settings from its flags.
#[derive(Debug, Clone)]
pub struct Options {
    /// The runtime's image and binary path.
    pub runtime: RuntimeOptions,
    /// Probe `HOST:<container port>` instead of `<service>.<namespace>.svc:<service port>`:
    /// for a runtime started outside the cluster (the e2e harness plays the node). Off by default.
    pub probe_host_override: Option<String>,
    /// Probe timeout.
    pub probe_timeout: std::time::Duration,
    /// How often at most a Mailbox's `status.usage` is written after its first figures.
    pub usage_every: std::time::Duration,
    /// Where `DNSVerified` looks records up (`Off`: no checks).
    pub dns_check: crate::dns_check::Source,
    /// How often a verified domain's records are checked again.
    pub dns_check_every: std::time::Duration,
    /// Render a NetworkPolicy for each runtime, its HTTP port open to these namespaces
    /// (`None`: no NetworkPolicies).
    pub network_policy_from: Option<Vec<String>>,
}

/// What every reconcile shares.
#[derive(Clone)]
pub struct Context {
    /// The API client.
    pub client: Client,
    /// Settings.
    pub options: Options,
    /// Password hashes by SHA-256 of (Secret uid, password): an unchanged password is not hashed
    /// again. The plaintext itself is never kept.
    pub hashes: Arc<Mutex<HashMap<[u8; 32], String>>>,
    /// Every MailDomain (from the MailDomain controller's reflector).
    pub domains: Store<MailDomain>,
    /// Every Mailbox.
    pub mailboxes: Store<Mailbox>,
    /// Which Mailboxes each domain, Secret and ConfigMap has (from the same watch).
    pub mailbox_index: Arc<index::MailboxIndex>,
    /// The metadata (uid, resourceVersion, annotations; never the data) of every Secret in the
    /// watched namespaces: a reconcile asks the API server for a Secret only when the version
    /// it last read has changed.
    pub secret_versions: Store<PartialObjectMeta<Secret>>,
    /// The hash served for a Secret's key, by (Secret uid, key), with the resourceVersion it
    /// was read at.
    pub hash_by_version: Arc<Mutex<HashesByVersion>>,
    /// The addresses in a rendered config Secret, by (namespace, name), with the
    /// resourceVersion they were read at.
    pub config_addresses: Arc<Mutex<ConfigAddresses>>,
    /// The metadata of the objects this operator renders (label
    /// `app.kubernetes.io/managed-by=kubemail-operator`), to see whether one changed since it
    /// was applied.
    pub live: Live,
    /// What was last applied: (type, namespace, name) -> (SHA-256 of the object, the
    /// resourceVersion the API server answered).
    pub applied: Arc<Mutex<AppliedObjects>>,
    /// When each Mailbox's usage was last written (see [`usage`]).
    pub usage_writes: Arc<Mutex<usage::UsageWrites>>,
    /// Per-object retry delays after errors.
    pub backoff: Arc<Backoff>,
    /// Publishes events (condition changes) for `kubectl describe`.
    pub recorder: kube::runtime::events::Recorder,
    /// The DNS checks' resolver and verdicts (`None`: checks off).
    pub dns: Option<Arc<crate::dns_check::Checker>>,
    /// The last open-relay verdict per MailDomain (uid): the config revision it was made
    /// against, when, and what.
    pub relay_tests: Arc<Mutex<RelayTests>>,
}

/// See [`Context::relay_tests`].
pub type RelayTests = HashMap<
    String,
    (
        Option<String>,
        std::time::Instant,
        kubemail_probe::RelayVerdict,
    ),
>;

/// Watch caches of the metadata of the objects the operator renders, one per kind (Secrets are
/// [`Context::secret_versions`]).
#[derive(Clone)]
pub struct Live {
    /// ServiceAccounts.
    pub service_accounts: Store<PartialObjectMeta<ServiceAccount>>,
    /// Services.
    pub services: Store<PartialObjectMeta<Service>>,
    /// PersistentVolumeClaims.
    pub claims: Store<PartialObjectMeta<PersistentVolumeClaim>>,
    /// Deployments.
    pub deployments: Store<PartialObjectMeta<Deployment>>,
    /// NetworkPolicies (watched only when the operator renders them).
    pub network_policies: Store<PartialObjectMeta<NetworkPolicy>>,
    /// PodDisruptionBudgets (of domains with several replicas).
    pub disruption_budgets:
        Store<PartialObjectMeta<k8s_openapi::api::policy::v1::PodDisruptionBudget>>,
}

/// A kind the operator applies, with the watch cache that holds its live metadata.
pub trait Applied:
    Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>
    + Clone
    + Serialize
    + DeserializeOwned
    + std::fmt::Debug
    + Sized
    + 'static
{
    /// The cache.
    fn live(ctx: &Context) -> &Store<PartialObjectMeta<Self>>;
}

impl Applied for Secret {
    fn live(ctx: &Context) -> &Store<PartialObjectMeta<Self>> {
        &ctx.secret_versions
    }
}
impl Applied for ServiceAccount {
    fn live(ctx: &Context) -> &Store<PartialObjectMeta<Self>> {
        &ctx.live.service_accounts
    }
}
impl Applied for Service {
    fn live(ctx: &Context) -> &Store<PartialObjectMeta<Self>> {
        &ctx.live.services
    }
}
impl Applied for PersistentVolumeClaim {
    fn live(ctx: &Context) -> &Store<PartialObjectMeta<Self>> {
        &ctx.live.claims
    }
}
impl Applied for Deployment {
    fn live(ctx: &Context) -> &Store<PartialObjectMeta<Self>> {
        &ctx.live.deployments
    }
}
impl Applied for k8s_openapi::api::policy::v1::PodDisruptionBudget {
    fn live(ctx: &Context) -> &Store<PartialObjectMeta<Self>> {
        &ctx.live.disruption_budgets
    }
}
impl Applied for NetworkPolicy {
    fn live(ctx: &Context) -> &Store<PartialObjectMeta<Self>> {
        &ctx.live.network_policies
    }
}

/// See [`Context::applied`].
pub type AppliedObjects = HashMap<(&'static str, String, String), ([u8; 32], String)>;

/// See [`Context::hash_by_version`]: (Secret uid, key) -> (resourceVersion, hash).
pub type HashesByVersion = HashMap<(String, String), (String, String)>;

/// See [`Context::config_addresses`].
pub type ConfigAddresses =
    HashMap<(String, String), (String, Arc<std::collections::BTreeSet<String>>)>;

impl Context {
    /// A Secret's (uid, resourceVersion) from the watch cache; `None` when the cache does not
    /// have it (it does not exist, or was created a moment ago).
    pub fn secret_version(&self, namespace: &str, name: &str) -> Option<(String, String)> {
        let meta = self
            .secret_versions
            .get(&ObjectRef::new(name).within(namespace))?;
        Some((
            meta.metadata.uid.clone()?,
            meta.metadata.resource_version.clone()?,
        ))
    }

    /// Server-side applies `object` under [`FIELD_MANAGER`], unless it is what was applied last
    /// time and the object has not changed since (its live resourceVersion is the one that
    /// apply returned): an unchanged domain sends no request at all. Someone else's edit moves
    /// the resourceVersion, and the next reconcile applies again.
    pub async fn apply<K: Applied>(&self, api: &Api<K>, object: &K) -> crate::error::Result<()> {
        let name = object
            .meta()
            .name
            .clone()
            .ok_or(crate::error::Error::Incomplete("name"))?;
        let ns = object.meta().namespace.clone().unwrap_or_default();
        let key = (std::any::type_name::<K>(), ns.clone(), name.clone());
        let digest: [u8; 32] =
            Sha256::digest(serde_json::to_vec(object).unwrap_or_default()).into();
        let live = K::live(self)
            .get(&ObjectRef::new(&name).within(&ns))
            .and_then(|m| m.resource_version());
        let unchanged = self
            .applied
            .lock()
            .expect("applied cache")
            .get(&key)
            .is_some_and(|(d, rv)| *d == digest && Some(rv) == live.as_ref());
        if unchanged {
            return Ok(());
        }
        let result = api
            .patch(
                &name,
                &PatchParams::apply(FIELD_MANAGER).force(),
                &Patch::Apply(object),
            )
            .await?;
        if let Some(rv) = result.resource_version() {
            self.applied
                .lock()
                .expect("applied cache")
                .insert(key, (digest, rv));
        }
        Ok(())
    }

    /// A Secret's annotation, from the watch cache.
    pub fn secret_annotation(&self, namespace: &str, name: &str, key: &str) -> Option<String> {
        self.secret_versions
            .get(&ObjectRef::new(name).within(namespace))?
            .metadata
            .annotations
            .as_ref()?
            .get(key)
            .cloned()
    }
}

/// Writes an object's status with server-side apply under [`FIELD_MANAGER`], only when it
/// differs from `stored` (an unchanged object makes no write), after publishing one event per
/// condition that changed since `previous`. The same for all three kinds. Returns `false` when
/// the object was deleted meanwhile.
pub async fn write_status<K, S>(
    ctx: &Context,
    object: &K,
    stored: Option<&S>,
    previous: &[kubemail_crds::Condition],
    status: &S,
    conditions: &[kubemail_crds::Condition],
) -> crate::error::Result<bool>
where
    K: Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope>
        + Clone
        + DeserializeOwned
        + std::fmt::Debug,
    S: Serialize + PartialEq,
{
    if stored == Some(status) {
        return Ok(true);
    }
    publish_transitions(ctx, object, previous, conditions).await;
    let ns = object
        .meta()
        .namespace
        .clone()
        .ok_or(crate::error::Error::Incomplete("namespace"))?;
    let name = object
        .meta()
        .name
        .clone()
        .ok_or(crate::error::Error::Incomplete("name"))?;
    let patch = serde_json::json!({
        "apiVersion": K::api_version(&()),
        "kind": K::kind(&()),
        "status": status,
    });
    match Api::<K>::namespaced(ctx.client.clone(), &ns)
        .patch_status(
            &name,
            &PatchParams::apply(FIELD_MANAGER).force(),
            &Patch::Apply(&patch),
        )
        .await
    {
        Ok(_) => Ok(true),
        Err(kube::Error::Api(e)) if e.code == 404 => Ok(false),
        Err(e) => Err(e.into()),
    }
}

/// Retries after errors, per object: 5 s after the first failure, doubling up to 5 minutes,
/// with up to 10% jitter so objects that failed together do not retry together; a success
/// starts over.
#[derive(Debug, Default)]
pub struct Backoff {
    failures: Mutex<HashMap<(String, String, String), u32>>,
}

impl Backoff {
    /// The wait before the next try of `object` after `error`, counting this failure.
    pub fn after_failure<K: Resource<DynamicType = ()>>(
        &self,
        object: &K,
        error: &crate::error::Error,
    ) -> std::time::Duration {
        let count = {
            let mut failures = self.failures.lock().expect("backoff");
            let n = failures.entry(Self::key(object)).or_insert(0);
            *n = n.saturating_add(1);
            *n
        };
        backoff_delay(error.retry_after(), count, rand::random::<f64>())
    }

    /// `object` was reconciled: its next failure waits the shortest time again.
    pub fn succeeded<K: Resource<DynamicType = ()>>(&self, object: &K) {
        self.failures
            .lock()
            .expect("backoff")
            .remove(&Self::key(object));
    }

    fn key<K: Resource<DynamicType = ()>>(object: &K) -> (String, String, String) {
        (
            K::kind(&()).into_owned(),
            object.meta().namespace.clone().unwrap_or_default(),
            object.meta().name.clone().unwrap_or_default(),
        )
    }
}

/// The wait after the `count`th failure in a row: `first` doubled each time, at most 5 minutes
/// (or `first`, if that is longer), plus `jitter` (0..1) tenths of it.
pub fn backoff_delay(first: std::time::Duration, count: u32, jitter: f64) -> std::time::Duration {
    let cap = first.max(std::time::Duration::from_secs(300));
    let doubled = first.saturating_mul(1u32 << count.saturating_sub(1).min(16));
    let base = doubled.min(cap);
    base + base.mul_f64(jitter.clamp(0.0, 1.0) / 10.0)
}

/// Publishes one event per condition that changed, on the object: Warning when it became a
/// problem ([`crate::conditions::is_bad`]), Normal otherwise. An event that cannot be written is logged, never fatal.
pub async fn publish_transitions<K>(
    ctx: &Context,
    object: &K,
    previous: &[kubemail_crds::Condition],
    current: &[kubemail_crds::Condition],
) where
    K: Resource<DynamicType = ()>,
{
    use kube::runtime::events::{Event, EventType};
    let reference = object.object_ref(&());
    for c in crate::conditions::transitions(previous, current) {
        let event = Event {
            type_: if crate::conditions::is_bad(c) {
                EventType::Warning
            } else {
                EventType::Normal
            },
            reason: format!(
                "{}{}",
                c.type_,
                if c.status == "True" { "" } else { &c.status }
            ),
            note: Some(c.message.chars().take(1000).collect()),
            action: "Reconcile".into(),
            secondary: None,
        };
        if let Err(err) = ctx.recorder.publish(&event, &reference).await {
            tracing::debug!(error = %err, "an event could not be written");
        }
    }
}

impl std::fmt::Debug for Context {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Context")
            .field("options", &self.options)
            .finish()
    }
}

impl std::fmt::Debug for Live {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Live")
            .field("deployments", &self.deployments.state().len())
            .finish_non_exhaustive()
    }
}

/// The domain part of an address.
pub fn domain_of(address: &str) -> &str {
    address.rsplit_once('@').map_or("", |(_, d)| d)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::backoff_delay;

    #[test]
    fn retries_back_off_from_five_seconds_to_five_minutes() {
        let five = Duration::from_secs(5);
        let waits: Vec<u64> = (1..=9)
            .map(|n| backoff_delay(five, n, 0.0).as_secs())
            .collect();
        assert_eq!(waits, [5, 10, 20, 40, 80, 160, 300, 300, 300]);
        assert_eq!(backoff_delay(five, 1000, 0.0), Duration::from_secs(300));
        // Jitter adds at most a tenth.
        assert_eq!(backoff_delay(five, 1, 1.0), Duration::from_millis(5500));
        // An invalid object waits its own longer time from the start.
        assert_eq!(
            backoff_delay(Duration::from_secs(600), 3, 0.0),
            Duration::from_secs(600)
        );
    }
}
