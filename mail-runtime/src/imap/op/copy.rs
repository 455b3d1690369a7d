//! COPY and MOVE (RFC 6851), with UIDPLUS's COPYUID.

use imap_codec::imap_types::{mailbox::Mailbox, sequence::SequenceSet};

use crate::imap::{
    op::learn,
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
        let (learn, learn_chosen) = match learn::moving(&from, &target)
            .filter(|_| self.learns())
            .and_then(|spam| Some((spam, learn::Share::take(&metas)?)))
        {
            Some((spam, (share, chosen))) => (Some((spam, share)), Some(chosen)),
            None => (None, None),
        };
        let learn_from = from.clone();
        let copied = self
            .blocking(move |s, m| {
                let samples = match &learn_chosen {
                    Some(chosen) => learn::samples(s, &m, &learn_from, chosen),
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
            if let Some((spam, share)) = learn {
                self.teach(spam, share, samples);
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
