//! QUOTA (RFC 9208): the mailbox's one root, set on the Mailbox object.

use imap_codec::imap_types::mailbox::Mailbox;

use crate::imap::{
    session::{Done, Session, no},
    write,
};

impl Session {
    pub(in crate::imap) async fn over_quota(&self, adding: u64) -> bool {
        let Some(limit) = self.user.as_ref().and_then(|u| u.quota) else {
            return false;
        };
        match self.blocking(|s, m| s.usage(&m)).await {
            Ok(usage) => usage.bytes + adding > limit,
            Err(_) => false,
        }
    }

    pub(in crate::imap) async fn quota(&mut self) {
        let limit = self.user.as_ref().and_then(|u| u.quota).unwrap_or_default();
        let used = self
            .blocking(|s, m| s.usage(&m))
            .await
            .map(|u| u.bytes)
            .unwrap_or_default();
        self.send(format!(
            "* QUOTA \"\" (STORAGE {} {})\r\n",
            used.div_ceil(1024),
            limit / 1024
        ));
    }

    pub(in crate::imap) async fn get_quota_root(&mut self, mailbox: &Mailbox<'_>) -> Done {
        let folder = self.folder(mailbox).await?;
        let mut line = Vec::new();
        write::string(&mut line, self.shown(&folder).as_bytes());
        let line = String::from_utf8_lossy(&line).into_owned();
        if self.user.as_ref().and_then(|u| u.quota).is_some() {
            self.send(format!("* QUOTAROOT {line} \"\"\r\n"));
            self.quota().await;
        } else {
            self.send(format!("* QUOTAROOT {line}\r\n"));
        }
        Ok("GETQUOTAROOT completed".into())
    }

    pub(in crate::imap) async fn get_quota(&mut self, root: &[u8]) -> Done {
        if root.is_empty() && self.user.as_ref().and_then(|u| u.quota).is_some() {
            self.quota().await;
            Ok("GETQUOTA completed".into())
        } else {
            no("[NONEXISTENT] no such quota root")
        }
    }
}
