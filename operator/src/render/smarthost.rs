//! Whether a RelayPolicy's smarthost credentials may reach the runtime. A RelayPolicy can name
//! any Secret of its namespace, and the runtime sends what it is given as SMTP AUTH to the
//! policy's own smarthost; so a Secret is used only when it says it is meant for that (the
//! label [`SMARTHOST_CREDENTIALS_LABEL`]), and never over a connection without TLS.
//!
//! Pure: the policy and the Secret's labels in, a verdict out. The reconcilers read the
//! Secret; the render functions only ever see a policy this module let through.
use std::collections::BTreeMap;

use kubemail_crds::{
    RelayPolicy,
    relay_policy::{SMARTHOST_CREDENTIALS_LABEL, Smarthost, SmarthostTls},
};

use crate::conditions::reason;

/// Why a smarthost's credentials may not be used: a condition reason and a message that says
/// what to do. `labels`: the credentials Secret's labels, `None` when it does not exist.
pub fn refusal(
    host: &Smarthost,
    labels: Option<&BTreeMap<String, String>>,
) -> Option<(&'static str, String)> {
    let credentials = host.credentials_secret_ref.as_ref()?;
    if host.tls == SmarthostTls::None {
        // The API server refuses this (a CEL rule); an object stored before that rule existed
        // still gets here.
        return Some((
            reason::CREDENTIALS_NEED_TLS,
            format!(
                "credentials from Secret {} are not sent to {} with tls None; set tls to StartTLS or Implicit",
                credentials.name, host.host
            ),
        ));
    }
    let Some(labels) = labels else {
        return Some((
            reason::SECRET_NOT_FOUND,
            format!(
                "Secret {} (keys {} and {}, label {SMARTHOST_CREDENTIALS_LABEL}: \"true\") does not exist yet",
                credentials.name, credentials.username_key, credentials.password_key
            ),
        ));
    };
    if labels.get(SMARTHOST_CREDENTIALS_LABEL).map(String::as_str) != Some("true") {
        return Some((
            reason::SECRET_NOT_LABELLED,
            format!(
                "Secret {name} is not used as smarthost credentials until it has the label \
                 {SMARTHOST_CREDENTIALS_LABEL}: \"true\" (kubectl label secret {name} \
                 {SMARTHOST_CREDENTIALS_LABEL}=true), which says it may be sent to {host}",
                name = credentials.name,
                host = host.host,
            ),
        ));
    }
    None
}

/// The policy as the runtime may see it: its smarthost's credentials left out unless
/// [`refusal`] finds nothing against them. Nothing of a refused Secret is mounted or rendered.
pub fn usable(rp: &RelayPolicy, labels: Option<&BTreeMap<String, String>>) -> RelayPolicy {
    let mut rp = rp.clone();
    if let Some(host) = rp.spec.route.smarthost.as_mut()
        && refusal(host, labels).is_some()
    {
        host.credentials_secret_ref = None;
    }
    rp
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::render::{fixtures, objects};

    fn labelled() -> BTreeMap<String, String> {
        BTreeMap::from([(SMARTHOST_CREDENTIALS_LABEL.to_string(), "true".to_string())])
    }

    fn smarthost_volume(rp: &RelayPolicy) -> bool {
        objects::deployment(&fixtures::domain(), Some(rp), &fixtures::runtime_options())
            .spec
            .template
            .spec
            .and_then(|p| p.volumes)
            .is_some_and(|v| v.iter().any(|v| v.name == "smarthost"))
    }

    #[test]
    fn only_a_labelled_secret_is_mounted_and_rendered() {
        let rp = fixtures::relay();
        let host = rp.spec.route.smarthost.as_ref().expect("smarthost");
        assert!(refusal(host, Some(&labelled())).is_none());
        assert!(smarthost_volume(&usable(&rp, Some(&labelled()))));

        let other = BTreeMap::from([(SMARTHOST_CREDENTIALS_LABEL.to_string(), "yes".into())]);
        for (labels, expected) in [
            (Some(BTreeMap::new()), reason::SECRET_NOT_LABELLED),
            (Some(other), reason::SECRET_NOT_LABELLED),
            (None, reason::SECRET_NOT_FOUND),
        ] {
            let (got, message) = refusal(host, labels.as_ref()).expect("refused");
            assert_eq!(got, expected);
            assert!(message.contains(SMARTHOST_CREDENTIALS_LABEL), "{message}");
            let stripped = usable(&rp, labels.as_ref());
            assert!(!smarthost_volume(&stripped), "{expected}: mounted");
            let config =
                crate::render::config::runtime_config(&fixtures::domain(), &[], Some(&stripped));
            let rendered = config.relay.route.smarthost.expect("smarthost kept");
            assert!(rendered.username_file.is_none() && rendered.password_file.is_none());
        }
    }

    #[test]
    fn credentials_are_never_used_without_tls() {
        let mut rp = fixtures::relay();
        let host = rp.spec.route.smarthost.as_mut().expect("smarthost");
        host.tls = SmarthostTls::None;
        let (got, _) = refusal(host, Some(&labelled())).expect("refused");
        assert_eq!(got, reason::CREDENTIALS_NEED_TLS);
        assert!(!smarthost_volume(&usable(&rp, Some(&labelled()))));
    }
}
