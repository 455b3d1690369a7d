//! SEARCH keys evaluated against a message (RFC 9051 section 6.4.4). Keys on flags, sizes,
//! dates and sets need only the index; the others read the message once.
use imap_codec::imap_types::{search::SearchKey, sequence::SequenceSet};

use super::message;
use crate::store::MessageMeta;

/// One message as SEARCH sees it.
#[derive(Debug)]
pub struct Candidate<'a> {
    /// Sequence number.
    pub seq: u32,
    /// The index entry.
    pub meta: &'a MessageMeta,
    /// The largest sequence number and UID in the folder (for `*`).
    pub largest: (u32, u32),
    /// The raw message, when a key needs it.
    pub raw: Option<&'a [u8]>,
    /// The SEARCH's sequence sets, merged once for all messages.
    pub sets: &'a SetCache,
    /// The folder's keyword table (letter `a + n` is entry `n`).
    pub keywords: &'a [String],
    /// `\Recent` in this session.
    pub recent: bool,
    /// What the keys learn of the message's contents, once for all of them.
    pub contents: Contents<'a>,
}

/// One message's contents as SEARCH reads them, made once whatever the number of keys: every
/// TEXT or BODY key parsing and lowering a 24 MB message again cost 0.3 s a key, and a command
/// line holds thousands of keys.
#[derive(Debug, Default)]
pub struct Contents<'a> {
    parsed: std::cell::OnceCell<message::Parsed<'a>>,
    lowered: std::cell::OnceCell<Vec<u8>>,
    texts: std::cell::OnceCell<Vec<Vec<u8>>>,
}

/// Most keys that read a message's contents (text, headers, dates) in one SEARCH.
pub const MAX_CONTENT_KEYS: usize = 64;

/// How many keys of the tree read the message's contents.
pub fn content_keys(key: &SearchKey<'_>) -> usize {
    use SearchKey::*;
    match key {
        And(keys) => keys.as_ref().iter().map(content_keys).sum(),
        Not(k) => content_keys(k),
        Or(a, b) => content_keys(a) + content_keys(b),
        k => usize::from(needs_contents(k)),
    }
}

/// The sequence sets of one SEARCH, each merged into sorted ranges on first use: a set may list
/// thousands of ranges, and SEARCH asks about every message. Keyed by the set's address in the
/// command, which lives as long as the SEARCH.
#[derive(Debug, Default)]
pub struct SetCache(std::cell::RefCell<std::collections::HashMap<usize, Vec<(u32, u32)>>>);

impl SetCache {
    fn contains(&self, set: &SequenceSet, largest: u32, n: u32) -> bool {
        let key = std::ptr::from_ref(set) as usize;
        let mut sets = self.0.borrow_mut();
        let ranges = sets
            .entry(key)
            .or_insert_with(|| super::selected::ranges(set, largest));
        super::selected::contains(ranges, n)
    }
}

/// The header fields the tree reads, when header fields are all the contents it reads (no
/// BODY, TEXT or SENT* key): then SEARCH can be answered from [`HeaderCache`].
pub fn header_fields(key: &SearchKey<'_>) -> Option<Vec<String>> {
    use SearchKey::*;
    let mut names: Vec<String> = Vec::new();
    let mut pending = vec![key];
    while let Some(key) = pending.pop() {
        let name = match key {
            And(keys) => {
                pending.extend(keys.as_ref());
                continue;
            }
            Not(k) => {
                pending.push(k);
                continue;
            }
            Or(a, b) => {
                pending.extend([a.as_ref(), b.as_ref()]);
                continue;
            }
            Bcc(_) => "bcc".to_string(),
            Cc(_) => "cc".to_string(),
            From(_) => "from".to_string(),
            To(_) => "to".to_string(),
            Subject(_) => "subject".to_string(),
            Header(name, _) => String::from_utf8_lossy(name.as_ref()).to_ascii_lowercase(),
            Body(_) | Text(_) | SentBefore(_) | SentOn(_) | SentSince(_) => return None,
            _ => continue,
        };
        if !names.contains(&name) {
            names.push(name);
        }
    }
    names.sort_unstable();
    Some(names)
}

/// The header fields SEARCH asked for before, per message, so the next SEARCH on them reads no
/// message file (Dovecot keeps such fields in its index cache; a header SEARCH on 100,000
/// messages otherwise reads 100,000 files each time). A message's bytes never change under its
/// UID in one UIDVALIDITY, so an entry never goes stale; expunged ones wait for the next clear.
/// At most [`HeaderCache::LIMIT`] bytes: past it the cache starts over.
#[derive(Debug, Default)]
pub struct HeaderCache {
    entries: std::sync::Mutex<HeaderEntries>,
}

/// A message in the header cache: `(mailbox, folder, UIDVALIDITY, UID)`.
pub type HeaderKey = (String, String, u32, u32);

#[derive(Debug, Default)]
struct HeaderEntries {
    /// Per folder (`mailbox`, `folder`, UIDVALIDITY): the fields held and every message's block
    /// of them. One name list and one key per folder, not per message: 100,000 cached subjects
    /// cost their own bytes and little more.
    folders: std::collections::HashMap<(String, String, u32), FolderFields>,
    bytes: usize,
}

#[derive(Debug, Default)]
struct FolderFields {
    /// Every block in `blocks` holds these fields.
    names: Vec<String>,
    blocks: std::collections::HashMap<u32, Box<[u8]>>,
}

impl HeaderCache {
    /// Bytes of header blocks kept, all mailboxes together.
    pub const LIMIT: usize = 64 << 20;
    /// What one cached block costs besides its bytes (map slot, allocation).
    const OVERHEAD: usize = 48;

    /// A header block (`Name: value` lines, a blank line) holding at least `names` of the
    /// message, when cached.
    pub fn get(&self, key: &HeaderKey, names: &[String]) -> Option<Vec<u8>> {
        let entries = self.entries.lock().expect("header cache");
        let (mailbox, folder, validity, uid) = key;
        let fields = entries
            .folders
            .get(&(mailbox.clone(), folder.clone(), *validity))?;
        if !names.iter().all(|n| fields.names.contains(n)) {
            return None;
        }
        fields.blocks.get(uid).map(|b| b.to_vec())
    }

    /// Keeps the fields `names` of a message read from `raw`; returns their header block.
    /// Asking a folder for a field it did not hold starts its blocks over with that field too.
    pub fn put(&self, key: HeaderKey, names: &[String], raw: &[u8]) -> Vec<u8> {
        let mut entries = self.entries.lock().expect("header cache");
        let (mailbox, folder, validity, uid) = key;
        let fields = entries
            .folders
            .entry((mailbox, folder, validity))
            .or_default();
        let mut dropped = 0;
        if !names.iter().all(|n| fields.names.contains(n)) {
            for name in names {
                if !fields.names.contains(name) {
                    fields.names.push(name.clone());
                }
            }
            dropped = fields
                .blocks
                .drain()
                .map(|(_, b)| b.len() + Self::OVERHEAD)
                .sum();
        }
        let block = header_block(raw, &fields.names);
        let cost = block.len() + Self::OVERHEAD;
        let replaced = fields
            .blocks
            .insert(uid, block.clone().into_boxed_slice())
            .map_or(0, |b| b.len() + Self::OVERHEAD);
        entries.bytes = entries.bytes.saturating_sub(dropped + replaced) + cost;
        if entries.bytes > Self::LIMIT {
            entries.folders.clear();
            entries.bytes = 0;
        }
        block
    }
}

/// The fields `names` of a message's header as a header block of their own, unfolded, in the
/// order they come, ending with a blank line: what [`matches`] reads for header keys.
pub fn header_block(raw: &[u8], names: &[String]) -> Vec<u8> {
    let mut block = Vec::new();
    for name in names {
        any_header_value(raw, name, |value| {
            block.extend_from_slice(name.as_bytes());
            block.extend_from_slice(b": ");
            block.extend_from_slice(value);
            block.extend_from_slice(b"\r\n");
            false
        });
    }
    block.extend_from_slice(b"\r\n");
    block
}

/// Whether any key in the tree needs the message's contents.
pub fn needs_contents(key: &SearchKey<'_>) -> bool {
    use SearchKey::*;
    match key {
        And(keys) => keys.as_ref().iter().any(needs_contents),
        Not(k) => needs_contents(k),
        Or(a, b) => needs_contents(a) || needs_contents(b),
        Bcc(_) | Body(_) | Cc(_) | From(_) | Header(..) | Subject(_) | Text(_) | To(_)
        | SentBefore(_) | SentOn(_) | SentSince(_) => true,
        _ => false,
    }
}

/// Case-insensitive substring search in linear time (memchr's two-way search over lowered
/// copies): the naive comparison at every offset took 81 s for a 40 KB needle in a 400 KB body,
/// and a SEARCH can name a needle as long as its command.
fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    if needle.is_empty() {
        return true;
    }
    if !needle.is_ascii() {
        return contains_folded(haystack, needle);
    }
    if needle.len() > haystack.len() {
        return false;
    }
    contains_lowered(&haystack.to_ascii_lowercase(), needle)
}

/// [`contains`] in a haystack already lowered (ASCII letters only: what is not ASCII is as it
/// was, so a needle that is not ASCII is folded against it the same way).
fn contains_lowered(lowered: &[u8], needle: &[u8]) -> bool {
    if !needle.is_ascii() {
        return contains_folded(lowered, needle);
    }
    needle.is_empty()
        || (needle.len() <= lowered.len()
            && memchr::memmem::find(lowered, &needle.to_ascii_lowercase()).is_some())
}

/// A needle with letters beyond ASCII (`été`) is compared with Unicode's lower case on both
/// sides, as RFC 9051 s6.4.4 asks of a case-insensitive search (`Été` matches); the common ASCII
/// needle keeps the byte-wise path. Still linear: one lowered copy, one two-way search.
fn contains_folded(haystack: &[u8], needle: &[u8]) -> bool {
    let needle = String::from_utf8_lossy(needle).to_lowercase();
    let haystack = String::from_utf8_lossy(haystack).to_lowercase();
    memchr::memmem::find(haystack.as_bytes(), needle.as_bytes()).is_some()
}

fn day(secs: i64) -> i64 {
    secs.div_euclid(86_400)
}

fn date_day(date: &chrono::NaiveDate) -> i64 {
    let epoch = chrono::NaiveDate::from_ymd_opt(1970, 1, 1).unwrap_or_default();
    (*date - epoch).num_days()
}

/// Whether the message matches the key.
pub fn matches(key: &SearchKey<'_>, c: &Candidate<'_>) -> bool {
    use SearchKey::*;
    let flag = |l: char| c.meta.flags.contains(l);
    let keyword = |name: &str| {
        c.keywords
            .iter()
            .position(|k| k.eq_ignore_ascii_case(name))
            .and_then(crate::store::keyword_letter)
            .is_some_and(flag)
    };
    let header = |name: &str, value: &[u8]| -> bool {
        let Some(raw) = c.raw else { return false };
        let mut encoded = false;
        let found = any_header_value(raw, name, |v| {
            encoded |= contains(v, b"=?");
            contains(v, value)
        });
        if found {
            return true;
        }
        // Encoded words (RFC 2047) are compared decoded; only then is the message parsed.
        if !encoded {
            return false;
        }
        let parsed = c.contents.parsed.get_or_init(|| message::parse(raw));
        match message::Node::root(parsed).and_then(|root| root.header(name)) {
            Some(mail_parser::HeaderValue::Text(t)) => contains(t.as_bytes(), value),
            Some(mail_parser::HeaderValue::Address(a)) => {
                let text = format!("{a:?}");
                contains(text.as_bytes(), value)
            }
            _ => false,
        }
    };
    let sent_day = || -> Option<i64> {
        let raw = c.raw?;
        // The Date field's own calendar day, not the UTC one (RFC 9051 s6.4.4: "disregarding
        // time and timezone"): a message sent late on the 3rd in New York was sent on the 3rd.
        let parsed = c.contents.parsed.get_or_init(|| message::parse(raw));
        // Through the root part: mail-parser's `date()` panics on a message it could not parse.
        let root = message::Node::root(parsed)?;
        root.header("Date")
            .and_then(|v| v.as_datetime())
            .and_then(|d| {
                chrono::NaiveDate::from_ymd_opt(
                    i32::from(d.year),
                    u32::from(d.month),
                    u32::from(d.day),
                )
                .map(|date| date_day(&date))
            })
    };
    match key {
        And(keys) => keys.as_ref().iter().all(|k| matches(k, c)),
        Not(k) => !matches(k, c),
        Or(a, b) => matches(a, c) || matches(b, c),
        SequenceSet(set) => c.sets.contains(set, c.largest.0, c.seq),
        Uid(set) => c.sets.contains(set, c.largest.1, c.meta.uid),
        All => true,
        Answered => flag('R'),
        Unanswered => !flag('R'),
        Deleted => flag('T'),
        Undeleted => !flag('T'),
        Draft => flag('D'),
        Undraft => !flag('D'),
        Flagged => flag('F'),
        Unflagged => !flag('F'),
        Seen => flag('S'),
        Unseen => !flag('S'),
        Recent => c.recent,
        New => c.recent && !flag('S'),
        Old => !c.recent,
        Keyword(k) => keyword(k.inner()),
        Unkeyword(k) => !keyword(k.inner()),
        Larger(n) => c.meta.size > u64::from(*n),
        Smaller(n) => c.meta.size < u64::from(*n),
        Before(d) => day(c.meta.internal_date) < date_day(d.as_ref()),
        On(d) => day(c.meta.internal_date) == date_day(d.as_ref()),
        Since(d) => day(c.meta.internal_date) >= date_day(d.as_ref()),
        SentBefore(d) => sent_day().is_some_and(|s| s < date_day(d.as_ref())),
        SentOn(d) => sent_day().is_some_and(|s| s == date_day(d.as_ref())),
        SentSince(d) => sent_day().is_some_and(|s| s >= date_day(d.as_ref())),
        Bcc(v) => header("Bcc", v.as_ref()),
        Cc(v) => header("Cc", v.as_ref()),
        From(v) => header("From", v.as_ref()),
        To(v) => header("To", v.as_ref()),
        Subject(v) => header("Subject", v.as_ref()),
        Header(name, v) => header(&String::from_utf8_lossy(name.as_ref()), v.as_ref()),
        Body(v) => text_matches(c, v.as_ref(), false),
        Text(v) => text_matches(c, v.as_ref(), true),
        // RFC 7162 s3.1.5: changed at or after that mod-sequence. Flags are not tracked one by
        // one, so the per-flag entry names the message's own mod-sequence (as the RFC allows).
        ModSequence { modseq, .. } => c.meta.modseq >= *modseq,
        #[allow(unreachable_patterns)]
        _ => false,
    }
}

/// The largest value a MODSEQ key of the tree names (0 without one).
pub fn largest_modseq(key: &SearchKey<'_>) -> u64 {
    use SearchKey::*;
    match key {
        And(keys) => keys.as_ref().iter().map(largest_modseq).max().unwrap_or(0),
        Not(k) => largest_modseq(k),
        Or(a, b) => largest_modseq(a).max(largest_modseq(b)),
        ModSequence { modseq, .. } => *modseq,
        _ => 0,
    }
}

/// Whether the tree has a RECENT, NEW or OLD key (gone from IMAP4rev2).
pub fn uses_recent(key: &SearchKey<'_>) -> bool {
    use SearchKey::*;
    match key {
        And(keys) => keys.as_ref().iter().any(uses_recent),
        Not(k) => uses_recent(k),
        Or(a, b) => uses_recent(a) || uses_recent(b),
        Recent | New | Old => true,
        _ => false,
    }
}

/// Whether the tree has a MODSEQ key: then the answer names the highest mod-sequence found.
pub fn uses_modseq(key: &SearchKey<'_>) -> bool {
    use SearchKey::*;
    match key {
        And(keys) => keys.as_ref().iter().any(uses_modseq),
        Not(k) => uses_modseq(k),
        Or(a, b) => uses_modseq(a) || uses_modseq(b),
        ModSequence { .. } => true,
        _ => false,
    }
}

/// Whether `check` holds for one of the unfolded values of a header field, read straight from
/// the header block one value at a time (a message may hold millions of fields).
fn any_header_value(raw: &[u8], name: &str, mut check: impl FnMut(&[u8]) -> bool) -> bool {
    let mut current: Option<Vec<u8>> = None;
    for line in raw.split_inclusive(|b| *b == b'\n') {
        let trimmed = line.strip_suffix(b"\n").unwrap_or(line);
        let trimmed = trimmed.strip_suffix(b"\r").unwrap_or(trimmed);
        if trimmed.is_empty() {
            break;
        }
        if trimmed.starts_with(b" ") || trimmed.starts_with(b"\t") {
            if let Some(v) = current.as_mut() {
                v.extend_from_slice(trimmed);
            }
            continue;
        }
        if let Some(v) = current.take()
            && check(&v)
        {
            return true;
        }
        if let Some(colon) = trimmed.iter().position(|b| *b == b':')
            && trimmed[..colon]
                .trim_ascii()
                .eq_ignore_ascii_case(name.as_bytes())
        {
            current = Some(trimmed[colon + 1..].trim_ascii().to_vec());
        }
    }
    current.is_some_and(|v| check(&v))
}

/// BODY and TEXT: the raw bytes (TEXT includes the headers) or the decoded text parts.
fn text_matches(c: &Candidate<'_>, needle: &[u8], with_headers: bool) -> bool {
    let Some(raw) = c.raw else {
        return false;
    };
    let lowered = c.contents.lowered.get_or_init(|| raw.to_ascii_lowercase());
    let parsed = c.contents.parsed.get_or_init(|| message::parse(raw));
    let Some(root) = message::Node::root(parsed) else {
        return contains_lowered(lowered, needle);
    };
    // The header and body are slices of `raw`: the same ranges of its lowered copy.
    let lowered_part = |part: &[u8]| -> Option<&[u8]> {
        let start = (part.as_ptr() as usize).checked_sub(raw.as_ptr() as usize)?;
        lowered.get(start..start + part.len())
    };
    let found = |part: &[u8]| match lowered_part(part) {
        Some(low) => contains_lowered(low, needle),
        None => contains(part, needle),
    };
    if with_headers && found(root.raw_headers()) {
        return true;
    }
    if found(root.raw_body()) {
        return true;
    }
    let texts = c.contents.texts.get_or_init(|| {
        parsed
            .text_bodies()
            .filter_map(|t| t.text_contents().map(|t| t.as_bytes().to_ascii_lowercase()))
            .collect()
    });
    texts.iter().any(|t| contains_lowered(t, needle))
}

#[cfg(test)]
mod tests {
    use super::{HeaderCache, any_header_value, contains, header_block, header_fields};

    /// From an outside attack: `été` did not find `Été` (only ASCII letters were folded).
    #[test]
    fn letters_beyond_ascii_are_compared_without_case() {
        let subject = "Subject: \u{c9}t\u{e9} \u{c0} PARIS".as_bytes();
        for needle in ["\u{e9}t\u{e9}", "\u{c9}T\u{c9}", "\u{e0} paris", "PARIS"] {
            assert!(contains(subject, needle.as_bytes()), "{needle}");
        }
        assert!(!contains(subject, "\u{e9}t\u{e9}s".as_bytes()));
        // Bytes that are not UTF-8 do not stop the search.
        assert!(contains(
            b"\xff\xc3\x89T\xc3\x89",
            "\u{e9}t\u{e9}".as_bytes()
        ));
    }

    #[test]
    fn header_only_searches_are_told_apart_and_cached_by_field() {
        use imap_codec::{CommandCodec, decode::Decoder, imap_types::command::CommandBody};
        let criteria = |line: &str| {
            let text = format!("a SEARCH {line}\r\n");
            let (_, command) = CommandCodec::default()
                .decode(text.as_bytes())
                .expect("a SEARCH");
            let CommandBody::Search { criteria, .. } = command.body else {
                panic!("not a SEARCH");
            };
            imap_codec::imap_types::IntoStatic::into_static(
                imap_codec::imap_types::search::SearchKey::And(criteria),
            )
        };
        assert_eq!(
            header_fields(&criteria("OR SUBJECT a NOT HEADER X-Spam yes UNSEEN")),
            Some(vec!["subject".to_string(), "x-spam".to_string()])
        );
        assert_eq!(header_fields(&criteria("SUBJECT a BODY b")), None);
        assert_eq!(header_fields(&criteria("SENTON 1-Jan-2026")), None);

        let raw =
            b"Subject: hello\r\n  world\r\nFrom: a@b\r\nX-Spam: no\r\n\r\nbody Subject: not\r\n";
        let block = header_block(raw, &["subject".to_string()]);
        assert_eq!(block, b"subject: hello  world\r\n\r\n");
        let cache = HeaderCache::default();
        let key = ("bob@x".to_string(), "INBOX".to_string(), 7, 1);
        assert_eq!(cache.get(&key, &["subject".to_string()]), None);
        cache.put(key.clone(), &["subject".to_string()], raw);
        assert_eq!(cache.get(&key, &["subject".to_string()]), Some(block));
        // Another field is a miss until read, then both are held; another UIDVALIDITY never hits.
        assert_eq!(cache.get(&key, &["from".to_string()]), None);
        cache.put(key.clone(), &["from".to_string()], raw);
        let both = cache
            .get(&key, &["subject".to_string(), "from".to_string()])
            .expect("both fields");
        assert!(both.starts_with(b"subject: hello  world\r\nfrom: a@b\r\n"));
        let other = ("bob@x".to_string(), "INBOX".to_string(), 8, 1);
        assert_eq!(cache.get(&other, &["subject".to_string()]), None);
    }

    fn values(raw: &[u8], name: &str) -> Vec<Vec<u8>> {
        let mut out = Vec::new();
        any_header_value(raw, name, |v| {
            out.push(v.to_vec());
            false
        });
        out
    }

    /// Issue 15 item 10: SENTON compared the UTC day, so a message sent on the evening of the 3rd
    /// in New York (the 4th in UTC) was not found on the 3rd.
    #[test]
    fn sent_dates_are_the_date_fields_own_days() {
        use imap_codec::{CommandCodec, decode::Decoder, imap_types::command::CommandBody};
        let raw = b"Date: Tue, 3 Nov 2026 23:30:00 -0500\r\nSubject: x\r\n\r\nbody\r\n";
        let meta = crate::store::MessageMeta {
            uid: 1,
            size: raw.len() as u64,
            flags: String::new(),
            internal_date: 0,
            file_name: "m".into(),
            modseq: 1,
            in_new: false,
        };
        let sets = super::SetCache::default();
        let candidate = super::Candidate {
            seq: 1,
            meta: &meta,
            largest: (1, 1),
            raw: Some(raw),
            sets: &sets,
            keywords: &[],
            recent: false,
            contents: Default::default(),
        };
        for (criteria, expected) in [
            ("SENTON 3-Nov-2026", true),
            ("SENTON 4-Nov-2026", false),
            ("SENTBEFORE 4-Nov-2026", true),
            ("SENTSINCE 4-Nov-2026", false),
        ] {
            let line = format!("a SEARCH {criteria}\r\n");
            let (_, command) = CommandCodec::default()
                .decode(line.as_bytes())
                .expect("a SEARCH command");
            let CommandBody::Search { criteria: keys, .. } = command.body else {
                panic!("not a SEARCH");
            };
            let key = imap_codec::imap_types::search::SearchKey::And(keys);
            assert_eq!(super::matches(&key, &candidate), expected, "{criteria}");
        }
    }

    /// Found by an outside tester: a 40 KB needle of `a...ab` in 400 KB of `a` took 81 s.
    #[test]
    fn substring_search_is_linear() {
        let haystack = vec![b'a'; 4_000_000];
        let mut needle = vec![b'A'; 400_000];
        needle.push(b'b');
        let started = std::time::Instant::now();
        assert!(!contains(&haystack, &needle));
        assert!(contains(&haystack, &needle[..1_000]));
        assert!(
            started.elapsed() < std::time::Duration::from_secs(2),
            "{:?}",
            started.elapsed()
        );
    }

    #[test]
    fn header_values_are_unfolded_and_stop_at_the_body() {
        let raw = b"Subject: one\r\n two\r\nsubject:  again \r\nTo: x\r\n\r\nSubject: body\r\n";
        assert_eq!(
            values(raw, "Subject"),
            vec![b"one two".to_vec(), b"again".to_vec()]
        );
        assert!(values(raw, "Cc").is_empty());
        assert!(any_header_value(raw, "to", |v| v == b"x"));
    }
}
