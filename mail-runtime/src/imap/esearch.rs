//! `SEARCH RETURN (...)` (RFC 4731, part of IMAP4rev2): the result options MIN, MAX, ALL and
//! COUNT. imap-codec does not parse the RETURN clause, so it is lifted off the command line here
//! and the rest goes to imap-codec as a plain SEARCH. The clause sits before the criteria and
//! holds no literal, so cutting it out moves no literal the fragmentizer announced.

/// The result options of one SEARCH; none given (`RETURN ()`) means ALL.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ReturnOptions {
    pub min: bool,
    pub max: bool,
    pub all: bool,
    pub count: bool,
}

/// What [`lift`] found.
#[derive(Debug, PartialEq, Eq)]
pub enum Lifted {
    /// Not a SEARCH with RETURN: parse the command as it is.
    No,
    /// The command without its RETURN clause, and the options.
    Yes(Vec<u8>, ReturnOptions),
    /// A RETURN clause with an option this server does not offer (SAVE, PARTIAL, ...).
    Unsupported(String),
}

/// Longest RETURN clause looked at: four options and their spaces fit many times over.
const MAX_CLAUSE: usize = 256;

/// Splits `tag [UID] SEARCH RETURN (opts) rest` into `tag [UID] SEARCH rest` and the options.
pub fn lift(message: &[u8]) -> Lifted {
    let Some(tag_end) = message.iter().position(|b| *b == b' ') else {
        return Lifted::No;
    };
    let mut at = tag_end + 1;
    let word = |at: &mut usize, expected: &[u8]| -> bool {
        let end = *at + expected.len();
        let matches = message
            .get(*at..end)
            .is_some_and(|w| w.eq_ignore_ascii_case(expected));
        if matches {
            *at = end;
        }
        matches
    };
    let _uid = word(&mut at, b"UID ");
    if !word(&mut at, b"SEARCH RETURN (") {
        return Lifted::No;
    }
    let window = &message[at..message.len().min(at + MAX_CLAUSE)];
    let Some(close) = window.iter().position(|b| *b == b')') else {
        return Lifted::Unsupported("RETURN options too long or unclosed".into());
    };
    let mut options = ReturnOptions::default();
    for option in window[..close]
        .split(|b| *b == b' ')
        .filter(|o| !o.is_empty())
    {
        match option.to_ascii_uppercase().as_slice() {
            b"MIN" => options.min = true,
            b"MAX" => options.max = true,
            b"ALL" => options.all = true,
            b"COUNT" => options.count = true,
            other => {
                // Named back only if it is a plain word: a client's CR LF in the answer would
                // read as lines of the server's (a tagged completion it never sent).
                let word = other.len() <= 32
                    && other
                        .iter()
                        .all(|b| b.is_ascii_alphanumeric() || *b == b'-');
                return Lifted::Unsupported(if word {
                    format!(
                        "RETURN option {} is not supported",
                        String::from_utf8_lossy(other)
                    )
                } else {
                    "malformed RETURN options".to_string()
                });
            }
        }
    }
    if options == ReturnOptions::default() {
        options.all = true;
    }
    let clause_start = at - b"RETURN (".len();
    let rest = at + close + 1;
    let mut command = message[..clause_start].to_vec();
    // `SEARCH ` is kept; the space after `)` goes with the clause.
    command.extend_from_slice(
        message[rest..]
            .strip_prefix(b" ")
            .unwrap_or(&message[rest..]),
    );
    Lifted::Yes(command, options)
}

/// The `ESEARCH` data after `(TAG ...) [UID]`: what the options ask of `found` (ascending).
pub fn results(options: ReturnOptions, found: &[u32]) -> String {
    let mut out = String::new();
    if let (true, Some(min)) = (options.min, found.first()) {
        out.push_str(&format!(" MIN {min}"));
    }
    if let (true, Some(max)) = (options.max, found.last()) {
        out.push_str(&format!(" MAX {max}"));
    }
    if options.all && !found.is_empty() {
        out.push_str(&format!(" ALL {}", super::write::sequence_set(found)));
    }
    if options.count {
        out.push_str(&format!(" COUNT {}", found.len()));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn options(min: bool, max: bool, all: bool, count: bool) -> ReturnOptions {
        ReturnOptions {
            min,
            max,
            all,
            count,
        }
    }

    #[test]
    fn the_return_clause_is_lifted_and_the_rest_kept() {
        assert_eq!(
            lift(b"a SEARCH RETURN (MIN COUNT) UNSEEN\r\n"),
            Lifted::Yes(
                b"a SEARCH UNSEEN\r\n".to_vec(),
                options(true, false, false, true)
            )
        );
        assert_eq!(
            lift(b"b uid search return () SUBJECT {3}\r\nabc\r\n"),
            Lifted::Yes(
                b"b uid search SUBJECT {3}\r\nabc\r\n".to_vec(),
                options(false, false, true, false)
            )
        );
        assert_eq!(lift(b"c SEARCH UNSEEN\r\n"), Lifted::No);
        assert_eq!(lift(b"d FETCH 1 FLAGS\r\n"), Lifted::No);
        assert!(matches!(
            lift(b"e SEARCH RETURN (SAVE) ALL\r\n"),
            Lifted::Unsupported(_)
        ));
        // An outside review: a literal inside the clause echoed CR LF into the BAD text.
        let Lifted::Unsupported(why) = lift(b"g SEARCH RETURN (MIN {10+}\r\nX\r\n*\r\nA9) ALL\r\n")
        else {
            panic!("not refused");
        };
        assert!(!why.contains(['\r', '\n']), "{why:?}");
        let long = format!("f SEARCH RETURN ({} ALL\r\n", "MIN ".repeat(200));
        assert!(matches!(lift(long.as_bytes()), Lifted::Unsupported(_)));
    }

    #[test]
    fn results_hold_what_was_asked() {
        assert_eq!(
            results(options(true, true, true, true), &[2, 3, 4, 9]),
            " MIN 2 MAX 9 ALL 2:4,9 COUNT 4"
        );
        assert_eq!(results(options(true, true, true, true), &[]), " COUNT 0");
        assert_eq!(
            results(options(false, false, false, true), &[5]),
            " COUNT 1"
        );
    }
}
