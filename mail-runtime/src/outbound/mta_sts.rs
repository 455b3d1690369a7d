//! MTA-STS (RFC 8461) for direct delivery: a recipient domain that publishes a policy says
//! which MX hosts are its own and that they must be reached over TLS with a certificate valid
//! for their names. The policy is found through the `_mta-sts` TXT record, fetched over HTTPS
//! from `mta-sts.<domain>` (a certificate the system trusts, no redirects, at most 64 KiB), and
//! kept for its `max_age` while the record's `id` stays the same.
use std::{
    collections::HashMap,
    sync::Mutex,
    time::{Duration, Instant},
};

use mail_auth::{MessageAuthenticator, common::cache::NoCache, mta_sts::MtaSts};

/// How long fetching a policy may take (RFC 8461 s3.3 suggests at most a minute).
const FETCH_TIMEOUT: Duration = Duration::from_secs(20);
/// The largest policy read (RFC 8461 s3.3 suggests at least 64 KiB be accepted).
const MAX_POLICY: usize = 64 * 1024;
/// The longest a policy is kept (RFC 8461 s3.2: max_age is at most 31557600).
const MAX_AGE: u64 = 31_557_600;
/// The most MX patterns a policy may list (a domain has a handful; a policy listing thousands
/// is refused rather than kept for a year).
const MAX_MX: usize = 100;
/// The most policies kept; past it the one expiring first goes.
const MAX_KEPT: usize = 10_000;
/// How long a failed fetch is not tried again for the same record id: each try can hold a
/// delivery slot for up to [`FETCH_TIMEOUT`].
const RETRY_FAILED: Duration = Duration::from_secs(300);

/// What a policy asks of senders.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Deliver only to listed MX hosts, only over TLS with a valid certificate.
    Enforce,
    /// Deliver as without a policy; failures would only be reported.
    Testing,
    /// No policy.
    None,
}

/// A parsed policy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Policy {
    /// The mode.
    pub mode: Mode,
    /// The MX patterns (`mail.example.com`, `*.example.net`), lowercase.
    pub mx: Vec<String>,
    /// Seconds it may be kept.
    pub max_age: u64,
}

impl Policy {
    /// Parses a policy file (RFC 8461 s3.2): `key: value` lines, `version: STSv1` required,
    /// `mode`, `max_age` and (unless mode is none) at least one `mx`.
    pub fn parse(text: &str) -> Result<Policy, String> {
        let mut version = None;
        let mut mode = None;
        let mut max_age = None;
        let mut mx = Vec::new();
        for line in text.lines() {
            let Some((key, value)) = line.split_once(':') else {
                continue;
            };
            let value = value.trim();
            match key.trim() {
                "version" => version = Some(value.to_string()),
                "mode" => {
                    mode = Some(match value {
                        "enforce" => Mode::Enforce,
                        "testing" => Mode::Testing,
                        "none" => Mode::None,
                        other => return Err(format!("unknown mode {other:?}")),
                    })
                }
                "max_age" => {
                    max_age = Some(
                        value
                            .parse::<u64>()
                            .map_err(|_| format!("max_age {value:?} is not a number"))?
                            .min(MAX_AGE),
                    )
                }
                "mx" => mx.push(value.trim_end_matches('.').to_ascii_lowercase()),
                // Unknown keys are ignored (s3.2).
                _ => {}
            }
        }
        if version.as_deref() != Some("STSv1") {
            return Err("the policy has no \"version: STSv1\"".into());
        }
        let mode = mode.ok_or("the policy has no mode")?;
        let max_age = max_age.ok_or("the policy has no max_age")?;
        if mode != Mode::None && mx.is_empty() {
            return Err("the policy lists no mx".into());
        }
        if mx.len() > MAX_MX {
            return Err(format!(
                "the policy lists {} mx (at most {MAX_MX})",
                mx.len()
            ));
        }
        Ok(Policy { mode, mx, max_age })
    }

    /// Whether an MX host name matches one of the policy's patterns: exactly, or `*.` standing
    /// for one leftmost label (s4.1).
    pub fn allows(&self, host: &str) -> bool {
        let host = host.trim_end_matches('.').to_ascii_lowercase();
        self.mx
            .iter()
            .any(|pattern| match pattern.strip_prefix("*.") {
                Some(parent) => host
                    .split_once('.')
                    .is_some_and(|(label, rest)| !label.is_empty() && rest == parent),
                None => *pattern == host,
            })
    }
}

/// A policy kept: the TXT record's id it came with, and until when it holds.
#[derive(Debug, Clone)]
struct Kept {
    id: String,
    policy: Policy,
    until: Instant,
}

/// Policies by recipient domain.
#[derive(Debug, Default)]
pub struct Policies {
    kept: Mutex<HashMap<String, Kept>>,
    /// (domain, record id) whose fetch failed, and when.
    failed: Mutex<HashMap<(String, String), Instant>>,
}

/// Whether a `_mta-sts` record's id is one RFC 8461 s3.1 allows: 1 to 32 letters and digits.
fn valid_id(id: &str) -> bool {
    (1..=32).contains(&id.len()) && id.bytes().all(|b| b.is_ascii_alphanumeric())
}

impl Policies {
    /// The policy of `domain` in force (`None`: none, or mode none). RFC 8461 s5.1: a fresh
    /// policy is fetched when the TXT record's id differs from the kept one's, or nothing is
    /// kept; a kept policy that has not expired holds while the record is missing or the fetch
    /// fails (so an attacker who blocks DNS or HTTPS cannot turn a policy off).
    pub async fn policy(&self, resolver: &MessageAuthenticator, domain: &str) -> Option<Policy> {
        let domain = domain.trim_end_matches('.').to_ascii_lowercase();
        let kept = {
            let mut kept = self.kept.lock().expect("mta-sts lock");
            kept.retain(|_, k| k.until > Instant::now());
            kept.get(&domain).cloned()
        };
        // A record whose id is not what the RFC allows counts as no record.
        let id = resolver
            .txt_lookup::<MtaSts>(format!("_mta-sts.{domain}."), None::<&NoCache<_, _>>)
            .await
            .ok()
            .map(|r| r.id.clone())
            .filter(|id| valid_id(id));
        let recently_failed = |id: &str| {
            let mut failed = self.failed.lock().expect("mta-sts lock");
            failed.retain(|_, at| at.elapsed() < RETRY_FAILED);
            failed.contains_key(&(domain.clone(), id.to_string()))
        };
        let policy = match (id, kept) {
            (None, kept) => kept.map(|k| k.policy),
            (Some(id), Some(k)) if k.id == id => Some(k.policy),
            (Some(id), kept) if recently_failed(&id) => kept.map(|k| k.policy),
            (Some(id), kept) => match fetch(resolver, &domain).await {
                Ok(policy) => {
                    tracing::info!(%domain, %id, mode = ?policy.mode, "MTA-STS policy fetched");
                    let mut all = self.kept.lock().expect("mta-sts lock");
                    if all.len() >= MAX_KEPT && !all.contains_key(&domain) {
                        let first = all
                            .iter()
                            .min_by_key(|(_, k)| k.until)
                            .map(|(d, _)| d.clone());
                        if let Some(first) = first {
                            all.remove(&first);
                        }
                    }
                    all.insert(
                        domain.clone(),
                        Kept {
                            id,
                            policy: policy.clone(),
                            until: Instant::now() + Duration::from_secs(policy.max_age),
                        },
                    );
                    Some(policy)
                }
                Err(why) => {
                    tracing::warn!(%domain, error = %why, "MTA-STS policy not fetched");
                    self.failed
                        .lock()
                        .expect("mta-sts lock")
                        .insert((domain.clone(), id), Instant::now());
                    kept.map(|k| k.policy)
                }
            },
        };
        policy.filter(|p| p.mode != Mode::None)
    }
}

/// `https://mta-sts.<domain>/.well-known/mta-sts.txt`, parsed.
async fn fetch(resolver: &MessageAuthenticator, domain: &str) -> Result<Policy, String> {
    let host = format!("mta-sts.{domain}");
    match tokio::time::timeout(FETCH_TIMEOUT, get(resolver, &host)).await {
        Ok(Ok(text)) => Policy::parse(&text),
        Ok(Err(e)) => Err(e),
        Err(_) => Err(format!("{host} did not answer within {FETCH_TIMEOUT:?}")),
    }
}

async fn get(resolver: &MessageAuthenticator, host: &str) -> Result<String, String> {
    use http_body_util::BodyExt;
    let ips = super::send::addresses(resolver, host).await?;
    let mut last = format!("no address for {host}");
    for ip in ips {
        let stream = match tokio::net::TcpStream::connect((ip, 443)).await {
            Ok(s) => s,
            Err(e) => {
                last = format!("connecting to {host} ({ip}:443): {e}");
                continue;
            }
        };
        // The certificate must be valid for the host name, from a CA the system trusts.
        let connector = mail_send::smtp::tls::build_tls_connector(false)?;
        let name = rustls::pki_types::ServerName::try_from(host.to_string())
            .map_err(|e| format!("{host}: {e}"))?;
        let tls = connector
            .connect(name, stream)
            .await
            .map_err(|e| format!("TLS with {host}: {e}"))?;
        let (mut sender, connection) =
            hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tls))
                .await
                .map_err(|e| format!("HTTP with {host}: {e}"))?;
        let driver = tokio::spawn(connection);
        let request = hyper::Request::get("/.well-known/mta-sts.txt")
            .header(hyper::header::HOST, host)
            .body(http_body_util::Empty::<hyper::body::Bytes>::new())
            .map_err(|e| e.to_string())?;
        let result = async {
            let response = sender
                .send_request(request)
                .await
                .map_err(|e| format!("HTTP with {host}: {e}"))?;
            // s3.3: a redirect is not followed; only 200 counts.
            if response.status() != hyper::StatusCode::OK {
                return Err(format!("{host} answered {}", response.status()));
            }
            let text_plain = response
                .headers()
                .get(hyper::header::CONTENT_TYPE)
                .and_then(|v| v.to_str().ok())
                .is_some_and(|v| v.to_ascii_lowercase().starts_with("text/plain"));
            if !text_plain {
                return Err(format!("{host} did not answer with text/plain"));
            }
            let body = http_body_util::Limited::new(response.into_body(), MAX_POLICY)
                .collect()
                .await
                .map_err(|e| format!("the policy from {host}: {e}"))?
                .to_bytes();
            String::from_utf8(body.to_vec())
                .map_err(|_| format!("the policy from {host} is not UTF-8"))
        }
        .await;
        driver.abort();
        return result;
    }
    Err(last)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn policies_parse_as_rfc_8461_writes_them() {
        let policy = Policy::parse(
            "version: STSv1\r\nmode: enforce\r\nmx: mail.example.com\r\nmx: *.example.net\r\nmax_age: 604800\r\n",
        )
        .expect("a policy");
        assert_eq!(policy.mode, Mode::Enforce);
        assert_eq!(policy.max_age, 604_800);
        assert!(policy.allows("mail.example.com."));
        assert!(policy.allows("MX1.example.net"));
        // A wildcard stands for one label only.
        assert!(!policy.allows("a.b.example.net"));
        assert!(!policy.allows("example.net"));
        assert!(!policy.allows("mail.example.com.evil.test"));
        assert_eq!(
            Policy::parse("version: STSv1\nmode: testing\nmx: m.example\nmax_age: 99999999999\n")
                .map(|p| p.max_age),
            Ok(MAX_AGE)
        );
        assert!(Policy::parse("mode: enforce\nmx: m\nmax_age: 1\n").is_err());
        assert!(Policy::parse("version: STSv1\nmode: enforce\nmax_age: 1\n").is_err());
        assert!(Policy::parse("version: STSv1\nmode: strict\nmx: m\nmax_age: 1\n").is_err());
        assert!(Policy::parse("version: STSv1\nmode: none\nmax_age: 1\n").is_ok());
        let many = format!(
            "version: STSv1\nmode: enforce\nmax_age: 1\n{}",
            "mx: m.example\n".repeat(MAX_MX + 1)
        );
        assert!(Policy::parse(&many).is_err());
        assert!(valid_id("20261207T1200") && !valid_id("") && !valid_id("a-b"));
        assert!(!valid_id(&"a".repeat(33)));
    }
}
