//! Load: 5,000 concurrent connections across SMTP, IMAP and POP3, every one of them a slowloris
//! (a half-sent command line, or an IMAP literal announced and never sent), held open at once
//! while real clients (smtplib, imaplib, poplib) work: each of their commands must answer
//! within a second, and the runtime's memory must stay bounded.
//!
//! The held connections come from loopback addresses (127.0.1.1 on), 100 each, as a distributed
//! attack would; the per-address limit is raised to 100 and the total to twice the count for
//! the test (nearer the limit, silent sessions are dropped after 10 s: the second test). `LOAD_CONNECTIONS` changes the count (a longer variant: `LOAD_CONNECTIONS=15000`,
//! within the default 20,000 open files).
mod common;

use std::{
    net::{IpAddr, Ipv4Addr, SocketAddr},
    process::Command,
    time::{Duration, Instant},
};

use common::{Dev, client_script, patch_config, proc_status, run};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpSocket, TcpStream},
    task::JoinSet,
};

const BOB: &str = "bob@example.test";

fn open_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| d.count())
        .unwrap_or_default()
}

/// Sets the connection limit (and 100 per address) in the running runtime's config, and waits
/// until it serves it (a live reload: restarting on fixed ports could race another test for
/// them).
fn set_limits(dev: &Dev, max_connections: usize) {
    patch_config(dev, &format!("load-{max_connections}"), |config| {
        let limits = &mut config["limits"];
        limits["maxConnections"] = (max_connections as u64).into();
        limits["maxConnectionsPerIp"] = 100u64.into();
    });
}

/// Connects from `source` to the runtime's `port` on loopback and reads its greeting, each
/// within 20 s (a connection the kernel dropped from an overflowing backlog waits forever).
async fn connect_from(source: IpAddr, port: u16) -> Result<(TcpStream, Vec<u8>), String> {
    let socket = TcpSocket::new_v4().map_err(|e| e.to_string())?;
    socket
        .bind(SocketAddr::new(source, 0))
        .map_err(|e| format!("bind {source}: {e}"))?;
    let mut stream = tokio::time::timeout(
        Duration::from_secs(20),
        socket.connect(SocketAddr::from(([127, 0, 0, 1], port))),
    )
    .await
    .map_err(|_| "connect timed out".to_string())?
    .map_err(|e| e.to_string())?;
    let mut greeting = vec![0u8; 256];
    let n = tokio::time::timeout(Duration::from_secs(20), stream.read(&mut greeting))
        .await
        .map_err(|_| format!("no greeting to {source} within 20 s"))?
        .map_err(|e| e.to_string())?;
    greeting.truncate(n);
    Ok((stream, greeting))
}

/// Opens one slowloris connection: reads the greeting, sends half a command, keeps the socket.
async fn slowloris(i: usize, ports: [u16; 3]) -> Result<TcpStream, String> {
    let address = i / 100;
    let source = IpAddr::V4(Ipv4Addr::new(
        127,
        0,
        1 + (address / 250) as u8,
        (address % 250 + 1) as u8,
    ));
    let (port, expected, half): (u16, &[u8], &[u8]) = match i % 3 {
        0 => (ports[0], b"220 ", b"EHLO slowloris.example"),
        1 => (ports[1], b"* OK", b"a1 LOGIN {5000}\r\n"),
        _ => (ports[2], b"+OK", b"USER bo"),
    };
    let (mut stream, greeting) = connect_from(source, port)
        .await
        .map_err(|e| format!("connection {i}: {e}"))?;
    if !greeting.starts_with(expected) {
        return Err(format!(
            "connection {i}: greeting {:?}",
            String::from_utf8_lossy(&greeting)
        ));
    }
    stream.write_all(half).await.map_err(|e| e.to_string())?;
    Ok(stream)
}

#[test]
fn five_thousand_slowloris_connections_are_held_and_real_clients_still_answer_within_a_second() {
    let connections: usize = std::env::var("LOAD_CONNECTIONS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(5_000);
    let tmp = tempfile::tempdir().expect("tmp");
    let data = tmp.path().join("data");
    let dev = Dev::start(&data);
    // Twice the count: below 80% of the limit the server is not under stress and holds them.
    set_limits(&dev, connections * 2);
    let pid = dev.pid();
    let password = dev.password(BOB);
    let responsive = |rounds: &str| -> serde_json::Value {
        let out = run(Command::new("python3")
            .arg(client_script("responsive.py"))
            .arg("127.0.0.1")
            .args(["smtp", "imaps", "pop3s"].map(|p| dev.port(p).to_string()))
            .args([BOB, &password, rounds]));
        serde_json::from_str(out.trim()).expect("timings JSON")
    };
    // Unloaded: warms the login cache and gives a baseline.
    let unloaded = responsive("2");
    let rss_before = proc_status(pid, "VmRSS:");

    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let ports = [dev.port("smtp"), dev.port("imap"), dev.port("pop3")];
    let started = Instant::now();
    let held: Vec<TcpStream> = rt.block_on(async {
        let mut held = Vec::with_capacity(connections);
        // 250 connects in flight at a time: the listen backlog is not what is under test.
        for chunk in (0..connections).collect::<Vec<_>>().chunks(250) {
            let mut set = JoinSet::new();
            for &i in chunk {
                set.spawn(slowloris(i, ports));
            }
            while let Some(done) = set.join_next().await {
                held.push(done.expect("task").unwrap_or_else(|e| panic!("{e}")));
            }
        }
        held
    });
    let opened_in = started.elapsed();
    let fds = open_fds(pid);
    let rss_held = proc_status(pid, "VmRSS:");
    let threads = proc_status(pid, "Threads:");

    let loaded = responsive("3");
    let rss_peak = proc_status(pid, "VmHWM:");
    drop(held);
    drop(rt);

    println!(
        "{connections} slowloris connections (SMTP, IMAP, POP3) opened in {:.1} s and held; \
         runtime: {fds} open fds, {threads} threads, RSS {} MiB before, {} MiB held \
         ({:.1} KiB per connection), peak {} MiB",
        opened_in.as_secs_f64(),
        rss_before / 1024,
        rss_held / 1024,
        (rss_held.saturating_sub(rss_before)) as f64 / connections as f64,
        rss_peak / 1024,
    );
    println!("slowest answer per step, unloaded: {unloaded}");
    println!("slowest answer per step, {connections} held: {loaded}");
    assert!(
        fds >= connections,
        "the runtime holds {fds} descriptors, fewer than the {connections} connections"
    );
    for (step, seconds) in loaded.as_object().expect("timings") {
        let seconds = seconds.as_f64().expect("seconds");
        assert!(
            seconds < 1.0,
            "{step} took {seconds:.3} s with {connections} connections held"
        );
    }
    // Bounded: well under what a naive server would use (a thread or a 64 KiB buffer each).
    let per_connection_kib = (rss_held.saturating_sub(rss_before)) / connections as u64;
    assert!(
        per_connection_kib < 32,
        "{per_connection_kib} KiB of RSS per held connection"
    );
}

#[test]
fn near_the_connection_limit_silent_sessions_give_their_slot_back_within_seconds() {
    // 85 slowloris sessions against a limit of 100: past 80% the server is under stress, and a
    // session that has not logged in gets 10 s for its next bytes instead of 300 s. Sessions
    // are dropped until fewer than 80 are in use (then the server is no longer under stress and
    // the rest keep the normal timeout), and the freed slots serve real clients.
    let tmp = tempfile::tempdir().expect("tmp");
    let data = tmp.path().join("data");
    let dev = Dev::start(&data);
    set_limits(&dev, 100);
    let ports = [dev.port("smtp"), dev.port("imap"), dev.port("pop3")];
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    // Each held session reports when the server closed it, or that it was still open at 20 s.
    let watchers: Vec<_> = (0..85)
        .map(|i| {
            rt.spawn(async move {
                let mut stream = slowloris(i, ports).await.unwrap_or_else(|e| panic!("{e}"));
                let start = Instant::now();
                let mut buf = [0u8; 256];
                loop {
                    match tokio::time::timeout(Duration::from_secs(20), stream.read(&mut buf)).await
                    {
                        Ok(Ok(0)) | Ok(Err(_)) => return Some(start.elapsed()),
                        Ok(Ok(_)) => continue,
                        Err(_) => return None,
                    }
                }
            })
        })
        .collect();
    // While the survivors are still held, a real client is served.
    std::thread::sleep(Duration::from_secs(13));
    let out = run(Command::new("python3")
        .arg(client_script("responsive.py"))
        .arg("127.0.0.1")
        .args(["smtp", "imaps", "pop3s"].map(|p| dev.port(p).to_string()))
        .args([BOB, &dev.password(BOB), "1"]));
    assert!(out.contains("smtp ehlo"), "{out}");
    let closed: Vec<Duration> = rt.block_on(async {
        let mut out = Vec::new();
        for w in watchers {
            if let Some(after) = w.await.expect("task") {
                out.push(after);
            }
        }
        out
    });
    let slowest = closed.iter().max().copied().unwrap_or_default();
    let fastest = closed.iter().min().copied().unwrap_or_default();
    println!(
        "85 silent sessions against a limit of 100: {} closed by the server after {:.1}-{:.1} s, \
         {} kept once below 80% in use",
        closed.len(),
        fastest.as_secs_f64(),
        slowest.as_secs_f64(),
        85 - closed.len()
    );
    assert!(
        closed.len() >= 6,
        "only {} sessions were dropped: still under stress",
        closed.len()
    );
    assert!(
        slowest < Duration::from_secs(15) && fastest >= Duration::from_secs(8),
        "dropped after {fastest:?}-{slowest:?}, not after about 10 s"
    );
}

/// One hostile pre-login IMAP connection: a LOGIN whose arguments are LITERAL+ literals of 8,000
/// bytes (each under the pre-login literal limit), up to `total` bytes, then held open. Returns
/// the bytes the server took and whether it closed the connection.
async fn literal_flood(
    source: IpAddr,
    port: u16,
    total: usize,
    connects: std::sync::Arc<tokio::sync::Semaphore>,
) -> Result<(usize, bool), String> {
    // A few hundred connects in flight at a time: the listen backlog (1,024) is not what is
    // under test, and a connection the kernel dropped from an overflowing backlog would wait
    // for a greeting forever (CI hung on one).
    let gate = connects.acquire_owned().await.map_err(|e| e.to_string())?;
    let (mut stream, _greeting) = connect_from(source, port).await?;
    drop(gate);
    let mut chunk = b" {8000+}\r\n".to_vec();
    chunk.resize(chunk.len() + 8000, b'x');
    let mut sent = 0;
    if stream.write_all(b"a LOGIN").await.is_err() {
        return Ok((0, true));
    }
    while sent < total {
        match tokio::time::timeout(Duration::from_secs(30), stream.write_all(&chunk)).await {
            Ok(Ok(())) => sent += chunk.len(),
            Ok(Err(_)) => return Ok((sent, true)),
            // The server neither reads nor closes: it holds what it took.
            Err(_) => return Ok((sent, false)),
        }
    }
    // Held: does the server let go of it?
    let mut buf = [0u8; 4096];
    loop {
        match tokio::time::timeout(Duration::from_secs(5), stream.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return Ok((sent, true)),
            Ok(Ok(_)) => continue,
            Err(_) => return Ok((sent, false)),
        }
    }
}

/// Issue 17 item 2: before login, literals were buffered up to the message size limit (25 MiB):
/// 16 connections took the runtime from 97 to 474 MB, and about 22 from one address passed a
/// pod's 512 Mi limit. 50 hostile connections from one address and 1,000 from ten others, each
/// trying to send 1 MiB of literals, now cost a bounded amount each, and real clients are
/// served meanwhile.
#[test]
fn hostile_literals_before_login_stay_under_a_pod_memory_limit() {
    const LIMIT_KIB: u64 = 512 * 1024;
    let tmp = tempfile::tempdir().expect("tmp");
    let dev = Dev::start(&tmp.path().join("data"));
    set_limits(&dev, 4_000);
    let pid = dev.pid();
    let password = dev.password(BOB);
    let responsive = |rounds: &str| -> serde_json::Value {
        let out = run(Command::new("python3")
            .arg(client_script("responsive.py"))
            .arg("127.0.0.1")
            .args(["smtp", "imaps", "pop3s"].map(|p| dev.port(p).to_string()))
            .args([BOB, &password, rounds]));
        serde_json::from_str(out.trim()).expect("timings JSON")
    };
    responsive("1");
    let rss_before = proc_status(pid, "VmRSS:");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let port = dev.port("imap");
    let flood = rt.spawn(async move {
        let mut set = JoinSet::new();
        let connects = std::sync::Arc::new(tokio::sync::Semaphore::new(200));
        let one = IpAddr::V4(Ipv4Addr::new(127, 0, 2, 1));
        for _ in 0..50 {
            set.spawn(literal_flood(one, port, 1 << 20, connects.clone()));
        }
        for i in 0..1_000u32 {
            let source = IpAddr::V4(Ipv4Addr::new(127, 0, 3, 1 + (i / 100) as u8));
            set.spawn(literal_flood(source, port, 1 << 20, connects.clone()));
        }
        let mut results = Vec::new();
        while let Some(done) = set.join_next().await {
            results.push(done.expect("task").unwrap_or_else(|e| panic!("{e}")));
        }
        results
    });
    // A real client while the flood runs.
    std::thread::sleep(Duration::from_millis(300));
    let during = responsive("1");
    let results = rt.block_on(flood).expect("flood");
    let rss_peak = proc_status(pid, "VmHWM:");
    let closed = results.iter().filter(|(_, c)| *c).count();
    let taken: usize = results.iter().map(|(s, _)| s).sum();
    println!(
        "{} hostile pre-login IMAP connections (50 from one address, 1,000 from ten): {closed} \
         closed by the server, {:.1} MiB sent by the clients in all; runtime RSS {} MiB before, \
         peak {} MiB (pod limit 512 MiB); a real client meanwhile: {during}",
        results.len(),
        taken as f64 / 1048576.0,
        rss_before / 1024,
        rss_peak / 1024,
    );
    assert_eq!(
        closed,
        results.len(),
        "connections left holding their bytes"
    );
    assert!(rss_peak < LIMIT_KIB, "peak RSS {rss_peak} KiB");
    for (step, seconds) in during.as_object().expect("timings") {
        let seconds = seconds.as_f64().expect("seconds");
        assert!(seconds < 5.0, "{step} took {seconds:.3} s during the flood");
    }
}
