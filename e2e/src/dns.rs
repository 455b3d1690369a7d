//! dnsmasq on loopback, for the tests that need DNS: MX records for outbound delivery, DNS
//! lists for inbound screening, a domain's zone for the operator's DNS checks.

use std::{
    net::UdpSocket,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

/// dnsmasq on 127.0.0.1 at a free port, answering only for the records given.
#[derive(Debug)]
pub struct Dns {
    child: Child,
    /// The port, on 127.0.0.1, UDP and TCP.
    pub port: u16,
}

impl Dns {
    /// dnsmasq listens on UDP and TCP at one port. A port free for UDP may be taken for TCP
    /// by another test's listener (the kernel hands the two out apart), and dnsmasq then exits
    /// at once: it was seen in CI as "did not start". So the port is checked free both ways,
    /// and a dnsmasq that exits is started again on another.
    pub fn start(args: &[String]) -> Dns {
        for _ in 0..5 {
            if let Some(dns) = Dns::start_on(free_udp_and_tcp_port(), args) {
                return dns;
            }
        }
        panic!("dnsmasq exited at start five times (ports taken?)")
    }

    /// Serves `args` instead, on the same port (dnsmasq reads its records once): a zone that
    /// changes under a client that keeps asking the same server.
    pub fn restart(&mut self, args: &[String]) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let start = Instant::now();
        loop {
            if let Some(dns) = Dns::start_on(self.port, args) {
                // The old child was reaped above: dropping it again does nothing.
                *self = dns;
                return;
            }
            assert!(
                start.elapsed() < Duration::from_secs(10),
                "dnsmasq did not start again on port {}",
                self.port
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// dnsmasq on `port`, once it answers; `None` if it exited (the port taken).
    fn start_on(port: u16, args: &[String]) -> Option<Dns> {
        {
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
                    return None;
                }
                if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                    return Some(Dns { child, port });
                }
                assert!(
                    start.elapsed() < Duration::from_secs(10),
                    "dnsmasq did not start"
                );
                std::thread::sleep(Duration::from_millis(50));
            }
        }
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
