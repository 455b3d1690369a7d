//! The runtime is not an open relay: a battery of relay attempts over real connections, every
//! one refused, and nothing accepted for another domain.
mod common;

use common::{Dev, Raw};

/// (what, listener, MAIL FROM, RCPT TO) — each RCPT must be refused.
const ATTEMPTS: &[(&str, &str, &str, &str)] = &[
    (
        "plain foreign recipient",
        "smtp",
        "<a@example.net>",
        "<victim@example.org>",
    ),
    (
        "foreign recipient in capitals",
        "smtp",
        "<a@example.net>",
        "<VICTIM@EXAMPLE.ORG>",
    ),
    (
        "local sender, foreign recipient",
        "smtp",
        "<alice@example.test>",
        "<victim@example.org>",
    ),
    (
        "null sender, foreign recipient",
        "smtp",
        "<>",
        "<victim@example.org>",
    ),
    (
        "percent hack",
        "smtp",
        "<a@example.net>",
        "<victim%example.org@example.test>",
    ),
    (
        "percent hack, two hops",
        "smtp",
        "<a@example.net>",
        "<victim%example.org%example.net@example.test>",
    ),
    (
        "bang path",
        "smtp",
        "<a@example.net>",
        "<example.org!victim@example.test>",
    ),
    (
        "bang path without domain",
        "smtp",
        "<a@example.net>",
        "<example.org!victim>",
    ),
    (
        "source route",
        "smtp",
        "<a@example.net>",
        "<@example.test:victim@example.org>",
    ),
    (
        "source route, two hops",
        "smtp",
        "<a@example.net>",
        "<@example.test,@mail.example.test:victim@example.org>",
    ),
    (
        "quoted foreign address",
        "smtp",
        "<a@example.net>",
        "<\"victim@example.org\"@example.test>",
    ),
    (
        "quoted percent hack",
        "smtp",
        "<a@example.net>",
        "<\"victim%example.org\"@example.test>",
    ),
    (
        "double @",
        "smtp",
        "<a@example.net>",
        "<victim@example.org@example.test>",
    ),
    (
        "IP literal",
        "smtp",
        "<a@example.net>",
        "<victim@[192.0.2.1]>",
    ),
    (
        "loopback literal",
        "smtp",
        "<a@example.net>",
        "<victim@[127.0.0.1]>",
    ),
    ("localhost", "smtp", "<a@example.net>", "<victim@localhost>"),
    (
        "our host name is not a mail domain",
        "smtp",
        "<a@example.net>",
        "<victim@mail.example.test>",
    ),
    (
        "subdomain of ours",
        "smtp",
        "<a@example.net>",
        "<victim@sub.example.test>",
    ),
    (
        "our domain as a prefix",
        "smtp",
        "<a@example.net>",
        "<victim@example.test.example.org>",
    ),
    (
        "trailing dot",
        "smtp",
        "<a@example.net>",
        "<victim@example.org.>",
    ),
    (
        "no angle brackets",
        "smtp",
        "<a@example.net>",
        "victim@example.org",
    ),
    (
        "DSN parameters",
        "smtp",
        "<a@example.net>",
        "<victim@example.org> NOTIFY=NEVER",
    ),
    (
        "leading percent",
        "smtp",
        "<a@example.net>",
        "<%victim@example.org>",
    ),
    (
        "unauthenticated submission",
        "submission",
        "<alice@example.test>",
        "<victim@example.org>",
    ),
    (
        "unauthenticated submissions",
        "submissions",
        "<alice@example.test>",
        "<victim@example.org>",
    ),
];

#[test]
fn every_relay_attempt_is_refused() {
    let tmp = tempfile::tempdir().expect("tmp");
    let dev = Dev::start(tmp.path());
    assert!(ATTEMPTS.len() >= 25);
    let mut accepted = Vec::new();
    for (what, listener, from, to) in ATTEMPTS {
        let port = dev.port(listener);
        let reply = if *listener == "submissions" {
            // Implicit TLS: speak through openssl s_client is overkill here; curl tries the
            // relay without credentials and must fail.
            let out = std::process::Command::new("curl")
                .args([
                    "-sS",
                    "--insecure",
                    "--url",
                    &format!("smtps://127.0.0.1:{port}"),
                ])
                .args([
                    "--mail-from",
                    "alice@example.test",
                    "--mail-rcpt",
                    "victim@example.org",
                ])
                .args(["-T", "/dev/null"])
                .output()
                .expect("curl");
            if out.status.success() {
                "250".to_string()
            } else {
                "refused".to_string()
            }
        } else {
            let mut c = Raw::connect(port);
            let ehlo = c.cmd("EHLO relay-test.example.net");
            assert!(ehlo.starts_with("250"), "{ehlo}");
            let mail = c.cmd(&format!("MAIL FROM:{from}"));
            if mail.starts_with("250") {
                let rcpt = c.cmd(&format!("RCPT TO:{to}"));
                let data = c.cmd("DATA");
                assert!(
                    !data.starts_with("354"),
                    "{what}: DATA was accepted after {rcpt}"
                );
                rcpt
            } else {
                mail
            }
        };
        println!("{what:<40} {reply}");
        if reply.starts_with('2') || reply.starts_with('3') {
            accepted.push(format!("{what}: {reply}"));
        }
    }
    assert!(accepted.is_empty(), "relayed: {accepted:#?}");
    // And nothing was stored anywhere.
    assert!(dev.messages("alice@example.test").is_empty());
    assert!(dev.messages("bob@example.test").is_empty());
}

#[test]
fn a_failed_login_does_not_open_the_relay() {
    let tmp = tempfile::tempdir().expect("tmp");
    let dev = Dev::start(tmp.path());
    let mut c = Raw::connect(dev.port("smtp"));
    c.cmd("EHLO relay-test.example.net");
    // No TLS on port 25: AUTH is refused outright.
    let auth = c.cmd("AUTH PLAIN AGFsaWNlQGV4YW1wbGUudGVzdAB3cm9uZw==");
    assert!(auth.starts_with("538 5.7.11"), "{auth}");
    c.cmd("MAIL FROM:<alice@example.test>");
    let rcpt = c.cmd("RCPT TO:<victim@example.org>");
    assert!(rcpt.starts_with("550 5.7.1"), "{rcpt}");
    // A forged PROXY header on a listener without PROXY protocol is just a bad command.
    let mut c = Raw::connect(dev.port("smtp"));
    let proxy = c.cmd("PROXY TCP4 10.0.0.1 10.0.0.2 1234 25");
    assert!(proxy.starts_with("500"), "{proxy}");
}
