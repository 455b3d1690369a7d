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
pub async fn failed_login_pause(started: tokio::time::Instant) {
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

/// Counts failed logins per client address (per /64 for IPv6) over a sliding minute.
#[derive(Debug)]
pub struct AuthLimiter {
    failures: Mutex<HashMap<IpAddr, VecDeque<Instant>>>,
}

const WINDOW: Duration = Duration::from_secs(60);
const MAX_TRACKED: usize = 100_000;

impl Default for AuthLimiter {
    fn default() -> Self {
        Self::new()
    }
}

impl AuthLimiter {
    /// An empty limiter.
    pub fn new() -> Self {
        Self {
            failures: Mutex::new(HashMap::new()),
        }
    }

    /// Whether `ip` may try to log in now. An attempt that may go ahead is counted at once, as
    /// a failure until [`AuthLimiter::succeeded`] says otherwise: attempts made in parallel
    /// (many connections guessing at the same moment) are counted before their answers.
    pub fn begin(&self, ip: IpAddr, per_minute: u32) -> bool {
        let ip = source(ip);
        let mut map = self.failures.lock().expect("limiter lock");
        let now = Instant::now();
        if let Some(times) = map.get_mut(&ip) {
            while times
                .front()
                .is_some_and(|t| now.duration_since(*t) > WINDOW)
            {
                times.pop_front();
            }
            if times.len() >= per_minute as usize {
                return false;
            }
        }
        Self::record(&mut map, ip, now);
        true
    }

    /// The attempt `ip` began succeeded: it no longer counts.
    pub fn succeeded(&self, ip: IpAddr) {
        let ip = source(ip);
        let mut map = self.failures.lock().expect("limiter lock");
        if let Some(times) = map.get_mut(&ip) {
            times.pop_back();
            if times.is_empty() {
                map.remove(&ip);
            }
        }
    }

    fn record(map: &mut HashMap<IpAddr, VecDeque<Instant>>, ip: IpAddr, now: Instant) {
        if map.len() >= MAX_TRACKED {
            map.retain(|_, times| {
                times
                    .back()
                    .is_some_and(|t| now.duration_since(*t) <= WINDOW)
            });
        }
        let times = map.entry(ip).or_default();
        times.push_back(now);
        if times.len() > 1024 {
            times.pop_front();
        }
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

    #[test]
    fn limiter_refuses_after_the_limit_and_only_that_address() {
        let limiter = AuthLimiter::new();
        let bad: IpAddr = "192.0.2.1".parse().expect("ip");
        let good: IpAddr = "192.0.2.2".parse().expect("ip");
        // Three attempts begun at once (nobody has answered yet) use up the limit.
        for _ in 0..3 {
            assert!(limiter.begin(bad, 3));
        }
        assert!(!limiter.begin(bad, 3));
        // Successes do not count.
        for _ in 0..5 {
            assert!(limiter.begin(good, 3));
            limiter.succeeded(good);
        }
        assert!(limiter.begin(good, 3));
        // IPv6: one /64 is one source, however many addresses it uses.
        for n in 0..3u16 {
            let ip = IpAddr::V6(std::net::Ipv6Addr::new(0x2001, 0xdb8, 0, 1, 0, 0, 0, n + 1));
            assert!(limiter.begin(ip, 3));
        }
        let another_of_it: IpAddr = "2001:db8:0:1:ffff::9".parse().expect("ip");
        assert!(!limiter.begin(another_of_it, 3));
        let next_net: IpAddr = "2001:db8:0:2::1".parse().expect("ip");
        assert!(limiter.begin(next_net, 3));
    }
}
