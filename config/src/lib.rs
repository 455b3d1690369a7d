//! The runtime config: the contract between the operator (which renders it into a Secret) and
//! the runtime (which serves it). Typed, versioned, validated as a whole: every problem is
//! collected and named by its field before the runtime accepts a file.
//!
//! ```text
//!   YAML/JSON file --parse--> RawConfig --validate--> Config (indexes built, hashes parsed)
//!                                  \--> Vec<Problem> ("mailboxes[2].address: ...")
//! ```
//!
//! This crate is the contract and nothing else: no Kubernetes types, no network, no store
//! (only the [`database`] URI's parsing, which both sides need).
//! Both binaries link it: the operator to render and check what it writes, the runtime to
//! read it (the runtime's `config::watch` reloads it from disk). Passwords are hashed by the
//! rules in [`password`], which both sides share.
#![forbid(unsafe_code)]
pub mod database;
mod model;
pub mod password;

pub use model::*;

use std::{
    collections::{BTreeMap, BTreeSet},
    fmt,
    net::{IpAddr, SocketAddr},
};

use ipnet::IpNet;

/// The only `apiVersion` this runtime reads.
pub const API_VERSION: &str = "runtime.kubemail.io/v1";
/// DNS lists one config may name: each is a lookup per new client.
pub const MAX_DNS_LISTS: usize = 16;

/// The only `kind`.
pub const KIND: &str = "RuntimeConfig";

/// One thing wrong with a config file, with the field it concerns.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// Where: `mailboxes[2].address`.
    pub field: String,
    /// What is wrong.
    pub message: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.field, self.message)
    }
}

/// Every problem found in a config file.
#[derive(Debug, Clone, thiserror::Error)]
pub struct Invalid(pub Vec<Problem>);

impl fmt::Display for Invalid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} problem(s) in the runtime config", self.0.len())?;
        for p in &self.0 {
            write!(f, "\n  - {p}")?;
        }
        Ok(())
    }
}

/// A validated config with the lookups the protocols need.
#[derive(Debug, Clone)]
pub struct Config {
    /// The file as written.
    pub raw: RawConfig,
    /// Every served domain (primary and alias), lowercase, to its primary domain.
    domains: BTreeMap<String, String>,
    /// Every address that delivers somewhere: mailbox addresses and aliases, lowercase.
    addresses: BTreeMap<String, usize>,
    /// Catch-all mailbox index per primary domain.
    catch_all: BTreeMap<String, usize>,
    /// Client networks that may relay.
    relay_networks: Vec<IpNet>,
    /// Load balancers whose PROXY headers are believed.
    trusted_proxies: Vec<IpNet>,
    /// DNS servers; empty: the system's.
    pub nameservers: Vec<SocketAddr>,
}

/// Where mail for one recipient goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Recipient {
    /// A local mailbox (index into `raw.mailboxes`).
    Local(usize),
    /// A served domain, but no such address and no catch-all.
    UnknownLocal,
    /// A domain this runtime does not serve: relaying.
    Remote,
}

impl Config {
    /// Parses and validates a file's text.
    pub fn parse(text: &str) -> Result<Config, Invalid> {
        let raw: RawConfig = serde_yaml_ng::from_str(text).map_err(|err| {
            let field = err
                .location()
                .map(|l| format!("line {} column {}", l.line(), l.column()))
                .unwrap_or_else(|| "(file)".into());
            Invalid(vec![Problem {
                field,
                message: err.to_string(),
            }])
        })?;
        Config::validate(raw)
    }

    /// Validates a parsed config, collecting every problem.
    pub fn validate(raw: RawConfig) -> Result<Config, Invalid> {
        let mut problems = Vec::new();
        let mut problem =
            |field: String, message: String| problems.push(Problem { field, message });

        if raw.api_version != API_VERSION {
            problem(
                "apiVersion".into(),
                format!("must be {API_VERSION}, not {:?}", raw.api_version),
            );
        }
        if raw.kind != KIND {
            problem("kind".into(), format!("must be {KIND}, not {:?}", raw.kind));
        }
        if !is_domain(&raw.hostname) {
            problem(
                "hostname".into(),
                format!("{:?} is not a DNS name", raw.hostname),
            );
        }

        let mut domains = BTreeMap::new();
        for (i, d) in raw.domains.iter().enumerate() {
            for (j, name) in std::iter::once(&d.name).chain(&d.aliases).enumerate() {
                let field = if j == 0 {
                    format!("domains[{i}].name")
                } else {
                    format!("domains[{i}].aliases[{}]", j - 1)
                };
                let lower = name.to_ascii_lowercase();
                if !is_domain(&lower) {
                    problem(field, format!("{name:?} is not a DNS domain name"));
                } else if domains.insert(lower, d.name.to_ascii_lowercase()).is_some() {
                    problem(field, format!("{name:?} is listed twice"));
                }
            }
        }
        for (i, d) in raw.domains.iter().enumerate() {
            if let Some(host) = &d.hostname
                && !is_domain(host)
            {
                problem(
                    format!("domains[{i}].hostname"),
                    format!("{host:?} is not a DNS name"),
                );
            }
            // A domain's host name is its own: not the server's, not another domain's host
            // name, not a name in another domain (its certificate and answers would be served
            // for that domain's names).
            if let Some(host) = &d.hostname {
                let taken = host.eq_ignore_ascii_case(&raw.hostname)
                    || raw.domains.iter().enumerate().any(|(j, o)| {
                        j != i
                            && (o
                                .hostname
                                .as_deref()
                                .is_some_and(|h| h.eq_ignore_ascii_case(host))
                                || std::iter::once(&o.name)
                                    .chain(&o.aliases)
                                    .any(|n| name_is_in(host, n)))
                    });
                if taken {
                    problem(
                        format!("domains[{i}].hostname"),
                        format!("{host:?} is the server's or another domain's name"),
                    );
                }
                // A hosted domain's names are its own too: not above or under another's.
                let names =
                    |d: &'_ DomainConfig| std::iter::once(d.name.clone()).chain(d.aliases.clone());
                let overlap = raw.domains.iter().enumerate().find(|(j, o)| {
                    *j != i
                        && names(d).any(|n| {
                            names(o).any(|m| {
                                !n.eq_ignore_ascii_case(&m)
                                    && (name_is_in(&n, &m) || name_is_in(&m, &n))
                            })
                        })
                });
                if let Some((_, o)) = overlap {
                    problem(
                        format!("domains[{i}].name"),
                        format!("{:?} overlaps the domain {:?}", d.name, o.name),
                    );
                }
            }
            if let Some(mode) = &d.mta_sts_mode
                && !matches!(mode.as_str(), "testing" | "enforce" | "none")
            {
                problem(
                    format!("domains[{i}].mtaStsMode"),
                    format!("{mode:?} is not testing, enforce or none"),
                );
            }
            if let Some(dkim) = &d.dkim
                && !is_selector(&dkim.selector)
            {
                problem(
                    format!("domains[{i}].dkim.selector"),
                    format!("{:?} is not a DKIM selector", dkim.selector),
                );
            }
        }
        if raw.domains.is_empty() {
            problem("domains".into(), "at least one domain is needed".into());
        }

        let mut addresses = BTreeMap::new();
        for (i, m) in raw.mailboxes.iter().enumerate() {
            let all = std::iter::once((format!("mailboxes[{i}].address"), &m.address)).chain(
                m.aliases
                    .iter()
                    .enumerate()
                    .map(|(j, a)| (format!("mailboxes[{i}].aliases[{j}]"), a)),
            );
            for (field, address) in all {
                let lower = address.to_ascii_lowercase();
                match split_address(&lower) {
                    None => problem(field, format!("{address:?} is not a mail address")),
                    Some((_, domain)) if !domains.contains_key(domain) => problem(
                        field,
                        format!("{address:?} is not in a domain listed under domains"),
                    ),
                    Some(_) => {
                        if addresses.insert(lower, i).is_some() {
                            problem(field, format!("{address:?} belongs to two mailboxes"));
                        }
                    }
                }
            }
            for (j, f) in m.forward_to.iter().enumerate() {
                if split_address(f).is_none() {
                    problem(
                        format!("mailboxes[{i}].forwardTo[{j}]"),
                        format!("{f:?} is not a mail address"),
                    );
                }
            }
            if let Err(err) = password::PasswordHash::parse(&m.password_hash) {
                problem(format!("mailboxes[{i}].passwordHash"), err.to_string());
            }
            if m.app_passwords.len() > MAX_APP_PASSWORDS {
                problem(
                    format!("mailboxes[{i}].appPasswords"),
                    format!("at most {MAX_APP_PASSWORDS} app passwords per mailbox"),
                );
            }
            let mut names = BTreeSet::new();
            for (j, a) in m.app_passwords.iter().enumerate() {
                let field = format!("mailboxes[{i}].appPasswords[{j}]");
                if a.name.is_empty()
                    || a.name.chars().count() > 63
                    || a.name.chars().any(|c| c.is_control())
                {
                    problem(
                        format!("{field}.name"),
                        format!("{:?} is not a name (1 to 63 printable characters)", a.name),
                    );
                } else if !names.insert(a.name.as_str()) {
                    problem(
                        format!("{field}.name"),
                        format!("{:?} is listed twice", a.name),
                    );
                }
                if let Err(err) = password::PasswordHash::parse(&a.password_hash) {
                    problem(format!("{field}.passwordHash"), err.to_string());
                } else if a.password_hash == m.password_hash
                    || m.app_passwords[..j]
                        .iter()
                        .any(|b| b.password_hash == a.password_hash)
                {
                    // A session is known by the hash it logged in with: one hash, one password.
                    problem(
                        format!("{field}.passwordHash"),
                        "the same hash as another password of this mailbox".into(),
                    );
                }
            }
            if let Some(reply) = &m.auto_reply {
                let field = format!("mailboxes[{i}].autoReply");
                if reply.subject.is_empty()
                    || reply.subject.len() > 998
                    || reply.subject.chars().any(char::is_control)
                {
                    problem(
                        format!("{field}.subject"),
                        "1 to 998 bytes on one line".into(),
                    );
                }
                if reply.body.len() > MAX_AUTO_REPLY_BYTES {
                    problem(
                        format!("{field}.body"),
                        format!("at most {MAX_AUTO_REPLY_BYTES} bytes"),
                    );
                }
                if !(1..=365).contains(&reply.days) {
                    problem(format!("{field}.days"), "from 1 to 365".into());
                }
                if let (Some(start), Some(end)) = (reply.start, reply.end)
                    && end <= start
                {
                    problem(format!("{field}.end"), "must come after start".into());
                }
            }
            if m.sieve_script
                .as_ref()
                .is_some_and(|s| s.len() > MAX_DECLARED_SCRIPT_BYTES)
            {
                problem(
                    format!("mailboxes[{i}].sieveScript"),
                    format!("at most {MAX_DECLARED_SCRIPT_BYTES} bytes"),
                );
            }
        }

        let mut catch_all = BTreeMap::new();
        for (i, d) in raw.domains.iter().enumerate() {
            if let Some(target) = &d.catch_all {
                match addresses.get(&target.to_ascii_lowercase()) {
                    Some(&mailbox) => {
                        catch_all.insert(d.name.to_ascii_lowercase(), mailbox);
                    }
                    None => problem(
                        format!("domains[{i}].catchAll"),
                        format!("{target:?} is not the address of a mailbox"),
                    ),
                }
            }
        }

        let inbound = &raw.inbound;
        if inbound.dnsbl.len() > MAX_DNS_LISTS {
            problem(
                "inbound.dnsbl".into(),
                format!("at most {MAX_DNS_LISTS} lists"),
            );
        }
        for (i, list) in inbound.dnsbl.iter().enumerate() {
            let zone = list.zone.trim_end_matches('.');
            let label_ok = |l: &str| {
                !l.is_empty()
                    && l.len() <= 63
                    && l.chars()
                        .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
            };
            if zone.len() > 200 || !zone.contains('.') || !zone.split('.').all(label_ok) {
                problem(
                    format!("inbound.dnsbl[{i}].zone"),
                    format!("{:?} is not a DNS zone", list.zone),
                );
            }
        }
        if let Some(grey) = &inbound.greylisting
            && (grey.delay_seconds == 0 || grey.retry_window_seconds <= grey.delay_seconds)
        {
            problem(
                "inbound.greylisting".into(),
                "delaySeconds must be above 0 and below retryWindowSeconds".into(),
            );
        }
        if let Some(clamd) = &inbound.clamd {
            if clamd
                .address
                .rsplit_once(':')
                .is_none_or(|(h, p)| h.is_empty() || p.parse::<u16>().is_err())
            {
                problem(
                    "inbound.clamd.address".into(),
                    format!("{:?} is not host:port", clamd.address),
                );
            }
            if !(1..=600).contains(&clamd.timeout_seconds) {
                problem(
                    "inbound.clamd.timeoutSeconds".into(),
                    "from 1 to 600".into(),
                );
            }
        }
        if let Some(rspamd) = &inbound.rspamd {
            let authority = rspamd.url.strip_prefix("http://").unwrap_or_default();
            if authority.is_empty() || authority.trim_end_matches('/').contains('/') {
                problem(
                    "inbound.rspamd.url".into(),
                    format!("{:?} is not http://host:port", rspamd.url),
                );
            }
            if !(1..=600).contains(&rspamd.timeout_seconds) {
                problem(
                    "inbound.rspamd.timeoutSeconds".into(),
                    "from 1 to 600".into(),
                );
            }
        }
        if inbound.greet_pause_millis > 10_000 {
            problem(
                "inbound.greetPauseMillis".into(),
                "at most 10000 (clients give up after 5 minutes, bots after less)".into(),
            );
        }

        let mut relay_networks = Vec::new();
        for (i, net) in raw.relay.client_networks.iter().enumerate() {
            match net.parse::<IpNet>() {
                Ok(net) => relay_networks.push(net),
                Err(_) => problem(
                    format!("relay.clientNetworks[{i}]"),
                    format!("{net:?} is not a network in CIDR notation"),
                ),
            }
        }
        for (i, d) in raw.relay.sender_domains.iter().enumerate() {
            if !is_domain(d) {
                problem(
                    format!("relay.senderDomains[{i}]"),
                    format!("{d:?} is not a domain"),
                );
            }
        }
        for (i, d) in raw.relay.recipient_domains.iter().enumerate() {
            if !is_domain(d) {
                problem(
                    format!("relay.recipientDomains[{i}]"),
                    format!("{d:?} is not a domain"),
                );
            }
        }

        let route = &raw.relay.route;
        match (&route.mode, &route.smarthost) {
            (RouteMode::Smarthost, None) => problem(
                "relay.route.smarthost".into(),
                "mode smarthost needs a smarthost".into(),
            ),
            (_, Some(host)) if host.host.is_empty() || host.port == 0 => problem(
                "relay.route.smarthost".into(),
                "a smarthost needs a host and a port".into(),
            ),
            _ => {}
        }
        for (field, rate) in [
            (
                "relay.rateLimits.perSender",
                &raw.relay.rate_limits.per_sender,
            ),
            ("relay.rateLimits.total", &raw.relay.rate_limits.total),
        ] {
            if let Some(rate) = rate
                && (rate.messages == 0 || rate.period_seconds == 0)
            {
                problem(
                    field.into(),
                    "messages and periodSeconds must be positive".into(),
                );
            }
        }
        let retry = &raw.relay.retry;
        if retry.initial_interval_seconds == 0
            || retry.max_interval_seconds < retry.initial_interval_seconds
            || retry.max_age_seconds == 0
        {
            problem(
                "relay.retry".into(),
                "intervals must be positive, maxIntervalSeconds at least initialIntervalSeconds"
                    .into(),
            );
        }
        let mut nameservers = Vec::new();
        for (i, ns) in raw.nameservers.iter().enumerate() {
            let parsed = ns
                .parse::<SocketAddr>()
                .or_else(|_| ns.parse::<IpAddr>().map(|ip| SocketAddr::new(ip, 53)));
            match parsed {
                Ok(addr) => nameservers.push(addr),
                Err(_) => problem(
                    format!("nameservers[{i}]"),
                    format!("{ns:?} is not an IP address (with an optional port)"),
                ),
            }
        }
        if let Some(dkim) = &raw.dkim
            && !is_selector(&dkim.selector)
        {
            problem(
                "dkim.selector".into(),
                format!("{:?} is not a DKIM selector", dkim.selector),
            );
        }

        let mut bound = BTreeSet::new();
        for (i, l) in raw.listeners.iter().enumerate() {
            match l.address.parse::<SocketAddr>() {
                Ok(addr) => {
                    // Port 0 asks the kernel for a free port; several listeners may ask.
                    if addr.port() != 0 && !bound.insert(addr) {
                        problem(
                            format!("listeners[{i}].address"),
                            format!("{addr} is used by two listeners"),
                        );
                    }
                }
                Err(_) => problem(
                    format!("listeners[{i}].address"),
                    format!("{:?} is not an IP address and port", l.address),
                ),
            }
        }
        if raw.listeners.is_empty() {
            problem("listeners".into(), "at least one listener is needed".into());
        }

        let mut trusted_proxies = Vec::new();
        for (i, net) in raw.security.trusted_proxies.iter().enumerate() {
            let field = format!("security.trustedProxies[{i}]");
            match net.parse::<IpNet>() {
                // The pod's exec probes connect to 127.0.0.1 without a header; a proxy network
                // holding their address would make every probe fail and the pod restart.
                Ok(parsed) if PROBE_SOURCES.iter().any(|ip| parsed.contains(ip)) => problem(
                    field,
                    format!(
                        "{net:?} holds 127.0.0.1 or ::1, where the pod's own probes connect from \
                         without a PROXY header"
                    ),
                ),
                Ok(parsed) => trusted_proxies.push(parsed),
                Err(_) => problem(field, format!("{net:?} is not a network in CIDR notation")),
            }
        }
        if raw.security.trusted_proxies.is_empty()
            && let Some(i) = raw.listeners.iter().position(|l| l.proxy_protocol)
        {
            problem(
                "security.trustedProxies".into(),
                format!(
                    "listeners[{i}] has proxyProtocol: name the networks of the load balancers \
                     whose PROXY headers are believed"
                ),
            );
        }

        let limits = &raw.limits;
        for (field, value, min) in [
            ("limits.maxMessageSize", limits.max_message_size, 1024),
            ("limits.maxRecipients", limits.max_recipients as u64, 1),
            ("limits.maxConnections", limits.max_connections as u64, 1),
            (
                "limits.maxConnectionsPerIp",
                limits.max_connections_per_ip as u64,
                1,
            ),
            (
                "limits.commandTimeoutSeconds",
                limits.command_timeout_seconds,
                1,
            ),
            (
                "limits.authFailuresPerMinute",
                limits.auth_failures_per_minute as u64,
                1,
            ),
        ] {
            if value < min {
                problem(field.into(), format!("must be at least {min}"));
            }
        }
        if !["testing", "enforce", "none"].contains(&raw.advertised.mta_sts_mode.as_str()) {
            problem(
                "advertised.mtaStsMode".into(),
                "must be testing, enforce or none".into(),
            );
        }
        if raw.tls.cert_file.as_os_str().is_empty() || raw.tls.key_file.as_os_str().is_empty() {
            problem("tls".into(), "certFile and keyFile are both needed".into());
        }

        if !problems.is_empty() {
            return Err(Invalid(problems));
        }
        Ok(Config {
            raw,
            domains,
            addresses,
            catch_all,
            relay_networks,
            trusted_proxies,
            nameservers,
        })
    }

    /// The mailbox at an index.
    pub fn mailbox(&self, index: usize) -> &MailboxConfig {
        &self.raw.mailboxes[index]
    }

    /// The mailbox with this address (or alias), case-insensitively.
    pub fn mailbox_by_address(&self, address: &str) -> Option<usize> {
        self.addresses.get(&address.to_ascii_lowercase()).copied()
    }

    /// The mailbox a session logged in as, while it may still use `protocol` with the password
    /// it logged in with (its own or an app password, by hash); `None` once it is removed,
    /// suspended, its password changed or that app password is revoked (its open sessions end
    /// then; sessions opened with its other passwords go on). Indexes move when mailboxes come and go: sessions keep the
    /// address and look the index up again.
    pub fn still_serves(
        &self,
        address: &str,
        password_hash: &str,
        protocol: LoginProtocol,
    ) -> Option<usize> {
        let index = self.mailbox_by_address(address)?;
        self.mailbox(index)
            .opens(password_hash, protocol)
            .then_some(index)
    }

    /// The served domain that `name` (a TLS server name or HTTP host) belongs to, see
    /// [`owner_of`].
    pub fn domain_named(&self, name: &str) -> Option<&DomainConfig> {
        owner_of(
            &self.raw.hostname,
            self.raw.domains.iter().map(|d| (d, d)),
            name,
        )
    }

    /// The largest message to or from `address`'s domain: its own limit, never above the
    /// server's.
    pub fn message_limit(&self, address: &str) -> u64 {
        let server = self.raw.limits.max_message_size;
        let own = split_address(address)
            .and_then(|(_, domain)| self.primary_domain(domain))
            .and_then(|primary| {
                self.raw
                    .domains
                    .iter()
                    .find(|d| d.name.eq_ignore_ascii_case(primary))?
                    .max_message_size
            });
        own.map_or(server, |own| own.min(server))
    }

    /// The primary name of a served domain (or of the domain an alias belongs to).
    pub fn primary_domain(&self, domain: &str) -> Option<&str> {
        self.domains
            .get(&domain.to_ascii_lowercase())
            .map(String::as_str)
    }

    /// Whether a domain (primary or alias) is one of the server's own: served, without a host
    /// name of its own (a hosted tenant's domain has one).
    pub fn owns_domain(&self, domain: &str) -> bool {
        self.primary_domain(domain).is_some_and(|primary| {
            self.raw
                .domains
                .iter()
                .any(|d| d.name.eq_ignore_ascii_case(primary) && d.hostname.is_none())
        })
    }

    /// The mail host name of a domain: its own, or the server's.
    pub fn hostname_of<'a>(&'a self, domain: Option<&'a DomainConfig>) -> &'a str {
        domain
            .and_then(|d| d.hostname.as_deref())
            .unwrap_or(&self.raw.hostname)
    }

    /// The key that signs mail from `domain` (primary or alias): the domain's own; the
    /// server's for a domain without a host name of its own; none for one that is not served.
    pub fn dkim_for(&self, domain: &str) -> Option<&DkimConfig> {
        let primary = self.domains.get(&domain.to_ascii_lowercase())?;
        let d = self
            .raw
            .domains
            .iter()
            .find(|d| d.name.eq_ignore_ascii_case(primary))?;
        match (&d.dkim, &d.hostname) {
            (Some(own), _) => Some(own),
            (None, None) => self.raw.dkim.as_ref(),
            (None, Some(_)) => None,
        }
    }

    /// Whether a domain (primary or alias) is served here.
    pub fn serves_domain(&self, domain: &str) -> bool {
        self.domains.contains_key(&domain.to_ascii_lowercase())
    }

    /// Resolves an envelope recipient. The address must already be a plain `local@domain`.
    pub fn resolve(&self, address: &str) -> Recipient {
        let lower = address.to_ascii_lowercase();
        let Some((local, domain)) = split_address(&lower) else {
            return Recipient::UnknownLocal;
        };
        let Some(primary) = self.domains.get(domain) else {
            return Recipient::Remote;
        };
        // An alias domain maps onto its primary domain's local parts.
        let canonical = format!("{local}@{primary}");
        if let Some(&i) = self
            .addresses
            .get(&lower)
            .or_else(|| self.addresses.get(&canonical))
        {
            return Recipient::Local(i);
        }
        // Subaddressing: jane+tag@ reaches jane@.
        if let Some((base, _tag)) = local.split_once('+') {
            let base = format!("{base}@{primary}");
            if let Some(&i) = self.addresses.get(&base) {
                return Recipient::Local(i);
            }
        }
        match self.catch_all.get(primary) {
            Some(&i) => Recipient::Local(i),
            None => Recipient::UnknownLocal,
        }
    }

    /// Whether a client address may relay without logging in.
    pub fn relay_network_allows(&self, ip: IpAddr) -> bool {
        let ip = canonical_ip(ip);
        self.relay_networks.iter().any(|n| n.contains(&ip))
    }

    /// Whether a peer is a load balancer whose PROXY header is believed (and required).
    pub fn trusts_proxy(&self, ip: IpAddr) -> bool {
        let ip = canonical_ip(ip);
        self.trusted_proxies.iter().any(|n| n.contains(&ip))
    }

    /// The revision to report as served.
    pub fn revision(&self) -> &str {
        &self.raw.revision
    }
}

/// Where the pod's own exec probes connect from.
const PROBE_SOURCES: [IpAddr; 2] = [
    IpAddr::V4(std::net::Ipv4Addr::LOCALHOST),
    IpAddr::V6(std::net::Ipv6Addr::LOCALHOST),
];

/// The MTA-STS policy file (RFC 8461 s3.2) the runtime serves for a domain whose mail host is
/// `host`: `mode` and a week's `max_age`. The operator derives the `_mta-sts` record's id from
/// the same text, so the id changes exactly when the policy does.
pub fn mta_sts_policy(mode: &str, host: &str) -> String {
    format!("version: STSv1\r\nmode: {mode}\r\nmx: {host}\r\nmax_age: 604800\r\n")
}

/// Whose `name` (a TLS server name or HTTP host, with or without a final dot) is among
/// `domains`: the server's own host name is the server's (`None`); a domain's own host name is
/// that domain's; otherwise the domain whose name or alias is the longest that `name` equals or
/// ends with (`mta-sts.brand.example` is brand.example's even beside example).
pub fn owner_of<'a, T>(
    server_hostname: &str,
    domains: impl IntoIterator<Item = (&'a DomainConfig, T)>,
    name: &str,
) -> Option<T> {
    let name = name.strip_suffix('.').unwrap_or(name);
    if name.eq_ignore_ascii_case(server_hostname) {
        return None;
    }
    let mut best: Option<(usize, T)> = None;
    for (d, value) in domains {
        let rank = if d
            .hostname
            .as_deref()
            .is_some_and(|h| h.eq_ignore_ascii_case(name))
        {
            usize::MAX
        } else {
            match std::iter::once(&d.name)
                .chain(&d.aliases)
                .filter(|n| name_is_in(name, n))
                .map(|n| n.len())
                .max()
            {
                Some(len) => len,
                None => continue,
            }
        };
        if best.as_ref().is_none_or(|(b, _)| rank > *b) {
            best = Some((rank, value));
        }
    }
    best.map(|(_, value)| value)
}

/// A DKIM selector: letters, digits, `-` and `.`.
fn is_selector(selector: &str) -> bool {
    !selector.is_empty()
        && selector
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.')
}

/// An IPv4 address seen through an IPv6 socket (`::ffff:a.b.c.d`) as the IPv4 address it is.
pub fn canonical_ip(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(ip),
        v4 => v4,
    }
}

/// Splits `local@domain` at its last `@`; both parts must be non-empty.
pub fn split_address(address: &str) -> Option<(&str, &str)> {
    let (local, domain) = address.rsplit_once('@')?;
    if local.is_empty() || local.len() > 64 || !is_domain(domain) {
        return None;
    }
    Some((local, domain))
}

/// A DNS name of letters, digits and hyphens, at least two labels.
pub fn is_domain(name: &str) -> bool {
    let labels: Vec<&str> = name.split('.').collect();
    name.len() <= 253
        && labels.len() >= 2
        && labels.iter().all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && !l.starts_with('-')
                && !l.ends_with('-')
                && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
        })
}

#[cfg(test)]
mod tests;
