//! The runtime config's file format. Field names are camelCase, like the Kubernetes objects
//! they are rendered from; defaults make a hand-written file short.
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// The file as written.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RawConfig {
    /// `runtime.kubemail.io/v1`.
    pub api_version: String,
    /// `RuntimeConfig`.
    pub kind: String,
    /// An opaque revision, reported by the runtime once it serves this file.
    #[serde(default)]
    pub revision: String,
    /// The server's host name: SMTP banner and EHLO name, TLS name.
    pub hostname: String,
    /// The domains served.
    #[serde(default)]
    pub domains: Vec<DomainConfig>,
    /// The mailboxes.
    #[serde(default)]
    pub mailboxes: Vec<MailboxConfig>,
    /// Who may relay to other domains.
    #[serde(default)]
    pub relay: RelayConfig,
    /// Limits.
    #[serde(default)]
    pub limits: Limits,
    /// Certificate and key files (PEM), reloaded when they change.
    pub tls: TlsFiles,
    /// Sockets to listen on.
    #[serde(default)]
    pub listeners: Vec<Listener>,
    /// Where mail is stored.
    pub storage: Storage,
    /// Security switches; the defaults are the safe ones.
    #[serde(default)]
    pub security: Security,
    /// How clients reach this server from outside (the Service's ports), for autoconfig.
    #[serde(default)]
    pub advertised: Advertised,
    /// DKIM signing of outgoing mail; none: unsigned.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dkim: Option<DkimConfig>,
    /// Checks of incoming mail on port 25 (SPF, DKIM, DMARC).
    #[serde(default)]
    pub inbound: InboundChecks,
    /// DNS servers for MX lookups and sender checks (`IP` or `IP:port`); empty: the system's.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub nameservers: Vec<String>,
}

/// The key that signs outgoing mail (RFC 6376).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct DkimConfig {
    /// The selector: the key is published at `<selector>._domainkey.<domain>`.
    pub selector: String,
    /// The private key, PEM (PKCS#1 or PKCS#8 RSA, or PKCS#8 Ed25519).
    pub key_file: PathBuf,
}

/// What is checked on mail arriving on port 25.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct InboundChecks {
    /// Check SPF, DKIM and DMARC and add an `Authentication-Results` header.
    #[serde(default = "yes")]
    pub verify: bool,
    /// Refuse mail that fails DMARC when the sender's domain publishes `p=reject`.
    #[serde(default)]
    pub reject_on_dmarc_policy: bool,
    /// DNS lists looked up with the client's address; their weights add up.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub dnsbl: Vec<DnsListConfig>,
    /// The sum of weights at which a client is refused (`554 5.7.1` at RCPT).
    #[serde(default = "one")]
    pub dnsbl_threshold: i32,
    /// Greylisting: a new (client network, sender, recipient) is told to come back later.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub greylisting: Option<GreylistConfig>,
    /// A pause before the banner; a client that talks during it is refused (a spam bot that
    /// does not wait its turn). 0: off.
    #[serde(default)]
    pub greet_pause_millis: u32,
    /// Refuse a HELO/EHLO name that is not a domain or address literal, that claims this
    /// server's name or domains, or whose address literal is not the client's.
    #[serde(default)]
    pub helo_checks: bool,
    /// A clamd that scans each message from outside before it is taken.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub clamd: Option<ClamdConfig>,
    /// An rspamd that scores each message from outside before it is taken.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rspamd: Option<RspamdConfig>,
}

/// An rspamd's normal worker, spoken to over HTTP (`/checkv2`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RspamdConfig {
    /// `http://host:port`.
    pub url: String,
    /// How long one check may take.
    #[serde(default = "thirty")]
    pub timeout_seconds: u32,
    /// When rspamd cannot say: take the message unchecked (true) or ask the sender to retry
    /// later (false, `451 4.7.1`).
    #[serde(default)]
    pub accept_on_failure: bool,
    /// Check mail from logged-in users and relay networks too.
    #[serde(default)]
    pub scan_submission: bool,
    /// The controller worker (`http://host:port`): messages users move into Junk are learned
    /// as spam, out of it as ham. None: no learning.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub controller_url: Option<String>,
    /// A file holding the controller's password, when it asks for one (read at each
    /// learning, so a rotated Secret needs no restart).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub controller_password_file: Option<PathBuf>,
}

/// A clamd, spoken to over TCP (`INSTREAM`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ClamdConfig {
    /// `host:port`.
    pub address: String,
    /// How long one scan may take, connection included.
    #[serde(default = "thirty")]
    pub timeout_seconds: u32,
    /// When clamd cannot say: take the message unscanned (true) or ask the sender to retry
    /// later (false, `451 4.7.1`; nothing is lost).
    #[serde(default)]
    pub accept_on_failure: bool,
    /// Scan mail from logged-in users and relay networks too.
    #[serde(default)]
    pub scan_submission: bool,
}

fn thirty() -> u32 {
    30
}

impl Default for InboundChecks {
    fn default() -> Self {
        Self {
            verify: true,
            reject_on_dmarc_policy: false,
            dnsbl: Vec::new(),
            dnsbl_threshold: 1,
            greylisting: None,
            greet_pause_millis: 0,
            helo_checks: false,
            clamd: None,
            rspamd: None,
        }
    }
}

fn one() -> i32 {
    1
}

/// A DNS list: `<reversed address>.<zone>` answering `127.0.0.x` says the client is listed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct DnsListConfig {
    /// The list's zone, such as `zen.spamhaus.org`.
    pub zone: String,
    /// What a listing adds to the client's score; negative for an allowlist.
    #[serde(default = "one")]
    pub weight: i32,
    /// The answers that count (`127.0.0.2`); none: any answer in 127.0.0.0/8.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub answers: Vec<std::net::Ipv4Addr>,
}

/// Greylisting's timings.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct GreylistConfig {
    /// How long a new triplet waits before a retry is accepted.
    #[serde(default = "five_minutes")]
    pub delay_seconds: u32,
    /// How long a waiting triplet is remembered for its retry.
    #[serde(default = "one_day")]
    pub retry_window_seconds: u32,
    /// How long a passed triplet is let through without waiting again.
    #[serde(default = "thirty_six_days")]
    pub pass_seconds: u32,
}

fn five_minutes() -> u32 {
    300
}
fn one_day() -> u32 {
    86_400
}
fn thirty_six_days() -> u32 {
    36 * 86_400
}

/// The ports clients use (the Service's, not the container's), published in autoconfig.
/// A protocol without a listener is not advertised, whatever its port here.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Advertised {
    /// Submission with STARTTLS.
    #[serde(default = "port_587")]
    pub submission: u16,
    /// Submission over implicit TLS.
    #[serde(default = "port_465")]
    pub submissions: u16,
    /// IMAP with STARTTLS.
    #[serde(default = "port_143")]
    pub imap: u16,
    /// IMAP over implicit TLS.
    #[serde(default = "port_993")]
    pub imaps: u16,
    /// POP3 with STLS.
    #[serde(default = "port_110")]
    pub pop3: u16,
    /// POP3 over implicit TLS.
    #[serde(default = "port_995")]
    pub pop3s: u16,
    /// ManageSieve.
    #[serde(default = "port_4190")]
    pub managesieve: u16,
    /// The MTA-STS policy mode: `testing` (the default), `enforce` or `none`.
    #[serde(default = "mta_sts_testing")]
    pub mta_sts_mode: String,
}

impl Default for Advertised {
    fn default() -> Self {
        Self {
            submission: 587,
            submissions: 465,
            imap: 143,
            imaps: 993,
            pop3: 110,
            pop3s: 995,
            managesieve: 4190,
            mta_sts_mode: mta_sts_testing(),
        }
    }
}

fn port_4190() -> u16 {
    4190
}
fn port_587() -> u16 {
    587
}
fn port_465() -> u16 {
    465
}
fn port_143() -> u16 {
    143
}
fn port_993() -> u16 {
    993
}
fn port_110() -> u16 {
    110
}
fn port_995() -> u16 {
    995
}
fn mta_sts_testing() -> String {
    "testing".into()
}

/// A served domain.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct DomainConfig {
    /// The primary domain name.
    pub name: String,
    /// Alias domains: `x@alias` reaches `x@name`.
    #[serde(default)]
    pub aliases: Vec<String>,
    /// The mailbox address that receives mail for unknown local parts.
    #[serde(default)]
    pub catch_all: Option<String>,
    /// This domain's own mail host name (its MX, and the server name its clients use) on a
    /// server that hosts several domains; none: the server's `hostname`. A domain with a host
    /// name of its own is another tenant's: the server's DKIM key never signs for it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hostname: Option<String>,
    /// The certificate served to clients that ask (by SNI) for this domain's host name or a
    /// name in the domain; none: the server's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<TlsFiles>,
    /// The key that signs this domain's outgoing mail; none: the server's `dkim` (unless the
    /// domain has a host name of its own).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dkim: Option<DkimConfig>,
    /// The MTA-STS mode served for this domain (`testing`, `enforce`, `none`); none:
    /// `advertised.mtaStsMode`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mta_sts_mode: Option<String>,
    /// The largest message (bytes) to or from this domain's mailboxes, below the server's
    /// `limits.maxMessageSize`; none: the server's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_message_size: Option<u64>,
}

/// Whether `name` is `domain` or a name under it, ignoring ASCII case.
pub fn name_is_in(name: &str, domain: &str) -> bool {
    let (name, domain) = (name.as_bytes(), domain.as_bytes());
    name.eq_ignore_ascii_case(domain)
        || (name.len() > domain.len()
            && name[name.len() - domain.len() - 1] == b'.'
            && name[name.len() - domain.len()..].eq_ignore_ascii_case(domain))
}

/// A protocol a mailbox may log in with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LoginProtocol {
    /// Authenticated SMTP submission.
    Smtp,
    /// IMAP.
    Imap,
    /// POP3.
    Pop3,
}

/// A mailbox.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct MailboxConfig {
    /// Its address.
    pub address: String,
    /// Name for generated mail.
    #[serde(default)]
    pub display_name: Option<String>,
    /// An argon2 (`$argon2id$...`) or bcrypt (`$2b$...`) hash. Never plaintext.
    pub password_hash: String,
    /// Further addresses delivered here.
    #[serde(default)]
    pub aliases: Vec<String>,
    /// Addresses that get a copy of each delivered message.
    #[serde(default)]
    pub forward_to: Vec<String>,
    /// Whether forwarded mail is kept here too.
    #[serde(default = "yes")]
    pub keep_forwarded_copy: bool,
    /// Most bytes stored; none: no limit.
    #[serde(default)]
    pub quota_bytes: Option<u64>,
    /// Protocols it may log in with.
    #[serde(default = "all_protocols")]
    pub protocols: Vec<LoginProtocol>,
    /// A suspended mailbox receives mail but cannot log in.
    #[serde(default)]
    pub suspended: bool,
    /// Further passwords, one per device or application, each revoked on its own.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub app_passwords: Vec<AppPasswordConfig>,
    /// An out-of-office reply declared by the platform (`Mailbox.spec.autoReply`), answered
    /// before the user's own Sieve script runs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auto_reply: Option<AutoReplyConfig>,
    /// A Sieve script declared by the platform (`Mailbox.spec.sieve`), run at delivery before
    /// the script the user activated over ManageSieve.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sieve_script: Option<String>,
    /// Where the spam filter's verdict takes this mailbox's mail.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub spam: Option<SpamConfig>,
}

/// A mailbox's own spam settings.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SpamConfig {
    /// The rspamd score (in hundredths) from which mail goes to Junk; none: where rspamd's own
    /// actions put it (add header, rewrite subject).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub junk_score_hundredths: Option<i32>,
    /// False: spam stays in INBOX (marked by its X-Spam headers), never moved to Junk.
    #[serde(default = "yes")]
    pub quarantine: bool,
}

/// An out-of-office reply: sent once per sender per `days` while `now` is within
/// `[start, end)`, by the rules of a Sieve vacation (RFC 5230): never to lists, bounces or
/// automatic mail.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AutoReplyConfig {
    /// The reply's subject.
    pub subject: String,
    /// The reply's text.
    pub body: String,
    /// From when (Unix seconds); none: already.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start: Option<i64>,
    /// Until when (Unix seconds, not included); none: until removed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub end: Option<i64>,
    /// Days before the same sender is answered again.
    #[serde(default = "seven")]
    pub days: u32,
}

/// The longest auto-reply text, and the longest declared Sieve script.
pub const MAX_AUTO_REPLY_BYTES: usize = 64 * 1024;
pub const MAX_DECLARED_SCRIPT_BYTES: usize = 128 * 1024;

fn seven() -> u32 {
    7
}

/// The most app passwords a mailbox may have: a wrong password is checked against each, so
/// their number bounds what one failed login costs.
pub const MAX_APP_PASSWORDS: usize = 8;

/// An app password: a further password of a mailbox, for one device or application. Removing
/// it ends the sessions opened with it and no others.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AppPasswordConfig {
    /// Its name, unique in the mailbox (`phone`, `laptop-thunderbird`): named in the log of
    /// each login made with it.
    pub name: String,
    /// An argon2 or bcrypt hash, as for the mailbox's own password.
    pub password_hash: String,
    /// The protocols it opens, within the mailbox's own.
    #[serde(default = "all_protocols")]
    pub protocols: Vec<LoginProtocol>,
}

fn yes() -> bool {
    true
}

fn all_protocols() -> Vec<LoginProtocol> {
    vec![
        LoginProtocol::Smtp,
        LoginProtocol::Imap,
        LoginProtocol::Pop3,
    ]
}

impl MailboxConfig {
    /// Whether this mailbox may log in with a protocol.
    pub fn may_use(&self, protocol: LoginProtocol) -> bool {
        !self.suspended && self.protocols.contains(&protocol)
    }

    /// Every password hash that opens this mailbox, each with the app password's name (`None`
    /// for the mailbox's own password) and the protocols it opens: the own password first.
    pub fn credentials(&self) -> impl Iterator<Item = Credential<'_>> {
        std::iter::once(Credential {
            app_password: None,
            hash: &self.password_hash,
            protocols: &self.protocols,
        })
        .chain(self.app_passwords.iter().map(|a| Credential {
            app_password: Some(&a.name),
            hash: &a.password_hash,
            protocols: &a.protocols,
        }))
    }

    /// Whether the password with this hash (the own one or an app password) still opens the
    /// mailbox with `protocol`.
    pub fn opens(&self, hash: &str, protocol: LoginProtocol) -> bool {
        self.credentials()
            .any(|c| c.hash == hash && c.opens(self, protocol))
    }
}

/// One password of a mailbox, as [`MailboxConfig::credentials`] lists them.
#[derive(Debug, Clone, Copy)]
pub struct Credential<'a> {
    /// The app password's name; `None` for the mailbox's own password.
    pub app_password: Option<&'a str>,
    /// The hash.
    pub hash: &'a str,
    /// The protocols it opens (an app password's own list; the mailbox's for its own).
    pub protocols: &'a [LoginProtocol],
}

impl Credential<'_> {
    /// Whether it opens `mailbox` with `protocol`: the mailbox may use the protocol (it is not
    /// suspended, the protocol is among its own) and so may this password.
    pub fn opens(&self, mailbox: &MailboxConfig, protocol: LoginProtocol) -> bool {
        mailbox.may_use(protocol) && self.protocols.contains(&protocol)
    }
}

/// Who may relay to domains not served here.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RelayConfig {
    /// Logged-in mailboxes may relay.
    #[serde(default = "yes")]
    pub authenticated_users: bool,
    /// Client networks (CIDR) that may relay without logging in.
    #[serde(default)]
    pub client_networks: Vec<String>,
    /// Sender domains relayed mail may use; empty: the served domains.
    #[serde(default)]
    pub sender_domains: Vec<String>,
    /// Recipient domains relayed mail may go to; empty: any.
    #[serde(default)]
    pub recipient_domains: Vec<String>,
    /// Where relayed mail goes.
    #[serde(default)]
    pub route: RouteConfig,
    /// Rate limits on relayed mail.
    #[serde(default)]
    pub rate_limits: RateLimitsConfig,
    /// Retries of mail the next hop did not take.
    #[serde(default)]
    pub retry: RetryConfig,
    /// Logged-in users may put any address in the From and Sender header fields (shared
    /// mailboxes, sending on behalf of others). Off: only their own address and aliases.
    #[serde(default)]
    pub any_header_from: bool,
}

impl Default for RelayConfig {
    fn default() -> Self {
        Self {
            authenticated_users: true,
            client_networks: Vec::new(),
            sender_domains: Vec::new(),
            recipient_domains: Vec::new(),
            route: RouteConfig::default(),
            rate_limits: RateLimitsConfig::default(),
            retry: RetryConfig::default(),
            any_header_from: false,
        }
    }
}

/// The next hop of relayed mail.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RouteConfig {
    /// Direct MX delivery, or one smarthost.
    #[serde(default)]
    pub mode: RouteMode,
    /// Direct delivery only over TLS (otherwise TLS whenever the peer offers it).
    #[serde(default)]
    pub require_tls: bool,
    /// The smarthost, for `mode: smarthost`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub smarthost: Option<SmarthostConfig>,
}

/// How relayed mail leaves.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RouteMode {
    /// To each recipient domain's MX hosts (A/AAAA of the domain when it has no MX).
    #[default]
    Direct,
    /// To the smarthost.
    Smarthost,
}

/// A smarthost.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SmarthostConfig {
    /// Host name or IP address.
    pub host: String,
    /// Port.
    pub port: u16,
    /// TLS towards it.
    #[serde(default)]
    pub tls: SmarthostTls,
    /// File holding the SMTP AUTH username (from the credentials Secret).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub username_file: Option<PathBuf>,
    /// File holding the SMTP AUTH password (from the credentials Secret).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password_file: Option<PathBuf>,
}

/// TLS towards a smarthost.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SmarthostTls {
    /// STARTTLS, required.
    #[default]
    Starttls,
    /// TLS from the first byte.
    Implicit,
    /// No TLS (a smarthost on a trusted network only).
    None,
}

/// Rate limits on relayed mail; over them RCPT gets `450 4.7.1`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RateLimitsConfig {
    /// Per sender (logged-in user, or client address).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub per_sender: Option<RateConfig>,
    /// All senders together.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub total: Option<RateConfig>,
}

/// A number of messages per period.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RateConfig {
    /// Messages allowed per period.
    pub messages: u32,
    /// The period in seconds.
    pub period_seconds: u64,
}

/// Retries of mail the next hop did not take.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RetryConfig {
    /// Wait before the first retry; each next wait doubles, with jitter.
    #[serde(default = "default_retry_initial")]
    pub initial_interval_seconds: u64,
    /// The longest wait between two tries.
    #[serde(default = "default_retry_max")]
    pub max_interval_seconds: u64,
    /// After this long, the sender gets a delivery report and the message is dropped.
    #[serde(default = "default_retry_age")]
    pub max_age_seconds: u64,
}

impl Default for RetryConfig {
    fn default() -> Self {
        Self {
            initial_interval_seconds: default_retry_initial(),
            max_interval_seconds: default_retry_max(),
            max_age_seconds: default_retry_age(),
        }
    }
}

fn default_retry_initial() -> u64 {
    300
}
fn default_retry_max() -> u64 {
    4 * 3600
}
fn default_retry_age() -> u64 {
    5 * 86_400
}

/// Limits.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Limits {
    /// Largest message in bytes (the SMTP SIZE extension).
    #[serde(default = "default_max_message_size")]
    pub max_message_size: u64,
    /// Most recipients per message.
    #[serde(default = "default_max_recipients")]
    pub max_recipients: u32,
    /// Most concurrent connections, all listeners together.
    #[serde(default = "default_max_connections")]
    pub max_connections: u32,
    /// Most concurrent connections from one IP address (IPv6: one /64); the pod's own
    /// loopback (its probes) is never refused.
    #[serde(default = "default_max_connections_per_ip")]
    pub max_connections_per_ip: u32,
    /// Seconds a client may take to send a command (and between DATA chunks).
    #[serde(default = "default_command_timeout")]
    pub command_timeout_seconds: u64,
    /// Failed logins allowed per client address per minute before logins are refused.
    #[serde(default = "default_auth_failures")]
    pub auth_failures_per_minute: u32,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_message_size: default_max_message_size(),
            max_recipients: default_max_recipients(),
            max_connections: default_max_connections(),
            max_connections_per_ip: default_max_connections_per_ip(),
            command_timeout_seconds: default_command_timeout(),
            auth_failures_per_minute: default_auth_failures(),
        }
    }
}

fn default_max_message_size() -> u64 {
    25 * 1024 * 1024
}
fn default_max_recipients() -> u32 {
    100
}
fn default_max_connections() -> u32 {
    2000
}
fn default_max_connections_per_ip() -> u32 {
    50
}
fn default_command_timeout() -> u64 {
    300
}
fn default_auth_failures() -> u32 {
    10
}

/// Certificate chain and private key, PEM.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TlsFiles {
    /// The certificate chain.
    pub cert_file: PathBuf,
    /// The private key.
    pub key_file: PathBuf,
}

/// A protocol served on a listener.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ListenerProtocol {
    /// SMTP (MX and relay), STARTTLS offered.
    Smtp,
    /// Submission, STARTTLS required before AUTH.
    Submission,
    /// Submission over implicit TLS.
    Submissions,
    /// IMAP with STARTTLS.
    Imap,
    /// IMAP over implicit TLS.
    Imaps,
    /// POP3 with STLS.
    Pop3,
    /// POP3 over implicit TLS.
    Pop3s,
    /// ManageSieve (RFC 5804), STARTTLS required before AUTHENTICATE.
    Managesieve,
    /// HTTP: health, metrics, autoconfig.
    Http,
    /// HTTPS with the domain's certificate: only what mail clients and other servers read
    /// (MTA-STS policy, autoconfig, autodiscover).
    Https,
}

impl ListenerProtocol {
    /// Whether TLS starts with the connection.
    pub fn implicit_tls(self) -> bool {
        matches!(
            self,
            Self::Submissions | Self::Imaps | Self::Pop3s | Self::Https
        )
    }

    /// The name used in configs, logs and the dev mode's JSON.
    pub fn name(self) -> &'static str {
        match self {
            Self::Smtp => "smtp",
            Self::Submission => "submission",
            Self::Submissions => "submissions",
            Self::Imap => "imap",
            Self::Imaps => "imaps",
            Self::Pop3 => "pop3",
            Self::Pop3s => "pop3s",
            Self::Managesieve => "managesieve",
            Self::Http => "http",
            Self::Https => "https",
        }
    }
}

/// A socket to listen on.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Listener {
    /// What is served.
    pub protocol: ListenerProtocol,
    /// `IP:port`.
    pub address: String,
    /// Whether connections from `security.trustedProxies` start with a PROXY protocol header
    /// (v1 or v2) naming the real client; such a connection without one is refused. Any other
    /// peer is served as a direct client under its own address, and a header it sends is not
    /// honoured.
    #[serde(default)]
    pub proxy_protocol: bool,
}

/// Where mail is stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Storage {
    /// The data directory (the PVC's mount point; with `database`, the spool and the outbound
    /// queue only).
    pub path: PathBuf,
    /// Mail in PostgreSQL instead of Maildir under `path`: several replicas can serve one
    /// database.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub database: Option<DatabaseStorage>,
}

/// A PostgreSQL database holding the mail.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct DatabaseStorage {
    /// A file holding the connection URI (`postgresql://user:password@host:port/db?...`, as
    /// CloudNativePG's application Secret has it under `uri`): from a Secret, never in the
    /// config itself.
    pub uri_file: PathBuf,
    /// PEM certificates of the CA that signed the database server's certificate (as
    /// CloudNativePG's `<cluster>-ca` Secret has under `ca.crt`). With it, the connection is
    /// TLS and the server's certificate and name are verified against it; without it, the
    /// URI's `sslmode` decides (`require` verifies against the system's CAs, anything else is
    /// in the clear).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_file: Option<PathBuf>,
}

/// Security switches.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Security {
    /// Allow AUTH/LOGIN without TLS. Off by default and in dev mode.
    #[serde(default)]
    pub allow_plaintext_auth: bool,
    /// Networks (CIDR) of the load balancers whose PROXY headers are believed, on listeners with
    /// `proxyProtocol`. Needed when a listener has it; must not hold 127.0.0.1 or ::1, where the
    /// pod's own probes connect from without a header.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub trusted_proxies: Vec<String>,
}
