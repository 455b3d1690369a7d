//! How IMAP values are written in responses: strings as quoted strings when they can be, as
//! literals when they cannot (RFC 9051 section 4.3), dates, flags and sequence sets.
use std::fmt::Write as _;

/// Appends a string: quoted when it is short printable ASCII, a literal otherwise.
pub fn string(out: &mut Vec<u8>, bytes: &[u8]) {
    let quotable = bytes.len() <= 1024 && bytes.iter().all(|b| (0x20..0x7f).contains(b));
    if quotable {
        out.push(b'"');
        for &b in bytes {
            if b == b'"' || b == b'\\' {
                out.push(b'\\');
            }
            out.push(b);
        }
        out.push(b'"');
    } else {
        literal(out, bytes);
    }
}

/// Appends a literal.
///
/// A literal may not hold NUL (RFC 9051 s4.3): a message stored with NULs (a binary APPEND) has
/// each written as 0x80, as Dovecot does, keeping every length and offset; BINARY answers send
/// the real bytes with [`literal8`].
pub fn literal(out: &mut Vec<u8>, bytes: &[u8]) {
    out.extend_from_slice(format!("{{{}}}\r\n", bytes.len()).as_bytes());
    if bytes.contains(&0) {
        out.extend(bytes.iter().map(|b| if *b == 0 { 0x80 } else { *b }));
    } else {
        out.extend_from_slice(bytes);
    }
}

/// Appends bytes for a BINARY answer: a literal8 (`~{n}`, RFC 3516) when they hold NUL, a plain
/// literal otherwise.
pub fn literal8(out: &mut Vec<u8>, bytes: &[u8]) {
    if bytes.contains(&0) {
        out.extend_from_slice(format!("~{{{}}}\r\n", bytes.len()).as_bytes());
        out.extend_from_slice(bytes);
    } else {
        literal(out, bytes);
    }
}

/// Appends a string, or NIL.
pub fn nstring(out: &mut Vec<u8>, bytes: Option<&[u8]>) {
    match bytes {
        Some(b) => string(out, b),
        None => out.extend_from_slice(b"NIL"),
    }
}

/// Maildir flag letters -> IMAP system flags.
pub const FLAG_LETTERS: [(char, &str); 5] = [
    ('R', "\\Answered"),
    ('F', "\\Flagged"),
    ('T', "\\Deleted"),
    ('S', "\\Seen"),
    ('D', "\\Draft"),
];

/// The flag list of a message, e.g. `(\Seen \Flagged $Junk)`: system flags by their letters,
/// keywords (`a` to `z`) through the folder's table.
pub fn flags(letters: &str, keywords: &[String]) -> String {
    session_flags(letters, keywords, false)
}

/// [`flags`] with the session flag `\Recent` when `recent` (IMAP4rev1 only).
pub fn session_flags(letters: &str, keywords: &[String], recent: bool) -> String {
    let mut names: Vec<&str> = FLAG_LETTERS
        .iter()
        .filter(|(l, _)| letters.contains(*l))
        .map(|(_, n)| *n)
        .collect();
    if recent {
        names.push("\\Recent");
    }
    names.extend(
        letters
            .bytes()
            .filter(u8::is_ascii_lowercase)
            .filter_map(|l| keywords.get(usize::from(l - b'a')))
            .filter(|k| !k.is_empty())
            .map(String::as_str),
    );
    format!("({})", names.join(" "))
}

/// The FLAGS of a folder: the system flags and its keywords.
pub fn folder_flags(keywords: &[String]) -> String {
    let mut names: Vec<&str> = FLAG_LETTERS.iter().map(|(_, n)| *n).collect();
    names.extend(
        keywords
            .iter()
            .filter(|k| !k.is_empty())
            .map(String::as_str),
    );
    format!("({})", names.join(" "))
}

/// `date-time` of RFC 9051: `"26-Nov-2026 11:14:37 +0000"`.
pub fn date_time(secs: i64) -> String {
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    let t =
        time::OffsetDateTime::from_unix_timestamp(secs).unwrap_or(time::OffsetDateTime::UNIX_EPOCH);
    format!(
        "\"{:02}-{}-{:04} {:02}:{:02}:{:02} +0000\"",
        t.day(),
        MONTHS[usize::from(u8::from(t.month())) - 1],
        t.year(),
        t.hour(),
        t.minute(),
        t.second()
    )
}

/// A compact sequence set (`1:3,7`) of ascending numbers.
pub fn sequence_set(numbers: &[u32]) -> String {
    let mut runs: Vec<(u32, u32)> = Vec::new();
    for &n in numbers {
        match runs.last_mut() {
            Some(last) if last.1.checked_add(1) == Some(n) => last.1 = n,
            _ => runs.push((n, n)),
        }
    }
    range_set(&runs)
}

/// A sequence set from inclusive ranges, in their order (`1:3,7`).
pub fn range_set(ranges: &[(u32, u32)]) -> String {
    let mut out = String::new();
    for (start, end) in ranges {
        if !out.is_empty() {
            out.push(',');
        }
        if start == end {
            let _ = write!(out, "{start}");
        } else {
            let _ = write!(out, "{start}:{end}");
        }
    }
    out
}

/// Takes from `pending` everything up to and including the tagged response of `tag`, as text
/// with one `\n` after each line and literals inline; `None` (and `pending` untouched) until
/// all of it has arrived. The tests' way of reading answers, over a socket or from memory.
pub fn take_tagged(pending: &mut Vec<u8>, tag: &str) -> Option<String> {
    let mut out = String::new();
    let mut at = 0;
    loop {
        let end = at + pending[at..].windows(2).position(|w| w == b"\r\n")?;
        let line = String::from_utf8_lossy(&pending[at..end]).into_owned();
        at = end + 2;
        out.push_str(&line);
        out.push('\n');
        if let Some(n) = line
            .strip_suffix('}')
            .and_then(|l| l.rsplit_once('{'))
            .and_then(|(_, n)| n.parse::<usize>().ok())
        {
            let literal = pending.get(at..at + n)?;
            out.push_str(&String::from_utf8_lossy(literal));
            at += n;
            continue;
        }
        if line.starts_with(&format!("{tag} ")) {
            pending.drain(..at);
            return Some(out);
        }
    }
}

/// Whether `bytes` are well-formed IMAP responses, as imap-codec's parser (an implementation
/// we did not write) reads them: the tests' check of everything a session said. ESEARCH, which
/// imap-codec does not know, is skipped; a LIST line's RFC 5258 CHILDINFO item, which its
/// parser does not know either, must be exactly RFC 5258's spelling and the rest of the line
/// is parsed.
pub fn check_responses(bytes: &[u8]) -> Result<(), String> {
    use imap_codec::{ResponseCodec, decode::Decoder};
    const CHILDINFO: &[u8] = b" (\"CHILDINFO\" (\"SUBSCRIBED\"))\r\n";
    let mut rest = bytes;
    while !rest.is_empty() {
        let end = rest
            .windows(2)
            .position(|w| w == b"\r\n")
            .unwrap_or(rest.len());
        let line = &rest[..(end + 2).min(rest.len())];
        if rest.starts_with(b"+ ") || rest.starts_with(b"* ESEARCH") {
            rest = &rest[line.len()..];
            continue;
        }
        if rest.starts_with(b"* LIST ") && line.ends_with(CHILDINFO) {
            let mut basic = line[..line.len() - CHILDINFO.len()].to_vec();
            basic.extend_from_slice(b"\r\n");
            if let Err(err) = ResponseCodec::default().decode(&basic) {
                return Err(format!(
                    "imap-codec rejects a LIST response ({err:?}): {}",
                    String::from_utf8_lossy(line)
                ));
            }
            rest = &rest[line.len()..];
            continue;
        }
        match ResponseCodec::default().decode(rest) {
            Ok((remaining, _)) => rest = remaining,
            Err(err) => {
                let end = rest.len().min(300);
                return Err(format!(
                    "imap-codec rejects a response ({err:?}):\n{}",
                    String::from_utf8_lossy(&rest[..end])
                ));
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strings_are_quoted_or_literal() {
        let mut out = Vec::new();
        string(&mut out, b"say \"hi\"\\");
        assert_eq!(out, b"\"say \\\"hi\\\"\\\\\"");
        let mut out = Vec::new();
        string(&mut out, "caf\u{e9}\r\n".as_bytes());
        assert_eq!(out, b"{7}\r\ncaf\xc3\xa9\r\n");
    }

    #[test]
    fn sets_dates_and_flags() {
        assert_eq!(sequence_set(&[1, 2, 3, 7, 9, 10]), "1:3,7,9:10");
        assert_eq!(date_time(0), "\"01-Jan-1970 00:00:00 +0000\"");
        assert_eq!(flags("FS", &[]), "(\\Flagged \\Seen)");
        let keywords = ["$Junk".to_string(), String::new(), "work".to_string()];
        assert_eq!(flags("Sac", &keywords), "(\\Seen $Junk work)");
        assert_eq!(
            folder_flags(&keywords),
            "(\\Answered \\Flagged \\Deleted \\Seen \\Draft $Junk work)"
        );
    }
}
