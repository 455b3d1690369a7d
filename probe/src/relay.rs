//! The open-relay self-test: an unauthenticated client asks the server to take mail for a
//! domain it does not serve, and stops before any message is sent.
use std::time::Duration;

use mail_send::SmtpClient;

/// What the server said to the relay attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RelayVerdict {
    /// It accepted the foreign recipient without a login: an open relay. The reply.
    Accepted(String),
    /// It refused the recipient (a 5xx to RCPT). The reply.
    Refused(String),
    /// No verdict: not reachable, a temporary refusal, the sender refused, or a reply that
    /// says neither.
    Unknown(String),
}

/// Connects to `address` (plain SMTP, as a spam sender does), says EHLO, `MAIL FROM:<from>`
/// and `RCPT TO:<to>`, then RSET and QUIT: nothing is ever sent. `from` and `to` must be
/// plain addresses (a line break would start another command: refused before connecting).
pub async fn relay_attempt(address: &str, from: &str, to: &str, timeout: Duration) -> RelayVerdict {
    if [from, to]
        .iter()
        .any(|a| a.contains(['\r', '\n', '\0', '<', '>']))
    {
        return RelayVerdict::Unknown("the test addresses are not plain addresses".into());
    }
    match tokio::time::timeout(timeout, exchange(address, from, to, timeout)).await {
        Ok(verdict) => verdict,
        Err(_) => RelayVerdict::Unknown(format!("no answer from {address} within {timeout:?}")),
    }
}

async fn exchange(address: &str, from: &str, to: &str, timeout: Duration) -> RelayVerdict {
    let stream = match super::connect(address).await {
        Ok(s) => s,
        Err(e) => return RelayVerdict::Unknown(e),
    };
    // The address the server sees (unless something between translates it): the verdict is
    // about clients from there.
    let local = stream
        .local_addr()
        .map_or_else(|_| "?".to_string(), |a| a.ip().to_string());
    let mut client = SmtpClient { stream, timeout };
    let said = |r: &smtp_proto::Response<String>| format!("{} {}", r.code(), r.message());
    match client.read().await {
        Ok(r) if r.code() == 220 => {}
        Ok(r) => return RelayVerdict::Unknown(format!("greeting: {}", said(&r))),
        Err(e) => return RelayVerdict::Unknown(format!("no SMTP greeting: {e}")),
    }
    // A name that passes HELO checks, as a spam sender's does: an FQDN, not the server's own.
    if let Err(e) = client.ehlo("relay-test.kubemail.invalid").await {
        return RelayVerdict::Unknown(format!("EHLO failed: {e}"));
    }
    let verdict = async {
        for (command, stage) in [
            (format!("MAIL FROM:<{from}>\r\n"), "MAIL"),
            (format!("RCPT TO:<{to}>\r\n"), "RCPT"),
        ] {
            let reply = match client.cmd(command.as_bytes()).await {
                Ok(r) => r,
                Err(e) => return RelayVerdict::Unknown(format!("{stage}: {e}")),
            };
            let text = format!("from {local}: {stage} {}", said(&reply));
            // Only RCPT answers the question: a refused MAIL (a HELO check, the sender) says
            // nothing about what another sender would be allowed.
            match (reply.code(), stage) {
                (200..=299, "RCPT") => return RelayVerdict::Accepted(text),
                (500..=599, "RCPT") => return RelayVerdict::Refused(text),
                (200..=299, _) => {}
                _ => return RelayVerdict::Unknown(text),
            }
        }
        RelayVerdict::Unknown("no RCPT reply".into())
    }
    .await;
    let _ = client.cmd(b"RSET\r\n").await;
    let _ = client.quit().await;
    verdict
}
