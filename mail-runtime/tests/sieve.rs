//! Sieve and ManageSieve against the real runtime, with clients no one here wrote:
//! `sieve-connect` (Debian) uploads, lists, downloads and activates scripts over ManageSieve
//! with STARTTLS; Python's smtplib sends the mail and imaplib reads where it went.
mod common;

use std::process::Command;

use common::{Dev, client_script};

const ALICE: &str = "alice@example.test";
const BOB: &str = "bob@example.test";

/// sieve-connect as `user`, with the password on a pipe (never in argv); returns whether it
/// succeeded and what it printed.
fn sieve_connect(dev: &Dev, user: &str, args: &[&str]) -> (bool, String) {
    use std::io::Write;
    let mut child = Command::new("sieve-connect")
        .args([
            "--server",
            "127.0.0.1",
            "--port",
            &dev.port("managesieve").to_string(),
            "--user",
            user,
            "--notlsverify",
            "--noclearchan",
            "--authmech",
            "PLAIN",
            "--passwordfd",
            "0",
        ])
        .args(args)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("sieve-connect (Debian's sieve-connect package)");
    let mut stdin = child.stdin.take().expect("stdin");
    writeln!(stdin, "{}", dev.password(user)).expect("password");
    drop(stdin);
    let out = child.wait_with_output().expect("sieve-connect ends");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

/// Uploads the file at `path` as `name` for `user`, as sieve-connect's `--upload` does.
fn upload(dev: &Dev, user: &str, path: &std::path::Path, name: &str) -> (bool, String) {
    sieve_connect(
        dev,
        user,
        &[
            "--upload",
            "--localsieve",
            path.to_str().expect("path"),
            "--remotesieve",
            name,
        ],
    )
}

/// Uploads `script` as `name` for alice and makes it active.
fn activate(dev: &Dev, dir: &std::path::Path, name: &str, script: &str) {
    activate_for(dev, ALICE, dir, name, script);
}

/// Uploads `script` as `name` for `user` and makes it active.
fn activate_for(dev: &Dev, user: &str, dir: &std::path::Path, name: &str, script: &str) {
    let file = dir.join(format!("{user}-{name}.sieve"));
    std::fs::write(&file, script).expect("script file");
    let (ok, out) = upload(dev, user, &file, name);
    assert!(ok, "upload: {out}");
    let (ok, out) = sieve_connect(dev, user, &["--activate", "--remotesieve", name]);
    assert!(ok, "activate: {out}");
}

fn mail(args: &[&str]) -> String {
    let mut command = Command::new("python3");
    command.arg(client_script("sieve_mail.py")).args(args);
    common::run(&mut command).trim().to_string()
}

/// `user` sends `subject` to `to` over submission.
fn send(dev: &Dev, user: &str, to: &str, subject: &str, headers: &[&str]) -> String {
    let port = dev.port("submissions").to_string();
    let password = dev.password(user);
    let mut args = vec!["send", "127.0.0.1", &port, user, &password, to, subject];
    args.extend_from_slice(headers);
    mail(&args)
}

/// What `user` has in INBOX and `folders`.
fn folders(dev: &Dev, user: &str, folders: &[&str]) -> serde_json::Value {
    let port = dev.port("imaps").to_string();
    let password = dev.password(user);
    let mut args = vec!["folders", "127.0.0.1", &port, user, &password];
    args.extend_from_slice(folders);
    serde_json::from_str(&mail(&args)).expect("JSON")
}

fn subjects(found: &serde_json::Value) -> Vec<String> {
    found
        .as_array()
        .map(|list| {
            list.iter()
                .map(|m| m["subject"].as_str().unwrap_or_default().to_string())
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn scripts_uploaded_over_managesieve_file_mail_into_folders() {
    let tmp = tempfile::tempdir().expect("tmp");
    let dev = Dev::start(tmp.path());
    let script = r#"require ["fileinto", "mailbox", "imap4flags"];
# Work mail goes to its folder, flagged.
if header :contains "subject" "work" {
    fileinto :create :flags "\\Flagged $Work" "Work";
} elsif header :contains "subject" "rechnung" {
    fileinto :create "Büro/Rechnungen & Belege";
}
"#;
    activate(&dev, tmp.path(), "rules", script);
    let (ok, out) = sieve_connect(&dev, ALICE, &["--list"]);
    assert!(ok && out.contains("\"rules\" ACTIVE"), "{out}");
    // GETSCRIPT gives back what was uploaded.
    let back = tmp.path().join("back.sieve");
    let (ok, out) = sieve_connect(
        &dev,
        ALICE,
        &[
            "--download",
            "--remotesieve",
            "rules",
            "--localsieve",
            back.to_str().expect("path"),
        ],
    );
    assert!(ok, "{out}");
    assert_eq!(std::fs::read_to_string(&back).expect("downloaded"), script);
    // One message from a logged-in user, one from outside on port 25, one that stays.
    assert_eq!(send(&dev, BOB, ALICE, "work report", &[]), "sent");
    let mx = dev.port("smtp").to_string();
    assert_eq!(
        mail(&[
            "mx",
            "127.0.0.1",
            &mx,
            "carol@outside.example.org",
            ALICE,
            "more work"
        ]),
        "sent"
    );
    assert_eq!(send(&dev, BOB, ALICE, "lunch?", &[]), "sent");
    let found = folders(&dev, ALICE, &["Work"]);
    assert_eq!(subjects(&found["INBOX"]), ["lunch?"]);
    assert_eq!(subjects(&found["Work"]), ["work report", "more work"]);
    for m in found["Work"].as_array().expect("work") {
        assert_eq!(m["flags"], serde_json::json!(["$Work", "\\Flagged"]), "{m}");
    }
    // A folder named in UTF-8 by the script is the one IMAP clients see under its modified
    // UTF-7 name (RFC 3501 s5.1.3), not a raw-UTF-8 folder only some clients can open.
    assert_eq!(send(&dev, BOB, ALICE, "Rechnung 42", &[]), "sent");
    let imap_name = mail_runtime::imap::mutf7::encode("Büro/Rechnungen & Belege");
    assert_eq!(imap_name, "B&APw-ro/Rechnungen &- Belege");
    let found = folders(&dev, ALICE, &[&imap_name]);
    assert_eq!(
        subjects(&found[imap_name.as_str()]),
        ["Rechnung 42"],
        "{found}"
    );
    // bob has no script: his mail is untouched by alice's.
    assert_eq!(send(&dev, ALICE, BOB, "work for bob", &[]), "sent");
    assert_eq!(
        subjects(&folders(&dev, BOB, &[])["INBOX"]),
        ["work for bob"]
    );
}

#[test]
fn vacation_answers_a_person_once_and_never_lists_robots_or_bounces() {
    let tmp = tempfile::tempdir().expect("tmp");
    let dev = Dev::start(tmp.path());
    activate(
        &dev,
        tmp.path(),
        "away",
        "require \"vacation\";\nvacation :days 3 :subject \"Out of office\" \"Back on Monday.\";\n",
    );
    assert_eq!(send(&dev, BOB, ALICE, "first", &[]), "sent");
    assert_eq!(send(&dev, BOB, ALICE, "second", &[]), "sent");
    assert_eq!(
        send(
            &dev,
            BOB,
            ALICE,
            "list mail",
            &["List-Id: <team.lists.example.test>"]
        ),
        "sent"
    );
    assert_eq!(
        send(
            &dev,
            BOB,
            ALICE,
            "robot",
            &["Auto-Submitted: auto-generated"]
        ),
        "sent"
    );
    assert_eq!(
        send(&dev, BOB, ALICE, "bulk", &["Precedence: bulk"]),
        "sent"
    );
    let mx = dev.port("smtp").to_string();
    // A bounce: the null sender, whatever its header says.
    assert_eq!(mail(&["mx", "127.0.0.1", &mx, "", ALICE, "bounce"]), "sent");
    // Everything reached alice.
    assert_eq!(subjects(&folders(&dev, ALICE, &[])["INBOX"]).len(), 6);
    // bob got exactly one reply, marked as automatic.
    let bob = folders(&dev, BOB, &[]);
    let replies = bob["INBOX"].as_array().expect("inbox").clone();
    assert_eq!(replies.len(), 1, "{bob}");
    assert_eq!(replies[0]["subject"], "Out of office");
    assert!(
        replies[0]["auto_submitted"]
            .as_str()
            .is_some_and(|a| a.starts_with("auto-replied")),
        "{bob}"
    );
    assert!(
        replies[0]["from"]
            .as_str()
            .is_some_and(|f| f.contains(ALICE)),
        "{bob}"
    );
    let metrics = common::http_get(&dev, "/metrics");
    assert!(
        metrics.contains("kubemail_sieve_replies_total 1"),
        "{metrics}"
    );
}

#[test]
fn vacation_cannot_send_as_someone_else_and_two_auto_repliers_stop() {
    let tmp = tempfile::tempdir().expect("tmp");
    let dev = Dev::start(tmp.path());
    // `:addresses` may widen whom alice answers for; `:from` may still only be her own.
    activate(
        &dev,
        tmp.path(),
        "spoof",
        "require \"vacation\";\nvacation :addresses [\"ceo@bank.example\"] :from \"CEO <ceo@bank.example>\" :subject \"from alice\" \"away\";\n",
    );
    // bob is on vacation too: each answers the other once, and the replies are not answered.
    activate_for(
        &dev,
        BOB,
        tmp.path(),
        "away",
        "require \"vacation\";\nvacation :subject \"from bob\" \"also away\";\n",
    );
    assert_eq!(send(&dev, BOB, ALICE, "hello alice", &[]), "sent");
    std::thread::sleep(std::time::Duration::from_secs(1));
    let bob = folders(&dev, BOB, &[]);
    let alice = folders(&dev, ALICE, &[]);
    // bob: alice's one reply, from alice (not the CEO).
    assert_eq!(subjects(&bob["INBOX"]), ["from alice"], "{bob}");
    let from = bob["INBOX"][0]["from"].as_str().unwrap_or_default();
    assert!(
        from.contains(ALICE) && !from.contains("bank.example"),
        "{from}"
    );
    // alice: bob's message only; bob's vacation never answered alice's automatic reply.
    assert_eq!(subjects(&alice["INBOX"]), ["hello alice"], "{alice}");
}

#[test]
fn hostile_and_broken_scripts_never_cost_a_message() {
    let tmp = tempfile::tempdir().expect("tmp");
    let dev = Dev::start(tmp.path());
    // 10,000 rules: refused at upload with the reason, never stored.
    let huge: String = (0..10_000)
        .map(|i| format!("if header :contains \"subject\" \"w{i}\" {{ discard; }}\n"))
        .collect();
    let file = tmp.path().join("huge.sieve");
    std::fs::write(&file, &huge).expect("file");
    let (ok, out) = upload(&dev, ALICE, &file, "huge");
    assert!(!ok, "{out}");
    assert!(
        out.contains("more than") || out.contains("MAXSIZE"),
        "{out}"
    );
    let (_, out) = sieve_connect(&dev, ALICE, &["--list"]);
    assert!(!out.contains("huge"), "{out}");
    // A script that does not compile is refused too.
    let bad = tmp.path().join("bad.sieve");
    std::fs::write(&bad, "if header :is \"subject\" { keep; }\n").expect("file");
    let (ok, out) = upload(&dev, ALICE, &bad, "bad");
    assert!(!ok && out.contains("line 1"), "{out}");
    // Redirecting to itself, and a redirect chain: the message stays in INBOX.
    activate(
        &dev,
        tmp.path(),
        "loop",
        "redirect \"alice@example.test\";\n",
    );
    assert_eq!(send(&dev, BOB, ALICE, "to myself", &[]), "sent");
    assert_eq!(subjects(&folders(&dev, ALICE, &[])["INBOX"]), ["to myself"]);
    // ereject: every recipient refused it, so the sender hears it in the session.
    activate(
        &dev,
        tmp.path(),
        "refuse",
        "require \"ereject\";\nif header :contains \"subject\" \"spam\" { ereject \"no spam here, thanks\"; }\n",
    );
    let refused = send(&dev, BOB, ALICE, "spam offer", &[]);
    assert!(
        refused.starts_with("refused 550") && refused.contains("no spam here"),
        "{refused}"
    );
    assert_eq!(send(&dev, BOB, ALICE, "fine", &[]), "sent");
    assert_eq!(
        subjects(&folders(&dev, ALICE, &[])["INBOX"]),
        ["to myself", "fine"]
    );
    // Redirect to bob: bob gets it, alice keeps nothing.
    activate(&dev, tmp.path(), "fwd", "redirect \"bob@example.test\";\n");
    assert_eq!(
        mail(&[
            "mx",
            "127.0.0.1",
            &dev.port("smtp").to_string(),
            "carol@outside.example.org",
            ALICE,
            "for bob"
        ]),
        "sent"
    );
    assert_eq!(subjects(&folders(&dev, BOB, &[])["INBOX"]), ["for bob"]);
    assert_eq!(subjects(&folders(&dev, ALICE, &[])["INBOX"]).len(), 2);
    // Four remote redirects per message, 30 messages from outside: the rules' own limit
    // (100 an hour) stops the flood at 25 messages; the other 5 stay in alice's INBOX.
    activate(
        &dev,
        tmp.path(),
        "flood",
        "redirect \"r1@remote.example\"; redirect \"r2@remote.example\";\n\
         redirect \"r3@remote.example\"; redirect \"r4@remote.example\";\n",
    );
    let mx = dev.port("smtp").to_string();
    assert_eq!(
        mail(&[
            "mx",
            "127.0.0.1",
            &mx,
            "carol@outside.example.org",
            ALICE,
            "flood",
            "--count",
            "30"
        ]),
        "sent"
    );
    let inbox = subjects(&folders(&dev, ALICE, &[])["INBOX"]);
    let kept: Vec<&String> = inbox.iter().filter(|s| s.starts_with("flood")).collect();
    assert_eq!(kept.len(), 5, "{inbox:?}");
    let status: serde_json::Value =
        serde_json::from_str(&common::http_get(&dev, "/usage")).expect("usage JSON");
    assert_eq!(status["queueDepth"], 100, "{status}");
}
