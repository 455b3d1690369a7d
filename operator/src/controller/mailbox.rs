//! Mailbox: finds its domain and password, and is Ready once the runtime serves a config that
//! contains it.
use std::{sync::Arc, time::Duration};

use k8s_openapi::api::core::v1::Secret;
use kube::{Api, ResourceExt, runtime::controller::Action};
use kubemail_crds::{MailDomain, Mailbox, MailboxStatus};

use super::{
    Context, domain_of,
    mail_domain::{Password, Script, app_passwords, mailboxes_of, password_found, sieve_script},
};
use crate::{
    conditions::{self, reason, types},
    error::{Error, Result},
    render::{Names, claims},
};

/// The reconcile of one Mailbox; a success resets its retry backoff.
pub async fn reconcile(mailbox: Arc<Mailbox>, ctx: Arc<Context>) -> Result<Action> {
    let result = reconcile_once(mailbox.clone(), ctx.clone()).await;
    if result.is_ok() {
        ctx.backoff.succeeded(mailbox.as_ref());
    }
    result
}

async fn reconcile_once(mailbox: Arc<Mailbox>, ctx: Arc<Context>) -> Result<Action> {
    let ns = mailbox.namespace().ok_or(Error::Incomplete("namespace"))?;
    // First against the status in the watch cache: most reconciles (a domain's status moved, a
    // usage figure was written, the fallback requeue) change nothing and cost no request.
    let cached = mailbox.status.clone().unwrap_or_default();
    let (status, served) = desired_status(&mailbox, &ctx, &ns, &cached).await?;
    if mailbox.status.as_ref() == Some(&status) {
        return Ok(next_look(served));
    }
    // A change to write: against the status as stored now, not the cache's copy, which may not
    // have our own last write yet (that copy is not to be taken for a change).
    let stored = Api::<Mailbox>::namespaced(ctx.client.clone(), &ns)
        .get_opt(&mailbox.name_any())
        .await?;
    let Some(stored) = stored else {
        return Ok(Action::await_change());
    };
    let previous = stored.status.clone().unwrap_or_default();
    let (status, served) = if stored.status == mailbox.status {
        (status, served)
    } else {
        desired_status(&mailbox, &ctx, &ns, &previous).await?
    };
    super::write_status(
        &ctx,
        mailbox.as_ref(),
        stored.status.as_ref(),
        &previous.conditions,
        &status,
        &status.conditions,
    )
    .await?;
    Ok(next_look(served))
}

/// Served: nothing to look at until something changes. Not served yet: the MailDomain's status
/// (ConfigServed, configRevision) changing wakes the Mailbox through the watch; the requeue is
/// only a fallback (every 5 minutes, and without a request when nothing changed).
fn next_look(served: bool) -> Action {
    if served {
        Action::await_change()
    } else {
        Action::requeue(Duration::from_secs(300))
    }
}

/// The status `mailbox` should have, with `previous` the stored one (whose conditions keep their
/// transition times), and whether the runtime serves it.
async fn desired_status(
    mailbox: &Mailbox,
    ctx: &Context,
    ns: &str,
    previous: &MailboxStatus,
) -> Result<(MailboxStatus, bool)> {
    let generation = mailbox.metadata.generation;
    let mut status = MailboxStatus {
        observed_generation: generation,
        conditions: previous.conditions.clone(),
        usage: previous.usage.clone(),
        domain: None,
    };
    let set = |conditions: &mut Vec<_>, t: &str, ok: bool, r: &str, m: String| {
        conditions::set(conditions, &previous.conditions, t, ok, r, m, generation)
    };
    let domain_name = domain_of(&mailbox.spec.address).to_ascii_lowercase();
    let domain: Option<Arc<MailDomain>> = ctx
        .domains
        .state()
        .into_iter()
        .find(|d| d.namespace().as_deref() == Some(ns) && d.spec.domain == domain_name);
    match &domain {
        Some(d) => {
            status.domain = Some(d.name_any());
            set(
                &mut status.conditions,
                types::DOMAIN_FOUND,
                true,
                reason::READY,
                format!("served by MailDomain {}", d.name_any()),
            );
        }
        None => set(
            &mut status.conditions,
            types::DOMAIN_FOUND,
            false,
            reason::DOMAIN_NOT_FOUND,
            format!("no MailDomain in namespace {ns} serves {domain_name}"),
        ),
    }
    let own_password = password_found(ctx, mailbox).await?;
    let secret_ok = match &own_password {
        Password::Hash(_) | Password::Unhashed => {
            set(
                &mut status.conditions,
                types::SECRET_FOUND,
                true,
                reason::READY,
                format!(
                    "password from Secret {}",
                    mailbox.spec.password_secret_ref.name
                ),
            );
            true
        }
        Password::Missing(why, message) => {
            set(
                &mut status.conditions,
                types::SECRET_FOUND,
                false,
                why,
                message.clone(),
            );
            false
        }
    };
    // App passwords: each one's Secret, by name. One that is missing is left out of the config
    // and named here; the own password and the other app passwords serve meanwhile.
    let apps = app_passwords(ctx, mailbox, false).await?;
    let mut missing: Vec<(&str, String)> = apps
        .iter()
        .filter_map(|(app, found)| match found {
            Password::Missing(why, message) => Some((*why, format!("{}: {message}", app.name))),
            _ => None,
        })
        .collect();
    // The same hash twice (the own password's, or an earlier app password's): only the first
    // is served (a Secret holding a ready hash; plaintext passwords get hashes of their own).
    let mut hashes: Vec<&str> = match &own_password {
        Password::Hash(h) => vec![h.as_str()],
        _ => Vec::new(),
    };
    for (app, found) in &apps {
        if let Password::Hash(h) = found {
            if hashes.contains(&h.as_str()) {
                missing.push((
                    reason::DUPLICATE_PASSWORD,
                    format!(
                        "{}: the same hash as another password of this mailbox",
                        app.name
                    ),
                ));
            } else {
                hashes.push(h);
            }
        }
    }
    match missing.first() {
        _ if apps.is_empty() => status
            .conditions
            .retain(|c| c.type_ != types::APP_PASSWORDS_FOUND),
        None => set(
            &mut status.conditions,
            types::APP_PASSWORDS_FOUND,
            true,
            reason::READY,
            format!(
                "served: {}",
                apps.iter()
                    .map(|(a, _)| a.name.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        ),
        Some((why, _)) => set(
            &mut status.conditions,
            types::APP_PASSWORDS_FOUND,
            false,
            why,
            format!(
                "not served until their Secret is there: {}",
                missing
                    .iter()
                    .map(|(_, m)| m.as_str())
                    .collect::<Vec<_>>()
                    .join("; ")
            ),
        ),
    }
    // Its Sieve script: served only when it is there and compiles.
    match sieve_script(ctx, mailbox).await? {
        Script::None => status
            .conditions
            .retain(|c| c.type_ != types::SIEVE_SCRIPT_VALID),
        Script::Valid(_) => set(
            &mut status.conditions,
            types::SIEVE_SCRIPT_VALID,
            true,
            reason::READY,
            "the script compiles and runs at delivery".into(),
        ),
        Script::Refused(why, message) => set(
            &mut status.conditions,
            types::SIEVE_SCRIPT_VALID,
            false,
            why,
            format!("not run, mail goes to the user's script and INBOX: {message}"),
        ),
    }
    // What this Mailbox may have, decided as the domain's config is (render::claims).
    let claimed = domain.as_ref().and_then(|d| {
        let all = mailboxes_of(ctx, d);
        let refs: Vec<&Mailbox> = all.iter().map(AsRef::as_ref).collect();
        claims::claim(d, &refs)
            .into_iter()
            .zip(&all)
            .find(|(_, m)| m.name_any() == mailbox.name_any())
            .map(|(c, _)| c)
    });
    let duplicate_of = claimed.as_ref().and_then(|c| c.duplicate_of.clone());
    match claimed.as_ref().map(|c| c.refused.as_slice()) {
        Some(refused) if !refused.is_empty() => {
            let list: Vec<String> = refused
                .iter()
                .map(|(a, why)| format!("{a} ({why})"))
                .collect();
            set(
                &mut status.conditions,
                types::ALIASES_ACCEPTED,
                false,
                reason::ALIAS_REFUSED,
                format!("served without these aliases: {}", list.join(", ")),
            );
        }
        _ => status
            .conditions
            .retain(|c| c.type_ != types::ALIASES_ACCEPTED),
    }
    match &duplicate_of {
        Some(other) => set(
            &mut status.conditions,
            types::UNIQUE,
            false,
            reason::DUPLICATE,
            format!(
                "Mailbox {other} already has the address {}",
                mailbox.spec.address
            ),
        ),
        None => status.conditions.retain(|c| c.type_ != types::UNIQUE),
    }
    // Served: the domain's runtime serves the config revision, and that config has this address.
    let served = match &domain {
        Some(d) if secret_ok && duplicate_of.is_none() => {
            served_in(ctx, d, ns, &mailbox.spec.address).await?
        }
        _ => false,
    };
    set(
        &mut status.conditions,
        types::READY,
        served,
        if served {
            reason::SERVED
        } else {
            reason::NOT_READY
        },
        if served {
            "the runtime serves this mailbox".to_string()
        } else {
            "waiting for the domain, the password Secret or the runtime".to_string()
        },
    );
    conditions::set_kstatus(&mut status.conditions, &previous.conditions, generation);
    status.conditions.sort_by(|a, b| a.type_.cmp(&b.type_));
    Ok((status, served))
}

/// Whether the domain's runtime serves a config that contains `address`.
async fn served_in(ctx: &Context, domain: &MailDomain, ns: &str, address: &str) -> Result<bool> {
    let served = domain
        .status
        .as_ref()
        .is_some_and(|s| conditions::is_true(&s.conditions, types::CONFIG_SERVED));
    if !served {
        return Ok(false);
    }
    // A hosted domain's mailboxes are in its server's config.
    let name = match &domain.spec.hosted_by {
        Some(_) => match super::hosted::server_of(ctx, domain) {
            Some(server) => Names::of(&server).config,
            None => return Ok(false),
        },
        None => Names::of(domain).config,
    };
    let current = domain
        .status
        .as_ref()
        .and_then(|s| s.config_revision.clone())
        .unwrap_or_default();
    // The revision from the watch cache, then the addresses: read from the API server once per
    // version of the config Secret, not once per Mailbox.
    if ctx
        .secret_annotation(ns, &name, "kubemail.io/config-revision")
        .is_some_and(|r| r != current)
    {
        return Ok(false);
    }
    let key = (ns.to_string(), name.clone());
    let version = ctx.secret_version(ns, &name).map(|(_, v)| v);
    let cached = ctx
        .config_addresses
        .lock()
        .expect("config cache")
        .get(&key)
        .filter(|(v, _)| Some(v) == version.as_ref())
        .map(|(_, a)| a.clone());
    let addresses = match cached {
        Some(addresses) => addresses,
        None => {
            let secrets: Api<Secret> = Api::namespaced(ctx.client.clone(), ns);
            let Some(secret) = secrets.get_opt(&name).await? else {
                return Ok(false);
            };
            if secret.annotations().get("kubemail.io/config-revision") != Some(&current) {
                return Ok(false);
            }
            let yaml = secret
                .data
                .as_ref()
                .and_then(|d| d.get("runtime.yaml"))
                .map(|b| String::from_utf8_lossy(&b.0).to_string())
                .unwrap_or_default();
            let config: Option<kubemail_config::RawConfig> = serde_yaml_ng::from_str(&yaml).ok();
            let addresses: Arc<std::collections::BTreeSet<String>> = Arc::new(
                config
                    .map(|c| {
                        c.mailboxes
                            .into_iter()
                            .map(|m| m.address.to_ascii_lowercase())
                            .collect()
                    })
                    .unwrap_or_default(),
            );
            if let Some(v) = secret.resource_version() {
                ctx.config_addresses
                    .lock()
                    .expect("config cache")
                    .insert(key, (v, addresses.clone()));
            }
            addresses
        }
    };
    Ok(addresses.contains(&address.to_ascii_lowercase()))
}

/// Retry policy on errors: per-object backoff (see [`super::Backoff`]).
pub fn error_policy(m: Arc<Mailbox>, error: &Error, ctx: Arc<Context>) -> Action {
    tracing::warn!(error = %error, category = error.category(), "Mailbox reconcile failed");
    Action::requeue(ctx.backoff.after_failure(m.as_ref(), error))
}
