//! Folder names in modified UTF-7 (RFC 3501 s5.1.3), the form IMAP4rev1 clients speak and the
//! form the store keeps (as Dovecot keeps Maildir++ names on disk); IMAP4rev2 sessions speak
//! UTF-8 (RFC 9051 s5.1) and their names are converted at the session's edge.
//!
//! Printable ASCII stands for itself (`&` is `&-`); anything else is UTF-16 in base64 with `,`
//! for `/`, between `&` and `-`. [`decode`] accepts only the one shortest spelling of a name,
//! so two spellings never name one folder.
use base64::{
    Engine,
    alphabet::IMAP_MUTF7,
    engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig},
};

const BASE64: GeneralPurpose = GeneralPurpose::new(
    &IMAP_MUTF7,
    GeneralPurposeConfig::new()
        .with_encode_padding(false)
        .with_decode_padding_mode(DecodePaddingMode::RequireNone),
);

fn printable(c: char) -> bool {
    (' '..='~').contains(&c)
}

/// A UTF-8 name in modified UTF-7.
pub fn encode(name: &str) -> String {
    let mut out = String::with_capacity(name.len());
    let mut run: Vec<u8> = Vec::new();
    let shift = |run: &mut Vec<u8>, out: &mut String| {
        if !run.is_empty() {
            out.push('&');
            out.push_str(&BASE64.encode(&run));
            out.push('-');
            run.clear();
        }
    };
    for c in name.chars() {
        if printable(c) {
            shift(&mut run, &mut out);
            if c == '&' {
                out.push_str("&-");
            } else {
                out.push(c);
            }
        } else {
            let mut units = [0u16; 2];
            for unit in c.encode_utf16(&mut units) {
                run.extend_from_slice(&unit.to_be_bytes());
            }
        }
    }
    shift(&mut run, &mut out);
    out
}

/// A modified UTF-7 name in UTF-8; `None` when it is not modified UTF-7 as RFC 3501 spells it
/// (8-bit bytes, an unterminated or malformed shift, printable ASCII shifted, two shifts in a
/// row).
pub fn decode(name: &str) -> Option<String> {
    let mut out = String::with_capacity(name.len());
    let mut rest = name;
    let mut shifted_last = false;
    while let Some(at) = rest.find('&') {
        let (plain, tail) = rest.split_at(at);
        if !plain.chars().all(printable) {
            return None;
        }
        out.push_str(plain);
        let tail = &tail[1..];
        let end = tail.find('-')?;
        let (encoded, after) = tail.split_at(end);
        rest = &after[1..];
        if encoded.is_empty() {
            out.push('&');
            shifted_last = false;
            continue;
        }
        // A shift right after a shift is a longer spelling of one shift.
        if plain.is_empty() && shifted_last {
            return None;
        }
        let bytes = BASE64.decode(encoded).ok()?;
        if bytes.len() % 2 != 0 {
            return None;
        }
        let units: Vec<u16> = bytes
            .chunks_exact(2)
            .map(|pair| u16::from_be_bytes([pair[0], pair[1]]))
            .collect();
        let text = String::from_utf16(&units).ok()?;
        if text.chars().any(printable) {
            return None;
        }
        out.push_str(&text);
        shifted_last = true;
    }
    if !rest.chars().all(printable) {
        return None;
    }
    out.push_str(rest);
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::{decode, encode};

    #[test]
    fn the_rfc_example_both_ways() {
        // RFC 3501 s5.1.3.
        let utf8 = "~peter/mail/\u{53f0}\u{5317}/\u{65e5}\u{672c}\u{8a9e}";
        assert_eq!(encode(utf8), "~peter/mail/&U,BTFw-/&ZeVnLIqe-");
        assert_eq!(
            decode("~peter/mail/&U,BTFw-/&ZeVnLIqe-").as_deref(),
            Some(utf8)
        );
    }

    #[test]
    fn ampersands_accents_and_astral_characters_round_trip() {
        for name in [
            "Tom & Jerry",
            "Gr\u{fc}\u{df}e",
            "\u{1f4e7} Mail",
            "a&b&-c",
            "",
            "&",
        ] {
            let encoded = encode(name);
            assert!(
                encoded.chars().all(|c| (' '..='~').contains(&c)),
                "{encoded}"
            );
            assert_eq!(decode(&encoded).as_deref(), Some(name), "{encoded}");
        }
        assert_eq!(encode("Gr\u{fc}\u{df}e"), "Gr&APwA3w-e");
        assert_eq!(encode("Tom & Jerry"), "Tom &- Jerry");
    }

    #[test]
    fn only_the_one_spelling_is_accepted() {
        for bad in [
            "Gr\u{fc}\u{df}e", // 8-bit: UTF-8 where modified UTF-7 belongs
            "&APw",            // unterminated
            "&APwA3w-&AOQ-",   // two shifts in a row (one is "&APwA3wDk-")
            "&AGE-",           // "a" shifted
            "&APx-",           // bits left over
            "&AP-",            // half a UTF-16 unit
            "&2D0-",           // a lone surrogate
            "&A/w-",           // '/' is base64's, not modified base64's
        ] {
            assert_eq!(decode(bad), None, "{bad:?}");
        }
        assert_eq!(decode("&APwA3wDk-").as_deref(), Some("\u{fc}\u{df}\u{e4}"));
    }
}
