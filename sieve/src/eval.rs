//! Running a compiled script against one message: tests read the message and the envelope,
//! commands collect actions. Nothing here touches the store or the network; the caller
//! carries the actions out.
//!
//! Every run is bounded: a budget of work units (one per command and test, more for long
//! comparisons), at most [`MAX_REDIRECTS`] redirects, variables of at most
//! [`MAX_VARIABLE_BYTES`]. A run that exceeds a bound, or meets any other run-time error,
//! ends in the implicit keep alone (RFC 5228 s2.10.6): the message reaches INBOX.

use std::collections::HashMap;

use chrono::{DateTime, Datelike, FixedOffset, NaiveDate, TimeZone};
use mail_parser::{MessageParser, MimeHeaders, PartType};
use sha2::{Digest, Sha256};

use crate::{
    matching::{self, Cache},
    script::{
        AddressPart, BodyTransform, Cmd, Comparator, FlagOp, MatchKind, Matcher, Modifier, Script,
        Test, VacationCmd, Zone,
    },
};

/// Redirects one run may make.
pub const MAX_REDIRECTS: usize = 4;
/// The longest value a variable holds; longer ones are cut (RFC 5229 s3 allows it).
pub const MAX_VARIABLE_BYTES: usize = 4096;
/// Variables one run may set.
pub const MAX_VARIABLES: usize = 256;
/// Work units one run may spend.
pub const BUDGET: u64 = 4_000_000;
/// Of each body part, this much is searched.
pub const MAX_BODY_BYTES: usize = 1 << 20;
/// A vacation reply's shortest and longest interval.
pub const MIN_VACATION_SECONDS: u64 = 3600;
pub const MAX_VACATION_SECONDS: u64 = 365 * 86_400;
/// Without `:days`, a sender is answered once a week.
pub const DEFAULT_VACATION_SECONDS: u64 = 7 * 86_400;

/// The SMTP envelope of the delivery a script runs for.
#[derive(Debug, Clone, Default)]
pub struct Envelope {
    /// The reverse path; empty for the null sender.
    pub from: String,
    /// The recipient this run delivers to.
    pub to: String,
}

/// Everything a run reads.
#[derive(Debug, Clone, Copy)]
pub struct Input<'a> {
    pub message: &'a [u8],
    pub envelope: &'a Envelope,
    /// The time of delivery, in the zone dates are shown in by default.
    pub now: DateTime<FixedOffset>,
    /// The folders the mailbox has, for `mailboxexists`.
    pub folders: &'a [String],
}

/// One thing the caller must do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Store in INBOX with these flags.
    Keep { flags: Vec<String> },
    /// Store in a folder, creating it first if `create`; a folder that is missing and not to
    /// be created means INBOX.
    FileInto {
        folder: String,
        flags: Vec<String>,
        create: bool,
    },
    /// Send the message on to this address.
    Redirect { address: String },
    /// Refuse the message with this reason.
    Reject { reason: String },
    /// Answer the sender, unless answered within `seconds` already under `handle`.
    Vacation(Vacation),
}

/// A vacation action, with every string expanded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Vacation {
    pub seconds: u64,
    pub subject: Option<String>,
    pub from: Option<String>,
    pub addresses: Vec<String>,
    pub mime: bool,
    /// Replies with the same handle share their memory of whom was answered.
    pub handle: String,
    pub reason: String,
}

/// What a run decided.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    pub actions: Vec<Action>,
    /// A run-time error; the actions are then the implicit keep alone.
    pub error: Option<String>,
    /// Whether the keep among the actions is the implicit one (no action cancelled it), so a
    /// caller running several scripts in turn can tell it from an explicit `keep`.
    pub implicit_keep: bool,
}

enum Flow {
    Go,
    Stop,
}

/// Runs a script.
pub fn run(script: &Script, input: &Input<'_>) -> Outcome {
    let mut state = Run {
        input,
        mail: Mail::new(input.message),
        variables: script.uses("variables"),
        vars: HashMap::new(),
        matched: Vec::new(),
        flags: Vec::new(),
        actions: Vec::new(),
        cancelled: false,
        budget: BUDGET,
        cache: Cache::default(),
        redirects: 0,
    };
    match state.block(&script.commands).and_then(|_| state.finish()) {
        Ok(actions) => Outcome {
            actions,
            error: None,
            implicit_keep: !state.cancelled,
        },
        Err(error) => Outcome {
            actions: vec![Action::Keep { flags: Vec::new() }],
            error: Some(error),
            implicit_keep: true,
        },
    }
}

struct Run<'a> {
    input: &'a Input<'a>,
    mail: Mail<'a>,
    variables: bool,
    vars: HashMap<String, String>,
    matched: Vec<String>,
    /// imap4flags' internal variable.
    flags: Vec<String>,
    actions: Vec<Action>,
    /// Whether an action cancelled the implicit keep.
    cancelled: bool,
    budget: u64,
    cache: Cache,
    redirects: usize,
}

impl Run<'_> {
    fn spend(&mut self, units: u64) -> Result<(), String> {
        self.budget = self
            .budget
            .checked_sub(units)
            .ok_or_else(|| "the script used more than its share of work".to_string())?;
        Ok(())
    }

    fn finish(&mut self) -> Result<Vec<Action>, String> {
        if !self.cancelled {
            self.actions.push(Action::Keep {
                flags: self.flags.clone(),
            });
        }
        let rejects = self
            .actions
            .iter()
            .any(|a| matches!(a, Action::Reject { .. }));
        if rejects
            && self.actions.iter().any(|a| {
                matches!(
                    a,
                    Action::Keep { .. } | Action::FileInto { .. } | Action::Vacation(_)
                )
            })
        {
            return Err("reject cannot be combined with keep, fileinto or vacation".into());
        }
        // One store per folder: a fileinto "INBOX" is a keep, and the last flags win.
        let mut actions: Vec<Action> = Vec::new();
        for action in std::mem::take(&mut self.actions) {
            let action = match action {
                Action::FileInto { folder, flags, .. } if folder.eq_ignore_ascii_case("INBOX") => {
                    Action::Keep { flags }
                }
                other => other,
            };
            let same = actions.iter().position(|a| match (a, &action) {
                (Action::Keep { .. }, Action::Keep { .. }) => true,
                (Action::FileInto { folder: x, .. }, Action::FileInto { folder: y, .. }) => x == y,
                (Action::Redirect { address: x }, Action::Redirect { address: y }) => {
                    x.eq_ignore_ascii_case(y)
                }
                (Action::Reject { .. }, Action::Reject { .. }) => true,
                _ => false,
            });
            match same {
                Some(i) => actions[i] = action,
                None => actions.push(action),
            }
        }
        Ok(actions)
    }

    fn block(&mut self, commands: &[Cmd]) -> Result<Flow, String> {
        for command in commands {
            self.spend(1)?;
            if let Flow::Stop = self.command(command)? {
                return Ok(Flow::Stop);
            }
        }
        Ok(Flow::Go)
    }

    fn command(&mut self, command: &Cmd) -> Result<Flow, String> {
        match command {
            Cmd::If {
                branches,
                otherwise,
            } => {
                for (test, block) in branches {
                    if self.test(test)? {
                        return self.block(block);
                    }
                }
                if let Some(block) = otherwise {
                    return self.block(block);
                }
            }
            Cmd::Stop => return Ok(Flow::Stop),
            Cmd::Keep { flags } => {
                let flags = self.flag_list(flags.as_deref());
                self.actions.push(Action::Keep { flags });
                self.cancelled = true;
            }
            Cmd::Discard => self.cancelled = true,
            Cmd::FileInto {
                folder,
                flags,
                copy,
                create,
            } => {
                let folder = self.expand(folder);
                if !valid_folder(&folder) {
                    return Err(format!("fileinto: {folder:?} is not a folder name"));
                }
                let flags = self.flag_list(flags.as_deref());
                self.actions.push(Action::FileInto {
                    folder,
                    flags,
                    create: *create,
                });
                self.cancelled |= !copy;
            }
            Cmd::Redirect { address, copy } => {
                let address = self.expand(address);
                if !crate::valid_address(&address) {
                    return Err(format!("redirect: {address:?} is not an address"));
                }
                // The same address twice is one redirect (the actions are merged).
                let known = self.actions.iter().any(|a| {
                    matches!(a, Action::Redirect { address: x } if x.eq_ignore_ascii_case(&address))
                });
                if !known {
                    self.redirects += 1;
                }
                if self.redirects > MAX_REDIRECTS {
                    return Err(format!("more than {MAX_REDIRECTS} redirects"));
                }
                self.actions.push(Action::Redirect { address });
                self.cancelled |= !copy;
            }
            Cmd::Reject { reason } => {
                let reason = self.expand(reason);
                self.actions.push(Action::Reject { reason });
                self.cancelled = true;
            }
            Cmd::Flags {
                op,
                variable,
                flags,
            } => {
                let given = split_flags(flags.iter().map(|f| self.expand(f)));
                let current = match variable {
                    Some(name) => split_flags(self.vars.get(name).cloned()),
                    None => self.flags.clone(),
                };
                let next = match op {
                    FlagOp::Set => given,
                    FlagOp::Add => split_flags(current.into_iter().chain(given)),
                    FlagOp::Remove => current
                        .into_iter()
                        .filter(|f| !given.iter().any(|g| g.eq_ignore_ascii_case(f)))
                        .collect(),
                };
                match variable {
                    Some(name) => self.set(name, next.join(" "))?,
                    None => self.flags = next,
                }
            }
            Cmd::Set {
                name,
                value,
                modifiers,
            } => {
                let mut value = self.expand(value);
                let mut modifiers = modifiers.clone();
                modifiers.sort();
                for modifier in modifiers {
                    value = modify(modifier, value);
                }
                self.set(name, value)?;
            }
            Cmd::Vacation(vacation) => {
                if self
                    .actions
                    .iter()
                    .any(|a| matches!(a, Action::Vacation(_)))
                {
                    return Err("vacation is given twice".into());
                }
                let vacation = self.vacation(vacation);
                self.actions.push(Action::Vacation(vacation));
            }
        }
        Ok(Flow::Go)
    }

    fn vacation(&self, v: &VacationCmd) -> Vacation {
        let subject = v.subject.as_ref().map(|s| self.expand(s));
        let from = v.from.as_ref().map(|s| self.expand(s));
        let reason = self.expand(&v.reason);
        // RFC 5230 s4.2: without :handle, replies that say the same thing share one memory.
        let handle = match &v.handle {
            Some(h) => self.expand(h),
            None => {
                let mut hash = Sha256::new();
                for part in [subject.as_deref(), from.as_deref(), Some(reason.as_str())] {
                    hash.update(part.unwrap_or("").as_bytes());
                    hash.update([0]);
                }
                hash.update([u8::from(v.mime)]);
                hash.finalize()[..12]
                    .iter()
                    .map(|b| format!("{b:02x}"))
                    .collect()
            }
        };
        Vacation {
            seconds: v
                .seconds
                .unwrap_or(DEFAULT_VACATION_SECONDS)
                .clamp(MIN_VACATION_SECONDS, MAX_VACATION_SECONDS),
            subject,
            from,
            addresses: v.addresses.iter().map(|a| self.expand(a)).collect(),
            mime: v.mime,
            handle,
            reason,
        }
    }

    fn set(&mut self, name: &str, mut value: String) -> Result<(), String> {
        if !self.vars.contains_key(name) && self.vars.len() >= MAX_VARIABLES {
            return Err(format!("more than {MAX_VARIABLES} variables"));
        }
        truncate(&mut value, MAX_VARIABLE_BYTES);
        self.vars.insert(name.to_string(), value);
        Ok(())
    }

    fn flag_list(&self, explicit: Option<&[String]>) -> Vec<String> {
        match explicit {
            Some(flags) => split_flags(flags.iter().map(|f| self.expand(f))),
            None => self.flags.clone(),
        }
    }

    /// A string with its `${...}` references replaced, when the script uses variables.
    fn expand(&self, s: &str) -> String {
        if !self.variables || !s.contains("${") {
            return s.to_string();
        }
        let mut out = String::new();
        let mut rest = s;
        while let Some(start) = rest.find("${") {
            out.push_str(&rest[..start]);
            let after = &rest[start + 2..];
            let found = after
                .find('}')
                .and_then(|end| Some((self.lookup(&after[..end])?, end)));
            match found {
                Some((value, end)) => {
                    out.push_str(value);
                    rest = &after[end + 1..];
                }
                None => {
                    out.push_str("${");
                    rest = after;
                }
            }
            if out.len() > 4 * MAX_VARIABLE_BYTES * 16 {
                break;
            }
        }
        out.push_str(rest);
        out
    }

    /// A reference's value; `None` when the name is not a valid reference (then it stays
    /// as written, RFC 5229 s3).
    fn lookup(&self, name: &str) -> Option<&str> {
        if !name.is_empty() && name.chars().all(|c| c.is_ascii_digit()) {
            let n: usize = name.parse().ok()?;
            return Some(self.matched.get(n).map_or("", String::as_str));
        }
        let mut chars = name.chars();
        let valid = chars
            .next()
            .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
            && chars.all(|c| c.is_ascii_alphanumeric() || c == '_');
        if !valid {
            return None;
        }
        Some(
            self.vars
                .get(&name.to_ascii_lowercase())
                .map_or("", String::as_str),
        )
    }

    fn test(&mut self, test: &Test) -> Result<bool, String> {
        self.spend(1)?;
        Ok(match test {
            Test::True => true,
            Test::False => false,
            Test::Not(inner) => !self.test(inner)?,
            Test::AllOf(tests) => {
                for t in tests {
                    if !self.test(t)? {
                        return Ok(false);
                    }
                }
                true
            }
            Test::AnyOf(tests) => {
                for t in tests {
                    if self.test(t)? {
                        return Ok(true);
                    }
                }
                false
            }
            Test::Exists(names) => names
                .iter()
                .all(|n| !self.mail.values(&self.expand(n)).is_empty()),
            Test::Size { over, limit } => {
                let size = self.input.message.len() as u64;
                if *over { size > *limit } else { size < *limit }
            }
            Test::Header {
                matcher,
                names,
                keys,
            } => {
                let mut values = Vec::new();
                for name in names {
                    for raw in self.mail.values(&self.expand(name)) {
                        self.budget = self.budget.saturating_sub(1 + raw.len() as u64 / 64);
                        values.push(decode(raw));
                    }
                }
                self.spend(1)?;
                self.compare(matcher, &values, keys)?
            }
            Test::Address {
                matcher,
                part,
                names,
                keys,
            } => {
                let mut values = Vec::new();
                for name in names {
                    for raw in self.mail.values(&self.expand(name)) {
                        self.budget = self.budget.saturating_sub(1 + raw.len() as u64 / 64);
                        values.extend(addresses(raw).iter().map(|a| address_part(a, *part)));
                    }
                }
                self.spend(1)?;
                self.compare(matcher, &values, keys)?
            }
            Test::Envelope {
                matcher,
                part,
                names,
                keys,
            } => {
                let values: Vec<String> = names
                    .iter()
                    .map(|n| {
                        let address = if n.eq_ignore_ascii_case("from") {
                            &self.input.envelope.from
                        } else {
                            &self.input.envelope.to
                        };
                        if address.is_empty() {
                            String::new()
                        } else {
                            address_part(address, *part)
                        }
                    })
                    .collect();
                self.compare(matcher, &values, keys)?
            }
            Test::Body {
                matcher,
                transform,
                keys,
            } => {
                let values = self.mail.body(transform);
                let read: u64 = values.iter().map(|v| v.len() as u64 / 64).sum();
                self.spend(1 + read)?;
                self.compare(matcher, &values, keys)?
            }
            Test::String {
                matcher,
                sources,
                keys,
            } => {
                let mut values: Vec<String> = sources.iter().map(|s| self.expand(s)).collect();
                if matches!(matcher.kind, MatchKind::Count(_)) {
                    values.retain(|v| !v.is_empty());
                }
                self.compare(matcher, &values, keys)?
            }
            Test::HasFlag {
                matcher,
                variables,
                keys,
            } => {
                let values = if variables.is_empty() {
                    self.flags.clone()
                } else {
                    split_flags(variables.iter().filter_map(|v| self.vars.get(v).cloned()))
                };
                let keys = split_flags(keys.iter().map(|k| self.expand(k)));
                self.compare(matcher, &values, &keys)?
            }
            Test::MailboxExists(names) => names.iter().all(|n| {
                let n = self.expand(n);
                n.eq_ignore_ascii_case("INBOX") || self.input.folders.contains(&n)
            }),
            Test::Date {
                matcher,
                zone,
                header,
                part,
                keys,
            } => {
                let header = self.expand(header);
                // The last field of that name counts, for Received the first (RFC 5260 s4).
                let values = self.mail.values(&header);
                let raw = if header.eq_ignore_ascii_case("received") {
                    values.first()
                } else {
                    values.last()
                };
                let Some(date) = raw.and_then(|r| parse_date(r, &header)) else {
                    return Ok(false);
                };
                let date = match zone {
                    Zone::Original => date,
                    Zone::Local => date.with_timezone(&self.input.now.timezone()),
                    Zone::Fixed(z) => match parse_zone(z) {
                        Some(offset) => date.with_timezone(&offset),
                        None => date,
                    },
                };
                let values = vec![date_part(&date, part)];
                self.compare(matcher, &values, keys)?
            }
            Test::CurrentDate {
                matcher,
                zone,
                part,
                keys,
            } => {
                let now = match zone {
                    Zone::Fixed(z) => match parse_zone(z) {
                        Some(offset) => self.input.now.with_timezone(&offset),
                        None => self.input.now,
                    },
                    _ => self.input.now,
                };
                let values = vec![date_part(&now, part)];
                self.compare(matcher, &values, keys)?
            }
        })
    }

    /// Whether any value matches any key; a `:count` counts the values instead.
    fn compare(
        &mut self,
        matcher: &Matcher,
        values: &[String],
        keys: &[String],
    ) -> Result<bool, String> {
        let keys: Vec<String> = keys.iter().map(|k| self.expand(k)).collect();
        if let MatchKind::Count(relation) = matcher.kind {
            let count = values.len().to_string();
            return Ok(keys.iter().any(|k| {
                matching::relation_holds(
                    relation,
                    matching::order(Comparator::AsciiNumeric, &count, k),
                )
            }));
        }
        for value in values {
            for key in &keys {
                self.spend(matching::cost(matcher.kind, value, key))?;
                let mut captures = None;
                if matching::value_matches(
                    matcher.kind,
                    matcher.comparator,
                    value,
                    key,
                    &mut self.cache,
                    &mut captures,
                )? {
                    if let Some(mut captures) = captures.filter(|_| self.variables) {
                        for c in &mut captures {
                            truncate(c, MAX_VARIABLE_BYTES);
                        }
                        self.matched = captures;
                    }
                    return Ok(true);
                }
            }
        }
        Ok(false)
    }
}

fn truncate(value: &mut String, max: usize) {
    if value.len() > max {
        let mut end = max;
        while !value.is_char_boundary(end) {
            end -= 1;
        }
        value.truncate(end);
    }
}

fn modify(modifier: Modifier, value: String) -> String {
    match modifier {
        Modifier::Lower => value.to_lowercase(),
        Modifier::Upper => value.to_uppercase(),
        Modifier::LowerFirst | Modifier::UpperFirst => {
            let mut chars = value.chars();
            match chars.next() {
                Some(first) => {
                    let first: String = if modifier == Modifier::LowerFirst {
                        first.to_lowercase().collect()
                    } else {
                        first.to_uppercase().collect()
                    };
                    first + chars.as_str()
                }
                None => value,
            }
        }
        Modifier::QuoteWildcard => {
            let mut out = String::with_capacity(value.len());
            for c in value.chars() {
                if matches!(c, '*' | '?' | '\\') {
                    out.push('\\');
                }
                out.push(c);
            }
            out
        }
        Modifier::Length => value.chars().count().to_string(),
    }
}

/// Flags as imap4flags keeps them: split at spaces, each once (system flags compared without
/// case).
fn split_flags(lists: impl IntoIterator<Item = String>) -> Vec<String> {
    let mut flags: Vec<String> = Vec::new();
    for list in lists {
        for flag in list.split_whitespace() {
            if !flags.iter().any(|f| f.eq_ignore_ascii_case(flag)) {
                flags.push(flag.to_string());
            }
        }
    }
    flags
}

fn valid_folder(name: &str) -> bool {
    // Bidirectional overrides would let a folder's name show as another's.
    let bidi = |c: char| matches!(c, '\u{200e}' | '\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}');
    !name.is_empty()
        && name.len() <= 255
        && !name.chars().any(|c| c.is_control() || bidi(c))
        && !name
            .split('/')
            .any(|part| part.is_empty() || part == "." || part == "..")
}

fn address_part(address: &str, part: AddressPart) -> String {
    match (part, address.rsplit_once('@')) {
        (AddressPart::All, _) => address.to_string(),
        (AddressPart::LocalPart, Some((local, _))) => local.to_string(),
        (AddressPart::Domain, Some((_, domain))) => domain.to_string(),
        (AddressPart::LocalPart, None) => address.to_string(),
        (AddressPart::Domain, None) => String::new(),
    }
}

/// RFC 2047 encoded words decoded, by mail-parser's unstructured-field reader.
fn decode(raw: &str) -> String {
    if !raw.contains("=?") {
        return raw.to_string();
    }
    let field = format!("X-Sieve-Value: {raw}\r\n\r\n");
    MessageParser::new()
        .default_header_text()
        .parse_headers(field.as_bytes())
        .and_then(|m| {
            m.headers()
                .first()
                .and_then(|h| h.value().as_text().map(str::to_string))
        })
        .unwrap_or_else(|| raw.to_string())
}

/// The addresses in an address field, by mail-parser's address reader.
fn addresses(raw: &str) -> Vec<String> {
    let field = format!("To: {raw}\r\n\r\n");
    MessageParser::new()
        .with_address_headers()
        .parse_headers(field.as_bytes())
        .and_then(|m| {
            m.to().map(|list| {
                list.iter()
                    .filter_map(|a| a.address().map(str::to_string))
                    .collect()
            })
        })
        .unwrap_or_default()
}

fn parse_date(raw: &str, _header: &str) -> Option<DateTime<FixedOffset>> {
    // A Received field carries its date after the last ';'.
    let text = raw.rsplit_once(';').map_or(raw, |(_, d)| d);
    let field = format!("Date: {}\r\n\r\n", text.trim());
    let message = MessageParser::new()
        .with_date_headers()
        .parse_headers(field.as_bytes())?;
    let d = message.date()?;
    let mut offset = i32::from(d.tz_hour) * 3600 + i32::from(d.tz_minute) * 60;
    if d.tz_before_gmt {
        offset = -offset;
    }
    let zone = FixedOffset::east_opt(offset)?;
    let naive = NaiveDate::from_ymd_opt(i32::from(d.year), u32::from(d.month), u32::from(d.day))?
        .and_hms_opt(u32::from(d.hour), u32::from(d.minute), u32::from(d.second))?;
    zone.from_local_datetime(&naive).single()
}

/// `+0100` or `-0530` as an offset.
pub(crate) fn parse_zone(zone: &str) -> Option<FixedOffset> {
    let bytes = zone.as_bytes();
    if bytes.len() != 5 || !bytes[1..].iter().all(u8::is_ascii_digit) {
        return None;
    }
    let hours: i32 = zone[1..3].parse().ok()?;
    let minutes: i32 = zone[3..5].parse().ok()?;
    if minutes > 59 {
        return None;
    }
    let seconds = hours * 3600 + minutes * 60;
    match bytes[0] {
        b'+' => FixedOffset::east_opt(seconds),
        b'-' => FixedOffset::west_opt(seconds),
        _ => None,
    }
}

/// RFC 5260 s2.4's date parts.
fn date_part(date: &DateTime<FixedOffset>, part: &str) -> String {
    match part {
        "year" => date.format("%Y").to_string(),
        "month" => date.format("%m").to_string(),
        "day" => date.format("%d").to_string(),
        "date" => date.format("%Y-%m-%d").to_string(),
        "julian" => {
            // The Modified Julian Day: days since 1858-11-17.
            let epoch = NaiveDate::from_ymd_opt(1858, 11, 17).map(|d| d.num_days_from_ce());
            epoch.map_or(String::new(), |e| (date.num_days_from_ce() - e).to_string())
        }
        "hour" => date.format("%H").to_string(),
        "minute" => date.format("%M").to_string(),
        "second" => date.format("%S").to_string(),
        "time" => date.format("%H:%M:%S").to_string(),
        "iso8601" => date.format("%Y-%m-%dT%H:%M:%S%:z").to_string(),
        "std11" => date.format("%a, %d %b %Y %H:%M:%S %z").to_string(),
        "zone" => date.format("%z").to_string(),
        "weekday" => date.format("%w").to_string(),
        _ => String::new(),
    }
}

/// The message as tests read it: header fields unfolded, the body parsed on first need.
struct Mail<'a> {
    raw: &'a [u8],
    body_start: usize,
    fields: Vec<(String, String)>,
    body: Option<Vec<(String, String)>>,
}

impl<'a> Mail<'a> {
    fn new(raw: &'a [u8]) -> Self {
        let mut fields: Vec<(String, String)> = Vec::new();
        let mut at = 0;
        let mut body_start = raw.len();
        while at < raw.len() {
            let end = raw[at..]
                .iter()
                .position(|b| *b == b'\n')
                .map_or(raw.len(), |p| at + p + 1);
            let line = &raw[at..end];
            let text = line.strip_suffix(b"\n").unwrap_or(line);
            let text = text.strip_suffix(b"\r").unwrap_or(text);
            at = end;
            if text.is_empty() {
                body_start = end;
                break;
            }
            let text = String::from_utf8_lossy(text);
            if text.starts_with([' ', '\t']) {
                if let Some((_, value)) = fields.last_mut() {
                    value.push_str(&text);
                }
                continue;
            }
            if let Some((name, value)) = text.split_once(':') {
                fields.push((
                    name.trim().to_ascii_lowercase(),
                    value.trim_start().to_string(),
                ));
            }
        }
        for (_, value) in &mut fields {
            let trimmed = value.trim_end().len();
            value.truncate(trimmed);
        }
        Self {
            raw,
            body_start,
            fields,
            body: None,
        }
    }

    fn values(&self, name: &str) -> Vec<&str> {
        let name = name.to_ascii_lowercase();
        self.fields
            .iter()
            .filter(|(n, _)| *n == name)
            .map(|(_, v)| v.as_str())
            .collect()
    }

    /// The body as `body` reads it: each part with its content type.
    fn body(&mut self, transform: &BodyTransform) -> Vec<String> {
        if *transform == BodyTransform::Raw {
            let end = self.raw.len().min(self.body_start + MAX_BODY_BYTES);
            return vec![String::from_utf8_lossy(&self.raw[self.body_start..end]).into_owned()];
        }
        let raw = self.raw;
        let parts = self.body.get_or_insert_with(|| {
            let Some(message) = MessageParser::default().parse(raw) else {
                return Vec::new();
            };
            message
                .parts
                .iter()
                .filter_map(|part| {
                    let (kind, sub) = part.content_type().map_or(
                        ("text".to_string(), "plain".to_string()),
                        |ct| {
                            (
                                ct.ctype().to_ascii_lowercase(),
                                ct.subtype().unwrap_or("").to_ascii_lowercase(),
                            )
                        },
                    );
                    let mut text = match &part.body {
                        PartType::Text(t) | PartType::Html(t) => t.to_string(),
                        PartType::Binary(b) | PartType::InlineBinary(b) => {
                            String::from_utf8_lossy(b).into_owned()
                        }
                        _ => return None,
                    };
                    truncate(&mut text, MAX_BODY_BYTES);
                    Some((format!("{kind}/{sub}"), text))
                })
                .take(64)
                .collect()
        });
        parts
            .iter()
            .filter(|(ctype, _)| match transform {
                BodyTransform::Text => ctype.starts_with("text/"),
                BodyTransform::Content(types) => types.iter().any(|t| {
                    let t = t.to_ascii_lowercase();
                    t.is_empty()
                        || *ctype == t
                        || (!t.contains('/') && ctype.split('/').next() == Some(t.as_str()))
                }),
                BodyTransform::Raw => false,
            })
            .map(|(_, text)| text.clone())
            .collect()
    }
}
