//! Which Mailboxes each domain has and each Secret or ConfigMap serves, kept from the Mailbox
//! watch: a change finds the Mailboxes it concerns without a pass over all of them (with
//! 10,000 Mailboxes and their 10,000 Secrets created at once, those passes were 10^8 checks and
//! most of the operator's time).
use std::{
    collections::{BTreeSet, HashMap, HashSet},
    sync::Mutex,
};

use kube::{
    ResourceExt,
    runtime::{reflector::ObjectRef, watcher},
};
use kubemail_crds::Mailbox;

use super::domain_of;

/// What a Mailbox refers to, in its namespace.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Key {
    /// Its domain (lowercase): `Key::Domain(namespace, domain)`.
    Domain(String, String),
    /// A Secret it reads, by namespace and name.
    Secret(String, String),
    /// The ConfigMap of its Sieve script, by namespace and name.
    ConfigMap(String, String),
}

/// See the module's text.
#[derive(Debug, Default)]
pub struct MailboxIndex {
    inner: Mutex<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    /// (namespace, name) of each Mailbox -> what it referred to when last seen.
    refers: HashMap<(String, String), Vec<Key>>,
    /// What is referred to -> the names of the Mailboxes that do (in its namespace).
    users: HashMap<Key, BTreeSet<String>>,
    /// The Mailboxes seen again since a relist began; `None` outside a relist.
    relisted: Option<HashSet<(String, String)>>,
}

impl MailboxIndex {
    /// Takes in one event of the Mailbox watch.
    pub fn observe(&self, event: &watcher::Event<Mailbox>) {
        let mut inner = self.inner.lock().expect("mailbox index");
        match event {
            watcher::Event::Apply(m) => inner.put(m),
            watcher::Event::Delete(m) => inner.remove(&id(m)),
            watcher::Event::Init => inner.relisted = Some(HashSet::new()),
            watcher::Event::InitApply(m) => {
                inner.put(m);
                if let Some(seen) = inner.relisted.as_mut() {
                    seen.insert(id(m));
                }
            }
            watcher::Event::InitDone => {
                // What the relist did not bring back was deleted meanwhile.
                let seen = inner.relisted.take().unwrap_or_default();
                let gone: Vec<(String, String)> = inner
                    .refers
                    .keys()
                    .filter(|k| !seen.contains(*k))
                    .cloned()
                    .collect();
                for k in gone {
                    inner.remove(&k);
                }
            }
        }
    }

    /// The Mailboxes that refer to `key`, sorted by name.
    pub fn users(&self, key: &Key) -> Vec<ObjectRef<Mailbox>> {
        let (Key::Domain(ns, _) | Key::Secret(ns, _) | Key::ConfigMap(ns, _)) = key;
        self.inner
            .lock()
            .expect("mailbox index")
            .users
            .get(key)
            .map(|names| {
                names
                    .iter()
                    .map(|name| ObjectRef::new(name).within(ns))
                    .collect()
            })
            .unwrap_or_default()
    }
}

impl Inner {
    fn put(&mut self, mailbox: &Mailbox) {
        let id = id(mailbox);
        self.remove(&id);
        let keys = keys(mailbox);
        for key in &keys {
            self.users
                .entry(key.clone())
                .or_default()
                .insert(id.1.clone());
        }
        self.refers.insert(id, keys);
    }

    fn remove(&mut self, id: &(String, String)) {
        for key in self.refers.remove(id).unwrap_or_default() {
            if let Some(names) = self.users.get_mut(&key) {
                names.remove(&id.1);
                if names.is_empty() {
                    self.users.remove(&key);
                }
            }
        }
    }
}

fn id(mailbox: &Mailbox) -> (String, String) {
    (mailbox.namespace().unwrap_or_default(), mailbox.name_any())
}

/// What `mailbox` refers to.
fn keys(mailbox: &Mailbox) -> Vec<Key> {
    let ns = mailbox.namespace().unwrap_or_default();
    let mut keys = vec![Key::Domain(
        ns.clone(),
        domain_of(&mailbox.spec.address).to_ascii_lowercase(),
    )];
    for secret in mailbox.secrets_used() {
        keys.push(Key::Secret(ns.clone(), secret.to_string()));
    }
    if let Some(map) = mailbox.config_map_used() {
        keys.push(Key::ConfigMap(ns.clone(), map.to_string()));
    }
    keys
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mailbox(name: &str, address: &str, secret: &str) -> Mailbox {
        serde_json::from_value(serde_json::json!({
            "apiVersion": "kubemail.io/v1alpha1", "kind": "Mailbox",
            "metadata": {"name": name, "namespace": "mail"},
            "spec": {"address": address, "passwordSecretRef": {"name": secret},
                     "appPasswords": [{"name": "phone", "secretRef": {"name": "shared"}}]},
        }))
        .expect("a Mailbox")
    }

    fn secret(name: &str) -> Key {
        Key::Secret("mail".into(), name.into())
    }

    fn names(index: &MailboxIndex, key: &Key) -> Vec<String> {
        index.users(key).into_iter().map(|r| r.name).collect()
    }

    #[test]
    fn a_change_of_what_a_mailbox_refers_to_moves_it_in_the_index() {
        let index = MailboxIndex::default();
        index.observe(&watcher::Event::Apply(mailbox("a", "a@Example.test", "pa")));
        index.observe(&watcher::Event::Apply(mailbox("b", "b@example.test", "pb")));
        let domain = Key::Domain("mail".into(), "example.test".into());
        assert_eq!(names(&index, &domain), ["a", "b"]);
        assert_eq!(names(&index, &secret("shared")), ["a", "b"]);
        // a now reads another Secret and lives in another domain.
        index.observe(&watcher::Event::Apply(mailbox("a", "a@other.test", "pa2")));
        assert!(names(&index, &secret("pa")).is_empty());
        assert_eq!(names(&index, &secret("pa2")), ["a"]);
        assert_eq!(names(&index, &domain), ["b"]);
        index.observe(&watcher::Event::Delete(mailbox(
            "b",
            "b@example.test",
            "pb",
        )));
        assert!(names(&index, &domain).is_empty());
        assert_eq!(names(&index, &secret("shared")), ["a"]);
    }

    #[test]
    fn a_relist_forgets_mailboxes_deleted_while_the_watch_was_away() {
        let index = MailboxIndex::default();
        index.observe(&watcher::Event::Apply(mailbox("a", "a@example.test", "pa")));
        index.observe(&watcher::Event::Apply(mailbox("b", "b@example.test", "pb")));
        index.observe(&watcher::Event::Init);
        index.observe(&watcher::Event::InitApply(mailbox(
            "b",
            "b@example.test",
            "pb",
        )));
        // Until the relist is done, a is still there (an extra reconcile, never a missed one).
        assert_eq!(names(&index, &secret("pa")), ["a"]);
        index.observe(&watcher::Event::InitDone);
        assert!(names(&index, &secret("pa")).is_empty());
        assert_eq!(names(&index, &secret("pb")), ["b"]);
    }
}
