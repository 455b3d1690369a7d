//! The kubemail mail runtime binary. The protocols land with their issues.
#![forbid(unsafe_code)]

use std::process::ExitCode;

fn main() -> ExitCode {
    match std::env::args().nth(1).as_deref() {
        Some("--version") => {
            println!("mail-runtime {}", env!("CARGO_PKG_VERSION"));
            ExitCode::SUCCESS
        }
        _ => {
            eprintln!("usage: mail-runtime --version (no protocol is served yet)");
            ExitCode::from(2)
        }
    }
}
