//! `kubemail-local`: kubemail on a real single-node cluster on this machine, the README's main
//! command.
//!
//! Brings up the node (control plane, containerd, kubelet, kube-proxy, CoreDNS in a network
//! namespace of its own), assembles and imports kubemail's images, installs the chart with
//! `helm install` into `kubemail-system` (the operator runs as a pod under the restricted Pod
//! Security Standard), applies `examples/quickstart/` in `default`, waits until the MailDomain
//! is Ready from real protocol probes, port-forwards the mail ports to the host's loopback, sends
//! a test message alice -> bob, prints how to connect, and serves until Ctrl-C. `--check` does
//! the same, verifies, and tears down.
use std::{
    process::{Child, Command, ExitCode, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};
use kubemail_e2e::{Cluster, workspace_root};

const NAMESPACE: &str = "default";
const SYSTEM: &str = "kubemail-system";
/// Host port -> Service port of the mail Service.
const FORWARDS: [(u16, u16, &str); 7] = [
    (2525, 25, "SMTP"),
    (2587, 587, "submission (STARTTLS)"),
    (2465, 465, "submissions (TLS)"),
    (2143, 143, "IMAP (STARTTLS)"),
    (2993, 993, "IMAPS (TLS)"),
    (2110, 110, "POP3 (STLS)"),
    (2995, 995, "POP3S (TLS)"),
];

#[tokio::main]
async fn main() -> ExitCode {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let check = match std::env::args().nth(1).as_deref() {
        None => false,
        Some("--check") => true,
        Some(_) => {
            eprintln!("usage: kubemail-local [--check]");
            return ExitCode::from(2);
        }
    };
    match run(check).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("kubemail-local: {err:#}");
            ExitCode::FAILURE
        }
    }
}

fn step(what: &str) {
    eprintln!("kubemail-local: {what}");
}

fn kubectl(cluster: &Cluster, args: &[&str]) -> Result<String> {
    let out = cluster.plane().kubectl().args(args).output()?;
    if !out.status.success() {
        bail!(
            "kubectl {} failed:\n{}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).to_string())
}

struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

async fn run(check: bool) -> Result<()> {
    step(
        "starting the node: etcd, kube-apiserver, controller-manager, scheduler, containerd, kubelet, kube-proxy, CoreDNS",
    );
    let started = Instant::now();
    let cluster = tokio::task::spawn_blocking(Cluster::start).await??;
    step(&format!(
        "node Ready with CoreDNS in {:.1} s",
        started.elapsed().as_secs_f64()
    ));
    let result = serve(&cluster, check).await;
    if result.is_err() {
        eprintln!("{}", cluster.diagnostics(NAMESPACE));
        eprintln!("{}", cluster.diagnostics(SYSTEM));
    }
    step("stopping");
    result
}

async fn serve(cluster: &Cluster, check: bool) -> Result<()> {
    cluster.restricted_namespace(SYSTEM)?;
    cluster.restricted_namespace(NAMESPACE)?;
    let images = cluster.images();
    step(&format!(
        "helm install kubemail charts/kubemail -n {SYSTEM} --set watchNamespaces={{{NAMESPACE}}} (images {}:{}, {}:{})",
        images.operator_repository, images.tag, images.runtime_repository, images.tag
    ));
    cluster.install_chart(SYSTEM, NAMESPACE)?;

    step("kubectl apply -f examples/quickstart/");
    let quickstart = workspace_root().join("examples/quickstart");
    print!(
        "{}",
        kubectl(
            cluster,
            &[
                "apply",
                "-n",
                NAMESPACE,
                "-f",
                &quickstart.to_string_lossy()
            ]
        )?
    );
    step(
        "waiting until the MailDomain is Ready (real SMTP, IMAP and POP3 probes through its Service)",
    );
    let started = Instant::now();
    loop {
        let ready = kubectl(
            cluster,
            &[
                "get",
                "maildomain",
                "example-test",
                "-n",
                NAMESPACE,
                "-o",
                "jsonpath={.status.conditions[?(@.type==\"Ready\")].status}",
            ],
        )?;
        if ready.trim() == "True" {
            break;
        }
        if started.elapsed() > Duration::from_secs(180) {
            let conditions = kubectl(
                cluster,
                &[
                    "get",
                    "maildomain",
                    "example-test",
                    "-n",
                    NAMESPACE,
                    "-o",
                    "yaml",
                ],
            )?;
            bail!("the MailDomain is not Ready after 180 s:\n{conditions}");
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    step(&format!(
        "MailDomain Ready after {:.1} s",
        started.elapsed().as_secs_f64()
    ));
    println!(
        "\n$ kubectl get mail\n{}\n$ kubectl get pods -A\n{}",
        kubectl(cluster, &["get", "mail", "-n", NAMESPACE])?,
        kubectl(cluster, &["get", "pods", "-A", "-o", "wide"])?
    );

    step("kubectl port-forward service/example-test-mail: the mail ports on the host's 127.0.0.1");
    let mut forward = cluster.plane().kubectl();
    forward
        .args([
            "port-forward",
            "-n",
            NAMESPACE,
            "--address",
            "127.0.0.1",
            "service/example-test-mail",
        ])
        .args(
            FORWARDS
                .iter()
                .map(|(host, service, _)| format!("{host}:{service}")),
        )
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    let _forward = Killed(forward.spawn().context("starting kubectl port-forward")?);
    let deadline = Instant::now() + Duration::from_secs(30);
    while FORWARDS
        .iter()
        .any(|(port, _, _)| std::net::TcpStream::connect(("127.0.0.1", *port)).is_err())
    {
        if Instant::now() > deadline {
            bail!("kubectl port-forward did not listen on the mail ports within 30 s");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    step("sending a test message alice -> bob over submission (587 STARTTLS + AUTH) with swaks");
    let send = Command::new("swaks")
        .args(["--server", "127.0.0.1:2587", "--tls", "--auth", "PLAIN"])
        .args([
            "--auth-user",
            "alice@example.test",
            "--auth-password",
            "alice-quickstart-password",
        ])
        .args(["--from", "alice@example.test", "--to", "bob@example.test"])
        .args(["--header", "Subject: hello from kubemail-local"])
        .output()
        .context("running swaks")?;
    if !send.status.success() {
        bail!("swaks failed:\n{}", String::from_utf8_lossy(&send.stdout));
    }
    step("bob reads it over IMAP (993) with curl");
    let read = Command::new("curl")
        .args([
            "-sS",
            "--insecure",
            "-u",
            "bob@example.test:bob-quickstart-password",
        ])
        .arg("imaps://127.0.0.1:2993/INBOX;UID=1;SECTION=HEADER.FIELDS%20(SUBJECT)")
        .output()
        .context("running curl")?;
    let header = String::from_utf8_lossy(&read.stdout);
    if !read.status.success() || !header.contains("hello from kubemail-local") {
        bail!(
            "bob cannot read the test message over IMAP: {}{}",
            header,
            String::from_utf8_lossy(&read.stderr)
        );
    }
    step(&format!("IMAP: {}", header.trim()));

    if check {
        println!("kubemail-local --check: ok");
        return Ok(());
    }
    let forwards: Vec<String> = FORWARDS
        .iter()
        .map(|(host, service, what)| {
            format!("    {what:<22} 127.0.0.1:{host} -> Service port {service}")
        })
        .collect();
    println!(
        "kubemail is up on a real node (kubelet + containerd in network namespace {}).\n\n    \
         export KUBECONFIG={}\n    kubectl get mail\n    kubectl get pods -A\n    \
         kubectl describe maildomain example-test\n\n\
         Mail, port-forwarded to this machine (self-signed certificate; accounts from\n\
         examples/quickstart/mailboxes.yaml: alice@example.test / alice-quickstart-password,\n\
         bob@example.test / bob-quickstart-password):\n{}\n\n\
         Clients inside the node's network reach the Service directly:\n    \
         ip netns exec {} swaks --server $(kubectl get svc example-test-mail -o jsonpath='{{.spec.clusterIP}}'):25 ...\n\n\
         Press Ctrl-C to stop; everything started here stops with it.",
        cluster.netns(),
        cluster.plane().kubeconfig().display(),
        forwards.join("\n"),
        cluster.netns(),
    );
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {},
        _ = term.recv() => {},
    }
    Ok(())
}
