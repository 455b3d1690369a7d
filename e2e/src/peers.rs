//! Peers from Debian's packages on loopback, started by scripts in `e2e/peers/` and stopped
//! when dropped: Postfix and Dovecot (`peers.sh`), and the content scanners clamd and rspamd
//! with its Redis (`scanners.sh`).
use std::process::Command;

use anyhow::{Context, Result, bail};

use crate::workspace_root;

/// Running peers: Postfix (SMTP with STARTTLS) and Dovecot (IMAP and POP3, STARTTLS and
/// implicit TLS), with one user.
#[derive(Debug)]
pub struct Peers {
    dir: tempfile::TempDir,
    ports: serde_json::Value,
}

/// Runs `e2e/peers/<script> <command> DIR [which]`; what it printed on success.
fn script(script: &str, command: &str, dir: &std::path::Path, which: &str) -> Result<Vec<u8>> {
    let out = Command::new("bash")
        .arg(workspace_root().join("e2e/peers").join(script))
        .arg(command)
        .arg(dir)
        .args((!which.is_empty()).then_some(which))
        .output()
        .with_context(|| format!("running {script}"))?;
    if !out.status.success() {
        bail!(
            "{script} {command} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(out.stdout)
}

impl Peers {
    /// Configures and starts both in a fresh directory.
    pub fn start() -> Result<Peers> {
        let dir = tempfile::tempdir()?;
        let out = script("peers.sh", "start", dir.path(), "")?;
        let ports = serde_json::from_slice(&out).context("peers.sh prints JSON")?;
        Ok(Peers { dir, ports })
    }

    /// The port of `smtp`, `imap`, `imaps`, `pop3` or `pop3s`.
    pub fn port(&self, protocol: &str) -> u16 {
        self.ports[protocol].as_u64().unwrap_or_default() as u16
    }

    /// `127.0.0.1:<port>` of a protocol.
    pub fn at(&self, protocol: &str) -> String {
        format!("127.0.0.1:{}", self.port(protocol))
    }

    /// Dovecot's user and password.
    pub fn login(&self) -> (String, String) {
        let field = |name: &str| self.ports[name].as_str().unwrap_or_default().to_string();
        (field("user"), field("password"))
    }

    /// The directory they run in (free for a test's own files).
    pub fn dir(&self) -> &std::path::Path {
        self.dir.path()
    }
}

impl Drop for Peers {
    fn drop(&mut self) {
        let _ = script("peers.sh", "stop", self.dir.path(), "");
    }
}

/// Running content scanners (see `e2e/peers/scanners.sh` for how they are configured): clamd,
/// rspamd with its Redis, or both.
#[derive(Debug)]
pub struct Scanners {
    dir: tempfile::TempDir,
    ports: serde_json::Value,
}

impl Scanners {
    /// Starts `clamd`, `rspamd` or (`""`) both in a fresh directory.
    pub fn start(which: &str) -> Result<Scanners> {
        let dir = tempfile::tempdir()?;
        let out = script("scanners.sh", "start", dir.path(), which)?;
        let ports = serde_json::from_slice(&out).context("scanners.sh prints JSON")?;
        Ok(Scanners { dir, ports })
    }

    /// The port of `clamd`, `rspamd` (the normal worker), `controller`, `proxy` (the milter)
    /// or `redis`.
    pub fn port(&self, name: &str) -> u16 {
        self.ports[name]
            .as_u64()
            .and_then(|p| u16::try_from(p).ok())
            .unwrap_or_else(|| panic!("no {name} port in {}", self.ports))
    }

    /// The password rspamd's controller asks for (to learn, and to read its statistics).
    pub fn password(&self) -> &str {
        self.ports["controllerPassword"]
            .as_str()
            .unwrap_or_default()
    }

    /// Stops `clamd`, `rspamd` or (`""`) both, and waits until they are gone.
    pub fn stop(&self, which: &str) {
        let _ = script("scanners.sh", "stop", self.dir.path(), which);
    }

    /// How many messages rspamd's controller says were learned.
    pub fn learned(&self) -> u64 {
        let out = Command::new("curl")
            .args(["-sS", "--max-time", "5", "-H"])
            .arg(format!("Password: {}", self.password()))
            .arg(format!("http://127.0.0.1:{}/stat", self.port("controller")))
            .output();
        out.ok()
            .and_then(|o| serde_json::from_slice::<serde_json::Value>(&o.stdout).ok())
            .and_then(|v| v["learned"].as_u64())
            .unwrap_or(0)
    }
}

impl Drop for Scanners {
    fn drop(&mut self) {
        self.stop("");
    }
}
