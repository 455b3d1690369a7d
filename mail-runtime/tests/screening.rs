//! Screening of mail from outside on port 25, with Python's smtplib connecting from several
//! loopback addresses: DNS lists served by dnsmasq (a listed client refused at RCPT, an
//! unlisted one and an allowlisted one accepted), greylisting (451, then accepted after the
//! delay; a logged-in user never waits), a client that talks before the banner, and HELO
//! checks.
mod common;

use std::process::Command;

use common::{Dev, client_script, dns::Dns, patch_config};

const ALICE: &str = "alice@example.test";

fn client(dev: &Dev, source: &str, helo: &str, extra: &[&str]) -> serde_json::Value {
    let mut command = Command::new("python3");
    command
        .arg(client_script("screen_client.py"))
        .args([
            "127.0.0.1",
            &dev.port("smtp").to_string(),
            source,
            helo,
            ALICE,
        ])
        .args(extra);
    let out = common::run(&mut command);
    serde_json::from_str(out.lines().last().unwrap_or_default())
        .unwrap_or_else(|e| panic!("{e}: {out}"))
}

#[test]
fn dns_lists_refuse_listed_clients_and_allowlists_outweigh_them() {
    // 127.0.0.2 and 127.0.0.4 are on the blocklist; 127.0.0.4 is on the allowlist too.
    let dns = Dns::start(&[
        "--address=/2.0.0.127.bl.test/127.0.0.2".into(),
        "--address=/4.0.0.127.bl.test/127.0.0.2".into(),
        "--address=/4.0.0.127.wl.test/127.0.0.5".into(),
        // An answer outside what the list means (not 127.0.0.2): no listing.
        "--address=/3.0.0.127.bl.test/127.0.0.9".into(),
    ]);
    let tmp = tempfile::tempdir().expect("tmp");
    let dev = Dev::start(tmp.path());
    patch_config(&dev, "dnsbl", |c| {
        c["nameservers"] = vec![format!("127.0.0.1:{}", dns.port)].into();
        c["inbound"]["dnsbl"] = serde_yaml_ng::from_str(
            "[{zone: bl.test, weight: 2, answers: [127.0.0.2]}, {zone: wl.test, weight: -5}]",
        )
        .expect("yaml");
        c["inbound"]["dnsblThreshold"] = 2.into();
    });
    let listed = client(&dev, "127.0.0.2", "mx.outside.example.org", &[]);
    assert_eq!(listed["rcpt"], serde_json::json!([554]), "{listed}");
    assert!(
        listed["text"]
            .as_str()
            .is_some_and(|t| t.contains("listed at bl.test")),
        "{listed}"
    );
    for (source, why) in [
        ("127.0.0.6", "not listed"),
        ("127.0.0.3", "an answer the list does not mean"),
        ("127.0.0.4", "allowlisted"),
    ] {
        let taken = client(&dev, source, "mx.outside.example.org", &[]);
        assert_eq!(taken["rcpt"], serde_json::json!([250]), "{why}: {taken}");
    }
    // A logged-in user from a listed address is not screened.
    let sent = common::run(
        Command::new("swaks")
            .args(["--server", &format!("127.0.0.1:{}", dev.port("submission"))])
            .args(["--local-interface", "127.0.0.2", "--tls"])
            .args(["--auth", "PLAIN", "--auth-user", ALICE])
            .args(["--auth-password", &dev.password(ALICE)])
            .args(["--from", ALICE, "--to", "bob@example.test"]),
    );
    assert!(sent.contains("250 2.0.0"), "{sent}");
}

#[test]
fn greylisting_asks_a_new_sender_to_come_back_and_then_takes_it() {
    let tmp = tempfile::tempdir().expect("tmp");
    let dev = Dev::start(tmp.path());
    patch_config(&dev, "greylisting", |c| {
        c["inbound"]["greylisting"] =
            serde_yaml_ng::from_str("{delaySeconds: 2, retryWindowSeconds: 60}").expect("yaml");
    });
    // An impatient bot: once, refused for now.
    let bot = client(&dev, "127.0.0.8", "bot.outside.example.org", &[]);
    assert_eq!(bot["rcpt"], serde_json::json!([451]), "{bot}");
    assert!(
        bot["text"]
            .as_str()
            .is_some_and(|t| t.contains("greylisted")),
        "{bot}"
    );
    // A real server retries after the delay (RFC 5321 would wait longer) and is taken; from
    // another address of the same /24 too.
    let server = client(
        &dev,
        "127.0.0.9",
        "mx.outside.example.org",
        &["--retry-after", "3"],
    );
    assert_eq!(server["rcpt"], serde_json::json!([451, 250]), "{server}");
    let later = client(&dev, "127.0.0.10", "mx2.outside.example.org", &[]);
    assert_eq!(later["rcpt"], serde_json::json!([250]), "{later}");
    // Authenticated submission is never greylisted.
    let sent = common::run(
        Command::new("swaks")
            .args(["--server", &format!("127.0.0.1:{}", dev.port("submission"))])
            .args(["--tls", "--auth", "PLAIN", "--auth-user", ALICE])
            .args(["--auth-password", &dev.password(ALICE)])
            .args(["--from", ALICE, "--to", "bob@example.test"]),
    );
    assert!(sent.contains("250 2.0.0"), "{sent}");
}

#[test]
fn early_talkers_and_bad_helo_names_are_refused() {
    let tmp = tempfile::tempdir().expect("tmp");
    let dev = Dev::start(tmp.path());
    patch_config(&dev, "screens", |c| {
        c["inbound"]["greetPauseMillis"] = 1500.into();
        c["inbound"]["heloChecks"] = true.into();
    });
    let early = client(&dev, "127.0.0.11", "x", &["--early"]);
    assert_eq!(early["greeting"], 554, "{early}");
    for (helo, why) in [
        ("localhost", "not a fully qualified domain name"),
        ("[127.0.0.99]", "is not your address"),
        ("mail.example.test", "this server's own"),
        ("example.test", "this server's own"),
    ] {
        let refused = client(&dev, "127.0.0.12", helo, &[]);
        assert_eq!(refused["mail"], 550, "{helo}: {refused}");
        assert!(
            refused["text"].as_str().is_some_and(|t| t.contains(why)),
            "{helo}: {refused}"
        );
    }
    for helo in ["mx.outside.example.org", "[127.0.0.12]"] {
        let taken = client(&dev, "127.0.0.12", helo, &[]);
        assert_eq!(taken["rcpt"], serde_json::json!([250]), "{helo}: {taken}");
    }
}
