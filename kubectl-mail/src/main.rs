//! `kubectl mail`: the few things people do by hand with kubemail, as one kubectl plugin (on
//! PATH as `kubectl-mail`). It speaks only to the API server, with the caller's own
//! credentials, except `test`, which port-forwards to the runtime's pod as `kubectl
//! port-forward` does.
#![forbid(unsafe_code)]

mod mailbox;
mod status;
mod test;

use std::process::ExitCode;

use clap::{Parser, Subcommand};
use kubemail_crds::mailbox::MailboxProtocol;

/// Mailboxes, passwords and app passwords, a domain's status, and an end-to-end test.
#[derive(Debug, Parser)]
#[command(
    name = "kubectl mail",
    bin_name = "kubectl mail",
    version,
    after_help = "Kubernetes access comes from KUBECONFIG (or ~/.kube/config), as for kubectl."
)]
struct Args {
    /// The namespace (default: the kubeconfig context's).
    #[arg(short, long, global = true, value_name = "NS")]
    namespace: Option<String>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Create a Mailbox and its password Secret (a generated password, printed once).
    Add {
        /// The mailbox's address; a MailDomain in the namespace serves its domain.
        address: String,
        /// The Mailbox's name (default: the address's local part, made a valid name).
        #[arg(long)]
        name: Option<String>,
        /// The most mail it may hold, such as `2Gi`.
        #[arg(long)]
        quota: Option<String>,
        /// The owner's name, for generated mail.
        #[arg(long)]
        display_name: Option<String>,
    },
    /// Give a Mailbox a new password (generated and printed once, or read from stdin).
    Passwd {
        /// The mailbox's address.
        address: String,
        /// Read the new password from the first line of stdin instead of generating one.
        #[arg(long)]
        password_stdin: bool,
    },
    /// A device's own password: add (printed once), revoke (its sessions end), list.
    #[command(subcommand)]
    AppPassword(AppPassword),
    /// A MailDomain's conditions, probes, endpoints, DNS records to publish, mailboxes and
    /// queue.
    Status {
        /// The domain (`example.com`) or the MailDomain's name.
        domain: String,
    },
    /// Send a message through the domain's submission port and read it back over IMAP, as a
    /// temporary mailbox that is removed afterwards.
    Test {
        /// The domain (`example.com`) or the MailDomain's name.
        domain: String,
        /// Seconds to wait for the temporary mailbox and for each protocol step.
        #[arg(long, default_value_t = 60)]
        timeout: u64,
    },
}

#[derive(Debug, Subcommand)]
enum AppPassword {
    /// Add an app password to a mailbox; its password is printed once.
    Add {
        /// The mailbox's address.
        address: String,
        /// The device's name, such as `phone` (lowercase letters, digits, '-').
        name: String,
        /// The protocols it opens, comma-separated: SMTP, IMAP, POP3 (default: all three).
        #[arg(long, value_delimiter = ',', value_parser = parse_protocol)]
        protocols: Vec<MailboxProtocol>,
    },
    /// Revoke an app password: the sessions opened with it end within seconds.
    Revoke {
        /// The mailbox's address.
        address: String,
        /// The device's name.
        name: String,
    },
    /// List a mailbox's app passwords.
    List {
        /// The mailbox's address.
        address: String,
    },
}

fn parse_protocol(text: &str) -> Result<MailboxProtocol, String> {
    match text.to_ascii_uppercase().as_str() {
        "SMTP" => Ok(MailboxProtocol::Smtp),
        "IMAP" => Ok(MailboxProtocol::Imap),
        "POP3" => Ok(MailboxProtocol::Pop3),
        _ => Err(format!("{text:?} is not SMTP, IMAP or POP3")),
    }
}

fn main() -> ExitCode {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let args = Args::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("error: {err}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(args)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(args: Args) -> anyhow::Result<()> {
    let client = kube::Client::try_default().await?;
    let ns = args
        .namespace
        .unwrap_or_else(|| client.default_namespace().to_string());
    let out = &mut std::io::stdout();
    match args.command {
        Command::Add {
            address,
            name,
            quota,
            display_name,
        } => {
            let new = mailbox::New {
                address,
                name,
                quota,
                display_name,
            };
            mailbox::add(&client, &ns, new, out).await
        }
        Command::Passwd {
            address,
            password_stdin,
        } => mailbox::passwd(&client, &ns, &address, password_stdin, out).await,
        Command::AppPassword(AppPassword::Add {
            address,
            name,
            protocols,
        }) => mailbox::app_password_add(&client, &ns, &address, &name, protocols, out).await,
        Command::AppPassword(AppPassword::Revoke { address, name }) => {
            mailbox::app_password_revoke(&client, &ns, &address, &name, out).await
        }
        Command::AppPassword(AppPassword::List { address }) => {
            mailbox::app_password_list(&client, &ns, &address, out).await
        }
        Command::Status { domain } => status::show(&client, &ns, &domain, out).await,
        Command::Test { domain, timeout } => {
            test::run(
                &client,
                &ns,
                &domain,
                std::time::Duration::from_secs(timeout),
                out,
            )
            .await
        }
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::{AppPassword, Args, Command};

    #[test]
    fn protocols_are_read_in_any_case_and_unknown_ones_refused() {
        let args = Args::try_parse_from([
            "kubectl-mail",
            "-n",
            "mail",
            "app-password",
            "add",
            "a@example.com",
            "phone",
            "--protocols",
            "imap,SMTP",
        ])
        .expect("valid");
        let Command::AppPassword(AppPassword::Add { protocols, .. }) = args.command else {
            panic!("app-password add");
        };
        assert_eq!(
            protocols,
            [
                kubemail_crds::mailbox::MailboxProtocol::Imap,
                kubemail_crds::mailbox::MailboxProtocol::Smtp
            ]
        );
        let err = Args::try_parse_from([
            "kubectl-mail",
            "app-password",
            "add",
            "a@example.com",
            "phone",
            "--protocols",
            "imap,jmap",
        ])
        .expect_err("jmap");
        assert!(
            err.to_string()
                .contains("\"jmap\" is not SMTP, IMAP or POP3"),
            "{err}"
        );
    }
}
