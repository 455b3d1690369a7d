//! `mail-runtime migrate`: copies a Maildir store (a data directory) into the PostgreSQL store
//! (or back, with `--to-maildir`),
//! keeping what clients rely on: each folder's UIDVALIDITY, every message's UID, mod-sequence,
//! flags, keywords and arrival time, and the mailbox's subscriptions and Sieve scripts. A
//! message already in the database is skipped, so a copy that stopped (a crash, Ctrl-C) is
//! resumed by running it again (a message copied before keeps the flags it had then: run the
//! last pass with the Maildir runtime stopped); `--dry-run` says what would be copied and writes
//! no mail (it does bring the database's schema up to date).
use std::collections::{HashMap, HashSet};

use serde::Serialize;

use crate::store::{
    FlagChange, MessageMeta, Store, StoreError, keyword_letter,
    maildir::Maildir,
    postgres::{ImportedFolder, ImportedMessage, Postgres},
};

/// Messages per transaction.
const BATCH: usize = 200;

/// What a copy did (or, in a dry run, would do).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Counts {
    /// Mailboxes found.
    pub mailboxes: usize,
    /// Folders found.
    pub folders: usize,
    /// Messages found.
    pub messages: usize,
    /// Messages copied now (in a dry run: to copy).
    pub copied: usize,
    /// Messages already in the database, left as they are.
    pub skipped: usize,
    /// Bytes copied (in a dry run: to copy).
    pub bytes: u64,
    /// Folders left alone because they changed where they were copied to since an earlier
    /// copy (mail expunged or flags changed there): copying into them again would bring back
    /// what a user deleted.
    pub changed_since: usize,
}

/// The UIDs a folder of the target holds already, when it is this folder's earlier copy and
/// nothing changed in it since (`None`: leave it alone, it changed).
fn copied_before(
    target: Result<crate::store::FolderIndex, StoreError>,
    source: &crate::store::FolderIndex,
) -> Result<Option<HashSet<u32>>, StoreError> {
    match target {
        Ok(here) if here.uid_validity == source.uid_validity => {
            if here.highest_modseq > source.highest_modseq {
                return Ok(None);
            }
            Ok(Some(here.messages.iter().map(|m| m.uid).collect()))
        }
        Ok(_) | Err(StoreError::NoSuchFolder(_)) => Ok(Some(HashSet::new())),
        Err(err) => Err(err),
    }
}

/// Copies every mailbox of `maildir` into `db` (see the module's documentation).
pub fn maildir_to_postgres(
    maildir: &Maildir,
    db: &Postgres,
    dry_run: bool,
) -> Result<Counts, StoreError> {
    let mut counts = Counts::default();
    for mailbox in maildir.mailboxes()? {
        counts.mailboxes += 1;
        for folder in maildir.folders(&mailbox)? {
            let index = maildir.index(&mailbox, &folder)?;
            // An INBOX that never received mail has no identity yet: nothing to keep.
            if index.uid_validity == 0 && index.messages.is_empty() {
                continue;
            }
            counts.folders += 1;
            counts.messages += index.messages.len();
            let Some(already) = copied_before(db.index(&mailbox, &folder), &index)? else {
                tracing::warn!(%mailbox, %folder, "changed in the database since it was copied: left alone");
                counts.changed_since += 1;
                counts.skipped += index.messages.len();
                continue;
            };
            let todo: Vec<&MessageMeta> = index
                .messages
                .iter()
                .filter(|m| !already.contains(&m.uid))
                .collect();
            counts.skipped += index.messages.len() - todo.len();
            if dry_run {
                counts.copied += todo.len();
                counts.bytes += todo.iter().map(|m| m.size).sum::<u64>();
                continue;
            }
            let (id, table) = db.import_folder(ImportedFolder {
                mailbox: mailbox.clone(),
                name: folder.clone(),
                validity: index.uid_validity,
                uid_next: index.uid_next,
                highest_modseq: index.highest_modseq,
                keywords: index.keywords.clone(),
            })?;
            // The database's letter for each of the Maildir's keyword letters (a keyword added
            // in the database since an earlier copy keeps its letter there).
            let letters: HashMap<char, char> = index
                .keywords
                .iter()
                .enumerate()
                .filter_map(|(i, name)| {
                    let here = table.iter().position(|k| k.eq_ignore_ascii_case(name))?;
                    Some((keyword_letter(i)?, keyword_letter(here)?))
                })
                .collect();
            let translated = |flags: &str| -> String {
                let flags: String = flags
                    .chars()
                    .filter_map(|c| {
                        if c.is_ascii_lowercase() {
                            letters.get(&c).copied()
                        } else {
                            Some(c)
                        }
                    })
                    .collect();
                FlagChange::Replace(flags).apply("")
            };
            for chunk in todo.chunks(BATCH) {
                let mut batch = Vec::with_capacity(chunk.len());
                for m in chunk {
                    // A message expunged since the listing is simply not copied.
                    if let Some(body) = maildir.read(&mailbox, &folder, m)? {
                        counts.bytes += body.len() as u64;
                        batch.push(ImportedMessage {
                            uid: m.uid,
                            modseq: m.modseq,
                            flags: translated(&m.flags),
                            internal_date: m.internal_date,
                            recent: m.in_new,
                            body,
                        });
                    }
                }
                counts.copied += db.import_messages(id, batch)?;
            }
            tracing::info!(%mailbox, %folder, messages = index.messages.len(), "folder copied");
        }
        if !dry_run {
            for folder in maildir.subscriptions(&mailbox)? {
                db.set_subscribed(&mailbox, &folder, true)?;
            }
            let scripts = maildir.sieve_scripts(&mailbox)?;
            for name in &scripts.names {
                if let Some(text) = maildir.sieve_script(&mailbox, name)? {
                    db.put_sieve_script(&mailbox, name, &text)?;
                }
            }
            if let Some(active) = &scripts.active {
                db.set_active_sieve_script(&mailbox, Some(active))?;
            }
            db.import_mailbox_done(&mailbox)?;
        }
    }
    Ok(counts)
}

/// Copies every mailbox of `db` into `maildir` (`--to-maildir`: the way back, and a backup
/// readable by any Maildir tool), keeping the same as [`maildir_to_postgres`] does.
pub fn postgres_to_maildir(
    db: &Postgres,
    maildir: &Maildir,
    dry_run: bool,
) -> Result<Counts, StoreError> {
    let mut counts = Counts::default();
    for mailbox in db.mailboxes()? {
        counts.mailboxes += 1;
        for folder in db.folders(&mailbox)? {
            let index = db.index(&mailbox, &folder)?;
            if index.uid_validity == 0 && index.messages.is_empty() {
                continue;
            }
            counts.folders += 1;
            counts.messages += index.messages.len();
            let Some(mut already) = copied_before(maildir.index(&mailbox, &folder), &index)? else {
                tracing::warn!(%mailbox, %folder, "changed in the Maildir since it was copied: left alone");
                counts.changed_since += 1;
                counts.skipped += index.messages.len();
                continue;
            };
            if !dry_run {
                already = maildir.import_folder(
                    &mailbox,
                    &folder,
                    index.uid_validity,
                    index.uid_next,
                    index.highest_modseq,
                    &index.keywords,
                )?;
            }
            for m in &index.messages {
                if already.contains(&m.uid) {
                    counts.skipped += 1;
                    continue;
                }
                if dry_run {
                    counts.copied += 1;
                    counts.bytes += m.size;
                    continue;
                }
                let Some(body) = db.read(&mailbox, &folder, m)? else {
                    continue;
                };
                counts.bytes += body.len() as u64;
                maildir.import_message(
                    &mailbox,
                    &folder,
                    crate::store::maildir::Incoming {
                        uid: m.uid,
                        modseq: m.modseq,
                        flags: &m.flags,
                        internal_date: m.internal_date,
                        recent: m.in_new,
                        body: &body,
                    },
                )?;
                counts.copied += 1;
            }
            tracing::info!(%mailbox, %folder, messages = index.messages.len(), "folder copied");
        }
        if !dry_run {
            for folder in db.subscriptions(&mailbox)? {
                maildir.set_subscribed(&mailbox, &folder, true)?;
            }
            let scripts = db.sieve_scripts(&mailbox)?;
            for name in &scripts.names {
                if let Some(text) = db.sieve_script(&mailbox, name)? {
                    maildir.put_sieve_script(&mailbox, name, &text)?;
                }
            }
            if let Some(active) = &scripts.active {
                maildir.set_active_sieve_script(&mailbox, Some(active))?;
            }
        }
    }
    Ok(counts)
}
