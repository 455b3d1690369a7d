//! kubemail's mail runtime: SMTP (receiving and submission) with the Maildir store, configured
//! by the file the operator renders. IMAP and POP3 join as their issues land.
//!
//! ```text
//!   config (file, live reload) --> Runtime { ConfigHandle, Store, TlsHandle, limits }
//!                                      |
//!          listeners: smtp 25 / submission 587 / submissions 465 --> smtp::server --> Session
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
pub mod metrics;
pub mod net;
pub mod outbound;
pub mod pop3;
pub mod probe;
pub mod proxy;
pub mod runtime;
pub mod smtp;
pub mod store;
#[cfg(test)]
mod testing;
pub mod tls;
