//! RFC 5230's rules for whether a vacation reply may be sent, and the reply itself. The
//! memory of whom was answered when (`:days`) is the caller's: it owns the storage.

use mail_builder::{MessageBuilder, headers::raw::Raw};
use mail_parser::MessageParser;

use crate::Vacation;

/// Why no reply goes to this message, or `None` when one may. `own` holds the mailbox's
/// addresses (its own, its aliases and the action's `:addresses`), lowercase.
pub fn refusal(message: &[u8], sender: &str, own: &[String]) -> Option<&'static str> {
    if sender.is_empty() {
        return Some("the sender is null: a bounce is never answered");
    }
    let sender = sender.to_ascii_lowercase();
    let local = sender.rsplit_once('@').map_or(sender.as_str(), |(l, _)| l);
    // RFC 5230 s4.6: mail from list software and mailer daemons is not answered.
    if local == "mailer-daemon"
        || local == "listserv"
        || local == "majordomo"
        || local.starts_with("owner-")
        || local.ends_with("-request")
    {
        return Some("the sender is a mailer daemon or list software");
    }
    if own.contains(&sender) {
        return Some("the sender is the mailbox itself");
    }
    let Some(parsed) = MessageParser::new()
        .with_address_headers()
        .parse_headers(message)
    else {
        return Some("the header cannot be read");
    };
    let mut addressed = false;
    for header in parsed.headers() {
        let name = header.name().to_ascii_lowercase();
        let text = || {
            let start = header.offset_start() as usize;
            let end = (header.offset_end() as usize).min(message.len());
            String::from_utf8_lossy(message.get(start..end).unwrap_or_default())
                .trim()
                .to_ascii_lowercase()
        };
        match name.as_str() {
            "auto-submitted" if text() != "no" => {
                return Some("the message was sent automatically (Auto-Submitted)");
            }
            "precedence" if matches!(text().as_str(), "bulk" | "list" | "junk") => {
                return Some("the message is bulk or list mail (Precedence)");
            }
            n if n.starts_with("list-") => {
                return Some("the message comes from a mailing list");
            }
            "x-auto-response-suppress" => {
                let t = text();
                if t.contains("all") || t.contains("oof") {
                    return Some("the sender asked for no automatic replies");
                }
            }
            "to" | "cc" | "bcc" | "resent-to" | "resent-cc" | "resent-bcc" => {
                if let Some(list) = header.value().as_address() {
                    addressed |= list.iter().any(|a| {
                        a.address()
                            .is_some_and(|a| own.contains(&a.to_ascii_lowercase()))
                    });
                }
            }
            _ => {}
        }
    }
    // RFC 5230 s4.5: only mail addressed to the user is answered, not what reached them
    // through a list or a Bcc they cannot see.
    if !addressed {
        return Some("none of the mailbox's addresses is in To, Cc or Bcc");
    }
    None
}

/// The reply to `original`, from the mailbox (or the action's `:from` when it is one of
/// `senders`, the addresses the mailbox may send as: its own first, then its aliases; never
/// what a script's `:addresses` claims) to `sender`.
pub fn compose(
    vacation: &Vacation,
    original: &[u8],
    sender: &str,
    senders: &[String],
    now: i64,
    message_id: &str,
) -> std::io::Result<Vec<u8>> {
    let parsed = MessageParser::new().parse_headers(original);
    let subject = match &vacation.subject {
        Some(s) => s.clone(),
        None => {
            let original = parsed
                .as_ref()
                .and_then(|m| m.subject())
                .unwrap_or("")
                .to_string();
            format!("Auto: {original}")
        }
    };
    let from = vacation
        .from
        .as_deref()
        .and_then(|f| {
            let field = format!("From: {f}\r\n\r\n");
            let list = MessageParser::new()
                .with_address_headers()
                .parse_headers(field.as_bytes())?;
            let address = list.from()?.first()?.address()?.to_ascii_lowercase();
            senders.contains(&address).then_some(address)
        })
        .or_else(|| senders.first().cloned())
        .unwrap_or_default();
    let mut references: Vec<String> = Vec::new();
    let mut in_reply_to = None;
    if let Some(m) = &parsed {
        if let Some(list) = m.references().as_text_list() {
            references.extend(list.iter().map(|r| r.to_string()));
        } else if let Some(one) = m.references().as_text() {
            references.push(one.to_string());
        }
        if let Some(id) = m.message_id() {
            references.push(id.to_string());
            in_reply_to = Some(id.to_string());
        }
    }
    let body = if vacation.mime {
        MessageParser::new()
            .parse(vacation.reason.as_bytes())
            .and_then(|m| m.body_text(0).map(|t| t.into_owned()))
            .unwrap_or_else(|| vacation.reason.clone())
    } else {
        vacation.reason.clone()
    };
    let mut builder = MessageBuilder::new()
        .from(from)
        .to(sender.to_string())
        .subject(subject)
        .date(now)
        .message_id(message_id.to_string())
        .header("Auto-Submitted", Raw::new("auto-replied (vacation)"))
        .text_body(body);
    if let Some(id) = in_reply_to {
        builder = builder.in_reply_to(id);
    }
    if !references.is_empty() {
        builder = builder.references(references);
    }
    builder.write_to_vec()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn own() -> Vec<String> {
        vec!["alice@example.test".into(), "a@example.test".into()]
    }

    #[test]
    fn only_personal_mail_from_a_person_is_answered() {
        let personal = b"From: bob@example.org\r\nTo: Alice <alice@example.test>\r\n\r\nhi\r\n";
        assert_eq!(refusal(personal, "bob@example.org", &own()), None);
        let alias = b"From: bob@example.org\r\nCc: a@example.test\r\n\r\nhi\r\n";
        assert_eq!(refusal(alias, "bob@example.org", &own()), None);
        assert!(refusal(personal, "", &own()).is_some(), "bounce");
        assert!(refusal(personal, "MAILER-DAEMON@example.org", &own()).is_some());
        assert!(refusal(personal, "owner-list@example.org", &own()).is_some());
        assert!(refusal(personal, "list-request@example.org", &own()).is_some());
        assert!(
            refusal(personal, "alice@example.test", &own()).is_some(),
            "self"
        );
        for header in [
            "Auto-Submitted: auto-replied",
            "Precedence: bulk",
            "Precedence: list",
            "List-Id: <x.lists.example.org>",
            "List-Unsubscribe: <mailto:x@example.org>",
            "X-Auto-Response-Suppress: OOF",
        ] {
            let m = format!(
                "From: bob@example.org\r\nTo: alice@example.test\r\n{header}\r\n\r\nhi\r\n"
            );
            assert!(
                refusal(m.as_bytes(), "bob@example.org", &own()).is_some(),
                "{header}"
            );
        }
        let no =
            b"From: bob@example.org\r\nTo: alice@example.test\r\nAuto-Submitted: no\r\n\r\nhi\r\n";
        assert_eq!(refusal(no, "bob@example.org", &own()), None);
        let bcc = b"From: bob@example.org\r\nTo: team@example.org\r\n\r\nhi\r\n";
        assert!(
            refusal(bcc, "bob@example.org", &own()).is_some(),
            "not addressed"
        );
    }

    #[test]
    fn the_reply_threads_and_is_marked_auto_replied() {
        let original = b"From: bob@example.org\r\nTo: alice@example.test\r\nSubject: Lunch?\r\nMessage-ID: <m1@example.org>\r\nReferences: <m0@example.org>\r\n\r\nhi\r\n";
        let vacation = Vacation {
            seconds: 86_400,
            subject: None,
            from: Some("Evil <ceo@elsewhere.test>".into()),
            addresses: vec![],
            mime: false,
            handle: "h".into(),
            reason: "Away until Monday.".into(),
        };
        let reply = compose(
            &vacation,
            original,
            "bob@example.org",
            &own(),
            1_700_000_000,
            "r1@mail.example.test",
        )
        .expect("compose");
        let text = String::from_utf8(reply).expect("utf8");
        assert!(text.contains("Subject: Auto: Lunch?"), "{text}");
        assert!(text.contains("Auto-Submitted: auto-replied"), "{text}");
        assert!(text.contains("In-Reply-To: <m1@example.org>"), "{text}");
        assert!(
            text.contains("<m0@example.org>") && text.contains("References:"),
            "{text}"
        );
        // A :from that is not the mailbox's own address is not used.
        assert!(text.contains("From: <alice@example.test>"), "{text}");
        assert!(!text.contains("ceo@elsewhere.test"), "{text}");
        assert!(text.contains("Away until Monday."), "{text}");
    }
}
