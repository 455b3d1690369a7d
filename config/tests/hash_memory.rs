//! Password checks give argon2's memory back to the system once they are done: a runtime
//! whose clients all logged in at once does not keep 19 MiB per hashing thread for good. Its own
//! test binary: the process's resident memory is the measure, and no other test may move it.

use std::time::Duration;

use kubemail_config::password::{PasswordHash, hash_password, verify_bounded};

/// The process's resident memory, KiB (Linux).
fn resident_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").expect("/proc/self/status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn argon2_memory_is_given_back_after_a_burst_of_logins() {
    let hash = PasswordHash::parse(&hash_password("right")).expect("hash");
    // The one-off hash above (the library's own allocation) is gone; its effect on the
    // allocator stays, as in a runtime that made its dummy hash.
    let before = resident_kib();
    // A burst: both hashing threads busy at once.
    let checks = (0..8).map(|i| {
        let password = if i % 2 == 0 { "right" } else { "wrong" };
        verify_bounded(hash.clone(), password.as_bytes().to_vec())
    });
    let answers = all_at_once(checks).await;
    assert_eq!(
        answers,
        [true, false, true, false, true, false, true, false]
    );
    let during = resident_kib();
    assert!(
        during >= before + 19 * 1024,
        "the hashing threads hold their working memory through the burst: {before} KiB before, {during} KiB after"
    );
    // Each thread lets its memory go after a second without work; a loaded machine may wake
    // them late, so the test waits up to 10 s for it.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let mut after = resident_kib();
    while after >= before + 4 * 1024 && std::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
        after = resident_kib();
    }
    assert!(
        after < before + 4 * 1024,
        "argon2's memory given back: {before} KiB before the burst, {during} KiB after it, {after} KiB 10 s later"
    );
}

/// Runs the checks at once and gives their answers in order.
async fn all_at_once(
    checks: impl Iterator<Item = impl Future<Output = bool> + Send + 'static>,
) -> Vec<bool> {
    let tasks: Vec<_> = checks.map(tokio::spawn).collect();
    let mut answers = Vec::new();
    for task in tasks {
        answers.push(task.await.expect("check"));
    }
    answers
}
