//! What FETCH reads out of a message: ENVELOPE, BODYSTRUCTURE, and the bytes of a section
//! (RFC 9051 sections 6.4.5 and 7.5.2). MIME parsing is mail-parser's; this module only maps
//! its parts onto IMAP's part numbers and writes them in IMAP syntax.
use std::borrow::Cow;

use imap_codec::imap_types::{
    core::AString,
    fetch::{Part as PartPath, Section},
};
use mail_parser::{Address, HeaderValue, Message, MessageParser, MessagePart, MimeHeaders};

use super::write::{nstring, string};

/// A parsed message whose tree is at most [`MAX_DEPTH`] messages deep, and whose drop does not
/// recurse. mail-parser parses nested message/rfc822 parts without recursion, but the tree it
/// builds nests one `Message` inside the other, and dropping it recurses once per level: a sender
/// who nests 100,000 parts (4.4 MB) overflows the stack of whoever drops it, aborting the whole
/// process. Such a message is shown as one opaque part: its own headers and its body as bytes.
#[derive(Debug)]
pub struct Parsed<'x>(Message<'x>);

impl<'x> std::ops::Deref for Parsed<'x> {
    type Target = Message<'x>;
    fn deref(&self) -> &Message<'x> {
        &self.0
    }
}

impl Drop for Parsed<'_> {
    fn drop(&mut self) {
        dismantle(std::mem::take(&mut self.0));
    }
}

/// Drops a message tree one level at a time, with its own stack instead of the thread's.
fn dismantle(message: Message<'_>) {
    let mut pending = vec![message];
    while let Some(mut message) = pending.pop() {
        for part in &mut message.parts {
            if let mail_parser::PartType::Message(inner) = std::mem::take(&mut part.body) {
                pending.push(inner);
            }
        }
    }
}

/// How many messages deep the tree goes (the top counts as 1), without recursion.
fn nesting(message: &Message<'_>) -> usize {
    let mut deepest = 0;
    let mut pending = vec![(message, 1)];
    while let Some((message, depth)) = pending.pop() {
        deepest = deepest.max(depth);
        for part in &message.parts {
            if let mail_parser::PartType::Message(inner) = &part.body {
                pending.push((inner, depth + 1));
            }
        }
    }
    deepest
}

/// How many things mail-parser would build objects for (parts, header fields, addresses,
/// parameters, encoded words) a message may hold before it is served opaque: each costs ~100
/// bytes of parsed tree, and a 20 MB message of 5 million one-line header fields took one FETCH
/// to 666 MiB (a pod's limit is 512 MiB). 100,000 is ~13 MB; a real message with a
/// thousand-recipient header uses a few thousand.
const MAX_STRUCTURE: usize = 100_000;

/// Why a message is not parsed into a tree, found in one pass over its lines without building
/// anything:
/// - too many things to build (see [`MAX_STRUCTURE`]): header fields and their folded lines,
///   addresses, parameters and encoded words in header blocks, part boundaries, and body lines
///   that look like fields (a part header this scan did not take for one);
/// - more content types that can start a nested message (`message/rfc822`, `message/global`,
///   `multipart/digest` whose parts default to messages) than twice the depth limit: a tree of
///   100,000 levels costs ~100 MB to build only to be thrown away;
/// - a nested message that is transfer-encoded (RFC 2046 s5.2.1 forbids it): mail-parser
///   parses its decoded bytes, invisible here, and copies the tree it builds recursively, so
///   100,000 levels under base64 overflow the stack inside mail-parser itself.
///
/// Header blocks are the top one, the one after each `--` line, and the one right after a
/// nested message's (its own header), which is where mail-parser reads fields.
fn too_complex(bytes: &[u8], levels: usize) -> Option<&'static str> {
    #[derive(Default)]
    struct Block {
        has_type: bool,
        nested: bool,
        encoded: bool,
    }
    let (mut structure, mut nesting_types) = (0usize, 0usize);
    let mut digest_seen = false;
    let mut in_block = true;
    let mut block = Block::default();
    // The Content-Type or Content-Transfer-Encoding field being read, lowered, without
    // whitespace (bounded: the tokens that matter are short).
    let mut field: Option<Vec<u8>> = None;
    let finish = |field: &mut Option<Vec<u8>>, block: &mut Block, digest: &mut bool| -> usize {
        let Some(f) = field.take() else {
            return 0;
        };
        let has = |needle: &[u8]| f.windows(needle.len()).any(|w| w == needle);
        if f.starts_with(b"content-type:") {
            block.has_type = true;
            if has(b"message/") {
                block.nested = true;
                return 1;
            }
            if has(b"/digest") {
                *digest = true;
                return 1;
            }
        } else if has(b"base64") || has(b"quoted-printable") {
            block.encoded = true;
        }
        0
    };
    let tokens = |line: &[u8]| {
        line.iter()
            .filter(|b| matches!(b, b',' | b'@' | b';'))
            .count()
            + line.windows(2).filter(|w| w == b"=?").count()
    };
    for line in bytes.split(|b| *b == b'\n') {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if line.starts_with(b"--") {
            structure += 1;
            nesting_types += finish(&mut field, &mut block, &mut digest_seen);
            in_block = true;
            block = Block::default();
        } else if !in_block {
            structure += usize::from(line.contains(&b':'));
        } else if line.is_empty() {
            nesting_types += finish(&mut field, &mut block, &mut digest_seen);
            let defaults_to_message = !block.has_type && digest_seen;
            if block.encoded && (block.nested || defaults_to_message) {
                return Some("a transfer-encoded nested message");
            }
            // A nested message's own header follows its part's.
            in_block = block.nested || defaults_to_message;
            block = Block::default();
        } else if line.first().is_some_and(|b| *b == b' ' || *b == b'\t') {
            // A folded line costs mail-parser a token or two of its own (6 million of them in
            // one field took a FETCH to 390 MB).
            structure += 1 + tokens(line);
            if let Some(f) = field.as_mut()
                && f.len() < 1024
            {
                f.extend(
                    line.iter()
                        .filter(|b| !b.is_ascii_whitespace())
                        .map(u8::to_ascii_lowercase),
                );
            }
        } else {
            nesting_types += finish(&mut field, &mut block, &mut digest_seen);
            // Any line with a colon is a field to mail-parser (`X : y` is one too).
            structure += 1 + tokens(line);
            let lowered: Vec<u8> = line
                .iter()
                .take(1024)
                .filter(|b| !b.is_ascii_whitespace())
                .map(u8::to_ascii_lowercase)
                .collect();
            if lowered.starts_with(b"content-type:")
                || lowered.starts_with(b"content-transfer-encoding:")
            {
                field = Some(lowered);
            }
        }
        if structure > MAX_STRUCTURE {
            return Some("too many parts, header fields or addresses");
        }
        if nesting_types > levels * 2 {
            return Some("nested deeper than the limit");
        }
    }
    None
}

/// Parses a stored message; one too deep or too complex (see [`Parsed`], [`too_complex`])
/// comes back as a single part.
pub fn parse(bytes: &[u8]) -> Parsed<'_> {
    let limit = usize::from(MAX_DEPTH);
    let why = match too_complex(bytes, limit) {
        Some(why) => why,
        None => {
            let message = MessageParser::default().parse(bytes).unwrap_or_default();
            if nesting(&message) <= limit {
                return Parsed(message);
            }
            dismantle(message);
            "nested deeper than the limit"
        }
    };
    tracing::info!(
        size = bytes.len(),
        why,
        "a message is served as one opaque part"
    );
    Parsed(opaque(bytes))
}

/// A message of one part: its top-level headers and its body as bytes.
fn opaque(bytes: &[u8]) -> Message<'_> {
    // Its own header block may be what is too big: only the first 64 KiB of it are read.
    let head = &bytes[..bytes.len().min(64 * 1024)];
    let headers = MessageParser::default()
        .parse_headers(head)
        .and_then(|m| m.parts.into_iter().next())
        .map(|p| p.headers)
        .unwrap_or_default();
    let end = u32::try_from(bytes.len()).unwrap_or(u32::MAX);
    let body_start = crate::header::split(bytes).map_or(bytes.len(), |(_, body)| body);
    let offset_body = u32::try_from(body_start).unwrap_or(end).min(end);
    Message {
        parts: vec![MessagePart {
            headers,
            is_encoding_problem: true,
            body: mail_parser::PartType::Binary(Cow::Borrowed(
                bytes.get(offset_body as usize..).unwrap_or_default(),
            )),
            encoding: mail_parser::Encoding::None,
            offset_header: 0,
            offset_body,
            offset_end: end,
        }],
        raw_message: Cow::Borrowed(bytes),
        ..Message::default()
    }
}

/// How deep parts may nest (multiparts and message/rfc822 together). Deeper parts are not
/// shown: every walk over the tree recurses, and a message is as deep as its sender likes.
const MAX_DEPTH: u16 = 64;

/// A part together with the message whose bytes it points into.
#[derive(Clone, Copy)]
pub struct Node<'a, 'x> {
    message: &'a Message<'x>,
    part: &'a MessagePart<'x>,
    /// Its index in `message.parts`.
    index: usize,
    /// How many multiparts and messages it is inside.
    depth: u16,
}

impl std::fmt::Debug for Node<'_, '_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Node")
            .field("offset_header", &self.part.offset_header)
            .finish()
    }
}

impl<'a, 'x> Node<'a, 'x> {
    /// The top of a message.
    pub fn root(message: &'a Message<'x>) -> Option<Self> {
        Some(Self {
            message,
            part: message.parts.first()?,
            index: 0,
            depth: 0,
        })
    }

    fn slice(&self, from: u32, to: u32) -> &'a [u8] {
        self.message
            .raw_message
            .get(from as usize..to as usize)
            .unwrap_or_default()
    }

    /// The header block, blank line included.
    pub fn raw_headers(&self) -> &'a [u8] {
        self.slice(self.part.offset_header, self.part.offset_body)
    }

    /// The body as written (still transfer-encoded).
    pub fn raw_body(&self) -> &'a [u8] {
        self.slice(self.part.offset_body, self.part.offset_end)
    }

    /// The body, transfer-decoded.
    pub fn decoded(&self) -> Cow<'a, [u8]> {
        match &self.part.body {
            mail_parser::PartType::Message(_) | mail_parser::PartType::Multipart(_) => {
                Cow::Borrowed(self.raw_body())
            }
            _ => Cow::Borrowed(self.part.contents()),
        }
    }

    fn is_multipart(&self) -> bool {
        self.part.is_multipart()
    }

    /// The parts of a multipart. A child comes after its parent in mail-parser's list, so only
    /// later parts are taken: a malformed message whose part lists an earlier one (itself, an
    /// ancestor) would otherwise make every walk endless (the fuzzer found one; it overflowed the
    /// stack).
    fn children(&self) -> Vec<Node<'a, 'x>> {
        if self.depth >= MAX_DEPTH {
            return Vec::new();
        }
        self.part
            .sub_parts()
            .unwrap_or_default()
            .iter()
            .map(|id| *id as usize)
            .filter(|id| *id > self.index)
            .filter_map(|id| {
                Some(Node {
                    message: self.message,
                    part: self.message.parts.get(id)?,
                    index: id,
                    depth: self.depth + 1,
                })
            })
            .collect()
    }

    /// The message inside a message/rfc822 part.
    fn nested(&self) -> Option<Node<'a, 'x>> {
        if self.depth >= MAX_DEPTH {
            return None;
        }
        match &self.part.body {
            mail_parser::PartType::Message(m) => Node::root(m).map(|n| Node {
                depth: self.depth + 1,
                ..n
            }),
            _ => None,
        }
    }

    /// A header field's value as written, unfolded and trimmed.
    fn raw_header(&self, name: &str) -> Option<Vec<u8>> {
        let h = self
            .part
            .headers
            .iter()
            .rev()
            .find(|h| h.name.as_str().eq_ignore_ascii_case(name))?;
        let raw = self.slice(h.offset_start, h.offset_end);
        let unfolded: Vec<u8> = raw
            .iter()
            .copied()
            .filter(|b| *b != b'\r' && *b != b'\n')
            .collect();
        Some(unfolded.trim_ascii().to_vec())
    }

    /// The parsed value of a header field.
    pub fn header(&self, name: &str) -> Option<&'a HeaderValue<'x>> {
        self.part
            .headers
            .iter()
            .rev()
            .find(|h| h.name.as_str().eq_ignore_ascii_case(name))
            .map(|h| &h.value)
    }

    /// Every raw value of a header field.
    pub fn raw_values(&self, name: &str) -> Vec<&'a [u8]> {
        self.part
            .headers
            .iter()
            .filter(|h| h.name.as_str().eq_ignore_ascii_case(name))
            .map(|h| self.slice(h.offset_start, h.offset_end))
            .collect()
    }

    fn address(&self, name: &str) -> Option<&'a Address<'x>> {
        match self.header(name)? {
            HeaderValue::Address(a) => Some(a),
            _ => None,
        }
    }
}

/// ENVELOPE of a message.
pub fn envelope(out: &mut Vec<u8>, node: &Node<'_, '_>) {
    out.push(b'(');
    nstring(out, node.raw_header("Date").as_deref());
    out.push(b' ');
    nstring(out, node.raw_header("Subject").as_deref());
    let from = node.address("From");
    for list in [
        from,
        node.address("Sender").or(from),
        node.address("Reply-To").or(from),
        node.address("To"),
        node.address("Cc"),
        node.address("Bcc"),
    ] {
        out.push(b' ');
        addresses(out, list);
    }
    out.push(b' ');
    nstring(out, node.raw_header("In-Reply-To").as_deref());
    out.push(b' ');
    nstring(out, node.raw_header("Message-ID").as_deref());
    out.push(b')');
}

fn address(out: &mut Vec<u8>, addr: &mail_parser::Addr<'_>) {
    let address = addr.address.as_deref().unwrap_or_default();
    let (local, host) = address.rsplit_once('@').unwrap_or((address, ""));
    out.push(b'(');
    nstring(out, addr.name.as_deref().map(str::as_bytes));
    out.extend_from_slice(b" NIL ");
    string(out, local.as_bytes());
    out.push(b' ');
    if host.is_empty() {
        out.extend_from_slice(b"NIL");
    } else {
        string(out, host.as_bytes());
    }
    out.push(b')');
}

fn addresses(out: &mut Vec<u8>, list: Option<&Address<'_>>) {
    // An entry without an address (a comment or a phrase alone, as in `group2: (foo) ;`) is no
    // mailbox: written, it would read as one, or as the end of a group.
    let mailbox = |a: &&mail_parser::Addr<'_>| a.address.as_deref().is_some_and(|x| !x.is_empty());
    let empty = match list {
        None => true,
        Some(Address::List(l)) => !l.iter().any(|a| mailbox(&a)),
        Some(Address::Group(g)) => !g
            .iter()
            .any(|g| g.name.is_some() || g.addresses.iter().any(|a| mailbox(&a))),
    };
    if empty {
        out.extend_from_slice(b"NIL");
        return;
    }
    out.push(b'(');
    match list {
        Some(Address::List(l)) => l.iter().filter(mailbox).for_each(|a| address(out, a)),
        Some(Address::Group(groups)) => {
            for group in groups {
                if let Some(name) = &group.name {
                    out.extend_from_slice(b"(NIL NIL ");
                    string(out, name.as_bytes());
                    out.extend_from_slice(b" NIL)");
                }
                group
                    .addresses
                    .iter()
                    .filter(mailbox)
                    .for_each(|a| address(out, a));
                if group.name.is_some() {
                    out.extend_from_slice(b"(NIL NIL NIL NIL)");
                }
            }
        }
        None => {}
    }
    out.push(b')');
}

/// BODY (`extended == false`) or BODYSTRUCTURE of a part.
pub fn body_structure(out: &mut Vec<u8>, node: &Node<'_, '_>, extended: bool) {
    let content_type = node.part.content_type();
    let (ctype, subtype) = match content_type {
        Some(ct) => (
            ct.c_type.to_ascii_lowercase(),
            ct.c_subtype
                .as_deref()
                .unwrap_or_default()
                .to_ascii_lowercase(),
        ),
        None => ("text".to_string(), "plain".to_string()),
    };
    out.push(b'(');
    if node.is_multipart() {
        let children = node.children();
        if children.is_empty() {
            // A multipart without parts: shown as an empty text part, as Dovecot does.
            out.extend_from_slice(b"\"text\" \"plain\" NIL NIL NIL \"7bit\" 0 0)");
            return;
        }
        for child in &children {
            body_structure(out, child, extended);
        }
        out.push(b' ');
        string(out, subtype.as_bytes());
        if extended {
            out.push(b' ');
            parameters(out, node.part, false);
            out.push(b' ');
            disposition(out, node.part);
            out.extend_from_slice(b" NIL NIL");
        }
        out.push(b')');
        return;
    }
    let subtype = if subtype.is_empty() && ctype == "text" {
        "plain".to_string()
    } else {
        subtype
    };
    let nested = node.nested();
    // A message or multipart whose structure is not shown (too deep, or served as one opaque
    // part) is described as the bytes it is: IMAP's syntax for message/rfc822 demands an
    // envelope and a structure, and clients fail to parse the answer without them.
    let (ctype, subtype) = if nested.is_none()
        && (ctype == "multipart" || ctype == "message" && is_nested_type(&subtype))
    {
        ("application".to_string(), "octet-stream".to_string())
    } else {
        (ctype, subtype)
    };
    string(out, ctype.as_bytes());
    out.push(b' ');
    string(out, subtype.as_bytes());
    out.push(b' ');
    parameters(out, node.part, ctype == "text");
    out.push(b' ');
    nstring(out, node.part.content_id().map(str::as_bytes));
    out.push(b' ');
    nstring(out, node.part.content_description().map(str::as_bytes));
    out.push(b' ');
    let encoding = node
        .part
        .content_transfer_encoding()
        .map_or_else(|| "7bit".to_string(), |e| e.trim().to_ascii_lowercase());
    string(out, encoding.as_bytes());
    let body = node.raw_body();
    out.extend_from_slice(format!(" {}", body.len()).as_bytes());
    if let Some(nested) = nested {
        out.push(b' ');
        envelope(out, &nested);
        out.push(b' ');
        body_structure(out, &nested, extended);
        out.extend_from_slice(format!(" {}", lines(body)).as_bytes());
    } else if ctype == "text" {
        out.extend_from_slice(format!(" {}", lines(body)).as_bytes());
    }
    if extended {
        out.extend_from_slice(b" NIL ");
        disposition(out, node.part);
        out.extend_from_slice(b" NIL NIL");
    }
    out.push(b')');
}

/// The message subtypes whose body is a message of its own (RFC 2046, RFC 6532).
fn is_nested_type(subtype: &str) -> bool {
    subtype == "rfc822" || subtype == "global"
}

fn lines(body: &[u8]) -> usize {
    let n = body.iter().filter(|b| **b == b'\n').count();
    if body.last().is_some_and(|b| *b != b'\n') {
        n + 1
    } else {
        n
    }
}

fn attribute_list(out: &mut Vec<u8>, attributes: &[mail_parser::Attribute<'_>]) {
    out.push(b'(');
    for (i, a) in attributes.iter().enumerate() {
        if i > 0 {
            out.push(b' ');
        }
        string(out, a.name.to_ascii_lowercase().as_bytes());
        out.push(b' ');
        string(out, a.value.as_bytes());
    }
    out.push(b')');
}

fn parameters(out: &mut Vec<u8>, part: &MessagePart<'_>, text: bool) {
    match part.content_type().and_then(|ct| ct.attributes.as_deref()) {
        Some(attributes) if !attributes.is_empty() => attribute_list(out, attributes),
        _ if text => out.extend_from_slice(b"(\"charset\" \"us-ascii\")"),
        _ => out.extend_from_slice(b"NIL"),
    }
}

fn disposition(out: &mut Vec<u8>, part: &MessagePart<'_>) {
    let Some(d) = part.content_disposition() else {
        out.extend_from_slice(b"NIL");
        return;
    };
    out.push(b'(');
    string(out, d.c_type.to_ascii_lowercase().as_bytes());
    out.push(b' ');
    match d.attributes.as_deref() {
        Some(attributes) if !attributes.is_empty() => attribute_list(out, attributes),
        _ => out.extend_from_slice(b"NIL"),
    }
    out.push(b')');
}

/// The part a part number points at (RFC 9051 section 6.4.5): children of a multipart are
/// numbered from 1; part 1 of a single-part message is its body; the parts of a
/// message/rfc822 part are those of the message inside.
pub fn find_part<'a, 'x>(message: &'a Message<'x>, path: &[u32]) -> Option<Node<'a, 'x>> {
    let mut current = Node::root(message)?;
    for (i, &n) in path.iter().enumerate() {
        if i > 0
            && let Some(nested) = current.nested()
        {
            current = nested;
        }
        if current.is_multipart() {
            let index = usize::try_from(n).ok()?.checked_sub(1)?;
            current = current.children().into_iter().nth(index)?;
        } else if n != 1 {
            return None;
        }
    }
    Some(current)
}

fn numbers(p: &PartPath) -> Vec<u32> {
    p.0.as_ref().iter().map(|n| n.get()).collect()
}

/// The bytes of `BODY[section]`; `None` when the section does not exist (sent as empty).
pub fn section_bytes<'a>(
    message: &'a Message<'_>,
    raw: &'a [u8],
    section: Option<&Section<'_>>,
) -> Option<Cow<'a, [u8]>> {
    // The message a HEADER/TEXT section is about: the top one, or a message/rfc822 part's.
    let headed = |p: &Option<PartPath>| match p {
        None => Node::root(message),
        Some(p) => find_part(message, &numbers(p))?.nested(),
    };
    match section {
        None => Some(Cow::Borrowed(raw)),
        Some(Section::Part(p)) => Some(Cow::Borrowed(find_part(message, &numbers(p))?.raw_body())),
        Some(Section::Header(p)) => Some(Cow::Borrowed(headed(p)?.raw_headers())),
        Some(Section::Text(p)) => Some(Cow::Borrowed(headed(p)?.raw_body())),
        Some(Section::Mime(p)) => Some(Cow::Borrowed(
            find_part(message, &numbers(p))?.raw_headers(),
        )),
        Some(Section::HeaderFields(p, names)) => Some(Cow::Owned(filter_headers(
            headed(p)?.raw_headers(),
            names.as_ref(),
            true,
        ))),
        Some(Section::HeaderFieldsNot(p, names)) => Some(Cow::Owned(filter_headers(
            headed(p)?.raw_headers(),
            names.as_ref(),
            false,
        ))),
    }
}
/// The header fields of a header block named (or not named) in `names`, with the blank line.
fn filter_headers(block: &[u8], names: &[AString<'_>], keep_named: bool) -> Vec<u8> {
    let mut out = Vec::new();
    let mut keep = false;
    for line in block.split_inclusive(|b| *b == b'\n') {
        if line == b"\r\n" || line == b"\n" {
            break;
        }
        if !line.starts_with(b" ") && !line.starts_with(b"\t") {
            let name = line.split(|b| *b == b':').next().unwrap_or_default();
            let named = names
                .iter()
                .any(|n| n.as_ref().eq_ignore_ascii_case(name.trim_ascii()));
            keep = named == keep_named;
        }
        if keep {
            out.extend_from_slice(line);
        }
    }
    out.extend_from_slice(b"\r\n");
    out
}

/// How a section is named in the response: `1.2.HEADER.FIELDS ("Subject")`.
pub fn section_name(section: Option<&Section<'_>>) -> String {
    fn part(p: &PartPath) -> String {
        p.0.as_ref()
            .iter()
            .map(|n| n.to_string())
            .collect::<Vec<_>>()
            .join(".")
    }
    fn with(p: &Option<PartPath>, what: &str) -> String {
        match p {
            Some(p) => format!("{}.{what}", part(p)),
            None => what.to_string(),
        }
    }
    fn names(list: &[AString<'_>]) -> String {
        let mut out = Vec::new();
        for (i, n) in list.iter().enumerate() {
            if i > 0 {
                out.push(b' ');
            }
            string(&mut out, n.as_ref());
        }
        String::from_utf8_lossy(&out).into_owned()
    }
    match section {
        None => String::new(),
        Some(Section::Part(p)) => part(p),
        Some(Section::Header(p)) => with(p, "HEADER"),
        Some(Section::Text(p)) => with(p, "TEXT"),
        Some(Section::Mime(p)) => format!("{}.MIME", part(p)),
        Some(Section::HeaderFields(p, n)) => {
            format!("{} ({})", with(p, "HEADER.FIELDS"), names(n.as_ref()))
        }
        Some(Section::HeaderFieldsNot(p, n)) => {
            format!("{} ({})", with(p, "HEADER.FIELDS.NOT"), names(n.as_ref()))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIXED: &[u8] = b"From: Alice <alice@example.test>\r\n\
To: bob@example.test, Team: carol@example.test;\r\n\
Subject: =?utf-8?q?caf=C3=A9?=\r\n\
Message-ID: <1@example.test>\r\n\
Content-Type: multipart/mixed; boundary=\"b\"\r\n\
\r\n\
--b\r\n\
Content-Type: text/plain; charset=utf-8\r\n\
\r\n\
hello\r\n\
--b\r\n\
Content-Type: application/octet-stream\r\n\
Content-Disposition: attachment; filename=\"a.bin\"\r\n\
Content-Transfer-Encoding: base64\r\n\
\r\n\
AAEC\r\n\
--b--\r\n";

    #[test]
    fn messages_nested_within_the_limit_are_shown_whole() {
        let mut m = b"Subject: innermost\r\n\r\nhi\r\n".to_vec();
        for _ in 0..60 {
            m = [&b"Content-Type: message/rfc822\r\n\r\n"[..], &m].concat();
        }
        let parsed = parse(&m);
        let text = render(|o| body_structure(o, &Node::root(&parsed).expect("root"), true));
        assert_eq!(text.matches("\"message\" \"rfc822\"").count(), 60, "{text}");
        assert_eq!(text.matches('(').count(), text.matches(')').count());
    }

    /// The attack of issue 17: 100,000 message/rfc822 parts inside each other (4.4 MB) aborted
    /// the process when the parsed tree was dropped. 100 levels pass the raw pre-check and are
    /// caught after parsing; 100,000 are not parsed at all.
    #[test]
    fn messages_nested_too_deep_are_one_opaque_part() {
        for levels in [100, 100_000] {
            let mut m = b"Content-Type: message/rfc822\r\n\r\n".repeat(levels);
            m.extend_from_slice(b"Subject: innermost\r\n\r\nhi\r\n");
            let parsed = parse(&m);
            assert_eq!(parsed.parts.len(), 1, "{levels} levels");
            let root = Node::root(&parsed).expect("root");
            let text = render(|o| body_structure(o, &root, true));
            assert!(
                text.starts_with("(\"application\" \"octet-stream\""),
                "{text}"
            );
            assert_eq!(root.raw_body().len(), m.len() - 32, "{levels} levels");
        }
    }

    /// The fuzz seeds of deep nesting (plain, digest defaults, base64-hidden) parse to a tree
    /// within the limit.
    #[test]
    fn the_deep_seeds_stay_within_the_limit() {
        let seeds = concat!(env!("CARGO_MANIFEST_DIR"), "/fuzz/seeds/mime_message");
        for name in [
            "deep-rfc822-2000.eml",
            "deep-digest-300.eml",
            "deep-rfc822-in-base64.eml",
        ] {
            let bytes = std::fs::read(format!("{seeds}/{name}")).expect("a seed");
            // mail-parser itself builds a tree deeper than the limit from each of them.
            let raw = MessageParser::default().parse(&bytes).expect("parses");
            let depth = nesting(&raw);
            dismantle(raw);
            assert!(depth > usize::from(MAX_DEPTH), "{name}: only {depth} deep");
            let parsed = parse(&bytes);
            assert!(nesting(&parsed) <= usize::from(MAX_DEPTH), "{name}");
            let root = Node::root(&parsed).expect("root");
            let text = render(|o| body_structure(o, &root, true));
            assert_eq!(
                text.matches('(').count(),
                text.matches(')').count(),
                "{name}"
            );
        }
    }

    /// One outside message of 5 million one-line header fields took a FETCH to 666 MiB; 2
    /// million empty parts to a BODYSTRUCTURE of tens of MB. Both are served opaque now, while
    /// a message that only talks about messages, or has a long To list, is parsed as usual.
    #[test]
    fn messages_with_too_much_structure_are_one_opaque_part() {
        let mut fields = b"Subject: fields\r\n".to_vec();
        fields.extend(b"a:\r\n".repeat(200_000));
        fields.extend_from_slice(b"\r\nbody\r\n");
        // One field folded over 200,000 lines, in a part's header.
        let mut folded =
            b"Content-Type: multipart/mixed; boundary=b\r\n\r\n--b\r\nSubject: a".to_vec();
        folded.extend(b"\r\n a".repeat(200_000));
        folded.extend_from_slice(b"\r\n\r\nbody\r\n--b--\r\n");
        // A space before the colon is still a field to mail-parser.
        let mut spaced = b"Subject: spaced\r\n".to_vec();
        spaced.extend(b"X : y\r\n".repeat(200_000));
        spaced.extend_from_slice(b"\r\nbody\r\n");
        let mut parts = b"Content-Type: multipart/mixed; boundary=b\r\n\r\n".to_vec();
        parts.extend(b"--b\r\n\r\n".repeat(200_000));
        parts.extend_from_slice(b"--b--\r\n");
        let mut to = String::from("To: ");
        for i in 0..2_000 {
            to.push_str(&format!("user{i}@example.test, "));
        }
        for bomb in [fields, spaced, parts, folded] {
            let parsed = parse(&bomb);
            assert_eq!(parsed.parts.len(), 1);
            let root = Node::root(&parsed).expect("root");
            assert_eq!(root.raw_headers().len() + root.raw_body().len(), bomb.len());
        }
        let talkative = format!(
            "{to}\r\nSubject: about messages\r\n\r\n{}",
            "this message forwards a message digest\r\n".repeat(500)
        );
        let parsed = parse(talkative.as_bytes());
        let envelope = render(|o| envelope(o, &Node::root(&parsed).expect("root")));
        assert_eq!(envelope.matches("\"example.test\"").count(), 2_000);
    }

    /// A nested message hidden in base64 is invisible to the raw pre-check; the tree's depth is
    /// still measured after parsing.
    #[test]
    fn depth_is_checked_after_decoding_too() {
        use base64::Engine;
        let inner = b"Content-Type: message/rfc822\r\n\r\n".repeat(100);
        let encoded = base64::engine::general_purpose::STANDARD.encode(&inner);
        let m = format!(
            "Content-Type: message/rfc822\r\nContent-Transfer-Encoding: base64\r\n\r\n{encoded}\r\n"
        );
        let parsed = parse(m.as_bytes());
        assert!(nesting(&parsed) <= usize::from(MAX_DEPTH));
        // 100,000 levels under base64 (a reviewer found mail-parser's own copy of the decoded
        // tree overflowing the stack before any check), and the same behind quoted-printable
        // and as a digest's default-typed part: one opaque part, at once.
        let deep = b"Content-Type: message/rfc822\r\n\r\n".repeat(100_000);
        let encoded = base64::engine::general_purpose::STANDARD.encode(&deep);
        for m in [
            format!(
                "Content-Type: message/rfc822\r\nContent-Transfer-Encoding: base64\r\n\r\n{encoded}\r\n"
            ),
            "Content-Type: multipart/mixed; boundary=b\r\n\r\n--b\r\nContent-Type: Message/RFC822\r\nContent-Transfer-Encoding:\r\n Quoted-Printable\r\n\r\nx\r\n--b--\r\n".to_string(),
            format!(
                "Content-Type: multipart/digest; boundary=d\r\n\r\n--d\r\nContent-Transfer-Encoding: base64\r\n\r\n{encoded}\r\n--d--\r\n"
            ),
        ] {
            let parsed = parse(m.as_bytes());
            assert_eq!(parsed.parts.len(), 1, "{:.120}", m);
        }
        // A forwarded message attached as it is, beside a base64 image, is parsed as usual.
        let normal = "Content-Type: multipart/mixed; boundary=b\r\n\r\n--b\r\n\
Content-Type: message/rfc822\r\n\r\nSubject: inner\r\n\r\nhi\r\n--b\r\n\
Content-Type: image/png\r\nContent-Transfer-Encoding: base64\r\n\r\nAAAA\r\n--b--\r\n";
        let parsed = parse(normal.as_bytes());
        assert!(parsed.parts.len() > 2, "{:?}", parsed.parts.len());
    }

    fn render(f: impl FnOnce(&mut Vec<u8>)) -> String {
        let mut out = Vec::new();
        f(&mut out);
        String::from_utf8(out).expect("ascii")
    }

    #[test]
    fn envelope_keeps_raw_values_and_groups() {
        let m = parse(MIXED);
        let env = render(|o| envelope(o, &Node::root(&m).expect("root")));
        assert_eq!(
            env,
            "(NIL \"=?utf-8?q?caf=C3=A9?=\" ((\"Alice\" NIL \"alice\" \"example.test\")) \
((\"Alice\" NIL \"alice\" \"example.test\")) ((\"Alice\" NIL \"alice\" \"example.test\")) \
((NIL NIL \"bob\" \"example.test\")(NIL NIL \"Team\" NIL)(NIL NIL \"carol\" \"example.test\")(NIL NIL NIL NIL)) \
NIL NIL NIL \"<1@example.test>\")"
        );
    }

    /// Issue 15 item 12: `Cc: group:;, group2: (foo) ;` gave a spurious address.
    #[test]
    fn empty_groups_and_bare_comments_are_no_addresses() {
        let m = parse(b"From: a@example.test\r\nCc: group:;, group2: (foo) ;\r\nBcc: (only a comment)\r\n\r\nx\r\n");
        let env = render(|o| envelope(o, &Node::root(&m).expect("root")));
        assert!(
            env.contains("((NIL NIL \"group\" NIL)(NIL NIL NIL NIL)(NIL NIL \"group2\" NIL)(NIL NIL NIL NIL))"),
            "{env}"
        );
        assert!(!env.contains("\"foo\""), "{env}");
        assert!(!env.contains("()"), "{env}");
    }

    #[test]
    fn bodystructure_of_a_multipart() {
        let m = parse(MIXED);
        let bs = render(|o| body_structure(o, &Node::root(&m).expect("root"), true));
        assert_eq!(
            bs,
            "((\"text\" \"plain\" (\"charset\" \"utf-8\") NIL NIL \"7bit\" 5 1 NIL NIL NIL NIL)\
(\"application\" \"octet-stream\" NIL NIL NIL \"base64\" 4 NIL (\"attachment\" (\"filename\" \"a.bin\")) NIL NIL) \
\"mixed\" (\"boundary\" \"b\") NIL NIL NIL)"
        );
    }

    #[test]
    fn sections_by_part_number() {
        let m = parse(MIXED);
        let p = |s: &[u32]| find_part(&m, s).map(|p| p.raw_body().to_vec());
        assert_eq!(p(&[1]).as_deref(), Some(&b"hello"[..]));
        assert_eq!(p(&[2]).as_deref(), Some(&b"AAEC"[..]));
        assert_eq!(p(&[3]), None);
        let single = parse(b"Subject: x\r\n\r\nbody\r\n");
        assert_eq!(
            find_part(&single, &[1]).map(|p| p.raw_body().to_vec()),
            Some(b"body\r\n".to_vec())
        );
        assert!(find_part(&single, &[2]).is_none());
    }
}
