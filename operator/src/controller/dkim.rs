//! DKIM keys and their rotation. A domain's keys live in its `<name>-dkim` Secret, one file
//! per key; annotations say which one signs (`active`), which is published ahead of use
//! (`next`) and which was retired and stays published a while (`previous`).
//!
//! A rotation starts when `spec.dkim.selector` changes: a new key is made under the new
//! selector and its record joins `status.dnsRecords` (and the DNSEndpoint) beside the old one.
//! Once the record has been out for the records' TTL (and, with DNS checks on, `DNSVerified`
//! is True, so it resolves), the runtime signs with the new key; the old record stays
//! published for [`RETIRED_FOR`], for mail signed with it still on its way, then goes with its
//! key. The runtime's key file changes name with the key, so the config that names the new
//! selector never meets the old key (or the reverse) while the kubelet updates its volumes.
use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::Secret;
use kube::{
    Api,
    api::{Patch, PatchParams},
};
use kubemail_crds::MailDomain;

use crate::{
    error::{Error, Result},
    keys,
    render::{Names, objects},
};

/// How long a retired key's record stays published.
pub const RETIRED_FOR: i64 = 7 * 86_400;

/// The key of the first selector (the Secret's only key before rotations existed).
const FIRST_FILE: &str = "private.pem";

const ACTIVE: &str = "kubemail.io/dkim-active";
const NEXT: &str = "kubemail.io/dkim-next";
const PREVIOUS: &str = "kubemail.io/dkim-previous";

/// One key: its selector, its file in the Secret, and when it last changed role (Unix seconds:
/// published for `next`, retired for `previous`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Key {
    pub selector: String,
    pub file: String,
    pub since: i64,
}

impl Key {
    fn parse(text: &str) -> Option<Key> {
        let mut parts = text.split_whitespace();
        Some(Key {
            selector: parts.next()?.to_string(),
            file: parts.next()?.to_string(),
            since: parts.next().and_then(|s| s.parse().ok()).unwrap_or(0),
        })
    }

    fn render(&self) -> String {
        format!("{} {} {}", self.selector, self.file, self.since)
    }
}

/// A domain's keys as its Secret's annotations say.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Keys {
    pub active: Key,
    pub next: Option<Key>,
    pub previous: Option<Key>,
}

impl Keys {
    /// From a Secret's annotations; a Secret made before rotations existed holds the key of
    /// `selector` (the spec's) in `private.pem`.
    pub fn of(annotations: &BTreeMap<String, String>, selector: &str) -> Keys {
        Keys {
            active: annotations
                .get(ACTIVE)
                .and_then(|a| Key::parse(a))
                .unwrap_or_else(|| Key {
                    selector: selector.into(),
                    file: FIRST_FILE.into(),
                    since: 0,
                }),
            next: annotations.get(NEXT).and_then(|a| Key::parse(a)),
            previous: annotations.get(PREVIOUS).and_then(|a| Key::parse(a)),
        }
    }

    fn annotate(&self, annotations: &mut BTreeMap<String, String>) {
        annotations.insert(ACTIVE.into(), self.active.render());
        for (name, key) in [(NEXT, &self.next), (PREVIOUS, &self.previous)] {
            match key {
                Some(key) => annotations.insert(name.into(), key.render()),
                None => annotations.remove(name),
            };
        }
    }
}

/// What to do with a domain's keys now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// Nothing.
    Keep,
    /// Make a key for this selector and publish it beside the active one.
    Publish(String),
    /// Sign with the published key; the active one retires.
    Switch,
    /// Forget the published key (the spec went back to the active selector).
    Unpublish,
    /// The retired key's time is over: forget it.
    Forget,
}

/// The next step of a rotation towards `selector`. `ttl`: how long published records are
/// cached; `resolves`: whether the published records were seen in DNS (true when nobody
/// checks).
pub fn step(keys: &Keys, selector: &str, ttl: i64, resolves: bool, now: i64) -> Step {
    if let Some(previous) = &keys.previous
        && now - previous.since >= RETIRED_FOR
    {
        return Step::Forget;
    }
    if keys.active.selector == selector {
        return match keys.next {
            Some(_) => Step::Unpublish,
            None => Step::Keep,
        };
    }
    // A retired key stays published its whole time: a rotation that would drop it early (or
    // publish its selector again with another key) waits for it to go.
    let retiring = keys.previous.as_ref();
    match &keys.next {
        Some(next) if next.selector == selector => {
            if now - next.since >= ttl && resolves && retiring.is_none() {
                Step::Switch
            } else {
                Step::Keep
            }
        }
        _ if retiring.is_some_and(|p| p.selector == selector) => Step::Keep,
        _ => Step::Publish(selector.into()),
    }
}

/// A domain's DKIM state after this reconcile's step: the key that signs (selector, Secret
/// file, PEM) and every record to publish (selector, DNS value).
#[derive(Debug, Clone, Default)]
pub struct Published {
    pub signing: Option<(String, String, String)>,
    pub records: Vec<(String, String)>,
}

/// Reads (making it once) the domain's DKIM Secret and takes the rotation's next step.
pub async fn keys(
    md: &MailDomain,
    secrets: &Api<Secret>,
    resolves: bool,
    now: i64,
) -> Result<Published> {
    if !md.spec.dkim.enabled {
        return Ok(Published::default());
    }
    let names = Names::of(md);
    let selector = &md.spec.dkim.selector;
    let mut secret = match secrets.get_opt(&names.dkim).await? {
        Some(secret) => secret,
        None => {
            let key = new_key(md).await?;
            let mut made =
                objects::pem_secret(md, &names.dkim, "Opaque", &[(FIRST_FILE, &key.private_pem)]);
            let keys = Keys::of(&BTreeMap::new(), selector);
            keys.annotate(made.metadata.annotations.get_or_insert_with(BTreeMap::new));
            super::mail_domain::create_once(secrets, made).await?
        }
    };
    let annotations = secret.metadata.annotations.clone().unwrap_or_default();
    let mut keys = Keys::of(&annotations, selector);
    // The files written (Some) or removed (None) by this step.
    let mut files: BTreeMap<String, Option<String>> = BTreeMap::new();
    let ttl = md.spec.dns.ttl;
    let changed = match step(&keys, selector, ttl, resolves, now) {
        Step::Keep => !annotations.contains_key(ACTIVE),
        Step::Publish(selector) => {
            if let Some(stale) = keys.next.take() {
                files.insert(stale.file, None);
            }
            // Named by selector and time: never the file of a key still in use (the first
            // key's `private.pem` included).
            let file = format!("{selector}-{now}.pem");
            let key = new_key(md).await?;
            files.insert(file.clone(), Some(key.private_pem));
            keys.next = Some(Key {
                selector,
                file,
                since: now,
            });
            true
        }
        Step::Switch => {
            if let Some(old) = keys.previous.take() {
                files.insert(old.file, None);
            }
            let next = keys.next.take().ok_or(Error::Incomplete("next DKIM key"))?;
            let mut retired = std::mem::replace(&mut keys.active, next);
            retired.since = now;
            keys.previous = Some(retired);
            true
        }
        Step::Unpublish => {
            if let Some(next) = keys.next.take() {
                files.insert(next.file, None);
            }
            true
        }
        Step::Forget => {
            if let Some(old) = keys.previous.take()
                && old.file != keys.active.file
            {
                files.insert(old.file, None);
            }
            true
        }
    };
    if changed {
        let mut annotated = BTreeMap::new();
        keys.annotate(&mut annotated);
        let annotations: serde_json::Map<String, serde_json::Value> = [ACTIVE, NEXT, PREVIOUS]
            .iter()
            .map(|k| {
                (
                    k.to_string(),
                    annotated
                        .get(*k)
                        .map_or(serde_json::Value::Null, |v| v.clone().into()),
                )
            })
            .collect();
        use base64::Engine as _;
        let data: serde_json::Map<String, serde_json::Value> = files
            .into_iter()
            .map(|(file, pem)| {
                let value = pem.map_or(serde_json::Value::Null, |p| {
                    base64::engine::general_purpose::STANDARD.encode(p).into()
                });
                (file, value)
            })
            .collect();
        // With the resourceVersion read: a concurrent change fails this reconcile (retried)
        // rather than losing a key.
        let patch = serde_json::json!({
            "metadata": {
                "resourceVersion": secret.metadata.resource_version,
                "annotations": annotations,
            },
            "data": data,
        });
        secret = secrets
            .patch(&names.dkim, &PatchParams::default(), &Patch::Merge(&patch))
            .await?;
    }
    let data = secret.data.unwrap_or_default();
    let pem = |file: &str| {
        data.get(file)
            .map(|p| String::from_utf8_lossy(&p.0).into_owned())
    };
    let mut published = Published::default();
    if let Some(active) = pem(&keys.active.file) {
        published
            .records
            .extend(keys::dkim_dns_value(&active).map(|v| (keys.active.selector.clone(), v)));
        published.signing = Some((
            keys.active.selector.clone(),
            keys.active.file.clone(),
            active,
        ));
    }
    for key in keys.next.iter().chain(&keys.previous) {
        if let Some(value) = pem(&key.file).and_then(|p| keys::dkim_dns_value(&p)) {
            published.records.push((key.selector.clone(), value));
        }
    }
    Ok(published)
}

async fn new_key(md: &MailDomain) -> Result<keys::DkimKey> {
    let algorithm = md.spec.dkim.algorithm;
    tokio::task::spawn_blocking(move || keys::new_dkim_key(algorithm))
        .await
        .map_err(|e| Error::Keys(e.into()))?
        .map_err(|e| Error::Keys(e.into()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(selector: &str, since: i64) -> Key {
        Key {
            selector: selector.into(),
            file: format!("{selector}.pem"),
            since,
        }
    }

    #[test]
    fn a_rotation_publishes_first_switches_after_the_ttl_and_forgets_later() {
        let mut keys = Keys::of(&BTreeMap::new(), "kubemail");
        assert_eq!(keys.active.file, "private.pem");
        assert_eq!(step(&keys, "kubemail", 3600, true, 1000), Step::Keep);
        assert_eq!(
            step(&keys, "k2", 3600, true, 1000),
            Step::Publish("k2".into())
        );
        keys.next = Some(key("k2", 1000));
        assert_eq!(
            step(&keys, "k2", 3600, true, 4599),
            Step::Keep,
            "before the TTL"
        );
        assert_eq!(
            step(&keys, "k2", 3600, false, 9999),
            Step::Keep,
            "not resolving"
        );
        assert_eq!(step(&keys, "k2", 3600, true, 4600), Step::Switch);
        // The spec changed again mid-way: a key for the newest selector replaces it.
        assert_eq!(
            step(&keys, "k3", 3600, true, 4600),
            Step::Publish("k3".into())
        );
        // Back to the active selector: the published key goes.
        assert_eq!(step(&keys, "kubemail", 3600, true, 4600), Step::Unpublish);
        keys.previous = Some(key("k1", 5000));
        keys.next = None;
        assert_eq!(
            step(&keys, "kubemail", 60, true, 5000 + RETIRED_FOR - 1),
            Step::Keep
        );
        assert_eq!(
            step(&keys, "kubemail", 60, true, 5000 + RETIRED_FOR),
            Step::Forget
        );
        // A second rotation publishes at once but switches only once the retired key went;
        // the retired selector itself comes back only then.
        keys.next = Some(key("k4", 5000));
        assert_eq!(step(&keys, "k4", 60, true, 9000), Step::Keep);
        assert_eq!(step(&keys, "k1", 60, true, 9000), Step::Keep);
        keys.previous = None;
        assert_eq!(step(&keys, "k4", 60, true, 9000), Step::Switch);
    }

    #[test]
    fn annotations_round_trip() {
        let keys = Keys {
            active: key("a", 0),
            next: Some(key("b", 7)),
            previous: None,
        };
        let mut annotations = BTreeMap::from([(PREVIOUS.to_string(), "x x 1".to_string())]);
        keys.annotate(&mut annotations);
        assert!(!annotations.contains_key(PREVIOUS));
        assert_eq!(Keys::of(&annotations, "ignored"), keys);
    }
}
