//! The selected folder as one session sees it: the messages by sequence number, and what to
//! tell the client when the folder changed under it (RFC 9051 section 7.4: EXISTS, EXPUNGE and
//! FETCH FLAGS for changes made by other sessions or by delivery).
use imap_codec::imap_types::sequence::{SeqOrUid, Sequence, SequenceSet};

use super::write;
use crate::store::{FolderIndex, MessageMeta};

/// A selected folder.
#[derive(Debug)]
pub struct Selected {
    /// The folder's name.
    pub folder: String,
    /// EXAMINE: no changes allowed.
    pub read_only: bool,
    /// The folder's UIDVALIDITY.
    pub uid_validity: u32,
    /// The next UID, as last seen.
    pub uid_next: u32,
    /// The messages as the client knows them, by sequence number (index + 1).
    pub messages: Vec<MessageMeta>,
}

/// Inclusive ranges of a sequence set, `*` standing for `largest`, each with `a <= b`.
pub fn ranges(set: &SequenceSet, largest: u32) -> Vec<(u32, u32)> {
    let value = |v: &SeqOrUid| match v {
        SeqOrUid::Value(n) => n.get(),
        SeqOrUid::Asterisk => largest,
    };
    set.0
        .as_ref()
        .iter()
        .map(|s| match s {
            Sequence::Single(v) => (value(v), value(v)),
            Sequence::Range(a, b) => {
                let (a, b) = (value(a), value(b));
                (a.min(b), a.max(b))
            }
        })
        .collect()
}

impl Selected {
    /// A fresh view of a folder.
    pub fn new(folder: String, read_only: bool, index: FolderIndex) -> Self {
        Self {
            folder,
            read_only,
            uid_validity: index.uid_validity,
            uid_next: index.uid_next,
            messages: index.messages,
        }
    }

    /// The largest sequence number and UID.
    pub fn largest(&self) -> (u32, u32) {
        (
            self.messages.len() as u32,
            self.messages.last().map_or(0, |m| m.uid),
        )
    }

    /// Indexes (0-based) of the messages a set names, ascending. Numbers that name nothing are
    /// left out (RFC 9051: a UID set may name UIDs that do not exist).
    pub fn resolve(&self, set: &SequenceSet, uid: bool) -> Result<Vec<usize>, String> {
        let (max_seq, max_uid) = self.largest();
        if uid {
            let ranges = ranges(set, max_uid.max(1));
            Ok(self
                .messages
                .iter()
                .enumerate()
                .filter(|(_, m)| ranges.iter().any(|(a, b)| (*a..=*b).contains(&m.uid)))
                .map(|(i, _)| i)
                .collect())
        } else {
            let ranges = ranges(set, max_seq.max(1));
            if ranges.iter().any(|(_, b)| *b > max_seq) {
                return Err("message sequence number out of range".into());
            }
            let mut out: Vec<usize> = ranges
                .iter()
                .flat_map(|(a, b)| (*a as usize - 1)..(*b as usize))
                .collect();
            out.sort_unstable();
            out.dedup();
            Ok(out)
        }
    }

    /// Brings the view up to date with the folder and writes the untagged responses that say
    /// so. Expunges are held back when `expunges_allowed` is false (during FETCH, STORE and
    /// SEARCH, where they would shift the sequence numbers under the client).
    pub fn refresh(&mut self, fresh: FolderIndex, expunges_allowed: bool, out: &mut Vec<u8>) {
        let current: std::collections::HashMap<u32, &MessageMeta> =
            fresh.messages.iter().map(|m| (m.uid, m)).collect();
        if expunges_allowed {
            for i in (0..self.messages.len()).rev() {
                if !current.contains_key(&self.messages[i].uid) {
                    self.messages.remove(i);
                    out.extend_from_slice(format!("* {} EXPUNGE\r\n", i + 1).as_bytes());
                }
            }
        }
        for (i, m) in self.messages.iter_mut().enumerate() {
            if let Some(now) = current.get(&m.uid)
                && now.flags != m.flags
            {
                out.extend_from_slice(
                    format!(
                        "* {} FETCH (UID {} FLAGS {})\r\n",
                        i + 1,
                        m.uid,
                        write::flags(&now.flags)
                    )
                    .as_bytes(),
                );
                *m = MessageMeta::clone(now);
            } else if let Some(now) = current.get(&m.uid) {
                m.file_name.clone_from(&now.file_name);
            }
        }
        let last = self.messages.last().map_or(0, |m| m.uid);
        let before = self.messages.len();
        self.messages
            .extend(fresh.messages.iter().filter(|m| m.uid > last).cloned());
        if self.messages.len() != before {
            out.extend_from_slice(format!("* {} EXISTS\r\n", self.messages.len()).as_bytes());
        }
        self.uid_next = self.uid_next.max(fresh.uid_next);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta(uid: u32, flags: &str) -> MessageMeta {
        MessageMeta {
            uid,
            size: 10,
            flags: flags.into(),
            internal_date: 0,
            file_name: format!("{uid}"),
        }
    }

    fn index(messages: Vec<MessageMeta>) -> FolderIndex {
        FolderIndex {
            uid_validity: 1,
            uid_next: messages.last().map_or(1, |m| m.uid + 1),
            messages,
        }
    }

    #[test]
    fn another_sessions_changes_become_untagged_responses() {
        let mut view = Selected::new(
            "INBOX".into(),
            false,
            index(vec![meta(1, ""), meta(2, ""), meta(3, "")]),
        );
        let mut out = Vec::new();
        view.refresh(
            index(vec![meta(1, "S"), meta(3, ""), meta(4, "")]),
            true,
            &mut out,
        );
        assert_eq!(
            String::from_utf8(out).expect("ascii"),
            "* 2 EXPUNGE\r\n* 1 FETCH (UID 1 FLAGS (\\Seen))\r\n* 3 EXISTS\r\n"
        );
        assert_eq!(
            view.messages.iter().map(|m| m.uid).collect::<Vec<_>>(),
            [1, 3, 4]
        );
    }

    #[test]
    fn expunges_wait_when_not_allowed() {
        let mut view = Selected::new("INBOX".into(), false, index(vec![meta(1, ""), meta(2, "")]));
        let mut out = Vec::new();
        view.refresh(index(vec![meta(2, "")]), false, &mut out);
        assert!(out.is_empty());
        assert_eq!(view.messages.len(), 2);
    }

    #[test]
    fn sets_resolve_to_existing_messages() {
        let view = Selected::new(
            "INBOX".into(),
            false,
            index(vec![meta(3, ""), meta(5, ""), meta(9, "")]),
        );
        let set = |s: &str| SequenceSet::try_from(s).expect("set");
        assert_eq!(view.resolve(&set("4:*"), true), Ok(vec![1, 2]));
        assert_eq!(view.resolve(&set("2:*"), false), Ok(vec![1, 2]));
        assert_eq!(view.resolve(&set("1:4294967295"), true), Ok(vec![0, 1, 2]));
        assert!(view.resolve(&set("4"), false).is_err());
    }
}
