//! TLS server configuration from PEM files, reloaded when the files change. A replaced file that
//! does not parse is reported and ignored: the previous certificate keeps serving.
//!
//! A server that hosts several domains holds one certificate per domain besides its own and
//! chooses by the name the client asks for (SNI): a name that is a domain's host name, the
//! domain, an alias or a name under either gets that domain's certificate; any other name, or
//! none, gets the server's.
use std::{
    collections::HashMap,
    os::unix::fs::MetadataExt,
    path::{Path, PathBuf},
    sync::{Arc, Mutex, RwLock},
    time::Duration,
};

use kubemail_config::{RawConfig, TlsFiles};
use rustls::{
    ServerConfig,
    crypto::CryptoProvider,
    pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject},
    server::{ClientHello, ResolvesServerCert},
    sign::CertifiedKey,
};

use crate::config::ConfigHandle;

/// The TLS configuration in force.
#[derive(Debug, Clone, Default)]
pub struct TlsHandle {
    current: Arc<RwLock<Option<Arc<ServerConfig>>>>,
    last_error: Arc<RwLock<Option<String>>>,
    /// The last key that loaded from each pair of files: a replacement that does not load
    /// leaves it serving.
    loaded: Arc<Mutex<HashMap<TlsFiles, Arc<CertifiedKey>>>>,
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

    /// Loads the server's certificate and each domain's now. A pair that does not load keeps
    /// what it loaded before (or is left out); every failure is reported, and one domain's
    /// never keeps the others from serving.
    pub fn load(&self, config: &RawConfig) -> Result<(), String> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut loaded = self.loaded.lock().expect("tls lock");
        let mut errors = Vec::new();
        let mut fresh = HashMap::new();
        let mut take = |files: &TlsFiles| -> Option<Arc<CertifiedKey>> {
            if let Some(key) = fresh.get(files) {
                return Some(Arc::clone(key));
            }
            let key = match certified_key(&provider, &files.cert_file, &files.key_file) {
                Ok(key) => Arc::new(key),
                Err(err) => {
                    errors.push(err);
                    Arc::clone(loaded.get(files)?)
                }
            };
            fresh.insert(files.clone(), Arc::clone(&key));
            Some(key)
        };
        let server = take(&config.tls);
        let domains: Vec<_> = config
            .domains
            .iter()
            .map(|d| (d.clone(), d.tls.as_ref().and_then(&mut take)))
            .collect();
        *loaded = fresh;
        let error = (!errors.is_empty()).then(|| errors.join("; "));
        let any = server.is_some() || domains.iter().any(|(_, k)| k.is_some());
        let resolver = BySni {
            hostname: config.hostname.clone(),
            server,
            domains,
        };
        let config = match any {
            true => Some(Arc::new(
                ServerConfig::builder_with_provider(provider)
                    .with_safe_default_protocol_versions()
                    .map_err(|e| e.to_string())?
                    .with_no_client_auth()
                    .with_cert_resolver(Arc::new(resolver)),
            )),
            false => None,
        };
        if config.is_some() {
            *self.current.write().expect("tls lock") = config;
        }
        *self.last_error.write().expect("tls lock") = error.clone();
        error.map_or(Ok(()), Err)
    }
}

/// Chooses the certificate by the server name the client sent (see
/// [`kubemail_config::owner_of`]).
#[derive(Debug)]
struct BySni {
    /// The server's host name.
    hostname: String,
    /// The server's own certificate, for its names and clients that send none; `None` while it
    /// does not load (those handshakes fail: a tenant's certificate is never served instead).
    server: Option<Arc<CertifiedKey>>,
    /// The domains, each with its certificate if it has one of its own.
    domains: Vec<(kubemail_config::DomainConfig, Option<Arc<CertifiedKey>>)>,
}

impl ResolvesServerCert for BySni {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let owner = hello.server_name().and_then(|name| {
            kubemail_config::owner_of(
                &self.hostname,
                self.domains.iter().map(|(d, key)| (d, key)),
                name,
            )
        });
        match owner {
            // A domain with a certificate of its own gets it; one without gets the server's.
            Some(Some(key)) => Some(Arc::clone(key)),
            _ => self.server.clone(),
        }
    }
}

/// A certificate chain and its key from PEM files, checked to belong together.
fn certified_key(
    provider: &CryptoProvider,
    cert: &Path,
    key: &Path,
) -> Result<CertifiedKey, String> {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .map_err(|e| format!("cannot read certificate {}: {e}", cert.display()))?
        .collect::<Result<_, _>>()
        .map_err(|e| format!("cannot parse certificate {}: {e}", cert.display()))?;
    if certs.is_empty() {
        return Err(format!("no certificate in {}", cert.display()));
    }
    let key_der = PrivateKeyDer::from_pem_file(key)
        .map_err(|e| format!("cannot read private key {}: {e}", key.display()))?;
    let certified = CertifiedKey::from_der(certs, key_der, provider).map_err(|e| {
        format!(
            "certificate {} and key {} do not form a usable pair: {e}",
            cert.display(),
            key.display()
        )
    })?;
    Ok(certified)
}

/// Every certificate and key file the config names.
fn files_of(config: &RawConfig) -> Vec<PathBuf> {
    std::iter::once(&config.tls)
        .chain(config.domains.iter().filter_map(|d| d.tls.as_ref()))
        .flat_map(|f| [f.cert_file.clone(), f.key_file.clone()])
        .collect()
}

/// Watches the certificate and key files of the config in force and reloads them when one
/// changes or the config names others.
pub async fn watch(handle: TlsHandle, config: ConfigHandle) {
    let stamp = |p: &Path| {
        std::fs::metadata(p)
            .ok()
            .map(|m| (m.dev(), m.ino(), m.len(), m.mtime(), m.mtime_nsec()))
    };
    let stamps =
        |files: &[PathBuf]| -> Vec<_> { files.iter().map(|f| (f.clone(), stamp(f))).collect() };
    // The config's revision too: a load made with a config just replaced (the config watch
    // loads the new one itself) is made again with the one in force.
    let mut last = (String::new(), stamps(&files_of(&config.get().raw)));
    let mut ticker = tokio::time::interval(Duration::from_secs(1));
    loop {
        ticker.tick().await;
        let current = config.get();
        let now = (
            current.revision().to_string(),
            stamps(&files_of(&current.raw)),
        );
        if now == last {
            continue;
        }
        last = now;
        match handle.load(&current.raw) {
            Ok(()) => tracing::info!("TLS certificates reloaded"),
            Err(err) => tracing::error!(
                error = %err,
                "a TLS certificate was refused; the previous one keeps serving"
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
