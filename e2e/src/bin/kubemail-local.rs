//! `kubemail-local`: kubemail on a local control plane, the README's main command.
//!
//! Starts etcd, kube-apiserver and kube-controller-manager on loopback, installs the kubemail
//! CRDs from the chart, applies `examples/quickstart/`, shows `kubectl get mail` and waits until
//! stopped (Ctrl-C). `--check` does the same, verifies what a user would look at, and exits.
//! The operator and the runtime join this command as their issues land.
use std::{process::ExitCode, time::Duration};

use anyhow::{Context, Result, bail};
use kubemail_e2e::{ControlPlane, install_crds, workspace_root};

#[tokio::main]
async fn main() -> ExitCode {
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

async fn run(check: bool) -> Result<()> {
    eprintln!("kubemail-local: starting etcd, kube-apiserver and kube-controller-manager");
    let plane = ControlPlane::start()?;
    let client = plane.client().await?;
    let crds = install_crds(&client).await?;
    eprintln!("kubemail-local: CRDs established: {}", crds.join(", "));

    let quickstart = workspace_root().join("examples/quickstart");
    let out = plane
        .kubectl()
        .args(["apply", "-n", "default", "-f"])
        .arg(&quickstart)
        .output()
        .context("running kubectl apply")?;
    if !out.status.success() {
        bail!(
            "kubectl apply -f examples/quickstart/ failed:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    print!("{}", String::from_utf8_lossy(&out.stdout));

    let out = plane
        .kubectl()
        .args(["get", "mail", "-n", "default"])
        .output()?;
    let listing = String::from_utf8_lossy(&out.stdout).to_string();
    println!("\n$ kubectl get mail\n{listing}");

    if check {
        for expected in [
            "maildomain.kubemail.io/example-test",
            "mailbox.kubemail.io/alice",
            "mailbox.kubemail.io/bob",
            "relaypolicy.kubemail.io/apps",
        ] {
            if !listing.contains(expected) {
                bail!("`kubectl get mail` does not list {expected}");
            }
        }
        println!("kubemail-local --check: ok");
        return Ok(());
    }

    println!(
        "The control plane is up at {}.\n\
         Use it from another shell:\n\n    export KUBECONFIG={}\n    kubectl get mail\n    \
         kubectl explain maildomain.spec\n\n\
         The operator and the mail runtime are not part of this build yet: objects are stored \
         and validated, not served.\nPress Ctrl-C to stop; everything started here stops with it.",
        plane.server_url(),
        plane.kubeconfig().display()
    );
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {},
        _ = term.recv() => {},
    }
    eprintln!("kubemail-local: stopping");
    drop(client);
    tokio::time::sleep(Duration::from_millis(100)).await;
    drop(plane);
    Ok(())
}
