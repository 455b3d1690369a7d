//! SELECT and EXAMINE, with CONDSTORE and QRESYNC's resync (RFC 7162 s3.2.5).

use imap_codec::imap_types::{command::SelectParameter, mailbox::Mailbox};

use crate::imap::{
    selected::{self as view, Selected},
    session::{Done, MAX_MODSEQ, Outlet, Session, bad, store_failure},
    write,
};

impl Session {
    pub(in crate::imap) async fn select(
        &mut self,
        mailbox: &Mailbox<'_>,
        read_only: bool,
        parameters: &[SelectParameter],
        to: Outlet<'_>,
    ) -> Done {
        let mut resync = None;
        for parameter in parameters {
            match parameter {
                SelectParameter::CondStore => self.enable_condstore(),
                SelectParameter::QResync { .. } if !self.reporting.vanished => {
                    return bad("QRESYNC is not enabled (ENABLE QRESYNC first)");
                }
                SelectParameter::QResync {
                    mod_sequence_value, ..
                } if mod_sequence_value.get() > MAX_MODSEQ => {
                    return bad("a mod-sequence is at most 9223372036854775807");
                }
                SelectParameter::QResync {
                    uid_validity,
                    mod_sequence_value,
                    known_uids,
                    ..
                } => resync = Some((uid_validity.get(), mod_sequence_value.get(), known_uids)),
            }
        }
        // Named before anything changes: a BAD leaves the selected folder as it was.
        let folder = self.folder(mailbox).await?;
        // RFC 7162 s3.2.11: what follows is the new folder's, not the one closed.
        if self.selected.take().is_some() {
            self.send("* OK [CLOSED] previous folder closed\r\n");
        }
        self.changes = None;
        let address = self
            .user
            .as_ref()
            .map(|u| u.address.clone())
            .unwrap_or_default();
        let mut changes = self.runtime.store().changes(&address);
        changes.borrow_and_update();
        let name = folder.clone();
        // SELECT claims the messages nobody has seen: `\Recent` here and nowhere else. EXAMINE
        // changes nothing and shows them as they are.
        // An IMAP4rev2 session has no `\Recent` and claims nothing (it would take it from
        // IMAP4rev1 clients on the same mailbox).
        let claims = !read_only && self.reporting.recent;
        let opened = self
            .blocking(move |s, m| {
                let claimed = if !claims {
                    Vec::new()
                } else {
                    s.claim_recent(&m, &name)?
                };
                Ok((claimed, s.index(&m, &name)?))
            })
            .await;
        let (claimed, index) = match opened {
            Ok(opened) => opened,
            Err(e) => return Err(store_failure(&e)),
        };
        let recent: std::collections::HashSet<u32> = if read_only {
            index
                .messages
                .iter()
                .filter(|m| m.is_new())
                .map(|m| m.uid)
                .collect()
        } else {
            claimed.into_iter().collect()
        };
        let flags = write::folder_flags(&index.keywords);
        self.send(format!("* FLAGS {flags}\r\n"));
        self.send(format!("* {} EXISTS\r\n", index.messages.len()));
        if !self.rev2 {
            let count = index
                .messages
                .iter()
                .filter(|m| recent.contains(&m.uid))
                .count();
            self.send(format!("* {count} RECENT\r\n"));
            if let Some(first) = index.messages.iter().position(|m| !m.flags.contains('S')) {
                self.send(format!("* OK [UNSEEN {}] first unseen\r\n", first + 1));
            }
        }
        if read_only {
            self.send("* OK [PERMANENTFLAGS ()] read-only\r\n");
        } else {
            // `\*`: clients may make new keywords (26 per folder).
            let permanent = format!("{} \\*)", flags.trim_end_matches(')'));
            self.send(format!(
                "* OK [PERMANENTFLAGS {permanent}] flags permitted\r\n"
            ));
        }
        self.send(format!(
            "* OK [UIDVALIDITY {}] UIDs valid\r\n* OK [UIDNEXT {}] predicted next UID\r\n\
             * OK [HIGHESTMODSEQ {}] mod-sequences kept\r\n",
            index.uid_validity, index.uid_next, index.highest_modseq
        ));
        if self.rev2 {
            let mut line = b"* LIST () \"/\" ".to_vec();
            write::string(&mut line, self.shown(&folder).as_bytes());
            line.extend_from_slice(b"\r\n");
            self.send(line);
        }
        let mut selected = Selected::new(folder, read_only, index);
        selected.recent = recent;
        // QRESYNC (RFC 7162 s3.2.5): what changed since the client's last sync, in this
        // answer, when its cache is for this UIDVALIDITY.
        if let Some((validity, since, known)) = resync
            && validity == selected.uid_validity
        {
            // `*` reaches past the last message: UIDs expunged above it are gone too (naming
            // more than the client holds is allowed; it ignores what it never had).
            let known = match known {
                Some(set) => view::ranges(set, u32::MAX),
                None => vec![(1, u32::MAX)],
            };
            let vanished = selected.vanished(&known);
            if !vanished.is_empty() {
                let set = write::range_set(&vanished);
                self.send(format!("* VANISHED (EARLIER) {set}\r\n"));
            }
            for (i, m) in selected.messages.iter().enumerate() {
                if m.modseq > since {
                    let recent = selected.is_recent(m.uid, self.reporting);
                    let line = format!(
                        "* {} FETCH (UID {} FLAGS {} MODSEQ ({}))\r\n",
                        i + 1,
                        m.uid,
                        write::session_flags(&m.flags, &selected.keywords, recent),
                        m.modseq
                    );
                    self.out.extend_from_slice(line.as_bytes());
                    // A folder of 100,000 changed messages: sent as it is written.
                    if self.out.len() > 256 * 1024 && self.flush(&mut *to).await.is_err() {
                        self.closed = true;
                        break;
                    }
                }
            }
        }
        self.selected = Some(selected);
        self.changes = Some(changes);
        Ok(if read_only {
            "[READ-ONLY] EXAMINE completed".into()
        } else {
            "[READ-WRITE] SELECT completed".into()
        })
    }

    /// CLOSE: the \\Deleted messages go (silently), then the folder is closed.
    pub(in crate::imap) async fn close(&mut self) -> Done {
        let expunged = self.expunge_deleted(None, false).await;
        self.selected = None;
        self.changes = None;
        expunged.map(|_| "CLOSE completed".into())
    }

    /// UNSELECT (RFC 3691): closed, nothing expunged.
    pub(in crate::imap) fn unselect(&mut self) -> Done {
        self.selected = None;
        self.changes = None;
        Ok("UNSELECT completed".into())
    }
}
