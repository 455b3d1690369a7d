//! The test control plane itself: it is a real one (versions, RBAC, admission, garbage
//! collection), it survives an API server restart, and tests can share it.
use std::{collections::BTreeMap, time::Duration};

use k8s_openapi::api::core::v1::{ConfigMap, Namespace};
use kube::{
    Api,
    api::{DeleteParams, ObjectMeta, PostParams},
};
use kubemail_e2e::{ControlPlane, TestNamespace, with_namespace};

#[tokio::test]
async fn kubectl_reports_the_pinned_release() {
    let out = ControlPlane::shared()
        .kubectl()
        .args(["version", "-o", "json"])
        .output()
        .expect("kubectl runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let version: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    let client = version["clientVersion"]["gitVersion"]
        .as_str()
        .unwrap_or_default();
    let server = version["serverVersion"]["gitVersion"]
        .as_str()
        .unwrap_or_default();
    assert!(
        client.starts_with("v1.") && !client.contains("master"),
        "{client}"
    );
    assert_eq!(
        client, server,
        "kubectl and kube-apiserver come from one release"
    );
}

#[tokio::test]
async fn namespaces_are_deleted_and_owned_objects_collected() {
    let plane = ControlPlane::shared();
    assert!(
        plane.has_controller_manager(),
        "kube-controller-manager should run beside the API server"
    );
    let client = plane.client().await.expect("client");
    let ns = TestNamespace::create(&client, "gc", BTreeMap::new())
        .await
        .expect("namespace");
    let maps: Api<ConfigMap> = Api::namespaced(client.clone(), &ns.name);
    let owner = maps
        .create(&PostParams::default(), &config_map("owner", None))
        .await
        .expect("owner");
    let uid = owner.metadata.uid.clone().expect("uid");
    maps.create(&PostParams::default(), &config_map("owned", Some(uid)))
        .await
        .expect("owned");
    maps.delete("owner", &DeleteParams::default())
        .await
        .expect("delete owner");
    wait_until(Duration::from_secs(30), || async {
        maps.get_opt("owned").await.expect("get").is_none()
    })
    .await
    .expect("the garbage collector removes an object whose owner is gone");

    ns.delete(&client).await.expect("delete namespace");
    let namespaces: Api<Namespace> = Api::all(client.clone());
    wait_until(Duration::from_secs(60), || async {
        namespaces.get_opt(&ns.name).await.expect("get").is_none()
    })
    .await
    .expect("a deleted namespace goes away");
}

#[tokio::test]
async fn objects_survive_an_api_server_restart() {
    // A disruptive test gets a control plane of its own, so the shared one stays up for others.
    let plane = ControlPlane::start().expect("a private control plane");
    let plane = &plane;
    let client = plane.client().await.expect("client");
    let test_client = client.clone();
    with_namespace(&client, "restart", |ns| async move {
        let maps: Api<ConfigMap> = Api::namespaced(test_client, &ns.name);
        maps.create(&PostParams::default(), &config_map("kept", None))
            .await
            .expect("create");
        plane.restart_apiserver().expect("kube-apiserver restarts");
        // The old client's connections are gone; a new one sees the object in etcd.
        let client = plane.client().await.expect("client");
        let maps: Api<ConfigMap> = Api::namespaced(client, &ns.name);
        assert!(maps.get_opt("kept").await.expect("get").is_some());
    })
    .await;
}

fn config_map(name: &str, owner_uid: Option<String>) -> ConfigMap {
    ConfigMap {
        metadata: ObjectMeta {
            name: Some(name.into()),
            owner_references: owner_uid.map(|uid| {
                vec![
                    k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference {
                        api_version: "v1".into(),
                        kind: "ConfigMap".into(),
                        name: "owner".into(),
                        uid,
                        ..Default::default()
                    },
                ]
            }),
            ..ObjectMeta::default()
        },
        ..ConfigMap::default()
    }
}

async fn wait_until<F, Fut>(timeout: Duration, mut check: F) -> Result<(), String>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    while tokio::time::Instant::now() < deadline {
        if check().await {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    Err(format!("not within {timeout:?}"))
}
