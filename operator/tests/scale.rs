//! The operator at scale, a benchmark rather than a test of behaviour (run it by name, it is
//! ignored in the test run):
//!
//!   cargo test -p kubemail-operator --test scale -- --ignored --nocapture
//!
//! 1,000 Mailboxes across 10 MailDomains (each Mailbox with a plaintext password Secret the
//! operator hashes once) on the real control plane; `SCALE_MAILBOXES` and `SCALE_DOMAINS` set
//! other sizes (10,000 across 100 is issue 23's). It prints the time until every Mailbox is in
//! its domain's runtime config, the API requests the operator made (its own
//! `kubemail_operator_api_requests_total`), its CPU time and peak memory, and the writes it made
//! during a quiet minute afterwards (which must be none). `SCALE_HASHED=1` gives the Secrets
//! argon2 hashes instead, to see the operator without its hashing. `KUBEMAIL_OPERATOR_BIN`
//! runs another build of the operator (memory is a release build's figure:
//! `cargo build --release -p kubemail-operator`, then point it at target/release).
use std::{
    collections::BTreeMap,
    io::Write,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use futures::StreamExt;
use k8s_openapi::api::core::v1::Secret;
use kube::{Api, api::PostParams};
use kubemail_e2e::{ControlPlane, TestNamespace, install_crds};

/// A size from the environment, or the default.
fn size(var: &str, default: usize) -> usize {
    std::env::var(var)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// CPU seconds, current RSS and peak RSS (KiB) of a process.
fn proc_figures(pid: u32) -> (f64, u64, u64) {
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
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.split_whitespace().next()?.parse().ok())
            .unwrap_or(0)
    };
    (ticks as f64 / 100.0, field("VmRSS:"), field("VmHWM:"))
}

/// The operator's API requests by "verb resource", from its metrics endpoint.
fn api_requests(port: u16) -> BTreeMap<String, u64> {
    let out = Command::new("curl")
        .args(["-sf", &format!("http://127.0.0.1:{port}/metrics")])
        .output()
        .expect("curl");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.strip_prefix("kubemail_operator_api_requests_total{"))
        .filter_map(|l| {
            let (labels, value) = l.split_once("} ")?;
            let label = |name: &str| {
                labels
                    .split(',')
                    .find_map(|p| p.strip_prefix(name)?.strip_prefix("=\""))
                    .map(|v| v.trim_end_matches('"').to_string())
            };
            Some((
                format!("{} {}", label("verb")?, label("resource")?),
                value.trim().parse().ok()?,
            ))
        })
        .collect()
}

fn writes(requests: &BTreeMap<String, u64>) -> u64 {
    requests
        .iter()
        .filter(|(k, _)| {
            ["post ", "put ", "patch ", "delete "]
                .iter()
                .any(|v| k.starts_with(v))
        })
        .map(|(_, n)| n)
        .sum()
}

fn difference(
    after: &BTreeMap<String, u64>,
    before: &BTreeMap<String, u64>,
) -> BTreeMap<String, u64> {
    after
        .iter()
        .map(|(verb, n)| (verb.clone(), n - before.get(verb).copied().unwrap_or(0)))
        .filter(|(_, n)| *n > 0)
        .collect()
}

#[tokio::test]
#[ignore = "a benchmark: run by name with --ignored"]
async fn a_thousand_mailboxes_in_ten_domains() {
    let hashed = std::env::var("SCALE_HASHED").is_ok_and(|v| v == "1");
    let (n_domains, n_mailboxes) = (size("SCALE_DOMAINS", 10), size("SCALE_MAILBOXES", 1000));
    let plane = ControlPlane::start().expect("control plane");
    let client = plane.client().await.expect("client");
    install_crds(&client).await.expect("CRDs");
    let ns = TestNamespace::create(&client, "scale", Default::default())
        .await
        .expect("ns")
        .name;
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port();
    let binary = std::env::var("KUBEMAIL_OPERATOR_BIN")
        .unwrap_or_else(|_| env!("CARGO_BIN_EXE_kubemail-operator").to_string());
    let mut operator = Command::new(&binary)
        .args(["--namespace", &ns, "--probe-timeout", "1"])
        .args(["--health-addr", &format!("127.0.0.1:{port}")])
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
    let mut domains = String::new();
    for d in 0..n_domains {
        domains.push_str(&format!(
            "---\napiVersion: kubemail.io/v1alpha1\nkind: MailDomain\nmetadata: {{name: d{d}}}\n\
             spec: {{domain: d{d}.example.test}}\n"
        ));
    }
    apply(domains);
    // Let the domains settle (their keys, certificates and objects) before the clock starts.
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &ns);
    let in_config = |secret: Option<Secret>| {
        secret
            .as_ref()
            .and_then(|s| s.data.as_ref()?.get("runtime.yaml"))
            .map_or(0, |b| {
                String::from_utf8_lossy(&b.0)
                    .matches("passwordHash:")
                    .count()
            })
    };
    loop {
        let mut present = 0;
        for d in 0..n_domains {
            present += usize::from(
                secrets
                    .get_opt(&format!("d{d}-runtime-config"))
                    .await
                    .expect("get")
                    .is_some(),
            );
        }
        if present == n_domains {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // Created through the API with 16 requests in flight (kubectl apply sends one at a time and
    // would take most of the time itself).
    let mailboxes: Api<kubemail_crds::Mailbox> = Api::namespaced(client.clone(), &ns);
    let objects: Vec<(Secret, kubemail_crds::Mailbox)> = (0..n_mailboxes)
        .map(|n| {
            let password = if hashed {
                "$argon2id$v=19$m=19456,t=2,p=1$c2FsdHNhbHQ$aGFzaGhhc2hoYXNoaGFzaGhhc2hoYXNoaGFzaGhhc2g".to_string()
            } else {
                format!("pw-{n}")
            };
            let secret: Secret = serde_json::from_value(serde_json::json!({
                "metadata": {"name": format!("user{n}-password")},
                "stringData": {"password": password},
            }))
            .expect("secret");
            let mailbox = serde_json::from_value(serde_json::json!({
                "apiVersion": "kubemail.io/v1alpha1", "kind": "Mailbox",
                "metadata": {"name": format!("user{n}")},
                "spec": {"address": format!("user{n}@d{}.example.test", n % n_domains),
                         "passwordSecretRef": {"name": format!("user{n}-password")}},
            }))
            .expect("mailbox");
            (secret, mailbox)
        })
        .collect();
    let requests_before = api_requests(port);
    let start = Instant::now();
    futures::stream::iter(objects)
        .for_each_concurrent(16, |(secret, mailbox)| {
            let (secrets, mailboxes) = (secrets.clone(), mailboxes.clone());
            async move {
                secrets
                    .create(&PostParams::default(), &secret)
                    .await
                    .expect("create Secret");
                mailboxes
                    .create(&PostParams::default(), &mailbox)
                    .await
                    .expect("create Mailbox");
            }
        })
        .await;
    let applied = start.elapsed();
    let all_in = loop {
        let mut total = 0;
        for d in 0..n_domains {
            total += in_config(
                secrets
                    .get_opt(&format!("d{d}-runtime-config"))
                    .await
                    .expect("get"),
            );
        }
        if total == n_mailboxes {
            break start.elapsed();
        }
        assert!(start.elapsed() < Duration::from_secs(900), "not converged");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let requests_converged = api_requests(port);
    let (cpu, _, _) = proc_figures(operator.id());
    // Let the Mailboxes' status settle, then a quiet minute: nothing changes, so nothing may be
    // written.
    tokio::time::sleep(Duration::from_secs(20)).await;
    let settled = api_requests(port);
    let (cpu_settled, _, _) = proc_figures(operator.id());
    tokio::time::sleep(Duration::from_secs(60)).await;
    let quiet = difference(&api_requests(port), &settled);
    let (cpu_after, rss_after, peak) = proc_figures(operator.id());
    let _ = operator.kill();
    let _ = operator.wait();

    let to_converge = difference(&requests_converged, &requests_before);
    let total: u64 = to_converge.values().sum();
    let what = if hashed {
        "argon2 hashes given"
    } else {
        "plaintext passwords, hashed by the operator"
    };
    let build = if binary.contains("/release/") {
        "release build"
    } else {
        "debug build"
    };
    println!(
        "\n| operator ({build}), {n_mailboxes} Mailboxes in {n_domains} MailDomains ({what}) | figure |\n|---|---|"
    );
    println!(
        "| creating {n_mailboxes} Mailboxes + Secrets (16 in flight) | {:.1} s |",
        applied.as_secs_f64()
    );
    println!(
        "| first create -> all {n_mailboxes} in their runtime configs | {:.1} s |",
        all_in.as_secs_f64()
    );
    println!("| API requests until then | {total} {to_converge:?} |");
    println!("| operator CPU time until then | {cpu:.1} s |");
    println!("| operator peak resident memory | {} MiB |", peak / 1024);
    println!(
        "| operator CPU while statuses settle (20 s) | {:.2} s |",
        cpu_settled - cpu
    );
    println!(
        "| API requests in the quiet minute after | {} {quiet:?}, of which writes: {} |",
        quiet.values().sum::<u64>(),
        writes(&quiet)
    );
    println!(
        "| operator CPU in the quiet minute | {:.2} s, RSS {} MiB |",
        cpu_after - cpu_settled,
        rss_after / 1024
    );
    assert_eq!(writes(&quiet), 0, "the operator wrote with nothing changed");
}
