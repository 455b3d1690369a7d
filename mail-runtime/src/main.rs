//! The `mail-runtime` binary.
#![forbid(unsafe_code)]

use std::{path::PathBuf, process::ExitCode};

use mail_runtime::{config, dev, runtime::Runtime};

const USAGE: &str = "usage:
  mail-runtime serve --config FILE      serve the config (reloaded when the file changes)
  mail-runtime dev [--data DIR] [--base-port N] [--stop-on-eof]
                                        every protocol on loopback with demo mailboxes
                                        (--base-port 0: free ports; --stop-on-eof: exit
                                        when stdin closes)
  mail-runtime probe smtp|imap|pop3 HOST:PORT [--implicit-tls] [--verify-tls]
                    [--tls-name NAME] [--timeout SECONDS] [--login USER --password-file FILE]
                                        speak the protocol; one JSON line; exit 0 when healthy
  mail-runtime probe-config FILE        probe every listener of a config on 127.0.0.1 (the
                                        pod's readiness check); exit 0 when all are healthy
  mail-runtime check-config FILE        validate a config and list every problem
  mail-runtime hash-password            read a password on stdin, print its argon2id hash
  mail-runtime --version";

fn main() -> ExitCode {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let args: Vec<String> = std::env::args().skip(1).collect();
    let log_json = args.first().is_some_and(|a| a == "serve");
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if log_json {
        builder.json().init();
    } else {
        builder.init();
    }
    match run(&args) {
        Ok(code) => code,
        Err(err) => {
            eprintln!("mail-runtime: {err:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(args: &[String]) -> anyhow::Result<ExitCode> {
    let flag = |name: &str| {
        args.iter()
            .position(|a| a == name)
            .and_then(|i| args.get(i + 1))
            .cloned()
    };
    match args.first().map(String::as_str) {
        Some("--version") => {
            println!("mail-runtime {}", env!("CARGO_PKG_VERSION"));
            Ok(ExitCode::SUCCESS)
        }
        Some("serve") => {
            let Some(path) = flag("--config").map(PathBuf::from) else {
                eprintln!("{USAGE}");
                return Ok(ExitCode::from(2));
            };
            let config = config::load_file(&path).map_err(|e| anyhow::anyhow!("{e}"))?;
            tokio_runtime()?.block_on(async move {
                let runtime = Runtime::new(config::ConfigHandle::new(config))?;
                runtime.start(Some(path)).await?;
                dev::wait_for_shutdown().await;
                Ok(ExitCode::SUCCESS)
            })
        }
        Some("dev") => {
            let base_port = match flag("--base-port") {
                Some(p) => p.parse()?,
                None => 2500,
            };
            let options = dev::DevOptions {
                data: flag("--data").map(PathBuf::from),
                base_port,
                stop_on_eof: args.iter().any(|a| a == "--stop-on-eof"),
            };
            tokio_runtime()?.block_on(dev::run(options))?;
            Ok(ExitCode::SUCCESS)
        }
        Some("probe") => {
            let (Some(kind), Some(address)) = (args.get(1), args.get(2)) else {
                eprintln!("{USAGE}");
                return Ok(ExitCode::from(2));
            };
            let kind: mail_runtime::probe::Kind = kind.parse().map_err(anyhow::Error::msg)?;
            let mut options = mail_runtime::probe::Options {
                implicit_tls: args.iter().any(|a| a == "--implicit-tls"),
                verify_tls: args.iter().any(|a| a == "--verify-tls"),
                tls_name: flag("--tls-name"),
                ..Default::default()
            };
            if let Some(t) = flag("--timeout") {
                options.timeout = std::time::Duration::from_secs_f64(t.parse()?);
            }
            if let Some(user) = flag("--login") {
                // The password comes from a file (a mounted Secret), never from the command line.
                let file = flag("--password-file")
                    .ok_or_else(|| anyhow::anyhow!("--login needs --password-file"))?;
                let password = std::fs::read_to_string(&file)?;
                options.login = Some((user, password.trim_end_matches(['\r', '\n']).to_string()));
            }
            let report =
                tokio_runtime()?.block_on(mail_runtime::probe::probe(kind, address, &options));
            println!("{}", serde_json::to_string(&report)?);
            Ok(if report.ok {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            })
        }
        Some("probe-config") => {
            let Some(path) = args.get(1) else {
                eprintln!("{USAGE}");
                return Ok(ExitCode::from(2));
            };
            let config = config::load_file(std::path::Path::new(path))
                .map_err(|e| anyhow::anyhow!("{e}"))?;
            let targets = mail_runtime::probe::targets_of(&config.raw.listeners);
            let reports = tokio_runtime()?.block_on(mail_runtime::probe::probe_all(&targets));
            println!("{}", serde_json::to_string(&reports)?);
            Ok(if reports.iter().all(|r| r.ok) {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            })
        }
        Some("check-config") => {
            let Some(path) = args.get(1) else {
                eprintln!("{USAGE}");
                return Ok(ExitCode::from(2));
            };
            match config::load_file(std::path::Path::new(path)) {
                Ok(c) => {
                    println!(
                        "ok: revision {:?}, {} mailbox(es)",
                        c.revision(),
                        c.raw.mailboxes.len()
                    );
                    Ok(ExitCode::SUCCESS)
                }
                Err(invalid) => {
                    eprintln!("{invalid}");
                    Ok(ExitCode::FAILURE)
                }
            }
        }
        Some("hash-password") => {
            let mut password = String::new();
            std::io::stdin().read_line(&mut password)?;
            println!(
                "{}",
                mail_runtime::auth::hash_password(password.trim_end_matches(['\r', '\n']))
            );
            Ok(ExitCode::SUCCESS)
        }
        _ => {
            eprintln!("{USAGE}");
            Ok(ExitCode::from(2))
        }
    }
}

fn tokio_runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?)
}
