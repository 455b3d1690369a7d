//! `Mailbox`: one user's address, credentials and mail.
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::common::{
    Condition, SecretKeyRef, address_list_rule, address_rule, immutable_rule, quantity_rule,
};

/// A mailbox: an address that receives mail, the password that opens it and what its owner may
/// do. It joins the MailDomain in the same namespace whose domain matches the address.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "kubemail.io",
    version = "v1alpha1",
    kind = "Mailbox",
    plural = "mailboxes",
    singular = "mailbox",
    shortname = "mbx",
    category = "mail",
    namespaced,
    status = "MailboxStatus",
    doc = "A mailbox: an address, its credentials and its mail.",
    printcolumn(
        name = "Address",
        type_ = "string",
        json_path = ".spec.address",
        description = "The mailbox's address"
    ),
    printcolumn(
        name = "Domain",
        type_ = "string",
        json_path = ".status.domain",
        description = "The MailDomain serving it"
    ),
    printcolumn(
        name = "Suspended",
        type_ = "boolean",
        json_path = ".spec.suspended",
        priority = 1
    ),
    printcolumn(
        name = "Used",
        type_ = "string",
        json_path = ".status.usage.used",
        description = "Storage used, all folders"
    ),
    printcolumn(
        name = "Quota",
        type_ = "string",
        json_path = ".spec.quota",
        description = "The most mail it may hold"
    ),
    printcolumn(
        name = "Messages",
        type_ = "integer",
        json_path = ".status.usage.messages",
        priority = 1
    ),
    printcolumn(
        name = "Ready",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Ready\")].status",
        description = "Whether the runtime serves this mailbox"
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
#[x_kube(validation = kube::core::Rule::new("!has(self.aliases) || !self.aliases.exists(a, a == self.address)").message("aliases must not repeat address").field_path(".aliases"))]
#[x_kube(validation = kube::core::Rule::new("!has(self.forwardTo) || !self.forwardTo.exists(a, a == self.address)").message("forwardTo must not contain the mailbox's own address").field_path(".forwardTo"))]
#[serde(rename_all = "camelCase")]
pub struct MailboxSpec {
    /// The mailbox's address, such as `jane.doe@example.com`. Its domain picks the MailDomain.
    /// Immutable.
    #[schemars(length(min = 3, max = 254))]
    #[x_kube(validation = address_rule("address"), validation = immutable_rule("address"))]
    pub address: String,

    /// The owner's name, used in generated mail such as delivery reports.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 128))]
    #[x_kube(validation = kube::core::Rule::new("!self.contains('\\n') && !self.contains('\\r')").message("displayName must be one line"))]
    pub display_name: Option<String>,

    /// The Secret key holding the password: plaintext, or an argon2 (`$argon2id$...`) or bcrypt
    /// (`$2b$...`) hash. The operator hands the runtime only a hash; a plaintext password never
    /// leaves this Secret. The key defaults to `password`.
    pub password_secret_ref: SecretKeyRef,

    /// Further addresses delivered to this mailbox, in the same domain or one of its alias
    /// domains.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 256), inner(length(min = 3, max = 254)))]
    #[x_kube(validation = address_list_rule("aliases"), merge_strategy = kube::core::ListMerge::Set)]
    pub aliases: Vec<String>,

    /// Addresses that receive a copy of every message delivered to this mailbox.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 16), inner(length(min = 3, max = 254)))]
    #[x_kube(validation = address_list_rule("forwardTo"), merge_strategy = kube::core::ListMerge::Set)]
    pub forward_to: Vec<String>,

    /// Whether forwarded mail is also kept in this mailbox. Defaults to true.
    #[serde(default = "crate::mail_domain::default_true")]
    pub keep_forwarded_copy: bool,

    /// The most mail this mailbox may hold, as a quantity such as `2Gi`. Mail over quota is
    /// refused with `452 4.2.2` (temporarily) or `552 5.2.2`. No limit when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 32))]
    #[x_kube(validation = quantity_rule("quota"))]
    pub quota: Option<String>,

    /// The protocols this mailbox may use: `SMTP` (authenticated submission), `IMAP`, `POP3`.
    /// Defaults to all three.
    #[serde(default = "all_protocols")]
    #[schemars(length(min = 0, max = 3))]
    #[x_kube(merge_strategy = kube::core::ListMerge::Set)]
    pub protocols: Vec<MailboxProtocol>,

    /// A suspended mailbox still receives mail but cannot log in or send.
    #[serde(default)]
    pub suspended: bool,

    /// Further passwords, one per device or application (a phone, a laptop's mail client), each
    /// opening only the protocols listed for it. Removing one (or its Secret) revokes it: the
    /// sessions opened with it end within seconds, and no others. At most 8.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 8))]
    #[x_kube(merge_strategy = kube::core::ListMerge::Map(vec!["name".into()]))]
    pub app_passwords: Vec<AppPassword>,

    /// An out-of-office reply, declared here (in Git) rather than clicked in a mail client:
    /// each sender gets one reply per `days` while it is enabled and within `start`..`end`,
    /// never lists, bounces or automatic mail (RFC 5230's rules). It takes effect without a
    /// restart, and applies before the user's own Sieve script.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auto_reply: Option<AutoReply>,

    /// A Sieve script (RFC 5228) from a ConfigMap or Secret, run at delivery after `autoReply`
    /// and before the script the user activated over ManageSieve. A script that does not
    /// compile is not run (status condition `SieveScriptValid` says why): mail goes on to the
    /// user's script and INBOX.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sieve: Option<SieveSource>,

    /// Where the MailDomain's spam filter (rspamd) takes this mailbox's mail: from which score
    /// it goes to Junk, or never (`quarantine: false`, spam stays in INBOX with its
    /// `X-Spam-*` headers).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub spam: Option<SpamSpec>,
}

/// A mailbox's own spam settings.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct SpamSpec {
    /// The rspamd score from which mail goes to Junk, such as `5`; without it, rspamd's own
    /// actions decide (add header, rewrite subject). Mail rspamd rejects is refused whatever
    /// this says.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = -100.0, max = 1000.0))]
    pub junk_threshold: Option<f64>,
    /// False: spam stays in INBOX, marked. Defaults to true.
    #[serde(default = "crate::mail_domain::default_true")]
    pub quarantine: bool,
}

/// An out-of-office reply.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[x_kube(validation = kube::core::Rule::new("!has(self.start) || !has(self.end) || timestamp(self.end) > timestamp(self.start)").message("end must come after start").field_path(".end"))]
#[serde(rename_all = "camelCase")]
pub struct AutoReply {
    /// Whether replies are sent. Defaults to true; false keeps the text for next time.
    #[serde(default = "crate::mail_domain::default_true")]
    pub enabled: bool,
    /// The reply's subject.
    #[schemars(length(min = 1, max = 998))]
    #[x_kube(validation = kube::core::Rule::new("!self.contains('\\n') && !self.contains('\\r')").message("subject must be one line"))]
    pub subject: String,
    /// The reply's text.
    #[schemars(length(min = 1, max = 65536))]
    pub body: String,
    /// From when replies are sent (RFC 3339, such as `2026-12-20T00:00:00Z`); at once when
    /// absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start: Option<k8s_openapi::apimachinery::pkg::apis::meta::v1::Time>,
    /// Until when (not included); until removed or disabled when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub end: Option<k8s_openapi::apimachinery::pkg::apis::meta::v1::Time>,
    /// Days before the same sender is answered again, 1 to 365. Defaults to 7.
    #[serde(default = "seven")]
    #[schemars(range(min = 1, max = 365))]
    pub days: i32,
}

fn seven() -> i32 {
    7
}

/// Where a Sieve script is kept: exactly one of a ConfigMap key and a Secret key.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[x_kube(validation = kube::core::Rule::new("has(self.configMapRef) != has(self.secretRef)").message("give exactly one of configMapRef and secretRef"))]
#[serde(rename_all = "camelCase")]
pub struct SieveSource {
    /// A ConfigMap key holding the script.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config_map_ref: Option<ScriptKeyRef>,
    /// A Secret key holding the script.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_ref: Option<ScriptKeyRef>,
}

/// A key of a ConfigMap or Secret in the Mailbox's namespace.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct ScriptKeyRef {
    /// Name of the object, in the same namespace as the Mailbox.
    #[schemars(length(min = 1, max = 253))]
    #[x_kube(validation = crate::common::object_name_rule("name"))]
    pub name: String,
    /// The key holding the script. Defaults to `script.sieve`.
    #[serde(default = "default_script_key")]
    #[schemars(length(min = 1, max = 253))]
    pub key: String,
}

fn default_script_key() -> String {
    "script.sieve".into()
}

impl Mailbox {
    /// The Secrets this Mailbox reads (its password, its app passwords, its Sieve script's),
    /// by name in its namespace.
    pub fn secrets_used(&self) -> Vec<&str> {
        std::iter::once(self.spec.password_secret_ref.name.as_str())
            .chain(
                self.spec
                    .app_passwords
                    .iter()
                    .map(|a| a.secret_ref.name.as_str()),
            )
            .chain(
                self.spec
                    .sieve
                    .as_ref()
                    .and_then(|s| s.secret_ref.as_ref())
                    .map(|r| r.name.as_str()),
            )
            .collect()
    }

    /// The ConfigMap this Mailbox reads its Sieve script from, if any.
    pub fn config_map_used(&self) -> Option<&str> {
        self.spec
            .sieve
            .as_ref()
            .and_then(|s| s.config_map_ref.as_ref())
            .map(|r| r.name.as_str())
    }
}

/// A password for one device or application.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct AppPassword {
    /// Its name, unique in the Mailbox (`phone`, `laptop`): named in status and in the runtime's
    /// log of each login made with it.
    #[schemars(length(min = 1, max = 63))]
    #[x_kube(validation = kube::core::Rule::new("self.matches('^[a-z0-9]([-a-z0-9]*[a-z0-9])?$')").message("name must be lowercase letters, digits and '-', starting and ending with a letter or digit"))]
    pub name: String,

    /// The Secret key holding it: plaintext, or an argon2 or bcrypt hash, as for
    /// `passwordSecretRef` (the runtime gets only a hash). The key defaults to `password`.
    pub secret_ref: SecretKeyRef,

    /// The protocols it opens, within the Mailbox's own: `SMTP`, `IMAP`, `POP3`. Defaults to
    /// all three.
    #[serde(default = "all_protocols")]
    #[schemars(length(min = 1, max = 3))]
    #[x_kube(merge_strategy = kube::core::ListMerge::Set)]
    pub protocols: Vec<MailboxProtocol>,
}

/// A protocol a mailbox may log in with.
#[derive(
    Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, JsonSchema,
)]
pub enum MailboxProtocol {
    /// Authenticated SMTP submission (ports 587 and 465).
    #[serde(rename = "SMTP")]
    Smtp,
    /// IMAP (ports 143 and 993).
    #[serde(rename = "IMAP")]
    Imap,
    /// POP3 (ports 110 and 995).
    #[serde(rename = "POP3")]
    Pop3,
}

fn all_protocols() -> Vec<MailboxProtocol> {
    vec![
        MailboxProtocol::Smtp,
        MailboxProtocol::Imap,
        MailboxProtocol::Pop3,
    ]
}

/// What the operator observed of a Mailbox.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct MailboxStatus {
    /// The generation of the spec this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// `Ready` once the runtime serves a config that contains this mailbox; `DomainFound` and
    /// `SecretFound` say what it is waiting for otherwise. `AppPasswordsFound` (only with app
    /// passwords) names those whose Secret or key is missing: they are left out, the rest
    /// serve. `SieveScriptValid` (only with `sieve`) says whether the script was found and
    /// compiles; one that does not is left out and the mailbox serves without it. While not Ready, kstatus's `Reconciling`
    /// (waiting: for a Secret, a domain, the runtime) or `Stalled` (a change by the user is
    /// needed: an invalid config, a duplicate address, a Secret without its key, ...) says which,
    /// present only while True, as Flux and Argo CD read them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[x_kube(merge_strategy = kube::core::ListMerge::Map(vec!["type".into()]))]
    pub conditions: Vec<Condition>,
    /// The name of the MailDomain that serves this mailbox.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub domain: Option<String>,
    /// Storage used, as the runtime counts it (all folders). Written when it changes, at most
    /// once per the operator's `--usage-interval` (5 minutes) per Mailbox after the first
    /// figures; the runtime enforces the quota itself, at once. Prometheus gets the live
    /// figures from the runtime's `/metrics` (`kubemail_mailbox_used_bytes`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub usage: Option<MailboxUsage>,
}

/// Storage used by a mailbox, as its runtime counts it.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct MailboxUsage {
    /// Bytes stored, all folders together.
    pub bytes: i64,
    /// Messages stored, all folders together.
    pub messages: i64,
    /// `bytes` for people, in the units of `quota` (`512Ki`, `1.5Gi`).
    #[serde(default)]
    pub used: String,
    /// `bytes` as a percentage of the quota, rounded down; absent without a quota.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quota_percent: Option<i32>,
}

impl MailboxUsage {
    /// The usage of `bytes` and `messages` under a quota of `quota` bytes.
    pub fn of(bytes: u64, messages: u64, quota: Option<u64>) -> Self {
        const UNITS: [&str; 6] = ["", "Ki", "Mi", "Gi", "Ti", "Pi"];
        let mut unit = 0;
        let mut value = bytes as f64;
        while value >= 1024.0 && unit + 1 < UNITS.len() {
            value /= 1024.0;
            unit += 1;
        }
        let used = if unit == 0 {
            bytes.to_string()
        } else if value < 10.0 {
            // One decimal, rounded down, so 1023.99Ki never reads as 1024.0Ki.
            let tenths = (value * 10.0).floor() / 10.0;
            format!("{tenths:.1}{}", UNITS[unit])
        } else {
            format!("{}{}", value.floor(), UNITS[unit])
        };
        Self {
            bytes: i64::try_from(bytes).unwrap_or(i64::MAX),
            messages: i64::try_from(messages).unwrap_or(i64::MAX),
            used,
            quota_percent: quota.filter(|q| *q > 0).map(|q| {
                i32::try_from(u128::from(bytes) * 100 / u128::from(q)).unwrap_or(i32::MAX)
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::MailboxUsage;

    #[test]
    fn usage_reads_like_a_quota() {
        let used = |bytes| MailboxUsage::of(bytes, 1, None).used;
        assert_eq!(used(0), "0");
        assert_eq!(used(1023), "1023");
        assert_eq!(used(1024), "1.0Ki");
        assert_eq!(used(1536), "1.5Ki");
        assert_eq!(used(1024 * 1024 - 1), "1023Ki");
        assert_eq!(used(10 * 1024 * 1024 + 1), "10Mi");
        assert_eq!(used(3 << 30), "3.0Gi");
        let percent = |bytes, quota| MailboxUsage::of(bytes, 1, quota).quota_percent;
        assert_eq!(percent(950, Some(1000)), Some(95));
        assert_eq!(percent(999, Some(1000)), Some(99), "rounded down");
        assert_eq!(percent(2000, Some(1000)), Some(200), "over quota says so");
        assert_eq!(percent(1, None), None);
        assert_eq!(percent(1, Some(0)), None);
    }
}
