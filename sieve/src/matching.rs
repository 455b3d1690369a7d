//! Match types and comparators (RFC 5228 s2.7, RFC 4790, RFC 5231): how one value is compared
//! with one key. `:matches` is turned into a regular expression, so its wildcards and `:regex`
//! both run on the `regex` crate, whose time is linear in the input: no pattern a script
//! brings can make a match take exponential time. Each wildcard takes as little as it can
//! (RFC 5229 s3.2's examples: `"[*] *"` on `[acme-users] [fwd] ...` gives `acme-users` first),
//! as Pigeonhole does.

use std::{cmp::Ordering, collections::HashMap};

use regex::{Regex, RegexBuilder};

use crate::script::{Comparator, MatchKind, Relation};

/// Compiled programs, and each one's lazy DFA, stay under this many bytes.
const REGEX_SIZE_LIMIT: usize = 256 * 1024;
/// Patterns one run keeps compiled; past this the cache starts afresh (each compiled pattern
/// holds its own search caches, so the count bounds the memory a run takes).
const CACHED_PATTERNS: usize = 32;

/// A pattern as `:regex` takes it (POSIX extended, as far as the `regex` crate reads it).
pub(crate) fn regex(pattern: &str, comparator: Comparator) -> Result<Regex, String> {
    RegexBuilder::new(pattern)
        .case_insensitive(comparator == Comparator::AsciiCasemap)
        .dot_matches_new_line(true)
        .size_limit(REGEX_SIZE_LIMIT)
        .dfa_size_limit(REGEX_SIZE_LIMIT)
        .build()
        .map_err(|e| {
            let shown: String = pattern.chars().take(60).collect();
            let cut = if shown.len() < pattern.len() {
                "..."
            } else {
                ""
            };
            format!("the regular expression {shown:?}{cut} is refused: {e}")
        })
}

/// `:matches`'s wildcards as a regular expression: `*` any run, `?` one character, `\`
/// escaping the next one. Each wildcard is a group, for the match variables.
fn glob(pattern: &str, comparator: Comparator) -> Result<Regex, String> {
    let mut re = String::from("^");
    let mut chars = pattern.chars();
    while let Some(c) = chars.next() {
        match c {
            '*' => re.push_str("(.*?)"),
            '?' => re.push_str("(.)"),
            '\\' => {
                if let Some(next) = chars.next() {
                    re.push_str(&regex::escape(&next.to_string()));
                }
            }
            c => re.push_str(&regex::escape(&c.to_string())),
        }
    }
    re.push('$');
    regex(&re, comparator)
}

/// Regular expressions built during one run, by pattern.
#[derive(Debug, Default)]
pub(crate) struct Cache(HashMap<(bool, bool, String), Regex>);

impl Cache {
    fn get(
        &mut self,
        glob_pattern: bool,
        comparator: Comparator,
        key: &str,
    ) -> Result<&Regex, String> {
        let id = (
            glob_pattern,
            comparator == Comparator::AsciiCasemap,
            key.to_string(),
        );
        if !self.0.contains_key(&id) {
            if self.0.len() >= CACHED_PATTERNS {
                self.0.clear();
            }
            // A run compiles a bounded number of patterns: the script's keys, each once.
            let built = if glob_pattern {
                glob(key, comparator)?
            } else {
                regex(key, comparator)?
            };
            self.0.insert(id.clone(), built);
        }
        self.0
            .get(&id)
            .ok_or_else(|| "the pattern cache lost an entry".to_string())
    }
}

/// RFC 4790's i;ascii-numeric value: the leading digits, or `None` (positive infinity) when
/// the string does not start with one.
fn numeric(s: &str) -> Option<u128> {
    let digits: String = s.chars().take_while(char::is_ascii_digit).collect();
    if digits.is_empty() {
        return None;
    }
    // Leading zeros do not count; a number too long for u128 is still finite, and large.
    let significant = digits.trim_start_matches('0');
    if significant.is_empty() {
        return Some(0);
    }
    Some(significant.parse().unwrap_or(u128::MAX))
}

/// How `a` orders against `b` under a comparator.
pub(crate) fn order(comparator: Comparator, a: &str, b: &str) -> Ordering {
    match comparator {
        Comparator::Octet => a.as_bytes().cmp(b.as_bytes()),
        Comparator::AsciiCasemap => a
            .bytes()
            .map(|c| c.to_ascii_lowercase())
            .cmp(b.bytes().map(|c| c.to_ascii_lowercase())),
        Comparator::AsciiNumeric => match (numeric(a), numeric(b)) {
            (None, None) => Ordering::Equal,
            (None, Some(_)) => Ordering::Greater,
            (Some(_), None) => Ordering::Less,
            (Some(x), Some(y)) => x.cmp(&y),
        },
    }
}

pub(crate) fn relation_holds(relation: Relation, ordering: Ordering) -> bool {
    match relation {
        Relation::Gt => ordering == Ordering::Greater,
        Relation::Ge => ordering != Ordering::Less,
        Relation::Lt => ordering == Ordering::Less,
        Relation::Le => ordering != Ordering::Greater,
        Relation::Eq => ordering == Ordering::Equal,
        Relation::Ne => ordering != Ordering::Equal,
    }
}

/// What comparing `value` with `key` costs, in the run's work units, before it is done: a
/// pattern search can step through every byte of the value for every part of the pattern, a
/// substring search through every byte once.
pub(crate) fn cost(kind: MatchKind, value: &str, key: &str) -> u64 {
    let (v, k) = (value.len() as u64, key.len() as u64);
    match kind {
        // About 4 of the matcher's steps a unit: a whole budget is a quarter of a second.
        MatchKind::Matches | MatchKind::Regex => 1 + v.saturating_mul(k + 8) / 4,
        MatchKind::Contains => 1 + (v + k) / 16,
        _ => 1 + v.min(k) / 64,
    }
}

/// Whether `value` matches `key`. On a `:matches` or `:regex` match, `captures` gets the
/// match variables (`${0}` the whole value, then one per wildcard or group).
pub(crate) fn value_matches(
    kind: MatchKind,
    comparator: Comparator,
    value: &str,
    key: &str,
    cache: &mut Cache,
    captures: &mut Option<Vec<String>>,
) -> Result<bool, String> {
    Ok(match kind {
        MatchKind::Is => order(comparator, value, key) == Ordering::Equal,
        MatchKind::Contains => match comparator {
            Comparator::Octet => value.contains(key),
            _ => value
                .to_ascii_lowercase()
                .contains(&key.to_ascii_lowercase()),
        },
        MatchKind::Matches | MatchKind::Regex => {
            let re = cache.get(kind == MatchKind::Matches, comparator, key)?;
            // Most values do not match: the lazy DFA says so in one pass; groups are found
            // (by the slower engine) only for a value that matches.
            if !re.is_match(value) {
                return Ok(false);
            }
            match re.captures(value) {
                Some(found) => {
                    *captures = Some(
                        found
                            .iter()
                            .take(10)
                            .map(|g| g.map_or(String::new(), |m| m.as_str().to_string()))
                            .collect(),
                    );
                    true
                }
                None => false,
            }
        }
        MatchKind::Value(relation) => relation_holds(relation, order(comparator, value, key)),
        // Counted by the caller, over all values at once.
        MatchKind::Count(_) => false,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(kind: MatchKind, value: &str, key: &str) -> (bool, Option<Vec<String>>) {
        let mut captures = None;
        let hit = value_matches(
            kind,
            Comparator::AsciiCasemap,
            value,
            key,
            &mut Cache::default(),
            &mut captures,
        )
        .expect("match");
        (hit, captures)
    }

    #[test]
    fn wildcards_take_as_little_as_they_can_and_escapes_are_literal() {
        // RFC 5229 s3.2's examples.
        let (hit, captures) = m(
            MatchKind::Matches,
            "[acme-users] [fwd] version 1.0 is out",
            "[*] *",
        );
        assert!(hit);
        let captures = captures.expect("captures");
        assert_eq!(captures[1], "acme-users");
        assert_eq!(captures[2], "[fwd] version 1.0 is out");
        let (hit, captures) = m(
            MatchKind::Matches,
            "coyote@ACME.Example.COM",
            "coyote@**.com",
        );
        assert!(hit);
        let captures = captures.expect("captures");
        assert_eq!(
            (captures[1].as_str(), captures[2].as_str()),
            ("", "ACME.Example")
        );
        assert!(m(MatchKind::Matches, "a*b", "a\\*b").0);
        assert!(!m(MatchKind::Matches, "axb", "a\\*b").0);
        assert!(m(MatchKind::Matches, "MAKE MONEY", "*money*").0);
        assert!(m(MatchKind::Matches, "x", "?").0);
        assert!(!m(MatchKind::Matches, "xy", "?").0);
    }

    #[test]
    fn a_pathological_pattern_stays_linear() {
        let value = "a".repeat(100_000);
        let key = "*a*a*a*a*a*a*a*a*a*a*a*a*a*a*a*a*b";
        assert!(!m(MatchKind::Matches, &value, key).0);
    }

    #[test]
    fn numeric_comparator_treats_non_numbers_as_infinity() {
        assert_eq!(order(Comparator::AsciiNumeric, "007", "7"), Ordering::Equal);
        assert_eq!(
            order(Comparator::AsciiNumeric, "x", "99"),
            Ordering::Greater
        );
        assert_eq!(order(Comparator::AsciiNumeric, "x", "y"), Ordering::Equal);
        assert_eq!(
            order(Comparator::AsciiNumeric, "10", "9"),
            Ordering::Greater
        );
        assert_eq!(
            order(Comparator::AsciiCasemap, "ABC", "abc"),
            Ordering::Equal
        );
        assert_eq!(order(Comparator::Octet, "ABC", "abc"), Ordering::Less);
    }
}
