//! `DNSVerified`: each record a MailDomain's status says to publish, resolved and compared with
//! what it should be. Looked up through the cluster's resolver or the servers given; a verdict
//! is kept per domain and renewed on a schedule (or when the records change), never per
//! reconcile.
use std::{
    collections::HashMap,
    net::SocketAddr,
    sync::Mutex,
    time::{Duration, Instant},
};

use hickory_resolver::{
    TokioResolver,
    config::{NameServerConfig, ResolverConfig, ResolverOpts},
    net::runtime::TokioRuntimeProvider,
    proto::rr::{RData, RecordType},
};
use kubemail_crds::mail_domain::DnsRecord;

/// Which resolver answers (the operator's `--dns-check`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// No checks (no `DNSVerified` condition).
    Off,
    /// The resolver of the operator's pod (`/etc/resolv.conf`: the cluster's).
    Cluster,
    /// These servers.
    Servers(Vec<SocketAddr>),
}

impl std::str::FromStr for Source {
    type Err = String;
    fn from_str(text: &str) -> Result<Self, String> {
        match text {
            "off" => Ok(Source::Off),
            "cluster" => Ok(Source::Cluster),
            list => list
                .split(',')
                .map(|s| {
                    let s = s.trim();
                    s.parse::<SocketAddr>()
                        .or_else(|_| s.parse::<std::net::IpAddr>().map(|ip| (ip, 53).into()))
                        .map_err(|_| {
                            format!(
                                "{s:?} is not an address (IP or IP:PORT); or use `off` or `cluster`"
                            )
                        })
                })
                .collect::<Result<Vec<_>, _>>()
                .map(Source::Servers),
        }
    }
}

/// What one check found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Every record resolves as it should; how many were checked.
    Verified(usize),
    /// Some records are missing or wrong: one line each.
    Wrong(Vec<String>),
    /// The resolver did not answer (or failed) for some names: what it said.
    Unreachable(String),
}

/// The resolver and each domain's last verdict.
pub struct Checker {
    resolver: TokioResolver,
    /// Between checks of a domain whose records were verified.
    every: Duration,
    /// Between checks of a domain with a problem (users fixing their zone want to see it).
    again: Duration,
    /// MailDomain uid -> (the records checked, when, the verdict).
    last: Mutex<HashMap<String, Checked>>,
}

/// The records checked, when, and the verdict.
type Checked = (Vec<DnsRecord>, Instant, Verdict);

impl std::fmt::Debug for Checker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Checker")
            .field("every", &self.every)
            .finish_non_exhaustive()
    }
}

impl Checker {
    /// A checker on `source` (`None` for [`Source::Off`]), checking verified domains every
    /// `every` and the others every minute (or `every`, if shorter).
    pub fn new(source: &Source, every: Duration) -> Result<Option<Checker>, String> {
        let mut options = ResolverOpts::default();
        options.timeout = Duration::from_secs(3);
        options.attempts = 2;
        // Each check asks again: an answer cached from before the user's fix would hide it.
        options.cache_size = 0;
        let builder = match source {
            Source::Off => return Ok(None),
            Source::Cluster => TokioResolver::builder_tokio()
                .map_err(|e| format!("cannot read the system's resolver config: {e}"))?,
            Source::Servers(servers) => {
                let servers = servers
                    .iter()
                    .map(|addr| {
                        let mut server = NameServerConfig::udp_and_tcp(addr.ip());
                        for connection in &mut server.connections {
                            connection.port = addr.port();
                        }
                        server
                    })
                    .collect();
                TokioResolver::builder_with_config(
                    ResolverConfig::from_name_servers(servers),
                    TokioRuntimeProvider::default(),
                )
            }
        };
        let resolver = builder
            .with_options(options)
            .build()
            .map_err(|e| format!("cannot build a DNS resolver: {e}"))?;
        Ok(Some(Checker {
            resolver,
            every,
            again: every.min(Duration::from_secs(60)),
            last: Mutex::new(HashMap::new()),
        }))
    }

    /// The verdict on a domain's records (`key`: the MailDomain's uid, so a domain deleted and
    /// made again starts afresh): the last one while it is fresh and the records are the same,
    /// a new check otherwise.
    pub async fn verdict(&self, key: String, records: &[DnsRecord]) -> Verdict {
        if let Some((checked, at, verdict)) = self.last.lock().expect("dns verdicts").get(&key) {
            let wait = match verdict {
                Verdict::Verified(_) => self.every,
                _ => self.again,
            };
            if checked == records && at.elapsed() < wait {
                return verdict.clone();
            }
        }
        let verdict = self.check(records).await;
        let mut last = self.last.lock().expect("dns verdicts");
        // The verdicts of domains deleted since go (a live domain's is renewed within `every`).
        let keep = self.every * 3;
        last.retain(|_, (_, at, _)| at.elapsed() < keep);
        last.insert(key, (records.to_vec(), Instant::now(), verdict.clone()));
        verdict
    }

    async fn check(&self, records: &[DnsRecord]) -> Verdict {
        let answers = futures::future::join_all(records.iter().map(|r| self.lookup(r))).await;
        let mut wrong = Vec::new();
        let mut failed = Vec::new();
        for (record, answer) in records.iter().zip(answers) {
            match answer {
                Ok(found) => wrong.extend(judge(record, &found)),
                Err(e) => failed.push(format!("{} {}: {e}", record.type_, record.name)),
            }
        }
        if !failed.is_empty() {
            Verdict::Unreachable(failed.join("; "))
        } else if wrong.is_empty() {
            Verdict::Verified(records.len())
        } else {
            Verdict::Wrong(wrong)
        }
    }

    /// The record's type at its name, as values in the form status uses; no such name or no
    /// such record is an empty list, any other failure an error.
    async fn lookup(&self, record: &DnsRecord) -> Result<Vec<String>, String> {
        let type_ = match record.type_.as_str() {
            "MX" => RecordType::MX,
            "TXT" => RecordType::TXT,
            "SRV" => RecordType::SRV,
            "A" => RecordType::A,
            "AAAA" => RecordType::AAAA,
            "CNAME" => RecordType::CNAME,
            other => return Err(format!("record type {other} is not checked")),
        };
        match self.resolver.lookup(record.name.as_str(), type_).await {
            Ok(lookup) => Ok(lookup
                .answers()
                .iter()
                .filter_map(|r| as_value(&r.data))
                .collect()),
            Err(e) if e.is_no_records_found() || e.is_nx_domain() => Ok(Vec::new()),
            Err(e) => Err(e.to_string()),
        }
    }
}

/// A record's data written as status writes values.
fn as_value(data: &RData) -> Option<String> {
    Some(match data {
        RData::MX(mx) => format!("{} {}", mx.preference, mx.exchange),
        RData::SRV(srv) => format!(
            "{} {} {} {}",
            srv.priority, srv.weight, srv.port, srv.target
        ),
        RData::TXT(txt) => txt
            .txt_data
            .iter()
            .map(|s| String::from_utf8_lossy(s).into_owned())
            .collect(),
        RData::A(a) => a.0.to_string(),
        RData::AAAA(aaaa) => aaaa.0.to_string(),
        RData::CNAME(name) => name.0.to_string(),
        _ => return None,
    })
}

/// What is wrong with a record, given the values found at its name (`None`: it is right).
///
/// - MX, SRV, A, AAAA, CNAME: a value with the expected target is there (an MX's preference
///   and an SRV's priority and weight are the user's to choose).
/// - SPF: exactly one `v=spf1` record (RFC 7208 s3.2), the expected one or one with the `mx`
///   mechanism (users add their other senders).
/// - DKIM: a record with the expected public key (`p=`): after a key rotation the old one is
///   wrong, and mail signed with the new key fails.
/// - DMARC: exactly one `v=DMARC1` record (the policy is the user's).
pub fn judge(record: &DnsRecord, found: &[String]) -> Option<String> {
    let what = format!("{} {} {}", record.purpose, record.type_, record.name);
    let fold = |s: &str| s.trim().trim_end_matches('.').to_ascii_lowercase();
    // Sorted: resolvers rotate answers, and a message that changed with them would rewrite
    // status on every check.
    let shown = |values: &[&String]| {
        let mut shown: Vec<String> = values.iter().map(|v| short(v)).collect();
        shown.sort();
        shown.join(" | ")
    };
    match (record.purpose.as_str(), record.type_.as_str()) {
        ("SPF", _) => {
            let spf: Vec<&String> = found
                .iter()
                .filter(|v| {
                    let v = v.to_ascii_lowercase();
                    v == "v=spf1" || v.starts_with("v=spf1 ")
                })
                .collect();
            match spf.as_slice() {
                [] => Some(format!("{what}: missing (expected \"{}\")", record.value)),
                [one] if one.as_str() == record.value || authorises_something(one) => None,
                [one] => Some(format!(
                    "{what}: \"{}\" lets no host send for the domain (expected \"{}\")",
                    short(one),
                    record.value
                )),
                many => Some(format!(
                    "{what}: {} SPF records ({}); RFC 7208 allows one",
                    many.len(),
                    shown(many)
                )),
            }
        }
        ("DKIM", _) => {
            let expected = dkim_key(&record.value);
            if found.iter().any(|v| dkim_key(v) == expected) {
                return None;
            }
            let keys: Vec<&String> = found.iter().filter(|v| !dkim_key(v).is_empty()).collect();
            Some(if keys.is_empty() {
                format!("{what}: missing")
            } else {
                format!(
                    "{what}: another key is published ({}; expected p={})",
                    shown(&keys),
                    short(&expected)
                )
            })
        }
        ("DMARC", _) => {
            let dmarc: Vec<&String> = found
                .iter()
                .filter(|v| v.to_ascii_lowercase().starts_with("v=dmarc1"))
                .collect();
            match dmarc.len() {
                0 => Some(format!("{what}: missing (expected \"{}\")", record.value)),
                1 => None,
                n => Some(format!(
                    "{what}: {n} DMARC records ({}); receivers ignore them all",
                    shown(&dmarc)
                )),
            }
        }
        (_, type_) => {
            // The target: the last word of an MX or SRV value, the whole of the others.
            let target = |v: &str| {
                let word = match type_ {
                    "MX" | "SRV" => v.split_whitespace().last().unwrap_or_default(),
                    _ => v,
                };
                fold(word)
            };
            let port = |v: &str| match type_ {
                "SRV" => v.split_whitespace().nth(2).map(str::to_string),
                _ => None,
            };
            let expected = (target(&record.value), port(&record.value));
            if found.iter().any(|v| (target(v), port(v)) == expected) {
                return None;
            }
            // RFC 6186 s4: no record at all also says the service is not offered.
            if type_ == "SRV" && expected.0.is_empty() && found.is_empty() {
                return None;
            }
            Some(if found.is_empty() {
                format!("{what}: missing (expected {})", record.value)
            } else {
                format!(
                    "{what}: {} (expected {})",
                    shown(&found.iter().collect::<Vec<_>>()),
                    record.value
                )
            })
        }
    }
}

/// Whether an SPF record lets some host send: a mechanism other than `all` (`mx`, `a`, `ip4:`,
/// `include:`, ...) that does not fail, or a `redirect=`. How the domain's own MX fits in is
/// the user's choice; `v=spf1 -all` says nobody may send, which breaks every message.
fn authorises_something(spf: &str) -> bool {
    spf.split_whitespace().skip(1).any(|term| {
        let term = term.to_ascii_lowercase();
        if term.starts_with("redirect=") {
            return true;
        }
        let (qualifier, mechanism) = match term.chars().next() {
            Some(q @ ('+' | '-' | '~' | '?')) => (q, &term[1..]),
            _ => ('+', term.as_str()),
        };
        let name = mechanism.split([':', '/']).next().unwrap_or_default();
        qualifier != '-'
            && matches!(
                name,
                "mx" | "a" | "ip4" | "ip6" | "include" | "exists" | "ptr"
            )
    })
}

/// The `p=` tag of a DKIM key record, without white space (empty when there is none).
fn dkim_key(value: &str) -> String {
    value
        .split(';')
        .filter_map(|tag| tag.split_once('='))
        .find(|(name, _)| name.trim() == "p")
        .map(|(_, key)| key.split_whitespace().collect())
        .unwrap_or_default()
}

/// A value cut to 40 characters for a condition's message.
fn short(value: &str) -> String {
    if value.chars().count() <= 40 {
        value.to_string()
    } else {
        format!("{}...", value.chars().take(40).collect::<String>())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(purpose: &str, type_: &str, name: &str, value: &str) -> DnsRecord {
        DnsRecord {
            purpose: purpose.into(),
            type_: type_.into(),
            name: name.into(),
            value: value.into(),
        }
    }

    fn found(values: &[&str]) -> Vec<String> {
        values.iter().map(|v| v.to_string()).collect()
    }

    #[test]
    fn each_kind_of_record_is_judged_as_receivers_read_it() {
        let mx = record("MX", "MX", "example.test.", "10 mail.example.test.");
        assert_eq!(judge(&mx, &found(&["20 MAIL.example.test."])), None);
        assert!(
            judge(&mx, &found(&["10 mx.elsewhere.example."]))
                .is_some_and(|m| m.contains("mx.elsewhere.example") && m.contains("expected"))
        );
        assert!(judge(&mx, &[]).is_some_and(|m| m.contains("missing")));

        let spf = record("SPF", "TXT", "example.test.", "v=spf1 mx -all");
        assert_eq!(
            judge(&spf, &found(&["v=spf1 mx -all", "google-site=x"])),
            None
        );
        assert_eq!(
            judge(&spf, &found(&["v=spf1 mx include:_spf.example.net ~all"])),
            None
        );
        assert_eq!(judge(&spf, &found(&["v=spf1 ip4:192.0.2.25 -all"])), None);
        assert_eq!(
            judge(&spf, &found(&["v=spf1 redirect=_spf.example.net"])),
            None
        );
        assert!(judge(&spf, &found(&["v=spf1 -mx -all"])).is_some());
        assert!(judge(&spf, &found(&["v=spf10 mx"])).is_some_and(|m| m.contains("missing")));
        assert!(judge(&spf, &found(&["v=spf1 -all"])).is_some());
        assert!(
            judge(&spf, &found(&["v=spf1 mx -all", "v=spf1 a -all"]))
                .is_some_and(|m| m.contains("2 SPF records"))
        );

        let dkim = record(
            "DKIM",
            "TXT",
            "default._domainkey.example.test.",
            "v=DKIM1; k=rsa; p=NEWKEY",
        );
        // Published in several strings with spaces: the same key.
        assert_eq!(judge(&dkim, &found(&["v=DKIM1; k=rsa; p=NEW KEY"])), None);
        assert!(
            judge(&dkim, &found(&["v=DKIM1; k=rsa; p=OLDKEY"]))
                .is_some_and(|m| m.contains("another key") && m.contains("OLDKEY"))
        );

        let dmarc = record(
            "DMARC",
            "TXT",
            "_dmarc.example.test.",
            "v=DMARC1; p=quarantine",
        );
        assert_eq!(judge(&dmarc, &found(&["v=DMARC1; p=reject"])), None);
        assert!(judge(&dmarc, &found(&["v=DMARC1; p=none", "v=DMARC1; p=reject"])).is_some());

        let srv = record(
            "RFC 6186 imaps",
            "SRV",
            "_imaps._tcp.example.test.",
            "0 1 993 mail.example.test.",
        );
        assert_eq!(judge(&srv, &found(&["5 0 993 mail.example.test."])), None);
        assert!(judge(&srv, &found(&["0 1 143 mail.example.test."])).is_some());
        let off = record(
            "RFC 6186 pop3",
            "SRV",
            "_pop3._tcp.example.test.",
            "0 0 0 .",
        );
        assert_eq!(judge(&off, &found(&["0 0 0 ."])), None);
        assert_eq!(judge(&off, &[]), None);
        assert!(judge(&off, &found(&["0 1 110 mail.example.test."])).is_some());
    }

    #[test]
    fn the_resolver_source_is_parsed_from_the_flag() {
        assert_eq!("off".parse(), Ok(Source::Off));
        assert_eq!("cluster".parse(), Ok(Source::Cluster));
        assert_eq!(
            "127.0.0.1:5353, ::1".parse(),
            Ok(Source::Servers(vec![
                "127.0.0.1:5353".parse().expect("addr"),
                "[::1]:53".parse().expect("addr"),
            ]))
        );
        assert!("dns.example".parse::<Source>().is_err());
    }
}
