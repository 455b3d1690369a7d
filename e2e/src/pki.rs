//! The certificates and keys a test control plane needs: a CA, the API server's serving
//! certificate for 127.0.0.1 (and, on a real node, the node's address and the `kubernetes`
//! Service's), the API server's client certificate for kubelets, and the service-account
//! signing key.
use std::{fs, path::Path};

use anyhow::Result;
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};

/// Paths of the files [`write`] created.
#[derive(Debug, Clone)]
pub(crate) struct Pki {
    pub ca_cert: std::path::PathBuf,
    pub serving_cert: std::path::PathBuf,
    pub serving_key: std::path::PathBuf,
    pub sa_key: std::path::PathBuf,
    pub sa_public_key: std::path::PathBuf,
    /// The API server's identity towards kubelets (logs, exec, port-forward).
    pub kubelet_client_cert: std::path::PathBuf,
    pub kubelet_client_key: std::path::PathBuf,
}

/// A new CA named `name`: its certificate and what signs with it.
fn new_ca(name: &str) -> Result<(rcgen::Certificate, Issuer<'static, KeyPair>)> {
    let ca_key = KeyPair::generate()?;
    let mut ca_params = CertificateParams::new(Vec::<String>::new())?;
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params.distinguished_name.push(DnType::CommonName, name);
    ca_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let ca_cert = ca_params.self_signed(&ca_key)?;
    Ok((ca_cert, Issuer::new(ca_params, ca_key)))
}

/// A serving certificate for `names` (host names or addresses) signed by `issuer`, and its key.
fn serving(
    issuer: &Issuer<'static, KeyPair>,
    name: &str,
    names: Vec<String>,
) -> Result<(rcgen::Certificate, KeyPair)> {
    let key = KeyPair::generate()?;
    let mut params = CertificateParams::new(names)?;
    params.distinguished_name.push(DnType::CommonName, name);
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    Ok((params.signed_by(&key, issuer)?, key))
}

/// A new CA and a serving certificate it signed for `names`, as PEM: (CA, certificate, key).
pub(crate) fn server_pem(name: &str, names: &[&str]) -> Result<(String, String, String)> {
    let (ca_cert, issuer) = new_ca(&format!("{name} test CA"))?;
    let (cert, key) = serving(
        &issuer,
        name,
        names.iter().map(|n| (*n).to_string()).collect(),
    )?;
    Ok((ca_cert.pem(), cert.pem(), key.serialize_pem()))
}

/// Writes the files; `extra_names` are more names and addresses the API server answers to.
pub(crate) fn write(dir: &Path, extra_names: &[String]) -> Result<Pki> {
    fs::create_dir_all(dir)?;
    let (ca_cert, issuer) = new_ca("kubemail-test-ca")?;
    let mut names = vec![
        "127.0.0.1".to_string(),
        "localhost".to_string(),
        "kubernetes.default.svc".to_string(),
    ];
    names.extend_from_slice(extra_names);
    let (serving_cert, serving_key) = serving(&issuer, "kube-apiserver", names)?;

    let client_key = KeyPair::generate()?;
    let mut client = CertificateParams::new(Vec::<String>::new())?;
    client
        .distinguished_name
        .push(DnType::CommonName, "kube-apiserver-kubelet-client");
    client
        .distinguished_name
        .push(DnType::OrganizationName, "system:masters");
    client.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    let client_cert = client.signed_by(&client_key, &issuer)?;

    let sa_key = KeyPair::generate()?;

    let pki = Pki {
        ca_cert: dir.join("ca.crt"),
        serving_cert: dir.join("apiserver.crt"),
        serving_key: dir.join("apiserver.key"),
        sa_key: dir.join("service-account.key"),
        sa_public_key: dir.join("service-account.pub"),
        kubelet_client_cert: dir.join("apiserver-kubelet-client.crt"),
        kubelet_client_key: dir.join("apiserver-kubelet-client.key"),
    };
    fs::write(&pki.ca_cert, ca_cert.pem())?;
    fs::write(&pki.serving_cert, serving_cert.pem())?;
    fs::write(&pki.serving_key, serving_key.serialize_pem())?;
    fs::write(&pki.sa_key, sa_key.serialize_pem())?;
    fs::write(&pki.sa_public_key, sa_key.public_key_pem())?;
    fs::write(&pki.kubelet_client_cert, client_cert.pem())?;
    fs::write(&pki.kubelet_client_key, client_key.serialize_pem())?;
    Ok(pki)
}
