//! Malware scanning with clamd, over TCP: the spooled message is streamed with `INSTREAM`
//! (4-byte big-endian chunk lengths, a zero length at the end) and clamd answers
//! `stream: OK`, `stream: <signature> FOUND` or an error.
use std::{path::Path, time::Duration};

use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// What clamd said of a message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    Clean,
    /// The signature found.
    Infected(String),
}

/// Scans a file with the clamd at `address`; an error says why clamd could not answer.
pub async fn clamd(address: &str, path: &Path, timeout: Duration) -> Result<Verdict, String> {
    tokio::time::timeout(timeout, scan(address, path))
        .await
        .unwrap_or_else(|_| {
            Err(format!(
                "clamd at {address} gave no verdict within {timeout:?}"
            ))
        })
}

async fn scan(address: &str, path: &Path) -> Result<Verdict, String> {
    let mut stream = tokio::net::TcpStream::connect(address)
        .await
        .map_err(|e| format!("cannot reach clamd at {address}: {e}"))?;
    let mut file = tokio::fs::File::open(path)
        .await
        .map_err(|e| format!("cannot read the spooled message: {e}"))?;
    stream
        .write_all(b"zINSTREAM\0")
        .await
        .map_err(|e| format!("writing to clamd: {e}"))?;
    let mut chunk = vec![0u8; 64 * 1024];
    loop {
        let n = file
            .read(&mut chunk)
            .await
            .map_err(|e| format!("reading the spooled message: {e}"))?;
        let length = u32::try_from(n).unwrap_or(0).to_be_bytes();
        let sent = async {
            stream.write_all(&length).await?;
            stream.write_all(&chunk[..n]).await
        };
        // clamd closes the stream when the message passes its StreamMaxLength: its answer
        // says so, read below.
        if sent.await.is_err() || n == 0 {
            break;
        }
    }
    let mut answer = Vec::new();
    let mut buf = [0u8; 512];
    loop {
        match stream.read(&mut buf).await {
            Ok(0) => break,
            Ok(n) => {
                answer.extend_from_slice(&buf[..n]);
                if answer.contains(&0) || answer.len() > 4096 {
                    break;
                }
            }
            Err(e) => return Err(format!("reading clamd's answer: {e}")),
        }
    }
    let answer = String::from_utf8_lossy(&answer);
    let answer = answer.trim_end_matches(['\0', '\n']).trim();
    parse(answer)
}

/// clamd's answer line.
fn parse(answer: &str) -> Result<Verdict, String> {
    let body = answer.strip_prefix("stream:").unwrap_or(answer).trim();
    if body == "OK" {
        Ok(Verdict::Clean)
    } else if let Some(name) = body.strip_suffix(" FOUND") {
        let name: String = name.chars().filter(|c| !c.is_control()).take(200).collect();
        Ok(Verdict::Infected(name))
    } else if answer.is_empty() {
        Err("clamd closed the connection without a verdict".into())
    } else {
        Err(format!("clamd answered {answer:?}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clamd_answers_are_read() {
        assert_eq!(parse("stream: OK"), Ok(Verdict::Clean));
        assert_eq!(
            parse("stream: Eicar-Signature FOUND"),
            Ok(Verdict::Infected("Eicar-Signature".into()))
        );
        assert!(parse("INSTREAM size limit exceeded. ERROR").is_err());
        assert!(parse("").is_err());
    }
}
