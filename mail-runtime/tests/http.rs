//! The runtime's HTTP side: health, readiness with the revision served, Prometheus metrics
//! (parsed by the official Python client's parser, with counters that moved and each mailbox's
//! storage), the usage the operator reads, Thunderbird
//! autoconfig and Outlook autodiscover (checked against the config), and the MTA-STS policy.
mod common;

use std::process::Command;

use common::{Dev, http_get as get, run};

#[test]
fn health_readiness_and_metrics() {
    let tmp = tempfile::tempdir().expect("tmp");
    let dev = Dev::start(tmp.path());
    assert_eq!(get(&dev, "/healthz").trim(), "ok");
    let ready: serde_json::Value = serde_json::from_str(&get(&dev, "/readyz")).expect("json");
    assert_eq!(ready["ready"], true);
    assert_eq!(ready["status"]["revision"], "dev-1");

    let before = metrics(&dev);
    run(Command::new("swaks")
        .args(["--server", &format!("127.0.0.1:{}", dev.port("smtp"))])
        .args(["--from", "a@example.net", "--to", "bob@example.test"]));
    let _ = Command::new("swaks")
        .args([
            "--tls",
            "--server",
            &format!("127.0.0.1:{}", dev.port("submission")),
        ])
        .args([
            "--auth",
            "PLAIN",
            "--auth-user",
            "alice@example.test",
            "--auth-password",
            "wrong",
        ])
        .args(["--from", "alice@example.test", "--to", "bob@example.test"])
        .output();
    let after = metrics(&dev);
    let value = |m: &serde_json::Value, key: &str| m[key].as_f64().unwrap_or(0.0);
    assert_eq!(
        value(&after, "kubemail_messages_accepted_total")
            - value(&before, "kubemail_messages_accepted_total"),
        1.0,
        "{after}"
    );
    assert_eq!(
        value(&after, "kubemail_messages_delivered_total")
            - value(&before, "kubemail_messages_delivered_total"),
        1.0
    );
    assert!(
        value(&after, "kubemail_sessions_total{protocol=smtp}") >= 1.0,
        "{after}"
    );
    assert!(
        value(&after, "kubemail_sessions_total{protocol=submission}") >= 1.0,
        "{after}"
    );
    assert_eq!(
        value(&after, "kubemail_auth_failures_total{protocol=smtp}"),
        1.0,
        "{after}"
    );
    assert_eq!(
        value(&after, "kubemail_config_info{revision=dev-1}"),
        1.0,
        "{after}"
    );
    assert!(after.get("kubemail_queue_depth").is_some(), "{after}");

    // Each mailbox's storage: bob got one message, of the size the store holds; the dev
    // mailboxes have a 1 GiB quota. /usage says the same, for the operator. (The count is made
    // at most once a second, so a scrape may be a second behind.)
    let started = std::time::Instant::now();
    let mut after = after;
    while value(
        &after,
        "kubemail_mailbox_messages{mailbox=bob@example.test}",
    ) != 1.0
        && started.elapsed() < std::time::Duration::from_secs(5)
    {
        std::thread::sleep(std::time::Duration::from_millis(200));
        after = metrics(&dev);
    }
    let stored: u64 = dev
        .messages("bob@example.test")
        .iter()
        .map(|m| m.len() as u64)
        .sum();
    assert_eq!(
        value(
            &after,
            "kubemail_mailbox_messages{mailbox=bob@example.test}"
        ),
        1.0,
        "{after}"
    );
    assert_eq!(
        value(
            &after,
            "kubemail_mailbox_used_bytes{mailbox=bob@example.test}"
        ),
        stored as f64,
        "{after}"
    );
    assert_eq!(
        value(
            &after,
            "kubemail_mailbox_quota_bytes{mailbox=bob@example.test}"
        ),
        (1u64 << 30) as f64
    );
    let usage: serde_json::Value = serde_json::from_str(&get(&dev, "/usage")).expect("json");
    assert_eq!(usage["revision"], "dev-1");
    assert_eq!(usage["queueDepth"], 0, "nothing was relayed");
    let bob = usage["mailboxes"]
        .as_array()
        .and_then(|list| list.iter().find(|m| m["address"] == "bob@example.test"))
        .unwrap_or_else(|| panic!("bob in {usage}"));
    assert_eq!(bob["messages"], 1);
    assert_eq!(bob["bytes"], stored);
    assert_eq!(bob["quotaBytes"], 1u64 << 30);
}

/// Every sample of /metrics, as parsed by prometheus_client's text parser.
fn metrics(dev: &Dev) -> serde_json::Value {
    let url = format!("http://127.0.0.1:{}/metrics", dev.port("http"));
    let script = r#"
import json, sys, urllib.request
from prometheus_client.parser import text_string_to_metric_families
text = urllib.request.urlopen(sys.argv[1], timeout=5).read().decode()
out = {}
for family in text_string_to_metric_families(text):
    for s in family.samples:
        labels = ",".join(f"{k}={v}" for k, v in sorted(s.labels.items()))
        out[s.name + ("{" + labels + "}" if labels else "")] = s.value
print(json.dumps(out))
"#;
    let out = run(Command::new("python3").args(["-c", script, &url]));
    serde_json::from_str(out.trim()).expect("json")
}

#[test]
fn autoconfig_autodiscover_and_mta_sts_match_the_config() {
    let tmp = tempfile::tempdir().expect("tmp");
    let dev = Dev::start(tmp.path());
    let script = r#"
import json, sys, urllib.request, xml.etree.ElementTree as ET
base = sys.argv[1]
out = {}
for path in ["/mail/config-v1.1.xml", "/.well-known/autoconfig/mail/config-v1.1.xml?emailaddress=bob@example.test"]:
    root = ET.fromstring(urllib.request.urlopen(base + path, timeout=5).read())
    provider = root.find("emailProvider")
    servers = []
    for s in list(provider.findall("incomingServer")) + list(provider.findall("outgoingServer")):
        servers.append([s.get("type"), s.findtext("hostname"), int(s.findtext("port")), s.findtext("socketType"), s.findtext("username")])
    out[path.split("?")[0]] = {"domains": [d.text for d in provider.findall("domain")], "servers": servers}
req = urllib.request.Request(base + "/autodiscover/autodiscover.xml", data=b"<Autodiscover/>", method="POST")
root = ET.fromstring(urllib.request.urlopen(req, timeout=5).read())
ns = {"r": "http://schemas.microsoft.com/exchange/autodiscover/outlook/responseschema/2006a"}
out["autodiscover"] = [[p.findtext("r:Type", namespaces=ns), p.findtext("r:Server", namespaces=ns), int(p.findtext("r:Port", namespaces=ns))] for p in root.iter("{%s}Protocol" % ns["r"])]
out["mta-sts"] = urllib.request.urlopen(base + "/.well-known/mta-sts.txt", timeout=5).read().decode()
print(json.dumps(out))
"#;
    let base = format!("http://127.0.0.1:{}", dev.port("http"));
    let out = run(Command::new("python3").args(["-c", script, &base]));
    let found: serde_json::Value = serde_json::from_str(out.trim()).expect("json");
    let host = "mail.example.test";
    for path in [
        "/mail/config-v1.1.xml",
        "/.well-known/autoconfig/mail/config-v1.1.xml",
    ] {
        assert_eq!(found[path]["domains"], serde_json::json!(["example.test"]));
        let servers = found[path]["servers"].as_array().expect("servers");
        let expect = |kind: &str, port: u16, socket: &str| {
            assert!(
                servers.contains(&serde_json::json!([
                    kind,
                    host,
                    port,
                    socket,
                    "%EMAILADDRESS%"
                ])),
                "{kind} {port} {socket} missing from {servers:?}"
            );
        };
        expect("pop3", dev.port("pop3s"), "SSL");
        expect("pop3", dev.port("pop3"), "STARTTLS");
        expect("smtp", dev.port("submissions"), "SSL");
        expect("smtp", dev.port("submission"), "STARTTLS");
        expect("imap", dev.port("imaps"), "SSL");
        expect("imap", dev.port("imap"), "STARTTLS");
    }
    // ManageSieve has no element of its own in the format: it is named in a comment.
    let raw = common::http_get(&dev, "/mail/config-v1.1.xml");
    assert!(
        raw.contains(&format!(
            "ManageSieve (RFC 5804), for server-side filters: {host} port {}",
            dev.port("managesieve")
        )),
        "{raw}"
    );
    let autodiscover = found["autodiscover"].as_array().expect("autodiscover");
    assert!(
        autodiscover.contains(&serde_json::json!(["POP3", host, dev.port("pop3s")])),
        "{autodiscover:?}"
    );
    assert!(
        autodiscover.contains(&serde_json::json!(["SMTP", host, dev.port("submissions")])),
        "{autodiscover:?}"
    );
    assert!(
        autodiscover.contains(&serde_json::json!(["IMAP", host, dev.port("imaps")])),
        "{autodiscover:?}"
    );
    let sts = found["mta-sts"].as_str().expect("policy");
    assert!(
        sts.starts_with("version: STSv1\r\nmode: testing\r\nmx: mail.example.test\r\n"),
        "{sts}"
    );
}

/// The `https` listener, as curl sees it with the certificate as its only CA: the MTA-STS
/// policy at `mta-sts.<domain>` and autoconfig at `autoconfig.<domain>`, with the domain's
/// certificate; the runtime's own state (`/metrics`, `/usage`, `/readyz`, `/healthz`) is not
/// there.
#[test]
fn the_public_documents_are_served_over_https_and_nothing_else() {
    let tmp = tempfile::tempdir().expect("tmp");
    let dev = Dev::start(tmp.path());
    let port = dev.port("https");
    let ca = tmp.path().join("tls/tls.crt");
    let get = |host: &str, path: &str| {
        let out = Command::new("curl")
            .args(["-s", "--max-time", "10", "--cacert"])
            .arg(&ca)
            .args(["--resolve", &format!("{host}:{port}:127.0.0.1")])
            .args(["-w", "\n%{http_code} %{content_type}"])
            .arg(format!("https://{host}:{port}{path}"))
            .output()
            .expect("curl");
        assert!(
            out.status.success(),
            "curl {host}{path}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let policy = get("mta-sts.example.test", "/.well-known/mta-sts.txt");
    assert!(
        policy.starts_with("version: STSv1\r\nmode: testing\r\nmx: mail.example.test\r\n")
            && policy.ends_with("200 text/plain"),
        "{policy}"
    );
    let autoconfig = get("autoconfig.example.test", "/mail/config-v1.1.xml");
    assert!(
        autoconfig.contains("<hostname>mail.example.test</hostname>")
            && autoconfig.ends_with("200 application/xml"),
        "{autoconfig}"
    );
    for path in ["/metrics", "/usage", "/readyz", "/healthz"] {
        let answer = get("mta-sts.example.test", path);
        assert!(answer.ends_with("404 text/plain"), "{path}: {answer}");
    }
    // The same over plain HTTP on the runtime's own port still answers there.
    assert!(common::http_get(&dev, "/metrics").contains("kubemail_"));
    // The probe the pod's readiness check and the operator run.
    let probe = Command::new(env!("CARGO_BIN_EXE_mail-runtime"))
        .args(["probe", "https", &format!("127.0.0.1:{port}")])
        .output()
        .expect("probe");
    let report: serde_json::Value = serde_json::from_slice(&probe.stdout).expect("json");
    assert_eq!(report["ok"], true, "{report}");
    assert_eq!(report["greeting"], "HTTP/1.1 200 OK", "{report}");
    // Pointed at a mail port it fails, as it should.
    let wrong = Command::new(env!("CARGO_BIN_EXE_mail-runtime"))
        .args([
            "probe",
            "https",
            &format!("127.0.0.1:{}", dev.port("imaps")),
        ])
        .output()
        .expect("probe");
    assert!(!wrong.status.success());
}
