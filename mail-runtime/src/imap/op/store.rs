//! STORE and UID STORE: flags and keywords as deltas, UNCHANGEDSINCE (RFC 7162).

use imap_codec::imap_types::{
    flag::{Flag, StoreResponse, StoreType},
    sequence::SequenceSet,
};

use crate::imap::{
    op::learn::{self, Marks},
    session::{Done, MAX_MODSEQ, Refused, Session, bad, no, not_selected, store_failure},
    write,
};
use crate::store::{FlagChange, FlagsSet, MessageMeta};

/// A STORE's arguments besides the set and the flags.
pub(in crate::imap) struct FlagStore {
    pub(in crate::imap) kind: StoreType,
    pub(in crate::imap) response: StoreResponse,
    pub(in crate::imap) uid: bool,
    /// CONDSTORE's UNCHANGEDSINCE.
    pub(in crate::imap) unchanged_since: Option<u64>,
}

/// Maildir flag letters of IMAP's system flags, and the keywords named (their letters are the
/// folder's: see [`Session::keyword_letters`]).
pub(in crate::imap) fn letters(flags: &[Flag<'_>]) -> (String, Vec<String>) {
    let mut out: Vec<char> = Vec::new();
    let mut keywords: Vec<String> = Vec::new();
    for flag in flags {
        match flag {
            Flag::Answered => out.push('R'),
            Flag::Flagged => out.push('F'),
            Flag::Deleted => out.push('T'),
            Flag::Seen => out.push('S'),
            Flag::Draft => out.push('D'),
            Flag::Keyword(atom) => {
                let name = atom.inner().to_string();
                if !keywords.iter().any(|k| k.eq_ignore_ascii_case(&name)) {
                    keywords.push(name);
                }
            }
            _ => {}
        }
    }
    out.sort_unstable();
    out.dedup();
    (out.into_iter().collect(), keywords)
}

impl Session {
    pub(in crate::imap) async fn store_flags(
        &mut self,
        set: &SequenceSet,
        flags: &[Flag<'_>],
        store: FlagStore,
    ) -> Done {
        let FlagStore {
            kind,
            response,
            uid,
            unchanged_since,
        } = store;
        if unchanged_since.is_some_and(|n| n > MAX_MODSEQ) {
            return bad("a mod-sequence is at most 9223372036854775807");
        }
        if unchanged_since.is_some() {
            self.enable_condstore();
        }
        let Some(selected) = self.selected.as_ref() else {
            return not_selected();
        };
        if selected.read_only {
            return no("[READ-ONLY] the folder is read-only");
        }
        let indexes = selected.resolve(set, uid).map_err(Refused::Bad)?;
        let (given, keywords) = letters(flags);
        let removing = kind == StoreType::Remove;
        let messages: Vec<MessageMeta> = indexes
            .iter()
            .map(|i| selected.messages[*i].clone())
            .collect();
        let asked: Vec<u32> = messages.iter().map(|m| m.uid).collect();
        let folder = selected.folder.clone();
        let updated = self
            .blocking(move |s, m| {
                // Keywords get their letters in this folder (new ones a letter of their own);
                // one being removed needs none if the folder never had it.
                let letters = if removing {
                    let table = s.index(&m, &folder)?.keywords;
                    keywords
                        .iter()
                        .filter_map(|k| table.iter().position(|t| t.eq_ignore_ascii_case(k)))
                        .filter_map(crate::store::keyword_letter)
                        .collect::<String>()
                } else {
                    s.keyword_letters(&m, &folder, &keywords)?
                };
                let given = format!("{given}{letters}");
                // A delta, applied by the store to the flags the message has now: the
                // session's view may be stale, and writing it back would undo another
                // session's change.
                let change = match kind {
                    StoreType::Replace => FlagChange::Replace(given),
                    StoreType::Add => FlagChange::Add(given),
                    StoreType::Remove => FlagChange::Remove(given),
                };
                let changes: Vec<(MessageMeta, FlagChange)> =
                    messages.into_iter().map(|m| (m, change.clone())).collect();
                let updated = s.set_flags(&m, &folder, &changes, unchanged_since)?;
                Ok((updated, s.index(&m, &folder)?.keywords))
            })
            .await;
        let (FlagsSet { now, modified }, table) = match updated {
            Ok(u) => u,
            Err(e) => return Err(store_failure(&e)),
        };
        let stored: std::collections::HashSet<u32> = now.iter().map(|u| u.uid).collect();
        let Some(selected) = self.selected.as_mut() else {
            return Ok(String::new());
        };
        if table != selected.keywords {
            // New keywords: the folder's FLAGS grew (RFC 9051 s7.3.5).
            selected.keywords = table;
            self.out.extend_from_slice(
                format!("* FLAGS {}\r\n", write::folder_flags(&selected.keywords)).as_bytes(),
            );
        }
        // Marking $Junk or $NotJunk teaches rspamd.
        let (mut spam, mut ham) = (Vec::new(), Vec::new());
        for u in now {
            if let Some(i) = selected.messages.iter().position(|m| m.uid == u.uid) {
                let before = std::mem::replace(&mut selected.messages[i], u.clone());
                match learn::marking(
                    Marks::of(&before, &selected.keywords),
                    Marks::of(&u, &selected.keywords),
                    removing,
                ) {
                    Some(true) => spam.push(u.clone()),
                    Some(false) => ham.push(u.clone()),
                    None => {}
                }
                // With CONDSTORE every FETCH a STORE causes carries UID and MODSEQ (s3.2.4).
                let uid_part = if uid || self.reporting.modseq {
                    format!("UID {} ", u.uid)
                } else {
                    String::new()
                };
                let line = if response == StoreResponse::Answer {
                    let modseq = self.reporting.modseq_item(&u);
                    let recent = selected.is_recent(u.uid, self.reporting);
                    let flags = write::session_flags(&u.flags, &selected.keywords, recent);
                    format!("* {} FETCH ({uid_part}FLAGS {flags}{modseq})\r\n", i + 1)
                } else if self.reporting.modseq && before.modseq != u.modseq {
                    // .SILENT still tells a CONDSTORE client the new mod-sequence (RFC 7162
                    // s3.1.3), so it need not fetch it back.
                    format!("* {} FETCH ({uid_part}MODSEQ ({}))\r\n", i + 1, u.modseq)
                } else {
                    continue;
                };
                self.out.extend_from_slice(line.as_bytes());
            }
        }
        let folder = selected.folder.clone();
        self.teach_later(true, folder.clone(), spam);
        self.teach_later(false, folder, ham);
        let Some(selected) = self.selected.as_ref() else {
            return Ok(String::new());
        };
        let what = if uid { "UID STORE" } else { "STORE" };
        // A conditional STORE on a message another session expunged cannot have held: NO with
        // it among the MODIFIED ones (RFC 7162 s3.1.3), so the client does not take it as done.
        let gone: Vec<u32> = if unchanged_since.is_some() {
            let refused: std::collections::HashSet<u32> = modified.iter().copied().collect();
            asked
                .iter()
                .copied()
                .filter(|u| !stored.contains(u) && !refused.contains(u))
                .collect()
        } else {
            Vec::new()
        };
        let expunged_meanwhile = !gone.is_empty();
        let modified: Vec<u32> = modified.into_iter().chain(gone.iter().copied()).collect();
        if modified.is_empty() {
            return Ok(format!("{what} completed"));
        }
        // Left alone because they changed after UNCHANGEDSINCE: by UID for UID STORE, else
        // by sequence number.
        let mut numbers: Vec<u32> = if uid {
            modified
        } else {
            modified
                .iter()
                .filter_map(|u| selected.messages.iter().position(|m| m.uid == *u))
                .map(|i| i as u32 + 1)
                .collect()
        };
        numbers.sort_unstable();
        numbers.dedup();
        let text = format!(
            "[MODIFIED {}] {what} completed, conditional STORE failed for some",
            write::sequence_set(&numbers)
        );
        if expunged_meanwhile {
            Err(Refused::No(format!(
                "{text}; some of the messages no longer exist"
            )))
        } else {
            Ok(text)
        }
    }
}
