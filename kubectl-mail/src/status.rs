//! `kubectl mail status DOMAIN`: what the operator found, in one screen — conditions (the
//! protocol probes among them), endpoints, the DNS records to publish, the mailboxes with their
//! usage, and the outbound queue.
use std::io::Write;

use anyhow::Context as _;
use kube::{Api, Client, ResourceExt};
use kubemail_crds::{MailDomain, Mailbox, mailbox::MailboxUsage};

/// The MailDomain in `ns` whose domain or name is `domain`.
pub async fn find(client: &Client, ns: &str, domain: &str) -> anyhow::Result<MailDomain> {
    let list = Api::<MailDomain>::namespaced(client.clone(), ns)
        .list(&Default::default())
        .await
        .context("listing MailDomains")?;
    list.items
        .into_iter()
        .find(|d| d.spec.domain.eq_ignore_ascii_case(domain) || d.name_any() == domain)
        .with_context(|| format!("no MailDomain in namespace {ns} serves {domain}"))
}

/// `kubectl mail status`.
pub async fn show(
    client: &Client,
    ns: &str,
    domain: &str,
    out: &mut impl Write,
) -> anyhow::Result<()> {
    let md = find(client, ns, domain).await?;
    let mailboxes = Api::<Mailbox>::namespaced(client.clone(), ns)
        .list(&Default::default())
        .await
        .context("listing Mailboxes")?
        .items;
    out.write_all(render(&md, &mailboxes).as_bytes())?;
    Ok(())
}

/// The report, from the objects as read.
pub fn render(md: &MailDomain, mailboxes: &[Mailbox]) -> String {
    let mut out = Vec::new();
    // Writes into a Vec cannot fail.
    let _ = write_report(&mut out, md, mailboxes);
    String::from_utf8_lossy(&out).into_owned()
}

fn write_report(out: &mut Vec<u8>, md: &MailDomain, mailboxes: &[Mailbox]) -> std::io::Result<()> {
    let status = md.status.clone().unwrap_or_default();
    let condition = |t: &str| status.conditions.iter().find(|c| c.type_ == t);
    let ready = condition("Ready").map_or("Unknown", |c| c.status.as_str());
    writeln!(
        out,
        "MailDomain {} ({}) in namespace {}: Ready {ready}",
        md.name_any(),
        md.spec.domain,
        md.namespace().unwrap_or_default()
    )?;
    if status.observed_generation != md.metadata.generation {
        writeln!(
            out,
            "  (the operator has not looked at the latest change yet: generation {:?}, observed {:?})",
            md.metadata.generation.unwrap_or_default(),
            status.observed_generation.unwrap_or_default()
        )?;
    }
    if let Some(host) = &status.hostname {
        writeln!(out, "Host name: {host}")?;
    }
    writeln!(out, "\nConditions:")?;
    let rows: Vec<[String; 4]> = status
        .conditions
        .iter()
        .map(|c| {
            [
                c.type_.clone(),
                c.status.clone(),
                c.reason.clone(),
                c.message.clone(),
            ]
        })
        .collect();
    table(out, &["TYPE", "STATUS", "REASON", "MESSAGE"], &rows)?;
    if !status.endpoints.is_empty() {
        writeln!(out, "\nEndpoints:")?;
        let rows: Vec<[String; 3]> = status
            .endpoints
            .iter()
            .map(|e| {
                [
                    e.protocol.clone(),
                    format!("{}:{}", e.host, e.port),
                    e.tls.clone(),
                ]
            })
            .collect();
        table(out, &["PROTOCOL", "ADDRESS", "TLS"], &rows)?;
    }
    if !status.dns_records.is_empty() {
        writeln!(out, "\nDNS records to publish:")?;
        let rows: Vec<[String; 4]> = status
            .dns_records
            .iter()
            .map(|r| {
                [
                    r.purpose.clone(),
                    r.type_.clone(),
                    r.name.clone(),
                    r.value.clone(),
                ]
            })
            .collect();
        table(out, &["PURPOSE", "TYPE", "NAME", "VALUE"], &rows)?;
    }
    let ours: Vec<&Mailbox> = mailboxes
        .iter()
        .filter(|m| {
            m.status.as_ref().and_then(|s| s.domain.as_deref()) == md.metadata.name.as_deref()
        })
        .collect();
    let (bytes, messages) = ours
        .iter()
        .filter_map(|m| m.status.as_ref()?.usage.as_ref())
        .fold((0u64, 0u64), |(b, n), u| {
            (b + u.bytes.max(0) as u64, n + u.messages.max(0) as u64)
        });
    let not_ready = ours
        .iter()
        .filter(|m| {
            !m.status.as_ref().is_some_and(|s| {
                s.conditions
                    .iter()
                    .any(|c| c.type_ == "Ready" && c.status == "True")
            })
        })
        .count();
    writeln!(
        out,
        "\nMailboxes: {} served{}; {} stored in {messages} messages",
        status.mailboxes,
        if not_ready > 0 {
            format!(", {not_ready} not Ready")
        } else {
            String::new()
        },
        MailboxUsage::of(bytes, messages, None).used
    )?;
    match status.queued {
        Some(n) => writeln!(out, "Outbound queue: {n} waiting")?,
        None => writeln!(out, "Outbound queue: not reported yet")?,
    }
    Ok(())
}

/// Writes rows under a header, each column as wide as its widest cell.
pub fn table<const N: usize>(
    out: &mut impl Write,
    header: &[&str; N],
    rows: &[[String; N]],
) -> std::io::Result<()> {
    let mut widths: [usize; N] = header.map(str::len);
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |cells: Vec<&str>| {
        let mut text = String::from(" ");
        for (i, (cell, w)) in cells.iter().zip(widths).enumerate() {
            text.push(' ');
            if i + 1 == N {
                text.push_str(cell);
            } else {
                text.push_str(&format!("{cell:<w$}"));
                text.push(' ');
            }
        }
        text.trim_end().to_string()
    };
    writeln!(out, "{}", line(header.to_vec()))?;
    for row in rows {
        writeln!(out, "{}", line(row.iter().map(String::as_str).collect()))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_report_names_what_fails_and_sums_usage() {
        let md: MailDomain = serde_json::from_value(serde_json::json!({
            "apiVersion": "kubemail.io/v1alpha1", "kind": "MailDomain",
            "metadata": {"name": "example", "namespace": "mail", "generation": 2},
            "spec": {"domain": "example.com"},
            "status": {
                "observedGeneration": 2, "mailboxes": 2, "queued": 3,
                "conditions": [
                    {"type": "Ready", "status": "False", "reason": "NotReady", "message": "not ready: IMAPReady", "lastTransitionTime": "2026-12-07T00:00:00Z"},
                    {"type": "IMAPReady", "status": "False", "reason": "ProbeFailed", "message": "imaps: connection refused", "lastTransitionTime": "2026-12-07T00:00:00Z"}
                ],
                "dnsRecords": [{"purpose": "MX", "type": "MX", "name": "example.com.", "value": "10 mail.example.com."}]
            }
        }))
        .expect("a MailDomain");
        let mailbox = |name: &str, bytes: i64, ready: &str| -> Mailbox {
            serde_json::from_value(serde_json::json!({
                "apiVersion": "kubemail.io/v1alpha1", "kind": "Mailbox",
                "metadata": {"name": name, "namespace": "mail"},
                "spec": {"address": format!("{name}@example.com"), "passwordSecretRef": {"name": "p"}},
                "status": {"domain": "example", "usage": {"bytes": bytes, "messages": 2, "used": ""},
                           "conditions": [{"type": "Ready", "status": ready, "reason": "x", "message": "", "lastTransitionTime": "2026-12-07T00:00:00Z"}]}
            }))
            .expect("a Mailbox")
        };
        let text = render(
            &md,
            &[mailbox("a", 1024, "True"), mailbox("b", 2048, "False")],
        );
        assert!(
            text.starts_with("MailDomain example (example.com) in namespace mail: Ready False"),
            "{text}"
        );
        assert!(
            text.contains("IMAPReady  False   ProbeFailed  imaps: connection refused"),
            "{text}"
        );
        assert!(
            text.contains("MX       MX    example.com.  10 mail.example.com."),
            "{text}"
        );
        assert!(
            text.contains("Mailboxes: 2 served, 1 not Ready; 3.0Ki stored in 4 messages"),
            "{text}"
        );
        assert!(text.contains("Outbound queue: 3 waiting"), "{text}");
    }
}
