//! Arbitrary bytes, cut into arbitrary reads, through the IMAP command path: the driver's
//! reader (imap-codec's fragmentizer and command parser, the bounds, extended LIST and SEARCH
//! RETURN), before login or after as the first byte says, then what the server does with
//! each command that needs no disk: sequence sets resolved against a folder, SEARCH keys
//! evaluated, FETCH items rendered, LIST patterns matched, folder names through modified
//! UTF-7, QRESYNC's known UIDs turned into VANISHED ranges. Never a panic; every FETCH response
//! ends in CRLF; VANISHED names only known UIDs the folder does not hold; a folder name has one
//! modified UTF-7 spelling.
#![no_main]

use imap_codec::imap_types::{
    IntoStatic,
    command::{CommandBody, SelectParameter},
    fetch::MacroOrMessageDataItemNames,
    mailbox::{ListMailbox, Mailbox},
    search::SearchKey,
};
use libfuzzer_sys::fuzz_target;
use mail_runtime::{
    imap::{
        codec::{Input, Reader},
        mutf7,
        op::{
            fetch::{SessionFlags, render_fetch},
            list::pattern_matches,
        },
        search::{self, Candidate},
        selected::{self, Selected},
    },
    store::{FolderIndex, MessageMeta},
};

const MESSAGE: &[u8] = b"From: A <a@example.test>\r\nTo: b@example.test\r\nSubject: hi\r\n\
Content-Type: multipart/mixed; boundary=x\r\n\r\n--x\r\nContent-Type: text/plain\r\n\r\nbody\r\n\
--x\r\nContent-Type: message/rfc822\r\n\r\nSubject: inner\r\n\r\ninner body\r\n--x--\r\n";

fn folder() -> Selected {
    let messages = (1..=4)
        .map(|uid| MessageMeta {
            uid: uid * 3,
            size: MESSAGE.len() as u64,
            flags: ["", "S", "FT", "DR"][uid as usize - 1].into(),
            internal_date: i64::from(uid) * 86_400 * 400,
            file_name: format!("m{uid}"),
            modseq: 1,
            in_new: false,
        })
        .collect();
    Selected::new(
        "INBOX".into(),
        false,
        FolderIndex {
            uid_validity: 1,
            uid_next: 13,
            messages,
            keywords: vec!["$Junk".into(), "work".into()],
            highest_modseq: 1,
        },
    )
}

fn folder_bytes(mailbox: &Mailbox<'_>) -> Vec<u8> {
    match mailbox {
        Mailbox::Inbox => b"INBOX".to_vec(),
        Mailbox::Other(other) => other.as_ref().to_vec(),
    }
}

/// A folder name in modified UTF-7 has one spelling: what decodes encodes back to itself, and
/// what a UTF-8 name encodes to decodes back to it.
fn one_spelling(mailbox: &Mailbox<'_>) {
    let Ok(name) = String::from_utf8(folder_bytes(mailbox)) else {
        return;
    };
    if let Some(utf8) = mutf7::decode(&name) {
        assert_eq!(mutf7::encode(&utf8), name);
    }
    assert_eq!(
        mutf7::decode(&mutf7::encode(&name)).as_deref(),
        Some(name.as_str())
    );
}

fuzz_target!(|data: &[u8]| {
    let selected = folder();
    let logged_in = data.first().is_some_and(|b| b & 1 == 1);
    let mut reader = Reader::new(64 * 1024);
    for chunk in data.split_inclusive(|&b| b == 0xff) {
        reader.enqueue(chunk);
        while let Some(input) = reader.next(logged_in) {
            let command = match input {
                Input::Command(command, _) => *command,
                Input::ExtendedList(_) | Input::Reply(_) => continue,
                Input::Fatal(_) => return,
            };
            match command.body {
                CommandBody::Fetch {
                    sequence_set,
                    macro_or_item_names,
                    uid,
                    ..
                } => {
                    let items: Vec<_> = match macro_or_item_names {
                        MacroOrMessageDataItemNames::Macro(m) => m
                            .expand()
                            .into_iter()
                            .map(IntoStatic::into_static)
                            .collect(),
                        MacroOrMessageDataItemNames::MessageDataItemNames(i) => i,
                    };
                    if let Ok(indexes) = selected.resolve(&sequence_set, uid) {
                        for i in indexes {
                            let mut out = Vec::new();
                            let meta = &selected.messages[i];
                            let shown = SessionFlags {
                                seen_now: true,
                                recent: i % 2 == 0,
                            };
                            let _ = render_fetch(
                                &mut out,
                                i as u32 + 1,
                                meta,
                                &[],
                                Some(MESSAGE),
                                &items,
                                shown,
                            );
                            assert!(out.ends_with(b")\r\n"));
                        }
                    }
                }
                CommandBody::Search { criteria, .. } => {
                    let key = SearchKey::And(criteria);
                    let sets = search::SetCache::default();
                    for (i, meta) in selected.messages.iter().enumerate() {
                        let candidate = Candidate {
                            seq: i as u32 + 1,
                            meta,
                            largest: selected.largest(),
                            raw: Some(MESSAGE),
                            sets: &sets,
                            keywords: &[],
                            recent: i % 2 == 0,
                            contents: Default::default(),
                        };
                        let _ = search::matches(&key, &candidate);
                    }
                }
                CommandBody::List {
                    reference,
                    mailbox_wildcard,
                } => {
                    let pattern = match mailbox_wildcard {
                        ListMailbox::Token(t) => t.as_ref().to_vec(),
                        ListMailbox::String(s) => s.as_ref().to_vec(),
                    };
                    let _ = pattern_matches(&pattern, &folder_bytes(&reference));
                }
                CommandBody::Select {
                    mailbox,
                    parameters,
                } => {
                    one_spelling(&mailbox);
                    for parameter in parameters {
                        if let SelectParameter::QResync {
                            known_uids: Some(set),
                            ..
                        } = parameter
                        {
                            let known = selected::ranges(&set, selected.largest().1.max(1));
                            for (a, b) in selected.vanished(&known) {
                                assert!(a <= b && b < selected.uid_next);
                                assert!(selected.messages.iter().all(|m| m.uid < a || m.uid > b));
                                assert!(
                                    selected::contains(&known, a) && selected::contains(&known, b)
                                );
                            }
                        }
                    }
                }
                CommandBody::Create { mailbox } => one_spelling(&mailbox),
                _ => {}
            }
        }
    }
});
