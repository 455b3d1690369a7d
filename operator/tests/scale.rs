//! The operator at scale, a benchmark rather than a test of behaviour (run it by name, it is
//! ignored in the test run):
//!
//!   cargo test -p kubemail-operator --test scale -- --ignored --nocapture
//!
//! One MailDomain gets 1,000 Mailboxes (each with a plaintext password Secret the operator hashes
//! once) on the real control plane. It prints the time until all are in the runtime config, how
//! many times the config Secret was written on the way, the operator's CPU time and memory, and
//! the writes during a quiet minute afterwards (which must be none).
use std::{
    io::Write,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use k8s_openapi::api::core::v1::Secret;
use kube::{Api, ResourceExt};
use kubemail_e2e::{ControlPlane, TestNamespace, install_crds};

const MAILBOXES: usize = 1000;

fn proc_figures(pid: u32) -> (f64, u64) {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map(|(_, r)| r)
        .unwrap_or("")
        .split_whitespace()
        .collect();
    let ticks: u64 = fields.get(11).and_then(|v| v.parse().ok()).unwrap_or(0)
        + fields
            .get(12)
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0);
    let rss = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        .unwrap_or(0);
    (ticks as f64 / 100.0, rss)
}

#[tokio::test]
#[ignore = "a benchmark: run by name with --ignored"]
async fn a_thousand_mailboxes() {
    let plane = ControlPlane::start().expect("control plane");
    let client = plane.client().await.expect("client");
    install_crds(&client).await.expect("CRDs");
    let ns = TestNamespace::create(&client, "scale", Default::default())
        .await
        .expect("ns")
        .name;
    let mut operator = Command::new(env!("CARGO_BIN_EXE_kubemail-operator"))
        .args([
            "--namespace",
            &ns,
            "--health-addr",
            "off",
            "--probe-timeout",
            "1",
        ])
        .args(["--runtime-image", "kubemail/mail-runtime:bench"])
        .env("KUBECONFIG", plane.kubeconfig())
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .spawn()
        .expect("operator");
    let apply = |manifest: String| {
        let mut child = plane
            .kubectl()
            .args(["apply", "--server-side", "-n", &ns, "-f", "-"])
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .spawn()
            .expect("kubectl");
        child
            .stdin
            .take()
            .expect("stdin")
            .write_all(manifest.as_bytes())
            .expect("write");
        assert!(child.wait().expect("kubectl").success());
    };
    apply(
        "apiVersion: kubemail.io/v1alpha1\nkind: MailDomain\nmetadata: {name: example}\nspec: {domain: example.test}\n"
            .into(),
    );
    let mut manifest = String::new();
    for n in 0..MAILBOXES {
        manifest.push_str(&format!(
            "---\napiVersion: v1\nkind: Secret\nmetadata: {{name: user{n}-password}}\nstringData: {{password: pw-{n}}}\n\
             ---\napiVersion: kubemail.io/v1alpha1\nkind: Mailbox\nmetadata: {{name: user{n}}}\n\
             spec: {{address: user{n}@example.test, passwordSecretRef: {{name: user{n}-password}}}}\n"
        ));
    }
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &ns);
    let start = Instant::now();
    apply(manifest);
    let applied = start.elapsed();
    let mut versions = std::collections::BTreeSet::new();
    let all_in = loop {
        if let Some(secret) = secrets
            .get_opt("example-runtime-config")
            .await
            .expect("get")
        {
            versions.insert(secret.resource_version().unwrap_or_default());
            let yaml = secret
                .data
                .as_ref()
                .and_then(|d| d.get("runtime.yaml"))
                .map(|b| String::from_utf8_lossy(&b.0).into_owned())
                .unwrap_or_default();
            if yaml.matches("passwordHash:").count() == MAILBOXES {
                break start.elapsed();
            }
        }
        assert!(start.elapsed() < Duration::from_secs(900), "not converged");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let (cpu, rss) = proc_figures(operator.id());
    // A quiet minute: nothing changes, so nothing may be written.
    let quiet_from = secrets
        .get("example-runtime-config")
        .await
        .expect("get")
        .resource_version();
    tokio::time::sleep(Duration::from_secs(60)).await;
    let quiet_to = secrets
        .get("example-runtime-config")
        .await
        .expect("get")
        .resource_version();
    let (cpu_after, rss_after) = proc_figures(operator.id());
    let _ = operator.kill();
    let _ = operator.wait();
    println!("\n| operator, {MAILBOXES} mailboxes | figure |\n|---|---|");
    println!(
        "| kubectl apply of {MAILBOXES} Mailboxes + Secrets | {:.1} s |",
        applied.as_secs_f64()
    );
    println!(
        "| apply -> all {MAILBOXES} in the runtime config | {:.1} s |",
        all_in.as_secs_f64()
    );
    println!(
        "| config Secret versions seen on the way (polled every 200 ms) | {} |",
        versions.len()
    );
    println!("| operator CPU time until then | {cpu:.1} s |");
    println!("| operator resident memory | {} MiB |", rss / 1024);
    println!(
        "| config writes in the quiet minute after | {} |",
        u8::from(quiet_from != quiet_to)
    );
    println!(
        "| operator CPU in the quiet minute | {:.2} s, RSS {} MiB |",
        cpu_after - cpu,
        rss_after / 1024
    );
    assert_eq!(
        quiet_from, quiet_to,
        "the config was rewritten with nothing changed"
    );
}
