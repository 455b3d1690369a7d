//! Pieces shared by the three kinds: conditions, references to Secrets, and the CEL rules that
//! check names, addresses, quantities and durations.
use kube::core::{Message, Rule};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// A standard Kubernetes condition (`type`, `status`, `reason`, `message`, `lastTransitionTime`,
/// `observedGeneration`), the shape `kubectl wait`, Argo CD and Flux read.
pub type Condition = k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;

/// A DNS domain name: lowercase labels of letters, digits and hyphens, at least two of them.
pub(crate) const DOMAIN_PATTERN: &str =
    "^([a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?[.])+[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$";

/// An RFC 5321 mailbox in its common form: a dot-atom local part, `@`, a lowercase domain.
/// Quoted local parts and non-ASCII addresses are refused on purpose: they are where address
/// tricks (and confusable look-alikes) live, and no mainstream client needs them.
pub(crate) const ADDRESS_PATTERN: &str = "^[a-zA-Z0-9!#$%&'*+/=?^_`{|}~-]+([.][a-zA-Z0-9!#$%&'*+/=?^_`{|}~-]+)*@([a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?[.])+[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$";

/// A duration such as `90s`, `5m`, `4h` or `5d`.
pub(crate) const DURATION_PATTERN: &str = "^[0-9]{1,6}(s|m|h|d)$";

/// A Kubernetes object name (RFC 1123 subdomain).
pub(crate) const OBJECT_NAME_PATTERN: &str =
    "^[a-z0-9]([-a-z0-9]*[a-z0-9])?([.][a-z0-9]([-a-z0-9]*[a-z0-9])?)*$";

pub(crate) fn domain_rule(field: &str) -> Rule {
    Rule::new(format!("self.matches(\"{DOMAIN_PATTERN}\")")).message(Message::Message(format!(
        "{field} must be a lowercase DNS domain name such as example.com"
    )))
}

pub(crate) fn domain_list_rule(field: &str) -> Rule {
    Rule::new(format!("self.all(d, d.matches(\"{DOMAIN_PATTERN}\"))")).message(Message::Message(
        format!("every entry of {field} must be a lowercase DNS domain name such as example.com"),
    ))
}

/// A mailbox's own address: its local part names the mailbox's directory in the store, so it
/// has no `/` (an outside tester found such a Mailbox accepted here and refused by the store).
pub(crate) fn address_rule(field: &str) -> Rule {
    Rule::new(format!(
        "self.matches(\"{ADDRESS_PATTERN}\") && self.indexOf('@') <= 64 && !self.split('@')[0].contains('/')"
    ))
    .message(Message::Message(format!(
        "{field} must be a mail address such as jane.doe@example.com (ASCII, lowercase domain, local part of at most 64 characters, without '/')"
    )))
}

pub(crate) fn address_list_rule(field: &str) -> Rule {
    Rule::new(format!(
        "self.all(a, a.matches(\"{ADDRESS_PATTERN}\") && a.indexOf('@') <= 64)"
    ))
    .message(Message::Message(format!(
        "every entry of {field} must be a mail address such as jane.doe@example.com"
    )))
}

pub(crate) fn quantity_rule(field: &str) -> Rule {
    Rule::new("isQuantity(self) && quantity(self).isGreaterThan(quantity('0'))").message(
        Message::Message(format!(
            "{field} must be a positive quantity such as 512Mi or 10Gi"
        )),
    )
}

pub(crate) fn duration_rule(field: &str) -> Rule {
    Rule::new(format!("self.matches(\"{DURATION_PATTERN}\")")).message(Message::Message(format!(
        "{field} must be a duration: a whole number followed by s, m, h or d, such as 30m"
    )))
}

pub(crate) fn object_name_rule(field: &str) -> Rule {
    Rule::new(format!("self.matches(\"{OBJECT_NAME_PATTERN}\")")).message(Message::Message(format!(
        "{field} must be the name of a Kubernetes object: lowercase letters, digits, '-' and '.'"
    )))
}

pub(crate) fn immutable_rule(field: &str) -> Rule {
    Rule::new("self == oldSelf").message(Message::Message(format!(
        "{field} is immutable: create a new object instead"
    )))
}

/// A key of a Secret in the same namespace as the object that refers to it.
#[derive(kube::KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct SecretKeyRef {
    /// Name of the Secret, in the same namespace as this object.
    #[schemars(length(min = 1, max = 253))]
    #[x_kube(validation = object_name_rule("name"))]
    pub name: String,
    /// Key inside the Secret's data.
    #[serde(default = "default_password_key")]
    #[schemars(length(min = 1, max = 253))]
    pub key: String,
}

fn default_password_key() -> String {
    "password".into()
}

/// A reference to an object of a known kind in the same namespace.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct LocalObjectRef {
    /// Name of the object, in the same namespace as this one.
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
}
