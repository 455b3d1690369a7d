//! Checks on a received message's header before it is stored or queued: mail loops (RFC 5321
//! s6.3) and, for logged-in senders, whose address the From and Sender fields may carry. Pure
//! functions over the header block, so the rules are tested without a server.
use mail_parser::{Address, MessageParser};

use super::Reply;
use crate::config::{Config, Recipient};

/// Most `Received` fields a message may carry: more means it is going round in circles
/// (Postfix's `hopcount_limit` is 50 too).
pub const MAX_HOPS: usize = 50;

/// The header's field names and unfolded values, in order.
/// Continuation lines are skipped: these checks read names and one-line values.
fn fields(head: &[u8]) -> impl Iterator<Item = (&[u8], &[u8])> {
    head.split(|b| *b == b'\n')
        .filter(|line| !line.first().is_some_and(|b| *b == b' ' || *b == b'\t'))
        .filter_map(|line| {
            let colon = line.iter().position(|b| *b == b':')?;
            Some((line[..colon].trim_ascii(), line[colon + 1..].trim_ascii()))
        })
}

/// Refuses a message that has looped: too many hops, or already delivered to a mailbox that
/// would forward it again.
pub fn loop_check(head: &[u8], forwarded_by: &[String]) -> Option<Reply> {
    let mut hops = 0;
    for (name, value) in fields(head) {
        if name.eq_ignore_ascii_case(b"received") {
            hops += 1;
        } else if name.eq_ignore_ascii_case(b"delivered-to") && !forwarded_by.is_empty() {
            let value = String::from_utf8_lossy(value);
            let value = value
                .trim_matches(|c| c == '<' || c == '>')
                .to_ascii_lowercase();
            if forwarded_by.contains(&value) {
                return Some(Reply::new(
                    554,
                    "5.4.6",
                    format!("mail loop: this message was already delivered to <{value}>"),
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

/// The header fields naming who a message is from (RFC 5322 From and Sender).
fn authors(head: &[u8]) -> Vec<String> {
    let Some(message) = MessageParser::default().parse_headers(head) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for address in [message.from(), message.sender()].into_iter().flatten() {
        let list: Vec<&mail_parser::Addr<'_>> = match address {
            Address::List(list) => list.iter().collect(),
            Address::Group(groups) => groups.iter().flat_map(|g| g.addresses.iter()).collect(),
        };
        out.extend(
            list.into_iter()
                .map(|a| a.address.as_deref().unwrap_or_default().to_string()),
        );
    }
    out
}

/// A logged-in user's message must name only that user's own addresses (its address and
/// aliases) in From and Sender, unless the relay policy allows any: otherwise alice could send
/// mail that says it is from bob, signed with the domain's DKIM key.
pub fn author_check(head: &[u8], config: &Config, user: usize) -> Option<Reply> {
    if config.raw.relay.any_header_from {
        return None;
    }
    let own = |a: &str| matches!(config.resolve(a), Recipient::Local(i) if i == user);
    let foreign: Vec<String> = authors(head).into_iter().filter(|a| !own(a)).collect();
    if foreign.is_empty() {
        return None;
    }
    let list = foreign
        .iter()
        .map(|a| {
            format!(
                "<{}>",
                a.chars().filter(|c| !c.is_control()).collect::<String>()
            )
        })
        .collect::<Vec<_>>()
        .join(", ");
    Some(Reply::new(
        550,
        "5.7.1",
        format!("the From/Sender header names {list}, which is not one of your addresses"),
    ))
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
            "Subject: no From at all\r\n\r\n",
        ] {
            assert_eq!(author_check(ok.as_bytes(), &c, alice), None, "{ok}");
        }
        for forged in [
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
        let received = "Received: from a by b; Mon, 1 Jan 2026 00:00:00 +0000\r\n";
        let fifty = received.repeat(MAX_HOPS);
        assert_eq!(loop_check(fifty.as_bytes(), &[]), None);
        let more = received.repeat(MAX_HOPS + 1);
        let reply = loop_check(more.as_bytes(), &[]).expect("a loop");
        assert_eq!((reply.code, reply.status), (554, Some("5.4.6")));

        let head = b"Delivered-To: <Alice@example.com>\r\nSubject: x\r\n\r\n";
        let by = ["alice@example.com".to_string()];
        assert!(loop_check(head, &by).is_some());
        assert_eq!(loop_check(head, &["bob@example.com".to_string()]), None);
        assert_eq!(loop_check(head, &[]), None);
    }
}
