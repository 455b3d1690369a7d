//! Loading the config file and reloading it live.
//!
//! Kubernetes updates a mounted Secret by writing a new directory and swapping the `..data`
//! symlink, so the file is watched by what it resolves to (device, inode, size, mtime), polled
//! twice a second: cheap, and it sees every way the file can change. A new file that does not
//! validate is logged and ignored; the last good config keeps serving.
use std::{
    os::unix::fs::MetadataExt,
    path::{Path, PathBuf},
    sync::{Arc, RwLock},
    time::Duration,
};

use super::{Config, Invalid, Problem};

/// The config in force, shared by every session; sessions take a snapshot per command.
#[derive(Debug, Clone)]
pub struct ConfigHandle {
    current: Arc<RwLock<Arc<Config>>>,
    last_error: Arc<RwLock<Option<String>>>,
}

impl ConfigHandle {
    /// A handle serving `config`.
    pub fn new(config: Config) -> Self {
        Self {
            current: Arc::new(RwLock::new(Arc::new(config))),
            last_error: Arc::new(RwLock::new(None)),
        }
    }

    /// The config in force now.
    pub fn get(&self) -> Arc<Config> {
        self.current.read().expect("config lock").clone()
    }

    /// Replaces the config in force.
    pub fn set(&self, config: Config) {
        *self.current.write().expect("config lock") = Arc::new(config);
        *self.last_error.write().expect("config lock") = None;
    }

    /// Why the newest file was refused, if it was.
    pub fn last_error(&self) -> Option<String> {
        self.last_error.read().expect("config lock").clone()
    }

    fn refuse(&self, error: String) {
        *self.last_error.write().expect("config lock") = Some(error);
    }
}

/// Reads and validates a config file.
pub fn load_file(path: &Path) -> Result<Config, Invalid> {
    let text = std::fs::read_to_string(path).map_err(|err| {
        Invalid(vec![Problem {
            field: path.display().to_string(),
            message: format!("cannot read: {err}"),
        }])
    })?;
    Config::parse(&text)
}

#[derive(PartialEq, Eq, Clone, Copy)]
struct Stamp {
    dev: u64,
    ino: u64,
    len: u64,
    mtime_ns: i128,
}

fn stamp(path: &Path) -> Option<Stamp> {
    let m = std::fs::metadata(path).ok()?;
    Some(Stamp {
        dev: m.dev(),
        ino: m.ino(),
        len: m.len(),
        mtime_ns: i128::from(m.mtime()) * 1_000_000_000 + i128::from(m.mtime_nsec()),
    })
}

/// Watches `path` and swaps the config in `handle` whenever the file changes to a valid one.
/// `on_change` runs after each successful reload (the runtime uses it to log and to re-apply
/// listener-independent state).
pub async fn watch(
    path: PathBuf,
    handle: ConfigHandle,
    on_change: impl Fn(&Config) + Send + 'static,
) {
    // No stamp yet: the first tick reads the file and compares its contents with the config in
    // force, so a change made between the first load and this task's start is not missed.
    let mut last = None;
    let mut ticker = tokio::time::interval(Duration::from_millis(200));
    loop {
        ticker.tick().await;
        let now = stamp(&path);
        if now == last {
            continue;
        }
        last = now;
        match load_file(&path) {
            Ok(config) => {
                if config.raw == handle.get().raw {
                    continue;
                }
                tracing::info!(revision = config.revision(), "runtime config reloaded");
                on_change(&config);
                handle.set(config);
            }
            Err(invalid) => {
                tracing::error!(
                    error = %invalid,
                    serving = handle.get().revision(),
                    "new runtime config refused; the previous one keeps serving"
                );
                handle.refuse(invalid.to_string());
            }
        }
    }
}
