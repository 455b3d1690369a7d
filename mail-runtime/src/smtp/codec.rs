//! Framing of what an SMTP client sends: command lines, the DATA body and BDAT chunks.
//!
//! Command lines must end in CRLF and are at most [`MAX_LINE`] bytes; a longer line is
//! reported once and skipped to its end. The DATA body ends only at `CRLF . CRLF`; a bare LF or
//! a bare CR anywhere in it marks the message as refused (the 2023 SMTP smuggling attacks
//! depend on servers that end DATA, or split lines, at something else). Lines starting with a
//! dot are unstuffed. Nothing here allocates more than the bytes it is given.

/// Longest command line, CRLF included (RFC 5321 says 512; AUTH responses and long
/// parameter lists need more).
pub const MAX_LINE: usize = 4096;

/// One framed piece of input.
#[derive(Debug, PartialEq, Eq)]
pub enum Line {
    /// A complete command line, CRLF removed.
    Command(Vec<u8>),
    /// A line longer than [`MAX_LINE`] (already skipped).
    TooLong,
    /// A line ending in a bare LF.
    BareLf,
}

/// Takes the next command line from `buf`, or `None` when it holds no complete line yet.
/// `skipping` is the caller's memory that an over-long line is being skipped.
pub fn take_line(buf: &mut Vec<u8>, skipping: &mut bool) -> Option<Line> {
    match memchr(b'\n', buf) {
        Some(pos) => {
            let line: Vec<u8> = buf.drain(..=pos).collect();
            if std::mem::take(skipping) || line.len() > MAX_LINE {
                return Some(Line::TooLong);
            }
            if line.len() < 2 || line[line.len() - 2] != b'\r' {
                return Some(Line::BareLf);
            }
            Some(Line::Command(line[..line.len() - 2].to_vec()))
        }
        None if buf.len() > MAX_LINE => {
            buf.clear();
            if *skipping {
                None
            } else {
                *skipping = true;
                None
            }
        }
        None => None,
    }
}

fn memchr(needle: u8, haystack: &[u8]) -> Option<usize> {
    haystack.iter().position(|&b| b == needle)
}

/// What the DATA receiver found in a slice of input.
#[derive(Debug, PartialEq, Eq)]
pub enum DataEvent {
    /// Message bytes (unstuffed, CRLF line ends), to be spooled.
    Bytes(Vec<u8>),
    /// The end of the data (`CRLF . CRLF`); `consumed` bytes of the input belonged to it.
    End,
}

/// The DATA body state machine.
#[derive(Debug, Default)]
pub struct DataReceiver {
    /// Position in the current line: true at the start of a line.
    line_start: bool,
    /// A CR was the last byte seen.
    after_cr: bool,
    /// The current line began with a dot (removed); a following CRLF ends the data.
    dot_line: bool,
    /// Bytes of the message so far (after unstuffing).
    pub size: u64,
    /// A bare CR or LF was seen: the message must be refused.
    pub bare_line_end: bool,
}

impl DataReceiver {
    /// A receiver at the start of the body.
    pub fn new() -> Self {
        Self {
            line_start: true,
            ..Self::default()
        }
    }

    /// Consumes input up to the end of the data. Returns the events and how many bytes of
    /// `input` were used (the rest is the next command, for a pipelining client).
    pub fn feed(&mut self, input: &[u8]) -> (Vec<DataEvent>, usize) {
        let mut out = Vec::with_capacity(input.len());
        let mut events = Vec::new();
        let mut i = 0;
        while i < input.len() {
            let b = input[i];
            i += 1;
            if self.after_cr {
                self.after_cr = false;
                if b == b'\n' {
                    if self.dot_line {
                        // CRLF . CRLF: the end. The CRLF before the dot belongs to the message.
                        if !out.is_empty() {
                            self.size += out.len() as u64;
                            events.push(DataEvent::Bytes(std::mem::take(&mut out)));
                        }
                        events.push(DataEvent::End);
                        return (events, i);
                    }
                    out.extend_from_slice(b"\r\n");
                    self.line_start = true;
                    continue;
                }
                // A CR not followed by LF: not a line end, so no dot after it starts a line.
                self.bare_line_end = true;
                out.push(b'\r');
                self.line_start = false;
                self.dot_line = false;
            }
            match b {
                b'\r' => {
                    self.after_cr = true;
                }
                b'\n' => {
                    // A bare LF is not a line end either: `<LF>.<CRLF>` must not end the data.
                    self.bare_line_end = true;
                    out.push(b'\n');
                    self.line_start = false;
                    self.dot_line = false;
                }
                b'.' if self.line_start => {
                    // Dot-stuffing: a leading dot is removed; a lone dot line ends the data.
                    self.line_start = false;
                    self.dot_line = true;
                }
                _ => {
                    if self.dot_line {
                        // ".x": stuffed text, not the end.
                        self.dot_line = false;
                    }
                    self.line_start = false;
                    out.push(b);
                }
            }
            if b != b'.' && b != b'\r' {
                self.dot_line = false;
            }
        }
        if !out.is_empty() {
            self.size += out.len() as u64;
            events.push(DataEvent::Bytes(out));
        }
        (events, i)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn receive(chunks: &[&[u8]]) -> (Vec<u8>, bool, bool, Vec<u8>) {
        let mut r = DataReceiver::new();
        let mut body = Vec::new();
        let mut ended = false;
        let mut rest = Vec::new();
        for chunk in chunks {
            if ended {
                rest.extend_from_slice(chunk);
                continue;
            }
            let (events, used) = r.feed(chunk);
            for e in events {
                match e {
                    DataEvent::Bytes(b) => body.extend(b),
                    DataEvent::End => ended = true,
                }
            }
            rest.extend_from_slice(&chunk[used..]);
        }
        (body, ended, r.bare_line_end, rest)
    }

    #[test]
    fn crlf_dot_crlf_ends_and_the_rest_is_left() {
        let (body, ended, bare, rest) = receive(&[b"Subject: x\r\n\r\nhello\r\n.\r\nQUIT\r\n"]);
        assert_eq!(body, b"Subject: x\r\n\r\nhello\r\n");
        assert!(ended && !bare);
        assert_eq!(rest, b"QUIT\r\n");
    }

    #[test]
    fn the_end_is_found_across_any_split() {
        let input = b"a\r\n..b\r\n.\r\n";
        for split in 1..input.len() {
            let (body, ended, bare, rest) = receive(&[&input[..split], &input[split..]]);
            assert_eq!(body, b"a\r\n.b\r\n", "split at {split}");
            assert!(ended && !bare && rest.is_empty(), "split at {split}");
        }
    }

    #[test]
    fn smuggling_sequences_do_not_end_the_data_and_mark_it() {
        for trick in [
            &b"\n.\n"[..],
            b"\r.\r",
            b"\n.\r\n",
            b"\r\n.\n",
            b"\r.\r\n",
            b"\r\n\r.\r\n",
            b"\r\n\n.\r\n",
        ] {
            let mut input = b"x".to_vec();
            input.extend_from_slice(trick);
            input.extend_from_slice(b"MAIL FROM:<evil@example.net>\r\n");
            let (_, ended, bare, _) = receive(&[&input]);
            assert!(!ended, "{trick:?} ended the data");
            assert!(bare, "{trick:?} was not flagged");
        }
    }

    #[test]
    fn lines_are_bounded() {
        let mut skipping = false;
        let mut buf = vec![b'A'; MAX_LINE + 10];
        assert_eq!(take_line(&mut buf, &mut skipping), None);
        assert!(buf.is_empty() && skipping);
        buf.extend_from_slice(b"AAAA\r\nNOOP\r\n");
        assert_eq!(take_line(&mut buf, &mut skipping), Some(Line::TooLong));
        assert_eq!(
            take_line(&mut buf, &mut skipping),
            Some(Line::Command(b"NOOP".to_vec()))
        );
        buf.extend_from_slice(b"NOOP\n");
        assert_eq!(take_line(&mut buf, &mut skipping), Some(Line::BareLf));
    }
}
