//! Where a message's header ends: at its first empty line, with CRLF or bare LF line endings.
//! One answer for everything that reads a header block (SMTP's checks, delivery reports, IMAP's
//! opaque parts), so they never disagree on where the header stops.

/// `(header, body)`: the header's length, the line break of its last field included, and where
/// the body starts (after the empty line); `None` when the message has no empty line.
pub fn split(bytes: &[u8]) -> Option<(usize, usize)> {
    split_from(bytes, 0)
}

/// [`split`] of a header read in pieces: the empty line is looked for from `from` on (3 bytes
/// before the piece just read, where it may have begun), so the part already looked at is not
/// scanned again.
pub fn split_from(bytes: &[u8], from: usize) -> Option<(usize, usize)> {
    if from == 0 {
        if bytes.starts_with(b"\r\n") {
            return Some((0, 2));
        }
        if bytes.starts_with(b"\n") {
            return Some((0, 1));
        }
    }
    let rest = bytes.get(from..)?;
    memchr::memchr_iter(b'\n', rest).find_map(|p| {
        let p = from + p;
        let next = &bytes[p + 1..];
        if next.starts_with(b"\n") {
            Some((p + 1, p + 2))
        } else if next.starts_with(b"\r\n") && p > 0 && bytes[p - 1] == b'\r' {
            Some((p + 1, p + 3))
        } else {
            None
        }
    })
}

#[cfg(test)]
mod tests {
    use super::split;

    #[test]
    fn the_first_empty_line_ends_the_header() {
        assert_eq!(
            split(b"A: 1\r\nB: 2\r\n\r\nbody\r\n\r\nmore"),
            Some((12, 14))
        );
        assert_eq!(split(b"A: 1\nB: 2\n\nbody"), Some((10, 11)));
        assert_eq!(split(b"\r\nonly a body"), Some((0, 2)));
        assert_eq!(split(b"\nonly a body"), Some((0, 1)));
        assert_eq!(split(b"A: no body at all\r\n"), None);
        // A bare LF before a CRLF is no empty line; LF LF is.
        assert_eq!(split(b"A: 1\n\r\nB: 2\r\n\n"), Some((13, 14)));
        assert_eq!(split(b"A: 1\r\n\nbody"), Some((6, 7)));
    }

    #[test]
    fn a_header_read_in_pieces_ends_where_it_would_at_once() {
        for message in [
            &b"Subject: one\r\nTo: two\r\n\r\nbody\r\n"[..],
            b"A: 1\nB: 2\n\nbody",
        ] {
            for cut in 0..=message.len() {
                // Read up to `cut` without finding the end, then the rest.
                if split(&message[..cut]).is_none() {
                    let from = cut.saturating_sub(3);
                    assert_eq!(
                        super::split_from(message, from),
                        split(message),
                        "cut at {cut}"
                    );
                }
            }
        }
    }
}
