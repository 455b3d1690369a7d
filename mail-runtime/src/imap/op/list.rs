//! LIST and LSUB (RFC 3501), LIST-EXTENDED (RFC 5258) and LIST-STATUS (RFC 5819): folder names,
//! their attributes and special uses, and the pattern matching they share.

use imap_codec::imap_types::mailbox::{ListMailbox, Mailbox};

use crate::imap::{
    list_extended::ExtendedList,
    op::status::status_value,
    session::{Done, Refused, Session, canonical_inbox, store_failure, tagged},
    write,
};
use crate::store::{DEFAULT_FOLDERS, INBOX};

/// A folder's RFC 6154 special use (`\\Sent`), if it is one of the default folders.
fn special_use(name: &str) -> Option<&'static str> {
    DEFAULT_FOLDERS
        .iter()
        .find(|(n, _)| *n == name)
        .map(|(_, s)| *s)
}

/// The attributes of a LIST line: `\\NonExistent` or whether it has children, `\\Subscribed`
/// when `subscribed`, then its special use.
fn list_attributes(name: &str, folders: &[String], subscribed: bool) -> Vec<&'static str> {
    let prefix = format!("{name}/");
    let mut attributes = vec![if !folders.iter().any(|f| f == name) {
        "\\NonExistent"
    } else if folders.iter().any(|f| f.starts_with(&prefix)) {
        "\\HasChildren"
    } else {
        "\\HasNoChildren"
    }];
    if subscribed {
        attributes.push("\\Subscribed");
    }
    attributes.extend(special_use(name));
    attributes
}

/// The folders and every level above them that is no folder itself (`a/b/c` without `a/b`),
/// each once, a level before what it holds.
fn with_parents(folders: &[String]) -> Vec<String> {
    let mut out: Vec<String> = Vec::with_capacity(folders.len());
    let mut seen: std::collections::HashSet<&str> = folders.iter().map(String::as_str).collect();
    let mut missing: Vec<String> = Vec::new();
    for name in folders {
        let mut at = 0;
        while let Some(slash) = name[at..].find('/') {
            let parent = &name[..at + slash];
            if seen.insert(parent) {
                missing.push(parent.to_string());
            }
            at += slash + 1;
        }
    }
    out.extend(missing);
    out.extend(folders.iter().cloned());
    out
}

/// LIST pattern matching: `*` matches anything, `%` anything but the separator. One pass per
/// pattern byte over the name, O(pattern x name): the backtracking way takes exponential time
/// on a pattern such as `*%*%*%...x` (the fuzzer found one that ran for minutes).
pub fn pattern_matches(pattern: &[u8], name: &[u8]) -> bool {
    // reach[j]: the pattern read so far matches name[..j].
    let mut reach = vec![false; name.len() + 1];
    reach[0] = true;
    for &c in pattern {
        match c {
            b'*' => {
                let mut on = false;
                for r in reach.iter_mut() {
                    on |= *r;
                    *r = on;
                }
            }
            b'%' => {
                for j in 1..=name.len() {
                    reach[j] = reach[j] || (reach[j - 1] && name[j - 1] != b'/');
                }
            }
            _ => {
                for j in (1..=name.len()).rev() {
                    reach[j] = reach[j - 1] && name[j - 1] == c;
                }
                reach[0] = false;
            }
        }
        if !reach.contains(&true) {
            return false;
        }
    }
    reach[name.len()]
}

impl Session {
    /// An extended LIST as a command: the same checks before and reports after as the rest.
    pub(in crate::imap) async fn extended_list_command(&mut self, list: ExtendedList) {
        if self.revoked() {
            self.end_revoked();
            return;
        }
        let tag = list.tag.clone();
        let done = self.extended_list(list).await;
        if self.selected.is_some() && !self.closed {
            self.refresh(true).await;
        }
        self.send(tagged(&tag, done));
    }

    /// The mailbox's folders and subscriptions, for LIST and LSUB.
    pub(in crate::imap) async fn folders_and_subscriptions(
        &self,
    ) -> Result<(Vec<String>, Vec<String>), Refused> {
        self.blocking(|s, m| Ok((s.folders(&m)?, s.subscriptions(&m)?)))
            .await
            .map_err(|e| store_failure(&e))
    }

    /// LIST-EXTENDED (RFC 5258) and LIST-STATUS (RFC 5819).
    pub(in crate::imap) async fn extended_list(&mut self, list: ExtendedList) -> Done {
        let (folders, subscribed) = self.folders_and_subscriptions().await?;
        // (name, CHILDINFO SUBSCRIBED): every name once, in the order the patterns find them.
        let mut shown: Vec<(String, bool)> = Vec::new();
        for pattern in &list.patterns {
            if pattern.is_empty() && !list.subscribed {
                self.send("* LIST (\\Noselect) \"/\" \"\"\r\n");
                continue;
            }
            let full = canonical_inbox(&format!("{}{pattern}", list.reference));
            let matches = |name: &str| {
                let name = canonical_inbox(&self.shown(name));
                pattern_matches(full.as_bytes(), name.as_bytes())
            };
            let candidates = if list.subscribed {
                &subscribed
            } else {
                &folders
            };
            for name in candidates {
                if matches(name) && !shown.iter().any(|(n, _)| n == name) {
                    shown.push((name.clone(), false));
                }
            }
            if list.recursive_match {
                // A parent that matches while only a child is subscribed (RFC 5258 s3.5).
                for name in &folders {
                    let prefix = format!("{name}/");
                    let child_subscribed = subscribed.iter().any(|s| s.starts_with(&prefix));
                    if child_subscribed && matches(name) && !shown.iter().any(|(n, _)| n == name) {
                        shown.push((name.clone(), true));
                    }
                }
            }
        }
        for (name, child_info) in shown {
            let exists = folders.contains(&name);
            if list.special_use && special_use(&name).is_none() {
                continue;
            }
            let shows_subscribed =
                (list.subscribed || list.return_subscribed) && subscribed.contains(&name);
            let attributes = list_attributes(&name, &folders, shows_subscribed);
            let mut line = format!("* LIST ({}) \"/\" ", attributes.join(" ")).into_bytes();
            write::string(&mut line, self.shown(&name).as_bytes());
            if child_info {
                line.extend_from_slice(b" (\"CHILDINFO\" (\"SUBSCRIBED\"))");
            }
            line.extend_from_slice(b"\r\n");
            self.send(line);
            // RFC 5819: the STATUS of every selectable name, right after its LIST line.
            if let (Some(items), true) = (&list.status, exists) {
                let folder = name.clone();
                let Ok(index) = self.blocking(move |s, m| s.index(&m, &folder)).await else {
                    continue;
                };
                if items.iter().any(|i| i == "HIGHESTMODSEQ") {
                    self.enable_condstore();
                }
                let values: Vec<String> = items
                    .iter()
                    .filter_map(|i| status_value(&index, i))
                    .collect();
                let mut line = b"* STATUS ".to_vec();
                write::string(&mut line, self.shown(&name).as_bytes());
                line.extend_from_slice(format!(" ({})\r\n", values.join(" ")).as_bytes());
                self.send(line);
            }
        }
        Ok("LIST completed".into())
    }

    pub(in crate::imap) async fn list(
        &mut self,
        reference: &Mailbox<'_>,
        pattern: &ListMailbox<'_>,
        subscribed_only: bool,
    ) -> Done {
        let reference = match reference {
            Mailbox::Inbox => INBOX.to_string(),
            Mailbox::Other(o) => String::from_utf8_lossy(o.as_ref()).into_owned(),
        };
        let pattern = match pattern {
            ListMailbox::Token(t) => String::from_utf8_lossy(t.as_ref()).into_owned(),
            ListMailbox::String(s) => String::from_utf8_lossy(s.as_ref()).into_owned(),
        };
        let command = if subscribed_only { "LSUB" } else { "LIST" };
        if pattern.is_empty() && !subscribed_only {
            self.send("* LIST (\\Noselect) \"/\" \"\"\r\n");
            return Ok("LIST completed".into());
        }
        let full = format!("{reference}{pattern}");
        let (folders, subscribed) = self.folders_and_subscriptions().await?;
        let full = canonical_inbox(&full);
        let names: Vec<String> = if subscribed_only {
            subscribed.clone()
        } else {
            with_parents(&folders)
        };
        for name in &names {
            let shown = self.shown(name);
            if !pattern_matches(full.as_bytes(), canonical_inbox(&shown).as_bytes()) {
                continue;
            }
            let attributes = if subscribed_only || folders.contains(name) {
                list_attributes(name, &folders, false)
            } else if self.rev2 {
                // A level of the hierarchy that is no folder (its parent was deleted, or
                // never made): RFC 9051 s6.3.9 names it so, RFC 3501 with \Noselect.
                vec!["\\NonExistent", "\\HasChildren"]
            } else {
                vec!["\\Noselect", "\\HasChildren"]
            };
            let mut line = format!("* {command} ({}) \"/\" ", attributes.join(" ")).into_bytes();
            write::string(&mut line, shown.as_bytes());
            line.extend_from_slice(b"\r\n");
            self.send(line);
        }
        if subscribed_only && full.contains('%') {
            // RFC 3501 s6.3.9: with `%`, a subscribed `foo/bar` under an unsubscribed `foo`
            // shows as `foo`, flagged \Noselect.
            let mut parents: Vec<String> = Vec::new();
            for name in &subscribed {
                let parts: Vec<&str> = name.split('/').collect();
                for n in 1..parts.len() {
                    let parent = parts[..n].join("/");
                    let shown = subscribed.contains(&parent) || parents.contains(&parent);
                    if !shown
                        && pattern_matches(
                            full.as_bytes(),
                            canonical_inbox(&self.shown(&parent)).as_bytes(),
                        )
                    {
                        parents.push(parent);
                    }
                }
            }
            for parent in parents {
                let mut line = b"* LSUB (\\Noselect) \"/\" ".to_vec();
                write::string(&mut line, self.shown(&parent).as_bytes());
                line.extend_from_slice(b"\r\n");
                self.send(line);
            }
        }
        Ok(format!("{command} completed"))
    }
}

#[cfg(test)]
mod tests {
    use super::pattern_matches;

    #[test]
    fn list_wildcards() {
        assert!(pattern_matches(b"*", b"Sent/2024"));
        assert!(pattern_matches(b"%", b"Sent"));
        assert!(!pattern_matches(b"%", b"Sent/2024"));
        assert!(pattern_matches(b"Sent/%", b"Sent/2024"));
        assert!(pattern_matches(b"INBOX", b"INBOX"));
        assert!(!pattern_matches(b"Sent", b"Sent/2024"));
    }

    /// The plain recursive definition, as the reference.
    fn reference(pattern: &[u8], name: &[u8]) -> bool {
        match pattern.split_first() {
            None => name.is_empty(),
            Some((b'*', rest)) => (0..=name.len()).any(|i| reference(rest, &name[i..])),
            Some((b'%', rest)) => (0..=name.len())
                .take_while(|i| *i == 0 || name[i - 1] != b'/')
                .any(|i| reference(rest, &name[i..])),
            Some((c, rest)) => name
                .split_first()
                .is_some_and(|(n, tail)| n == c && reference(rest, tail)),
        }
    }

    #[test]
    fn wildcards_agree_with_the_definition_on_every_short_input() {
        // Every pattern of up to 4 bytes over {a, /, *, %} against every name of up to 4 bytes
        // over {a, b, /}.
        fn all(alphabet: &[u8], max: usize) -> Vec<Vec<u8>> {
            let mut out = vec![Vec::new()];
            let mut last = vec![Vec::new()];
            for _ in 0..max {
                last = last
                    .iter()
                    .flat_map(|w: &Vec<u8>| {
                        alphabet.iter().map(move |c| {
                            let mut w = w.clone();
                            w.push(*c);
                            w
                        })
                    })
                    .collect();
                out.extend(last.iter().cloned());
            }
            out
        }
        for pattern in all(b"a/*%", 4) {
            for name in all(b"ab/", 4) {
                assert_eq!(
                    pattern_matches(&pattern, &name),
                    reference(&pattern, &name),
                    "{:?} against {:?}",
                    String::from_utf8_lossy(&pattern),
                    String::from_utf8_lossy(&name)
                );
            }
        }
    }

    #[test]
    fn a_pattern_made_to_backtrack_answers_at_once() {
        let pattern = [&b"*%".repeat(2_000)[..], b"x"].concat();
        let name = b"a".repeat(250);
        let start = std::time::Instant::now();
        assert!(!pattern_matches(&pattern, &name));
        assert!(pattern_matches(&pattern, &[&name[..], b"x"].concat()));
        assert!(start.elapsed() < std::time::Duration::from_secs(2));
    }
}
