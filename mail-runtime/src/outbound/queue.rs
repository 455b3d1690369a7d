//! The outbound queue on the mail volume: `<data>/queue/<id>.msg` holds the message as it
//! will be sent (DKIM-signed), `<id>.json` the envelope and each recipient's state. Both are
//! fsynced before SMTP answers 250, and every state change is written atomically (temporary
//! file, fsync, rename, fsync of the directory), so a restart resumes exactly where delivery
//! stood: a recipient that accepted the message is never sent it again.
use std::{
    fs,
    io::{self, Write},
    path::{Path, PathBuf},
};

use serde::{Deserialize, Serialize};

use crate::store::{StoreError, maildir::sync_dir};

/// Where one recipient stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RcptState {
    /// Not delivered yet; tried again later.
    Pending,
    /// Accepted by the next hop.
    Delivered,
    /// Refused for good (or retried until the maximum age); the sender was told.
    Failed,
}

/// One recipient of a queued message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Rcpt {
    /// The address.
    pub address: String,
    /// Its state.
    pub state: RcptState,
    /// The last reply or error, for the delivery report and the logs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_reply: Option<String>,
    /// The host that gave it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub remote_mta: Option<String>,
}

/// A queued message's envelope and progress.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Entry {
    /// Queue ID (also the file names).
    pub id: String,
    /// Envelope sender; empty for delivery reports (which are never answered).
    pub from: String,
    /// Recipients.
    pub recipients: Vec<Rcpt>,
    /// When it was queued (seconds since the epoch).
    pub created: i64,
    /// Attempts made.
    pub attempts: u32,
    /// When to try next (seconds since the epoch).
    pub next_attempt: i64,
    /// Message size in bytes.
    pub size: u64,
    /// The DSN envelope ID the client gave, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub env_id: Option<String>,
    /// Forwarded from outside: failures are logged, not reported to the sender.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub no_report: bool,
}

impl Entry {
    /// Recipients still to deliver.
    pub fn pending(&self) -> impl Iterator<Item = &Rcpt> {
        self.recipients
            .iter()
            .filter(|r| r.state == RcptState::Pending)
    }
}

/// The queue directory.
#[derive(Debug)]
pub struct QueueDir {
    dir: PathBuf,
}

impl QueueDir {
    /// Opens the queue under the data directory and reads every entry. Message files without an
    /// envelope (a crash between the two writes, before the 250) are removed.
    pub fn open(data: &Path) -> Result<(Self, Vec<Entry>), StoreError> {
        let dir = data.join("queue");
        fs::create_dir_all(&dir).map_err(StoreError::from_io)?;
        let mut entries = Vec::new();
        let mut messages = Vec::new();
        for item in fs::read_dir(&dir).map_err(StoreError::from_io)?.flatten() {
            let path = item.path();
            match path.extension().and_then(|e| e.to_str()) {
                Some("json") => match fs::read(&path)
                    .ok()
                    .and_then(|b| serde_json::from_slice::<Entry>(&b).ok())
                {
                    Some(entry) => entries.push(entry),
                    None => {
                        tracing::error!(path = %path.display(), "unreadable queue entry kept aside");
                        let _ = fs::rename(&path, path.with_extension("json.broken"));
                    }
                },
                Some("msg") => messages.push(path),
                Some("tmp") => {
                    let _ = fs::remove_file(&path);
                }
                _ => {}
            }
        }
        for message in messages {
            let id = message
                .file_stem()
                .map(|s| s.to_string_lossy().to_string())
                .unwrap_or_default();
            if !entries.iter().any(|e| e.id == id) {
                let _ = fs::remove_file(&message);
            }
        }
        entries.sort_by(|a, b| a.created.cmp(&b.created).then(a.id.cmp(&b.id)));
        Ok((Self { dir }, entries))
    }

    /// The message file of an entry.
    pub fn message_path(&self, id: &str) -> PathBuf {
        self.dir.join(format!("{id}.msg"))
    }

    /// Adds a message: `prefix` (header fields such as a DKIM signature) followed by the bytes
    /// of `source`, then the entry. Durable when this returns.
    pub fn add(&self, entry: &Entry, prefix: &[u8], source: &Path) -> Result<(), StoreError> {
        let target = self.message_path(&entry.id);
        let linked = prefix.is_empty() && fs::hard_link(source, &target).is_ok();
        if !linked {
            let result = (|| {
                let mut out = io::BufWriter::new(fs::File::create(&target)?);
                out.write_all(prefix)?;
                io::copy(&mut fs::File::open(source)?, &mut out)?;
                out.into_inner().map_err(|e| e.into_error())?.sync_all()
            })();
            if let Err(err) = result {
                let _ = fs::remove_file(&target);
                return Err(StoreError::from_io(err));
            }
        }
        if let Err(err) = self.save(entry) {
            let _ = fs::remove_file(&target);
            return Err(err);
        }
        Ok(())
    }

    /// Writes an entry atomically and durably.
    pub fn save(&self, entry: &Entry) -> Result<(), StoreError> {
        let tmp = self.dir.join(format!("{}.json.tmp", entry.id));
        let body =
            serde_json::to_vec_pretty(entry).map_err(|e| StoreError::Io(io::Error::other(e)))?;
        let result = (|| {
            let mut f = fs::File::create(&tmp)?;
            f.write_all(&body)?;
            f.sync_all()?;
            fs::rename(&tmp, self.dir.join(format!("{}.json", entry.id)))
        })();
        result.map_err(StoreError::from_io)?;
        sync_dir(&self.dir)
    }

    /// Removes an entry (envelope first: a message file alone is cleaned up at the next start).
    pub fn remove(&self, id: &str) -> Result<(), StoreError> {
        for path in [self.dir.join(format!("{id}.json")), self.message_path(id)] {
            match fs::remove_file(&path) {
                Ok(()) => {}
                Err(err) if err.kind() == io::ErrorKind::NotFound => {}
                Err(err) => return Err(StoreError::from_io(err)),
            }
        }
        sync_dir(&self.dir)
    }
}
