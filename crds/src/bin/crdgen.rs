//! Writes the kubemail CRDs as YAML, one file per kind.
//!
//! `crdgen [DIR]` writes into DIR (default: `charts/kubemail/crds` of this workspace);
//! `crdgen --stdout` prints all of them as one multi-document stream.
use std::{env, fs, path::PathBuf, process::ExitCode};

fn main() -> ExitCode {
    let arg = env::args().nth(1);
    let mut out = String::new();
    let dir = match arg.as_deref() {
        Some("--stdout") => None,
        Some("-h" | "--help") => {
            println!("usage: crdgen [DIR | --stdout]");
            return ExitCode::SUCCESS;
        }
        Some(dir) => Some(PathBuf::from(dir)),
        None => Some(
            PathBuf::from(
                env::var_os("CARGO_MANIFEST_DIR")
                    .unwrap_or_else(|| env!("CARGO_MANIFEST_DIR").into()),
            )
            .join("../charts/kubemail/crds"),
        ),
    };
    for crd in kubemail_crds::crds() {
        let yaml = match kubemail_crds::crd_yaml(&crd) {
            Ok(yaml) => yaml,
            Err(err) => {
                eprintln!("crdgen: cannot serialize {:?}: {err}", crd.metadata.name);
                return ExitCode::FAILURE;
            }
        };
        match &dir {
            None => {
                out.push_str("---\n");
                out.push_str(&yaml);
            }
            Some(dir) => {
                let path = dir.join(kubemail_crds::crd_file_name(&crd));
                if let Err(err) = fs::create_dir_all(dir).and_then(|()| fs::write(&path, yaml)) {
                    eprintln!("crdgen: cannot write {}: {err}", path.display());
                    return ExitCode::FAILURE;
                }
                eprintln!("crdgen: wrote {}", path.display());
            }
        }
    }
    print!("{out}");
    ExitCode::SUCCESS
}
