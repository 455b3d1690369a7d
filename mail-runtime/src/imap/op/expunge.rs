//! EXPUNGE, UID EXPUNGE and CLOSE: removing `\\Deleted` messages.

use imap_codec::imap_types::sequence::SequenceSet;

use crate::imap::session::{Done, Refused, Session, no, not_selected, store_failure};
use crate::store::MessageMeta;

impl Session {
    /// EXPUNGE, UID EXPUNGE and CLOSE: removes \Deleted messages (of `only`, when given).
    pub(in crate::imap) async fn expunge_deleted(
        &mut self,
        only: Option<&SequenceSet>,
        report: bool,
    ) -> Done {
        let Some(selected) = self.selected.as_ref() else {
            return not_selected();
        };
        if selected.read_only {
            return if report {
                no("[READ-ONLY] the folder is read-only")
            } else {
                Ok(String::new())
            };
        }
        let allowed: Option<Vec<usize>> = match only {
            Some(set) => Some(selected.resolve(set, true).map_err(Refused::Bad)?),
            None => None,
        };
        let doomed: Vec<usize> = selected
            .messages
            .iter()
            .enumerate()
            .filter(|(i, m)| {
                m.flags.contains('T') && allowed.as_ref().is_none_or(|a| a.contains(i))
            })
            .map(|(i, _)| i)
            .collect();
        if doomed.is_empty() {
            return Ok(String::new());
        }
        let folder = selected.folder.clone();
        let metas: Vec<MessageMeta> = doomed
            .iter()
            .map(|i| selected.messages[*i].clone())
            .collect();
        let removed = match self
            .blocking(move |s, m| s.expunge_deleted(&m, &folder, &metas))
            .await
        {
            Ok(removed) => removed,
            Err(e) => return Err(store_failure(&e)),
        };
        let Some(selected) = self.selected.as_mut() else {
            return Ok(String::new());
        };
        // Only what the store removed: a message another session un-deleted meanwhile stays.
        let mut gone = Vec::new();
        for i in doomed.into_iter().rev() {
            if removed.contains(&selected.messages[i].uid) {
                gone.push((i as u32 + 1, selected.messages.remove(i).uid));
            }
        }
        if report {
            self.reporting.expunged(&gone, &mut self.out);
        }
        Ok(String::new())
    }
}
