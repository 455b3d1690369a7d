//! The `kubemail.io/v1alpha1` API: [`MailDomain`], [`Mailbox`] and [`RelayPolicy`].
//!
//! This crate owns the types users write in manifests and the CRD YAML generated from them
//! (`cargo run -p kubemail-crds --bin crdgen`). It owns no behaviour: the operator reads these
//! types, the runtime never sees them (it reads the config the operator renders).
//!
//! ```text
//!   MailDomain  <-- domain of --  Mailbox ---> Secret (password, owned by the user)
//!       |
//!       +-- relayPolicyRef --> RelayPolicy ---> Secret (smarthost credentials)
//!       +-- tls.secretName --> Secret (kubernetes.io/tls, e.g. from cert-manager)
//! ```
//!
//! Validation that the schema can express lives in the schema (types, enums, bounds); what it
//! cannot lives in CEL rules (`x-kubernetes-validations`) next to the field they guard, each with
//! a message that says what is wrong in words a person understands.
#![forbid(unsafe_code)]
// kube-derive takes one `printcolumn(...)` per column; clippy reads the repeated keys inside them
// (`type_`, `priority`) as duplicated attributes.
#![allow(clippy::duplicated_attributes)]

pub mod common;
pub mod mail_domain;
pub mod mailbox;
pub mod relay_policy;

pub use common::{Condition, SecretKeyRef};
pub use mail_domain::{MailDomain, MailDomainSpec, MailDomainStatus, Protocol};
pub use mailbox::{Mailbox, MailboxSpec, MailboxStatus};
pub use relay_policy::{RelayPolicy, RelayPolicySpec, RelayPolicyStatus};

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::CustomResourceExt;

/// The API group of every kubemail kind.
pub const GROUP: &str = "kubemail.io";
/// The one served and stored version.
pub const VERSION: &str = "v1alpha1";

/// Every CRD this crate defines, in a stable order.
pub fn crds() -> Vec<CustomResourceDefinition> {
    [MailDomain::crd(), Mailbox::crd(), RelayPolicy::crd()]
        .into_iter()
        .map(reflow_descriptions)
        .collect()
}

/// Doc comments are wrapped at 100 columns in the source; `kubectl explain` wraps text itself,
/// so descriptions keep only paragraph breaks.
fn reflow_descriptions(crd: CustomResourceDefinition) -> CustomResourceDefinition {
    fn walk(value: &mut serde_json::Value) {
        match value {
            serde_json::Value::Object(map) => {
                for (key, child) in map.iter_mut() {
                    match child {
                        serde_json::Value::String(text) if key == "description" => {
                            *text = reflow(text);
                        }
                        _ => walk(child),
                    }
                }
            }
            serde_json::Value::Array(items) => items.iter_mut().for_each(walk),
            _ => {}
        }
    }
    fn reflow(text: &str) -> String {
        text.split("\n\n")
            .map(|paragraph| paragraph.split_whitespace().collect::<Vec<_>>().join(" "))
            .collect::<Vec<_>>()
            .join("\n\n")
    }
    let mut value = serde_json::to_value(&crd).expect("a CRD serializes");
    walk(&mut value);
    serde_json::from_value(value).expect("reflowed descriptions keep the CRD valid")
}

/// The file name crdgen writes a CRD to: `<plural>.<group>.yaml`.
pub fn crd_file_name(crd: &CustomResourceDefinition) -> String {
    format!("{}.yaml", crd.metadata.name.as_deref().unwrap_or("unnamed"))
}

/// The YAML document for one CRD, with the header that says it is generated.
pub fn crd_yaml(crd: &CustomResourceDefinition) -> Result<String, serde_yaml_ng::Error> {
    let body = serde_yaml_ng::to_string(crd)?;
    Ok(format!(
        "# Generated from the Rust types in crds/src by `cargo run -p kubemail-crds --bin crdgen`.\n\
         # Do not edit: change the types and regenerate.\n{body}"
    ))
}
