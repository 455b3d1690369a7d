//! Pure builders: kubemail objects in, Kubernetes objects and the runtime config out. No
//! client, no clock, no randomness (keys are made in `keys` and passed in), so every function
//! here is tested from small fixtures and its output snapshotted.
//!
//! ```text
//!   MailDomain + [Mailbox + password hash] + RelayPolicy?
//!        |-- config::runtime_config --> RuntimeConfig (YAML in Secret <name>-runtime-config)
//!        |-- objects::*             --> ServiceAccount, Service (mail ports), metrics Service
//!        |                              (HTTP, ClusterIP only), PVC, Deployment
//!        \-- dns::records           --> status.dnsRecords
//! ```
pub mod claims;
pub mod config;
pub mod dns;
pub mod objects;
pub mod quantity;
pub mod rspamd;
pub mod smarthost;

use kubemail_crds::{MailDomain, Protocol};

/// The container port of each protocol: unprivileged, since the runtime runs as non-root with
/// no capabilities; the Service maps the public ports onto them.
pub fn container_port(protocol: Protocol) -> i32 {
    match protocol {
        Protocol::Smtp => 2525,
        Protocol::Submission => 2587,
        Protocol::Submissions => 2465,
        Protocol::Imap => 2143,
        Protocol::Imaps => 2993,
        Protocol::Pop3 => 2110,
        Protocol::Pop3s => 2995,
        Protocol::Managesieve => 4190,
        Protocol::Https => 8443,
    }
}

/// The runtime's HTTP port (health, metrics, autoconfig). It is served only by the metrics
/// Service, which is ClusterIP: `/readyz` tells config errors and `/metrics` tells traffic, and
/// neither has authentication, so it never shares the mail Service (often a public
/// LoadBalancer).
pub const HTTP_PORT: i32 = 8080;

/// Where the pod mounts what.
pub mod paths {
    /// The rendered config Secret.
    pub const CONFIG_DIR: &str = "/etc/kubemail/config";
    /// The config file in it.
    pub const CONFIG_FILE: &str = "/etc/kubemail/config/runtime.yaml";
    /// The TLS Secret.
    pub const TLS_DIR: &str = "/etc/kubemail/tls";
    /// The DKIM key Secret.
    pub const DKIM_DIR: &str = "/etc/kubemail/dkim";
    /// The DKIM private key in it.
    pub const DKIM_KEY: &str = "/etc/kubemail/dkim/private.pem";
    /// The smarthost credentials Secret (the RelayPolicy's), as `username` and `password`.
    pub const SMARTHOST_DIR: &str = "/etc/kubemail/smarthost";
    /// The rspamd controller password Secret (the MailDomain's), as `password`.
    pub const RSPAMD_DIR: &str = "/etc/kubemail/rspamd";
    /// The PVC (an emptyDir with `storage.database`: the spool only).
    pub const DATA_DIR: &str = "/var/lib/kubemail";
    /// The database Secret's URI, as `uri`.
    pub const DATABASE_DIR: &str = "/etc/kubemail/database";
    /// The database server's CA, as `ca.crt`.
    pub const DATABASE_CA_DIR: &str = "/etc/kubemail/database-ca";
}

/// Names of the objects made for a MailDomain.
#[derive(Debug, Clone)]
pub struct Names {
    /// The Deployment and the mail Service.
    pub runtime: String,
    /// The ClusterIP Service of the runtime's HTTP port (`/metrics`, `/readyz`).
    pub metrics: String,
    /// The ServiceAccount.
    pub service_account: String,
    /// The rendered config Secret.
    pub config: String,
    /// The DKIM key Secret.
    pub dkim: String,
    /// The TLS Secret in use (the user's, or the self-signed one).
    pub tls: String,
    /// The self-signed TLS Secret the operator makes when the user names none.
    pub self_signed_tls: String,
    /// The PVC.
    pub data: String,
}

impl Names {
    /// The names for one MailDomain.
    pub fn of(md: &MailDomain) -> Names {
        let name = md.metadata.name.clone().unwrap_or_default();
        let self_signed_tls = format!("{name}-tls");
        Names {
            runtime: format!("{name}-mail"),
            metrics: format!("{name}-metrics"),
            service_account: format!("{name}-mail"),
            config: format!("{name}-runtime-config"),
            dkim: format!("{name}-dkim"),
            tls: md
                .spec
                .tls
                .secret_name
                .clone()
                .unwrap_or_else(|| self_signed_tls.clone()),
            self_signed_tls,
            data: format!("{name}-data"),
        }
    }
}

/// The host name in use: the spec's, or `mail.<domain>`.
pub fn hostname(md: &MailDomain) -> String {
    md.spec
        .hostname
        .clone()
        .unwrap_or_else(|| format!("mail.{}", md.spec.domain))
}

/// Labels on everything made for a MailDomain; the first two select the runtime's pods.
pub fn labels(md: &MailDomain) -> std::collections::BTreeMap<String, String> {
    [
        ("app.kubernetes.io/name", "kubemail-runtime"),
        (
            "app.kubernetes.io/instance",
            md.metadata.name.as_deref().unwrap_or_default(),
        ),
        ("app.kubernetes.io/component", "mail-runtime"),
        ("app.kubernetes.io/managed-by", "kubemail-operator"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect()
}

/// The labels that select the runtime's pods.
pub fn selector(md: &MailDomain) -> std::collections::BTreeMap<String, String> {
    labels(md)
        .into_iter()
        .filter(|(k, _)| k == "app.kubernetes.io/name" || k == "app.kubernetes.io/instance")
        .collect()
}

#[cfg(test)]
pub(crate) mod fixtures;
#[cfg(test)]
mod tests;
