//! `RelayPolicy`: who may send mail to other domains, and how it leaves.
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::common::{Condition, domain_list_rule, domain_rule, duration_rule, object_name_rule};

/// A relay policy: which clients may send mail to other domains without being a local mailbox,
/// where that mail goes (direct MX delivery or a smarthost), and the limits on it. MailDomains use
/// it through `spec.relayPolicyRef`. The runtime is never an open relay: what this policy does
/// not allow is refused with `550 5.7.1`.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "kubemail.io",
    version = "v1alpha1",
    kind = "RelayPolicy",
    plural = "relaypolicies",
    singular = "relaypolicy",
    shortname = "rp",
    category = "mail",
    namespaced,
    status = "RelayPolicyStatus",
    doc = "Who may relay mail through kubemail, and how it is delivered.",
    printcolumn(
        name = "Route",
        type_ = "string",
        json_path = ".spec.route.mode",
        description = "Direct or Smarthost"
    ),
    printcolumn(
        name = "Smarthost",
        type_ = "string",
        json_path = ".spec.route.smarthost.host"
    ),
    printcolumn(
        name = "Ready",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Ready\")].status"
    ),
    printcolumn(
        name = "Reason",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Ready\")].reason",
        priority = 1
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase")]
pub struct RelayPolicySpec {
    /// Who may relay.
    #[serde(default)]
    pub allow: RelayAllow,

    /// Where relayed mail goes.
    #[serde(default)]
    pub route: RelayRoute,

    /// Sender domains that relayed mail may use in `MAIL FROM`. Empty: the domains of the
    /// MailDomains that use this policy.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 64), inner(length(min = 3, max = 253)))]
    #[x_kube(validation = domain_list_rule("senderDomains"), merge_strategy = kube::core::ListMerge::Set)]
    pub sender_domains: Vec<String>,

    /// Recipient domains that relayed mail may go to. Empty: any domain.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 256), inner(length(min = 3, max = 253)))]
    #[x_kube(validation = domain_list_rule("recipientDomains"), merge_strategy = kube::core::ListMerge::Set)]
    pub recipient_domains: Vec<String>,

    /// Rate limits on relayed mail; over them the runtime answers `450 4.7.x` and the client
    /// retries later.
    #[serde(default)]
    pub rate_limits: RateLimits,

    /// How long undeliverable mail is retried before the sender gets a delivery report.
    #[serde(default)]
    pub retry: RetrySpec,
}

/// Who may relay.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct RelayAllow {
    /// Mailboxes that logged in (SMTP AUTH over TLS) may relay. Defaults to true.
    #[serde(default = "crate::mail_domain::default_true")]
    pub authenticated_users: bool,
    /// Client networks that may relay without logging in, such as `192.0.2.0/28`: as narrow as
    /// the senders (a /16 or wider is flagged `WideClientNetworks`; pods are better chosen by
    /// `podSelector`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 64), inner(length(min = 3, max = 43)))]
    #[x_kube(validation = kube::core::Rule::new("self.all(c, isCIDR(c))").message("every entry of clientCIDRs must be a network in CIDR notation such as 10.0.0.0/8"), merge_strategy = kube::core::ListMerge::Set)]
    #[serde(rename = "clientCIDRs")]
    pub client_cidrs: Vec<String>,
    /// Pods that may relay without logging in, chosen by label in this namespace. The operator
    /// keeps their addresses in the runtime's config.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod_selector: Option<LabelSelector>,
    /// Logged-in users may write any address in the From and Sender header fields (shared
    /// mailboxes, sending on behalf of someone). Defaults to false: a message whose From or
    /// Sender is not the user's own address or alias is refused with `550 5.7.1`, so no user
    /// can send mail signed with the domain's DKIM key in another person's name.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub any_header_from: bool,
}

impl Default for RelayAllow {
    fn default() -> Self {
        Self {
            authenticated_users: true,
            client_cidrs: Vec::new(),
            pod_selector: None,
            any_header_from: false,
        }
    }
}

/// Where relayed mail goes.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default)]
#[x_kube(validation = kube::core::Rule::new("self.mode != 'Smarthost' || has(self.smarthost)").message("route.smarthost (with its host) is required when route.mode is Smarthost").field_path(".smarthost"))]
#[x_kube(validation = kube::core::Rule::new("self.mode != 'Direct' || !has(self.smarthost)").message("route.smarthost is only used when route.mode is Smarthost").field_path(".smarthost"))]
#[serde(rename_all = "camelCase")]
pub struct RelayRoute {
    /// `Direct` (the default): deliver to each recipient domain's MX. `Smarthost`: hand every
    /// message to `smarthost`.
    #[serde(default)]
    pub mode: RouteMode,
    /// Refuse to deliver over a connection without TLS (direct delivery; a smarthost has its
    /// own `tls`). Defaults to false: TLS is used whenever the peer offers it.
    #[serde(default, rename = "requireTLS")]
    pub require_tls: bool,
    /// The smarthost, when `mode` is `Smarthost`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub smarthost: Option<Smarthost>,
}

/// How relayed mail leaves.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default, JsonSchema)]
pub enum RouteMode {
    /// Deliver to each recipient domain's MX hosts.
    #[default]
    Direct,
    /// Hand every message to one smarthost.
    Smarthost,
}

/// The label a Secret must carry (value `"true"`) before the operator mounts it as a
/// smarthost's credentials: a RelayPolicy could otherwise name any Secret of its namespace and
/// have it sent to a host of its choosing.
pub const SMARTHOST_CREDENTIALS_LABEL: &str = "kubemail.io/smarthost-credentials";

/// A smarthost: the server that takes all relayed mail.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[x_kube(validation = kube::core::Rule::new("!has(self.credentialsSecretRef) || !has(self.tls) || self.tls != 'None'").message("route.smarthost.credentialsSecretRef needs tls StartTLS or Implicit: credentials are never sent without TLS").field_path(".credentialsSecretRef"))]
#[serde(rename_all = "camelCase")]
pub struct Smarthost {
    /// Host name or IP address of the smarthost.
    #[schemars(length(min = 1, max = 253))]
    #[x_kube(validation = kube::core::Rule::new(format!("self.matches(\"{}\") || isIP(self)", crate::common::DOMAIN_PATTERN)).message("route.smarthost.host must be a DNS name or an IP address"))]
    pub host: String,
    /// Port of the smarthost. Defaults to 587.
    #[serde(default = "default_smarthost_port")]
    #[schemars(range(min = 1, max = 65535))]
    pub port: i32,
    /// `StartTLS` (the default, required), `Implicit` (TLS from the first byte, usually port
    /// 465) or `None` (plaintext, so no `credentialsSecretRef`; only for a smarthost on a
    /// trusted network).
    #[serde(default)]
    pub tls: SmarthostTls,
    /// The Secret with the username and password for SMTP AUTH at the smarthost. The Secret
    /// must carry the label `kubemail.io/smarthost-credentials: "true"` (otherwise it is not
    /// used, and the policy reports `CredentialsFound=False`), and `tls` must not be `None`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credentials_secret_ref: Option<CredentialsSecretRef>,
}

fn default_smarthost_port() -> i32 {
    587
}

/// TLS towards a smarthost.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default, JsonSchema)]
pub enum SmarthostTls {
    /// STARTTLS after connecting; delivery fails if the smarthost does not offer it.
    #[default]
    StartTLS,
    /// TLS from the first byte.
    Implicit,
    /// No TLS.
    None,
}

/// A Secret holding a username and a password.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct CredentialsSecretRef {
    /// Name of the Secret, in this namespace.
    #[schemars(length(min = 1, max = 253))]
    #[x_kube(validation = object_name_rule("credentialsSecretRef.name"))]
    pub name: String,
    /// Key of the username. Defaults to `username`.
    #[serde(default = "default_username_key")]
    #[schemars(length(min = 1, max = 253))]
    pub username_key: String,
    /// Key of the password. Defaults to `password`.
    #[serde(default = "default_password_key")]
    #[schemars(length(min = 1, max = 253))]
    pub password_key: String,
}

fn default_username_key() -> String {
    "username".into()
}
fn default_password_key() -> String {
    "password".into()
}

/// Rate limits on relayed mail. Each relayed recipient counts as one message: a message to 50
/// outside addresses spends 50, as Postfix's recipient rate limits count.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RateLimits {
    /// Most messages one sender (authenticated user, or client address) may relay per period.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub per_sender: Option<Rate>,
    /// Most messages relayed per period, all senders together.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub total: Option<Rate>,
}

/// A number of messages per period.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct Rate {
    /// Messages allowed per period.
    #[schemars(range(min = 1, max = 100000000))]
    pub messages: i64,
    /// The period, such as `1m` or `1h`.
    #[schemars(length(min = 2, max = 8))]
    #[x_kube(validation = duration_rule("period"))]
    pub period: String,
}

/// Retries of mail the next hop did not take.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct RetrySpec {
    /// Wait before the first retry; each next wait doubles, with jitter. Defaults to `5m`.
    #[serde(default = "default_initial_interval")]
    #[schemars(length(min = 2, max = 8))]
    #[x_kube(validation = duration_rule("retry.initialInterval"))]
    pub initial_interval: String,
    /// The longest wait between two tries. Defaults to `4h`.
    #[serde(default = "default_max_interval")]
    #[schemars(length(min = 2, max = 8))]
    #[x_kube(validation = duration_rule("retry.maxInterval"))]
    pub max_interval: String,
    /// How long a message may wait in the queue before it is returned to its sender with a
    /// delivery status notification. Defaults to `5d`.
    #[serde(default = "default_max_age")]
    #[schemars(length(min = 2, max = 8))]
    #[x_kube(validation = duration_rule("retry.maxAge"))]
    pub max_age: String,
}

impl Default for RetrySpec {
    fn default() -> Self {
        Self {
            initial_interval: default_initial_interval(),
            max_interval: default_max_interval(),
            max_age: default_max_age(),
        }
    }
}

fn default_initial_interval() -> String {
    "5m".into()
}
fn default_max_interval() -> String {
    "4h".into()
}
fn default_max_age() -> String {
    "5d".into()
}

/// What the operator observed of a RelayPolicy.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct RelayPolicyStatus {
    /// The generation of the spec this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// `Ready`, `SmarthostReachable` from a probe of the smarthost when one is set, and
    /// `WideClientNetworks` (True, with a Warning event, when a `clientCIDRs` entry is an IPv4 /16
    /// or an IPv6 /48 or wider: a whole pod network, or everyone). While not Ready, kstatus's `Reconciling`
    /// (waiting: for a Secret, a domain, the runtime) or `Stalled` (a change by the user is
    /// needed: an invalid config, a duplicate address, a Secret without its key, ...) says which,
    /// present only while True, as Flux and Argo CD read them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[x_kube(merge_strategy = kube::core::ListMerge::Map(vec!["type".into()]))]
    pub conditions: Vec<Condition>,
    /// The MailDomains that use this policy.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub used_by: Vec<String>,
}

#[allow(unused_imports)]
use domain_rule as _;
