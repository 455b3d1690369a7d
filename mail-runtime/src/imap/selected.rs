//! The selected folder as one session sees it: the messages by sequence number, and what to
//! tell the client when the folder changed under it (RFC 9051 section 7.4: EXISTS, EXPUNGE and
//! FETCH FLAGS for changes made by other sessions or by delivery; with CONDSTORE the MODSEQ of
//! each change, with QRESYNC VANISHED instead of EXPUNGE, RFC 7162).
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
    /// The folder's keyword table (letter `a + n` is entry `n`), as last read.
    pub keywords: Vec<String>,
    /// The folder's HIGHESTMODSEQ, as last read.
    pub highest_modseq: u64,
    /// UIDs that are `\Recent` in this session: the ones it claimed (see
    /// [`crate::store::Store::claim_recent`]), or for EXAMINE the ones nobody claimed yet.
    pub recent: std::collections::HashSet<u32>,
}

/// How a session reports changes: the extensions its client enabled (RFC 7162).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Reporting {
    /// CONDSTORE: every FETCH with FLAGS carries MODSEQ.
    pub modseq: bool,
    /// QRESYNC: expunges are `VANISHED <uids>`, not `<seq> EXPUNGE`.
    pub vanished: bool,
    /// IMAP4rev1's `\Recent` and `RECENT` responses (IMAP4rev2 has neither).
    pub recent: bool,
}

impl Reporting {
    /// ` MODSEQ (n)` when CONDSTORE is on, for the end of a FETCH response.
    pub fn modseq_item(&self, meta: &MessageMeta) -> String {
        if self.modseq {
            format!(" MODSEQ ({})", meta.modseq)
        } else {
            String::new()
        }
    }

    /// Writes the responses for messages gone from the view: `removed` holds their sequence
    /// numbers (as they were, one after another, so each counts the ones before it as gone:
    /// descending order) and UIDs.
    pub fn expunged(&self, removed: &[(u32, u32)], out: &mut Vec<u8>) {
        if removed.is_empty() {
            return;
        }
        if self.vanished {
            let mut uids: Vec<u32> = removed.iter().map(|(_, uid)| *uid).collect();
            uids.sort_unstable();
            out.extend_from_slice(
                format!("* VANISHED {}\r\n", write::sequence_set(&uids)).as_bytes(),
            );
        } else {
            for (seq, _) in removed {
                out.extend_from_slice(format!("* {seq} EXPUNGE\r\n").as_bytes());
            }
        }
    }
}

/// The numbers a sequence set names, as sorted, disjoint, inclusive ranges with `*` standing
/// for `largest`. A set may list thousands of ranges (a command line holds ~15,000): merged once,
/// a membership test is a binary search and a listing is never longer than the folder, where
/// expanding each range took seconds and hundreds of MB.
pub fn ranges(set: &SequenceSet, largest: u32) -> Vec<(u32, u32)> {
    let value = |v: &SeqOrUid| match v {
        SeqOrUid::Value(n) => n.get(),
        SeqOrUid::Asterisk => largest,
    };
    let mut listed: Vec<(u32, u32)> = set
        .0
        .as_ref()
        .iter()
        .map(|s| match s {
            Sequence::Single(v) => (value(v), value(v)),
            Sequence::Range(a, b) => {
                let (a, b) = (value(a), value(b));
                (a.min(b), a.max(b))
            }
        })
        .collect();
    listed.sort_unstable();
    let mut merged: Vec<(u32, u32)> = Vec::with_capacity(listed.len());
    for (a, b) in listed {
        match merged.last_mut() {
            Some(last) if a <= last.1.saturating_add(1) => last.1 = last.1.max(b),
            _ => merged.push((a, b)),
        }
    }
    merged
}

/// Whether `n` is in merged `ranges` (see [`ranges`]).
pub fn contains(ranges: &[(u32, u32)], n: u32) -> bool {
    let after = ranges.partition_point(|(a, _)| *a <= n);
    after > 0 && ranges[after - 1].1 >= n
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
            keywords: index.keywords,
            highest_modseq: index.highest_modseq,
            recent: std::collections::HashSet::new(),
        }
    }

    /// Whether `uid` is `\Recent` for this session, as `reporting` shows it.
    pub fn is_recent(&self, uid: u32, reporting: Reporting) -> bool {
        reporting.recent && self.recent.contains(&uid)
    }

    /// How many messages of the view are `\Recent` in this session.
    pub fn recent_count(&self) -> usize {
        self.messages
            .iter()
            .filter(|m| self.recent.contains(&m.uid))
            .count()
    }

    /// The UIDs in `known` (merged ranges, see [`ranges`]) below UIDNEXT that are not in the
    /// folder: what QRESYNC reports as `VANISHED (EARLIER)`. The store keeps no record of when
    /// each was expunged, so every one in `known` is named (RFC 7162 s3.2.5.1 lets a server
    /// do so; clients ignore UIDs they never had). As ranges: a client may name 1:4294967295.
    pub fn vanished(&self, known: &[(u32, u32)]) -> Vec<(u32, u32)> {
        let last = self.uid_next.saturating_sub(1);
        let mut out: Vec<(u32, u32)> = Vec::new();
        let mut present = self.messages.iter().map(|m| m.uid).peekable();
        for &(a, b) in known {
            let (mut a, b) = (a.max(1), b.min(last));
            while a <= b {
                while present.next_if(|uid| *uid < a).is_some() {}
                match present.peek() {
                    Some(&uid) if uid <= b => {
                        if uid > a {
                            out.push((a, uid - 1));
                        }
                        a = uid + 1;
                        present.next();
                    }
                    _ => {
                        out.push((a, b));
                        break;
                    }
                }
            }
        }
        out
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
                .filter(|(_, m)| contains(&ranges, m.uid))
                .map(|(i, _)| i)
                .collect())
        } else {
            let ranges = ranges(set, max_seq.max(1));
            if ranges.last().is_some_and(|(_, b)| *b > max_seq) {
                return Err("message sequence number out of range".into());
            }
            // Disjoint and within 1..=max_seq: at most one entry per message.
            Ok(ranges
                .iter()
                .flat_map(|(a, b)| (*a as usize - 1)..(*b as usize))
                .collect())
        }
    }

    /// Brings the view up to date with the folder and writes the untagged responses that say
    /// so. Expunges are held back when `expunges_allowed` is false (during FETCH, STORE and
    /// SEARCH, where they would shift the sequence numbers under the client).
    pub fn refresh(
        &mut self,
        fresh: FolderIndex,
        expunges_allowed: bool,
        reporting: Reporting,
        out: &mut Vec<u8>,
    ) {
        // A keyword another session added first: the client learns the folder's new FLAGS
        // before any message shows it (RFC 9051 s7.3.5).
        if fresh.keywords.len() > self.keywords.len()
            || fresh
                .keywords
                .iter()
                .zip(&self.keywords)
                .any(|(a, b)| a != b)
        {
            self.keywords.clone_from(&fresh.keywords);
            out.extend_from_slice(
                format!("* FLAGS {}\r\n", write::folder_flags(&self.keywords)).as_bytes(),
            );
        }
        let current: std::collections::HashMap<u32, &MessageMeta> =
            fresh.messages.iter().map(|m| (m.uid, m)).collect();
        if expunges_allowed {
            let mut removed = Vec::new();
            for i in (0..self.messages.len()).rev() {
                if !current.contains_key(&self.messages[i].uid) {
                    removed.push((i as u32 + 1, self.messages.remove(i).uid));
                }
            }
            reporting.expunged(&removed, out);
        }
        for (i, m) in self.messages.iter_mut().enumerate() {
            if let Some(now) = current.get(&m.uid)
                && (now.flags != m.flags || (reporting.modseq && now.modseq != m.modseq))
            {
                out.extend_from_slice(
                    format!(
                        "* {} FETCH (UID {} FLAGS {}{})\r\n",
                        i + 1,
                        m.uid,
                        write::session_flags(
                            &now.flags,
                            &self.keywords,
                            reporting.recent && self.recent.contains(&m.uid)
                        ),
                        reporting.modseq_item(now)
                    )
                    .as_bytes(),
                );
                *m = MessageMeta::clone(now);
            } else if let Some(now) = current.get(&m.uid) {
                // The file's new name and mod-sequence, for a CHANGEDSINCE later on.
                *m = MessageMeta::clone(now);
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
        self.highest_modseq = self.highest_modseq.max(fresh.highest_modseq);
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
            modseq: 1,
            in_new: false,
        }
    }

    fn index(messages: Vec<MessageMeta>) -> FolderIndex {
        FolderIndex {
            uid_validity: 1,
            uid_next: messages.last().map_or(1, |m| m.uid + 1),
            messages,
            keywords: Vec::new(),
            highest_modseq: 1,
        }
    }

    /// Issue 17: a STORE naming 15,000 ranges over 2,000 messages took 9 s and 234 MB.
    #[test]
    fn thousands_of_ranges_are_merged_not_expanded() {
        let view = Selected::new(
            "INBOX".into(),
            false,
            index((1..=2_000).map(|u| meta(u, "")).collect()),
        );
        let text = vec!["1:*"; 15_000].join(",");
        let set = SequenceSet::try_from(text.as_str()).expect("a valid set");
        assert_eq!(ranges(&set, 2_000), vec![(1, 2_000)]);
        let started = std::time::Instant::now();
        let all = view.resolve(&set, false).expect("in range");
        assert_eq!(all.len(), 2_000);
        assert_eq!(view.resolve(&set, true).expect("uids").len(), 2_000);
        assert!(started.elapsed() < std::time::Duration::from_secs(1));

        let scattered = SequenceSet::try_from("7,3:4,2,10:*,5").expect("a valid set");
        assert_eq!(ranges(&scattered, 12), vec![(2, 5), (7, 7), (10, 12)]);
        let merged = ranges(&scattered, 12);
        let members: Vec<u32> = (0..14).filter(|n| contains(&merged, *n)).collect();
        assert_eq!(members, vec![2, 3, 4, 5, 7, 10, 11, 12]);
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
            Reporting::default(),
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

    /// QRESYNC's VANISHED (EARLIER): the known UIDs below UIDNEXT that are gone, as ranges, even
    /// for a client that names every UID there could be.
    #[test]
    fn vanished_names_known_uids_that_are_gone() {
        let view = Selected::new(
            "INBOX".into(),
            false,
            index(vec![meta(2, ""), meta(5, ""), meta(6, ""), meta(9, "")]),
        );
        assert_eq!(view.uid_next, 10);
        assert_eq!(
            view.vanished(&[(1, u32::MAX)]),
            vec![(1, 1), (3, 4), (7, 8)]
        );
        assert_eq!(view.vanished(&[(3, 3), (5, 7)]), vec![(3, 3), (7, 7)]);
        assert_eq!(view.vanished(&[(9, 100)]), vec![]);
        let empty = Selected::new("INBOX".into(), false, index(Vec::new()));
        assert_eq!(empty.vanished(&[(1, u32::MAX)]), vec![]);
    }

    #[test]
    fn with_qresync_expunges_are_vanished_and_flag_changes_carry_modseq() {
        let mut view = Selected::new(
            "INBOX".into(),
            false,
            index(vec![meta(1, ""), meta(2, ""), meta(3, "")]),
        );
        let mut changed = meta(1, "S");
        changed.modseq = 7;
        let mut out = Vec::new();
        let reporting = Reporting {
            modseq: true,
            vanished: true,
            recent: false,
        };
        view.refresh(index(vec![changed]), true, reporting, &mut out);
        assert_eq!(
            String::from_utf8(out).expect("ascii"),
            "* VANISHED 2:3\r\n* 1 FETCH (UID 1 FLAGS (\\Seen) MODSEQ (7))\r\n"
        );
    }

    #[test]
    fn expunges_wait_when_not_allowed() {
        let mut view = Selected::new("INBOX".into(), false, index(vec![meta(1, ""), meta(2, "")]));
        let mut out = Vec::new();
        view.refresh(
            index(vec![meta(2, "")]),
            false,
            Reporting::default(),
            &mut out,
        );
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
