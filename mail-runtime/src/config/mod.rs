//! The runtime config: the contract itself lives in `kubemail-config` (shared with the
//! operator); this module adds what only the runtime does with it, reloading it from disk
//! ([`watch`]).
pub use kubemail_config::*;

mod watch;

pub use watch::{ConfigHandle, load_file, watch};
