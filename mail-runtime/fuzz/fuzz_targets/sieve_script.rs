//! A user's Sieve script and a message: compiling never panics, and a script that compiles
//! runs to an outcome (actions, or the implicit keep with an error) within its budget.
#![no_main]

use kubemail_sieve::{Envelope, Input, compile, run};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let split = data.iter().position(|b| *b == 0).unwrap_or(data.len());
    let (script, message) = data.split_at(split);
    let Ok(script) = std::str::from_utf8(script) else {
        return;
    };
    let Ok(script) = compile(script) else {
        return;
    };
    let envelope = Envelope {
        from: "sender@example.org".into(),
        to: "alice@example.test".into(),
    };
    let now = chrono::DateTime::from_timestamp(1_700_000_000, 0)
        .unwrap_or_default()
        .fixed_offset();
    let outcome = run(
        &script,
        &Input {
            message,
            envelope: &envelope,
            now,
            folders: &["Work".to_string()],
        },
    );
    assert!(!outcome.actions.is_empty() || outcome.error.is_none());
});
