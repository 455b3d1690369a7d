//! A Sieve interpreter (RFC 5228) with the extensions mail clients write: fileinto, reject
//! and ereject, envelope, imap4flags, body, variables, vacation (and vacation-seconds), copy,
//! mailbox, relational, date, regex and the i;ascii-numeric comparator.
//!
//! ```text
//!   script text --compile--> Script --run(message, envelope, now, folders)--> Outcome
//!                     \--> CompileError (line and reason)         (actions, or keep + error)
//! ```
//!
//! Sans-IO: the caller stores, forwards and replies. Scripts come from users, so every
//! dimension is bounded: the source ([`MAX_SCRIPT_BYTES`]), its nesting and node count
//! ([`MAX_DEPTH`], [`MAX_NODES`]), and each run's work ([`BUDGET`]). Written for kubemail
//! because the one complete Rust interpreter, sieve-rs, is AGPL-3.0.
#![forbid(unsafe_code)]

mod eval;
mod lex;
mod matching;
mod parse;
mod script;
pub mod vacation;

pub use eval::{
    Action, BUDGET, DEFAULT_VACATION_SECONDS, Envelope, Input, MAX_BODY_BYTES, MAX_REDIRECTS,
    MAX_VACATION_SECONDS, MAX_VARIABLE_BYTES, MAX_VARIABLES, MIN_VACATION_SECONDS, Outcome,
    Vacation, run,
};
pub use parse::{MAX_DEPTH, MAX_NODES};
pub use script::{EXTENSIONS, Script, compile};

/// The longest script accepted.
pub const MAX_SCRIPT_BYTES: usize = 128 * 1024;

/// Why a script does not compile.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("line {line}: {message}")]
pub struct CompileError {
    pub line: usize,
    pub message: String,
}

impl CompileError {
    pub(crate) fn at(line: usize, message: &str) -> Self {
        Self {
            line,
            message: message.to_string(),
        }
    }
}

/// An address as `redirect` takes it: `local@domain`, no spaces, brackets or controls.
pub(crate) fn valid_address(address: &str) -> bool {
    let Some((local, domain)) = address.rsplit_once('@') else {
        return false;
    };
    !local.is_empty()
        && domain.contains('.')
        && address.len() <= 254
        && !address
            .chars()
            .any(|c| c.is_whitespace() || c.is_control() || "<>()[],;:\"\\".contains(c))
}
