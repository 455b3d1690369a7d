//! Real mail clients against the real binary on loopback: swaks, curl and Python's smtplib
//! submit over 587 (STARTTLS + AUTH), 465 (implicit TLS) and 25; Python's mailbox module reads
//! what was delivered.
mod common;

use std::process::Command;

use common::{Dev, client_script, run};

const ALICE: &str = "alice@example.test";
const BOB: &str = "bob@example.test";

fn subjects(dev: &Dev, address: &str) -> Vec<serde_json::Value> {
    let out = run(Command::new("python3")
        .arg(client_script("maildir_read.py"))
        .arg(dev.maildir(address)));
    serde_json::from_str(out.trim()).expect("json from maildir_read.py")
}

fn has_subject(dev: &Dev, address: &str, subject: &str) -> bool {
    subjects(dev, address)
        .iter()
        .any(|m| m["subject"].as_str() == Some(subject))
}

#[test]
fn swaks_submits_over_587_with_starttls_and_auth_and_over_465() {
    let tmp = tempfile::tempdir().expect("tmp");
    let dev = Dev::start(tmp.path());
    let pw = dev.password(ALICE);
    for (flags, port, subject) in [
        (&["--tls"][..], dev.port("submission"), "swaks 587"),
        (&["--tlsc"][..], dev.port("submissions"), "swaks 465"),
    ] {
        run(Command::new("swaks")
            .args(flags)
            .args(["--server", &format!("127.0.0.1:{port}")])
            .args([
                "--auth",
                "PLAIN",
                "--auth-user",
                ALICE,
                "--auth-password",
                &pw,
            ])
            .args(["--from", ALICE, "--to", BOB])
            .args(["--header", &format!("Subject: {subject}")]));
        assert!(has_subject(&dev, BOB, subject), "{subject} not delivered");
    }
    // AUTH LOGIN too.
    run(Command::new("swaks")
        .args([
            "--tls",
            "--server",
            &format!("127.0.0.1:{}", dev.port("submission")),
        ])
        .args([
            "--auth",
            "LOGIN",
            "--auth-user",
            ALICE,
            "--auth-password",
            &pw,
        ])
        .args([
            "--from",
            ALICE,
            "--to",
            BOB,
            "--header",
            "Subject: swaks login",
        ]));
    assert!(has_subject(&dev, BOB, "swaks login"));
}

#[test]
fn swaks_delivers_to_a_local_recipient_on_port_25() {
    let tmp = tempfile::tempdir().expect("tmp");
    let dev = Dev::start(tmp.path());
    run(Command::new("swaks")
        .args(["--server", &format!("127.0.0.1:{}", dev.port("smtp"))])
        .args(["--from", "newsletter@example.net", "--to", BOB])
        .args(["--header", "Subject: from the internet"]));
    let messages = subjects(&dev, BOB);
    let m = messages
        .iter()
        .find(|m| m["subject"] == "from the internet")
        .expect("delivered");
    let received = m["received"][0].as_str().expect("a Received header");
    assert!(
        received.contains("by mail.example.test (kubemail) with ESMTP"),
        "{received}"
    );
}

#[test]
fn a_wrong_password_and_a_foreign_recipient_are_refused_by_swaks() {
    let tmp = tempfile::tempdir().expect("tmp");
    let dev = Dev::start(tmp.path());
    let out = Command::new("swaks")
        .args([
            "--tls",
            "--server",
            &format!("127.0.0.1:{}", dev.port("submission")),
        ])
        .args([
            "--auth",
            "PLAIN",
            "--auth-user",
            ALICE,
            "--auth-password",
            "wrong",
        ])
        .args(["--from", ALICE, "--to", BOB])
        .output()
        .expect("swaks");
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains("535 5.7.8"));
    let out = Command::new("swaks")
        .args(["--server", &format!("127.0.0.1:{}", dev.port("smtp"))])
        .args([
            "--from",
            "spammer@example.net",
            "--to",
            "victim@example.org",
        ])
        .output()
        .expect("swaks");
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains("550 5.7.1 relaying denied"));
}

#[test]
fn curl_submits_over_587_and_465() {
    let tmp = tempfile::tempdir().expect("tmp");
    let dev = Dev::start(tmp.path());
    let pw = dev.password(ALICE);
    let message = tmp.path().join("message.txt");
    for (url, subject) in [
        (
            format!("smtp://127.0.0.1:{}", dev.port("submission")),
            "curl 587",
        ),
        (
            format!("smtps://127.0.0.1:{}", dev.port("submissions")),
            "curl 465",
        ),
    ] {
        std::fs::write(
            &message,
            format!("From: {ALICE}\r\nTo: {BOB}\r\nSubject: {subject}\r\n\r\nSent by curl.\r\n"),
        )
        .expect("write");
        run(Command::new("curl")
            .args(["-sS", "--url", &url, "--ssl-reqd", "--insecure"])
            .args(["--user", &format!("{ALICE}:{pw}")])
            .args(["--mail-from", ALICE, "--mail-rcpt", BOB, "-T"])
            .arg(&message));
        assert!(has_subject(&dev, BOB, subject), "{subject} not delivered");
    }
}

#[test]
fn python_smtplib_submits_and_login_waits_for_tls() {
    let tmp = tempfile::tempdir().expect("tmp");
    let dev = Dev::start(tmp.path());
    let pw = dev.password(ALICE);
    let out = run(Command::new("python3")
        .arg(client_script("smtplib_submit.py"))
        .args([
            "starttls",
            "127.0.0.1",
            &dev.port("submission").to_string(),
            ALICE,
            &pw,
            ALICE,
            BOB,
            "smtplib 587",
        ]));
    let report: serde_json::Value = serde_json::from_str(out.trim()).expect("json");
    assert_eq!(report["auth_before_tls"], false, "{report}");
    assert_eq!(report["login_before_tls"], false, "{report}");
    assert_eq!(report["starttls"], true, "{report}");
    assert_eq!(report["auth_after_tls"], true, "{report}");
    run(Command::new("python3")
        .arg(client_script("smtplib_submit.py"))
        .args([
            "ssl",
            "127.0.0.1",
            &dev.port("submissions").to_string(),
            ALICE,
            &pw,
            ALICE,
            BOB,
            "smtplib 465",
        ]));
    assert!(has_subject(&dev, BOB, "smtplib 587"));
    assert!(has_subject(&dev, BOB, "smtplib 465"));
    // Each message is a file in new/ that Python's Maildir reader parsed: headers and body.
    let body = subjects(&dev, BOB)
        .iter()
        .find(|m| m["subject"] == "smtplib 465")
        .map(|m| m["body"].as_str().unwrap_or_default().to_string())
        .expect("message");
    assert_eq!(body.trim(), "Sent by smtplib.");
}
