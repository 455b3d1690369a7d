//! Arbitrary bytes as what a trusted load balancer sends first: the PROXY v1/v2 header reader
//! never panics, reads at most one header's worth (107 bytes for v1, 1024 for v2) and never a
//! byte past the header: what it leaves unread is exactly the input after a header that parses
//! on its own.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .expect("runtime");
    let mut input = data;
    let result = runtime.block_on(mail_runtime::proxy::read_header(&mut input));
    let consumed = data.len() - input.len();
    assert!(consumed <= 1024, "read {consumed} bytes for one header");
    if result.is_ok() {
        let header = &data[..consumed];
        assert!(consumed >= 15, "a header shorter than PROXY UNKNOWN");
        assert!(
            (header.starts_with(b"PROXY ") && consumed <= 107 && header.ends_with(b"\r\n"))
                || header.starts_with(b"\r\n\r\n\0\r\nQUIT\n"),
            "accepted {header:?}"
        );
        // The same header alone reads the same way: nothing after it was needed.
        let mut alone = header;
        let again = runtime.block_on(mail_runtime::proxy::read_header(&mut alone));
        assert_eq!(again, result);
        assert!(alone.is_empty());
    }
});
