//! Storage for the test node: a small dynamic provisioner of hostPath PersistentVolumes, the way
//! local-path-provisioner does it. Every pending claim gets a volume of its size and access
//! modes, pre-bound to it, backed by a fresh directory on the node; a released volume is deleted
//! with its directory. Runs on its own thread for as long as the test binary.
use std::{
    collections::BTreeMap,
    fs,
    os::unix::fs::PermissionsExt,
    path::Path,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use anyhow::{Context, Result};
use k8s_openapi::api::core::v1::{
    HostPathVolumeSource, ObjectReference, PersistentVolume, PersistentVolumeClaim,
    PersistentVolumeSpec,
};
use kube::{
    Api, Client,
    api::{DeleteParams, ListParams, ObjectMeta, PostParams},
    config::{KubeConfigOptions, Kubeconfig},
};

use crate::control_plane::ControlPlane;

/// Starts provisioning volumes under `root`, until `stop` is set.
pub(crate) fn start(plane: &ControlPlane, root: &Path, stop: Arc<AtomicBool>) -> Result<()> {
    fs::create_dir_all(root)?;
    let kubeconfig = plane.kubeconfig().to_path_buf();
    let root = root.to_path_buf();
    std::thread::Builder::new()
        .name("pv-provisioner".into())
        .spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("a runtime for the provisioner");
            runtime.block_on(async move {
                // Each new error once (the API server restarts in the drills).
                let mut last_error = String::new();
                while !stop.load(Ordering::Relaxed) {
                    match provision_once(&kubeconfig, &root).await {
                        Ok(()) => last_error.clear(),
                        Err(err) => {
                            let err = format!("{err:#}");
                            if err != last_error && !stop.load(Ordering::Relaxed) {
                                eprintln!("kubemail-e2e: provisioner: {err}");
                            }
                            last_error = err;
                        }
                    }
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
            });
        })
        .context("starting the provisioner thread")?;
    Ok(())
}

async fn client(kubeconfig: &Path) -> Result<Client> {
    let config = kube::Config::from_custom_kubeconfig(
        Kubeconfig::read_from(kubeconfig)?,
        &KubeConfigOptions::default(),
    )
    .await?;
    Ok(Client::try_from(config)?)
}

async fn provision_once(kubeconfig: &Path, root: &Path) -> Result<()> {
    let client = client(kubeconfig).await?;
    let claims: Api<PersistentVolumeClaim> = Api::all(client.clone());
    let volumes: Api<PersistentVolume> = Api::all(client.clone());
    let existing: BTreeMap<String, PersistentVolume> = volumes
        .list(&ListParams::default())
        .await?
        .into_iter()
        .filter_map(|v| Some((v.metadata.name.clone()?, v)))
        .collect();
    for claim in claims.list(&ListParams::default()).await? {
        let pending = claim.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Pending");
        let spec = claim.spec.clone().unwrap_or_default();
        let (Some(namespace), Some(name), Some(uid)) = (
            claim.metadata.namespace.clone(),
            claim.metadata.name.clone(),
            claim.metadata.uid.clone(),
        ) else {
            continue;
        };
        if !pending || spec.volume_name.is_some() {
            continue;
        }
        let pv_name = format!("pvc-{uid}");
        if existing.contains_key(&pv_name) {
            continue;
        }
        let dir = root.join(&pv_name);
        fs::create_dir_all(&dir)?;
        // fsGroup is not applied to hostPath volumes: open to the pod's user, whoever it is.
        fs::set_permissions(&dir, fs::Permissions::from_mode(0o777))?;
        let capacity = spec
            .resources
            .as_ref()
            .and_then(|r| r.requests.clone())
            .unwrap_or_default()
            .into_iter()
            .filter(|(k, _)| k == "storage")
            .collect();
        let volume = PersistentVolume {
            metadata: ObjectMeta {
                name: Some(pv_name),
                labels: Some(BTreeMap::from([(
                    "kubemail.io/test-provisioner".to_string(),
                    "hostpath".to_string(),
                )])),
                ..ObjectMeta::default()
            },
            spec: Some(PersistentVolumeSpec {
                capacity: Some(capacity),
                access_modes: spec.access_modes.clone(),
                storage_class_name: spec.storage_class_name.clone(),
                persistent_volume_reclaim_policy: Some("Delete".into()),
                volume_mode: spec.volume_mode.clone(),
                host_path: Some(HostPathVolumeSource {
                    path: dir.to_string_lossy().to_string(),
                    type_: Some("Directory".into()),
                }),
                claim_ref: Some(ObjectReference {
                    api_version: Some("v1".into()),
                    kind: Some("PersistentVolumeClaim".into()),
                    namespace: Some(namespace),
                    name: Some(name),
                    uid: Some(uid),
                    ..ObjectReference::default()
                }),
                ..PersistentVolumeSpec::default()
            }),
            status: None,
        };
        volumes.create(&PostParams::default(), &volume).await?;
    }
    // Volumes whose claim is gone: deleted with their data, as a dynamic provisioner does.
    for (name, volume) in existing {
        let released = matches!(
            volume.status.as_ref().and_then(|s| s.phase.as_deref()),
            Some("Released") | Some("Failed")
        );
        let ours = volume
            .metadata
            .labels
            .as_ref()
            .is_some_and(|l| l.contains_key("kubemail.io/test-provisioner"));
        if released && ours {
            volumes.delete(&name, &DeleteParams::default()).await?;
            let _ = fs::remove_dir_all(root.join(&name));
        }
    }
    Ok(())
}
