//! LIST-EXTENDED (RFC 5258) and LIST-STATUS (RFC 5819), both part of IMAP4rev2: selection
//! options (`LIST (SUBSCRIBED) "" "*"`), several patterns, and return options (`RETURN
//! (SUBSCRIBED CHILDREN SPECIAL-USE STATUS (MESSAGES UNSEEN))`). imap-codec parses only the
//! basic LIST, so an extended one is read here; a basic one is left to imap-codec.
//!
//! Names and patterns are atoms or quoted strings. A literal in an extended LIST is not read
//! here (the command falls through to imap-codec, which refuses it): no client sends folder
//! patterns as literals.

/// An extended LIST, as parsed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ExtendedList {
    pub tag: String,
    /// Selection SUBSCRIBED: subscribed names, existing or not.
    pub subscribed: bool,
    /// Selection RECURSIVEMATCH: also parents of matches (with CHILDINFO).
    pub recursive_match: bool,
    /// Selection SPECIAL-USE (RFC 6154): only folders with a special use.
    pub special_use: bool,
    pub reference: String,
    pub patterns: Vec<String>,
    /// Return SUBSCRIBED: `\Subscribed` on subscribed names.
    pub return_subscribed: bool,
    /// Return STATUS (RFC 5819): these items for every selectable name listed.
    pub status: Option<Vec<String>>,
}

/// What [`parse`] made of a command.
#[derive(Debug, PartialEq, Eq)]
pub enum Parsed {
    /// Not a LIST, or a basic one: imap-codec's.
    Basic,
    Extended(ExtendedList),
    /// An extended LIST this server refuses: the tag and why.
    Bad(String, String),
}

/// Items RETURN (STATUS ...) may ask for: what STATUS answers.
pub const STATUS_ITEMS: [&str; 8] = [
    "MESSAGES",
    "UIDNEXT",
    "UIDVALIDITY",
    "UNSEEN",
    "DELETED",
    "SIZE",
    "RECENT",
    "HIGHESTMODSEQ",
];

/// A cursor over one command line.
struct Line<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl<'a> Line<'a> {
    fn eat(&mut self, word: &[u8]) -> bool {
        let end = self.at + word.len();
        let found = self
            .bytes
            .get(self.at..end)
            .is_some_and(|w| w.eq_ignore_ascii_case(word));
        if found {
            self.at = end;
        }
        found
    }

    fn peek(&self) -> Option<u8> {
        self.bytes.get(self.at).copied()
    }

    /// An atom or `list-mailbox` token (which may hold `%`, `*` and `]`), or a quoted string.
    fn string(&mut self) -> Option<String> {
        if self.peek() == Some(b'"') {
            self.at += 1;
            let mut out = Vec::new();
            loop {
                match self.peek()? {
                    b'"' => {
                        self.at += 1;
                        return String::from_utf8(out).ok();
                    }
                    b'\\' => {
                        let escaped = *self.bytes.get(self.at + 1)?;
                        if escaped != b'"' && escaped != b'\\' {
                            return None;
                        }
                        out.push(escaped);
                        self.at += 2;
                    }
                    b'\r' | b'\n' => return None,
                    c => {
                        out.push(c);
                        self.at += 1;
                    }
                }
            }
        }
        let start = self.at;
        while let Some(c) = self.peek() {
            if c <= b' ' || c >= 0x7f || matches!(c, b'(' | b')' | b'{' | b'"' | b'\\') {
                break;
            }
            self.at += 1;
        }
        (self.at > start).then(|| String::from_utf8_lossy(&self.bytes[start..self.at]).into_owned())
    }

    /// `(` words `)`, upper-cased; a list inside (one level, as STATUS's items) is returned as
    /// one word starting with `(`. No recursion: a line of `(((...` is refused, not followed.
    fn options(&mut self) -> Option<Vec<String>> {
        if !self.eat(b"(") {
            return None;
        }
        let mut out = Vec::new();
        let mut inner: Option<Vec<String>> = None;
        loop {
            match (self.peek()?, inner.as_mut()) {
                (b')', None) => {
                    self.at += 1;
                    return Some(out);
                }
                (b')', Some(_)) => {
                    self.at += 1;
                    let words = inner.take().unwrap_or_default();
                    out.push(format!("({})", words.join(" ")));
                }
                (b'(', None) => {
                    self.at += 1;
                    inner = Some(Vec::new());
                }
                (b'(', Some(_)) => return None,
                (b' ', _) => self.at += 1,
                (_, Some(words)) => words.push(self.string()?.to_ascii_uppercase()),
                (_, None) => out.push(self.string()?.to_ascii_uppercase()),
            }
        }
    }
}

/// Reads `tag LIST [(selection)] reference (pattern | (patterns)) [RETURN (options)]`.
pub fn parse(message: &[u8]) -> Parsed {
    let Some(tag_end) = message.iter().position(|b| *b == b' ') else {
        return Parsed::Basic;
    };
    let tag = String::from_utf8_lossy(&message[..tag_end]).into_owned();
    let mut line = Line {
        bytes: message,
        at: tag_end + 1,
    };
    if !line.eat(b"LIST ") {
        return Parsed::Basic;
    }
    let bad = |why: &str| Parsed::Bad(tag.clone(), why.to_string());
    let mut list = ExtendedList {
        tag: tag.clone(),
        ..ExtendedList::default()
    };
    let mut extended = false;
    if line.peek() == Some(b'(') {
        extended = true;
        let Some(options) = line.options() else {
            return bad("malformed LIST selection options");
        };
        for option in options {
            match option.as_str() {
                "SUBSCRIBED" => list.subscribed = true,
                "RECURSIVEMATCH" => list.recursive_match = true,
                "SPECIAL-USE" => list.special_use = true,
                // REMOTE: no other servers here, so nothing changes.
                "REMOTE" => {}
                other => return bad(&format!("unknown LIST selection option {other}")),
            }
        }
        // RFC 5258 s3: RECURSIVEMATCH alone is an error.
        if list.recursive_match && !list.subscribed {
            return bad("RECURSIVEMATCH needs another selection option");
        }
        if !line.eat(b" ") {
            return bad("malformed LIST");
        }
    }
    // A literal: imap-codec's (and refused there if it is extended).
    if line.peek() == Some(b'{') {
        return Parsed::Basic;
    }
    let Some(reference) = line.string() else {
        return if extended {
            bad("malformed LIST reference")
        } else {
            Parsed::Basic
        };
    };
    list.reference = reference;
    if !line.eat(b" ") {
        return if extended {
            bad("malformed LIST")
        } else {
            Parsed::Basic
        };
    }
    if line.peek() == Some(b'(') {
        extended = true;
        line.at += 1;
        loop {
            match line.peek() {
                Some(b')') => {
                    line.at += 1;
                    break;
                }
                Some(b' ') => line.at += 1,
                Some(_) => match line.string() {
                    Some(p) => list.patterns.push(p),
                    None => return bad("malformed LIST pattern"),
                },
                None => return bad("unclosed LIST patterns"),
            }
        }
        if list.patterns.is_empty() {
            return bad("LIST needs a pattern");
        }
    } else {
        match line.string() {
            Some(p) => list.patterns.push(p),
            None if extended => return bad("malformed LIST pattern"),
            None => return Parsed::Basic,
        }
    }
    if line.eat(b" RETURN ") {
        extended = true;
        let Some(options) = line.options() else {
            return bad("malformed LIST return options");
        };
        let mut options = options.into_iter().peekable();
        while let Some(option) = options.next() {
            match option.as_str() {
                "SUBSCRIBED" => list.return_subscribed = true,
                // Both are always returned.
                "CHILDREN" | "SPECIAL-USE" => {}
                "STATUS" if list.status.is_some() => {
                    return bad("RETURN STATUS given twice");
                }
                "STATUS" => {
                    let Some(items) = options.next().and_then(|i| {
                        i.strip_prefix('(')
                            .and_then(|i| i.strip_suffix(')'))
                            .map(str::to_string)
                    }) else {
                        return bad("RETURN STATUS needs a list of items");
                    };
                    let items: Vec<String> = items.split_whitespace().map(String::from).collect();
                    if items.is_empty() {
                        return bad("RETURN STATUS needs at least one item");
                    }
                    if let Some(unknown) =
                        items.iter().find(|i| !STATUS_ITEMS.contains(&i.as_str()))
                    {
                        return bad(&format!("unknown STATUS item {unknown}"));
                    }
                    list.status = Some(items);
                }
                other => return bad(&format!("unknown LIST return option {other}")),
            }
        }
    }
    if !extended {
        return Parsed::Basic;
    }
    if message[line.at..] != *b"\r\n" && message[line.at..] != *b"\n" {
        return bad("unexpected text after LIST");
    }
    Parsed::Extended(list)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn extended(line: &str) -> ExtendedList {
        match parse(line.as_bytes()) {
            Parsed::Extended(list) => list,
            other => panic!("{line:?}: {other:?}"),
        }
    }

    #[test]
    fn basic_lists_are_left_to_imap_codec() {
        for line in [
            "a LIST \"\" \"*\"\r\n",
            "a LIST \"\" %\r\n",
            "a LIST INBOX/ *\r\n",
            "a LSUB \"\" \"*\"\r\n",
            "a SELECT INBOX\r\n",
            "a LIST {3}\r\nabc \"*\"\r\n",
        ] {
            assert_eq!(parse(line.as_bytes()), Parsed::Basic, "{line:?}");
        }
    }

    #[test]
    fn selection_patterns_and_return_options_are_read() {
        let list = extended("t1 LIST (SUBSCRIBED RECURSIVEMATCH) \"\" (\"INBOX\" Sent/%)\r\n");
        assert!(list.subscribed && list.recursive_match);
        assert_eq!(list.patterns, ["INBOX", "Sent/%"]);
        let list = extended(
            "t2 list \"\" \"*\" return (subscribed children special-use status (MESSAGES UNSEEN))\r\n",
        );
        assert_eq!(list.tag, "t2");
        assert!(list.return_subscribed && !list.subscribed);
        assert_eq!(
            list.status,
            Some(vec!["MESSAGES".to_string(), "UNSEEN".to_string()])
        );
        let list = extended("t3 LIST (SPECIAL-USE) \"\" \"a \\\"b\\\"\"\r\n");
        assert!(list.special_use);
        assert_eq!(list.patterns, ["a \"b\""]);
    }

    #[test]
    fn what_it_does_not_offer_is_refused() {
        for line in [
            "a LIST (RECURSIVEMATCH) \"\" \"*\"\r\n",
            "a LIST (FOO) \"\" \"*\"\r\n",
            "a LIST \"\" \"*\" RETURN (BAR)\r\n",
            "a LIST \"\" \"*\" RETURN (STATUS (MESSAGES NOPE))\r\n",
            "a LIST \"\" \"*\" RETURN (STATUS)\r\n",
            "a LIST \"\" \"*\" RETURN (STATUS ())\r\n",
            "a LIST \"\" \"*\" RETURN (STATUS (MESSAGES) STATUS (UNSEEN))\r\n",
            "a LIST \"\" ()\r\n",
            "a LIST (SUBSCRIBED \"\" \"*\"\r\n",
            "a LIST (SUBSCRIBED) \"\" \"*\" trailing\r\n",
        ] {
            assert!(
                matches!(parse(line.as_bytes()), Parsed::Bad(..)),
                "{line:?}"
            );
        }
    }
}
