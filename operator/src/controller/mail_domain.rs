//! MailDomain: renders and applies the runtime's objects and config, probes the mail Service in
//! each protocol, reads the served config revision from the metrics Service, and reports
//! conditions, endpoints and DNS records. The reconcile is a pipeline:
//!
//! ```text
//!   dereference (RelayPolicy, certificate, DKIM key, Mailboxes + hashes)   -- reads, makes keys once
//!     -> build (config, Deployment, Services, ...)                          -- pure
//!     -> apply (server-side apply, only what changed; mark pods)            -- writes
//!     -> observe (served revision, usage, protocol probes)                  -- asks the runtime
//!     -> status_of (conditions, endpoints, DNS records)                     -- pure
//!     -> write_status (only when it changed)
//! ```
use std::{collections::BTreeMap, sync::Arc, time::Duration};

use k8s_openapi::api::{
    apps::v1::Deployment,
    core::v1::{ConfigMap, PersistentVolumeClaim, Secret, Service, ServiceAccount},
};
use kube::{Api, ResourceExt, api::PostParams, runtime::controller::Action};
use kubemail_crds::{
    MailDomain, MailDomainStatus, Mailbox, Protocol, RelayPolicy, SecretKeyRef,
    mail_domain::Endpoint, mailbox::AppPassword,
};
use kubemail_probe as probe;
use sha2::{Digest, Sha256};

use super::{Context, domain_of};
use crate::{
    conditions::{self, reason, types},
    error::{Error, Result},
    keys,
    render::{
        self, HTTP_PORT, Names, config::HashedMailbox, container_port, dns, hostname, objects,
    },
};

/// How often a healthy domain is probed again.
const RESYNC: Duration = Duration::from_secs(30);

/// A Mailbox's password, resolved.
#[derive(Debug)]
pub enum Password {
    /// The hash to serve.
    Hash(String),
    /// A plaintext password not hashed yet (from [`password_found`], which does not hash).
    Unhashed,
    /// Why there is none.
    Missing(&'static str, String),
}

/// A Mailbox's Sieve script as the operator found it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Script {
    /// The Mailbox names none.
    None,
    /// Found, and it compiles: served.
    Valid(String),
    /// Not served: the reason and what to tell the user.
    Refused(&'static str, String),
}

/// Reads the Sieve script a Mailbox names (a ConfigMap or Secret key) and compiles it, so a
/// script that would not run is never handed to the runtime.
pub async fn sieve_script(ctx: &Context, mailbox: &Mailbox) -> Result<Script> {
    let Some(source) = &mailbox.spec.sieve else {
        return Ok(Script::None);
    };
    let ns = mailbox.namespace().ok_or(Error::Incomplete("namespace"))?;
    let text = if let Some(r) = &source.config_map_ref {
        let maps: Api<ConfigMap> = Api::namespaced(ctx.client.clone(), &ns);
        let Some(map) = maps.get_opt(&r.name).await? else {
            return Ok(Script::Refused(
                reason::CONFIG_MAP_NOT_FOUND,
                format!("ConfigMap {} does not exist", r.name),
            ));
        };
        match map.data.as_ref().and_then(|d| d.get(&r.key)) {
            Some(text) => text.clone(),
            None => {
                return Ok(Script::Refused(
                    reason::KEY_NOT_FOUND,
                    format!("ConfigMap {} has no key {:?}", r.name, r.key),
                ));
            }
        }
    } else if let Some(r) = &source.secret_ref {
        let secrets: Api<Secret> = Api::namespaced(ctx.client.clone(), &ns);
        let Some(secret) = secrets.get_opt(&r.name).await? else {
            return Ok(Script::Refused(
                reason::SECRET_NOT_FOUND,
                format!("Secret {} does not exist", r.name),
            ));
        };
        match secret.data.as_ref().and_then(|d| d.get(&r.key)) {
            Some(bytes) => String::from_utf8_lossy(&bytes.0).into_owned(),
            None => {
                return Ok(Script::Refused(
                    reason::KEY_NOT_FOUND,
                    format!("Secret {} has no key {:?}", r.name, r.key),
                ));
            }
        }
    } else {
        return Ok(Script::None);
    };
    Ok(match kubemail_sieve::compile(&text) {
        Ok(_) => Script::Valid(text),
        Err(err) => Script::Refused(reason::SCRIPT_INVALID, err.to_string()),
    })
}

/// Reads a Mailbox's password Secret and returns the hash to serve (hashing a plaintext
/// password once; the result is cached by content).
pub async fn password_hash(ctx: &Context, mailbox: &Mailbox) -> Result<Password> {
    resolve_password(ctx, mailbox, &mailbox.spec.password_secret_ref, None, true).await
}

/// Whether a Mailbox's password is there, without hashing it: the Mailbox's own reconcile
/// reports this, and leaves the hashing to its MailDomain's (one argon2 run per password, not
/// two racing ones).
pub async fn password_found(ctx: &Context, mailbox: &Mailbox) -> Result<Password> {
    resolve_password(ctx, mailbox, &mailbox.spec.password_secret_ref, None, false).await
}

/// Each app password of a Mailbox with its hash, as [`password_hash`] resolves the own one
/// (`hash: false`: only whether it is there, as [`password_found`]).
pub async fn app_passwords<'a>(
    ctx: &Context,
    mailbox: &'a Mailbox,
    hash: bool,
) -> Result<Vec<(&'a AppPassword, Password)>> {
    let mut out = Vec::new();
    for app in &mailbox.spec.app_passwords {
        let found = resolve_password(ctx, mailbox, &app.secret_ref, Some(&app.name), hash).await?;
        out.push((app, found));
    }
    Ok(out)
}

/// Reads the password at `reference`. `app_password` names the app password it is (its name
/// goes into the salt, so two app passwords in one Secret get different ones); `None` for the
/// Mailbox's own.
async fn resolve_password(
    ctx: &Context,
    mailbox: &Mailbox,
    reference: &SecretKeyRef,
    app_password: Option<&str>,
    hash_plaintext: bool,
) -> Result<Password> {
    let ns = mailbox.namespace().ok_or(Error::Incomplete("namespace"))?;
    // Cached by Secret key and by which password it is: two app passwords (or an app password
    // and the own one) reading one key get hashes of their own, each revoked on its own.
    let cache_key = match app_password {
        Some(name) => format!("{}\0app password\0{name}", reference.key),
        None => reference.key.clone(),
    };
    // The Secret is read only when its version differs from the one last hashed.
    let version = ctx.secret_version(&ns, &reference.name);
    if let Some((uid, resource_version)) = &version {
        let known = ctx
            .hash_by_version
            .lock()
            .expect("hash cache")
            .get(&(uid.clone(), cache_key.clone()))
            .filter(|(v, _)| v == resource_version)
            .map(|(_, hash)| hash.clone());
        if let Some(hash) = known {
            return Ok(Password::Hash(hash));
        }
    }
    let secrets: Api<Secret> = Api::namespaced(ctx.client.clone(), &ns);
    let Some(secret) = secrets.get_opt(&reference.name).await? else {
        return Ok(Password::Missing(
            reason::SECRET_NOT_FOUND,
            format!("Secret {} does not exist", reference.name),
        ));
    };
    let Some(value) = secret.data.as_ref().and_then(|d| d.get(&reference.key)) else {
        return Ok(Password::Missing(
            reason::KEY_NOT_FOUND,
            format!("Secret {} has no key {:?}", reference.name, reference.key),
        ));
    };
    let text = String::from_utf8_lossy(&value.0)
        .trim_end_matches(['\r', '\n'])
        .to_string();
    let remember = |hash: &String| {
        if let (Some(uid), Some(v)) = (&secret.metadata.uid, &secret.metadata.resource_version) {
            ctx.hash_by_version
                .lock()
                .expect("hash cache")
                .insert((uid.clone(), cache_key.clone()), (v.clone(), hash.clone()));
        }
    };
    match kubemail_config::password::PasswordHash::parse(&text) {
        Ok(_) => {
            remember(&text);
            return Ok(Password::Hash(text));
        }
        // A hash the runtime would refuse (malformed, or costing too much to check) is said so,
        // never taken for a plaintext password.
        Err(err)
            if ["$argon2", "$2a$", "$2b$", "$2y$"]
                .iter()
                .any(|p| text.starts_with(p)) =>
        {
            return Ok(Password::Missing(
                reason::INVALID_HASH,
                format!("Secret {} key {:?}: {err}", reference.name, reference.key),
            ));
        }
        Err(_) => {}
    }
    let uid = secret.metadata.uid.as_deref().unwrap_or_default();
    let mut hasher = Sha256::new();
    hasher.update(uid.as_bytes());
    hasher.update([0]);
    if let Some(name) = app_password {
        hasher.update(b"app password\0");
        hasher.update(name.as_bytes());
        hasher.update([0]);
    }
    hasher.update(text.as_bytes());
    let digest: [u8; 32] = hasher.finalize().into();
    let known = ctx.hashes.lock().expect("hash cache").get(&digest).cloned();
    if let Some(hash) = known {
        remember(&hash);
        return Ok(Password::Hash(hash));
    }
    if !hash_plaintext {
        return Ok(Password::Unhashed);
    }
    // The salt comes from the Secret's UID (never from the password: a fast hash of it in the
    // PHC string would undo argon2), so an operator restart hashes an unchanged password to
    // the same string. The runtime ends a mailbox's open sessions when its hash changes, which
    // must then mean the password did.
    let mut salter = Sha256::new();
    salter.update(b"kubemail argon2 salt\0");
    salter.update(uid.as_bytes());
    if let Some(name) = app_password {
        salter.update(b"\0app password\0");
        salter.update(name.as_bytes());
    }
    let salted: [u8; 32] = salter.finalize().into();
    let salt: [u8; 16] = salted[..16].try_into().unwrap_or_default();
    // On the runtime library's two hashing threads: argon2 takes ~19 MiB per run, and a
    // thousand new Mailboxes at once would otherwise spread that over hundreds of blocking
    // threads that keep it.
    let hash = kubemail_config::password::hash_password_bounded(text, Some(salt))
        .await
        .ok_or_else(|| Error::Keys("the password hashing threads are gone".into()))?;
    ctx.hashes
        .lock()
        .expect("hash cache")
        .insert(digest, hash.clone());
    remember(&hash);
    Ok(Password::Hash(hash))
}

/// The Mailboxes of a domain: same namespace, address in the domain. Sorted by name.
pub fn mailboxes_of(ctx: &Context, md: &MailDomain) -> Vec<Arc<Mailbox>> {
    let ns = md.namespace().unwrap_or_default();
    let key = super::index::Key::Domain(ns, md.spec.domain.to_ascii_lowercase());
    let mut out: Vec<Arc<Mailbox>> = ctx
        .mailbox_index
        .users(&key)
        .iter()
        .filter_map(|r| ctx.mailboxes.get(r))
        .filter(|m| m.metadata.deletion_timestamp.is_none())
        .filter(|m| domain_of(&m.spec.address).eq_ignore_ascii_case(&md.spec.domain))
        .collect();
    out.sort_by_key(|m| {
        (
            m.metadata.creation_timestamp.clone().map(|t| t.0),
            m.name_any(),
        )
    });
    out
}

/// Creates a Secret when it does not exist; never changes one that does.
pub(super) async fn create_once(api: &Api<Secret>, secret: Secret) -> Result<Secret> {
    let name = secret
        .metadata
        .name
        .clone()
        .ok_or(Error::Incomplete("name"))?;
    if let Some(existing) = api.get_opt(&name).await? {
        return Ok(existing);
    }
    match api.create(&PostParams::default(), &secret).await {
        Ok(created) => Ok(created),
        // Made meanwhile by another reconcile: keep that one.
        Err(kube::Error::Api(e)) if e.code == 409 => Ok(api.get(&name).await?),
        Err(e) => Err(e.into()),
    }
}

/// The reconcile of one MailDomain; a success resets its retry backoff.
pub async fn reconcile(md: Arc<MailDomain>, ctx: Arc<Context>) -> Result<Action> {
    let result = reconcile_once(md.clone(), ctx.clone()).await;
    if result.is_ok() {
        ctx.backoff.succeeded(md.as_ref());
    }
    result
}

async fn reconcile_once(md: Arc<MailDomain>, ctx: Arc<Context>) -> Result<Action> {
    let ns = md.namespace().ok_or(Error::Incomplete("namespace"))?;
    if md.metadata.deletion_timestamp.is_some() {
        // Owner references take the runtime's objects away; the PVC stays unless it is owned.
        return Ok(Action::await_change());
    }
    // The status as stored now, not as the watch cache last saw it: a reconcile that follows
    // our own status write closely must not take its stale copy for a change.
    let stored = Api::<MailDomain>::namespaced(ctx.client.clone(), &ns)
        .get_opt(&md.name_any())
        .await?;
    let Some(stored) = stored else {
        return Ok(Action::await_change());
    };
    let previous = stored.status.clone().unwrap_or_default();
    if md.spec.hosted_by.is_some() {
        return super::hosted::reconcile(&md, &ctx, &ns, &stored, &previous).await;
    }

    let referred = dereference(&ctx, &md, &ns, &previous).await?;
    let desired = build(
        &md,
        &referred,
        &ctx.options.runtime,
        ctx.options.network_policy_from.as_deref(),
    );
    let marked = apply(&ctx, &md, &ns, &desired, &previous).await?;
    let mut observed = observe(
        &ctx,
        &md,
        &ns,
        &desired,
        marked,
        &previous,
        referred.relay.as_ref(),
    )
    .await;
    let records = dns::records(&md, &referred.dkim.records, &observed.host_addresses);
    if let Some(checker) = &ctx.dns {
        let uid = md.metadata.uid.clone().ok_or(Error::Incomplete("uid"))?;
        observed.dns = Some(checker.verdict(uid, &records).await);
    }
    observed.published = publish_dns(&ctx, &md, &ns, &records, &previous).await?;
    let status = status_of(&md, &previous, &referred, &desired, &observed);

    write_and_look_again(&ctx, &md, &stored, &previous, &status).await
}

/// Writes a domain's status (only when it changed: an unchanged domain makes no writes) and
/// says when to look at it again.
pub(super) async fn write_and_look_again(
    ctx: &Context,
    md: &MailDomain,
    stored: &MailDomain,
    previous: &MailDomainStatus,
    status: &MailDomainStatus,
) -> Result<Action> {
    let present = super::write_status(
        ctx,
        md,
        stored.status.as_ref(),
        &previous.conditions,
        status,
        &status.conditions,
    )
    .await?;
    if !present {
        // Deleted while this reconcile ran: nothing left to report on.
        return Ok(Action::await_change());
    }
    let ready = conditions::is_true(&status.conditions, types::READY);
    Ok(Action::requeue(next_look(md, ready)))
}

/// When a domain is looked at again: a healthy one every [`RESYNC`]; a new one whose runtime
/// is still starting soon, so Ready follows it closely; later a failing one every 15 s (each
/// look reads every Mailbox's Secret, which matters with thousands of them).
fn next_look(md: &MailDomain, ready: bool) -> Duration {
    let young = md.metadata.creation_timestamp.as_ref().is_some_and(|t| {
        t.0.duration_until(k8s_openapi::jiff::Timestamp::now())
            .as_secs()
            < 120
    });
    if ready {
        RESYNC
    } else if young {
        Duration::from_secs(3)
    } else {
        Duration::from_secs(15)
    }
}

/// A served Mailbox with its hashes, as [`dereference`] found it.
#[derive(Debug, Clone)]
pub(super) struct Hashed {
    pub(super) mailbox: Arc<Mailbox>,
    pub(super) password_hash: String,
    pub(super) aliases: Vec<String>,
    pub(super) app_password_hashes: Vec<(String, String)>,
    pub(super) sieve_script: Option<String>,
}

impl Hashed {
    /// As the renderer takes it.
    pub(super) fn rendered(&self) -> HashedMailbox<'_> {
        HashedMailbox {
            mailbox: &self.mailbox,
            password_hash: self.password_hash.clone(),
            aliases: self.aliases.clone(),
            app_password_hashes: self.app_password_hashes.clone(),
            sieve_script: self.sieve_script.clone(),
        }
    }
}

/// What a MailDomain refers to, read from the API server (and the keys it needs, made once).
#[derive(Debug, Clone, Default)]
struct Referred {
    /// The RelayPolicy it names, and whether it exists; `None` when it names none.
    relay_policy: Option<(String, bool)>,
    /// That RelayPolicy as the runtime may use it (smarthost credentials only from a labelled
    /// Secret).
    relay: Option<RelayPolicy>,
    /// The addresses of the pods the RelayPolicy chooses by label.
    relay_pods: Vec<String>,
    /// Whether the certificate Secret is there.
    tls_ok: bool,
    /// With `storage.database`: the ports its URI connects to, when its Secret and key are
    /// there and the URI parses (else the reason and message).
    database_secret: Option<std::result::Result<Vec<u16>, (&'static str, String)>>,
    /// The DKIM key that signs and the records to publish, when DKIM is on.
    dkim: super::dkim::Published,
    /// The Mailboxes to serve, with their hashes; each address belongs to one (the oldest).
    mailboxes: Vec<Hashed>,
    /// The labels of the rspamd controller password's Secret; `None` when it names none or
    /// the Secret does not exist.
    rspamd_password_labels: Option<BTreeMap<String, String>>,
    /// The domains hosted on this runtime (MailDomains whose `hostedBy` names this one).
    hosted: Vec<super::hosted::Part>,
    /// The config the runtime was last given.
    current_config: Option<super::hosted::Current>,
}

/// Reads what the domain refers to: its RelayPolicy and credentials' labels, its certificate
/// (making a self-signed one when it names none), its DKIM key (made once), its Mailboxes and
/// their password hashes, and the pods its RelayPolicy chooses.
async fn dereference(
    ctx: &Context,
    md: &MailDomain,
    ns: &str,
    previous: &MailDomainStatus,
) -> Result<Referred> {
    let client = &ctx.client;
    let names = Names::of(md);
    let secrets: Api<Secret> = Api::namespaced(client.clone(), ns);
    let mut referred = Referred::default();
    let found = match &md.spec.relay_policy_ref {
        Some(r) => {
            let found = Api::<RelayPolicy>::namespaced(client.clone(), ns)
                .get_opt(&r.name)
                .await?;
            referred.relay_policy = Some((r.name.clone(), found.is_some()));
            found
        }
        None => None,
    };
    if let Some(rp) = found {
        let credentials = rp
            .spec
            .route
            .smarthost
            .as_ref()
            .and_then(|h| h.credentials_secret_ref.as_ref());
        let labels = match credentials {
            Some(creds) => secrets
                .get_metadata_opt(&creds.name)
                .await?
                .map(|s| s.metadata.labels.unwrap_or_default()),
            None => None,
        };
        let usable = render::smarthost::usable(&rp, labels.as_ref());
        if let Some(selector) = usable.spec.allow.pod_selector.clone() {
            referred.relay_pods = pod_networks(client, ns, selector).await?;
        }
        referred.relay = Some(usable);
    }
    if let Some(secret) = md
        .spec
        .inbound
        .rspamd
        .as_ref()
        .and_then(|r| r.controller_password_secret_ref.as_ref())
    {
        referred.rspamd_password_labels = secrets
            .get_metadata_opt(&secret.name)
            .await?
            .map(|s| s.metadata.labels.unwrap_or_default());
    }
    let (tls_ok, dkim) = own_keys(md, &secrets, records_resolve(ctx, previous)).await?;
    referred.tls_ok = tls_ok;
    if let Some(database) = &md.spec.storage.database {
        let reference = &database.secret_ref;
        referred.database_secret = Some(match secrets.get_opt(&reference.name).await? {
            None => Err((
                reason::SECRET_NOT_FOUND,
                format!(
                    "Secret {} does not exist: the runtime cannot start",
                    reference.name
                ),
            )),
            Some(s) => match s.data.as_ref().and_then(|d| d.get(&reference.key)) {
                None => Err((
                    reason::KEY_NOT_FOUND,
                    format!(
                        "Secret {} has no key {:?} (the connection URI): the runtime cannot start",
                        reference.name, reference.key
                    ),
                )),
                Some(uri) => kubemail_config::database::ports(&String::from_utf8_lossy(&uri.0))
                    .map_err(|e| {
                        (
                            reason::INVALID_URI,
                            format!(
                                "Secret {} key {:?}: {e}: the runtime cannot start",
                                reference.name, reference.key
                            ),
                        )
                    }),
            },
        });
        if let (Some(Ok(_)), Some(ca)) = (&referred.database_secret, &database.ca_secret_ref) {
            let present = secrets
                .get_opt(&ca.name)
                .await?
                .is_some_and(|s| s.data.as_ref().is_some_and(|d| d.contains_key(&ca.key)));
            if !present {
                referred.database_secret = Some(Err((
                    reason::SECRET_NOT_FOUND,
                    format!(
                        "Secret {} with key {:?} (the database's CA) does not exist: the runtime cannot start",
                        ca.name, ca.key
                    ),
                )));
            }
        }
    }
    referred.dkim = dkim;
    referred.mailboxes = served_mailboxes(ctx, md).await?;
    referred.hosted = super::hosted::parts(ctx, md, &secrets).await?;
    referred.current_config = current_config(&secrets, &names.config).await?;
    Ok(referred)
}

/// A domain's certificate and DKIM keys: whether the certificate Secret is there (a self-signed
/// one is made once when the spec names none) and the DKIM key that signs with the records to
/// publish (see [`super::dkim`]; `resolves`: whether the published records were seen in DNS).
pub(super) async fn own_keys(
    md: &MailDomain,
    secrets: &Api<Secret>,
    resolves: bool,
) -> Result<(bool, super::dkim::Published)> {
    let names = Names::of(md);
    let tls_ok = match &md.spec.tls.secret_name {
        Some(name) => secrets.get_opt(name).await?.is_some_and(|s| {
            s.data
                .as_ref()
                .is_some_and(|d| d.contains_key("tls.crt") && d.contains_key("tls.key"))
        }),
        None => {
            if secrets.get_opt(&names.self_signed_tls).await?.is_none() {
                let (cert, key) = keys::self_signed(&dns::web_names(md, true))
                    .map_err(|e| Error::Keys(e.into()))?;
                let secret = objects::pem_secret(
                    md,
                    &names.self_signed_tls,
                    "kubernetes.io/tls",
                    &[("tls.crt", &cert), ("tls.key", &key)],
                );
                create_once(secrets, secret).await?;
            }
            true
        }
    };
    let now = k8s_openapi::jiff::Timestamp::now().as_second();
    let dkim = super::dkim::keys(md, secrets, resolves, now).await?;
    Ok((tls_ok, dkim))
}

/// Whether the records a domain publishes were seen in DNS: its last `DNSVerified`, or true
/// when nobody checks.
pub(super) fn records_resolve(ctx: &Context, previous: &MailDomainStatus) -> bool {
    ctx.dns.is_none() || conditions::is_true(&previous.conditions, types::DNS_VERIFIED)
}

/// The config the runtime was last given (the config Secret's `runtime.yaml`) and the files
/// beside it, if any.
pub(super) async fn current_config(
    secrets: &Api<Secret>,
    name: &str,
) -> Result<Option<super::hosted::Current>> {
    Ok(secrets.get_opt(name).await?.and_then(|s| {
        let mut data = s.data?;
        let yaml = data.remove("runtime.yaml")?;
        Some(super::hosted::Current {
            config: serde_yaml_ng::from_slice(&yaml.0).ok()?,
            files: data.into_iter().map(|(k, v)| (k, v.0)).collect(),
        })
    }))
}

/// The Mailboxes a domain serves, with their hashes: each address belongs to one (the oldest
/// wins, see render::claims); one whose password is missing is left out.
pub(super) async fn served_mailboxes(ctx: &Context, md: &MailDomain) -> Result<Vec<Hashed>> {
    let mut served = Vec::new();
    // Each address and alias belongs to one Mailbox (the oldest wins, see render::claims).
    let mailboxes = mailboxes_of(ctx, md);
    let refs: Vec<&Mailbox> = mailboxes.iter().map(AsRef::as_ref).collect();
    let claims = render::claims::claim(md, &refs);
    for (mailbox, claim) in mailboxes.iter().zip(claims) {
        if claim.duplicate_of.is_some() {
            continue;
        }
        if let Password::Hash(hash) = password_hash(ctx, mailbox).await? {
            // An app password whose Secret is missing is left out (the Mailbox's status says
            // so); the others and the own password are served.
            // A hash already served for this mailbox is left out too: each password is known
            // by its hash, so a revocation must end exactly its own sessions.
            let mut app_password_hashes: Vec<(String, String)> = Vec::new();
            for (app, found) in app_passwords(ctx, mailbox, true).await? {
                if let Password::Hash(app_hash) = found
                    && app_hash != hash
                    && app_password_hashes.iter().all(|(_, h)| *h != app_hash)
                {
                    app_password_hashes.push((app.name.clone(), app_hash));
                }
            }
            // A script that is missing or does not compile is left out (the Mailbox's status
            // says why); the mailbox is served without it.
            let sieve_script = match sieve_script(ctx, mailbox).await? {
                Script::Valid(text) => Some(text),
                _ => None,
            };
            served.push(Hashed {
                mailbox: mailbox.clone(),
                password_hash: hash,
                aliases: claim.aliases,
                app_password_hashes,
                sieve_script,
            });
        }
    }
    Ok(served)
}

/// What is to be in the cluster for a domain, built without a client.
#[derive(Debug, Clone)]
struct Desired {
    /// The config's revision.
    revision: String,
    /// Why the runtime would refuse the config; then it is not written.
    invalid: Option<String>,
    /// The catch-all address, and whether a served Mailbox has it.
    catch_all: Option<(String, bool)>,
    /// How many Mailboxes the config serves.
    mailboxes: usize,
    service_account: ServiceAccount,
    /// The config Secret, when the config is valid.
    config: Option<Secret>,
    /// The Maildir volume (none with a database).
    claim: Option<PersistentVolumeClaim>,
    /// With several replicas on a database.
    disruption_budget: Option<k8s_openapi::api::policy::v1::PodDisruptionBudget>,
    service: Service,
    metrics_service: Service,
    deployment: Deployment,
    /// With `--network-policies`.
    network_policy: Option<k8s_openapi::api::networking::v1::NetworkPolicy>,
}

/// Renders the runtime config and the objects around it. Pure: the same inputs give the same
/// objects.
fn build(
    md: &MailDomain,
    referred: &Referred,
    runtime: &objects::RuntimeOptions,
    network_policy_from: Option<&[String]>,
) -> Desired {
    let md = &render::rspamd::usable(md, referred.rspamd_password_labels.as_ref());
    let hashed: Vec<HashedMailbox<'_>> = referred.mailboxes.iter().map(Hashed::rendered).collect();
    // Pods the RelayPolicy chooses by label relay by their addresses.
    let mut config = render::config::runtime_config(md, &hashed, referred.relay.as_ref());
    // The key that signs now (its file is named after it, see `dkim`).
    if let Some(dkim) = &mut config.dkim {
        match &referred.dkim.signing {
            Some((selector, file, _)) => {
                dkim.selector = selector.clone();
                dkim.key_file = format!("{}/{file}", render::paths::DKIM_DIR).into();
            }
            None => config.dkim = None,
        }
    }
    config
        .relay
        .client_networks
        .extend(referred.relay_pods.iter().cloned());
    let catch_all = md.spec.catch_all.as_ref().map(|target| {
        (
            target.clone(),
            render::config::serves(&config.mailboxes, target),
        )
    });
    // The runtime's own check, before anything is written: a config it would refuse is never
    // handed to it (it would keep serving the last good one, and nobody would see why).
    let invalid = kubemail_config::Config::validate(config.clone())
        .err()
        .map(|e| e.to_string());
    let mailboxes = config.mailboxes.len();
    // The domains hosted here, each part added only while the config stays valid.
    let (config, files) = if invalid.is_none() && !referred.hosted.is_empty() {
        super::hosted::add(
            config,
            md,
            &referred.hosted,
            referred.current_config.as_ref(),
        )
    } else {
        (config, Vec::new())
    };
    let (revision, yaml) = render::config::with_revision(config);
    Desired {
        config: invalid
            .is_none()
            .then(|| objects::config_secret(md, &revision, &yaml, &files)),
        revision,
        invalid,
        catch_all,
        mailboxes,
        service_account: objects::service_account(md),
        claim: md
            .spec
            .storage
            .database
            .is_none()
            .then(|| objects::data_claim(md)),
        disruption_budget: objects::disruption_budget(md),
        service: objects::service(md),
        metrics_service: objects::metrics_service(md),
        deployment: objects::deployment(md, referred.relay.as_ref(), runtime),
        network_policy: network_policy_from.map(|from| {
            let database_ports = match &referred.database_secret {
                Some(Ok(ports)) => ports.as_slice(),
                _ => &[],
            };
            objects::network_policy(md, referred.relay.as_ref(), from, database_ports)
        }),
    }
}

/// Applies what [`build`] made (each object only when it changed, see [`Context::apply`]), and
/// marks the runtime's pods when a new config revision was written. Returns whether any pod was
/// marked.
async fn apply(
    ctx: &Context,
    md: &MailDomain,
    ns: &str,
    desired: &Desired,
    previous: &MailDomainStatus,
) -> Result<bool> {
    let client = &ctx.client;
    ctx.apply(
        &Api::<ServiceAccount>::namespaced(client.clone(), ns),
        &desired.service_account,
    )
    .await?;
    match (&desired.config, &desired.invalid) {
        (Some(secret), _) => {
            ctx.apply(&Api::<Secret>::namespaced(client.clone(), ns), secret)
                .await?;
        }
        (None, invalid) => {
            tracing::warn!(domain = %md.spec.domain, invalid = invalid.as_deref().unwrap_or_default(), "rendered config refused; the last one stays");
        }
    }
    if let Some(claim) = &desired.claim {
        ctx.apply(
            &Api::<PersistentVolumeClaim>::namespaced(client.clone(), ns),
            claim,
        )
        .await?;
    }
    match &desired.disruption_budget {
        Some(budget) => {
            ctx.apply(&Api::namespaced(client.clone(), ns), budget)
                .await?;
        }
        // Back to one replica, or to Maildir: the budget this domain had goes.
        None => {
            super::hosted::delete_owned::<k8s_openapi::api::policy::v1::PodDisruptionBudget>(
                ctx,
                ns,
                &Names::of(md).runtime,
                &md.uid().unwrap_or_default(),
            )
            .await?;
        }
    }
    let services = Api::<Service>::namespaced(client.clone(), ns);
    ctx.apply(&services, &desired.service).await?;
    ctx.apply(&services, &desired.metrics_service).await?;
    ctx.apply(
        &Api::<Deployment>::namespaced(client.clone(), ns),
        &desired.deployment,
    )
    .await?;
    if let Some(policy) = &desired.network_policy {
        ctx.apply(
            &Api::<k8s_openapi::api::networking::v1::NetworkPolicy>::namespaced(client.clone(), ns),
            policy,
        )
        .await?;
    }
    // A revision that status does not show yet was (probably) just written: its pods are marked.
    let marked = desired.config.is_some()
        && previous.config_revision.as_deref() != Some(desired.revision.as_str())
        && refresh_pods(ctx, client, ns, md, &desired.revision, false).await;
    Ok(marked)
}

/// One protocol group's probes: the condition type, and each enabled port's result.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Probed {
    type_: &'static str,
    /// The protocols that passed.
    passed: Vec<String>,
    /// `protocol: error` of those that failed.
    failures: Vec<String>,
}

/// What the running domain answered.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct Observed {
    /// The config revision the runtime serves, if it answers.
    served: Option<String>,
    /// With `storage.database`: the schema version the runtime sees, or why it cannot use
    /// the database (from its status, or from its last termination message when it does not
    /// start); `None` while nothing was heard.
    database: Option<std::result::Result<i64, (&'static str, String)>>,
    /// The probes of the protocol groups that have an enabled port (the others have no
    /// condition).
    probes: Vec<Probed>,
    /// The outbound queue as status shows it (rate-limited, see `usage`).
    queued: Option<i64>,
    /// Whether the content scanners answer (`None`: none configured): what answered, or what
    /// did not.
    scanners: Option<Result<String, String>>,
    /// The open-relay self-test through port 25 (`None`: port 25 is not served).
    relay_test: Option<probe::RelayVerdict>,
    /// The DNS records as resolved (`None`: DNS checks are off).
    dns: Option<crate::dns_check::Verdict>,
    /// The load balancer's addresses of the mail Service (a LoadBalancer's, once it has them).
    host_addresses: Vec<std::net::IpAddr>,
    /// The records published through external-dns (`None`: not asked for): what was written,
    /// or the reason and message of why not.
    published: Option<std::result::Result<String, (&'static str, String)>>,
}

/// The protocol groups, each one condition.
const GROUPS: [(&str, probe::Kind, &[Protocol]); 6] = [
    (types::SMTP_READY, probe::Kind::Smtp, &[Protocol::Smtp]),
    (
        types::SUBMISSION_READY,
        probe::Kind::Smtp,
        &[Protocol::Submission, Protocol::Submissions],
    ),
    (
        types::IMAP_READY,
        probe::Kind::Imap,
        &[Protocol::Imap, Protocol::Imaps],
    ),
    (
        types::POP3_READY,
        probe::Kind::Pop3,
        &[Protocol::Pop3, Protocol::Pop3s],
    ),
    (
        types::MANAGESIEVE_READY,
        probe::Kind::Managesieve,
        &[Protocol::Managesieve],
    ),
    (types::HTTPS_READY, probe::Kind::Https, &[Protocol::Https]),
];

/// Asks the running domain: the revision its runtime serves, each Mailbox's usage and the queue
/// (written to the Mailboxes, see `usage`), and a probe of each enabled protocol through the
/// Service. Marks the pods again when the runtime still serves an old revision.
async fn observe(
    ctx: &Context,
    md: &MailDomain,
    ns: &str,
    desired: &Desired,
    marked: bool,
    previous: &MailDomainStatus,
    relay: Option<&RelayPolicy>,
) -> Observed {
    let names = Names::of(md);
    let host = ctx
        .options
        .probe_host_override
        .clone()
        .unwrap_or_else(|| format!("{}.{ns}.svc", names.runtime));
    // The revision is read from the metrics Service: the mail Service has no HTTP port.
    let http_host = ctx
        .options
        .probe_host_override
        .clone()
        .unwrap_or_else(|| format!("{}.{ns}.svc", names.metrics));
    let status = runtime_status(&http_host, HTTP_PORT).await;
    let served = status
        .as_ref()
        .and_then(|s| s["revision"].as_str().map(str::to_string));
    let database = match (&md.spec.storage.database, &status) {
        (None, _) => None,
        (Some(_), Some(status)) => match (
            status["database"]["schema"].as_i64(),
            status["database"]["error"].as_str(),
        ) {
            (Some(schema), _) => Some(Ok(schema)),
            (None, Some(error)) => Some(Err((reason::DATABASE_UNAVAILABLE, error.to_string()))),
            (None, None) => None,
        },
        (Some(_), None) => last_termination(&ctx.client, ns, md)
            .await
            .map(|why| Err((reason::RUNTIME_CANNOT_START, why))),
    };
    // Each Mailbox's storage and the queue, from the runtime (rate-limited, see `usage`).
    let usage = match served {
        Some(_) => runtime_json::<super::usage::Report>(&http_host, HTTP_PORT, "/usage").await,
        None => None,
    };
    if let Some(report) = &usage {
        let mut mailboxes = mailboxes_of(ctx, md);
        for hosted in super::hosted::hosted_on(ctx, md) {
            mailboxes.extend(mailboxes_of(ctx, &hosted));
        }
        super::usage::write(ctx, ns, &mailboxes, report).await;
    }
    let queued = super::usage::queued(ctx, ns, &md.name_any(), previous.queued, usage.as_ref());
    if desired.config.is_some()
        && !marked
        && served.is_some()
        && served.as_deref() != Some(desired.revision.as_str())
    {
        // Marked earlier (or by an operator that stopped before writing status), yet still the
        // old revision: the kubelet may have synced the pod before its cache saw the new Secret.
        // Another change makes it sync again, at most every REFRESH_AGAIN per pod.
        refresh_pods(ctx, &ctx.client, ns, md, &desired.revision, true).await;
    }
    // Every enabled protocol is probed at once: one slow handshake does not hold up the rest,
    // nor the next reconcile of this domain (a new Mailbox waits for it).
    let host = host.as_str();
    let targets: Vec<(usize, Protocol, probe::Kind, String)> = GROUPS
        .iter()
        .enumerate()
        .flat_map(|(g, (_, kind, protocols))| {
            md.spec
                .protocols
                .iter()
                .filter(|(p, s)| s.enabled && protocols.contains(p))
                .map(move |(p, s)| {
                    let port = if ctx.options.probe_host_override.is_some() {
                        container_port(p)
                    } else {
                        s.port_or_default(p)
                    };
                    (g, p, *kind, format!("{host}:{port}"))
                })
                .collect::<Vec<_>>()
        })
        .collect();
    let reports = futures::future::join_all(targets.iter().map(|(_, protocol, kind, address)| {
        let options = probe::Options {
            implicit_tls: protocol.implicit_tls(),
            timeout: ctx.options.probe_timeout,
            ..probe::Options::default()
        };
        async move { probe::probe(*kind, address, &options).await }
    }))
    .await;
    let mut probes = Vec::new();
    for (g, (type_, _, _)) in GROUPS.iter().enumerate() {
        let mut group = Probed {
            type_,
            passed: Vec::new(),
            failures: Vec::new(),
        };
        for ((_, protocol, _, _), report) in
            targets.iter().zip(&reports).filter(|((i, ..), _)| *i == g)
        {
            if report.ok {
                // No latency here: a status that changes on every probe would be a write every
                // resync for nothing.
                group.passed.push(protocol.field().to_string());
            } else {
                group.failures.push(format!(
                    "{}: {}",
                    protocol.field(),
                    report.error.clone().unwrap_or_default()
                ));
            }
        }
        if group.passed.is_empty() && group.failures.is_empty() {
            continue;
        }
        crate::health::probe_result(
            md.metadata.namespace.as_deref().unwrap_or_default(),
            md.metadata.name.as_deref().unwrap_or_default(),
            type_,
            group.failures.is_empty(),
        );
        probes.push(group);
    }
    let scanners = scanners_answer(&md.spec.inbound, ctx.options.probe_timeout).await;
    let host_addresses = host_addresses(ctx, md, ns, previous).await;
    let relay_test = match targets.iter().find(|(_, p, ..)| *p == Protocol::Smtp) {
        Some((.., address)) => {
            let smtp_answers = probes
                .iter()
                .any(|p| p.type_ == types::SMTP_READY && p.failures.is_empty());
            relay_verdict(ctx, md, relay, address, served.as_deref(), smtp_answers).await
        }
        None => None,
    };
    Observed {
        served,
        database,
        probes,
        scanners,
        queued,
        relay_test,
        dns: None,
        host_addresses,
        published: None,
    }
}

/// The addresses of a server's mail host: its LoadBalancer Service's (none for other types).
/// A failed read keeps the addresses status lists (it must not take the mail host's A record
/// out of the published records).
pub(super) async fn host_addresses(
    ctx: &Context,
    server: &MailDomain,
    ns: &str,
    previous: &MailDomainStatus,
) -> Vec<std::net::IpAddr> {
    if server.spec.runtime.service.type_ != kubemail_crds::mail_domain::ServiceType::LoadBalancer {
        return Vec::new();
    }
    match load_balancer_addresses(ctx, ns, &Names::of(server).runtime).await {
        Some(addresses) => addresses,
        None => previous
            .dns_records
            .iter()
            .filter(|r| r.purpose == "host")
            .filter_map(|r| r.value.parse().ok())
            .collect(),
    }
}

/// The addresses a LoadBalancer Service was given (none while it waits for them); `None` when
/// the Service cannot be read.
async fn load_balancer_addresses(
    ctx: &Context,
    ns: &str,
    service: &str,
) -> Option<Vec<std::net::IpAddr>> {
    let found = Api::<Service>::namespaced(ctx.client.clone(), ns)
        .get_opt(service)
        .await
        .ok()?;
    let mut addresses: Vec<std::net::IpAddr> = found
        .and_then(|s| s.status?.load_balancer?.ingress)
        .unwrap_or_default()
        .iter()
        .filter_map(|i| i.ip.as_deref()?.parse().ok())
        .collect();
    addresses.sort();
    addresses.dedup();
    Some(addresses)
}

/// How long an open-relay verdict stands while the runtime serves the same config.
const RELAY_RETEST: Duration = Duration::from_secs(600);

/// The open-relay verdict: the last one while the runtime serves the same config revision and
/// it is younger than [`RELAY_RETEST`], a new relay attempt otherwise. While port 25 does not
/// answer its probe the last verdict stands (none yet: `None`). Testing once per revision
/// keeps the attempts, and the relay rate-limit tokens an accepted one spends, few.
async fn relay_verdict(
    ctx: &Context,
    md: &MailDomain,
    relay: Option<&RelayPolicy>,
    address: &str,
    served: Option<&str>,
    smtp_answers: bool,
) -> Option<probe::RelayVerdict> {
    let key = md.metadata.uid.clone().unwrap_or_default();
    let last = ctx
        .relay_tests
        .lock()
        .expect("relay tests")
        .get(&key)
        .cloned();
    let fresh = last.as_ref().is_some_and(|(revision, at, verdict)| {
        revision.as_deref() == served
            && at.elapsed() < RELAY_RETEST
            && !matches!(verdict, probe::RelayVerdict::Unknown(_))
    });
    if !smtp_answers || fresh {
        return last.map(|(_, _, verdict)| verdict);
    }
    let (from, to) = relay_test_addresses(md, relay);
    let verdict = probe::relay_attempt(address, &from, &to, ctx.options.probe_timeout).await;
    let mut tests = ctx.relay_tests.lock().expect("relay tests");
    // Domains deleted since are forgotten here (their reconciles stop).
    tests.retain(|_, (_, at, _)| at.elapsed() < RELAY_RETEST * 6);
    tests.insert(
        key,
        (
            served.map(str::to_string),
            std::time::Instant::now(),
            verdict.clone(),
        ),
    );
    Some(verdict)
}

/// Publishes `records` as the MailDomain's external-dns `DNSEndpoint` when `spec.dns.publish`
/// asks for it, and removes the one it wrote when it no longer does. Never touches a
/// `DNSEndpoint` this MailDomain does not own. `None` when publishing is off (and nothing of
/// ours is left).
pub(super) async fn publish_dns(
    ctx: &Context,
    md: &MailDomain,
    ns: &str,
    records: &[kubemail_crds::mail_domain::DnsRecord],
    previous: &MailDomainStatus,
) -> Result<Option<std::result::Result<String, (&'static str, String)>>> {
    use kube::{
        api::{DynamicObject, ListParams},
        core::{ApiResource, GroupVersionKind},
    };
    let published_before = previous
        .conditions
        .iter()
        .any(|c| c.type_ == types::DNS_PUBLISHED);
    if !md.spec.dns.publish && !published_before {
        return Ok(None);
    }
    let uid = md.metadata.uid.clone().ok_or(Error::Incomplete("uid"))?;
    let resource = ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk("externaldns.k8s.io", "v1alpha1", "DNSEndpoint"),
        "dnsendpoints",
    );
    let api: Api<DynamicObject> = Api::namespaced_with(ctx.client.clone(), ns, &resource);
    let publish = md.spec.dns.publish;
    let refused = |why: &'static str, message: String| Ok(publish.then_some(Err((why, message))));
    let forbidden = || {
        refused(
            reason::FORBIDDEN,
            "the operator may not write DNSEndpoints in this namespace: install the chart with \
             operator.publishDNSEndpoints=true (it grants that in the served namespaces)"
                .to_string(),
        )
    };
    let name = dns::endpoint_name(md);
    let existing = match api.get_opt(&name).await {
        Ok(found) => found,
        // A kind the API server does not know answers a bare "404 page not found".
        Err(kube::Error::Api(e)) if e.code == 404 => None,
        Err(kube::Error::Api(e)) if e.code == 403 => return forbidden(),
        Err(e) => return Err(e.into()),
    };
    if existing.is_none() {
        // get_opt says None for a missing object and a missing kind alike; listing tells them
        // apart (404: external-dns's CRD is not installed).
        match api.list_metadata(&ListParams::default().limit(1)).await {
            Ok(_) => {}
            Err(kube::Error::Api(e)) if e.code == 404 => {
                return refused(
                    reason::CRD_NOT_INSTALLED,
                    "spec.dns.publish is set but external-dns's DNSEndpoint CRD \
                     (dnsendpoints.externaldns.k8s.io) is not installed: publish \
                     status.dnsRecords by hand, or install external-dns with --source=crd"
                        .to_string(),
                );
            }
            Err(kube::Error::Api(e)) if e.code == 403 => return forbidden(),
            Err(e) => return Err(e.into()),
        }
    }
    let owned = |o: &DynamicObject| {
        o.metadata
            .owner_references
            .iter()
            .flatten()
            .any(|r| r.uid == uid)
    };
    if existing.as_ref().is_some_and(|o| !owned(o)) {
        return refused(
            reason::NOT_OWNED,
            format!(
                "DNSEndpoint {name} exists and is not this MailDomain's: it is left as it is; \
                 rename or delete it to publish"
            ),
        );
    }
    if !publish {
        if existing.is_some() {
            match api.delete(&name, &Default::default()).await {
                Ok(_) => {}
                Err(kube::Error::Api(e)) if e.code == 404 || e.code == 403 => {}
                Err(e) => return Err(e.into()),
            }
        }
        return Ok(None);
    }
    let desired = dns::endpoint_object(md, records);
    // Written only when the records differ: an unchanged domain makes no writes.
    if existing
        .as_ref()
        .is_none_or(|o| o.data.get("spec") != desired.get("spec"))
    {
        match api
            .patch(
                &name,
                &kube::api::PatchParams::apply(super::FIELD_MANAGER).force(),
                &kube::api::Patch::Apply(&desired),
            )
            .await
        {
            Ok(_) => {}
            Err(kube::Error::Api(e)) if e.code == 403 => return forbidden(),
            Err(e) => return Err(e.into()),
        }
    }
    Ok(Some(Ok(format!(
        "DNSEndpoint {name} holds the {} records of status.dnsRecords (written for external-dns; \
         DNSVerified tells whether they reached DNS)",
        records.len()
    ))))
}

/// The envelope of the open-relay self-test: a sender the RelayPolicy allows (its first sender
/// domain, else the domain itself: a forged sender costs an outsider nothing) and a recipient
/// in a domain this MailDomain does not serve (the policy's first such recipient domain, else a
/// reserved example domain). The test never gets past RCPT.
fn relay_test_addresses(md: &MailDomain, relay: Option<&RelayPolicy>) -> (String, String) {
    let served = |d: &str| {
        d.eq_ignore_ascii_case(&md.spec.domain)
            || md
                .spec
                .alias_domains
                .iter()
                .any(|a| a.eq_ignore_ascii_case(d))
    };
    let sender = relay
        .and_then(|r| r.spec.sender_domains.first())
        .map_or(md.spec.domain.as_str(), String::as_str);
    let listed = relay
        .map(|r| r.spec.recipient_domains.as_slice())
        .unwrap_or_default();
    let recipient = if listed.is_empty() {
        ["example.net", "example.org", "example.com"]
            .into_iter()
            .find(|d| !served(d))
            .unwrap_or("relay-test.invalid")
    } else {
        // Only these domains can be relayed to; one of them served here is local delivery.
        listed
            .iter()
            .map(String::as_str)
            .find(|d| !served(d))
            .unwrap_or("relay-test.invalid")
    };
    (
        format!("kubemail-relay-test@{sender}"),
        format!("kubemail-relay-test@{recipient}"),
    )
}

/// Whether the MailDomain's clamd (`PING`) and rspamd's workers (`/ping`) answer.
async fn scanners_answer(
    inbound: &kubemail_crds::mail_domain::InboundSpec,
    timeout: Duration,
) -> Option<Result<String, String>> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let ask = |address: String, question: &'static [u8], answer: &'static str| async move {
        let exchange = async {
            let mut stream = tokio::net::TcpStream::connect(&address).await.ok()?;
            stream.write_all(question).await.ok()?;
            let mut reply = Vec::new();
            let _ = (&mut stream).take(4096).read_to_end(&mut reply).await;
            String::from_utf8_lossy(&reply)
                .contains(answer)
                .then_some(())
        };
        tokio::time::timeout(timeout, exchange).await.ok().flatten()
    };
    let mut answered = Vec::new();
    let mut silent = Vec::new();
    if let Some(clamav) = &inbound.clamav {
        match ask(clamav.address.clone(), b"zPING\0", "PONG").await {
            Some(()) => answered.push(format!("clamd at {}", clamav.address)),
            None => silent.push(format!("clamd at {} does not answer PING", clamav.address)),
        }
    }
    if let Some(rspamd) = &inbound.rspamd {
        let workers = std::iter::once(("rspamd", &rspamd.url)).chain(
            rspamd
                .controller_url
                .iter()
                .map(|u| ("rspamd's controller", u)),
        );
        for (what, url) in workers {
            let address = url
                .trim_start_matches("http://")
                .trim_end_matches('/')
                .to_string();
            match ask(address, b"GET /ping HTTP/1.0\r\n\r\n", "pong").await {
                Some(()) => answered.push(format!("{what} at {url}")),
                None => silent.push(format!("{what} at {url} does not answer /ping")),
            }
        }
    }
    if answered.is_empty() && silent.is_empty() {
        return None;
    }
    Some(if silent.is_empty() {
        Ok(answered.join(", "))
    } else {
        Err(silent.join("; "))
    })
}

/// The status, from what was read, built and observed, with the conditions' transition times
/// kept where nothing changed. Pure but for the clock of a new transition.
fn status_of(
    md: &MailDomain,
    previous: &MailDomainStatus,
    referred: &Referred,
    desired: &Desired,
    observed: &Observed,
) -> MailDomainStatus {
    let names = Names::of(md);
    let ns = md.namespace().unwrap_or_default();
    let generation = md.metadata.generation;
    let mut conditions = previous.conditions.clone();
    let mut set = |type_: &str, ok: bool, reason: &str, message: String| {
        conditions::set(
            &mut conditions,
            &previous.conditions,
            type_,
            ok,
            reason,
            message,
            generation,
        )
    };
    match &referred.relay_policy {
        Some((name, true)) => set(
            types::RELAY_POLICY_FOUND,
            true,
            reason::READY,
            format!("RelayPolicy {name} is used"),
        ),
        Some((name, false)) => set(
            types::RELAY_POLICY_FOUND,
            false,
            reason::RELAY_POLICY_NOT_FOUND,
            format!(
                "RelayPolicy {name} does not exist; only logged-in mailboxes may relay until it does"
            ),
        ),
        None => {}
    }
    if referred.tls_ok {
        set(
            types::TLS_READY,
            true,
            reason::READY,
            format!("certificate from Secret {}", names.tls),
        );
    } else {
        set(
            types::TLS_READY,
            false,
            reason::SECRET_NOT_FOUND,
            format!(
                "Secret {} (type kubernetes.io/tls, keys tls.crt and tls.key) does not exist yet",
                names.tls
            ),
        );
    }
    let database_ok = match (&referred.database_secret, &observed.database) {
        (None, _) => true,
        (Some(Err((why, message))), _) => {
            set(types::DATABASE_READY, false, why, message.clone());
            false
        }
        (Some(Ok(_)), Some(Ok(schema))) => {
            set(
                types::DATABASE_READY,
                true,
                reason::DATABASE_CONNECTED,
                format!("the runtime uses the database, schema version {schema}"),
            );
            true
        }
        (Some(Ok(_)), Some(Err((why, message)))) => {
            set(types::DATABASE_READY, false, why, message.clone());
            false
        }
        (Some(Ok(_)), None) => {
            set(
                types::DATABASE_READY,
                false,
                reason::WAITING,
                "the runtime has not reported on its database yet".into(),
            );
            false
        }
    };
    match &desired.catch_all {
        Some((target, false)) => set(
            types::CATCH_ALL_FOUND,
            false,
            reason::CATCH_ALL_NOT_FOUND,
            format!(
                "no served Mailbox has the address {target}; mail to unknown addresses is refused until one does"
            ),
        ),
        Some((target, true)) => set(
            types::CATCH_ALL_FOUND,
            true,
            reason::READY,
            format!("mail to unknown addresses goes to {target}"),
        ),
        None => {}
    }
    if let Some(invalid) = &desired.invalid {
        set(
            types::CONFIG_VALID,
            false,
            reason::INVALID_CONFIG,
            invalid.clone(),
        );
    }
    let revision = &desired.revision;
    let config_served = observed.served.as_deref() == Some(revision.as_str());
    set(
        types::CONFIG_SERVED,
        config_served,
        if config_served {
            reason::SERVED
        } else {
            reason::PENDING
        },
        match &observed.served {
            Some(r) if config_served => format!("the runtime serves revision {r}"),
            Some(r) => format!(
                "the runtime serves revision {r}; revision {revision} is written and will be picked up"
            ),
            None => format!("revision {revision} is written; the runtime has not answered yet"),
        },
    );
    for group in &observed.probes {
        let ok = group.failures.is_empty();
        set(
            group.type_,
            ok,
            if ok {
                reason::PROBE_PASSED
            } else {
                reason::PROBE_FAILED
            },
            if ok {
                format!("probes passed: {}", group.passed.join(", "))
            } else {
                group.failures.join("; ")
            },
        );
    }
    // Not part of Ready: mail still flows as `onFailure` says, and the condition tells why
    // it waits or goes unscanned.
    let password_refused = md
        .spec
        .inbound
        .rspamd
        .as_ref()
        .and_then(|r| render::rspamd::refusal(r, referred.rspamd_password_labels.as_ref()));
    match (&observed.scanners, password_refused) {
        (Some(Err(silent)), _) => set(
            types::SCANNERS_REACHABLE,
            false,
            reason::SCANNER_UNREACHABLE,
            format!(
                "{silent}: mail from outside is refused for now or taken unscanned, as onFailure says"
            ),
        ),
        (Some(Ok(_)), Some((why, message))) => set(types::SCANNERS_REACHABLE, false, why, message),
        (Some(Ok(answered)), None) => set(
            types::SCANNERS_REACHABLE,
            true,
            reason::READY,
            format!("{answered} answer"),
        ),
        (None, _) => {}
    }
    // Not part of Ready either: the domain works, and the condition (with a Warning event)
    // says for whom it works too well.
    let mut set_status = |type_: &str, status: &str, reason: &str, message: String| {
        conditions::set_status(
            &mut conditions,
            &previous.conditions,
            type_,
            status,
            reason,
            message,
            generation,
        )
    };
    match &observed.relay_test {
        Some(probe::RelayVerdict::Accepted(reply)) => set_status(
            types::OPEN_RELAY,
            "True",
            reason::RELAY_ACCEPTED,
            format!(
                "the runtime accepted a recipient in another domain from the operator's address \
                 without a login ({reply}): anyone who can reach port 25 from there can send \
                 mail through it; check the RelayPolicy's clientCIDRs and podSelector"
            ),
        ),
        Some(probe::RelayVerdict::Refused(reply)) => set_status(
            types::OPEN_RELAY,
            "False",
            reason::RELAY_REFUSED,
            format!(
                "a relay attempt without a login from the operator's address was refused ({reply})"
            ),
        ),
        Some(probe::RelayVerdict::Unknown(why)) => set_status(
            types::OPEN_RELAY,
            "Unknown",
            reason::RELAY_TEST_INCONCLUSIVE,
            format!("the open-relay self-test had no verdict: {why}"),
        ),
        None => {}
    }
    // Not part of Ready: mail within the cluster works without DNS, and outside senders'
    // troubles are the condition's message.
    set_dns_conditions(
        &mut set_status,
        observed.dns.as_ref(),
        observed.published.as_ref(),
    );
    // Conditions about things no longer there go.
    conditions.retain(|c| match c.type_.as_str() {
        types::OPEN_RELAY => observed.relay_test.is_some(),
        types::DNS_PUBLISHED => observed.published.is_some(),
        types::DNS_VERIFIED => observed.dns.is_some(),
        types::SCANNERS_REACHABLE => observed.scanners.is_some(),
        types::RELAY_POLICY_FOUND => referred.relay_policy.is_some(),
        types::CATCH_ALL_FOUND => desired.catch_all.is_some(),
        types::DATABASE_READY => referred.database_secret.is_some(),
        types::CONFIG_VALID => desired.invalid.is_some(),
        t if GROUPS.iter().any(|(g, _, _)| *g == t) => observed.probes.iter().any(|p| p.type_ == t),
        _ => true,
    });
    let ready = referred.tls_ok
        && database_ok
        && config_served
        && desired.invalid.is_none()
        && observed.probes.iter().all(|p| p.failures.is_empty());
    set_ready(
        &mut conditions,
        &previous.conditions,
        ready,
        "every enabled protocol answers its probe and the current config is served",
        generation,
    );
    MailDomainStatus {
        observed_generation: generation,
        hostname: Some(hostname(md)),
        conditions,
        endpoints: endpoints(md, &ns),
        mailboxes: desired.mailboxes as i32,
        config_revision: if desired.invalid.is_none() {
            Some(desired.revision.clone())
        } else {
            previous.config_revision.clone()
        },
        dns_records: dns::records(md, &referred.dkim.records, &observed.host_addresses),
        queued: observed.queued,
    }
}

/// `DNSVerified` and `DNSPublished` from what the checks found (none: not asked for).
pub(super) fn set_dns_conditions(
    set_status: &mut impl FnMut(&str, &str, &str, String),
    verified: Option<&crate::dns_check::Verdict>,
    published: Option<&std::result::Result<String, (&'static str, String)>>,
) {
    match verified {
        Some(crate::dns_check::Verdict::Verified(n)) => set_status(
            types::DNS_VERIFIED,
            "True",
            reason::RECORDS_VERIFIED,
            format!("all {n} records of status.dnsRecords resolve as they should"),
        ),
        Some(crate::dns_check::Verdict::Wrong(problems)) => set_status(
            types::DNS_VERIFIED,
            "False",
            reason::RECORDS_WRONG,
            format!(
                "{} of the records in status.dnsRecords are missing or wrong: {}",
                problems.len(),
                problems.join("; ")
            ),
        ),
        Some(crate::dns_check::Verdict::Unreachable(why)) => set_status(
            types::DNS_VERIFIED,
            "Unknown",
            reason::DNS_UNREACHABLE,
            format!("the resolver did not answer: {why}"),
        ),
        None => {}
    }
    match published {
        Some(Ok(written)) => {
            set_status(types::DNS_PUBLISHED, "True", reason::READY, written.clone())
        }
        Some(Err((why, message))) => {
            set_status(types::DNS_PUBLISHED, "False", why, message.clone())
        }
        None => {}
    }
}

/// `Ready` (naming the conditions that hold it back when false), then kstatus's conditions,
/// and the conditions sorted.
pub(super) fn set_ready(
    conditions: &mut Vec<kubemail_crds::Condition>,
    previous: &[kubemail_crds::Condition],
    ready: bool,
    ok: &str,
    generation: Option<i64>,
) {
    let failing: Vec<String> = conditions
        .iter()
        .filter(|c| conditions::holds_back(c))
        .map(|c| c.type_.clone())
        .collect();
    conditions::set(
        conditions,
        previous,
        types::READY,
        ready,
        if ready {
            reason::READY
        } else {
            reason::NOT_READY
        },
        if ready {
            ok.to_string()
        } else {
            format!("not ready: {}", failing.join(", "))
        },
        generation,
    );
    conditions::set_kstatus(conditions, previous, generation);
    conditions.sort_by(|a, b| a.type_.cmp(&b.type_));
}

/// Where a runtime's clients connect inside the cluster: its mail Service, each enabled port.
pub(super) fn endpoints(server: &MailDomain, ns: &str) -> Vec<Endpoint> {
    let runtime = Names::of(server).runtime;
    server
        .spec
        .protocols
        .iter()
        .filter(|(_, s)| s.enabled)
        .map(|(p, s)| Endpoint {
            protocol: p.field().into(),
            host: format!("{runtime}.{ns}.svc"),
            port: s.port_or_default(p),
            tls: if p.implicit_tls() { "TLS" } else { "STARTTLS" }.into(),
        })
        .collect()
}

/// The addresses (as /32 and /128 networks, sorted) of the pods in `ns` that `selector`
/// chooses. A selector that cannot be turned into a query chooses nothing.
async fn pod_networks(
    client: &kube::Client,
    ns: &str,
    selector: k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector,
) -> Result<Vec<String>> {
    let Ok(selector) = kube::core::Selector::try_from(selector) else {
        return Ok(Vec::new());
    };
    let pods = Api::<k8s_openapi::api::core::v1::Pod>::namespaced(client.clone(), ns)
        .list(&kube::api::ListParams::default().labels_from(&selector))
        .await?;
    let mut networks: Vec<String> = pods
        .items
        .iter()
        .filter(|p| p.metadata.deletion_timestamp.is_none())
        .flat_map(|p| {
            p.status
                .as_ref()
                .and_then(|s| s.pod_ips.clone())
                .unwrap_or_default()
        })
        .filter_map(|ip| ip.ip.parse::<std::net::IpAddr>().ok())
        .map(|ip| match ip {
            std::net::IpAddr::V4(v4) => format!("{v4}/32"),
            std::net::IpAddr::V6(v6) => format!("{v6}/128"),
        })
        .collect();
    networks.sort();
    networks.dedup();
    Ok(networks)
}

/// The annotation on a runtime pod naming the config revision it should serve.
const POD_REVISION: &str = "kubemail.io/config-revision";
/// When the operator last marked the pod (RFC 3339).
const POD_REFRESH: &str = "kubemail.io/config-refresh";
/// How long a marked pod is given before it is marked again.
const REFRESH_AGAIN: Duration = Duration::from_secs(10);

/// Makes the runtime's pods see config revision `revision` now rather than in a minute.
///
/// The kubelet rewrites a pod's Secret volumes when it syncs the pod: on its periodic sync
/// (`syncFrequency`, one minute by default) or as soon as the Pod object changes. Marking each
/// running pod with the revision just written is such a change, so the new config reaches the
/// runtime's files within about a second and the runtime reloads it; no pod restarts, and
/// nothing but the revision's name passes through the pod (the chart's admission policy lets
/// the operator change nothing else of a pod). With `again`, pods marked with this revision
/// more than [`REFRESH_AGAIN`] ago are marked once more. Returns whether any pod was changed.
///
/// Best effort: the kubelet's periodic sync delivers the config anyway, so a failure here (a
/// Role without `patch` on pods, a webhook that refuses) is logged and the reconcile goes on.
async fn refresh_pods(
    ctx: &Context,
    client: &kube::Client,
    ns: &str,
    md: &MailDomain,
    revision: &str,
    again: bool,
) -> bool {
    use kube::api::{Patch, PatchParams};
    let pods = Api::<k8s_openapi::api::core::v1::Pod>::namespaced(client.clone(), ns);
    let list = match runtime_pods(client, ns, md).await {
        Ok(list) => list,
        Err(err) => {
            tracing::warn!(error = %err, "listing the runtime pods failed; the kubelet's periodic sync will deliver the config");
            return false;
        }
    };
    let now = k8s_openapi::jiff::Timestamp::now();
    let mut changed = false;
    for pod in list.items {
        if pod.metadata.deletion_timestamp.is_some()
            || !needs_mark(pod.annotations(), revision, again, now)
        {
            continue;
        }
        let Some(name) = pod.metadata.name.as_deref() else {
            continue;
        };
        let patch = serde_json::json!({"metadata": {"annotations": {
            POD_REVISION: revision,
            POD_REFRESH: now.to_string(),
        }}});
        match pods
            .patch(name, &PatchParams::default(), &Patch::Merge(&patch))
            .await
        {
            Ok(_) => {
                changed = true;
                tracing::debug!(pod = name, revision, "pod marked with the config revision");
            }
            // Gone meanwhile: its replacement mounts the current Secret at start.
            Err(kube::Error::Api(e)) if e.code == 404 => {}
            Err(err) => {
                tracing::warn!(pod = name, error = %err, "marking the runtime pod failed; the kubelet's periodic sync will deliver the config");
                use kube::runtime::events::{Event, EventType};
                let event = Event {
                    type_: EventType::Warning,
                    reason: "PodRefreshFailed".into(),
                    note: Some(format!(
                        "could not mark pod {name} with config revision {revision}: {err}; the kubelet delivers it on its periodic sync (about a minute)"
                    ).chars().take(1000).collect()),
                    action: "Reconcile".into(),
                    secondary: None,
                };
                if let Err(err) = ctx
                    .recorder
                    .publish(&event, &kube::Resource::object_ref(md, &()))
                    .await
                {
                    tracing::debug!(error = %err, "an event could not be written");
                }
            }
        }
    }
    changed
}

/// Whether a pod with `annotations` is to be marked with `revision` at `now`: when it names
/// another revision, or (asked `again`) when it was marked more than [`REFRESH_AGAIN`] ago.
fn needs_mark(
    annotations: &BTreeMap<String, String>,
    revision: &str,
    again: bool,
    now: k8s_openapi::jiff::Timestamp,
) -> bool {
    if annotations.get(POD_REVISION).map(String::as_str) != Some(revision) {
        return true;
    }
    let recently = annotations
        .get(POD_REFRESH)
        .and_then(|t| t.parse::<k8s_openapi::jiff::Timestamp>().ok())
        .is_some_and(|t| now.duration_since(t).as_secs() < REFRESH_AGAIN.as_secs() as i64);
    again && !recently
}

/// What the runtime reports on `/readyz` (its `status`), if it answers.
async fn runtime_status(host: &str, port: i32) -> Option<serde_json::Value> {
    let value: serde_json::Value = runtime_json(host, port, "/readyz").await?;
    Some(value["status"].clone())
}

/// A domain's runtime pods, by its selector.
async fn runtime_pods(
    client: &kube::Client,
    ns: &str,
    md: &MailDomain,
) -> kube::Result<kube::api::ObjectList<k8s_openapi::api::core::v1::Pod>> {
    let selector = render::selector(md)
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(",");
    Api::<k8s_openapi::api::core::v1::Pod>::namespaced(client.clone(), ns)
        .list(&kube::api::ListParams::default().labels(&selector))
        .await
}

/// Why a runtime container last stopped, as it wrote it for the kubelet (see `mail-runtime`'s
/// termination message), from its pods' statuses.
async fn last_termination(client: &kube::Client, ns: &str, md: &MailDomain) -> Option<String> {
    let list = runtime_pods(client, ns, md).await.ok()?;
    // The newest stop of any runtime container: an old crash is not reported after a restart.
    list.items
        .iter()
        .filter_map(|pod| pod.status.as_ref()?.container_statuses.as_ref())
        .flatten()
        .filter_map(|c| {
            let terminated = c
                .state
                .as_ref()
                .and_then(|s| s.terminated.as_ref())
                .or_else(|| c.last_state.as_ref()?.terminated.as_ref())?;
            let message = terminated
                .message
                .clone()
                .filter(|m| !m.trim().is_empty())?;
            Some((terminated.finished_at.clone().map(|t| t.0), message))
        })
        .max_by(|a, b| a.0.cmp(&b.0))
        .map(|(_, message)| message)
}

/// The config revision the runtime reports on `/readyz`, if it answers.
#[cfg(test)]
async fn served_revision(host: &str, port: i32) -> Option<String> {
    // Not ready (503) still says which revision it serves.
    let value: serde_json::Value = runtime_json(host, port, "/readyz").await?;
    value["status"]["revision"].as_str().map(str::to_string)
}

/// A JSON answer of the runtime's HTTP side at `path` (whatever its status code), if it
/// answers within 3 s with at most 16 MiB.
async fn runtime_json<T: serde::de::DeserializeOwned>(
    host: &str,
    port: i32,
    path: &str,
) -> Option<T> {
    use http_body_util::BodyExt;
    let fetch = async {
        let stream = tokio::net::TcpStream::connect(format!("{host}:{port}"))
            .await
            .ok()?;
        let (mut sender, connection) =
            hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
                .await
                .ok()?;
        // Ends once the answer is read and the sender dropped.
        tokio::spawn(connection);
        let request = hyper::Request::get(path)
            .header(hyper::header::HOST, host)
            .body(http_body_util::Empty::<hyper::body::Bytes>::new())
            .ok()?;
        let response = sender.send_request(request).await.ok()?;
        let body = http_body_util::Limited::new(response.into_body(), 16 << 20)
            .collect()
            .await
            .ok()?
            .to_bytes();
        serde_json::from_slice(&body).ok()
    };
    tokio::time::timeout(Duration::from_secs(3), fetch)
        .await
        .ok()
        .flatten()
}

/// Retry policy on errors: per-object backoff (see [`super::Backoff`]).
pub fn error_policy(md: Arc<MailDomain>, error: &Error, ctx: Arc<Context>) -> Action {
    tracing::warn!(error = %error, category = error.category(), "MailDomain reconcile failed");
    Action::requeue(ctx.backoff.after_failure(md.as_ref(), error))
}

#[cfg(test)]
mod tests {
    mod status {
        use kubemail_crds::{Condition, MailDomainStatus};

        use kubemail_probe as probe;

        use super::super::{Desired, Observed, Probed, Referred, build, status_of};
        use crate::{
            conditions::{self, reason, types},
            render::{fixtures, objects::RuntimeOptions},
        };

        fn desired(referred: &Referred) -> Desired {
            let options = RuntimeOptions {
                image: "i".into(),
                binary: "/b".into(),
            };
            build(&fixtures::domain(), referred, &options, None)
        }

        fn healthy() -> Referred {
            Referred {
                relay_policy: Some(("apps".into(), true)),
                tls_ok: true,
                ..Referred::default()
            }
        }

        fn answering(revision: &str) -> Observed {
            let group = |type_, passed: &[&str]| Probed {
                type_,
                passed: passed.iter().map(|p| p.to_string()).collect(),
                failures: Vec::new(),
            };
            Observed {
                served: Some(revision.into()),
                database: None,
                probes: vec![
                    group(types::SMTP_READY, &["smtp"]),
                    group(types::IMAP_READY, &["imap", "imaps"]),
                ],
                queued: Some(0),
                scanners: None,
                relay_test: Some(probe::RelayVerdict::Refused(
                    "RCPT 550 5.7.1 relaying denied".into(),
                )),
                dns: None,
                host_addresses: Vec::new(),
                published: None,
            }
        }

        fn get<'a>(status: &'a MailDomainStatus, type_: &str) -> Option<&'a Condition> {
            status.conditions.iter().find(|c| c.type_ == type_)
        }

        fn said(status: &MailDomainStatus, type_: &str) -> Option<(String, String)> {
            get(status, type_).map(|c| (c.status.clone(), c.reason.clone()))
        }

        fn pair(status: &str, reason: &str) -> Option<(String, String)> {
            Some((status.into(), reason.into()))
        }

        #[test]
        fn everything_answering_is_ready_with_nothing_awaited() {
            let md = fixtures::domain();
            let referred = healthy();
            let desired = desired(&referred);
            let observed = answering(&desired.revision);
            let status = status_of(
                &md,
                &MailDomainStatus::default(),
                &referred,
                &desired,
                &observed,
            );
            assert_eq!(said(&status, types::READY), pair("True", reason::READY));
            assert_eq!(
                said(&status, types::CONFIG_SERVED),
                pair("True", reason::SERVED)
            );
            assert_eq!(
                said(&status, types::IMAP_READY),
                pair("True", reason::PROBE_PASSED)
            );
            assert!(
                get(&status, types::RECONCILING).is_none()
                    && get(&status, types::STALLED).is_none()
            );
            assert_eq!(
                status.config_revision.as_deref(),
                Some(desired.revision.as_str())
            );
            assert_eq!(status.observed_generation, Some(3));
            // Every condition carries the generation it describes, and they are sorted.
            assert!(
                status
                    .conditions
                    .iter()
                    .all(|c| c.observed_generation == Some(3))
            );
            assert!(status.conditions.is_sorted_by(|a, b| a.type_ <= b.type_));
        }

        #[test]
        fn the_relay_test_sends_as_the_policy_allows_to_a_domain_not_served_here() {
            use super::super::relay_test_addresses;
            let mut md = fixtures::domain();
            // No policy: the domain's own sender, a reserved domain not served here.
            assert_eq!(
                relay_test_addresses(&md, None),
                (
                    "kubemail-relay-test@example.com".to_string(),
                    "kubemail-relay-test@example.net".to_string()
                )
            );
            // A policy's sender domain, and its first recipient domain not served here.
            let mut relay = fixtures::relay();
            relay.spec.sender_domains = vec!["shop.example.com".into()];
            relay.spec.recipient_domains =
                vec!["example.org".into(), "customers.example.net".into()];
            assert_eq!(
                relay_test_addresses(&md, Some(&relay)),
                (
                    "kubemail-relay-test@shop.example.com".to_string(),
                    "kubemail-relay-test@customers.example.net".to_string()
                )
            );
            // Every candidate served here: a name that exists nowhere.
            md.spec.alias_domains = vec!["example.net".into(), "EXAMPLE.ORG".into()];
            assert_eq!(
                relay_test_addresses(&md, None).1,
                "kubemail-relay-test@relay-test.invalid"
            );
        }

        #[test]
        fn an_open_relay_is_named_and_a_warning_without_taking_ready_away() {
            let md = fixtures::domain();
            let referred = healthy();
            let desired = desired(&referred);
            let mut observed = answering(&desired.revision);
            let closed = status_of(
                &md,
                &MailDomainStatus::default(),
                &referred,
                &desired,
                &observed,
            );
            assert_eq!(
                said(&closed, types::OPEN_RELAY),
                pair("False", reason::RELAY_REFUSED)
            );
            observed.relay_test = Some(probe::RelayVerdict::Accepted(
                "RCPT 250 2.1.5 recipient OK, relayed".into(),
            ));
            let open = status_of(&md, &closed, &referred, &desired, &observed);
            assert_eq!(
                said(&open, types::OPEN_RELAY),
                pair("True", reason::RELAY_ACCEPTED)
            );
            assert_eq!(said(&open, types::READY), pair("True", reason::READY));
            // The change is news, and bad news: a Warning.
            let news = conditions::transitions(&closed.conditions, &open.conditions);
            assert_eq!(news.len(), 1);
            assert!(news[0].type_ == types::OPEN_RELAY && conditions::is_bad(news[0]));
            // No verdict (the runtime restarting): Unknown, not a claim either way.
            observed.relay_test = Some(probe::RelayVerdict::Unknown("no SMTP greeting".into()));
            let unknown = status_of(&md, &open, &referred, &desired, &observed);
            assert_eq!(
                said(&unknown, types::OPEN_RELAY),
                pair("Unknown", reason::RELAY_TEST_INCONCLUSIVE)
            );
            // Port 25 no longer served: no self-test, no condition.
            observed.relay_test = None;
            let gone = status_of(&md, &unknown, &referred, &desired, &observed);
            assert!(get(&gone, types::OPEN_RELAY).is_none());
        }

        #[test]
        fn a_silent_scanner_is_named_without_taking_ready_away() {
            let md = fixtures::domain();
            let referred = healthy();
            let desired = desired(&referred);
            let mut observed = answering(&desired.revision);
            observed.scanners = Some(Err(
                "rspamd at http://rspamd:11333 does not answer /ping".into()
            ));
            let status = status_of(
                &md,
                &MailDomainStatus::default(),
                &referred,
                &desired,
                &observed,
            );
            assert_eq!(
                said(&status, types::SCANNERS_REACHABLE),
                pair("False", reason::SCANNER_UNREACHABLE)
            );
            assert!(
                get(&status, types::SCANNERS_REACHABLE)
                    .is_some_and(|c| c.message.contains("does not answer /ping"))
            );
            assert_eq!(said(&status, types::READY), pair("True", reason::READY));
            // Scanners removed from the spec: the condition goes.
            observed.scanners = None;
            let after = status_of(&md, &status, &referred, &desired, &observed);
            assert!(get(&after, types::SCANNERS_REACHABLE).is_none());
        }

        #[test]
        fn a_runtime_not_answering_is_awaited_and_a_failing_probe_named() {
            let md = fixtures::domain();
            let referred = healthy();
            let desired = desired(&referred);
            let silent = Observed::default();
            let status = status_of(
                &md,
                &MailDomainStatus::default(),
                &referred,
                &desired,
                &silent,
            );
            assert_eq!(
                said(&status, types::CONFIG_SERVED),
                pair("False", reason::PENDING)
            );
            assert_eq!(
                said(&status, types::READY),
                pair("False", reason::NOT_READY)
            );
            assert_eq!(
                said(&status, types::RECONCILING),
                pair("True", reason::PENDING)
            );
            // No probe ran, so no probe condition claims anything.
            assert!(get(&status, types::SMTP_READY).is_none());

            let mut failing = answering(&desired.revision);
            failing.probes[1].failures = vec!["imaps: connection refused".into()];
            let status = status_of(
                &md,
                &MailDomainStatus::default(),
                &referred,
                &desired,
                &failing,
            );
            let imap = get(&status, types::IMAP_READY).expect("IMAPReady");
            assert_eq!(
                (imap.status.as_str(), imap.reason.as_str()),
                ("False", reason::PROBE_FAILED)
            );
            assert_eq!(imap.message, "imaps: connection refused");
            let ready = get(&status, types::READY).expect("Ready");
            assert_eq!(ready.message, "not ready: IMAPReady");
            assert_eq!(
                said(&status, types::RECONCILING),
                pair("True", reason::PROBE_FAILED)
            );
        }

        #[test]
        fn an_invalid_config_stalls_and_keeps_the_last_good_revision() {
            let md = fixtures::domain();
            let referred = healthy();
            let mut desired = desired(&referred);
            desired.invalid = Some("mailboxes[0].address: \"x\" is not a mail address".into());
            desired.config = None;
            let previous = MailDomainStatus {
                config_revision: Some("good".into()),
                ..MailDomainStatus::default()
            };
            let status = status_of(&md, &previous, &referred, &desired, &answering("good"));
            assert_eq!(
                said(&status, types::CONFIG_VALID),
                pair("False", reason::INVALID_CONFIG)
            );
            assert_eq!(
                said(&status, types::STALLED),
                pair("True", reason::INVALID_CONFIG)
            );
            assert_eq!(status.config_revision.as_deref(), Some("good"));
            assert_eq!(
                said(&status, types::READY),
                pair("False", reason::NOT_READY)
            );
        }

        #[test]
        fn what_is_gone_loses_its_condition_and_unchanged_ones_keep_their_time() {
            let md = fixtures::domain();
            let referred = healthy();
            let desired = desired(&referred);
            let mut observed = answering(&desired.revision);
            observed.probes[1].failures = vec!["imaps: refused".into()];
            let first = status_of(
                &md,
                &MailDomainStatus::default(),
                &referred,
                &desired,
                &observed,
            );
            // Later: IMAP recovers, the RelayPolicy is no longer named, IMAP is switched off.
            let later = Referred {
                relay_policy: None,
                ..healthy()
            };
            let mut recovered = answering(&desired.revision);
            recovered.probes.truncate(1);
            std::thread::sleep(std::time::Duration::from_millis(5));
            let second = status_of(&md, &first, &later, &desired, &recovered);
            assert!(get(&second, types::RELAY_POLICY_FOUND).is_none());
            assert!(get(&second, types::IMAP_READY).is_none());
            assert_eq!(said(&second, types::READY), pair("True", reason::READY));
            // SMTPReady was True both times: its transition time stays; Ready's moves.
            let time =
                |s: &MailDomainStatus, t: &str| get(s, t).map(|c| c.last_transition_time.clone());
            assert_eq!(
                time(&first, types::SMTP_READY),
                time(&second, types::SMTP_READY)
            );
            assert_ne!(time(&first, types::READY), time(&second, types::READY));
            // A missing RelayPolicy is reported but does not stop the domain (logged-in
            // mailboxes still send).
            let missing = Referred {
                relay_policy: Some(("apps".into(), false)),
                ..healthy()
            };
            let status = status_of(&md, &second, &missing, &desired, &recovered);
            assert_eq!(
                said(&status, types::RELAY_POLICY_FOUND),
                pair("False", reason::RELAY_POLICY_NOT_FOUND)
            );
            assert_eq!(said(&status, types::READY), pair("True", reason::READY));
        }

        #[test]
        fn a_missing_certificate_is_awaited_not_stalled() {
            let md = fixtures::domain();
            let referred = Referred {
                tls_ok: false,
                ..healthy()
            };
            let desired = desired(&referred);
            let status = status_of(
                &md,
                &MailDomainStatus::default(),
                &referred,
                &desired,
                &answering(&desired.revision),
            );
            assert_eq!(
                said(&status, types::TLS_READY),
                pair("False", reason::SECRET_NOT_FOUND)
            );
            assert_eq!(
                said(&status, types::RECONCILING),
                pair("True", reason::SECRET_NOT_FOUND)
            );
        }
    }

    use std::collections::BTreeMap;

    use k8s_openapi::jiff::{SignedDuration, Timestamp};

    use super::{POD_REFRESH, POD_REVISION, needs_mark, served_revision};

    /// The runtime answers `/readyz` with 503 while it is not ready, and still names the
    /// revision it serves; anything else (no server, not JSON) is no revision.
    #[tokio::test]
    async fn the_served_revision_is_read_from_readyz_ready_or_not() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let port = i32::from(listener.local_addr().expect("addr").port());
        let server = tokio::spawn(async move {
            for body in [r#"{"status":{"revision":"r42","ready":false}}"#, "not json"] {
                let (mut socket, _) = listener.accept().await.expect("accept");
                let mut request = vec![0u8; 1024];
                let n = socket.read(&mut request).await.expect("read");
                assert!(request[..n].starts_with(b"GET /readyz HTTP/1.1\r\n"));
                let answer = format!(
                    "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\n\
                     content-length: {}\r\nconnection: close\r\n\r\n{body}",
                    body.len()
                );
                socket.write_all(answer.as_bytes()).await.expect("write");
            }
        });
        assert_eq!(
            served_revision("127.0.0.1", port).await.as_deref(),
            Some("r42")
        );
        assert_eq!(served_revision("127.0.0.1", port).await, None);
        server.await.expect("server");
        assert_eq!(served_revision("127.0.0.1", port).await, None);
    }

    fn pod(revision: Option<&str>, refreshed: Option<Timestamp>) -> BTreeMap<String, String> {
        let mut annotations = BTreeMap::new();
        if let Some(r) = revision {
            annotations.insert(POD_REVISION.to_string(), r.to_string());
        }
        if let Some(t) = refreshed {
            annotations.insert(POD_REFRESH.to_string(), t.to_string());
        }
        annotations
    }

    #[test]
    fn a_pod_is_marked_once_per_revision_and_again_at_most_every_ten_seconds() {
        let now = Timestamp::now();
        let ago = |s: i64| {
            now.checked_sub(SignedDuration::from_secs(s))
                .expect("a time in range")
        };
        // Never marked, or marked with an older revision: marked.
        assert!(needs_mark(&pod(None, None), "b", false, now));
        assert!(needs_mark(&pod(Some("a"), Some(ago(1))), "b", false, now));
        // Already marked with this revision: left alone unless asked again...
        assert!(!needs_mark(&pod(Some("b"), Some(ago(1))), "b", false, now));
        assert!(!needs_mark(&pod(Some("b"), Some(ago(60))), "b", false, now));
        // ...and then only when the last mark is 10 s old (each mark is a pod update that
        // brings the operator back here: no storm).
        assert!(!needs_mark(&pod(Some("b"), Some(ago(3))), "b", true, now));
        assert!(needs_mark(&pod(Some("b"), Some(ago(11))), "b", true, now));
        assert!(needs_mark(&pod(Some("b"), None), "b", true, now));
        // An unreadable time counts as old.
        let mut garbled = pod(Some("b"), None);
        garbled.insert(POD_REFRESH.to_string(), "yesterday".into());
        assert!(needs_mark(&garbled, "b", true, now));
    }
}
