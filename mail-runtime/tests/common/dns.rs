//! dnsmasq on loopback, for the tests that need DNS: MX records for outbound delivery, DNS
//! lists for inbound screening.
#![allow(dead_code)]

use std::{
    net::UdpSocket,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

/// dnsmasq on 127.0.0.1 at a free port, answering only for the records given.
pub struct Dns {
    child: Child,
    pub port: u16,
}

impl Dns {
    /// dnsmasq listens on UDP and TCP at one port. A port free for UDP may be taken for TCP
    /// by another test's listener (the kernel hands the two out apart), and dnsmasq then exits
    /// at once: it was seen in CI as "did not start". So the port is checked free both ways,
    /// and a dnsmasq that exits is started again on another.
    pub fn start(args: &[String]) -> Dns {
        for _ in 0..5 {
            let port = free_udp_and_tcp_port();
            let mut child = Command::new("dnsmasq")
                .args([
                    "--keep-in-foreground",
                    "--conf-file=/dev/null",
                    "--no-resolv",
                    "--no-hosts",
                    "--no-poll",
                    "--bind-interfaces",
                    "--listen-address=127.0.0.1",
                    "--user=root",
                    "--group=root",
                    "--pid-file=",
                    // Names under .test that are not listed do not exist (NXDOMAIN, not REFUSED).
                    "--local=/test/",
                    &format!("--port={port}"),
                ])
                .args(args)
                .stdin(Stdio::null())
                .spawn()
                .expect("dnsmasq (Debian's dnsmasq-base) runs");
            // Ready when it answers on TCP while still running (a listener of another test on
            // the same port would answer too).
            let start = Instant::now();
            loop {
                if child.try_wait().ok().flatten().is_some() {
                    break;
                }
                if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                    return Dns { child, port };
                }
                assert!(
                    start.elapsed() < Duration::from_secs(10),
                    "dnsmasq did not start"
                );
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        panic!("dnsmasq exited at start five times (ports taken?)")
    }
}

/// A port on 127.0.0.1 that neither a UDP nor a TCP socket holds right now.
fn free_udp_and_tcp_port() -> u16 {
    loop {
        let tcp = std::net::TcpListener::bind("127.0.0.1:0").expect("a free TCP port");
        let port = tcp.local_addr().expect("addr").port();
        if UdpSocket::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
}

impl Drop for Dns {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
