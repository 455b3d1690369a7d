//! The runtime config for one MailDomain.
use kubemail_config::{
    API_VERSION, Advertised, AppPasswordConfig, AutoReplyConfig, ClamdConfig, DkimConfig,
    DnsListConfig, DomainConfig, GreylistConfig, InboundChecks, KIND, Limits, Listener,
    ListenerProtocol, LoginProtocol, MailboxConfig, RateConfig, RateLimitsConfig, RawConfig,
    RelayConfig, RetryConfig, RouteConfig, RouteMode, RspamdConfig, Security, SmarthostConfig,
    SmarthostTls, SpamConfig, Storage, TlsFiles,
};
use kubemail_crds::{
    MailDomain, Mailbox, Protocol, RelayPolicy,
    mailbox::MailboxProtocol,
    relay_policy::{Rate, RouteMode as SpecRouteMode, SmarthostTls as SpecSmarthostTls},
};

use super::{HTTP_PORT, container_port, hostname, paths, quantity};

/// A Mailbox with the hash of its password (never the password) and the aliases it may have
/// (see `claims`).
#[derive(Debug, Clone)]
pub struct HashedMailbox<'a> {
    /// The Mailbox.
    pub mailbox: &'a Mailbox,
    /// Its password hash.
    pub password_hash: String,
    /// Its aliases that no older Mailbox has.
    pub aliases: Vec<String>,
    /// The hashes of its app passwords whose Secrets were found, by name.
    pub app_password_hashes: Vec<(String, String)>,
    /// Its Sieve script, when it was found and compiles.
    pub sieve_script: Option<String>,
}

fn login_protocols(protocols: &[MailboxProtocol]) -> Vec<LoginProtocol> {
    protocols
        .iter()
        .map(|p| match p {
            MailboxProtocol::Smtp => LoginProtocol::Smtp,
            MailboxProtocol::Imap => LoginProtocol::Imap,
            MailboxProtocol::Pop3 => LoginProtocol::Pop3,
        })
        .collect()
}

fn listener_protocol(p: Protocol) -> ListenerProtocol {
    match p {
        Protocol::Smtp => ListenerProtocol::Smtp,
        Protocol::Submission => ListenerProtocol::Submission,
        Protocol::Submissions => ListenerProtocol::Submissions,
        Protocol::Imap => ListenerProtocol::Imap,
        Protocol::Imaps => ListenerProtocol::Imaps,
        Protocol::Pop3 => ListenerProtocol::Pop3,
        Protocol::Pop3s => ListenerProtocol::Pop3s,
        Protocol::Managesieve => ListenerProtocol::Managesieve,
        Protocol::Https => ListenerProtocol::Https,
    }
}

/// Whether one of the rendered mailboxes has `address`, as its address or an alias.
pub fn serves(mailboxes: &[MailboxConfig], address: &str) -> bool {
    mailboxes.iter().any(|m| {
        std::iter::once(&m.address)
            .chain(&m.aliases)
            .any(|a| a.eq_ignore_ascii_case(address))
    })
}

/// Renders the config. `mailboxes` are the Mailboxes of this domain that are ready to serve
/// (their Secret was found), sorted by address so the output is stable.
pub fn runtime_config(
    md: &MailDomain,
    mailboxes: &[HashedMailbox<'_>],
    relay: Option<&RelayPolicy>,
) -> RawConfig {
    let spec = &md.spec;
    let proxy = spec.runtime.service.proxy_protocol;
    let mut listeners: Vec<Listener> = spec
        .protocols
        .iter()
        .filter(|(_, p)| p.enabled)
        .map(|(protocol, _)| Listener {
            protocol: listener_protocol(protocol),
            address: format!("0.0.0.0:{}", container_port(protocol)),
            proxy_protocol: proxy,
        })
        .collect();
    listeners.push(Listener {
        protocol: ListenerProtocol::Http,
        address: format!("0.0.0.0:{HTTP_PORT}"),
        proxy_protocol: false,
    });
    let port = |p: Protocol| {
        let spec = spec.protocols.iter().find(|(q, _)| *q == p).map(|(_, s)| s);
        spec.map_or(p.default_port(), |s| s.port_or_default(p)) as u16
    };
    let mut sorted: Vec<&HashedMailbox<'_>> = mailboxes.iter().collect();
    sorted.sort_by(|a, b| a.mailbox.spec.address.cmp(&b.mailbox.spec.address));
    let mailboxes: Vec<MailboxConfig> =
        sorted
            .into_iter()
            .map(|m| {
                let s = &m.mailbox.spec;
                MailboxConfig {
                    address: s.address.clone(),
                    display_name: s.display_name.clone(),
                    password_hash: m.password_hash.clone(),
                    aliases: m.aliases.clone(),
                    forward_to: s.forward_to.clone(),
                    keep_forwarded_copy: s.keep_forwarded_copy,
                    quota_bytes: s.quota.as_deref().and_then(quantity::bytes),
                    protocols: login_protocols(&s.protocols),
                    suspended: s.suspended,
                    app_passwords: s
                        .app_passwords
                        .iter()
                        .filter_map(|app| {
                            let (_, hash) =
                                m.app_password_hashes.iter().find(|(n, _)| *n == app.name)?;
                            Some(AppPasswordConfig {
                                name: app.name.clone(),
                                password_hash: hash.clone(),
                                protocols: login_protocols(&app.protocols),
                            })
                        })
                        .collect(),
                    auto_reply: s.auto_reply.as_ref().filter(|r| r.enabled).map(|r| {
                        AutoReplyConfig {
                            subject: r.subject.clone(),
                            body: r.body.clone(),
                            start: r.start.as_ref().map(|t| t.0.as_second()),
                            end: r.end.as_ref().map(|t| t.0.as_second()),
                            days: u32::try_from(r.days.clamp(1, 365)).unwrap_or(7),
                        }
                    }),
                    sieve_script: m.sieve_script.clone(),
                    spam: s.spam.as_ref().map(|spam| SpamConfig {
                        junk_score_hundredths: spam
                            .junk_threshold
                            .filter(|t| t.is_finite())
                            .map(|t| (t.clamp(-100.0, 1000.0) * 100.0).round() as i32),
                        quarantine: spam.quarantine,
                    }),
                }
            })
            .collect();
    let relay = relay.map_or_else(RelayConfig::default, relay_config);
    let limits = &spec.limits;
    RawConfig {
        api_version: API_VERSION.into(),
        kind: KIND.into(),
        revision: String::new(),
        hostname: hostname(md),
        domains: vec![DomainConfig {
            name: spec.domain.clone(),
            aliases: spec.alias_domains.clone(),
            // Only an address some served Mailbox has: the runtime refuses any other.
            catch_all: spec.catch_all.clone().filter(|c| serves(&mailboxes, c)),
            ..Default::default()
        }],
        mailboxes,
        relay,
        limits: Limits {
            max_message_size: quantity::bytes(&limits.max_message_size).unwrap_or(25 * 1024 * 1024),
            max_recipients: limits.max_recipients.max(1) as u32,
            max_connections: limits.max_connections.max(1) as u32,
            max_connections_per_ip: limits.max_connections_per_ip.max(1) as u32,
            ..Limits::default()
        },
        tls: TlsFiles {
            cert_file: format!("{}/tls.crt", paths::TLS_DIR).into(),
            key_file: format!("{}/tls.key", paths::TLS_DIR).into(),
        },
        listeners,
        storage: Storage {
            path: paths::DATA_DIR.into(),
            database: spec
                .storage
                .database
                .as_ref()
                .map(|d| kubemail_config::DatabaseStorage {
                    uri_file: format!("{}/uri", paths::DATABASE_DIR).into(),
                    ca_file: d
                        .ca_secret_ref
                        .as_ref()
                        .map(|_| format!("{}/ca.crt", paths::DATABASE_CA_DIR).into()),
                }),
        },
        security: Security {
            // Only where the runtime uses them: a list without PROXY listeners would mislead.
            trusted_proxies: if proxy {
                spec.runtime.service.trusted_proxies.clone()
            } else {
                Vec::new()
            },
            ..Security::default()
        },
        dkim: spec.dkim.enabled.then(|| DkimConfig {
            selector: spec.dkim.selector.clone(),
            key_file: paths::DKIM_KEY.into(),
        }),
        inbound: inbound_checks(&spec.inbound),
        nameservers: Vec::new(),
        advertised: Advertised {
            submission: port(Protocol::Submission),
            submissions: port(Protocol::Submissions),
            imap: port(Protocol::Imap),
            imaps: port(Protocol::Imaps),
            pop3: port(Protocol::Pop3),
            pop3s: port(Protocol::Pop3s),
            managesieve: port(Protocol::Managesieve),
            mta_sts_mode: spec.mta_sts.mode.word().into(),
        },
    }
}

/// Seconds of a duration such as `30s`, `5m`, `4h` or `5d` (the API's CEL rule allows only
/// these forms).
/// The MailDomain's inbound checks as the runtime reads them. Durations the CRD validated;
/// one that still does not parse takes the runtime's default.
fn inbound_checks(spec: &kubemail_crds::mail_domain::InboundSpec) -> InboundChecks {
    let defaults = GreylistConfig {
        delay_seconds: 300,
        retry_window_seconds: 86_400,
        pass_seconds: 36 * 86_400,
    };
    let secs = |d: &str, or: u32| seconds(d).and_then(|s| u32::try_from(s).ok()).unwrap_or(or);
    InboundChecks {
        verify: spec.verify,
        reject_on_dmarc_policy: spec.reject_on_dmarc_policy,
        dnsbl: spec
            .dns_lists
            .iter()
            .map(|l| DnsListConfig {
                zone: l.zone.clone(),
                weight: l.weight,
                answers: l.answers.iter().filter_map(|a| a.parse().ok()).collect(),
            })
            .collect(),
        dnsbl_threshold: spec.dns_list_threshold,
        greylisting: spec.greylisting.as_ref().map(|g| {
            let delay = secs(&g.delay, defaults.delay_seconds).max(1);
            GreylistConfig {
                delay_seconds: delay,
                retry_window_seconds: secs(&g.retry_window, defaults.retry_window_seconds)
                    .max(delay + 1),
                ..defaults
            }
        }),
        greet_pause_millis: spec
            .greet_pause
            .as_deref()
            .map_or(0, |p| secs(p, 0).saturating_mul(1000).min(10_000)),
        helo_checks: spec.helo_checks,
        clamd: spec.clamav.as_ref().map(|c| ClamdConfig {
            address: c.address.clone(),
            timeout_seconds: secs(&c.timeout, 30).clamp(1, 600),
            accept_on_failure: c.on_failure == kubemail_crds::mail_domain::ScanFailure::Accept,
            scan_submission: c.scan_submission,
        }),
        rspamd: spec.rspamd.as_ref().map(|r| RspamdConfig {
            url: r.url.trim_end_matches('/').to_string(),
            timeout_seconds: secs(&r.timeout, 30).clamp(1, 600),
            accept_on_failure: r.on_failure == kubemail_crds::mail_domain::ScanFailure::Accept,
            scan_submission: r.scan_submission,
            controller_url: r
                .controller_url
                .as_ref()
                .map(|u| u.trim_end_matches('/').to_string()),
            controller_password_file: r
                .controller_password_secret_ref
                .as_ref()
                .map(|_| format!("{}/password", paths::RSPAMD_DIR).into()),
        }),
    }
}

pub fn seconds(duration: &str) -> Option<u64> {
    let (number, unit) = duration.split_at(duration.len().checked_sub(1)?);
    let n: u64 = number.parse().ok()?;
    let unit = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        _ => return None,
    };
    n.checked_mul(unit)
}

fn rate(r: &Rate) -> Option<RateConfig> {
    Some(RateConfig {
        messages: u32::try_from(r.messages).ok().filter(|n| *n > 0)?,
        period_seconds: seconds(&r.period).filter(|s| *s > 0)?,
    })
}

/// The runtime's relay rules from a RelayPolicy.
fn relay_config(rp: &RelayPolicy) -> RelayConfig {
    let spec = &rp.spec;
    let defaults = RetryConfig::default();
    let initial = seconds(&spec.retry.initial_interval)
        .filter(|s| *s > 0)
        .unwrap_or(defaults.initial_interval_seconds);
    RelayConfig {
        authenticated_users: spec.allow.authenticated_users,
        any_header_from: spec.allow.any_header_from,
        client_networks: spec.allow.client_cidrs.clone(),
        sender_domains: spec.sender_domains.clone(),
        recipient_domains: spec.recipient_domains.clone(),
        route: RouteConfig {
            mode: match spec.route.mode {
                SpecRouteMode::Direct => RouteMode::Direct,
                SpecRouteMode::Smarthost => RouteMode::Smarthost,
            },
            require_tls: spec.route.require_tls,
            smarthost: spec.route.smarthost.as_ref().map(|h| SmarthostConfig {
                host: h.host.clone(),
                port: u16::try_from(h.port).unwrap_or(587),
                tls: match h.tls {
                    SpecSmarthostTls::StartTLS => SmarthostTls::Starttls,
                    SpecSmarthostTls::Implicit => SmarthostTls::Implicit,
                    SpecSmarthostTls::None => SmarthostTls::None,
                },
                username_file: h
                    .credentials_secret_ref
                    .as_ref()
                    .map(|_| format!("{}/username", paths::SMARTHOST_DIR).into()),
                password_file: h
                    .credentials_secret_ref
                    .as_ref()
                    .map(|_| format!("{}/password", paths::SMARTHOST_DIR).into()),
            }),
        },
        rate_limits: RateLimitsConfig {
            per_sender: spec.rate_limits.per_sender.as_ref().and_then(rate),
            total: spec.rate_limits.total.as_ref().and_then(rate),
        },
        retry: RetryConfig {
            initial_interval_seconds: initial,
            max_interval_seconds: seconds(&spec.retry.max_interval)
                .unwrap_or(defaults.max_interval_seconds)
                .max(initial),
            max_age_seconds: seconds(&spec.retry.max_age)
                .filter(|s| *s > 0)
                .unwrap_or(defaults.max_age_seconds),
        },
    }
}

/// The YAML of a config with its revision: the first 16 hex digits of the SHA-256 of the
/// config without a revision, so equal configs have equal revisions and nothing else does.
pub fn with_revision(mut config: RawConfig) -> (String, String) {
    use sha2::{Digest, Sha256};
    config.revision = String::new();
    let body = serde_yaml_ng::to_string(&config).expect("a RawConfig serializes");
    let digest = Sha256::digest(body.as_bytes());
    let revision: String = digest.iter().take(8).map(|b| format!("{b:02x}")).collect();
    config.revision = revision.clone();
    let yaml = format!(
        "# Rendered by kubemail-operator from MailDomain, Mailbox and RelayPolicy objects.\n# Do not edit: changes are overwritten.\n{}",
        serde_yaml_ng::to_string(&config).expect("a RawConfig serializes")
    );
    (revision, yaml)
}
