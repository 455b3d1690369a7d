//! Arbitrary bytes, cut into arbitrary reads, into a POP3 session; the driver's answers are
//! chosen by the input too. Never a panic, and every line out ends in CRLF.
#![no_main]

use libfuzzer_sys::fuzz_target;
use mail_runtime::{
    pop3::{Output, Session, session::OpenFailure},
    store::MessageMeta,
};

fn meta(uid: u32) -> MessageMeta {
    MessageMeta {
        uid,
        size: u64::from(uid) * 10,
        flags: String::new(),
        internal_date: 0,
        file_name: format!("m{uid}"),
        modseq: 1,
        in_new: false,
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&selector, rest)) = data.split_first() else {
        return;
    };
    let (mut session, greeting) = Session::new(
        "mail.example.test",
        selector & 1 != 0,
        selector & 2 != 0,
        selector & 4 != 0,
    );
    let mut queue = vec![greeting];
    for chunk in rest.split_inclusive(|&b| b == 0xff) {
        queue.extend(session.feed(chunk));
        while !queue.is_empty() {
            let mut next = Vec::new();
            for output in queue {
                match output {
                    Output::Send(bytes) => assert!(bytes.ends_with(b"\r\n")),
                    Output::StartTls => next.extend(session.tls_started(chunk.len() % 2 == 0)),
                    Output::Login { username, .. } => {
                        next.extend(session.opened(match username.len() % 3 {
                            0 => Ok((1, (1..=(selector as u32 % 5)).map(meta).collect())),
                            1 => Err(OpenFailure::Invalid),
                            _ => Err(OpenFailure::InUse),
                        }))
                    }
                    Output::Retrieve { .. } => {
                        let bytes = Session::format_message(chunk, Some(chunk.len() % 4));
                        assert!(bytes.ends_with(b".\r\n"));
                    }
                    Output::Commit(doomed) => next.extend(session.committed(Ok(doomed.len()))),
                    Output::Close => {}
                }
            }
            queue = next;
        }
        if session.closed() {
            return;
        }
    }
});
