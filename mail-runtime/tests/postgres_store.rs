//! The PostgreSQL store: two `mail-runtime dev --postgres` processes on one database (Debian's
//! PostgreSQL, started here on loopback) are one server: what one receives the other serves,
//! an IDLE session on one hears an APPEND made through the other, and many imaplib sessions
//! spread over both by HAProxy break nothing (tests/clients/imap_stress.py's checks).
mod common;

use std::process::Command;

use common::{Dev, Postgres, client_script, haproxy, run};

fn on(db: &Postgres) -> (tempfile::TempDir, Dev) {
    let dir = tempfile::tempdir().expect("tempdir");
    let dev = Dev::start_with(dir.path(), &[], &["--postgres", &db.uri()]);
    (dir, dev)
}

#[test]
fn two_runtimes_on_one_database_serve_one_set_of_mailboxes() {
    let db = Postgres::start();
    let (_a_dir, a) = on(&db);
    let (_b_dir, b) = on(&db);
    assert_eq!(
        a.accounts, b.accounts,
        "the second process serves the first's accounts"
    );
    let (user, password) = a.accounts[0].clone();

    let out = run(Command::new("python3")
        .arg(client_script("replicas.py"))
        .args([&user, &password])
        .args([a.port("smtp"), a.port("imaps"), b.port("imaps")].map(|p| p.to_string())));
    let seen: serde_json::Value =
        serde_json::from_str(out.trim()).unwrap_or_else(|e| panic!("not JSON ({e}): {out}"));
    println!("{seen}");
    assert_eq!(
        seen["found"], 1,
        "the message delivered through A, read through B: {seen}"
    );
    assert_eq!(seen["body_has_token"], true, "{seen}");
    assert_eq!(seen["a_validity"], seen["b_validity"], "{seen}");
    assert_ne!(seen["a_validity"], 0, "{seen}");
    assert_eq!(seen["append"], "OK", "{seen}");
    let heard = seen["idle_ms"]
        .as_f64()
        .unwrap_or_else(|| panic!("B never heard: {seen}"));
    assert!(heard < 1000.0, "B's IDLE heard A's APPEND after {heard} ms");
    // Both messages are in the database, in one folder, UIDs 1 and 2.
    let rows = db.psql(
        "SELECT string_agg(m.uid::text, ',' ORDER BY m.uid) FROM kubemail_messages m \
         JOIN kubemail_folders f ON f.id = m.folder_id WHERE f.mailbox = 'alice@example.test' \
         AND f.name = 'INBOX'",
    );
    assert_eq!(rows.trim(), "1,2");
    assert_eq!(
        db.psql("SELECT max(version) FROM kubemail_schema").trim(),
        mail_runtime::store::postgres::SCHEMA_VERSION.to_string()
    );
}

#[test]
fn many_sessions_spread_over_two_runtimes_by_haproxy_break_nothing() {
    let seconds = std::env::var("IMAP_STRESS_SECONDS").unwrap_or_else(|_| "20".into());
    let sessions = std::env::var("IMAP_STRESS_SESSIONS").unwrap_or_else(|_| "16".into());
    let db = Postgres::start();
    let (_a_dir, a) = on(&db);
    let (_b_dir, b) = on(&db);
    let (imaps, smtp) = (common::free_port(), common::free_port());
    let config = format!(
        "global\n  maxconn 500\ndefaults\n  mode tcp\n  timeout connect 5s\n  timeout client 120s\n  timeout server 120s\n\
         frontend imaps\n  bind {imaps}\n  default_backend imaps\n\
         backend imaps\n  balance roundrobin\n  server a 127.0.0.1:{}\n  server b 127.0.0.1:{}\n\
         frontend smtp\n  bind {smtp}\n  default_backend smtp\n\
         backend smtp\n  balance roundrobin\n  server a 127.0.0.1:{}\n  server b 127.0.0.1:{}\n",
        a.port("imaps"),
        b.port("imaps"),
        a.port("smtp"),
        b.port("smtp"),
    );
    let proxy_dir = tempfile::tempdir().expect("tempdir");
    let _proxy = haproxy(proxy_dir.path(), &config, &[imaps, smtp]);
    let user = "bob@example.test";
    let out = Command::new("python3")
        .arg(client_script("imap_stress.py"))
        .arg("127.0.0.1")
        .args([imaps.port(), smtp.port()].map(|p| p.to_string()))
        .args([user, &a.password(user), &sessions, &seconds])
        .output()
        .expect("python3");
    common::assert_stress_report(&out);
}

/// One SMTP transaction with a raw client; the first reply that is not 2xx or 3xx, or the 250
/// for the message.
fn send_one(dev: &Dev, user: &str, subject: &str) -> String {
    let mut smtp = common::Raw::connect(dev.port("smtp"));
    for line in [
        "EHLO client.elsewhere.test".to_string(),
        "MAIL FROM:<sender@elsewhere.test>".into(),
        format!("RCPT TO:<{user}>"),
        "DATA".into(),
    ] {
        let reply = smtp.cmd(&line);
        if !reply.starts_with('2') && !reply.starts_with('3') {
            return reply;
        }
    }
    smtp.cmd(&format!("Subject: {subject}\r\n\r\nbody\r\n."))
}

/// imaplib: log in and SELECT INBOX; "OK <count>" or the error.
fn imap_select(dev: &Dev, user: &str, password: &str) -> String {
    let script = "import imaplib,ssl,sys\n\
        c=imaplib.IMAP4_SSL('127.0.0.1',int(sys.argv[1]),ssl_context=ssl._create_unverified_context(),timeout=10)\n\
        c.login(sys.argv[2],sys.argv[3])\n\
        try:\n    t,d=c.select('INBOX'); print('OK',d[0].decode())\n\
        except imaplib.IMAP4.error as e: print('NO',e)\n";
    run(Command::new("python3")
        .args(["-c", script])
        .arg(dev.port("imaps").to_string())
        .args([user, password]))
    .trim()
    .to_string()
}

/// The subjects stored, in UID order, comma-separated.
const STORED_SUBJECTS: &str = "SELECT string_agg(substring(convert_from(b.body, 'UTF8') \
     FROM 'Subject: ([a-z]+)'), ',' ORDER BY m.uid) \
     FROM kubemail_messages m JOIN kubemail_blobs b ON b.id = m.blob_id";

/// Sends "after" as a client retrying as RFC 5321 says (every 250 ms), until a 250: each
/// refusal must be a 4xx (`permanent` otherwise), and it must come within `seconds`.
fn send_until_accepted(dev: &Dev, user: &str, seconds: u64, permanent: &str, late: &str) {
    let start = std::time::Instant::now();
    loop {
        let reply = send_one(dev, user, "after");
        if reply.starts_with("250") {
            return;
        }
        assert!(reply.starts_with('4'), "{permanent}: {reply}");
        assert!(
            start.elapsed() < std::time::Duration::from_secs(seconds),
            "{late}: {reply}"
        );
        std::thread::sleep(std::time::Duration::from_millis(250));
    }
}

#[test]
fn a_database_restart_is_a_temporary_failure_and_service_comes_back_by_itself() {
    let db = Postgres::start();
    let (_dir, dev) = on(&db);
    let (user, password) = dev.accounts[0].clone();
    assert!(send_one(&dev, &user, "before").starts_with("250"));

    db.ctl("stop");
    let refused = send_one(&dev, &user, "during");
    assert!(
        refused.starts_with("4"),
        "SMTP while the database is down: {refused}"
    );
    let select = imap_select(&dev, &user, &password);
    assert!(
        select.contains("UNAVAILABLE"),
        "IMAP while the database is down: {select}"
    );

    db.ctl("start");
    // A client retrying as RFC 5321 says gets through once the database is back.
    send_until_accepted(
        &dev,
        &user,
        20,
        "a permanent failure after the restart",
        "still refused 20 s after the database came back",
    );
    assert_eq!(imap_select(&dev, &user, &password), "OK 2");
    let subjects = db.psql(STORED_SUBJECTS);
    assert_eq!(subjects.trim(), "before,after");
}

/// poplib: a POP3 session on one replica holds the maildrop; a session on the other is told
/// `[IN-USE]` until the first one QUITs.
#[test]
fn a_pop3_maildrop_is_locked_across_replicas() {
    let db = Postgres::start();
    let (_a_dir, a) = on(&db);
    let (_b_dir, b) = on(&db);
    let (user, password) = a.accounts[0].clone();
    let script = "import poplib,ssl,sys\n\
        ctx=ssl._create_unverified_context()\n\
        def login(port):\n    p=poplib.POP3_SSL('127.0.0.1',int(port),context=ctx,timeout=10); p.user(sys.argv[3]); p.pass_(sys.argv[4]); return p\n\
        first=login(sys.argv[1])\n\
        try:\n    login(sys.argv[2]); print('second: ok')\n\
        except poplib.error_proto as e: print('second:', e)\n\
        first.quit()\n\
        import time\n\
        for attempt in range(50):\n    \
            try:\n        third=login(sys.argv[2]); break\n    \
            except poplib.error_proto:\n        time.sleep(0.1)\n\
        print('after quit:', third.stat()); third.quit()\n";
    let out = run(Command::new("python3")
        .args(["-c", script])
        .args([a.port("pop3s").to_string(), b.port("pop3s").to_string()])
        .args([&user, &password]));
    assert!(out.contains("second: b'-ERR [IN-USE]"), "{out}");
    assert!(out.contains("after quit: (0, 0)"), "{out}");
}

/// imaplib: a folder selected on one replica is deleted and made again on the other (other
/// messages under the same UIDs); the first session is told BYE instead of being shown, or
/// changing, messages it never saw.
#[test]
fn a_selected_folder_replaced_through_another_replica_ends_the_session() {
    let db = Postgres::start();
    let (_a_dir, a) = on(&db);
    let (_b_dir, b) = on(&db);
    let (user, password) = a.accounts[0].clone();
    let script = "import imaplib,ssl,sys\n\
        ctx=ssl._create_unverified_context()\n\
        def login(port):\n    c=imaplib.IMAP4_SSL('127.0.0.1',int(port),ssl_context=ctx,timeout=10); c.login(sys.argv[3],sys.argv[4]); return c\n\
        a=login(sys.argv[1]); b=login(sys.argv[2])\n\
        b.create('X'); b.append('X',None,None,b'Subject: old\\r\\n\\r\\nold\\r\\n')\n\
        a.select('X')\n\
        b.delete('X'); b.create('X'); b.append('X',None,None,b'Subject: new\\r\\n\\r\\nnew\\r\\n')\n\
        try:\n    print('noop:', a.noop(), a.uid('FETCH','1','(BODY.PEEK[HEADER.FIELDS (SUBJECT)])'))\n\
        except imaplib.IMAP4.abort as e: print('abort:', e)\n";
    let out = run(Command::new("python3")
        .args(["-c", script])
        .args([a.port("imaps").to_string(), b.port("imaps").to_string()])
        .args([&user, &password]));
    assert!(out.contains("abort:") && out.contains("replaced"), "{out}");
}

/// A database that hangs without closing its connections (SIGSTOP, as a lost node): `/readyz`
/// reports it within seconds rather than its last good answer, and the runtime is back when
/// the database is.
#[test]
fn a_database_that_hangs_is_reported_and_service_comes_back() {
    let db = Postgres::start();
    let (_dir, dev) = on(&db);
    let readyz = || {
        run(Command::new("curl")
            .args(["-sS", "--max-time", "5"])
            .arg(format!("http://127.0.0.1:{}/readyz", dev.port("http"))))
    };
    let wait_for = |what: &str, wanted: &str| {
        let start = std::time::Instant::now();
        loop {
            let body = readyz();
            if body.contains(wanted) {
                return start.elapsed();
            }
            assert!(
                start.elapsed() < std::time::Duration::from_secs(30),
                "{what}: {body}"
            );
            std::thread::sleep(std::time::Duration::from_millis(200));
        }
    };
    wait_for("the schema reported", "\"schema\"");
    db.freeze(true);
    let noticed = wait_for("the hang reported", "did not answer");
    db.freeze(false);
    wait_for("the database back", "\"schema\"");
    println!("a hung database was reported after {noticed:?}");
    let (user, _) = dev.accounts[0].clone();
    assert!(send_one(&dev, &user, "after").starts_with("250"));
}

/// A primary and a streaming standby (both Debian's PostgreSQL) behind a multi-host URI with
/// `target_session_attrs=read-write`: the primary stops, the standby is promoted, and the
/// runtime follows it by itself; the mail acknowledged before is there.
#[test]
fn the_runtime_follows_a_promoted_standby() {
    let primary = Postgres::start();
    let standby = primary.standby();
    let uri = format!(
        "postgresql://kubemail:{}@127.0.0.1:{},127.0.0.1:{}/postgres?target_session_attrs=read-write",
        common::POSTGRES_PASSWORD,
        primary.port,
        standby.port
    );
    let dir = tempfile::tempdir().expect("tempdir");
    let dev = Dev::start_with(dir.path(), &[], &["--postgres", &uri]);
    let (user, _) = dev.accounts[0].clone();
    assert!(send_one(&dev, &user, "before").starts_with("250"));

    primary.ctl("stop");
    standby.promote();
    let start = std::time::Instant::now();
    send_until_accepted(
        &dev,
        &user,
        30,
        "a permanent failure during the failover",
        "not following the new primary after 30 s",
    );
    println!("following the promoted standby after {:?}", start.elapsed());
    let subjects = standby.psql(STORED_SUBJECTS);
    assert_eq!(subjects.trim(), "before,after");
}

/// Two runtimes on one database behind HAProxy, under continuous SMTP and IMAP load
/// (smtplib senders that retry as RFC 5321 says, imaplib readers that log in again): each
/// replica in turn gets SIGTERM, drains, exits and starts again, as a rolling update does.
/// Every acknowledged message is stored once; the operations clients had to repeat are printed.
#[test]
fn a_rolling_restart_under_load_loses_no_acknowledged_message() {
    restart_under_load(false);
}

/// The same load, but each replica in turn is killed (SIGKILL, as a node lost or the OOM
/// killer): the transactions it held never got their 250 and are sent again by their clients;
/// every acknowledged message is stored.
#[test]
fn a_replica_killed_under_load_loses_no_acknowledged_message() {
    restart_under_load(true);
}

fn restart_under_load(kill: bool) {
    use std::io::{BufRead, BufReader, Write};
    let db = Postgres::start();
    let dirs = [
        tempfile::tempdir().expect("tmp"),
        tempfile::tempdir().expect("tmp"),
    ];
    let start = |dir: &std::path::Path| {
        Dev::start_with(
            dir,
            &[],
            &["--postgres", &db.uri(), "--drain-seconds", "20"],
        )
    };
    let mut replicas = [start(dirs[0].path()), start(dirs[1].path())];
    let (imaps, smtp) = (common::free_port(), common::free_port());
    // HAProxy as a Service's kube-proxy would not be, but a TCP balancer is: a refused
    // connection is sent to the other server (redispatch), and a server that stops answering
    // its check leaves the rotation.
    let config = format!(
        "global\n  maxconn 500\ndefaults\n  mode tcp\n  timeout connect 2s\n  timeout client 120s\n  timeout server 120s\n  retries 3\n  option redispatch\n\
         frontend imaps\n  bind {imaps}\n  default_backend imaps\n\
         backend imaps\n  balance roundrobin\n  server a 127.0.0.1:{}  check inter 300 fall 1 rise 1\n  server b 127.0.0.1:{}  check inter 300 fall 1 rise 1\n\
         frontend smtp\n  bind {smtp}\n  default_backend smtp\n\
         backend smtp\n  balance roundrobin\n  server a 127.0.0.1:{}  check inter 300 fall 1 rise 1\n  server b 127.0.0.1:{}  check inter 300 fall 1 rise 1\n",
        replicas[0].port("imaps"),
        replicas[1].port("imaps"),
        replicas[0].port("smtp"),
        replicas[1].port("smtp"),
    );
    let proxy_dir = tempfile::tempdir().expect("tempdir");
    let _proxy = haproxy(proxy_dir.path(), &config, &[imaps, smtp]);
    let (user, password) = replicas[0].accounts[0].clone();
    let mut clients = Command::new("python3")
        .arg(client_script("rolling_load.py"))
        .arg("127.0.0.1")
        .args([smtp.port().to_string(), imaps.port().to_string()])
        .args([user.as_str(), password.as_str(), "4", "4"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("python3");
    let mut out = BufReader::new(clients.stdout.take().expect("stdout"));
    let mut line = String::new();
    out.read_line(&mut line).expect("running");
    assert_eq!(line.trim(), "running");
    std::thread::sleep(std::time::Duration::from_secs(3));
    for (i, dir) in dirs.iter().enumerate() {
        if kill {
            replicas[i].kill9();
        } else {
            replicas[i].terminate();
            let status = replicas[i]
                .wait_exit(std::time::Duration::from_secs(30))
                .expect("the replica drains and exits");
            assert!(status.success(), "{status}");
        }
        replicas[i] = start(dir.path());
        std::thread::sleep(std::time::Duration::from_secs(3));
    }
    writeln!(clients.stdin.take().expect("stdin"), "stop").expect("stop the clients");
    line.clear();
    out.read_line(&mut line).expect("the clients' report");
    let report: serde_json::Value =
        serde_json::from_str(&line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
    assert!(clients.wait().expect("python3 ends").success());
    let acked: Vec<String> = report["acked"]
        .as_array()
        .expect("acked")
        .iter()
        .map(|t| t.as_str().expect("token").to_string())
        .collect();
    let mut summary = report.clone();
    summary["acked"] = acked.len().into();
    let how = if kill { "SIGKILL" } else { "SIGTERM" };
    println!("each of 2 replicas stopped by {how} and started again, under load: {summary}");
    assert!(
        acked.len() > 20,
        "too little load to show anything: {summary}"
    );
    assert_eq!(report["smtp_5xx"], 0, "{summary}");
    let stored = db.psql(
        "SELECT substring(convert_from(b.body, 'UTF8') FROM 'Subject: rolling ([0-9a-f]+)') \
         FROM kubemail_messages m JOIN kubemail_blobs b ON b.id = m.blob_id",
    );
    let stored: Vec<&str> = stored.lines().filter(|l| !l.is_empty()).collect();
    let missing: Vec<&String> = acked
        .iter()
        .filter(|t| !stored.contains(&t.as_str()))
        .collect();
    assert!(
        missing.is_empty(),
        "{} acknowledged messages lost: {missing:?}",
        missing.len()
    );
    let mut unique = stored.clone();
    unique.sort_unstable();
    unique.dedup();
    // A message whose 250 was lost with its connection is sent again and stored twice; one
    // acknowledged is never stored twice by the server itself.
    assert!(stored.len() >= acked.len());
    println!(
        "stored {} ({} distinct) for {} acknowledged",
        stored.len(),
        unique.len(),
        acked.len()
    );
}

/// TLS to the database: a server that takes only TLS connections (`hostssl`), with a
/// certificate from a test CA. Given that CA the runtime connects over TLS (every connection of
/// its shows in `pg_stat_ssl`); given another CA it refuses to start and says why.
#[test]
fn the_database_connection_is_tls_verified_against_the_given_ca() {
    let db = Postgres::start();
    let ca = db.require_tls();
    let dir = tempfile::tempdir().expect("tempdir");
    let ca_arg = ca.to_string_lossy().to_string();
    let dev = Dev::start_with(
        dir.path(),
        &[],
        &["--postgres", &db.uri(), "--postgres-ca-file", &ca_arg],
    );
    let (user, _) = dev.accounts[0].clone();
    assert!(send_one(&dev, &user, "over").starts_with("250"));
    let connections = db.psql(
        "SELECT string_agg(s.ssl::text, ',') FROM pg_stat_ssl s JOIN pg_stat_activity a USING (pid) \
         WHERE a.application_name = 'kubemail mail-runtime'",
    );
    assert!(
        connections.contains("true") && !connections.contains("false"),
        "the runtime's connections: {connections}"
    );

    // Another CA (one made for another server): refused, with the reason.
    let other = Postgres::start();
    let other_ca = other.require_tls();
    let refused = Command::new(env!("CARGO_BIN_EXE_mail-runtime"))
        .args(["dev", "--base-port", "0", "--stop-on-eof", "--data"])
        .arg(tempfile::tempdir().expect("tempdir").path())
        .args(["--postgres", &db.uri(), "--postgres-ca-file"])
        .arg(&other_ca)
        .stdin(std::process::Stdio::null())
        .output()
        .expect("mail-runtime runs");
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(
        !refused.status.success(),
        "started with a CA that did not sign the server's certificate"
    );
    assert!(stderr.to_lowercase().contains("certificate"), "{stderr}");
}

/// Greylisting is remembered in the database: a sender asked to come back by one replica is
/// taken by the other after the delay, not asked to wait again (tests/clients/screen_client.py,
/// an SMTP client from a chosen loopback address).
#[test]
fn greylisting_is_shared_by_the_replicas() {
    let db = Postgres::start();
    let (_a_dir, a) = on(&db);
    let (_b_dir, b) = on(&db);
    for dev in [&a, &b] {
        common::patch_config(dev, "greylisting", |c| {
            c["inbound"]["greylisting"] =
                serde_yaml_ng::from_str("{delaySeconds: 2, retryWindowSeconds: 60}").expect("yaml");
        });
    }
    let client = |dev: &Dev, source: &str| -> serde_json::Value {
        let out = run(Command::new("python3")
            .arg(client_script("screen_client.py"))
            .args(["127.0.0.1", &dev.port("smtp").to_string(), source])
            .args(["mx.outside.example.org", "alice@example.test"]));
        serde_json::from_str(out.lines().last().unwrap_or_default())
            .unwrap_or_else(|e| panic!("{e}: {out}"))
    };
    assert_eq!(client(&a, "127.0.0.8")["rcpt"], serde_json::json!([451]));
    std::thread::sleep(std::time::Duration::from_millis(2500));
    assert_eq!(
        client(&b, "127.0.0.9")["rcpt"],
        serde_json::json!([250]),
        "the other replica asked the sender to wait again"
    );
}

/// Relay rate limits count in the database: two processes (two store handles, as two
/// replicas) taking places at once under one limit of 10 get 10 between them.
#[test]
fn a_rate_limit_is_one_limit_across_replicas() {
    let db = Postgres::start();
    let spool = tempfile::tempdir().expect("tmp");
    let open = || {
        mail_runtime::store::postgres::Postgres::open(&db.uri(), spool.path(), None)
            .expect("the store opens")
    };
    let replicas = [open(), open()];
    let taken = std::sync::atomic::AtomicUsize::new(0);
    std::thread::scope(|scope| {
        for replica in &replicas {
            for _ in 0..4 {
                scope.spawn(|| {
                    for _ in 0..5 {
                        let limits = vec![("alice@example.test".to_string(), 10, 3600)];
                        if replica.rate_take(limits).expect("the database answers") {
                            taken.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        }
                    }
                });
            }
        }
    });
    assert_eq!(taken.into_inner(), 10, "40 tries under a limit of 10");
}

/// imaplib: a header SEARCH over a folder on the database (headers read ahead in batches)
/// finds exactly the messages whose header matches, also past a batch's end, and again after
/// messages were expunged from the middle.
#[test]
fn header_search_on_the_database_finds_what_it_should() {
    let db = Postgres::start();
    let (_dir, dev) = on(&db);
    let (user, password) = dev.accounts[0].clone();
    let script = "import imaplib,ssl,sys\n\
        c=imaplib.IMAP4_SSL('127.0.0.1',int(sys.argv[1]),ssl_context=ssl._create_unverified_context(),timeout=30)\n\
        c.login(sys.argv[2],sys.argv[3])\n\
        for i in range(1,601):\n    s='needle %d' % i if i % 7 == 0 else 'hay %d' % i\n    c.append('INBOX',None,None,('Subject: %s\\r\\n\\r\\nbody\\r\\n' % s).encode())\n\
        c.select('INBOX')\n\
        first=c.uid('SEARCH','HEADER','Subject','needle')[1][0].split()\n\
        c.uid('STORE','100:300','+FLAGS.SILENT','(\\\\Deleted)'); c.expunge()\n\
        second=c.uid('SEARCH','HEADER','Subject','needle')[1][0].split()\n\
        print(len(first), len(second), first[-1].decode())\n";
    let out = run(Command::new("python3")
        .args(["-c", script])
        .arg(dev.port("imaps").to_string())
        .args([&user, &password]));
    // 85 of 600 are needles (every 7th); 28 of them (105 to 294) were in 100..300.
    assert_eq!(out.trim(), "85 57 595", "{out}");
}

/// The store's small writes on the database, through the `Store` trait as the sessions use
/// them: subscriptions, and ManageSieve's scripts (put, list, activate, rename keeping the
/// active one, delete, a missing one refused).
#[test]
fn subscriptions_and_sieve_scripts_are_kept_in_the_database() {
    use mail_runtime::store::{Store, StoreError};
    let db = Postgres::start();
    let spool = tempfile::tempdir().expect("tmp");
    let store = mail_runtime::store::postgres::Postgres::open(&db.uri(), spool.path(), None)
        .expect("the store opens");
    let me = "alice@example.test";
    store.set_subscribed(me, "Work", true).expect("subscribe");
    store
        .set_subscribed(me, "Archive", true)
        .expect("subscribe");
    store
        .set_subscribed(me, "Work", false)
        .expect("unsubscribe");
    assert_eq!(store.subscriptions(me).expect("list"), ["Archive"]);
    store
        .put_sieve_script(me, "vacation", "keep;")
        .expect("put");
    store
        .put_sieve_script(me, "rules", "discard;")
        .expect("put");
    store
        .set_active_sieve_script(me, Some("rules"))
        .expect("activate");
    store
        .rename_sieve_script(me, "rules", "filters")
        .expect("rename");
    let scripts = store.sieve_scripts(me).expect("list");
    assert_eq!(scripts.names, ["filters", "vacation"]);
    assert_eq!(scripts.active.as_deref(), Some("filters"));
    assert_eq!(
        store.sieve_script(me, "filters").expect("read").as_deref(),
        Some("discard;")
    );
    store.delete_sieve_script(me, "vacation").expect("delete");
    assert!(matches!(
        store.delete_sieve_script(me, "vacation"),
        Err(StoreError::NoSuchFolder(_))
    ));
    assert!(matches!(
        store.set_active_sieve_script(me, Some("missing")),
        Err(StoreError::NoSuchFolder(_))
    ));
}
