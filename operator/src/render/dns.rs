//! The DNS records a MailDomain needs, with their exact values.
use kubemail_crds::{MailDomain, Protocol, mail_domain::DnsRecord};

use super::hostname;

fn record(purpose: &str, type_: &str, name: String, value: String) -> DnsRecord {
    DnsRecord {
        purpose: purpose.into(),
        type_: type_.into(),
        name,
        value,
    }
}

/// The mail host's A/AAAA (from the addresses given: a LoadBalancer Service's), MX and SPF for
/// the domain and its alias domains, DKIM (each key given: (selector, value); two while a key
/// rotates), DMARC, with HTTPS on
/// the web names (CNAMEs to the mail host), `_mta-sts` and `_smtp._tls` (TLS-RPT), and the
/// RFC 6186 SRV records of the enabled client protocols (RFC 5804's for ManageSieve).
pub fn records(
    md: &MailDomain,
    dkim: &[(String, String)],
    host_addresses: &[std::net::IpAddr],
) -> Vec<DnsRecord> {
    let host = hostname(md);
    let domain = &md.spec.domain;
    let mut out = Vec::new();
    for ip in host_addresses {
        let type_ = if ip.is_ipv4() { "A" } else { "AAAA" };
        out.push(record("host", type_, format!("{host}."), ip.to_string()));
    }
    for d in std::iter::once(domain).chain(&md.spec.alias_domains) {
        out.push(record("MX", "MX", format!("{d}."), format!("10 {host}.")));
        out.push(record(
            "SPF",
            "TXT",
            format!("{d}."),
            "v=spf1 mx -all".into(),
        ));
    }
    for (selector, key) in dkim.iter().filter(|_| md.spec.dkim.enabled) {
        out.push(record(
            "DKIM",
            "TXT",
            format!("{selector}._domainkey.{domain}."),
            key.clone(),
        ));
    }
    out.push(record(
        "DMARC",
        "TXT",
        format!("_dmarc.{domain}."),
        format!("v=DMARC1; p=quarantine; rua=mailto:postmaster@{domain}"),
    ));
    // The web side, only when the runtime serves it over HTTPS: a policy announced where it
    // cannot be fetched would only cost senders a failed fetch.
    if md.spec.protocols.https.enabled {
        for name in web_names(md, false) {
            out.push(record(
                "web",
                "CNAME",
                format!("{name}."),
                format!("{host}."),
            ));
        }
        let policy = kubemail_config::mta_sts_policy(md.spec.mta_sts.mode.word(), &host);
        out.push(record(
            "MTA-STS",
            "TXT",
            format!("_mta-sts.{domain}."),
            format!("v=STSv1; id={}", mta_sts_id(&policy)),
        ));
        out.push(record(
            "TLS-RPT",
            "TXT",
            format!("_smtp._tls.{domain}."),
            format!("v=TLSRPTv1; rua=mailto:postmaster@{domain}"),
        ));
    }
    for (protocol, service) in [
        (Protocol::Submissions, "_submissions"),
        (Protocol::Submission, "_submission"),
        (Protocol::Imaps, "_imaps"),
        (Protocol::Imap, "_imap"),
        (Protocol::Pop3s, "_pop3s"),
        (Protocol::Pop3, "_pop3"),
        // RFC 5804 s1.8.
        (Protocol::Managesieve, "_sieve"),
    ] {
        let Some((_, spec)) = md.spec.protocols.iter().find(|(p, _)| *p == protocol) else {
            continue;
        };
        // RFC 6186: "0 0 0 ." says a service is not offered at all.
        let value = if spec.enabled {
            format!("0 1 {} {host}.", spec.port_or_default(protocol))
        } else {
            "0 0 0 .".to_string()
        };
        out.push(record(
            &if protocol == Protocol::Managesieve {
                "RFC 5804 managesieve".to_string()
            } else {
                format!("RFC 6186 {}", protocol.field())
            },
            "SRV",
            format!("{service}._tcp.{domain}."),
            value,
        ));
    }
    out
}

/// The host names of the web side (`mta-sts.`, `autoconfig.`, `autodiscover.` the domain),
/// after the mail host itself when `with_host` (the names a self-signed certificate covers).
pub fn web_names(md: &MailDomain, with_host: bool) -> Vec<String> {
    let domain = &md.spec.domain;
    with_host
        .then(|| hostname(md))
        .into_iter()
        .chain(
            ["mta-sts", "autoconfig", "autodiscover"]
                .iter()
                .map(|n| format!("{n}.{domain}")),
        )
        .collect()
}

/// The `_mta-sts` record's id (RFC 8461 s3.1: 1-32 letters and digits): from the policy's
/// text, so it changes when the policy does and only then.
fn mta_sts_id(policy: &str) -> String {
    use sha2::Digest;
    let digest = sha2::Sha256::digest(policy.as_bytes());
    digest.iter().take(10).map(|b| format!("{b:02x}")).collect()
}

/// The external-dns `DNSEndpoint` that publishes `records`: one endpoint per name and type with
/// all its values as targets (names and targets without the final dot, as external-dns writes
/// them), owned by the MailDomain so it goes with it.
pub fn endpoint_object(md: &MailDomain, records: &[DnsRecord]) -> serde_json::Value {
    use kube::Resource;
    let bare = |s: &str| s.strip_suffix('.').unwrap_or(s).to_string();
    let mut endpoints: Vec<(String, String, Vec<String>)> = Vec::new();
    for r in records {
        let target = match r.type_.as_str() {
            // "10 mail.example.com." -> "10 mail.example.com"; "0 0 0 ." stays as it is.
            "MX" | "SRV" | "CNAME" if r.value != "0 0 0 ." => bare(&r.value),
            _ => r.value.clone(),
        };
        let name = bare(&r.name);
        match endpoints
            .iter_mut()
            .find(|(n, t, _)| *n == name && *t == r.type_)
        {
            Some((_, _, targets)) => targets.push(target),
            None => endpoints.push((name, r.type_.clone(), vec![target])),
        }
    }
    serde_json::json!({
        "apiVersion": "externaldns.k8s.io/v1alpha1",
        "kind": "DNSEndpoint",
        "metadata": {
            "name": endpoint_name(md),
            "labels": {"app.kubernetes.io/managed-by": "kubemail-operator"},
            "ownerReferences": md.controller_owner_ref(&()).into_iter().collect::<Vec<_>>(),
        },
        "spec": {"endpoints": endpoints.into_iter().map(|(name, type_, targets)| serde_json::json!({
            "dnsName": name,
            "recordType": type_,
            "targets": targets,
            "recordTTL": md.spec.dns.ttl,
        })).collect::<Vec<_>>()},
    })
}

/// The name of a MailDomain's `DNSEndpoint`.
pub fn endpoint_name(md: &MailDomain) -> String {
    use kube::ResourceExt;
    format!("{}-dns", md.name_any())
}
