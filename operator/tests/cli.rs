//! The operator's command line refuses unknown flags and bad values with a message and exit
//! code 2 (a misspelt `--namespace` used to widen the watch to every namespace in silence).
use std::process::Command;

fn run(args: &[&str]) -> (i32, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_kubemail-operator"))
        .args(args)
        .env_remove("KUBECONFIG")
        .output()
        .expect("runs");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn unknown_flags_and_bad_values_are_refused_by_name() {
    for (args, name) in [
        (&["--namespaces", "mail"][..], "--namespaces"),
        (&["--probe-timeout", "abc"][..], "--probe-timeout"),
        (&["--probe-timeout", "0"][..], "--probe-timeout"),
        (&["--health-addr", "nowhere"][..], "--health-addr"),
        (&["--leader-election"][..], "--leader-election"),
    ] {
        let (code, stderr) = run(args);
        assert_eq!(code, 2, "{args:?}: {stderr}");
        assert!(stderr.contains(name), "{args:?}: {stderr}");
    }
    let (code, _) = run(&["--help"]);
    assert_eq!(code, 0);
}
