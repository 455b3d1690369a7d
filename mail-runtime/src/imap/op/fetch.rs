//! FETCH and UID FETCH, with CHANGEDSINCE and VANISHED (RFC 7162) and BINARY (RFC 3516): answers
//! rendered a few MiB at a time within the session's share of the answer memory.
use std::{borrow::Cow, io, time::Duration};

use imap_codec::imap_types::{
    IntoStatic,
    command::FetchModifier,
    fetch::{MacroOrMessageDataItemNames, MessageDataItemName},
    sequence::SequenceSet,
};

use crate::imap::{
    message,
    selected::{self as view},
    session::{Done, MAX_MODSEQ, Outlet, Session, bad, no, not_selected, store_failure},
    write,
};
use crate::store::{FlagChange, MessageMeta};

/// Longest a FETCH waits for its share of the answer memory.
const ANSWER_WAIT: Duration = Duration::from_secs(30);
/// Bytes of FETCH answers rendered before they go to the client.
const RENDER_CHUNK: usize = 4 * 1024 * 1024;
/// Messages read per blocking batch in FETCH.
const FETCH_BATCH: usize = 256;

/// What a FETCH response shows of a message besides what the store holds.
#[derive(Debug, Clone, Copy, Default)]
pub struct SessionFlags {
    /// This FETCH set `\Seen`: the new FLAGS go with the answer (RFC 9051 s6.4.5).
    pub seen_now: bool,
    /// `\Recent` in this session (IMAP4rev1).
    pub recent: bool,
}

/// Writes one untagged FETCH response.
///
/// One message's answer may hold at most twice the message and 1 MiB (the same sections asked
/// for a hundred times made one FETCH of a 2 MB message take 340 MB); past that nothing is
/// written for it and `false` comes back, for a `NO [LIMIT]`.
pub fn render_fetch(
    out: &mut Vec<u8>,
    seq: u32,
    meta: &MessageMeta,
    keywords: &[String],
    raw: Option<&[u8]>,
    items: &[MessageDataItemName<'_>],
    shown: SessionFlags,
) -> bool {
    let parsed = raw.map(message::parse);
    let parsed = parsed.as_deref();
    let raw = raw.unwrap_or_default();
    let start = out.len();
    let budget = raw.len().saturating_mul(2).saturating_add(1024 * 1024);
    out.extend_from_slice(format!("* {seq} FETCH (").as_bytes());
    for (n, item) in items.iter().enumerate() {
        if out.len() - start > budget {
            out.truncate(start);
            return false;
        }
        if n > 0 {
            out.push(b' ');
        }
        match item {
            MessageDataItemName::Uid => {
                out.extend_from_slice(format!("UID {}", meta.uid).as_bytes())
            }
            MessageDataItemName::Flags => {
                let flags = write::session_flags(&meta.flags, keywords, shown.recent);
                out.extend_from_slice(format!("FLAGS {flags}").as_bytes());
            }
            MessageDataItemName::InternalDate => out.extend_from_slice(
                format!("INTERNALDATE {}", write::date_time(meta.internal_date)).as_bytes(),
            ),
            MessageDataItemName::Rfc822Size => {
                out.extend_from_slice(format!("RFC822.SIZE {}", meta.size).as_bytes());
            }
            MessageDataItemName::ModSeq => {
                out.extend_from_slice(format!("MODSEQ ({})", meta.modseq).as_bytes());
            }
            MessageDataItemName::Envelope => {
                out.extend_from_slice(b"ENVELOPE ");
                match parsed.and_then(message::Node::root) {
                    Some(root) => message::envelope(out, &root),
                    None => out.extend_from_slice(b"(NIL NIL NIL NIL NIL NIL NIL NIL NIL NIL)"),
                }
            }
            MessageDataItemName::Body | MessageDataItemName::BodyStructure => {
                let extended = matches!(item, MessageDataItemName::BodyStructure);
                out.extend_from_slice(if extended {
                    b"BODYSTRUCTURE "
                } else {
                    b"BODY "
                });
                match parsed.and_then(message::Node::root) {
                    Some(root) => message::body_structure(out, &root, extended),
                    None => out.extend_from_slice(
                        b"(\"text\" \"plain\" (\"charset\" \"us-ascii\") NIL NIL \"7bit\" 0 0)",
                    ),
                }
            }
            MessageDataItemName::Rfc822 => {
                out.extend_from_slice(b"RFC822 ");
                write::literal(out, raw);
            }
            MessageDataItemName::Rfc822Header | MessageDataItemName::Rfc822Text => {
                let header = matches!(item, MessageDataItemName::Rfc822Header);
                out.extend_from_slice(if header {
                    b"RFC822.HEADER "
                } else {
                    b"RFC822.TEXT "
                });
                let bytes = parsed
                    .and_then(message::Node::root)
                    .map(|p| {
                        if header {
                            p.raw_headers()
                        } else {
                            p.raw_body()
                        }
                    })
                    .unwrap_or_default();
                write::literal(out, bytes);
            }
            MessageDataItemName::BodyExt {
                section, partial, ..
            } => {
                let bytes = parsed
                    .as_ref()
                    .and_then(|p| message::section_bytes(p, raw, section.as_ref()))
                    .unwrap_or_default();
                out.extend_from_slice(
                    format!("BODY[{}]", message::section_name(section.as_ref())).as_bytes(),
                );
                partial_literal(out, &bytes, *partial, false);
            }
            MessageDataItemName::Binary {
                section, partial, ..
            } => {
                let path: Vec<u32> = section.iter().map(|n| n.get()).collect();
                let decoded = decoded_part(parsed, raw, &path);
                let name: Vec<String> = path.iter().map(u32::to_string).collect();
                out.extend_from_slice(format!("BINARY[{}]", name.join(".")).as_bytes());
                partial_literal(out, decoded.as_deref().unwrap_or_default(), *partial, true);
            }
            MessageDataItemName::BinarySize { section } => {
                let path: Vec<u32> = section.iter().map(|n| n.get()).collect();
                let decoded = decoded_part(parsed, raw, &path);
                let name: Vec<String> = path.iter().map(u32::to_string).collect();
                out.extend_from_slice(
                    format!(
                        "BINARY.SIZE[{}] {}",
                        name.join("."),
                        decoded.map_or(0, |d| d.len())
                    )
                    .as_bytes(),
                );
            }
            #[allow(unreachable_patterns)]
            _ => out.extend_from_slice(b"NIL NIL"),
        }
    }
    // RFC 9051 6.4.5: when fetching sets \Seen, the new flags go with the response.
    if shown.seen_now
        && !items
            .iter()
            .any(|i| matches!(i, MessageDataItemName::Flags))
    {
        let flags = write::session_flags(&meta.flags, keywords, shown.recent);
        out.extend_from_slice(format!(" FLAGS {flags}").as_bytes());
    }
    if out.len() - start > budget {
        out.truncate(start);
        return false;
    }
    out.extend_from_slice(b")\r\n");
    true
}

fn decoded_part<'a>(
    parsed: Option<&'a mail_parser::Message<'_>>,
    raw: &'a [u8],
    path: &[u32],
) -> Option<Cow<'a, [u8]>> {
    let parsed = parsed?;
    if path.is_empty() {
        return Some(Cow::Borrowed(raw));
    }
    message::find_part(parsed, path).map(|p| p.decoded())
}

/// A section's bytes, or the part `<start.length>` asks for; `binary`: a BINARY answer, which
/// may carry NUL in a literal8.
fn partial_literal(
    out: &mut Vec<u8>,
    bytes: &[u8],
    partial: Option<(u32, std::num::NonZeroU32)>,
    binary: bool,
) {
    let bytes = match partial {
        Some((start, length)) => {
            let start = (start as usize).min(bytes.len());
            let end = start.saturating_add(length.get() as usize).min(bytes.len());
            out.extend_from_slice(format!("<{start}> ").as_bytes());
            &bytes[start..end]
        }
        None => {
            out.push(b' ');
            bytes
        }
    };
    if binary {
        write::literal8(out, bytes);
    } else {
        write::literal(out, bytes);
    }
}

impl Session {
    pub(in crate::imap) async fn fetch(
        &mut self,
        set: &SequenceSet,
        items: MacroOrMessageDataItemNames<'static>,
        uid: bool,
        modifiers: &[FetchModifier],
        to: Outlet<'_>,
    ) -> io::Result<Done> {
        let mut changed_since = None;
        let mut vanished = false;
        for modifier in modifiers {
            match modifier {
                FetchModifier::ChangedSince(n) => changed_since = Some(n.get()),
                FetchModifier::Vanished => vanished = true,
            }
        }
        if changed_since.is_some_and(|n| n > MAX_MODSEQ) {
            return Ok(bad("a mod-sequence is at most 9223372036854775807"));
        }
        // RFC 7162 s3.2.6: VANISHED only in UID FETCH with CHANGEDSINCE, once QRESYNC is on.
        if vanished && !(uid && changed_since.is_some() && self.reporting.vanished) {
            return Ok(bad(
                "VANISHED needs UID FETCH with CHANGEDSINCE and QRESYNC enabled",
            ));
        }
        let mut items = match items {
            MacroOrMessageDataItemNames::Macro(m) => {
                m.expand().into_iter().map(|i| i.into_static()).collect()
            }
            MacroOrMessageDataItemNames::MessageDataItemNames(items) => items,
        };
        let asks_modseq = items
            .iter()
            .any(|i| matches!(i, MessageDataItemName::ModSeq));
        if changed_since.is_some() || asks_modseq {
            self.enable_condstore();
        }
        if changed_since.is_some() && !asks_modseq {
            items.push(MessageDataItemName::ModSeq);
        }
        let Some(selected) = self.selected.as_ref() else {
            return Ok(not_selected());
        };
        let mut indexes = match selected.resolve(set, uid) {
            Ok(i) => i,
            Err(e) => return Ok(bad(e)),
        };
        if let Some(since) = changed_since {
            indexes.retain(|i| selected.messages[*i].modseq > since);
        }
        if vanished {
            let gone = selected.vanished(&view::ranges(set, u32::MAX));
            if !gone.is_empty() {
                let line = format!("* VANISHED (EARLIER) {}\r\n", write::range_set(&gone));
                self.out.extend_from_slice(line.as_bytes());
            }
        }
        let read_only = selected.read_only;
        let sets_seen = !read_only
            && items.iter().any(|i| match i {
                MessageDataItemName::BodyExt { peek, .. }
                | MessageDataItemName::Binary { peek, .. } => !peek,
                MessageDataItemName::Rfc822 | MessageDataItemName::Rfc822Text => true,
                _ => false,
            });
        // RFC 7162 s3.2.4: a FETCH that sets \Seen tells a CONDSTORE client the UID and the new
        // mod-sequence too.
        let with_uid = uid || (sets_seen && self.reporting.modseq);
        if with_uid && !items.iter().any(|i| matches!(i, MessageDataItemName::Uid)) {
            items.insert(0, MessageDataItemName::Uid);
        }
        if sets_seen
            && self.reporting.modseq
            && !items
                .iter()
                .any(|i| matches!(i, MessageDataItemName::ModSeq))
        {
            items.push(MessageDataItemName::ModSeq);
        }
        let needs_contents = items.iter().any(|i| {
            !matches!(
                i,
                MessageDataItemName::Uid
                    | MessageDataItemName::Flags
                    | MessageDataItemName::InternalDate
                    | MessageDataItemName::Rfc822Size
                    | MessageDataItemName::ModSeq
            )
        });
        let folder = selected.folder.clone();
        if !needs_contents && !sets_seen {
            // Only index data: written straight from the view, no disk, no thread hand-off.
            let view = self.selected.take();
            let mut written = Ok(());
            if let Some(view) = &view {
                for i in &indexes {
                    let meta = &view.messages[*i];
                    let shown = SessionFlags {
                        seen_now: false,
                        recent: view.is_recent(meta.uid, self.reporting),
                    };
                    let _ = render_fetch(
                        &mut self.out,
                        *i as u32 + 1,
                        meta,
                        &view.keywords,
                        None,
                        &items,
                        shown,
                    );
                    if self.out.len() > 256 * 1024 {
                        written = if self.revoked() {
                            Err(self.stop_revoked(&mut *to).await)
                        } else {
                            self.flush(&mut *to).await
                        };
                        if written.is_err() {
                            break;
                        }
                    }
                }
            }
            self.selected = view;
            written?;
            return Ok(Ok(format!(
                "{}FETCH completed",
                if uid { "UID " } else { "" }
            )));
        }
        let items = std::sync::Arc::new(items);
        let (mut expunged_meanwhile, mut over_budget) = (false, false);
        for batch in indexes.chunks(FETCH_BATCH) {
            let Some(selected) = self.selected.as_mut() else {
                break;
            };
            let mut metas: Vec<(usize, MessageMeta, bool)> = batch
                .iter()
                .map(|i| (*i, selected.messages[*i].clone(), false))
                .collect();
            if sets_seen {
                let unseen: Vec<(MessageMeta, FlagChange)> = metas
                    .iter()
                    .filter(|(_, m, _)| !m.flags.contains('S'))
                    .map(|(_, m, _)| (m.clone(), FlagChange::Add("S".into())))
                    .collect();
                if !unseen.is_empty() {
                    let name = folder.clone();
                    if let Ok(updated) = self
                        .blocking(move |s, m| s.set_flags(&m, &name, &unseen, None))
                        .await
                    {
                        for u in updated.now {
                            for (i, m, changed) in metas.iter_mut() {
                                if m.uid == u.uid {
                                    *m = u.clone();
                                    *changed = true;
                                    if let Some(sel) = self.selected.as_mut() {
                                        sel.messages[*i] = u.clone();
                                    }
                                }
                            }
                        }
                    }
                }
            }
            // Rendered a few MiB at a time (256 messages of 25 MiB would otherwise be one 6 GiB
            // buffer), flushed to the client in between.
            let mut pending = metas;
            let keywords = std::sync::Arc::new(
                self.selected
                    .as_ref()
                    .map(|s| s.keywords.clone())
                    .unwrap_or_default(),
            );
            let recent: std::sync::Arc<std::collections::HashSet<u32>> = std::sync::Arc::new(
                self.selected
                    .as_ref()
                    .filter(|_| self.reporting.recent)
                    .map(|s| s.recent.clone())
                    .unwrap_or_default(),
            );
            while !pending.is_empty() {
                // A long FETCH stops at the next chunk once its login no longer opens the
                // mailbox (suspended, removed, password changed or app password revoked).
                if self.revoked() {
                    return Err(self.stop_revoked(&mut *to).await);
                }
                let (name, items, keywords) = (folder.clone(), items.clone(), keywords.clone());
                let recent = recent.clone();
                let chunk = std::mem::take(&mut pending);
                // This session's share of the answer memory: the chunk's output, the largest
                // message read, its answer (at most twice it) and one more in the flush.
                let largest = chunk
                    .iter()
                    .map(|(_, m, _)| m.size)
                    .max()
                    .unwrap_or_default();
                let mib = if needs_contents {
                    (largest.saturating_mul(3) + (RENDER_CHUNK as u64) * 2).div_ceil(1 << 20)
                } else {
                    1
                };
                let share = mib.min(u64::from(crate::runtime::ANSWER_MEMORY_MIB)) as u32;
                // One mailbox may hold at most part of the pool, and nobody waits for it long:
                // a user's sessions that read nothing must not stall everyone's mail.
                let address = self
                    .user
                    .as_ref()
                    .map(|u| u.address.clone())
                    .unwrap_or_default();
                let mailbox = self.runtime.answer_shares().of(&address);
                let mine = share.min(crate::runtime::ANSWER_MIB_PER_MAILBOX);
                let memory = self.runtime.answer_memory().clone();
                let shares = async {
                    let mine = mailbox.acquire_many_owned(mine).await?;
                    let pool = memory.acquire_many_owned(share).await?;
                    Ok::<_, tokio::sync::AcquireError>((mine, pool))
                };
                let Ok(Ok(_shares)) = tokio::time::timeout(ANSWER_WAIT, shares).await else {
                    return Ok(no("[UNAVAILABLE] the server is busy, try again shortly"));
                };
                let rendered = self
                    .blocking(move |s, m| {
                        let mut out = Vec::new();
                        let (mut gone, mut over) = (false, false);
                        let mut chunk = chunk.into_iter();
                        for (i, meta, seen_now) in chunk.by_ref() {
                            let raw = if needs_contents {
                                match s.read(&m, &name, &meta)? {
                                    Some(raw) => Some(raw),
                                    None => {
                                        // Expunged by another session meanwhile: no answer
                                        // with other (or empty) content for this UID, ever.
                                        gone = true;
                                        continue;
                                    }
                                }
                            } else {
                                None
                            };
                            let shown = SessionFlags {
                                seen_now,
                                recent: recent.contains(&meta.uid),
                            };
                            over |= !render_fetch(
                                &mut out,
                                i as u32 + 1,
                                &meta,
                                &keywords,
                                raw.as_deref(),
                                &items,
                                shown,
                            );
                            if out.len() > RENDER_CHUNK {
                                break;
                            }
                        }
                        Ok((out, gone, over, chunk.collect::<Vec<_>>()))
                    })
                    .await;
                match rendered {
                    Ok((bytes, gone, over, rest)) => {
                        if self.out.is_empty() {
                            self.out = bytes;
                        } else {
                            self.out.extend_from_slice(&bytes);
                        }
                        expunged_meanwhile |= gone;
                        over_budget |= over;
                        pending = rest;
                    }
                    Err(e) => return Ok(Err(store_failure(&e))),
                }
                // Sent while the share is held: the memory is free once the client has it.
                self.flush(&mut *to).await?;
            }
        }
        if over_budget {
            return Ok(no(
                "[LIMIT] a FETCH may return each message at most twice over; ask for fewer sections",
            ));
        }
        if expunged_meanwhile {
            // RFC 5530, as Dovecot answers: the client learns of the expunge at its next NOOP.
            return Ok(no(
                "[EXPUNGEISSUED] some of the messages were expunged by another session",
            ));
        }
        Ok(Ok(format!(
            "{}FETCH completed",
            if uid { "UID " } else { "" }
        )))
    }
}

#[cfg(test)]
mod tests {
    /// Issue 15 item 9: a message APPENDed with NULs (binary) came back with NUL inside a plain
    /// literal, and BINARY answered `{8}` where RFC 3516 asks `~{8}`.
    #[test]
    fn nul_never_travels_in_a_plain_literal() {
        use imap_codec::{
            CommandCodec,
            decode::Decoder,
            imap_types::{command::CommandBody, fetch::MacroOrMessageDataItemNames},
        };
        let raw = b"Subject: x\r\nContent-Transfer-Encoding: binary\r\n\r\na\0b\r\n";
        let meta = crate::store::MessageMeta {
            uid: 1,
            size: raw.len() as u64,
            flags: String::new(),
            internal_date: 0,
            file_name: "m".into(),
            modseq: 1,
            in_new: false,
        };
        let (_, command) = CommandCodec::default()
            .decode(b"a FETCH 1 (BODY.PEEK[] BINARY.PEEK[1] BINARY.PEEK[])\r\n")
            .expect("a FETCH");
        let CommandBody::Fetch {
            macro_or_item_names: MacroOrMessageDataItemNames::MessageDataItemNames(items),
            ..
        } = command.body
        else {
            panic!("not a FETCH");
        };
        let mut out = Vec::new();
        assert!(super::render_fetch(
            &mut out,
            1,
            &meta,
            &[],
            Some(raw),
            &items,
            super::SessionFlags::default()
        ));
        let text = String::from_utf8_lossy(&out);
        assert!(text.contains("BODY[] {"), "{text}");
        assert!(text.contains("BINARY[1] ~{5}\r\na\0b\r\n"), "{text:?}");
        let body_literal = &out[..out.windows(6).position(|w| w == b"BINARY").expect("BINARY")];
        assert!(!body_literal.contains(&0), "NUL in BODY[]: {text:?}");
    }
}
