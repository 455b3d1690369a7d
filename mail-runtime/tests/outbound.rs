//! Outbound delivery against real peers on loopback: dnsmasq serves the MX, A and TXT records
//! of the test domains (so direct delivery takes the real DNS path), aiosmtpd plays the remote
//! MX or the smarthost, dkimpy verifies DKIM signatures, and Python's email package parses the
//! delivery reports a sender finds in its mailbox.
mod common;

use std::{
    io::{BufRead, BufReader},
    path::{Path, PathBuf},
    process::{Child, ChildStdin, Command, Stdio},
    time::{Duration, Instant},
};

use common::{Dev, client_script, patch_config, run};
use kubemail_e2e::Dns;

const ALICE: &str = "alice@example.test";

/// An aiosmtpd server (tests/clients/smtp_peer.py).
struct Peer {
    child: Child,
    _stdin: Option<ChildStdin>,
    out: PathBuf,
}

impl Peer {
    fn start(ip: &str, port: u16, out: &Path, extra: &[&str]) -> Peer {
        let mut child = Command::new("python3")
            .arg(client_script("smtp_peer.py"))
            .args([ip, &port.to_string()])
            .arg(out)
            .args(extra)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("python3 with aiosmtpd");
        let stdin = child.stdin.take();
        let mut line = String::new();
        BufReader::new(child.stdout.take().expect("stdout"))
            .read_line(&mut line)
            .expect("ready line");
        assert_eq!(line.trim(), "ready", "the SMTP peer did not start");
        Peer {
            child,
            _stdin: stdin,
            out: out.to_path_buf(),
        }
    }

    /// The messages it accepted, in order.
    fn received(&self) -> Vec<String> {
        let mut files: Vec<(u32, PathBuf)> = std::fs::read_dir(&self.out)
            .map(|d| {
                d.flatten()
                    .filter_map(|e| {
                        let n = e.path().file_stem()?.to_str()?.parse().ok()?;
                        Some((n, e.path()))
                    })
                    .collect()
            })
            .unwrap_or_default();
        files.sort();
        files
            .into_iter()
            .map(|(_, p)| std::fs::read_to_string(p).expect("a message"))
            .collect()
    }
}

impl Drop for Peer {
    fn drop(&mut self) {
        self._stdin.take();
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Fast retries and the test DNS server.
fn relay_setup(config: &mut serde_yaml_ng::Value, dns: &Dns) {
    config["nameservers"] =
        serde_yaml_ng::to_value(vec![format!("127.0.0.1:{}", dns.port)]).expect("yaml");
    config["relay"]["retry"] = serde_yaml_ng::from_str(
        "{initialIntervalSeconds: 1, maxIntervalSeconds: 2, maxAgeSeconds: 3600}",
    )
    .expect("yaml");
}

/// alice submits a message over 587 (STARTTLS + AUTH), as a mail client would.
fn submit(dev: &Dev, to: &str, subject: &str) -> std::process::Output {
    Command::new("swaks")
        .args(["--server", &format!("127.0.0.1:{}", dev.port("submission"))])
        .args(["--tls", "--auth", "PLAIN", "--auth-user", ALICE])
        .args(["--auth-password", &dev.password(ALICE)])
        .args(["--from", ALICE, "--to", to])
        .args([
            "--h-Subject",
            subject,
            "--body",
            &format!("Body of {subject}."),
        ])
        .output()
        .expect("swaks")
}

fn submitted(dev: &Dev, to: &str, subject: &str) {
    let out = submit(dev, to, subject);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
}

fn wait_until(what: &str, limit: Duration, mut check: impl FnMut() -> bool) {
    let start = Instant::now();
    while !check() {
        assert!(start.elapsed() < limit, "{what}: not after {limit:?}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn queue_files(dev: &Dev) -> usize {
    std::fs::read_dir(dev.data.join("queue"))
        .map(|d| {
            d.flatten()
                .filter(|e| e.path().extension().is_some_and(|x| x == "json"))
                .count()
        })
        .unwrap_or(0)
}

fn mx_records(domain: &str, ip: &str) -> Vec<String> {
    vec![
        format!("--mx-host={domain},mx.{domain},10"),
        format!("--host-record=mx.{domain},{ip}"),
    ]
}

#[test]
fn direct_delivery_retries_a_451_and_delivers_once() {
    let tmp = tempfile::tempdir().expect("tmp");
    let ip = "127.0.0.31";
    let dns = Dns::start(&mx_records("remote.test", ip));
    let peer = Peer::start(ip, 25, &tmp.path().join("peer"), &["--fail-first", "2"]);
    let dev = Dev::start(&tmp.path().join("data"));
    patch_config(&dev, "relay-1", |c| relay_setup(c, &dns));

    submitted(&dev, "friend@remote.test", "retried");
    wait_until("the peer has the message", Duration::from_secs(20), || {
        !peer.received().is_empty()
    });
    wait_until("the queue is empty", Duration::from_secs(5), || {
        queue_files(&dev) == 0
    });
    std::thread::sleep(Duration::from_secs(2));
    let received = peer.received();
    assert_eq!(received.len(), 1, "delivered more than once");
    assert!(received[0].contains("X-Peer-Rcpt: friend@remote.test"));
    assert!(received[0].contains("Subject: retried"));
    assert!(
        dev.messages(ALICE).is_empty(),
        "the sender got a report for a delivered message"
    );
}

/// The DSN in alice's mailbox, as Python's email package reads it.
fn parsed_reports(dev: &Dev) -> Vec<serde_json::Value> {
    let script = r#"
import email, json, sys, mailbox
out = []
for msg in mailbox.Maildir(sys.argv[1], factory=None):
    m = email.message_from_bytes(bytes(msg))
    if m.get_content_type() != "multipart/report":
        continue
    status = [p for p in m.walk() if p.get_content_type() == "message/delivery-status"][0]
    fields = [dict(block.items()) for block in status.get_payload()]
    out.append({"subject": m["Subject"], "to": m["To"], "report_type": m.get_param("report-type"), "fields": fields})
print(json.dumps(out))
"#;
    let out = run(Command::new("python3")
        .args(["-c", script])
        .arg(dev.maildir(ALICE)));
    serde_json::from_str(out.trim()).expect("json")
}

#[test]
fn a_permanent_refusal_returns_a_report_to_the_sender() {
    let tmp = tempfile::tempdir().expect("tmp");
    let ip = "127.0.0.32";
    let dns = Dns::start(&mx_records("remote.test", ip));
    let peer = Peer::start(
        ip,
        25,
        &tmp.path().join("peer"),
        &["--reject", "nobody@remote.test"],
    );
    let dev = Dev::start(&tmp.path().join("data"));
    patch_config(&dev, "relay-1", |c| relay_setup(c, &dns));

    submitted(&dev, "nobody@remote.test", "doomed");
    wait_until("a report reaches alice", Duration::from_secs(20), || {
        !dev.messages(ALICE).is_empty()
    });
    let reports = parsed_reports(&dev);
    assert_eq!(reports.len(), 1, "{reports:?}");
    let report = &reports[0];
    assert_eq!(report["report_type"], "delivery-status");
    assert_eq!(report["to"], format!("<{ALICE}>"));
    let recipient = &report["fields"][1];
    assert_eq!(recipient["Final-Recipient"], "rfc822; nobody@remote.test");
    assert_eq!(recipient["Action"], "failed");
    assert_eq!(recipient["Status"], "5.1.1");
    assert!(
        recipient["Diagnostic-Code"]
            .as_str()
            .is_some_and(|d| d.contains("550 5.1.1")),
        "{recipient}"
    );
    assert!(peer.received().is_empty());
    assert_eq!(queue_files(&dev), 0);
}

#[test]
fn queued_mail_survives_a_sigkill_and_is_delivered_once() {
    let tmp = tempfile::tempdir().expect("tmp");
    let ip = "127.0.0.33";
    let dns = Dns::start(&mx_records("remote.test", ip));
    let data = tmp.path().join("data");
    let mut dev = Dev::start(&data);
    patch_config(&dev, "relay-1", |c| relay_setup(c, &dns));
    // No peer yet: every attempt fails to connect, and the messages wait in the queue.
    for n in 0..3 {
        submitted(&dev, "friend@remote.test", &format!("queued {n}"));
    }
    assert_eq!(queue_files(&dev), 3);
    dev.kill9();

    let peer = Peer::start(ip, 25, &tmp.path().join("peer"), &[]);
    let dev = Dev::start(&data);
    wait_until("all three arrive", Duration::from_secs(20), || {
        peer.received().len() >= 3
    });
    wait_until("the queue is empty", Duration::from_secs(5), || {
        queue_files(&dev) == 0
    });
    std::thread::sleep(Duration::from_secs(2));
    let mut subjects: Vec<String> = peer
        .received()
        .iter()
        .filter_map(|m| {
            m.lines()
                .find(|l| l.starts_with("Subject:"))
                .map(String::from)
        })
        .collect();
    subjects.sort();
    assert_eq!(
        subjects,
        [
            "Subject: queued 0",
            "Subject: queued 1",
            "Subject: queued 2"
        ],
        "lost or duplicated after the restart"
    );
}

/// A 2048-bit RSA key, PKCS#8, as the operator makes it (`<name>.pem`), and its DNS record's
/// value (`<name>.txt`).
fn dkim_key(dir: &Path, name: &str) -> (PathBuf, PathBuf) {
    let key = dir.join(format!("{name}.pem"));
    run(Command::new("openssl")
        .args([
            "genpkey",
            "-algorithm",
            "RSA",
            "-pkeyopt",
            "rsa_keygen_bits:2048",
            "-out",
        ])
        .arg(&key));
    let der_file = dir.join(format!("{name}.der"));
    run(Command::new("openssl")
        .args(["pkey", "-pubout", "-outform", "DER", "-in"])
        .arg(&key)
        .arg("-out")
        .arg(&der_file));
    let der = std::fs::read(der_file).expect("der");
    use base64::Engine as _;
    let txt = format!(
        "v=DKIM1; k=rsa; p={}",
        base64::engine::general_purpose::STANDARD.encode(der)
    );
    let txt_file = dir.join(format!("{name}.txt"));
    std::fs::write(&txt_file, &txt).expect("txt");
    (key, txt_file)
}

/// dkimpy's verdict on a message file, with the key record given for `record`.
fn dkim_verdict(message: &Path, record: &str, txt: &Path) -> String {
    let verdict = Command::new("python3")
        .arg(client_script("dkim_verify.py"))
        .arg(message)
        .arg(record)
        .arg(txt)
        .output()
        .expect("dkim_verify.py");
    format!(
        "{}{}",
        String::from_utf8_lossy(&verdict.stdout).trim(),
        String::from_utf8_lossy(&verdict.stderr)
    )
}

#[test]
fn dkim_signatures_verify_with_dkimpy_and_the_smarthost_gets_auth() {
    let tmp = tempfile::tempdir().expect("tmp");
    let (key, _) = dkim_key(tmp.path(), "dkim");

    let ip = "127.0.0.34";
    let dns = Dns::start(&[]);
    let peer = Peer::start(
        ip,
        2587,
        &tmp.path().join("peer"),
        &["--auth", "relay-user:relay-secret"],
    );
    std::fs::write(tmp.path().join("user"), "relay-user\n").expect("user");
    std::fs::write(tmp.path().join("pass"), "relay-secret\n").expect("pass");
    let dev = Dev::start(&tmp.path().join("data"));
    let (user, pass) = (tmp.path().join("user"), tmp.path().join("pass"));
    patch_config(&dev, "smarthost-1", |c| {
        relay_setup(c, &dns);
        c["dkim"] =
            serde_yaml_ng::from_str(&format!("{{selector: sel1, keyFile: {}}}", key.display()))
                .expect("yaml");
        c["relay"]["route"] = serde_yaml_ng::from_str(&format!(
            "{{mode: smarthost, smarthost: {{host: {ip}, port: 2587, tls: none, usernameFile: {}, passwordFile: {}}}}}",
            user.display(),
            pass.display()
        ))
        .expect("yaml");
    });

    submitted(&dev, "customer@anywhere.test", "signed");
    wait_until("the smarthost has it", Duration::from_secs(20), || {
        !peer.received().is_empty()
    });
    let message = &peer.received()[0];
    assert!(
        message.contains("X-Peer-Auth: relay-user"),
        "no AUTH at the smarthost"
    );
    assert!(message.contains("DKIM-Signature: "), "{message}");
    let file = peer.out.join("1.eml");
    let verdict = Command::new("python3")
        .arg(client_script("dkim_verify.py"))
        .arg(&file)
        .arg("sel1._domainkey.example.test")
        .arg(tmp.path().join("dkim.txt"))
        .output()
        .expect("dkim_verify.py");
    assert_eq!(
        String::from_utf8_lossy(&verdict.stdout).trim(),
        "pass",
        "{}",
        String::from_utf8_lossy(&verdict.stderr)
    );
    // A changed body no longer verifies: the check can fail.
    let tampered = tmp.path().join("tampered.eml");
    std::fs::write(
        &tampered,
        message.replace("Body of signed.", "Body of forged."),
    )
    .expect("w");
    let verdict = Command::new("python3")
        .arg(client_script("dkim_verify.py"))
        .arg(&tampered)
        .arg("sel1._domainkey.example.test")
        .arg(tmp.path().join("dkim.txt"))
        .output()
        .expect("dkim_verify.py");
    assert!(!verdict.status.success(), "a tampered message verified");
}

#[test]
fn relay_rules_and_rate_limits_refuse_with_the_right_codes() {
    let tmp = tempfile::tempdir().expect("tmp");
    let ip = "127.0.0.35";
    let dns = Dns::start(&mx_records("remote.test", ip));
    let peer = Peer::start(ip, 25, &tmp.path().join("peer"), &[]);
    let dev = Dev::start(&tmp.path().join("data"));
    patch_config(&dev, "rules-1", |c| {
        relay_setup(c, &dns);
        c["relay"]["recipientDomains"] = serde_yaml_ng::from_str("[remote.test]").expect("yaml");
        c["relay"]["rateLimits"] =
            serde_yaml_ng::from_str("{perSender: {messages: 2, periodSeconds: 3600}}").expect("y");
    });
    // Only listed recipient domains.
    let out = submit(&dev, "someone@elsewhere.test", "not listed");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("550 5.7.1 relaying to elsewhere.test is not allowed"),
        "{text}"
    );
    // Two messages an hour: the third is told to wait.
    submitted(&dev, "friend@remote.test", "one");
    submitted(&dev, "friend@remote.test", "two");
    let out = submit(&dev, "friend@remote.test", "three");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("450 4.7.1"), "{text}");
    // Local mail is not relaying and is not limited.
    let out = submit(&dev, "bob@example.test", "local");
    assert!(out.status.success());
    wait_until("two relayed", Duration::from_secs(20), || {
        peer.received().len() == 2
    });
    // Without login and outside the client networks: no relaying at all.
    let out = Command::new("swaks")
        .args(["--server", &format!("127.0.0.1:{}", dev.port("smtp"))])
        .args([
            "--from",
            "stranger@example.test",
            "--to",
            "friend@remote.test",
        ])
        .output()
        .expect("swaks");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("550 5.7.1 relaying denied"), "{text}");
}

#[test]
fn inbound_mail_is_checked_with_spf_and_dmarc() {
    let tmp = tempfile::tempdir().expect("tmp");
    let dns = Dns::start(&[
        "--txt-record=good.test,v=spf1 ip4:127.0.0.0/8 -all".into(),
        "--txt-record=_dmarc.good.test,v=DMARC1; p=reject".into(),
        "--txt-record=forged.test,v=spf1 -all".into(),
        "--txt-record=_dmarc.forged.test,v=DMARC1; p=reject".into(),
    ]);
    let dev = Dev::start(&tmp.path().join("data"));
    patch_config(&dev, "checks-1", |c| {
        c["nameservers"] =
            serde_yaml_ng::to_value(vec![format!("127.0.0.1:{}", dns.port)]).expect("yaml");
        c["inbound"] =
            serde_yaml_ng::from_str("{verify: true, rejectOnDmarcPolicy: true}").expect("yaml");
    });
    let send = |from: &str| {
        Command::new("swaks")
            .args(["--server", &format!("127.0.0.1:{}", dev.port("smtp"))])
            .args(["--from", from, "--to", "bob@example.test"])
            .args(["--h-From", from, "--ehlo", "client.good.test"])
            .output()
            .expect("swaks")
    };
    let out = send("news@good.test");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    let stored = dev.messages("bob@example.test");
    assert_eq!(stored.len(), 1);
    assert!(
        stored[0].starts_with("Authentication-Results: mail.example.test;"),
        "{}",
        stored[0]
    );
    assert!(stored[0].contains("spf=pass"), "{}", stored[0]);
    assert!(stored[0].contains("dmarc=pass"), "{}", stored[0]);

    let out = send("ceo@forged.test");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("550 5.7.1"), "{text}");
    assert_eq!(
        dev.messages("bob@example.test").len(),
        1,
        "forged mail was stored"
    );
}

/// The last reply recorded for each queued recipient.
fn queued_replies(dev: &Dev) -> Vec<String> {
    std::fs::read_dir(dev.data.join("queue"))
        .map(|d| {
            d.flatten()
                .filter(|e| e.path().extension().is_some_and(|x| x == "json"))
                .filter_map(|e| std::fs::read(e.path()).ok())
                .filter_map(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
                .flat_map(|entry| {
                    entry["recipients"]
                        .as_array()
                        .cloned()
                        .unwrap_or_default()
                        .into_iter()
                        .filter_map(|r| r["lastReply"].as_str().map(String::from))
                })
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn with_tls_required_an_mx_without_starttls_gets_nothing() {
    // The peer offers no STARTTLS, as an MX looks to us when a man in the middle strips it
    // from the EHLO reply. With requireTls the message waits in the queue; without, it goes.
    let tmp = tempfile::tempdir().expect("tmp");
    let ip = "127.0.0.34";
    let dns = Dns::start(&mx_records("remote.test", ip));
    let peer = Peer::start(ip, 25, &tmp.path().join("peer"), &[]);
    let dev = Dev::start(&tmp.path().join("data"));
    patch_config(&dev, "relay-1", |c| {
        relay_setup(c, &dns);
        c["relay"]["route"]["requireTls"] = true.into();
    });
    submitted(&dev, "friend@remote.test", "only over TLS");
    wait_until(
        "a refused attempt is recorded",
        Duration::from_secs(20),
        || {
            queued_replies(&dev)
                .iter()
                .any(|r| r.contains("does not offer STARTTLS and TLS is required"))
        },
    );
    std::thread::sleep(Duration::from_secs(3));
    assert!(peer.received().is_empty(), "mail went out in the clear");
    assert_eq!(queue_files(&dev), 1, "the message waits in the queue");

    patch_config(&dev, "relay-2", |c| {
        c["relay"]["route"]["requireTls"] = false.into();
    });
    wait_until(
        "delivered once TLS is optional",
        Duration::from_secs(20),
        || peer.received().len() == 1,
    );
}

/// Sends a message on port 25 as an outside MTA would; returns the reply to its end of data.
fn send_from_outside(dev: &Dev, from: &str, to: &str, message: &str) -> String {
    let mut smtp = common::Raw::connect(dev.port("smtp"));
    assert!(smtp.cmd("EHLO mx.outside.test").starts_with("250"));
    assert!(smtp.cmd(&format!("MAIL FROM:<{from}>")).starts_with("250"));
    let rcpt = smtp.cmd(&format!("RCPT TO:<{to}>"));
    assert!(rcpt.starts_with("250"), "{rcpt}");
    assert!(smtp.cmd("DATA").starts_with("354"));
    smtp.send_raw(message.replace('\n', "\r\n").as_bytes());
    smtp.cmd(".")
}

/// Two companies' domains hosted beside the server's own: each domain's mail is signed with
/// its own key and selector (dkimpy verifies it against that domain's record only), and a
/// hosted domain without a key of its own goes unsigned, never under another tenant's key.
#[test]
fn each_hosted_domain_signs_with_its_own_key_and_never_with_another_tenants() {
    let tmp = tempfile::tempdir().expect("tmp");
    let (own_key, own_txt) = dkim_key(tmp.path(), "own");
    let (brand_key, brand_txt) = dkim_key(tmp.path(), "brand");
    let ip = "127.0.0.37";
    let dns = Dns::start(&mx_records("remote.test", ip));
    let peer = Peer::start(ip, 25, &tmp.path().join("peer"), &[]);
    let dev = Dev::start(&tmp.path().join("data"));
    let hash = mail_runtime::auth::hash_password("pw");
    patch_config(&dev, "tenants-1", |c| {
        relay_setup(c, &dns);
        // An application network that relays without a login: it sends as the server's own
        // domain, never as a tenant's.
        c["relay"]["clientNetworks"] = serde_yaml_ng::from_str("[127.0.0.1/32]").expect("yaml");
        c["dkim"] = serde_yaml_ng::from_str(&format!(
            "{{selector: own1, keyFile: {}}}",
            own_key.display()
        ))
        .expect("yaml");
        let domains = c["domains"].as_sequence_mut().expect("domains");
        domains.push(
            serde_yaml_ng::from_str(&format!(
                "{{name: brand.test, hostname: mail.brand.test, dkim: {{selector: brand1, keyFile: {}}}}}",
                brand_key.display()
            ))
            .expect("yaml"),
        );
        domains.push(
            serde_yaml_ng::from_str("{name: plain.test, hostname: mail.plain.test}").expect("yaml"),
        );
        let mailboxes = c["mailboxes"].as_sequence_mut().expect("mailboxes");
        for address in ["carol@brand.test", "dave@plain.test"] {
            mailboxes.push(
                serde_yaml_ng::from_str(&format!(
                    "{{address: {address}, passwordHash: \"{hash}\"}}"
                ))
                .expect("yaml"),
            );
        }
        // carol's rules send her mail on: a redirect is signed as its sender's would be, never
        // as carol's domain.
        let carol = mailboxes.len() - 2;
        mailboxes[carol]["sieveScript"] = "redirect \"friend@remote.test\";".into();
    });
    for (from, password) in [
        (ALICE.to_string(), dev.password(ALICE)),
        ("carol@brand.test".into(), "pw".into()),
        ("dave@plain.test".into(), "pw".into()),
    ] {
        let out = Command::new("swaks")
            .args(["--server", &format!("127.0.0.1:{}", dev.port("submission"))])
            .args(["--tls", "--auth", "PLAIN", "--auth-user", &from])
            .args(["--auth-password", &password])
            .args(["--from", &from, "--to", "friend@remote.test"])
            .args(["--h-Subject", &format!("from {from}")])
            .output()
            .expect("swaks");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stdout)
        );
    }
    // From the network, without a login: as the server's domain it is signed with its key; a
    // tenant's envelope sender is refused; a tenant's header From under a null sender goes
    // unsigned.
    let from_network = |envelope: &str, header: &str, subject: &str| {
        Command::new("swaks")
            .args(["--server", &format!("127.0.0.1:{}", dev.port("smtp"))])
            .args(["--from", envelope, "--to", "friend@remote.test"])
            .args(["--h-From", header, "--h-Subject", subject])
            .output()
            .expect("swaks")
    };
    let out = from_network(
        "app@example.test",
        "app@example.test",
        "from app@example.test",
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    let out = from_network("app@brand.test", "app@brand.test", "as a tenant");
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(
        !out.status.success()
            && said.contains("550 5.7.1 relaying is not allowed for senders in brand.test"),
        "{said}"
    );
    let out = from_network("<>", "ceo@brand.test", "from ceo@brand.test");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    let redirected = Command::new("swaks")
        .args(["--server", &format!("127.0.0.1:{}", dev.port("smtp"))])
        .args(["--from", "ceo@brand.test", "--to", "carol@brand.test"])
        .args([
            "--h-From",
            "ceo@brand.test",
            "--h-Subject",
            "redirected by carol",
        ])
        .output()
        .expect("swaks");
    assert!(
        redirected.status.success(),
        "{}",
        String::from_utf8_lossy(&redirected.stdout)
    );
    wait_until("all six arrive", Duration::from_secs(30), || {
        peer.received().len() == 6
    });
    let file_with = |subject: &str| {
        let n = peer
            .received()
            .iter()
            .position(|m| m.contains(&format!("Subject: {subject}")))
            .expect("the message");
        peer.out.join(format!("{}.eml", n + 1))
    };
    let file_from = |from: &str| file_with(&format!("from {from}"));
    let alice_mail = file_from(ALICE);
    assert_eq!(
        dkim_verdict(&alice_mail, "own1._domainkey.example.test", &own_txt),
        "pass"
    );
    let carol_mail = file_from("carol@brand.test");
    assert_eq!(
        dkim_verdict(&carol_mail, "brand1._domainkey.brand.test", &brand_txt),
        "pass"
    );
    // Signed by brand's key, not the server's: the server's key does not verify it.
    assert_ne!(
        dkim_verdict(&carol_mail, "brand1._domainkey.brand.test", &own_txt),
        "pass"
    );
    let dave = std::fs::read_to_string(file_from("dave@plain.test")).expect("dave's");
    assert!(
        !dave.contains("DKIM-Signature"),
        "signed for a tenant without a key:\n{dave}"
    );
    let app = file_from("app@example.test");
    assert_eq!(
        dkim_verdict(&app, "own1._domainkey.example.test", &own_txt),
        "pass"
    );
    let redirected =
        std::fs::read_to_string(file_with("redirected by carol")).expect("the redirect");
    assert!(
        !redirected.contains("DKIM-Signature"),
        "a network's mail redirected by a tenant's mailbox signed with its key:\n{redirected}"
    );
    let forged = std::fs::read_to_string(file_from("ceo@brand.test")).expect("ceo's");
    assert!(
        !forged.contains("DKIM-Signature"),
        "a network's mail signed with a tenant's key:\n{forged}"
    );
}

/// Issue 17 items 3 and 9: mail from outside with `From: ceo@<our domain>` that a Mailbox
/// forwards out was DKIM-signed with our key, and a failed forward bounced (with the sender's
/// headers and our signature) to the forged envelope sender; one message ping-ponged between
/// forwards 252 times. Now the forward leaves unsigned under an SRS0 sender, a refused copy
/// is logged and reported to no one, and a looping message is refused.
#[test]
fn outside_mail_forwarded_out_is_not_signed_nor_bounced_and_loops_stop() {
    let tmp = tempfile::tempdir().expect("tmp");
    let key = tmp.path().join("dkim.pem");
    run(Command::new("openssl")
        .args([
            "genpkey",
            "-algorithm",
            "RSA",
            "-pkeyopt",
            "rsa_keygen_bits:2048",
            "-out",
        ])
        .arg(&key));
    let ip = "127.0.0.36";
    let dns = Dns::start(&mx_records("remote.test", ip));
    let peer = Peer::start(
        ip,
        25,
        &tmp.path().join("peer"),
        &["--reject", "gone@remote.test"],
    );
    let dev = Dev::start(&tmp.path().join("data"));
    patch_config(&dev, "forward-1", |c| {
        relay_setup(c, &dns);
        c["dkim"] =
            serde_yaml_ng::from_str(&format!("{{selector: sel1, keyFile: {}}}", key.display()))
                .expect("yaml");
        let alice = c["mailboxes"]
            .as_sequence_mut()
            .and_then(|s| s.iter_mut().find(|m| m["address"] == ALICE))
            .expect("alice in the dev config");
        alice["forwardTo"] =
            serde_yaml_ng::from_str("[friend@remote.test, gone@remote.test]").expect("yaml");
    });

    let reply = send_from_outside(
        &dev,
        "attacker@victim.test",
        ALICE,
        "From: ceo@example.test\nTo: alice@example.test\nSubject: wire the money\n\nNow.\n",
    );
    assert!(reply.starts_with("250"), "{reply}");
    wait_until("the forward arrives", Duration::from_secs(20), || {
        !peer.received().is_empty()
    });
    let forwarded = &peer.received()[0];
    assert!(
        !forwarded.contains("DKIM-Signature"),
        "signed for an outsider:\n{forwarded}"
    );
    assert!(
        forwarded.contains("Delivered-To: alice@example.test"),
        "{forwarded}"
    );
    let envelope_from = forwarded
        .lines()
        .find_map(|l| l.strip_prefix("X-Peer-From: "))
        .expect("the peer records the envelope sender");
    assert!(
        envelope_from.starts_with("SRS0=")
            && envelope_from.ends_with("=victim.test=attacker@example.test"),
        "{envelope_from}"
    );
    // The copy to gone@ was refused for good: logged, reported to no one.
    wait_until("the queue is done", Duration::from_secs(30), || {
        queued_replies(&dev).is_empty()
            && std::fs::read_dir(dev.data.join("queue"))
                .map(|d| d.count() == 0)
                .unwrap_or(true)
    });
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(
        peer.received().len(),
        1,
        "a report went out to the forged sender"
    );
    for mailbox in [ALICE, "bob@example.test"] {
        assert!(
            dev.messages(mailbox)
                .iter()
                .all(|m| !m.contains("delivery-status")),
            "a report reached {mailbox}"
        );
    }

    // Loops: one already delivered to a forwarding mailbox, and one with too many hops.
    let looped = send_from_outside(
        &dev,
        "someone@victim.test",
        ALICE,
        "Delivered-To: alice@example.test\nFrom: someone@victim.test\nSubject: again\n\nx\n",
    );
    assert!(looped.starts_with("554 5.4.6"), "{looped}");
    let hops = "Received: from a by b; Mon, 30 Nov 2026 00:00:00 +0000\n".repeat(51);
    let far = send_from_outside(
        &dev,
        "someone@victim.test",
        "bob@example.test",
        &format!("{hops}From: someone@victim.test\nSubject: far\n\nx\n"),
    );
    assert!(far.starts_with("554 5.4.6"), "{far}");
    assert!(dev.messages("bob@example.test").is_empty());
}

/// A test CA and certificates it signs, as PEM files in `dir`: `ca.pem`, and `<name>.pem` /
/// `<name>.key` for each name.
fn test_pki(dir: &Path, names: &[&str]) {
    use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
    let ca_key = KeyPair::generate().expect("key");
    let mut ca = CertificateParams::new(Vec::<String>::new()).expect("params");
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.distinguished_name
        .push(rcgen::DnType::CommonName, "kubemail outbound test CA");
    let ca_cert = ca.self_signed(&ca_key).expect("CA");
    std::fs::write(dir.join("ca.pem"), ca_cert.pem()).expect("write");
    let issuer = Issuer::new(ca, ca_key);
    for name in names {
        let key = KeyPair::generate().expect("key");
        let cert = CertificateParams::new(vec![name.to_string()])
            .expect("params")
            .signed_by(&key, &issuer)
            .expect("signed");
        std::fs::write(dir.join(format!("{name}.pem")), cert.pem()).expect("write");
        std::fs::write(dir.join(format!("{name}.key")), key.serialize_pem()).expect("write");
    }
}

/// RFC 8461 both ways: dnsmasq publishes `_mta-sts.remote.test`, the recipient domain's own
/// kubemail runtime serves its policy (`mode: enforce`, `mx: mx.remote.test`) over HTTPS with
/// a certificate from a test CA (curl fetches it too), the sending runtime trusts that CA
/// (`SSL_CERT_FILE`), and the MX (aiosmtpd) offers STARTTLS. With a
/// certificate for another name the message is not sent, not even in the clear: it waits, and
/// the queue says why. With the right certificate it is delivered, over TLS.
#[test]
fn an_enforced_mta_sts_policy_sends_nothing_to_an_mx_without_a_valid_certificate() {
    let tmp = tempfile::tempdir().expect("tmp");
    let (mx_ip, policy_ip) = ("127.0.0.41", "127.0.0.42");
    let pki = tmp.path().join("pki");
    std::fs::create_dir_all(&pki).expect("dir");
    test_pki(
        &pki,
        &["mta-sts.remote.test", "mx.remote.test", "elsewhere.example"],
    );
    let mut records = mx_records("remote.test", mx_ip);
    records.push(format!("--host-record=mta-sts.remote.test,{policy_ip}"));
    records.push("--txt-record=_mta-sts.remote.test,v=STSv1; id=20261207".into());
    let dns = Dns::start(&records);
    // The recipient domain's own kubemail runtime serves its policy: only the HTTPS listener,
    // on port 443 of the address its mta-sts name resolves to, with a certificate from the CA.
    let remote = tmp.path().join("remote");
    std::fs::create_dir_all(&remote).expect("dir");
    let remote_config = remote.join("runtime.yaml");
    std::fs::write(
        &remote_config,
        format!(
            "apiVersion: runtime.kubemail.io/v1\nkind: RuntimeConfig\nhostname: mx.remote.test\n\
             domains: [{{name: remote.test}}]\n\
             tls: {{certFile: {}, keyFile: {}}}\n\
             listeners: [{{protocol: https, address: \"{policy_ip}:443\"}}]\n\
             storage: {{path: {}}}\nadvertised: {{mtaStsMode: enforce}}\n",
            pki.join("mta-sts.remote.test.pem").display(),
            pki.join("mta-sts.remote.test.key").display(),
            remote.join("data").display(),
        ),
    )
    .expect("config");
    let _https = common::Spawned(
        Command::new(env!("CARGO_BIN_EXE_mail-runtime"))
            .args(["serve", "--config"])
            .arg(&remote_config)
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .spawn()
            .expect("the recipient's runtime"),
    );
    wait_until(
        "the recipient's HTTPS listener",
        Duration::from_secs(10),
        || std::net::TcpStream::connect((policy_ip, 443)).is_ok(),
    );
    // The policy as any client fetches it.
    let fetched = run(Command::new("curl")
        .args(["-sf", "--cacert"])
        .arg(pki.join("ca.pem"))
        .args(["--resolve", &format!("mta-sts.remote.test:443:{policy_ip}")])
        .arg("https://mta-sts.remote.test/.well-known/mta-sts.txt"));
    assert!(fetched.contains("mode: enforce"), "{fetched}");

    let cert = |name: &str| {
        [
            pki.join(format!("{name}.pem")).display().to_string(),
            pki.join(format!("{name}.key")).display().to_string(),
        ]
    };
    let wrong = cert("elsewhere.example");
    let peer = Peer::start(
        mx_ip,
        25,
        &tmp.path().join("peer"),
        &["--tls", &wrong[0], &wrong[1]],
    );
    let dev = Dev::start_with_env(
        &tmp.path().join("data"),
        &[("SSL_CERT_FILE", &pki.join("ca.pem"))],
    );
    patch_config(&dev, "relay-1", |c| relay_setup(c, &dns));
    submitted(&dev, "friend@remote.test", "policy enforced");
    wait_until(
        "the queue says why the message waits",
        Duration::from_secs(30),
        || {
            queued_replies(&dev)
                .iter()
                .any(|r| r.contains("MTA-STS") && r.contains("certificate"))
        },
    );
    // Several attempts (retries every 1-2 s), none in the clear.
    std::thread::sleep(Duration::from_secs(4));
    assert!(
        peer.received().is_empty(),
        "sent to an MX the policy refuses"
    );
    assert_eq!(queue_files(&dev), 1);
    drop(peer);

    // The MX with a certificate for its name: delivered, over TLS.
    let right = cert("mx.remote.test");
    let peer = Peer::start(
        mx_ip,
        25,
        &tmp.path().join("peer2"),
        &["--tls", &right[0], &right[1]],
    );
    wait_until(
        "delivered under the policy",
        Duration::from_secs(30),
        || !peer.received().is_empty(),
    );
    let received = peer.received();
    assert_eq!(received.len(), 1);
    assert!(received[0].contains("X-Peer-TLS: yes"), "{}", received[0]);
    assert!(received[0].contains("Subject: policy enforced"));
}

/// Two runtimes on one PostgreSQL database share one queue: one of them is killed (SIGKILL)
/// while the next hop holds its deliveries mid-transaction; the other takes its entries over
/// once their lease runs out, and the next hop gets every acknowledged message exactly once.
#[test]
fn a_replica_killed_mid_delivery_leaves_its_queue_to_the_other_and_nothing_is_sent_twice() {
    let tmp = tempfile::tempdir().expect("tmp");
    let db = common::Postgres::start();
    let stall = tmp.path().join("stall");
    std::fs::write(&stall, "").expect("stall file");
    let ip = "127.0.0.35";
    let peer = Peer::start(
        ip,
        2588,
        &tmp.path().join("peer"),
        &["--stall-while", &stall.to_string_lossy()],
    );
    let start_on_db = |name: &str| {
        let dev = Dev::start_with(&tmp.path().join(name), &[], &["--postgres", &db.uri()]);
        patch_config(&dev, "queue-1", |c| {
            c["relay"]["route"] = serde_yaml_ng::from_str(&format!(
                "{{mode: smarthost, smarthost: {{host: {ip}, port: 2588, tls: none}}}}"
            ))
            .expect("yaml");
        });
        dev
    };
    let mut devs = [start_on_db("a"), start_on_db("b")];
    const MESSAGES: usize = 6;
    for n in 0..MESSAGES {
        // Each acknowledged (250) by one of the two before anything else happens.
        submitted(
            &devs[n % 2],
            "customer@anywhere.test",
            &format!("queued-{n}"),
        );
    }
    let queued = || {
        db.psql("SELECT count(*) FROM kubemail_queue")
            .trim()
            .to_string()
    };
    assert_eq!(queued(), MESSAGES.to_string());
    // The runners lease every entry and hang at the next hop; then one that holds some dies.
    wait_until("every entry leased", Duration::from_secs(20), || {
        db.psql("SELECT count(*) FROM kubemail_queue WHERE lease_owner IS NOT NULL")
            .trim()
            == MESSAGES.to_string()
    });
    let owners = db.psql("SELECT DISTINCT lease_owner FROM kubemail_queue");
    let victim = devs
        .iter()
        .position(|d| {
            owners
                .lines()
                .any(|o| o.starts_with(&format!("{}-", d.pid())))
        })
        .expect("a replica holds the leases");
    println!("leases held by: {owners}");
    devs[victim].kill9();
    let killed = Instant::now();
    std::fs::remove_file(&stall).expect("the next hop answers again");
    wait_until("every message delivered", Duration::from_secs(90), || {
        peer.received().len() >= MESSAGES
    });
    let took = killed.elapsed();
    // A little longer: a second copy would show up now.
    std::thread::sleep(Duration::from_secs(3));
    let subjects = common::subjects_of(&peer.received());
    let expected: Vec<String> = (0..MESSAGES).map(|n| format!("queued-{n}")).collect();
    assert_eq!(subjects, expected, "each message exactly once");
    assert_eq!(
        queued(),
        "0",
        "{}",
        db.psql("SELECT id, lease_owner, lease_until, next_attempt, entry FROM kubemail_queue")
    );
    println!(
        "the survivor finished the killed replica's deliveries {took:?} after it died (lease {} s)",
        mail_runtime::outbound::LEASE_SECONDS
    );
}
