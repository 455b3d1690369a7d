//! rspamd, the content scanner, over its HTTP protocol: the message is posted to `/checkv2`
//! with the envelope (client address, HELO, sender, recipients, logged-in user) in request
//! headers, and rspamd answers with an action and a score.
use std::time::Duration;

use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;

/// The actions rspamd knows.
const ACTIONS: &[&str] = &[
    "no action",
    "greylist",
    "add header",
    "rewrite subject",
    "soft reject",
    "reject",
    "discard",
];

/// What rspamd decided.
#[derive(Debug, Clone, PartialEq)]
pub struct Checked {
    /// `no action`, `greylist`, `add header`, `rewrite subject`, `soft reject` or `reject`.
    pub action: String,
    pub score: f64,
    pub required: f64,
    /// The symbols that matched, by name.
    pub symbols: Vec<String>,
    /// The text rspamd suggests for an SMTP refusal.
    pub message: Option<String>,
    /// The subject rspamd suggests for `rewrite subject`.
    pub subject: Option<String>,
}

impl Checked {
    /// Whether the message is spam to be quarantined (rspamd would add a header or rewrite its
    /// subject).
    pub fn is_spam(&self) -> bool {
        // `discard` too: a message is never dropped in silence here; Junk keeps it.
        matches!(
            self.action.as_str(),
            "add header" | "rewrite subject" | "discard"
        )
    }

    /// The header fields that tell the user why.
    pub fn header(&self) -> String {
        let mut symbols: Vec<&str> = self.symbols.iter().map(String::as_str).collect();
        symbols.sort_unstable();
        let mut symbols = symbols.join(", ");
        if symbols.len() > 900 {
            let mut end = 900;
            while !symbols.is_char_boundary(end) {
                end -= 1;
            }
            symbols.truncate(end);
        }
        format!(
            "X-Spam-Status: {}, score={:.2} required={:.2}\r\nX-Spam-Action: {}\r\nX-Spam-Symbols: {}\r\n",
            if self.is_spam() { "Yes" } else { "No" },
            self.score,
            self.required,
            self.action,
            symbols
        )
    }
}

/// Posts a message to `url` (`http://host:port`) `/checkv2`.
pub async fn check(
    url: &str,
    envelope: &[(&'static str, String)],
    message: Vec<u8>,
    timeout: Duration,
) -> Result<Checked, String> {
    tokio::time::timeout(timeout, post_check(url, envelope, message))
        .await
        .unwrap_or_else(|_| {
            Err(format!(
                "rspamd at {url} gave no verdict within {timeout:?}"
            ))
        })
}

/// Teaches rspamd's controller at `url` that a message is spam (or ham), as a user said by
/// moving it into (or out of) Junk. A message rspamd skips (too short to teach anything) is
/// not an error.
pub async fn learn(
    url: &str,
    password: Option<&str>,
    spam: bool,
    message: Vec<u8>,
    timeout: Duration,
) -> Result<(), String> {
    let path = if spam { "/learnspam" } else { "/learnham" };
    let headers: Vec<(&'static str, String)> = password
        .map(|p| vec![("Password", p.to_string())])
        .unwrap_or_default();
    let body = match tokio::time::timeout(timeout, post(url, path, &headers, message)).await {
        Ok(Ok(body)) => body,
        // 204: rspamd skipped it (too few words to teach anything).
        Ok(Err(e)) if e.starts_with("rspamd answered 204") => return Ok(()),
        Ok(Err(e)) => return Err(e),
        Err(_) => return Err(format!("rspamd at {url} did not answer within {timeout:?}")),
    };
    let json: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
    // rspamd answers an error for a message it learned before: that is learned all the same.
    if json["success"] == true
        || json["error"]
            .as_str()
            .is_some_and(|e| e.contains("already learned"))
    {
        Ok(())
    } else {
        Err(format!(
            "rspamd did not learn it: {}",
            String::from_utf8_lossy(&body[..body.len().min(200)])
        ))
    }
}

async fn post_check(
    url: &str,
    envelope: &[(&'static str, String)],
    message: Vec<u8>,
) -> Result<Checked, String> {
    parse(&post(url, "/checkv2", envelope, message).await?)
}

/// Posts a body to `path` of `url`, with these request headers; the answer's body.
async fn post(
    url: &str,
    path: &str,
    envelope: &[(&'static str, String)],
    message: Vec<u8>,
) -> Result<Bytes, String> {
    let authority = url
        .strip_prefix("http://")
        .map(|rest| rest.trim_end_matches('/'))
        .filter(|a| !a.is_empty() && !a.contains('/'))
        .ok_or_else(|| format!("{url:?} is not an http://host:port address"))?;
    let stream = tokio::net::TcpStream::connect(authority)
        .await
        .map_err(|e| format!("cannot reach rspamd at {authority}: {e}"))?;
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| format!("rspamd at {authority}: {e}"))?;
    let mut request = hyper::Request::post(path).header("Host", authority);
    for (name, value) in envelope {
        // What the client sent (a quoted sender, a HELO name) may hold control characters; an
        // HTTP header may not. They are replaced, so a client cannot make the check fail.
        let bytes: Vec<u8> = value
            .bytes()
            .map(|b| if b < 0x20 || b == 0x7f { b'?' } else { b })
            .collect();
        if let Ok(value) = hyper::header::HeaderValue::from_bytes(&bytes) {
            request = request.header(*name, value);
        }
    }
    let request = request
        .body(Full::new(Bytes::from(message)))
        .map_err(|e| format!("building the request to rspamd: {e}"))?;
    let exchange = async move {
        let response = sender
            .send_request(request)
            .await
            .map_err(|e| format!("rspamd at {authority}: {e}"))?;
        let status = response.status();
        // Bounded: an answer is a verdict, not a download.
        let body = http_body_util::Limited::new(response.into_body(), 1 << 20)
            .collect()
            .await
            .map_err(|e| format!("reading rspamd's answer: {e}"))?
            .to_bytes();
        Ok::<_, String>((status, body))
    };
    // The connection is driven here, not in a task of its own: when the caller gives up (its
    // timeout drops this future), the socket and the unsent message go with it. A task of its
    // own went on trying to write to an rspamd that had stopped reading, holding the message.
    let mut exchange = std::pin::pin!(exchange);
    let mut connection = std::pin::pin!(connection);
    let (status, body) = tokio::select! {
        answered = &mut exchange => answered?,
        ended = &mut connection => match ended {
            // Closed after answering: the answer is read to its end.
            Ok(()) => exchange.await?,
            Err(e) => return Err(format!("rspamd at {authority}: {e}")),
        },
    };
    if !status.is_success() && path == "/checkv2" || body.is_empty() {
        return Err(format!(
            "rspamd answered {status}: {}",
            String::from_utf8_lossy(&body[..body.len().min(200)])
        ));
    }
    Ok(body)
}

fn parse(body: &[u8]) -> Result<Checked, String> {
    let json: serde_json::Value =
        serde_json::from_slice(body).map_err(|e| format!("rspamd's answer is not JSON: {e}"))?;
    // Only the actions rspamd has: anything else is no verdict (and never reaches a header).
    let action = json["action"]
        .as_str()
        .filter(|a| ACTIONS.contains(a))
        .ok_or("rspamd's answer has no known action")?
        .to_string();
    // Symbol names as rspamd makes them; anything else is left out.
    let symbols = json["symbols"]
        .as_object()
        .map(|s| {
            s.keys()
                .filter(|k| {
                    !k.is_empty()
                        && k.len() <= 64
                        && k.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
                })
                .take(100)
                .cloned()
                .collect()
        })
        .unwrap_or_default();
    let number = |v: &serde_json::Value| {
        v.as_f64()
            .filter(|f| f.is_finite())
            .unwrap_or_default()
            .clamp(-10_000.0, 10_000.0)
    };
    let clean = |s: &str| -> String {
        s.chars()
            .map(|c| if c.is_control() { ' ' } else { c })
            .take(300)
            .collect()
    };
    Ok(Checked {
        action,
        score: number(&json["score"]),
        required: number(&json["required_score"]),
        symbols,
        message: json["messages"]["smtp_message"].as_str().map(clean),
        subject: json["subject"].as_str().map(clean),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An rspamd that takes the connection and stops reading: when the caller gives up, the
    /// runtime closes the connection and lets go of the message (an outside tester saw
    /// connections, and the messages they were writing, pile up without end).
    #[tokio::test]
    async fn a_request_given_up_closes_its_connection() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let server = listener.local_addr().expect("addr");
        let url = format!("http://{server}");
        let message = vec![b'x'; 8 << 20];
        let learning = tokio::spawn(async move {
            learn(&url, None, true, message, Duration::from_millis(500)).await
        });
        // Taken, and never read.
        let (_socket, client) = listener.accept().await.expect("accept");
        let given_up = learning.await.expect("task");
        assert!(given_up.is_err(), "{given_up:?}");
        tokio::time::sleep(Duration::from_millis(300)).await;
        // The runtime's end of the connection, as the kernel lists it: closed (FIN_WAIT1 with
        // the unsent rest of the message behind it), not ESTABLISHED.
        let hex = |a: std::net::SocketAddr| match a {
            std::net::SocketAddr::V4(v4) => format!(
                "{:08X}:{:04X}",
                u32::from_le_bytes(v4.ip().octets()),
                v4.port()
            ),
            std::net::SocketAddr::V6(_) => unreachable!("bound to 127.0.0.1"),
        };
        let (local, remote) = (hex(client), hex(server));
        let table = std::fs::read_to_string("/proc/net/tcp").expect("/proc/net/tcp");
        let state = table
            .lines()
            .map(|l| l.split_whitespace().collect::<Vec<_>>())
            .find(|f| f.len() > 3 && f[1] == local && f[2] == remote)
            .map(|f| f[3].to_string());
        assert_ne!(
            state.as_deref(),
            Some("01"),
            "the connection is still ESTABLISHED after the runtime gave up"
        );
    }

    #[test]
    fn answers_are_read_and_headers_say_why() {
        let checked = parse(
            br#"{"is_skipped":false,"score":11.4,"required_score":15.0,"action":"add header",
                 "symbols":{"B":{"score":1.0},"A":{"score":2.0}},"messages":{"smtp_message":"spam\r\nX: y"}}"#,
        )
        .expect("parsed");
        assert!(checked.is_spam());
        assert_eq!(checked.message.as_deref(), Some("spam  X: y"));
        assert_eq!(
            checked.header(),
            "X-Spam-Status: Yes, score=11.40 required=15.00\r\nX-Spam-Action: add header\r\nX-Spam-Symbols: A, B\r\n"
        );
        assert!(parse(b"not json").is_err());
        assert!(parse(b"{}").is_err());
        // An outside tester's rspamd: an action of its own, symbols with line breaks, a score
        // of 1e308. Nothing of it reaches the stored header.
        assert!(parse(br#"{"action":"add header\r\nX-Act-Inj: 1"}"#).is_err());
        let odd = parse(
            br#"{"action":"reject","score":1.79e308,"symbols":{"EVIL\r\nX-Injected: yes":{},"B\nX":{},"GOOD_ONE":{}}}"#,
        )
        .expect("parsed");
        assert_eq!(odd.symbols, ["GOOD_ONE"]);
        assert_eq!(odd.score, 10_000.0);
    }
}
