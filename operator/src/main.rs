//! The kubemail operator binary.
#![forbid(unsafe_code)]

use std::{net::SocketAddr, process::ExitCode, time::Duration};

use clap::Parser;

use kubemail_operator::{controller::Options, render::objects::RuntimeOptions};

/// The kubemail operator: turns MailDomain, Mailbox and RelayPolicy objects into running mail
/// servers.
#[derive(Debug, Parser)]
#[command(
    name = "kubemail-operator",
    version,
    after_help = "Kubernetes access comes from the in-cluster ServiceAccount or KUBECONFIG."
)]
struct Args {
    /// Watch this namespace; repeat for several (default: all).
    #[arg(long = "namespace", value_name = "NS")]
    namespaces: Vec<String>,
    /// The mail runtime's image (default: this version's release image).
    #[arg(long, value_name = "IMAGE")]
    runtime_image: Option<String>,
    /// mail-runtime in that image.
    #[arg(
        long,
        value_name = "PATH",
        default_value = "/usr/local/bin/mail-runtime"
    )]
    runtime_binary: String,
    /// Probe HOST:<container port> instead of the Service: for a runtime started outside the
    /// cluster (tests, the local command). Off by default.
    #[arg(long, value_name = "HOST")]
    probe_host_override: Option<String>,
    /// Seconds per probe.
    #[arg(long, value_name = "SECONDS", default_value = "3", value_parser = parse_seconds)]
    probe_timeout: Duration,
    /// Hold the Lease kubemail-operator in namespace NS before reconciling (identity: $POD_NAME
    /// or the host name).
    #[arg(long, value_name = "NS")]
    leader_election: Option<String>,
    /// Write a Mailbox's status.usage at most once per this many seconds after its first
    /// figures (each MailDomain's runtime is read every 30 s).
    #[arg(long, value_name = "SECONDS", default_value = "300", value_parser = parse_seconds)]
    usage_interval: Duration,
    /// Check each MailDomain's DNS records (`DNSVerified`) through `cluster` (the pod's
    /// resolver) or these servers (`IP[:PORT],...`); `off` for no checks.
    #[arg(long, value_name = "RESOLVER", default_value = "off")]
    dns_check: kubemail_operator::dns_check::Source,
    /// Check a verified domain's records again after this many seconds (one with a problem
    /// every minute).
    #[arg(long, value_name = "SECONDS", default_value = "600", value_parser = parse_interval)]
    dns_check_interval: Duration,
    /// Render a NetworkPolicy for each MailDomain's runtime (mail ports from anywhere, the HTTP
    /// port only from the namespaces of `--network-policy-http-from`, out only DNS, SMTP,
    /// HTTPS and the scanners' and smarthost's ports).
    #[arg(long)]
    network_policies: bool,
    /// A namespace whose pods may reach the runtimes' HTTP port under `--network-policies`
    /// (the operator's, monitoring); repeatable.
    #[arg(long, value_name = "NS")]
    network_policy_http_from: Vec<String>,
    /// /healthz, /readyz and /metrics; `off` to disable.
    #[arg(long, value_name = "ADDR", default_value = "0.0.0.0:8081", value_parser = parse_health)]
    health_addr: HealthAddr,
}

/// Where the health endpoint listens, or nowhere (`off`).
#[derive(Debug, Clone, Copy)]
struct HealthAddr(Option<SocketAddr>);

fn parse_seconds(text: &str) -> Result<Duration, String> {
    match text.parse::<f64>() {
        Ok(s) if s.is_finite() && s > 0.0 && s <= 600.0 => Ok(Duration::from_secs_f64(s)),
        _ => Err(format!(
            "{text:?} is not a number of seconds between 0 and 600"
        )),
    }
}

fn parse_interval(text: &str) -> Result<Duration, String> {
    match text.parse::<u64>() {
        Ok(s) if (1..=86_400).contains(&s) => Ok(Duration::from_secs(s)),
        _ => Err(format!(
            "{text:?} is not a whole number of seconds between 1 and 86400"
        )),
    }
}

fn parse_health(text: &str) -> Result<HealthAddr, String> {
    if text == "off" {
        return Ok(HealthAddr(None));
    }
    text.parse()
        .map(|addr| HealthAddr(Some(addr)))
        .map_err(|_| format!("{text:?} is not an address (HOST:PORT) or `off`"))
}

fn main() -> ExitCode {
    let _ = rustls::crypto::ring::default_provider().install_default();
    // Usage errors: clap's message and exit code 2.
    let args = Args::parse();
    tracing_subscriber::fmt()
        .json()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    let options = Options {
        runtime: RuntimeOptions {
            image: args.runtime_image.unwrap_or_else(|| {
                format!(
                    "ghcr.io/kubemail/mail-runtime:{}",
                    env!("CARGO_PKG_VERSION")
                )
            }),
            binary: args.runtime_binary,
        },
        probe_host_override: args.probe_host_override,
        probe_timeout: args.probe_timeout,
        usage_every: args.usage_interval,
        dns_check: args.dns_check,
        dns_check_every: args.dns_check_interval,
        network_policy_from: args
            .network_policies
            .then_some(args.network_policy_http_from),
    };
    // None: every namespace.
    let namespaces = args.namespaces;
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
        if let HealthAddr(Some(addr)) = args.health_addr {
            tokio::spawn(async move {
                if let Err(err) = kubemail_operator::health::serve(addr).await {
                    tracing::error!(error = %err, "the health endpoint stopped");
                }
            });
        }
        let mut elected = None;
        if let Some(lease_ns) = args.leader_election {
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

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::Args;

    /// Every flag with a value that is right reaches the struct (a type clap's derive does not
    /// match panics only here, at run time).
    #[test]
    fn good_arguments_parse() {
        let args = Args::try_parse_from([
            "kubemail-operator",
            "--namespace",
            "a",
            "--namespace",
            "b",
            "--runtime-image",
            "r:1",
            "--probe-host-override",
            "127.0.0.1",
            "--probe-timeout",
            "1.5",
            "--leader-election",
            "kubemail-system",
            "--health-addr",
            "127.0.0.1:0",
            "--dns-check",
            "127.0.0.1:5353",
            "--dns-check-interval",
            "3600",
        ])
        .expect("parses");
        assert_eq!(args.namespaces, ["a", "b"]);
        assert_eq!(
            args.dns_check,
            kubemail_operator::dns_check::Source::Servers(vec![
                "127.0.0.1:5353".parse().expect("addr")
            ])
        );
        assert_eq!(args.dns_check_interval.as_secs(), 3600);
        assert!(args.health_addr.0.is_some());
        let defaults = Args::try_parse_from(["kubemail-operator"]).expect("parses");
        assert_eq!(defaults.probe_timeout, std::time::Duration::from_secs(3));
        assert_eq!(
            defaults.health_addr.0,
            Some("0.0.0.0:8081".parse().expect("addr"))
        );
        let off = Args::try_parse_from(["kubemail-operator", "--health-addr", "off"]).expect("off");
        assert!(off.health_addr.0.is_none());
    }
}
