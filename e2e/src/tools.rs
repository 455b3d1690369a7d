//! Finding the control-plane binaries: from `KUBEMAIL_TOOLS_BIN`, or by running the build
//! script, which builds them once and then answers from its cache in about a second.
use std::{
    path::{Path, PathBuf},
    process::Command,
    sync::OnceLock,
};

use anyhow::{Context, Result, bail};

/// The directory with kube-apiserver, kubectl, etcd, helm and kubeconform.
#[derive(Debug, Clone)]
pub struct Tools {
    bin: PathBuf,
}

/// The root of the kubemail workspace.
pub fn workspace_root() -> PathBuf {
    // At run time first: `KUBEMAIL_WORKSPACE` (the scripts set it) or the `CARGO_MANIFEST_DIR`
    // cargo gives a test. The compile-time path can name another checkout that shared the
    // target directory and built this crate first.
    if let Some(dir) = std::env::var_os("KUBEMAIL_WORKSPACE") {
        return PathBuf::from(dir);
    }
    let manifest: PathBuf = std::env::var_os("CARGO_MANIFEST_DIR")
        .unwrap_or_else(|| env!("CARGO_MANIFEST_DIR").into())
        .into();
    manifest
        .parent()
        .expect("e2e sits inside the workspace")
        .to_path_buf()
}

impl Tools {
    /// The tools, built if needed (once per process).
    pub fn get() -> Result<&'static Tools> {
        static TOOLS: OnceLock<std::result::Result<Tools, String>> = OnceLock::new();
        TOOLS
            .get_or_init(|| Tools::locate().map_err(|e| format!("{e:#}")))
            .as_ref()
            .map_err(|e| anyhow::anyhow!("{e}"))
    }

    fn locate() -> Result<Tools> {
        let bin = match std::env::var_os("KUBEMAIL_TOOLS_BIN") {
            Some(dir) => PathBuf::from(dir),
            None => {
                let script = workspace_root().join("e2e/scripts/build-control-plane.sh");
                let out = Command::new("bash")
                    .arg(&script)
                    .output()
                    .with_context(|| format!("running {}", script.display()))?;
                if !out.status.success() {
                    bail!(
                        "{} failed:\n{}",
                        script.display(),
                        String::from_utf8_lossy(&out.stderr)
                    );
                }
                let stdout = String::from_utf8(out.stdout)?;
                PathBuf::from(stdout.lines().last().unwrap_or_default().trim())
            }
        };
        let tools = Tools { bin };
        for name in ["etcd", "kube-apiserver", "kubectl"] {
            let path = tools.path(name);
            if !path.is_file() {
                bail!(
                    "{} is missing: run e2e/scripts/build-control-plane.sh",
                    path.display()
                );
            }
        }
        Ok(tools)
    }

    /// The path of one binary.
    pub fn path(&self, name: &str) -> PathBuf {
        self.bin.join(name)
    }

    /// Whether a binary was built (kube-controller-manager is optional).
    pub fn has(&self, name: &str) -> bool {
        self.path(name).is_file()
    }

    /// The binaries' directory.
    pub fn bin_dir(&self) -> &Path {
        &self.bin
    }
}

/// A binary of this workspace: from the environment variable `var`, or from the target
/// directory the running test or tool was built into.
pub fn workspace_binary(name: &str, var: &str) -> Result<PathBuf> {
    let path = match std::env::var_os(var) {
        Some(path) => PathBuf::from(path),
        None => {
            let exe = std::env::current_exe()?;
            // target/debug/deps/<test> or target/debug/<tool>
            let mut dir = exe
                .parent()
                .context("the running binary has no directory")?;
            if dir.ends_with("deps") {
                dir = dir.parent().context("deps has no parent")?;
            }
            dir.join(name)
        }
    };
    if !path.is_file() {
        bail!(
            "{} is missing: build it (cargo build -p ...) or set {var}",
            path.display()
        );
    }
    Ok(path)
}
