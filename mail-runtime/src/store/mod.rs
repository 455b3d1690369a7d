//! Mail storage behind a trait, so a PostgreSQL backend can sit beside the embedded one.
//!
//! ```text
//!   SMTP DATA --> Spool (tmp file, streamed, fsynced) --deliver--> Store (one link per mailbox)
//!                                                                   |
//!                                        IMAP / POP3 read here <----+
//! ```
//!
//! The embedded store is Maildir ([`maildir::Maildir`]): crash-safe (tmp -> new with fsync of
//! file and directory), readable by any Maildir tool for migration and backup. A message is
//! durable when `deliver` returns; only then does SMTP answer 250.
pub mod maildir;
pub mod postgres;

use std::{
    fs::File,
    io::{self, Write},
    path::{Path, PathBuf},
    sync::atomic::{AtomicU64, Ordering},
};

/// One stored message, as IMAP and POP3 see it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MessageMeta {
    /// Unique in its folder for the folder's UIDVALIDITY, ascending with arrival.
    pub uid: u32,
    /// Size in bytes.
    pub size: u64,
    /// IMAP system flags as Maildir letters (`S` seen, `R` answered, `F` flagged, `T` deleted,
    /// `D` draft), sorted.
    pub flags: String,
    /// Arrival time, seconds since the epoch.
    pub internal_date: i64,
    /// The message's file name in the Maildir (without the directory).
    pub file_name: String,
    /// CONDSTORE's mod-sequence (RFC 7162): the folder's counter when the message arrived or
    /// its flags last changed; at least 1.
    pub modseq: u64,
    /// Still in Maildir's `new/`: no IMAP session has claimed it (see [`Self::is_new`]).
    pub in_new: bool,
}

impl MessageMeta {
    /// Still in Maildir's `new/`: IMAP's `\Recent` for the next session that claims it.
    pub fn is_new(&self) -> bool {
        self.in_new
    }
}

/// A change to a message's flags (Maildir letters), as STORE asks for it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FlagChange {
    /// These flags and no others (`FLAGS`).
    Replace(String),
    /// These flags too (`+FLAGS`).
    Add(String),
    /// Not these flags (`-FLAGS`).
    Remove(String),
}

impl FlagChange {
    /// The flags after the change, from `current`; sorted, each once.
    pub fn apply(&self, current: &str) -> String {
        let mut flags: Vec<char> = match self {
            FlagChange::Replace(new) => new.chars().collect(),
            FlagChange::Add(more) => current.chars().chain(more.chars()).collect(),
            FlagChange::Remove(less) => current.chars().filter(|c| !less.contains(*c)).collect(),
        };
        flags.sort_unstable();
        flags.dedup();
        flags.into_iter().collect()
    }
}

/// A folder's identity and contents.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FolderIndex {
    /// Changes only when UIDs can no longer be trusted.
    pub uid_validity: u32,
    /// The UID the next message will get.
    pub uid_next: u32,
    /// Messages by ascending UID.
    pub messages: Vec<MessageMeta>,
    /// The folder's keywords (`$Junk`, user tags): the one at `n` is flag letter `a + n`.
    pub keywords: Vec<String>,
    /// The highest mod-sequence of any change in the folder, expunges included: it never goes
    /// backwards while the folder exists, restarts included (RFC 7162 HIGHESTMODSEQ).
    pub highest_modseq: u64,
}

/// What a flag change did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FlagsSet {
    /// The messages as they are now, changed or not (gone ones left out).
    pub now: Vec<MessageMeta>,
    /// UIDs left alone because they changed after the caller's `UNCHANGEDSINCE`.
    pub modified: Vec<u32>,
}

/// Most keywords one folder can hold: a Maildir flag letter each, `a` to `z` (Dovecot's
/// `dovecot-keywords` layout).
pub const MAX_KEYWORDS: usize = 26;

/// The flag letter of the keyword at `index` in a folder's table.
pub fn keyword_letter(index: usize) -> Option<char> {
    (index < MAX_KEYWORDS).then(|| char::from(b'a' + index as u8))
}

/// Bytes and messages stored for a mailbox, all folders together.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Usage {
    /// Bytes.
    pub bytes: u64,
    /// Messages.
    pub messages: u64,
}

/// Where one copy of a delivered message goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Placement {
    /// The mailbox's address, lowercase.
    pub mailbox: String,
    /// The folder (INBOX, or one that exists).
    pub folder: String,
    /// Maildir flag letters (system flags and keyword letters of that folder).
    pub flags: String,
}

/// A mailbox's Sieve scripts.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SieveScripts {
    /// Every script's name, sorted.
    pub names: Vec<String>,
    /// The active one.
    pub active: Option<String>,
}

/// Errors of the store; each maps to a protocol reply in the session.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The disk is full (ENOSPC or EDQUOT): a temporary failure.
    #[error("no space left on the mail volume")]
    NoSpace,
    /// Any other I/O error.
    #[error("storage I/O error: {0}")]
    Io(#[from] io::Error),
    /// The mailbox or folder name cannot be a directory name.
    #[error("invalid name {0:?}")]
    InvalidName(String),
    /// The folder does not exist.
    #[error("no folder {0:?}")]
    NoSuchFolder(String),
    /// The folder already exists.
    #[error("folder {0:?} already exists")]
    FolderExists(String),
    /// The operation is not allowed on this folder (deleting INBOX).
    #[error("{0}")]
    NotAllowed(&'static str),
    /// The database cannot be reached or refused the work: a temporary failure, nothing was
    /// changed (each change is one transaction).
    #[error("mail database unavailable: {0}")]
    Unavailable(String),
}

impl StoreError {
    /// Classifies an I/O error (disk full is its own case).
    pub fn from_io(err: io::Error) -> Self {
        match err.raw_os_error() {
            Some(28 | 122) => StoreError::NoSpace,
            _ => StoreError::Io(err),
        }
    }
}

/// The folder every mailbox has, where mail is delivered.
pub const INBOX: &str = "INBOX";

/// The folders a mailbox starts with, with their RFC 6154 special use.
pub const DEFAULT_FOLDERS: [(&str, &str); 5] = [
    ("Sent", "\\Sent"),
    ("Drafts", "\\Drafts"),
    ("Trash", "\\Trash"),
    ("Junk", "\\Junk"),
    ("Archive", "\\Archive"),
];

/// A store of mailboxes, each with folders (INBOX always). Folder names are IMAP names with
/// `/` as the hierarchy separator. Calls block on disk I/O: run them on a blocking thread.
pub trait Store: Send + Sync + std::fmt::Debug {
    /// A spool file for a message being received.
    fn spool(&self) -> Result<SpoolWriter, StoreError>;

    /// Delivers a spooled message to the INBOX of each mailbox (addresses, lowercase), durably.
    /// The spool file is removed afterwards.
    fn deliver(&self, message: SpooledMessage, mailboxes: &[String]) -> Result<(), StoreError> {
        let placements: Vec<Placement> = mailboxes
            .iter()
            .map(|m| Placement {
                mailbox: m.clone(),
                folder: INBOX.to_string(),
                flags: String::new(),
            })
            .collect();
        self.deliver_to(message, &placements)
    }

    /// Delivers a spooled message to each placement (a folder of a mailbox, with Maildir flag
    /// letters), durably; the folders must exist. The spool file is removed afterwards.
    fn deliver_to(
        &self,
        message: SpooledMessage,
        placements: &[Placement],
    ) -> Result<(), StoreError>;

    /// Storage used by a mailbox, all folders together.
    fn usage(&self, mailbox: &str) -> Result<Usage, StoreError>;

    /// A folder's index. The INBOX of a mailbox that never received mail is empty, not missing.
    fn index(&self, mailbox: &str, folder: &str) -> Result<FolderIndex, StoreError>;

    /// The INBOX's index.
    fn inbox(&self, mailbox: &str) -> Result<FolderIndex, StoreError> {
        self.index(mailbox, INBOX)
    }

    /// The raw bytes of a message listed in an index; `None` if it is gone.
    fn read(
        &self,
        mailbox: &str,
        folder: &str,
        message: &MessageMeta,
    ) -> Result<Option<Vec<u8>>, StoreError>;

    /// A message's header, up to and including the empty line that ends it (the whole message
    /// when it has none): what a header SEARCH reads.
    fn read_header(
        &self,
        mailbox: &str,
        folder: &str,
        message: &MessageMeta,
    ) -> Result<Option<Vec<u8>>, StoreError> {
        self.read(mailbox, folder, message)
    }

    /// The raw bytes of one message of the INBOX by UID.
    fn read_message(&self, mailbox: &str, uid: u32) -> Result<Option<Vec<u8>>, StoreError>;

    /// Removes messages from a folder, durably. Messages already gone are not an error.
    fn expunge(
        &self,
        mailbox: &str,
        folder: &str,
        messages: &[MessageMeta],
    ) -> Result<(), StoreError>;

    /// The flag letters of keywords in a folder, giving new ones the next free letters (and
    /// keeping them from then on). More than [`MAX_KEYWORDS`] in one folder: `NotAllowed`.
    fn keyword_letters(
        &self,
        mailbox: &str,
        folder: &str,
        names: &[String],
    ) -> Result<String, StoreError>;

    /// IMAP's EXPUNGE: removes those of `messages` that are flagged `\Deleted` now, as the
    /// store has them, not as a session last saw them (another session may have cleared the
    /// flag meanwhile). Returns the UIDs removed.
    fn expunge_deleted(
        &self,
        mailbox: &str,
        folder: &str,
        messages: &[MessageMeta],
    ) -> Result<Vec<u32>, StoreError>;

    /// Stores a spooled message in a folder with flags (Maildir letters) and an arrival time
    /// (now when `None`), durably. Returns the folder's UIDVALIDITY and the new UID.
    fn append(
        &self,
        mailbox: &str,
        folder: &str,
        message: SpooledMessage,
        flags: &str,
        internal_date: Option<i64>,
    ) -> Result<(u32, u32), StoreError>;

    /// Copies messages to another folder, keeping flags and arrival times, durably. Returns the
    /// target's UIDVALIDITY and the new UIDs in the order of `messages` (gone ones skipped).
    fn copy(
        &self,
        mailbox: &str,
        from: &str,
        messages: &[MessageMeta],
        to: &str,
    ) -> Result<(u32, Vec<(u32, u32)>), StoreError>;

    /// Changes the flags of messages, each change applied to the flags the message has now (not
    /// to those a session last saw: two sessions adding and removing different flags both
    /// take effect). With `unchanged_since` (CONDSTORE's UNCHANGEDSINCE), a message whose
    /// mod-sequence is above it is left alone and listed in `modified`; the test and the change
    /// are one step, so no other change slips in between.
    fn set_flags(
        &self,
        mailbox: &str,
        folder: &str,
        changes: &[(MessageMeta, FlagChange)],
        unchanged_since: Option<u64>,
    ) -> Result<FlagsSet, StoreError>;

    /// IMAP's `\Recent`: moves the folder's messages that no session has seen yet (Maildir's
    /// `new/`) to `cur/` and returns their UIDs. Exactly one caller gets each one, so a message
    /// is `\Recent` in one session only (RFC 3501 s2.3.2). Flags and mod-sequences stay.
    fn claim_recent(&self, mailbox: &str, folder: &str) -> Result<Vec<u32>, StoreError>;

    /// Every folder of a mailbox, INBOX first.
    fn folders(&self, mailbox: &str) -> Result<Vec<String>, StoreError>;

    /// Creates a folder (and its missing parents).
    fn create_folder(&self, mailbox: &str, folder: &str) -> Result<(), StoreError>;

    /// Deletes a folder and its messages (not INBOX).
    fn delete_folder(&self, mailbox: &str, folder: &str) -> Result<(), StoreError>;

    /// Renames a folder and its children. Renaming INBOX moves its messages to the new folder.
    fn rename_folder(&self, mailbox: &str, from: &str, to: &str) -> Result<(), StoreError>;

    /// The folders the user subscribed to.
    fn subscriptions(&self, mailbox: &str) -> Result<Vec<String>, StoreError>;

    /// Subscribes to or unsubscribes from a folder.
    fn set_subscribed(&self, mailbox: &str, folder: &str, on: bool) -> Result<(), StoreError>;

    /// Creates the default folders once, subscribed; a folder the user deletes later stays
    /// deleted.
    fn ensure_default_folders(&self, mailbox: &str) -> Result<(), StoreError>;

    /// The mailbox's Sieve scripts (ManageSieve's storage) and which one is active.
    fn sieve_scripts(&self, mailbox: &str) -> Result<SieveScripts, StoreError>;

    /// A Sieve script's text; `None` if there is none of that name.
    fn sieve_script(&self, mailbox: &str, name: &str) -> Result<Option<String>, StoreError>;

    /// Stores a Sieve script, replacing one of that name, durably.
    fn put_sieve_script(&self, mailbox: &str, name: &str, text: &str) -> Result<(), StoreError>;

    /// Deletes a Sieve script (`NoSuchFolder` if there is none of that name).
    fn delete_sieve_script(&self, mailbox: &str, name: &str) -> Result<(), StoreError>;

    /// Renames a Sieve script; the active one stays active.
    fn rename_sieve_script(&self, mailbox: &str, from: &str, to: &str) -> Result<(), StoreError>;

    /// Makes a script the active one, or none.
    fn set_active_sieve_script(&self, mailbox: &str, name: Option<&str>) -> Result<(), StoreError>;

    /// The vacation memory: whether `key` (a sender under a reply's handle) is due a reply at
    /// `now`, remembering it until `now + seconds` if so. Check and record are one step.
    fn vacation_due(
        &self,
        mailbox: &str,
        key: &str,
        now: i64,
        seconds: u64,
    ) -> Result<bool, StoreError>;

    /// A counter that moves whenever anything in the mailbox changes (delivery, flags,
    /// expunge, folders), so every session on it can look again.
    fn changes(&self, mailbox: &str) -> tokio::sync::watch::Receiver<u64>;

    /// RFC 1939's maildrop lock, held by `holder` until `until` (seconds since the epoch) and
    /// renewed by taking it again; false while another holder has it. Every process serving
    /// this store sees it. The embedded store is served by one process, whose own lock (see
    /// `Runtime::pop3_locks`) is all there is: always true.
    fn lock_maildrop(
        &self,
        _mailbox: &str,
        _holder: &str,
        _until: i64,
    ) -> Result<bool, StoreError> {
        Ok(true)
    }

    /// Gives a maildrop lock back.
    fn unlock_maildrop(&self, _mailbox: &str, _holder: &str) -> Result<(), StoreError> {
        Ok(())
    }
}

/// A message being written to the spool. Dropped without [`SpoolWriter::finish`], its file
/// is removed: nothing half-written is ever delivered.
#[derive(Debug)]
pub struct SpoolWriter {
    file: Option<io::BufWriter<File>>,
    path: PathBuf,
    size: u64,
}

/// A complete, fsynced message in the spool, ready for delivery.
#[derive(Debug)]
pub struct SpooledMessage {
    /// Its spool file.
    pub path: PathBuf,
    /// Its size in bytes.
    pub size: u64,
}

static SPOOL_SEQ: AtomicU64 = AtomicU64::new(0);

impl SpoolWriter {
    /// Creates a spool file in `dir`.
    pub fn create(dir: &Path) -> Result<Self, StoreError> {
        let n = SPOOL_SEQ.fetch_add(1, Ordering::Relaxed);
        let path = dir.join(format!("{}.{}.{n}", std::process::id(), unix_nanos()));
        let file = File::options()
            .write(true)
            .create_new(true)
            .open(&path)
            .map_err(StoreError::from_io)?;
        Ok(Self {
            file: Some(io::BufWriter::with_capacity(64 * 1024, file)),
            path,
            size: 0,
        })
    }

    /// Appends bytes.
    pub fn write(&mut self, bytes: &[u8]) -> Result<(), StoreError> {
        if let Some(f) = self.file.as_mut() {
            f.write_all(bytes).map_err(StoreError::from_io)?;
            self.size += bytes.len() as u64;
        }
        Ok(())
    }

    /// Bytes written so far.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// Flushes and fsyncs the file.
    pub fn finish(mut self) -> Result<SpooledMessage, StoreError> {
        let file = self.file.take().expect("finish runs once");
        let file = file
            .into_inner()
            .map_err(|e| StoreError::from_io(e.into_error()))?;
        file.sync_all().map_err(StoreError::from_io)?;
        Ok(SpooledMessage {
            path: std::mem::take(&mut self.path),
            size: self.size,
        })
    }
}

impl Drop for SpoolWriter {
    fn drop(&mut self) {
        if self.file.is_some() {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

pub(crate) fn unix_nanos() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or_default()
}
