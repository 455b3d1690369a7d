//! The controllers: one per kind, each a short pipeline (read what the object refers to ->
//! validate -> render with the pure builders -> server-side apply under one field manager ->
//! write status, only when it changed).
//!
//! ```text
//!   Mailbox --address domain--> MailDomain <--relayPolicyRef-- RelayPolicy
//!      \--passwordSecretRef--> Secret          (a change to any of these reconciles the domain)
//! ```
pub mod mail_domain;
pub mod mailbox;
pub mod relay_policy;

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
};

use k8s_openapi::api::core::v1::Secret;
use kube::{
    Client,
    core::PartialObjectMeta,
    runtime::reflector::{ObjectRef, Store},
};
use kubemail_crds::{MailDomain, Mailbox};

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
    /// Publishes events (condition changes) for `kubectl describe`.
    pub recorder: kube::runtime::events::Recorder,
}

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

/// Publishes one event per condition that changed, on the object: Normal when it became
/// True, Warning when it became False. An event that cannot be written is logged, never fatal.
pub async fn publish_transitions<K>(
    ctx: &Context,
    object: &K,
    previous: &[kubemail_crds::Condition],
    current: &[kubemail_crds::Condition],
) where
    K: kube::Resource<DynamicType = ()>,
{
    use kube::runtime::events::{Event, EventType};
    let reference = object.object_ref(&());
    for c in crate::conditions::transitions(previous, current) {
        let ok = c.status == "True";
        let event = Event {
            type_: if ok {
                EventType::Normal
            } else {
                EventType::Warning
            },
            reason: format!("{}{}", c.type_, if ok { "" } else { "False" }),
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

/// The domain part of an address.
pub fn domain_of(address: &str) -> &str {
    address.rsplit_once('@').map_or("", |(_, d)| d)
}
