//! Arbitrary bytes as a stored message, through everything IMAP reads from one: ENVELOPE,
//! BODYSTRUCTURE, BODY sections by part number (nested message/rfc822 parts too), BINARY, the
//! header fields and SEARCH keys. Never a panic; every FETCH response is one well-ended line.
#![no_main]

use std::sync::OnceLock;

use imap_codec::{
    CommandCodec,
    decode::Decoder,
    imap_types::{
        IntoStatic,
        command::{Command, CommandBody},
        fetch::{MacroOrMessageDataItemNames, MessageDataItemName},
        search::SearchKey,
    },
};
use libfuzzer_sys::fuzz_target;
use mail_runtime::{
    imap::{
        op::fetch::{SessionFlags, render_fetch},
        search::{self, Candidate},
        sort,
    },
    store::MessageMeta,
};

fn command(line: &[u8]) -> Command<'static> {
    CommandCodec::default()
        .decode(line)
        .expect("a valid command")
        .1
        .into_static()
}

fn items() -> &'static Vec<MessageDataItemName<'static>> {
    static ITEMS: OnceLock<Vec<MessageDataItemName<'static>>> = OnceLock::new();
    ITEMS.get_or_init(|| {
        let c = command(
            b"a FETCH 1 (ENVELOPE BODYSTRUCTURE BODY BODY.PEEK[] BODY[1] BODY[2.1] BODY[1.2.3] \
BODY[HEADER] BODY[TEXT]<3.50> BODY[2.HEADER] BODY[2.TEXT] BODY[1.MIME] \
BODY[HEADER.FIELDS (Subject From)] BODY[2.HEADER.FIELDS.NOT (To)] BINARY[1] BINARY[2.1] \
BINARY.SIZE[1] RFC822.HEADER RFC822.TEXT)\r\n",
        );
        match c.body {
            CommandBody::Fetch {
                macro_or_item_names: MacroOrMessageDataItemNames::MessageDataItemNames(items),
                ..
            } => items,
            _ => unreachable!("a FETCH"),
        }
    })
}

fn key() -> &'static SearchKey<'static> {
    static KEY: OnceLock<SearchKey<'static>> = OnceLock::new();
    KEY.get_or_init(|| {
        let c = command(
            b"a SEARCH OR SUBJECT x FROM y NOT HEADER Cc z BODY w TEXT v SENTSINCE 1-Jan-2020\r\n",
        );
        match c.body {
            CommandBody::Search { criteria, .. } => SearchKey::And(criteria),
            _ => unreachable!("a SEARCH"),
        }
    })
}

fuzz_target!(|data: &[u8]| {
    let meta = MessageMeta {
        uid: 1,
        size: data.len() as u64,
        flags: "S".into(),
        internal_date: 0,
        file_name: "m".into(),
        modseq: 1,
        in_new: false,
    };
    let mut out = Vec::new();
    if render_fetch(
        &mut out,
        1,
        &meta,
        &[],
        Some(data),
        items(),
        SessionFlags::default(),
    ) {
        assert!(out.ends_with(b")\r\n"));
    }
    let candidate = Candidate {
        seq: 1,
        meta: &meta,
        largest: (1, 1),
        raw: Some(data),
        sets: &search::SetCache::default(),
        keywords: &[],
        recent: false,
        contents: Default::default(),
    };
    let _ = search::matches(key(), &candidate);
    // SORT and THREAD read the same message's headers (References loops, odd subjects).
    let keys = sort::keys(1, &meta, data);
    let mut reply = keys.clone();
    reply.seq = 2;
    reply.references = keys.message_id.iter().cloned().collect();
    let both = [keys, reply];
    let threads = sort::references(&both);
    assert!(!sort::write(&threads, |i| both[i].seq).is_empty());
    let _ = sort::ordered_subject(&both);
});
