//! `mail-runtime dev`: every protocol on loopback with a self-signed certificate, a store in a
//! directory, and two demo mailboxes. It renders a real config file and serves it through the
//! same code as production, so what works here works in a pod.
use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
};

use anyhow::{Context, Result};

use crate::{
    auth::hash_password,
    config::{
        API_VERSION, Advertised, ConfigHandle, DomainConfig, InboundChecks, KIND, Limits, Listener,
        ListenerProtocol, MailboxConfig, RawConfig, RelayConfig, Security, Storage, TlsFiles,
        load_file,
    },
    runtime::Runtime,
};

/// The demo domain.
pub const DOMAIN: &str = "example.test";

/// Dev mode's options.
#[derive(Debug, Clone)]
pub struct DevOptions {
    /// The data directory; a temporary one when absent.
    pub data: Option<PathBuf>,
    /// The first port: SMTP; the others follow in DESIGN.md's order. 0: free ports chosen
    /// by the kernel (the JSON line tells which).
    pub base_port: u16,
    /// Stop when standard input reaches end of file (so a test's runtime dies with the test).
    pub stop_on_eof: bool,
    /// How long SIGTERM's drain may take at most.
    pub drain: std::time::Duration,
    /// Mail in this PostgreSQL database instead of a Maildir under `data`. Every dev process
    /// on one database serves the same demo accounts (kept in the database) and the same mail.
    pub postgres: Option<String>,
    /// The CA of the database server's certificate (TLS, verified).
    pub postgres_ca_file: Option<PathBuf>,
}

/// The order of the dev ports after the base port.
pub const PORT_ORDER: [ListenerProtocol; 10] = [
    ListenerProtocol::Smtp,
    ListenerProtocol::Submission,
    ListenerProtocol::Submissions,
    ListenerProtocol::Imap,
    ListenerProtocol::Imaps,
    ListenerProtocol::Pop3,
    ListenerProtocol::Pop3s,
    ListenerProtocol::Http,
    ListenerProtocol::Managesieve,
    ListenerProtocol::Https,
];

/// Starts dev mode; prints the JSON line and serves until the process ends.
pub async fn run(options: DevOptions) -> Result<()> {
    let (data, _temp) = match &options.data {
        Some(dir) => (dir.clone(), None),
        None => {
            let temp = tempfile_dir()?;
            (temp.clone(), Some(temp))
        }
    };
    std::fs::create_dir_all(&data)?;
    let config_path = data.join("runtime.yaml");
    let database = match &options.postgres {
        Some(uri) => Some(DevDatabase {
            uri: uri.clone(),
            ca_file: options.postgres_ca_file.clone(),
            accounts: shared_accounts(uri, options.postgres_ca_file.as_deref(), demo_accounts())
                .await?,
        }),
        None => None,
    };
    let (accounts, held) =
        write_dev_config(&data, &config_path, options.base_port, database.as_ref())?;
    let config = load_file(&config_path).map_err(|e| anyhow::anyhow!("{e}"))?;
    let runtime = Runtime::new(ConfigHandle::new(config))?;
    let bound = runtime.start_with(Some(config_path), held).await?;
    let ports: serde_json::Map<String, serde_json::Value> = bound
        .iter()
        .map(|(l, addr)| (l.protocol.name().to_string(), addr.port().into()))
        .collect();
    let accounts: Vec<serde_json::Value> = accounts
        .iter()
        .map(|(a, p)| serde_json::json!({"address": a, "password": p}))
        .collect();
    println!(
        "{}",
        serde_json::json!({
            "ports": ports,
            "accounts": accounts,
            "domain": DOMAIN,
            "data": data,
            "config": data.join("runtime.yaml"),
        })
    );
    // The end of standard input is a test's runtime dying with it: at once, no drain.
    let eof = async {
        if options.stop_on_eof {
            stdin_closed().await
        } else {
            std::future::pending().await
        }
    };
    tokio::select! {
        () = runtime.serve_until_signal(options.drain) => {},
        () = eof => {},
    }
    Ok(())
}

async fn stdin_closed() {
    use tokio::io::AsyncReadExt;
    let mut stdin = tokio::io::stdin();
    let mut buf = [0u8; 64];
    while let Ok(n) = stdin.read(&mut buf).await {
        if n == 0 {
            return;
        }
    }
}

/// A dev account: address and password.
type Account = (String, String);

/// Dev mode on a database: its URI and the accounts every dev process on it serves.
#[derive(Debug, Clone)]
pub struct DevDatabase {
    /// The connection URI.
    pub uri: String,
    /// The CA of the server's certificate.
    pub ca_file: Option<PathBuf>,
    /// The demo accounts, as the database has them.
    pub accounts: Vec<Account>,
}

/// Two new demo accounts with random passwords.
fn demo_accounts() -> Vec<Account> {
    ["alice", "bob"]
        .iter()
        .map(|name| (format!("{name}@{DOMAIN}"), random_password()))
        .collect()
}

/// The demo accounts a database's dev processes share: the first process's, which it leaves
/// in the table `kubemail_dev_accounts` (dev mode only: a cluster's accounts are Mailboxes).
async fn shared_accounts(
    uri: &str,
    ca_file: Option<&Path>,
    proposed: Vec<Account>,
) -> Result<Vec<Account>> {
    let mut config = crate::store::postgres::parse_uri(uri)?;
    let tls = crate::store::postgres::connector(&mut config, ca_file)?;
    let (client, connection) = config
        .connect(tls)
        .await
        .context("connecting to the dev database")?;
    let connection = tokio::spawn(connection);
    // Several dev processes starting at once: one makes the table.
    client
        .batch_execute(
            "SELECT pg_advisory_lock(7461); \
             CREATE TABLE IF NOT EXISTS kubemail_dev_accounts \
             (address text PRIMARY KEY, password text NOT NULL); \
             SELECT pg_advisory_unlock(7461)",
        )
        .await?;
    for (address, password) in &proposed {
        client
            .execute(
                "INSERT INTO kubemail_dev_accounts VALUES ($1, $2) ON CONFLICT DO NOTHING",
                &[address, password],
            )
            .await?;
    }
    let rows = client
        .query(
            "SELECT address, password FROM kubemail_dev_accounts ORDER BY address",
            &[],
        )
        .await?;
    drop(client);
    let _ = connection.await;
    Ok(rows.iter().map(|r| (r.get(0), r.get(1))).collect())
}

/// Writes the dev config (and a self-signed certificate) into `data`; returns the accounts and,
/// for base port 0, the sockets holding the chosen ports (the runtime serves them as they are).
/// A config already there is kept (its accounts too), so a restarted dev runtime serves the
/// same mailboxes.
pub fn write_dev_config(
    data: &Path,
    path: &Path,
    base_port: u16,
    database: Option<&DevDatabase>,
) -> Result<(Vec<Account>, Vec<std::net::TcpListener>)> {
    let accounts_file = data.join("dev-accounts.json");
    let cert = data.join("tls/tls.crt");
    let key = data.join("tls/tls.key");
    if let (Ok(text), true) = (std::fs::read_to_string(&accounts_file), path.exists()) {
        let accounts: Vec<(String, String)> = serde_json::from_str(&text)?;
        // A data directory written before these files were made private is tightened now.
        for file in [accounts_file.as_path(), key.as_path(), path] {
            if file.exists() {
                make_private(file)?;
            }
        }
        return Ok((accounts, Vec::new()));
    }
    // The key is created owner-only before it is written, so it is never readable by others,
    // not even for a moment (`write_self_signed` truncates and keeps the mode).
    if let Some(dir) = key.parent() {
        std::fs::create_dir_all(dir)?;
    }
    write_private(&key, b"")?;
    crate::tls::write_self_signed(
        &[
            format!("mail.{DOMAIN}"),
            format!("mta-sts.{DOMAIN}"),
            format!("autoconfig.{DOMAIN}"),
            format!("autodiscover.{DOMAIN}"),
            "localhost".into(),
            "127.0.0.1".into(),
        ],
        &cert,
        &key,
    )?;
    let accounts = match database {
        Some(db) => db.accounts.clone(),
        None => demo_accounts(),
    };
    let database = match database {
        Some(db) => {
            let uri_file = data.join("database-uri");
            write_private(&uri_file, db.uri.as_bytes())?;
            Some(crate::config::DatabaseStorage {
                uri_file,
                ca_file: db.ca_file.clone(),
            })
        }
        None => None,
    };
    let mailboxes = accounts
        .iter()
        .map(|(address, password)| MailboxConfig {
            address: address.clone(),
            display_name: None,
            password_hash: hash_password(password),
            aliases: Vec::new(),
            forward_to: Vec::new(),
            keep_forwarded_copy: true,
            quota_bytes: Some(1 << 30),
            protocols: vec![
                crate::config::LoginProtocol::Smtp,
                crate::config::LoginProtocol::Imap,
                crate::config::LoginProtocol::Pop3,
            ],
            suspended: false,
            app_passwords: Vec::new(),
            auto_reply: None,
            sieve_script: None,
            spam: None,
        })
        .collect();
    // Base port 0: each listener gets a port that is free now, written into the config so that
    // autoconfig advertises the real ports and a restart keeps them. The sockets that chose the
    // ports are handed to the runtime and served as they are: closing them first would let the
    // kernel give the port to another process (CI saw "Address already in use").
    let mut held = Vec::new();
    let mut ports: Vec<(ListenerProtocol, u16)> = Vec::new();
    for (i, protocol) in PORT_ORDER.iter().enumerate() {
        if !crate::runtime::SERVED.contains(protocol) {
            continue;
        }
        let port = if base_port == 0 {
            let probe = std::net::TcpListener::bind("127.0.0.1:0")?;
            let port = probe.local_addr()?.port();
            held.push(probe);
            port
        } else {
            base_port + i as u16
        };
        ports.push((*protocol, port));
    }
    let port_of = |p: ListenerProtocol| ports.iter().find(|(q, _)| *q == p).map_or(0, |(_, n)| *n);
    let advertised = Advertised {
        submission: port_of(ListenerProtocol::Submission),
        submissions: port_of(ListenerProtocol::Submissions),
        imap: port_of(ListenerProtocol::Imap),
        imaps: port_of(ListenerProtocol::Imaps),
        pop3: port_of(ListenerProtocol::Pop3),
        pop3s: port_of(ListenerProtocol::Pop3s),
        managesieve: port_of(ListenerProtocol::Managesieve),
        ..Advertised::default()
    };
    let listeners = ports
        .iter()
        .map(|(protocol, port)| Listener {
            protocol: *protocol,
            address: SocketAddr::from(([127, 0, 0, 1], *port)).to_string(),
            proxy_protocol: false,
        })
        .collect();
    let raw = RawConfig {
        api_version: API_VERSION.into(),
        kind: KIND.into(),
        revision: "dev-1".into(),
        hostname: format!("mail.{DOMAIN}"),
        domains: vec![DomainConfig {
            name: DOMAIN.into(),
            aliases: Vec::new(),
            catch_all: None,
            ..Default::default()
        }],
        mailboxes,
        relay: RelayConfig::default(),
        limits: Limits::default(),
        tls: TlsFiles {
            cert_file: cert,
            key_file: key,
        },
        listeners,
        storage: Storage {
            path: data.to_path_buf(),
            database,
        },
        security: Security::default(),
        advertised,
        dkim: None,
        // Dev mode runs without DNS (a laptop, a CI box): sender checks would only say
        // "temperror". Turn them on with `inbound.verify: true` and `nameservers`.
        inbound: InboundChecks {
            verify: false,
            ..InboundChecks::default()
        },
        nameservers: Vec::new(),
    };
    // The config holds password hashes and the accounts file the passwords themselves: both
    // owner-only, like the key.
    write_private(path, serde_yaml_ng::to_string(&raw)?.as_bytes())
        .with_context(|| format!("writing {}", path.display()))?;
    write_private(&accounts_file, serde_json::to_string(&accounts)?.as_bytes())
        .with_context(|| format!("writing {}", accounts_file.display()))?;
    Ok((accounts, held))
}

/// Writes `contents` to `path`, readable and writable by the owner only (0600) from the moment
/// the file exists; a file already there gets that mode before it is truncated and written.
fn write_private(path: &Path, contents: &[u8]) -> Result<()> {
    use std::{io::Write, os::unix::fs::OpenOptionsExt};
    if path.exists() {
        make_private(path)?;
    }
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("opening {}", path.display()))?;
    file.write_all(contents)?;
    Ok(())
}

/// Sets a file's mode to 0600.
fn make_private(path: &Path) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
        .with_context(|| format!("making {} private", path.display()))
}

fn random_password() -> String {
    let mut bytes = [0u8; 12];
    let ok = std::fs::File::open("/dev/urandom")
        .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut bytes))
        .is_ok();
    assert!(ok, "reading /dev/urandom");
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn tempfile_dir() -> Result<PathBuf> {
    let dir = std::env::temp_dir().join(format!(
        "kubemail-dev-{}-{}",
        std::process::id(),
        random_password()
    ));
    // Owner-only: it holds the demo mailboxes' mail, passwords and key.
    std::os::unix::fs::DirBuilderExt::mode(&mut std::fs::DirBuilder::new(), 0o700)
        .create(&dir)
        .with_context(|| format!("creating {}", dir.display()))?;
    Ok(dir)
}

/// Waits for Ctrl-C or SIGTERM.
pub async fn wait_for_shutdown() {
    let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(t) => t,
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
            return;
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {},
        _ = term.recv() => {},
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    fn mode(path: &Path) -> u32 {
        std::fs::metadata(path)
            .expect("the file exists")
            .permissions()
            .mode()
            & 0o777
    }

    #[test]
    fn the_accounts_config_and_tls_key_are_readable_by_their_owner_only() {
        let dir = tempfile::tempdir().expect("temp dir");
        let config = dir.path().join("runtime.yaml");
        write_dev_config(dir.path(), &config, 42500, None).expect("dev config");
        for file in [
            dir.path().join("dev-accounts.json"),
            config.clone(),
            dir.path().join("tls/tls.key"),
        ] {
            assert_eq!(
                mode(&file),
                0o600,
                "{} is mode {:o}",
                file.display(),
                mode(&file)
            );
        }
        // A data directory from before this fix has world-readable files: they are tightened
        // when dev mode reuses them.
        for file in ["dev-accounts.json", "runtime.yaml", "tls/tls.key"] {
            std::fs::set_permissions(
                dir.path().join(file),
                std::fs::Permissions::from_mode(0o644),
            )
            .expect("chmod");
        }
        write_dev_config(dir.path(), &config, 42500, None).expect("dev config again");
        for file in ["dev-accounts.json", "runtime.yaml", "tls/tls.key"] {
            assert_eq!(
                mode(&dir.path().join(file)),
                0o600,
                "{file} after a restart"
            );
        }
    }
}
