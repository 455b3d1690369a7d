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
    // (revisions must differ for the runtime to report the new one)
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

/// Found by an outside tester: a device whose password was revoked while a long command ran
/// (a pipelined POP3 batch RETR 1..n DELE 1..n QUIT, an IMAP FETCH of every body) went on
/// receiving every message, and the POP3 batch even deleted them all. Now the command stops at
/// its next message, nothing is deleted, and a client that keeps sending (an SMTP body that
/// never ends) is stopped at its next line.
#[tokio::test]
async fn a_revocation_stops_a_long_command_midway() {
    let tmp = tempfile::tempdir().expect("tmp");
    let dev = Dev::start(tmp.path());
    const MESSAGES: usize = 20;
    let body = format!(
        "Subject: big\r\n\r\n{}",
        "x".repeat(76).repeat(13_000).chars().collect::<String>()
    );
    for _ in 0..MESSAGES {
        let mut smtp = common::Raw::connect(dev.port("smtp"));
        assert!(smtp.cmd("EHLO sender.example").starts_with("250"));
        assert!(smtp.cmd("MAIL FROM:<a@sender.example>").starts_with("250"));
        assert!(smtp.cmd(&format!("RCPT TO:<{BOB}>")).starts_with("250"));
        assert!(smtp.cmd("DATA").starts_with("354"));
        let mut lines = String::new();
        for chunk in body.as_bytes().chunks(76) {
            lines.push_str(std::str::from_utf8(chunk).expect("ascii"));
            lines.push_str("\r\n");
        }
        smtp.send_raw(lines.as_bytes());
        assert!(smtp.cmd(".").starts_with("250"));
    }
    assert_eq!(dev.messages(BOB).len(), MESSAGES);
    for (n, (kind, port)) in [
        ("pop3", "pop3s"),
        ("imap", "imaps"),
        ("smtp", "submissions"),
    ]
    .into_iter()
    .enumerate()
    {
        let password = format!("{kind}-device-secret");
        app_passwords(
            &dev,
            &format!("{kind}-on"),
            &[(kind, password.as_str(), &[kind])],
        );
        let mut client = Command::new("python3")
            .arg(client_script("revoked_midway.py"))
            .args([
                kind,
                "127.0.0.1",
                &dev.port(port).to_string(),
                BOB,
                &password,
            ])
            .arg(MESSAGES.to_string())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("python3");
        let mut lines = BufReader::new(client.stdout.take().expect("stdout")).lines();
        assert_eq!(
            lines.next().and_then(Result::ok).as_deref(),
            Some("started"),
            "{kind}"
        );
        app_passwords(&dev, &format!("{kind}-off-{n}"), &[]);
        writeln!(client.stdin.as_mut().expect("stdin"), "revoked").expect("tell it");
        let report: serde_json::Value =
            serde_json::from_str(&lines.next().and_then(Result::ok).unwrap_or_default())
                .expect("the report");
        let _ = client.wait();
        println!("{kind}: after the revocation {report}");
        assert_eq!(
            report["completed"], false,
            "{kind} finished its command: {report}"
        );
        // What was already in the sockets' buffers may still arrive, never the whole answer.
        assert!(
            report["bytes_after"].as_u64().is_some_and(|b| b < 8 << 20),
            "{kind}: {report}"
        );
        assert!(
            report["ms"].as_u64().is_some_and(|ms| ms < 5_000),
            "{kind}: {report}"
        );
        assert!(
            report["refused"]
                .as_str()
                .is_some_and(|l| l.contains("revoked")),
            "{kind} is not told why: {report}"
        );
        assert_eq!(
            dev.messages(BOB).len(),
            MESSAGES,
            "{kind} deleted mail after its revocation"
        );
    }
}
