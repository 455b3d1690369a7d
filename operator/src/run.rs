//! Starting the three controllers with the watches that connect them.
use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
};

use futures::{Stream, StreamExt};
use k8s_openapi::api::{
    apps::v1::Deployment,
    core::v1::{ConfigMap, PersistentVolumeClaim, Pod, Secret, Service, ServiceAccount},
    networking::v1::NetworkPolicy,
};
use kube::{
    Api, Client, Resource, ResourceExt,
    core::PartialObjectMeta,
    runtime::{
        Controller, WatchStreamExt, controller,
        reflector::{self, ObjectRef},
        watcher,
    },
};
use kubemail_crds::{MailDomain, Mailbox, RelayPolicy};

use crate::controller::{
    Context, Live, Options, domain_of,
    index::{Key, MailboxIndex},
    mail_domain, mailbox, relay_policy,
};

/// A namespaced kind the operator watches.
trait Watched:
    Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>
    + Clone
    + serde::de::DeserializeOwned
    + std::fmt::Debug
    + Send
    + Sync
    + 'static
{
}

impl<K> Watched for K where
    K: Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>
        + Clone
        + serde::de::DeserializeOwned
        + std::fmt::Debug
        + Send
        + Sync
        + 'static
{
}

/// A watch cache of the metadata of `K`s that `config` selects, and the task that fills it.
fn metadata_store<K>(
    client: &Client,
    namespace: Option<&str>,
    config: &watcher::Config,
) -> (
    reflector::Store<PartialObjectMeta<K>>,
    impl Future<Output = ()> + Send + 'static,
)
where
    K: Watched,
{
    let (store, writer) = reflector::store();
    let task = reflector::reflector(
        writer,
        watcher(
            api::<PartialObjectMeta<K>>(client, namespace),
            config.clone(),
        )
        .modify(|o| o.metadata.managed_fields = None)
        .default_backoff(),
    )
    .for_each(|event| async move {
        if let Err(err) = event {
            tracing::debug!(error = %err, "metadata watch");
        }
    });
    (store, task)
}

/// A controller of `K`s whose watch cache keeps them without their managed fields (who wrote
/// which field: most of a Mailbox's size in memory, and never read here); `observe` sees each
/// event of its watch once the cache has it.
fn controller<K>(
    client: &Client,
    namespace: Option<&str>,
    observe: impl Fn(&watcher::Event<K>) + Send + 'static,
) -> Controller<K>
where
    K: Watched,
{
    let (reader, writer) = reflector::store();
    let objects = reflector::reflector(
        writer,
        watcher(api::<K>(client, namespace), watcher::Config::default())
            .modify(|o| o.managed_fields_mut().clear()),
    )
    .inspect(move |event| {
        if let Ok(event) = event {
            observe(event);
        }
    })
    .applied_objects();
    Controller::for_stream(objects, reader)
}

/// The changes to `K`s, as their metadata only (neither data nor spec, which the watches that
/// map a change to the objects it concerns never read: a cluster's Secrets and Pods are large).
fn changes_of<K>(
    client: &Client,
    namespace: Option<&str>,
) -> impl Stream<Item = Result<PartialObjectMeta<K>, watcher::Error>> + Send + 'static
where
    K: Watched,
{
    watcher(
        api::<PartialObjectMeta<K>>(client, namespace),
        watcher::Config::default(),
    )
    .modify(|o| o.metadata.managed_fields = None)
    .touched_objects()
}

/// The MailDomain changes that matter between a server and the domains it hosts: a spec
/// change (generation), a deletion, and a change of the served revision or of `ConfigServed`
/// or `Ready`. Other status writes (queue sizes, probe messages) pass by: each would otherwise
/// reconcile every domain on the other side, and theirs would come back.
fn hosting_changes(
    client: &Client,
    namespace: Option<&str>,
) -> impl Stream<Item = Result<MailDomain, watcher::Error>> + Send + 'static {
    use std::hash::{Hash, Hasher};
    // Per uid: the last relevant state, and the server it named.
    type Seen = HashMap<String, (u64, Option<String>)>;
    let seen: Arc<Mutex<Seen>> = Arc::default();
    let relevant = |md: &MailDomain| {
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        md.metadata.generation.hash(&mut hasher);
        md.metadata.deletion_timestamp.is_some().hash(&mut hasher);
        if let Some(status) = &md.status {
            status.config_revision.hash(&mut hasher);
            for c in &status.conditions {
                if c.type_ == "ConfigServed" || c.type_ == "Ready" {
                    (&c.type_, &c.status).hash(&mut hasher);
                }
            }
        }
        hasher.finish()
    };
    watcher(
        api::<MailDomain>(client, namespace),
        watcher::Config::default(),
    )
    .default_backoff()
    .flat_map(move |event| {
        let seen = seen.clone();
        let server = |md: &MailDomain| md.spec.hosted_by.as_ref().map(|h| h.name.clone());
        let passed: Vec<Result<MailDomain, watcher::Error>> = match event {
            Ok(watcher::Event::Delete(md)) => {
                let uid = md.metadata.uid.clone().unwrap_or_default();
                seen.lock().expect("hosting changes").remove(&uid);
                vec![Ok(md)]
            }
            Ok(watcher::Event::Apply(md) | watcher::Event::InitApply(md)) => {
                let uid = md.metadata.uid.clone().unwrap_or_default();
                let now = (relevant(&md), server(&md));
                let before = seen
                    .lock()
                    .expect("hosting changes")
                    .insert(uid, now.clone());
                let mut out = Vec::new();
                // Moved to another server (or off one): the one it left drops it too.
                if let Some((_, Some(old))) = &before
                    && now.1.as_ref() != Some(old)
                {
                    let mut left = md.clone();
                    left.spec.hosted_by =
                        Some(kubemail_crds::common::LocalObjectRef { name: old.clone() });
                    out.push(Ok(left));
                }
                if before.map(|(h, _)| h) != Some(now.0) {
                    out.push(Ok(md));
                }
                out
            }
            Ok(_) => Vec::new(),
            Err(err) => vec![Err(err)],
        };
        futures::stream::iter(passed)
    })
}

/// At most this many Mailbox reconciles run at once: 10,000 Mailboxes created together would
/// otherwise each hold a request to the API server (and its buffers) at the same time. One
/// that waits is taken up as soon as another ends. (MailDomains and RelayPolicies are few, and
/// a domain's reconcile waits on its runtime's probes: they are not held back.)
fn mailbox_reconciles_at_once() -> controller::Config {
    controller::Config::default().concurrency(MAILBOX_RECONCILES_AT_ONCE)
}

/// See [`mailbox_reconciles_at_once`].
const MAILBOX_RECONCILES_AT_ONCE: u16 = 32;

/// The MailDomain (in its namespace) that serves a Mailbox's address.
fn domain_of_mailbox(
    m: &Mailbox,
    domains: &reflector::Store<MailDomain>,
) -> Vec<ObjectRef<MailDomain>> {
    let d = domain_of(&m.spec.address).to_ascii_lowercase();
    domains
        .state()
        .into_iter()
        .filter(|md| md.namespace() == m.namespace() && md.spec.domain == d)
        .map(|md| ObjectRef::from(md.as_ref()))
        .collect()
}

/// The MailDomains, each followed by the server it is hosted on (whose runtime config holds
/// it, so a change it depends on is the server's to render too).
fn and_servers(
    refs: impl IntoIterator<Item = ObjectRef<MailDomain>>,
    domains: &reflector::Store<MailDomain>,
) -> Vec<ObjectRef<MailDomain>> {
    let mut out = Vec::new();
    for r in refs {
        if let Some(server) = domains.get(&r).and_then(|md| {
            let name = &md.spec.hosted_by.as_ref()?.name;
            Some(ObjectRef::<MailDomain>::new(name).within(&md.namespace().unwrap_or_default()))
        }) {
            out.push(server);
        }
        out.push(r);
    }
    out
}

/// Finds the MailDomains of the Mailboxes that refer to something.
struct Users {
    index: Arc<MailboxIndex>,
    mailboxes: reflector::Store<Mailbox>,
    domains: reflector::Store<MailDomain>,
}

impl Users {
    fn of(ctx: &Context) -> Self {
        Self {
            index: ctx.mailbox_index.clone(),
            mailboxes: ctx.mailboxes.clone(),
            domains: ctx.domains.clone(),
        }
    }

    /// The MailDomains of the Mailboxes that refer to `key`.
    fn domains(&self, key: &Key) -> Vec<ObjectRef<MailDomain>> {
        self.index
            .users(key)
            .iter()
            .filter_map(|r| self.mailboxes.get(r))
            .flat_map(|m| domain_of_mailbox(&m, &self.domains))
            .collect()
    }
}

fn api<K>(client: &Client, namespace: Option<&str>) -> Api<K>
where
    K: Resource<Scope = k8s_openapi::NamespaceResourceScope>,
    <K as Resource>::DynamicType: Default,
{
    match namespace {
        Some(ns) => Api::namespaced(client.clone(), ns),
        None => Api::all(client.clone()),
    }
}

/// Runs the controllers until the process ends. `namespace`: watch one namespace, or all.
pub async fn run(client: Client, options: Options, namespace: Option<String>) {
    let ns = namespace.as_deref();
    let cfg = watcher::Config::default();
    let mailbox_index = Arc::new(MailboxIndex::default());
    let indexed = mailbox_index.clone();
    let mailbox_controller = controller::<Mailbox>(&client, ns, move |e| indexed.observe(e));
    let domain_controller = controller::<MailDomain>(&client, ns, |_| {});
    let relay_controller = controller::<RelayPolicy>(&client, ns, |_| {});
    // Secrets' metadata only (no data, no managed fields): what changed, not what they hold.
    let (secret_versions, writer) = reflector::store();
    let secret_metadata = reflector::reflector(
        writer,
        watcher(api::<PartialObjectMeta<Secret>>(&client, ns), cfg.clone())
            .modify(|s| s.metadata.managed_fields = None)
            .default_backoff(),
    )
    .for_each(|event| async move {
        if let Err(err) = event {
            tracing::debug!(error = %err, "Secret metadata watch");
        }
    });
    // The metadata of what the operator renders, so an apply that would change nothing is
    // skipped (Context::apply).
    let managed =
        watcher::Config::default().labels("app.kubernetes.io/managed-by=kubemail-operator");
    let (service_accounts, sa_metadata) = metadata_store::<ServiceAccount>(&client, ns, &managed);
    let (services, service_metadata) = metadata_store::<Service>(&client, ns, &managed);
    let (claims, claim_metadata) = metadata_store::<PersistentVolumeClaim>(&client, ns, &managed);
    let (deployments, deployment_metadata) = metadata_store::<Deployment>(&client, ns, &managed);
    // Watched only when rendered: without them the operator may not read NetworkPolicies.
    let (network_policies, network_policy_metadata) =
        metadata_store::<NetworkPolicy>(&client, ns, &managed);
    if options.network_policy_from.is_some() {
        tokio::spawn(network_policy_metadata);
    }
    let (disruption_budgets, pdb_metadata) =
        metadata_store::<k8s_openapi::api::policy::v1::PodDisruptionBudget>(&client, ns, &managed);
    let metadata_watches = [
        tokio::spawn(pdb_metadata),
        tokio::spawn(sa_metadata),
        tokio::spawn(service_metadata),
        tokio::spawn(claim_metadata),
        tokio::spawn(deployment_metadata),
    ];
    let dns = match crate::dns_check::Checker::new(&options.dns_check, options.dns_check_every) {
        Ok(checker) => checker.map(Arc::new),
        Err(err) => {
            tracing::error!(error = %err, "DNS checks are off: no resolver");
            None
        }
    };
    let ctx = Arc::new(Context {
        client: client.clone(),
        options,
        hashes: Arc::new(Mutex::new(HashMap::new())),
        domains: domain_controller.store(),
        mailboxes: mailbox_controller.store(),
        mailbox_index,
        secret_versions,
        hash_by_version: Arc::new(Mutex::new(HashMap::new())),
        config_addresses: Arc::new(Mutex::new(HashMap::new())),
        live: Live {
            service_accounts,
            services,
            claims,
            deployments,
            network_policies,
            disruption_budgets,
        },
        applied: Arc::new(Mutex::new(HashMap::new())),
        usage_writes: Arc::new(Mutex::new(HashMap::new())),
        backoff: Arc::default(),
        recorder: kube::runtime::events::Recorder::new(
            client.clone(),
            kube::runtime::events::Reporter {
                controller: "kubemail-operator".into(),
                instance: std::env::var("POD_NAME").ok(),
            },
        ),
        dns,
        relay_tests: Arc::default(),
    });

    // Which RelayPolicies take their smarthost credentials from a Secret: a Secret that
    // appears, changes or gets (or loses) the label reconciles them and their domains.
    let relay_policies = relay_controller.store();
    let uses_credentials = |rp: &RelayPolicy, s: &PartialObjectMeta<Secret>| {
        rp.namespace() == s.namespace()
            && rp
                .spec
                .route
                .smarthost
                .as_ref()
                .and_then(|h| h.credentials_secret_ref.as_ref())
                .is_some_and(|c| c.name == s.name_any())
    };
    let relays_for_secret = relay_policies.clone();
    let domains_for_relay_secret = ctx.domains.clone();
    let domains_for_mailbox = ctx.domains.clone();
    let users_of_secret = Users::of(&ctx);
    let domains_for_rspamd_secret = ctx.domains.clone();
    let users_of_config_map = Users::of(&ctx);
    let domains_for_relay = ctx.domains.clone();
    let domains_for_pods = ctx.domains.clone();
    let domains_for_hosted_secret = ctx.domains.clone();
    let servers_for_mailbox = ctx.domains.clone();
    let servers_for_secret = ctx.domains.clone();
    let servers_for_config_map = ctx.domains.clone();
    let domains_for_domain = ctx.domains.clone();
    let domains = domain_controller
        .owns_stream(changes_of::<Secret>(&client, ns))
        .owns(api::<Deployment>(&client, ns), cfg.clone())
        .owns(api::<Service>(&client, ns), cfg.clone())
        .owns(api::<ServiceAccount>(&client, ns), cfg.clone())
        .owns(api::<PersistentVolumeClaim>(&client, ns), cfg.clone())
        .watches(api::<Mailbox>(&client, ns), cfg.clone(), move |m| {
            and_servers(
                domain_of_mailbox(&m, &domains_for_mailbox),
                &servers_for_mailbox,
            )
        })
        .watches_stream(hosting_changes(&client, ns), move |md| {
            // A hosted domain's change is its server's to render; a server's change (its
            // served revision, its readiness) is its hosted domains' to report.
            let server = md.spec.hosted_by.as_ref().map(|h| {
                ObjectRef::<MailDomain>::new(&h.name).within(&md.namespace().unwrap_or_default())
            });
            let hosted: Vec<ObjectRef<MailDomain>> = domains_for_domain
                .state()
                .into_iter()
                .filter(|d| {
                    d.namespace() == md.namespace()
                        && d.spec
                            .hosted_by
                            .as_ref()
                            .is_some_and(|h| h.name == md.name_any())
                })
                .map(|d| ObjectRef::from(d.as_ref()))
                .collect();
            server.into_iter().chain(hosted).collect::<Vec<_>>()
        })
        .watches_stream(changes_of::<Secret>(&client, ns), move |s| {
            // A password Secret changed: reconcile the domains of the Mailboxes that use it.
            let refs = users_of_secret
                .domains(&Key::Secret(
                    s.namespace().unwrap_or_default(),
                    s.name_any(),
                ))
                .into_iter()
                .chain(
                    // A RelayPolicy's credentials Secret: the domains that use the policy.
                    relays_for_secret
                        .state()
                        .into_iter()
                        .filter(|rp| uses_credentials(rp, &s))
                        .flat_map(|rp| {
                            domains_for_relay_secret
                                .state()
                                .into_iter()
                                .filter(move |md| {
                                    md.namespace() == rp.namespace()
                                        && md
                                            .spec
                                            .relay_policy_ref
                                            .as_ref()
                                            .is_some_and(|r| r.name == rp.name_any())
                                })
                                .map(|md| ObjectRef::from(md.as_ref()))
                        }),
                )
                .chain(
                    // A domain's rspamd controller password Secret (its label decides).
                    domains_for_rspamd_secret
                        .state()
                        .into_iter()
                        .filter(|md| {
                            md.namespace() == s.namespace()
                                && md
                                    .spec
                                    .inbound
                                    .rspamd
                                    .as_ref()
                                    .and_then(|r| r.controller_password_secret_ref.as_ref())
                                    .is_some_and(|p| p.name == s.name_any())
                        })
                        .map(|md| ObjectRef::from(md.as_ref())),
                )
                .chain(
                    // A hosted domain's certificate or DKIM key: its server copies them.
                    domains_for_hosted_secret
                        .state()
                        .into_iter()
                        .filter(|md| md.spec.hosted_by.is_some() && md.namespace() == s.namespace())
                        .filter(|md| {
                            let names = crate::render::Names::of(md);
                            names.tls == s.name_any() || names.dkim == s.name_any()
                        })
                        .map(|md| ObjectRef::from(md.as_ref())),
                )
                .collect::<Vec<_>>();
            and_servers(refs, &servers_for_secret)
        })
        .watches_stream(changes_of::<ConfigMap>(&client, ns), move |c| {
            // A Sieve script's ConfigMap changed: the domains of the Mailboxes that use it.
            and_servers(
                users_of_config_map.domains(&Key::ConfigMap(
                    c.namespace().unwrap_or_default(),
                    c.name_any(),
                )),
                &servers_for_config_map,
            )
        })
        .watches(api::<RelayPolicy>(&client, ns), cfg.clone(), move |rp| {
            domains_for_relay
                .state()
                .into_iter()
                .filter(|md| md.namespace() == rp.namespace())
                .filter(|md| {
                    md.spec
                        .relay_policy_ref
                        .as_ref()
                        .is_some_and(|r| r.name == rp.name_any())
                })
                .map(|md| ObjectRef::from(md.as_ref()))
                .collect::<Vec<_>>()
        })
        .watches_stream(changes_of::<Pod>(&client, ns), move |pod| {
            // A pod came, went or got its address: domains whose RelayPolicy picks pods by
            // label look again (the selector is checked when the config is rendered).
            domains_for_pods
                .state()
                .into_iter()
                .filter(|md| {
                    md.namespace() == pod.namespace() && md.spec.relay_policy_ref.is_some()
                })
                .map(|md| ObjectRef::from(md.as_ref()))
                .collect::<Vec<_>>()
        })
        .shutdown_on_signal()
        .run(
            mail_domain::reconcile,
            mail_domain::error_policy,
            ctx.clone(),
        )
        .for_each(|result| async move {
            match &result {
                Ok(_) => crate::health::reconciled("MailDomain", "ok"),
                Err(controller::Error::ReconcilerFailed(err, _)) => {
                    crate::health::reconciled("MailDomain", err.category())
                }
                Err(err) => tracing::debug!(error = %err, "MailDomain controller event"),
            }
        });

    let index_for_domain = ctx.mailbox_index.clone();
    let index_for_their_secret = ctx.mailbox_index.clone();
    let index_for_their_config_map = ctx.mailbox_index.clone();
    let mailboxes = mailbox_controller
        .watches(api::<MailDomain>(&client, ns), cfg.clone(), move |md| {
            index_for_domain.users(&Key::Domain(
                md.namespace().unwrap_or_default(),
                md.spec.domain.to_ascii_lowercase(),
            ))
        })
        .shutdown_on_signal()
        .with_config(mailbox_reconciles_at_once())
        .watches_stream(changes_of::<Secret>(&client, ns), move |s| {
            // A password Secret appeared or changed: its Mailboxes report it at once.
            index_for_their_secret.users(&Key::Secret(
                s.namespace().unwrap_or_default(),
                s.name_any(),
            ))
        })
        .watches_stream(changes_of::<ConfigMap>(&client, ns), move |c| {
            // A Sieve script's ConfigMap appeared or changed: its Mailboxes say whether it
            // compiles.
            index_for_their_config_map.users(&Key::ConfigMap(
                c.namespace().unwrap_or_default(),
                c.name_any(),
            ))
        })
        .run(mailbox::reconcile, mailbox::error_policy, ctx.clone())
        .for_each(|result| async move {
            match &result {
                Ok(_) => crate::health::reconciled("Mailbox", "ok"),
                Err(controller::Error::ReconcilerFailed(err, _)) => {
                    crate::health::reconciled("Mailbox", err.category())
                }
                Err(err) => tracing::debug!(error = %err, "Mailbox controller event"),
            }
        });

    let relays = relay_controller
        .watches_stream(changes_of::<Secret>(&client, ns), move |s| {
            relay_policies
                .state()
                .into_iter()
                .filter(|rp| uses_credentials(rp, &s))
                .map(|rp| ObjectRef::from(rp.as_ref()))
                .collect::<Vec<_>>()
        })
        .shutdown_on_signal()
        .run(
            relay_policy::reconcile,
            relay_policy::error_policy,
            ctx.clone(),
        )
        .for_each(|result| async move {
            match &result {
                Ok(_) => crate::health::reconciled("RelayPolicy", "ok"),
                Err(controller::Error::ReconcilerFailed(err, _)) => {
                    crate::health::reconciled("RelayPolicy", err.category())
                }
                Err(err) => tracing::debug!(error = %err, "RelayPolicy controller event"),
            }
        });

    // The controllers start once the Secret metadata is listed, or every reconcile of the first
    // moments would read each Secret from the API server.
    let secret_metadata = tokio::spawn(secret_metadata);
    if ctx.secret_versions.wait_until_ready().await.is_err() {
        tracing::error!("the Secret metadata watch ended before listing");
    }
    crate::health::set_ready();
    futures::join!(domains, mailboxes, relays);
    secret_metadata.abort();
    for watch in metadata_watches {
        watch.abort();
    }
}
