//! `mail-runtime serve` reloads its config and certificate live, the way Kubernetes updates a
//! mounted Secret (a new directory and an atomic swap of the `..data` symlink), keeps serving
//! the last good config when a new one is broken, and reports the revision it serves.
mod common;

use std::{
    io::BufRead,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use common::Raw;

/// A directory laid out like a mounted Secret: `name -> ..data/name`, `..data -> ..<n>`.
struct SecretDir {
    dir: PathBuf,
    generation: u32,
}

impl SecretDir {
    fn new(dir: &Path) -> Self {
        std::fs::create_dir_all(dir).expect("dir");
        Self {
            dir: dir.to_path_buf(),
            generation: 0,
        }
    }

    /// Publishes a new set of files atomically, as the kubelet does.
    fn publish(&mut self, files: &[(&str, &[u8])]) {
        self.generation += 1;
        let version = format!("..{}", self.generation);
        let version_dir = self.dir.join(&version);
        std::fs::create_dir_all(&version_dir).expect("version dir");
        for (name, body) in files {
            std::fs::write(version_dir.join(name), body).expect("write");
            let link = self.dir.join(name);
            if std::fs::symlink_metadata(&link).is_err() {
                std::os::unix::fs::symlink(format!("..data/{name}"), &link).expect("link");
            }
        }
        let tmp = self.dir.join("..data_tmp");
        let _ = std::fs::remove_file(&tmp);
        std::os::unix::fs::symlink(&version, &tmp).expect("tmp link");
        std::fs::rename(&tmp, self.dir.join("..data")).expect("swap");
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port()
}

fn config(
    revision: &str,
    port: u16,
    data: &Path,
    tls: &SecretDir,
    mailboxes: &[&str],
    hash: &str,
) -> String {
    let mut text = format!(
        "apiVersion: runtime.kubemail.io/v1
kind: RuntimeConfig
revision: {revision}
hostname: mail.example.test
domains: [{{name: example.test}}]
tls: {{certFile: {cert}, keyFile: {key}}}
listeners: [{{protocol: smtp, address: \"127.0.0.1:{port}\"}}]
storage: {{path: {data}}}
mailboxes:
",
        cert = tls.path("tls.crt").display(),
        key = tls.path("tls.key").display(),
        data = data.display(),
    );
    for m in mailboxes {
        text.push_str(&format!("  - {{address: {m}, passwordHash: \"{hash}\"}}\n"));
    }
    text
}

fn cert_pair(name: &str, dir: &Path) -> (Vec<u8>, Vec<u8>) {
    let cert = dir.join(format!("{name}.crt"));
    let key = dir.join(format!("{name}.key"));
    mail_runtime::tls::write_self_signed(&[name.to_string()], &cert, &key).expect("cert");
    (
        std::fs::read(cert).expect("cert"),
        std::fs::read(key).expect("key"),
    )
}

fn served_certificate_name(port: u16) -> String {
    let out = Command::new("openssl")
        .args([
            "s_client",
            "-starttls",
            "smtp",
            "-connect",
            &format!("127.0.0.1:{port}"),
        ])
        .stdin(Stdio::null())
        .output()
        .expect("openssl");
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    text.lines()
        .find_map(|l| l.trim().strip_prefix("subject=").map(str::to_string))
        .unwrap_or_else(|| format!("no certificate in: {text}"))
}

fn rcpt(port: u16, address: &str) -> String {
    let mut c = Raw::connect(port);
    c.cmd("HELO reload-test");
    c.cmd("MAIL FROM:<a@example.net>");
    c.cmd(&format!("RCPT TO:<{address}>"))
}

fn status(data: &Path) -> serde_json::Value {
    std::fs::read_to_string(data.join("kubemail-runtime-status.json"))
        .ok()
        .and_then(|t| serde_json::from_str(&t).ok())
        .unwrap_or(serde_json::Value::Null)
}

fn eventually(what: &str, timeout: Duration, mut check: impl FnMut() -> bool) -> Duration {
    let start = Instant::now();
    while start.elapsed() < timeout {
        if check() {
            return start.elapsed();
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("{what}: not within {timeout:?}");
}

struct Serve(Child);

impl Drop for Serve {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn config_and_certificate_reload_live_without_a_restart() {
    let tmp = tempfile::tempdir().expect("tmp");
    let data = tmp.path().join("data");
    std::fs::create_dir_all(&data).expect("data");
    let hash = mail_runtime::auth::hash_password("pw");
    let port = free_port();
    let mut tls = SecretDir::new(&tmp.path().join("tls"));
    let (cert1, key1) = cert_pair("first.example.test", tmp.path());
    tls.publish(&[("tls.crt", &cert1), ("tls.key", &key1)]);
    let mut secret = SecretDir::new(&tmp.path().join("config"));
    secret.publish(&[(
        "runtime.yaml",
        config("r1", port, &data, &tls, &["alice@example.test"], &hash).as_bytes(),
    )]);

    let mut child = Command::new(env!("CARGO_BIN_EXE_mail-runtime"))
        .args(["serve", "--config"])
        .arg(secret.path("runtime.yaml"))
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("serve starts");
    let stderr = child.stderr.take().expect("stderr");
    let pid = child.id();
    let _serve = Serve(child);
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stderr)
            .lines()
            .map_while(Result::ok)
        {
            eprintln!("runtime: {line}");
        }
    });
    eventually("the runtime listens", Duration::from_secs(10), || {
        std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
    });
    assert!(rcpt(port, "bob@example.test").starts_with("550 5.1.1"));
    assert_eq!(status(&data)["revision"], "r1");

    // A new mailbox, published the way the kubelet does.
    secret.publish(&[(
        "runtime.yaml",
        config(
            "r2",
            port,
            &data,
            &tls,
            &["alice@example.test", "bob@example.test"],
            &hash,
        )
        .as_bytes(),
    )]);
    let took = eventually("bob becomes a mailbox", Duration::from_secs(2), || {
        rcpt(port, "bob@example.test").starts_with("250")
    });
    println!("config change served after {took:?}");
    eventually("status reports r2", Duration::from_secs(2), || {
        status(&data)["revision"] == "r2"
    });

    // A broken config is refused; the last good one keeps serving and the error is reported.
    secret.publish(&[(
        "runtime.yaml",
        b"apiVersion: runtime.kubemail.io/v1\nkind: RuntimeConfig\nhostname: [\n",
    )]);
    eventually("the error is reported", Duration::from_secs(3), || {
        status(&data)["configError"].is_string()
    });
    assert!(rcpt(port, "bob@example.test").starts_with("250"));
    assert_eq!(status(&data)["revision"], "r2");

    // A renewed certificate is served to new connections; a garbage one is refused and the
    // previous certificate keeps serving.
    assert!(served_certificate_name(port).contains("first.example.test"));
    let (cert2, key2) = cert_pair("second.example.test", tmp.path());
    tls.publish(&[("tls.crt", &cert2), ("tls.key", &key2)]);
    eventually(
        "the new certificate is served",
        Duration::from_secs(5),
        || served_certificate_name(port).contains("second.example.test"),
    );
    tls.publish(&[
        ("tls.crt", b"-----BEGIN CERTIFICATE-----\ngarbage\n"),
        ("tls.key", &key2),
    ]);
    eventually("the TLS error is reported", Duration::from_secs(5), || {
        status(&data)["tlsError"].is_string()
    });
    assert!(served_certificate_name(port).contains("second.example.test"));

    // All of it without a restart.
    assert!(Path::new(&format!("/proc/{pid}")).exists());
}
