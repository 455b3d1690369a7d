//! Small objects for the builders' tests, as a user would write them (defaults applied the way
//! the API server applies them, through serde).
use kubemail_crds::{MailDomain, Mailbox, RelayPolicy};

fn from_yaml<T: serde::de::DeserializeOwned>(yaml: &str) -> T {
    serde_yaml_ng::from_str(yaml).expect("fixture parses")
}

pub fn domain() -> MailDomain {
    from_yaml(
        "apiVersion: kubemail.io/v1alpha1
kind: MailDomain
metadata: {name: example, namespace: mail, uid: 0d1f6c1e-0000-4000-8000-000000000001, generation: 3}
spec:
  domain: example.com
  aliasDomains: [example.org]
  relayPolicyRef: {name: apps}
  protocols:
    pop3: {enabled: false}
    imaps: {port: 10993}
  storage: {size: 5Gi, storageClassName: fast}
  runtime:
    service: {type: LoadBalancer, annotations: {lb.example/scheme: internet-facing}}
",
    )
}

pub fn mailbox(name: &str, address: &str) -> Mailbox {
    from_yaml(&format!(
        "apiVersion: kubemail.io/v1alpha1
kind: Mailbox
metadata: {{name: {name}, namespace: mail, uid: 0d1f6c1e-0000-4000-8000-00000000{n:04}}}
spec:
  address: {address}
  passwordSecretRef: {{name: {name}-password}}
  aliases: [{name}.alias@example.org]
  quota: 1Gi
",
        n = name.len()
    ))
}

pub fn relay() -> RelayPolicy {
    from_yaml(
        "apiVersion: kubemail.io/v1alpha1
kind: RelayPolicy
metadata: {name: apps, namespace: mail}
spec:
  allow: {clientCIDRs: [10.42.0.0/16]}
  recipientDomains: [customers.example.net]
  route:
    mode: Smarthost
    smarthost: {host: smtp.provider.example, port: 587, credentialsSecretRef: {name: provider-login}}
  rateLimits: {perSender: {messages: 100, period: 1h}, total: {messages: 1000, period: 1h}}
  retry: {initialInterval: 1m, maxInterval: 1h, maxAge: 2d}
",
    )
}

/// How the runtime's pods are made in the snapshots.
pub fn runtime_options() -> super::objects::RuntimeOptions {
    super::objects::RuntimeOptions {
        image: "ghcr.io/kubemail/mail-runtime:0.1.0".into(),
        binary: "/usr/local/bin/mail-runtime".into(),
    }
}
