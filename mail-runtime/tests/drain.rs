//! SIGTERM drains the runtime as a pod's stop should: readiness false, listeners closed, an
//! SMTP transaction in flight finished and acknowledged, every other session told to come back
//! (SMTP 421, IMAP BYE [UNAVAILABLE], POP3 -ERR [SYS/TEMP]) and nothing lost; then the process
//! exits by itself. The clients are Python's smtplib, imaplib and poplib.
mod common;

use std::{
    io::{BufRead, BufReader, Write},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use common::{Dev, Raw, client_script, run};

/// The HTTP status of `/readyz`.
fn readiness(dev: &Dev) -> String {
    run(Command::new("curl")
        .args([
            "-sS",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            "--max-time",
            "5",
        ])
        .arg(format!("http://127.0.0.1:{}/readyz", dev.port("http"))))
}

fn subjects(dev: &Dev, user: &str) -> Vec<String> {
    common::subjects_of(&dev.messages(user))
}

#[test]
fn sigterm_finishes_the_transaction_in_flight_and_sends_every_other_session_away() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut dev = Dev::start(dir.path());
    let (user, password) = dev.accounts[0].clone();
    assert_eq!(readiness(&dev), "200");

    let mut clients = Command::new("python3")
        .arg(client_script("drain_clients.py"))
        .args(["127.0.0.1", &dev.port("smtp").to_string()])
        .args([
            &dev.port("imaps").to_string(),
            &dev.port("pop3s").to_string(),
        ])
        .args([&user, &password])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("python3 runs");
    let mut out = BufReader::new(clients.stdout.take().expect("stdout"));
    let mut line = String::new();
    out.read_line(&mut line).expect("the clients' first line");
    assert_eq!(
        line.trim(),
        "ready",
        "the clients could not set up: {line:?}"
    );

    dev.terminate();
    // Readiness goes first, so the Service stops sending new clients here.
    let start = Instant::now();
    while readiness(&dev) != "503" {
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "/readyz still 200 after SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let mut stdin = clients.stdin.take().expect("stdin");
    writeln!(stdin, "go").expect("the clients read on");
    line.clear();
    out.read_line(&mut line).expect("what the clients saw");
    let seen: serde_json::Value =
        serde_json::from_str(&line).unwrap_or_else(|e| panic!("not JSON ({e}): {line:?}"));
    assert!(clients.wait().expect("python3 ends").success());

    assert_eq!(seen["smtp_between"], 421, "{seen}");
    let imap = seen["imap_idle"].as_str().expect("IMAP line");
    assert!(imap.starts_with("* BYE [UNAVAILABLE]"), "{imap}");
    let pop3 = seen["pop3"].as_str().expect("POP3 line");
    assert!(pop3.starts_with("-ERR [SYS/TEMP]"), "{pop3}");
    assert_eq!(seen["new_connection"], "refused", "{seen}");
    assert_eq!(seen["smtp_in_flight"][0], 250, "{seen}");
    assert_eq!(seen["smtp_after"], 421, "{seen}");

    let status = dev
        .wait_exit(Duration::from_secs(10))
        .expect("the runtime exits once its sessions ended, long before the grace period");
    assert!(status.success(), "{status}");
    // The acknowledged message is stored; the one POP3 marked for deletion is not deleted
    // (the session never reached UPDATE).
    assert_eq!(subjects(&dev, &user), ["in-flight", "kept"]);
}

#[test]
fn a_transaction_that_outlasts_the_grace_period_is_cut_off_and_not_delivered_in_part() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut dev = Dev::start_with(dir.path(), &[], &["--drain-seconds", "2"]);
    let user = dev.accounts[0].0.clone();
    let mut smtp = Raw::connect(dev.port("smtp"));
    assert!(smtp.cmd("EHLO client.elsewhere.test").starts_with("250"));
    assert!(
        smtp.cmd("MAIL FROM:<sender@elsewhere.test>")
            .starts_with("250")
    );
    assert!(smtp.cmd(&format!("RCPT TO:<{user}>")).starts_with("250"));
    assert!(smtp.cmd("DATA").starts_with("354"));
    smtp.send_raw(b"Subject: never finished\r\n\r\nthe first half of a message\r\n");

    let start = Instant::now();
    dev.terminate();
    let status = dev
        .wait_exit(Duration::from_secs(15))
        .expect("the runtime exits after its grace period");
    let took = start.elapsed();
    assert!(status.success(), "{status}");
    assert!(
        took >= Duration::from_secs(2),
        "exited after {took:?}, before the grace period"
    );
    assert!(smtp.closed(), "the connection outlived the process");
    assert!(
        subjects(&dev, &user).is_empty(),
        "a half message was delivered"
    );
}
