//! kubemail's mail runtime: SMTP (receiving, submission, outbound delivery), IMAP and POP3 over
//! the Maildir store, configured by the file the operator renders (`kubemail-config`) and
//! reloaded when it changes.
//!
//! ```text
//!   config file --config::watch--> Runtime { ConfigHandle, Store, TlsHandle, limits, queues }
//!                                  (private fields, read through accessors)
//!                                      |
//!   net::serve (PROXY header, limits, TLS) --> smtp::server / imap::server / pop3::server
//!                                                 (drivers)  --> session state machines
//!   outbound: queue --> MX or smarthost (DKIM-signed, rate-limited, DSNs)
//!   http: health, readiness, metrics and usage, autoconfig, MTA-STS
//! ```
//!
//! Nothing here knows about Kubernetes.
#![forbid(unsafe_code)]

pub mod auth;
pub mod config;
pub mod deflate;
pub mod dev;
pub mod dns;
pub mod header;
pub mod http;
pub mod imap;
pub mod managesieve;
pub mod metrics;
pub mod migrate;
pub mod net;
pub mod outbound;
pub mod pop3;
pub mod proxy;
pub mod runtime;
pub mod sieve;
pub mod smtp;
pub mod store;
#[cfg(test)]
mod testing;
pub mod tls;

/// The health checks (`mail-runtime probe ...`), from their own crate, which the operator
/// links too.
pub use kubemail_probe as probe;
