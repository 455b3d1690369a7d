//! Screening of mail from outside on port 25, with Python's smtplib connecting from several
//! loopback addresses: DNS lists served by dnsmasq (a listed client refused at RCPT, an
//! unlisted one and an allowlisted one accepted), greylisting (451, then accepted after the
//! delay; a logged-in user never waits), a client that talks before the banner, and HELO
//! checks.
mod common;

use std::process::Command;

use common::{Dev, client_script, patch_config};
use kubemail_e2e::Dns;
use kubemail_e2e::Scanners;

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

/// swaks from outside on port 25; what it printed, and whether it ended with 250.
fn swaks_mx(dev: &Dev, args: &[&str]) -> (bool, String) {
    let out = Command::new("swaks")
        .args(["--server", &format!("127.0.0.1:{}", dev.port("smtp"))])
        .args(["--from", "sender@outside.example.org", "--to", ALICE])
        .args(args)
        .output()
        .expect("swaks");
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    (out.status.success(), text)
}

#[test]
fn clamd_refuses_infected_mail_and_its_absence_follows_the_policy() {
    let tmp = tempfile::tempdir().expect("tmp");
    let clamd = Scanners::start("clamd").expect("clamd");
    let dev = Dev::start(&tmp.path().join("data"));
    let port = clamd.port("clamd");
    patch_config(&dev, "clamd", |c| {
        c["inbound"]["clamd"] = serde_yaml_ng::from_str(&format!(
            "{{address: \"127.0.0.1:{port}\", timeoutSeconds: 10}}"
        ))
        .expect("yaml");
    });
    // In the body, and base64-encoded in an attachment: refused with the signature's name.
    let (ok, out) = swaks_mx(&dev, &["--body", "hello KUBEMAIL-MALWARE-TEST bye"]);
    assert!(!ok && out.contains("554 5.7.1"), "{out}");
    assert!(out.contains("Kubemail.Test.Malware"), "{out}");
    let attachment = tmp.path().join("invoice.bin");
    std::fs::write(&attachment, b"\x00\x01 KUBEMAIL-MALWARE-TEST \x02").expect("file");
    let (ok, out) = swaks_mx(&dev, &["--attach", &format!("@{}", attachment.display())]);
    assert!(!ok && out.contains("Kubemail.Test.Malware"), "{out}");
    // A clean message passes.
    let (ok, out) = swaks_mx(&dev, &["--body", "just a letter"]);
    assert!(ok, "{out}");
    // clamd down: the sender is asked to come back (nothing unscanned gets in) ...
    clamd.stop("clamd");
    let (ok, out) = swaks_mx(&dev, &["--body", "while clamd is down"]);
    assert!(!ok && out.contains("451 4.7.1"), "{out}");
    // ... or, as configured, the message is taken unscanned.
    patch_config(&dev, "clamd-open", |c| {
        c["inbound"]["clamd"]["acceptOnFailure"] = true.into();
    });
    let (ok, out) = swaks_mx(&dev, &["--body", "taken unscanned"]);
    assert!(ok, "{out}");
    assert_eq!(
        dev.messages(ALICE).len(),
        2,
        "the clean one and the unscanned one"
    );
}

/// The messages in a folder of a mailbox, read from its Maildir.
fn folder_messages(dev: &Dev, address: &str, folder: &str) -> Vec<String> {
    let dir = dev.maildir(address).join(format!(".{folder}"));
    ["new", "cur"]
        .iter()
        .filter_map(|sub| std::fs::read_dir(dir.join(sub)).ok())
        .flatten()
        .flatten()
        .filter_map(|e| std::fs::read_to_string(e.path()).ok())
        .collect()
}

#[test]
fn rspamd_rejects_gtube_quarantines_spam_and_its_absence_follows_the_policy() {
    let tmp = tempfile::tempdir().expect("tmp");
    let rspamd = Scanners::start("rspamd").expect("rspamd");
    let dev = Dev::start(&tmp.path().join("data"));
    let url = format!("http://127.0.0.1:{}", rspamd.port("rspamd"));
    let controller = format!("http://127.0.0.1:{}", rspamd.port("controller"));
    // The controller learns only with its password, which the runtime reads from a file (a
    // mounted Secret in a pod).
    let password_file = tmp.path().join("rspamd-password");
    std::fs::write(&password_file, format!("{}\n", rspamd.password())).expect("password");
    patch_config(&dev, "rspamd", |c| {
        c["inbound"]["rspamd"] = serde_yaml_ng::from_str(&format!(
            "{{url: \"{url}\", controllerUrl: \"{controller}\", timeoutSeconds: 20, \
             controllerPasswordFile: \"{}\"}}",
            password_file.display()
        ))
        .expect("yaml");
    });
    // GTUBE: refused in the session with rspamd's reason.
    let gtube = "XJS*C4JDBQADN1.NSBN3*2IDNEN*GTUBE-STANDARD-ANTI-UBE-TEST-EMAIL*C.34X";
    let (ok, out) = swaks_mx(&dev, &["--body", gtube]);
    assert!(!ok && out.contains("550 5.7.1"), "{out}");
    assert!(out.contains("Gtube"), "{out}");
    // A sender with a control character (an outside tester's way past the filter: the check
    // request failed to build, which counted as an outage) is checked all the same.
    let (ok, out) = swaks_mx(
        &dev,
        &["--from", "\"x\u{1}y\"@outside.example.org", "--body", gtube],
    );
    assert!(!ok && out.contains("550 5.7.1"), "{out}");
    // Spam rspamd would mark: taken, kept in Junk, with the headers that say why.
    // (Bodies long enough for rspamd's classifier to learn from them below.)
    let words = "the quarterly planning meeting moves to thursday afternoon because the \
                 projector in the small room is broken again and facilities promised a fix";
    let (ok, out) = swaks_mx(
        &dev,
        &[
            "--header",
            "Subject: cheap pills today",
            "--add-header",
            "X-Spam-Status: No, score=-10.00",
            "--body",
            words,
        ],
    );
    assert!(ok, "{out}");
    let junk = folder_messages(&dev, ALICE, "Junk");
    assert_eq!(junk.len(), 1, "{junk:?}");
    assert!(
        junk[0].contains("X-Spam-Status: Yes") && junk[0].contains("KUBEMAIL_SPAMMY"),
        "{}",
        junk[0]
    );
    // The sender's own "X-Spam-Status: No" is gone: only the filter's verdict is there.
    assert!(!junk[0].contains("score=-10.00"), "{}", junk[0]);
    // A clean message: INBOX, marked as checked.
    let (ok, out) = swaks_mx(
        &dev,
        &[
            "--header",
            "Subject: minutes of the meeting",
            "--body",
            words,
        ],
    );
    assert!(ok, "{out}");
    let inbox = dev.messages(ALICE);
    assert_eq!(inbox.len(), 1, "{inbox:?}");
    assert!(inbox[0].contains("X-Spam-Status: No"), "{}", inbox[0]);
    // Verdicts and scan times are counted by stage.
    let metrics = common::http_get(&dev, "/metrics");
    for line in [
        r#"kubemail_filter_verdicts_total{stage="rspamd",verdict="reject"} 2"#,
        r#"kubemail_filter_verdicts_total{stage="rspamd",verdict="add header"} 1"#,
        r#"kubemail_filter_verdicts_total{stage="rspamd",verdict="no action"} 1"#,
        r#"kubemail_filter_duration_seconds_count{stage="rspamd"} 4"#,
    ] {
        assert!(metrics.contains(line), "{line} missing from:\n{metrics}");
    }
    // bob opted out of quarantine: his spam stays in INBOX, marked; a threshold of his own
    // would move mail rspamd lets through.
    patch_config(&dev, "bob-spam", |c| {
        for m in c["mailboxes"].as_sequence_mut().expect("mailboxes") {
            if m["address"] == "bob@example.test" {
                m["spam"] = serde_yaml_ng::from_str("{quarantine: false}").expect("yaml");
            }
        }
    });
    let (ok, out) = swaks_mx(
        &dev,
        &[
            "--to",
            "bob@example.test",
            "--header",
            "Subject: cheap pills for bob",
            "--body",
            words,
        ],
    );
    assert!(ok, "{out}");
    let bob = dev.messages("bob@example.test");
    assert_eq!(bob.len(), 1, "{bob:?}");
    assert!(bob[0].contains("X-Spam-Status: Yes"), "{}", bob[0]);
    assert!(folder_messages(&dev, "bob@example.test", "Junk").is_empty());
    // Learning: alice moves the clean message into Junk (spam learned), then the spam one
    // out of it (ham learned), with imaplib's MOVE; rspamd's statistics count both.
    assert_eq!(rspamd.learned(), 0);
    let moved = common::run(
        Command::new("python3")
            .arg(client_script("imap_move.py"))
            .args(["127.0.0.1", &dev.port("imaps").to_string(), ALICE])
            .arg(dev.password(ALICE))
            .args(["INBOX", "Junk", "Junk", "INBOX"]),
    );
    assert!(moved.contains("moved 2"), "{moved}");
    let learned = |n: u64| {
        let start = std::time::Instant::now();
        while rspamd.learned() < n {
            assert!(
                start.elapsed() < std::time::Duration::from_secs(20),
                "rspamd learned {} of {n}",
                rspamd.learned()
            );
            std::thread::sleep(std::time::Duration::from_millis(200));
        }
    };
    learned(2);
    // The Junk and Not Junk buttons of a client that keeps mail where it is (Thunderbird's
    // $Junk and $NotJunk keywords, set with imaplib's UID STORE) teach too.
    let letters = [
        (
            "weekly newsletter",
            "our spring collection of garden furniture arrives in stores \
                               next week with discounts on every bench chair table and parasol",
        ),
        (
            "team lunch",
            "the team lunch on friday is at the noodle place around the corner from \
                        the station so please tell me by wednesday whether you can come along",
        ),
        (
            "lottery winner",
            "congratulations your email address was drawn as the lucky winner \
                            of our international online lottery send your bank details today",
        ),
    ];
    for (subject, body) in letters {
        let (ok, out) = swaks_mx(
            &dev,
            &["--header", &format!("Subject: {subject}"), "--body", body],
        );
        assert!(ok, "{out}");
    }
    let mark = |subject: &str, change: &str| {
        let marked = common::run(
            Command::new("python3")
                .arg(client_script("imap_mark.py"))
                .args(["127.0.0.1", &dev.port("imaps").to_string(), ALICE])
                .arg(dev.password(ALICE))
                .args(["INBOX", subject, change]),
        );
        assert!(marked.contains("marked 1"), "{marked}");
    };
    mark("weekly newsletter", "+$Junk");
    learned(3);
    mark("team lunch", "+$NotJunk");
    learned(4);
    // With a wrong password (the file is read at each learning) nothing is learned, and the
    // failure is counted.
    std::fs::write(&password_file, "not-the-password\n").expect("password");
    mark("lottery winner", "+$Junk");
    let start = std::time::Instant::now();
    while !common::http_get(&dev, "/metrics")
        .contains(r#"kubemail_filter_verdicts_total{stage="rspamd",verdict="learn-failed"} 1"#)
    {
        assert!(
            start.elapsed() < std::time::Duration::from_secs(20),
            "no failed learning counted"
        );
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    assert_eq!(rspamd.learned(), 4);
    // rspamd down: asked to come back, nothing lost; or, as configured, taken unchecked.
    rspamd.stop("rspamd");
    let (ok, out) = swaks_mx(&dev, &["--header", "Subject: while rspamd is down"]);
    assert!(!ok && out.contains("451 4.7.1"), "{out}");
    patch_config(&dev, "rspamd-open", |c| {
        c["inbound"]["rspamd"]["acceptOnFailure"] = true.into();
    });
    let (ok, out) = swaks_mx(&dev, &["--header", "Subject: taken unchecked"]);
    assert!(ok, "{out}");
    // The spam message moved back, the three marked ones (marks move nothing), and the one
    // taken unchecked.
    assert_eq!(dev.messages(ALICE).len(), 5);
}
