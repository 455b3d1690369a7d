//! `mail-runtime migrate`: a Maildir store (made by the runtime through imaplib and smtplib,
//! plus `MIGRATE_MESSAGES` messages dropped into an INBOX as another program would, 2,000 by
//! default) is copied into Debian's PostgreSQL; a dry run writes nothing, a second run copies
//! nothing again, and imaplib sees the same folders, UIDVALIDITYs, UIDs, flags, keywords,
//! dates, sizes and bytes on the Maildir runtime and on a runtime on the database.
mod common;

use std::{path::Path, process::Command, time::Instant};

use common::{Dev, Postgres, client_script, run};

fn migrate(data: &Path, uri_file: &Path, dry_run: bool) -> serde_json::Value {
    migrate_with(data, uri_file, dry_run, &[])
}

fn migrate_with(data: &Path, uri_file: &Path, dry_run: bool, extra: &[&str]) -> serde_json::Value {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_mail-runtime"));
    cmd.args(["migrate", "--data"])
        .arg(data)
        .arg("--postgres-uri-file")
        .arg(uri_file)
        .env("RUST_LOG", "warn")
        .args(extra);
    if dry_run {
        cmd.arg("--dry-run");
    }
    let out = run(&mut cmd);
    let line = out.lines().find(|l| l.starts_with('{')).unwrap_or_default();
    serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {out}"))
}

fn view(dev: &Dev, user: &str, password: &str) -> serde_json::Value {
    let out = run(Command::new("python3")
        .arg(client_script("store_view.py"))
        .arg(dev.port("imaps").to_string())
        .args([user, password]));
    serde_json::from_str(out.trim()).unwrap_or_else(|e| panic!("not JSON ({e}): {out}"))
}

/// Folders, flags, keywords, dates and subscriptions a user makes, with imaplib.
const MAKE: &str = r#"
import imaplib, smtplib, ssl, sys
port, smtp, user, password = sys.argv[1:5]
with smtplib.SMTP("127.0.0.1", int(smtp)) as s:
    for n in range(5):
        s.sendmail("x@elsewhere.test", [user], f"Subject: delivered {n}\r\n\r\nbody {n}\r\n")
c = imaplib.IMAP4_SSL("127.0.0.1", int(port), ssl_context=ssl._create_unverified_context())
c.login(user, password)
c.create("Work/2026")
c.subscribe("Work/2026")
for n in range(3):
    c.append("Work/2026", r"(\Seen $Important)", '"01-Feb-2026 10:00:00 +0000"', f"Subject: kept {n}\r\n\r\nold {n}\r\n".encode())
c.select("INBOX")
c.uid("STORE", "1:2", "+FLAGS", r"(\Flagged \Answered)")
c.uid("STORE", "3", "+FLAGS", "(project-x)")
c.uid("COPY", "1:3", "Archive")
c.uid("STORE", "4", "+FLAGS", r"(\Deleted)")
c.expunge()
c.logout()
"#;

#[test]
fn a_maildir_store_moves_into_postgresql_keeping_uids_flags_and_dates() {
    let count: usize = std::env::var("MIGRATE_MESSAGES")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(2000);
    let tmp = tempfile::tempdir().expect("tmp");
    let data = tmp.path().join("maildir");
    let user = "bob@example.test";
    let password = {
        let dev = Dev::start(&data);
        run(Command::new("python3").args(["-c", MAKE]).args([
            dev.port("imaps").to_string(),
            dev.port("smtp").to_string(),
            user.into(),
            dev.password(user),
        ]));
        dev.password(user)
    };
    // Messages another program dropped in.
    let new = data.join("mail/example.test/bob/new");
    for n in 0..count {
        std::fs::write(
            new.join(format!("1700000000.gen{n}.host")),
            format!(
                "From: gen@elsewhere.test\r\nSubject: generated {n}\r\n\r\n{}\r\n",
                "x".repeat(n % 700)
            ),
        )
        .expect("a message file");
    }
    // The runtime gives them their UIDs when it starts (a dry run reads the store as it is).
    drop(Dev::start(&data));
    let db = Postgres::start();
    let uri_file = tmp.path().join("uri");
    std::fs::write(&uri_file, db.uri()).expect("uri file");

    let dry = migrate(&data, &uri_file, true);
    assert_eq!(dry["dryRun"], true);
    let total = dry["messages"].as_u64().expect("messages");
    assert!(total as usize >= count + 5, "{dry}");
    assert_eq!(dry["copied"], total);
    assert_eq!(
        db.psql("SELECT count(*) FROM kubemail_messages").trim(),
        "0",
        "a dry run wrote"
    );

    let started = Instant::now();
    let done = migrate(&data, &uri_file, false);
    let took = started.elapsed();
    assert_eq!(done["copied"], total, "{done}");
    println!("copied {total} messages in {took:?}: {done}");
    // A keyword a user adds on the database side meanwhile keeps its letter through a rerun.
    db.psql(
        "UPDATE kubemail_folders SET keywords = keywords || '{NewKw}' WHERE name = 'Work/2026'",
    );
    let again = migrate(&data, &uri_file, false);
    assert!(
        db.psql("SELECT keywords FROM kubemail_folders WHERE name = 'Work/2026'")
            .contains("NewKw"),
        "a rerun dropped a keyword of the database's"
    );
    assert_eq!(
        (again["copied"].as_u64(), again["skipped"].as_u64()),
        (Some(0), Some(total)),
        "{again}"
    );

    let maildir = Dev::start(&data);
    let on_db_dir = tempfile::tempdir().expect("tmp");
    let on_db = Dev::start_with(on_db_dir.path(), &[], &["--postgres", &db.uri()]);
    let before = view(&maildir, user, &password);
    let after = view(&on_db, user, &on_db.password(user));
    assert_eq!(
        before["INBOX"]["messages"].as_array().map(Vec::len),
        Some(total as usize - 3 - 3),
        "INBOX as the Maildir runtime shows it"
    );
    for folder in ["INBOX", "Archive", "Work/2026", "Sent"] {
        assert_eq!(
            before[folder], after[folder],
            "{folder} differs after the move"
        );
    }
    assert_eq!(before, after);
    assert!(
        after["Work/2026"]["messages"][0][1]
            .as_array()
            .expect("flags")
            .iter()
            .any(|f| f == "$Important")
    );

    // And back: the database into a new Maildir store, seen the same by imaplib.
    let back = tmp.path().join("back");
    let copied = migrate_with(&back, &uri_file, false, &["--to-maildir"]);
    assert_eq!(copied["copied"], total, "{copied}");
    let returned = Dev::start(&back);
    let back_view = view(&returned, user, &returned.password(user));
    for folder in ["INBOX", "Archive", "Work/2026"] {
        assert_eq!(
            after[folder], back_view[folder],
            "{folder} differs after the way back"
        );
    }

    // A message expunged in the database after the copy (as a user on the new store would):
    // a rerun leaves that folder alone instead of bringing the message back.
    db.psql(
        "WITH f AS (SELECT id FROM kubemail_folders WHERE mailbox = 'bob@example.test' AND name = 'Archive') \
         DELETE FROM kubemail_messages WHERE folder_id = (SELECT id FROM f) AND uid = 1",
    );
    db.psql(
        "UPDATE kubemail_folders SET highest_modseq = highest_modseq + 1 \
         WHERE mailbox = 'bob@example.test' AND name = 'Archive'",
    );
    let rerun = migrate(&data, &uri_file, false);
    assert_eq!(
        (rerun["copied"].as_u64(), rerun["changedSince"].as_u64()),
        (Some(0), Some(1)),
        "{rerun}"
    );
}
