//! The attacks of issue 17, each against the real runtime over real connections, so that what
//! was broken once stays fixed. The other attacks live where their machinery is:
//! - DKIM signing of outside mail, backscatter, mail loops: `outbound.rs`
//!   (`outside_mail_forwarded_out_is_not_signed_nor_bounced_and_loops_stop`);
//! - memory of 1,050 hostile pre-login connections against a pod's limit: `load.rs`;
//! - PROXY headers from untrusted peers: `proxy_protocol.rs`;
//! - BDAT/ENVID and relayed recipient limits: the SMTP transcripts (`src/smtp/transcripts.rs`);
//! - what was already refused (open relay, smuggling, STARTTLS injection, login floods):
//!   `open_relay.rs`, `smuggling.rs`, `imap_transcripts.rs`, `login_flood.rs`; hostile IMAP
//!   input (huge literals and lines): `src/imap/transcripts.rs`.
mod common;

use std::{
    process::Command,
    time::{Duration, Instant},
};

use common::{Dev, Raw, imap::Client, patch_config, proc_status};

const ALICE: &str = "alice@example.test";
const BOB: &str = "bob@example.test";

/// Delivers `message` to `to` on port 25, as any outside sender can.
fn deliver_from_outside(dev: &Dev, to: &str, message: &[u8]) -> String {
    let mut smtp = Raw::connect(dev.port("smtp"));
    assert!(smtp.cmd("EHLO attacker.example").starts_with("250"));
    assert!(
        smtp.cmd("MAIL FROM:<x@attacker.example>")
            .starts_with("250")
    );
    assert!(smtp.cmd(&format!("RCPT TO:<{to}>")).starts_with("250"));
    assert!(smtp.cmd("DATA").starts_with("354"));
    smtp.send_raw(message);
    smtp.cmd("\r\n.")
}

/// Item 1: 100,000 message/rfc822 parts inside each other (4.4 MB, under the size limit) from an
/// unauthenticated sender aborted the whole process at the recipient's first FETCH, and again
/// at every sync after. Now it is served as one opaque part; FETCH, SEARCH and BINARY answer.
#[tokio::test]
async fn one_deeply_nested_email_does_not_stop_the_server() {
    let tmp = tempfile::tempdir().expect("tmp");
    let dev = Dev::start(tmp.path());
    let mut message = b"Subject: matryoshka\r\nContent-Type: message/rfc822\r\n\r\n".to_vec();
    message.extend(b"Content-Type: message/rfc822\r\n\r\n".repeat(100_000));
    message.extend_from_slice(b"Subject: innermost\r\n\r\nthe innermost text\r\n");
    let reply = deliver_from_outside(&dev, BOB, &message);
    assert!(reply.starts_with("250"), "{reply}");
    // The same depth under base64, which mail-parser decodes and copies recursively (a
    // reviewer found it crashing past the first fix).
    use base64::Engine as _;
    let deep = b"Content-Type: message/rfc822\r\n\r\n".repeat(100_000);
    let mut hidden =
        b"Subject: hidden\r\nContent-Type: message/rfc822\r\nContent-Transfer-Encoding: base64\r\n\r\n"
            .to_vec();
    for line in base64::engine::general_purpose::STANDARD
        .encode(&deep)
        .as_bytes()
        .chunks(76)
    {
        hidden.extend_from_slice(line);
        hidden.extend_from_slice(b"\r\n");
    }
    let reply = deliver_from_outside(&dev, BOB, &hidden);
    assert!(reply.starts_with("250"), "{reply}");

    let mut c = Client::login(&dev, BOB).await;
    assert!(c.command("s", "SELECT INBOX").await.contains("s OK"));
    for (tag, command) in [
        ("f1", "FETCH 1:2 (ENVELOPE BODYSTRUCTURE RFC822.SIZE)"),
        (
            "f2",
            "FETCH 1 (BODY.PEEK[1] BODY.PEEK[1.HEADER] BINARY.PEEK[1])",
        ),
        ("f3", "FETCH 1:2 BODY.PEEK[]"),
        ("q1", "SEARCH TEXT innermost"),
        ("q2", "SEARCH BODY innermost SUBJECT matryoshka"),
    ] {
        let answer = c.command(tag, command).await;
        assert!(
            answer.contains(&format!("{tag} OK")),
            "{command}: {answer:.300}"
        );
    }
    c.assert_well_formed();
    // The process is still there, and serves a new session.
    let mut again = Client::login(&dev, BOB).await;
    assert!(again.command("n", "NOOP").await.contains("n OK"));
    assert!(std::path::Path::new(&format!("/proc/{}", dev.pid())).exists());
}

/// Item 2, per connection: before login, literals (each under the 8 KiB limit, but many in one
/// command, or LITERAL+ over it) were buffered up to the 25 MiB message limit, and an
/// AUTHENTICATE response line had no limit at all. Each now ends the connection.
#[tokio::test]
async fn a_stranger_cannot_make_a_session_buffer_more_than_a_command() {
    let tmp = tempfile::tempdir().expect("tmp");
    let dev = Dev::start(tmp.path());
    let pid = dev.pid();

    // Many small literals in one command, and one LITERAL+ over the pre-login limit: the
    // server says BYE and closes (the client may then see a reset before the BYE).
    for attack in [
        {
            let mut flood = b"a LOGIN".to_vec();
            for _ in 0..40 {
                flood.extend_from_slice(b" {8000+}\r\n");
                flood.extend(std::iter::repeat_n(b'x', 8000));
            }
            flood
        },
        b"b LOGIN {100000+}\r\n".to_vec(),
    ] {
        let mut c = Client::connect(&dev).await;
        let _ = c.stream_write(&attack).await;
        let ended = c.command_or_bye("z", "NOOP").await;
        assert!(
            ended.is_empty() || ended.contains("* BYE [TOOBIG]"),
            "the session went on: {ended}"
        );
    }

    // An endless AUTHENTICATE response line.
    let before = proc_status(pid, "VmRSS:");
    let mut c = Client::connect(&dev).await;
    c.send(b"c AUTHENTICATE PLAIN\r\n").await;
    assert!(c.line().await.starts_with('+'));
    let chunk = vec![b'A'; 64 * 1024];
    let mut sent = 0;
    let closed = loop {
        if tokio::time::timeout(Duration::from_secs(5), c.stream_write(&chunk))
            .await
            .map_or(true, |r| r.is_err())
        {
            break true;
        }
        sent += chunk.len();
        if sent > 8 * 1024 * 1024 {
            break false;
        }
    };
    let heard = c.text();
    assert!(
        closed || heard.contains("* BYE [TOOBIG]"),
        "8 MiB of one AUTHENTICATE line were taken; heard {heard:?}"
    );
    let grown = proc_status(pid, "VmRSS:").saturating_sub(before);
    assert!(grown < 16 * 1024, "RSS grew by {grown} KiB");
    // And a real login still works.
    let mut c = Client::login(&dev, BOB).await;
    assert!(c.command("n", "NOOP").await.contains("n OK"));
}

/// Item 5: logged in as alice, `From: bob@...` was accepted and DKIM-signed.
#[test]
fn the_header_from_must_be_the_senders_own_address() {
    let tmp = tempfile::tempdir().expect("tmp");
    let dev = Dev::start(tmp.path());
    let submit = |from_header: &str| {
        let out = Command::new("swaks")
            .args(["--server", &format!("127.0.0.1:{}", dev.port("submission"))])
            .args(["--tls", "--auth", "PLAIN", "--auth-user", ALICE])
            .args(["--auth-password", &dev.password(ALICE)])
            .args(["--from", ALICE, "--to", BOB])
            .args(["--h-From", from_header, "--h-Subject", "hello"])
            .output()
            .expect("swaks");
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let forged = submit("The Boss <bob@example.test>");
    assert!(forged.contains("550 5.7.1"), "{forged}");
    // Behind 200 KiB of other fields, where a check reading only the start would not look.
    let filler: String = (0..4_000)
        .map(|i| format!("X-Filler-{i}: {}\n", "f".repeat(40)))
        .collect();
    let data = tmp.path().join("deep-from.eml");
    std::fs::write(
        &data,
        format!("{filler}From: bob@example.test\nSubject: deep\n\nx\n"),
    )
    .expect("message file");
    let out = Command::new("swaks")
        .args(["--server", &format!("127.0.0.1:{}", dev.port("submission"))])
        .args(["--tls", "--auth", "PLAIN", "--auth-user", ALICE])
        .args(["--auth-password", &dev.password(ALICE)])
        .args(["--from", ALICE, "--to", BOB])
        .args(["--data", &format!("@{}", data.display())])
        .output()
        .expect("swaks");
    let deep = String::from_utf8_lossy(&out.stdout);
    assert!(deep.contains("550 5.7.1"), "{deep:.2000}");
    let own = submit("Alice <alice@example.test>");
    assert!(own.contains("250 2.0.0"), "{own}");
    let bobs: Vec<String> = dev.messages(BOB);
    assert_eq!(bobs.len(), 1, "only the honest message arrives");
    assert!(bobs[0].contains("From: Alice <alice@example.test>"));
}

/// Item 7: EXPUNGE deleted by the UIDs a session had cached as \Deleted, so a message another
/// session had just un-deleted was destroyed. Two sessions race on one message, 20 times:
/// whatever the order, a message whose last flag change removed \Deleted is never lost.
#[tokio::test]
async fn expunge_never_destroys_a_message_another_session_undeleted() {
    let tmp = tempfile::tempdir().expect("tmp");
    let dev = Dev::start(tmp.path());
    let mut a = Client::login(&dev, BOB).await;
    let mut b = Client::login(&dev, BOB).await;
    for round in 0..20 {
        let body = format!("Subject: keep {round}\r\n\r\nkeep me\r\n");
        let append = a
            .command_with_literal("p", "APPEND INBOX", body.as_bytes())
            .await;
        assert!(append.contains("p OK"), "{append}");
        assert!(a.command("s", "SELECT INBOX").await.contains("s OK"));
        assert!(b.command("s", "SELECT INBOX").await.contains("s OK"));
        assert!(
            a.command("d", "STORE 1 +FLAGS (\\Deleted)")
                .await
                .contains("d OK")
        );
        // b takes the flag off while a expunges: sent together.
        b.send(b"u STORE 1 -FLAGS (\\Deleted)\r\n").await;
        a.send(b"e EXPUNGE\r\n").await;
        let undeleted = b.until_tagged("u").await;
        let expunged = a.until_tagged("e").await;
        assert!(undeleted.contains("u OK") && expunged.contains("e OK"));
        // Whoever came second decides: gone only if a's EXPUNGE saw \Deleted on disk.
        let on_disk = dev.messages(BOB);
        if expunged.contains("* 1 EXPUNGE") {
            assert!(
                on_disk.is_empty(),
                "round {round}: reported expunged but kept"
            );
        } else {
            assert_eq!(on_disk.len(), 1, "round {round}: lost without EXPUNGE");
            assert!(
                a.command("c", "STORE 1 +FLAGS.SILENT (\\Deleted)")
                    .await
                    .contains("c OK")
            );
            assert!(a.command("x", "EXPUNGE").await.contains("x OK"));
        }
    }
}

/// Item 8: a STORE naming 15,000 ranges over 2,000 messages took 9 s and 234 MB.
#[tokio::test]
async fn a_sequence_set_of_thousands_of_ranges_costs_no_memory() {
    let tmp = tempfile::tempdir().expect("tmp");
    // 2,000 messages put in the Maildir by another program: the start-up check numbers them.
    let new = tmp.path().join("mail/example.test/bob/new");
    std::fs::create_dir_all(&new).expect("maildir");
    for sub in ["cur", "tmp"] {
        std::fs::create_dir_all(new.with_file_name(sub)).expect("maildir");
    }
    for n in 0..2_000 {
        std::fs::write(
            new.join(format!("1700000000.M{n}P1.restored")),
            format!("Subject: {n}\r\n\r\nx\r\n"),
        )
        .expect("message");
    }
    let dev = Dev::start(tmp.path());
    let mut c = Client::login(&dev, BOB).await;
    let selected = c.command("s", "SELECT INBOX").await;
    assert!(selected.contains("* 2000 EXISTS"), "{selected:.300}");
    let before = proc_status(dev.pid(), "VmHWM:");
    let ranges = vec!["1:*"; 15_000].join(",");
    let started = Instant::now();
    let stored = c
        .command("t", &format!("STORE {ranges} +FLAGS.SILENT (\\Seen)"))
        .await;
    let took = started.elapsed();
    assert!(stored.contains("t OK"), "{stored:.200}");
    let uid = c.command("u", &format!("UID FETCH {ranges} (FLAGS)")).await;
    assert_eq!(uid.matches(" FETCH (").count(), 2_000);
    assert!(uid.contains("u OK"));
    let grown = proc_status(dev.pid(), "VmHWM:").saturating_sub(before);
    println!(
        "STORE and UID FETCH of 15,000 ranges over 2,000 messages: STORE {:.2} s, peak RSS +{} KiB",
        took.as_secs_f64(),
        grown
    );
    assert!(grown < 64 * 1024, "peak RSS grew by {grown} KiB");
}

/// Item 10: a folder named `x/tmp` vanished from LIST (and from the quota) after a restart.
/// Item 11: folders made in one second shared one UIDVALIDITY, and one deleted and made again
/// within a second kept its old UIDVALIDITY with other messages under the same UIDs.
#[tokio::test]
async fn folder_names_and_uidvalidity_hold_across_recreation_and_restart() {
    let tmp = tempfile::tempdir().expect("tmp");
    let mut dev = Dev::start(tmp.path());
    let mut c = Client::login(&dev, BOB).await;
    let validity = |status: &str| -> u64 {
        status
            .split("UIDVALIDITY ")
            .nth(1)
            .and_then(|v| v.split(|ch: char| !ch.is_ascii_digit()).next())
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("no UIDVALIDITY in {status}"))
    };
    let mut seen = Vec::new();
    for folder in ["INBOX", "Sent", "Drafts", "Junk", "Trash"] {
        let status = c
            .command("v", &format!("STATUS {folder} (UIDVALIDITY)"))
            .await;
        seen.push(validity(&status));
    }
    let mut distinct = seen.clone();
    distinct.sort_unstable();
    distinct.dedup();
    assert_eq!(distinct.len(), seen.len(), "shared UIDVALIDITY: {seen:?}");

    assert!(c.command("c", "CREATE Work").await.contains("c OK"));
    let first = validity(&c.command("v", "STATUS Work (UIDVALIDITY)").await);
    assert!(c.command("d", "DELETE Work").await.contains("d OK"));
    assert!(c.command("c", "CREATE Work").await.contains("c OK"));
    let second = validity(&c.command("v", "STATUS Work (UIDVALIDITY)").await);
    assert!(second > first, "{second} after {first}");

    assert!(c.command("c", "CREATE x/tmp").await.contains("c OK"));
    let append = c
        .command_with_literal("a", "APPEND x/tmp", b"Subject: kept\r\n\r\n0123456789\r\n")
        .await;
    assert!(append.contains("a OK"), "{append}");
    drop(c);
    dev.kill9();
    let dev = Dev::start(tmp.path());
    let mut c = Client::login(&dev, BOB).await;
    let list = c.command("l", "LIST \"\" \"*\"").await;
    assert!(list.contains("\"x/tmp\""), "{list}");
    let status = c.command("s", "STATUS x/tmp (MESSAGES)").await;
    assert!(status.contains("MESSAGES 1"), "{status}");
    let quota = c.command("q", "GETQUOTAROOT x/tmp").await;
    assert!(quota.contains("q OK"), "{quota}");
}

/// Item 12: after `suspended: true` was served, an open IMAP session could still SELECT and
/// APPEND. Sessions now end within a second or two of the change, IDLE ones included, and a
/// password change does the same.
#[tokio::test]
async fn suspension_and_password_changes_end_open_sessions() {
    let tmp = tempfile::tempdir().expect("tmp");
    let dev = Dev::start(tmp.path());
    let mut idle = Client::login(&dev, BOB).await;
    assert!(idle.command("s", "SELECT INBOX").await.contains("s OK"));
    idle.send(b"i IDLE\r\n").await;
    assert!(idle.line().await.starts_with('+'));
    let mut busy = Client::login(&dev, BOB).await;
    let mut alice = Client::login(&dev, ALICE).await;
    // bob on POP3 and on submission too, logged in before the change.
    let mut pop3 = Client::connect_tls(&dev, "pop3s").await;
    assert!(pop3.line().await.starts_with("+OK"));
    pop3.send(format!("USER {BOB}\r\nPASS {}\r\n", dev.password(BOB)).as_bytes())
        .await;
    assert!(pop3.line().await.starts_with("+OK"));
    assert!(pop3.line().await.starts_with("+OK"), "POP3 login");
    let mut smtp = Client::connect_tls(&dev, "submissions").await;
    assert!(smtp.line().await.starts_with("220"));
    use base64::Engine as _;
    let plain =
        base64::engine::general_purpose::STANDARD.encode(format!("\0{BOB}\0{}", dev.password(BOB)));
    smtp.send(format!("EHLO c.example\r\nAUTH PLAIN {plain}\r\n").as_bytes())
        .await;
    let mut line = smtp.line().await;
    while line.starts_with("250") {
        line = smtp.line().await;
    }
    assert!(line.starts_with("235"), "SMTP login: {line}");

    let set =
        |c: &mut serde_yaml_ng::Value, address: &str, field: &str, value: serde_yaml_ng::Value| {
            let list = c["mailboxes"].as_sequence_mut().expect("mailboxes");
            for m in list.iter_mut().filter(|m| m["address"] == address) {
                m[field] = value.clone();
            }
        };
    let served_at = Instant::now();
    patch_config(&dev, "suspend-bob", |c| {
        set(c, BOB, "suspended", true.into())
    });
    let bye = tokio::time::timeout(Duration::from_secs(3), idle.line())
        .await
        .expect("the IDLE session hears within 3 s");
    assert!(bye.starts_with("* BYE"), "{bye}");
    println!(
        "IDLE session ended {:.2} s after the suspension was served",
        served_at.elapsed().as_secs_f64()
    );
    // The silent ones hear it without asking (an outside tester found them left open, the
    // POP3 one holding the maildrop's lock).
    let within = Duration::from_secs(3);
    let heard = |what: &str, line: Result<String, tokio::time::error::Elapsed>| {
        line.unwrap_or_else(|_| panic!("the silent {what} session heard nothing within 3 s"))
    };
    let bye = heard("IMAP", tokio::time::timeout(within, busy.line()).await);
    assert!(bye.starts_with("* BYE"), "{bye}");
    let refused = heard("POP3", tokio::time::timeout(within, pop3.line()).await);
    assert!(refused.starts_with("-ERR [AUTH]"), "{refused}");
    let refused = heard("SMTP", tokio::time::timeout(within, smtp.line()).await);
    assert!(refused.starts_with("421 4.7.0"), "{refused}");
    assert!(
        alice.command("n", "NOOP").await.contains("n OK"),
        "others go on"
    );

    // A new password for alice ends her silent session too.
    let hash = mail_runtime::auth::hash_password("a new password");
    patch_config(&dev, "new-password-alice", |c| {
        set(c, ALICE, "passwordHash", hash.into());
    });
    let bye = heard("IMAP", tokio::time::timeout(within, alice.line()).await);
    assert!(bye.starts_with("* BYE"), "{bye}");
}

/// Found by this suite's own probing after the fixes: one outside message of 5 million one-line
/// header fields (20 MB) took one FETCH BODYSTRUCTURE to 666 MiB, past a pod's limit, and every
/// sync did it again. SMTP now refuses a header block over 1 MiB (`552 5.3.4`, Exim's rule); one
/// that is stored anyway (APPENDed, or from before) is served as one opaque part.
#[tokio::test]
async fn a_message_of_millions_of_header_fields_costs_no_memory() {
    let tmp = tempfile::tempdir().expect("tmp");
    let dev = Dev::start(tmp.path());
    let mut bomb = b"Subject: fields\r\n".to_vec();
    bomb.extend(b"a:\r\n".repeat(2_000_000));
    bomb.extend_from_slice(b"\r\nbody\r\n");
    let reply = deliver_from_outside(&dev, BOB, &bomb);
    assert!(reply.starts_with("552 5.3.4"), "{reply}");
    assert!(dev.messages(BOB).is_empty());

    let mut c = Client::login(&dev, BOB).await;
    let append = c.command_with_literal("a", "APPEND INBOX", &bomb).await;
    assert!(append.contains("a OK"), "{append:.200}");
    assert!(c.command("s", "SELECT INBOX").await.contains("s OK"));
    let before = proc_status(dev.pid(), "VmHWM:");
    let fetched = c
        .command(
            "f",
            "FETCH 1 (ENVELOPE BODYSTRUCTURE BODY.PEEK[HEADER.FIELDS (Subject)])",
        )
        .await;
    assert!(fetched.contains("f OK"), "{fetched:.300}");
    let searched = c.command("q", "SEARCH HEADER a x TEXT body").await;
    assert!(searched.contains("q OK"), "{searched:.300}");
    let grown = proc_status(dev.pid(), "VmHWM:").saturating_sub(before);
    println!("FETCH and SEARCH of a message of 2 million header fields: peak RSS +{grown} KiB");
    assert!(grown < 48 * 1024, "peak RSS grew by {grown} KiB");
}

/// Found by an outside tester: `FETCH 1 (BODY.PEEK[] x100)` of a 2 MB message built the whole
/// answer in memory (+340 MB; a 64 KiB command names ~5,000 items). One message's answer now
/// holds at most twice the message; more is refused with `NO [LIMIT]`.
#[tokio::test]
async fn a_fetch_cannot_amplify_a_message_in_memory() {
    let tmp = tempfile::tempdir().expect("tmp");
    let dev = Dev::start(tmp.path());
    let mut c = Client::login(&dev, BOB).await;
    let mut big = b"Subject: big\r\n\r\n".to_vec();
    for _ in 0..30_000 {
        big.extend_from_slice(&[b'x'; 70]);
        big.extend_from_slice(b"\r\n");
    }
    let append = c.command_with_literal("a", "APPEND INBOX", &big).await;
    assert!(append.contains("a OK"), "{append:.200}");
    assert!(c.command("s", "SELECT INBOX").await.contains("s OK"));
    let before = proc_status(dev.pid(), "VmHWM:");
    let items = vec!["BODY.PEEK[]"; 100].join(" ");
    let answer = c.command("f", &format!("FETCH 1 ({items})")).await;
    assert!(answer.contains("f NO [LIMIT]"), "{:.300}", answer);
    let grown = proc_status(dev.pid(), "VmHWM:").saturating_sub(before);
    assert!(grown < 32 * 1024, "peak RSS grew by {grown} KiB");
    // What a client really asks for still comes.
    let normal = c
        .command(
            "g",
            "FETCH 1 (BODY.PEEK[HEADER] BODY.PEEK[TEXT] RFC822.SIZE)",
        )
        .await;
    assert!(normal.contains("g OK"), "{:.300}", normal);
    // SEARCH reads each message once whatever its keys, and takes at most 64 that read it
    // (a second tester's 9,300 TEXT keys were 48 CPU-minutes a message).
    let keys = |n: usize| vec!["TEXT xx"; n].join(" ");
    let many = c.command("h", &format!("SEARCH {}", keys(65))).await;
    assert!(many.contains("h NO [LIMIT]"), "{many}");
    let fine = c.command("i", &format!("SEARCH {}", keys(64))).await;
    assert!(
        fine.contains("* SEARCH 1") && fine.contains("i OK"),
        "{fine}"
    );
}

/// Found by a second outside tester: ten sessions each asking for a 24 MB message and reading
/// nothing held 766 MB (each had the message, its answer and a copy). Message bodies in flight
/// to clients share one bound across sessions; a session waits for its share.
#[tokio::test]
async fn many_sessions_fetching_a_large_message_share_one_memory_bound() {
    let tmp = tempfile::tempdir().expect("tmp");
    let dev = Dev::start(tmp.path());
    let mut big = b"Subject: big\r\n\r\n".to_vec();
    while big.len() < 20 * 1024 * 1024 {
        big.extend_from_slice(&[b'y'; 998]);
        big.extend_from_slice(b"\r\n");
    }
    let mut c = Client::login(&dev, BOB).await;
    let append = c.command_with_literal("a", "APPEND INBOX", &big).await;
    assert!(append.contains("a OK"), "{append:.200}");
    let before = proc_status(dev.pid(), "VmHWM:");
    let mut sessions = Vec::new();
    for _ in 0..8 {
        let mut s = Client::login(&dev, BOB).await;
        assert!(s.command("s", "SELECT INBOX").await.contains("s OK"));
        s.send(b"f FETCH 1 BODY.PEEK[]\r\n").await;
        sessions.push(s);
    }
    // Nobody reads for a while: what the server holds meanwhile is bounded.
    tokio::time::sleep(Duration::from_secs(4)).await;
    let held = proc_status(dev.pid(), "VmHWM:").saturating_sub(before);
    // Then everyone reads, each device at its own pace, and gets the whole message. (Read one
    // after another, a session waiting for answer memory could wait on one that holds it and
    // that nobody reads yet: a deadlock of the test's making, not of the server's.)
    let readers: Vec<_> = sessions
        .into_iter()
        .map(|mut s| tokio::spawn(async move { s.until_tagged("f").await }))
        .collect();
    for reader in readers {
        let answer = reader.await.expect("a reader");
        assert!(answer.contains("f OK"), "{:.200}", answer);
        assert!(
            answer.len() > big.len(),
            "a short answer: {} bytes",
            answer.len()
        );
    }
    println!(
        "8 sessions fetching a 20 MiB message without reading: peak RSS +{} MiB",
        held / 1024
    );
    assert!(held < 256 * 1024, "peak RSS grew by {held} KiB");
}
