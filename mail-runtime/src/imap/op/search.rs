//! SEARCH (with ESEARCH's RETURN), SORT and THREAD (RFC 5256) over the selected folder.

use imap_codec::imap_types::{
    core::Charset, core::Vec1, extensions::sort::SortCriterion, search::SearchKey,
};

use crate::imap::{
    esearch::{self, ReturnOptions},
    search::{self, Candidate},
    selected::Selected,
    session::{Done, MAX_MODSEQ, Refused, Session, bad, no, not_selected, store_failure},
    sort, write,
};
use crate::store::{MessageMeta, StoreError};

/// The charsets SEARCH, SORT and THREAD take (the strings compared are UTF-8).
/// What SEARCH, SORT and THREAD answer for another charset (RFC 3501 s6.4.4).
const BAD_CHARSET: &str = "[BADCHARSET (US-ASCII UTF-8)] unsupported charset";

fn known_charset(charset: &Charset<'_>) -> bool {
    let c: &str = charset.as_ref();
    c.eq_ignore_ascii_case("utf-8") || c.eq_ignore_ascii_case("us-ascii")
}

/// The selected folder as SEARCH, SORT and THREAD go through it, on a blocking thread.
struct Matching {
    metas: Vec<MessageMeta>,
    keywords: Vec<String>,
    largest: (u32, u32),
    recent: std::collections::HashSet<u32>,
    folder: String,
    validity: u32,
}

impl Matching {
    fn of(selected: &Selected) -> Self {
        Self {
            metas: selected.messages.clone(),
            keywords: selected.keywords.clone(),
            largest: selected.largest(),
            recent: selected.recent.clone(),
            folder: selected.folder.clone(),
            validity: selected.uid_validity,
        }
    }

    /// Calls `found` with the sequence number, entry and bytes of every message that matches
    /// `key`, in order; `read` gives the bytes the keys need (none, a header block, the whole
    /// message). With `skip_gone`, a message whose bytes are gone (expunged meanwhile) is left
    /// out rather than matched without them.
    fn each(
        &self,
        key: &SearchKey<'_>,
        read: impl Fn(&MessageMeta) -> Result<Option<Vec<u8>>, StoreError>,
        skip_gone: bool,
        mut found: impl FnMut(u32, &MessageMeta, Option<&[u8]>),
    ) -> Result<(), StoreError> {
        let sets = search::SetCache::default();
        for (i, meta) in self.metas.iter().enumerate() {
            let raw = read(meta)?;
            if skip_gone && raw.is_none() {
                continue;
            }
            let seq = i as u32 + 1;
            let candidate = Candidate {
                seq,
                meta,
                largest: self.largest,
                raw: raw.as_deref(),
                sets: &sets,
                keywords: &self.keywords,
                recent: self.recent.contains(&meta.uid),
                contents: Default::default(),
            };
            if search::matches(key, &candidate) {
                found(seq, meta, raw.as_deref());
            }
        }
        Ok(())
    }
}

/// What SORT or THREAD makes of the messages a search finds.
pub(in crate::imap) enum Arrange {
    Sort(Vec<SortCriterion>),
    References,
    OrderedSubject,
}

impl Session {
    pub(in crate::imap) async fn search(
        &mut self,
        tag: &str,
        charset: Option<&Charset<'_>>,
        criteria: Vec1<SearchKey<'static>>,
        uid: bool,
    ) -> Done {
        if self.selected.is_none() {
            return not_selected();
        }
        if !charset.is_none_or(known_charset) {
            return no(BAD_CHARSET);
        }
        let key = SearchKey::And(criteria);
        let with_modseq = match self.check_criteria(&key) {
            Ok(m) => m,
            Err(refused) => return Err(refused),
        };
        let contents = search::needs_contents(&key);
        // Header keys only: answered from the header cache, filled from the files on a miss.
        let fields = if contents {
            search::header_fields(&key)
        } else {
            None
        };
        let cache = self.runtime.header_cache().clone();
        let Some(scan) = self.selected.as_ref().map(Matching::of) else {
            return not_selected();
        };
        let found = self
            .blocking(move |s, m| {
                let mut found = Vec::new();
                let mut modseqs: Vec<u64> = Vec::new();
                let read = |meta: &MessageMeta| match &fields {
                    _ if !contents => Ok(None),
                    Some(names) => {
                        let key = (m.clone(), scan.folder.clone(), scan.validity, meta.uid);
                        match cache.get(&key, names) {
                            Some(block) => Ok(Some(block)),
                            None => Ok(s
                                .read_header(&m, &scan.folder, meta)?
                                .map(|head| cache.put(key, names, &head))),
                        }
                    }
                    None => s.read(&m, &scan.folder, meta),
                };
                scan.each(&key, read, false, |seq, meta, _| {
                    found.push(if uid { meta.uid } else { seq });
                    modseqs.push(meta.modseq);
                })?;
                Ok((found, modseqs))
            })
            .await;
        let (found, modseqs) = match found {
            Ok(f) => f,
            Err(e) => return Err(store_failure(&e)),
        };
        let returns = self.search_return.take();
        // RFC 7162 s3.1.5: with a MODSEQ key, the highest mod-sequence of the messages
        // returned: with only MIN and/or MAX, of those (RFC 4731 s3.2), else of all found.
        let highest = match returns {
            Some(r) if !r.all && !r.count => [
                r.min.then(|| modseqs.first().copied()).flatten(),
                r.max.then(|| modseqs.last().copied()).flatten(),
            ]
            .into_iter()
            .flatten()
            .max(),
            _ => modseqs.iter().copied().max(),
        };
        let modseq = highest.filter(|_| with_modseq);
        if self.rev2 || returns.is_some() {
            let mut line = b"* ESEARCH (TAG ".to_vec();
            write::string(&mut line, tag.as_bytes());
            line.push(b')');
            if uid {
                line.extend_from_slice(b" UID");
            }
            let options = returns.unwrap_or(ReturnOptions {
                all: true,
                ..ReturnOptions::default()
            });
            line.extend_from_slice(esearch::results(options, &found).as_bytes());
            if let Some(n) = modseq {
                line.extend_from_slice(format!(" MODSEQ {n}").as_bytes());
            }
            line.extend_from_slice(b"\r\n");
            self.send(line);
        } else {
            let list: String = found.iter().map(|n| format!(" {n}")).collect();
            let modseq = modseq.map(|n| format!(" (MODSEQ {n})")).unwrap_or_default();
            self.send(format!("* SEARCH{list}{modseq}\r\n"));
        }
        Ok(format!("{}SEARCH completed", if uid { "UID " } else { "" }))
    }

    /// SORT and THREAD (RFC 5256): the messages the criteria find, read once each for their
    /// keys, sorted or threaded.
    pub(in crate::imap) async fn arrange(
        &mut self,
        order: Arrange,
        charset: &Charset<'_>,
        criteria: Vec1<SearchKey<'static>>,
        uid: bool,
    ) -> Done {
        if !known_charset(charset) {
            return no(BAD_CHARSET);
        }
        let key = SearchKey::And(criteria);
        let with_modseq = match self.check_criteria(&key) {
            Ok(m) => m,
            Err(refused) => return Err(refused),
        };
        let Some(scan) = self.selected.as_ref().map(Matching::of) else {
            return not_selected();
        };
        let found = self
            .blocking(move |s, m| {
                let mut found = Vec::new();
                let read = |meta: &MessageMeta| s.read(&m, &scan.folder, meta);
                scan.each(&key, read, true, |seq, meta, raw| {
                    found.push(sort::keys(seq, meta, raw.unwrap_or_default()));
                })?;
                Ok(found)
            })
            .await;
        let found = match found {
            Ok(f) => f,
            Err(e) => return Err(store_failure(&e)),
        };
        let id = |k: &sort::Keys| if uid { k.uid } else { k.seq };
        let (name, line) = match order {
            Arrange::Sort(criteria) => {
                let ids: String = sort::sort(&found, &criteria)
                    .into_iter()
                    .map(|i| format!(" {}", id(&found[i])))
                    .collect();
                // RFC 7162 s3.1.5: with a MODSEQ key, the highest mod-sequence found.
                let modseq = found
                    .iter()
                    .map(|k| k.modseq)
                    .max()
                    .filter(|_| with_modseq)
                    .map(|n| format!(" (MODSEQ {n})"))
                    .unwrap_or_default();
                ("SORT", format!("* SORT{ids}{modseq}\r\n"))
            }
            Arrange::References | Arrange::OrderedSubject => {
                let threads = if matches!(order, Arrange::References) {
                    sort::references(&found)
                } else {
                    sort::ordered_subject(&found)
                };
                let text = sort::write(&threads, |i| id(&found[i]));
                let space = if text.is_empty() { "" } else { " " };
                ("THREAD", format!("* THREAD{space}{text}\r\n"))
            }
        };
        self.send(line);
        Ok(format!("{}{name} completed", if uid { "UID " } else { "" }))
    }

    /// What SEARCH, SORT and THREAD check of their criteria before reading anything; whether
    /// they hold a MODSEQ key (which turns CONDSTORE on).
    pub(in crate::imap) fn check_criteria(&mut self, key: &SearchKey<'_>) -> Result<bool, Refused> {
        if search::content_keys(key) > search::MAX_CONTENT_KEYS {
            return no(format!(
                "[LIMIT] at most {} text, header and date keys",
                search::MAX_CONTENT_KEYS
            ))
            .map(|_| false);
        }
        if search::largest_modseq(key) > MAX_MODSEQ {
            return bad("a mod-sequence is at most 9223372036854775807").map(|_| false);
        }
        if self.rev2 && search::uses_recent(key) {
            return bad("RECENT, NEW and OLD are not IMAP4rev2's (RFC 9051 appendix E)")
                .map(|_| false);
        }
        let with_modseq = search::uses_modseq(key);
        if with_modseq {
            self.enable_condstore();
        }
        Ok(with_modseq)
    }
}
