//! IMAP with real clients: Python's imaplib, curl, mbsync (isync) syncing both ways into a
//! local Maildir, mbsync and offlineimap keeping two devices in step while curl changes the
//! server, async-imap's IDLE woken by mail delivered over SMTP, and async-imap's CONDSTORE
//! resync (the way Delta Chat, built on it, syncs flags).
mod common;

use std::{path::Path, process::Command, time::Duration};

use common::{Dev, client_script, run};
use futures::StreamExt;

const BOB: &str = "bob@example.test";

fn deliver(dev: &Dev, subject: &str) {
    run(Command::new("swaks")
        .args(["--server", &format!("127.0.0.1:{}", dev.port("smtp"))])
        .args(["--from", "carol@example.net", "--to", BOB])
        .args(["--h-Subject", subject])
        .args(["--body", &format!("This is {subject}.")]));
}

#[test]
fn imaplib_battery() {
    let tmp = tempfile::tempdir().expect("tmp");
    let dev = Dev::start(tmp.path());
    deliver(&dev, "first");
    deliver(&dev, "second");
    let out = run(Command::new("python3")
        .arg(client_script("imaplib_battery.py"))
        .args([
            "127.0.0.1",
            &dev.port("imap").to_string(),
            &dev.port("imaps").to_string(),
            BOB,
            &dev.password(BOB),
        ]));
    let r: serde_json::Value = serde_json::from_str(out.trim()).expect("json");
    let caps_before: Vec<String> =
        serde_json::from_value(r["caps_before_tls"].clone()).expect("caps");
    assert!(
        caps_before.contains(&"LOGINDISABLED".to_string()),
        "{caps_before:?}"
    );
    assert!(
        r["login_before_tls"]
            .as_str()
            .is_some_and(|s| s.contains("LOGINDISABLED") || s.contains("PRIVACYREQUIRED")),
        "{}",
        r["login_before_tls"]
    );
    let list = r["list"].to_string();
    for folder in ["INBOX", "Sent", "Drafts", "Trash", "Junk", "Archive"] {
        assert!(
            list.contains(&format!("\\\"{folder}\\\"")),
            "{folder} missing: {list}"
        );
    }
    assert_eq!(r["select"], 2);
    assert_eq!(r["subjects"], serde_json::json!(["first", "second"]));
    assert_eq!(
        r["unseen_after_fetch"], "",
        "RFC822 fetch left messages unseen"
    );
    assert_eq!(r["unseen_after_store"], "1");
    assert_eq!(r["search_subject"], "2");
    // COPYUID <uidvalidity> <source UIDs> <target UIDs>
    assert!(
        r["copy"].as_str().is_some_and(|s| s.ends_with(" 1 1")),
        "{}",
        r["copy"]
    );
    assert!(
        r["append"]
            .as_str()
            .is_some_and(|s| s.starts_with("[APPENDUID ")),
        "{}",
        r["append"]
    );
    assert_eq!(r["status_sent"], "\"Sent\" (MESSAGES 1 UNSEEN 0)");
    assert!(r["quota"].to_string().contains("STORAGE"), "{}", r["quota"]);
    assert_eq!(
        r["other_fetch"],
        serde_json::json!(["2 (UID 2 FLAGS (\\Deleted \\Seen))"])
    );
    assert_eq!(r["other_expunge"], serde_json::json!(["2"]));
    // On disk: INBOX lost the expunged message; Archive and Sent hold theirs.
    let inbox = dev.messages(BOB);
    assert_eq!(inbox.len(), 1);
    assert!(inbox[0].contains("Subject: first"));
}

#[test]
fn curl_lists_and_reads_over_993_and_starttls() {
    let tmp = tempfile::tempdir().expect("tmp");
    let dev = Dev::start(tmp.path());
    deliver(&dev, "for curl");
    let user = format!("{BOB}:{}", dev.password(BOB));
    let list = run(Command::new("curl")
        .args(["-sS", "--insecure", "-u", &user])
        .arg(format!("imaps://127.0.0.1:{}/", dev.port("imaps"))));
    assert!(
        list.contains("\"INBOX\"") && list.contains("\\Sent"),
        "{list}"
    );
    let message = run(Command::new("curl")
        .args(["-sS", "--insecure", "--ssl-reqd", "-u", &user])
        .arg(format!("imap://127.0.0.1:{}/INBOX;UID=1", dev.port("imap"))));
    assert!(
        message.contains("Subject: for curl") && message.contains("This is for curl."),
        "{message}"
    );
    let examine = run(Command::new("curl")
        .args(["-sS", "--insecure", "-u", &user, "-X", "EXAMINE INBOX"])
        .arg(format!("imaps://127.0.0.1:{}/", dev.port("imaps"))));
    assert!(examine.contains("1 EXISTS"), "{examine}");
    // Without TLS curl is refused rather than sending the password in the clear.
    let refused = Command::new("curl")
        .args(["-sS", "-u", &user])
        .arg(format!("imap://127.0.0.1:{}/", dev.port("imap")))
        .output()
        .expect("curl");
    assert!(!refused.status.success(), "a plaintext login succeeded");
}

/// `home/mbsyncrc`: Bob's folders, all of them both ways, into a Maildir++ under `local`.
fn write_mbsyncrc(dev: &Dev, home: &Path, local: &Path) {
    std::fs::write(
        home.join("mbsyncrc"),
        format!(
            "IMAPAccount dev\nHost localhost\nPort {port}\nUser {BOB}\nPass {pass}\nSSLType IMAPS\n\
CertificateFile {cert}\n\nIMAPStore remote\nAccount dev\n\nMaildirStore local\nInbox {local}/INBOX\nSubFolders Maildir++\n\nChannel sync\nFar :remote:\nNear :local:\n\
Patterns *\nCreate Both\nExpunge Both\nSyncState *\n",
            port = dev.port("imaps"),
            pass = dev.password(BOB),
            cert = dev.data.join("tls/tls.crt").display(),
            local = local.display(),
        ),
    )
    .expect("mbsyncrc");
}

fn mbsync(home: &Path) -> String {
    // -Dn: the IMAP dialogue on stdout, to see what mbsync chose (COMPRESS among others).
    run(Command::new("mbsync")
        .args(["-Dn", "-c"])
        .arg(home.join("mbsyncrc"))
        .arg("-a")
        .env("HOME", home))
}

/// Local Maildir message files of a folder (mbsync's Maildir++ layout: INBOX at the top).
fn local_files(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for sub in ["cur", "new"] {
        if let Ok(entries) = std::fs::read_dir(dir.join(sub)) {
            out.extend(entries.flatten().map(|e| e.path()));
        }
    }
    out
}

/// `subject -> flag letters` of the messages in a Maildir folder (`cur/` and `new/`).
fn flags_by_subject(dir: &Path) -> std::collections::BTreeMap<String, String> {
    let mut out = std::collections::BTreeMap::new();
    for path in local_files(dir) {
        let Ok(text) = std::fs::read_to_string(&path) else {
            continue;
        };
        let Some(subject) = text
            .lines()
            .find_map(|l| l.strip_prefix("Subject: "))
            .map(str::to_string)
        else {
            continue;
        };
        let name = path.file_name().unwrap_or_default().to_string_lossy();
        let mut flags: Vec<char> = name
            .split_once(":2,")
            .map(|(_, f)| f.chars().filter(char::is_ascii_uppercase).collect())
            .unwrap_or_default();
        flags.sort_unstable();
        out.insert(subject, flags.into_iter().collect());
    }
    out
}

/// Issue 15: two devices with different sync programs (mbsync, offlineimap) and a third
/// session (curl) changing the server meanwhile: each device's own change reaches the other
/// through the server, the third session's flag and expunge reach both, and in the end all
/// three hold the same messages with the same flags in both folders.
#[test]
fn mbsync_and_offlineimap_agree_with_a_third_session() {
    let tmp = tempfile::tempdir().expect("tmp");
    let dev = Dev::start(&tmp.path().join("server"));
    for subject in ["one", "two", "three"] {
        deliver(&dev, subject);
    }
    let user = format!("{BOB}:{}", dev.password(BOB));
    let base = format!("imaps://localhost:{}", dev.port("imaps"));
    let curl = |url: &str, args: &[&str]| {
        run(Command::new("curl")
            .args(["-sS", "--insecure", "-u", &user])
            .args(args)
            .arg(url))
    };
    curl(&format!("{base}/"), &["-X", "CREATE Work"]);
    let four = tmp.path().join("four.eml");
    std::fs::write(
        &four,
        "From: carol@example.net\r\nSubject: four\r\n\r\nWork.\r\n",
    )
    .expect("four");
    curl(
        &format!("{base}/Work"),
        &["-T", four.to_str().expect("utf-8 path")],
    );

    let cert = dev.data.join("tls/tls.crt");
    // Device A: mbsync, Maildir++ under A/Mail (INBOX at A/Mail/INBOX, Work as .Work in it).
    let a = tmp.path().join("A");
    let a_mail = a.join("Mail");
    std::fs::create_dir_all(&a_mail).expect("A");
    write_mbsyncrc(&dev, &a, &a_mail);
    // Device B: offlineimap, one Maildir per folder under B/Mail.
    let b = tmp.path().join("B");
    let b_mail = b.join("Mail");
    std::fs::create_dir_all(&b_mail).expect("B");
    std::fs::write(
        b.join("offlineimaprc"),
        format!(
            "[general]\naccounts = dev\nmetadata = {meta}\n\n[Account dev]\nlocalrepository = local\n\
remoterepository = remote\n\n[Repository local]\ntype = Maildir\nlocalfolders = {local}\n\n\
[Repository remote]\ntype = IMAP\nremotehost = localhost\nremoteport = {port}\nssl = yes\n\
sslcacertfile = {cert}\nremoteuser = {BOB}\nremotepass = {pass}\n",
            meta = b.join("meta").display(),
            local = b_mail.display(),
            port = dev.port("imaps"),
            cert = cert.display(),
            pass = dev.password(BOB),
        ),
    )
    .expect("offlineimaprc");
    let sync_a = || mbsync(&a);
    let sync_b = || {
        run(Command::new("offlineimap")
            .args(["-o", "-u", "basic", "-c"])
            .arg(b.join("offlineimaprc"))
            .env("HOME", &b))
    };
    sync_a();
    sync_b();
    let (a_inbox, a_work) = (a_mail.join("INBOX"), a_mail.join("INBOX/.Work"));
    let (b_inbox, b_work) = (b_mail.join("INBOX"), b_mail.join("Work"));
    assert_eq!(flags_by_subject(&a_inbox).len(), 3, "A's first sync");
    assert_eq!(flags_by_subject(&b_inbox).len(), 3, "B's first sync");
    assert_eq!(flags_by_subject(&b_work).len(), 1, "B's first sync of Work");

    // A flags "one", B reads "two", both offline; the third session answers "four" and
    // deletes "three" on the server.
    let mark = |dir: &Path, subject: &str, letter: char| {
        let path = local_files(dir)
            .into_iter()
            .find(|p| {
                std::fs::read_to_string(p).is_ok_and(|t| t.contains(&format!("Subject: {subject}")))
            })
            .unwrap_or_else(|| panic!("{subject} in {}", dir.display()));
        let name = path
            .file_name()
            .expect("name")
            .to_string_lossy()
            .to_string();
        let (base, flags) = name.split_once(":2,").unwrap_or((&name, ""));
        let mut flags: Vec<char> = flags.chars().chain([letter]).collect();
        flags.sort_unstable();
        flags.dedup();
        let renamed = format!("{base}:2,{}", flags.into_iter().collect::<String>());
        std::fs::rename(&path, dir.join("cur").join(renamed)).expect("mark locally");
    };
    mark(&a_inbox, "one", 'F');
    mark(&b_inbox, "two", 'S');
    curl(
        &format!("{base}/Work"),
        &["-X", "UID STORE 1 +FLAGS (\\Answered)"],
    );
    curl(
        &format!("{base}/INBOX"),
        &["-X", "UID STORE 3 +FLAGS (\\Deleted)"],
    );
    curl(&format!("{base}/INBOX"), &["-X", "EXPUNGE"]);

    // Two rounds: each device's change travels through the server to the other.
    for _ in 0..2 {
        sync_a();
        sync_b();
    }
    let server = (
        flags_by_subject(&dev.maildir(BOB)),
        flags_by_subject(&dev.maildir(BOB).join(".Work")),
    );
    let expected_inbox: std::collections::BTreeMap<String, String> = [
        ("one".to_string(), "F".to_string()),
        ("two".into(), "S".into()),
    ]
    .into();
    // curl's APPEND stores "four" \Seen; the third session answered it.
    let expected_work: std::collections::BTreeMap<String, String> =
        [("four".to_string(), "RS".to_string())].into();
    assert_eq!(server.0, expected_inbox, "server INBOX");
    assert_eq!(server.1, expected_work, "server Work");
    assert_eq!(
        flags_by_subject(&a_inbox),
        expected_inbox,
        "A's INBOX (mbsync)"
    );
    assert_eq!(
        flags_by_subject(&a_work),
        expected_work,
        "A's Work (mbsync)"
    );
    assert_eq!(
        flags_by_subject(&b_inbox),
        expected_inbox,
        "B's INBOX (offlineimap)"
    );
    assert_eq!(
        flags_by_subject(&b_work),
        expected_work,
        "B's Work (offlineimap)"
    );
}

#[test]
fn mbsync_syncs_both_ways() {
    let tmp = tempfile::tempdir().expect("tmp");
    let dev = Dev::start(&tmp.path().join("server"));
    deliver(&dev, "one");
    deliver(&dev, "two");
    deliver(&dev, "three");
    let home = tmp.path().join("home");
    let local = home.join("Mail");
    std::fs::create_dir_all(&local).expect("local");
    write_mbsyncrc(&dev, &home, &local);

    let dialogue = mbsync(&home);
    // mbsync (isync 1.4) turns COMPRESS=DEFLATE on when offered: the rest of its dialogue,
    // the whole sync, went through the server's DEFLATE both ways.
    assert!(
        dialogue.contains("COMPRESS DEFLATE") && dialogue.contains("OK DEFLATE active"),
        "mbsync did not compress: {}",
        &dialogue[..dialogue.len().min(3000)]
    );
    let inbox = local.join("INBOX");
    assert_eq!(
        local_files(&inbox).len(),
        3,
        "first sync did not bring 3 messages"
    );
    for folder in ["Sent", "Drafts", "Trash", "Junk", "Archive"] {
        assert!(
            inbox.join(format!(".{folder}")).join("cur").is_dir(),
            "{folder} was not created locally"
        );
    }

    // Near side: flag "one" (Maildir letter F in the file name). Far side: delete "three".
    let one = local_files(&inbox)
        .into_iter()
        .find(|p| std::fs::read_to_string(p).is_ok_and(|t| t.contains("Subject: one")))
        .expect("one locally");
    let name = one.file_name().expect("name").to_string_lossy().to_string();
    let flagged = match name.split_once(":2,") {
        Some((base, flags)) => format!("{base}:2,F{flags}"),
        None => format!("{name}:2,F"),
    };
    std::fs::rename(&one, inbox.join("cur").join(flagged)).expect("flag locally");
    // Far side: another client (curl) deletes "three" (UID 3) and expunges.
    let user = format!("{BOB}:{}", dev.password(BOB));
    let inbox_url = format!("imaps://localhost:{}/INBOX", dev.port("imaps"));
    for request in ["UID STORE 3 +FLAGS (\\Deleted)", "EXPUNGE"] {
        run(Command::new("curl")
            .args(["-sS", "--insecure", "-u", &user, "-X", request])
            .arg(&inbox_url));
    }
    assert_eq!(
        dev.messages(BOB).len(),
        2,
        "curl's expunge did not remove three"
    );
    let dir = dev.maildir(BOB);

    mbsync(&home);
    // The flag reached the server ...
    let flagged_on_server = ["new", "cur"].iter().any(|sub| {
        std::fs::read_dir(dir.join(sub)).is_ok_and(|d| {
            d.flatten().any(|e| {
                let n = e.file_name().to_string_lossy().to_string();
                n.split_once(":2,").is_some_and(|(_, f)| f.contains('F'))
                    && std::fs::read_to_string(e.path()).is_ok_and(|t| t.contains("Subject: one"))
            })
        })
    });
    assert!(flagged_on_server, "the local flag did not reach the server");
    // ... and the deletion reached the local Maildir.
    let local_subjects: Vec<String> = local_files(&inbox)
        .iter()
        .filter_map(|p| std::fs::read_to_string(p).ok())
        .collect();
    assert_eq!(
        local_subjects.len(),
        2,
        "the server-side deletion did not reach the Maildir"
    );
    assert!(!local_subjects.iter().any(|t| t.contains("Subject: three")));
}

type AsyncSession = async_imap::Session<tokio_rustls::client::TlsStream<tokio::net::TcpStream>>;

/// An async-imap session logged in as Bob over IMAPS.
async fn async_imap_login(dev: &Dev) -> AsyncSession {
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", dev.port("imaps")))
        .await
        .expect("connect");
    let connector = mail_send::smtp::tls::build_tls_connector(true).expect("connector");
    let name = rustls::pki_types::ServerName::try_from("localhost").expect("name");
    let tls = connector.connect(name, tcp).await.expect("TLS");
    let mut client = async_imap::Client::new(tls);
    let _greeting = client.read_response().await;
    client
        .login(BOB, dev.password(BOB))
        .await
        .map_err(|(e, _)| e)
        .expect("login")
}

#[tokio::test]
async fn async_imap_idle_is_woken_by_smtp_delivery() {
    let tmp = tempfile::tempdir().expect("tmp");
    let dev = Dev::start(tmp.path());
    let mut session = async_imap_login(&dev).await;
    session.select("INBOX").await.expect("select");
    let mut idle = session.idle();
    idle.init().await.expect("IDLE");
    let (wait, _stop) = idle.wait_with_timeout(Duration::from_secs(20));
    let port = dev.port("smtp");
    let sent = tokio::task::spawn_blocking(move || {
        let started = std::time::Instant::now();
        run(Command::new("swaks")
            .args(["--server", &format!("127.0.0.1:{port}")])
            .args(["--from", "carol@example.net", "--to", BOB]));
        started
    });
    let woke = wait.await.expect("idle wait");
    let delivered_at = sent.await.expect("swaks");
    let latency = delivered_at.elapsed();
    assert!(
        matches!(woke, async_imap::extensions::idle::IdleResponse::NewData(_)),
        "IDLE ended without news: {woke:?}"
    );
    assert!(
        latency < Duration::from_secs(2),
        "IDLE woke {latency:?} after swaks started"
    );
    let mut session = idle.done().await.expect("DONE");
    let fetched: Vec<_> = session
        .fetch("1", "RFC822.SIZE")
        .await
        .expect("fetch")
        .collect()
        .await;
    assert_eq!(fetched.len(), 1);
    session.logout().await.expect("logout");
}

/// Issue 15, CONDSTORE: a phone on async-imap keeps HIGHESTMODSEQ, and after another device
/// changed a flag, `UID FETCH 1:* (FLAGS) (CHANGEDSINCE n)` brings exactly that message with
/// its new flags and a higher MODSEQ; asked again from there, nothing; after a restart of the
/// server the folder's HIGHESTMODSEQ has not gone back.
#[tokio::test]
async fn async_imap_resyncs_flags_with_condstore() {
    let tmp = tempfile::tempdir().expect("tmp");
    let mut dev = Dev::start(tmp.path());
    for subject in ["one", "two", "three"] {
        deliver(&dev, subject);
    }
    let mut phone = async_imap_login(&dev).await;
    let inbox = phone.select_condstore("INBOX").await.expect("select");
    let synced = inbox
        .highest_modseq
        .expect("HIGHESTMODSEQ in SELECT (CONDSTORE)");

    let mut laptop = async_imap_login(&dev).await;
    laptop.select("INBOX").await.expect("select");
    let stored: Vec<_> = laptop
        .store("2", "+FLAGS (\\Seen \\Flagged)")
        .await
        .expect("store")
        .collect()
        .await;
    assert_eq!(stored.len(), 1);

    let changed: Vec<async_imap::types::Fetch> = phone
        .uid_fetch("1:*", format!("(FLAGS) (CHANGEDSINCE {synced})"))
        .await
        .expect("uid fetch")
        .filter_map(|f| async { f.ok() })
        .collect()
        .await;
    assert_eq!(
        changed.iter().map(|f| f.uid).collect::<Vec<_>>(),
        [Some(2)],
        "{changed:?}"
    );
    let flags: Vec<_> = changed[0].flags().collect();
    assert!(
        flags.contains(&async_imap::types::Flag::Seen)
            && flags.contains(&async_imap::types::Flag::Flagged),
        "{flags:?}"
    );
    let newest = changed[0].modseq.expect("MODSEQ in a CHANGEDSINCE answer");
    assert!(newest > synced);
    let again: Vec<_> = phone
        .uid_fetch("1:*", format!("(FLAGS) (CHANGEDSINCE {newest})"))
        .await
        .expect("uid fetch")
        .collect()
        .await;
    assert!(
        again.is_empty(),
        "nothing changed since {newest}: {again:?}"
    );
    drop((phone, laptop));

    dev.kill9();
    let dev = Dev::start(tmp.path());
    let mut phone = async_imap_login(&dev).await;
    let inbox = phone.select_condstore("INBOX").await.expect("select");
    assert!(
        inbox.highest_modseq.is_some_and(|h| h >= newest),
        "HIGHESTMODSEQ went back after a restart: {:?} < {newest}",
        inbox.highest_modseq
    );
}
