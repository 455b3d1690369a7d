//! What users teach rspamd: a message moved into Junk or marked `$Junk` is spam, one moved out
//! of Junk (not into Trash) or marked `$NotJunk` (or unmarked `$Junk`) is ham, as Thunderbird,
//! Apple Mail and K-9 say it. Learning happens in the background through rspamd's controller:
//! the user's command never waits for it, and a failure is logged and counted, never the
//! user's problem.

use std::sync::Mutex;

use crate::imap::session::Session;
use crate::store::{MessageMeta, Store};

/// Messages of one command that are learned, the largest one, and their bytes together.
const LEARN_AT_ONCE: usize = 20;
const LEARN_MAX_BYTES: u64 = 10 << 20;
const LEARN_COMMAND_BYTES: u64 = 16 << 20;
/// Bytes, and commands, being taught at once by the whole runtime: a user who presses Junk and
/// Not Junk in a loop (or several users at once) gets some of it skipped, not the runtime's
/// memory or rspamd's controller flooded (each command is one connection to it at a time).
const LEARNING_BYTES: u64 = 64 << 20;
const LEARNING_COMMANDS: u64 = 16;

/// Bytes and commands being taught now.
static LEARNING: Mutex<(u64, u64)> = Mutex::new((0, 0));

/// A share of [`LEARNING_BYTES`] and one of [`LEARNING_COMMANDS`], given back when dropped.
pub(in crate::imap) struct Share(u64);

impl Share {
    /// The messages of `metas` a command teaches (the first [`LEARN_AT_ONCE`] that fit in
    /// [`LEARN_COMMAND_BYTES`], none larger than [`LEARN_MAX_BYTES`]) and their share; `None`
    /// (and counted) when the runtime is teaching all it may already.
    pub(in crate::imap) fn take(metas: &[MessageMeta]) -> Option<(Share, Vec<MessageMeta>)> {
        let mut bytes = 0;
        let chosen: Vec<MessageMeta> = metas
            .iter()
            .filter(|meta| meta.size <= LEARN_MAX_BYTES)
            .filter(|meta| {
                let fits = bytes + meta.size <= LEARN_COMMAND_BYTES;
                if fits {
                    bytes += meta.size;
                }
                fits
            })
            .take(LEARN_AT_ONCE)
            .cloned()
            .collect();
        let taken = {
            let mut learning = LEARNING.lock().unwrap_or_else(|e| e.into_inner());
            let (now_bytes, now_commands) = *learning;
            let room = now_bytes + bytes <= LEARNING_BYTES && now_commands < LEARNING_COMMANDS;
            if room {
                *learning = (now_bytes + bytes, now_commands + 1);
            }
            room
        };
        if !taken {
            crate::metrics::filter_verdict("rspamd", "learn-skipped");
            tracing::warn!(
                messages = chosen.len(),
                "rspamd is being taught all it may at once; these are not learned"
            );
            return None;
        }
        Some((Share(bytes), chosen))
    }
}

impl Drop for Share {
    fn drop(&mut self) {
        let mut learning = LEARNING.lock().unwrap_or_else(|e| e.into_inner());
        learning.0 = learning.0.saturating_sub(self.0);
        learning.1 = learning.1.saturating_sub(1);
    }
}

/// Whether a copy from `from` to `to` teaches spam (`Some(true)`), ham, or nothing. `Junk` and
/// `Trash` are the special-use folders by their names as the runtime makes them: a user's own
/// `junk` is another folder.
pub(in crate::imap) fn moving(from: &str, to: &str) -> Option<bool> {
    match (from == "Junk", to == "Junk") {
        (false, true) => Some(true),
        (true, false) if to != "Trash" => Some(false),
        _ => None,
    }
}

/// The junk keywords a message carries.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(in crate::imap) struct Marks {
    pub(in crate::imap) junk: bool,
    pub(in crate::imap) not_junk: bool,
}

impl Marks {
    /// The marks of `meta`, whose keyword letters index the folder's keyword `table`.
    pub(in crate::imap) fn of(meta: &MessageMeta, table: &[String]) -> Marks {
        let has = |name: &str| {
            table
                .iter()
                .position(|k| k.eq_ignore_ascii_case(name))
                .and_then(crate::store::keyword_letter)
                .is_some_and(|letter| meta.flags.contains(letter))
        };
        Marks {
            junk: has("$Junk"),
            not_junk: has("$NotJunk"),
        }
    }
}

/// Whether a flag change teaches spam (`Some(true)`), ham, or nothing. Only a removal the
/// client asked for (`-FLAGS`) takes `$Junk` away as a verdict; a `FLAGS (...)` that replaces
/// all flags without it says nothing about spam.
pub(in crate::imap) fn marking(before: Marks, after: Marks, removing: bool) -> Option<bool> {
    if after.junk && !before.junk {
        Some(true)
    } else if (after.not_junk && !before.not_junk) || (removing && before.junk && !after.junk) {
        Some(false)
    } else {
        None
    }
}

/// The bytes of the messages chosen by [`Share::take`].
pub(in crate::imap) fn samples(
    s: &dyn Store,
    mailbox: &str,
    folder: &str,
    chosen: &[MessageMeta],
) -> Vec<Vec<u8>> {
    chosen
        .iter()
        .filter_map(|meta| s.read(mailbox, folder, meta).ok().flatten())
        .collect()
}

impl Session {
    /// Whether the domain's rspamd learns from users (it has a controller).
    pub(in crate::imap) fn learns(&self) -> bool {
        let config = self.runtime.config().get();
        config
            .raw
            .inbound
            .rspamd
            .as_ref()
            .is_some_and(|r| r.controller_url.is_some())
    }

    /// Reads messages of `folder` and teaches them, in the background.
    pub(in crate::imap) fn teach_later(&self, spam: bool, folder: String, metas: Vec<MessageMeta>) {
        if metas.is_empty() || !self.learns() {
            return;
        }
        let Some(mailbox) = self.user.as_ref().map(|u| u.address.clone()) else {
            return;
        };
        let Some((share, chosen)) = Share::take(&metas) else {
            return;
        };
        let store = self.runtime.store().clone();
        let session = self.teacher();
        tokio::spawn(async move {
            let read = tokio::task::spawn_blocking(move || {
                samples(store.as_ref(), &mailbox, &folder, &chosen)
            })
            .await;
            if let Ok(samples) = read {
                session.teach(spam, samples).await;
            }
            drop(share);
        });
    }

    /// Teaches messages already read (with their share), in the background.
    pub(in crate::imap) fn teach(&self, spam: bool, share: Share, samples: Vec<Vec<u8>>) {
        let teacher = self.teacher();
        tokio::spawn(async move {
            teacher.teach(spam, samples).await;
            drop(share);
        });
    }

    fn teacher(&self) -> Teacher {
        Teacher {
            rspamd: self.runtime.config().get().raw.inbound.rspamd.clone(),
        }
    }
}

/// The domain's rspamd as it was when the user acted.
struct Teacher {
    rspamd: Option<kubemail_config::RspamdConfig>,
}

impl Teacher {
    async fn teach(self, spam: bool, samples: Vec<Vec<u8>>) {
        let Some(rspamd) = self.rspamd else {
            return;
        };
        let Some(url) = rspamd.controller_url.clone() else {
            return;
        };
        // Read when used: a rotated Secret takes effect without a restart.
        let password = match &rspamd.controller_password_file {
            None => None,
            Some(file) => match read_password(file).await {
                Ok(p) => Some(p),
                Err(err) => {
                    tracing::warn!(file = %file.display(), error = %err, "rspamd's controller password cannot be read; nothing learned");
                    crate::metrics::filter_verdict("rspamd", "learn-failed");
                    return;
                }
            },
        };
        let timeout = std::time::Duration::from_secs(u64::from(rspamd.timeout_seconds));
        for message in samples {
            let learned =
                crate::smtp::rspamd::learn(&url, password.as_deref(), spam, message, timeout).await;
            let verdict = match (&learned, spam) {
                (Ok(()), true) => "learned-spam",
                (Ok(()), false) => "learned-ham",
                (Err(_), _) => "learn-failed",
            };
            crate::metrics::filter_verdict("rspamd", verdict);
            if let Err(err) = learned {
                tracing::warn!(error = %err, "rspamd did not learn what a user said about a message");
            }
        }
    }
}

/// A password file: a regular file of at most 4 KiB (a FIFO, a device or a huge file would
/// hold a thread or memory of the runtime's), without its line end.
async fn read_password(file: &std::path::Path) -> std::io::Result<String> {
    let meta = tokio::fs::metadata(file).await?;
    if !meta.is_file() || meta.len() > 4096 {
        return Err(std::io::Error::other("not a regular file of at most 4 KiB"));
    }
    let bytes = tokio::fs::read(file).await?;
    let text = String::from_utf8_lossy(&bytes[..bytes.len().min(4096)]).into_owned();
    Ok(text.trim_end_matches(['\r', '\n']).to_string())
}

#[cfg(test)]
mod tests {
    use super::{Marks, Share, marking, moving};

    #[test]
    fn into_junk_is_spam_out_of_it_ham_and_trash_nothing() {
        assert_eq!(moving("INBOX", "Junk"), Some(true));
        assert_eq!(moving("Junk", "INBOX"), Some(false));
        assert_eq!(moving("Junk", "Archive"), Some(false));
        assert_eq!(moving("Junk", "Trash"), None);
        assert_eq!(moving("INBOX", "Archive"), None);
        // A folder of the user's own that is spelled alike is not the Junk folder.
        assert_eq!(moving("INBOX", "junk"), None);
        assert_eq!(moving("Junk", "JUNK"), Some(false));
    }

    #[test]
    fn a_command_teaches_a_bounded_share_and_the_runtime_a_bounded_sum() {
        let meta = |uid: u32, size: u64| crate::store::MessageMeta {
            uid,
            size,
            flags: String::new(),
            internal_date: 0,
            file_name: format!("{uid}"),
            modseq: 1,
            in_new: false,
        };
        // 30 messages of 1 MiB and one too large: 16 of them (16 MiB), never the large one.
        let metas: Vec<_> = (1..=30)
            .map(|u| meta(u, 1 << 20))
            .chain([meta(99, 11 << 20)])
            .collect();
        let (share, chosen) = Share::take(&metas).expect("room");
        assert_eq!(chosen.len(), 16);
        assert!(chosen.iter().all(|m| m.uid != 99));
        // Four such commands fill the runtime's 64 MiB; a fifth is skipped until one ends.
        // (The only test that takes shares: the count is the runtime's, shared by all.)
        let more: Vec<_> = (0..3).map(|_| Share::take(&metas).expect("room")).collect();
        assert!(Share::take(&metas).is_none());
        drop(share);
        assert!(Share::take(&metas).is_some());
        drop(more);
    }

    /// A password file is read only when it is a small regular file: a FIFO would hold a
    /// thread of the runtime's until someone wrote to it, a huge file its memory.
    #[tokio::test]
    async fn only_a_small_regular_file_is_read_as_the_password() {
        let dir = tempfile::tempdir().expect("tmp");
        let file = dir.path().join("password");
        std::fs::write(&file, "s3cret\r\n").expect("write");
        assert_eq!(super::read_password(&file).await.expect("read"), "s3cret");
        std::fs::write(&file, vec![b'x'; 5000]).expect("write");
        assert!(super::read_password(&file).await.is_err());
        let fifo = dir.path().join("fifo");
        let made = std::process::Command::new("mkfifo")
            .arg(&fifo)
            .status()
            .expect("mkfifo");
        assert!(made.success());
        let read = tokio::time::timeout(
            std::time::Duration::from_secs(5),
            super::read_password(&fifo),
        )
        .await
        .expect("a FIFO is refused at once, not waited on");
        assert!(read.is_err());
        assert!(super::read_password(dir.path()).await.is_err());
    }

    #[test]
    fn junk_keywords_teach_when_they_change() {
        let none = Marks::default();
        let junk = Marks {
            junk: true,
            not_junk: false,
        };
        let not_junk = Marks {
            junk: false,
            not_junk: true,
        };
        for removing in [false, true] {
            assert_eq!(marking(none, junk, removing), Some(true));
            assert_eq!(marking(not_junk, junk, removing), Some(true));
            assert_eq!(marking(none, not_junk, removing), Some(false));
            assert_eq!(marking(junk, junk, removing), None);
            assert_eq!(marking(not_junk, none, removing), None);
            assert_eq!(marking(none, none, removing), None);
        }
        // -FLAGS ($Junk) is a verdict; FLAGS (\Seen) replacing everything is not.
        assert_eq!(marking(junk, none, true), Some(false));
        assert_eq!(marking(junk, none, false), None);
    }
}
