//! IMAP transcripts against the real runtime, for what needs its sockets: port 143 before and
//! after STARTTLS (a command pipelined in the clear is dropped), delivery over SMTP heard by
//! another session and by IDLE, COMPRESS=DEFLATE with a real zlib client. Every other command
//! is tested in memory against the session (`src/imap/transcripts.rs`); every response here
//! too is parsed by imap-codec's response parser, an implementation we did not write.
mod common;

use std::{process::Command, time::Duration};

use common::{
    Dev,
    imap::{Client, tls},
    run,
};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
};

const BOB: &str = "bob@example.test";

fn deliver(dev: &Dev, subject: &str, body: &str) {
    run(Command::new("swaks")
        .args(["--server", &format!("127.0.0.1:{}", dev.port("smtp"))])
        .args(["--from", "carol@example.net", "--to", BOB])
        .args(["--h-From", "Carol <carol@example.net>"])
        .args(["--h-Subject", subject])
        .args(["--body", body]));
}

#[tokio::test]
async fn authentication_tls_and_session_commands() {
    let tmp = tempfile::tempdir().expect("tmp");
    let dev = Dev::start(tmp.path());

    // Port 143 in the clear: LOGINDISABLED, and LOGIN is refused before STARTTLS.
    let mut plain = TcpStream::connect(("127.0.0.1", dev.port("imap")))
        .await
        .expect("connect");
    let mut greeting = vec![0u8; 512];
    let n = plain.read(&mut greeting).await.expect("greeting");
    let greeting = String::from_utf8_lossy(&greeting[..n]).into_owned();
    assert!(
        greeting.contains("STARTTLS") && greeting.contains("LOGINDISABLED"),
        "{greeting}"
    );
    let mut c = Client {
        stream: Box::new(plain),
        pending: Vec::new(),
        heard: Vec::new(),
    };
    let refused = c
        .command("a", &format!("LOGIN {BOB} {}", dev.password(BOB)))
        .await;
    assert!(refused.contains("a NO [PRIVACYREQUIRED]"), "{refused}");
    let refused = c.command("b", "AUTHENTICATE PLAIN AGJvYgBwYXNz").await;
    assert!(refused.contains("b NO [PRIVACYREQUIRED]"), "{refused}");
    let not_yet = c.command("c", "SELECT INBOX").await;
    assert!(not_yet.contains("c NO"), "{not_yet}");

    drop(c);

    // STARTTLS with a command pipelined behind it in the clear: the command is discarded
    // (RFC 3501 6.2.1), so nothing a man in the middle adds runs inside the TLS session.
    let tcp = TcpStream::connect(("127.0.0.1", dev.port("imap")))
        .await
        .expect("connect");
    let mut raw = tcp;
    let mut buf = vec![0u8; 512];
    let _ = raw.read(&mut buf).await.expect("greeting");
    raw.write_all(b"d STARTTLS\r\ne NOOP\r\n")
        .await
        .expect("write");
    let n = raw.read(&mut buf).await.expect("STARTTLS reply");
    assert!(String::from_utf8_lossy(&buf[..n]).starts_with("d OK"));
    let mut c = Client {
        stream: tls(raw).await,
        pending: Vec::new(),
        heard: Vec::new(),
    };
    let caps = c.command("f", "CAPABILITY").await;
    assert!(
        !caps.contains("e OK"),
        "a pipelined plaintext command was run: {caps}"
    );
    assert!(
        caps.contains("AUTH=PLAIN") && !caps.contains("STARTTLS"),
        "{caps}"
    );

    // AUTHENTICATE PLAIN with a continuation, then the authenticated capabilities.
    use base64::Engine as _;
    let token =
        base64::engine::general_purpose::STANDARD.encode(format!("\0{BOB}\0{}", dev.password(BOB)));
    c.send(b"g AUTHENTICATE PLAIN\r\n").await;
    assert_eq!(c.line().await, "+ ");
    c.send(format!("{token}\r\n").as_bytes()).await;
    let ok = c.until_tagged("g").await;
    for cap in [
        "UIDPLUS",
        "MOVE",
        "IDLE",
        "QUOTA",
        "SPECIAL-USE",
        "NAMESPACE",
        "LITERAL+",
    ] {
        assert!(ok.contains(cap), "{cap} missing after login: {ok}");
    }
    let id = c.command("h", "ID (\"name\" \"transcript\")").await;
    assert!(id.contains("* ID (\"name\" \"kubemail\""), "{id}");
    let ns = c.command("i", "NAMESPACE").await;
    assert!(ns.contains("* NAMESPACE ((\"\" \"/\")) NIL NIL"), "{ns}");
    let enabled = c.command("j", "ENABLE IMAP4rev2").await;
    assert!(enabled.contains("* ENABLED IMAP4rev2"), "{enabled}");
    assert!(c.command("k", "NOOP").await.contains("k OK"));
    let bye = c.command("l", "LOGOUT").await;
    assert!(bye.contains("* BYE") && bye.contains("l OK"), "{bye}");
    c.assert_well_formed();

    // A wrong password: NO [AUTHENTICATIONFAILED], and the session goes on.
    let mut c = Client::connect(&dev).await;
    let wrong = c.command("m", &format!("LOGIN {BOB} wrong-password")).await;
    assert!(wrong.contains("m NO [AUTHENTICATIONFAILED]"), "{wrong}");
    assert!(c.command("n", "CAPABILITY").await.contains("n OK"));
}

#[tokio::test]
async fn two_sessions_see_each_others_changes_and_idle_hears_delivery() {
    let tmp = tempfile::tempdir().expect("tmp");
    let dev = Dev::start(tmp.path());
    deliver(&dev, "one", "1");
    deliver(&dev, "two", "2");
    let mut laptop = Client::login(&dev, BOB).await;
    let mut phone = Client::login(&dev, BOB).await;
    laptop.command("a", "SELECT INBOX").await;
    phone.command("a", "SELECT INBOX").await;

    laptop.command("b", "STORE 1 +FLAGS (\\Seen)").await;
    let seen = phone.command("b", "NOOP").await;
    assert!(seen.contains("* 1 FETCH (UID 1 FLAGS (\\Seen))"), "{seen}");

    laptop.command("c", "STORE 2 +FLAGS (\\Deleted)").await;
    laptop.command("d", "EXPUNGE").await;
    // During FETCH an expunge is held back (sequence numbers must not move under it) ...
    let during = phone.command("c", "FETCH 1:* FLAGS").await;
    assert!(!during.contains("EXPUNGE"), "{during}");
    // ... and reported at the next command that allows it.
    let after = phone.command("d", "NOOP").await;
    assert!(after.contains("* 2 EXPUNGE"), "{after}");

    // IDLE: the phone hears of new mail delivered over SMTP within a second.
    phone.send(b"e IDLE\r\n").await;
    assert!(phone.line().await.starts_with("+ "));
    let sent = std::time::Instant::now();
    deliver(&dev, "three", "3");
    let exists = phone.line().await;
    let heard_after = sent.elapsed();
    assert_eq!(exists, "* 2 EXISTS");
    // The phone is the first session to see it: `\Recent` there.
    assert_eq!(phone.line().await, "* 1 RECENT");
    assert!(
        heard_after < Duration::from_secs(1) + Duration::from_millis(500),
        "IDLE heard of the delivery after {heard_after:?} (swaks included)"
    );
    // A flag change from the laptop reaches the idling phone too.
    laptop.command("f", "NOOP").await;
    laptop.command("g", "STORE 2 +FLAGS (\\Flagged)").await;
    let flagged = phone.line().await;
    assert_eq!(flagged, "* 2 FETCH (UID 3 FLAGS (\\Flagged \\Recent))");
    phone.send(b"DONE\r\n").await;
    let done = phone.until_tagged("e").await;
    assert!(done.contains("e OK"), "{done}");
    // An APPEND by the laptop shows up as EXISTS for the phone.
    let appended = laptop
        .command("h", "APPEND INBOX {14+}\r\nSubject: x\r\n\r\n")
        .await;
    assert!(appended.contains("h OK [APPENDUID"), "{appended}");
    let exists = phone.command("f", "NOOP").await;
    assert!(exists.contains("* 3 EXISTS"), "{exists}");
    laptop.assert_well_formed();
    phone.assert_well_formed();
}

/// Issue 15: COMPRESS=DEFLATE (RFC 4978) for mobile links. Through DEFLATE both ways (Python's
/// zlib on the client side; mbsync's use of it is in imap_clients.rs): APPEND, SELECT and a
/// FETCH of a 640 KB message come back intact, COMPRESS again is NO [COMPRESSIONACTIVE]. A
/// deflate bomb (200 MB in one line, 200 KB on the wire) ends its session at the line limit and
/// leaves the server serving others.
#[test]
fn compress_deflate_carries_a_session_and_survives_a_bomb() {
    let tmp = tempfile::tempdir().expect("tmp");
    let dev = Dev::start(tmp.path());
    let script = |mode: &str| -> serde_json::Value {
        let out = run(Command::new("python3")
            .arg(common::client_script("imap_compress.py"))
            .args(["127.0.0.1", &dev.port("imaps").to_string(), BOB])
            .arg(dev.password(BOB))
            .arg(mode));
        serde_json::from_str(out.trim()).expect("JSON")
    };
    let session = script("session");
    assert!(
        session["compress"].as_str().unwrap_or("").contains("b OK"),
        "{session}"
    );
    for (key, expected) in [
        ("append", "c OK"),
        ("select", "d OK"),
        ("fetch", "e OK"),
        ("again", "f NO [COMPRESSIONACTIVE]"),
        ("logout", "g OK"),
    ] {
        assert!(
            session[key].as_str().unwrap_or("").starts_with(expected),
            "{key}: {session}"
        );
    }
    assert_eq!(session["fetched_intact"], true, "{session}");

    // A command sent in the clear before COMPRESS's OK is dropped, as one sent behind STARTTLS
    // is: it was neither compressed nor allowed (RFC 4978 s3), and the session goes on.
    let pipelined = script("pipelined");
    assert!(
        pipelined["after"]
            .as_str()
            .unwrap_or("")
            .starts_with("c OK"),
        "{pipelined}"
    );
    assert_eq!(pipelined["pipelined_answered"], false, "{pipelined}");

    let bomb = script("bomb");
    let answer = bomb["bomb_answer"].as_str().unwrap_or("");
    assert!(!answer.contains("h OK"), "a 200 MB line was taken: {bomb}");
    let rss_kib = std::fs::read_to_string(format!("/proc/{}/status", dev.pid()))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches(" kB").trim().parse::<u64>().ok())
        .unwrap_or(0);
    assert!(
        rss_kib < 200 * 1024,
        "the server's peak memory reached {rss_kib} KiB"
    );
    // The server goes on.
    assert_eq!(
        script("session")["again"]
            .as_str()
            .map(|a| a.starts_with("f NO")),
        Some(true)
    );
}
