//! PostgreSQL from Debian's package, run inside a real node's network on the node's address,
//! as a database outside the cluster (a managed service) is: pods reach it over TLS with a
//! certificate from a test CA; the test reads it through its Unix socket. Set up the way
//! CloudNativePG sets up its application database: a database `app` owned by a login role
//! `app`. Stopped when dropped (and with the node's network namespace, whatever happens).
use std::{fs, path::PathBuf, process::Command};

use anyhow::{Context, Result, bail};

use crate::{Cluster, cluster::NODE_IP, pki};

/// The port the database listens on, on the node's address.
pub const DATABASE_PORT: u16 = 5432;
const PASSWORD: &str = "app-password-for-the-e2e-tests";

/// A running PostgreSQL in a node's network.
#[derive(Debug)]
pub struct Database {
    dir: tempfile::TempDir,
    bin: PathBuf,
    ca_pem: String,
}

/// Runs `cmd`; its standard output, or an error with what it printed.
fn run(cmd: &mut Command) -> Result<String> {
    let out = cmd.output().with_context(|| format!("running {cmd:?}"))?;
    if !out.status.success() {
        bail!(
            "{cmd:?} failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

impl Database {
    /// Makes a cluster (initdb), turns TLS on and starts it in `cluster`'s node network.
    pub fn start_in(cluster: &Cluster) -> Result<Database> {
        let bin = fs::read_dir("/usr/lib/postgresql")
            .context("PostgreSQL from Debian's package (e2e/scripts/install-deps.sh)")?
            .flatten()
            .map(|e| e.path().join("bin"))
            .filter(|p| p.join("initdb").exists())
            .max()
            .context("no initdb under /usr/lib/postgresql")?;
        let dir = tempfile::Builder::new()
            .prefix("kubemail-e2e-db-")
            .tempdir()?;
        let (ca_pem, cert, key) = pki::server_pem("kubemail e2e database", &[NODE_IP])?;
        let db = Database { dir, bin, ca_pem };
        let data = db.data();
        run(Command::new("chown")
            .arg("postgres:postgres")
            .arg(db.dir.path()))?;
        db.as_postgres(Command::new(db.bin.join("initdb")).args([
            "-U",
            "postgres",
            "--auth-local=trust",
            "--auth-host=reject",
            "--no-sync",
            "-E",
            "UTF8",
            "-D",
            &data.to_string_lossy(),
        ]))?;
        fs::write(data.join("server.crt"), cert)?;
        fs::write(data.join("server.key"), key)?;
        // The pods' connections: TLS and a password only. The test's own: the Unix socket.
        fs::write(
            data.join("pg_hba.conf"),
            "local all all trust\nhostssl app app 0.0.0.0/0 scram-sha-256\n",
        )?;
        run(Command::new("chown")
            .args(["-R", "postgres:postgres"])
            .arg(&data))?;
        fs::set_permissions(
            data.join("server.key"),
            std::os::unix::fs::PermissionsExt::from_mode(0o600),
        )?;
        let options = format!(
            "-c listen_addresses={NODE_IP} -c port={DATABASE_PORT} -c unix_socket_directories={} \
             -c ssl=on -c max_connections=200 -c fsync=off",
            db.dir.path().display()
        );
        let mut start = cluster.in_node("/usr/sbin/runuser");
        start
            .args(["-u", "postgres", "--"])
            .arg(db.bin.join("pg_ctl"))
            .args(["-w", "-t", "60", "-D"])
            .arg(&data)
            .arg("-l")
            .arg(db.dir.path().join("postgres.log"))
            .args(["-o", &options, "start"]);
        run(&mut start).with_context(|| db.log())?;
        db.psql_in(
            "postgres",
            &format!("CREATE ROLE app LOGIN PASSWORD '{PASSWORD}'"),
        )?;
        db.psql_in("postgres", "CREATE DATABASE app OWNER app")?;
        Ok(db)
    }

    fn data(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    fn as_postgres(&self, cmd: &mut Command) -> Result<String> {
        let program = cmd.get_program().to_owned();
        let args: Vec<_> = cmd.get_args().map(ToOwned::to_owned).collect();
        run(Command::new("/usr/sbin/runuser")
            .args(["-u", "postgres", "--"])
            .arg(program)
            .args(args)
            .current_dir(self.dir.path()))
    }

    /// The connection URI, as CloudNativePG's application Secret's `uri` key holds it.
    pub fn uri(&self) -> String {
        format!("postgresql://app:{PASSWORD}@{NODE_IP}:{DATABASE_PORT}/app")
    }

    /// The CA that signed the server's certificate (PEM): what a `caSecretRef` holds.
    pub fn ca_pem(&self) -> &str {
        &self.ca_pem
    }

    /// Runs SQL in the database `app` as the superuser, through the Unix socket; what `psql`
    /// printed (unaligned, tuples only).
    pub fn psql(&self, sql: &str) -> Result<String> {
        self.psql_in("app", sql)
    }

    fn psql_in(&self, database: &str, sql: &str) -> Result<String> {
        run(Command::new(self.bin.join("psql"))
            .args([
                "-X",
                "-A",
                "-t",
                "-v",
                "ON_ERROR_STOP=1",
                "-U",
                "postgres",
                "-h",
            ])
            .arg(self.dir.path())
            .args(["-p", &DATABASE_PORT.to_string(), "-d", database, "-c", sql]))
    }

    /// The server's log, for a failure message.
    pub fn log(&self) -> String {
        fs::read_to_string(self.dir.path().join("postgres.log")).unwrap_or_default()
    }
}

impl Drop for Database {
    fn drop(&mut self) {
        let _ = self.as_postgres(
            Command::new(self.bin.join("pg_ctl"))
                .args(["-m", "immediate", "-D"])
                .arg(self.data())
                .arg("stop"),
        );
    }
}
