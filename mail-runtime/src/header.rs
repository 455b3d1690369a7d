//! Where a message's header ends: at its first empty line, with CRLF or bare LF line endings.
//! One answer for everything that reads a header block (SMTP's checks, delivery reports, IMAP's
//! opaque parts), so they never disagree on where the header stops.

/// `(header, body)`: the header's length, the line break of its last field included, and where
/// the body starts (after the empty line); `None` when the message has no empty line.
pub fn split(bytes: &[u8]) -> Option<(usize, usize)> {
    if bytes.starts_with(b"\r\n") {
        return Some((0, 2));
    }
    if bytes.starts_with(b"\n") {
        return Some((0, 1));
    }
    (0..bytes.len()).find_map(|i| {
        let rest = &bytes[i..];
        if rest.starts_with(b"\r\n\r\n") {
            Some((i + 2, i + 4))
        } else if rest.starts_with(b"\n\n") {
            Some((i + 1, i + 2))
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
    }
}
