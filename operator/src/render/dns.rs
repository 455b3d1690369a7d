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

/// MX and SPF for the domain and its alias domains, DKIM (when a public key is given), DMARC,
/// and the RFC 6186 SRV records of the enabled client protocols (RFC 5804's for ManageSieve).
pub fn records(md: &MailDomain, dkim_public: Option<&str>) -> Vec<DnsRecord> {
    let host = hostname(md);
    let domain = &md.spec.domain;
    let mut out = Vec::new();
    for d in std::iter::once(domain).chain(&md.spec.alias_domains) {
        out.push(record("MX", "MX", format!("{d}."), format!("10 {host}.")));
        out.push(record(
            "SPF",
            "TXT",
            format!("{d}."),
            "v=spf1 mx -all".into(),
        ));
    }
    if let (true, Some(key)) = (md.spec.dkim.enabled, dkim_public) {
        out.push(record(
            "DKIM",
            "TXT",
            format!("{}._domainkey.{domain}.", md.spec.dkim.selector),
            key.to_string(),
        ));
    }
    out.push(record(
        "DMARC",
        "TXT",
        format!("_dmarc.{domain}."),
        format!("v=DMARC1; p=quarantine; rua=mailto:postmaster@{domain}"),
    ));
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
