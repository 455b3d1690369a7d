//! Child processes that cannot outlive the test binary.
//!
//! Each server runs under a small `sh` guard whose stdin is a pipe from this process. When this
//! process ends for any reason (normal exit, panic, SIGKILL) the pipe closes, the guard's `read`
//! returns and it stops the server. No unsafe code and no reliance on destructors of statics.
use std::{
    fs::File,
    path::{Path, PathBuf},
    process::{Child, ChildStdin, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context, Result};

// The guard starts the server, stops it when its stdin (fd 3 here) reaches end of file, and
// exits with the server's status when the server ends first, so `running` tells the truth.
// SIGTERM first, SIGKILL after 5 s: kube-apiserver's graceful shutdown can hang forever when
// etcd went first.
const GUARD: &str = r#"exec 3<&0
"$@" </dev/null 3<&- &
child=$!
(
  read -r _ignored <&3
  kill -TERM "$child" 2>/dev/null
  i=0
  while kill -0 "$child" 2>/dev/null && [ "$i" -lt 50 ]; do sleep 0.1; i=$((i + 1)); done
  kill -KILL "$child" 2>/dev/null
) 3<&3 &
watcher=$!
exec 3<&-
wait "$child"
status=$?
kill "$watcher" 2>/dev/null
exit "$status""#;

/// A running server process.
#[derive(Debug)]
pub(crate) struct Guarded {
    name: String,
    guard: Child,
    stdin: Option<ChildStdin>,
    log: PathBuf,
}

impl Guarded {
    pub(crate) fn spawn(name: &str, program: &Path, args: &[String], log: &Path) -> Result<Self> {
        let out = File::create(log).with_context(|| format!("creating {}", log.display()))?;
        let err = out.try_clone()?;
        let mut guard = Command::new("sh")
            .arg("-c")
            .arg(GUARD)
            .arg(name)
            .arg(program)
            .args(args)
            .stdin(Stdio::piped())
            .stdout(out)
            .stderr(err)
            .spawn()
            .with_context(|| format!("starting {}", program.display()))?;
        let stdin = guard.stdin.take();
        Ok(Self {
            name: name.to_string(),
            guard,
            stdin,
            log: log.to_path_buf(),
        })
    }

    /// Whether the server (its guard) still runs.
    pub(crate) fn running(&mut self) -> bool {
        matches!(self.guard.try_wait(), Ok(None))
    }

    /// The last lines of the server's log, for error messages.
    pub(crate) fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        let start = lines.len().saturating_sub(30);
        format!(
            "last lines of {} ({}):\n{}",
            self.name,
            self.log.display(),
            lines[start..].join("\n")
        )
    }

    /// Stops the server and waits (a bounded time) for it to exit.
    pub(crate) fn stop(&mut self) {
        drop(self.stdin.take());
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if !self.running() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.guard.kill();
        let _ = self.guard.wait();
    }
}

impl Drop for Guarded {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A TCP port on 127.0.0.1 that was free a moment ago.
pub(crate) fn free_port() -> Result<u16> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    Ok(listener.local_addr()?.port())
}
