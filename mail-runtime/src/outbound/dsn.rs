//! Delivery status notifications (RFC 3464): a `multipart/report` that tells the sender which
//! recipients failed and why, with the original header for reference.
use mail_builder::{
    MessageBuilder,
    headers::{content_type::ContentType, date::Date, raw::Raw},
    mime::{BodyPart, MimePart},
};

use super::queue::{Entry, Rcpt};

/// An RFC 5322 date.
pub fn rfc2822_date(secs: i64) -> String {
    let t =
        time::OffsetDateTime::from_unix_timestamp(secs).unwrap_or(time::OffsetDateTime::UNIX_EPOCH);
    t.format(&time::format_description::well_known::Rfc2822)
        .unwrap_or_default()
}

/// The status code to report: the reply's enhanced code when it has one.
fn status_of(reply: &str, expired: bool) -> String {
    let code = reply
        .split_whitespace()
        .nth(1)
        .filter(|c| {
            let parts: Vec<&str> = c.split('.').collect();
            parts.len() == 3
                && matches!(parts[0], "4" | "5")
                && parts
                    .iter()
                    .all(|p| p.chars().all(|ch| ch.is_ascii_digit()))
        })
        .map(str::to_string);
    match code {
        // Retried until the maximum age: reported as a permanent failure of the transient kind.
        Some(c) if expired => format!("5{}", &c[1..]),
        Some(c) => c,
        None if expired => "5.4.7".into(),
        None => "5.0.0".into(),
    }
}

/// The report for `failed` recipients of `entry`. `header` is the original message's header.
pub fn report(
    hostname: &str,
    entry: &Entry,
    failed: &[Rcpt],
    expired: bool,
    header: &[u8],
    now: i64,
) -> Vec<u8> {
    let mut text = format!(
        "This is the mail system at {hostname}.\r\n\r\nYour message could not be delivered to \
         the recipients below{}.\r\n\r\n",
        if expired {
            " before the retry period ran out"
        } else {
            ""
        }
    );
    let mut fields = format!(
        "Reporting-MTA: dns; {hostname}\r\nArrival-Date: {}\r\n",
        rfc2822_date(entry.created)
    );
    if let Some(id) = &entry.env_id {
        fields.push_str(&format!("Original-Envelope-Id: {id}\r\n"));
    }
    for r in failed {
        let reply = r.last_reply.as_deref().unwrap_or("no reply");
        text.push_str(&format!("<{}>: {}\r\n", r.address, one_line(reply)));
        fields.push_str(&format!(
            "\r\nFinal-Recipient: rfc822; {}\r\nAction: failed\r\nStatus: {}\r\n",
            r.address,
            status_of(reply, expired)
        ));
        if let Some(mta) = &r.remote_mta {
            fields.push_str(&format!("Remote-MTA: dns; {mta}\r\n"));
        }
        fields.push_str(&format!("Diagnostic-Code: smtp; {}\r\n", one_line(reply)));
    }
    let mut header = header.to_vec();
    if !header.ends_with(b"\n") {
        header.extend_from_slice(b"\r\n");
    }
    // message/* and the original header go out as they are (RFC 3464 s2, RFC 6522): 7bit, or
    // 8bit for an SMTPUTF8 message's header, never re-encoded.
    let header_encoding = if header.is_ascii() { "7bit" } else { "8bit" };
    let report = MimePart::new(
        ContentType::new("multipart/report").attribute("report-type", "delivery-status"),
        vec![
            MimePart::new(
                ContentType::new("text/plain").attribute("charset", "us-ascii"),
                BodyPart::Text(text.into()),
            ),
            MimePart::new(
                ContentType::new("message/delivery-status"),
                BodyPart::Binary(fields.into_bytes().into()),
            )
            .transfer_encoding("7bit"),
            MimePart::new(
                ContentType::new("text/rfc822-headers"),
                BodyPart::Binary(header.into()),
            )
            .transfer_encoding(header_encoding),
        ],
    );
    let daemon = format!("MAILER-DAEMON@{hostname}");
    MessageBuilder::new()
        .from(("Mail Delivery System", daemon.as_str()))
        .to(entry.from.as_str())
        .subject("Undelivered Mail Returned to Sender")
        .date(Date::new(now))
        .message_id(format!("{}.dsn@{hostname}", entry.id))
        .header("Auto-Submitted", Raw::new("auto-replied"))
        .body(report)
        .write_to_vec()
        .unwrap_or_default()
}

fn one_line(s: &str) -> String {
    s.split(['\r', '\n'])
        .filter(|l| !l.is_empty())
        .collect::<Vec<_>>()
        .join(" ")
}

/// The header block of a message (up to the blank line), at most 64 KiB.
pub fn header_of(message: &[u8]) -> &[u8] {
    let end = crate::header::split(message).map_or(message.len(), |(header, _)| header);
    &message[..end.min(64 * 1024)]
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::outbound::queue::RcptState;

    #[test]
    fn a_report_names_each_failed_recipient_with_its_status() {
        let entry = Entry {
            id: "Q1".into(),
            from: "alice@example.test".into(),
            recipients: Vec::new(),
            created: 0,
            attempts: 1,
            next_attempt: 0,
            size: 10,
            env_id: Some("env-1".into()),
            no_report: false,
        };
        let failed = vec![Rcpt {
            address: "nobody@remote.test".into(),
            state: RcptState::Failed,
            last_reply: Some("550 5.1.1 no such user".into()),
            remote_mta: Some("mx.remote.test".into()),
        }];
        let report = String::from_utf8(report(
            "mail.example.test",
            &entry,
            &failed,
            false,
            b"Subject: hi\r\n",
            0,
        ))
        .expect("ascii");
        for expected in [
            "Final-Recipient: rfc822; nobody@remote.test\r\nAction: failed\r\nStatus: 5.1.1",
            "Remote-MTA: dns; mx.remote.test",
            "Original-Envelope-Id: env-1",
            "Auto-Submitted: auto-replied",
        ] {
            assert!(report.contains(expected), "{expected} missing:\n{report}");
        }
        // Its structure, as a parser we did not write reads it (RFC 6522: the report's parts
        // in order, the machine-readable one as it was written).
        use mail_parser::MimeHeaders;
        let parsed = mail_parser::MessageParser::default()
            .parse(report.as_bytes())
            .expect("parses");
        let root = parsed.content_type().expect("a content type");
        assert_eq!(
            (root.ctype(), root.subtype()),
            ("multipart", Some("report"))
        );
        assert_eq!(root.attribute("report-type"), Some("delivery-status"));
        let kinds: Vec<String> = parsed.parts[1..]
            .iter()
            .map(|p| {
                let t = p.content_type().expect("typed");
                format!("{}/{}", t.ctype(), t.subtype().unwrap_or_default())
            })
            .collect();
        assert_eq!(
            kinds,
            [
                "text/plain",
                "message/delivery-status",
                "text/rfc822-headers"
            ]
        );
        let status = String::from_utf8_lossy(parsed.parts[2].contents());
        assert!(
            status.starts_with("Reporting-MTA: dns; mail.example.test\r\n"),
            "{status}"
        );
        assert!(
            String::from_utf8_lossy(parsed.parts[3].contents()).starts_with("Subject: hi"),
            "{report}"
        );
        assert_eq!(status_of("451 4.4.1 try later", true), "5.4.1");
        assert_eq!(status_of("timeout", true), "5.4.7");
    }
}
