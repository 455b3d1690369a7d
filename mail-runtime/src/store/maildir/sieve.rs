//! A mailbox's Sieve scripts and its vacation memory, in `sieve/` of the mailbox's directory
//! (beside the Maildir, never a folder: folders start with '.'): one `<name>.sieve` file per
//! script, `active` naming the active one, and `vacation` listing whom was answered until
//! when. Every change is written to a temporary file, fsynced and renamed, under one lock per
//! mailbox.
use std::{fs, path::PathBuf};

use super::{Maildir, sync_dir, write_synced};
use crate::store::{SieveScripts, StoreError};

const ACTIVE_FILE: &str = "active";
const VACATION_FILE: &str = "vacation";
/// Senders remembered per mailbox; the oldest are forgotten first.
const MAX_VACATION_ENTRIES: usize = 10_000;

impl Maildir {
    fn sieve_dir(&self, mailbox: &str) -> Result<PathBuf, StoreError> {
        Ok(self.inbox_path(mailbox)?.join("sieve"))
    }

    fn script_path(&self, mailbox: &str, name: &str) -> Result<PathBuf, StoreError> {
        Ok(self
            .sieve_dir(mailbox)?
            .join(format!("{}.sieve", encode(name)?)))
    }

    pub(super) fn list_scripts(&self, mailbox: &str) -> Result<SieveScripts, StoreError> {
        let dir = self.sieve_dir(mailbox)?;
        let mut names = Vec::new();
        if let Ok(entries) = fs::read_dir(&dir) {
            for entry in entries.flatten() {
                let file = entry.file_name().to_string_lossy().into_owned();
                if let Some(name) = file.strip_suffix(".sieve").and_then(decode) {
                    names.push(name);
                }
            }
        }
        names.sort();
        let active = fs::read_to_string(dir.join(ACTIVE_FILE))
            .ok()
            .map(|a| a.trim_end_matches('\n').to_string())
            .filter(|a| names.contains(a));
        Ok(SieveScripts { names, active })
    }

    pub(super) fn read_script(
        &self,
        mailbox: &str,
        name: &str,
    ) -> Result<Option<String>, StoreError> {
        match fs::read_to_string(self.script_path(mailbox, name)?) {
            Ok(text) => Ok(Some(text)),
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(err) => Err(StoreError::from_io(err)),
        }
    }

    pub(super) fn write_script(
        &self,
        mailbox: &str,
        name: &str,
        text: &str,
    ) -> Result<(), StoreError> {
        let dir = self.sieve_dir(mailbox)?;
        let lock = self.folder_lock(&dir);
        let _serial = lock.lock().expect("sieve lock");
        fs::create_dir_all(&dir).map_err(StoreError::from_io)?;
        write_synced(&self.script_path(mailbox, name)?, text.as_bytes())
    }

    pub(super) fn remove_script(&self, mailbox: &str, name: &str) -> Result<(), StoreError> {
        let dir = self.sieve_dir(mailbox)?;
        let lock = self.folder_lock(&dir);
        let _serial = lock.lock().expect("sieve lock");
        match fs::remove_file(self.script_path(mailbox, name)?) {
            Ok(()) => sync_dir(&dir),
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => {
                Err(StoreError::NoSuchFolder(name.into()))
            }
            Err(err) => Err(StoreError::from_io(err)),
        }
    }

    pub(super) fn move_script(
        &self,
        mailbox: &str,
        from: &str,
        to: &str,
    ) -> Result<(), StoreError> {
        let dir = self.sieve_dir(mailbox)?;
        let lock = self.folder_lock(&dir);
        let _serial = lock.lock().expect("sieve lock");
        let (source, target) = (
            self.script_path(mailbox, from)?,
            self.script_path(mailbox, to)?,
        );
        if !source.is_file() {
            return Err(StoreError::NoSuchFolder(from.into()));
        }
        if target.exists() {
            return Err(StoreError::FolderExists(to.into()));
        }
        fs::rename(&source, &target).map_err(StoreError::from_io)?;
        // The active script keeps being active under its new name.
        let active = dir.join(ACTIVE_FILE);
        if fs::read_to_string(&active).is_ok_and(|a| a.trim_end_matches('\n') == from) {
            write_synced(&active, to.as_bytes())?;
        }
        sync_dir(&dir)
    }

    pub(super) fn activate_script(
        &self,
        mailbox: &str,
        name: Option<&str>,
    ) -> Result<(), StoreError> {
        let dir = self.sieve_dir(mailbox)?;
        let lock = self.folder_lock(&dir);
        let _serial = lock.lock().expect("sieve lock");
        let active = dir.join(ACTIVE_FILE);
        match name {
            Some(name) => {
                if !self.script_path(mailbox, name)?.is_file() {
                    return Err(StoreError::NoSuchFolder(name.into()));
                }
                write_synced(&active, name.as_bytes())
            }
            None => match fs::remove_file(&active) {
                Ok(()) => sync_dir(&dir),
                Err(err) if err.kind() == std::io::ErrorKind::NotFound => Ok(()),
                Err(err) => Err(StoreError::from_io(err)),
            },
        }
    }

    /// Whether `key` is due a reply at `now`; if so, it is remembered until `now + seconds`.
    pub(super) fn vacation_check(
        &self,
        mailbox: &str,
        key: &str,
        now: i64,
        seconds: u64,
    ) -> Result<bool, StoreError> {
        let dir = self.sieve_dir(mailbox)?;
        let lock = self.folder_lock(&dir);
        let _serial = lock.lock().expect("sieve lock");
        let path = dir.join(VACATION_FILE);
        // One line per sender: `<until> <key>`. Lines that expired are dropped on each write.
        let text = fs::read_to_string(&path).unwrap_or_default();
        let mut entries: Vec<(i64, &str)> = text
            .lines()
            .filter_map(|l| {
                let (until, k) = l.split_once(' ')?;
                Some((until.parse().ok()?, k))
            })
            .filter(|(until, _)| *until > now)
            .collect();
        if entries.iter().any(|(_, k)| *k == key) {
            return Ok(false);
        }
        let until = now.saturating_add(i64::try_from(seconds).unwrap_or(i64::MAX));
        entries.push((until, key));
        if entries.len() > MAX_VACATION_ENTRIES {
            entries.sort_by_key(|(until, _)| *until);
            let excess = entries.len() - MAX_VACATION_ENTRIES;
            entries.drain(..excess);
        }
        let mut out = String::new();
        for (until, k) in entries {
            out.push_str(&format!("{until} {k}\n"));
        }
        fs::create_dir_all(&dir).map_err(StoreError::from_io)?;
        write_synced(&path, out.as_bytes())?;
        Ok(true)
    }
}

/// A script name as a file name: '%', '/' and a leading '.' escaped. Names are 1 to 128
/// printable characters (RFC 5804 s1.6 leaves the limit to the server).
fn encode(name: &str) -> Result<String, StoreError> {
    if !valid_name(name) {
        return Err(StoreError::InvalidName(name.into()));
    }
    let mut out = String::new();
    for (i, c) in name.chars().enumerate() {
        match c {
            '%' => out.push_str("%25"),
            '/' => out.push_str("%2F"),
            '.' if i == 0 => out.push_str("%2E"),
            c => out.push(c),
        }
    }
    Ok(out)
}

fn decode(file: &str) -> Option<String> {
    let mut out = String::new();
    let mut rest = file;
    while let Some(i) = rest.find('%') {
        out.push_str(&rest[..i]);
        let code = rest.get(i + 1..i + 3)?;
        out.push(char::from(u8::from_str_radix(code, 16).ok()?));
        rest = &rest[i + 3..];
    }
    out.push_str(rest);
    valid_name(&out).then_some(out)
}

/// A script name ManageSieve accepts.
pub fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.chars().count() <= 128
        && !name
            .chars()
            .any(|c| c.is_control() || c == '\u{2028}' || c == '\u{2029}')
}

#[cfg(test)]
mod tests {
    use crate::store::{Store, maildir::Maildir};

    #[test]
    fn scripts_are_stored_renamed_activated_and_deleted() {
        let tmp = tempfile::tempdir().expect("tmp");
        let store = Maildir::open(tmp.path(), "h").expect("open");
        let alice = "alice@example.test";
        store
            .put_sieve_script(alice, "../x/.y%", "keep;")
            .expect("put");
        store
            .put_sieve_script(alice, "main", "discard;")
            .expect("put");
        store
            .set_active_sieve_script(alice, Some("main"))
            .expect("activate");
        store
            .rename_sieve_script(alice, "main", "rules")
            .expect("rename");
        let scripts = store.sieve_scripts(alice).expect("list");
        assert_eq!(scripts.names, ["../x/.y%", "rules"]);
        assert_eq!(scripts.active.as_deref(), Some("rules"));
        assert_eq!(
            store.sieve_script(alice, "rules").expect("get").as_deref(),
            Some("discard;")
        );
        assert!(store.set_active_sieve_script(alice, Some("nope")).is_err());
        store
            .delete_sieve_script(alice, "../x/.y%")
            .expect("delete");
        assert!(store.delete_sieve_script(alice, "../x/.y%").is_err());
        // The scripts are no folder.
        assert_eq!(store.folders(alice).expect("folders"), ["INBOX"]);
        // And survive a restart, with the start-up check.
        let reopened = Maildir::open(tmp.path(), "h").expect("reopen");
        assert_eq!(
            reopened
                .sieve_scripts(alice)
                .expect("list")
                .active
                .as_deref(),
            Some("rules")
        );
    }

    #[test]
    fn vacation_memory_answers_once_per_interval() {
        let tmp = tempfile::tempdir().expect("tmp");
        let store = Maildir::open(tmp.path(), "h").expect("open");
        let alice = "alice@example.test";
        assert!(store.vacation_due(alice, "k1", 1000, 100).expect("due"));
        assert!(!store.vacation_due(alice, "k1", 1050, 100).expect("due"));
        assert!(store.vacation_due(alice, "k2", 1050, 100).expect("due"));
        assert!(store.vacation_due(alice, "k1", 1101, 100).expect("due"));
    }
}
