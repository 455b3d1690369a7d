//! Test support for kubemail: a real Kubernetes control plane (etcd + kube-apiserver, and
//! kube-controller-manager when it was built) on loopback, and a real single-node cluster
//! (kubelet + containerd + kube-proxy + CoreDNS in a network namespace), built from Go modules
//! by `e2e/scripts/build-control-plane.sh` and Debian's packages.
//!
//! ```text
//!   ControlPlane::shared()  -- one per test binary, started on first use, stopped at exit
//!        |                     (every process dies with the test binary, even on panic/SIGKILL)
//!        +-- client()       -- a fresh kube::Client for the calling test's runtime
//!        +-- kubeconfig()   -- for kubectl and helm
//!        +-- with_namespace -- a fresh random namespace per test, deleted afterwards
//!   Cluster::shared()       -- the same, with a node that runs pods from kubemail's images
//!        +-- plane()        -- its control plane
//!        +-- in_node(cmd)   -- a client run inside the node's network (Service and pod IPs)
//!   Database::start_in(cluster) -- PostgreSQL on the node's address, TLS, for pods to use
//! ```
//!
//! Set `KUBEMAIL_TOOLS_BIN` to a directory holding the binaries to skip the build script.
#![forbid(unsafe_code)]

mod cluster;
mod control_plane;
mod crds;
mod database;
mod dns;
mod namespace;
mod peers;
mod pki;
mod process;
mod provisioner;
mod tools;

pub use cluster::{Cluster, Images};
pub use control_plane::ControlPlane;
pub use crds::{install_crds, install_external_dns_crd};
pub use database::{DATABASE_PORT, Database};
pub use dns::Dns;
pub use namespace::{TestNamespace, with_namespace};
pub use peers::{Peers, Scanners};
pub use tools::{Tools, workspace_binary, workspace_root};
