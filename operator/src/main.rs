//! The kubemail operator binary.
#![forbid(unsafe_code)]

use std::{process::ExitCode, time::Duration};

use kubemail_operator::{controller::Options, render::objects::RuntimeOptions};

const USAGE: &str = "usage: kubemail-operator [--namespace NS]... [--runtime-image IMAGE]
                         [--runtime-binary PATH] [--probe-host-override HOST]
                         [--probe-timeout SECONDS]

  --namespace NS             watch this namespace; repeat for several (default: all)
  --runtime-image IMAGE      the mail runtime's image (default: the version's release image)
  --runtime-binary PATH      mail-runtime in that image (default /usr/local/bin/mail-runtime)
  --probe-host-override HOST probe HOST:<container port> instead of the Service; for a runtime
                             started outside the cluster (tests, the local command). Off by default.
  --probe-timeout SECONDS    per probe (default 3)
  --leader-election NS       hold the Lease kubemail-operator in namespace NS before
                             reconciling (identity: $POD_NAME or the host name)
  --health-addr ADDR         /healthz, /readyz and /metrics (default 0.0.0.0:8081; off to disable)

Kubernetes access comes from the in-cluster ServiceAccount or KUBECONFIG.";

fn main() -> ExitCode {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.iter().any(|a| a == "--help" || a == "-h") {
        println!("{USAGE}");
        return ExitCode::SUCCESS;
    }
    if args.first().is_some_and(|a| a == "--version") {
        println!("kubemail-operator {}", env!("CARGO_PKG_VERSION"));
        return ExitCode::SUCCESS;
    }
    let flag = |name: &str| {
        args.iter()
            .position(|a| a == name)
            .and_then(|i| args.get(i + 1))
            .cloned()
    };
    tracing_subscriber::fmt()
        .json()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    let timeout = flag("--probe-timeout")
        .and_then(|t| t.parse::<f64>().ok())
        .unwrap_or(3.0);
    let options = Options {
        runtime: RuntimeOptions {
            image: flag("--runtime-image").unwrap_or_else(|| {
                format!(
                    "ghcr.io/kubemail/mail-runtime:{}",
                    env!("CARGO_PKG_VERSION")
                )
            }),
            binary: flag("--runtime-binary")
                .unwrap_or_else(|| "/usr/local/bin/mail-runtime".into()),
        },
        probe_host_override: flag("--probe-host-override"),
        probe_timeout: Duration::from_secs_f64(timeout),
    };
    // --namespace may be given several times; none: every namespace.
    let namespaces: Vec<String> = args
        .iter()
        .enumerate()
        .filter(|(_, a)| *a == "--namespace")
        .filter_map(|(i, _)| args.get(i + 1).cloned())
        .collect();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(err) => {
            eprintln!("kubemail-operator: {err}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(async move {
        let client = match counted_client().await {
            Ok(c) => c,
            Err(err) => {
                eprintln!("kubemail-operator: no Kubernetes client: {err}");
                return ExitCode::FAILURE;
            }
        };
        tracing::info!(?namespaces, "kubemail-operator starting");
        let health = flag("--health-addr").unwrap_or_else(|| "0.0.0.0:8081".into());
        if health != "off" {
            match health.parse() {
                Ok(addr) => {
                    tokio::spawn(async move {
                        if let Err(err) = kubemail_operator::health::serve(addr).await {
                            tracing::error!(error = %err, "the health endpoint stopped");
                        }
                    });
                }
                Err(_) => {
                    eprintln!("kubemail-operator: --health-addr {health:?} is not an address");
                    return ExitCode::from(2);
                }
            }
        }
        let mut elected = None;
        if let Some(lease_ns) = flag("--leader-election") {
            let identity = std::env::var("POD_NAME").unwrap_or_else(|_| {
                std::fs::read_to_string("/proc/sys/kernel/hostname")
                    .map(|h| h.trim().to_string())
                    .unwrap_or_else(|_| "kubemail-operator".into())
            });
            let identity = format!("{identity}-{}", std::process::id());
            let election = kubemail_operator::leader::Election::new(
                client.clone(),
                &lease_ns,
                "kubemail-operator",
                &identity,
            );
            election.acquire().await;
            let keeper = election.clone();
            let renewal = tokio::spawn(async move {
                keeper.keep().await;
                // No longer the leader: stop now, before another replica starts reconciling.
                tracing::error!("lost the leader Lease; exiting");
                std::process::exit(1);
            });
            elected = Some((election, renewal));
        }
        if namespaces.is_empty() {
            kubemail_operator::run::run(client, options, None).await;
        } else {
            // One set of controllers per namespace: each needs only that namespace's permissions.
            let runs = namespaces
                .into_iter()
                .map(|ns| kubemail_operator::run::run(client.clone(), options.clone(), Some(ns)));
            futures::future::join_all(runs).await;
        }
        // The controllers stopped on a signal: stop renewing, then hand the Lease on at once.
        if let Some((election, renewal)) = elected {
            renewal.abort();
            let _ = renewal.await;
            match election.release().await {
                Ok(()) => tracing::info!("released the leader Lease"),
                Err(err) => tracing::warn!(error = %err, "releasing the leader Lease failed"),
            }
        }
        ExitCode::SUCCESS
    })
}

/// The client from the kubeconfig or the pod's service account, counting every request it makes
/// (`kubemail_operator_api_requests_total`).
async fn counted_client() -> Result<kube::Client, kube::Error> {
    let config = kube::Config::infer()
        .await
        .map_err(kube::Error::InferConfig)?;
    let count = tower::util::MapRequestLayer::new(|request: hyper::Request<kube::client::Body>| {
        kubemail_operator::health::api_request(&request);
        request
    });
    Ok(kube::client::ClientBuilder::try_from(config)?
        .with_layer(&count)
        .build())
}
