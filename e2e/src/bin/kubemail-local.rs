//! `kubemail-local`: kubemail on a local control plane, the README's main command.
//!
//! Starts etcd, kube-apiserver and kube-controller-manager on loopback, installs the CRDs from
//! the chart, runs the operator, applies `examples/quickstart/`, plays the node for the runtime
//! pod the operator renders, waits until the MailDomain is Ready from real protocol probes,
//! sends a test message alice -> bob, prints how to connect, and serves until Ctrl-C.
//! `--check` does the same, verifies, and tears down.
use std::{
    path::PathBuf,
    process::{Command, ExitCode, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};
use k8s_openapi::api::apps::v1::Deployment;
use kube::Api;
use kubemail_crds::MailDomain;
use kubemail_e2e::{ControlPlane, PodRunner, install_crds, workspace_root};

const NAMESPACE: &str = "default";
const ENTRYPOINT: &str = "/usr/local/bin/mail-runtime";

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

fn binary(var: &str) -> Result<PathBuf> {
    let path = PathBuf::from(
        std::env::var_os(var)
            .with_context(|| format!("{var} is not set (run e2e/scripts/local.sh)"))?,
    );
    if !path.is_file() {
        bail!("{} does not exist", path.display());
    }
    Ok(path)
}

fn step(what: &str) {
    eprintln!("kubemail-local: {what}");
}

async fn run(check: bool) -> Result<()> {
    let operator_bin = binary("KUBEMAIL_OPERATOR_BIN")?;
    let runtime_bin = binary("KUBEMAIL_RUNTIME_BIN")?;
    step("starting etcd, kube-apiserver and kube-controller-manager");
    let plane = ControlPlane::start()?;
    let client = plane.client().await?;
    let crds = install_crds(&client).await?;
    step(&format!("CRDs established: {}", crds.join(", ")));

    step("starting the operator");
    let work = plane.scratch_dir("local")?;
    let operator_log = std::fs::File::create(work.join("operator.log"))?;
    let mut operator = Command::new(&operator_bin)
        .args([
            "--namespace",
            NAMESPACE,
            "--probe-host-override",
            "127.0.0.1",
        ])
        .args([
            "--runtime-image",
            "kubemail/mail-runtime:local",
            "--runtime-binary",
            ENTRYPOINT,
        ])
        .env("KUBECONFIG", plane.kubeconfig())
        .stdin(Stdio::null())
        .stdout(operator_log.try_clone()?)
        .stderr(operator_log)
        .spawn()
        .context("starting the operator")?;

    let result = serve(&plane, &client, &runtime_bin, &work, check).await;
    let _ = operator.kill();
    let _ = operator.wait();
    if result.is_err() {
        eprintln!("operator log: {}", work.join("operator.log").display());
    }
    result
}

async fn serve(
    plane: &ControlPlane,
    client: &kube::Client,
    runtime_bin: &std::path::Path,
    work: &std::path::Path,
    check: bool,
) -> Result<()> {
    step("kubectl apply -f examples/quickstart/");
    let out = plane
        .kubectl()
        .args(["apply", "-n", NAMESPACE, "-f"])
        .arg(workspace_root().join("examples/quickstart"))
        .output()?;
    if !out.status.success() {
        bail!(
            "kubectl apply failed:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    print!("{}", String::from_utf8_lossy(&out.stdout));

    step("waiting for the runtime Deployment the operator renders");
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), NAMESPACE);
    let deadline = Instant::now() + Duration::from_secs(60);
    let deployment = loop {
        if let Some(d) = deployments.get_opt("example-test-mail").await? {
            break d;
        }
        if Instant::now() > deadline {
            bail!("the operator rendered no Deployment within 60 s");
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    step("playing the node: starting the runtime pod from the Deployment's pod spec");
    let mut pod = PodRunner::start(
        client,
        NAMESPACE,
        &deployment,
        runtime_bin,
        ENTRYPOINT,
        &work.join("pod"),
    )
    .await?;

    step("waiting until the MailDomain is Ready (real SMTP, IMAP and POP3 probes)");
    let domains: Api<MailDomain> = Api::namespaced(client.clone(), NAMESPACE);
    let started = Instant::now();
    loop {
        let md = domains.get("example-test").await?;
        let ready = md.status.as_ref().is_some_and(|s| {
            s.conditions
                .iter()
                .any(|c| c.type_ == "Ready" && c.status == "True")
        });
        if ready {
            break;
        }
        if !pod.running() {
            bail!("the runtime pod exited:\n{}", pod.log_tail());
        }
        if started.elapsed() > Duration::from_secs(120) {
            let conditions = md.status.map(|s| s.conditions).unwrap_or_default();
            let summary: Vec<String> = conditions
                .iter()
                .map(|c| format!("{}={} ({})", c.type_, c.status, c.message))
                .collect();
            bail!(
                "the MailDomain is not Ready after 120 s: {}\nruntime log:\n{}",
                summary.join("; "),
                pod.log_tail()
            );
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    step(&format!(
        "MailDomain Ready after {:.1} s",
        started.elapsed().as_secs_f64()
    ));

    let out = plane
        .kubectl()
        .args(["get", "mail", "-n", NAMESPACE])
        .output()?;
    println!(
        "\n$ kubectl get mail\n{}",
        String::from_utf8_lossy(&out.stdout)
    );

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
    let bob = pod
        .data_dir
        .clone()
        .context("no data volume")?
        .join("mail/example.test/bob/new");
    let delivered = std::fs::read_dir(&bob).map(|d| d.count()).unwrap_or(0);
    if delivered == 0 {
        bail!(
            "the test message is not in bob's Maildir ({})",
            bob.display()
        );
    }
    step(&format!(
        "delivered: {} message(s) in {}",
        delivered,
        bob.display()
    ));
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
    println!(
        "kubemail is up. The control plane: {}\n\n    export KUBECONFIG={}\n    kubectl get mail\n    \
         kubectl describe maildomain example-test\n\n\
         Mail (self-signed certificate; accounts from examples/quickstart/mailboxes.yaml):\n    \
         SMTP         127.0.0.1:2525\n    submission   127.0.0.1:2587 (STARTTLS)\n    \
         submissions  127.0.0.1:2465 (TLS)\n    IMAP         127.0.0.1:2143 (STARTTLS), 2993 (TLS)\n    \
         POP3         127.0.0.1:2110 (STLS), 2995 (TLS)\n    \
         accounts     alice@example.test / alice-quickstart-password, bob@example.test / bob-quickstart-password\n\n\
         Press Ctrl-C to stop; everything started here stops with it.",
        plane.server_url(),
        plane.kubeconfig().display()
    );
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {},
        _ = term.recv() => {},
    }
    step("stopping");
    pod.stop();
    Ok(())
}
