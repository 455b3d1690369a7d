//! The command line refuses what it does not know, with a message and exit code 2, instead of
//! ignoring a misspelt flag or defaulting a bad value (a probe that silently took 5 s for
//! `--timeout 1s` would mark a pod unready for the wrong reason).
use std::process::Command;

fn run(args: &[&str]) -> (i32, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_mail-runtime"))
        .args(args)
        .output()
        .expect("runs");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn unknown_flags_and_bad_values_are_refused_by_name() {
    for (args, names) in [
        (&["serve", "--confg", "x.yaml"][..], "--confg"),
        (&["serve"][..], "--config"),
        (&["dev", "--base-port", "abc"][..], "--base-port"),
        (&["dev", "--base-port", "70000"][..], "--base-port"),
        (
            &["probe", "imap", "127.0.0.1:1", "--timeout", "1s"][..],
            "--timeout",
        ),
        (
            &["probe", "imaps", "127.0.0.1:1"][..],
            "smtp, imap, pop3, managesieve or https",
        ),
        (
            &["probe", "imap", "127.0.0.1:1", "--login", "a@b"][..],
            "--password-file",
        ),
        (&["frobnicate"][..], "frobnicate"),
    ] {
        let (code, stderr) = run(args);
        assert_eq!(code, 2, "{args:?}: {stderr}");
        assert!(stderr.contains(names), "{args:?}: {stderr}");
    }
    let (code, _) = run(&["--version"]);
    assert_eq!(code, 0);
    // A config that does not exist is an error of the run, not of the usage.
    let (code, stderr) = run(&["check-config", "/nonexistent/runtime.yaml"]);
    assert_eq!(code, 1, "{stderr}");
}
