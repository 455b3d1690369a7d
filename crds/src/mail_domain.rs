//! `MailDomain`: one mail domain and the runtime that serves it.
use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::ResourceRequirements;
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::common::{
    Condition, LocalObjectRef, address_rule, domain_list_rule, domain_rule, immutable_rule,
    object_name_rule, quantity_rule,
};

/// One mail domain (for example `example.com`) and the kubemail runtime that serves it: SMTP,
/// submission, IMAP and POP3 listeners, TLS, storage, DKIM and limits. Mailboxes join the domain
/// whose `domain` matches their address, in the same namespace.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "kubemail.io",
    version = "v1alpha1",
    kind = "MailDomain",
    plural = "maildomains",
    singular = "maildomain",
    shortname = "md",
    category = "mail",
    namespaced,
    status = "MailDomainStatus",
    doc = "A mail domain and the kubemail runtime that serves it.",
    printcolumn(
        name = "Domain",
        type_ = "string",
        json_path = ".spec.domain",
        description = "The mail domain"
    ),
    printcolumn(
        name = "Hostname",
        type_ = "string",
        json_path = ".status.hostname",
        description = "The name the runtime announces and presents in TLS"
    ),
    printcolumn(
        name = "Hosted-By",
        type_ = "string",
        json_path = ".spec.hostedBy.name",
        description = "The MailDomain whose runtime serves this domain",
        priority = 1
    ),
    printcolumn(
        name = "Mailboxes",
        type_ = "integer",
        json_path = ".status.mailboxes",
        description = "Mailboxes served"
    ),
    printcolumn(
        name = "Ready",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Ready\")].status",
        description = "Whether every enabled protocol answers its probe"
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
#[x_kube(validation = kube::core::Rule::new(
    "!has(self.catchAll) || self.catchAll.endsWith('@' + self.domain) || (has(self.aliasDomains) && self.aliasDomains.exists(d, self.catchAll.endsWith('@' + d)))"
).message("catchAll must be an address in this domain or one of its aliasDomains").field_path(".catchAll"))]
#[x_kube(validation = kube::core::Rule::new(
    "!has(self.aliasDomains) || !self.aliasDomains.exists(d, d == self.domain)"
).message("aliasDomains must not repeat domain").field_path(".aliasDomains"))]
#[x_kube(validation = kube::core::Rule::new(
    "!has(self.hostedBy) || !has(self.relayPolicyRef)"
).message("a hosted domain sends under its server's RelayPolicy: set relayPolicyRef on the MailDomain named in hostedBy").field_path(".relayPolicyRef"))]
#[x_kube(validation = kube::core::Rule::new(
    "!has(self.hostedBy) || (self.runtime.replicas == 1 && !has(self.runtime.resources) && self.runtime.service.type == 'ClusterIP' && !has(self.runtime.service.annotations) && !self.runtime.service.proxyProtocol)"
).message("a hosted domain runs on its server's runtime: set runtime on the MailDomain named in hostedBy").field_path(".runtime"))]
#[x_kube(validation = kube::core::Rule::new(
    "!has(self.hostedBy) || (self.storage.size == '10Gi' && !has(self.storage.storageClassName) && !has(self.storage.database))"
).message("a hosted domain's mail is stored by its server: set storage on the MailDomain named in hostedBy").field_path(".storage"))]
#[x_kube(validation = kube::core::Rule::new(hosted_protocols_rule()).message("a hosted domain is served on its server's protocols and ports: set protocols on the MailDomain named in hostedBy").field_path(".protocols"))]
#[x_kube(validation = kube::core::Rule::new(
    "!has(self.hostedBy) || (!has(self.inbound.rspamd) && !has(self.inbound.clamav) && !has(self.inbound.greylisting) && !has(self.inbound.dnsLists) && !has(self.inbound.greetPause))"
).message("a hosted domain's incoming mail is checked as its server says: set inbound on the MailDomain named in hostedBy").field_path(".inbound"))]
#[x_kube(validation = kube::core::Rule::new(
    "self.runtime.replicas <= 1 || has(self.storage.database)"
).message("runtime.replicas above 1 needs storage.database (PostgreSQL): the embedded Maildir store is served by one pod at a time").field_path(".runtime.replicas"))]
#[serde(rename_all = "camelCase")]
pub struct MailDomainSpec {
    /// The mail domain served, such as `example.com`: the part after `@` in every address.
    /// Immutable.
    #[schemars(length(min = 3, max = 253))]
    #[x_kube(validation = domain_rule("domain"), validation = immutable_rule("domain"))]
    pub domain: String,

    /// Further domains whose mail is delivered to the same mailboxes, such as `example.org`
    /// (`jane@example.org` reaches the mailbox `jane@example.com`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 32), inner(length(min = 3, max = 253)))]
    #[x_kube(validation = domain_list_rule("aliasDomains"), merge_strategy = kube::core::ListMerge::Set)]
    pub alias_domains: Vec<String>,

    /// The host name of the mail server: the SMTP banner and EHLO name, the TLS certificate's
    /// name and the target of the MX record. Defaults to `mail.<domain>`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 3, max = 253))]
    #[x_kube(validation = domain_rule("hostname"))]
    pub hostname: Option<String>,

    /// Serve this domain from the runtime of another MailDomain in this namespace (its
    /// "server": one Deployment, Service, IP address and volume for several companies' or
    /// brands' domains). A hosted domain keeps its own host name, certificate (served by SNI),
    /// DKIM key, MTA-STS mode, Mailboxes and DNS records; the server's protocols, ports,
    /// RelayPolicy, inbound checks, limits, storage and runtime apply to it. The server must
    /// not itself be hosted. Changing it moves where new mail is stored, not the mail already
    /// stored (see examples/hosting).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hosted_by: Option<LocalObjectRef>,

    /// Which protocols the runtime serves, and on which ports of its Service.
    #[serde(default)]
    pub protocols: Protocols,

    /// TLS for every listener. Without `secretName` the operator issues a self-signed
    /// certificate, so STARTTLS always works; clients will not trust it.
    #[serde(default)]
    pub tls: TlsSpec,

    /// Where mail is stored.
    #[serde(default)]
    pub storage: StorageSpec,

    /// The RelayPolicy in this namespace that says who may send mail to other domains through
    /// this runtime and how it leaves. Without it only authenticated mailboxes of this domain may
    /// send out, delivered directly to the recipients' MX.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub relay_policy_ref: Option<LocalObjectRef>,

    /// DKIM signing of outgoing mail. The operator creates the key once, keeps it in a Secret
    /// named `<name>-dkim` and publishes the DNS record to add in `status.dnsRecords`.
    #[serde(default)]
    pub dkim: DkimSpec,

    /// Publishing the DNS records of `status.dnsRecords` through external-dns.
    #[serde(default)]
    pub dns: DnsSpec,

    /// The MTA-STS policy (RFC 8461) this domain asks other servers to follow when they send
    /// to it, served over HTTPS at `mta-sts.<domain>` with `protocols.https`.
    #[serde(default)]
    pub mta_sts: MtaStsSpec,

    /// The address that receives mail for unknown local parts of this domain. Without it, mail
    /// for an unknown address is refused with `550 5.1.1`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 3, max = 254))]
    #[x_kube(validation = address_rule("catchAll"))]
    pub catch_all: Option<String>,

    /// Checks on mail arriving from outside on port 25 (never on logged-in users or relay
    /// networks): sender authentication, DNS lists, greylisting, HELO checks and the pause
    /// before the banner.
    #[serde(default)]
    pub inbound: InboundSpec,

    /// Limits that protect the runtime and its users.
    #[serde(default)]
    pub limits: LimitsSpec,

    /// How the runtime is deployed: replicas, resources, its Service.
    #[serde(default)]
    pub runtime: RuntimeSpec,
}

/// The protocols the runtime serves. Each has a conventional port, which the Service uses
/// unless `port` says otherwise.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[x_kube(validation = kube::core::Rule::new(distinct_ports_rule()).message("two enabled protocols cannot share a port"))]
#[serde(rename_all = "camelCase")]
pub struct Protocols {
    /// SMTP for mail from other servers (MX) and relaying: port 25, STARTTLS offered.
    #[serde(default = "ProtocolSpec::smtp")]
    pub smtp: ProtocolSpec,
    /// Message submission for mail clients: port 587, STARTTLS required before AUTH.
    #[serde(default = "ProtocolSpec::submission")]
    pub submission: ProtocolSpec,
    /// Message submission over implicit TLS: port 465 (RFC 8314).
    #[serde(default = "ProtocolSpec::submissions")]
    pub submissions: ProtocolSpec,
    /// IMAP for synchronising mail across devices: port 143, STARTTLS required before LOGIN.
    #[serde(default = "ProtocolSpec::imap")]
    pub imap: ProtocolSpec,
    /// IMAP over implicit TLS: port 993.
    #[serde(default = "ProtocolSpec::imaps")]
    pub imaps: ProtocolSpec,
    /// POP3 for downloading mail to one device: port 110, STLS required before login.
    #[serde(default = "ProtocolSpec::pop3")]
    pub pop3: ProtocolSpec,
    /// POP3 over implicit TLS: port 995.
    #[serde(default = "ProtocolSpec::pop3s")]
    pub pop3s: ProtocolSpec,
    /// ManageSieve, for mail clients to upload their Sieve filters: port 4190, STARTTLS
    /// required before AUTHENTICATE.
    #[serde(default = "ProtocolSpec::managesieve")]
    pub managesieve: ProtocolSpec,
    /// HTTPS for the web side mail clients and other servers read: the MTA-STS policy at
    /// `mta-sts.<domain>`, Thunderbird autoconfig at `autoconfig.<domain>` and Outlook
    /// autodiscover at `autodiscover.<domain>`, served by the runtime with the domain's
    /// certificate (which must name those hosts) on port 443. Nothing else of the runtime's
    /// HTTP side is on it. Off by default; with it `status.dnsRecords` lists the names and
    /// the `_mta-sts` and `_smtp._tls` records.
    #[serde(default = "ProtocolSpec::https")]
    pub https: ProtocolSpec,
}

impl Default for Protocols {
    fn default() -> Self {
        Self {
            smtp: ProtocolSpec::smtp(),
            submission: ProtocolSpec::submission(),
            submissions: ProtocolSpec::submissions(),
            imap: ProtocolSpec::imap(),
            imaps: ProtocolSpec::imaps(),
            pop3: ProtocolSpec::pop3(),
            pop3s: ProtocolSpec::pop3s(),
            managesieve: ProtocolSpec::managesieve(),
            https: ProtocolSpec::https(),
        }
    }
}

impl Protocols {
    /// Every protocol with its settings, in a fixed order.
    pub fn iter(&self) -> impl Iterator<Item = (Protocol, &ProtocolSpec)> {
        [
            (Protocol::Smtp, &self.smtp),
            (Protocol::Submission, &self.submission),
            (Protocol::Submissions, &self.submissions),
            (Protocol::Imap, &self.imap),
            (Protocol::Imaps, &self.imaps),
            (Protocol::Pop3, &self.pop3),
            (Protocol::Pop3s, &self.pop3s),
            (Protocol::Managesieve, &self.managesieve),
            (Protocol::Https, &self.https),
        ]
        .into_iter()
    }
}

/// The CEL rule that a hosted domain leaves `protocols` as they come (its server's apply).
fn hosted_protocols_rule() -> String {
    let defaults: Vec<String> = Protocols::default()
        .iter()
        .map(|(p, s)| {
            let f = p.field();
            format!(
                "self.protocols.{f}.enabled == {} && (!has(self.protocols.{f}.port) || self.protocols.{f}.port == {})",
                s.enabled,
                p.default_port()
            )
        })
        .collect();
    format!("!has(self.hostedBy) || ({})", defaults.join(" && "))
}

/// The CEL rule that no two enabled protocols share a port. CEL lists hold one type, so each
/// protocol contributes its port (or its registered port) when enabled and a distinct negative
/// number when not.
fn distinct_ports_rule() -> String {
    let ports: Vec<String> = Protocol::ALL
        .iter()
        .enumerate()
        .map(|(i, p)| {
            let f = p.field();
            format!(
                "self.{f}.enabled ? (has(self.{f}.port) ? self.{f}.port : {}) : -{}",
                p.default_port(),
                i + 1
            )
        })
        .collect();
    let list = format!("[{}]", ports.join(", "));
    format!("{list}.all(p, {list}.filter(q, q == p).size() == 1)")
}

/// A protocol the runtime can serve.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Protocol {
    /// SMTP, port 25.
    Smtp,
    /// Submission with STARTTLS, port 587.
    Submission,
    /// Submission over implicit TLS, port 465.
    Submissions,
    /// IMAP with STARTTLS, port 143.
    Imap,
    /// IMAP over implicit TLS, port 993.
    Imaps,
    /// POP3 with STLS, port 110.
    Pop3,
    /// POP3 over implicit TLS, port 995.
    Pop3s,
    /// ManageSieve, port 4190.
    Managesieve,
    /// HTTPS (MTA-STS, autoconfig, autodiscover), port 443.
    Https,
}

impl Protocol {
    /// Every protocol, in a fixed order.
    pub const ALL: [Protocol; 9] = [
        Protocol::Smtp,
        Protocol::Submission,
        Protocol::Submissions,
        Protocol::Imap,
        Protocol::Imaps,
        Protocol::Pop3,
        Protocol::Pop3s,
        Protocol::Managesieve,
        Protocol::Https,
    ];

    /// The protocol's field name under `spec.protocols`, also its name in configs and ports.
    pub fn field(self) -> &'static str {
        match self {
            Protocol::Smtp => "smtp",
            Protocol::Submission => "submission",
            Protocol::Submissions => "submissions",
            Protocol::Imap => "imap",
            Protocol::Imaps => "imaps",
            Protocol::Pop3 => "pop3",
            Protocol::Pop3s => "pop3s",
            Protocol::Managesieve => "managesieve",
            Protocol::Https => "https",
        }
    }

    /// The registered port.
    pub fn default_port(self) -> i32 {
        match self {
            Protocol::Smtp => 25,
            Protocol::Submission => 587,
            Protocol::Submissions => 465,
            Protocol::Imap => 143,
            Protocol::Imaps => 993,
            Protocol::Pop3 => 110,
            Protocol::Pop3s => 995,
            Protocol::Managesieve => 4190,
            Protocol::Https => 443,
        }
    }

    /// Whether TLS starts with the connection (otherwise it is negotiated with STARTTLS/STLS).
    pub fn implicit_tls(self) -> bool {
        matches!(
            self,
            Protocol::Submissions | Protocol::Imaps | Protocol::Pop3s | Protocol::Https
        )
    }
}

/// One protocol's switch and Service port.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ProtocolSpec {
    /// Whether the runtime serves this protocol. Defaults to true.
    #[serde(default = "default_true")]
    pub enabled: bool,
    /// The port of the Service (1-65535). Defaults to the protocol's registered port.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 65535))]
    pub port: Option<i32>,
}

impl ProtocolSpec {
    /// The port in use: the one set, or the protocol's registered port.
    pub fn port_or_default(&self, protocol: Protocol) -> i32 {
        self.port.unwrap_or_else(|| protocol.default_port())
    }

    fn on(port: i32) -> Self {
        Self {
            enabled: true,
            port: Some(port),
        }
    }
    fn smtp() -> Self {
        Self::on(25)
    }
    fn submission() -> Self {
        Self::on(587)
    }
    fn submissions() -> Self {
        Self::on(465)
    }
    fn imap() -> Self {
        Self::on(143)
    }
    fn imaps() -> Self {
        Self::on(993)
    }
    fn pop3() -> Self {
        Self::on(110)
    }
    fn pop3s() -> Self {
        Self::on(995)
    }
    fn managesieve() -> Self {
        Self::on(4190)
    }
    fn https() -> Self {
        Self {
            enabled: false,
            port: Some(443),
        }
    }
}

pub(crate) fn default_true() -> bool {
    true
}

/// TLS settings shared by every listener.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default)]
#[serde(rename_all = "camelCase")]
pub struct TlsSpec {
    /// A Secret of type `kubernetes.io/tls` in this namespace (for example one that cert-manager
    /// keeps renewed). The runtime picks up a renewed certificate without a restart. Without it
    /// the operator issues a self-signed certificate for the hostname.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253))]
    #[x_kube(validation = object_name_rule("tls.secretName"))]
    pub secret_name: Option<String>,
}

/// Storage of mail: a PersistentVolumeClaim holding Maildir folders.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct StorageSpec {
    /// Size of the volume, as a quantity such as `10Gi`. Defaults to `10Gi`.
    #[serde(default = "default_storage_size")]
    #[schemars(length(min = 1, max = 32))]
    #[x_kube(validation = quantity_rule("storage.size"))]
    pub size: String,
    /// StorageClass of the volume. Defaults to the cluster's default class.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253))]
    pub storage_class_name: Option<String>,
    /// What happens to the mail when this MailDomain is deleted. `Retain` (the default) keeps
    /// the volume and every message on it; `Delete` removes them with the domain.
    #[serde(default)]
    pub retention_policy: RetentionPolicy,
    /// Keep the mail (and the outbound queue) in PostgreSQL instead of on a volume: several
    /// runtime replicas then serve the domain together, and upgrades roll one pod at a time.
    /// Without it, mail is in Maildir on the volume, served by one pod.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub database: Option<DatabaseSpec>,
}

/// A PostgreSQL database for the mail.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct DatabaseSpec {
    /// The Secret in this namespace holding the connection URI
    /// (`postgresql://user:password@host:5432/db?sslmode=...`; several hosts with
    /// `target_session_attrs=read-write` follow a failover). CloudNativePG's application
    /// Secret (`<cluster>-app`) has it under `uri`, the default key.
    pub secret_ref: DatabaseSecretRef,
    /// The Secret in this namespace holding the CA that signed the database server's
    /// certificate (CloudNativePG's `<cluster>-ca` has it under `ca.crt`, the default key).
    /// With it the connection is TLS, and the server's certificate and name are verified;
    /// without it, the URI's `sslmode=require` verifies against the system's CAs and any other
    /// mode is in the clear.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_secret_ref: Option<CaSecretRef>,
}

/// The key of a Secret holding a CA certificate (PEM).
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct CaSecretRef {
    /// Name of the Secret, in the same namespace as the MailDomain.
    #[schemars(length(min = 1, max = 253))]
    #[x_kube(validation = object_name_rule("name"))]
    pub name: String,
    /// Key inside the Secret's data.
    #[serde(default = "default_ca_key")]
    #[schemars(length(min = 1, max = 253))]
    pub key: String,
}

fn default_ca_key() -> String {
    "ca.crt".into()
}

/// The key of a Secret holding a connection URI.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct DatabaseSecretRef {
    /// Name of the Secret, in the same namespace as the MailDomain.
    #[schemars(length(min = 1, max = 253))]
    #[x_kube(validation = object_name_rule("name"))]
    pub name: String,
    /// Key inside the Secret's data.
    #[serde(default = "default_uri_key")]
    #[schemars(length(min = 1, max = 253))]
    pub key: String,
}

fn default_uri_key() -> String {
    "uri".into()
}

impl Default for StorageSpec {
    fn default() -> Self {
        Self {
            size: default_storage_size(),
            storage_class_name: None,
            retention_policy: RetentionPolicy::Retain,
            database: None,
        }
    }
}

fn default_storage_size() -> String {
    "10Gi".into()
}

/// What happens to stored mail when its MailDomain is deleted.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default, JsonSchema)]
pub enum RetentionPolicy {
    /// Keep the volume and its mail.
    #[default]
    Retain,
    /// Delete the volume and its mail together with the MailDomain.
    Delete,
}

/// The domain's MTA-STS policy.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default)]
#[serde(rename_all = "camelCase")]
pub struct MtaStsSpec {
    /// `Testing` (the default: senders report failures but deliver anyway), `Enforce`
    /// (senders deliver only to this domain's MX over TLS with a valid certificate; start with
    /// `Testing` and a valid certificate first) or `None` (the policy is withdrawn).
    #[serde(default)]
    pub mode: MtaStsMode,
}

/// See [`MtaStsSpec::mode`].
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum MtaStsMode {
    /// Failures are reported, mail is delivered.
    #[default]
    Testing,
    /// Mail goes only to the listed MX over verified TLS.
    Enforce,
    /// No policy.
    None,
}

impl MtaStsMode {
    /// The word in the policy file.
    pub fn word(self) -> &'static str {
        match self {
            MtaStsMode::Testing => "testing",
            MtaStsMode::Enforce => "enforce",
            MtaStsMode::None => "none",
        }
    }
}

/// Publishing the domain's DNS records.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct DnsSpec {
    /// Write the records of `status.dnsRecords` (with the mail host's A/AAAA from a
    /// LoadBalancer Service's address) into an external-dns `DNSEndpoint` named `<name>-dns`,
    /// owned by this MailDomain, for external-dns to publish in the DNS provider. Needs
    /// external-dns's `DNSEndpoint` CRD (`DNSPublished` says when it is missing) and
    /// external-dns started with `--source=crd`. Defaults to false.
    #[serde(default)]
    pub publish: bool,
    /// The TTL of the published records, in seconds. Defaults to 3600.
    #[serde(default = "default_dns_ttl")]
    #[schemars(range(min = 60, max = 86400))]
    pub ttl: i64,
}

impl Default for DnsSpec {
    fn default() -> Self {
        Self {
            publish: false,
            ttl: default_dns_ttl(),
        }
    }
}

fn default_dns_ttl() -> i64 {
    3600
}

/// DKIM signing of outgoing mail (RFC 6376).
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct DkimSpec {
    /// Whether outgoing mail is signed. Defaults to true.
    #[serde(default = "default_true")]
    pub enabled: bool,
    /// The selector: the DNS name of the key is `<selector>._domainkey.<domain>`.
    /// Defaults to `kubemail`. Changing it rotates the key: a new key is made and its record
    /// published beside the old one (in `status.dnsRecords` and the DNSEndpoint); mail is
    /// signed with it once the record has been out for `dns.ttl` (and, with DNS checks on,
    /// `DNSVerified` is True); the old record stays published for 7 days more (a further
    /// rotation within them publishes its key at once and switches after they end).
    #[serde(default = "default_dkim_selector")]
    #[schemars(length(min = 1, max = 63))]
    #[x_kube(validation = kube::core::Rule::new("self.matches('^[a-z0-9]([-a-z0-9]*[a-z0-9])?$')").message("dkim.selector must be one DNS label: lowercase letters, digits and '-'"))]
    pub selector: String,
    /// The key algorithm: `RSA` (2048-bit, understood everywhere; the default) or `Ed25519`
    /// (RFC 8463, small, not yet verified by every receiver).
    #[serde(default)]
    pub algorithm: DkimAlgorithm,
}

impl Default for DkimSpec {
    fn default() -> Self {
        Self {
            enabled: true,
            selector: default_dkim_selector(),
            algorithm: DkimAlgorithm::Rsa,
        }
    }
}

fn default_dkim_selector() -> String {
    "kubemail".into()
}

/// A DKIM key algorithm.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default, JsonSchema)]
pub enum DkimAlgorithm {
    /// RSA with 2048-bit keys, signed with SHA-256.
    #[default]
    #[serde(rename = "RSA")]
    Rsa,
    /// Ed25519 with SHA-256 (RFC 8463).
    Ed25519,
}

/// Limits enforced by the runtime.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct LimitsSpec {
    /// Largest message accepted, as a quantity such as `25Mi` (announced in the SMTP SIZE
    /// extension). Defaults to `25Mi`.
    #[serde(default = "default_max_message_size")]
    #[schemars(length(min = 1, max = 32))]
    #[x_kube(validation = quantity_rule("limits.maxMessageSize"), validation = kube::core::Rule::new("quantity(self).isLessThan(quantity('1Gi')) || quantity(self) == quantity('1Gi')").message("limits.maxMessageSize must be at most 1Gi"))]
    pub max_message_size: String,
    /// Most recipients of one message. Defaults to 100.
    #[serde(default = "default_max_recipients")]
    #[schemars(range(min = 1, max = 10000))]
    pub max_recipients: i32,
    /// Most concurrent connections per runtime replica, all protocols together. Defaults to 2000.
    #[serde(default = "default_max_connections")]
    #[schemars(range(min = 1, max = 100000))]
    pub max_connections: i32,
    /// Most concurrent connections from one client IP address (IPv6: one /64). Defaults to 50.
    #[serde(default = "default_max_connections_per_ip")]
    #[schemars(range(min = 1, max = 100000))]
    pub max_connections_per_ip: i32,
}

impl Default for LimitsSpec {
    fn default() -> Self {
        Self {
            max_message_size: default_max_message_size(),
            max_recipients: default_max_recipients(),
            max_connections: default_max_connections(),
            max_connections_per_ip: default_max_connections_per_ip(),
        }
    }
}

fn default_max_message_size() -> String {
    "25Mi".into()
}
fn default_max_recipients() -> i32 {
    100
}
fn default_max_connections() -> i32 {
    2000
}
fn default_max_connections_per_ip() -> i32 {
    50
}

/// How the runtime is deployed.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RuntimeSpec {
    /// Number of runtime pods: 1 (the default), 0 to stop serving while keeping all data, or
    /// more with `storage.database` (the embedded Maildir store is served by one pod at a time).
    #[serde(default = "default_replicas")]
    #[schemars(range(min = 0, max = 16))]
    pub replicas: i32,
    /// CPU and memory requests and limits of the runtime container.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<ResourceRequirements>,
    /// The Service in front of the runtime.
    #[serde(default)]
    pub service: ServiceSpec,
}

impl Default for RuntimeSpec {
    fn default() -> Self {
        Self {
            replicas: default_replicas(),
            resources: None,
            service: ServiceSpec::default(),
        }
    }
}

fn default_replicas() -> i32 {
    1
}

/// The Service that exposes the runtime.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default)]
#[x_kube(validation = kube::core::Rule::new(
    "!has(self.proxyProtocol) || !self.proxyProtocol || (has(self.trustedProxies) && size(self.trustedProxies) > 0)"
).message("proxyProtocol needs trustedProxies: the networks the load balancer connects from").field_path(".trustedProxies"))]
#[serde(rename_all = "camelCase")]
pub struct ServiceSpec {
    /// `ClusterIP` (the default), `NodePort` or `LoadBalancer`.
    #[serde(default, rename = "type")]
    pub type_: ServiceType,
    /// Annotations for the Service, such as a cloud load balancer's settings.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
    /// Whether the load balancer in front sends the PROXY protocol header (v1 or v2), so the
    /// runtime sees the real client address. Connections from `trustedProxies` must then start
    /// with the header; connections from anywhere else are served under their own address, and
    /// a header they send is not believed.
    #[serde(default)]
    pub proxy_protocol: bool,
    /// The networks the load balancer connects to the pods from, such as the nodes' CIDR
    /// (`10.0.0.0/16`), whose PROXY headers are believed. Required with `proxyProtocol`. Must
    /// not hold 127.0.0.1 or ::1 (the pod's own probes) nor the operator's address (its probes
    /// connect without a header).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 64), inner(length(min = 3, max = 43)))]
    #[x_kube(validation = kube::core::Rule::new("self.all(c, isCIDR(c) && !cidr(c).containsIP('127.0.0.1') && !cidr(c).containsIP('::1'))").message("every entry of trustedProxies must be a network in CIDR notation such as 10.0.0.0/16, without 127.0.0.1 or ::1"), merge_strategy = kube::core::ListMerge::Set)]
    pub trusted_proxies: Vec<String>,
}

/// A Kubernetes Service type.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default, JsonSchema)]
pub enum ServiceType {
    /// Reachable inside the cluster only.
    #[default]
    ClusterIP,
    /// Also reachable on a port of every node.
    NodePort,
    /// Reachable through a cloud or bare-metal load balancer.
    LoadBalancer,
}

/// What the operator observed of a MailDomain.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct MailDomainStatus {
    /// The generation of the spec this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// `Ready` (every enabled protocol answers its probe and the runtime serves the current
    /// config), one condition per protocol probe (`SMTPReady`, `SubmissionReady`, `IMAPReady`,
    /// `POP3Ready`, `ManageSieveReady`, `HTTPSReady`), `ConfigServed` (the runtime serves the revision written), `TLSReady`,
    /// `RelayPolicyFound` when a RelayPolicy is named, `CatchAllFound` when a catch-all is set,
    /// `ConfigValid=False` while a rendered config is refused, and `OpenRelay` from the
    /// operator's relay attempt through port 25 without a login (True, with a Warning event,
    /// when the runtime accepted a recipient in another domain; not part of Ready), and
    /// `DNSVerified` with the operator's `--dns-check` (each record of `dnsRecords` resolved
    /// and compared; False names each missing or wrong record). While not Ready, kstatus's `Reconciling`
    /// (waiting: for a Secret, a domain, the runtime) or `Stalled` (a change by the user is
    /// needed: an invalid config, a duplicate address, a Secret without its key, ...) says which,
    /// present only while True, as Flux and Argo CD read them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[x_kube(merge_strategy = kube::core::ListMerge::Map(vec!["type".into()]))]
    pub conditions: Vec<Condition>,
    /// The host name in use (the spec's hostname or its default).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hostname: Option<String>,
    /// Where clients reach each enabled protocol.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub endpoints: Vec<Endpoint>,
    /// Number of Mailboxes served by this domain.
    #[serde(default)]
    pub mailboxes: i32,
    /// The revision of the rendered runtime config, and the one the runtime reports serving.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config_revision: Option<String>,
    /// The DNS records to publish for this domain, with their exact values.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub dns_records: Vec<DnsRecord>,
    /// Messages waiting in the runtime's outbound queue, as last read from it: updated when it
    /// changes, at most once per the operator's usage interval (5 minutes).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub queued: Option<i64>,
}

/// Where a client reaches one protocol.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Endpoint {
    /// The protocol: smtp, submission, submissions, imap, imaps, pop3 or pop3s.
    pub protocol: String,
    /// Host name or address.
    pub host: String,
    /// Port.
    pub port: i32,
    /// `STARTTLS` or `TLS` (implicit).
    pub tls: String,
}

/// A DNS record to publish.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct DnsRecord {
    /// What the record is for: MX, SPF, DKIM, DMARC, an RFC 6186 service, `host` (the mail
    /// host's address from a LoadBalancer), `web` (a name of the HTTPS side), MTA-STS or
    /// TLS-RPT.
    pub purpose: String,
    /// The record type: MX, TXT, SRV, A, CNAME.
    #[serde(rename = "type")]
    pub type_: String,
    /// The fully qualified name, ending in a dot.
    pub name: String,
    /// The record's value exactly as it is to be published.
    pub value: String,
}

/// Checks on mail from outside (port 25).
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct InboundSpec {
    /// Check SPF, DKIM and DMARC and add an `Authentication-Results` header. Defaults to true.
    #[serde(default = "default_true")]
    pub verify: bool,
    /// Refuse mail that fails DMARC when the sender's domain publishes `p=reject`.
    #[serde(default)]
    pub reject_on_dmarc_policy: bool,
    /// DNS lists looked up with each client's address; the weights of those that list it add
    /// up, and at `dnsListThreshold` the client is refused at RCPT (`554 5.7.1`, naming the
    /// lists). A negative weight makes an allowlist. At most 16.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 16))]
    pub dns_lists: Vec<DnsList>,
    /// The score at which a client is refused. Defaults to 1.
    #[serde(default = "one")]
    #[schemars(range(min = 1, max = 1000))]
    pub dns_list_threshold: i32,
    /// Greylisting: a new (client network, sender, recipient) gets `451 4.7.1` and is taken
    /// when it retries after `delay`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub greylisting: Option<GreylistingSpec>,
    /// A pause before the banner, such as `2s`; a client that talks during it is refused.
    /// Off when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 2, max = 8))]
    #[x_kube(validation = crate::common::duration_rule("greetPause"))]
    pub greet_pause: Option<String>,
    /// Refuse HELO names that are not a domain or the client's address literal, or that claim
    /// this server's name or domains.
    #[serde(default)]
    pub helo_checks: bool,
    /// A clamd (ClamAV's daemon) that scans each message from outside over TCP; infected mail
    /// is refused with `554 5.7.1` and the signature's name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub clamav: Option<ClamavSpec>,
    /// An rspamd whose normal worker scores each message from outside over HTTP (`/checkv2`):
    /// `reject` is refused (`550 5.7.1`), `soft reject` and `greylist` are asked to retry
    /// (`451 4.7.1`), `add header` and `rewrite subject` are taken into the recipient's Junk
    /// folder; every checked message carries `X-Spam-Status`, `X-Spam-Action` and
    /// `X-Spam-Symbols`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rspamd: Option<RspamdSpec>,
}

/// The label a Secret needs before it is sent to an rspamd controller as its password: a
/// MailDomain can name any Secret of its namespace, and the runtime sends what it is given to
/// the controller the MailDomain names.
pub const RSPAMD_PASSWORD_LABEL: &str = "kubemail.io/rspamd-password";

/// An rspamd reached over HTTP.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[x_kube(validation = kube::core::Rule::new("!has(self.controllerPasswordSecretRef) || has(self.controllerUrl)").message("controllerPasswordSecretRef needs controllerUrl: the password is only ever sent to the controller").field_path(".controllerPasswordSecretRef"))]
#[serde(rename_all = "camelCase")]
pub struct RspamdSpec {
    /// The normal worker's address, such as `http://rspamd.mail.svc:11333`.
    #[schemars(length(min = 10, max = 270))]
    #[x_kube(validation = kube::core::Rule::new("self.matches('^http://[a-z0-9.-]+:[0-9]{1,5}/?$')").message("url must be http://host:port, such as http://rspamd.mail.svc:11333"))]
    pub url: String,
    /// How long one check may take. Defaults to `30s`.
    #[serde(default = "default_scan_timeout")]
    #[schemars(length(min = 2, max = 8))]
    #[x_kube(validation = crate::common::duration_rule("rspamd.timeout"))]
    pub timeout: String,
    /// When rspamd cannot answer: `Tempfail` (the default) or `Accept` (taken unchecked).
    #[serde(default)]
    pub on_failure: ScanFailure,
    /// The controller worker, such as `http://rspamd.mail.svc:11334`: what users move into
    /// Junk (IMAP MOVE or COPY) or mark `$Junk` is learned as spam, what they move out of it
    /// (not into Trash), mark `$NotJunk` or unmark `$Junk` as ham: per command at most 20
    /// messages and 16 MiB (none over 10 MiB), per runtime 64 MiB and 16 commands at once
    /// (more is skipped).
    /// No learning when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 10, max = 270))]
    #[x_kube(validation = kube::core::Rule::new("self.matches('^http://[a-z0-9.-]+:[0-9]{1,5}/?$')").message("controllerUrl must be http://host:port, such as http://rspamd.mail.svc:11334"))]
    pub controller_url: Option<String>,
    /// The controller's `enable_password`, from a Secret of this namespace that carries the
    /// label `kubemail.io/rspamd-password: "true"` (which says it may be sent to
    /// `controllerUrl`); mounted into the runtime, never read by the operator. Without it the
    /// controller must trust the runtime's pods by address (its `secure_ip`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub controller_password_secret_ref: Option<crate::SecretKeyRef>,
    /// Check mail from logged-in users and relay networks too.
    #[serde(default)]
    pub scan_submission: bool,
}

/// A clamd reached over TCP.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct ClamavSpec {
    /// `host:port` of clamd's TCP socket, such as `clamav.mail.svc:3310`.
    #[schemars(length(min = 3, max = 260))]
    #[x_kube(validation = kube::core::Rule::new("self.matches('^[a-z0-9.-]+:[0-9]{1,5}$')").message("address must be host:port, such as clamav.mail.svc:3310"))]
    pub address: String,
    /// How long one scan may take. Defaults to `30s`.
    #[serde(default = "default_scan_timeout")]
    #[schemars(length(min = 2, max = 8))]
    #[x_kube(validation = crate::common::duration_rule("clamav.timeout"))]
    pub timeout: String,
    /// When clamd cannot answer: `Tempfail` (the sender retries later, `451 4.7.1`; the
    /// default) or `Accept` (taken unscanned).
    #[serde(default)]
    pub on_failure: ScanFailure,
    /// Scan mail from logged-in users and relay networks too.
    #[serde(default)]
    pub scan_submission: bool,
}

fn default_scan_timeout() -> String {
    "30s".into()
}

/// What happens to a message a scanner could not judge.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default, JsonSchema)]
pub enum ScanFailure {
    /// Ask the sender to retry later: nothing unscanned gets in, nothing is lost.
    #[default]
    Tempfail,
    /// Take the message unscanned.
    Accept,
}

impl Default for InboundSpec {
    fn default() -> Self {
        Self {
            verify: true,
            reject_on_dmarc_policy: false,
            dns_lists: Vec::new(),
            dns_list_threshold: 1,
            greylisting: None,
            greet_pause: None,
            helo_checks: false,
            clamav: None,
            rspamd: None,
        }
    }
}

fn one() -> i32 {
    1
}

/// A DNS list.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct DnsList {
    /// The list's zone, such as `zen.spamhaus.org`.
    #[schemars(length(min = 3, max = 200))]
    #[x_kube(validation = domain_rule("zone"))]
    pub zone: String,
    /// What a listing adds to the client's score; negative for an allowlist. Defaults to 1.
    #[serde(default = "one")]
    #[schemars(range(min = -1000, max = 1000))]
    pub weight: i32,
    /// The answers that count, such as `127.0.0.2`; any `127.0.0.x` when empty.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 16), inner(length(min = 9, max = 15)))]
    #[x_kube(validation = kube::core::Rule::new("self.all(a, a.matches('^127\\\\.[0-9]{1,3}\\\\.[0-9]{1,3}\\\\.[0-9]{1,3}$'))").message("answers are addresses in 127.0.0.0/8 such as 127.0.0.2"))]
    pub answers: Vec<String>,
}

/// Greylisting's timings.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct GreylistingSpec {
    /// How long a new sender waits before its retry is taken. Defaults to `5m`.
    #[serde(default = "default_grey_delay")]
    #[schemars(length(min = 2, max = 8))]
    #[x_kube(validation = crate::common::duration_rule("greylisting.delay"))]
    pub delay: String,
    /// How long a waiting sender is remembered for its retry. Defaults to `1d`.
    #[serde(default = "default_grey_window")]
    #[schemars(length(min = 2, max = 8))]
    #[x_kube(validation = crate::common::duration_rule("greylisting.retryWindow"))]
    pub retry_window: String,
}

fn default_grey_delay() -> String {
    "5m".into()
}

fn default_grey_window() -> String {
    "1d".into()
}
