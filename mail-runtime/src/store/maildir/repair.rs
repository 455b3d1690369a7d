//! The start-up check of every folder. The store's index is the message file names (`U=`, `S=`,
//! flags) plus the `kubemail-uidvalidity` file; this check puts both right after a crash, a
//! restore from backup or a hand edit, without losing a message:
//! - a UID file that is missing or unreadable gets a new UIDVALIDITY. The next UID it recorded
//!   is gone, so a UID of an expunged message could otherwise be handed out again; with a new
//!   UIDVALIDITY clients drop what they cached and read the folder afresh. Messages keep their
//!   UIDs.
//! - a message without a UID (dropped in by another program) or sharing one with another file
//!   (a restored copy) is renamed with a new UID above every UID in use.
use std::{collections::HashSet, fs, path::Path};

use super::{Maildir, UIDVALIDITY_FILE, UidFile, parse_name, sync_dir, write_synced};
use crate::store::StoreError;

/// What the check changed in one folder.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Repaired {
    /// The new UIDVALIDITY, when the UID file was missing or unreadable.
    pub new_validity: Option<u32>,
    /// Messages that had no UID, or shared one, and were given a new one.
    pub renumbered: usize,
}

impl Maildir {
    /// Checks every folder of every mailbox under the data directory and logs what it fixed.
    /// Returns the number of folders that needed a fix.
    pub(super) fn repair_all(&self) -> Result<usize, StoreError> {
        let mut fixed = 0;
        for domain in subdirs(&self.root.join("mail")) {
            for mailbox in subdirs(&domain) {
                let folders =
                    std::iter::once(mailbox.clone()).chain(subdirs(&mailbox).filter(|d| {
                        d.file_name()
                            .is_some_and(|n| n.as_encoded_bytes()[0] == b'.')
                    }));
                for folder in folders.filter(|f| f.join("cur").is_dir()) {
                    let repaired = self.repair_folder(&folder)?;
                    if repaired != Repaired::default() {
                        tracing::warn!(
                            folder = %folder.display(),
                            new_uidvalidity = repaired.new_validity,
                            renumbered = repaired.renumbered,
                            "store: folder index repaired at start"
                        );
                        fixed += 1;
                    }
                }
            }
        }
        Ok(fixed)
    }

    /// Checks one folder (see the module comment).
    pub(super) fn repair_folder(&self, dir: &Path) -> Result<Repaired, StoreError> {
        let recorded = fs::read_to_string(dir.join(UIDVALIDITY_FILE))
            .ok()
            .and_then(|text| UidFile::parse(&text));
        let mut named = Vec::new();
        let mut unnamed = Vec::new();
        let mut highest_modseq = recorded.map_or(0, |r| r.modseq);
        for sub in ["new", "cur"] {
            let Ok(entries) = fs::read_dir(dir.join(sub)) else {
                continue;
            };
            for entry in entries.flatten() {
                if !entry.file_type().is_ok_and(|t| t.is_file()) {
                    continue;
                }
                let name = entry.file_name().to_string_lossy().into_owned();
                match parse_name(&name) {
                    Some(n) if n.uid > 0 => {
                        highest_modseq = highest_modseq.max(n.modseq);
                        named.push((n.uid, sub, name));
                    }
                    _ => unnamed.push((sub, name)),
                }
            }
        }
        named.sort();
        let mut in_use = HashSet::new();
        for (uid, sub, name) in named {
            if !in_use.insert(uid) {
                unnamed.push((sub, name));
            }
        }
        let mut repaired = Repaired::default();
        let (validity, recorded_next) = match recorded {
            Some(recorded) => (recorded.validity, recorded.uid_next),
            None => {
                let fresh = self.new_validity(dir)?;
                repaired.new_validity = Some(fresh);
                (fresh, 1)
            }
        };
        let mut next = in_use
            .iter()
            .max()
            .map_or(1, |max| max + 1)
            .max(recorded_next);
        unnamed.sort();
        for (sub, name) in &unnamed {
            let path = dir.join(sub).join(name);
            let meta = fs::metadata(&path).map_err(StoreError::from_io)?;
            let secs = name
                .split('.')
                .next()
                .and_then(|s| s.parse::<i64>().ok())
                .or_else(|| {
                    let modified = meta.modified().ok()?;
                    let since = modified.duration_since(std::time::UNIX_EPOCH).ok()?;
                    Some(since.as_secs() as i64)
                })
                .unwrap_or_default();
            let mut flags: Vec<char> = name
                .split_once(":2,")
                .map(|(_, info)| info.chars().filter(char::is_ascii_uppercase).collect())
                .unwrap_or_default();
            flags.sort_unstable();
            flags.dedup();
            let flags: String = flags.into_iter().collect();
            // A message new to every client: a mod-sequence above all before it.
            highest_modseq += 1;
            let target =
                dir.join(sub)
                    .join(self.file_name(secs, next, meta.len(), highest_modseq, &flags));
            fs::rename(&path, &target).map_err(StoreError::from_io)?;
            next += 1;
            repaired.renumbered += 1;
        }
        if repaired != Repaired::default() {
            let record = UidFile {
                validity,
                uid_next: next,
                modseq: highest_modseq,
            };
            write_synced(&dir.join(UIDVALIDITY_FILE), record.render().as_bytes())?;
            for sub in ["new", "cur"] {
                if dir.join(sub).is_dir() {
                    sync_dir(&dir.join(sub))?;
                }
            }
        }
        Ok(repaired)
    }
}

fn subdirs(dir: &Path) -> impl Iterator<Item = std::path::PathBuf> {
    fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
        .map(|e| e.path())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{Store, maildir::UIDVALIDITY_FILE};

    const ALICE: &str = "alice@example.test";

    /// A store with alice's INBOX holding messages 1..=4 of which 4 (the highest) was expunged.
    fn store_with_history(root: &Path) -> (u32, Vec<(u32, Vec<u8>)>) {
        let store = Maildir::open(root, "h").expect("open");
        for n in 1..=4 {
            let mut w = store.spool().expect("spool");
            w.write(format!("Subject: {n}\r\n\r\nbody {n}\r\n").as_bytes())
                .expect("write");
            store
                .deliver(w.finish().expect("finish"), &[ALICE.to_string()])
                .expect("deliver");
        }
        let inbox = store.inbox(ALICE).expect("inbox");
        let last = inbox.messages.last().cloned().expect("a message");
        store.expunge(ALICE, "INBOX", &[last]).expect("expunge");
        (inbox.uid_validity, contents(&store))
    }

    fn contents(store: &Maildir) -> Vec<(u32, Vec<u8>)> {
        let inbox = store.inbox(ALICE).expect("inbox");
        inbox
            .messages
            .iter()
            .map(|m| {
                let body = store.read_message(ALICE, m.uid).expect("read");
                (m.uid, body.expect("the message"))
            })
            .collect()
    }

    #[test]
    fn a_lost_or_garbled_uid_file_gives_a_new_uidvalidity_and_keeps_every_message_and_uid() {
        for damage in [
            None,
            Some(&b""[..]),
            Some(&b"\x00\xffgarbage\n12\nmore"[..]),
        ] {
            let tmp = tempfile::tempdir().expect("tmp");
            let (validity, before) = store_with_history(tmp.path());
            let file = tmp
                .path()
                .join("mail/example.test/alice")
                .join(UIDVALIDITY_FILE);
            match damage {
                None => fs::remove_file(&file).expect("remove"),
                Some(bytes) => fs::write(&file, bytes).expect("garble"),
            }
            // UIDVALIDITY is in seconds: make sure the new one can differ.
            std::thread::sleep(std::time::Duration::from_millis(1100));
            let store = Maildir::open(tmp.path(), "h").expect("reopen");
            let inbox = store.inbox(ALICE).expect("inbox");
            assert_ne!(inbox.uid_validity, validity, "{damage:?}");
            assert!(inbox.uid_validity > validity, "{damage:?}");
            assert_eq!(contents(&store), before, "{damage:?}");
            assert_eq!(
                before.iter().map(|(uid, _)| *uid).collect::<Vec<_>>(),
                [1, 2, 3]
            );
            // A second start finds nothing to fix and keeps the new UIDVALIDITY.
            drop(store);
            let again = Maildir::open(tmp.path(), "h").expect("third open");
            assert_eq!(
                again.inbox(ALICE).expect("inbox").uid_validity,
                inbox.uid_validity
            );
        }
    }

    #[test]
    fn an_intact_uid_file_keeps_uidvalidity_and_the_expunged_uid_is_not_reused() {
        let tmp = tempfile::tempdir().expect("tmp");
        let (validity, _) = store_with_history(tmp.path());
        let store = Maildir::open(tmp.path(), "h").expect("reopen");
        let inbox = store.inbox(ALICE).expect("inbox");
        assert_eq!(inbox.uid_validity, validity);
        assert_eq!(inbox.uid_next, 5);
    }

    #[test]
    fn foreign_and_duplicate_files_get_fresh_uids_above_every_uid_in_use() {
        let tmp = tempfile::tempdir().expect("tmp");
        let (validity, before) = store_with_history(tmp.path());
        let dir = tmp.path().join("mail/example.test/alice");
        // Another program's delivery, and a restored copy of message 2 with its old name.
        fs::write(
            dir.join("new/1700000000.other-mda"),
            b"Subject: foreign\r\n\r\n",
        )
        .expect("drop");
        let two = fs::read_dir(dir.join("new"))
            .expect("new")
            .flatten()
            .find(|e| e.file_name().to_string_lossy().contains(",U=2,"))
            .expect("message 2");
        let copy = dir
            .join("cur")
            .join(format!("{}:2,S", two.file_name().to_string_lossy()));
        fs::copy(two.path(), &copy).expect("copy");

        let store = Maildir::open(tmp.path(), "h").expect("reopen");
        let after = contents(&store);
        let inbox = store.inbox(ALICE).expect("inbox");
        assert_eq!(inbox.uid_validity, validity, "known UIDs did not change");
        assert_eq!(&after[..3], &before[..]);
        let added: Vec<_> = after[3..].iter().map(|(uid, _)| *uid).collect();
        assert_eq!(added, [5, 6], "fresh UIDs start above the expunged 4");
        assert!(after.iter().any(|(_, b)| b == b"Subject: foreign\r\n\r\n"));
        assert_eq!(inbox.uid_next, 7);
        assert!(
            inbox.messages.iter().filter(|m| m.flags == "S").count() == 1,
            "the restored copy keeps its Seen flag (under UID 2 or a new one)"
        );
    }
}
