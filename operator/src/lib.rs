//! The kubemail operator: reconciles MailDomain, Mailbox and RelayPolicy objects into a
//! running, probed mail service. `render` holds the pure builders; `controller` the pipelines
//! that read, render, apply and report; `run` wires the controllers together.
#![forbid(unsafe_code)]

pub mod conditions;
pub mod controller;
pub mod dns_check;
pub mod error;
pub mod health;
pub mod keys;
pub mod leader;
pub mod render;
pub mod run;
