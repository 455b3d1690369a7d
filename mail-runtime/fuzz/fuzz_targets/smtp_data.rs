//! The DATA receiver gives the same message, the same end and the same verdict on bare line
//! ends however the input is split into reads.
#![no_main]

use libfuzzer_sys::fuzz_target;
use mail_runtime::smtp::codec::{DataEvent, DataReceiver};

fn receive<'a>(chunks: impl Iterator<Item = &'a [u8]>) -> (Vec<u8>, Option<usize>, bool) {
    let mut r = DataReceiver::new();
    let mut body = Vec::new();
    let mut consumed = 0;
    for chunk in chunks {
        let (events, used) = r.feed(chunk);
        consumed += used;
        for e in events {
            match e {
                DataEvent::Bytes(b) => body.extend(b),
                DataEvent::End => return (body, Some(consumed), r.bare_line_end),
            }
        }
    }
    (body, None, r.bare_line_end)
}

fuzz_target!(|data: &[u8]| {
    let Some((&split, input)) = data.split_first() else {
        return;
    };
    let whole = receive(std::iter::once(input));
    let step = usize::from(split.max(1));
    let pieces = receive(input.chunks(step));
    let bytes = receive(input.chunks(1));
    assert_eq!(whole, pieces);
    assert_eq!(whole, bytes);
    // A message that ended without a bare CR or LF holds only CRLF line ends.
    if whole.1.is_some() && !whole.2 {
        let body = &whole.0;
        for (i, &b) in body.iter().enumerate() {
            if b == b'\n' {
                assert!(i > 0 && body[i - 1] == b'\r');
            }
            if b == b'\r' {
                assert_eq!(body.get(i + 1), Some(&b'\n'));
            }
        }
    }
});
