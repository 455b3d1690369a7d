//! Many devices on one mailbox: 20 imaplib sessions and smtplib deliveries at once for 30 s
//! (`IMAP_STRESS_SECONDS`, `IMAP_STRESS_SESSIONS` for longer or wider runs), doing random UID
//! FETCH, STORE, APPEND, COPY, MOVE, EXPUNGE, SELECT and NOOP; every answer is checked against
//! what a server must never show (tests/clients/imap_stress.py says what).
mod common;

use std::process::Command;

use common::{Dev, client_script};

#[test]
fn twenty_sessions_and_deliveries_on_one_mailbox_break_nothing() {
    let seconds = std::env::var("IMAP_STRESS_SECONDS").unwrap_or_else(|_| "30".into());
    let sessions = std::env::var("IMAP_STRESS_SESSIONS").unwrap_or_else(|_| "20".into());
    let tmp = tempfile::tempdir().expect("tmp");
    let dev = Dev::start(tmp.path());
    let user = "bob@example.test";
    let out = Command::new("python3")
        .arg(client_script("imap_stress.py"))
        .arg("127.0.0.1")
        .args([dev.port("imaps"), dev.port("smtp")].map(|p| p.to_string()))
        .args([user, &dev.password(user), &sessions, &seconds])
        .output()
        .expect("python3");
    common::assert_stress_report(&out);
}
