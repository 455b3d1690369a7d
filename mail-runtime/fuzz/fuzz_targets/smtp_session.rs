//! Arbitrary bytes, cut into arbitrary reads, into an SMTP session on each kind of listener.
//! The session must never panic and every reply must be well-formed.
#![no_main]

use std::sync::{Arc, OnceLock};

use libfuzzer_sys::fuzz_target;
use mail_runtime::{
    config::{Config, ListenerProtocol},
    smtp::{
        Output, Session, SessionInfo,
        session::{Delivered, LoginFailure},
    },
    store::{
        FlagChange, FlagsSet, FolderIndex, MessageMeta, Placement, SieveScripts, SpoolWriter,
        SpooledMessage, Store, StoreError, Usage,
    },
};

/// A store that holds nothing: the fuzz target exercises the protocol, not the disk.
#[derive(Debug)]
struct NoStore;

impl Store for NoStore {
    fn spool(&self) -> Result<SpoolWriter, StoreError> {
        Err(StoreError::NoSpace)
    }
    fn deliver(&self, _: SpooledMessage, _: &[String]) -> Result<(), StoreError> {
        Ok(())
    }
    fn deliver_to(&self, _: SpooledMessage, _: &[Placement]) -> Result<(), StoreError> {
        Ok(())
    }
    fn sieve_scripts(&self, _: &str) -> Result<SieveScripts, StoreError> {
        Ok(SieveScripts::default())
    }
    fn sieve_script(&self, _: &str, _: &str) -> Result<Option<String>, StoreError> {
        Ok(None)
    }
    fn put_sieve_script(&self, _: &str, _: &str, _: &str) -> Result<(), StoreError> {
        Err(StoreError::NoSpace)
    }
    fn delete_sieve_script(&self, _: &str, _: &str) -> Result<(), StoreError> {
        Err(StoreError::NoSpace)
    }
    fn rename_sieve_script(&self, _: &str, _: &str, _: &str) -> Result<(), StoreError> {
        Err(StoreError::NoSpace)
    }
    fn set_active_sieve_script(&self, _: &str, _: Option<&str>) -> Result<(), StoreError> {
        Err(StoreError::NoSpace)
    }
    fn vacation_due(&self, _: &str, _: &str, _: i64, _: u64) -> Result<bool, StoreError> {
        Ok(false)
    }
    fn usage(&self, _: &str) -> Result<Usage, StoreError> {
        Ok(Usage {
            bytes: 5,
            messages: 1,
        })
    }
    fn index(&self, _: &str, _: &str) -> Result<FolderIndex, StoreError> {
        Err(StoreError::NoSpace)
    }
    fn read(&self, _: &str, _: &str, _: &MessageMeta) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(None)
    }
    fn read_message(&self, _: &str, _: u32) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(None)
    }
    fn expunge(&self, _: &str, _: &str, _: &[MessageMeta]) -> Result<(), StoreError> {
        Ok(())
    }
    fn expunge_deleted(&self, _: &str, _: &str, _: &[MessageMeta]) -> Result<Vec<u32>, StoreError> {
        Ok(Vec::new())
    }
    fn keyword_letters(&self, _: &str, _: &str, _: &[String]) -> Result<String, StoreError> {
        Ok(String::new())
    }
    fn append(
        &self,
        _: &str,
        _: &str,
        _: SpooledMessage,
        _: &str,
        _: Option<i64>,
    ) -> Result<(u32, u32), StoreError> {
        Err(StoreError::NoSpace)
    }
    fn copy(
        &self,
        _: &str,
        _: &str,
        _: &[MessageMeta],
        _: &str,
    ) -> Result<(u32, Vec<(u32, u32)>), StoreError> {
        Err(StoreError::NoSpace)
    }
    fn set_flags(
        &self,
        _: &str,
        _: &str,
        _: &[(MessageMeta, FlagChange)],
        _: Option<u64>,
    ) -> Result<FlagsSet, StoreError> {
        Ok(FlagsSet::default())
    }
    fn claim_recent(&self, _: &str, _: &str) -> Result<Vec<u32>, StoreError> {
        Ok(Vec::new())
    }
    fn folders(&self, _: &str) -> Result<Vec<String>, StoreError> {
        Ok(vec!["INBOX".into()])
    }
    fn create_folder(&self, _: &str, _: &str) -> Result<(), StoreError> {
        Err(StoreError::NoSpace)
    }
    fn delete_folder(&self, _: &str, _: &str) -> Result<(), StoreError> {
        Err(StoreError::NoSpace)
    }
    fn rename_folder(&self, _: &str, _: &str, _: &str) -> Result<(), StoreError> {
        Err(StoreError::NoSpace)
    }
    fn subscriptions(&self, _: &str) -> Result<Vec<String>, StoreError> {
        Ok(Vec::new())
    }
    fn set_subscribed(&self, _: &str, _: &str, _: bool) -> Result<(), StoreError> {
        Ok(())
    }
    fn ensure_default_folders(&self, _: &str) -> Result<(), StoreError> {
        Ok(())
    }
    fn changes(&self, _: &str) -> tokio::sync::watch::Receiver<u64> {
        tokio::sync::watch::channel(0).1
    }
}

fn config() -> Arc<Config> {
    static CONFIG: OnceLock<Arc<Config>> = OnceLock::new();
    CONFIG
        .get_or_init(|| {
            let text = include_str!("../seeds/runtime.yaml");
            Arc::new(Config::parse(text).expect("the seed config is valid"))
        })
        .clone()
}

fn check(outputs: &[Output]) {
    for output in outputs {
        if let Output::Reply(reply) = output {
            let bytes = reply.to_bytes();
            assert!(bytes.ends_with(b"\r\n"));
            for line in bytes.split(|&b| b == b'\n').filter(|l| !l.is_empty()) {
                assert!(line.len() >= 4 && line.ends_with(b"\r"), "{line:?}");
                assert!(line[..3].iter().all(u8::is_ascii_digit));
                assert!(!line[..line.len() - 1].contains(&b'\r'));
            }
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&selector, rest)) = data.split_first() else {
        return;
    };
    let listener = match selector % 3 {
        0 => ListenerProtocol::Smtp,
        1 => ListenerProtocol::Submission,
        _ => ListenerProtocol::Submissions,
    };
    let info = SessionInfo {
        listener,
        peer: if selector & 4 == 0 {
            [198, 51, 100, 7].into()
        } else {
            [192, 0, 2, 9].into()
        },
        tls: selector & 8 != 0,
        tls_available: selector & 16 != 0,
    };
    let (mut session, greeting) = Session::new(info, config(), Arc::new(NoStore));
    check(&[greeting]);
    // The rest is cut into reads at the 0xff bytes, which are kept as data too.
    for chunk in rest.split_inclusive(|&b| b == 0xff) {
        let mut queue: Vec<Output> = session.feed(chunk);
        while !queue.is_empty() {
            check(&queue);
            let mut next = Vec::new();
            for output in queue {
                match output {
                    Output::StartTls => next.extend(session.tls_started(chunk.len() % 2 == 0)),
                    Output::CheckLogin { username, .. } => {
                        next.extend(session.login_result(if username.len() % 2 == 0 {
                            Ok(mail_runtime::auth::Login {
                                index: 0,
                                address: "alice@example.test".to_string(),
                                credential: String::new(),
                                app_password: None,
                            })
                        } else {
                            Err(LoginFailure::Invalid)
                        }))
                    }
                    Output::EndMessage => {
                        let _ = session.delivery();
                        next.extend(session.delivered(Delivered::Ok));
                    }
                    _ => {}
                }
            }
            queue = next;
        }
        if session.closed() {
            return;
        }
    }
});
