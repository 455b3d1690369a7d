//! App passwords against the real runtime, with Python's imaplib, smtplib and poplib: a device's
//! own password opens only the protocols declared for it, and revoking it ends that device's
//! sessions within 2 s while the mailbox's other sessions go on.
mod common;

use std::{
    io::{BufRead, BufReader, Write},
    process::{Command, Stdio},
    time::Duration,
};

use common::{Dev, client_script, imap::Client, patch_config};

const BOB: &str = "bob@example.test";

/// app_password.py logging in as bob with `password` over implicit TLS.
fn client(dev: &Dev, password: &str) -> Command {
    let mut command = Command::new("python3");
    command.arg(client_script("app_password.py")).args([
        "127.0.0.1",
        &dev.port("imaps").to_string(),
        &dev.port("submissions").to_string(),
        &dev.port("pop3s").to_string(),
        BOB,
        password,
    ]);
    command
}

/// What each protocol said to `password` for bob, as the real clients saw it.
fn logins(dev: &Dev, password: &str) -> serde_json::Value {
    let out = common::run(&mut client(dev, password));
    serde_json::from_str(out.lines().next().unwrap_or_default())
        .unwrap_or_else(|e| panic!("{e}: {out}"))
}

fn app_passwords(dev: &Dev, revision: &str, list: &[(&str, &str, &[&str])]) {
    let entries: Vec<serde_yaml_ng::Value> = list
        .iter()
        .map(|(name, password, protocols)| {
            serde_yaml_ng::to_value(serde_json::json!({
                "name": name,
                "passwordHash": mail_runtime::auth::hash_password(password),
                "protocols": protocols,
            }))
            .expect("yaml")
        })
        .collect();
    patch_config(dev, revision, |c| {
        // This test's refused logins all come from 127.0.0.1.
        c["limits"]["authFailuresPerMinute"] = 100.into();
        for m in c["mailboxes"].as_sequence_mut().expect("mailboxes") {
            if m["address"] == BOB {
                m["appPasswords"] = serde_yaml_ng::Value::Sequence(entries.clone());
            }
        }
    });
}

#[tokio::test]
async fn an_app_password_opens_its_protocols_and_its_revocation_ends_only_its_sessions() {
    let tmp = tempfile::tempdir().expect("tmp");
    let dev = Dev::start(tmp.path());
    app_passwords(
        &dev,
        "two-devices",
        &[
            ("phone", "phone-secret-1", &["imap"]),
            ("laptop", "laptop-secret-2", &["imap", "smtp", "pop3"]),
        ],
    );

    // Declared for IMAP only: IMAP opens, submission and POP3 refuse it.
    let phone = logins(&dev, "phone-secret-1");
    assert_eq!(
        phone,
        serde_json::json!({"imap": "ok", "smtp": "refused", "pop3": "refused"})
    );
    let laptop = logins(&dev, "laptop-secret-2");
    assert_eq!(
        laptop,
        serde_json::json!({"imap": "ok", "smtp": "ok", "pop3": "ok"})
    );
    let wrong = logins(&dev, "phone-secret-2");
    assert_eq!(
        wrong,
        serde_json::json!({"imap": "refused", "smtp": "refused", "pop3": "refused"})
    );
    // The mailbox's own password is unchanged by them.
    let own = logins(&dev, &dev.password(BOB));
    assert_eq!(
        own,
        serde_json::json!({"imap": "ok", "smtp": "ok", "pop3": "ok"})
    );

    // The phone holds a session open (imaplib, NOOP every 100 ms); bob's own password and the
    // laptop's hold theirs.
    let mut held = client(&dev, "phone-secret-1")
        .arg("--hold")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("python3");
    let mut lines = BufReader::new(held.stdout.take().expect("stdout")).lines();
    let mut next = || lines.next().expect("a line").expect("utf-8");
    next();
    assert_eq!(next(), "holding");
    let mut own_session = Client::login(&dev, BOB).await;
    assert!(
        own_session
            .command("s", "SELECT INBOX")
            .await
            .contains("s OK")
    );

    // The phone is revoked: the laptop's password stays.
    app_passwords(
        &dev,
        "phone-revoked",
        &[("laptop", "laptop-secret-2", &["imap", "smtp", "pop3"])],
    );
    let mut stdin = held.stdin.take().expect("stdin");
    writeln!(stdin, "revoked").expect("tell the client");
    let ended: serde_json::Value = serde_json::from_str(&next()).expect("json");
    let _ = held.wait();
    println!(
        "the phone's session ended {} ms after the revocation was served: {}",
        ended["after_ms"], ended["ended"]
    );
    assert!(
        !ended["ended"].is_null(),
        "the phone's session went on: {ended}"
    );
    assert!(
        ended["after_ms"].as_u64().is_some_and(|ms| ms < 2_000),
        "the phone's session ended late: {ended}"
    );
    assert!(
        ended["ended"]
            .as_str()
            .is_some_and(|why| why.contains("[UNAVAILABLE]") && why.contains("revoked")),
        "the client is not told why: {ended}"
    );
    // Bob's own session goes on, and so does a new login with the laptop's password; the
    // phone's password opens nothing any more.
    assert!(own_session.command("n", "NOOP").await.contains("n OK"));
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    assert!(
        own_session.command("n", "NOOP").await.contains("n OK"),
        "the own password's session ended too"
    );
    assert_eq!(
        logins(&dev, "phone-secret-1"),
        serde_json::json!({"imap": "refused", "smtp": "refused", "pop3": "refused"})
    );
    assert_eq!(logins(&dev, "laptop-secret-2")["imap"], "ok");
}
