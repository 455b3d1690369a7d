//! Checks on a received message's header before it is stored or queued: mail loops (RFC 5321
//! s6.3) and, for logged-in senders, whose address the From and Sender fields may carry. Pure
//! functions over the header block, so the rules are tested without a server.
use mail_parser::{Address, MessageParser};

use super::Reply;
use crate::config::{Config, Recipient};

/// Most `Received` fields a message may carry: more means it is going round in circles
/// (Postfix's `hopcount_limit` is 50 too).
pub const MAX_HOPS: usize = 50;

/// Refuses a message that has looped: too many hops, or already delivered to a mailbox that
/// would forward it again. A `Delivered-To` counts in any spelling that reaches that mailbox
/// (folded, commented, a subaddress, an alias).
pub fn loop_check(head: &[u8], config: &Config, forwarded_by: &[String]) -> Option<Reply> {
    let forwarding: Vec<usize> = forwarded_by
        .iter()
        .filter_map(|a| match config.resolve(a) {
            Recipient::Local(i) => Some(i),
            _ => None,
        })
        .collect();
    let mut hops = 0;
    for (name, value) in unfolded_fields(head) {
        if name.eq_ignore_ascii_case(b"received") {
            hops += 1;
        } else if name.eq_ignore_ascii_case(b"delivered-to") && !forwarding.is_empty() {
            let value = String::from_utf8_lossy(&value);
            // Comments out, then the address: what is left between <> or the bare word.
            let mut bare = String::new();
            let mut depth = 0u32;
            for c in value.chars() {
                match c {
                    '(' => depth += 1,
                    ')' => depth = depth.saturating_sub(1),
                    _ if depth == 0 => bare.push(c),
                    _ => {}
                }
            }
            let address = bare
                .split(|c: char| c.is_whitespace() || "<>;,\"".contains(c))
                .find(|t| t.contains('@'))
                .unwrap_or_default()
                .to_ascii_lowercase();
            if let Recipient::Local(i) = config.resolve(&address)
                && forwarding.contains(&i)
            {
                return Some(Reply::new(
                    554,
                    "5.4.6",
                    format!("mail loop: this message was already delivered to <{address}>"),
                ));
            }
        }
    }
    (hops > MAX_HOPS).then(|| {
        Reply::new(
            554,
            "5.4.6",
            format!("too many hops ({hops} Received fields): a mail loop"),
        )
    })
}

/// The header's fields, names trimmed and values unfolded.
fn unfolded_fields(head: &[u8]) -> Vec<(&[u8], Vec<u8>)> {
    let mut out: Vec<(&[u8], Vec<u8>)> = Vec::new();
    for line in head.split(|b| *b == b'\n') {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if line.first().is_some_and(|b| *b == b' ' || *b == b'\t') {
            if let Some((_, value)) = out.last_mut() {
                value.push(b' ');
                value.extend_from_slice(line.trim_ascii());
            }
            continue;
        }
        if let Some(colon) = line.iter().position(|b| *b == b':') {
            out.push((
                line[..colon].trim_ascii(),
                line[colon + 1..].trim_ascii().to_vec(),
            ));
        }
    }
    out
}

/// The fields that name a message's author to its readers (RFC 5322 s3.6.2, s3.6.6).
const AUTHOR_FIELDS: [&str; 4] = ["from", "sender", "resent-from", "resent-sender"];

/// Characters a reader takes for `@` in a display name.
fn has_at(text: &str) -> bool {
    text.contains(['@', '\u{FF20}', '\u{FE6B}'])
}

/// What each author field says: per field, its display or group names and its addresses.
fn author_fields(head: &[u8]) -> Vec<(String, Vec<String>, Vec<String>)> {
    let Some(message) = MessageParser::default().parse_headers(head) else {
        return Vec::new();
    };
    let Some(part) = message.parts.first() else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for header in &part.headers {
        let name = header.name.as_str().to_ascii_lowercase();
        if !AUTHOR_FIELDS.contains(&name.as_str()) {
            continue;
        }
        let mut names = Vec::new();
        let mut entries: Vec<&mail_parser::Addr<'_>> = Vec::new();
        match &header.value {
            mail_parser::HeaderValue::Address(Address::List(list)) => entries.extend(list),
            mail_parser::HeaderValue::Address(Address::Group(groups)) => {
                for group in groups {
                    names.extend(group.name.as_deref().map(str::to_string));
                    entries.extend(&group.addresses);
                }
            }
            mail_parser::HeaderValue::Text(text) => names.push(text.to_string()),
            _ => {}
        }
        names.extend(
            entries
                .iter()
                .filter_map(|a| a.name.as_deref().map(str::to_string)),
        );
        let addresses: Vec<String> = entries
            .iter()
            .filter_map(|a| a.address.as_deref().filter(|x| !x.is_empty()))
            .map(str::to_string)
            .collect();
        out.push((name, names, addresses));
    }
    out
}

/// A logged-in user's message must name only that user's own addresses (its address and
/// aliases) in From, Sender, Resent-From and Resent-Sender, unless the relay policy allows any:
/// otherwise alice could send mail that says it is from bob, signed with the domain's DKIM key.
/// Readers differ in how they read a doubtful header, so every doubt is a refusal: one From and
/// at most one Sender; a field that names no address; a name or comment that shows another
/// address; a field name spelled oddly (`From\0:`).
pub fn author_check(head: &[u8], config: &Config, user: usize) -> Option<Reply> {
    if config.raw.relay.any_header_from {
        return None;
    }
    let refuse = |why: String| Some(Reply::new(550, "5.7.1", why));
    let printable =
        |text: &str| -> String { text.chars().filter(|c| !c.is_control()).take(200).collect() };
    let mut counts = [0usize; 4];
    for line in head.split(|b| *b == b'\n') {
        if line.first().is_some_and(|b| *b == b' ' || *b == b'\t') {
            continue;
        }
        // Every line of the header is a field (RFC 5322 s2.2): a line that is not (a form feed,
        // text without a name) is where parsers part ways, one ending the header there and
        // another reading on, so a From below it would be signed but never checked.
        let line_text = line.strip_suffix(b"\r").unwrap_or(line);
        let named = line_text
            .iter()
            .position(|b| *b == b':')
            .is_some_and(|colon| {
                let name = line_text[..colon].trim_ascii_end();
                !name.is_empty() && name.iter().all(|b| b.is_ascii_graphic())
            });
        if !line_text.is_empty() && !named {
            return refuse("the message header holds a line that is not a header field".into());
        }
        let written = line.split(|b| *b == b':').next().unwrap_or_default();
        let squeezed: String = written
            .iter()
            .filter(|b| b.is_ascii_alphanumeric() || **b == b'-')
            .map(|b| b.to_ascii_lowercase() as char)
            .collect();
        let Some(kind) = AUTHOR_FIELDS.iter().position(|f| *f == squeezed) else {
            continue;
        };
        if !line.contains(&b':')
            || !written
                .trim_ascii()
                .eq_ignore_ascii_case(squeezed.as_bytes())
        {
            return refuse(format!("a malformed {} field", AUTHOR_FIELDS[kind]));
        }
        counts[kind] += 1;
    }
    if counts[0] > 1 || counts[1] > 1 {
        return refuse("more than one From or Sender field".into());
    }
    let own = |a: &str| matches!(config.resolve(a), Recipient::Local(i) if i == user);
    for (field, names, addresses) in author_fields(head) {
        if addresses.is_empty() {
            return refuse(format!("the {field} field names no address of yours"));
        }
        if let Some(other) = addresses.iter().find(|a| !own(a)) {
            return refuse(format!(
                "the {field} field names <{}>, which is not one of your addresses",
                printable(other)
            ));
        }
        // A display name, group name or comment that shows an address must show one's own.
        for name in names.iter().filter(|n| has_at(n)) {
            let shown_own = name
                .split(|c: char| c.is_whitespace() || "<>\"(),;:'".contains(c))
                .filter(|t| has_at(t))
                .all(|t| t.contains('@') && own(t));
            if !shown_own {
                return refuse(format!(
                    "the {field} field shows \"{}\", which is not one of your addresses",
                    printable(name)
                ));
            }
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(any_header_from: bool) -> Config {
        let hash = crate::auth::hash_password("pw");
        Config::parse(&format!(
            r#"
apiVersion: runtime.kubemail.io/v1
kind: RuntimeConfig
revision: r1
hostname: mail.example.com
domains: [{{name: example.com}}]
mailboxes:
  - {{address: alice@example.com, passwordHash: "{hash}", aliases: [sales@example.com]}}
  - {{address: bob@example.com, passwordHash: "{hash}"}}
relay: {{anyHeaderFrom: {any_header_from}}}
tls: {{certFile: /tls/tls.crt, keyFile: /tls/tls.key}}
listeners: [{{protocol: smtp, address: "0.0.0.0:25"}}]
storage: {{path: /data}}
"#
        ))
        .expect("valid")
    }

    #[test]
    fn a_user_writes_only_their_own_addresses_in_from_and_sender() {
        let c = config(false);
        let alice = 0;
        for ok in [
            "From: Alice <alice@example.com>\r\n\r\n",
            "From: \"Sales\" <SALES@example.com>\r\nSender: alice@example.com\r\n\r\n",
            "From: alice+tag@example.com (me)\r\n\r\n",
            "From : alice@example.com\r\n\r\n",
            "From: \"Alice (alice@example.com)\" <alice@example.com>\r\n\r\n",
            "Subject: no From at all\r\n\r\n",
        ] {
            assert_eq!(author_check(ok.as_bytes(), &c, alice), None, "{ok}");
        }
        for forged in [
            "From: bob@example.com\r\nFrom: alice@example.com\r\n\r\n",
            "From: alice@example.com\r\nSender: bob@example.com\r\nSender: alice@example.com\r\n\r\n",
            "From: alice@example.com\r\nResent-From: bob@example.com\r\n\r\n",
            "From: Bob Example\r\n\r\n",
            "From:\r\n\r\n",
            "From: <>\r\n\r\n",
            "From: bob@example.com:;\r\n\r\n",
            "From: (bob@example.com) alice@example.com\r\n\r\n",
            "From: \"bob@example.com\" <alice@example.com>\r\n\r\n",
            "From: =?utf-8?b?Ym9iQGV4YW1wbGUuY29t?= <alice@example.com>\r\n\r\n",
            "From: bob\u{FF20}example.com <alice@example.com>\r\n\r\n",
            "From\0: bob@example.com\r\n\r\n",
            "Subject: ff\r\n\x0c\r\nFrom: Bob <bob@example.com>\r\n\r\n",
            "From \r\n : bob@example.com\r\n\r\n",
            "From: Bob <bob@example.com>\r\n\r\n",
            "From: alice@example.com\r\nSender: bob@example.com\r\n\r\n",
            "From: alice@example.com, ceo@bank.example\r\n\r\n",
            "From: team: alice@example.com, bob@example.com;\r\n\r\n",
            "From: \"alice@example.com\" <ceo@example.org>\r\n\r\n",
            "From: =?utf-8?q?Alice?=\r\n <bob@example.com>\r\n\r\n",
        ] {
            let reply = author_check(forged.as_bytes(), &c, alice).expect(forged);
            assert_eq!((reply.code, reply.status), (550, Some("5.7.1")));
        }
        let open = config(true);
        assert_eq!(
            author_check(b"From: bob@example.com\r\n\r\n", &open, alice),
            None
        );
    }

    #[test]
    fn loops_are_found_by_hops_and_by_delivered_to() {
        let c = config(false);
        let received = "Received: from a by b; Mon, 1 Jan 2026 00:00:00 +0000\r\n";
        let fifty = received.repeat(MAX_HOPS);
        assert_eq!(loop_check(fifty.as_bytes(), &c, &[]), None);
        let more = received.repeat(MAX_HOPS + 1);
        let reply = loop_check(more.as_bytes(), &c, &[]).expect("a loop");
        assert_eq!((reply.code, reply.status), (554, Some("5.4.6")));

        let by = ["alice@example.com".to_string()];
        // Any spelling that reaches alice (an outside tester found the last four let through).
        for spelled in [
            "Delivered-To: <Alice@example.com>",
            "Delivered-To: alice@example.com",
            "Delivered-To :\r\n alice@example.com",
            "Delivered-To: alice@example.com (fwd)",
            "Delivered-To: alice+x@example.com",
            "Delivered-To: alice@example.com;",
            "Delivered-To: sales@example.com",
        ] {
            let head = format!("{spelled}\r\nSubject: x\r\n\r\n");
            assert!(loop_check(head.as_bytes(), &c, &by).is_some(), "{spelled}");
        }
        let head = b"Delivered-To: alice@example.com\r\nSubject: x\r\n\r\n";
        assert_eq!(loop_check(head, &c, &["bob@example.com".to_string()]), None);
        assert_eq!(loop_check(head, &c, &[]), None);
    }
}
