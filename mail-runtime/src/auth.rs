//! Passwords and logins: hashes (argon2id, bcrypt), credential checks, and the limit on failed
//! logins per client address. Plaintext passwords never reach this runtime's config.
use std::{
    collections::{HashMap, VecDeque},
    net::IpAddr,
    sync::Mutex,
    time::{Duration, Instant},
};

use argon2::{
    Argon2, PasswordHasher, PasswordVerifier,
    password_hash::{Output, ParamsString, SaltString, rand_core::OsRng},
};

use crate::config::{Config, LoginProtocol};

/// A stored password hash.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PasswordHash {
    /// PHC string `$argon2id$v=19$m=...`.
    Argon2(String),
    /// `$2b$12$...` (also `$2a$`, `$2y$`).
    Bcrypt(String),
}

/// Why a hash cannot be used.
#[derive(Debug, Clone, thiserror::Error)]
pub enum HashError {
    /// Not a format this runtime reads.
    #[error(
        "not an argon2 ($argon2id$...) or bcrypt ($2b$...) hash; plaintext passwords are not accepted here"
    )]
    UnknownFormat,
    /// An argon2 string that does not parse.
    #[error("malformed argon2 hash: {0}")]
    Argon2(String),
}

impl PasswordHash {
    /// Recognises and checks the format of a hash.
    pub fn parse(text: &str) -> Result<Self, HashError> {
        if text.starts_with("$argon2") {
            let parsed =
                argon2::PasswordHash::new(text).map_err(|e| HashError::Argon2(e.to_string()))?;
            if parsed.salt.is_none() || parsed.hash.is_none() {
                return Err(HashError::Argon2("it has no salt or no hash".into()));
            }
            Ok(Self::Argon2(text.to_string()))
        } else if ["$2a$", "$2b$", "$2y$"].iter().any(|p| text.starts_with(p)) && text.len() == 60 {
            Ok(Self::Bcrypt(text.to_string()))
        } else {
            Err(HashError::UnknownFormat)
        }
    }

    /// Whether `password` matches. CPU-heavy by design: call it off the async threads.
    pub fn verify(&self, password: &[u8]) -> bool {
        match self {
            Self::Argon2(phc) => argon2::PasswordHash::new(phc)
                .is_ok_and(|h| Argon2::default().verify_password(password, &h).is_ok()),
            Self::Bcrypt(h) => bcrypt::verify(password, h).unwrap_or(false),
        }
    }
}

/// Hashes a password with argon2id and the library's recommended parameters.
pub fn hash_password(password: &str) -> String {
    let salt = SaltString::generate(&mut OsRng);
    Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .expect("argon2 with default parameters hashes any password")
        .to_string()
}

/// Why a login was refused; every variant reads the same to the client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LoginRefused {
    /// No such mailbox or wrong password.
    BadCredentials,
    /// The mailbox may not use this protocol, or is suspended.
    NotAllowed,
}

/// Checks credentials against the config. Runs the hash on a blocking thread.
pub async fn login(
    config: &Config,
    username: &str,
    password: &str,
    protocol: LoginProtocol,
) -> Result<usize, LoginRefused> {
    let index = config.mailbox_by_address(username);
    // Hash even for an unknown user, so timing does not tell which addresses exist.
    let hash = index
        .and_then(|i| PasswordHash::parse(&config.mailbox(i).password_hash).ok())
        .unwrap_or_else(|| PasswordHash::Argon2(dummy_hash().to_string()));
    let matches = verify_cached(hash, password).await;
    match index {
        Some(i) if matches => {
            if config.mailbox(i).may_use(protocol) {
                Ok(i)
            } else {
                Err(LoginRefused::NotAllowed)
            }
        }
        _ => Err(LoginRefused::BadCredentials),
    }
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

/// Work for the hashing threads.
enum HashJob {
    /// Check a password against a stored hash.
    Verify(PasswordHash, Vec<u8>, tokio::sync::oneshot::Sender<bool>),
    /// Hash a new password (the operator's job), with a given salt or a random one.
    Hash(
        String,
        Option<[u8; 16]>,
        tokio::sync::oneshot::Sender<String>,
    ),
}

/// Sends a job to the hashing threads (blocks while the queue is full).
fn queue_job(job: HashJob) -> Result<(), std::sync::mpsc::SendError<HashJob>> {
    hasher().send(job)
}

/// How long a hashing thread keeps its working memory with nothing to do.
const KEEP_MEMORY_IDLE: Duration = Duration::from_secs(10);

/// Password checks run on two long-lived threads of their own: argon2 takes ~19 MiB per run,
/// and the allocator keeps that memory with the thread that used it, so a fixed pair of threads
/// bounds it (on the blocking pool, every one of its threads would end up holding some). Each
/// thread keeps its working memory through a burst and lets it go after 10 s without work, so
/// an idle runtime or operator holds none of it. (Letting it go after every job instead made
/// glibc serve each new 19 MiB from a fragmenting heap: 372 MiB after 1,000 hashes.)
fn hasher() -> &'static std::sync::mpsc::SyncSender<HashJob> {
    static QUEUE: std::sync::OnceLock<std::sync::mpsc::SyncSender<HashJob>> =
        std::sync::OnceLock::new();
    QUEUE.get_or_init(|| {
        let (tx, rx) = std::sync::mpsc::sync_channel::<HashJob>(1024);
        let rx = std::sync::Arc::new(Mutex::new(rx));
        for n in 0..2 {
            let rx = rx.clone();
            let spawned = std::thread::Builder::new()
                .name(format!("kubemail-hash-{n}"))
                .spawn(move || {
                    // argon2's working memory, kept and reused from one check to the next.
                    let mut blocks: Vec<argon2::Block> = Vec::new();
                    loop {
                        let job = rx
                            .lock()
                            .expect("hash queue")
                            .recv_timeout(KEEP_MEMORY_IDLE);
                        match job {
                            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {
                                blocks = Vec::new();
                            }
                            Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => return,
                            Ok(HashJob::Verify(hash, password, reply)) => {
                                let ok = match &hash {
                                    PasswordHash::Argon2(phc) => {
                                        verify_argon2(phc, &password, &mut blocks)
                                    }
                                    PasswordHash::Bcrypt(_) => hash.verify(&password),
                                };
                                let _ = reply.send(ok);
                            }
                            Ok(HashJob::Hash(password, salt, reply)) => {
                                let _ = reply.send(hash_argon2(&password, salt, &mut blocks));
                            }
                        }
                    }
                });
            if let Err(err) = spawned {
                tracing::error!(error = %err, "cannot start a password hashing thread");
            }
        }
        tx
    })
}

/// Hashes a password on the hashing threads (bounded memory however many arrive at once).
///
/// `salt`: the salt to use, so that the same password given again hashes to the same string
/// (the operator derives it from the Secret and the password: a hash that changed then means a
/// password that changed, and the runtime ends that mailbox's sessions); random when `None`.
pub async fn hash_password_bounded(password: String, salt: Option<[u8; 16]>) -> Option<String> {
    let (reply, answer) = tokio::sync::oneshot::channel();
    tokio::task::spawn_blocking(move || queue_job(HashJob::Hash(password, salt, reply)))
        .await
        .ok()?
        .ok()?;
    answer.await.ok()
}

/// [`hash_password`] with `blocks` as argon2's working memory (the operator hashes a thousand
/// new passwords in a row: a fresh 19 MiB for each left the allocator holding hundreds of MiB).
fn hash_argon2(password: &str, salt: Option<[u8; 16]>, blocks: &mut Vec<argon2::Block>) -> String {
    let salt = match salt.map(|bytes| SaltString::encode_b64(&bytes)) {
        Some(Ok(salt)) => salt,
        _ => SaltString::generate(&mut OsRng),
    };
    let params = argon2::Params::default();
    let count = params.block_count();
    blocks.resize(count, argon2::Block::default());
    let mut salt_buf = [0u8; 64];
    let mut out = [0u8; argon2::Params::DEFAULT_OUTPUT_LEN];
    let hashed = salt
        .decode_b64(&mut salt_buf)
        .map_err(|e| e.to_string())
        .and_then(|raw| {
            Argon2::new(
                argon2::Algorithm::Argon2id,
                argon2::Version::V0x13,
                params.clone(),
            )
            .hash_password_into_with_memory(
                password.as_bytes(),
                raw,
                &mut out,
                &mut blocks[..count],
            )
            .map_err(|e| e.to_string())
        })
        .and_then(|()| {
            Ok(argon2::PasswordHash {
                algorithm: argon2::Algorithm::Argon2id.ident(),
                version: Some(argon2::Version::V0x13.into()),
                params: ParamsString::try_from(&params).map_err(|e| e.to_string())?,
                salt: Some(salt.as_salt()),
                hash: Some(Output::new(&out).map_err(|e| e.to_string())?),
            }
            .to_string())
        });
    // Every step above works for any input with the default parameters; should one not, the
    // allocating path still gives a correct hash.
    hashed.unwrap_or_else(|_| hash_password(password))
}

/// Checks a password against an argon2 PHC string with `blocks` as the working memory.
fn verify_argon2(phc: &str, password: &[u8], blocks: &mut Vec<argon2::Block>) -> bool {
    let Ok(hash) = argon2::PasswordHash::new(phc) else {
        return false;
    };
    let (Some(expected), Some(salt)) = (hash.hash, hash.salt) else {
        return false;
    };
    let Ok(params) = argon2::Params::try_from(&hash) else {
        return false;
    };
    let Ok(algorithm) = argon2::Algorithm::try_from(hash.algorithm) else {
        return false;
    };
    let version = match hash.version.map(argon2::Version::try_from) {
        None => argon2::Version::V0x13,
        Some(Ok(v)) => v,
        Some(Err(_)) => return false,
    };
    let mut salt_buf = [0u8; 64];
    let Ok(salt) = salt.decode_b64(&mut salt_buf) else {
        return false;
    };
    let count = params.block_count();
    let context = Argon2::new(algorithm, version, params);
    blocks.resize(count, argon2::Block::default());
    let mut out = vec![0u8; expected.len()];
    if context
        .hash_password_into_with_memory(password, salt, &mut out, &mut blocks[..count])
        .is_err()
    {
        return false;
    }
    // Compared in constant time.
    out.iter()
        .zip(expected.as_bytes())
        .fold(0u8, |acc, (a, b)| acc | (a ^ b))
        == 0
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
    let (reply, answer) = tokio::sync::oneshot::channel();
    let job = HashJob::Verify(hash, password.as_bytes().to_vec(), reply);
    // The queue is bounded: a flood of logins waits here instead of piling up memory.
    if tokio::task::spawn_blocking(move || queue_job(job))
        .await
        .map_or(true, |r| r.is_err())
    {
        return false;
    }
    let matches = answer.await.unwrap_or(false);
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

/// Counts failed logins per client address over a sliding minute.
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

    #[test]
    fn reused_argon2_memory_checks_passwords_like_the_library() {
        let hash = hash_password("right horse battery");
        let mut blocks = Vec::new();
        assert!(verify_argon2(&hash, b"right horse battery", &mut blocks));
        assert!(!verify_argon2(&hash, b"wrong horse battery", &mut blocks));
        assert!(verify_argon2(&hash, b"right horse battery", &mut blocks));
        assert!(!verify_argon2(
            "$argon2id$v=19$m=8,t=1,p=1$c2FsdHNhbHQ$",
            b"x",
            &mut blocks
        ));
    }

    #[test]
    fn hashes_made_in_reused_memory_are_the_library_s_format_and_verify() {
        let mut blocks = Vec::new();
        let first = hash_argon2("right horse battery", None, &mut blocks);
        let second = hash_argon2("right horse battery", None, &mut blocks);
        assert!(
            first.starts_with("$argon2id$v=19$m=19456,t=2,p=1$"),
            "{first}"
        );
        assert_ne!(first, second, "each hash has its own salt");
        for hash in [&first, &second] {
            let parsed = PasswordHash::parse(hash).expect("parses");
            assert!(
                parsed.verify(b"right horse battery"),
                "the library verifies it"
            );
            assert!(!parsed.verify(b"wrong horse battery"));
        }
    }

    #[test]
    fn argon2_and_bcrypt_hashes_verify() {
        let argon = PasswordHash::parse(&hash_password("s3cret")).expect("argon2 parses");
        assert!(argon.verify(b"s3cret"));
        assert!(!argon.verify(b"S3cret"));
        let bcrypt_hash = bcrypt::hash("s3cret", 4).expect("bcrypt");
        let bcrypt = PasswordHash::parse(&bcrypt_hash).expect("bcrypt parses");
        assert!(bcrypt.verify(b"s3cret"));
        assert!(!bcrypt.verify(b"wrong"));
    }

    #[test]
    fn plaintext_is_not_a_hash() {
        assert!(matches!(
            PasswordHash::parse("hunter2"),
            Err(HashError::UnknownFormat)
        ));
        assert!(PasswordHash::parse("$argon2id$garbage").is_err());
    }

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
            login(&config, "POP@example.test", "pw", LoginProtocol::Pop3).await,
            Ok(0)
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
    }
}
