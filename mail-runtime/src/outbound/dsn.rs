//! Delivery status notifications (RFC 3464): a `multipart/report` that tells the sender which
//! recipients failed and why, with the original header for reference.
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
    let boundary = format!("{}.report/{hostname}", entry.id);
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
    let mut out = format!(
        "From: Mail Delivery System <MAILER-DAEMON@{hostname}>\r\n\
         To: <{to}>\r\n\
         Subject: Undelivered Mail Returned to Sender\r\n\
         Date: {date}\r\n\
         Message-ID: <{id}.dsn@{hostname}>\r\n\
         Auto-Submitted: auto-replied\r\n\
         MIME-Version: 1.0\r\n\
         Content-Type: multipart/report; report-type=delivery-status;\r\n\
         \tboundary=\"{boundary}\"\r\n\
         \r\n\
         --{boundary}\r\n\
         Content-Type: text/plain; charset=us-ascii\r\n\
         \r\n\
         {text}\r\n\
         --{boundary}\r\n\
         Content-Type: message/delivery-status\r\n\
         \r\n\
         {fields}\r\n\
         --{boundary}\r\n\
         Content-Type: text/rfc822-headers\r\n\
         \r\n",
        to = entry.from,
        date = rfc2822_date(now),
        id = entry.id,
    )
    .into_bytes();
    out.extend_from_slice(&header);
    out.extend_from_slice(format!("\r\n--{boundary}--\r\n").as_bytes());
    out
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
            "Content-Type: multipart/report; report-type=delivery-status;",
            "Final-Recipient: rfc822; nobody@remote.test\r\nAction: failed\r\nStatus: 5.1.1",
            "Remote-MTA: dns; mx.remote.test",
            "Original-Envelope-Id: env-1",
            "Content-Type: text/rfc822-headers\r\n\r\nSubject: hi\r\n",
        ] {
            assert!(report.contains(expected), "{expected} missing:\n{report}");
        }
        assert_eq!(status_of("451 4.4.1 try later", true), "5.4.1");
        assert_eq!(status_of("timeout", true), "5.4.7");
    }
}
