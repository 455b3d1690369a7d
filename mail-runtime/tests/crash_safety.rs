//! Crash safety: messages are sent in a loop while the runtime is SIGKILLed at random moments
//! and restarted on the same data directory. Every message that got a 250 must be on disk
//! afterwards (duplicates would be allowed; losses are not).
mod common;

use std::{
    collections::BTreeSet,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use common::{Dev, KillClock};

/// Sends messages to bob on port 25 over one connection until told to stop or the connection
/// dies; records the ids that got 250.
fn sender(
    port: u16,
    next_id: Arc<Mutex<u64>>,
    acked: Arc<Mutex<BTreeSet<u64>>>,
    stop: Arc<AtomicBool>,
) {
    use std::io::{BufRead, BufReader, Write};
    {
        let Ok(stream) = std::net::TcpStream::connect(("127.0.0.1", port)) else {
            return;
        };
        let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
        let mut writer = stream.try_clone().expect("clone");
        let mut reader = BufReader::new(stream);
        let mut reply = || -> Option<String> {
            loop {
                let mut line = String::new();
                if reader.read_line(&mut line).ok()? == 0 {
                    return None;
                }
                if line.len() < 4 || line.as_bytes()[3] != b'-' {
                    return Some(line);
                }
            }
        };
        if reply().is_none() {
            return;
        }
        let _ = writer.write_all(b"EHLO crash-test\r\n");
        if reply().is_none() {
            return;
        }
        loop {
            if stop.load(Ordering::Relaxed) {
                return;
            }
            let id = {
                let mut n = next_id.lock().expect("id lock");
                *n += 1;
                *n
            };
            let message = format!(
                "MAIL FROM:<load@example.net>\r\nRCPT TO:<bob@example.test>\r\nDATA\r\n\
                 Subject: crash-test {id}\r\n\r\n{}\r\n.\r\n",
                "payload line\r\n".repeat(20)
            );
            if writer.write_all(message.as_bytes()).is_err() {
                return;
            }
            let replies: Option<Vec<String>> = (0..4).map(|_| reply()).collect();
            match replies {
                Some(r) if r[3].starts_with("250") => {
                    acked.lock().expect("acked lock").insert(id);
                }
                _ => return,
            }
        }
    }
}

#[test]
fn no_acknowledged_message_is_lost_across_sigkills() {
    let tmp = tempfile::tempdir().expect("tmp");
    let next_id = Arc::new(Mutex::new(0u64));
    let acked = Arc::new(Mutex::new(BTreeSet::new()));
    let mut clock = KillClock::new();
    let kills = 12;
    for round in 0..kills {
        let mut dev = Dev::start(tmp.path());
        let stop = Arc::new(AtomicBool::new(false));
        let senders: Vec<_> = (0..3)
            .map(|_| {
                let (port, next_id, acked, stop) = (
                    dev.port("smtp"),
                    next_id.clone(),
                    acked.clone(),
                    stop.clone(),
                );
                std::thread::spawn(move || sender(port, next_id, acked, stop))
            })
            .collect();
        let wait = clock.next_ms(100, 400);
        std::thread::sleep(Duration::from_millis(wait));
        dev.kill9();
        stop.store(true, Ordering::Relaxed);
        for s in senders {
            let _ = s.join();
        }
        println!(
            "round {round}: killed after {wait} ms, {} acknowledged so far",
            acked.lock().expect("lock").len()
        );
    }
    let dev = Dev::start(tmp.path());
    let stored: BTreeSet<u64> = dev
        .messages("bob@example.test")
        .iter()
        .filter_map(|m| {
            m.lines()
                .find_map(|l| l.strip_prefix("Subject: crash-test "))
                .and_then(|id| id.trim().parse().ok())
        })
        .collect();
    let acked = acked.lock().expect("lock").clone();
    assert!(
        acked.len() > kills,
        "too few messages were sent to prove anything: {}",
        acked.len()
    );
    let lost: Vec<_> = acked.difference(&stored).collect();
    println!(
        "{kills} SIGKILLs, {} messages acknowledged, {} stored, {} lost",
        acked.len(),
        stored.len(),
        lost.len()
    );
    assert!(lost.is_empty(), "acknowledged but lost: {lost:?}");
    // Nothing half-written is left in the spool either.
    let spool = std::fs::read_dir(tmp.path().join("spool"))
        .expect("spool")
        .count();
    assert_eq!(spool, 0);
}
