//! SMTP replies: a code, an enhanced status code (RFC 3463) and text.
use std::fmt::Write;

/// One reply, possibly multi-line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    /// The three-digit code.
    pub code: u16,
    /// The enhanced status code, such as `5.7.1`; none for 220/221 greetings and EHLO.
    pub status: Option<&'static str>,
    /// Text lines.
    pub lines: Vec<String>,
}

impl Reply {
    /// A one-line reply with an enhanced status code.
    pub fn new(code: u16, status: &'static str, text: impl Into<String>) -> Self {
        Self {
            code,
            status: Some(status),
            lines: vec![text.into()],
        }
    }

    /// A one-line reply without an enhanced status code.
    pub fn plain(code: u16, text: impl Into<String>) -> Self {
        Self {
            code,
            status: None,
            lines: vec![text.into()],
        }
    }

    /// Whether the reply is a permanent or temporary failure.
    pub fn is_error(&self) -> bool {
        self.code >= 400
    }

    /// The bytes on the wire.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = String::new();
        let last = self.lines.len().saturating_sub(1);
        for (i, line) in self.lines.iter().enumerate() {
            let sep = if i == last { ' ' } else { '-' };
            // Text never carries CR or LF into the reply (it may echo client input).
            let clean: String = line.chars().filter(|c| *c != '\r' && *c != '\n').collect();
            match self.status {
                Some(status) => {
                    let _ = write!(out, "{}{sep}{status} {clean}\r\n", self.code);
                }
                None => {
                    let _ = write!(out, "{}{sep}{clean}\r\n", self.code);
                }
            }
        }
        if self.lines.is_empty() {
            let _ = write!(out, "{}\r\n", self.code);
        }
        out.into_bytes()
    }
}
