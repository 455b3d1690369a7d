//! Sender authentication of mail arriving on port 25: SPF (RFC 7208) for the client address,
//! HELO name and MAIL FROM; DKIM signatures (RFC 6376); DMARC (RFC 7489) over both. The outcome
//! is an `Authentication-Results` header (RFC 8601) for the recipient's client to read, and,
//! when the config asks for it, a refusal of mail whose domain publishes `p=reject` and fails.
//! mail-auth does the checking; this module decides what to do with the answers.
use std::{net::IpAddr, time::Duration};

use mail_auth::{
    AuthenticatedMessage, AuthenticationResults, DmarcResult, MessageAuthenticator,
    common::headers::HeaderWriter,
    dmarc::{Policy, verify::DmarcParameters},
    spf::verify::SpfParameters,
};

/// Longest the checks may take before mail is accepted without them.
const CHECK_TIMEOUT: Duration = Duration::from_secs(15);

/// What the checks found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verdict {
    /// The `Authentication-Results` header field, with its CRLF.
    pub header: String,
    /// Set when the message is to be refused: the reason.
    pub refuse: Option<String>,
}

/// Checks one message. `mail_from` is the envelope sender (empty for bounces).
pub async fn check(
    resolver: &MessageAuthenticator,
    hostname: &str,
    peer: IpAddr,
    helo: &str,
    mail_from: &str,
    message: &[u8],
    reject_on_policy: bool,
) -> Option<Verdict> {
    let run = async {
        let parsed = AuthenticatedMessage::parse(message)?;
        let dkim = resolver.verify_dkim(&parsed).await;
        // RFC 7208 2.4: with a null sender, SPF checks postmaster@<HELO name>.
        let sender = if mail_from.is_empty() {
            format!("postmaster@{helo}")
        } else {
            mail_from.to_string()
        };
        let spf = resolver
            .verify_spf(SpfParameters::verify(peer, helo, hostname, &sender))
            .await;
        let mail_from_domain = sender.rsplit_once('@').map_or(helo, |(_, d)| d).to_string();
        let dmarc = resolver
            .verify_dmarc(DmarcParameters::new(
                &parsed,
                &dkim,
                &mail_from_domain,
                &spf,
            ))
            .await;
        let header_from = parsed.from.first().map(String::as_str).unwrap_or_default();
        let results = AuthenticationResults::new(hostname)
            .with_dkim_results(&dkim, header_from)
            .with_spf_mailfrom_result(&spf, peer, &sender, helo)
            .with_dmarc_result(&dmarc);
        let failed = matches!(dmarc.spf_result(), DmarcResult::Fail(_) | DmarcResult::None)
            && matches!(
                dmarc.dkim_result(),
                DmarcResult::Fail(_) | DmarcResult::None
            )
            && matches!(dmarc.result(), DmarcResult::Fail(_));
        let refuse = (reject_on_policy && failed && dmarc.policy() == Policy::Reject).then(|| {
            format!("the sender's domain asks to reject mail that fails DMARC ({mail_from_domain})")
        });
        Some(Verdict {
            header: results.to_header(),
            refuse,
        })
    };
    match tokio::time::timeout(CHECK_TIMEOUT, run).await {
        Ok(verdict) => verdict,
        Err(_) => {
            tracing::warn!(%peer, "sender checks timed out; the message is accepted without them");
            None
        }
    }
}
