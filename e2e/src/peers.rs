//! Postfix and Dovecot from Debian's packages as peers on loopback, started by
//! `e2e/peers/peers.sh` and stopped when dropped.
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

impl Peers {
    /// Configures and starts both in a fresh directory.
    pub fn start() -> Result<Peers> {
        let dir = tempfile::tempdir()?;
        let out = Command::new("bash")
            .arg(workspace_root().join("e2e/peers/peers.sh"))
            .arg("start")
            .arg(dir.path())
            .output()
            .context("running peers.sh")?;
        if !out.status.success() {
            bail!("peers.sh failed: {}", String::from_utf8_lossy(&out.stderr));
        }
        let ports = serde_json::from_slice(&out.stdout).context("peers.sh prints JSON")?;
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
        let _ = Command::new("bash")
            .arg(workspace_root().join("e2e/peers/peers.sh"))
            .arg("stop")
            .arg(self.dir.path())
            .status();
    }
}
