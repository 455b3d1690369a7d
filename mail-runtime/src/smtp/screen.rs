//! Screening of clients from outside on port 25, before their mail is taken, with nothing but
//! DNS and memory: DNS lists (the client's address looked up in each zone, weights added up,
//! allowlists weighing negative), greylisting (a new client network, sender and recipient are
//! told to come back later; real servers do, most spam bots do not), HELO checks, and the
//! pause before the banner that catches clients that talk first.
//!
//! Logged-in users and the relay networks are never screened, and nor is any listener but
//! port 25. A list that does not answer in time counts as not listing the client: a DNS
//! outage must not stop the mail.
use std::{collections::HashMap, net::IpAddr, sync::Mutex, time::Duration};

use crate::config::{Config, DnsListConfig, GreylistConfig};

/// How long all DNS list lookups of one client may take together.
pub const DNS_LIST_TIMEOUT: Duration = Duration::from_secs(3);
/// Triplets greylisting remembers at most.
pub const MAX_GREYLIST_ENTRIES: usize = 200_000;

/// Why a client is refused by the DNS lists: the lists that name it, with their weights.
pub async fn dns_lists(
    resolver: &mail_auth::MessageAuthenticator,
    lists: &[DnsListConfig],
    threshold: i32,
    ip: IpAddr,
) -> Option<String> {
    let reversed = reversed(ip);
    let lookups = lists.iter().map(|list| {
        let name = format!("{reversed}.{}.", list.zone.trim_end_matches('.'));
        async move {
            let answers = resolver.ipv4_lookup_raw(&name).await.ok()?;
            let listed = answers.entry.iter().any(|a| {
                a.octets()[0] == 127 && (list.answers.is_empty() || list.answers.contains(a))
            });
            listed.then_some(list)
        }
    });
    let found = tokio::time::timeout(DNS_LIST_TIMEOUT, futures::future::join_all(lookups))
        .await
        .unwrap_or_default();
    let listed: Vec<&DnsListConfig> = found.into_iter().flatten().collect();
    let score: i32 = listed.iter().map(|l| l.weight).sum();
    (score >= threshold && !listed.is_empty()).then(|| {
        let zones: Vec<&str> = listed
            .iter()
            .filter(|l| l.weight > 0)
            .map(|l| l.zone.as_str())
            .collect();
        format!("client {ip} is listed at {}", zones.join(", "))
    })
}

/// The address as DNS lists take it: IPv4 octets reversed, IPv6 nibbles reversed.
fn reversed(ip: IpAddr) -> String {
    match crate::config::canonical_ip(ip) {
        IpAddr::V4(v4) => {
            let o = v4.octets();
            format!("{}.{}.{}.{}", o[3], o[2], o[1], o[0])
        }
        IpAddr::V6(v6) => {
            let hex: String = v6.octets().iter().map(|b| format!("{b:02x}")).collect();
            let nibbles: Vec<String> = hex.chars().rev().map(String::from).collect();
            nibbles.join(".")
        }
    }
}

/// The client's network as greylisting counts it: an IPv4 /24 or IPv6 /64, so a sender's
/// pool of outbound servers retries as one.
fn network(ip: IpAddr) -> String {
    match crate::config::canonical_ip(ip) {
        IpAddr::V4(v4) => {
            let o = v4.octets();
            format!("{}.{}.{}", o[0], o[1], o[2])
        }
        IpAddr::V6(v6) => {
            let s = v6.segments();
            format!("{:x}:{:x}:{:x}:{:x}", s[0], s[1], s[2], s[3])
        }
    }
}

#[derive(Debug, Clone, Copy)]
struct Seen {
    first: u64,
    passed: bool,
    expires: u64,
}

/// Triplets one client network may have remembered at once.
pub const MAX_GREYLIST_PER_NETWORK: usize = 1_000;

/// Greylisting's memory, shared by every session of the runtime: triplets by client network.
/// A flood cannot push out what is remembered: a network holds at most
/// [`MAX_GREYLIST_PER_NETWORK`], and when all are full, new triplets are asked to wait without
/// being remembered (they pass once the flood is over), while senders that already waited or
/// passed keep their place.
#[derive(Debug, Default)]
pub struct Greylist(
    Mutex<Memory>,
    std::sync::OnceLock<crate::store::postgres::Postgres>,
);

#[derive(Debug, Default)]
struct Memory {
    networks: HashMap<String, HashMap<String, Seen>>,
    entries: usize,
}

impl Greylist {
    /// Remembers in the database from now on, for every replica (the PostgreSQL store); this
    /// process's memory is used only while the database cannot be reached.
    pub fn share(&self, db: crate::store::postgres::Postgres) {
        let _ = self.1.set(db);
    }

    /// Whether a message from `ip`, `from` to `to` may come now; if not, in how many seconds.
    pub fn check(
        &self,
        ip: IpAddr,
        from: &str,
        to: &str,
        now: u64,
        timing: &GreylistConfig,
    ) -> Result<(), u64> {
        let key = format!("{}\0{}", from.to_ascii_lowercase(), to.to_ascii_lowercase());
        let net = network(ip);
        let delay = u64::from(timing.delay_seconds);
        if let Some(db) = self.1.get() {
            // PostgreSQL text holds no NUL; an envelope address holds no line feed.
            let triplet = key.replace('\0', "\n");
            let ask = crate::store::postgres::GreylistAsk {
                network: &net,
                triplet: &triplet,
                now: now as i64,
                delay: i64::from(timing.delay_seconds),
                retry_window: i64::from(timing.retry_window_seconds),
                pass: i64::from(timing.pass_seconds),
                per_network: MAX_GREYLIST_PER_NETWORK as i64,
                total: MAX_GREYLIST_ENTRIES as i64,
            };
            match db.greylist_check(ask) {
                Ok(verdict) => return verdict.map_err(|wait| wait.max(0) as u64),
                Err(err) => {
                    tracing::warn!(error = %err, "greylisting decides alone: the database is unavailable");
                }
            }
        }
        let mut memory = self.0.lock().expect("greylist lock");
        let Memory { networks, entries } = &mut *memory;
        if let Some(entry) = networks.get_mut(&net).and_then(|n| n.get_mut(&key))
            && entry.expires > now
        {
            if entry.passed || now >= entry.first + delay {
                entry.passed = true;
                entry.expires = now + u64::from(timing.pass_seconds);
                return Ok(());
            }
            return Err(entry.first + delay - now);
        }
        if *entries >= MAX_GREYLIST_ENTRIES {
            // Expired entries go; live ones stay.
            networks.retain(|_, triplets| {
                triplets.retain(|_, e| e.expires > now);
                !triplets.is_empty()
            });
            *entries = networks.values().map(HashMap::len).sum();
        }
        let full_here = networks
            .get(&net)
            .is_some_and(|n| n.len() >= MAX_GREYLIST_PER_NETWORK);
        if *entries >= MAX_GREYLIST_ENTRIES || full_here {
            return Err(delay);
        }
        let triplets = networks.entry(net).or_default();
        if triplets
            .insert(
                key,
                Seen {
                    first: now,
                    passed: false,
                    expires: now + u64::from(timing.retry_window_seconds),
                },
            )
            .is_none()
        {
            *entries += 1;
        }
        Err(delay)
    }
}

/// Why a HELO/EHLO name is refused, if it is.
pub fn helo_refusal(helo: &str, peer: IpAddr, config: &Config) -> Option<String> {
    if let Some(literal) = helo.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
        let parsed: Option<IpAddr> = match literal.get(..5) {
            Some(p) if p.eq_ignore_ascii_case("IPv6:") => literal[5..].parse().ok(),
            _ => literal.parse().ok(),
        };
        return match parsed {
            Some(ip) if crate::config::canonical_ip(ip) == crate::config::canonical_ip(peer) => {
                None
            }
            Some(_) => Some(format!(
                "the HELO address literal {helo} is not your address"
            )),
            None => Some(format!(
                "the HELO name {helo} is not a valid address literal"
            )),
        };
    }
    let name = helo.trim_end_matches('.').to_ascii_lowercase();
    let label_ok = |l: &str| {
        !l.is_empty()
            && l.len() <= 63
            && l.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
            && !l.starts_with('-')
            && !l.ends_with('-')
    };
    let fqdn = name.contains('.')
        && name.split('.').all(label_ok)
        && !name
            .rsplit('.')
            .next()
            .is_some_and(|tld| tld.chars().all(|c| c.is_ascii_digit()));
    if !fqdn {
        return Some(format!(
            "the HELO name {helo} is not a fully qualified domain name"
        ));
    }
    if name == config.raw.hostname.to_ascii_lowercase() || config.serves_domain(&name) {
        return Some(format!("the HELO name {helo} is this server's own"));
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_are_reversed_as_dns_lists_want_them() {
        assert_eq!(reversed("192.0.2.99".parse().expect("ip")), "99.2.0.192");
        assert_eq!(
            reversed("2001:db8::1".parse().expect("ip")),
            "1.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.8.b.d.0.1.0.0.2"
        );
        // An IPv4-mapped address is the IPv4 address.
        assert_eq!(
            reversed("::ffff:192.0.2.99".parse().expect("ip")),
            "99.2.0.192"
        );
    }

    #[test]
    fn a_triplet_passes_after_its_delay_and_then_at_once() {
        let grey = Greylist::default();
        let timing = GreylistConfig {
            delay_seconds: 300,
            retry_window_seconds: 3600,
            pass_seconds: 86_400,
        };
        let ip: IpAddr = "192.0.2.10".parse().expect("ip");
        let other: IpAddr = "192.0.2.77".parse().expect("ip");
        assert_eq!(
            grey.check(ip, "a@x.org", "b@y.test", 1000, &timing),
            Err(300)
        );
        assert_eq!(
            grey.check(ip, "A@X.org", "b@y.test", 1100, &timing),
            Err(200)
        );
        // Another server of the same /24 retries: it is the same sender.
        assert_eq!(
            grey.check(other, "a@x.org", "b@y.test", 1300, &timing),
            Ok(())
        );
        assert_eq!(
            grey.check(ip, "a@x.org", "b@y.test", 50_000, &timing),
            Ok(())
        );
        // Not retried within the window: it starts over.
        assert_eq!(
            grey.check(ip, "c@x.org", "b@y.test", 1000, &timing),
            Err(300)
        );
        assert_eq!(
            grey.check(ip, "c@x.org", "b@y.test", 5000, &timing),
            Err(300)
        );
    }

    #[test]
    fn a_flood_from_one_network_cannot_push_out_other_senders() {
        let grey = Greylist::default();
        let timing = GreylistConfig {
            delay_seconds: 300,
            retry_window_seconds: 3600,
            pass_seconds: 86_400,
        };
        let honest: IpAddr = "198.51.100.7".parse().expect("ip");
        let flood: IpAddr = "203.0.113.9".parse().expect("ip");
        assert!(
            grey.check(honest, "a@x.org", "b@y.test", 1000, &timing)
                .is_err()
        );
        for n in 0..5_000 {
            let _ = grey.check(
                flood,
                &format!("s{n}@spam.example"),
                "b@y.test",
                1001,
                &timing,
            );
        }
        // The flooding network holds at most its share; the honest sender passes on retry.
        assert_eq!(
            grey.0.lock().expect("lock").networks[&network(flood)].len(),
            MAX_GREYLIST_PER_NETWORK
        );
        assert_eq!(
            grey.check(honest, "a@x.org", "b@y.test", 1400, &timing),
            Ok(())
        );
    }
}
