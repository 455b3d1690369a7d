//! Arbitrary text as a runtime config: a clear error or a valid config, never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data)
        && let Ok(config) = mail_runtime::config::Config::parse(text)
    {
        for m in &config.raw.mailboxes {
            let _ = config.resolve(&m.address);
        }
    }
});
