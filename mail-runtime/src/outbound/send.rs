//! One delivery attempt for a group of recipients: find the next hop (the domain's MX hosts,
//! the domain's own address when it has no MX, or the smarthost), then one SMTP transaction
//! with mail-send — opportunistic STARTTLS towards MX hosts (required when the RelayPolicy
//! says so; required and verified for the hosts of a domain whose MTA-STS policy enforces),
//! the smarthost's own TLS mode and AUTH. Each recipient gets its own outcome.
use std::{net::IpAddr, time::Duration};

use mail_auth::{IpLookupStrategy, MessageAuthenticator, common::cache::NoCache};
use mail_send::{SmtpClient, SmtpClientBuilder, smtp::message::Parameters};
use tokio::io::{AsyncRead, AsyncWrite};

use crate::config::{Config, RouteMode, SmarthostTls};

/// How long one SMTP conversation may take.
const SMTP_TIMEOUT: Duration = Duration::from_secs(120);

/// What became of one recipient.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// The next hop took it (its reply).
    Delivered(String),
    /// Try again later (the reply or error).
    Temporary(String),
    /// Refused for good (the reply).
    Permanent(String),
}

/// The outcome for each recipient (same order) and the host that answered.
#[derive(Debug)]
pub struct Attempt {
    /// The host that gave the replies (name or address).
    pub host: Option<String>,
    /// One outcome per recipient.
    pub outcomes: Vec<Outcome>,
}

fn reply_text(r: &smtp_proto::Response<String>) -> String {
    let [a, b, c] = r.esc;
    if a > 0 {
        format!(
            "{} {a}.{b}.{c} {}",
            r.code,
            r.message.replace(['\r', '\n'], " ")
        )
    } else {
        format!("{} {}", r.code, r.message.replace(['\r', '\n'], " "))
    }
}

/// Sorts an error into temporary or permanent, the way RFC 5321 reply codes say.
fn classify(err: &mail_send::Error) -> Outcome {
    match err {
        mail_send::Error::UnexpectedReply(r) | mail_send::Error::AuthenticationFailed(r)
            if r.code >= 500 =>
        {
            Outcome::Permanent(reply_text(r))
        }
        mail_send::Error::UnexpectedReply(r) | mail_send::Error::AuthenticationFailed(r) => {
            Outcome::Temporary(reply_text(r))
        }
        other => Outcome::Temporary(other.to_string()),
    }
}

fn all(n: usize, outcome: Outcome) -> Vec<Outcome> {
    vec![outcome; n]
}

/// The SMTP transaction on an open connection.
async fn transaction<T: AsyncRead + AsyncWrite + Unpin>(
    client: &mut SmtpClient<T>,
    from: &str,
    rcpts: &[String],
    message: &[u8],
) -> Vec<Outcome> {
    if let Err(err) = client.mail_from(from, &Parameters::default()).await {
        return all(rcpts.len(), classify(&err));
    }
    let mut outcomes = Vec::with_capacity(rcpts.len());
    let mut accepted = 0;
    for rcpt in rcpts {
        match client.rcpt_to(rcpt, &Parameters::default()).await {
            Ok(()) => {
                accepted += 1;
                outcomes.push(None);
            }
            Err(err) => outcomes.push(Some(classify(&err))),
        }
    }
    if accepted == 0 {
        let _ = client.rset().await;
        return outcomes.into_iter().flatten().collect();
    }
    let data = match client.data(message).await {
        Ok(reply) => Outcome::Delivered(reply_text(&reply)),
        Err(err) => classify(&err),
    };
    outcomes
        .into_iter()
        .map(|o| o.unwrap_or_else(|| data.clone()))
        .collect()
}

/// Whether a whole-connection outcome says to try the next host.
fn try_next(outcomes: &[Outcome]) -> bool {
    outcomes.iter().all(|o| matches!(o, Outcome::Temporary(_)))
}

/// How a host's certificate is checked.
#[derive(Debug, Clone, Copy)]
enum Verify<'a> {
    /// Not at all (opportunistic TLS towards MX hosts).
    No,
    /// Valid for the name connected to (the smarthost).
    Yes,
    /// Valid for this MX host name, as an MTA-STS policy in enforce mode requires.
    MtaSts(&'a str),
}

/// Connects to one host and runs the transaction. `tls`: `None` no TLS, `Some(false)` TLS when
/// offered, `Some(true)` TLS required; `implicit` for TLS from the first byte.
#[allow(clippy::too_many_arguments)]
async fn via(
    ip: IpAddr,
    port: u16,
    hostname: &str,
    tls: Option<bool>,
    implicit: bool,
    verify: Verify<'_>,
    credentials: Option<(String, String)>,
    from: &str,
    rcpts: &[String],
    message: &[u8],
) -> Vec<Outcome> {
    let mut builder = match SmtpClientBuilder::new(ip.to_string(), port) {
        Ok(b) => b,
        Err(e) => return all(rcpts.len(), Outcome::Temporary(e)),
    }
    .helo_host(hostname)
    .timeout(SMTP_TIMEOUT)
    .implicit_tls(implicit);
    match verify {
        Verify::No => builder = builder.allow_invalid_certs(),
        Verify::Yes => {}
        // Connected by address, checked against the MX name.
        Verify::MtaSts(name) => builder.tls_hostname = name.to_string(),
    }
    if let Some((user, password)) = credentials {
        builder = builder.credentials((user, password));
    }
    if tls.is_some() {
        match builder.connect().await {
            Ok(mut client) => {
                let outcomes = transaction(&mut client, from, rcpts, message).await;
                let _ = client.quit().await;
                return outcomes;
            }
            Err(mail_send::Error::MissingStartTls) if tls == Some(false) => {}
            Err(mail_send::Error::MissingStartTls) => {
                return all(
                    rcpts.len(),
                    Outcome::Temporary(format!("{ip} does not offer STARTTLS and TLS is required")),
                );
            }
            // A certificate refused during the handshake comes back as TLS or invalid data.
            Err(err)
                if matches!(verify, Verify::MtaSts(_))
                    && match &err {
                        mail_send::Error::Tls(_) => true,
                        mail_send::Error::Io(e) => e.kind() == std::io::ErrorKind::InvalidData,
                        _ => false,
                    } =>
            {
                return all(
                    rcpts.len(),
                    Outcome::Temporary(format!(
                        "TLS with a verified certificate, as the recipient domain's MTA-STS \
                         policy requires, failed: {err}"
                    )),
                );
            }
            // With TLS required, anything said before TLS is unauthenticated: whoever sits on
            // the path could forge a 5xx there and turn a wait into a bounce.
            Err(err) if tls == Some(true) => {
                return all(
                    rcpts.len(),
                    match classify(&err) {
                        Outcome::Permanent(reply) => Outcome::Temporary(format!(
                            "{reply} (before TLS, which is required: not taken as final)"
                        )),
                        other => other,
                    },
                );
            }
            Err(err) => return all(rcpts.len(), classify(&err)),
        }
    }
    match builder.connect_plain().await {
        Ok(mut client) => {
            let outcomes = transaction(&mut client, from, rcpts, message).await;
            let _ = client.quit().await;
            outcomes
        }
        Err(err) => all(rcpts.len(), classify(&err)),
    }
}

pub(super) async fn addresses(
    resolver: &MessageAuthenticator,
    host: &str,
) -> Result<Vec<IpAddr>, String> {
    if let Ok(ip) = host.parse::<IpAddr>() {
        return Ok(vec![ip]);
    }
    resolver
        .ip_lookup(
            host,
            IpLookupStrategy::Ipv4thenIpv6,
            4,
            None::<&NoCache<_, _>>,
            None::<&NoCache<_, _>>,
        )
        .await
        .map_err(|e| format!("looking up {host}: {e}"))
}

/// The MX hosts of a domain in preference order; the domain itself when it has none. An
/// error that is not "no such record" is temporary.
async fn mx_hosts(resolver: &MessageAuthenticator, domain: &str) -> Result<Vec<String>, Outcome> {
    match resolver.mx_lookup(domain, None::<&NoCache<_, _>>).await {
        Ok(set) => {
            let mut hosts = Vec::new();
            for mx in set.rrset.iter() {
                for exchange in mx.exchanges.iter() {
                    let host = exchange.trim_end_matches('.').to_string();
                    if host.is_empty() {
                        // RFC 7505: a null MX means the domain takes no mail.
                        return Err(Outcome::Permanent(format!(
                            "550 5.1.10 {domain} accepts no mail (null MX)"
                        )));
                    }
                    hosts.push(host);
                }
            }
            Ok(hosts)
        }
        Err(mail_auth::Error::Dns(mail_auth::DnsError::RecordNotFound(_))) => {
            Ok(vec![domain.to_string()])
        }
        Err(err) => Err(Outcome::Temporary(format!(
            "looking up the MX of {domain}: {err}"
        ))),
    }
}

/// One attempt for `rcpts`, all in `domain` (direct, under the domain's MTA-STS policy from
/// `policies`) or all for the smarthost.
pub async fn attempt(
    config: &Config,
    resolver: &MessageAuthenticator,
    policies: &super::mta_sts::Policies,
    domain: &str,
    from: &str,
    rcpts: &[String],
    message: &[u8],
) -> Attempt {
    let hostname = config.raw.hostname.as_str();
    let route = &config.raw.relay.route;
    if route.mode == RouteMode::Smarthost
        && let Some(smarthost) = &route.smarthost
    {
        let credentials = match (&smarthost.username_file, &smarthost.password_file) {
            (Some(u), Some(p)) => match (std::fs::read_to_string(u), std::fs::read_to_string(p)) {
                (Ok(u), Ok(p)) => Some((
                    u.trim().to_string(),
                    p.trim_end_matches(['\r', '\n']).to_string(),
                )),
                _ => {
                    return Attempt {
                        host: Some(smarthost.host.clone()),
                        outcomes: all(
                            rcpts.len(),
                            Outcome::Temporary("the smarthost credentials cannot be read".into()),
                        ),
                    };
                }
            },
            _ => None,
        };
        let ips = match addresses(resolver, &smarthost.host).await {
            Ok(ips) => ips,
            Err(e) => {
                return Attempt {
                    host: Some(smarthost.host.clone()),
                    outcomes: all(rcpts.len(), Outcome::Temporary(e)),
                };
            }
        };
        let (tls, implicit) = match smarthost.tls {
            SmarthostTls::Starttls => (Some(true), false),
            SmarthostTls::Implicit => (Some(true), true),
            SmarthostTls::None => (None, false),
        };
        let mut outcomes = all(rcpts.len(), Outcome::Temporary("no address".into()));
        for ip in ips {
            outcomes = via(
                ip,
                smarthost.port,
                hostname,
                tls,
                implicit,
                Verify::Yes,
                credentials.clone(),
                from,
                rcpts,
                message,
            )
            .await;
            if !try_next(&outcomes) {
                break;
            }
        }
        return Attempt {
            host: Some(smarthost.host.clone()),
            outcomes,
        };
    }

    let hosts = match mx_hosts(resolver, domain).await {
        Ok(hosts) => hosts,
        Err(outcome) => {
            return Attempt {
                host: None,
                outcomes: all(rcpts.len(), outcome),
            };
        }
    };
    // MTA-STS: in enforce mode only the policy's MX hosts, only over TLS with a certificate
    // valid for the host's name; never in the clear. In testing mode delivery is as without a
    // policy (a mismatch is logged).
    let policy = policies.policy(resolver, domain).await;
    let enforce = policy
        .as_ref()
        .is_some_and(|p| p.mode == super::mta_sts::Mode::Enforce);
    let hosts = match &policy {
        Some(policy) => {
            let (listed, unlisted): (Vec<String>, Vec<String>) =
                hosts.into_iter().partition(|h| policy.allows(h));
            if !unlisted.is_empty() {
                tracing::warn!(%domain, ?unlisted, mode = ?policy.mode, "MX hosts not in the domain's MTA-STS policy");
            }
            if !enforce {
                listed.into_iter().chain(unlisted).collect()
            } else if listed.is_empty() {
                return Attempt {
                    host: None,
                    outcomes: all(
                        rcpts.len(),
                        Outcome::Temporary(format!(
                            "the MTA-STS policy of {domain} (enforce) lists none of its MX hosts \
                             ({}); the message waits",
                            unlisted.join(", ")
                        )),
                    ),
                };
            } else {
                listed
            }
        }
        None => hosts,
    };
    let tls = Some(route.require_tls || enforce);
    let mut last = Attempt {
        host: None,
        outcomes: all(
            rcpts.len(),
            Outcome::Temporary(format!("no reachable mail host for {domain}")),
        ),
    };
    for host in hosts {
        let ips = match addresses(resolver, &host).await {
            Ok(ips) => ips,
            Err(e) => {
                last.outcomes = all(rcpts.len(), Outcome::Temporary(e));
                continue;
            }
        };
        for ip in ips {
            let verify = if enforce {
                Verify::MtaSts(&host)
            } else {
                Verify::No
            };
            let outcomes = via(
                ip, 25, hostname, tls, false, verify, None, from, rcpts, message,
            )
            .await;
            let done = !try_next(&outcomes);
            last = Attempt {
                host: Some(host.clone()),
                outcomes,
            };
            if done {
                return last;
            }
        }
    }
    last
}
