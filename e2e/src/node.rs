//! Playing the node for one pod, and nothing more: no pods run on this machine, so tests and
//! the local command start the runtime the way a kubelet would, from the Deployment the
//! operator rendered. Secret volumes are materialised from the API server at their mount paths
//! (kept up to date with the kubelet's atomic `..data` symlink swap), the PVC and emptyDirs are
//! directories, the container runs in its own mount namespace with exactly its args and env,
//! as the pod's user and group, with read-only mounts where the spec says so. Whatever this
//! has to paper over would be a bug in the rendered pod spec.
use std::{
    collections::BTreeMap,
    os::unix::fs::PermissionsExt,
    path::{Path, PathBuf},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use anyhow::{Context, Result, bail};
use k8s_openapi::api::{apps::v1::Deployment, core::v1::Secret};
use kube::{Api, Client};

use crate::process::Guarded;

/// A running pod.
#[derive(Debug)]
pub struct PodRunner {
    process: Guarded,
    stop: Arc<AtomicBool>,
    /// Where the pod's volumes live on this machine.
    pub dir: PathBuf,
    /// The directory backing the pod's PersistentVolumeClaim (the mail).
    pub data_dir: Option<PathBuf>,
}

/// A Secret's data by key.
type SecretData = BTreeMap<String, Vec<u8>>;

struct SecretVolume {
    secret: String,
    dir: PathBuf,
    optional: bool,
    mode: u32,
    /// `items`: only these keys, each at its path.
    items: Option<Vec<(String, String)>>,
}

/// Writes a Secret's data the way the kubelet does: files in `..<n>/`, `..data` pointing at the
/// newest, and one symlink per key through `..data`.
fn publish(
    volume: &SecretVolume,
    generation: u32,
    data: &BTreeMap<String, Vec<u8>>,
    gid: u32,
) -> Result<()> {
    // `items` projects chosen keys to chosen paths; other keys are left out.
    let projected: BTreeMap<String, Vec<u8>>;
    let data = match &volume.items {
        Some(items) => {
            projected = items
                .iter()
                .filter_map(|(key, path)| Some((path.clone(), data.get(key)?.clone())))
                .collect();
            &projected
        }
        None => data,
    };
    let version = format!("..{generation}");
    let version_dir = volume.dir.join(&version);
    std::fs::create_dir_all(&version_dir)?;
    for (key, value) in data {
        let file = version_dir.join(key);
        std::fs::write(&file, value)?;
        std::os::unix::fs::chown(&file, Some(0), Some(gid))?;
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(volume.mode))?;
        let link = volume.dir.join(key);
        if std::fs::symlink_metadata(&link).is_err() {
            std::os::unix::fs::symlink(format!("..data/{key}"), &link)?;
        }
    }
    std::os::unix::fs::chown(&version_dir, Some(0), Some(gid))?;
    let tmp = volume.dir.join("..data_tmp");
    let _ = std::fs::remove_file(&tmp);
    std::os::unix::fs::symlink(&version, &tmp)?;
    std::fs::rename(&tmp, volume.dir.join("..data"))?;
    Ok(())
}

async fn secret_data(api: &Api<Secret>, name: &str) -> Result<Option<SecretData>> {
    Ok(api.get_opt(name).await?.map(|s| {
        s.data
            .unwrap_or_default()
            .into_iter()
            .map(|(k, v)| (k, v.0))
            .collect()
    }))
}

impl PodRunner {
    /// Starts the first container of `deployment`'s pod template. `binary` stands in for the
    /// image: it is mounted at the path the container's probes and entrypoint use.
    pub async fn start(
        client: &Client,
        namespace: &str,
        deployment: &Deployment,
        binary: &Path,
        entrypoint: &str,
        dir: &Path,
    ) -> Result<PodRunner> {
        if nix_euid() != 0 {
            bail!("playing the node needs root (mount namespaces and the pod's user)");
        }
        let pod = deployment
            .spec
            .template
            .spec
            .clone()
            .context("the Deployment has no pod spec")?;
        let container = pod.containers.first().context("the pod has no container")?;
        let security = pod.security_context.clone().unwrap_or_default();
        let uid = security.run_as_user.unwrap_or(0) as u32;
        let gid = security.run_as_group.unwrap_or(0) as u32;
        let fs_group = security.fs_group.map(|g| g as u32).unwrap_or(gid);
        std::fs::create_dir_all(dir)?;
        let secrets: Api<Secret> = Api::namespaced(client.clone(), namespace);

        let mut volume_dirs = BTreeMap::new();
        let mut secret_volumes = Vec::new();
        let mut data_dir = None;
        for volume in pod.volumes.clone().unwrap_or_default() {
            let host = dir.join("volumes").join(&volume.name);
            std::fs::create_dir_all(&host)?;
            if let Some(secret) = &volume.secret {
                let sv = SecretVolume {
                    secret: secret
                        .secret_name
                        .clone()
                        .context("a secret volume without a name")?,
                    dir: host.clone(),
                    optional: secret.optional.unwrap_or(false),
                    mode: secret.default_mode.unwrap_or(0o644) as u32,
                    items: secret.items.as_ref().map(|items| {
                        items
                            .iter()
                            .map(|i| (i.key.clone(), i.path.clone()))
                            .collect()
                    }),
                };
                match secret_data(&secrets, &sv.secret).await? {
                    Some(data) => publish(&sv, 1, &data, fs_group)?,
                    None if sv.optional => publish(&sv, 1, &BTreeMap::new(), fs_group)?,
                    None => bail!(
                        "Secret {} (volume {}) does not exist: the pod could not start",
                        sv.secret,
                        volume.name
                    ),
                }
                secret_volumes.push(sv);
            } else if volume.persistent_volume_claim.is_some() || volume.empty_dir.is_some() {
                std::os::unix::fs::chown(&host, Some(uid), Some(fs_group))?;
                std::fs::set_permissions(&host, std::fs::Permissions::from_mode(0o2770))?;
                if volume.persistent_volume_claim.is_some() {
                    data_dir = Some(host.clone());
                }
            } else {
                bail!(
                    "volume {} has a kind this harness does not play",
                    volume.name
                );
            }
            volume_dirs.insert(volume.name.clone(), host);
        }

        // The container's mounts, in its own mount namespace.
        let mut script = String::from("set -e\n");
        let quote = |s: &str| format!("'{}'", s.replace('\'', "'\\''"));
        for mount in container.volume_mounts.clone().unwrap_or_default() {
            let host = volume_dirs
                .get(&mount.name)
                .with_context(|| format!("mount of unknown volume {}", mount.name))?;
            let target = quote(&mount.mount_path);
            script.push_str(&format!(
                "mkdir -p {target}\nmount --bind {} {target}\n",
                quote(&host.to_string_lossy())
            ));
            if mount.read_only == Some(true) {
                script.push_str(&format!("mount -o remount,bind,ro {target}\n"));
            }
        }
        // The image's binary at the entrypoint's path, on a tmpfs private to this mount
        // namespace, so nothing is left on the machine.
        script.push_str(&format!(
            "mkdir -p {dir}\nmount -t tmpfs -o size=1m,mode=0755 kubemail-image {dir}\ntouch {ep}\nmount --bind {bin} {ep}\n",
            dir = quote(&Path::new(entrypoint).parent().unwrap_or(Path::new("/")).to_string_lossy()),
            ep = quote(entrypoint),
            bin = quote(&binary.to_string_lossy()),
        ));
        // The container's command, or the image's entrypoint, then its args.
        let mut command = container
            .command
            .clone()
            .unwrap_or_else(|| vec![entrypoint.to_string()]);
        command.extend(container.args.clone().unwrap_or_default());
        let env: Vec<String> = container
            .env
            .clone()
            .unwrap_or_default()
            .into_iter()
            .filter_map(|e| Some(format!("{}={}", e.name, e.value?)))
            .collect();
        script.push_str(&format!(
            "exec setpriv --reuid={uid} --regid={gid} --groups={fs_group} -- env -i PATH=/usr/local/bin:/usr/bin:/bin RUST_LOG=info {} {}\n",
            env.iter().map(|e| quote(e)).collect::<Vec<_>>().join(" "),
            command.iter().map(|c| quote(c)).collect::<Vec<_>>().join(" "),
        ));
        std::fs::write(dir.join("pod.sh"), &script)?;
        let process = Guarded::spawn(
            "mail-runtime pod",
            Path::new("/usr/bin/unshare"),
            &[
                "--mount".into(),
                "--propagation".into(),
                "private".into(),
                "sh".into(),
                dir.join("pod.sh").to_string_lossy().to_string(),
            ],
            &dir.join("pod.log"),
        )?;

        // Keep the Secret volumes current, as the kubelet does.
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        tokio::spawn(async move {
            let mut generations: BTreeMap<String, (u32, Option<SecretData>)> = BTreeMap::new();
            while !flag.load(Ordering::Relaxed) {
                for sv in &secret_volumes {
                    let Ok(data) = secret_data(&secrets, &sv.secret).await else {
                        continue;
                    };
                    let entry = generations
                        .entry(sv.secret.clone() + &sv.dir.to_string_lossy())
                        .or_insert((1, None));
                    if entry.1.is_none() {
                        entry.1 = data.clone();
                        continue;
                    }
                    if data != entry.1 {
                        entry.0 += 1;
                        if publish(sv, entry.0, &data.clone().unwrap_or_default(), fs_group).is_ok()
                        {
                            entry.1 = data;
                        }
                    }
                }
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        });
        Ok(PodRunner {
            process,
            stop,
            dir: dir.to_path_buf(),
            data_dir,
        })
    }

    /// Whether the container still runs.
    pub fn running(&mut self) -> bool {
        self.process.running()
    }

    /// The container's log so far (last lines).
    pub fn log_tail(&self) -> String {
        self.process.log_tail()
    }

    /// Stops the container.
    pub fn stop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        self.process.stop();
    }
}

impl Drop for PodRunner {
    fn drop(&mut self) {
        self.stop();
    }
}

fn nix_euid() -> u32 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("Uid:"))
                .and_then(|rest| rest.split_whitespace().nth(1).map(str::to_string))
        })
        .and_then(|u| u.parse().ok())
        .unwrap_or(u32::MAX)
}
