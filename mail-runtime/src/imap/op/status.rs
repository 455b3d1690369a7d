//! STATUS (RFC 3501, RFC 9051, RFC 7162 HIGHESTMODSEQ): a folder's counters without selecting it.

use imap_codec::imap_types::{mailbox::Mailbox, status::StatusDataItemName};

use crate::imap::{
    session::{Done, Session, bad, store_failure},
    write,
};
use crate::store::MessageMeta;

/// One STATUS item (`MESSAGES 3`) of a folder, by its name; `None` for an unknown name.
pub(in crate::imap) fn status_value(
    index: &crate::store::FolderIndex,
    name: &str,
) -> Option<String> {
    let count = |f: &dyn Fn(&MessageMeta) -> bool| index.messages.iter().filter(|m| f(m)).count();
    let value = match name {
        "MESSAGES" => index.messages.len().to_string(),
        "RECENT" => count(&|m| m.is_new()).to_string(),
        "UIDNEXT" => index.uid_next.to_string(),
        "UIDVALIDITY" => index.uid_validity.to_string(),
        "UNSEEN" => count(&|m| !m.flags.contains('S')).to_string(),
        "DELETED" => count(&|m| m.flags.contains('T')).to_string(),
        "DELETED-STORAGE" => index
            .messages
            .iter()
            .filter(|m| m.flags.contains('T'))
            .map(|m| m.size)
            .sum::<u64>()
            .to_string(),
        "SIZE" => index
            .messages
            .iter()
            .map(|m| m.size)
            .sum::<u64>()
            .to_string(),
        "HIGHESTMODSEQ" => index.highest_modseq.to_string(),
        _ => return None,
    };
    Some(format!("{name} {value}"))
}

impl Session {
    pub(in crate::imap) async fn status(
        &mut self,
        mailbox: &Mailbox<'_>,
        items: &[StatusDataItemName],
    ) -> Done {
        let folder = self.folder(mailbox).await?;
        let name = folder.clone();
        let index = match self.blocking(move |s, m| s.index(&m, &name)).await {
            Ok(i) => i,
            Err(e) => return Err(store_failure(&e)),
        };
        let mut parts = Vec::new();
        for item in items {
            let name = match item {
                StatusDataItemName::Messages => "MESSAGES",
                StatusDataItemName::Recent if self.rev2 => {
                    return bad("RECENT is not IMAP4rev2's");
                }
                StatusDataItemName::Recent => "RECENT",
                StatusDataItemName::UidNext => "UIDNEXT",
                StatusDataItemName::UidValidity => "UIDVALIDITY",
                StatusDataItemName::Unseen => "UNSEEN",
                StatusDataItemName::Deleted => "DELETED",
                StatusDataItemName::DeletedStorage => "DELETED-STORAGE",
                StatusDataItemName::Size => "SIZE",
                StatusDataItemName::HighestModSeq => {
                    self.enable_condstore();
                    "HIGHESTMODSEQ"
                }
                #[allow(unreachable_patterns)]
                _ => continue,
            };
            parts.extend(status_value(&index, name));
        }
        let mut line = b"* STATUS ".to_vec();
        write::string(&mut line, self.shown(&folder).as_bytes());
        line.extend_from_slice(format!(" ({})\r\n", parts.join(" ")).as_bytes());
        self.send(line);
        Ok("STATUS completed".into())
    }
}
