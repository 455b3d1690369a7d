//! Test support for kubemail: a real Kubernetes control plane (etcd + kube-apiserver, and
//! kube-controller-manager when it was built) on loopback, built from Go modules by
//! `e2e/scripts/build-control-plane.sh`.
//!
//! ```text
//!   ControlPlane::shared()  -- one per test binary, started on first use, stopped at exit
//!        |                     (every process dies with the test binary, even on panic/SIGKILL)
//!        +-- client()       -- a fresh kube::Client for the calling test's runtime
//!        +-- kubeconfig()   -- for kubectl and helm
//!        +-- with_namespace -- a fresh random namespace per test, deleted afterwards
//! ```
//!
//! Set `KUBEMAIL_TOOLS_BIN` to a directory holding the binaries to skip the build script.
#![forbid(unsafe_code)]

mod control_plane;
mod crds;
mod namespace;
mod node;
mod peers;
mod pki;
mod process;
mod tools;

pub use control_plane::ControlPlane;
pub use crds::install_crds;
pub use namespace::{TestNamespace, with_namespace};
pub use node::PodRunner;
pub use peers::Peers;
pub use tools::{Tools, workspace_root};
