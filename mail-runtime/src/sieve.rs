//! Sieve at delivery: for each local recipient, the scripts that apply (the platform's
//! declared script and out-of-office from the config, then the script the user activated over
//! ManageSieve) decide where the message goes, whom it is redirected to, whether the sender
//! gets a vacation reply, or whether it is refused.
//!
//! ```text
//!   decide (reads the store, changes nothing) --> Decision per mailbox
//!        all local recipients reject, none remote --> SMTP 550 with the reason
//!   carry_out --> placements (store.deliver_to), folders created (:create),
//!                 redirects and replies (local: INBOX; remote: the outbound queue, DKIM-signed,
//!                 rate-limited as the mailbox's sending), vacation memory
//! ```
//!
//! A script that does not compile is logged and skipped: the message reaches INBOX. Nothing
//! a script says can lose a message the SMTP session acknowledged, except `discard`, which the
//! user wrote.
use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
};

use chrono::{DateTime, FixedOffset};
use kubemail_sieve::{Action, Envelope, Input, Script, Vacation};
use sha2::{Digest, Sha256};

use crate::{
    config::{Config, MailboxConfig, Recipient},
    store::{INBOX, Placement, Store, StoreError},
};

/// Where spam goes (a default folder, RFC 6154's `\Junk`).
const JUNK: &str = "Junk";

/// The spam filter's verdict on a message.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Spam {
    pub score: f64,
    /// Whether the filter's action marks it as spam (add header, rewrite subject).
    pub marked: bool,
}

impl Spam {
    /// Whether this mailbox keeps this message in Junk: from its own score threshold when it
    /// has one, else by the filter's action; never when it opted out of quarantine.
    fn junk_for(&self, mailbox: Option<&MailboxConfig>) -> bool {
        let settings = mailbox.and_then(|m| m.spam.as_ref());
        if settings.is_some_and(|s| !s.quarantine) {
            return false;
        }
        match settings.and_then(|s| s.junk_score_hundredths) {
            Some(threshold) => self.score * 100.0 >= f64::from(threshold),
            None => self.marked,
        }
    }
}

/// What the scripts decided for one mailbox.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Decision {
    pub mailbox: String,
    /// Folder and IMAP flags of each copy; empty when the message was discarded.
    pub stores: Vec<(String, Vec<String>)>,
    /// Folders to create first (`fileinto :create`).
    pub create: Vec<String>,
    pub redirects: Vec<String>,
    pub vacation: Option<Vacation>,
    pub reject: Option<String>,
}

impl Decision {
    fn inbox(mailbox: &str) -> Self {
        Self {
            mailbox: mailbox.to_string(),
            stores: vec![(INBOX.to_string(), Vec::new())],
            ..Self::default()
        }
    }
}

/// A script compiled, or why it does not compile.
type CompiledScript = Result<Arc<Script>, String>;

/// Compiled scripts by the hash of their text, so a busy mailbox's script is compiled once.
/// Bounded by the source bytes it holds (a compiled script is a small multiple of its
/// source): past [`CACHE_SOURCE_BYTES`] it starts afresh.
#[derive(Debug, Default)]
pub struct Compiled(Mutex<(HashMap<[u8; 32], CompiledScript>, usize)>);

/// The most script source the cache stands for.
const CACHE_SOURCE_BYTES: usize = 16 << 20;

impl Compiled {
    pub fn get(&self, text: &str) -> CompiledScript {
        let key: [u8; 32] = Sha256::digest(text.as_bytes()).into();
        let mut guard = self.0.lock().expect("script cache");
        let (cache, bytes) = &mut *guard;
        if let Some(found) = cache.get(&key) {
            return found.clone();
        }
        if *bytes + text.len() > CACHE_SOURCE_BYTES {
            cache.clear();
            *bytes = 0;
        }
        let compiled = kubemail_sieve::compile(text)
            .map(Arc::new)
            .map_err(|e| e.to_string());
        cache.insert(key, compiled.clone());
        *bytes += text.len();
        compiled
    }
}

/// Whether any of these mailboxes has a script or an out-of-office to run.
pub fn any_rules(store: &dyn Store, config: &Config, mailboxes: &[String]) -> bool {
    mailboxes.iter().any(|m| {
        let declared = mailbox_config(config, m)
            .is_some_and(|c| c.sieve_script.is_some() || c.auto_reply.is_some());
        declared || store.sieve_scripts(m).is_ok_and(|s| s.active.is_some())
    })
}

fn mailbox_config<'c>(config: &'c Config, mailbox: &str) -> Option<&'c MailboxConfig> {
    match config.resolve(mailbox) {
        Recipient::Local(i) => Some(config.mailbox(i)),
        _ => None,
    }
}

/// Runs the rules of one mailbox. Reads the store (active script, folders); changes nothing.
pub fn decide(
    store: &dyn Store,
    config: &Config,
    compiled: &Compiled,
    message: &[u8],
    from: &str,
    mailbox: &str,
    now: DateTime<FixedOffset>,
) -> Decision {
    let Some(settings) = mailbox_config(config, mailbox) else {
        return Decision::inbox(mailbox);
    };
    let mut scripts: Vec<(&str, String)> = Vec::new();
    if let Some(text) = &settings.sieve_script {
        scripts.push(("declared", text.clone()));
    }
    match store.sieve_scripts(mailbox) {
        Ok(list) => {
            if let Some(active) = list.active {
                match store.sieve_script(mailbox, &active) {
                    Ok(Some(text)) => scripts.push(("active", text)),
                    Ok(None) => {}
                    Err(err) => {
                        tracing::warn!(mailbox, error = %err, "sieve: the active script cannot be read; delivering to INBOX")
                    }
                }
            }
        }
        Err(err) => {
            tracing::warn!(mailbox, error = %err, "sieve: scripts cannot be listed; delivering to INBOX")
        }
    }
    // The store keeps IMAP's names (modified UTF-7); scripts name folders in UTF-8.
    let folders: Vec<String> = store
        .folders(mailbox)
        .unwrap_or_default()
        .iter()
        .map(|f| crate::imap::mutf7::decode(f).unwrap_or_else(|| f.clone()))
        .collect();
    let envelope = Envelope {
        from: from.to_string(),
        to: mailbox.to_string(),
    };
    let input = Input {
        message,
        envelope: &envelope,
        now,
        folders: &folders,
    };
    let mut actions: Vec<Action> = Vec::new();
    let mut implicit = true;
    let mut implicit_flags = Vec::new();
    // The platform's out-of-office comes first: it answers even when the user's script
    // files the message away.
    if let Some(reply) = &settings.auto_reply {
        let t = now.timestamp();
        if reply.start.is_none_or(|s| t >= s) && reply.end.is_none_or(|e| t < e) {
            actions.push(Action::Vacation(Vacation {
                seconds: u64::from(reply.days) * 86_400,
                subject: Some(reply.subject.clone()),
                from: None,
                addresses: Vec::new(),
                mime: false,
                handle: "kubemail-auto-reply".into(),
                reason: reply.body.clone(),
            }));
        }
    }
    for (which, text) in &scripts {
        let script = match compiled.get(text) {
            Ok(s) => s,
            Err(err) => {
                tracing::warn!(mailbox, script = which, error = %err, "sieve: the script does not compile; it is skipped");
                continue;
            }
        };
        let outcome = kubemail_sieve::run(&script, &input);
        if let Some(err) = &outcome.error {
            // RFC 5228 s2.10.6: a run-time error keeps the message, whatever else the script
            // said.
            tracing::warn!(mailbox, script = which, error = %err, "sieve: run-time error; the message is kept");
            actions.push(Action::Keep { flags: Vec::new() });
            continue;
        }
        for action in outcome.actions {
            match action {
                Action::Keep { flags } if outcome.implicit_keep => implicit_flags = flags,
                // One reply per message: the first vacation wins.
                Action::Vacation(_) if actions.iter().any(|a| matches!(a, Action::Vacation(_))) => {
                }
                other => actions.push(other),
            }
        }
        implicit &= outcome.implicit_keep;
    }
    if implicit {
        actions.push(Action::Keep {
            flags: implicit_flags,
        });
    }
    let mut decision = Decision {
        mailbox: mailbox.to_string(),
        ..Decision::default()
    };
    for action in actions {
        match action {
            Action::Keep { flags } => decision.stores.push((INBOX.to_string(), flags)),
            Action::FileInto {
                folder,
                flags,
                create,
            } => {
                let exists = folders.contains(&folder);
                if exists {
                    decision.stores.push((folder, flags));
                } else if create {
                    decision.create.push(folder.clone());
                    decision.stores.push((folder, flags));
                } else {
                    // RFC 5228 s4.1: a folder that cannot be filed into means the keep.
                    tracing::info!(
                        mailbox,
                        folder,
                        "sieve: fileinto a folder that does not exist; kept in INBOX"
                    );
                    decision.stores.push((INBOX.to_string(), flags));
                }
            }
            Action::Redirect { address } => decision.redirects.push(address),
            Action::Reject { reason } => decision.reject = Some(reason),
            Action::Vacation(v) => decision.vacation = Some(v),
        }
    }
    // One copy per folder.
    let mut seen = Vec::new();
    decision.stores.retain(|(folder, _)| {
        let new = !seen.contains(folder);
        seen.push(folder.clone());
        new
    });
    decision
}

/// Maildir letters for IMAP flags in a folder (keywords get the folder's letters).
pub fn letters(
    store: &dyn Store,
    mailbox: &str,
    folder: &str,
    flags: &[String],
) -> Result<String, StoreError> {
    let mut out: Vec<char> = Vec::new();
    let mut keywords = Vec::new();
    for flag in flags {
        match flag.to_ascii_lowercase().as_str() {
            "\\answered" => out.push('R'),
            "\\flagged" => out.push('F'),
            "\\deleted" => out.push('T'),
            "\\seen" => out.push('S'),
            "\\draft" => out.push('D'),
            _ if flag.starts_with('\\') => {}
            _ if flag
                .chars()
                .all(|c| c.is_ascii_graphic() && !"(){%*\"\\]".contains(c)) =>
            {
                keywords.push(flag.clone());
            }
            _ => {}
        }
    }
    if !keywords.is_empty() {
        out.extend(store.keyword_letters(mailbox, folder, &keywords)?.chars());
    }
    out.sort_unstable();
    out.dedup();
    Ok(out.into_iter().collect())
}

/// The placements of a set of decisions, creating the folders `:create` asked for. A folder
/// that cannot be created, or flags that cannot be set, fall back to INBOX without flags:
/// the message is never lost over them.
pub fn placements(store: &dyn Store, decisions: &[Decision]) -> Vec<Placement> {
    let mut out = Vec::new();
    for d in decisions {
        for folder in &d.create {
            let folder = &crate::imap::mutf7::encode(folder);
            match store.create_folder(&d.mailbox, folder) {
                Ok(()) | Err(StoreError::FolderExists(_)) => {}
                Err(err) => {
                    tracing::warn!(mailbox = %d.mailbox, folder, error = %err, "sieve: fileinto :create failed; INBOX instead")
                }
            }
        }
        let existing = store.folders(&d.mailbox).unwrap_or_default();
        for (folder, flags) in &d.stores {
            let wire = crate::imap::mutf7::encode(folder);
            let folder = if folder.eq_ignore_ascii_case(INBOX) {
                INBOX.to_string()
            } else if existing.contains(&wire) {
                wire
            } else {
                INBOX.to_string()
            };
            let letters = letters(store, &d.mailbox, &folder, flags).unwrap_or_default();
            if !out
                .iter()
                .any(|p: &Placement| p.mailbox == d.mailbox && p.folder == folder)
            {
                out.push(Placement {
                    mailbox: d.mailbox.clone(),
                    folder,
                    flags: letters,
                });
            }
        }
    }
    out
}

/// The vacation memory's key: the reply's handle and the sender, hashed (the file holds no
/// addresses).
pub fn vacation_key(handle: &str, sender: &str) -> String {
    let digest = Sha256::digest(format!("{handle}\0{}", sender.to_ascii_lowercase()).as_bytes());
    digest[..16].iter().map(|b| format!("{b:02x}")).collect()
}

/// The addresses a mailbox answers for: its own and its aliases, lowercase, own first.
pub fn own_addresses(config: &Config, mailbox: &str, extra: &[String]) -> Vec<String> {
    let mut own = vec![mailbox.to_ascii_lowercase()];
    if let Some(m) = mailbox_config(config, mailbox) {
        own.extend(m.aliases.iter().map(|a| a.to_ascii_lowercase()));
    }
    own.extend(extra.iter().map(|a| a.to_ascii_lowercase()));
    own
}

/// What the session tells the client once the rules ran.
#[derive(Debug)]
pub enum Delivered {
    /// Stored (or discarded, redirected, answered) as the scripts said.
    Done,
    /// Every recipient's script rejected it: refuse it in the session, with this reason.
    Rejected(String),
}

/// Runs every recipient's rules on a spooled message and carries them out. Blocking.
/// `trusted`: `Some` when the sender logged in (with its address) or relays from a trusted
/// network (`Some(None)`): its mail is signed when redirected, as it would be when sent
/// directly; `remote`: the transaction also has remote recipients (so a rejection by every
/// local one cannot refuse the whole message).
pub fn deliver(
    runtime: &crate::runtime::Runtime,
    message: crate::store::SpooledMessage,
    mailboxes: &[String],
    from: &str,
    trusted: Option<Option<&str>>,
    remote: bool,
    spam: Option<Spam>,
) -> Result<Delivered, StoreError> {
    let store = runtime.store().clone();
    let config = runtime.config().get();
    if spam.is_none() && !any_rules(&*store, &config, mailboxes) {
        store.deliver(message, mailboxes)?;
        return Ok(Delivered::Done);
    }
    let bytes = match std::fs::read(&message.path) {
        Ok(b) => b,
        Err(err) => {
            let _ = std::fs::remove_file(&message.path);
            return Err(StoreError::from_io(err));
        }
    };
    let now = now();
    let mut decisions: Vec<Decision> = mailboxes
        .iter()
        .map(|m| {
            decide(
                &*store,
                &config,
                runtime.sieve_scripts(),
                &bytes,
                from,
                m,
                now,
            )
        })
        .collect();
    if !remote && decisions.iter().all(|d| d.reject.is_some()) {
        let _ = std::fs::remove_file(&message.path);
        let reason = decisions
            .iter()
            .find_map(|d| d.reject.clone())
            .unwrap_or_default();
        return Ok(Delivered::Rejected(reason));
    }
    // Redirects and replies go first: they read the spool file that storing removes.
    for d in &mut decisions {
        if let Some(reason) = d.reject.take() {
            rejection_notice(runtime, &config, &bytes, from, &d.mailbox, &reason);
        }
        let redirects = std::mem::take(&mut d.redirects);
        for address in redirects {
            if let Err(why) = redirect(
                runtime, &config, &message, &bytes, from, trusted, &d.mailbox, &address,
            ) {
                // A redirect that cannot leave keeps the message here instead.
                tracing::warn!(mailbox = %d.mailbox, to = %address, why, "sieve: redirect failed; kept in INBOX");
                d.stores.push((INBOX.to_string(), Vec::new()));
            }
        }
        if let Some(vacation) = d.vacation.take() {
            answer(runtime, &config, &bytes, from, &d.mailbox, &vacation);
        }
    }
    // Spam the filter let through is kept in Junk, not INBOX (what a script filed elsewhere
    // stays there), as each mailbox's own settings say.
    if let Some(spam) = spam {
        for d in &mut decisions {
            if !spam.junk_for(mailbox_config(&config, &d.mailbox)) {
                continue;
            }
            for (folder, _) in &mut d.stores {
                if folder.eq_ignore_ascii_case(INBOX) {
                    *folder = JUNK.to_string();
                    d.create.push(JUNK.to_string());
                }
            }
        }
    }
    let placements = placements(&*store, &decisions);
    if placements.is_empty() {
        let _ = std::fs::remove_file(&message.path);
        return Ok(Delivered::Done);
    }
    store.deliver_to(message, &placements)?;
    Ok(Delivered::Done)
}

/// The time now, in UTC (the zone dates are shown in unless a script names one).
fn now() -> DateTime<FixedOffset> {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64);
    DateTime::from_timestamp(secs, 0)
        .unwrap_or_default()
        .fixed_offset()
}

/// Mail a mailbox's rules may send out (redirects, replies, notices) per hour, whatever the
/// RelayPolicy says: one message must not turn into a flood.
pub const SIEVE_SENDS_PER_HOUR: u32 = 100;

/// Whether one more message from `mailbox`'s rules fits the rate limits: the rules' own, and
/// the relay's for the mailbox's sending (counted against all if it fits).
fn within_rate(runtime: &crate::runtime::Runtime, config: &Config, mailbox: &str) -> bool {
    let rates = &config.raw.relay.rate_limits;
    let own = crate::config::RateConfig {
        messages: SIEVE_SENDS_PER_HOUR,
        period_seconds: 3600,
    };
    let mut limits = vec![(format!("sieve:{mailbox}"), &own)];
    if let Some(rate) = &rates.per_sender {
        limits.push((format!("user:{mailbox}"), rate));
    }
    if let Some(rate) = &rates.total {
        limits.push(("*".to_string(), rate));
    }
    runtime.outbound().rates.take(&limits)
}

/// Sends bytes to one address: a local mailbox's INBOX, or the outbound queue. `sender` is the
/// envelope sender; `sign_as` the address whose domain DKIM-signs it, if any.
fn send_bytes(
    runtime: &crate::runtime::Runtime,
    config: &Config,
    sender: &str,
    to: &str,
    bytes: &[u8],
    sign_for: Option<&str>,
) -> Result<(), String> {
    let store = runtime.store();
    let mut spool = store.spool().map_err(|e| e.to_string())?;
    spool.write(bytes).map_err(|e| e.to_string())?;
    let spooled = spool.finish().map_err(|e| e.to_string())?;
    match config.resolve(to) {
        Recipient::Local(i) => {
            let mailbox = config.mailbox(i).address.to_ascii_lowercase();
            store
                .deliver(spooled, &[mailbox])
                .map_err(|e| e.to_string())
        }
        Recipient::UnknownLocal => {
            let _ = std::fs::remove_file(&spooled.path);
            Err("no such local address".into())
        }
        Recipient::Remote => {
            let prefix = sign_for
                .map(|a| crate::smtp::server::sign(config, Some(a), a, &spooled.path))
                .unwrap_or_default();
            let envelope = crate::outbound::Envelope {
                from: sender.to_string(),
                recipients: vec![to.to_string()],
                no_report: true,
                ..crate::outbound::Envelope::default()
            };
            let queued = runtime.outbound().enqueue(
                &envelope,
                prefix.as_bytes(),
                &spooled.path,
                spooled.size,
            );
            let _ = std::fs::remove_file(&spooled.path);
            queued.map(|_| ()).map_err(|e| e.to_string())
        }
    }
}

/// RFC 5228 s4.2's redirect: the message as it came, with a `Delivered-To` of the mailbox so a
/// loop is seen; from outside, under an SRS address of the mailbox's domain.
#[allow(clippy::too_many_arguments)]
fn redirect(
    runtime: &crate::runtime::Runtime,
    config: &Config,
    message: &crate::store::SpooledMessage,
    bytes: &[u8],
    from: &str,
    trusted: Option<Option<&str>>,
    mailbox: &str,
    to: &str,
) -> Result<(), &'static str> {
    let head_end = crate::header::split(bytes).map_or(bytes.len(), |(h, _)| h);
    if crate::smtp::policy::loop_check(&bytes[..head_end], config, &[mailbox.to_string()]).is_some()
    {
        return Err("the message was delivered here before: a redirect loop");
    }
    if to.eq_ignore_ascii_case(mailbox) {
        return Err("a redirect to the mailbox itself");
    }
    let remote = matches!(config.resolve(to), Recipient::Remote);
    if remote && !within_rate(runtime, config, mailbox) {
        return Err("the mailbox's sending rate limit is reached");
    }
    let sender = if trusted.is_some() || from.is_empty() || !remote {
        from.to_string()
    } else {
        let domain = mailbox.rsplit_once('@').map_or("", |(_, d)| d);
        runtime
            .outbound()
            .srs
            .rewrite(from, domain, crate::outbound::srs::today())
    };
    let mut copy = format!("Delivered-To: {mailbox}\r\n").into_bytes();
    // Signed as the original sender's mail would be (its own domain's key; a network's only
    // for the server's domains), never as the redirecting mailbox's domain.
    if let (Some(user), true) = (trusted, remote) {
        copy.extend_from_slice(
            crate::smtp::server::sign(config, user, from, &message.path).as_bytes(),
        );
    }
    copy.extend_from_slice(bytes);
    send_bytes(runtime, config, &sender, to, &copy, None).map_err(|e| {
        tracing::warn!(error = %e, "sieve: redirect not sent");
        "the redirect could not be queued"
    })
}

/// A vacation reply, when RFC 5230's rules and the memory allow one.
fn answer(
    runtime: &crate::runtime::Runtime,
    config: &Config,
    message: &[u8],
    from: &str,
    mailbox: &str,
    vacation: &Vacation,
) {
    let own = own_addresses(config, mailbox, &vacation.addresses);
    // A script's `:addresses` widen whom the mailbox answers for, never whom it may send as.
    let senders = own_addresses(config, mailbox, &[]);
    if let Some(why) = kubemail_sieve::vacation::refusal(message, from, &own) {
        tracing::debug!(mailbox, why, "sieve: no vacation reply");
        return;
    }
    let store = runtime.store();
    let now = now().timestamp();
    match store.vacation_due(
        mailbox,
        &vacation_key(&vacation.handle, from),
        now,
        vacation.seconds,
    ) {
        Ok(true) => {}
        Ok(false) => return,
        Err(err) => {
            tracing::warn!(mailbox, error = %err, "sieve: vacation memory unavailable; no reply");
            return;
        }
    }
    if matches!(config.resolve(from), Recipient::Remote) && !within_rate(runtime, config, mailbox) {
        tracing::warn!(
            mailbox,
            "sieve: vacation reply not sent: the sending rate limit is reached"
        );
        return;
    }
    let id = format!("{}@{}", crate::outbound::new_id(), config.raw.hostname);
    let reply = match kubemail_sieve::vacation::compose(vacation, message, from, &senders, now, &id)
    {
        Ok(r) => r,
        Err(err) => {
            tracing::warn!(mailbox, error = %err, "sieve: vacation reply cannot be written");
            return;
        }
    };
    // The null sender (RFC 5230 s5): nothing bounces back to an auto-reply.
    match send_bytes(runtime, config, "", from, &reply, Some(mailbox)) {
        Ok(()) => {
            crate::metrics::sieve_reply();
            tracing::info!(mailbox, to = from, "sieve: vacation reply sent");
        }
        Err(err) => tracing::warn!(mailbox, error = %err, "sieve: vacation reply not sent"),
    }
}

/// RFC 5429 s2.1: a recipient of several rejected the message after the others took it; the
/// sender is told by a notice from the mailer daemon. Never to the null sender.
fn rejection_notice(
    runtime: &crate::runtime::Runtime,
    config: &Config,
    message: &[u8],
    from: &str,
    mailbox: &str,
    reason: &str,
) {
    if from.is_empty() {
        return;
    }
    if matches!(config.resolve(from), Recipient::Remote) && !within_rate(runtime, config, mailbox) {
        tracing::warn!(
            mailbox,
            "sieve: rejection notice not sent: the rate limit is reached"
        );
        return;
    }
    let subject = crate::outbound::dsn::header_of(message)
        .split(|b| *b == b'\n')
        .find(|l| l.len() > 8 && l[..8].eq_ignore_ascii_case(b"subject:"))
        .map(|l| String::from_utf8_lossy(&l[8..]).trim().to_string())
        .unwrap_or_default();
    let notice = mail_builder::MessageBuilder::new()
        .from((
            "Mail Delivery System".to_string(),
            format!("mailer-daemon@{}", config.raw.hostname),
        ))
        .to(from.to_string())
        .subject(format!("Rejected: {subject}"))
        .message_id(format!(
            "{}@{}",
            crate::outbound::new_id(),
            config.raw.hostname
        ))
        .header(
            "Auto-Submitted",
            mail_builder::headers::raw::Raw::new("auto-replied (rejected)"),
        )
        .text_body(format!(
            "Your message to <{mailbox}> was rejected by the recipient's filter:\r\n\r\n{reason}\r\n"
        ))
        .write_to_vec();
    if let Ok(notice) = notice
        && let Err(err) = send_bytes(runtime, config, "", from, &notice, None)
    {
        tracing::warn!(mailbox, error = %err, "sieve: rejection notice not sent");
    }
}

#[cfg(test)]
mod tests {
    use super::Spam;
    use crate::config::SpamConfig;

    #[test]
    fn a_mailbox_threshold_or_opt_out_decides_junk() {
        let mut mailbox = crate::testing::mailbox("a@example.test", "pw");
        let spam = |score, marked| Spam { score, marked };
        // Without settings: rspamd's action.
        assert!(spam(7.0, true).junk_for(Some(&mailbox)));
        assert!(!spam(7.0, false).junk_for(Some(&mailbox)));
        // Its own threshold: the score.
        mailbox.spam = Some(SpamConfig {
            junk_score_hundredths: Some(450),
            quarantine: true,
        });
        assert!(spam(4.5, false).junk_for(Some(&mailbox)));
        assert!(!spam(4.4, true).junk_for(Some(&mailbox)));
        // Opted out: never.
        mailbox.spam = Some(SpamConfig {
            junk_score_hundredths: Some(450),
            quarantine: false,
        });
        assert!(!spam(50.0, true).junk_for(Some(&mailbox)));
    }
}
