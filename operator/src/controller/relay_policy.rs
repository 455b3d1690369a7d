//! RelayPolicy: which domains use it, whether its smarthost answers, and whether its
//! credentials Secret may be used (see `render::smarthost`).
use std::{sync::Arc, time::Duration};

use k8s_openapi::api::core::v1::Secret;
use kube::{Api, ResourceExt, runtime::controller::Action};
use kubemail_crds::{
    RelayPolicy, RelayPolicyStatus,
    relay_policy::{RouteMode, SmarthostTls},
};
use kubemail_probe as probe;

use super::Context;
use crate::{
    conditions::{self, reason, types},
    error::{Error, Result},
    render::smarthost,
};

/// The reconcile of one RelayPolicy; a success resets its retry backoff.
pub async fn reconcile(rp: Arc<RelayPolicy>, ctx: Arc<Context>) -> Result<Action> {
    let result = reconcile_once(rp.clone(), ctx.clone()).await;
    if result.is_ok() {
        ctx.backoff.succeeded(rp.as_ref());
    }
    result
}

async fn reconcile_once(rp: Arc<RelayPolicy>, ctx: Arc<Context>) -> Result<Action> {
    let ns = rp.namespace().ok_or(Error::Incomplete("namespace"))?;
    let generation = rp.metadata.generation;
    // The status as stored now, not as the watch cache last saw it: a reconcile that follows
    // our own status write closely must not take its stale copy for a change.
    let stored = Api::<RelayPolicy>::namespaced(ctx.client.clone(), &ns)
        .get_opt(&rp.name_any())
        .await?;
    let Some(stored) = stored else {
        return Ok(Action::await_change());
    };
    let previous = stored.status.clone().unwrap_or_default();
    let mut status = RelayPolicyStatus {
        observed_generation: generation,
        conditions: previous.conditions.clone(),
        used_by: Vec::new(),
    };
    let set = |conditions: &mut Vec<_>, t: &str, ok: bool, r: &str, m: String| {
        conditions::set(conditions, &previous.conditions, t, ok, r, m, generation)
    };
    status.used_by = ctx
        .domains
        .state()
        .into_iter()
        .filter(|d| d.namespace().as_deref() == Some(ns.as_str()))
        .filter(|d| {
            d.spec
                .relay_policy_ref
                .as_ref()
                .is_some_and(|r| r.name == rp.name_any())
        })
        .map(|d| d.name_any())
        .collect();
    status.used_by.sort();
    let mut ready = true;
    match (&rp.spec.route.mode, &rp.spec.route.smarthost) {
        (RouteMode::Smarthost, Some(host)) => {
            if let Some(creds) = &host.credentials_secret_ref {
                let found = Api::<Secret>::namespaced(ctx.client.clone(), &ns)
                    .get_opt(&creds.name)
                    .await?;
                let labels = found
                    .as_ref()
                    .map(|s| s.metadata.labels.clone().unwrap_or_default());
                let keys = found
                    .as_ref()
                    .and_then(|s| s.data.as_ref())
                    .is_some_and(|d| {
                        d.contains_key(&creds.username_key) && d.contains_key(&creds.password_key)
                    });
                let (ok, why, message) = match smarthost::refusal(host, labels.as_ref()) {
                    Some((why, message)) => (false, why, message),
                    None if !keys => (
                        false,
                        reason::KEY_NOT_FOUND,
                        format!(
                            "Secret {} lacks the key {} or {}",
                            creds.name, creds.username_key, creds.password_key
                        ),
                    ),
                    None => (
                        true,
                        reason::READY,
                        format!("credentials from Secret {}", creds.name),
                    ),
                };
                ready &= ok;
                set(
                    &mut status.conditions,
                    types::CREDENTIALS_FOUND,
                    ok,
                    why,
                    message,
                );
            } else {
                status
                    .conditions
                    .retain(|c| c.type_ != types::CREDENTIALS_FOUND);
            }
            if host.tls == SmarthostTls::None {
                status
                    .conditions
                    .retain(|c| c.type_ != types::SMARTHOST_REACHABLE);
            } else {
                let options = probe::Options {
                    implicit_tls: host.tls == SmarthostTls::Implicit,
                    timeout: ctx.options.probe_timeout,
                    ..probe::Options::default()
                };
                let report = probe::probe(
                    probe::Kind::Smtp,
                    &format!("{}:{}", host.host, host.port),
                    &options,
                )
                .await;
                ready &= report.ok;
                set(
                    &mut status.conditions,
                    types::SMARTHOST_REACHABLE,
                    report.ok,
                    if report.ok {
                        reason::PROBE_PASSED
                    } else {
                        reason::PROBE_FAILED
                    },
                    if report.ok {
                        format!(
                            "{}:{} answered in {} ms",
                            host.host, host.port, report.latency_ms
                        )
                    } else {
                        report.error.unwrap_or_default()
                    },
                );
            }
        }
        _ => {
            status.conditions.retain(|c| {
                c.type_ != types::SMARTHOST_REACHABLE && c.type_ != types::CREDENTIALS_FOUND
            });
        }
    }
    let wide = wide_networks(&rp.spec.allow.client_cidrs);
    set(
        &mut status.conditions,
        types::WIDE_CLIENT_NETWORKS,
        !wide.is_empty(),
        if wide.is_empty() {
            reason::NARROW_NETWORKS
        } else {
            reason::WIDE_NETWORKS
        },
        if wide.is_empty() {
            format!("no client network is an IPv4 /{WIDE_V4} or IPv6 /{WIDE_V6} or wider")
        } else {
            format!(
                "every address in {} may relay without logging in; narrow clientCIDRs to the \
                 senders' own networks (or use podSelector, or logins)",
                wide.join(", ")
            )
        },
    );
    set(
        &mut status.conditions,
        types::READY,
        ready,
        if ready {
            reason::READY
        } else {
            reason::NOT_READY
        },
        if ready {
            "the policy is in force".to_string()
        } else {
            "the smarthost or its credentials are not ready".to_string()
        },
    );
    conditions::set_kstatus(&mut status.conditions, &previous.conditions, generation);
    status.conditions.sort_by(|a, b| a.type_.cmp(&b.type_));
    super::write_status(
        &ctx,
        rp.as_ref(),
        stored.status.as_ref(),
        &previous.conditions,
        &status,
        &status.conditions,
    )
    .await?;
    Ok(Action::requeue(Duration::from_secs(if ready {
        120
    } else {
        20
    })))
}

/// The widest client networks not flagged: an IPv4 /17, an IPv6 /49. A /16 is a whole
/// Kubernetes pod network in most clusters' defaults (and 0.0.0.0/0 is everyone).
const WIDE_V4: u8 = 16;
const WIDE_V6: u8 = 48;

/// The `clientCIDRs` entries at least as wide as [`WIDE_V4`] / [`WIDE_V6`]. A bare address is a
/// single host; an entry that does not parse is not flagged here (the runtime's config check
/// reports it).
fn wide_networks(cidrs: &[String]) -> Vec<String> {
    cidrs
        .iter()
        .filter(|c| match c.parse::<ipnet::IpNet>() {
            Ok(ipnet::IpNet::V4(n)) => n.prefix_len() <= WIDE_V4,
            Ok(ipnet::IpNet::V6(n)) => n.prefix_len() <= WIDE_V6,
            Err(_) => false,
        })
        .cloned()
        .collect()
}

/// Retry policy on errors: per-object backoff (see [`super::Backoff`]).
pub fn error_policy(rp: Arc<RelayPolicy>, error: &Error, ctx: Arc<Context>) -> Action {
    tracing::warn!(error = %error, category = error.category(), "RelayPolicy reconcile failed");
    Action::requeue(ctx.backoff.after_failure(rp.as_ref(), error))
}

#[cfg(test)]
mod tests {
    use super::wide_networks;

    #[test]
    fn networks_of_a_pod_network_and_wider_are_flagged() {
        let cidrs: Vec<String> = [
            "0.0.0.0/0",
            "10.244.0.0/16",
            "10.0.0.0/8",
            "10.244.1.0/24",
            "192.0.2.7",
            "192.0.2.0/17",
            "::/0",
            "2001:db8::/48",
            "2001:db8:1::/64",
            "not a network",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        assert_eq!(
            wide_networks(&cidrs),
            [
                "0.0.0.0/0",
                "10.244.0.0/16",
                "10.0.0.0/8",
                "::/0",
                "2001:db8::/48"
            ]
        );
    }
}
