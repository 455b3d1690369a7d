//! Arbitrary bytes as what a load balancer sends first: the PROXY v1/v2 header reader never
//! panics, and what it hands on (read early plus still unread) is exactly the bytes after the
//! header.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .expect("runtime");
    let mut input = data;
    if let Ok((_, early)) = runtime.block_on(mail_runtime::proxy::read_header(&mut input)) {
        // What was read past the header, then what is still unread, is the input after it.
        let mut after = early.clone();
        after.extend_from_slice(input);
        assert!(
            data.ends_with(&after),
            "the bytes after the header were changed"
        );
        assert!(after.len() < data.len(), "a header of zero bytes");
    }
});
