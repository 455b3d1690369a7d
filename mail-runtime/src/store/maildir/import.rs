//! Copying another store in (`mail-runtime migrate --to-maildir`): folders made with the
//! UIDVALIDITY, next UID, mod-sequence and keyword table they had, messages written under the
//! UIDs, mod-sequences, flags and arrival times they had, so clients need not resynchronise.
use std::{collections::HashSet, fs, path::PathBuf};

use super::{
    INBOX, KEYWORDS_FILE, LAST_VALIDITY_FILE, Maildir, UIDVALIDITY_FILE, UidFile, scan, sync_dir,
    write_synced,
};
use crate::store::StoreError;

/// A message as another store has it.
#[derive(Debug, Clone)]
pub struct Incoming<'a> {
    /// UID, kept.
    pub uid: u32,
    /// Mod-sequence, kept.
    pub modseq: u64,
    /// Flag letters (keyword letters of the folder's table as given to `import_folder`).
    pub flags: &'a str,
    /// Arrival time.
    pub internal_date: i64,
    /// Still `\Recent` (written to `new/`).
    pub recent: bool,
    /// The message.
    pub body: &'a [u8],
}

impl Maildir {
    fn import_dir(&self, mailbox: &str, folder: &str) -> Result<PathBuf, StoreError> {
        if folder.eq_ignore_ascii_case(INBOX) {
            self.inbox_path(mailbox)
        } else {
            self.folder_path(mailbox, folder)
        }
    }

    /// Makes (or takes over, while it holds no message or holds this copy's) a folder as
    /// another store has it; the UIDs it holds already (a rerun skips them).
    pub fn import_folder(
        &self,
        mailbox: &str,
        folder: &str,
        validity: u32,
        uid_next: u32,
        highest_modseq: u64,
        keywords: &[String],
    ) -> Result<HashSet<u32>, StoreError> {
        let dir = self.import_dir(mailbox, folder)?;
        if !folder.eq_ignore_ascii_case(INBOX) {
            self.ensure_maildir(&self.inbox_path(mailbox)?)?;
        }
        self.ensure_maildir(&dir)?;
        let lock = self.folder_lock(&dir);
        let _serial = lock.lock().expect("folder lock");
        let here = scan(&dir)?;
        if here.uid_validity != validity && !here.messages.is_empty() {
            return Err(StoreError::NotAllowed(
                "the folder already holds other mail in the Maildir",
            ));
        }
        let record = UidFile {
            validity,
            uid_next: uid_next.max(here.uid_next),
            modseq: highest_modseq.max(here.highest_modseq),
        };
        write_synced(&dir.join(UIDVALIDITY_FILE), record.render().as_bytes())?;
        let table: String = keywords
            .iter()
            .enumerate()
            .filter(|(_, k)| !k.is_empty())
            .map(|(n, k)| format!("{n} {k}\n"))
            .collect();
        write_synced(&dir.join(KEYWORDS_FILE), table.as_bytes())?;
        // Folders made later in this mailbox get a UIDVALIDITY above every one copied in.
        let root = self.inbox_path(mailbox)?;
        let last = fs::read_to_string(root.join(LAST_VALIDITY_FILE))
            .ok()
            .and_then(|t| t.trim().parse::<u32>().ok())
            .unwrap_or(0);
        if validity > last {
            write_synced(
                &root.join(LAST_VALIDITY_FILE),
                format!("{validity}\n").as_bytes(),
            )?;
        }
        self.forget_uids(mailbox, folder);
        self.forget_modseqs(&dir);
        self.indexes.lock().expect("index lock").remove(&dir);
        Ok(here.messages.iter().map(|m| m.uid).collect())
    }

    /// Writes one message into a folder made by [`Maildir::import_folder`], durably.
    pub fn import_message(
        &self,
        mailbox: &str,
        folder: &str,
        message: Incoming<'_>,
    ) -> Result<(), StoreError> {
        let dir = self.import_dir(mailbox, folder)?;
        let name = self.file_name(
            message.internal_date,
            message.uid,
            message.body.len() as u64,
            message.modseq,
            message.flags,
        );
        let tmp = dir.join("tmp").join(&name);
        let sub = if message.recent { "new" } else { "cur" };
        let result = (|| {
            write_synced(&tmp, message.body)?;
            fs::rename(&tmp, dir.join(sub).join(&name)).map_err(StoreError::from_io)?;
            sync_dir(&dir.join(sub))
        })();
        if result.is_err() {
            let _ = fs::remove_file(&tmp);
        }
        self.indexes.lock().expect("index lock").remove(&dir);
        self.usage.lock().expect("store lock").remove(mailbox);
        result
    }
}
