//! A real single-node cluster on this machine: the control plane, kube-scheduler, kube-proxy,
//! containerd + runc + CNI, a kubelet with default sync settings and CoreDNS, all inside a
//! network namespace the harness creates (the host's network is never used), with kubemail's
//! images assembled from the Dockerfiles' final stage and imported into containerd.
//!
//! ```text
//!   host                               | netns kubemail-e2e-<pid>-<rand>  (node IP 10.250.0.2)
//!   127.0.0.1:<port> --socat--> unix --+--> kube-apiserver :<port>  <-- etcd, controller-manager,
//!   tests, kubectl, helm               |                                scheduler, kube-proxy
//!   ctr (unix socket) -----------------+--> containerd  <-- kubelet     (private mount ns with
//!   clients: `ip netns exec` (in_node) |      pods on cni0 10.244.0.0/24  tmpfs over /var/lib/...)
//! ```
//!
//! Started once per test binary ([`Cluster::shared`]); torn down completely (processes, cgroups,
//! network namespace, files) when the test binary exits, panics or is killed: a watcher in a
//! session of its own runs `teardown.sh` once the test binary's process is gone (its process
//! group killed included), and a later run removes what a dead run's watcher could not.
use std::{
    fs,
    os::unix::fs::DirBuilderExt,
    path::{Path, PathBuf},
    process::Command,
    sync::{
        Arc, Mutex, OnceLock,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};

use crate::{
    control_plane::{ControlPlane, NODE_NAME, Placement, random_suffix},
    process::Guarded,
    provisioner,
    tools::{Tools, workspace_binary, workspace_root},
};

/// The node's address in its network namespace (pods reach it; the host does not).
pub(crate) const NODE_IP: &str = "10.250.0.2";
const POD_CIDR: &str = "10.244.0.0/24";
const DIR_PREFIX: &str = "kubemail-node-";

/// kubemail's images as the node knows them (imported, never pulled).
#[derive(Debug, Clone)]
pub struct Images {
    /// The operator image's repository (the chart's `operator.image.repository`).
    pub operator_repository: String,
    /// The runtime image's repository (the chart's `runtime.image.repository`).
    pub runtime_repository: String,
    /// The tag of both.
    pub tag: String,
}

/// A running single-node cluster.
#[derive(Debug)]
pub struct Cluster {
    plane: ControlPlane,
    netns: String,
    dir: PathBuf,
    images: Images,
    holder: Guarded,
    containerd: Mutex<Guarded>,
    kubelet: Mutex<Guarded>,
    proxy: Guarded,
    scheduler: Guarded,
    /// Tells the volume provisioner to stop.
    provisioner: Arc<AtomicBool>,
}

impl Cluster {
    /// The cluster shared by every test in this test binary, started on first use.
    pub fn shared() -> &'static Cluster {
        static SHARED: OnceLock<std::result::Result<Cluster, String>> = OnceLock::new();
        match SHARED.get_or_init(|| Cluster::start().map_err(|e| format!("{e:#}"))) {
            Ok(cluster) => cluster,
            Err(err) => panic!("the test cluster did not start: {err}"),
        }
    }

    /// Brings the node up: network namespace, control plane, containerd, kubelet, kube-proxy,
    /// kube-scheduler, images, CoreDNS and the volume provisioner. About half a minute.
    pub fn start() -> Result<Cluster> {
        if !is_root() {
            bail!("a real node needs root (network and mount namespaces, cgroups)");
        }
        let tools = Tools::get()?;
        for name in ["kubelet", "kube-proxy", "kube-scheduler", "coredns"] {
            if !tools.has(name) {
                bail!("{name} is missing: run e2e/scripts/build-control-plane.sh");
            }
        }
        for program in ["/usr/bin/containerd", "/usr/sbin/runc", "/usr/bin/ctr"] {
            if !Path::new(program).exists() {
                bail!("{program} is missing: run e2e/scripts/install-deps.sh");
            }
        }
        check_host()?;
        remove_stale_nodes();
        let id = format!("{}-{}", std::process::id(), random_suffix());
        let netns = format!("kubemail-e2e-{id}");
        let cgroup = format!("kubemail-{id}");
        let dir = node_dir(&id);
        // Root only: it holds the node's kubeconfig and the teardown script the guard runs.
        fs::DirBuilder::new().mode(0o700).create(&dir)?;
        fs::create_dir_all(dir.join("logs"))?;
        let render = |template: &str, extra: &[(&str, &str)]| {
            let mut text = render_node_file(template, &id).replace("{{POD_CIDR}}", POD_CIDR);
            for (key, value) in extra {
                text = text.replace(&format!("{{{{{key}}}}}"), value);
            }
            text
        };
        fs::write(
            dir.join("teardown.sh"),
            render(include_str!("../node/teardown.sh"), &[]),
        )?;
        // From here on, whatever happens, the teardown guard removes the node.
        // In a session of its own, so that killing this process's whole group (a CI runner's
        // timeout, Ctrl-C on a terminal) does not take the watcher with it.
        Command::new("/usr/bin/setsid")
            .args(["--fork", "sh", "-c"])
            .arg(format!(
                "while kill -0 {pid} 2>/dev/null; do sleep 0.5; done; exec sh '{dir}/teardown.sh'",
                pid = std::process::id(),
                dir = dir.display()
            ))
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status()
            .context("starting the node's teardown watcher")?;
        let started = Instant::now();
        create_network(&netns)?;
        create_cgroups(&cgroup)?;

        let placement = Placement::Node {
            netns: netns.clone(),
            node_ip: NODE_IP.to_string(),
            dir: dir.join("control-plane"),
        };
        let plane = ControlPlane::start_at(placement.clone())?;
        fs::copy(
            plane.dir().join("kubelet.kubeconfig"),
            dir.join("kubelet.kubeconfig"),
        )?;
        let ca = plane.dir().join("pki/ca.crt");
        fs::create_dir_all(dir.join("cni/net.d"))?;
        fs::write(
            dir.join("cni/net.d/10-kubemail.conflist"),
            render(include_str!("../node/cni.conflist"), &[]),
        )?;
        fs::write(
            dir.join("containerd.toml"),
            render(include_str!("../node/containerd.toml"), &[]),
        )?;
        fs::write(
            dir.join("kubelet.yaml"),
            render(
                include_str!("../node/kubelet.yaml"),
                &[("CA", &ca.to_string_lossy())],
            ),
        )?;
        fs::write(dir.join("resolv.conf"), include_str!("../node/resolv.conf"))?;
        fs::write(dir.join("holder.sh"), include_str!("../node/holder.sh"))?;

        // The mount namespace containerd and the kubelet share.
        let holder = Guarded::spawn(
            "node mounts",
            Path::new("/usr/bin/nsenter"),
            &[
                format!("--net=/run/netns/{netns}"),
                "--".into(),
                "/usr/bin/unshare".into(),
                "--mount".into(),
                "--propagation".into(),
                "slave".into(),
                "sh".into(),
                dir.join("holder.sh").to_string_lossy().to_string(),
                dir.to_string_lossy().to_string(),
            ],
            &dir.join("logs/holder.log"),
        )?;
        let holder_pid = wait_for(
            Duration::from_secs(20),
            "the node's mount namespace",
            || {
                Ok(fs::read_to_string(dir.join("holder.pid"))
                    .ok()
                    .map(|p| p.trim().to_string()))
            },
        )?;

        let images = build_images(&dir.join("images"))?;
        let containerd = spawn_containerd(&holder_pid, &dir)?;
        import_images(&dir)?;
        let kubelet = spawn_kubelet(&holder_pid, &dir, tools)?;
        let kubeconfig = plane.kubeconfig().to_string_lossy().to_string();
        let proxy = placement.spawn(
            "kube-proxy",
            &tools.path("kube-proxy"),
            &[
                format!("--kubeconfig={kubeconfig}"),
                "--proxy-mode=iptables".into(),
                format!("--hostname-override={NODE_NAME}"),
                "--cluster-cidr=10.244.0.0/16".into(),
                // It cannot set the host's conntrack sysctls from a network namespace.
                "--conntrack-max-per-core=0".into(),
                "--conntrack-tcp-timeout-established=0".into(),
                "--conntrack-tcp-timeout-close-wait=0".into(),
                "--metrics-bind-address=127.0.0.1:10249".into(),
            ],
            &dir.join("logs/kube-proxy.log"),
        )?;
        let scheduler = placement.spawn(
            "kube-scheduler",
            &tools.path("kube-scheduler"),
            &[
                format!("--kubeconfig={kubeconfig}"),
                format!("--authentication-kubeconfig={kubeconfig}"),
                format!("--authorization-kubeconfig={kubeconfig}"),
                "--leader-elect=false".into(),
                "--bind-address=127.0.0.1".into(),
            ],
            &dir.join("logs/kube-scheduler.log"),
        )?;
        let cluster = Cluster {
            plane,
            netns,
            dir,
            images,
            holder,
            containerd: Mutex::new(containerd),
            kubelet: Mutex::new(kubelet),
            proxy,
            scheduler,
            provisioner: Arc::new(AtomicBool::new(false)),
        };
        cluster.wait_node_ready(Duration::from_secs(120))?;
        provisioner::start(
            &cluster.plane,
            &cluster.dir.join("volumes"),
            cluster.provisioner.clone(),
        )?;
        cluster.apply_manifest(include_str!("../node/coredns.yaml"))?;
        cluster.wait_rollout(
            "kube-system",
            "deployment/coredns",
            Duration::from_secs(120),
        )?;
        eprintln!(
            "kubemail-e2e: node {NODE_NAME} ready in {:.1} s (network namespace {})",
            started.elapsed().as_secs_f64(),
            cluster.netns
        );
        Ok(cluster)
    }

    /// The control plane (kubeconfig, kubectl, helm, clients).
    pub fn plane(&self) -> &ControlPlane {
        &self.plane
    }

    /// kubemail's images on this node.
    pub fn images(&self) -> &Images {
        &self.images
    }

    /// The network namespace the node lives in.
    pub fn netns(&self) -> &str {
        &self.netns
    }

    /// `program` run inside the node's network: it reaches pod and Service addresses there.
    pub fn in_node(&self, program: &str) -> Command {
        let mut cmd = Command::new("/usr/sbin/ip");
        cmd.args(["netns", "exec", &self.netns, program]);
        cmd
    }

    /// Makes `namespace` (unless it exists) and labels it to enforce the restricted Pod Security
    /// Standard.
    pub fn restricted_namespace(&self, namespace: &str) -> Result<()> {
        let kubectl = |args: &[&str]| -> Result<bool> {
            Ok(self.plane.kubectl().args(args).output()?.status.success())
        };
        if !kubectl(&["get", "namespace", namespace])?
            && !kubectl(&["create", "namespace", namespace])?
        {
            bail!("kubectl create namespace {namespace} failed");
        }
        if !kubectl(&[
            "label",
            "namespace",
            namespace,
            "--overwrite",
            "pod-security.kubernetes.io/enforce=restricted",
            "pod-security.kubernetes.io/enforce-version=latest",
        ])? {
            bail!("labelling namespace {namespace} failed");
        }
        Ok(())
    }

    /// `helm install kubemail charts/kubemail -n <namespace>` with this node's images, serving
    /// `watch`; returns once the operator's pod is Ready.
    pub fn install_chart(&self, namespace: &str, watch: &str) -> Result<()> {
        let images = &self.images;
        let out = self
            .plane
            .helm()
            .args(["install", "kubemail"])
            .arg(workspace_root().join("charts/kubemail"))
            .args(["-n", namespace, "--wait", "--timeout=180s"])
            .args(["--set", &format!("watchNamespaces={{{watch}}}")])
            .args([
                "--set",
                &format!("operator.image.repository={}", images.operator_repository),
            ])
            .args(["--set", &format!("operator.image.tag={}", images.tag)])
            .args([
                "--set",
                &format!("runtime.image.repository={}", images.runtime_repository),
            ])
            .args(["--set", &format!("runtime.image.tag={}", images.tag)])
            // Usage in `kubectl get mbx` follows deliveries within seconds here.
            .args(["--set", "operator.usageIntervalSeconds=2"])
            .output()?;
        if !out.status.success() {
            bail!(
                "helm install failed:\n{}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(())
    }

    /// Applies a manifest with kubectl (server-side).
    pub fn apply_manifest(&self, yaml: &str) -> Result<()> {
        let file = self.dir.join(format!("manifest-{}.yaml", random_suffix()));
        fs::write(&file, yaml)?;
        let out = self
            .plane
            .kubectl()
            .args(["apply", "--server-side", "--force-conflicts", "-f"])
            .arg(&file)
            .output()?;
        if !out.status.success() {
            bail!(
                "kubectl apply failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(())
    }

    /// Waits until `kubectl rollout status` says the workload is up to date and available.
    pub fn wait_rollout(&self, namespace: &str, workload: &str, timeout: Duration) -> Result<()> {
        let out = self
            .plane
            .kubectl()
            .args(["rollout", "status", "-n", namespace, workload])
            .arg(format!("--timeout={}s", timeout.as_secs()))
            .output()?;
        if !out.status.success() {
            bail!(
                "{workload} in {namespace} did not roll out: {}{}\n{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr),
                self.diagnostics(namespace)
            );
        }
        Ok(())
    }

    /// Pods, events and the kubelet's last lines, for a failure message.
    pub fn diagnostics(&self, namespace: &str) -> String {
        let run = |args: &[&str]| {
            self.plane
                .kubectl()
                .args(args)
                .output()
                .map(|o| String::from_utf8_lossy(&o.stdout).to_string())
                .unwrap_or_default()
        };
        // The components between a Ready pod and a Service that answers: their last errors
        // (klog's error lines start with E).
        let errors = |path: PathBuf| {
            let text = fs::read_to_string(&path).unwrap_or_default();
            let lines: Vec<&str> = text.lines().filter(|l| l.starts_with('E')).collect();
            format!(
                "last errors of {}:\n{}\n",
                path.display(),
                lines[lines.len().saturating_sub(15)..].join("\n")
            )
        };
        format!(
            "pods:\n{}\nendpoint slices:\n{}\nevents:\n{}\n{}{}{}",
            run(&["get", "pods", "-n", namespace, "-o", "wide"]),
            run(&["get", "endpointslices", "-n", namespace, "-o", "wide"]),
            run(&["get", "events", "-n", namespace, "--sort-by=.lastTimestamp"]),
            errors(self.dir.join("logs/kube-proxy.log")),
            errors(self.plane.dir().join("logs/kube-controller-manager.log")),
            self.kubelet.lock().expect("kubelet lock").log_tail()
        )
    }

    /// Stops the kubelet and starts it again (pods keep running meanwhile).
    pub fn restart_kubelet(&self) -> Result<()> {
        let holder_pid = fs::read_to_string(self.dir.join("holder.pid"))?;
        let mut kubelet = self.kubelet.lock().expect("kubelet lock");
        kubelet.stop();
        *kubelet = spawn_kubelet(holder_pid.trim(), &self.dir, Tools::get()?)?;
        Ok(())
    }

    /// Stops containerd and starts it again (containers keep running under their shims).
    pub fn restart_containerd(&self) -> Result<()> {
        let holder_pid = fs::read_to_string(self.dir.join("holder.pid"))?;
        let mut containerd = self.containerd.lock().expect("containerd lock");
        containerd.stop();
        *containerd = spawn_containerd(holder_pid.trim(), &self.dir)?;
        Ok(())
    }

    fn wait_node_ready(&self, timeout: Duration) -> Result<()> {
        let waited = wait_for(timeout, "the node to be Ready", || {
            let out = self
                .plane
                .kubectl()
                .args(["get", "node", NODE_NAME, "-o"])
                .arg("jsonpath={.status.conditions[?(@.type==\"Ready\")].status}")
                .output()?;
            Ok((String::from_utf8_lossy(&out.stdout).trim() == "True").then_some(()))
        });
        waited.with_context(|| self.diagnostics("kube-system"))
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        self.provisioner.store(true, Ordering::Relaxed);
        self.scheduler.stop();
        self.proxy.stop();
        self.kubelet.lock().map(|mut k| k.stop()).ok();
        self.containerd.lock().map(|mut c| c.stop()).ok();
        self.holder.stop();
        let _ = Command::new("sh")
            .arg(self.dir.join("teardown.sh"))
            .status();
    }
}

/// Joins the node's mount and network namespaces.
fn in_node_namespaces(holder_pid: &str, program: &Path, args: &[String]) -> Vec<String> {
    let mut all = vec![
        format!("--target={holder_pid}"),
        "--mount".into(),
        "--net".into(),
        "--".into(),
        program.to_string_lossy().to_string(),
    ];
    all.extend_from_slice(args);
    all
}

fn spawn_containerd(holder_pid: &str, dir: &Path) -> Result<Guarded> {
    let _ = fs::remove_file(dir.join("containerd.sock"));
    let containerd = Guarded::spawn(
        "containerd",
        Path::new("/usr/bin/nsenter"),
        &in_node_namespaces(
            holder_pid,
            Path::new("/usr/bin/containerd"),
            &[format!(
                "--config={}",
                dir.join("containerd.toml").display()
            )],
        ),
        &dir.join("logs/containerd.log"),
    )?;
    wait_for(Duration::from_secs(30), "containerd", || {
        let ok = Command::new("ctr")
            .arg(format!(
                "--address={}",
                dir.join("containerd.sock").display()
            ))
            .arg("version")
            .output()?
            .status
            .success();
        Ok(ok.then_some(()))
    })
    .with_context(|| containerd.log_tail())?;
    Ok(containerd)
}

fn spawn_kubelet(holder_pid: &str, dir: &Path, tools: &Tools) -> Result<Guarded> {
    Guarded::spawn(
        "kubelet",
        Path::new("/usr/bin/nsenter"),
        &in_node_namespaces(
            holder_pid,
            &tools.path("kubelet"),
            &[
                format!("--config={}", dir.join("kubelet.yaml").display()),
                format!("--kubeconfig={}", dir.join("kubelet.kubeconfig").display()),
                format!("--hostname-override={NODE_NAME}"),
                format!("--node-ip={NODE_IP}"),
                "--v=1".into(),
            ],
        ),
        &dir.join("logs/kubelet.log"),
    )
}

/// Assembles the images (e2e/scripts/build-images.sh) from the workspace's binaries.
fn build_images(out: &Path) -> Result<Images> {
    let tag = "dev".to_string();
    let script = workspace_root().join("e2e/scripts/build-images.sh");
    let result = Command::new("bash")
        .arg(&script)
        .arg(out)
        .env(
            "KUBEMAIL_OPERATOR_BIN",
            workspace_binary("kubemail-operator", "KUBEMAIL_OPERATOR_BIN")?,
        )
        .env(
            "KUBEMAIL_RUNTIME_BIN",
            workspace_binary("mail-runtime", "KUBEMAIL_RUNTIME_BIN")?,
        )
        .env("KUBEMAIL_TOOLS_BIN", Tools::get()?.bin_dir())
        .env("KUBEMAIL_IMAGE_TAG", &tag)
        .output()
        .with_context(|| format!("running {}", script.display()))?;
    if !result.status.success() {
        bail!(
            "{} failed:\n{}",
            script.display(),
            String::from_utf8_lossy(&result.stderr)
        );
    }
    Ok(Images {
        operator_repository: "localhost/kubemail/kubemail-operator".into(),
        runtime_repository: "localhost/kubemail/mail-runtime".into(),
        tag,
    })
}

fn import_images(dir: &Path) -> Result<()> {
    for entry in fs::read_dir(dir.join("images"))? {
        let path = entry?.path();
        if path.extension().is_none_or(|e| e != "tar") {
            continue;
        }
        let out = Command::new("ctr")
            .arg(format!(
                "--address={}",
                dir.join("containerd.sock").display()
            ))
            .args(["-n", "k8s.io", "images", "import"])
            .arg(&path)
            .output()?;
        if !out.status.success() {
            bail!(
                "importing {} into containerd failed: {}",
                path.display(),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        let _ = fs::remove_file(&path);
    }
    Ok(())
}

fn run(program: &str, args: &[&str]) -> Result<()> {
    let out = Command::new(program).args(args).output()?;
    if !out.status.success() {
        bail!(
            "{program} {} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(())
}

/// The node's network: a namespace with a veth pair inside it, the node's address on one end and
/// a default route through a gateway that does not exist (the kubelet and kube-proxy pick the
/// node's address from it). Nothing connects it to the host's network.
fn create_network(netns: &str) -> Result<()> {
    run("ip", &["netns", "add", netns])?;
    let ip = |args: &[&str]| {
        let mut all = vec!["-n", netns];
        all.extend_from_slice(args);
        run("ip", &all)
    };
    ip(&["link", "set", "lo", "up"])?;
    ip(&[
        "link",
        "add",
        "node0",
        "type",
        "veth",
        "peer",
        "name",
        "node0-peer",
    ])?;
    ip(&["addr", "add", &format!("{NODE_IP}/24"), "dev", "node0"])?;
    ip(&["link", "set", "node0", "up"])?;
    ip(&["link", "set", "node0-peer", "up"])?;
    ip(&[
        "route",
        "add",
        "default",
        "via",
        "10.250.0.1",
        "dev",
        "node0",
        "onlink",
    ])?;
    for sysctl in [
        "net.ipv4.ip_forward=1",
        "net.bridge.bridge-nf-call-iptables=1",
        "net.ipv4.conf.all.route_localnet=1",
    ] {
        run(
            "ip",
            &["netns", "exec", netns, "sysctl", "-q", "-w", sysctl],
        )?;
    }
    Ok(())
}

/// The kubelet's cgroup root in every cgroup v1 hierarchy (cpuset needs its CPUs and memory
/// nodes copied from the parent before anything can join).
fn create_cgroups(name: &str) -> Result<()> {
    for entry in fs::read_dir("/sys/fs/cgroup")? {
        let hierarchy = entry?.path();
        if !hierarchy.join("cgroup.procs").exists() {
            continue;
        }
        let dir = hierarchy.join(name);
        fs::create_dir_all(&dir)?;
        for file in ["cpuset.cpus", "cpuset.mems"] {
            if let Ok(value) = fs::read_to_string(hierarchy.join(file)) {
                fs::write(dir.join(file), value.trim())?;
            }
        }
    }
    Ok(())
}

fn node_dir(id: &str) -> PathBuf {
    std::env::temp_dir().join(format!("{DIR_PREFIX}{id}"))
}

/// A file of `e2e/node/` with the node `id`'s names filled in.
fn render_node_file(template: &str, id: &str) -> String {
    template
        .replace("{{DIR}}", &node_dir(id).to_string_lossy())
        .replace("{{NETNS}}", &format!("kubemail-e2e-{id}"))
        .replace("{{CGROUP}}", &format!("kubemail-{id}"))
        .replace("{{NODE_IP}}", NODE_IP)
        .replace("{{NODE_NAME}}", NODE_NAME)
}

/// What this harness needs of the machine, checked before anything starts.
fn check_host() -> Result<()> {
    if Path::new("/sys/fs/cgroup/cgroup.controllers").exists() {
        bail!(
            "this machine mounts cgroup v2 only; the test node runs containerd 1.6 and the kubelet \
             with cgroup v1 hierarchies (cgroupfs driver), as this project's machines have"
        );
    }
    if !Path::new("/proc/sys/net/bridge").exists() {
        let _ = Command::new("modprobe").arg("br_netfilter").status();
        if !Path::new("/proc/sys/net/bridge").exists() {
            bail!(
                "the br_netfilter kernel module is not loaded and could not be loaded: \
                 kube-proxy's Service rules need it for traffic between pods on the node's bridge"
            );
        }
    }
    Ok(())
}

/// Removes the nodes of earlier test binaries that are no longer running. Only directories this
/// harness made (root's, writable by nobody else, named as it names them) are considered, and
/// their teardown is rendered afresh from the template, never run from the directory.
fn remove_stale_nodes() {
    let Ok(entries) = fs::read_dir(std::env::temp_dir()) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(id) = name.to_str().and_then(|n| n.strip_prefix(DIR_PREFIX)) else {
            continue;
        };
        let Some((pid, suffix)) = id.split_once('-') else {
            continue;
        };
        let Ok(pid) = pid.parse::<u32>() else {
            continue;
        };
        if suffix.len() != 8 || !suffix.bytes().all(|b| b.is_ascii_hexdigit()) {
            continue;
        }
        let ours = fs::symlink_metadata(entry.path()).is_ok_and(|m| {
            use std::os::unix::fs::MetadataExt;
            m.is_dir() && m.uid() == 0 && m.mode() & 0o022 == 0
        });
        if ours && !Path::new(&format!("/proc/{pid}")).exists() {
            let script = render_node_file(include_str!("../node/teardown.sh"), id);
            let _ = Command::new("sh").arg("-c").arg(script).status();
            let _ = fs::remove_dir_all(entry.path());
        }
    }
}

/// Polls `check` until it gives a value or `timeout` passes.
pub(crate) fn wait_for<T>(
    timeout: Duration,
    what: &str,
    mut check: impl FnMut() -> Result<Option<T>>,
) -> Result<T> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(value) = check()? {
            return Ok(value);
        }
        if Instant::now() > deadline {
            bail!("waited {timeout:?} for {what}");
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn is_root() -> bool {
    fs::metadata("/proc/self")
        .map(|m| std::os::unix::fs::MetadataExt::uid(&m) == 0)
        .unwrap_or(false)
}
