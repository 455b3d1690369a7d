//! The embedded store: one Maildir++ per mailbox under `<data>/mail/<domain>/<local>/`.
//!
//! INBOX is the mailbox directory itself; every other folder is a sub-Maildir named `.` plus
//! the IMAP name with `/` written as `.` (and `.`, `%` inside a name percent-escaped), the
//! layout Dovecot and Courier read. File names follow the Maildir convention plus two fields
//! other tools already understand, and one of ours:
//! `<secs>.M<usecs>P<pid>Q<n>.<host>,U=<uid>,S=<size>,M=<modseq>:2,<flags>`.
//! `U=` carries the IMAP UID, `S=` the size and `M=` the CONDSTORE mod-sequence of the last
//! change (a name without one counts as 1), so the whole index (UIDs, sizes, flags, modseqs) can
//! be rebuilt from a directory listing without changing a UID a client already holds; `<secs>`
//! is the arrival time. `kubemail-uidvalidity` holds the folder's UIDVALIDITY (written once,
//! fsynced) and, after an expunge, the next UID and the expunge's mod-sequence, so neither a UID
//! nor a mod-sequence is handed out twice or goes backwards when the newest message is gone.
//!
//! One lock per folder serialises everything that hands out a UID or a mod-sequence together
//! with the file change that makes it visible (delivery, APPEND, COPY, flag changes, expunge),
//! and a fresh listing is read under it: a change with a lower mod-sequence is never visible
//! after one with a higher, so a client that saw HIGHESTMODSEQ `n` has seen every change up to
//! `n`.
//!
//! Durability: the spool file is fsynced, hard-linked into `new/` of each mailbox, and each
//! `new/` directory is fsynced before `deliver` returns. Flag changes are renames into `cur/`.
use std::{
    collections::HashMap,
    fs,
    io::{self, Write},
    path::{Path, PathBuf},
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
};

use tokio::sync::watch;

mod import;
mod repair;
mod sieve;
pub use import::Incoming;
pub use repair::Repaired;
pub use sieve::valid_name as valid_script_name;

use super::{
    DEFAULT_FOLDERS, FlagChange, FlagsSet, FolderIndex, INBOX, MessageMeta, Placement,
    SieveScripts, SpoolWriter, SpooledMessage, Store, StoreError, Usage, unix_nanos,
};

const UIDVALIDITY_FILE: &str = "kubemail-uidvalidity";
/// A folder's keyword table, in Dovecot's format (`<n> <name>` per line, letter `a + n`), so
/// Dovecot reading the Maildir sees the same keywords.
const KEYWORDS_FILE: &str = "dovecot-keywords";
const SUBSCRIPTIONS_FILE: &str = "subscriptions";
const DEFAULTS_MARKER: &str = "kubemail-default-folders";

/// Maildir storage under a data directory.
#[derive(Debug)]
pub struct Maildir {
    root: PathBuf,
    host: String,
    /// Next UID per folder (`mailbox\0folder`), kept in memory after the first scan.
    uid_next: Mutex<HashMap<String, u32>>,
    /// Usage per mailbox, kept in memory after the first scan.
    usage: Mutex<HashMap<String, Usage>>,
    watchers: Mutex<HashMap<String, watch::Sender<u64>>>,
    seq: AtomicU64,
    /// Folder indexes by directory, valid while `new/` and `cur/` keep their mtimes.
    indexes: Mutex<HashMap<PathBuf, CachedIndex>>,
    /// Serialises handing out UIDVALIDITY values.
    validity: Mutex<()>,
    /// One lock per folder directory for everything that changes it (see the module comment).
    folder_locks: Mutex<HashMap<PathBuf, Arc<Mutex<()>>>>,
    /// The highest mod-sequence handed out per folder directory, after the first scan.
    modseqs: Mutex<HashMap<PathBuf, u64>>,
}

#[derive(Debug)]
struct CachedIndex {
    mtimes: (std::time::SystemTime, std::time::SystemTime),
    index: FolderIndex,
}

/// The last UIDVALIDITY handed out under a mailbox, in its Maildir root.
const LAST_VALIDITY_FILE: &str = "kubemail-uidvalidity-last";

impl Maildir {
    /// A UIDVALIDITY for a folder being made (or repaired) at `dir`: the clock's second, but
    /// always above every value handed out before in the same mailbox, so folders made in one
    /// second differ and a folder deleted and made again never reuses its old value with other
    /// messages under the same UIDs (RFC 9051 s2.3.1.1).
    pub(super) fn new_validity(&self, dir: &Path) -> Result<u32, StoreError> {
        let is_folder = dir
            .file_name()
            .is_some_and(|n| n.to_string_lossy().starts_with('.'));
        let root = if is_folder {
            dir.parent().unwrap_or(dir)
        } else {
            dir
        };
        let _serial = self.validity.lock().expect("validity lock");
        let path = root.join(LAST_VALIDITY_FILE);
        let last = fs::read_to_string(&path)
            .ok()
            .and_then(|t| t.trim().parse::<u32>().ok())
            .unwrap_or(0);
        let now = u32::try_from(unix_nanos() / 1_000_000_000).unwrap_or(u32::MAX);
        let fresh = now.max(last.saturating_add(1)).max(1);
        fs::create_dir_all(root).map_err(StoreError::from_io)?;
        write_synced(&path, format!("{fresh}\n").as_bytes())?;
        Ok(fresh)
    }

    /// The letters of `names` in the folder at `dir`, adding the new ones to its table.
    /// Keywords compare without regard to case (RFC 9051 s2.3.2), and keep the first spelling.
    fn letters_for(&self, dir: &Path, names: &[String]) -> Result<String, StoreError> {
        if names.is_empty() {
            return Ok(String::new());
        }
        let lock = self.folder_lock(dir);
        let _serial = lock.lock().expect("folder lock");
        let mut table = read_keywords(dir);
        let mut letters = String::new();
        let mut grown = false;
        for name in names {
            let at = match table.iter().position(|k| k.eq_ignore_ascii_case(name)) {
                Some(at) => at,
                None => {
                    let free = table
                        .iter()
                        .position(String::is_empty)
                        .unwrap_or(table.len());
                    if free >= super::MAX_KEYWORDS {
                        return Err(StoreError::NotAllowed("a folder holds at most 26 keywords"));
                    }
                    if free == table.len() {
                        table.push(String::new());
                    }
                    table[free] = name.clone();
                    grown = true;
                    free
                }
            };
            letters.extend(super::keyword_letter(at));
        }
        if grown {
            let text: String = table
                .iter()
                .enumerate()
                .filter(|(_, k)| !k.is_empty())
                .map(|(n, k)| format!("{n} {k}\n"))
                .collect();
            write_synced(&dir.join(KEYWORDS_FILE), text.as_bytes())?;
        }
        Ok(letters)
    }

    /// The lock that serialises changes in a folder.
    fn folder_lock(&self, dir: &Path) -> Arc<Mutex<()>> {
        self.folder_locks
            .lock()
            .expect("folder locks")
            .entry(dir.to_path_buf())
            .or_default()
            .clone()
    }

    /// A new mod-sequence in the folder at `dir`, above every one handed out before (the
    /// caller holds the folder's lock).
    fn next_modseq(&self, dir: &Path) -> Result<u64, StoreError> {
        let mut map = self.modseqs.lock().expect("modseq lock");
        let highest = match map.get(dir) {
            Some(h) => *h,
            None => scan(dir)?.highest_modseq,
        };
        map.insert(dir.to_path_buf(), highest + 1);
        Ok(highest + 1)
    }

    /// Forgets the counters of a folder that was deleted or renamed, children included (a
    /// folder made again at the same path starts from its own files).
    fn forget_modseqs(&self, dir: &Path) {
        let name = dir.as_os_str().to_owned();
        self.modseqs.lock().expect("modseq lock").retain(|d, _| {
            let d = d.as_os_str().as_encoded_bytes();
            let name = name.as_encoded_bytes();
            // `.Work` and `.Work.2024` (a child), not `.Workshop`.
            !(d.starts_with(name) && matches!(d.get(name.len()), None | Some(b'.')))
        });
    }

    /// Reads a folder's listing under its lock (see the module comment).
    fn locked_scan(&self, dir: &Path) -> Result<FolderIndex, StoreError> {
        let lock = self.folder_lock(dir);
        let _serial = lock.lock().expect("folder lock");
        scan(dir)
    }

    /// Removes messages from a folder, durably; with `only_deleted`, only those whose file
    /// carries `\Deleted` (letter T) now. Flags live in the file name, so a message whose flags
    /// another session changed after the listing below has another name and is left alone:
    /// the removal is a compare-and-delete. Returns the UIDs removed.
    fn remove(
        &self,
        mailbox: &str,
        folder: &str,
        messages: &[MessageMeta],
        only_deleted: bool,
    ) -> Result<Vec<u32>, StoreError> {
        if messages.is_empty() {
            return Ok(Vec::new());
        }
        let dir = self.folder_path(mailbox, folder)?;
        let lock = self.folder_lock(&dir);
        let _serial = lock.lock().expect("folder lock");
        let doomed: std::collections::HashSet<u32> = messages.iter().map(|m| m.uid).collect();
        // The next UID and the expunge's mod-sequence are recorded first: once the highest
        // message is gone, the listing alone would hand its UID out again and HIGHESTMODSEQ
        // would go back.
        let index = scan(&dir)?;
        let record = UidFile {
            validity: index.uid_validity,
            uid_next: index.uid_next,
            modseq: self.next_modseq(&dir)?,
        };
        write_synced(&dir.join(UIDVALIDITY_FILE), record.render().as_bytes())?;
        let mut removed = (0i128, 0i128);
        let mut uids = Vec::new();
        let chosen = index
            .messages
            .iter()
            .filter(|m| doomed.contains(&m.uid) && (!only_deleted || m.flags.contains('T')));
        for m in chosen {
            for sub in ["new", "cur"] {
                match fs::remove_file(dir.join(sub).join(&m.file_name)) {
                    Ok(()) => {
                        removed.0 += i128::from(m.size);
                        removed.1 += 1;
                        uids.push(m.uid);
                        break;
                    }
                    Err(err) if err.kind() == io::ErrorKind::NotFound => {}
                    Err(err) => return Err(StoreError::from_io(err)),
                }
            }
        }
        for sub in ["new", "cur"] {
            sync_dir(&dir.join(sub))?;
        }
        self.add_usage(mailbox, -removed.0, -removed.1);
        self.notify(mailbox);
        Ok(uids)
    }

    /// Opens (creating if needed) the store under `root`.
    /// Opens a store to read it only (`migrate --dry-run`): no start-up repair, no spool
    /// clean-up, nothing written.
    pub fn open_to_read(root: &Path) -> Self {
        Self::unopened(root, "read")
    }

    fn unopened(root: &Path, host: &str) -> Self {
        Self {
            root: root.to_path_buf(),
            host: host.replace(['/', ':', '.'], "_"),
            uid_next: Mutex::new(HashMap::new()),
            usage: Mutex::new(HashMap::new()),
            watchers: Mutex::new(HashMap::new()),
            seq: AtomicU64::new(0),
            indexes: Mutex::new(HashMap::new()),
            validity: Mutex::new(()),
            folder_locks: Mutex::new(HashMap::new()),
            modseqs: Mutex::new(HashMap::new()),
        }
    }

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
        let store = Self::unopened(root, host);
        store.repair_all()?;
        Ok(store)
    }

    /// Every mailbox that has a directory here (`local@domain`), sorted.
    pub fn mailboxes(&self) -> Result<Vec<String>, StoreError> {
        let mut out = Vec::new();
        for domain in fs::read_dir(self.root.join("mail"))
            .map_err(StoreError::from_io)?
            .flatten()
        {
            let Ok(locals) = fs::read_dir(domain.path()) else {
                continue;
            };
            let domain = domain.file_name().to_string_lossy().to_string();
            for local in locals.flatten() {
                if local.path().join("cur").is_dir() {
                    out.push(format!("{}@{domain}", local.file_name().to_string_lossy()));
                }
            }
        }
        out.sort();
        Ok(out)
    }

    /// The Maildir of a mailbox's INBOX (the mailbox's directory).
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

    /// The Maildir of a folder.
    pub fn folder_path(&self, mailbox: &str, folder: &str) -> Result<PathBuf, StoreError> {
        let root = self.inbox_path(mailbox)?;
        if folder.eq_ignore_ascii_case(INBOX) {
            return Ok(root);
        }
        Ok(root.join(encode_folder(folder)?))
    }

    /// Makes the Maildir at `dir` unless it exists. `cur/` is what makes a folder exist, so it
    /// is made last, after the UID file: a session that finds `cur/` always finds the folder's
    /// UIDVALIDITY (an APPEND racing the first login once read no UID file and answered
    /// `APPENDUID 1`). Two creators take turns under the folder's lock.
    fn ensure_maildir(&self, dir: &Path) -> Result<(), StoreError> {
        if dir.join("cur").is_dir() {
            return Ok(());
        }
        let lock = self.folder_lock(dir);
        let _serial = lock.lock().expect("folder lock");
        if dir.join("cur").is_dir() {
            return Ok(());
        }
        fs::create_dir_all(dir).map_err(StoreError::from_io)?;
        let validity = self.new_validity(dir)?;
        write_synced(
            &dir.join(UIDVALIDITY_FILE),
            format!("{validity}\n").as_bytes(),
        )?;
        for sub in ["tmp", "new", "cur"] {
            fs::create_dir_all(dir.join(sub)).map_err(StoreError::from_io)?;
        }
        for d in [
            dir.to_path_buf(),
            dir.parent().map(Path::to_path_buf).unwrap_or_default(),
        ] {
            sync_dir(&d)?;
        }
        Ok(())
    }

    /// An existing folder's directory.
    fn existing(&self, mailbox: &str, folder: &str) -> Result<PathBuf, StoreError> {
        let dir = self.folder_path(mailbox, folder)?;
        if folder.eq_ignore_ascii_case(INBOX) {
            self.ensure_maildir(&dir)?;
        } else if !dir.join("cur").is_dir() {
            return Err(StoreError::NoSuchFolder(folder.into()));
        }
        Ok(dir)
    }

    /// Hands out `count` UIDs in a folder, under the lock so two writers never share one.
    fn allocate(
        &self,
        mailbox: &str,
        folder: &str,
        dir: &Path,
        count: u32,
    ) -> Result<(u32, u32), StoreError> {
        let key = format!("{mailbox}\0{}", folder_key(folder));
        let mut map = self.uid_next.lock().expect("store lock");
        let next = match map.get(&key) {
            Some(n) => *n,
            None => scan(dir)?.uid_next,
        };
        map.insert(key, next + count);
        Ok((read_uid_file(dir)?.validity, next))
    }

    fn forget_uids(&self, mailbox: &str, folder: &str) {
        let key = format!("{mailbox}\0{}", folder_key(folder));
        self.uid_next.lock().expect("store lock").remove(&key);
    }

    fn add_usage(&self, mailbox: &str, bytes: i128, messages: i128) {
        if let Some(u) = self.usage.lock().expect("store lock").get_mut(mailbox) {
            u.bytes = (u.bytes as i128 + bytes).max(0) as u64;
            u.messages = (u.messages as i128 + messages).max(0) as u64;
        }
    }

    fn notify(&self, mailbox: &str) {
        if let Some(tx) = self.watchers.lock().expect("store lock").get(mailbox) {
            tx.send_modify(|n| *n += 1);
        }
    }

    fn file_name(&self, secs: i64, uid: u32, size: u64, modseq: u64, flags: &str) -> String {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        let n = self.seq.fetch_add(1, Ordering::Relaxed);
        let mut name = format!(
            "{secs}.M{}P{}Q{n}.{},U={uid},S={size},M={modseq}",
            now.subsec_micros(),
            std::process::id(),
            self.host
        );
        if !flags.is_empty() {
            name.push_str(":2,");
            name.push_str(flags);
        }
        name
    }

    /// Links (or copies) `source` into a folder as a new message, in `new/` whatever its flags:
    /// it is `\Recent` for the first session to see it (an APPEND to Sent, a COPY, a MOVE), as
    /// a delivery is. The caller holds the folder's lock and fsyncs the directory.
    fn place(&self, source: &Path, dir: &Path, new: NewMessage<'_>) -> Result<PathBuf, StoreError> {
        let NewMessage {
            uid,
            size,
            flags,
            secs,
            modseq,
        } = new;
        let sub = "new";
        let target = dir
            .join(sub)
            .join(self.file_name(secs, uid, size, modseq, flags));
        if let Err(err) = fs::hard_link(source, &target) {
            if err.raw_os_error() == Some(18) {
                copy_synced(source, &target)?;
            } else {
                return Err(StoreError::from_io(err));
            }
        }
        Ok(dir.join(sub))
    }

    /// A folder's index, from the cache while its directories are unchanged. Like git's index,
    /// an mtime too close to the scan is not trusted (file times are coarse: a change in the
    /// same tick would not move them), so a folder that just changed is always read again.
    fn cached_scan(&self, dir: &Path) -> Result<FolderIndex, StoreError> {
        let mtime = |sub: &str| fs::metadata(dir.join(sub)).and_then(|m| m.modified()).ok();
        let (Some(new), Some(cur)) = (mtime("new"), mtime("cur")) else {
            return self.locked_scan(dir);
        };
        if let Some(cached) = self.indexes.lock().expect("index lock").get(dir)
            && cached.mtimes == (new, cur)
        {
            return Ok(cached.index.clone());
        }
        let started = std::time::SystemTime::now();
        let index = self.locked_scan(dir)?;
        let settled = |t: std::time::SystemTime| {
            started
                .duration_since(t)
                .is_ok_and(|age| age > std::time::Duration::from_secs(1))
        };
        if settled(new) && settled(cur) {
            let mut cache = self.indexes.lock().expect("index lock");
            if cache.len() > 1000 {
                cache.clear();
            }
            cache.insert(
                dir.to_path_buf(),
                CachedIndex {
                    mtimes: (new, cur),
                    index: index.clone(),
                },
            );
        }
        Ok(index)
    }

    fn mailbox_usage(&self, mailbox: &str) -> Result<Usage, StoreError> {
        if let Some(u) = self.usage.lock().expect("store lock").get(mailbox) {
            return Ok(*u);
        }
        let mut usage = Usage::default();
        for folder in self.folders(mailbox)? {
            let dir = self.folder_path(mailbox, &folder)?;
            for m in scan(&dir)?.messages {
                usage.bytes += m.size;
                usage.messages += 1;
            }
        }
        self.usage
            .lock()
            .expect("store lock")
            .insert(mailbox.to_string(), usage);
        Ok(usage)
    }
}

impl Store for Maildir {
    fn spool(&self) -> Result<SpoolWriter, StoreError> {
        SpoolWriter::create(&self.root.join("spool"))
    }

    fn deliver_to(
        &self,
        message: SpooledMessage,
        placements: &[Placement],
    ) -> Result<(), StoreError> {
        let now = (unix_nanos() / 1_000_000_000) as i64;
        let result = (|| {
            let mut touched = Vec::new();
            for placement in placements {
                let mailbox = &placement.mailbox;
                let dir = if placement.folder.eq_ignore_ascii_case(INBOX) {
                    let dir = self.inbox_path(mailbox)?;
                    self.ensure_maildir(&dir)?;
                    dir
                } else {
                    self.existing(mailbox, &placement.folder)?
                };
                let _ = self.mailbox_usage(mailbox)?;
                let lock = self.folder_lock(&dir);
                let _serial = lock.lock().expect("folder lock");
                let (_, uid) = self.allocate(mailbox, &placement.folder, &dir, 1)?;
                let new = NewMessage {
                    uid,
                    size: message.size,
                    flags: &placement.flags,
                    secs: now,
                    modseq: self.next_modseq(&dir)?,
                };
                match self.place(&message.path, &dir, new) {
                    Ok(sub) => touched.push(sub),
                    Err(err) => {
                        self.forget_uids(mailbox, &placement.folder);
                        return Err(err);
                    }
                }
                // Under the lock, as in `append`.
                self.notify(mailbox);
                self.add_usage(mailbox, message.size.into(), 1);
            }
            for dir in &touched {
                sync_dir(dir)?;
            }
            Ok(())
        })();
        let _ = fs::remove_file(&message.path);
        result
    }

    fn usage(&self, mailbox: &str) -> Result<Usage, StoreError> {
        if !self.inbox_path(mailbox)?.is_dir() {
            return Ok(Usage::default());
        }
        self.mailbox_usage(mailbox)
    }

    fn index(&self, mailbox: &str, folder: &str) -> Result<FolderIndex, StoreError> {
        let dir = self.folder_path(mailbox, folder)?;
        if !dir.join("cur").is_dir() {
            if folder.eq_ignore_ascii_case(INBOX) {
                return Ok(FolderIndex {
                    uid_validity: 0,
                    uid_next: 1,
                    messages: Vec::new(),
                    keywords: Vec::new(),
                    highest_modseq: 1,
                });
            }
            return Err(StoreError::NoSuchFolder(folder.into()));
        }
        self.cached_scan(&dir)
    }

    fn read(
        &self,
        mailbox: &str,
        folder: &str,
        message: &MessageMeta,
    ) -> Result<Option<Vec<u8>>, StoreError> {
        let dir = self.folder_path(mailbox, folder)?;
        read_listed(&dir, message, fs::read)
    }

    fn read_header(
        &self,
        mailbox: &str,
        folder: &str,
        message: &MessageMeta,
    ) -> Result<Option<Vec<u8>>, StoreError> {
        let dir = self.folder_path(mailbox, folder)?;
        read_listed(&dir, message, read_head)
    }

    fn read_message(&self, mailbox: &str, uid: u32) -> Result<Option<Vec<u8>>, StoreError> {
        let dir = self.inbox_path(mailbox)?;
        match find(&dir, uid) {
            Some(path) => fs::read(path).map(Some).map_err(StoreError::from_io),
            None => Ok(None),
        }
    }

    fn expunge(
        &self,
        mailbox: &str,
        folder: &str,
        messages: &[MessageMeta],
    ) -> Result<(), StoreError> {
        self.remove(mailbox, folder, messages, false).map(|_| ())
    }

    fn expunge_deleted(
        &self,
        mailbox: &str,
        folder: &str,
        messages: &[MessageMeta],
    ) -> Result<Vec<u32>, StoreError> {
        self.remove(mailbox, folder, messages, true)
    }

    fn keyword_letters(
        &self,
        mailbox: &str,
        folder: &str,
        names: &[String],
    ) -> Result<String, StoreError> {
        let dir = self.existing(mailbox, folder)?;
        self.letters_for(&dir, names)
    }

    fn append(
        &self,
        mailbox: &str,
        folder: &str,
        message: SpooledMessage,
        flags: &str,
        internal_date: Option<i64>,
    ) -> Result<(u32, u32), StoreError> {
        let result = (|| {
            let dir = self.existing(mailbox, folder)?;
            let _ = self.mailbox_usage(mailbox)?;
            let lock = self.folder_lock(&dir);
            let serial = lock.lock().expect("folder lock");
            let (validity, uid) = self.allocate(mailbox, folder, &dir, 1)?;
            let new = NewMessage {
                uid,
                size: message.size,
                flags,
                secs: internal_date.unwrap_or((unix_nanos() / 1_000_000_000) as i64),
                modseq: self.next_modseq(&dir)?,
            };
            let sub = self.place(&message.path, &dir, new)?;
            // Told while the lock is held: a reader that sees the message (STATUS, a scan
            // under the lock) finds its session already told to refresh.
            self.notify(mailbox);
            drop(serial);
            sync_dir(&sub)?;
            self.add_usage(mailbox, message.size.into(), 1);
            Ok((validity, uid))
        })();
        let _ = fs::remove_file(&message.path);
        result
    }

    fn copy(
        &self,
        mailbox: &str,
        from: &str,
        messages: &[MessageMeta],
        to: &str,
    ) -> Result<(u32, Vec<(u32, u32)>), StoreError> {
        let source = self.existing(mailbox, from)?;
        let target = self.existing(mailbox, to)?;
        let _ = self.mailbox_usage(mailbox)?;
        // Keyword letters are per folder: the target's letters for the keywords the copied
        // messages carry (only those: a Trash that took every folder's whole table would run
        // out of its 26 letters and refuse every move).
        let source_keywords = read_keywords(&source);
        let mut carried: Vec<(char, String)> = Vec::new();
        for m in messages {
            for letter in m.flags.chars().filter(char::is_ascii_lowercase) {
                let name = source_keywords
                    .get(usize::from(letter as u8 - b'a'))
                    .filter(|k| !k.is_empty());
                if let Some(name) = name
                    && !carried.iter().any(|(l, _)| *l == letter)
                {
                    carried.push((letter, name.clone()));
                }
            }
        }
        let names: Vec<String> = carried.iter().map(|(_, n)| n.clone()).collect();
        let target_letters = self.letters_for(&target, &names)?;
        let translate: HashMap<char, char> = carried
            .iter()
            .map(|(l, _)| *l)
            .zip(target_letters.chars())
            .collect();
        // No flag change or expunge in the source between finding a file and linking it (the
        // stress test caught a rename in that gap: a storage error for a plain UID COPY), and
        // the target's UIDs and mod-sequence handed out with the links that make them visible.
        // Both locks are taken in path order, so two COPYs in opposite directions cannot each
        // hold the one the other waits for.
        let (first_lock, second_lock) = if source <= target {
            (self.folder_lock(&source), self.folder_lock(&target))
        } else {
            (self.folder_lock(&target), self.folder_lock(&source))
        };
        let _first = first_lock.lock().expect("folder lock");
        let _second = (source != target).then(|| second_lock.lock().expect("folder lock"));
        let (validity, first) = self.allocate(mailbox, to, &target, messages.len() as u32)?;
        let modseq = self.next_modseq(&target)?;
        let mut uids = Vec::new();
        let mut subs = std::collections::BTreeSet::new();
        let mut next = first;
        for m in messages {
            let Some(path) = locate(&source, m) else {
                continue;
            };
            let flags: String = parse_name(&path.file_name().unwrap_or_default().to_string_lossy())
                .map(|n| n.flags)
                .unwrap_or_default()
                .chars()
                .filter_map(|c| {
                    if c.is_ascii_lowercase() {
                        translate.get(&c).copied()
                    } else {
                        Some(c)
                    }
                })
                .collect();
            let flags = FlagChange::Replace(flags).apply("");
            let new = NewMessage {
                uid: next,
                size: m.size,
                flags: &flags,
                secs: m.internal_date,
                modseq,
            };
            subs.insert(self.place(&path, &target, new)?);
            self.add_usage(mailbox, m.size.into(), 1);
            uids.push((m.uid, next));
            next += 1;
        }
        for sub in subs {
            sync_dir(&sub)?;
        }
        self.notify(mailbox);
        Ok((validity, uids))
    }

    fn set_flags(
        &self,
        mailbox: &str,
        folder: &str,
        changes: &[(MessageMeta, FlagChange)],
        unchanged_since: Option<u64>,
    ) -> Result<FlagsSet, StoreError> {
        let dir = self.folder_path(mailbox, folder)?;
        // One writer per folder at a time: each change reads the flags the file has now and
        // renames it, with no other session renaming in between.
        let lock = self.folder_lock(&dir);
        let _serial = lock.lock().expect("folder lock");
        let mut out = FlagsSet::default();
        // One mod-sequence for the whole command, taken at the first real change.
        let mut modseq = None;
        for (m, change) in changes {
            let Some(current) = locate(&dir, m) else {
                continue;
            };
            let name = current
                .file_name()
                .unwrap_or_default()
                .to_string_lossy()
                .to_string();
            let Some(named) = parse_name(&name) else {
                continue;
            };
            if unchanged_since.is_some_and(|limit| named.modseq > limit) {
                out.modified.push(m.uid);
                continue;
            }
            let flags = change.apply(&named.flags);
            let mut now = MessageMeta {
                flags,
                file_name: name.clone(),
                modseq: named.modseq,
                in_new: current.parent() == Some(dir.join("new").as_path()),
                ..m.clone()
            };
            // A change that changes nothing takes no mod-sequence and leaves the file where it
            // is (moving it out of `new/` would take `\Recent` from the session due it).
            if now.flags != named.flags {
                let next = match modseq {
                    Some(n) => n,
                    None => *modseq.insert(self.next_modseq(&dir)?),
                };
                let base = name.split_once(":2,").map_or(name.as_str(), |(b, _)| b);
                let new_name = format!("{}:2,{}", with_modseq(base, next), now.flags);
                match fs::rename(&current, dir.join("cur").join(&new_name)) {
                    Ok(()) => {}
                    Err(err) if err.kind() == io::ErrorKind::NotFound => continue,
                    Err(err) => return Err(StoreError::from_io(err)),
                }
                now.file_name = new_name;
                now.modseq = next;
                now.in_new = false;
            }
            out.now.push(now);
        }
        if modseq.is_some() {
            sync_dir(&dir.join("cur"))?;
            self.notify(mailbox);
        }
        Ok(out)
    }

    fn claim_recent(&self, mailbox: &str, folder: &str) -> Result<Vec<u32>, StoreError> {
        let dir = self.folder_path(mailbox, folder)?;
        if !dir.join("cur").is_dir() {
            return Ok(Vec::new());
        }
        let lock = self.folder_lock(&dir);
        let _serial = lock.lock().expect("folder lock");
        let entries = match fs::read_dir(dir.join("new")) {
            Ok(entries) => entries,
            Err(err) if err.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(err) => return Err(StoreError::from_io(err)),
        };
        let mut claimed = Vec::new();
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            let Some(named) = parse_name(&name) else {
                continue;
            };
            let base = name.split_once(":2,").map_or(name.as_str(), |(b, _)| b);
            let target = dir.join("cur").join(format!("{base}:2,{}", named.flags));
            match fs::rename(entry.path(), target) {
                Ok(()) => claimed.push(named.uid),
                Err(err) if err.kind() == io::ErrorKind::NotFound => {}
                Err(err) => return Err(StoreError::from_io(err)),
            }
        }
        if !claimed.is_empty() {
            sync_dir(&dir.join("cur"))?;
        }
        claimed.sort_unstable();
        Ok(claimed)
    }

    fn folders(&self, mailbox: &str) -> Result<Vec<String>, StoreError> {
        let root = self.inbox_path(mailbox)?;
        let mut out = Vec::new();
        if let Ok(entries) = fs::read_dir(&root) {
            for entry in entries.flatten() {
                let name = entry.file_name().to_string_lossy().to_string();
                if let Some(folder) = decode_folder(&name)
                    && entry.path().join("cur").is_dir()
                {
                    out.push(folder);
                }
            }
        }
        out.sort();
        out.insert(0, INBOX.to_string());
        Ok(out)
    }

    fn create_folder(&self, mailbox: &str, folder: &str) -> Result<(), StoreError> {
        let dir = self.folder_path(mailbox, folder)?;
        if folder.eq_ignore_ascii_case(INBOX) || dir.join("cur").is_dir() {
            return Err(StoreError::FolderExists(folder.into()));
        }
        self.ensure_maildir(&self.inbox_path(mailbox)?)?;
        // Parents first, so the hierarchy is listable.
        let parts: Vec<&str> = folder.split('/').collect();
        for n in 1..=parts.len() {
            let name = parts[..n].join("/");
            if name.eq_ignore_ascii_case(INBOX) {
                continue;
            }
            self.ensure_maildir(&self.folder_path(mailbox, &name)?)?;
        }
        self.notify(mailbox);
        Ok(())
    }

    fn delete_folder(&self, mailbox: &str, folder: &str) -> Result<(), StoreError> {
        if folder.eq_ignore_ascii_case(INBOX) {
            return Err(StoreError::NotAllowed("INBOX cannot be deleted"));
        }
        let dir = self.existing(mailbox, folder)?;
        let gone = scan(&dir)?.messages;
        fs::remove_dir_all(&dir).map_err(StoreError::from_io)?;
        sync_dir(&self.inbox_path(mailbox)?)?;
        self.forget_uids(mailbox, folder);
        self.forget_modseqs(&dir);
        self.add_usage(
            mailbox,
            -gone.iter().map(|m| i128::from(m.size)).sum::<i128>(),
            -(gone.len() as i128),
        );
        self.notify(mailbox);
        Ok(())
    }

    fn rename_folder(&self, mailbox: &str, from: &str, to: &str) -> Result<(), StoreError> {
        let target = self.folder_path(mailbox, to)?;
        if to.eq_ignore_ascii_case(INBOX) || target.join("cur").is_dir() {
            return Err(StoreError::FolderExists(to.into()));
        }
        let source = self.existing(mailbox, from)?;
        if from.eq_ignore_ascii_case(INBOX) {
            // RFC 3501: renaming INBOX moves its messages and leaves INBOX empty.
            self.create_folder(mailbox, to)?;
            let messages = scan(&source)?.messages;
            self.copy(mailbox, INBOX, &messages, to)?;
            return self.expunge(mailbox, INBOX, &messages);
        }
        // Into its own subtree (`x` to `x/y`): its parents would be made inside it first.
        if to.starts_with(&format!("{from}/")) {
            return Err(StoreError::NotAllowed(
                "a folder cannot be renamed into itself",
            ));
        }
        for n in 1..to.split('/').count() {
            let parent = to.split('/').take(n).collect::<Vec<_>>().join("/");
            if !parent.eq_ignore_ascii_case(INBOX) {
                self.ensure_maildir(&self.folder_path(mailbox, &parent)?)?;
            }
        }
        let root = self.inbox_path(mailbox)?;
        // Children move with their parent.
        let prefix = format!("{from}/");
        for folder in self.folders(mailbox)? {
            if let Some(rest) = folder.strip_prefix(&prefix) {
                let new = format!("{to}/{rest}");
                fs::rename(
                    self.folder_path(mailbox, &folder)?,
                    self.folder_path(mailbox, &new)?,
                )
                .map_err(StoreError::from_io)?;
                self.forget_uids(mailbox, &folder);
            }
        }
        fs::rename(&source, &target).map_err(StoreError::from_io)?;
        sync_dir(&root)?;
        self.forget_uids(mailbox, from);
        self.forget_modseqs(&source);
        self.forget_modseqs(&target);
        self.notify(mailbox);
        Ok(())
    }

    fn subscriptions(&self, mailbox: &str) -> Result<Vec<String>, StoreError> {
        let path = self.inbox_path(mailbox)?.join(SUBSCRIPTIONS_FILE);
        match fs::read_to_string(path) {
            Ok(text) => Ok(text
                .lines()
                .filter(|l| !l.is_empty())
                .map(String::from)
                .collect()),
            Err(err) if err.kind() == io::ErrorKind::NotFound => Ok(Vec::new()),
            Err(err) => Err(StoreError::from_io(err)),
        }
    }

    fn set_subscribed(&self, mailbox: &str, folder: &str, on: bool) -> Result<(), StoreError> {
        let root = self.inbox_path(mailbox)?;
        self.ensure_maildir(&root)?;
        let mut list = self.subscriptions(mailbox)?;
        list.retain(|f| f != folder);
        if on {
            list.push(folder.to_string());
        }
        let text: String = list.iter().map(|f| format!("{f}\n")).collect();
        write_synced(&root.join(SUBSCRIPTIONS_FILE), text.as_bytes())
    }

    fn ensure_default_folders(&self, mailbox: &str) -> Result<(), StoreError> {
        let root = self.inbox_path(mailbox)?;
        if root.join(DEFAULTS_MARKER).exists() {
            return Ok(());
        }
        self.ensure_maildir(&root)?;
        let subscribed = self.subscriptions(mailbox)?;
        for (name, _) in DEFAULT_FOLDERS {
            match self.create_folder(mailbox, name) {
                Ok(()) | Err(StoreError::FolderExists(_)) => {}
                Err(err) => return Err(err),
            }
            if !subscribed.iter().any(|s| s == name) {
                self.set_subscribed(mailbox, name, true)?;
            }
        }
        if !subscribed.iter().any(|s| s == INBOX) {
            self.set_subscribed(mailbox, INBOX, true)?;
        }
        write_synced(&root.join(DEFAULTS_MARKER), b"1\n")?;
        sync_dir(&root)
    }

    fn sieve_scripts(&self, mailbox: &str) -> Result<SieveScripts, StoreError> {
        self.list_scripts(mailbox)
    }

    fn sieve_script(&self, mailbox: &str, name: &str) -> Result<Option<String>, StoreError> {
        self.read_script(mailbox, name)
    }

    fn put_sieve_script(&self, mailbox: &str, name: &str, text: &str) -> Result<(), StoreError> {
        self.write_script(mailbox, name, text)
    }

    fn delete_sieve_script(&self, mailbox: &str, name: &str) -> Result<(), StoreError> {
        self.remove_script(mailbox, name)
    }

    fn rename_sieve_script(&self, mailbox: &str, from: &str, to: &str) -> Result<(), StoreError> {
        self.move_script(mailbox, from, to)
    }

    fn set_active_sieve_script(&self, mailbox: &str, name: Option<&str>) -> Result<(), StoreError> {
        self.activate_script(mailbox, name)
    }

    fn vacation_due(
        &self,
        mailbox: &str,
        key: &str,
        now: i64,
        seconds: u64,
    ) -> Result<bool, StoreError> {
        self.vacation_check(mailbox, key, now, seconds)
    }

    fn changes(&self, mailbox: &str) -> watch::Receiver<u64> {
        self.watchers
            .lock()
            .expect("store lock")
            .entry(mailbox.to_string())
            .or_insert_with(|| watch::channel(0).0)
            .subscribe()
    }
}

/// The folder key used for the in-memory UID table (INBOX in any case is one folder).
fn folder_key(folder: &str) -> &str {
    if folder.eq_ignore_ascii_case(INBOX) {
        INBOX
    } else {
        folder
    }
}

/// `Sent/2024` -> `.Sent.2024`; `.` and `%` inside a name are percent-escaped.
fn encode_folder(folder: &str) -> Result<String, StoreError> {
    let bad = folder.is_empty()
        || folder.len() > 512
        || folder.split('/').any(str::is_empty)
        || folder.chars().any(|c| c.is_control());
    if bad {
        return Err(StoreError::InvalidName(folder.into()));
    }
    let mut out = String::from(".");
    for c in folder.chars() {
        match c {
            '/' => out.push('.'),
            '.' => out.push_str("%2E"),
            '%' => out.push_str("%25"),
            c => out.push(c),
        }
    }
    // One directory name: the file system takes 255 bytes (a longer name was a storage error).
    if out.len() > 255 {
        return Err(StoreError::InvalidName(folder.into()));
    }
    Ok(out)
}

fn decode_folder(dir_name: &str) -> Option<String> {
    let rest = dir_name.strip_prefix('.')?;
    if rest.is_empty() || rest.starts_with('.') {
        return None;
    }
    Some(
        rest.replace('.', "/")
            .replace("%2E", ".")
            .replace("%25", "%"),
    )
}

/// A listed message's file: by its name in `cur/` or `new/`, or by UID when a flag change
/// renamed it since it was listed.
fn locate(dir: &Path, message: &MessageMeta) -> Option<PathBuf> {
    ["cur", "new"]
        .iter()
        .map(|sub| dir.join(sub).join(&message.file_name))
        .find(|p| p.exists())
        .or_else(|| find(dir, message.uid))
}

/// Reads a listed message's file with `read`: in the directory it was listed in first (a
/// failed open of every message in the other cost a third of a header SEARCH's system calls),
/// then the other, then by UID when a flag change renamed it since.
fn read_listed(
    dir: &Path,
    message: &MessageMeta,
    read: impl Fn(PathBuf) -> io::Result<Vec<u8>>,
) -> Result<Option<Vec<u8>>, StoreError> {
    let subs = if message.in_new {
        ["new", "cur"]
    } else {
        ["cur", "new"]
    };
    for sub in subs {
        match read(dir.join(sub).join(&message.file_name)) {
            Ok(bytes) => return Ok(Some(bytes)),
            Err(err) if err.kind() == io::ErrorKind::NotFound => continue,
            Err(err) => return Err(StoreError::from_io(err)),
        }
    }
    match find(dir, message.uid) {
        Some(path) => read(path).map(Some).map_err(StoreError::from_io),
        None => Ok(None),
    }
}

/// A message file's header, up to and including the blank line that ends it (the whole file
/// when there is none): one open and, for most messages, one read, where reading the whole
/// file also asks its size and reads again to find its end. Each read after the first asks for
/// as much as was read before, so a large file without a blank line takes few reads.
fn read_head(path: PathBuf) -> io::Result<Vec<u8>> {
    use std::io::Read;
    const FIRST: usize = 16 * 1024;
    let mut file = fs::File::open(path)?;
    let mut head = Vec::new();
    loop {
        let start = head.len();
        head.resize(start + FIRST.max(start), 0);
        let n = file.read(&mut head[start..])?;
        head.truncate(start + n);
        if let Some((_, end)) = crate::header::split_from(&head, start.saturating_sub(3)) {
            head.truncate(end);
            return Ok(head);
        }
        if n == 0 {
            return Ok(head);
        }
    }
}

/// A message's file by UID, in `cur/` or `new/`.
fn find(dir: &Path, uid: u32) -> Option<PathBuf> {
    for sub in ["cur", "new"] {
        let Ok(entries) = fs::read_dir(dir.join(sub)) else {
            continue;
        };
        for entry in entries.flatten() {
            if parse_name(&entry.file_name().to_string_lossy()).is_some_and(|n| n.uid == uid) {
                return Some(entry.path());
            }
        }
    }
    None
}

/// A folder's `kubemail-uidvalidity` file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct UidFile {
    validity: u32,
    /// The next UID, as recorded at the last expunge (1 before any).
    uid_next: u32,
    /// The mod-sequence of the last expunge (0 before any).
    modseq: u64,
}

impl UidFile {
    /// `<uidvalidity>\n<next uid>\n<modseq>\n`; the last two lines are optional when read.
    fn parse(text: &str) -> Option<Self> {
        let mut lines = text.lines();
        let validity = lines
            .next()?
            .trim()
            .parse::<u32>()
            .ok()
            .filter(|v| *v > 0)?;
        let uid_next = match lines.next() {
            Some(line) => line.trim().parse::<u32>().ok()?,
            None => 1,
        };
        let modseq = match lines.next() {
            Some(line) => line.trim().parse::<u64>().ok()?,
            None => 0,
        };
        lines.next().is_none().then_some(Self {
            validity,
            uid_next,
            modseq,
        })
    }

    fn render(&self) -> String {
        format!("{}\n{}\n{}\n", self.validity, self.uid_next, self.modseq)
    }
}

/// A message being linked into a folder.
#[derive(Debug, Clone, Copy)]
struct NewMessage<'a> {
    uid: u32,
    size: u64,
    /// Maildir letters, sorted.
    flags: &'a str,
    /// Arrival time, seconds since the epoch.
    secs: i64,
    modseq: u64,
}

/// The folder's UID file. The start-up check rewrites a missing or unreadable one; one that
/// goes missing while serving is a storage error, never a default (a UIDVALIDITY of 1 written
/// back by the next expunge would make every client's cache wrong for good).
fn read_uid_file(dir: &Path) -> Result<UidFile, StoreError> {
    let text = fs::read_to_string(dir.join(UIDVALIDITY_FILE)).map_err(StoreError::from_io)?;
    UidFile::parse(&text).ok_or_else(|| {
        StoreError::Io(io::Error::new(
            io::ErrorKind::InvalidData,
            format!(
                "{} holds no UIDVALIDITY",
                dir.join(UIDVALIDITY_FILE).display()
            ),
        ))
    })
}

/// A folder's keywords by letter (`a` first); a missing or unreadable table is empty.
fn read_keywords(dir: &Path) -> Vec<String> {
    let mut table: Vec<String> = Vec::new();
    let Ok(text) = fs::read_to_string(dir.join(KEYWORDS_FILE)) else {
        return table;
    };
    for line in text.lines() {
        let Some((n, name)) = line.split_once(' ') else {
            continue;
        };
        let Ok(n) = n.parse::<usize>() else {
            continue;
        };
        if n >= super::MAX_KEYWORDS || name.is_empty() {
            continue;
        }
        if table.len() <= n {
            table.resize(n + 1, String::new());
        }
        table[n] = name.to_string();
    }
    table
}

/// Replaces a small file atomically: a temporary file is written and fsynced, then renamed over
/// it, then the directory is fsynced. A crash leaves the old file or the new, never a truncated
/// one (an empty UID file would lose the folder's UIDVALIDITY).
fn write_synced(path: &Path, bytes: &[u8]) -> Result<(), StoreError> {
    let dir = path.parent().unwrap_or(Path::new("."));
    // A name of its own per write: two sessions replacing the same file through one shared
    // temporary name truncated each other's data, and a reader found an empty UID file.
    static WRITES: AtomicU64 = AtomicU64::new(0);
    let tmp = dir.join(format!(
        "{}.{}.{}.tmp",
        path.file_name().unwrap_or_default().to_string_lossy(),
        std::process::id(),
        WRITES.fetch_add(1, Ordering::Relaxed)
    ));
    let mut f = fs::File::create(&tmp).map_err(StoreError::from_io)?;
    f.write_all(bytes).map_err(StoreError::from_io)?;
    f.sync_all().map_err(StoreError::from_io)?;
    fs::rename(&tmp, path).map_err(StoreError::from_io)?;
    sync_dir(dir)
}

/// Reads a Maildir folder's index from its directory listing.
pub fn scan(dir: &Path) -> Result<FolderIndex, StoreError> {
    let recorded = read_uid_file(dir)?;
    let mut messages = Vec::new();
    for sub in ["new", "cur"] {
        let entries = match fs::read_dir(dir.join(sub)) {
            Ok(e) => e,
            Err(err) if err.kind() == io::ErrorKind::NotFound => continue,
            Err(err) => return Err(StoreError::from_io(err)),
        };
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().to_string();
            let Some(Named {
                uid,
                size,
                flags,
                modseq,
            }) = parse_name(&name)
            else {
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
                modseq,
                in_new: sub == "new",
            });
        }
    }
    messages.sort_by_key(|m| m.uid);
    let uid_next = messages
        .last()
        .map_or(1, |m| m.uid + 1)
        .max(recorded.uid_next);
    let highest_modseq = messages
        .iter()
        .map(|m| m.modseq)
        .max()
        .unwrap_or(1)
        .max(recorded.modseq);
    Ok(FolderIndex {
        uid_validity: recorded.validity,
        uid_next,
        messages,
        keywords: read_keywords(dir),
        highest_modseq,
    })
}

/// What a file name written by this store says of its message.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Named {
    uid: u32,
    size: u64,
    /// Maildir letters, sorted.
    flags: String,
    /// 1 for a name without `M=` (written before mod-sequences were kept).
    modseq: u64,
}

fn parse_name(name: &str) -> Option<Named> {
    let (base, info) = match name.split_once(":2,") {
        Some((b, i)) => (b, i),
        None => (name, ""),
    };
    let mut uid = None;
    let mut size = None;
    let mut modseq = 1;
    for field in base.split(',').skip(1) {
        if let Some(v) = field.strip_prefix("U=") {
            uid = v.parse().ok();
        } else if let Some(v) = field.strip_prefix("S=") {
            size = v.parse().ok();
        } else if let Some(v) = field.strip_prefix("M=") {
            modseq = v.parse::<u64>().unwrap_or(1).max(1);
        }
    }
    let mut flags: Vec<char> = info.chars().filter(char::is_ascii_alphabetic).collect();
    flags.sort_unstable();
    Some(Named {
        uid: uid?,
        size: size?,
        flags: flags.into_iter().collect(),
        modseq,
    })
}

/// A file name's base (before `:2,`) with its `M=` field set to `modseq`.
fn with_modseq(base: &str, modseq: u64) -> String {
    let mut fields: Vec<String> = base
        .split(',')
        .filter(|f| !f.starts_with("M="))
        .map(String::from)
        .collect();
    fields.push(format!("M={modseq}"));
    fields.join(",")
}

fn copy_synced(from: &Path, to: &Path) -> Result<(), StoreError> {
    fs::copy(from, to).map_err(StoreError::from_io)?;
    fs::File::open(to)
        .and_then(|f| f.sync_all())
        .map_err(StoreError::from_io)
}

/// Fsyncs a directory, so the entries created or renamed in it are durable.
pub(crate) fn sync_dir(dir: &Path) -> Result<(), StoreError> {
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
    fn a_header_is_read_to_its_empty_line_wherever_the_reads_end() {
        let tmp = tempfile::tempdir().expect("tmp");
        let alice = "alice@example.test";
        let store = Maildir::open(tmp.path(), "h").expect("open");
        // Headers of one to three 16 KiB reads, the empty line (its 4 bytes from the 20th of the
        // header plus the fill) across the first read's end at every split, and a message that
        // is all header.
        let mut messages = Vec::new();
        for fill in (16 * 1024 - 24..16 * 1024 - 19).chain([32 * 1024 - 22, 40 * 1024]) {
            let header = format!("Subject: s\r\nX-Fill: {}\r\n", "a".repeat(fill));
            messages.push((header.clone(), format!("{header}\r\nthe body\r\n")));
        }
        messages.push(("Subject: no body\r\n".into(), "Subject: no body\r\n".into()));
        for (_, raw) in &messages {
            store
                .deliver(spooled(&store, raw.as_bytes()), &[alice.to_string()])
                .expect("deliver");
        }
        let inbox = store.inbox(alice).expect("inbox");
        for ((header, raw), meta) in messages.iter().zip(&inbox.messages) {
            let head = store
                .read_header(alice, INBOX, meta)
                .expect("read")
                .expect("there");
            let expected = if raw == header {
                header.clone()
            } else {
                format!("{header}\r\n")
            };
            assert_eq!(String::from_utf8(head).expect("utf8"), expected);
        }
    }

    /// A UID file gone while serving is a storage error, never UIDVALIDITY 1: an expunge used
    /// to write the default back, and every client's cache was wrong from then on. A restart
    /// repairs it loudly, with a new UIDVALIDITY.
    #[test]
    fn a_uid_file_gone_while_serving_is_an_error_not_a_default() {
        let tmp = tempfile::tempdir().expect("tmp");
        let alice = "alice@example.test";
        let store = Maildir::open(tmp.path(), "h").expect("open");
        store
            .deliver(spooled(&store, b"one\r\n"), &[alice.to_string()])
            .expect("deliver");
        let before = store.inbox(alice).expect("inbox");
        let file = store
            .inbox_path(alice)
            .expect("path")
            .join(UIDVALIDITY_FILE);
        fs::remove_file(&file).expect("remove the UID file");
        assert!(matches!(
            store.expunge(alice, INBOX, &before.messages),
            Err(StoreError::Io(_))
        ));
        assert!(!file.exists(), "an expunge wrote a UID file back");
        let reopened = Maildir::open(tmp.path(), "h").expect("reopen");
        let after = reopened.inbox(alice).expect("inbox");
        assert!(after.uid_validity > before.uid_validity);
        assert_eq!(after.messages.len(), 1);
    }

    /// CONDSTORE (RFC 7162): every change gets a mod-sequence above all before it, in this
    /// process and after a restart, and HIGHESTMODSEQ never goes back, not even when the
    /// message changed last is expunged; UNCHANGEDSINCE refuses a message changed since.
    #[test]
    fn mod_sequences_only_go_up_and_survive_restarts_and_expunges() {
        let tmp = tempfile::tempdir().expect("tmp");
        let alice = "alice@example.test";
        let boxes = vec![alice.to_string()];
        let store = Maildir::open(tmp.path(), "h").expect("open");
        for body in [&b"one\r\n"[..], b"two\r\n", b"three\r\n"] {
            store
                .deliver(spooled(&store, body), &boxes)
                .expect("deliver");
        }
        let first = store.inbox(alice).expect("inbox");
        // A change that changes nothing, on a message still in new/: no new mod-sequence, and
        // the message stays unclaimed (\Recent for the next session).
        let noop = store
            .set_flags(
                alice,
                INBOX,
                &[(first.messages[0].clone(), FlagChange::Remove("S".into()))],
                None,
            )
            .expect("no-op");
        assert_eq!(noop.now[0].modseq, first.messages[0].modseq);
        assert_eq!(store.inbox(alice).expect("inbox"), first);
        let seqs: Vec<u64> = first.messages.iter().map(|m| m.modseq).collect();
        assert!(seqs.windows(2).all(|w| w[0] < w[1]), "{seqs:?}");
        assert_eq!(first.highest_modseq, seqs[2]);

        let flagged = store
            .set_flags(
                alice,
                INBOX,
                &[(first.messages[2].clone(), FlagChange::Add("F".into()))],
                None,
            )
            .expect("flag");
        let changed = flagged.now[0].modseq;
        assert!(changed > first.highest_modseq);
        // A no-op change takes no new mod-sequence.
        let again = store
            .set_flags(
                alice,
                INBOX,
                &[(flagged.now[0].clone(), FlagChange::Add("F".into()))],
                None,
            )
            .expect("flag again");
        assert_eq!(again.now[0].modseq, changed);
        // UNCHANGEDSINCE below the message's mod-sequence: left alone, reported.
        let refused = store
            .set_flags(
                alice,
                INBOX,
                &[
                    (first.messages[0].clone(), FlagChange::Add("S".into())),
                    (first.messages[2].clone(), FlagChange::Add("S".into())),
                ],
                Some(changed - 1),
            )
            .expect("conditional");
        assert_eq!(refused.modified, vec![3]);
        assert_eq!(refused.now.len(), 1);
        assert_eq!(refused.now[0].uid, 1);
        assert!(refused.now[0].modseq > changed);
        let before_expunge = store.inbox(alice).expect("inbox").highest_modseq;

        // The newest change's message is expunged: HIGHESTMODSEQ still moves up.
        let newest = store.inbox(alice).expect("inbox").messages[0].clone();
        store.expunge(alice, INBOX, &[newest]).expect("expunge");
        let after = store.inbox(alice).expect("inbox");
        assert!(after.highest_modseq > before_expunge);

        // A restart reads the same values back and goes on above them.
        let reopened = Maildir::open(tmp.path(), "h").expect("reopen");
        let read_back = reopened.inbox(alice).expect("inbox");
        assert_eq!(read_back.highest_modseq, after.highest_modseq);
        assert_eq!(read_back.messages, after.messages);
        reopened
            .deliver(spooled(&reopened, b"four\r\n"), &boxes)
            .expect("deliver");
        let last = reopened.inbox(alice).expect("inbox");
        assert!(last.highest_modseq > after.highest_modseq);
        assert_eq!(
            last.messages.last().map(|m| m.modseq),
            Some(last.highest_modseq)
        );
    }

    /// Issue 17 item 11: default folders made in one second shared one UIDVALIDITY, and a
    /// folder deleted and made again within a second kept it, with other messages under its
    /// old UIDs.
    #[test]
    fn every_folder_gets_its_own_uidvalidity_and_a_new_one_when_made_again() {
        let tmp = tempfile::tempdir().expect("tmp");
        let store = Maildir::open(tmp.path(), "h").expect("open");
        let alice = "alice@example.test";
        let mut seen = vec![store.inbox(alice).expect("inbox").uid_validity];
        for folder in ["Sent", "Drafts", "Junk", "Trash", "Archive/2026"] {
            store.create_folder(alice, folder).expect("create");
            seen.push(store.index(alice, folder).expect("index").uid_validity);
        }
        let mut distinct = seen.clone();
        distinct.dedup();
        assert_eq!(distinct, seen, "strictly increasing: {seen:?}");
        assert!(seen.windows(2).all(|w| w[0] < w[1]), "{seen:?}");
        let before = store.index(alice, "Sent").expect("index").uid_validity;
        store.delete_folder(alice, "Sent").expect("delete");
        store.create_folder(alice, "Sent").expect("create again");
        let after = store.index(alice, "Sent").expect("index").uid_validity;
        assert!(after > before, "{after} after {before}");
        // A restart keeps counting up.
        let reopened = Maildir::open(tmp.path(), "h").expect("reopen");
        reopened.create_folder(alice, "Later").expect("create");
        assert!(reopened.index(alice, "Later").expect("index").uid_validity > after);
    }

    /// Issue 15 item 4: session 1 `+FLAGS (\Answered)` and session 2 `-FLAGS (\Seen)` from the
    /// same stale view left `FLAGS ()`: the second write put back what it had read.
    #[test]
    fn flag_changes_from_stale_views_all_take_effect() {
        let tmp = tempfile::tempdir().expect("tmp");
        let store = Maildir::open(tmp.path(), "h").expect("open");
        let alice = "alice@example.test";
        store
            .deliver(spooled(&store, b"Subject: x\r\n\r\n"), &[alice.to_string()])
            .expect("deliver");
        let view = store.inbox(alice).expect("inbox").messages;
        store
            .set_flags(
                alice,
                INBOX,
                &[(view[0].clone(), FlagChange::Add("S".into()))],
                None,
            )
            .expect("seen");
        // Two sessions, both still seeing the message as it was delivered.
        store
            .set_flags(
                alice,
                INBOX,
                &[(view[0].clone(), FlagChange::Add("R".into()))],
                None,
            )
            .expect("answered");
        store
            .set_flags(
                alice,
                INBOX,
                &[(view[0].clone(), FlagChange::Remove("S".into()))],
                None,
            )
            .expect("unseen");
        assert_eq!(store.inbox(alice).expect("inbox").messages[0].flags, "R");
        // Threads at once: every flag added by one of them is there at the end.
        let store = Arc::new(store);
        let threads: Vec<_> = "DFT"
            .chars()
            .map(|flag| {
                let (store, meta) = (store.clone(), view[0].clone());
                std::thread::spawn(move || {
                    for _ in 0..50 {
                        store
                            .set_flags(
                                alice,
                                INBOX,
                                &[(meta.clone(), FlagChange::Add(flag.into()))],
                                None,
                            )
                            .expect("add");
                        store
                            .set_flags(
                                alice,
                                INBOX,
                                &[(meta.clone(), FlagChange::Remove(flag.into()))],
                                None,
                            )
                            .expect("remove");
                    }
                    store
                        .set_flags(alice, INBOX, &[(meta, FlagChange::Add(flag.into()))], None)
                        .expect("add");
                })
            })
            .collect();
        for t in threads {
            t.join().expect("thread");
        }
        assert_eq!(store.inbox(alice).expect("inbox").messages[0].flags, "DFRT");
    }

    /// Issue 17 item 10: a folder named `x/tmp` (directory `.x.tmp`) disappeared from LIST and
    /// its bytes from the quota after a restart.
    #[test]
    fn folders_named_tmp_are_listed_and_counted() {
        let tmp = tempfile::tempdir().expect("tmp");
        let store = Maildir::open(tmp.path(), "h").expect("open");
        let alice = "alice@example.test";
        store.create_folder(alice, "x/tmp").expect("create");
        store
            .append(
                alice,
                "x/tmp",
                spooled(&store, b"Subject: kept\r\n\r\n12345\r\n"),
                "",
                None,
            )
            .expect("append");
        assert!(
            store
                .folders(alice)
                .expect("folders")
                .contains(&"x/tmp".to_string())
        );
        let reopened = Maildir::open(tmp.path(), "h").expect("reopen");
        assert!(
            reopened
                .folders(alice)
                .expect("folders")
                .contains(&"x/tmp".to_string())
        );
        assert_eq!(reopened.usage(alice).expect("usage").messages, 1);
    }

    /// Issue 17 item 7: EXPUNGE by a session whose view still had \Deleted destroyed a message
    /// another session had un-deleted.
    #[test]
    fn expunge_removes_only_what_is_deleted_now() {
        let tmp = tempfile::tempdir().expect("tmp");
        let store = Maildir::open(tmp.path(), "h").expect("open");
        let alice = "alice@example.test";
        for _ in 0..2 {
            store
                .deliver(spooled(&store, b"Subject: x\r\n\r\n"), &[alice.to_string()])
                .expect("deliver");
        }
        let listed = store.inbox(alice).expect("inbox").messages;
        let deleted: Vec<(MessageMeta, FlagChange)> = listed
            .iter()
            .map(|m| (m.clone(), FlagChange::Add("T".into())))
            .collect();
        let stale_view = store
            .set_flags(alice, INBOX, &deleted, None)
            .expect("flag both")
            .now;
        // Another session takes \Deleted off the first message.
        store
            .set_flags(
                alice,
                INBOX,
                &[(stale_view[0].clone(), FlagChange::Remove("T".into()))],
                None,
            )
            .expect("undelete");
        let removed = store
            .expunge_deleted(alice, INBOX, &stale_view)
            .expect("expunge");
        assert_eq!(removed, vec![stale_view[1].uid]);
        let left = store.inbox(alice).expect("inbox").messages;
        assert_eq!(
            left.iter().map(|m| m.uid).collect::<Vec<_>>(),
            [stale_view[0].uid]
        );
    }

    #[test]
    fn a_cached_index_is_used_only_while_the_folder_is_unchanged() {
        let tmp = tempfile::tempdir().expect("tmp");
        let store = Maildir::open(tmp.path(), "h").expect("open");
        let boxes = vec!["alice@example.test".to_string()];
        store
            .deliver(spooled(&store, b"Subject: one\r\n\r\n"), &boxes)
            .expect("deliver");
        let dir = store.inbox_path("alice@example.test").expect("dir");
        // Age the directories, as if the last change were a while ago: now the index is cached.
        let past = std::time::SystemTime::now() - std::time::Duration::from_secs(10);
        for sub in ["new", "cur"] {
            fs::File::open(dir.join(sub))
                .and_then(|f| f.set_modified(past))
                .expect("set mtime");
        }
        assert_eq!(
            store
                .inbox("alice@example.test")
                .expect("index")
                .messages
                .len(),
            1
        );
        assert!(store.indexes.lock().expect("lock").contains_key(&dir));
        assert_eq!(
            store
                .inbox("alice@example.test")
                .expect("index")
                .messages
                .len(),
            1
        );
        // A delivery moves new/'s mtime: the cache is not used.
        store
            .deliver(spooled(&store, b"Subject: two\r\n\r\n"), &boxes)
            .expect("deliver");
        assert_eq!(
            store
                .inbox("alice@example.test")
                .expect("index")
                .messages
                .len(),
            2
        );
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
            Some(Named {
                uid: 7,
                size: 42,
                flags: "FS".into(),
                modseq: 1
            })
        );
        assert_eq!(
            parse_name("1.M1P1Q1.h,U=7,S=42,M=9"),
            Some(Named {
                uid: 7,
                size: 42,
                flags: String::new(),
                modseq: 9
            })
        );
        assert_eq!(parse_name("foreign-file"), None);
    }
}
