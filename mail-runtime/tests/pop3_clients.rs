//! POP3 with real clients: Python's poplib and fetchmail download a mailbox over STLS (110)
//! and implicit TLS (995); messages are gone after QUIT and still there after a dropped
//! connection; one session per maildrop.
mod common;

use std::process::Command;

use common::{Dev, client_script, run};

const BOB: &str = "bob@example.test";

fn deliver(dev: &Dev, subject: &str) {
    run(Command::new("swaks")
        .args(["--server", &format!("127.0.0.1:{}", dev.port("smtp"))])
        .args(["--from", "sender@example.net", "--to", BOB])
        .args(["--header", &format!("Subject: {subject}")]));
}

fn poplib(dev: &Dev, mode: &str, action: &str) -> serde_json::Value {
    let port = dev.port(if mode == "ssl" { "pop3s" } else { "pop3" });
    let out = run(Command::new("python3")
        .arg(client_script("poplib_download.py"))
        .args([
            mode,
            "127.0.0.1",
            &port.to_string(),
            BOB,
            &dev.password(BOB),
            action,
        ]));
    serde_json::from_str(out.trim()).expect("json from poplib_download.py")
}

#[test]
fn poplib_downloads_over_stls_and_995_and_quit_deletes() {
    let tmp = tempfile::tempdir().expect("tmp");
    let dev = Dev::start(tmp.path());
    deliver(&dev, "first");
    deliver(&dev, "second");

    // A dropped connection deletes nothing.
    let dropped = poplib(&dev, "stls", "drop");
    assert_eq!(dropped["subjects"].as_array().map(Vec::len), Some(2));
    assert_eq!(dev.messages(BOB).len(), 2, "a dropped session deleted mail");

    // UIDs are stable across sessions.
    let listed = poplib(&dev, "ssl", "list");
    assert_eq!(listed["uidl"], dropped["uidl"]);
    let capa: Vec<String> = serde_json::from_value(listed["capa"].clone()).expect("capa");
    for expected in ["TOP", "UIDL", "USER", "SASL", "RESP-CODES"] {
        assert!(
            capa.iter().any(|c| c == expected),
            "{expected} missing from {capa:?}"
        );
    }

    // QUIT after DELE removes them.
    let downloaded = poplib(&dev, "ssl", "quit");
    let mut subjects: Vec<String> =
        serde_json::from_value(downloaded["subjects"].clone()).expect("subjects");
    subjects.sort();
    assert_eq!(subjects, ["first", "second"]);
    assert!(
        dev.messages(BOB).is_empty(),
        "messages still on the server after QUIT"
    );
}

#[test]
fn fetchmail_downloads_and_removes_over_stls_and_ssl() {
    let tmp = tempfile::tempdir().expect("tmp");
    let dev = Dev::start(tmp.path());
    let home = tmp.path().join("home");
    std::fs::create_dir_all(&home).expect("home");
    let cert = dev.data.join("tls/tls.crt");
    for (round, (port, tls)) in [
        (dev.port("pop3"), "sslproto 'tls1.2+'"),
        (dev.port("pop3s"), "ssl"),
    ]
    .into_iter()
    .enumerate()
    {
        deliver(&dev, &format!("for fetchmail {round}"));
        let out_file = tmp.path().join(format!("fetched-{round}.mbox"));
        let rc = home.join(".fetchmailrc");
        // The certificate is verified against dev mode's own, by file: no verification is
        // switched off.
        std::fs::write(
            &rc,
            format!(
                "poll 127.0.0.1 service {port} protocol POP3 auth password\n  \
                 user \"{BOB}\" password \"{pw}\" is \"{BOB}\" here\n  \
                 {tls} sslcertck sslcertfile \"{cert}\" sslcommonname \"mail.example.test\"\n  \
                 mda \"cat >> {out}\"\n",
                pw = dev.password(BOB),
                cert = cert.display(),
                out = out_file.display(),
            ),
        )
        .expect("rc");
        let mut perms = std::fs::metadata(&rc).expect("rc").permissions();
        std::os::unix::fs::PermissionsExt::set_mode(&mut perms, 0o600);
        std::fs::set_permissions(&rc, perms).expect("chmod");
        let out = Command::new("fetchmail")
            .args(["--nodetach", "--fetchmailrc"])
            .arg(&rc)
            .env("HOME", &home)
            .output()
            .expect("fetchmail");
        let said = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(out.status.success(), "fetchmail failed:\n{said}");
        let fetched = std::fs::read_to_string(&out_file).expect("fetched mail");
        assert!(
            fetched.contains(&format!("Subject: for fetchmail {round}")),
            "{fetched}"
        );
        assert!(
            dev.messages(BOB).is_empty(),
            "fetchmail left the message on the server"
        );
    }
}

#[test]
fn a_maildrop_is_open_in_one_session_at_a_time() {
    use std::io::{BufRead, BufReader, Write};
    let tmp = tempfile::tempdir().expect("tmp");
    let dev = Dev::start(tmp.path());
    deliver(&dev, "locked");
    // Two implicit-TLS sessions through openssl s_client; the lock is what is checked.
    let session = |script: &str| {
        let mut child = Command::new("openssl")
            .args([
                "s_client",
                "-quiet",
                "-connect",
                &format!("127.0.0.1:{}", dev.port("pop3s")),
            ])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("openssl");
        child
            .stdin
            .as_mut()
            .expect("stdin")
            .write_all(script.as_bytes())
            .expect("write");
        child
    };
    let pw = dev.password(BOB);
    // The first session logs in and stays open (no QUIT yet).
    let mut first = session(&format!("USER {BOB}\r\nPASS {pw}\r\n"));
    let mut first_out = BufReader::new(first.stdout.take().expect("stdout"));
    let mut line = String::new();
    for _ in 0..3 {
        line.clear();
        first_out.read_line(&mut line).expect("read");
    }
    assert!(line.starts_with("+OK maildrop has 1"), "{line}");
    // The second is refused while the first holds the maildrop.
    let second = session(&format!("USER {BOB}\r\nPASS {pw}\r\nQUIT\r\n"));
    let out = second.wait_with_output().expect("second");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("-ERR [IN-USE]"), "{text}");
    let _ = first.kill();
    let _ = first.wait();
}
