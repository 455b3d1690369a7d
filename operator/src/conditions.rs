//! Conditions as a list-map keyed by type: `lastTransitionTime` moves only when the status
//! does, and reasons are constants.
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};

/// Condition reasons.
pub mod reason {
    /// Everything needed is there and working.
    pub const READY: &str = "Ready";
    /// The runtime serves the config.
    pub const SERVED: &str = "ConfigServed";
    /// The config was written, the runtime has not reported it yet.
    pub const PENDING: &str = "ConfigPending";
    /// A probe of the protocol passed.
    pub const PROBE_PASSED: &str = "ProbePassed";
    /// A probe of the protocol failed.
    pub const PROBE_FAILED: &str = "ProbeFailed";
    /// A referenced Secret does not exist (yet).
    pub const SECRET_NOT_FOUND: &str = "SecretNotFound";
    /// A RelayPolicy's credentials Secret lacks the label that allows its use as smarthost
    /// credentials.
    pub const SECRET_NOT_LABELLED: &str = "SecretNotLabelled";
    /// A RelayPolicy names credentials for a smarthost reached without TLS.
    pub const CREDENTIALS_NEED_TLS: &str = "CredentialsNeedTLS";
    /// A referenced Secret lacks the key.
    pub const KEY_NOT_FOUND: &str = "KeyNotFound";
    /// A referenced Secret holds a hash the runtime refuses (malformed, or too costly to check).
    pub const INVALID_HASH: &str = "InvalidPasswordHash";
    /// An app password has the same hash as another password of its mailbox.
    pub const DUPLICATE_PASSWORD: &str = "DuplicatePassword";
    /// No MailDomain in the namespace serves the address's domain.
    pub const DOMAIN_NOT_FOUND: &str = "DomainNotFound";
    /// The referenced RelayPolicy does not exist (yet).
    pub const RELAY_POLICY_NOT_FOUND: &str = "RelayPolicyNotFound";
    /// Another Mailbox already has the address.
    pub const DUPLICATE: &str = "DuplicateAddress";
    /// A content scanner (clamd, rspamd) does not answer.
    pub const SCANNER_UNREACHABLE: &str = "ScannerUnreachable";
    /// A Mailbox's Sieve script does not compile.
    pub const SCRIPT_INVALID: &str = "ScriptInvalid";
    /// A referenced ConfigMap does not exist (yet).
    pub const CONFIG_MAP_NOT_FOUND: &str = "ConfigMapNotFound";
    /// The MailDomain's catch-all address is no served Mailbox's.
    pub const CATCH_ALL_NOT_FOUND: &str = "CatchAllNotFound";
    /// Some aliases of the Mailbox are left out (taken, or in a domain not served).
    pub const ALIAS_REFUSED: &str = "AliasRefused";
    /// The rendered runtime config failed the runtime's own check and was not written.
    pub const INVALID_CONFIG: &str = "InvalidConfig";
    /// Something this condition depends on is not ready.
    pub const NOT_READY: &str = "NotReady";
    /// The open-relay self-test: the runtime took a foreign recipient from a client that had
    /// not logged in.
    pub const RELAY_ACCEPTED: &str = "RelayAccepted";
    /// The open-relay self-test: the runtime refused to relay.
    pub const RELAY_REFUSED: &str = "RelayRefused";
    /// The open-relay self-test could not reach a verdict (no answer, a temporary refusal).
    pub const RELAY_TEST_INCONCLUSIVE: &str = "RelayTestInconclusive";
    /// Every DNS record status lists resolves as it should.
    pub const RECORDS_VERIFIED: &str = "RecordsVerified";
    /// Some DNS records status lists are missing or wrong.
    pub const RECORDS_WRONG: &str = "RecordsWrong";
    /// The resolver the DNS checks use did not answer.
    pub const DNS_UNREACHABLE: &str = "DNSUnreachable";
    /// A CRD the object asks to use is not installed.
    pub const CRD_NOT_INSTALLED: &str = "CRDNotInstalled";
    /// The operator's RBAC does not allow what the object asks for.
    pub const FORBIDDEN: &str = "Forbidden";
    /// An object of the name the operator would write exists and is not the operator's.
    pub const NOT_OWNED: &str = "NotOwned";
    /// A hosted domain is in the config its server's runtime serves.
    pub const HOSTED: &str = "Hosted";
    /// `hostedBy` names no MailDomain of this namespace.
    pub const SERVER_NOT_FOUND: &str = "ServerNotFound";
    /// `hostedBy` names a MailDomain that is hosted itself.
    pub const SERVER_IS_HOSTED: &str = "ServerIsHosted";
    /// The server's runtime is not ready.
    pub const SERVER_NOT_READY: &str = "ServerNotReady";
    /// A RelayPolicy lets networks at least as wide as the warning threshold relay.
    pub const WIDE_NETWORKS: &str = "WideNetworks";
    /// A RelayPolicy's client networks are all narrower than the threshold (or there are none).
    pub const NARROW_NETWORKS: &str = "NarrowNetworks";
    /// The database Secret's URI is not a PostgreSQL connection URI.
    pub const INVALID_URI: &str = "InvalidURI";
    /// The runtime reaches its database, at the schema version it knows.
    pub const DATABASE_CONNECTED: &str = "Connected";
    /// The runtime cannot use its database now (it says why).
    pub const DATABASE_UNAVAILABLE: &str = "DatabaseUnavailable";
    /// The runtime stopped at start (its last termination message says why: a Secret without
    /// its key, a wrong URI, a refused login, a schema newer than the runtime).
    pub const RUNTIME_CANNOT_START: &str = "RuntimeCannotStart";
    /// Nothing heard yet.
    pub const WAITING: &str = "Waiting";
}

/// Condition types, as the three kinds' status docs name them.
pub mod types {
    /// Everything the object needs works (all three kinds).
    pub const READY: &str = "Ready";
    /// kstatus (Flux's and Argo CD's generic health checks read it): present only while True,
    /// while something is awaited.
    pub const RECONCILING: &str = "Reconciling";
    /// kstatus: present only while True, while a change by the user is needed.
    pub const STALLED: &str = "Stalled";
    /// MailDomain: the SMTP (port 25) probe.
    pub const SMTP_READY: &str = "SMTPReady";
    /// MailDomain: the submission probes (587, 465).
    pub const SUBMISSION_READY: &str = "SubmissionReady";
    /// MailDomain: the IMAP probes (143, 993).
    pub const IMAP_READY: &str = "IMAPReady";
    /// MailDomain: the POP3 probes (110, 995).
    pub const POP3_READY: &str = "POP3Ready";
    /// MailDomain: its content scanners answer (only with clamav or rspamd configured).
    pub const SCANNERS_REACHABLE: &str = "ScannersReachable";
    /// MailDomain: the HTTPS probe (443: the MTA-STS policy is served), with `protocols.https`.
    pub const HTTPS_READY: &str = "HTTPSReady";
    /// MailDomain: the ManageSieve probe (4190).
    pub const MANAGESIEVE_READY: &str = "ManageSieveReady";
    /// MailDomain: its certificate Secret is there.
    pub const TLS_READY: &str = "TLSReady";
    /// MailDomain: the runtime serves the config revision written.
    pub const CONFIG_SERVED: &str = "ConfigServed";
    /// MailDomain: present (False) only while a rendered config is refused.
    pub const CONFIG_VALID: &str = "ConfigValid";
    /// MailDomain: the RelayPolicy it names exists.
    pub const RELAY_POLICY_FOUND: &str = "RelayPolicyFound";
    /// MailDomain: its catch-all address is a served Mailbox's.
    pub const CATCH_ALL_FOUND: &str = "CatchAllFound";
    /// Mailbox: a MailDomain serves its address's domain.
    pub const DOMAIN_FOUND: &str = "DomainFound";
    /// Mailbox: its password Secret and key are there.
    pub const SECRET_FOUND: &str = "SecretFound";
    /// Mailbox: every app password's Secret and key are there (only with app passwords).
    pub const APP_PASSWORDS_FOUND: &str = "AppPasswordsFound";
    /// Mailbox: its Sieve script is there and compiles (only with `spec.sieve`).
    pub const SIEVE_SCRIPT_VALID: &str = "SieveScriptValid";
    /// Mailbox: present (False) only while some aliases are left out.
    pub const ALIASES_ACCEPTED: &str = "AliasesAccepted";
    /// Mailbox: present (False) only while another Mailbox has its address.
    pub const UNIQUE: &str = "Unique";
    /// RelayPolicy: its smarthost credentials may be used.
    pub const CREDENTIALS_FOUND: &str = "CredentialsFound";
    /// RelayPolicy: its smarthost answers.
    pub const SMARTHOST_REACHABLE: &str = "SmarthostReachable";
    /// MailDomain: the open-relay self-test (port 25, from the operator, without a login). True
    /// is the problem: the runtime relays for anyone who can reach it from there.
    pub const OPEN_RELAY: &str = "OpenRelay";
    /// MailDomain: each record of `status.dnsRecords` resolves as it should (only with the
    /// operator's `--dns-check`).
    pub const DNS_VERIFIED: &str = "DNSVerified";
    /// MailDomain: the runtime reaches its PostgreSQL database (only with `storage.database`).
    pub const DATABASE_READY: &str = "DatabaseReady";
    /// MailDomain: its records are in its external-dns `DNSEndpoint` (only with
    /// `spec.dns.publish`).
    pub const DNS_PUBLISHED: &str = "DNSPublished";
    /// A hosted domain: served by the runtime of the MailDomain `hostedBy` names.
    pub const HOSTED: &str = "Hosted";
    /// RelayPolicy: True when a `clientCIDRs` entry is an IPv4 /16 or an IPv6 /48 or wider
    /// (`0.0.0.0/0`, a whole pod network): every address in it may relay without a login.
    pub const WIDE_CLIENT_NETWORKS: &str = "WideClientNetworks";
}

/// Condition types whose True is the problem (the Kubernetes conventions prefer the other
/// polarity; these two name the danger as users search for it).
const TRUE_IS_BAD: &[&str] = &[types::OPEN_RELAY, types::WIDE_CLIENT_NETWORKS];

/// Condition types that tell about the object without being part of its `Ready` (nor of
/// kstatus's `Reconciling`/`Stalled`, nor of Ready's "not ready: ..." list).
const ASIDE_FROM_READY: &[&str] = &[
    types::OPEN_RELAY,
    types::WIDE_CLIENT_NETWORKS,
    types::DNS_VERIFIED,
    types::DNS_PUBLISHED,
];

/// Whether a condition is a problem that keeps its object from `Ready`: [`is_bad`], and not one
/// of the conditions kept aside from Ready.
pub fn holds_back(c: &Condition) -> bool {
    c.type_ != types::READY && !ASIDE_FROM_READY.contains(&c.type_.as_str()) && is_bad(c)
}

/// Whether a condition reports a problem: False (or Unknown) for most types, True for those
/// that name a danger.
pub fn is_bad(c: &Condition) -> bool {
    if TRUE_IS_BAD.contains(&c.type_.as_str()) {
        c.status == "True"
    } else {
        c.status != "True"
    }
}

pub use types::{RECONCILING, STALLED};

/// Reasons no amount of waiting clears: the user must change the object or its Secret. A
/// condition False for one of them makes the object `Stalled`; any other not-ready state is
/// `Reconciling` (a Secret or a domain may still be on its way, a runtime still starting).
const NEEDS_A_CHANGE: &[&str] = &[
    reason::INVALID_CONFIG,
    reason::DUPLICATE,
    reason::KEY_NOT_FOUND,
    reason::INVALID_HASH,
    reason::DUPLICATE_PASSWORD,
    reason::SECRET_NOT_LABELLED,
    reason::CREDENTIALS_NEED_TLS,
    reason::CATCH_ALL_NOT_FOUND,
];

/// Sets kstatus's `Reconciling` or `Stalled` from the other conditions (`Ready` among them):
/// neither once Ready; `Stalled` with the first failing condition's reason and message when a
/// change by the user is needed; `Reconciling` with what is awaited otherwise.
pub fn set_kstatus(
    conditions: &mut Vec<Condition>,
    previous: &[Condition],
    generation: Option<i64>,
) {
    conditions.retain(|c| c.type_ != RECONCILING && c.type_ != STALLED);
    let failing: Vec<&Condition> = conditions.iter().filter(|c| holds_back(c)).collect();
    let ready = is_true(conditions, types::READY);
    if ready {
        return;
    }
    let stuck = failing
        .iter()
        .find(|c| NEEDS_A_CHANGE.contains(&c.reason.as_str()));
    let (type_, reason, message) = match stuck {
        Some(c) => (
            STALLED,
            c.reason.clone(),
            format!("{}: {}", c.type_, c.message),
        ),
        None => {
            let awaited: Vec<&str> = failing.iter().map(|c| c.type_.as_str()).collect();
            let reason = failing
                .first()
                .map_or(reason::NOT_READY, |c| c.reason.as_str())
                .to_string();
            let message = if awaited.is_empty() {
                "not ready yet".to_string()
            } else {
                format!("waiting for {}", awaited.join(", "))
            };
            (RECONCILING, reason, message)
        }
    };
    set(
        conditions, previous, type_, true, &reason, message, generation,
    );
}

/// Sets a condition, keeping its `lastTransitionTime` when its status does not change.
pub fn set(
    conditions: &mut Vec<Condition>,
    previous: &[Condition],
    type_: &str,
    ok: bool,
    reason: &str,
    message: impl Into<String>,
    generation: Option<i64>,
) {
    let status = if ok { "True" } else { "False" };
    set_status(
        conditions, previous, type_, status, reason, message, generation,
    );
}

/// [`set`] with the status as a word: `True`, `False` or `Unknown`.
pub fn set_status(
    conditions: &mut Vec<Condition>,
    previous: &[Condition],
    type_: &str,
    status: &str,
    reason: &str,
    message: impl Into<String>,
    generation: Option<i64>,
) {
    let since = previous
        .iter()
        .find(|c| c.type_ == type_ && c.status == status)
        .map(|c| c.last_transition_time.clone())
        .unwrap_or_else(|| Time(k8s_openapi::jiff::Timestamp::now()));
    conditions.retain(|c| c.type_ != type_);
    conditions.push(Condition {
        type_: type_.into(),
        status: status.into(),
        reason: reason.into(),
        message: message.into(),
        last_transition_time: since,
        observed_generation: generation,
    });
}

/// The conditions whose status differs from before, and the new ones that are not True (nor
/// only not ready yet): what `kubectl describe` should show as events. A condition that starts
/// out True is no news (a thousand new Mailboxes would otherwise post thousands of "found"
/// events).
pub fn transitions<'a>(previous: &[Condition], current: &'a [Condition]) -> Vec<&'a Condition> {
    current
        .iter()
        .filter(|c| match previous.iter().find(|p| p.type_ == c.type_) {
            Some(p) => p.status != c.status,
            // A new object that is only not ready yet is making progress, not a problem: no
            // Warning for it (10,000 Mailboxes created at once would write 10,000 events).
            None => is_bad(c) && c.reason != reason::NOT_READY,
        })
        .collect()
}

/// Whether a condition of this type is True.
pub fn is_true(conditions: &[Condition], type_: &str) -> bool {
    conditions
        .iter()
        .any(|c| c.type_ == type_ && c.status == "True")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn condition(type_: &str, ok: bool, reason: &str) -> Condition {
        let mut out = Vec::new();
        set(
            &mut out,
            &[],
            type_,
            ok,
            reason,
            format!("{type_} says so"),
            Some(3),
        );
        out.remove(0)
    }

    fn kstatus(conditions: &[Condition]) -> Vec<(String, String, String)> {
        let mut conditions = conditions.to_vec();
        set_kstatus(&mut conditions, &[], Some(3));
        conditions
            .into_iter()
            .filter(|c| c.type_ == RECONCILING || c.type_ == STALLED)
            .map(|c| (c.type_, c.status, c.reason))
            .collect()
    }

    #[test]
    fn kstatus_follows_ready_and_the_reason_of_what_fails() {
        let ready = condition("Ready", true, reason::READY);
        let not_ready = condition("Ready", false, reason::NOT_READY);
        // Ready: neither, and earlier ones are removed.
        let mut done = vec![ready.clone(), condition(STALLED, true, reason::DUPLICATE)];
        set_kstatus(&mut done, &[], Some(3));
        assert_eq!(done.len(), 1);
        // A Secret not there yet: Reconciling, with its reason.
        assert_eq!(
            kstatus(&[
                condition("SecretFound", false, reason::SECRET_NOT_FOUND),
                not_ready.clone()
            ]),
            [(
                RECONCILING.into(),
                "True".into(),
                reason::SECRET_NOT_FOUND.into()
            )]
        );
        // A Secret without its key, a duplicate address: Stalled until the user acts.
        for why in [
            reason::KEY_NOT_FOUND,
            reason::DUPLICATE,
            reason::INVALID_CONFIG,
        ] {
            assert_eq!(
                kstatus(&[
                    condition("DomainFound", false, reason::DOMAIN_NOT_FOUND),
                    condition("Other", false, why),
                    not_ready.clone(),
                ]),
                [(STALLED.into(), "True".into(), why.into())]
            );
        }
        // Not ready with nothing failing (a config not served yet): Reconciling.
        assert_eq!(
            kstatus(&[not_ready]),
            [(RECONCILING.into(), "True".into(), reason::NOT_READY.into())]
        );
    }

    fn conditions(list: &[(&str, bool)]) -> Vec<Condition> {
        let mut out = Vec::new();
        for (type_, ok) in list {
            set(&mut out, &[], type_, *ok, reason::READY, "m", Some(1));
        }
        out
    }

    #[test]
    fn events_are_changes_and_new_problems_not_new_good_news() {
        let types = |v: Vec<&Condition>| v.iter().map(|c| c.type_.clone()).collect::<Vec<_>>();
        // A new object: only what is wrong is news.
        let first = conditions(&[("DomainFound", true), ("SecretFound", false)]);
        assert_eq!(types(transitions(&[], &first)), ["SecretFound"]);
        // The Secret appears: a recovery is news; an unchanged condition is not.
        let second = conditions(&[("DomainFound", true), ("SecretFound", true)]);
        assert_eq!(types(transitions(&first, &second)), ["SecretFound"]);
        assert!(transitions(&second, &second).is_empty());
        // Something breaks.
        let third = conditions(&[("DomainFound", false), ("SecretFound", true)]);
        assert_eq!(types(transitions(&second, &third)), ["DomainFound"]);
        // A new object only waiting to be served is no news; once it was Ready, losing that is.
        let mut waiting = conditions(&[("DomainFound", true)]);
        set(
            &mut waiting,
            &[],
            "Ready",
            false,
            reason::NOT_READY,
            "m",
            Some(1),
        );
        assert!(transitions(&[], &waiting).is_empty());
        let ready = conditions(&[("DomainFound", true), ("Ready", true)]);
        assert_eq!(types(transitions(&ready, &waiting)), ["Ready"]);
    }
}
