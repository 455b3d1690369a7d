//! Passwords and logins: hashes (argon2id, bcrypt), credential checks, and the limit on failed
//! logins per client address. Plaintext passwords never reach this runtime's config.
use std::{
    collections::{HashMap, VecDeque},
    net::IpAddr,
    sync::Mutex,
    time::{Duration, Instant},
};

pub use kubemail_config::password::{
    HashError, PasswordHash, hash_password, hash_password_bounded,
};

use crate::config::{Config, LoginProtocol};

/// Why a login was refused; every variant reads the same to the client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LoginRefused {
    /// No such mailbox or wrong password.
    BadCredentials,
    /// The mailbox may not use this protocol, or is suspended.
    NotAllowed,
}

/// A login that succeeded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Login {
    /// The mailbox's index in the config it was checked against.
    pub index: usize,
    /// Its address, lower case.
    pub address: String,
    /// The hash of the password that matched (the mailbox's own or an app password's): the
    /// session lasts while the config still has it ([`Config::still_serves`]).
    pub credential: String,
    /// The app password's name, when one was used.
    pub app_password: Option<String>,
}

/// Checks credentials against the config: the mailbox's own password, then each of its app
/// passwords (at most [`kubemail_config::MAX_APP_PASSWORDS`]). The hashes run on the bounded
/// hashing threads.
pub async fn login(
    config: &Config,
    username: &str,
    password: &str,
    protocol: LoginProtocol,
) -> Result<Login, LoginRefused> {
    // Hash even for an unknown user or one without a usable hash, so timing does not tell
    // which addresses exist.
    let unknown = || verify_cached(PasswordHash::Argon2(dummy_hash().to_string()), password);
    let Some(index) = config.mailbox_by_address(username) else {
        unknown().await;
        return Err(LoginRefused::BadCredentials);
    };
    let mailbox = config.mailbox(index);
    let mut checked = false;
    let mut matched = false;
    for credential in mailbox.credentials() {
        let Ok(hash) = PasswordHash::parse(credential.hash) else {
            continue;
        };
        checked = true;
        if !verify_cached(hash, password).await {
            continue;
        }
        // The same password may be another app password's too, one that opens this protocol.
        if !credential.opens(mailbox, protocol) {
            matched = true;
            continue;
        }
        if let Some(name) = credential.app_password {
            tracing::info!(address = %mailbox.address, app_password = name, ?protocol, "login with an app password");
        }
        return Ok(Login {
            index,
            address: mailbox.address.to_ascii_lowercase(),
            credential: credential.hash.to_string(),
            app_password: credential.app_password.map(str::to_string),
        });
    }
    if !checked {
        unknown().await;
    }
    if matched {
        return Err(LoginRefused::NotAllowed);
    }
    Err(LoginRefused::BadCredentials)
}

/// How long a failed login takes, counted from its start: guessing gets slow, and every failure
/// takes the same time whatever failed (an unknown address, a wrong password checked against
/// one hash or nine, a right password for a protocol or a mailbox it may not open, a check the
/// cache answered at once), so timing tells an attacker nothing. A check that takes longer on
/// its own (a loaded server) is not made longer.
pub const FAILED_LOGIN_TIME: Duration = Duration::from_millis(1500);

/// Waits until `FAILED_LOGIN_TIME` after `started` (the moment the attempt began).
async fn failed_login_pause(started: tokio::time::Instant) {
    tokio::time::sleep_until(started + FAILED_LOGIN_TIME).await;
}

/// How long a verified password is remembered.
const VERIFIED_FOR: Duration = Duration::from_secs(15 * 60);

/// Recently verified (hash, password) pairs, as SHA-256 digests keyed with a secret made at
/// start: a client that logs in again (a phone's every IDLE reconnect) costs no argon2 run, and
/// the table holds nothing a password could be read back from. A changed password has another
/// hash, so a cached pair never outlives it.
struct Verified {
    key: [u8; 32],
    seen: Mutex<HashMap<[u8; 32], Instant>>,
}

fn verified() -> &'static Verified {
    static VERIFIED: std::sync::OnceLock<Verified> = std::sync::OnceLock::new();
    VERIFIED.get_or_init(|| {
        use rand::RngCore;
        let mut key = [0u8; 32];
        rand::rng().fill_bytes(&mut key);
        Verified {
            key,
            seen: Mutex::new(HashMap::new()),
        }
    })
}

async fn verify_cached(hash: PasswordHash, password: &str) -> bool {
    use sha2::{Digest, Sha256};
    let table = verified();
    let stored = match &hash {
        PasswordHash::Argon2(s) | PasswordHash::Bcrypt(s) => s.clone(),
    };
    let digest: [u8; 32] = Sha256::new()
        .chain_update(table.key)
        .chain_update(stored.as_bytes())
        .chain_update([0u8])
        .chain_update(password.as_bytes())
        .finalize()
        .into();
    let now = Instant::now();
    {
        let seen = table.seen.lock().expect("verified lock");
        if seen
            .get(&digest)
            .is_some_and(|at| now.duration_since(*at) < VERIFIED_FOR)
        {
            return true;
        }
    }
    let matches =
        kubemail_config::password::verify_bounded(hash, password.as_bytes().to_vec()).await;
    if matches {
        let mut seen = table.seen.lock().expect("verified lock");
        if seen.len() >= 10_000 {
            seen.retain(|_, at| now.duration_since(*at) < VERIFIED_FOR);
            if seen.len() >= 10_000 {
                seen.clear();
            }
        }
        seen.insert(digest, now);
    }
    matches
}

fn dummy_hash() -> &'static str {
    static HASH: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    HASH.get_or_init(|| hash_password("kubemail-no-such-user"))
}

/// Whom failures are counted against: an IPv4 address, or an IPv6 address's /64 (one host
/// usually holds a whole /64, and would otherwise get a fresh limit per address).
fn source(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let bits = u128::from(v6) & !((1u128 << 64) - 1);
                IpAddr::V6(bits.into())
            }
        },
        v4 => v4,
    }
}

/// Why a login under the limit was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    /// The client's address failed too often this minute: nothing was checked.
    TooManyFailures,
    /// The credentials were checked and refused.
    Invalid(LoginRefused),
}

/// A login under the failed-login limit of the client's address, the same for every protocol:
/// refused at once when the address failed too often this minute; a failure is counted in
/// `kubemail_auth_failures_total{protocol=metric}` and costs the client the pause.
pub async fn limited_login(
    limiter: &std::sync::Arc<AuthLimiter>,
    config: &Config,
    ip: IpAddr,
    username: &str,
    password: &str,
    protocol: LoginProtocol,
    metric: &'static str,
) -> Result<Login, Refused> {
    let per_minute = config.raw.limits.auth_failures_per_minute;
    let Some(attempt) = limiter.begin(ip, per_minute).await else {
        return Err(Refused::TooManyFailures);
    };
    let started = tokio::time::Instant::now();
    match login(config, username, password, protocol).await {
        Ok(login) => {
            attempt.succeeded();
            Ok(login)
        }
        Err(refused) => {
            drop(attempt);
            crate::metrics::auth_failed(metric);
            // A failed login costs the client a second: guessing gets slow.
            failed_login_pause(started).await;
            Err(Refused::Invalid(refused))
        }
    }
}

/// Counts failed logins per client address (per /64 for IPv6) over a sliding minute.
///
/// An attempt is counted as a failure from the moment it begins until it succeeds, so attempts
/// made in parallel (many connections guessing at the same moment) are counted before their
/// answers. When the limit is reached only because attempts are still being checked, a new one
/// waits for their answers instead of being refused: an office behind one address whose
/// clients all reconnect at once (after a restart, with the password cache cold) logs in, while
/// a guesser still gets no more than the limit of wrong answers a minute.
#[derive(Debug, Default)]
pub struct AuthLimiter {
    sources: Mutex<HashMap<IpAddr, Source>>,
    /// Told whenever an attempt ends.
    answered: tokio::sync::Notify,
}

/// One client address's attempts: their start times (failures, and the attempts in flight),
/// and how many are in flight.
#[derive(Debug, Default)]
struct Source {
    times: VecDeque<Instant>,
    in_flight: u32,
}

const WINDOW: Duration = Duration::from_secs(60);
const MAX_TRACKED: usize = 100_000;
/// How long an attempt waits for the answers of those in flight before it is refused.
const WAIT_FOR_ANSWERS: Duration = Duration::from_secs(10);

impl AuthLimiter {
    /// An empty limiter.
    pub fn new() -> Self {
        Self::default()
    }

    /// An attempt of `ip` that may go ahead, counted at once as a failure until
    /// [`Attempt::succeeded`]; `None` when `ip` failed `per_minute` times in the last minute.
    pub async fn begin(
        self: &std::sync::Arc<Self>,
        ip: IpAddr,
        per_minute: u32,
    ) -> Option<Attempt> {
        let ip = source(ip);
        let deadline = tokio::time::Instant::now() + WAIT_FOR_ANSWERS;
        loop {
            // Listening before looking, so an answer between the two is not missed.
            let answered = self.answered.notified();
            tokio::pin!(answered);
            answered.as_mut().enable();
            {
                let mut map = self.sources.lock().expect("limiter lock");
                let now = Instant::now();
                let entry = map.entry(ip).or_default();
                while entry
                    .times
                    .front()
                    .is_some_and(|t| now.duration_since(*t) > WINDOW)
                {
                    entry.times.pop_front();
                }
                if entry.times.len() < per_minute as usize {
                    entry.times.push_back(now);
                    if entry.times.len() > 1024 {
                        entry.times.pop_front();
                    }
                    entry.in_flight += 1;
                    Self::bound(&mut map, now);
                    return Some(Attempt {
                        limiter: self.clone(),
                        ip,
                        succeeded: false,
                    });
                }
                if entry.in_flight == 0 {
                    return None;
                }
            }
            // The limit is reached with answers still to come: they decide.
            if tokio::time::timeout_at(deadline, answered).await.is_err() {
                return None;
            }
        }
    }

    /// Keeps the table bounded: at most [`MAX_TRACKED`] addresses, dropping those with nothing
    /// in the last minute and nothing in flight (each address keeps at most 1,024 times).
    fn bound(map: &mut HashMap<IpAddr, Source>, now: Instant) {
        if map.len() > MAX_TRACKED {
            map.retain(|_, s| {
                s.in_flight > 0
                    || s.times
                        .back()
                        .is_some_and(|t| now.duration_since(*t) <= WINDOW)
            });
        }
    }

    fn end(&self, ip: IpAddr, succeeded: bool) {
        {
            let mut map = self.sources.lock().expect("limiter lock");
            if let Some(entry) = map.get_mut(&ip) {
                entry.in_flight = entry.in_flight.saturating_sub(1);
                if succeeded {
                    entry.times.pop_back();
                }
                if entry.times.is_empty() && entry.in_flight == 0 {
                    map.remove(&ip);
                }
            }
        }
        self.answered.notify_waiters();
    }
}

/// A login attempt in flight: a failure unless it [`succeeded`](Attempt::succeeded) (an attempt
/// dropped half-way, its client gone, counts as one).
#[derive(Debug)]
pub struct Attempt {
    limiter: std::sync::Arc<AuthLimiter>,
    ip: IpAddr,
    succeeded: bool,
}

impl Attempt {
    /// The credentials were right: the attempt no longer counts.
    pub fn succeeded(mut self) {
        self.succeeded = true;
    }
}

impl Drop for Attempt {
    fn drop(&mut self) {
        self.limiter.end(self.ip, self.succeeded);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn login_checks_the_password_the_protocol_and_suspension() {
        let hash = bcrypt::hash("pw", 4).expect("bcrypt");
        let config = Config::parse(&format!(
            "apiVersion: runtime.kubemail.io/v1\nkind: RuntimeConfig\nhostname: mail.example.test\n\
             domains: [{{name: example.test}}]\n\
             mailboxes:\n\
             - {{address: pop@example.test, passwordHash: \"{hash}\", protocols: [pop3]}}\n\
             - {{address: gone@example.test, passwordHash: \"{hash}\", suspended: true}}\n\
             tls: {{certFile: /c, keyFile: /k}}\n\
             listeners: [{{protocol: smtp, address: \"127.0.0.1:0\"}}]\nstorage: {{path: /d}}\n"
        ))
        .expect("config");
        assert_eq!(
            login(&config, "POP@example.test", "pw", LoginProtocol::Pop3)
                .await
                .map(|l| (l.index, l.address, l.app_password)),
            Ok((0, "pop@example.test".to_string(), None))
        );
        assert_eq!(
            login(&config, "pop@example.test", "pw", LoginProtocol::Imap).await,
            Err(LoginRefused::NotAllowed)
        );
        assert_eq!(
            login(&config, "pop@example.test", "nope", LoginProtocol::Pop3).await,
            Err(LoginRefused::BadCredentials)
        );
        assert_eq!(
            login(&config, "gone@example.test", "pw", LoginProtocol::Pop3).await,
            Err(LoginRefused::NotAllowed)
        );
        assert_eq!(
            login(&config, "nobody@example.test", "pw", LoginProtocol::Pop3).await,
            Err(LoginRefused::BadCredentials)
        );
    }

    #[tokio::test]
    async fn one_password_of_two_devices_opens_what_either_allows() {
        // The same password as two app passwords (their own hashes): IMAP for the phone, SMTP
        // for the laptop. A reviewer found SMTP refused because the phone's hash matched first.
        let (own, phone, laptop) = (
            bcrypt::hash("own", 4).expect("bcrypt"),
            bcrypt::hash("shared", 4).expect("bcrypt"),
            bcrypt::hash("shared", 4).expect("bcrypt"),
        );
        let config = Config::parse(&format!(
            "apiVersion: runtime.kubemail.io/v1\nkind: RuntimeConfig\nhostname: mail.example.test\n\
             domains: [{{name: example.test}}]\n\
             mailboxes:\n\
             - address: a@example.test\n  passwordHash: \"{own}\"\n  protocols: [imap, smtp]\n  appPasswords:\n\
             \x20 - {{name: phone, passwordHash: \"{phone}\", protocols: [imap]}}\n\
             \x20 - {{name: laptop, passwordHash: \"{laptop}\", protocols: [smtp]}}\n\
             tls: {{certFile: /c, keyFile: /k}}\n\
             listeners: [{{protocol: smtp, address: \"127.0.0.1:0\"}}]\nstorage: {{path: /d}}\n"
        ))
        .expect("config");
        let config = &config;
        let used = |p| async move {
            login(config, "a@example.test", "shared", p)
                .await
                .map(|l| l.app_password)
        };
        assert_eq!(used(LoginProtocol::Smtp).await, Ok(Some("laptop".into())));
        assert_eq!(used(LoginProtocol::Imap).await, Ok(Some("phone".into())));
        assert_eq!(
            used(LoginProtocol::Pop3).await,
            Err(LoginRefused::NotAllowed)
        );
    }

    #[tokio::test]
    async fn limiter_refuses_after_the_limit_and_only_that_address() {
        let limiter = std::sync::Arc::new(AuthLimiter::new());
        let bad: IpAddr = "192.0.2.1".parse().expect("ip");
        let good: IpAddr = "192.0.2.2".parse().expect("ip");
        // Three failures use up the limit; the fourth is refused at once.
        for _ in 0..3 {
            drop(limiter.begin(bad, 3).await.expect("allowed"));
        }
        let started = Instant::now();
        assert!(limiter.begin(bad, 3).await.is_none());
        assert!(
            started.elapsed() < Duration::from_secs(1),
            "refused without waiting"
        );
        // Successes do not count.
        for _ in 0..5 {
            limiter.begin(good, 3).await.expect("allowed").succeeded();
        }
        assert!(limiter.begin(good, 3).await.is_some());
        // IPv6: one /64 is one source, however many addresses it uses.
        for n in 0..3u16 {
            let ip = IpAddr::V6(std::net::Ipv6Addr::new(0x2001, 0xdb8, 0, 1, 0, 0, 0, n + 1));
            drop(limiter.begin(ip, 3).await.expect("allowed"));
        }
        let another_of_it: IpAddr = "2001:db8:0:1:ffff::9".parse().expect("ip");
        assert!(limiter.begin(another_of_it, 3).await.is_none());
        let next_net: IpAddr = "2001:db8:0:2::1".parse().expect("ip");
        assert!(limiter.begin(next_net, 3).await.is_some());
    }

    /// Twenty clients of one address log in at once with the limit at 3: the right ones all
    /// get in (each waits for the answers in flight), the wrong ones get 3 answers between
    /// them and the rest are refused.
    #[tokio::test]
    async fn parallel_logins_wait_for_answers_and_guesses_stay_limited() {
        let limiter = std::sync::Arc::new(AuthLimiter::new());
        let office: IpAddr = "192.0.2.10".parse().expect("ip");
        let checks = (0..20).map(|_| {
            let limiter = limiter.clone();
            tokio::spawn(async move {
                let attempt = limiter.begin(office, 3).await?;
                tokio::time::sleep(Duration::from_millis(20)).await; // the password check
                attempt.succeeded();
                Some(())
            })
        });
        for check in checks.collect::<Vec<_>>() {
            assert_eq!(
                check.await.expect("task"),
                Some(()),
                "a right password was refused"
            );
        }
        let guesser: IpAddr = "192.0.2.11".parse().expect("ip");
        let guesses = (0..20).map(|_| {
            let limiter = limiter.clone();
            tokio::spawn(async move {
                let attempt = limiter.begin(guesser, 3).await?;
                tokio::time::sleep(Duration::from_millis(20)).await;
                drop(attempt); // wrong
                Some(())
            })
        });
        let mut answered = 0;
        for guess in guesses.collect::<Vec<_>>() {
            answered += usize::from(guess.await.expect("task").is_some());
        }
        assert_eq!(answered, 3);
    }
}
