//! The kubemail operator binary. Its controllers land with the operator issue; until then it
//! only prints the CRDs it serves, so the chart and tests have one source for them.
#![forbid(unsafe_code)]

use std::process::ExitCode;

fn main() -> ExitCode {
    match std::env::args().nth(1).as_deref() {
        Some("--version") => {
            println!("kubemail-operator {}", env!("CARGO_PKG_VERSION"));
            ExitCode::SUCCESS
        }
        _ => {
            eprintln!("usage: kubemail-operator --version (the controllers are not built yet)");
            ExitCode::from(2)
        }
    }
}
