//! A real control plane on loopback: etcd, kube-apiserver and (when built)
//! kube-controller-manager, the same binaries a cluster runs, with test-sized settings.
use std::{
    fs,
    path::{Path, PathBuf},
    process::Command,
    sync::{Mutex, OnceLock},
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};
use kube::config::{KubeConfigOptions, Kubeconfig};

use crate::{
    pki,
    process::{Guarded, free_port},
    tools::Tools,
};

/// A running control plane. Processes stop when it is dropped or when the test binary exits.
#[derive(Debug)]
pub struct ControlPlane {
    dir: PathBuf,
    kubeconfig: PathBuf,
    api_port: u16,
    placement: Placement,
    processes: Option<Processes>,
}

/// Where the control plane runs.
#[derive(Debug, Clone)]
pub(crate) enum Placement {
    /// On the host's loopback, with no node: the API server alone.
    Loopback,
    /// Inside a real node's network namespace, advertising the node's address (so pods reach it
    /// through the `kubernetes` Service); the host reaches it through a loopback bridge on the
    /// same port. Its files go to `dir`, inside the node's, so the node's teardown removes them.
    Node {
        netns: String,
        node_ip: String,
        dir: PathBuf,
    },
}

impl Placement {
    /// Starts `program` here: in the node's network namespace, or on the host.
    pub(crate) fn spawn(
        &self,
        name: &str,
        program: &Path,
        args: &[String],
        log: &Path,
    ) -> Result<Guarded> {
        match self {
            Placement::Loopback => Guarded::spawn(name, program, args, log),
            Placement::Node { netns, .. } => {
                let mut all = vec![
                    "netns".to_string(),
                    "exec".to_string(),
                    netns.clone(),
                    program.to_string_lossy().to_string(),
                ];
                all.extend_from_slice(args);
                Guarded::spawn(name, Path::new("/usr/sbin/ip"), &all, log)
            }
        }
    }
}

/// The identity the node's kubelet uses (the Node authorizer knows it by this name).
pub(crate) const NODE_NAME: &str = "kubemail-node";

#[derive(Debug)]
struct Processes {
    etcd: Mutex<Guarded>,
    apiserver: Mutex<Guarded>,
    apiserver_args: Vec<String>,
    controller_manager: Option<Mutex<Guarded>>,
    /// The host's way in to an API server inside a node's network namespace.
    bridge: Vec<Guarded>,
}

const DIR_PREFIX: &str = "kubemail-e2e-";

impl ControlPlane {
    /// The control plane shared by every test in this test binary, started on first use.
    ///
    /// With `KUBEMAIL_KUBECONFIG` set, tests use that cluster instead of starting one.
    pub fn shared() -> &'static ControlPlane {
        static SHARED: OnceLock<std::result::Result<ControlPlane, String>> = OnceLock::new();
        let started = SHARED.get_or_init(|| {
            let plane = match std::env::var_os("KUBEMAIL_KUBECONFIG") {
                Some(path) => ControlPlane::external(PathBuf::from(path)),
                None => ControlPlane::start(),
            };
            plane.map_err(|e| format!("{e:#}"))
        });
        match started {
            Ok(plane) => plane,
            Err(err) => panic!("the test control plane did not start: {err}"),
        }
    }

    /// Uses an existing cluster described by a kubeconfig file. Restarts are not possible.
    pub fn external(kubeconfig: PathBuf) -> Result<Self> {
        Ok(Self {
            dir: kubeconfig.parent().unwrap_or(Path::new(".")).to_path_buf(),
            kubeconfig,
            api_port: 0,
            placement: Placement::Loopback,
            processes: None,
        })
    }

    /// Starts etcd and kube-apiserver (and kube-controller-manager when built) on free loopback
    /// ports and waits until the API server reports ready.
    pub fn start() -> Result<Self> {
        Self::start_at(Placement::Loopback)
    }

    pub(crate) fn start_at(placement: Placement) -> Result<Self> {
        let tools = Tools::get()?;
        remove_stale_dirs();
        // pid first, so a later run can tell a dead run's directory; then a random part, so two
        // control planes of one test binary never share one.
        let dir = match &placement {
            Placement::Node { dir, .. } => dir.clone(),
            Placement::Loopback => std::env::temp_dir().join(format!(
                "{DIR_PREFIX}{}-{}",
                std::process::id(),
                random_suffix()
            )),
        };
        fs::create_dir_all(dir.join("logs"))?;
        // Root only: the admin kubeconfig and the CA's and API server's keys live here.
        fs::set_permissions(&dir, std::os::unix::fs::PermissionsExt::from_mode(0o700))?;
        let extra_names = match &placement {
            Placement::Loopback => vec![],
            // The node's address, and the `kubernetes` Service's first address of 10.96.0.0/16.
            Placement::Node { node_ip, .. } => vec![
                node_ip.clone(),
                "10.96.0.1".to_string(),
                "kubernetes".to_string(),
                "kubernetes.default".to_string(),
                "kubernetes.default.svc.cluster.local".to_string(),
            ],
        };
        let pki = pki::write(&dir.join("pki"), &extra_names)?;

        let token = random_hex(16)?;
        let node_token = random_hex(16)?;
        let tokens = dir.join("tokens.csv");
        fs::write(
            &tokens,
            format!(
                "{token},kubemail-test-admin,kubemail-test-admin,\"system:masters\"\n\
                 {node_token},system:node:{NODE_NAME},{NODE_NAME},\"system:nodes\"\n"
            ),
        )?;

        let etcd_port = free_port()?;
        let peer_port = free_port()?;
        let api_port = free_port()?;
        let etcd_url = format!("http://127.0.0.1:{etcd_port}");
        let peer_url = format!("http://127.0.0.1:{peer_port}");
        let etcd_args = vec![
            "--name=default".to_string(),
            format!("--data-dir={}", dir.join("etcd").display()),
            format!("--listen-client-urls={etcd_url}"),
            format!("--advertise-client-urls={etcd_url}"),
            format!("--listen-peer-urls={peer_url}"),
            format!("--initial-advertise-peer-urls={peer_url}"),
            format!("--initial-cluster=default={peer_url}"),
            "--unsafe-no-fsync=true".to_string(),
            "--log-level=warn".to_string(),
        ];
        let etcd = placement.spawn(
            "etcd",
            &tools.path("etcd"),
            &etcd_args,
            &dir.join("logs/etcd.log"),
        )?;

        let mut apiserver_args = vec![
            format!("--etcd-servers={etcd_url}"),
            format!("--secure-port={api_port}"),
            format!("--cert-dir={}", dir.join("pki").display()),
            format!("--tls-cert-file={}", pki.serving_cert.display()),
            format!("--tls-private-key-file={}", pki.serving_key.display()),
            format!("--client-ca-file={}", pki.ca_cert.display()),
            format!("--token-auth-file={}", tokens.display()),
            "--service-account-issuer=https://kubernetes.default.svc.cluster.local".to_string(),
            format!("--service-account-key-file={}", pki.sa_public_key.display()),
            format!(
                "--service-account-signing-key-file={}",
                pki.sa_key.display()
            ),
            "--service-cluster-ip-range=10.96.0.0/16".to_string(),
            "--allow-privileged=false".to_string(),
            "--profiling=false".to_string(),
            "--enable-priority-and-fairness=false".to_string(),
            "--event-ttl=10m".to_string(),
        ];
        match &placement {
            Placement::Loopback => apiserver_args.extend([
                "--bind-address=127.0.0.1".to_string(),
                "--advertise-address=127.0.0.1".to_string(),
                // No kubelet, no Endpoints for the kubernetes Service (and loopback is refused
                // there).
                "--endpoint-reconciler-type=none".to_string(),
                "--authorization-mode=RBAC".to_string(),
            ]),
            Placement::Node { node_ip, .. } => apiserver_args.extend([
                "--bind-address=0.0.0.0".to_string(),
                format!("--advertise-address={node_ip}"),
                "--authorization-mode=Node,RBAC".to_string(),
                "--enable-admission-plugins=NodeRestriction".to_string(),
                format!(
                    "--kubelet-client-certificate={}",
                    pki.kubelet_client_cert.display()
                ),
                format!("--kubelet-client-key={}", pki.kubelet_client_key.display()),
                "--kubelet-preferred-address-types=InternalIP".to_string(),
            ]),
        }
        let apiserver = placement.spawn(
            "kube-apiserver",
            &tools.path("kube-apiserver"),
            &apiserver_args,
            &dir.join("logs/kube-apiserver.log"),
        )?;

        // The same address works on the host and in the node: the bridge listens on the host's
        // loopback at the API server's port and hands each connection to the node's loopback.
        let mut bridge = Vec::new();
        if let Placement::Node { .. } = &placement {
            let socket = dir.join("apiserver.sock");
            bridge.push(placement.spawn(
                "apiserver bridge (node side)",
                Path::new("/usr/bin/socat"),
                &[
                    format!("UNIX-LISTEN:{},fork,mode=0600", socket.display()),
                    format!("TCP:127.0.0.1:{api_port}"),
                ],
                &dir.join("logs/bridge-node.log"),
            )?);
            bridge.push(Guarded::spawn(
                "apiserver bridge (host side)",
                Path::new("/usr/bin/socat"),
                &[
                    format!("TCP-LISTEN:{api_port},bind=127.0.0.1,reuseaddr,fork"),
                    format!("UNIX-CONNECT:{}", socket.display()),
                ],
                &dir.join("logs/bridge-host.log"),
            )?);
        }

        let kubeconfig = dir.join("kubeconfig");
        fs::write(
            &kubeconfig,
            kubeconfig_yaml(api_port, &pki.ca_cert, "kubemail-test-admin", &token),
        )?;
        fs::write(
            dir.join("kubelet.kubeconfig"),
            kubeconfig_yaml(
                api_port,
                &pki.ca_cert,
                &format!("system:node:{NODE_NAME}"),
                &node_token,
            ),
        )?;

        let mut plane = ControlPlane {
            dir: dir.clone(),
            kubeconfig,
            api_port,
            placement: placement.clone(),
            processes: Some(Processes {
                etcd: Mutex::new(etcd),
                apiserver: Mutex::new(apiserver),
                apiserver_args,
                controller_manager: None,
                bridge,
            }),
        };
        plane.wait_ready(Duration::from_secs(90))?;

        if tools.has("kube-controller-manager") {
            let controllers = match &placement {
                Placement::Loopback => {
                    "namespace-controller,garbage-collector-controller,deployment-controller,replicaset-controller,serviceaccount-controller,serviceaccount-token-controller"
                }
                // Every controller a cluster runs, but pod addresses come from the node's CNI.
                Placement::Node { .. } => "*,-node-ipam-controller",
            };
            let args = vec![
                format!("--kubeconfig={}", plane.kubeconfig.display()),
                format!(
                    "--service-account-private-key-file={}",
                    pki.sa_key.display()
                ),
                format!("--root-ca-file={}", pki.ca_cert.display()),
                "--leader-elect=false".to_string(),
                "--secure-port=0".to_string(),
                format!("--controllers={controllers}"),
            ];
            let cm = placement.spawn(
                "kube-controller-manager",
                &tools.path("kube-controller-manager"),
                &args,
                &dir.join("logs/kube-controller-manager.log"),
            )?;
            if let Some(p) = plane.processes.as_mut() {
                p.controller_manager = Some(Mutex::new(cm));
            }
        }
        Ok(plane)
    }

    /// The kubeconfig file for kubectl, helm and the operator (admin rights).
    pub fn kubeconfig(&self) -> &Path {
        &self.kubeconfig
    }

    /// The directory holding this control plane's files (PKI, kubeconfigs, logs).
    pub(crate) fn dir(&self) -> &Path {
        &self.dir
    }

    /// The API server's URL.
    pub fn server_url(&self) -> String {
        format!("https://127.0.0.1:{}", self.api_port)
    }

    /// A directory for a test's own files; it lives as long as the control plane.
    pub fn scratch_dir(&self, name: &str) -> Result<PathBuf> {
        let dir = self.dir.join("scratch").join(name);
        fs::create_dir_all(&dir)?;
        Ok(dir)
    }

    /// Whether kube-controller-manager runs (garbage collection, namespace deletion,
    /// Deployment -> ReplicaSet -> Pod).
    pub fn has_controller_manager(&self) -> bool {
        self.processes
            .as_ref()
            .is_some_and(|p| p.controller_manager.is_some())
    }

    /// A new client for the calling test's async runtime, with admin rights.
    pub async fn client(&self) -> Result<kube::Client> {
        let kubeconfig = Kubeconfig::read_from(&self.kubeconfig)?;
        let config =
            kube::Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default()).await?;
        Ok(kube::Client::try_from(config)?)
    }

    /// `kubectl` with this control plane's kubeconfig.
    pub fn kubectl(&self) -> Command {
        let mut cmd = Command::new(
            Tools::get()
                .expect("tools were found at start")
                .path("kubectl"),
        );
        cmd.env("KUBECONFIG", &self.kubeconfig);
        cmd
    }

    /// `helm` with this control plane's kubeconfig.
    pub fn helm(&self) -> Command {
        let mut cmd = Command::new(
            Tools::get()
                .expect("tools were found at start")
                .path("helm"),
        );
        cmd.env("KUBECONFIG", &self.kubeconfig)
            .env("HELM_CACHE_HOME", self.dir.join("helm/cache"))
            .env("HELM_CONFIG_HOME", self.dir.join("helm/config"))
            .env("HELM_DATA_HOME", self.dir.join("helm/data"));
        cmd
    }

    /// Stops kube-apiserver and starts it again on the same port, as an upgrade or a crash would,
    /// and waits until it is ready.
    pub fn restart_apiserver(&self) -> Result<()> {
        let Some(p) = &self.processes else {
            bail!("an external cluster cannot be restarted from a test");
        };
        {
            let mut apiserver = p.apiserver.lock().expect("apiserver lock");
            apiserver.stop();
            *apiserver = self.placement.spawn(
                "kube-apiserver",
                &Tools::get()?.path("kube-apiserver"),
                &p.apiserver_args,
                &self.dir.join("logs/kube-apiserver.log"),
            )?;
        }
        self.wait_ready(Duration::from_secs(90))
    }

    fn wait_ready(&self, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            let out = self
                .kubectl()
                .args(["get", "--raw=/readyz", "--request-timeout=2s"])
                .output()
                .context("running kubectl")?;
            if out.status.success() {
                return Ok(());
            }
            if let Some(p) = &self.processes {
                for (name, process) in [("etcd", &p.etcd), ("kube-apiserver", &p.apiserver)] {
                    let mut process = process.lock().expect("process lock");
                    if !process.running() {
                        bail!("{name} exited during start-up\n{}", process.log_tail());
                    }
                }
            }
            if Instant::now() > deadline {
                let tail = self
                    .processes
                    .as_ref()
                    .map(|p| p.apiserver.lock().expect("process lock").log_tail())
                    .unwrap_or_default();
                bail!(
                    "kube-apiserver was not ready after {timeout:?}: {}\n{tail}",
                    String::from_utf8_lossy(&out.stderr)
                );
            }
            std::thread::sleep(Duration::from_millis(250));
        }
    }
}

impl Drop for ControlPlane {
    fn drop(&mut self) {
        if let Some(p) = self.processes.take() {
            drop(p.controller_manager);
            drop(p.bridge);
            drop(p.apiserver);
            drop(p.etcd);
            let _ = fs::remove_dir_all(&self.dir);
        }
    }
}

fn kubeconfig_yaml(port: u16, ca: &Path, user: &str, token: &str) -> String {
    format!(
        "apiVersion: v1
kind: Config
clusters:
- name: kubemail-test
  cluster:
    server: https://127.0.0.1:{port}
    certificate-authority: {ca}
users:
- name: {user}
  user:
    token: {token}
contexts:
- name: kubemail-test
  context:
    cluster: kubemail-test
    user: {user}
    namespace: default
current-context: kubemail-test
",
        ca = ca.display()
    )
}

fn random_hex(bytes: usize) -> Result<String> {
    use std::io::Read;
    let mut buf = vec![0u8; bytes];
    fs::File::open("/dev/urandom")?.read_exact(&mut buf)?;
    Ok(buf.iter().map(|b| format!("{b:02x}")).collect())
}

/// Removes the directories of earlier test binaries that are no longer running (a static
/// control plane is never dropped, so its directory outlives its process).
fn remove_stale_dirs() {
    let Ok(entries) = fs::read_dir(std::env::temp_dir()) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(pid) = name
            .to_str()
            .and_then(|n| n.strip_prefix(DIR_PREFIX))
            .and_then(|rest| rest.split('-').next())
            .and_then(|p| p.parse::<u32>().ok())
        else {
            continue;
        };
        if !Path::new(&format!("/proc/{pid}")).exists() {
            let _ = fs::remove_dir_all(entry.path());
        }
    }
}

pub(crate) fn random_suffix() -> String {
    random_hex(4).unwrap_or_else(|_| format!("{:08x}", std::process::id()))
}
