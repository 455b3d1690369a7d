//! What users teach rspamd: a message moved into Junk or marked `$Junk` is spam, one moved out
//! of Junk (not into Trash) or marked `$NotJunk` (or unmarked `$Junk`) is ham, as Thunderbird,
//! Apple Mail and K-9 say it. Learning happens in the background through rspamd's controller:
//! the user's command never waits for it, and a failure is logged and counted, never the
//! user's problem.

use std::sync::atomic::{AtomicU64, Ordering};

use crate::imap::session::Session;
use crate::store::{MessageMeta, Store};

/// Messages of one command that are learned, the largest one, and their bytes together.
const LEARN_AT_ONCE: usize = 20;
const LEARN_MAX_BYTES: u64 = 10 << 20;
const LEARN_COMMAND_BYTES: u64 = 16 << 20;
/// Bytes being taught at once by the whole runtime: a user who presses Junk and Not Junk in a
/// loop (or several users at once) gets some of it skipped, not the runtime's memory or
/// rspamd's controller flooded.
const LEARNING_BYTES: u64 = 64 << 20;

static LEARNING: AtomicU64 = AtomicU64::new(0);

/// A share of [`LEARNING_BYTES`], given back when dropped.
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
        let taken = LEARNING.fetch_update(Ordering::AcqRel, Ordering::Acquire, |now| {
            (now + bytes <= LEARNING_BYTES).then_some(now + bytes)
        });
        if taken.is_err() {
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
        LEARNING.fetch_sub(self.0, Ordering::AcqRel);
    }
}

/// Whether a copy from `from` to `to` teaches spam (`Some(true)`), ham, or nothing.
pub(in crate::imap) fn moving(from: &str, to: &str) -> Option<bool> {
    let junk = |f: &str| f.eq_ignore_ascii_case("Junk");
    match (junk(from), junk(to)) {
        (false, true) => Some(true),
        (true, false) if !to.eq_ignore_ascii_case("Trash") => Some(false),
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

/// Whether a flag change teaches spam (`Some(true)`), ham, or nothing.
pub(in crate::imap) fn marking(before: Marks, after: Marks) -> Option<bool> {
    if after.junk && !before.junk {
        Some(true)
    } else if (after.not_junk && !before.not_junk) || (before.junk && !after.junk) {
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
            Some(file) => match tokio::fs::read_to_string(file).await {
                Ok(p) => Some(p.trim_end_matches(['\r', '\n']).to_string()),
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
        assert_eq!(moving("Junk", "junk"), None);
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
        let more: Vec<_> = (0..3).map(|_| Share::take(&metas).expect("room")).collect();
        assert!(Share::take(&metas).is_none());
        drop(share);
        assert!(Share::take(&metas).is_some());
        drop(more);
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
        assert_eq!(marking(none, junk), Some(true));
        assert_eq!(marking(not_junk, junk), Some(true));
        assert_eq!(marking(junk, none), Some(false));
        assert_eq!(marking(none, not_junk), Some(false));
        assert_eq!(marking(junk, junk), None);
        assert_eq!(marking(not_junk, none), None);
        assert_eq!(marking(none, none), None);
    }
}
