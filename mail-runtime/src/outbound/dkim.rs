//! DKIM signatures on outgoing mail (RFC 6376), made by mail-auth with the key the operator
//! keeps in the `<domain>-dkim` Secret: RSA-SHA256 or Ed25519-SHA256, relaxed/relaxed, over
//! the header fields a receiver shows or threads by.
use mail_auth::{
    common::{
        crypto::{Ed25519Key, RsaKey, Sha256},
        headers::HeaderWriter,
    },
    dkim::DkimSigner,
};
use rustls::pki_types::{PrivateKeyDer, pem::PemObject};

use crate::config::DkimConfig;

/// The header fields signed when present.
const SIGNED: [&str; 12] = [
    "From",
    "Sender",
    "Reply-To",
    "To",
    "Cc",
    "Subject",
    "Date",
    "Message-ID",
    "In-Reply-To",
    "References",
    "MIME-Version",
    "Content-Type",
];

/// The `DKIM-Signature` header field (with CRLF) for `message`, signed for `domain`.
pub fn sign(config: &DkimConfig, domain: &str, message: &[u8]) -> Result<String, String> {
    let pem = std::fs::read(&config.key_file)
        .map_err(|e| format!("reading the DKIM key {}: {e}", config.key_file.display()))?;
    let key = PrivateKeyDer::from_pem_slice(&pem)
        .map_err(|e| format!("the DKIM key is not a PEM private key: {e}"))?;
    let signature = match RsaKey::<Sha256>::from_key_der(key.clone_key()) {
        Ok(rsa) => DkimSigner::from_key(rsa)
            .domain(domain)
            .selector(&config.selector)
            .headers(SIGNED)
            .sign(message),
        Err(_) => {
            let PrivateKeyDer::Pkcs8(pkcs8) = key else {
                return Err("the DKIM key is neither RSA nor PKCS#8 Ed25519".into());
            };
            let ed = Ed25519Key::from_pkcs8_maybe_unchecked_der(pkcs8.secret_pkcs8_der())
                .map_err(|e| format!("the DKIM key is neither RSA nor Ed25519: {e}"))?;
            DkimSigner::from_key(ed)
                .domain(domain)
                .selector(&config.selector)
                .headers(SIGNED)
                .sign(message)
        }
    }
    .map_err(|e| format!("signing failed: {e}"))?;
    Ok(signature.to_header())
}
