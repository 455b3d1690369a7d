//! MailDomain: renders and applies the runtime's objects and config, probes the mail Service in
//! each protocol, reads the served config revision from the metrics Service, and reports
//! conditions, endpoints and DNS records.
use std::{sync::Arc, time::Duration};

use k8s_openapi::api::{
    apps::v1::Deployment,
    core::v1::{PersistentVolumeClaim, Secret, Service, ServiceAccount},
};
use kube::{
    Api, ResourceExt,
    api::{Patch, PatchParams, PostParams},
    runtime::controller::Action,
};
use kubemail_crds::{
    MailDomain, MailDomainStatus, Mailbox, Protocol, RelayPolicy, SecretKeyRef,
    mail_domain::Endpoint, mailbox::AppPassword,
};
use kubemail_probe as probe;
use sha2::{Digest, Sha256};

use super::{Context, FIELD_MANAGER, domain_of};
use crate::{
    conditions::{self, reason},
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
    // The Secret is read only when its version differs from the one last hashed.
    let version = ctx.secret_version(&ns, &reference.name);
    if let Some((uid, resource_version)) = &version {
        let known = ctx
            .hash_by_version
            .lock()
            .expect("hash cache")
            .get(&(uid.clone(), reference.key.clone()))
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
            ctx.hash_by_version.lock().expect("hash cache").insert(
                (uid.clone(), reference.key.clone()),
                (v.clone(), hash.clone()),
            );
        }
    };
    if kubemail_config::password::PasswordHash::parse(&text).is_ok() {
        remember(&text);
        return Ok(Password::Hash(text));
    }
    let uid = secret.metadata.uid.as_deref().unwrap_or_default();
    let mut hasher = Sha256::new();
    hasher.update(uid.as_bytes());
    hasher.update([0]);
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
    let ns = md.namespace();
    let mut out: Vec<Arc<Mailbox>> = ctx
        .mailboxes
        .state()
        .into_iter()
        .filter(|m| m.namespace() == ns && m.metadata.deletion_timestamp.is_none())
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
async fn create_once(api: &Api<Secret>, secret: Secret) -> Result<Secret> {
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

/// The reconcile of one MailDomain.
pub async fn reconcile(md: Arc<MailDomain>, ctx: Arc<Context>) -> Result<Action> {
    let ns = md.namespace().ok_or(Error::Incomplete("namespace"))?;
    if md.metadata.deletion_timestamp.is_some() {
        // Owner references take the runtime's objects away; the PVC stays unless it is owned.
        return Ok(Action::await_change());
    }
    let client = ctx.client.clone();
    let names = Names::of(&md);
    let generation = md.metadata.generation;
    // The status as stored now, not as the watch cache last saw it: a reconcile that follows
    // our own status write closely must not take its stale copy for a change.
    let stored = Api::<MailDomain>::namespaced(ctx.client.clone(), &ns)
        .get_opt(&md.name_any())
        .await?;
    let Some(stored) = stored else {
        return Ok(Action::await_change());
    };
    let previous = stored.status.clone().unwrap_or_default();
    let mut status = MailDomainStatus {
        observed_generation: generation,
        hostname: Some(hostname(&md)),
        conditions: previous.conditions.clone(),
        ..MailDomainStatus::default()
    };
    let set = |conditions: &mut Vec<_>, t: &str, ok: bool, r: &str, m: String| {
        conditions::set(conditions, &previous.conditions, t, ok, r, m, generation)
    };

    // Read what the domain refers to.
    let relay = match &md.spec.relay_policy_ref {
        Some(r) => {
            let found = Api::<RelayPolicy>::namespaced(client.clone(), &ns)
                .get_opt(&r.name)
                .await?;
            match &found {
                Some(_) => set(
                    &mut status.conditions,
                    "RelayPolicyFound",
                    true,
                    reason::READY,
                    format!("RelayPolicy {} is used", r.name),
                ),
                None => set(
                    &mut status.conditions,
                    "RelayPolicyFound",
                    false,
                    reason::RELAY_POLICY_NOT_FOUND,
                    format!(
                        "RelayPolicy {} does not exist; only logged-in mailboxes may relay until it does",
                        r.name
                    ),
                ),
            }
            found
        }
        None => {
            status.conditions.retain(|c| c.type_ != "RelayPolicyFound");
            None
        }
    };
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &ns);
    // The smarthost's credentials reach the runtime only from a Secret labelled for it (the
    // RelayPolicy's own reconcile reports why not).
    let relay = match relay {
        Some(rp) => {
            let labels = match rp
                .spec
                .route
                .smarthost
                .as_ref()
                .and_then(|h| h.credentials_secret_ref.as_ref())
            {
                Some(creds) => secrets
                    .get_metadata_opt(&creds.name)
                    .await?
                    .map(|s| s.metadata.labels.unwrap_or_default()),
                None => None,
            };
            Some(render::smarthost::usable(&rp, labels.as_ref()))
        }
        None => None,
    };
    let tls_ok = match &md.spec.tls.secret_name {
        Some(name) => secrets.get_opt(name).await?.is_some_and(|s| {
            s.data
                .as_ref()
                .is_some_and(|d| d.contains_key("tls.crt") && d.contains_key("tls.key"))
        }),
        None => {
            if secrets.get_opt(&names.self_signed_tls).await?.is_none() {
                let host = hostname(&md);
                let (cert, key) = keys::self_signed(std::slice::from_ref(&host))
                    .map_err(|e| Error::Keys(e.into()))?;
                let secret = objects::pem_secret(
                    &md,
                    &names.self_signed_tls,
                    "kubernetes.io/tls",
                    &[("tls.crt", &cert), ("tls.key", &key)],
                );
                create_once(&secrets, secret).await?;
            }
            true
        }
    };
    if tls_ok {
        set(
            &mut status.conditions,
            "TLSReady",
            true,
            reason::READY,
            format!("certificate from Secret {}", names.tls),
        );
    } else {
        set(
            &mut status.conditions,
            "TLSReady",
            false,
            reason::SECRET_NOT_FOUND,
            format!(
                "Secret {} (type kubernetes.io/tls, keys tls.crt and tls.key) does not exist yet",
                names.tls
            ),
        );
    }
    let dkim_public = if md.spec.dkim.enabled {
        let existing = secrets.get_opt(&names.dkim).await?;
        let pem = match existing
            .as_ref()
            .and_then(|s| s.data.as_ref()?.get("private.pem").cloned())
        {
            Some(pem) => String::from_utf8_lossy(&pem.0).to_string(),
            None => {
                let algorithm = md.spec.dkim.algorithm;
                let key = tokio::task::spawn_blocking(move || keys::new_dkim_key(algorithm))
                    .await
                    .map_err(|e| Error::Keys(e.into()))?
                    .map_err(|e| Error::Keys(e.into()))?;
                let secret = objects::pem_secret(
                    &md,
                    &names.dkim,
                    "Opaque",
                    &[("private.pem", &key.private_pem)],
                );
                let stored = create_once(&secrets, secret).await?;
                stored
                    .data
                    .and_then(|d| {
                        d.get("private.pem")
                            .map(|p| String::from_utf8_lossy(&p.0).to_string())
                    })
                    .unwrap_or(key.private_pem)
            }
        };
        keys::dkim_dns_value(&pem)
    } else {
        None
    };

    // Mailboxes with their password hashes; each address and alias belongs to one Mailbox
    // (the oldest wins, see render::claims).
    let mailboxes = mailboxes_of(&ctx, &md);
    let refs: Vec<&Mailbox> = mailboxes.iter().map(AsRef::as_ref).collect();
    let claims = render::claims::claim(&md, &refs);
    let mut hashes = Vec::new();
    for (mailbox, claim) in mailboxes.iter().zip(claims) {
        if claim.duplicate_of.is_some() {
            continue;
        }
        if let Password::Hash(hash) = password_hash(&ctx, mailbox).await? {
            // An app password whose Secret is missing is left out (the Mailbox's status says
            // so); the others and the own password are served.
            let apps: Vec<(String, String)> = app_passwords(&ctx, mailbox, true)
                .await?
                .into_iter()
                .filter_map(|(app, found)| match found {
                    Password::Hash(hash) => Some((app.name.clone(), hash)),
                    _ => None,
                })
                .collect();
            hashes.push((mailbox.clone(), hash, claim.aliases, apps));
        }
    }
    let hashed: Vec<HashedMailbox<'_>> = hashes
        .iter()
        .map(|(mailbox, hash, aliases, apps)| HashedMailbox {
            mailbox,
            password_hash: hash.clone(),
            aliases: aliases.clone(),
            app_password_hashes: apps.clone(),
        })
        .collect();

    // Render and apply. Pods the RelayPolicy chooses by label relay by their addresses.
    let mut config = render::config::runtime_config(&md, &hashed, relay.as_ref());
    if let Some(selector) = relay
        .as_ref()
        .and_then(|rp| rp.spec.allow.pod_selector.clone())
    {
        config
            .relay
            .client_networks
            .extend(pod_networks(&client, &ns, selector).await?);
    }
    match &md.spec.catch_all {
        Some(target) if !render::config::serves(&config.mailboxes, target) => set(
            &mut status.conditions,
            "CatchAllFound",
            false,
            reason::CATCH_ALL_NOT_FOUND,
            format!(
                "no served Mailbox has the address {target}; mail to unknown addresses is refused until one does"
            ),
        ),
        Some(target) => set(
            &mut status.conditions,
            "CatchAllFound",
            true,
            reason::READY,
            format!("mail to unknown addresses goes to {target}"),
        ),
        None => status.conditions.retain(|c| c.type_ != "CatchAllFound"),
    }
    // The runtime's own check, before anything is written: a config it would refuse is never
    // handed to it (it would keep serving the last good one, and nobody would see why).
    let invalid = kubemail_config::Config::validate(config.clone()).err();
    let valid = invalid.is_none();
    let (revision, yaml) = render::config::with_revision(config);
    ctx.apply(
        &Api::<ServiceAccount>::namespaced(client.clone(), &ns),
        &objects::service_account(&md),
    )
    .await?;
    match invalid {
        None => {
            status.conditions.retain(|c| c.type_ != "ConfigValid");
            ctx.apply(&secrets, &objects::config_secret(&md, &revision, &yaml))
                .await?;
        }
        Some(invalid) => {
            tracing::warn!(domain = %md.spec.domain, %invalid, "rendered config refused; the last one stays");
            set(
                &mut status.conditions,
                "ConfigValid",
                false,
                reason::INVALID_CONFIG,
                invalid.to_string(),
            );
        }
    }
    ctx.apply(
        &Api::<PersistentVolumeClaim>::namespaced(client.clone(), &ns),
        &objects::data_claim(&md),
    )
    .await?;
    let services = Api::<Service>::namespaced(client.clone(), &ns);
    ctx.apply(&services, &objects::service(&md)).await?;
    ctx.apply(&services, &objects::metrics_service(&md)).await?;
    ctx.apply(
        &Api::<Deployment>::namespaced(client.clone(), &ns),
        &objects::deployment(&md, relay.as_ref(), &ctx.options.runtime),
    )
    .await?;
    // A revision that status does not show yet was (probably) just written: its pods are marked.
    let marked = valid
        && previous.config_revision.as_deref() != Some(revision.as_str())
        && refresh_pods(&ctx, &client, &ns, &md, &revision, false).await;
    status.config_revision = if valid {
        Some(revision.clone())
    } else {
        previous.config_revision.clone()
    };
    status.mailboxes = hashed.len() as i32;

    // Probe what runs, in each protocol.
    let host = ctx
        .options
        .probe_host_override
        .clone()
        .unwrap_or_else(|| format!("{}.{ns}.svc", names.runtime));
    let port = |protocol: Protocol, service_port: i32| {
        if ctx.options.probe_host_override.is_some() {
            container_port(protocol)
        } else {
            service_port
        }
    };
    // The revision is read from the metrics Service: the mail Service has no HTTP port.
    let http_host = ctx
        .options
        .probe_host_override
        .clone()
        .unwrap_or_else(|| format!("{}.{ns}.svc", names.metrics));
    let served = served_revision(&http_host, HTTP_PORT).await;
    // Each Mailbox's storage and the queue, from the runtime (rate-limited, see `usage`).
    let usage = match served {
        Some(_) => runtime_json::<super::usage::Report>(&http_host, HTTP_PORT, "/usage").await,
        None => None,
    };
    if let Some(report) = &usage {
        super::usage::write(&ctx, &ns, report).await;
    }
    status.queued =
        super::usage::queued(&ctx, &ns, &md.name_any(), previous.queued, usage.as_ref());
    let config_served = served.as_deref() == Some(revision.as_str());
    set(
        &mut status.conditions,
        "ConfigServed",
        config_served,
        if config_served {
            reason::SERVED
        } else {
            reason::PENDING
        },
        match &served {
            Some(r) if config_served => format!("the runtime serves revision {r}"),
            Some(r) => format!(
                "the runtime serves revision {r}; revision {revision} is written and will be picked up"
            ),
            None => format!("revision {revision} is written; the runtime has not answered yet"),
        },
    );
    if valid && !marked && served.is_some() && !config_served {
        // Marked earlier (or by an operator that stopped before writing status), yet still the
        // old revision: the kubelet may have synced the pod before its cache saw the new Secret.
        // Another change makes it sync again, at most every REFRESH_AGAIN per pod.
        refresh_pods(&ctx, &client, &ns, &md, &revision, true).await;
    }
    let mut all_ok = tls_ok && config_served && valid;
    let groups = [
        ("SMTPReady", probe::Kind::Smtp, vec![Protocol::Smtp]),
        (
            "SubmissionReady",
            probe::Kind::Smtp,
            vec![Protocol::Submission, Protocol::Submissions],
        ),
        (
            "IMAPReady",
            probe::Kind::Imap,
            vec![Protocol::Imap, Protocol::Imaps],
        ),
        (
            "POP3Ready",
            probe::Kind::Pop3,
            vec![Protocol::Pop3, Protocol::Pop3s],
        ),
    ];
    for (type_, kind, protocols) in groups {
        let enabled: Vec<(Protocol, i32)> = md
            .spec
            .protocols
            .iter()
            .filter(|(p, s)| s.enabled && protocols.contains(p))
            .map(|(p, s)| (p, s.port_or_default(p)))
            .collect();
        if enabled.is_empty() {
            status.conditions.retain(|c| c.type_ != type_);
            continue;
        }
        let mut failures = Vec::new();
        let mut passed = Vec::new();
        for (protocol, service_port) in &enabled {
            let options = probe::Options {
                implicit_tls: protocol.implicit_tls(),
                timeout: ctx.options.probe_timeout,
                ..probe::Options::default()
            };
            let address = format!("{host}:{}", port(*protocol, *service_port));
            let report = probe::probe(kind, &address, &options).await;
            if report.ok {
                // No latency here: a status that changes on every probe would be a write every
                // resync for nothing.
                passed.push(protocol.field().to_string());
            } else {
                failures.push(format!(
                    "{}: {}",
                    protocol.field(),
                    report.error.unwrap_or_default()
                ));
            }
        }
        let ok = failures.is_empty();
        all_ok &= ok;
        crate::health::probe_result(
            md.metadata.namespace.as_deref().unwrap_or_default(),
            md.metadata.name.as_deref().unwrap_or_default(),
            type_,
            ok,
        );
        let message = if ok {
            format!("probes passed: {}", passed.join(", "))
        } else {
            failures.join("; ")
        };
        set(
            &mut status.conditions,
            type_,
            ok,
            if ok {
                reason::PROBE_PASSED
            } else {
                reason::PROBE_FAILED
            },
            message,
        );
    }
    let failing: Vec<String> = status
        .conditions
        .iter()
        .filter(|c| c.type_ != "Ready" && c.status != "True")
        .map(|c| c.type_.clone())
        .collect();
    set(
        &mut status.conditions,
        "Ready",
        all_ok,
        if all_ok {
            reason::READY
        } else {
            reason::NOT_READY
        },
        if all_ok {
            "every enabled protocol answers its probe and the current config is served".into()
        } else {
            format!("not ready: {}", failing.join(", "))
        },
    );
    conditions::set_kstatus(&mut status.conditions, &previous.conditions, generation);
    status.conditions.sort_by(|a, b| a.type_.cmp(&b.type_));
    status.endpoints = md
        .spec
        .protocols
        .iter()
        .filter(|(_, s)| s.enabled)
        .map(|(p, s)| Endpoint {
            protocol: p.field().into(),
            host: format!("{}.{ns}.svc", names.runtime),
            port: s.port_or_default(p),
            tls: if p.implicit_tls() {
                "TLS".into()
            } else {
                "STARTTLS".into()
            },
        })
        .collect();
    status.dns_records = dns::records(&md, dkim_public.as_deref());

    // Write status only when it changed: an unchanged domain makes no writes.
    if stored.status.as_ref() != Some(&status) {
        super::publish_transitions(&ctx, md.as_ref(), &previous.conditions, &status.conditions)
            .await;
        let api: Api<MailDomain> = Api::namespaced(client, &ns);
        let patch = serde_json::json!({
            "apiVersion": "kubemail.io/v1alpha1",
            "kind": "MailDomain",
            "status": status,
        });
        match api
            .patch_status(
                &md.name_any(),
                &PatchParams::apply(FIELD_MANAGER).force(),
                &Patch::Apply(&patch),
            )
            .await
        {
            Ok(_) => {}
            // Deleted while this reconcile ran: nothing left to report on.
            Err(kube::Error::Api(e)) if e.code == 404 => return Ok(Action::await_change()),
            Err(e) => return Err(e.into()),
        }
    }
    // A new domain whose runtime is still starting is looked at again soon, so Ready follows
    // it closely; later a failing domain is probed every 15 s (each look reads every Mailbox's
    // Secret, which matters with thousands of them).
    let young = md.metadata.creation_timestamp.as_ref().is_some_and(|t| {
        t.0.duration_until(k8s_openapi::jiff::Timestamp::now())
            .as_secs()
            < 120
    });
    Ok(Action::requeue(if all_ok {
        RESYNC
    } else if young {
        Duration::from_secs(3)
    } else {
        Duration::from_secs(15)
    }))
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
    use kube::api::{ListParams, Patch, PatchParams};
    let pods = Api::<k8s_openapi::api::core::v1::Pod>::namespaced(client.clone(), ns);
    let selector = render::selector(md)
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(",");
    let list = match pods.list(&ListParams::default().labels(&selector)).await {
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
    annotations: &std::collections::BTreeMap<String, String>,
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

/// The config revision the runtime reports on `/readyz`, if it answers.
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

/// Retry policy on errors.
pub fn error_policy(_md: Arc<MailDomain>, error: &Error, _ctx: Arc<Context>) -> Action {
    tracing::warn!(error = %error, category = error.category(), "MailDomain reconcile failed");
    Action::requeue(error.retry_after())
}

#[cfg(test)]
mod tests {
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
