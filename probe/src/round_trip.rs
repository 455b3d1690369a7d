//! A message sent through submission and read back over IMAP by the same login: the check
//! `kubectl mail test` makes of a domain, end to end through its Service.
use std::time::{Duration, Instant};

use futures::TryStreamExt;
use serde::Serialize;

use crate::{Found, Options, imap_session, smtp_session};

/// How a round trip went.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct RoundTrip {
    /// From connecting to submission until the server took the message.
    pub submitted_ms: u64,
    /// From then until IMAP found it in the INBOX.
    pub seen_ms: u64,
}

/// Sends a message from `address` to itself through `submission` (`HOST:PORT`, logging in as
/// `address`), finds it in the INBOX over `imap`, and deletes it again. TLS as `options` says
/// for both (`implicit_tls`: ports 465 and 993). Gives up after `options.timeout` per step.
pub async fn round_trip(
    submission: &str,
    imap: &str,
    address: &str,
    password: &str,
    options: &Options,
) -> Result<RoundTrip, String> {
    if [address, password]
        .iter()
        .any(|v| v.contains(['\r', '\n', '\0']))
    {
        return Err("the login contains a line break or NUL; refused before connecting".into());
    }
    let token: u64 = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    let subject = format!("kubemail round trip {token:x}");
    let start = Instant::now();
    let step =
        |what: &'static str| move |_| format!("{what}: no answer within {:?}", options.timeout);
    tokio::time::timeout(
        options.timeout,
        send(submission, address, password, &subject, options),
    )
    .await
    .map_err(step("submission"))??;
    let submitted = start.elapsed();
    tokio::time::timeout(
        options.timeout,
        find_and_delete(imap, address, password, &subject, options),
    )
    .await
    .map_err(step("IMAP"))??;
    Ok(RoundTrip {
        submitted_ms: submitted.as_millis() as u64,
        seen_ms: (start.elapsed() - submitted).as_millis() as u64,
    })
}

async fn send(
    submission: &str,
    address: &str,
    password: &str,
    subject: &str,
    options: &Options,
) -> Result<(), String> {
    let (mut client, ehlo) = smtp_session(submission, options, &mut Found::default()).await?;
    client
        .authenticate(&mail_send::Credentials::new(address, password), &ehlo)
        .await
        .map_err(|e| format!("login failed: {e}"))?;
    let body = format!(
        "From: <{address}>\r\nTo: <{address}>\r\nSubject: {subject}\r\n\
         Auto-Submitted: auto-generated\r\n\r\nSent by kubectl mail test; deleted once read.\r\n"
    );
    client
        .send(mail_send::smtp::message::Message::new(
            address,
            [address],
            body.into_bytes(),
        ))
        .await
        .map_err(|e| format!("the message was refused: {e}"))?;
    let _ = client.quit().await;
    Ok(())
}

async fn find_and_delete(
    imap: &str,
    address: &str,
    password: &str,
    subject: &str,
    options: &Options,
) -> Result<(), String> {
    let client = imap_session(imap, options, &mut Found::default()).await?;
    let mut session = client
        .login(address, password)
        .await
        .map_err(|(e, _)| format!("IMAP login failed: {e}"))?;
    session
        .select("INBOX")
        .await
        .map_err(|e| format!("SELECT INBOX failed: {e}"))?;
    let query = format!("HEADER Subject \"{subject}\"");
    loop {
        let found = session
            .uid_search(&query)
            .await
            .map_err(|e| format!("SEARCH failed: {e}"))?;
        if !found.is_empty() {
            let set: Vec<String> = found.iter().map(u32::to_string).collect();
            let set = set.join(",");
            let _: Vec<_> = session
                .uid_store(&set, "+FLAGS.SILENT (\\Deleted)")
                .await
                .map_err(|e| format!("STORE failed: {e}"))?
                .try_collect()
                .await
                .map_err(|e| format!("STORE failed: {e}"))?;
            let _: Vec<_> = session
                .uid_expunge(&set)
                .await
                .map_err(|e| format!("EXPUNGE failed: {e}"))?
                .try_collect()
                .await
                .map_err(|e| format!("EXPUNGE failed: {e}"))?;
            let _ = session.logout().await;
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        // NOOP lets the server tell of new mail; the next SEARCH sees it either way.
        session
            .noop()
            .await
            .map_err(|e| format!("NOOP failed: {e}"))?;
    }
}
