//! TLS server configuration from PEM files, reloaded when the files change. A replaced file that
//! does not parse is reported and ignored: the previous certificate keeps serving.
use std::{
    os::unix::fs::MetadataExt,
    path::{Path, PathBuf},
    sync::{Arc, RwLock},
    time::Duration,
};

use rustls::{
    ServerConfig,
    pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject},
};

/// The TLS configuration in force.
#[derive(Debug, Clone, Default)]
pub struct TlsHandle {
    current: Arc<RwLock<Option<Arc<ServerConfig>>>>,
    last_error: Arc<RwLock<Option<String>>>,
}

impl TlsHandle {
    /// The server config, if a certificate is loaded.
    pub fn get(&self) -> Option<Arc<ServerConfig>> {
        self.current.read().expect("tls lock").clone()
    }

    /// Why the newest files were refused, if they were.
    pub fn last_error(&self) -> Option<String> {
        self.last_error.read().expect("tls lock").clone()
    }

    /// Loads the files now; on error keeps what was loaded before.
    pub fn load(&self, cert: &Path, key: &Path) -> Result<(), String> {
        match server_config(cert, key) {
            Ok(config) => {
                *self.current.write().expect("tls lock") = Some(Arc::new(config));
                *self.last_error.write().expect("tls lock") = None;
                Ok(())
            }
            Err(err) => {
                *self.last_error.write().expect("tls lock") = Some(err.clone());
                Err(err)
            }
        }
    }
}

/// Builds a rustls server config from a PEM certificate chain and key.
pub fn server_config(cert: &Path, key: &Path) -> Result<ServerConfig, String> {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .map_err(|e| format!("cannot read certificate {}: {e}", cert.display()))?
        .collect::<Result<_, _>>()
        .map_err(|e| format!("cannot parse certificate {}: {e}", cert.display()))?;
    if certs.is_empty() {
        return Err(format!("no certificate in {}", cert.display()));
    }
    let key = PrivateKeyDer::from_pem_file(key)
        .map_err(|e| format!("cannot read private key {}: {e}", key.display()))?;
    ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| format!("certificate and key do not form a usable pair: {e}"))
}

/// Watches the certificate and key files and reloads them when either changes.
pub async fn watch(handle: TlsHandle, cert: PathBuf, key: PathBuf) {
    let stamp = |p: &Path| {
        std::fs::metadata(p)
            .ok()
            .map(|m| (m.dev(), m.ino(), m.len(), m.mtime(), m.mtime_nsec()))
    };
    let mut last = (stamp(&cert), stamp(&key));
    let mut ticker = tokio::time::interval(Duration::from_secs(1));
    loop {
        ticker.tick().await;
        let now = (stamp(&cert), stamp(&key));
        if now == last {
            continue;
        }
        last = now;
        match handle.load(&cert, &key) {
            Ok(()) => tracing::info!(cert = %cert.display(), "TLS certificate reloaded"),
            Err(err) => tracing::error!(
                error = %err,
                "new TLS certificate refused; the previous one keeps serving"
            ),
        }
    }
}

/// Writes a self-signed certificate and key for `names` (dev mode, and the operator's default).
pub fn write_self_signed(names: &[String], cert: &Path, key: &Path) -> anyhow::Result<()> {
    let mut params = rcgen::CertificateParams::new(names.to_vec())?;
    if let Some(first) = names.first() {
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, first.as_str());
    }
    let signing_key = rcgen::KeyPair::generate()?;
    let certificate = params.self_signed(&signing_key)?;
    if let Some(dir) = cert.parent() {
        std::fs::create_dir_all(dir)?;
    }
    std::fs::write(cert, certificate.pem())?;
    std::fs::write(key, signing_key.serialize_pem())?;
    Ok(())
}
