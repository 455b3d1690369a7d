//! Keys the operator makes once per MailDomain: the DKIM signing key and, when the user names
//! no certificate, a self-signed TLS pair. Kept in Secrets and never silently rotated.
use base64::{Engine, engine::general_purpose::STANDARD as B64};
use kubemail_crds::mail_domain::DkimAlgorithm;

/// A DKIM key: the private key (PEM, PKCS#8) and the DNS TXT value with its public key.
#[derive(Debug, Clone)]
pub struct DkimKey {
    /// PKCS#8 PEM.
    pub private_pem: String,
    /// `v=DKIM1; k=...; p=...`.
    pub dns_value: String,
}

/// Makes a new DKIM key.
pub fn new_dkim_key(algorithm: DkimAlgorithm) -> anyhow::Result<DkimKey> {
    match algorithm {
        DkimAlgorithm::Rsa => {
            use rsa::{
                RsaPrivateKey,
                pkcs8::{EncodePrivateKey, EncodePublicKey, LineEnding},
            };
            let mut rng = rsa::rand_core::OsRng;
            let key = RsaPrivateKey::new(&mut rng, 2048)?;
            let private_pem = key.to_pkcs8_pem(LineEnding::LF)?.to_string();
            let public = key.to_public_key().to_public_key_der()?;
            Ok(DkimKey {
                private_pem,
                dns_value: format!("v=DKIM1; k=rsa; p={}", B64.encode(public.as_bytes())),
            })
        }
        DkimAlgorithm::Ed25519 => {
            let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ED25519)?;
            // The raw 32-byte public key is what RFC 8463 publishes.
            let raw = key.public_key_raw().to_vec();
            Ok(DkimKey {
                private_pem: key.serialize_pem(),
                dns_value: format!("v=DKIM1; k=ed25519; p={}", B64.encode(raw)),
            })
        }
    }
}

/// The DNS value of a stored DKIM key (PKCS#8 PEM).
pub fn dkim_dns_value(private_pem: &str) -> Option<String> {
    use rsa::pkcs8::{DecodePrivateKey, EncodePublicKey};
    if let Ok(key) = rsa::RsaPrivateKey::from_pkcs8_pem(private_pem) {
        let public = key.to_public_key().to_public_key_der().ok()?;
        return Some(format!(
            "v=DKIM1; k=rsa; p={}",
            B64.encode(public.as_bytes())
        ));
    }
    let key = rcgen::KeyPair::from_pem(private_pem).ok()?;
    Some(format!(
        "v=DKIM1; k=ed25519; p={}",
        B64.encode(key.public_key_raw())
    ))
}

/// A self-signed certificate and key (PEM) for `names`.
pub fn self_signed(names: &[String]) -> anyhow::Result<(String, String)> {
    let mut params = rcgen::CertificateParams::new(names.to_vec())?;
    if let Some(first) = names.first() {
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, first.as_str());
    }
    let key = rcgen::KeyPair::generate()?;
    let cert = params.self_signed(&key)?;
    Ok((cert.pem(), key.serialize_pem()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dkim_keys_publish_the_public_half_they_can_be_read_back() {
        for algorithm in [DkimAlgorithm::Rsa, DkimAlgorithm::Ed25519] {
            let key = new_dkim_key(algorithm).expect("key");
            assert_eq!(
                dkim_dns_value(&key.private_pem).as_deref(),
                Some(key.dns_value.as_str())
            );
        }
    }
}
