//! The kubemail operator: reconciles MailDomain, Mailbox and RelayPolicy objects into a
//! running, probed mail service. `render` holds the pure builders; `controller` the pipelines
//! that read, render, apply and report.
#![forbid(unsafe_code)]

pub mod keys;
pub mod render;
