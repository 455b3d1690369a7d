//! Store faults as a user would meet them, checked with Python's imaplib and poplib:
//! - SIGKILLs of the runtime while an IMAP client APPENDs and EXPUNGEs and a POP3 client deletes
//!   at QUIT (the UPDATE state): after restart every acknowledged change holds, nothing
//!   acknowledged is lost, no message is half-written and no UID changes or comes back.
//! - the folder's UID file deleted or garbled while the runtime is down: every message is still
//!   there under its UID, with a new UIDVALIDITY so clients resynchronise.
mod common;

use std::{
    collections::{BTreeMap, BTreeSet},
    path::Path,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use common::{Dev, KillClock, client_script, run};

const ALICE: &str = "alice@example.test";
const BOB: &str = "bob@example.test";

fn journal(path: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).expect("a journal line"))
        .collect()
}

/// The mailbox as imaplib sees it: UIDVALIDITY and `uid -> (id, intact)`.
fn list(dev: &Dev, address: &str) -> (u64, BTreeMap<u64, (Option<u64>, bool)>) {
    let out = run(Command::new("python3")
        .arg(client_script("crash_mailer.py"))
        .args(["list", "127.0.0.1", &dev.port("imaps").to_string(), address])
        .arg(dev.password(address)));
    let json: serde_json::Value = serde_json::from_str(out.trim()).expect("list JSON");
    let messages = json["messages"]
        .as_array()
        .expect("messages")
        .iter()
        .map(|m| {
            (
                m["uid"].as_u64().expect("uid"),
                (m["id"].as_u64(), m["intact"].as_bool().expect("intact")),
            )
        })
        .collect();
    (json["uidvalidity"].as_u64().expect("uidvalidity"), messages)
}

fn spawn_client(args: &[String]) -> Child {
    Command::new("python3")
        .arg(client_script("crash_mailer.py"))
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("python3 runs")
}

fn wait_for_lines(path: &Path, at_least: usize) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while journal(path).len() < at_least {
        assert!(
            Instant::now() < deadline,
            "{} made no progress",
            path.display()
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn sigkills_during_imap_append_expunge_and_pop3_update_lose_nothing_acknowledged() {
    let tmp = tempfile::tempdir().expect("tmp");
    let imap_journal = tmp.path().join("imap.journal");
    let pop_journal = tmp.path().join("pop.journal");
    let mut clock = KillClock::new();
    let kills = 10;
    for round in 0..kills {
        let mut dev = Dev::start(&tmp.path().join("data"));
        let first_id = (round * 10_000 + 1).to_string();
        let imap = spawn_client(&[
            "imap".into(),
            "127.0.0.1".into(),
            dev.port("imaps").to_string(),
            ALICE.into(),
            dev.password(ALICE),
            imap_journal.display().to_string(),
            first_id.clone(),
        ]);
        let pop = spawn_client(&[
            "pop3".into(),
            "127.0.0.1".into(),
            dev.port("pop3s").to_string(),
            dev.port("smtp").to_string(),
            BOB.into(),
            dev.password(BOB),
            pop_journal.display().to_string(),
            first_id,
        ]);
        // Kill once both clients are at work, at a moment that differs from round to round.
        wait_for_lines(&imap_journal, journal(&imap_journal).len() + 1);
        wait_for_lines(&pop_journal, journal(&pop_journal).len() + 1);
        let wait = clock.next_ms(20, 300);
        std::thread::sleep(Duration::from_millis(wait));
        dev.kill9();
        for client in [imap, pop] {
            let out = client.wait_with_output().expect("client ends");
            assert!(
                out.status.success(),
                "a client failed for another reason than the kill:\n{}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        println!("round {round}: killed {wait} ms after both clients were at work");
    }

    let dev = Dev::start(&tmp.path().join("data"));

    // IMAP: every APPEND answered OK is there under its UID unless its EXPUNGE was answered OK.
    // An EXPUNGE the kill cut off (sent, never answered) may or may not have happened: that
    // message may be missing, nothing else (CI hit the kill between the removal and the OK).
    let entries = journal(&imap_journal);
    let mut expected = BTreeMap::new();
    let mut expunged = BTreeSet::new();
    let mut in_flight = BTreeSet::new();
    let mut validities = BTreeSet::new();
    for e in &entries {
        let uid = e["uid"].as_u64().expect("uid");
        match e["op"].as_str() {
            Some("append") => {
                expected.insert(uid, e["id"].as_u64().expect("id"));
                validities.insert(e["uidvalidity"].as_u64().expect("validity"));
            }
            Some("expunging") => {
                in_flight.insert(uid);
            }
            Some("expunge") => {
                expected.remove(&uid);
                expunged.insert(uid);
                in_flight.remove(&uid);
            }
            other => panic!("unexpected journal entry {other:?}"),
        }
    }
    let (validity, stored) = list(&dev, ALICE);
    assert_eq!(
        validities.len(),
        1,
        "UIDVALIDITY changed across kills: {validities:?}"
    );
    assert!(validities.contains(&validity));
    let mut lost = Vec::new();
    for (uid, id) in &expected {
        match stored.get(uid) {
            Some((Some(found), true)) if found == id => {}
            None if in_flight.contains(uid) => {}
            other => lost.push((uid, id, other)),
        }
    }
    assert!(
        lost.is_empty(),
        "acknowledged APPENDs missing or changed: {lost:?}"
    );
    let back: Vec<_> = expunged.iter().filter(|u| stored.contains_key(u)).collect();
    assert!(back.is_empty(), "acknowledged EXPUNGEs came back: {back:?}");
    let broken: Vec<_> = stored.iter().filter(|(_, (_, ok))| !ok).collect();
    assert!(broken.is_empty(), "half-written messages: {broken:?}");
    let highest_issued = entries.iter().filter_map(|e| e["uid"].as_u64()).max();
    // A new message gets a UID above every one handed out before (none is reused).
    let out = run(Command::new("swaks")
        .args(["--server", &format!("127.0.0.1:{}", dev.port("smtp"))])
        .args(["--from", "after@example.net", "--to", ALICE])
        .args(["--header", "Subject: after the kills"]));
    assert!(out.contains("250"), "{out}");
    let (_, after) = list(&dev, ALICE);
    let newest = after.keys().max().copied();
    assert!(newest > highest_issued, "{newest:?} <= {highest_issued:?}");

    // POP3: every message delivered (250) is in the maildrop unless its session reached QUIT
    // after DELE (a QUIT whose +OK the kill swallowed may or may not have deleted: RFC 1939
    // leaves that to the UPDATE state); what is there is whole.
    let entries = journal(&pop_journal);
    let mut left = BTreeSet::new();
    for e in &entries {
        match e["op"].as_str() {
            Some("delivered") => {
                left.insert(e["id"].as_u64().expect("id"));
            }
            Some("quitting" | "deleted") => {
                for id in e["ids"].as_array().expect("ids") {
                    left.remove(&id.as_u64().expect("id"));
                }
            }
            other => panic!("unexpected journal entry {other:?}"),
        }
    }
    let (_, drop) = list(&dev, BOB);
    let present: BTreeSet<u64> = drop.values().filter_map(|(id, _)| *id).collect();
    let missing: Vec<_> = left.difference(&present).collect();
    assert!(
        missing.is_empty(),
        "delivered, never marked for deletion, but gone: {missing:?}"
    );
    let deleted_back: Vec<_> = entries
        .iter()
        .filter(|e| e["op"] == "deleted")
        .flat_map(|e| e["ids"].as_array().cloned().unwrap_or_default())
        .filter_map(|id| id.as_u64())
        .filter(|id| present.contains(id))
        .collect();
    assert!(
        deleted_back.is_empty(),
        "deleted at QUIT (+OK) but back: {deleted_back:?}"
    );
    assert!(drop.values().all(|(_, ok)| *ok), "half-written: {drop:?}");

    let appends = expected.len() + expunged.len();
    let quits = entries.iter().filter(|e| e["op"] == "deleted").count();
    println!(
        "{kills} SIGKILLs: {appends} APPENDs and {} EXPUNGEs acknowledged, {} SMTP deliveries \
         and {quits} POP3 QUITs; 0 lost, 0 resurrected, 0 half-written",
        expunged.len(),
        entries.iter().filter(|e| e["op"] == "delivered").count()
    );
    assert!(
        appends > kills && quits > 0,
        "too little work to prove anything"
    );
}

#[test]
fn a_deleted_or_garbled_uid_file_keeps_every_message_and_uid_under_a_new_uidvalidity() {
    for damage in ["deleted", "garbled"] {
        let tmp = tempfile::tempdir().expect("tmp");
        let data = tmp.path().join("data");
        let dev = Dev::start(&data);
        for n in 1..=5 {
            let out = run(Command::new("swaks")
                .args(["--server", &format!("127.0.0.1:{}", dev.port("smtp"))])
                .args(["--from", "sender@example.net", "--to", ALICE])
                .args(["--header", &format!("Subject: crash-imap {n}")]));
            assert!(out.contains("250"), "{out}");
        }
        let (validity, before) = list(&dev, ALICE);
        assert_eq!(before.len(), 5);
        drop(dev);

        let file = data.join("mail/example.test/alice/kubemail-uidvalidity");
        match damage {
            "deleted" => std::fs::remove_file(&file).expect("remove"),
            _ => std::fs::write(&file, b"\xde\xad not a number\n").expect("garble"),
        }
        std::thread::sleep(Duration::from_millis(1100));
        let dev = Dev::start(&data);
        let (new_validity, after) = list(&dev, ALICE);
        assert!(
            new_validity > validity,
            "{damage}: {validity} -> {new_validity}"
        );
        let ids = |m: &BTreeMap<u64, (Option<u64>, bool)>| {
            m.iter()
                .map(|(uid, (id, _))| (*uid, *id))
                .collect::<Vec<_>>()
        };
        assert_eq!(
            ids(&after),
            ids(&before),
            "{damage}: messages or UIDs changed"
        );
    }
}
