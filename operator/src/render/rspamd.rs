//! Whether a MailDomain's rspamd controller password may reach the runtime. A MailDomain can
//! name any Secret of its namespace, and the runtime sends what it is given to the controller
//! the MailDomain names; so a Secret is used only when it says it is meant for that (the label
//! [`RSPAMD_PASSWORD_LABEL`]), as with smarthost credentials.
//!
//! Pure: the spec and the Secret's labels in, a verdict out.
use std::collections::BTreeMap;

use kubemail_crds::{
    MailDomain,
    mail_domain::{RSPAMD_PASSWORD_LABEL, RspamdSpec},
};

use crate::conditions::reason;

/// Why the controller password may not be used: a condition reason and a message that says
/// what to do. `labels`: the Secret's labels, `None` when it does not exist.
pub fn refusal(
    rspamd: &RspamdSpec,
    labels: Option<&BTreeMap<String, String>>,
) -> Option<(&'static str, String)> {
    let secret = rspamd.controller_password_secret_ref.as_ref()?;
    let Some(labels) = labels else {
        return Some((
            reason::SECRET_NOT_FOUND,
            format!(
                "rspamd learns nothing: Secret {} (key {}, label {RSPAMD_PASSWORD_LABEL}: \"true\") \
                 does not exist yet",
                secret.name, secret.key
            ),
        ));
    };
    if labels.get(RSPAMD_PASSWORD_LABEL).map(String::as_str) != Some("true") {
        return Some((
            reason::SECRET_NOT_LABELLED,
            format!(
                "rspamd learns nothing: Secret {name} is not sent to the controller until it has \
                 the label {RSPAMD_PASSWORD_LABEL}: \"true\" (kubectl label secret {name} \
                 {RSPAMD_PASSWORD_LABEL}=true)",
                name = secret.name
            ),
        ));
    }
    None
}

/// The domain as the runtime may see it: its rspamd controller password left out unless
/// [`refusal`] finds nothing against it. Nothing of a refused Secret is mounted or rendered.
pub fn usable(md: &MailDomain, labels: Option<&BTreeMap<String, String>>) -> MailDomain {
    let mut md = md.clone();
    if let Some(rspamd) = md.spec.inbound.rspamd.as_mut()
        && refusal(rspamd, labels).is_some()
    {
        rspamd.controller_password_secret_ref = None;
    }
    md
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::render::{config, fixtures, objects};

    fn with_password() -> MailDomain {
        let mut md = fixtures::domain();
        md.spec.inbound.rspamd = Some(
            serde_json::from_value(serde_json::json!({
                "url": "http://rspamd.mail.svc:11333",
                "controllerUrl": "http://rspamd.mail.svc:11334",
                "controllerPasswordSecretRef": {"name": "rspamd-learn"},
            }))
            .expect("spec"),
        );
        md
    }

    /// The password file the runtime is told about, and whether the pod mounts the Secret.
    fn rendered(md: &MailDomain) -> (Option<std::path::PathBuf>, bool) {
        let c = config::runtime_config(md, &[], None);
        let file = c.inbound.rspamd.and_then(|r| r.controller_password_file);
        let deployment = objects::deployment(md, None, &fixtures::runtime_options());
        let mounted = deployment
            .spec
            .template
            .spec
            .and_then(|s| s.volumes)
            .unwrap_or_default()
            .iter()
            .any(|v| {
                v.secret.as_ref().and_then(|s| s.secret_name.as_deref()) == Some("rspamd-learn")
            });
        (file, mounted)
    }

    #[test]
    fn only_a_labelled_secret_reaches_the_runtime() {
        let md = with_password();
        let labelled = BTreeMap::from([(RSPAMD_PASSWORD_LABEL.to_string(), "true".to_string())]);
        let unlabelled = BTreeMap::new();
        let rspamd = md.spec.inbound.rspamd.as_ref().expect("rspamd");

        assert_eq!(refusal(rspamd, Some(&labelled)), None);
        let (file, mounted) = rendered(&usable(&md, Some(&labelled)));
        assert_eq!(file, Some("/etc/kubemail/rspamd/password".into()));
        assert!(mounted);

        for labels in [None, Some(&unlabelled)] {
            let (why, message) = refusal(rspamd, labels).expect("refused");
            assert!(message.contains("rspamd-learn"), "{message}");
            assert!(
                [reason::SECRET_NOT_FOUND, reason::SECRET_NOT_LABELLED].contains(&why),
                "{why}"
            );
            assert_eq!(rendered(&usable(&md, labels)), (None, false));
        }
    }
}
