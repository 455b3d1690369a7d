//! SORT and THREAD (RFC 5256; SORT=DISPLAY of RFC 5957), what webmail clients list folders
//! with. Pure functions over what each message says of itself ([`Keys`]); the session reads the
//! messages and writes the answers.
//!
//! ```text
//!   raw message --keys()--> Keys { sent, base subject, addresses, Message-ID, References }
//!   [Keys] --sort()--> order          [Keys] --references() / ordered_subject()--> [Node] --write()
//! ```
use std::{cmp::Ordering, collections::HashMap};

use imap_codec::imap_types::extensions::sort::{SortCriterion, SortKey};

use super::message;
use crate::store::MessageMeta;

/// What sorting and threading read of one message.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Keys {
    /// Sequence number, the tie-breaker of every comparison.
    pub seq: u32,
    pub uid: u32,
    /// INTERNALDATE, seconds.
    pub arrival: i64,
    pub size: u64,
    /// CONDSTORE's mod-sequence, for SORT's `(MODSEQ n)`.
    pub modseq: u64,
    /// The Date field in UTC; the arrival time when it is missing or unreadable (s2.2).
    pub sent: i64,
    /// The base subject (s2.1), upper-cased for i;unicode-casemap order.
    pub subject: String,
    /// Whether taking the base subject removed a reply or forward marker.
    pub is_reply: bool,
    /// The first address's mailbox (local part), upper-cased; empty without one.
    pub from: String,
    pub to: String,
    pub cc: String,
    /// RFC 5957: the first address's display name, or its address without one.
    pub display_from: String,
    pub display_to: String,
    pub message_id: Option<String>,
    /// The References field's message IDs, or In-Reply-To's when there are none.
    pub references: Vec<String>,
}

/// A string in i;unicode-casemap's form (RFC 5051), compared as bytes: each character's title
/// case (upper case here: they differ only for a few digraphs such as `ǅ`), then its
/// decomposition, again until nothing changes. `[` and `_` sort after letters, `é` with `e`
/// (just after it), `ﬁ` as `FI`.
pub fn casemap(text: &str) -> String {
    let decompose = icu_normalizer::DecomposingNormalizerBorrowed::new_nfkd();
    let mut out = text.to_uppercase();
    // Twice is enough for any character; a third round would change nothing.
    for _ in 0..2 {
        let next = decompose.normalize(&out).to_uppercase();
        if next == out {
            break;
        }
        out = next;
    }
    out
}

/// Whether a Date field's zone (`+hhmm`, the last such word) has more than 23 hours or 59
/// minutes.
fn impossible_zone(raw: &[u8]) -> bool {
    let text = String::from_utf8_lossy(raw);
    let zone = text
        .split(|c: char| c.is_whitespace() || c == '(')
        .rfind(|w| {
            w.len() == 5
                && (w.starts_with('+') || w.starts_with('-'))
                && w[1..].bytes().all(|b| b.is_ascii_digit())
        });
    zone.is_some_and(|z| z[1..3] > *"23" || z[3..5] > *"59")
}

/// Reads the sort and thread keys of a message.
pub fn keys(seq: u32, meta: &MessageMeta, raw: &[u8]) -> Keys {
    let parsed = message::parse(raw);
    // Through the root part only: mail-parser's own `from()`, `date()` ... index the first part
    // and panic on a message it could not parse at all (an empty file; the fuzzer's first try).
    let root = message::Node::root(&parsed);
    let header = |name: &str| root.as_ref().and_then(|r| r.header(name));
    let mailbox = |a: Option<&mail_parser::Address<'_>>| -> (String, String) {
        let Some(first) = a.and_then(|a| a.first()) else {
            return (String::new(), String::new());
        };
        let address = first.address.as_deref().unwrap_or_default();
        let local = address.rsplit_once('@').map_or(address, |(l, _)| l);
        let display = first
            .name
            .as_deref()
            .filter(|n| !n.trim().is_empty())
            .unwrap_or(address);
        (casemap(local), casemap(display.trim()))
    };
    let (from, display_from) = mailbox(header("From").and_then(|v| v.as_address()));
    let (to, display_to) = mailbox(header("To").and_then(|v| v.as_address()));
    let (cc, _) = mailbox(header("Cc").and_then(|v| v.as_address()));
    let (subject, is_reply) = base_subject(
        header("Subject")
            .and_then(|v| v.as_text())
            .unwrap_or_default(),
    );
    let subject = casemap(&subject);
    let ids = |name: &str| -> Vec<String> {
        root.as_ref()
            .map(|r| r.raw_values(name).into_iter().flat_map(msg_ids).collect())
            .unwrap_or_default()
    };
    // References, or In-Reply-To's first when References names no valid ID (s3 step 1).
    let mut references = ids("References");
    if references.is_empty() {
        references = ids("In-Reply-To").into_iter().take(1).collect();
    }
    Keys {
        seq,
        uid: meta.uid,
        arrival: meta.internal_date,
        size: meta.size,
        modseq: meta.modseq,
        // A date that cannot be (day 32, 30 February) is no date: INTERNALDATE (s2.2).
        sent: header("Date")
            .and_then(|v| v.as_datetime())
            .filter(|d| {
                d.is_valid()
                    && chrono::NaiveDate::from_ymd_opt(
                        i32::from(d.year),
                        u32::from(d.month),
                        u32::from(d.day),
                    )
                    .is_some()
            })
            .map(|d| {
                let mut d = *d;
                // mail-parser wraps a zone that cannot be (+9999 reads as +0339): such a zone
                // is no zone, and the time is UTC's. The last Date field, as `header` reads.
                let raw = root
                    .as_ref()
                    .and_then(|r| r.raw_values("Date").into_iter().next_back())
                    .unwrap_or_default();
                if impossible_zone(raw) {
                    (d.tz_hour, d.tz_minute, d.tz_before_gmt) = (0, 0, false);
                }
                d.to_timestamp()
            })
            .unwrap_or(meta.internal_date),
        subject,
        is_reply,
        from,
        to,
        cc,
        display_from,
        display_to,
        message_id: ids("Message-ID").into_iter().next(),
        references,
    }
}

/// The message IDs (`<local@domain>`) in a header value, normalised as RFC 5256 asks: comments
/// skipped, quotes and backslash escapes taken out, so `<"a.b"@x>` and `<a.b@x>` are one ID.
/// Anything outside angle brackets is not an ID.
pub fn msg_ids(value: &[u8]) -> Vec<String> {
    let mut out = Vec::new();
    let mut i = 0;
    while i < value.len() {
        match value[i] {
            b'(' => {
                // A comment, nested or not, skipped without recursion.
                let mut depth = 0usize;
                while i < value.len() {
                    match value[i] {
                        b'\\' => i += 1,
                        b'(' => depth += 1,
                        b')' => {
                            depth -= 1;
                            if depth == 0 {
                                break;
                            }
                        }
                        _ => {}
                    }
                    i += 1;
                }
            }
            b'<' => {
                let mut id = Vec::new();
                i += 1;
                while i < value.len() && value[i] != b'>' {
                    match value[i] {
                        b'\\' if i + 1 < value.len() => {
                            id.push(value[i + 1]);
                            i += 1;
                        }
                        b'"' | b' ' | b'\t' | b'\r' | b'\n' => {}
                        c => id.push(c),
                    }
                    i += 1;
                }
                if i < value.len() && !id.is_empty() && id.contains(&b'@') {
                    out.push(String::from_utf8_lossy(&id).into_owned());
                }
            }
            _ => {}
        }
        i += 1;
    }
    out
}

/// The base subject of RFC 5256 s2.1, case folded, and whether a reply or forward marker was
/// taken off (`Re:`, `Fwd:`, `[fwd: ...]`, a trailing `(fwd)`). Every pass removes something or
/// ends the loop, so it ends.
pub fn base_subject(subject: &str) -> (String, bool) {
    let mut s: String = subject.split_whitespace().collect::<Vec<_>>().join(" ");
    s = s.to_lowercase();
    let mut is_reply = false;
    loop {
        let before = s.len();
        // (2) trailers: "(fwd)" and white space.
        loop {
            let t = s.trim_end();
            match t.strip_suffix("(fwd)") {
                Some(rest) => {
                    s = rest.to_string();
                    is_reply = true;
                }
                None => {
                    s = t.to_string();
                    break;
                }
            }
        }
        // (3, 4) leaders: blobs and re/fw/fwd markers, as long as something is left.
        loop {
            let t = s.trim_start();
            if let Some(rest) = strip_refwd(t) {
                s = rest.to_string();
                is_reply = true;
                continue;
            }
            if let Some(rest) = strip_blob(t)
                && !rest.trim().is_empty()
            {
                s = rest.to_string();
                continue;
            }
            s = t.to_string();
            break;
        }
        // (5) "[fwd: subject]".
        if let Some(inner) = s.strip_prefix("[fwd:").and_then(|r| r.strip_suffix(']')) {
            s = inner.trim().to_string();
            is_reply = true;
        }
        if s.len() == before {
            return (s, is_reply);
        }
    }
}

/// `subj-blob`: `[` anything but brackets `]` and white space after it.
fn strip_blob(s: &str) -> Option<&str> {
    let rest = s.strip_prefix('[')?;
    let end = rest.find(['[', ']'])?;
    rest[end..].strip_prefix(']').map(str::trim_start)
}

/// `subj-refwd`: `re`, `fw` or `fwd`, white space, an optional blob, then `:`.
fn strip_refwd(s: &str) -> Option<&str> {
    let rest = s
        .strip_prefix("fwd")
        .or_else(|| s.strip_prefix("fw"))
        .or_else(|| s.strip_prefix("re"))?;
    let rest = rest.trim_start();
    let rest = strip_blob(rest).unwrap_or(rest);
    rest.strip_prefix(':')
}

fn compare(a: &Keys, b: &Keys, key: &SortKey) -> Ordering {
    match key {
        SortKey::Arrival => a.arrival.cmp(&b.arrival),
        SortKey::Cc => a.cc.cmp(&b.cc),
        SortKey::Date => a.sent.cmp(&b.sent),
        SortKey::From => a.from.cmp(&b.from),
        SortKey::Size => a.size.cmp(&b.size),
        SortKey::Subject => a.subject.cmp(&b.subject),
        SortKey::To => a.to.cmp(&b.to),
        SortKey::DisplayFrom => a.display_from.cmp(&b.display_from),
        SortKey::DisplayTo => a.display_to.cmp(&b.display_to),
    }
}

/// The messages in SORT order: by each criterion in turn, then by sequence number.
pub fn sort(keys: &[Keys], criteria: &[SortCriterion]) -> Vec<usize> {
    let mut order: Vec<usize> = (0..keys.len()).collect();
    order.sort_by(|&i, &j| {
        let (a, b) = (&keys[i], &keys[j]);
        criteria
            .iter()
            .map(|c| {
                let o = compare(a, b, &c.key);
                if c.reverse { o.reverse() } else { o }
            })
            .find(|o| o.is_ne())
            .unwrap_or_else(|| a.seq.cmp(&b.seq))
    });
    order
}

/// One thread node: a message (an index into the keys) or, at the top only, a dummy holding
/// messages that belong together.
#[derive(Debug)]
pub struct Node {
    pub message: Option<usize>,
    pub children: Vec<Node>,
}

/// A chain of replies is as deep as the folder is long (a sender can make it so): dropped one
/// level at a time, not by recursion.
impl Drop for Node {
    fn drop(&mut self) {
        let mut pending = std::mem::take(&mut self.children);
        while let Some(mut node) = pending.pop() {
            pending.append(&mut node.children);
        }
    }
}

/// `(sent date, sequence number)` of a node: its message's, or its first child's.
fn node_date(node: &Node, keys: &[Keys]) -> (i64, u32) {
    match node.message {
        Some(m) => (keys[m].sent, keys[m].seq),
        None => node
            .children
            .first()
            .map_or((i64::MAX, u32::MAX), |c| node_date(c, keys)),
    }
}

/// THREAD=ORDEREDSUBJECT: messages with the same base subject form one thread, the earliest
/// its parent and the others its children by date; threads by their first message's date.
pub fn ordered_subject(keys: &[Keys]) -> Vec<Node> {
    let mut order: Vec<usize> = (0..keys.len()).collect();
    order.sort_by(|&i, &j| {
        (&keys[i].subject, keys[i].sent, keys[i].seq).cmp(&(
            &keys[j].subject,
            keys[j].sent,
            keys[j].seq,
        ))
    });
    let mut threads: Vec<Node> = Vec::new();
    let mut last_subject: Option<&str> = None;
    for i in order {
        let leaf = Node {
            message: Some(i),
            children: Vec::new(),
        };
        match (last_subject, threads.last_mut()) {
            (Some(s), Some(parent)) if s == keys[i].subject => parent.children.push(leaf),
            _ => threads.push(leaf),
        }
        last_subject = Some(&keys[i].subject);
    }
    threads.sort_by_key(|t| node_date(t, keys));
    threads
}

/// THREAD=REFERENCES (RFC 5256 s2.2, after Jamie Zawinski's algorithm): parents from
/// References (or In-Reply-To), empty containers pruned, top-level threads with the same base
/// subject gathered, every level by sent date.
pub fn references(keys: &[Keys]) -> Vec<Node> {
    #[derive(Default)]
    struct Container {
        message: Option<usize>,
        parent: Option<usize>,
        children: Vec<usize>,
    }
    let mut arena: Vec<Container> = Vec::new();
    let mut by_id: HashMap<&str, usize> = HashMap::new();
    fn is_ancestor(arena: &[Container], ancestor: usize, mut of: usize) -> bool {
        // A container without children is nobody's ancestor: the usual case (a new message
        // under its parent) costs nothing, and a chain of replies stays linear.
        if arena[ancestor].children.is_empty() {
            return ancestor == of;
        }
        // Bounded by the arena's size: a parent chain never repeats a container.
        for _ in 0..=arena.len() {
            if of == ancestor {
                return true;
            }
            match arena[of].parent {
                Some(p) => of = p,
                None => return false,
            }
        }
        true
    }
    fn unlink(arena: &mut [Container], child: usize) {
        if let Some(p) = arena[child].parent.take() {
            arena[p].children.retain(|c| *c != child);
        }
    }
    fn link(arena: &mut [Container], parent: usize, child: usize) {
        arena[child].parent = Some(parent);
        arena[parent].children.push(child);
    }
    // (1A) a container per Message-ID; a missing or repeated one gets a container of its own.
    let mut own: Vec<usize> = Vec::with_capacity(keys.len());
    for (i, k) in keys.iter().enumerate() {
        let existing = k
            .message_id
            .as_deref()
            .and_then(|id| by_id.get(id).copied())
            .filter(|c| arena[*c].message.is_none());
        let c = match existing {
            Some(c) => c,
            None => {
                arena.push(Container::default());
                let c = arena.len() - 1;
                if let Some(id) = k.message_id.as_deref() {
                    by_id.entry(id).or_insert(c);
                }
                c
            }
        };
        arena[c].message = Some(i);
        own.push(c);
        // (1B) the references as a chain of parents, where no link exists yet and no loop
        // would be made.
        let mut previous: Option<usize> = None;
        for id in &k.references {
            let r = match by_id.get(id.as_str()) {
                Some(r) => *r,
                None => {
                    arena.push(Container::default());
                    let r = arena.len() - 1;
                    by_id.insert(id.as_str(), r);
                    r
                }
            };
            if let Some(p) = previous
                && arena[r].parent.is_none()
                && !is_ancestor(&arena, r, p)
            {
                link(&mut arena, p, r);
            }
            previous = Some(r);
        }
        // (1C) the message's parent is its last reference, replacing any guessed before.
        unlink(&mut arena, c);
        if let Some(p) = previous
            && !is_ancestor(&arena, c, p)
        {
            link(&mut arena, p, c);
        }
    }
    // (2, 4) the root set, as trees, with empty containers pruned.
    fn build(arena: &[Container], c: usize, out: &mut Vec<Node>, at_root: bool) {
        // Explicit stack: a chain of references can be as deep as the folder is long.
        enum Step {
            Visit(usize, bool),
            Close(usize, bool),
        }
        let mut results: Vec<Vec<Node>> = vec![Vec::new()];
        let mut steps = vec![Step::Visit(c, at_root)];
        while let Some(step) = steps.pop() {
            match step {
                Step::Visit(c, root) => {
                    results.push(Vec::new());
                    steps.push(Step::Close(c, root));
                    for &child in arena[c].children.iter().rev() {
                        steps.push(Step::Visit(child, false));
                    }
                }
                Step::Close(c, root) => {
                    let children = results.pop().unwrap_or_default();
                    let parent = results.last_mut().expect("the outer list");
                    match arena[c].message {
                        Some(m) => parent.push(Node {
                            message: Some(m),
                            children,
                        }),
                        // An empty container's children take its place, except at the top
                        // where more than one stay together under it.
                        None if root && children.len() > 1 => parent.push(Node {
                            message: None,
                            children,
                        }),
                        None => parent.extend(children),
                    }
                }
            }
        }
        out.extend(results.pop().unwrap_or_default());
    }
    let mut roots: Vec<Node> = Vec::new();
    for c in 0..arena.len() {
        if arena[c].parent.is_none() {
            build(&arena, c, &mut roots, true);
        }
    }
    // (4) the top level by sent date (a dummy by its earliest child) before (5) looks for
    // the first thread of each subject.
    sort_tree(&mut roots, keys);
    // (5) top-level threads with the same base subject belong together.
    let subject_of = |n: &Node| -> Option<(usize, bool)> {
        let m = n
            .message
            .or_else(|| n.children.first().and_then(|c| c.message))?;
        (!keys[m].subject.is_empty()).then_some((m, keys[m].is_reply))
    };
    let mut table: HashMap<&str, usize> = HashMap::new();
    for (i, root) in roots.iter().enumerate() {
        let Some((m, reply)) = subject_of(root) else {
            continue;
        };
        match table.get(keys[m].subject.as_str()) {
            None => {
                table.insert(&keys[m].subject, i);
            }
            Some(&old) => {
                let old_node = &roots[old];
                let old_reply = subject_of(old_node).is_some_and(|(_, r)| r);
                let replace = (root.message.is_none() && old_node.message.is_some())
                    || (old_node.message.is_some()
                        && root.message.is_some()
                        && old_reply
                        && !reply);
                if replace {
                    table.insert(&keys[m].subject, i);
                }
            }
        }
    }
    let mut merged: Vec<Option<Node>> = roots.into_iter().map(Some).collect();
    for i in 0..merged.len() {
        let Some(node) = merged[i].as_ref() else {
            continue;
        };
        let Some((m, reply)) = subject_of(node) else {
            continue;
        };
        let Some(&target) = table.get(keys[m].subject.as_str()) else {
            continue;
        };
        if target == i || merged[target].is_none() {
            continue;
        }
        let Some(node) = merged[i].take() else {
            continue;
        };
        let Some(into) = merged[target].as_mut() else {
            continue;
        };
        let into_reply = into.message.is_some_and(|t| keys[t].is_reply);
        match (into.message.is_none(), node.message.is_none()) {
            (true, true) => {
                let mut node = node;
                into.children.append(&mut node.children);
            }
            (true, false) => into.children.push(node),
            (false, true) => {
                let old = std::mem::replace(into, node);
                into.children.push(old);
            }
            (false, false) if !into_reply && reply => into.children.push(node),
            (false, false) => {
                let old = std::mem::replace(
                    into,
                    Node {
                        message: None,
                        children: Vec::new(),
                    },
                );
                into.children.extend([old, node]);
            }
        }
    }
    let mut threads: Vec<Node> = merged.into_iter().flatten().collect();
    // (6) every level by sent date.
    sort_tree(&mut threads, keys);
    threads
}

/// Sorts every sibling list of the forest by sent date, then sequence number (iteratively).
pub fn sort_tree(forest: &mut Vec<Node>, keys: &[Keys]) {
    let mut stack: Vec<&mut Vec<Node>> = vec![forest];
    while let Some(list) = stack.pop() {
        list.sort_by_key(|n| earliest(n, keys));
        for node in list {
            if !node.children.is_empty() {
                stack.push(&mut node.children);
            }
        }
    }
}

/// A node's date for ordering: its message's, or for a dummy its earliest child's.
fn earliest(node: &Node, keys: &[Keys]) -> (i64, u32) {
    match node.message {
        Some(_) => node_date(node, keys),
        None => node
            .children
            .iter()
            .map(|c| earliest(c, keys))
            .min()
            .unwrap_or((i64::MAX, u32::MAX)),
    }
}

/// The THREAD answer's data: `(1 2 (3)(4 5))(6)` with `id` naming each message.
pub fn write(forest: &[Node], id: impl Fn(usize) -> u32) -> String {
    let mut out = String::new();
    enum Step<'a> {
        Open(&'a Node, bool),
        Text(&'static str),
    }
    let mut steps: Vec<Step<'_>> = forest.iter().rev().map(|n| Step::Open(n, true)).collect();
    while let Some(step) = steps.pop() {
        match step {
            Step::Text(t) => out.push_str(t),
            Step::Open(node, parenthesised) => {
                if parenthesised {
                    out.push('(');
                    steps.push(Step::Text(")"));
                }
                match node.message {
                    Some(m) => {
                        out.push_str(&id(m).to_string());
                        match node.children.len() {
                            0 => {}
                            // One child continues the chain inline.
                            1 => {
                                out.push(' ');
                                steps.push(Step::Open(&node.children[0], false));
                            }
                            _ => {
                                out.push(' ');
                                for child in node.children.iter().rev() {
                                    steps.push(Step::Open(child, true));
                                }
                            }
                        }
                    }
                    None => {
                        for child in node.children.iter().rev() {
                            steps.push(Step::Open(child, true));
                        }
                    }
                }
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(seq: u32, id: &str, refs: &[&str], subject: &str, sent: i64) -> Keys {
        let (subject, is_reply) = base_subject(subject);
        Keys {
            seq,
            uid: seq * 10,
            sent,
            subject,
            is_reply,
            message_id: Some(id.to_string()),
            references: refs.iter().map(|r| r.to_string()).collect(),
            ..Keys::default()
        }
    }

    #[test]
    fn base_subjects_lose_markers_blobs_and_trailers() {
        for (subject, base, reply) in [
            ("Hello", "hello", false),
            ("Re: [list] RE:  Hello   World (fwd)", "hello world", true),
            ("Fwd: Re: x", "x", true),
            ("[fwd: Meeting]", "meeting", true),
            ("[PATCH] fix the build", "fix the build", false),
            ("Re[2]: counted", "counted", true),
            ("[only a blob]", "[only a blob]", false),
            ("", "", false),
        ] {
            assert_eq!(
                base_subject(subject),
                (base.to_string(), reply),
                "{subject:?}"
            );
        }
    }

    #[test]
    fn sort_applies_criteria_in_turn_then_sequence_numbers() {
        let mut keys = vec![
            message(1, "a", &[], "b", 3),
            message(2, "b", &[], "a", 2),
            message(3, "c", &[], "Re: a", 1),
        ];
        keys[0].size = 10;
        keys[1].size = 10;
        keys[2].size = 5;
        let by = |reverse, key| SortCriterion { reverse, key };
        assert_eq!(sort(&keys, &[by(false, SortKey::Date)]), [2, 1, 0]);
        assert_eq!(
            sort(
                &keys,
                &[by(true, SortKey::Size), by(false, SortKey::Subject)]
            ),
            [1, 0, 2]
        );
        // Equal keys: sequence number order.
        assert_eq!(sort(&keys, &[by(false, SortKey::Arrival)]), [0, 1, 2]);
    }

    #[test]
    fn ordered_subject_groups_by_base_subject() {
        let keys = vec![
            message(1, "a", &[], "topic", 1),
            message(2, "b", &[], "other", 2),
            message(3, "c", &[], "Re: topic", 3),
            message(4, "d", &[], "Re: topic", 4),
            message(5, "e", &[], "Re: other", 5),
        ];
        let threads = ordered_subject(&keys);
        assert_eq!(write(&threads, |i| keys[i].seq), "(1 (3)(4))(2 5)");
    }

    /// References and In-Reply-To make parents; a missing parent becomes a dummy that keeps
    /// its two children together; a reply with no references joins the thread of its subject.
    #[test]
    fn references_build_threads() {
        let keys = vec![
            message(1, "a", &[], "topic", 1),
            message(2, "b", &["a"], "Re: topic", 2),
            message(3, "c", &["a", "b"], "Re: topic", 3),
            message(4, "d", &[], "Re: topic", 4),
            message(5, "e", &["x"], "lost parent", 5),
            message(6, "f", &["x"], "Re: lost parent", 6),
            message(7, "g", &[], "alone", 7),
        ];
        let threads = references(&keys);
        assert_eq!(write(&threads, |i| keys[i].seq), "(1 (2 3)(4))((5)(6))(7)");
        assert_eq!(
            write(&threads, |i| keys[i].uid),
            "(10 (20 30)(40))((50)(60))(70)"
        );
    }

    /// An outside review: the top level was merged by subject before it was sorted by date
    /// (RFC 5256 s3 step 4 comes before 5), and a dummy's first child was not its earliest.
    #[test]
    fn subjects_merge_after_the_top_level_is_sorted_by_date() {
        let keys = vec![
            message(1, "a1", &[], "a", 102),
            message(2, "a2", &[], "Re: a", 105),
            message(3, "a3", &[], "a", 104),
        ];
        assert_eq!(write(&references(&keys), |i| keys[i].seq), "((1)(3)(2))");
        let keys = vec![
            message(1, "p1", &["root"], "Fwd: apple", 105),
            message(2, "p2", &["root"], "Re: banana", 101),
            message(3, "q", &[], "banana", 100),
        ];
        assert_eq!(write(&references(&keys), |i| keys[i].seq), "((3)(2)(1))");
    }

    /// The fuzzer's first input: an empty message, which mail-parser cannot parse (its own
    /// accessors then panic). SORT and SEARCH SENTON read it as a message without fields.
    #[test]
    fn a_message_mail_parser_cannot_parse_has_no_keys() {
        let meta = MessageMeta {
            uid: 4,
            size: 0,
            flags: String::new(),
            internal_date: 77,
            file_name: "m".into(),
            modseq: 1,
            in_new: false,
        };
        let k = keys(1, &meta, b"");
        assert_eq!((k.sent, k.subject.as_str(), k.message_id), (77, "", None));
        // Dates that cannot be are no dates either (an outside review: they were rolled over).
        for date in [
            "Wed, 32 Jan 2024 10:00:00 +0000",
            "Fri, 30 Feb 2024 10:00:00 +0000",
        ] {
            let raw = format!("Date: {date}\r\nSubject: x\r\n\r\nbody\r\n");
            assert_eq!(keys(1, &meta, raw.as_bytes()).sent, 77, "{date}");
        }
        let raw = b"Date: Mon, 1 Jan 2024 10:20:00 +0100\r\n\r\nbody\r\n";
        assert_eq!(keys(1, &meta, raw).sent, 1_704_100_800);
        // An impossible zone is UTC (an outside review: mail-parser read +9999 as 99 hours).
        let raw = b"Date: Mon, 1 Jan 2024 09:20:00 +9999\r\n\r\nbody\r\n";
        assert_eq!(keys(1, &meta, raw).sent, 1_704_100_800);
        // With two Date fields, the zone checked is the one of the field read (the last).
        let raw = b"Date: Mon, 1 Jan 2024 09:20:00 +9999\r\n\
                    Date: Mon, 1 Jan 2024 10:20:00 +0100\r\n\r\nbody\r\n";
        assert_eq!(keys(1, &meta, raw).sent, 1_704_100_800);
    }

    /// i;unicode-casemap (an outside review: accented subjects sorted after Z).
    #[test]
    fn accents_sort_beside_their_letters_and_case_is_ignored() {
        let mut subjects = [
            "Zebra",
            "\u{c9}cole",
            "ecole",
            "Eagle",
            "\u{e9}clair",
            "\u{fb01}sh",
        ];
        subjects.sort_by_key(|s| casemap(s));
        assert_eq!(
            subjects,
            [
                "Eagle",
                "ecole",
                "\u{e9}clair",
                "\u{c9}cole",
                "\u{fb01}sh",
                "Zebra"
            ]
        );
        assert_eq!(casemap("\u{e9}COLE"), casemap("\u{c9}cole"));
        assert!(casemap("[x]") > casemap("ZZ"));
    }

    #[test]
    fn message_ids_are_normalised_and_bare_words_are_not_ids() {
        assert_eq!(
            msg_ids(b" <\"a.b\"@x> (a comment <not@this>) <a\\.c@x> garbage <> <p@x>"),
            ["a.b@x", "a.c@x", "p@x"]
        );
        assert!(msg_ids(b"garbage (comment only)").is_empty());
    }

    /// Hostile headers: a message that names itself and its child as parents, a References
    /// loop, a Message-ID used twice, a chain as long as the folder: no loop, no message lost,
    /// no deep recursion.
    #[test]
    fn loops_duplicates_and_long_chains_are_harmless() {
        let keys = vec![
            message(1, "a", &["b"], "x", 1),
            message(2, "b", &["a"], "x", 2),
            message(3, "a", &["a"], "y", 3),
            message(4, "c", &["c", "a"], "z", 4),
        ];
        let text = write(&references(&keys), |i| keys[i].seq);
        for n in 1..=4 {
            assert_eq!(
                text.matches(&n.to_string()).count(),
                1,
                "message {n} once: {text}"
            );
        }
        let ids: Vec<String> = (0..20_000).map(|n| format!("m{n}")).collect();
        let chain: Vec<Keys> = (0..20_000)
            .map(|n| {
                let refs: Vec<&str> = if n == 0 {
                    vec![]
                } else {
                    vec![ids[n - 1].as_str()]
                };
                message(n as u32 + 1, &ids[n], &refs, "long", n as i64)
            })
            .collect();
        let threads = references(&chain);
        assert_eq!(threads.len(), 1);
        let text = write(&threads, |i| chain[i].seq);
        assert!(text.starts_with("(1 2 3 ") && text.ends_with(" 20000)"));
        let mut flat = threads;
        sort_tree(&mut flat, &chain);
    }
}
