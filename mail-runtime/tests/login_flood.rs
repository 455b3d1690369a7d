//! A flood of failed logins from one address is slowed down and then refused (for every
//! protocol: the limit is the runtime's), while a user on another address logs in at once, and
//! many right logins at once from one address all get in.
mod common;

use std::process::Command;

use common::{Dev, client_script, run};

#[test]
fn a_login_flood_is_refused_while_others_log_in() {
    let tmp = tempfile::tempdir().expect("tmp");
    let dev = Dev::start(tmp.path());
    let user = "alice@example.test";
    let out = run(Command::new("python3")
        .arg(client_script("login_flood.py"))
        .args([
            "127.0.0.1",
            &dev.port("imaps").to_string(),
            &dev.port("submission").to_string(),
            user,
            &dev.password(user),
        ]));
    let r: serde_json::Value = serde_json::from_str(out.trim()).expect("json");
    // An office behind one address whose 30 clients log in at once on a fresh runtime (no
    // password cached, so each one's check takes a while): all get in. Attempts in flight
    // count against the limit of 10, so the later ones wait for the earlier answers.
    assert_eq!(r["office_logged_in"], 30, "{r}");
    // The default limit is 10 failures a minute: the rest are refused without a password check.
    assert_eq!(r["accepted"], 0, "{r}");
    assert!(
        r["refused"].as_u64().is_some_and(|n| (1..=10).contains(&n)),
        "{r}"
    );
    assert!(r["limited"].as_u64().is_some_and(|n| n >= 10), "{r}");
    // The flooding address is refused even with the right password, over SMTP too ...
    assert!(r["same_address_right_password"].is_string(), "{r}");
    // ... and someone else logs in normally, without the penalty delay.
    assert_eq!(r["other_address"], true, "{r}");
    assert!(
        r["other_address_seconds"].as_f64().is_some_and(|s| s < 1.0),
        "{r}"
    );
}
