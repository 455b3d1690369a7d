//! The Sender Rewriting Scheme for mail forwarded from outside: the envelope sender becomes an
//! address of the forwarding domain (`SRS0=HHHH=TT=domain=local@forwarder`), so the next hop's
//! SPF check sees the forwarder's own domain instead of a sender it may not send for, and a
//! forged sender never receives what the forward provokes. The hash (HMAC-SHA256 with a key kept
//! on the mail volume) and the day stamp let a later reverse path tell its own addresses from
//! forgeries.
use std::{io::Write, os::unix::fs::OpenOptionsExt, path::Path};

use base64::{Engine, engine::general_purpose::STANDARD_NO_PAD as B64};
use ring::hmac;

/// The key's file under the data directory.
const KEY_FILE: &str = "srs.key";

/// The secret that signs rewritten senders.
#[derive(Debug)]
pub struct SrsKey(hmac::Key);

impl SrsKey {
    /// Reads the key under `data`, creating it (0600) on first use.
    pub fn open(data: &Path) -> std::io::Result<Self> {
        let path = data.join(KEY_FILE);
        let bytes = match std::fs::read(&path) {
            Ok(bytes) if bytes.len() >= 32 => bytes,
            _ => {
                let bytes: [u8; 32] = rand::random();
                let tmp = data.join(format!("{KEY_FILE}.{}", std::process::id()));
                let mut file = std::fs::OpenOptions::new()
                    .write(true)
                    .create(true)
                    .truncate(true)
                    .mode(0o600)
                    .open(&tmp)?;
                file.write_all(&bytes)?;
                file.sync_all()?;
                std::fs::rename(&tmp, &path)?;
                bytes.to_vec()
            }
        };
        Ok(Self::from_bytes(&bytes))
    }

    /// A key from its bytes.
    pub fn from_bytes(bytes: &[u8]) -> Self {
        Self(hmac::Key::new(hmac::HMAC_SHA256, bytes))
    }

    /// `sender` rewritten as an address of `forwarder` on day `day` (days since the epoch).
    /// The null sender stays null; a sender without a domain is kept as it is.
    pub fn rewrite(&self, sender: &str, forwarder: &str, day: u64) -> String {
        let Some((local, domain)) = sender.rsplit_once('@') else {
            return sender.to_string();
        };
        let stamp = timestamp(day);
        let domain = domain.to_ascii_lowercase();
        let hash = self.hash(&stamp, &domain, local);
        format!("SRS0={hash}={stamp}={domain}={local}@{forwarder}")
    }

    fn hash(&self, stamp: &str, domain: &str, local: &str) -> String {
        let tag = hmac::sign(&self.0, format!("{stamp}{domain}{local}").as_bytes());
        B64.encode(tag.as_ref())
            .chars()
            .filter(char::is_ascii_alphanumeric)
            .take(4)
            .collect()
    }
}

/// Two base32 characters of the day number, as the SRS paper's implementations write it.
fn timestamp(day: u64) -> String {
    const ALPHABET: &[u8; 32] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";
    let day = day % 1024;
    [ALPHABET[(day >> 5) as usize], ALPHABET[(day & 31) as usize]]
        .iter()
        .map(|b| *b as char)
        .collect()
}

/// Today's day number.
pub fn today() -> u64 {
    u64::try_from(crate::store::unix_nanos() / 1_000_000_000 / 86_400).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn senders_are_rewritten_into_the_forwarding_domain() {
        let key = SrsKey::from_bytes(b"0123456789abcdef0123456789abcdef");
        let srs = key.rewrite("ceo@Victim.Example", "example.test", 20_000);
        let (local, domain) = srs.rsplit_once('@').expect("an address");
        assert_eq!(domain, "example.test");
        let fields: Vec<&str> = local.split('=').collect();
        assert_eq!(fields[0], "SRS0");
        assert_eq!(fields[1].len(), 4);
        assert_eq!(fields[2], timestamp(20_000));
        assert_eq!(&fields[3..], ["victim.example", "ceo"]);
        // The same input gives the same address; another key or sender another hash.
        assert_eq!(
            srs,
            key.rewrite("ceo@victim.example", "example.test", 20_000)
        );
        let other = SrsKey::from_bytes(b"another key, 32 bytes long......");
        assert_ne!(
            srs,
            other.rewrite("ceo@victim.example", "example.test", 20_000)
        );
        assert_eq!(key.rewrite("", "example.test", 1), "");
    }

    #[test]
    fn the_key_is_created_private_and_kept() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().expect("tempdir");
        let first = SrsKey::open(dir.path()).expect("created");
        let mode = std::fs::metadata(dir.path().join(KEY_FILE))
            .expect("the key file")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        let again = SrsKey::open(dir.path()).expect("read back");
        assert_eq!(
            first.rewrite("a@b.example", "example.test", 5),
            again.rewrite("a@b.example", "example.test", 5)
        );
    }
}
