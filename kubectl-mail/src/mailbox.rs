//! Mailboxes and their passwords: `add`, `passwd` and `app-password add|revoke|list`. A
//! password is generated here, written into a Secret the user owns, and printed once; the
//! operator hands the runtime only its hash.
use std::io::Write;

use anyhow::{Context as _, bail};
use k8s_openapi::api::core::v1::Secret;
use kube::{
    Api, Client, ResourceExt,
    api::{DeleteParams, ObjectMeta, Patch, PatchParams, PostParams},
};
use kubemail_crds::{
    Mailbox, MailboxSpec, SecretKeyRef,
    mailbox::{AppPassword, MailboxProtocol},
};

/// The label on the Secrets this plugin creates.
const MANAGED_BY: (&str, &str) = ("app.kubernetes.io/managed-by", "kubectl-mail");
/// The label naming the app password a Secret holds.
const APP_PASSWORD_LABEL: &str = "kubemail.io/app-password";

/// A new password: 24 letters and digits (about 143 bits).
pub fn generate_password() -> String {
    use rand::{Rng, distr::Alphanumeric};
    rand::rng()
        .sample_iter(&Alphanumeric)
        .take(24)
        .map(char::from)
        .collect()
}

/// A Kubernetes object name made from an address's local part: lowercase letters, digits and
/// '-', at most 63 characters; `None` when nothing usable is left.
pub fn name_from_address(address: &str) -> Option<String> {
    let local = address.rsplit_once('@').map_or(address, |(l, _)| l);
    let mut name = String::new();
    for c in local.chars().map(|c| c.to_ascii_lowercase()) {
        let c = if c.is_ascii_lowercase() || c.is_ascii_digit() {
            c
        } else {
            '-'
        };
        if !(c == '-' && (name.is_empty() || name.ends_with('-'))) {
            name.push(c);
        }
    }
    let name: String = name.trim_end_matches('-').chars().take(63).collect();
    let name = name.trim_end_matches('-').to_string();
    (!name.is_empty()).then_some(name)
}

/// What `add` creates.
#[derive(Debug)]
pub struct New {
    pub address: String,
    pub name: Option<String>,
    pub quota: Option<String>,
    pub display_name: Option<String>,
}

/// A password Secret made by this plugin (labelled so), holding `password` at `key`.
pub fn secret(ns: &str, name: &str, labels: &[(&str, &str)], key: &str, password: &str) -> Secret {
    Secret {
        metadata: ObjectMeta {
            name: Some(name.to_string()),
            namespace: Some(ns.to_string()),
            labels: Some(
                std::iter::once(MANAGED_BY)
                    .chain(labels.iter().copied())
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect(),
            ),
            ..ObjectMeta::default()
        },
        type_: Some("Opaque".into()),
        string_data: Some([(key.to_string(), password.to_string())].into()),
        ..Secret::default()
    }
}

/// The Mailbox with this address in `ns` (case-insensitively), or an error naming it.
async fn find(client: &Client, ns: &str, address: &str) -> anyhow::Result<Mailbox> {
    let list = Api::<Mailbox>::namespaced(client.clone(), ns)
        .list(&Default::default())
        .await
        .context("listing Mailboxes")?;
    list.items
        .into_iter()
        .find(|m| m.spec.address.eq_ignore_ascii_case(address))
        .with_context(|| format!("no Mailbox in namespace {ns} has the address {address}"))
}

/// `kubectl mail add`.
pub async fn add(client: &Client, ns: &str, new: New, out: &mut impl Write) -> anyhow::Result<()> {
    let name = match new.name.clone() {
        Some(name) => name,
        None => name_from_address(&new.address).with_context(|| {
            format!(
                "no name can be made from {:?}: give one with --name",
                new.address
            )
        })?,
    };
    let mailboxes = Api::<Mailbox>::namespaced(client.clone(), ns);
    if let Ok(existing) = find(client, ns, &new.address).await {
        bail!(
            "Mailbox {} in namespace {ns} already has the address {}",
            existing.name_any(),
            new.address
        );
    }
    if mailboxes.get_opt(&name).await?.is_some() {
        bail!("a Mailbox named {name} exists in namespace {ns}: choose another with --name");
    }
    let secret_name = format!("{name}-password");
    let secrets = Api::<Secret>::namespaced(client.clone(), ns);
    if secrets.get_metadata_opt(&secret_name).await?.is_some() {
        bail!("a Secret named {secret_name} exists in namespace {ns}: choose another --name");
    }
    let password = generate_password();
    // The Mailbox first: the API server checks the address and the quota, and nothing is left
    // behind when it refuses them.
    let mut spec: MailboxSpec = serde_json::from_value(serde_json::json!({
        "address": new.address,
        "passwordSecretRef": {"name": secret_name},
    }))
    .context("building the Mailbox")?;
    spec.quota = new.quota;
    spec.display_name = new.display_name;
    let mailbox = Mailbox::new(&name, spec);
    mailboxes
        .create(&PostParams::default(), &mailbox)
        .await
        .context("creating the Mailbox")?;
    let created = secret(
        ns,
        &secret_name,
        &[("kubemail.io/mailbox", &name)],
        "password",
        &password,
    );
    if let Err(err) = secrets.create(&PostParams::default(), &created).await {
        let _ = mailboxes.delete(&name, &DeleteParams::default()).await;
        return Err(err).context("creating the password Secret");
    }
    writeln!(
        out,
        "Mailbox {name} created for {} (namespace {ns}), password in Secret {secret_name}.\n\
         Password (shown only now): {password}",
        mailbox.spec.address
    )?;
    Ok(())
}

/// `kubectl mail passwd`.
pub async fn passwd(
    client: &Client,
    ns: &str,
    address: &str,
    from_stdin: bool,
    out: &mut impl Write,
) -> anyhow::Result<()> {
    let mailbox = find(client, ns, address).await?;
    let password = if from_stdin {
        let mut line = String::new();
        std::io::stdin()
            .read_line(&mut line)
            .context("reading the password from stdin")?;
        let line = line.trim_end_matches(['\r', '\n']).to_string();
        if line.is_empty() {
            bail!("the password on stdin is empty");
        }
        line
    } else {
        generate_password()
    };
    let reference = &mailbox.spec.password_secret_ref;
    write_password(client, ns, reference, &mailbox.name_any(), &password).await?;
    if from_stdin {
        writeln!(
            out,
            "The password of {address} is changed (Secret {}).",
            reference.name
        )?;
    } else {
        writeln!(
            out,
            "The password of {address} is changed (Secret {}); sessions opened with the old one end.\n\
             Password (shown only now): {password}",
            reference.name
        )?;
    }
    Ok(())
}

/// Writes `password` at `reference`, creating the Secret when it does not exist.
async fn write_password(
    client: &Client,
    ns: &str,
    reference: &SecretKeyRef,
    mailbox: &str,
    password: &str,
) -> anyhow::Result<()> {
    let secrets = Api::<Secret>::namespaced(client.clone(), ns);
    if secrets.get_metadata_opt(&reference.name).await?.is_none() {
        let created = secret(
            ns,
            &reference.name,
            &[("kubemail.io/mailbox", mailbox)],
            &reference.key,
            password,
        );
        secrets
            .create(&PostParams::default(), &created)
            .await
            .with_context(|| format!("creating Secret {}", reference.name))?;
        return Ok(());
    }
    let patch = serde_json::json!({"stringData": {reference.key.clone(): password}});
    secrets
        .patch(
            &reference.name,
            &PatchParams::default(),
            &Patch::Merge(&patch),
        )
        .await
        .with_context(|| format!("writing Secret {}", reference.name))?;
    Ok(())
}

/// `kubectl mail app-password add`.
pub async fn app_password_add(
    client: &Client,
    ns: &str,
    address: &str,
    name: &str,
    protocols: Vec<MailboxProtocol>,
    out: &mut impl Write,
) -> anyhow::Result<()> {
    let mailbox = find(client, ns, address).await?;
    if mailbox.spec.app_passwords.iter().any(|a| a.name == name) {
        bail!("{address} already has an app password named {name}: revoke it first");
    }
    let secret_name = format!("{}-app-{name}", mailbox.name_any());
    let secrets = Api::<Secret>::namespaced(client.clone(), ns);
    if secrets.get_metadata_opt(&secret_name).await?.is_some() {
        bail!("a Secret named {secret_name} exists in namespace {ns}");
    }
    let protocols = if protocols.is_empty() {
        vec![
            MailboxProtocol::Smtp,
            MailboxProtocol::Imap,
            MailboxProtocol::Pop3,
        ]
    } else {
        protocols
    };
    let entry = AppPassword {
        name: name.to_string(),
        secret_ref: SecretKeyRef {
            name: secret_name.clone(),
            key: "password".into(),
        },
        protocols: protocols.clone(),
    };
    let password = generate_password();
    let created = secret(
        ns,
        &secret_name,
        &[
            ("kubemail.io/mailbox", &mailbox.name_any()),
            (APP_PASSWORD_LABEL, name),
        ],
        "password",
        &password,
    );
    // The Secret first: the operator serves the entry as soon as it sees both.
    secrets
        .create(&PostParams::default(), &created)
        .await
        .context("creating the app password's Secret")?;
    // A JSON patch that appends, guarded by the list it read: an entry added meanwhile by
    // someone else is not overwritten (the patch then fails and says so).
    let patch = if mailbox.spec.app_passwords.is_empty() {
        serde_json::json!([
            {"op": "test", "path": "/metadata/resourceVersion", "value": mailbox.resource_version()},
            {"op": "add", "path": "/spec/appPasswords", "value": [entry]},
        ])
    } else {
        serde_json::json!([
            {"op": "test", "path": "/metadata/resourceVersion", "value": mailbox.resource_version()},
            {"op": "add", "path": "/spec/appPasswords/-", "value": entry},
        ])
    };
    let patched = Api::<Mailbox>::namespaced(client.clone(), ns)
        .patch(
            &mailbox.name_any(),
            &PatchParams::default(),
            &Patch::Json::<()>(serde_json::from_value(patch)?),
        )
        .await;
    if let Err(err) = patched {
        let _ = secrets.delete(&secret_name, &DeleteParams::default()).await;
        return Err(err).context("adding the app password to the Mailbox");
    }
    let names: Vec<&str> = protocols.iter().map(protocol_name).collect();
    writeln!(
        out,
        "App password {name} added to {address} for {} (Secret {secret_name}).\n\
         Password (shown only now): {password}",
        names.join(", ")
    )?;
    Ok(())
}

fn protocol_name(p: &MailboxProtocol) -> &'static str {
    match p {
        MailboxProtocol::Smtp => "SMTP",
        MailboxProtocol::Imap => "IMAP",
        MailboxProtocol::Pop3 => "POP3",
    }
}

/// `kubectl mail app-password revoke`.
pub async fn app_password_revoke(
    client: &Client,
    ns: &str,
    address: &str,
    name: &str,
    out: &mut impl Write,
) -> anyhow::Result<()> {
    let mailbox = find(client, ns, address).await?;
    let Some(index) = mailbox
        .spec
        .app_passwords
        .iter()
        .position(|a| a.name == name)
    else {
        bail!("{address} has no app password named {name}");
    };
    let entry = &mailbox.spec.app_passwords[index];
    // Removes exactly the entry read, even if the list changed since.
    let patch = serde_json::json!([
        {"op": "test", "path": format!("/spec/appPasswords/{index}/name"), "value": name},
        {"op": "remove", "path": format!("/spec/appPasswords/{index}")},
    ]);
    Api::<Mailbox>::namespaced(client.clone(), ns)
        .patch(
            &mailbox.name_any(),
            &PatchParams::default(),
            &Patch::Json::<()>(serde_json::from_value(patch)?),
        )
        .await
        .context("removing the app password from the Mailbox")?;
    // Its Secret goes too when this plugin made it for this app password; a Secret the user
    // made stays theirs.
    let secrets = Api::<Secret>::namespaced(client.clone(), ns);
    let ours = secrets
        .get_metadata_opt(&entry.secret_ref.name)
        .await?
        .is_some_and(|s| {
            let labels = s.labels();
            labels.get(MANAGED_BY.0).map(String::as_str) == Some(MANAGED_BY.1)
                && labels.get(APP_PASSWORD_LABEL).map(String::as_str) == Some(name)
        });
    if ours {
        secrets
            .delete(&entry.secret_ref.name, &DeleteParams::default())
            .await
            .context("deleting the app password's Secret")?;
    }
    writeln!(
        out,
        "App password {name} of {address} revoked: sessions opened with it end within seconds.{}",
        if ours {
            format!(" Secret {} deleted.", entry.secret_ref.name)
        } else {
            format!(
                " Secret {} was not made by kubectl mail and is left as it is.",
                entry.secret_ref.name
            )
        }
    )?;
    Ok(())
}

/// `kubectl mail app-password list`.
pub async fn app_password_list(
    client: &Client,
    ns: &str,
    address: &str,
    out: &mut impl Write,
) -> anyhow::Result<()> {
    let mailbox = find(client, ns, address).await?;
    if mailbox.spec.app_passwords.is_empty() {
        writeln!(out, "{address} has no app passwords.")?;
        return Ok(());
    }
    let missing = mailbox
        .status
        .as_ref()
        .and_then(|s| s.conditions.iter().find(|c| c.type_ == "AppPasswordsFound"))
        .filter(|c| c.status != "True")
        .map(|c| c.message.clone())
        .unwrap_or_default();
    let rows: Vec<[String; 4]> = mailbox
        .spec
        .app_passwords
        .iter()
        .map(|a| {
            let protocols: Vec<&str> = a.protocols.iter().map(protocol_name).collect();
            let state = if missing.contains(&format!("{}:", a.name)) {
                "Secret missing"
            } else {
                "served"
            };
            [
                a.name.clone(),
                protocols.join(","),
                a.secret_ref.name.clone(),
                state.to_string(),
            ]
        })
        .collect();
    crate::status::table(out, &["NAME", "PROTOCOLS", "SECRET", "STATE"], &rows)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_made_from_addresses_as_kubernetes_allows() {
        assert_eq!(
            name_from_address("alice@example.com").as_deref(),
            Some("alice")
        );
        assert_eq!(
            name_from_address("Jane.Doe+tag@example.com").as_deref(),
            Some("jane-doe-tag")
        );
        assert_eq!(
            name_from_address("_x__y_@example.com").as_deref(),
            Some("x-y")
        );
        assert_eq!(name_from_address("...@example.com"), None);
        let long = format!("{}@example.com", "a".repeat(100));
        assert_eq!(name_from_address(&long).map(|n| n.len()), Some(63));
    }

    #[test]
    fn generated_passwords_are_long_and_differ() {
        let a = generate_password();
        assert_eq!(a.len(), 24);
        assert!(a.chars().all(|c| c.is_ascii_alphanumeric()));
        assert_ne!(a, generate_password());
    }
}
