//! Password hashes as kubemail stores them: argon2id (what the operator writes) or bcrypt (what
//! users may bring), parsed and checked the same way by the operator and the runtime. Hashing
//! and checking run on two threads of their own, so that argon2's memory stays bounded however
//! many arrive at once.
use std::time::Duration;

use argon2::{
    Argon2, PasswordHasher, PasswordVerifier,
    password_hash::{Output, ParamsString, SaltString, rand_core::OsRng},
};

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
    /// A hash whose cost is beyond what a login may spend: every wrong password is checked
    /// against it, so its parameters are the server's memory and time.
    #[error("the hash costs too much to check: {0}")]
    TooCostly(String),
}

/// The most memory (KiB) an argon2 hash may ask for: 64 MiB (the operator writes 19 MiB).
pub const MAX_ARGON2_MEMORY_KIB: u32 = 65_536;
/// The most argon2 passes.
pub const MAX_ARGON2_TIME: u32 = 8;
/// The most argon2 lanes.
pub const MAX_ARGON2_LANES: u32 = 4;
/// The highest bcrypt cost (2^14 rounds, about a second).
pub const MAX_BCRYPT_COST: u32 = 14;

impl PasswordHash {
    /// Recognises and checks the format of a hash.
    pub fn parse(text: &str) -> Result<Self, HashError> {
        if text.starts_with("$argon2") {
            let parsed =
                argon2::PasswordHash::new(text).map_err(|e| HashError::Argon2(e.to_string()))?;
            if parsed.salt.is_none() || parsed.hash.is_none() {
                return Err(HashError::Argon2("it has no salt or no hash".into()));
            }
            let params =
                argon2::Params::try_from(&parsed).map_err(|e| HashError::Argon2(e.to_string()))?;
            if params.m_cost() > MAX_ARGON2_MEMORY_KIB
                || params.t_cost() > MAX_ARGON2_TIME
                || params.p_cost() > MAX_ARGON2_LANES
            {
                return Err(HashError::TooCostly(format!(
                    "argon2 m={} t={} p={}; at most m={MAX_ARGON2_MEMORY_KIB} t={MAX_ARGON2_TIME} p={MAX_ARGON2_LANES}",
                    params.m_cost(),
                    params.t_cost(),
                    params.p_cost()
                )));
            }
            Ok(Self::Argon2(text.to_string()))
        } else if ["$2a$", "$2b$", "$2y$"].iter().any(|p| text.starts_with(p)) && text.len() == 60 {
            let cost: u32 = text[4..6].parse().map_err(|_| HashError::UnknownFormat)?;
            if cost > MAX_BCRYPT_COST {
                return Err(HashError::TooCostly(format!(
                    "bcrypt cost {cost}; at most {MAX_BCRYPT_COST}"
                )));
            }
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
fn queue_job(job: HashJob) -> Result<(), crossbeam_channel::SendError<HashJob>> {
    hasher().send(job)
}

/// How long a hashing thread keeps its working memory with nothing to do.
const KEEP_MEMORY_IDLE: Duration = Duration::from_secs(1);

/// Password checks run on two long-lived threads of their own: argon2 takes ~19 MiB per run, so
/// a fixed pair of threads bounds it (on the blocking pool, every one of its threads would end
/// up holding some). Each thread keeps its working memory through a burst and gives it back to
/// the system after a second without work (it is mapped on its own, see [`ROOM_BLOCKS`]), so
/// a runtime whose clients logged in holds none of it. (Freed into glibc's heap instead, each new
/// 19 MiB came from a fragmenting heap: 372 MiB after 1,000 hashes.)
///
/// Each thread waits on the queue on its own (a receiver that can be shared without a lock): with
/// one lock around a shared receiver, the thread waiting for the lock never reached its own
/// timeout, and kept its 19 MiB until the next login.
fn hasher() -> &'static crossbeam_channel::Sender<HashJob> {
    static QUEUE: std::sync::OnceLock<crossbeam_channel::Sender<HashJob>> =
        std::sync::OnceLock::new();
    QUEUE.get_or_init(|| {
        let (tx, rx) = crossbeam_channel::bounded::<HashJob>(1024);
        for n in 0..2 {
            let rx = rx.clone();
            let spawned = std::thread::Builder::new()
                .name(format!("kubemail-hash-{n}"))
                .spawn(move || {
                    // argon2's working memory, kept and reused from one check to the next.
                    let mut blocks: Vec<argon2::Block> = Vec::new();
                    loop {
                        match rx.recv_timeout(KEEP_MEMORY_IDLE) {
                            Err(crossbeam_channel::RecvTimeoutError::Timeout) => {
                                blocks = Vec::new();
                            }
                            Err(crossbeam_channel::RecvTimeoutError::Disconnected) => return,
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
    let memory = working_memory(blocks, count);
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
            .hash_password_into_with_memory(password.as_bytes(), raw, &mut out, memory)
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

/// Blocks a hashing thread keeps room for: 33 MiB, above the 32 MiB up to which glibc's
/// malloc raises its threshold for mapping an allocation on its own. Memory of that size is
/// mapped by itself (unless the heap already holds that much free) and unmapped when freed; the 19 MiB argon2 asks for would otherwise
/// stay with the allocator after the thread let it go (38 MiB of a runtime's 62 with 1,000 IDLE
/// sessions, all logged in during the first second). Only the blocks used are touched, so the
/// rest of the room costs address space, not memory.
const ROOM_BLOCKS: usize = 33 * 1024;

/// `count` blocks of `blocks` as argon2's working memory, in room of at least [`ROOM_BLOCKS`].
fn working_memory(blocks: &mut Vec<argon2::Block>, count: usize) -> &mut [argon2::Block] {
    if blocks.capacity() < ROOM_BLOCKS.max(count) {
        *blocks = Vec::with_capacity(ROOM_BLOCKS.max(count));
    }
    blocks.resize(count, argon2::Block::default());
    &mut blocks[..count]
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
    let memory = working_memory(blocks, count);
    let mut out = vec![0u8; expected.len()];
    if context
        .hash_password_into_with_memory(password, salt, &mut out, memory)
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

/// Checks `password` against `hash` on the hashing threads; `false` when they cannot be
/// reached. The queue is bounded: a flood of logins waits here instead of piling up memory.
pub async fn verify_bounded(hash: PasswordHash, password: Vec<u8>) -> bool {
    let (reply, answer) = tokio::sync::oneshot::channel();
    let job = HashJob::Verify(hash, password, reply);
    if tokio::task::spawn_blocking(move || queue_job(job))
        .await
        .map_or(true, |r| r.is_err())
    {
        return false;
    }
    answer.await.unwrap_or(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hashes_that_cost_too_much_to_check_are_refused() {
        let salt = "c2FsdHNhbHRzYWx0";
        let hash = "aGFzaGhhc2hoYXNoaGFzaGhhc2hoYXNoaGFzaGhhc2g";
        let argon =
            |m: u32, t: u32, p: u32| format!("$argon2id$v=19$m={m},t={t},p={p}${salt}${hash}");
        assert!(
            PasswordHash::parse(&argon(19_456, 2, 1)).is_ok(),
            "the operator's own"
        );
        assert!(PasswordHash::parse(&argon(65_536, 8, 4)).is_ok());
        for (m, t, p) in [(4_194_303, 1, 1), (19_456, 1_000, 1), (19_456, 2, 16)] {
            assert!(
                matches!(
                    PasswordHash::parse(&argon(m, t, p)),
                    Err(HashError::TooCostly(_))
                ),
                "m={m} t={t} p={p}"
            );
        }
        let bcrypt_12 = bcrypt::hash("pw", 12).expect("bcrypt");
        assert!(PasswordHash::parse(&bcrypt_12).is_ok());
        let bcrypt_31 = format!("$2b$31${}", &bcrypt_12[7..]);
        assert!(matches!(
            PasswordHash::parse(&bcrypt_31),
            Err(HashError::TooCostly(_))
        ));
    }

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
}
