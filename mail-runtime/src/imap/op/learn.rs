//! What users teach rspamd: a message moved into Junk or marked `$Junk` is spam, one moved out
//! of Junk (not into Trash) or marked `$NotJunk` (or unmarked `$Junk`) is ham, as Thunderbird,
//! Apple Mail and K-9 say it. Learning happens in the background through rspamd's controller:
//! the user's command never waits for it, and a failure is logged and counted, never the
//! user's problem.

use crate::imap::session::Session;
use crate::store::{MessageMeta, Store};

/// Messages of one command that are learned, and the largest one.
const LEARN_AT_ONCE: usize = 20;
const LEARN_MAX_BYTES: u64 = 10 << 20;

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

/// The bytes of the messages a command teaches (the first [`LEARN_AT_ONCE`], none larger
/// than [`LEARN_MAX_BYTES`]).
pub(in crate::imap) fn samples(
    s: &dyn Store,
    mailbox: &str,
    folder: &str,
    metas: &[MessageMeta],
) -> Vec<Vec<u8>> {
    metas
        .iter()
        .filter(|meta| meta.size <= LEARN_MAX_BYTES)
        .take(LEARN_AT_ONCE)
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
        let store = self.runtime.store().clone();
        let session = self.teacher();
        tokio::spawn(async move {
            let read = tokio::task::spawn_blocking(move || {
                samples(store.as_ref(), &mailbox, &folder, &metas)
            })
            .await;
            if let Ok(samples) = read {
                session.teach(spam, samples).await;
            }
        });
    }

    /// Teaches messages already read, in the background.
    pub(in crate::imap) fn teach(&self, spam: bool, samples: Vec<Vec<u8>>) {
        let teacher = self.teacher();
        tokio::spawn(async move { teacher.teach(spam, samples).await });
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
    use super::{Marks, marking, moving};

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
