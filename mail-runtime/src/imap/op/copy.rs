//! COPY and MOVE (RFC 6851), with UIDPLUS's COPYUID.

use imap_codec::imap_types::{mailbox::Mailbox, sequence::SequenceSet};

use crate::imap::{
    session::{Done, Refused, Session, no, not_selected, store_failure},
    write,
};
use crate::store::{MessageMeta, StoreError};

impl Session {
    pub(in crate::imap) async fn copy(
        &mut self,
        set: &SequenceSet,
        to: &Mailbox<'_>,
        uid: bool,
        moving: bool,
    ) -> Done {
        let Some(selected) = self.selected.as_ref() else {
            return not_selected();
        };
        if moving && selected.read_only {
            return no("[READ-ONLY] the folder is read-only");
        }
        let indexes = selected.resolve(set, uid).map_err(Refused::Bad)?;
        let metas: Vec<MessageMeta> = indexes
            .iter()
            .map(|i| selected.messages[*i].clone())
            .collect();
        let what = if moving { "MOVE" } else { "COPY" };
        if metas.is_empty() {
            return Ok(format!("{what} completed (nothing matched)"));
        }
        if self.over_quota(metas.iter().map(|m| m.size).sum()).await {
            return no("[OVERQUOTA] the mailbox is over its quota");
        }
        let from = selected.folder.clone();
        let target = self.folder(to).await?;
        let moved = metas.clone();
        // Into Junk teaches rspamd spam, out of it (but not into Trash) ham.
        let learn = learning(&from, &target);
        let learn_from = from.clone();
        let copied = self
            .blocking(move |s, m| {
                let samples = match learn {
                    Some(_) => metas
                        .iter()
                        .take(LEARN_AT_ONCE)
                        .filter(|meta| meta.size <= LEARN_MAX_BYTES)
                        .filter_map(|meta| s.read(&m, &learn_from, meta).ok().flatten())
                        .collect(),
                    None => Vec::new(),
                };
                let copied = s.copy(&m, &from, &metas, &target)?;
                if moving {
                    s.expunge(&m, &from, &metas)?;
                }
                Ok((copied, samples))
            })
            .await;
        let copied = copied.map(|(copied, samples)| {
            if let Some(spam) = learn {
                self.teach(spam, samples);
            }
            copied
        });
        let (validity, pairs) = match copied {
            Ok(c) => c,
            Err(StoreError::NoSuchFolder(f)) => return no(format!("[TRYCREATE] no folder {f:?}")),
            Err(e) => return Err(store_failure(&e)),
        };
        let source: Vec<u32> = pairs.iter().map(|(s, _)| *s).collect();
        let target: Vec<u32> = pairs.iter().map(|(_, t)| *t).collect();
        let code = format!(
            "COPYUID {validity} {} {}",
            write::sequence_set(&source),
            write::sequence_set(&target)
        );
        if !moving {
            return Ok(format!("[{code}] COPY completed"));
        }
        self.send(format!("* OK [{code}] moved\r\n"));
        if let Some(selected) = self.selected.as_mut() {
            let mut gone = Vec::new();
            for m in moved.iter().rev() {
                if let Some(i) = selected.messages.iter().position(|x| x.uid == m.uid) {
                    gone.push((i as u32 + 1, selected.messages.remove(i).uid));
                }
            }
            self.reporting.expunged(&gone, &mut self.out);
        }
        Ok("MOVE completed".into())
    }
}

/// Messages of one COPY or MOVE that are learned, and the largest one.
const LEARN_AT_ONCE: usize = 20;
const LEARN_MAX_BYTES: u64 = 10 << 20;

/// Whether a copy from `from` to `to` teaches spam (`Some(true)`), ham, or nothing.
fn learning(from: &str, to: &str) -> Option<bool> {
    let junk = |f: &str| f.eq_ignore_ascii_case("Junk");
    match (junk(from), junk(to)) {
        (false, true) => Some(true),
        (true, false) if !to.eq_ignore_ascii_case("Trash") => Some(false),
        _ => None,
    }
}

impl Session {
    /// Hands messages to rspamd's controller to learn, in the background: the user's command
    /// does not wait for it, and a failure is logged, never the user's problem.
    fn teach(&self, spam: bool, samples: Vec<Vec<u8>>) {
        let config = self.runtime.config().get();
        let Some(rspamd) = config.raw.inbound.rspamd.clone() else {
            return;
        };
        let Some(url) = rspamd.controller_url.clone() else {
            return;
        };
        tokio::spawn(async move {
            let timeout = std::time::Duration::from_secs(u64::from(rspamd.timeout_seconds));
            for message in samples {
                let learned = crate::smtp::rspamd::learn(
                    &url,
                    rspamd.controller_password.as_deref(),
                    spam,
                    message,
                    timeout,
                )
                .await;
                let verdict = match (&learned, spam) {
                    (Ok(()), true) => "learned-spam",
                    (Ok(()), false) => "learned-ham",
                    (Err(_), _) => "learn-failed",
                };
                crate::metrics::filter_verdict("rspamd", verdict);
                if let Err(err) = learned {
                    tracing::warn!(error = %err, "rspamd did not learn from a move into or out of Junk");
                }
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::learning;

    #[test]
    fn into_junk_is_spam_out_of_it_ham_and_trash_nothing() {
        assert_eq!(learning("INBOX", "Junk"), Some(true));
        assert_eq!(learning("Junk", "INBOX"), Some(false));
        assert_eq!(learning("Junk", "Archive"), Some(false));
        assert_eq!(learning("Junk", "Trash"), None);
        assert_eq!(learning("INBOX", "Archive"), None);
        assert_eq!(learning("Junk", "junk"), None);
    }
}
