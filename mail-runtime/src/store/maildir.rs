//! The embedded store: one Maildir per mailbox under `<data>/mail/<domain>/<local>/`.
//!
//! File names follow the Maildir convention plus two fields other tools already understand:
//! `<secs>.M<usecs>P<pid>Q<n>.<host>,U=<uid>,S=<size>:2,<flags>`. `U=` carries the IMAP UID and
//! `S=` the size, so the whole index (UIDs, sizes, flags) can be rebuilt from a directory listing
//! without changing a UID a client already holds. `kubemail-uidvalidity` holds the folder's
//! UIDVALIDITY, written once and fsynced.
//!
//! Durability: the spool file is fsynced, hard-linked into `new/` of each mailbox, and each
//! `new/` directory is fsynced before `deliver` returns.
use std::{
    collections::HashMap,
    fs,
    io::{self, Write},
    path::{Path, PathBuf},
    sync::{
        Mutex,
        atomic::{AtomicU64, Ordering},
    },
};

use super::{
    FolderIndex, MessageMeta, SpoolWriter, SpooledMessage, Store, StoreError, Usage, unix_nanos,
};

const UIDVALIDITY_FILE: &str = "kubemail-uidvalidity";

/// Maildir storage under a data directory.
#[derive(Debug)]
pub struct Maildir {
    root: PathBuf,
    host: String,
    /// Per-mailbox state kept in memory after the first scan: next UID and usage.
    folders: Mutex<HashMap<String, FolderState>>,
    seq: AtomicU64,
}

#[derive(Debug, Clone, Copy)]
struct FolderState {
    uid_next: u32,
    usage: Usage,
}

impl Maildir {
    /// Opens (creating if needed) the store under `root`.
    pub fn open(root: &Path, host: &str) -> Result<Self, StoreError> {
        for dir in [root.join("mail"), root.join("spool")] {
            fs::create_dir_all(&dir).map_err(StoreError::from_io)?;
        }
        // Spool files left by a crash were never acknowledged: remove them.
        for entry in fs::read_dir(root.join("spool"))
            .map_err(StoreError::from_io)?
            .flatten()
        {
            let _ = fs::remove_file(entry.path());
        }
        Ok(Self {
            root: root.to_path_buf(),
            host: host.replace(['/', ':', '.'], "_"),
            folders: Mutex::new(HashMap::new()),
            seq: AtomicU64::new(0),
        })
    }

    /// The Maildir of a mailbox's INBOX.
    pub fn inbox_path(&self, mailbox: &str) -> Result<PathBuf, StoreError> {
        let (local, domain) = mailbox
            .rsplit_once('@')
            .ok_or_else(|| StoreError::InvalidName(mailbox.into()))?;
        let safe = |s: &str| {
            !s.is_empty()
                && s != "."
                && s != ".."
                && !s.starts_with('.')
                && !s.contains(['/', '\0'])
        };
        if !safe(local) || !safe(domain) {
            return Err(StoreError::InvalidName(mailbox.into()));
        }
        Ok(self.root.join("mail").join(domain).join(local))
    }

    fn ensure_maildir(&self, dir: &Path) -> Result<(), StoreError> {
        if dir.join("new").is_dir() {
            return Ok(());
        }
        for sub in ["tmp", "new", "cur"] {
            fs::create_dir_all(dir.join(sub)).map_err(StoreError::from_io)?;
        }
        let validity = (unix_nanos() / 1_000_000_000) as u32;
        let path = dir.join(UIDVALIDITY_FILE);
        let mut f = fs::File::create(&path).map_err(StoreError::from_io)?;
        writeln!(f, "{validity}").map_err(StoreError::from_io)?;
        f.sync_all().map_err(StoreError::from_io)?;
        for d in [
            dir.to_path_buf(),
            dir.parent().map(Path::to_path_buf).unwrap_or_default(),
        ] {
            sync_dir(&d)?;
        }
        Ok(())
    }

    fn state(&self, mailbox: &str, dir: &Path) -> Result<FolderState, StoreError> {
        if let Some(s) = self.folders.lock().expect("store lock").get(mailbox) {
            return Ok(*s);
        }
        let index = scan(dir)?;
        let state = FolderState {
            uid_next: index.uid_next,
            usage: Usage {
                bytes: index.messages.iter().map(|m| m.size).sum(),
                messages: index.messages.len() as u64,
            },
        };
        self.folders
            .lock()
            .expect("store lock")
            .insert(mailbox.to_string(), state);
        Ok(state)
    }

    fn file_name(&self, uid: u32, size: u64) -> String {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        let n = self.seq.fetch_add(1, Ordering::Relaxed);
        format!(
            "{}.M{}P{}Q{n}.{},U={uid},S={size}",
            now.as_secs(),
            now.subsec_micros(),
            std::process::id(),
            self.host
        )
    }
}

impl Store for Maildir {
    fn spool(&self) -> Result<SpoolWriter, StoreError> {
        SpoolWriter::create(&self.root.join("spool"))
    }

    fn deliver(&self, message: SpooledMessage, mailboxes: &[String]) -> Result<(), StoreError> {
        let result = (|| {
            let mut touched = Vec::new();
            for mailbox in mailboxes {
                let dir = self.inbox_path(mailbox)?;
                self.ensure_maildir(&dir)?;
                let state = self.state(mailbox, &dir)?;
                // UIDs are handed out under the lock, so two deliveries never share one.
                let uid = {
                    let mut folders = self.folders.lock().expect("store lock");
                    let s = folders.entry(mailbox.clone()).or_insert(state);
                    let uid = s.uid_next;
                    s.uid_next += 1;
                    s.usage.bytes += message.size;
                    s.usage.messages += 1;
                    uid
                };
                let target = dir.join("new").join(self.file_name(uid, message.size));
                if let Err(err) = fs::hard_link(&message.path, &target) {
                    if err.raw_os_error() == Some(18) {
                        copy_synced(&message.path, &target)?;
                    } else {
                        self.folders.lock().expect("store lock").remove(mailbox);
                        return Err(StoreError::from_io(err));
                    }
                }
                touched.push(dir.join("new"));
            }
            for dir in touched {
                sync_dir(&dir)?;
            }
            Ok(())
        })();
        let _ = fs::remove_file(&message.path);
        result
    }

    fn usage(&self, mailbox: &str) -> Result<Usage, StoreError> {
        let dir = self.inbox_path(mailbox)?;
        if !dir.join("new").is_dir() {
            return Ok(Usage::default());
        }
        Ok(self.state(mailbox, &dir)?.usage)
    }

    fn inbox(&self, mailbox: &str) -> Result<FolderIndex, StoreError> {
        let dir = self.inbox_path(mailbox)?;
        if !dir.join("new").is_dir() {
            return Ok(FolderIndex {
                uid_validity: 0,
                uid_next: 1,
                messages: Vec::new(),
            });
        }
        scan(&dir)
    }

    fn read(&self, mailbox: &str, message: &MessageMeta) -> Result<Option<Vec<u8>>, StoreError> {
        let dir = self.inbox_path(mailbox)?;
        for sub in ["new", "cur"] {
            match fs::read(dir.join(sub).join(&message.file_name)) {
                Ok(bytes) => return Ok(Some(bytes)),
                Err(err) if err.kind() == io::ErrorKind::NotFound => continue,
                Err(err) => return Err(StoreError::from_io(err)),
            }
        }
        // Renamed meanwhile (flags changed): find it by UID.
        self.read_message(mailbox, message.uid)
    }

    fn expunge(&self, mailbox: &str, messages: &[MessageMeta]) -> Result<(), StoreError> {
        let dir = self.inbox_path(mailbox)?;
        let mut removed = Usage::default();
        for sub in ["new", "cur"] {
            let Ok(entries) = fs::read_dir(dir.join(sub)) else {
                continue;
            };
            for entry in entries.flatten() {
                let name = entry.file_name().to_string_lossy().to_string();
                let Some((uid, size, _)) = parse_name(&name) else {
                    continue;
                };
                if messages.iter().any(|m| m.uid == uid) {
                    match fs::remove_file(entry.path()) {
                        Ok(()) => {
                            removed.bytes += size;
                            removed.messages += 1;
                        }
                        Err(err) if err.kind() == io::ErrorKind::NotFound => {}
                        Err(err) => return Err(StoreError::from_io(err)),
                    }
                }
            }
            sync_dir(&dir.join(sub))?;
        }
        if let Some(state) = self.folders.lock().expect("store lock").get_mut(mailbox) {
            state.usage.bytes = state.usage.bytes.saturating_sub(removed.bytes);
            state.usage.messages = state.usage.messages.saturating_sub(removed.messages);
        }
        Ok(())
    }

    fn read_message(&self, mailbox: &str, uid: u32) -> Result<Option<Vec<u8>>, StoreError> {
        let dir = self.inbox_path(mailbox)?;
        for sub in ["cur", "new"] {
            let Ok(entries) = fs::read_dir(dir.join(sub)) else {
                continue;
            };
            for entry in entries.flatten() {
                let name = entry.file_name();
                if parse_name(&name.to_string_lossy()).is_some_and(|(u, _, _)| u == uid) {
                    return fs::read(entry.path())
                        .map(Some)
                        .map_err(StoreError::from_io);
                }
            }
        }
        Ok(None)
    }
}

/// Reads a Maildir folder's index from its directory listing.
pub fn scan(dir: &Path) -> Result<FolderIndex, StoreError> {
    let uid_validity = fs::read_to_string(dir.join(UIDVALIDITY_FILE))
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(1);
    let mut messages = Vec::new();
    for sub in ["new", "cur"] {
        let entries = match fs::read_dir(dir.join(sub)) {
            Ok(e) => e,
            Err(err) if err.kind() == io::ErrorKind::NotFound => continue,
            Err(err) => return Err(StoreError::from_io(err)),
        };
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().to_string();
            let Some((uid, size, flags)) = parse_name(&name) else {
                continue;
            };
            let internal_date = name
                .split('.')
                .next()
                .and_then(|s| s.parse().ok())
                .unwrap_or_default();
            messages.push(MessageMeta {
                uid,
                size,
                flags,
                internal_date,
                file_name: name,
            });
        }
    }
    messages.sort_by_key(|m| m.uid);
    let uid_next = messages.last().map_or(1, |m| m.uid + 1);
    Ok(FolderIndex {
        uid_validity,
        uid_next,
        messages,
    })
}

/// `(uid, size, flags)` from a file name written by this store.
fn parse_name(name: &str) -> Option<(u32, u64, String)> {
    let (base, info) = match name.split_once(":2,") {
        Some((b, i)) => (b, i),
        None => (name, ""),
    };
    let mut uid = None;
    let mut size = None;
    for field in base.split(',').skip(1) {
        if let Some(v) = field.strip_prefix("U=") {
            uid = v.parse().ok();
        } else if let Some(v) = field.strip_prefix("S=") {
            size = v.parse().ok();
        }
    }
    let mut flags: Vec<char> = info.chars().filter(char::is_ascii_uppercase).collect();
    flags.sort_unstable();
    Some((uid?, size?, flags.into_iter().collect()))
}

fn copy_synced(from: &Path, to: &Path) -> Result<(), StoreError> {
    fs::copy(from, to).map_err(StoreError::from_io)?;
    fs::File::open(to)
        .and_then(|f| f.sync_all())
        .map_err(StoreError::from_io)
}

fn sync_dir(dir: &Path) -> Result<(), StoreError> {
    fs::File::open(dir)
        .and_then(|f| f.sync_all())
        .map_err(StoreError::from_io)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spooled(store: &Maildir, body: &[u8]) -> SpooledMessage {
        let mut w = store.spool().expect("spool");
        w.write(body).expect("write");
        w.finish().expect("finish")
    }

    #[test]
    fn delivery_lands_in_new_with_ascending_uids_and_survives_a_rescan() {
        let tmp = tempfile::tempdir().expect("tmp");
        let store = Maildir::open(tmp.path(), "mail.example.test").expect("open");
        let boxes = vec![
            "alice@example.test".to_string(),
            "bob@example.test".to_string(),
        ];
        store
            .deliver(spooled(&store, b"Subject: one\r\n\r\nhi\r\n"), &boxes)
            .expect("deliver");
        store
            .deliver(spooled(&store, b"Subject: two\r\n\r\nhi\r\n"), &boxes[..1])
            .expect("deliver");
        let inbox = store.inbox("alice@example.test").expect("inbox");
        assert_eq!(
            inbox.messages.iter().map(|m| m.uid).collect::<Vec<_>>(),
            [1, 2]
        );
        assert_eq!(inbox.uid_next, 3);
        assert_eq!(store.usage("bob@example.test").expect("usage").messages, 1);
        assert_eq!(
            store
                .read_message("alice@example.test", 2)
                .expect("read")
                .as_deref(),
            Some(&b"Subject: two\r\n\r\nhi\r\n"[..])
        );
        // Nothing stays in the spool, and a fresh store (a restart) continues the UIDs.
        assert_eq!(
            fs::read_dir(tmp.path().join("spool"))
                .expect("spool")
                .count(),
            0
        );
        let reopened = Maildir::open(tmp.path(), "mail.example.test").expect("reopen");
        reopened
            .deliver(spooled(&reopened, b"x\r\n"), &boxes[..1])
            .expect("deliver");
        let inbox = reopened.inbox("alice@example.test").expect("inbox");
        assert_eq!(inbox.messages.last().map(|m| m.uid), Some(3));
    }

    #[test]
    fn an_unfinished_spool_file_is_removed() {
        let tmp = tempfile::tempdir().expect("tmp");
        let store = Maildir::open(tmp.path(), "h").expect("open");
        let mut w = store.spool().expect("spool");
        w.write(b"half a message").expect("write");
        drop(w);
        assert_eq!(
            fs::read_dir(tmp.path().join("spool"))
                .expect("spool")
                .count(),
            0
        );
    }

    #[test]
    fn names_that_escape_the_store_are_refused() {
        let tmp = tempfile::tempdir().expect("tmp");
        let store = Maildir::open(tmp.path(), "h").expect("open");
        for bad in [
            "../x@example.test",
            "x@..",
            "noat",
            ".hidden@example.test",
            "a/b@example.test",
        ] {
            assert!(store.inbox_path(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn flags_and_sizes_come_from_the_file_name() {
        assert_eq!(
            parse_name("1.M1P1Q1.h,U=7,S=42:2,SF"),
            Some((7, 42, "FS".to_string()))
        );
        assert_eq!(
            parse_name("1.M1P1Q1.h,U=7,S=42"),
            Some((7, 42, String::new()))
        );
        assert_eq!(parse_name("foreign-file"), None);
    }
}
