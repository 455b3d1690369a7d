//! The PROXY protocol behind a real HAProxy (Debian's), all on loopback aliases:
//!
//! ```text
//!   client 127.0.0.9 --> HAProxy 127.0.0.1:F --(from 127.0.0.2, PROXY v1/v2)--> runtime
//!   attacker 127.0.0.1 --------------(its own "PROXY TCP4 127.0.0.9 ...")----> runtime
//! ```
//!
//! The runtime trusts 127.0.0.2 as its proxy and lets 127.0.0.9 relay. The real client address
//! must reach relay decisions, Received headers and login throttling; a direct client's header
//! must not be believed; TLS (implicit, and STARTTLS) must work through the proxy; and the
//! pod's own probes, which send no header, must pass.
mod common;

use std::{
    collections::HashMap,
    path::Path,
    process::{Command, Stdio},
};

use common::{Dev, Raw, client_script, patch_config};
use serde_json::Value;

/// HAProxy in TCP mode: one `listen` section per name, each sending a PROXY header to the
/// runtime from 127.0.0.2.
struct HaProxy {
    _child: common::Spawned,
    ports: HashMap<&'static str, u16>,
}

impl HaProxy {
    /// `routes`: (name, runtime port, `send-proxy` or `send-proxy-v2`).
    fn start(dir: &Path, routes: &[(&'static str, u16, &str)]) -> HaProxy {
        let mut config = String::from(
            "global\n    maxconn 256\n\ndefaults\n    mode tcp\n    timeout connect 5s\n    \
             timeout client 60s\n    timeout server 60s\n",
        );
        // Ports free now; HAProxy binds them a moment later.
        let free: Vec<std::net::TcpListener> = routes
            .iter()
            .map(|_| std::net::TcpListener::bind("127.0.0.1:0").expect("a free port"))
            .collect();
        let mut ports = HashMap::new();
        for ((name, target, send_proxy), socket) in routes.iter().zip(&free) {
            let port = socket.local_addr().expect("addr").port();
            ports.insert(*name, port);
            config.push_str(&format!(
                "\nlisten {name}\n    bind 127.0.0.1:{port}\n    \
                 server runtime 127.0.0.1:{target} {send_proxy} source 127.0.0.2\n"
            ));
        }
        drop(free);
        let listening: Vec<std::net::SocketAddr> = ports
            .values()
            .map(|port| ([127, 0, 0, 1], *port).into())
            .collect();
        HaProxy {
            _child: common::haproxy(dir, &config, &listening),
            ports,
        }
    }

    fn port(&self, name: &str) -> u16 {
        self.ports[name]
    }
}

/// Runs tests/clients/proxy_client.py; returns its JSON.
fn client(args: &[&str]) -> Value {
    let out = Command::new("python3")
        .arg(client_script("proxy_client.py"))
        .args(args)
        .stderr(Stdio::inherit())
        .output()
        .expect("python3 runs");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "proxy_client.py {args:?} failed: {text}"
    );
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{e}: {text}"))
}

/// `mail-runtime ARGS`: whether it exited 0, and its stdout.
fn runtime_command(args: &[&str]) -> (bool, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_mail-runtime"))
        .args(args)
        .output()
        .expect("mail-runtime runs");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

/// Every mail listener expects PROXY headers from 127.0.0.2; 127.0.0.9 may relay; three failed
/// logins a minute per address.
fn behind_haproxy(dev: &Dev) {
    patch_config(dev, "proxy-1", |c| {
        for listener in c["listeners"].as_sequence_mut().expect("listeners") {
            if listener["protocol"] != "http" {
                listener["proxyProtocol"] = true.into();
            }
        }
        c["security"]["trustedProxies"] = serde_yaml_ng::from_str("[127.0.0.2/32]").expect("yaml");
        c["relay"]["clientNetworks"] = serde_yaml_ng::from_str("[127.0.0.9/32]").expect("yaml");
        c["limits"]["authFailuresPerMinute"] = 3u64.into();
    });
}

fn code(v: &Value) -> i64 {
    v.as_i64().unwrap_or_else(|| panic!("a reply code: {v}"))
}

#[test]
fn real_client_addresses_come_through_haproxy_and_nobody_else_can_claim_one() {
    let tmp = tempfile::tempdir().expect("tmp");
    let dev = Dev::start(&tmp.path().join("data"));
    behind_haproxy(&dev);
    let haproxy = HaProxy::start(
        tmp.path(),
        &[
            ("smtp_v1", dev.port("smtp"), "send-proxy"),
            ("smtp_v2", dev.port("smtp"), "send-proxy-v2"),
            ("submission_v2", dev.port("submission"), "send-proxy-v2"),
            ("submissions_v1", dev.port("submissions"), "send-proxy"),
            ("imap_v1", dev.port("imap"), "send-proxy"),
            ("imaps_v2", dev.port("imaps"), "send-proxy-v2"),
        ],
    );
    let alice = dev.password("alice@example.test");
    let port = |name| haproxy.port(name).to_string();

    // Relay without login: 127.0.0.9 is in the relay networks, and both header versions say so.
    for frontend in ["smtp_v1", "smtp_v2"] {
        let out = client(&[
            "smtp",
            &port(frontend),
            "127.0.0.9",
            "none",
            "--rcpt",
            "someone@remote.example",
        ]);
        assert_eq!(code(&out["rcpts"][0][0]), 250, "{frontend}: {out}");
        // Another client through the same proxy is not in the relay networks.
        let out = client(&[
            "smtp",
            &port(frontend),
            "127.0.0.10",
            "none",
            "--rcpt",
            "someone@remote.example",
        ]);
        assert!(code(&out["rcpts"][0][0]) >= 500, "{frontend}: {out}");
    }

    // A direct client claiming 127.0.0.9 with a header of its own is not believed: the header
    // is a bad command and relaying is refused for its real address, 127.0.0.1.
    let mut attacker = Raw::connect(dev.port("smtp"));
    let said = attacker.cmd("PROXY TCP4 127.0.0.9 127.0.0.1 40000 25");
    assert!(said.starts_with('5'), "{said}");
    attacker.cmd("EHLO attacker.example");
    let said = attacker.cmd("MAIL FROM:<alice@example.test>");
    assert!(said.starts_with("250"), "{said}");
    let said = attacker.cmd("RCPT TO:<someone@remote.example>");
    assert!(
        said.starts_with('5'),
        "relay allowed to a forged header: {said}"
    );

    // The trusted proxy's address without a header is refused before any greeting.
    let out = client(&["silent", &dev.port("smtp").to_string(), "127.0.0.2"]);
    assert_eq!(out["received"], "", "{out}");

    // The Received header names the real client, on port 25 (v1) and on implicit-TLS
    // submission (v1), and STARTTLS submission (v2).
    let out = client(&[
        "smtp",
        &port("smtp_v1"),
        "127.0.0.9",
        "none",
        "--rcpt",
        "bob@example.test",
        "--subject",
        "mx-v1",
    ]);
    assert_eq!(code(&out["data"]), 250, "{out}");
    for (frontend, tls, subject) in [
        ("submissions_v1", "implicit", "submissions-v1"),
        ("submission_v2", "starttls", "submission-v2"),
    ] {
        let out = client(&[
            "smtp",
            &port(frontend),
            "127.0.0.9",
            tls,
            "--user",
            "alice@example.test",
            "--password",
            &alice,
            "--rcpt",
            "bob@example.test",
            "--subject",
            subject,
        ]);
        assert_eq!(code(&out["login"][0]), 235, "{frontend}: {out}");
        assert_eq!(code(&out["data"]), 250, "{frontend}: {out}");
    }
    let messages = dev.messages("bob@example.test");
    for subject in ["mx-v1", "submissions-v1", "submission-v2"] {
        let message = messages
            .iter()
            .find(|m| m.contains(&format!("Subject: {subject}")))
            .unwrap_or_else(|| panic!("{subject} delivered"));
        let received = message
            .split("\r\n\r\n")
            .next()
            .expect("headers")
            .lines()
            .find(|l| l.starts_with("Received:"))
            .expect("a Received header");
        assert!(received.contains("[127.0.0.9]"), "{subject}: {received}");
    }

    // IMAP through the proxy, implicit TLS (v2) and STARTTLS (v1).
    for (frontend, tls) in [("imaps_v2", "implicit"), ("imap_v1", "starttls")] {
        let out = client(&[
            "imap",
            &port(frontend),
            "127.0.0.9",
            tls,
            "alice@example.test",
            &alice,
        ]);
        assert_eq!(out["login"], "OK", "{frontend}: {out}");
    }

    // A header and a ClientHello in one segment, as load balancers send them: the handshake
    // gets every byte after the header.
    let out = client(&[
        "one-segment",
        &dev.port("submissions").to_string(),
        "127.0.0.2",
        "PROXY TCP4 127.0.0.9 127.0.0.1 40000 465",
    ]);
    let greeting = out["greeting"].as_str().expect("greeting");
    assert!(greeting.starts_with("220 "), "{out}");

    // Login throttling counts 127.0.0.9, not the proxy: after three failures it is refused even
    // with the right password, while 127.0.0.10 behind the same proxy logs in.
    let login = |source: &str, password: &str| {
        let out = client(&[
            "smtp",
            &port("submission_v2"),
            source,
            "starttls",
            "--user",
            "alice@example.test",
            "--password",
            password,
        ]);
        code(&out["login"][0])
    };
    for _ in 0..3 {
        assert_eq!(login("127.0.0.9", "wrong"), 535);
    }
    assert_eq!(login("127.0.0.9", &alice), 454, "throttled");
    assert_eq!(
        login("127.0.0.10", &alice),
        235,
        "another client is not throttled"
    );
}

#[test]
fn the_pods_own_probes_pass_on_proxy_listeners() {
    let tmp = tempfile::tempdir().expect("tmp");
    let dev = Dev::start(&tmp.path().join("data"));
    behind_haproxy(&dev);

    // The liveness probe: from 127.0.0.1, without a header.
    for (kind, protocol, tls) in [
        ("smtp", "smtp", false),
        ("smtp", "submissions", true),
        ("imap", "imaps", true),
        ("pop3", "pop3", false),
    ] {
        let address = format!("127.0.0.1:{}", dev.port(protocol));
        let mut args = vec!["probe", kind, address.as_str()];
        if tls {
            args.push("--implicit-tls");
        }
        let (ok, out) = runtime_command(&args);
        assert!(ok, "probe {protocol}: {out}");
    }

    // The readiness probe probes every mail listener, all of them behind the PROXY protocol.
    let config = dev.data.join("runtime.yaml");
    let (ok, out) = runtime_command(&["probe-config", config.to_str().expect("path")]);
    assert!(ok, "probe-config: {out}");
    let reports: Vec<Value> = serde_json::from_str(&out).expect("JSON reports");
    let listeners = std::fs::read_to_string(&config).expect("config");
    let proxied = listeners.matches("proxyProtocol: true").count();
    // Every listener but plain HTTP's (the web side's HTTPS included).
    assert_eq!(proxied, dev.ports.len() - 1, "{listeners}");
    assert_eq!(reports.len(), proxied, "{out}");
}
