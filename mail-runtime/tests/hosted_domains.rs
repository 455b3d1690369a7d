//! One runtime serving two companies' domains: each domain's certificate is what a client gets
//! when it asks for that domain's names (SNI) on the implicit-TLS ports, after STARTTLS and on
//! the web side; each gets its own MTA-STS policy and autoconfig; mail for both is delivered;
//! a broken certificate of one domain never takes the other's (or its own last good one) away.
mod common;

use std::{
    path::Path,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use common::{Dev, patch_config};

const CAROL: &str = "carol@brand.test";

/// The subject of the certificate a TLS client asking for `name` gets (none: no SNI).
fn subject(port: u16, starttls: Option<&str>, name: Option<&str>) -> String {
    let mut cmd = Command::new("openssl");
    cmd.args(["s_client", "-connect", &format!("127.0.0.1:{port}")]);
    if let Some(protocol) = starttls {
        cmd.args(["-starttls", protocol]);
    }
    match name {
        Some(name) => cmd.args(["-servername", name]),
        None => cmd.arg("-noservername"),
    };
    let out = cmd.stdin(Stdio::null()).output().expect("openssl");
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    text.lines()
        .find_map(|l| l.trim().strip_prefix("subject=").map(str::to_string))
        .unwrap_or_else(|| format!("no certificate in: {text}"))
}

/// The certificate served for `name`, PEM.
fn served_pem(port: u16, name: &str) -> String {
    let out = Command::new("openssl")
        .args(["s_client", "-connect", &format!("127.0.0.1:{port}")])
        .args(["-servername", name])
        .stdin(Stdio::null())
        .output()
        .expect("openssl");
    let text = String::from_utf8_lossy(&out.stdout);
    let begin = text.find("-----BEGIN CERTIFICATE-----").unwrap_or(0);
    let end = text
        .find("-----END CERTIFICATE-----")
        .map_or(0, |e| e + "-----END CERTIFICATE-----".len());
    text.get(begin..end).unwrap_or_default().to_string()
}

/// `brand.test` hosted beside the dev domain: its own host name, certificate, MTA-STS mode and
/// a mailbox.
fn host_brand(dev: &Dev, dir: &Path, revision: &str) {
    let hash = mail_runtime::auth::hash_password("carol-pw");
    let (cert, key) = (dir.join("brand.crt"), dir.join("brand.key"));
    let domain = format!(
        "{{name: brand.test, aliases: [brand.example], hostname: mail.brand.test, mtaStsMode: enforce, \
         tls: {{certFile: {}, keyFile: {}}}}}",
        cert.display(),
        key.display()
    );
    patch_config(dev, revision, |c| {
        let domains = c["domains"].as_sequence_mut().expect("domains");
        domains.push(serde_yaml_ng::from_str(&domain).expect("yaml"));
        let mailboxes = c["mailboxes"].as_sequence_mut().expect("mailboxes");
        mailboxes.push(
            serde_yaml_ng::from_str(&format!("{{address: {CAROL}, passwordHash: \"{hash}\"}}"))
                .expect("yaml"),
        );
    });
}

fn curl(ca: &Path, port: u16, host: &str, path: &str) -> String {
    let out = Command::new("curl")
        .args(["-s", "--max-time", "10", "--cacert"])
        .arg(ca)
        .args(["--resolve", &format!("{host}:{port}:127.0.0.1")])
        .arg(format!("https://{host}:{port}{path}"))
        .output()
        .expect("curl");
    assert!(
        out.status.success(),
        "curl {host}{path} (CA {}): {}",
        ca.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn each_hosted_domain_is_served_under_its_own_name_and_certificate() {
    let tmp = tempfile::tempdir().expect("tmp");
    let dev = Dev::start(&tmp.path().join("data"));
    let names: Vec<String> = ["mail", "mta-sts", "autoconfig", "autodiscover"]
        .iter()
        .map(|n| format!("{n}.brand.test"))
        .collect();
    mail_runtime::tls::write_self_signed(
        &names,
        &tmp.path().join("brand.crt"),
        &tmp.path().join("brand.key"),
    )
    .expect("cert");
    host_brand(&dev, tmp.path(), "hosted-1");

    let brand = "CN = mail.brand.test";
    let own = "CN = mail.example.test";
    let (imaps, submission) = (dev.port("imaps"), dev.port("submission"));
    assert_eq!(subject(imaps, None, Some("mail.brand.test")), brand);
    assert_eq!(subject(imaps, None, Some("mta-sts.brand.test")), brand);
    assert_eq!(subject(imaps, None, Some("mail.brand.example")), brand);
    assert_eq!(subject(imaps, None, Some("mail.example.test")), own);
    assert_eq!(subject(imaps, None, Some("elsewhere.test")), own);
    assert_eq!(subject(imaps, None, None), own);
    assert_eq!(
        subject(submission, Some("smtp"), Some("mail.brand.test")),
        brand
    );
    assert_eq!(
        subject(submission, Some("smtp"), Some("mail.example.test")),
        own
    );
    assert_eq!(
        subject(dev.port("pop3"), Some("pop3"), Some("mail.brand.test")),
        brand
    );

    // Mail for both domains arrives; carol reads hers over IMAPS, her client verifying the
    // certificate of her own domain's name.
    let out = Command::new("swaks")
        .args(["--server", &format!("127.0.0.1:{}", dev.port("smtp"))])
        .args(["--from", "someone@outside.test", "--to", CAROL])
        .args(["--h-Subject", "for carol"])
        .output()
        .expect("swaks");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    let alice = &dev.accounts[0].0;
    let out = Command::new("swaks")
        .args(["--server", &format!("127.0.0.1:{}", dev.port("smtp"))])
        .args(["--from", "someone@outside.test", "--to", alice])
        .args(["--h-Subject", "for alice"])
        .output()
        .expect("swaks");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    let listing = Command::new("curl")
        .args(["-s", "--max-time", "10", "--cacert"])
        .arg(tmp.path().join("brand.crt"))
        .args(["--resolve", &format!("mail.brand.test:{imaps}:127.0.0.1")])
        .args(["-u", &format!("{CAROL}:carol-pw")])
        .arg(format!("imaps://mail.brand.test:{imaps}/INBOX;UID=1"))
        .output()
        .expect("curl");
    let text = String::from_utf8_lossy(&listing.stdout);
    assert!(
        text.contains("Subject: for carol"),
        "{text}{}",
        String::from_utf8_lossy(&listing.stderr)
    );
    assert_eq!(dev.messages(alice).len(), 1);

    // The web side: each domain's policy names its own MX and mode, each autoconfig its own
    // host and none of the other tenant's domains.
    let https = dev.port("https");
    let brand_ca = tmp.path().join("brand.crt");
    let own_ca = tmp.path().join("data/tls/tls.crt");
    let policy = curl(
        &brand_ca,
        https,
        "mta-sts.brand.test",
        "/.well-known/mta-sts.txt",
    );
    assert!(
        policy.contains("mode: enforce\r\nmx: mail.brand.test\r\n"),
        "{policy}"
    );
    let policy = curl(
        &own_ca,
        https,
        "mta-sts.example.test",
        "/.well-known/mta-sts.txt",
    );
    assert!(
        policy.contains("mode: testing\r\nmx: mail.example.test\r\n"),
        "{policy}"
    );
    let autoconfig = curl(
        &brand_ca,
        https,
        "autoconfig.brand.test",
        "/mail/config-v1.1.xml",
    );
    assert!(
        autoconfig.contains("<hostname>mail.brand.test</hostname>")
            && autoconfig.contains("<domain>brand.example</domain>")
            && !autoconfig.contains("example.test"),
        "{autoconfig}"
    );
    let autoconfig = curl(
        &own_ca,
        https,
        "autoconfig.example.test",
        "/mail/config-v1.1.xml",
    );
    assert!(
        autoconfig.contains("<hostname>mail.example.test</hostname>")
            && !autoconfig.contains("brand"),
        "{autoconfig}"
    );

    // brand's certificate replaced by a broken file: its last good certificate keeps serving,
    // the status says which file was refused, the other domain is untouched.
    std::fs::write(
        tmp.path().join("brand.crt"),
        b"-----BEGIN CERTIFICATE-----\nnope\n",
    )
    .expect("write");
    let status = dev.data.join("kubemail-runtime-status.json");
    let start = Instant::now();
    loop {
        let text = std::fs::read_to_string(&status).unwrap_or_default();
        if text.contains("brand.crt") {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "no TLS error reported: {text}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(subject(imaps, None, Some("mail.brand.test")), brand);
    assert_eq!(subject(imaps, None, Some("mail.example.test")), own);

    // A new good certificate for brand is picked up without a restart.
    mail_runtime::tls::write_self_signed(
        &[
            "mail.brand.test".to_string(),
            "renewed.brand.test".to_string(),
        ],
        &tmp.path().join("brand.crt"),
        &tmp.path().join("brand.key"),
    )
    .expect("cert");
    let renewed = std::fs::read_to_string(tmp.path().join("brand.crt")).expect("cert");
    let start = Instant::now();
    while served_pem(imaps, "mail.brand.test") != renewed.trim()
        || std::fs::read_to_string(&status)
            .unwrap_or_default()
            .contains("brand.crt")
    {
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "renewal not served"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}
