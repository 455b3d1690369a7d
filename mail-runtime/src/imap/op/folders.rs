//! CREATE, DELETE, RENAME, SUBSCRIBE and UNSUBSCRIBE: folders and subscriptions.
use imap_codec::imap_types::mailbox::Mailbox;

use crate::imap::session::{Done, Session, store_failure};

impl Session {
    pub(in crate::imap) async fn subscribe(&mut self, mailbox: &Mailbox<'_>, on: bool) -> Done {
        let folder = self.folder(mailbox).await?;
        self.blocking(move |s, m| s.set_subscribed(&m, &folder, on))
            .await
            .map_err(|e| store_failure(&e))?;
        Ok(if on {
            "SUBSCRIBE completed".into()
        } else {
            "UNSUBSCRIBE completed".into()
        })
    }

    /// CREATE: a trailing separator names the same folder (RFC 3501 s6.3.3).
    pub(in crate::imap) async fn create(&mut self, mailbox: &Mailbox<'_>) -> Done {
        let folder = self.new_folder(mailbox)?.trim_end_matches('/').to_string();
        self.blocking(move |s, m| s.create_folder(&m, &folder))
            .await
            .map(|()| "CREATE completed".into())
            .map_err(|e| store_failure(&e))
    }

    /// DELETE: deleting the selected folder closes it first.
    pub(in crate::imap) async fn delete(&mut self, mailbox: &Mailbox<'_>) -> Done {
        let folder = self.folder(mailbox).await?;
        if self.selected.as_ref().is_some_and(|s| s.folder == folder) {
            self.selected = None;
        }
        self.blocking(move |s, m| s.delete_folder(&m, &folder))
            .await
            .map(|()| "DELETE completed".into())
            .map_err(|e| store_failure(&e))
    }

    pub(in crate::imap) async fn rename(&mut self, from: &Mailbox<'_>, to: &Mailbox<'_>) -> Done {
        let (from, to) = (self.folder(from).await?, self.new_folder(to)?);
        self.blocking(move |s, m| s.rename_folder(&m, &from, &to))
            .await
            .map(|()| "RENAME completed".into())
            .map_err(|e| store_failure(&e))
    }
}
