//! APPEND (RFC 3501, UIDPLUS's APPENDUID).
use std::borrow::Cow;

use imap_codec::imap_types::{flag::Flag, mailbox::Mailbox};

use crate::imap::{
    op::store::letters,
    session::{Done, Session, no, store_failure},
};
use crate::store::{FlagChange, StoreError};

impl Session {
    pub(in crate::imap) async fn append(
        &mut self,
        mailbox: &Mailbox<'_>,
        flags: &[Flag<'_>],
        date: Option<i64>,
        bytes: Cow<'static, [u8]>,
    ) -> Done {
        let folder = self.folder(mailbox).await?;
        if self.over_quota(bytes.len() as u64).await {
            return no("[OVERQUOTA] the mailbox is over its quota");
        }
        let (mut letters, keywords) = letters(flags);
        let stored = self
            .blocking(move |s, m| {
                letters.push_str(&s.keyword_letters(&m, &folder, &keywords)?);
                // Maildir's info letters in ASCII order.
                let letters = FlagChange::Replace(letters).apply("");
                let mut spool = s.spool()?;
                spool.write(&bytes)?;
                let spooled = spool.finish()?;
                s.append(&m, &folder, spooled, &letters, date)
            })
            .await;
        match stored {
            Ok((validity, uid)) => Ok(format!("[APPENDUID {validity} {uid}] APPEND completed")),
            Err(StoreError::NoSuchFolder(f)) => no(format!("[TRYCREATE] no folder {f:?}")),
            Err(e) => Err(store_failure(&e)),
        }
    }
}
