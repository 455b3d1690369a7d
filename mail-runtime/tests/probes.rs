//! The protocol-speaking probes pass against this runtime and against Postfix and Dovecot
//! (proof that they speak the protocols, not our dialect), and fail with a clear error against
//! a closed port, the wrong protocol and a server without STARTTLS.
mod common;

use std::{path::Path, process::Command};

use common::Dev;

fn probe(args: &[&str]) -> (bool, serde_json::Value) {
    let out = Command::new(env!("CARGO_BIN_EXE_mail-runtime"))
        .arg("probe")
        .args(args)
        .output()
        .expect("probe runs");
    let report: serde_json::Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("probe printed no JSON ({e}): {:?}", out));
    assert_eq!(
        report["ok"].as_bool(),
        Some(out.status.success()),
        "exit status matches ok"
    );
    (out.status.success(), report)
}

fn passes(args: &[&str]) -> serde_json::Value {
    let (ok, report) = probe(args);
    assert!(ok, "probe {args:?} failed: {report}");
    assert_eq!(report["tls"], true, "{report}");
    report
}

fn fails(args: &[&str], says: &str) {
    let (ok, report) = probe(args);
    assert!(!ok, "probe {args:?} passed: {report}");
    let error = report["error"].as_str().unwrap_or_default();
    assert!(error.contains(says), "expected {says:?} in {error:?}");
}

#[test]
fn probes_pass_against_kubemail() {
    let tmp = tempfile::tempdir().expect("tmp");
    let dev = Dev::start(tmp.path());
    let at = |p: &str| format!("127.0.0.1:{}", dev.port(p));
    let report = passes(&["smtp", &at("smtp")]);
    let caps: Vec<String> = serde_json::from_value(report["capabilities"].clone()).expect("caps");
    assert!(
        caps.contains(&"PIPELINING".to_string()) && caps.contains(&"AUTH".to_string()),
        "{caps:?}"
    );
    passes(&["smtp", &at("submission")]);
    passes(&["smtp", &at("submissions"), "--implicit-tls"]);
    passes(&["pop3", &at("pop3")]);
    passes(&["pop3", &at("pop3s"), "--implicit-tls"]);
    let report = passes(&["imap", &at("imap")]);
    let caps: Vec<String> = serde_json::from_value(report["capabilities"].clone()).expect("caps");
    // The capabilities the probe reports are those after STARTTLS: login is allowed then.
    assert!(
        caps.contains(&"AUTH=PLAIN".to_string()) && !caps.contains(&"LOGINDISABLED".to_string()),
        "{caps:?}"
    );
    passes(&["imap", &at("imaps"), "--implicit-tls"]);
    let report = passes(&["managesieve", &at("managesieve")]);
    let caps: Vec<String> = serde_json::from_value(report["capabilities"].clone()).expect("caps");
    // Over TLS: SASL PLAIN is offered and STARTTLS no longer.
    assert!(
        caps.contains(&"SIEVE".to_string())
            && caps.contains(&"SASL".to_string())
            && !caps.contains(&"STARTTLS".to_string()),
        "{caps:?}"
    );
    // The certificate verifies when the probe is given its name and trusts it: with the dev
    // certificate not in the system store, verification must fail.
    fails(
        &[
            "smtp",
            &at("submission"),
            "--verify-tls",
            "--tls-name",
            "mail.example.test",
        ],
        "STARTTLS failed",
    );

    // Deep mode logs in, with the password read from a file.
    let pw = tmp.path().join("pw");
    std::fs::write(&pw, dev.password("alice@example.test")).expect("pw");
    let pw = pw.to_string_lossy().to_string();
    let report = passes(&[
        "smtp",
        &at("submission"),
        "--login",
        "alice@example.test",
        "--password-file",
        &pw,
    ]);
    assert_eq!(report["loggedIn"], true);
    let report = passes(&[
        "pop3",
        &at("pop3s"),
        "--implicit-tls",
        "--login",
        "alice@example.test",
        "--password-file",
        &pw,
    ]);
    assert_eq!(report["loggedIn"], true);
    let report = passes(&[
        "imap",
        &at("imap"),
        "--login",
        "alice@example.test",
        "--password-file",
        &pw,
    ]);
    assert_eq!(report["loggedIn"], true);
    let report = passes(&[
        "managesieve",
        &at("managesieve"),
        "--login",
        "alice@example.test",
        "--password-file",
        &pw,
    ]);
    assert_eq!(report["loggedIn"], true);
    std::fs::write(tmp.path().join("pw"), "wrong").expect("pw");
    fails(
        &[
            "pop3",
            &at("pop3"),
            "--login",
            "alice@example.test",
            "--password-file",
            &pw,
        ],
        "login failed",
    );
}

#[test]
fn probes_fail_clearly_on_a_closed_port_the_wrong_protocol_and_no_starttls() {
    let tmp = tempfile::tempdir().expect("tmp");
    let dev = Dev::start(tmp.path());
    let closed = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let closed_port = closed.local_addr().expect("addr").port();
    drop(closed);
    fails(
        &["smtp", &format!("127.0.0.1:{closed_port}")],
        "cannot connect",
    );
    fails(
        &["imap", &format!("127.0.0.1:{}", dev.port("smtp"))],
        "not an IMAP greeting",
    );
    fails(
        &["pop3", &format!("127.0.0.1:{}", dev.port("smtp"))],
        "not a POP3 greeting",
    );
    fails(&["smtp", &format!("127.0.0.1:{}", dev.port("pop3"))], "");
    // A password file whose password goes on after a line break would send a second command
    // (`a2 DELETE INBOX`): the probe refuses it before connecting.
    let password_file = tmp.path().join("injected-password");
    std::fs::write(&password_file, "x\r\na2 DELETE INBOX\r\n").expect("password file");
    fails(
        &[
            "imap",
            &format!("127.0.0.1:{}", dev.port("imaps")),
            "--implicit-tls",
            "--login",
            "alice@example.test",
            "--password-file",
            password_file.to_str().expect("utf-8 path"),
        ],
        "line break",
    );

    // The same runtime without a usable certificate offers no STARTTLS: the probe says so.
    let data = tmp.path().join("notls");
    std::fs::create_dir_all(&data).expect("dir");
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("a")
        .port();
    let config = data.join("runtime.yaml");
    std::fs::write(
        &config,
        format!(
            "apiVersion: runtime.kubemail.io/v1\nkind: RuntimeConfig\nhostname: mail.example.test\n\
             domains: [{{name: example.test}}]\n\
             tls: {{certFile: {d}/missing.crt, keyFile: {d}/missing.key}}\n\
             listeners: [{{protocol: smtp, address: \"127.0.0.1:{port}\"}}]\nstorage: {{path: {d}}}\n",
            d = data.display()
        ),
    )
    .expect("config");
    let mut server = Command::new(env!("CARGO_BIN_EXE_mail-runtime"))
        .args(["serve", "--config"])
        .arg(&config)
        .env("RUST_LOG", "off")
        .spawn()
        .expect("serve");
    for _ in 0..100 {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    fails(
        &["smtp", &format!("127.0.0.1:{port}")],
        "STARTTLS is not advertised",
    );
    let _ = server.kill();
    let _ = server.wait();
}

#[test]
fn probes_pass_against_postfix_and_dovecot() {
    let peers = kubemail_e2e::Peers::start().expect("Postfix and Dovecot start");
    let report = passes(&["smtp", &peers.at("smtp")]);
    assert!(
        report["greeting"]
            .as_str()
            .unwrap_or_default()
            .contains("Postfix"),
        "{report}"
    );
    let report = passes(&["imap", &peers.at("imap")]);
    let caps: Vec<String> = serde_json::from_value(report["capabilities"].clone()).expect("caps");
    assert!(caps.contains(&"IMAP4rev1".to_string()), "{caps:?}");
    passes(&["imap", &peers.at("imaps"), "--implicit-tls"]);
    let report = passes(&["pop3", &peers.at("pop3")]);
    assert!(
        report["greeting"]
            .as_str()
            .unwrap_or_default()
            .contains("Dovecot"),
        "{report}"
    );
    passes(&["pop3", &peers.at("pop3s"), "--implicit-tls"]);
    let (user, password) = peers.login();
    let pw = peers.dir().join("probe-password");
    std::fs::write(&pw, password).expect("pw");
    let pw = pw.to_string_lossy().to_string();
    let report = passes(&[
        "imap",
        &peers.at("imaps"),
        "--implicit-tls",
        "--login",
        &user,
        "--password-file",
        &pw,
    ]);
    assert_eq!(report["loggedIn"], true);
    let report = passes(&[
        "pop3",
        &peers.at("pop3"),
        "--login",
        &user,
        "--password-file",
        &pw,
    ]);
    assert_eq!(report["loggedIn"], true);
}

#[test]
fn probe_config_checks_every_listener_of_a_config() {
    let tmp = tempfile::tempdir().expect("tmp");
    let dev = Dev::start(tmp.path());
    let run = |config: &Path| {
        Command::new(env!("CARGO_BIN_EXE_mail-runtime"))
            .arg("probe-config")
            .arg(config)
            .output()
            .expect("probe-config")
    };
    let out = run(&dev.data.join("runtime.yaml"));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    let reports: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).expect("json");
    // Every listener but the plain HTTP one (the kubelet's and Prometheus's own).
    let mail_listeners = dev.ports.keys().filter(|p| *p != "http").count();
    assert_eq!(reports.len(), mail_listeners);
    drop(dev);
    // With the runtime gone, the same check fails.
    let out = run(&tmp.path().join("runtime.yaml"));
    assert!(!out.status.success());
}
