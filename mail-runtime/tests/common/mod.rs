//! Runs the real `mail-runtime dev` binary on loopback for tests, and talks to it as a raw
//! SMTP client when a test needs byte-exact control (the mail clients themselves are swaks,
//! curl and Python, run as programs).
#![allow(dead_code)]

pub mod imap;

use std::{
    collections::HashMap,
    io::{BufRead, BufReader, Read, Write},
    net::TcpStream,
    path::{Path, PathBuf},
    process::{Child, ChildStdin, Command, Stdio},
    time::{Duration, Instant},
};

/// A running `mail-runtime dev`. It exits when this value (its stdin) is dropped, and also when
/// the test binary dies, however it dies.
pub struct Dev {
    child: Child,
    _stdin: Option<ChildStdin>,
    pub ports: HashMap<String, u16>,
    pub accounts: Vec<(String, String)>,
    pub data: PathBuf,
}

impl Dev {
    pub fn start(data: &Path) -> Dev {
        Dev::start_with_env(data, &[])
    }

    /// With these environment variables too (such as `SSL_CERT_FILE`: the CAs it trusts).
    pub fn start_with_env(data: &Path, env: &[(&str, &Path)]) -> Dev {
        Dev::start_with(data, env, &[])
    }

    /// With these environment variables and further arguments of `mail-runtime dev`.
    pub fn start_with(data: &Path, env: &[(&str, &Path)], args: &[&str]) -> Dev {
        let mut child = Command::new(env!("CARGO_BIN_EXE_mail-runtime"))
            .args(["dev", "--base-port", "0", "--stop-on-eof", "--data"])
            .arg(data)
            .args(args)
            .env("RUST_LOG", "warn")
            .envs(env.iter().copied())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("mail-runtime starts");
        let stdin = child.stdin.take();
        let mut first = String::new();
        BufReader::new(child.stdout.take().expect("stdout"))
            .read_line(&mut first)
            .expect("the JSON line");
        let json: serde_json::Value = serde_json::from_str(&first)
            .unwrap_or_else(|e| panic!("dev mode's first line is not JSON ({e}): {first:?}"));
        let ports = json["ports"]
            .as_object()
            .expect("ports")
            .iter()
            .map(|(k, v)| (k.clone(), v.as_u64().expect("port") as u16))
            .collect();
        let accounts = json["accounts"]
            .as_array()
            .expect("accounts")
            .iter()
            .map(|a| {
                (
                    a["address"].as_str().expect("address").to_string(),
                    a["password"].as_str().expect("password").to_string(),
                )
            })
            .collect();
        Dev {
            child,
            _stdin: stdin,
            ports,
            accounts,
            data: data.to_path_buf(),
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn port(&self, protocol: &str) -> u16 {
        self.ports[protocol]
    }

    pub fn password(&self, address: &str) -> String {
        self.accounts
            .iter()
            .find(|(a, _)| a == address)
            .map(|(_, p)| p.clone())
            .expect("a dev account")
    }

    /// SIGTERM, as the kubelet sends it to a pod that is to stop.
    pub fn terminate(&self) {
        run(Command::new("kill").args(["-TERM", &self.pid().to_string()]));
    }

    /// Waits up to `limit` for the process to exit by itself; its status, if it did.
    pub fn wait_exit(&mut self, limit: Duration) -> Option<std::process::ExitStatus> {
        let start = Instant::now();
        while start.elapsed() < limit {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }

    /// SIGKILL, as a node failure or the OOM killer would.
    pub fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// The Maildir of a mailbox's INBOX.
    pub fn maildir(&self, address: &str) -> PathBuf {
        let (local, domain) = address.split_once('@').expect("address");
        self.data.join("mail").join(domain).join(local)
    }

    /// The messages in a mailbox, read from disk.
    pub fn messages(&self, address: &str) -> Vec<String> {
        let dir = self.maildir(address);
        let mut out = Vec::new();
        for sub in ["new", "cur"] {
            let Ok(entries) = std::fs::read_dir(dir.join(sub)) else {
                continue;
            };
            for entry in entries.flatten() {
                out.push(std::fs::read_to_string(entry.path()).expect("a readable message"));
            }
        }
        out
    }
}

impl Drop for Dev {
    fn drop(&mut self) {
        self._stdin.take();
        for _ in 0..50 {
            if matches!(self.child.try_wait(), Ok(Some(_))) {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        self.kill9();
    }
}

/// A raw SMTP client over a plain TCP connection.
pub struct Raw {
    stream: TcpStream,
    reader: BufReader<TcpStream>,
}

impl Raw {
    pub fn connect(port: u16) -> Raw {
        let stream = TcpStream::connect(("127.0.0.1", port)).expect("connect");
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .expect("timeout");
        let reader = BufReader::new(stream.try_clone().expect("clone"));
        let mut raw = Raw { stream, reader };
        let greeting = raw.reply();
        assert!(greeting.starts_with("220"), "{greeting}");
        raw
    }

    /// Reads one (possibly multi-line) reply; returns its last line.
    pub fn reply(&mut self) -> String {
        loop {
            let mut line = String::new();
            let n = self.reader.read_line(&mut line).expect("a reply");
            assert!(n > 0, "connection closed while waiting for a reply");
            if line.len() < 4 || line.as_bytes()[3] != b'-' {
                return line.trim_end().to_string();
            }
        }
    }

    /// Sends bytes as they are.
    pub fn send_raw(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).expect("send");
    }

    /// Sends a command line and returns the reply.
    pub fn cmd(&mut self, line: &str) -> String {
        self.send_raw(format!("{line}\r\n").as_bytes());
        self.reply()
    }

    /// Whether the server closed the connection.
    pub fn closed(&mut self) -> bool {
        let mut buf = [0u8; 1];
        matches!(self.reader.read(&mut buf), Ok(0))
    }
}

/// Runs a program; panics with its output when it fails.
pub fn run(cmd: &mut Command) -> String {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{cmd:?} failed:\n{text}");
    text
}

/// A GET on the runtime's HTTP port, with curl.
#[allow(dead_code)]
pub fn http_get(dev: &Dev, path: &str) -> String {
    run(Command::new("curl")
        .args(["-sS", "--fail", "--max-time", "5"])
        .arg(format!("http://127.0.0.1:{}{path}", dev.port("http"))))
}

/// Kill moments for crash drills: a different sequence each run (xorshift from the clock).
pub struct KillClock(u64);

impl KillClock {
    pub fn new() -> KillClock {
        let seed = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(42);
        KillClock(seed | 1)
    }

    /// A wait of `from` up to `from + spread` milliseconds.
    pub fn next_ms(&mut self, from: u64, spread: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        from + self.0 % spread
    }
}

/// The path of a helper script under tests/clients.
pub fn client_script(name: &str) -> PathBuf {
    manifest_dir().join("tests/clients").join(name)
}

/// This package's directory, as `cargo test` says at run time (a test binary reused from
/// another checkout sharing the target directory would otherwise read that checkout's files).
pub fn manifest_dir() -> PathBuf {
    std::env::var_os("CARGO_MANIFEST_DIR")
        .unwrap_or_else(|| env!("CARGO_MANIFEST_DIR").into())
        .into()
}

/// Rewrites the runtime's config (as the operator would) and waits until it is served.
pub fn patch_config(dev: &Dev, revision: &str, patch: impl FnOnce(&mut serde_yaml_ng::Value)) {
    let path = dev.data.join("runtime.yaml");
    let mut config: serde_yaml_ng::Value =
        serde_yaml_ng::from_str(&std::fs::read_to_string(&path).expect("config")).expect("yaml");
    patch(&mut config);
    config["revision"] = revision.into();
    let tmp = dev.data.join("runtime.yaml.tmp");
    std::fs::write(&tmp, serde_yaml_ng::to_string(&config).expect("yaml")).expect("write");
    std::fs::rename(&tmp, &path).expect("rename");
    let status = dev.data.join("kubemail-runtime-status.json");
    let start = Instant::now();
    loop {
        let served: serde_json::Value = std::fs::read(&status)
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or_default();
        if served["revision"] == revision {
            return;
        }
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "config {revision} not served: {served}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A number from a process's `/proc/PID/status` (`VmRSS:`, `VmHWM:`, `Threads:`), in its unit.
pub fn proc_status(pid: u32, field: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .expect("/proc status")
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .expect("the field")
}

/// A child process killed when dropped.
pub struct Spawned(pub Child);

impl Drop for Spawned {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// HAProxy (Debian's) in the foreground with `config` (written to `dir/haproxy.cfg`, its log
/// to `dir/haproxy.log`), once it listens on every address of `listening`.
pub fn haproxy(dir: &Path, config: &str, listening: &[std::net::SocketAddr]) -> Spawned {
    let path = dir.join("haproxy.cfg");
    std::fs::write(&path, config).expect("write haproxy.cfg");
    let log = std::fs::File::create(dir.join("haproxy.log")).expect("log");
    let child = Command::new("haproxy")
        .arg("-db")
        .arg("-f")
        .arg(&path)
        .stdout(log.try_clone().expect("log"))
        .stderr(log)
        .spawn()
        .expect("haproxy runs (apt-get install haproxy; e2e/scripts/install-deps.sh)");
    let proxy = Spawned(child);
    let start = Instant::now();
    for address in listening {
        while TcpStream::connect(address).is_err() {
            assert!(
                start.elapsed() < Duration::from_secs(10),
                "HAProxy did not listen on {address}: {}",
                std::fs::read_to_string(dir.join("haproxy.log")).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    proxy
}

/// A PostgreSQL server from Debian's package, on a free loopback port with a data directory of
/// its own (run as the `postgres` user when the tests run as root: PostgreSQL refuses root).
/// Stopped when dropped. Its login is `kubemail` with a password.
pub struct Postgres {
    dir: tempfile::TempDir,
    bin: PathBuf,
    pub port: u16,
}

pub const POSTGRES_PASSWORD: &str = "s3cret-for-tests";

impl Postgres {
    pub fn start() -> Postgres {
        let bin = std::fs::read_dir("/usr/lib/postgresql")
            .expect("PostgreSQL from Debian's package (apt-get install postgresql)")
            .flatten()
            .map(|e| e.path().join("bin"))
            .filter(|p| p.join("initdb").exists())
            .max()
            .expect("an initdb under /usr/lib/postgresql");
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(dir.path().join("pw"), POSTGRES_PASSWORD).expect("password file");
        for_postgres(dir.path());
        let port = free_port().port();
        let pg = Postgres { dir, bin, port };
        let data = pg.data();
        pg.as_postgres(
            Command::new(pg.bin.join("initdb"))
                .args([
                    "-U",
                    "kubemail",
                    "--auth=scram-sha-256",
                    "--no-sync",
                    "-E",
                    "UTF8",
                ])
                .arg(format!("--pwfile={}", pg.dir.path().join("pw").display()))
                .arg("-D")
                .arg(&data),
        );
        pg.ctl("start");
        pg
    }

    /// A streaming standby of this server (`pg_basebackup -R`), started on a port of its own.
    pub fn standby(&self) -> Postgres {
        let dir = tempfile::tempdir().expect("tempdir");
        for_postgres(dir.path());
        let port = free_port().port();
        let standby = Postgres {
            dir,
            bin: self.bin.clone(),
            port,
        };
        standby.as_postgres(
            Command::new("env")
                .arg(format!("PGPASSWORD={POSTGRES_PASSWORD}"))
                .arg(self.bin.join("pg_basebackup"))
                .args([
                    "-h",
                    "127.0.0.1",
                    "-U",
                    "kubemail",
                    "-X",
                    "stream",
                    "-R",
                    "-p",
                ])
                .arg(self.port.to_string())
                .arg("-D")
                .arg(standby.data()),
        );
        standby.ctl("start");
        standby
    }

    /// Turns TLS on with a certificate for 127.0.0.1 signed by a new test CA, and refuses
    /// connections over TCP without it (`hostssl` only); returns the CA's PEM file.
    pub fn require_tls(&self) -> PathBuf {
        let dir = self.dir.path();
        let ca = dir.join("ca.pem");
        run(Command::new("openssl")
            .args([
                "req",
                "-x509",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:P-256",
                "-nodes",
            ])
            .args(["-days", "2", "-subj", "/CN=kubemail test database CA"])
            .arg("-keyout")
            .arg(dir.join("ca.key"))
            .arg("-out")
            .arg(&ca));
        run(Command::new("openssl")
            .args([
                "req",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:P-256",
                "-nodes",
            ])
            .args(["-subj", "/CN=127.0.0.1"])
            .arg("-keyout")
            .arg(self.data().join("server.key"))
            .arg("-out")
            .arg(dir.join("server.csr")));
        std::fs::write(
            dir.join("san.ext"),
            "subjectAltName=IP:127.0.0.1
",
        )
        .expect("ext");
        run(Command::new("openssl")
            .args(["x509", "-req", "-days", "2", "-CAcreateserial"])
            .arg("-in")
            .arg(dir.join("server.csr"))
            .arg("-CA")
            .arg(&ca)
            .arg("-CAkey")
            .arg(dir.join("ca.key"))
            .arg("-extfile")
            .arg(dir.join("san.ext"))
            .arg("-out")
            .arg(self.data().join("server.crt")));
        let conf = self.data().join("postgresql.conf");
        let mut text = std::fs::read_to_string(&conf).expect("postgresql.conf");
        text.push_str(
            "
ssl = on
ssl_cert_file = 'server.crt'
ssl_key_file = 'server.key'
",
        );
        std::fs::write(&conf, text).expect("postgresql.conf");
        let hba = self.data().join("pg_hba.conf");
        let text = std::fs::read_to_string(&hba)
            .expect("pg_hba.conf")
            .lines()
            .map(|l| {
                if l.starts_with("host ") {
                    l.replacen("host ", "hostssl ", 1)
                } else {
                    l.to_string()
                }
            })
            .collect::<Vec<_>>()
            .join("\n");
        std::fs::write(&hba, text + "\n").expect("pg_hba.conf");
        if is_root() {
            run(Command::new("chown")
                .args(["-R", "postgres:postgres"])
                .arg(self.data()));
            run(Command::new("chmod")
                .arg("600")
                .arg(self.data().join("server.key")));
        }
        self.ctl("restart");
        ca
    }

    /// `pg_ctl promote`: the standby becomes a primary.
    pub fn promote(&self) {
        self.as_postgres(
            Command::new(self.bin.join("pg_ctl"))
                .args(["-w", "-D"])
                .arg(self.data())
                .arg("promote"),
        );
    }

    fn data(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    /// Runs a PostgreSQL program as the `postgres` user when root.
    fn as_postgres(&self, cmd: &mut Command) -> String {
        if is_root() {
            let program = cmd.get_program().to_owned();
            let args: Vec<_> = cmd.get_args().map(|a| a.to_owned()).collect();
            run(Command::new("runuser")
                .args(["-u", "postgres", "--"])
                .arg(program)
                .args(args))
        } else {
            run(cmd)
        }
    }

    /// `pg_ctl start`, `stop` or `restart`, waiting for it.
    pub fn ctl(&self, action: &str) {
        let socket_dir = self.dir.path().to_string_lossy().to_string();
        self.as_postgres(
            Command::new(self.bin.join("pg_ctl"))
                .args(["-w", "-t", "30", "-m", "fast", "-D"])
                .arg(self.data())
                .arg("-l")
                .arg(self.dir.path().join("log"))
                .args([
                    "-o",
                    &format!(
                        "-p {} -c listen_addresses=127.0.0.1 -k {socket_dir}",
                        self.port
                    ),
                ])
                .arg(action),
        );
    }

    /// Stops (SIGSTOP) or resumes (SIGCONT) the server and all its processes: a database that
    /// hangs without closing its connections, as a lost node does.
    pub fn freeze(&self, frozen: bool) {
        let pid_file =
            std::fs::read_to_string(self.data().join("postmaster.pid")).expect("postmaster.pid");
        let master = pid_file
            .lines()
            .next()
            .expect("the postmaster's pid")
            .trim()
            .to_string();
        let children = std::fs::read_to_string(format!("/proc/{master}/task/{master}/children"))
            .unwrap_or_default();
        let signal = if frozen { "-STOP" } else { "-CONT" };
        run(Command::new("kill")
            .arg(signal)
            .arg(&master)
            .args(children.split_whitespace()));
    }

    /// The connection URI a runtime is given.
    pub fn uri(&self) -> String {
        format!(
            "postgresql://kubemail:{POSTGRES_PASSWORD}@127.0.0.1:{}/postgres",
            self.port
        )
    }

    /// Runs SQL with psql; its output (unaligned, tuples only).
    pub fn psql(&self, sql: &str) -> String {
        run(Command::new("psql")
            .env("PGPASSWORD", POSTGRES_PASSWORD)
            .args([
                "-h",
                "127.0.0.1",
                "-U",
                "kubemail",
                "-d",
                "postgres",
                "-At",
                "-p",
            ])
            .arg(self.port.to_string())
            .args(["-c", sql]))
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        if !self.data().join("postmaster.pid").exists() {
            return;
        }
        let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            self.as_postgres(
                Command::new(self.bin.join("pg_ctl"))
                    .args(["-w", "-m", "immediate", "-D"])
                    .arg(self.data())
                    .arg("stop"),
            )
        }));
    }
}

/// A loopback address with a port free now.
pub fn free_port() -> std::net::SocketAddr {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
}

/// Gives a directory to the `postgres` user when the tests run as root.
fn for_postgres(dir: &Path) {
    if is_root() {
        run(Command::new("chown")
            .args(["-R", "postgres:postgres"])
            .arg(dir));
    }
}

/// The subjects of messages, sorted.
pub fn subjects_of(messages: &[String]) -> Vec<String> {
    let mut subjects: Vec<String> = messages
        .iter()
        .filter_map(|m| {
            m.lines()
                .find_map(|l| l.strip_prefix("Subject: ").map(str::to_string))
        })
        .collect();
    subjects.sort();
    subjects
}

/// Checks tests/clients/imap_stress.py's report (its stdout): no violation, enough work done.
pub fn assert_stress_report(out: &std::process::Output) {
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    println!("{stdout}");
    let report: serde_json::Value = serde_json::from_str(stdout.trim())
        .unwrap_or_else(|e| panic!("no report ({e}):\n{stdout}\n{stderr}"));
    let violations = report["violations"].as_array().cloned().unwrap_or_default();
    assert!(
        violations.is_empty(),
        "{} violations, e.g.:\n{}",
        violations.len(),
        violations
            .iter()
            .take(20)
            .map(|v| v.as_str().unwrap_or_default().to_string())
            .collect::<Vec<_>>()
            .join("\n")
    );
    assert!(out.status.success(), "{stderr}");
    assert!(report["counts"]["ops"].as_u64().unwrap_or_default() > 100);
}

fn is_root() -> bool {
    std::fs::metadata("/proc/self")
        .map(|m| std::os::unix::fs::MetadataExt::uid(&m) == 0)
        .unwrap_or(false)
}
