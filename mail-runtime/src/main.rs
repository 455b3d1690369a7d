//! The `mail-runtime` binary.
#![forbid(unsafe_code)]

use std::{path::PathBuf, process::ExitCode, time::Duration};

use clap::{Parser, Subcommand};
use mail_runtime::{config, dev, probe, runtime::Runtime};

/// kubemail's SMTP, IMAP and POP3 runtime.
#[derive(Debug, Parser)]
#[command(name = "mail-runtime", version)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Serve the config (reloaded when the file changes).
    Serve {
        /// The runtime config the operator renders.
        #[arg(long, value_name = "FILE")]
        config: PathBuf,
        /// After SIGTERM, how long sessions and deliveries in flight may take to end.
        #[arg(long, value_name = "SECONDS", default_value = "40", value_parser = parse_seconds)]
        drain_seconds: Duration,
    },
    /// Every protocol on loopback with demo mailboxes.
    Dev {
        /// The data directory (default: a new temporary one).
        #[arg(long, value_name = "DIR")]
        data: Option<PathBuf>,
        /// The first port (SMTP); the others follow. 0: free ports chosen by the kernel.
        #[arg(long, value_name = "N", default_value_t = 2500)]
        base_port: u16,
        /// Exit when standard input closes.
        #[arg(long)]
        stop_on_eof: bool,
        /// After SIGTERM, how long sessions and deliveries in flight may take to end.
        #[arg(long, value_name = "SECONDS", default_value = "40", value_parser = parse_seconds)]
        drain_seconds: Duration,
        /// Keep the mail in this PostgreSQL database (a connection URI) instead of a Maildir
        /// under --data; dev processes on one database serve the same accounts and mail.
        #[arg(long, value_name = "URL")]
        postgres: Option<String>,
        /// The CA of the database server's certificate: the connection is then TLS, verified.
        #[arg(long, value_name = "FILE", requires = "postgres")]
        postgres_ca_file: Option<PathBuf>,
    },
    /// Speak a protocol as a client would; one JSON line; exit 0 when healthy.
    Probe {
        /// smtp, imap, pop3, managesieve or https.
        #[arg(value_parser = parse_kind)]
        kind: probe::Kind,
        /// HOST:PORT.
        address: String,
        /// TLS from the first byte (465, 993, 995) instead of STARTTLS.
        #[arg(long)]
        implicit_tls: bool,
        /// Check the server's certificate against the system's roots.
        #[arg(long)]
        verify_tls: bool,
        /// The name to send in SNI and check the certificate against.
        #[arg(long, value_name = "NAME")]
        tls_name: Option<String>,
        /// Seconds for the whole exchange.
        #[arg(long, value_name = "SECONDS", value_parser = parse_seconds)]
        timeout: Option<Duration>,
        /// Log in as USER too (the password comes from --password-file, never the command line).
        #[arg(long, value_name = "USER", requires = "password_file")]
        login: Option<String>,
        /// A file holding the password for --login.
        #[arg(long, value_name = "FILE", requires = "login")]
        password_file: Option<PathBuf>,
    },
    /// Probe every listener of a config on 127.0.0.1 (the pod's readiness check).
    ProbeConfig {
        /// The runtime config.
        file: PathBuf,
    },
    /// Validate a config and list every problem.
    CheckConfig {
        /// The runtime config.
        file: PathBuf,
    },
    /// Read a password on standard input, print its argon2id hash.
    HashPassword,
    /// Copy a Maildir store into a PostgreSQL store (or back, --to-maildir), keeping
    /// UIDVALIDITY, UIDs, flags, keywords and dates; resumable (run it again); one JSON line
    /// of counts.
    Migrate {
        /// The data directory of the Maildir store (stop its runtime first, or copy a
        /// snapshot of it).
        #[arg(long, value_name = "DIR")]
        data: PathBuf,
        /// A file holding the PostgreSQL connection URI (as a Secret's key is mounted).
        #[arg(long, value_name = "FILE")]
        postgres_uri_file: PathBuf,
        /// Say what would be copied; write nothing.
        #[arg(long)]
        dry_run: bool,
        /// The CA of the database server's certificate: the connection is then TLS, verified.
        #[arg(long, value_name = "FILE")]
        postgres_ca_file: Option<PathBuf>,
        /// The other way: copy the database into the Maildir store under --data.
        #[arg(long)]
        to_maildir: bool,
    },
}

fn parse_kind(text: &str) -> Result<probe::Kind, String> {
    text.parse()
}

fn parse_seconds(text: &str) -> Result<Duration, String> {
    match text.parse::<f64>() {
        Ok(s) if s.is_finite() && s > 0.0 && s <= 3600.0 => Ok(Duration::from_secs_f64(s)),
        _ => Err(format!(
            "{text:?} is not a number of seconds between 0 and 3600"
        )),
    }
}

fn main() -> ExitCode {
    let _ = rustls::crypto::ring::default_provider().install_default();
    // Usage errors: clap's message and exit code 2.
    let cli = Cli::parse();
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if matches!(cli.command, Command::Serve { .. }) {
        builder.json().init();
    } else {
        builder.init();
    }
    match run(cli.command) {
        Ok(code) => code,
        Err(err) => {
            eprintln!("mail-runtime: {err:#}");
            termination_message(&format!("{err:#}"));
            ExitCode::FAILURE
        }
    }
}

fn run(command: Command) -> anyhow::Result<ExitCode> {
    match command {
        Command::Serve {
            config: path,
            drain_seconds,
        } => {
            let config = config::load_file(&path).map_err(|e| anyhow::anyhow!("{e}"))?;
            serve_and_stop(async move {
                let runtime = Runtime::new(config::ConfigHandle::new(config))?;
                runtime.start(Some(path)).await?;
                runtime.serve_until_signal(drain_seconds).await;
                Ok(ExitCode::SUCCESS)
            })
        }
        Command::Dev {
            data,
            base_port,
            stop_on_eof,
            drain_seconds,
            postgres,
            postgres_ca_file,
        } => {
            let options = dev::DevOptions {
                data,
                base_port,
                stop_on_eof,
                drain: drain_seconds,
                postgres,
                postgres_ca_file,
            };
            serve_and_stop(async move {
                dev::run(options).await?;
                Ok(ExitCode::SUCCESS)
            })
        }
        Command::Probe {
            kind,
            address,
            implicit_tls,
            verify_tls,
            tls_name,
            timeout,
            login,
            password_file,
        } => {
            let mut options = probe::Options {
                implicit_tls,
                verify_tls,
                tls_name,
                ..Default::default()
            };
            if let Some(timeout) = timeout {
                options.timeout = timeout;
            }
            if let (Some(user), Some(file)) = (login, password_file) {
                let password = std::fs::read_to_string(&file)?;
                options.login = Some((user, password.trim_end_matches(['\r', '\n']).to_string()));
            }
            let report = tokio_runtime()?.block_on(probe::probe(kind, &address, &options));
            println!("{}", serde_json::to_string(&report)?);
            Ok(if report.ok {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            })
        }
        Command::ProbeConfig { file } => {
            let config = config::load_file(&file).map_err(|e| anyhow::anyhow!("{e}"))?;
            let targets = probe::targets_of(&config.raw.listeners);
            let reports = tokio_runtime()?.block_on(probe::probe_all(&targets));
            println!("{}", serde_json::to_string(&reports)?);
            Ok(if reports.iter().all(|r| r.ok) {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            })
        }
        Command::CheckConfig { file } => match config::load_file(&file) {
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
        },
        Command::Migrate {
            data,
            postgres_uri_file,
            dry_run,
            postgres_ca_file,
            to_maildir,
        } => {
            let started = std::time::Instant::now();
            let uri = std::fs::read_to_string(&postgres_uri_file)?;
            // A dry run reads the Maildir as it is (no start-up repair renaming files under a
            // runtime that may still be serving it).
            let maildir = if dry_run && !to_maildir {
                mail_runtime::store::maildir::Maildir::open_to_read(&data)
            } else {
                mail_runtime::store::maildir::Maildir::open(&data, "migrate")?
            };
            let spool =
                std::env::temp_dir().join(format!("kubemail-migrate-{}", std::process::id()));
            let db = mail_runtime::store::postgres::Postgres::open(
                uri.trim(),
                &spool,
                postgres_ca_file.as_deref(),
            )?;
            let counts = if to_maildir {
                mail_runtime::migrate::postgres_to_maildir(&db, &maildir, dry_run)?
            } else {
                mail_runtime::migrate::maildir_to_postgres(&maildir, &db, dry_run)?
            };
            let _ = std::fs::remove_dir_all(&spool);
            let mut report = serde_json::to_value(&counts)?;
            report["dryRun"] = dry_run.into();
            report["seconds"] = ((started.elapsed().as_secs_f64() * 100.0).round() / 100.0).into();
            println!("{report}");
            Ok(ExitCode::SUCCESS)
        }
        Command::HashPassword => {
            let mut password = String::new();
            std::io::stdin().read_line(&mut password)?;
            println!(
                "{}",
                mail_runtime::auth::hash_password(password.trim_end_matches(['\r', '\n']))
            );
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// In a pod, why the runtime stopped, where the kubelet reads it for the container's status
/// (`lastState.terminated.message`): the operator's conditions say it (a database Secret
/// without its key, a refused login, a schema newer than this runtime).
fn termination_message(why: &str) {
    let path = std::path::Path::new("/dev/termination-log");
    if path.exists() {
        let why: String = why.chars().take(2000).collect();
        let _ = std::fs::write(path, why);
    }
}

/// Runs a server to its end, then stops without waiting for what no longer matters once it
/// drained: the thread reading standard input (dev mode's `--stop-on-eof`) never returns by
/// itself, and would hold the process.
fn serve_and_stop(
    server: impl Future<Output = anyhow::Result<ExitCode>>,
) -> anyhow::Result<ExitCode> {
    let runtime = tokio_runtime()?;
    let result = runtime.block_on(server);
    runtime.shutdown_timeout(Duration::from_secs(2));
    result
}

fn tokio_runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?)
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::{Cli, Command};

    /// Every subcommand's good arguments reach the struct (a type clap's derive does not match
    /// panics only here, at run time).
    #[test]
    fn good_arguments_parse() {
        for args in [
            &["mail-runtime", "serve", "--config", "c.yaml"][..],
            &[
                "mail-runtime",
                "dev",
                "--data",
                "d",
                "--base-port",
                "0",
                "--stop-on-eof",
            ][..],
            &["mail-runtime", "dev"][..],
            &[
                "mail-runtime",
                "probe",
                "imap",
                "127.0.0.1:993",
                "--implicit-tls",
                "--verify-tls",
                "--tls-name",
                "mail.example.test",
                "--timeout",
                "2.5",
                "--login",
                "a@example.test",
                "--password-file",
                "p",
            ][..],
            &["mail-runtime", "probe-config", "c.yaml"][..],
            &["mail-runtime", "check-config", "c.yaml"][..],
            &["mail-runtime", "hash-password"][..],
        ] {
            Cli::try_parse_from(args).unwrap_or_else(|e| panic!("{args:?}: {e}"));
        }
        let Command::Dev { base_port, .. } = Cli::try_parse_from(["mail-runtime", "dev"])
            .expect("dev")
            .command
        else {
            panic!("not dev");
        };
        assert_eq!(base_port, 2500);
    }
}
