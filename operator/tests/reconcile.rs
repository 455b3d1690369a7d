//! The operator on a real control plane: what it creates, what it changes (and does not),
//! how it reports missing things and recovers, and what it leaves behind on deletion.
use std::{
    collections::BTreeMap,
    process::{Child, Command, Stdio},
    time::Duration,
};

use k8s_openapi::api::{
    apps::v1::Deployment,
    core::v1::{PersistentVolumeClaim, Pod, Secret, Service, ServiceAccount},
};
use kube::{
    Api, Client, ResourceExt,
    api::{DeleteParams, Patch, PatchParams, PostParams},
};
use kubemail_crds::{MailDomain, Mailbox};
use kubemail_e2e::{ControlPlane, TestNamespace, install_crds};
use serde_json::json;

/// The operator binary, watching one namespace, stopped when dropped.
struct Operator(Child);

impl Operator {
    fn start(plane: &ControlPlane, namespace: &str) -> Operator {
        Operator::start_in(plane, &[namespace])
    }

    fn start_in(plane: &ControlPlane, namespaces: &[&str]) -> Operator {
        Operator::start_with(plane, namespaces, "off", &[])
    }

    fn start_with(
        plane: &ControlPlane,
        namespaces: &[&str],
        health: &str,
        extra: &[&str],
    ) -> Operator {
        let child = Command::new(env!("CARGO_BIN_EXE_kubemail-operator"))
            .args(namespaces.iter().flat_map(|ns| ["--namespace", ns]))
            .args(["--health-addr", health])
            .args(extra)
            .args([
                "--probe-timeout",
                "1",
                "--runtime-image",
                "kubemail/mail-runtime:test",
            ])
            .env("KUBECONFIG", plane.kubeconfig())
            // `OPERATOR_LOG=kube_runtime=debug,...` when debugging a test.
            .env(
                "RUST_LOG",
                std::env::var("OPERATOR_LOG").unwrap_or_else(|_| "warn".into()),
            )
            .stdin(Stdio::null())
            .spawn()
            .expect("the operator starts");
        Operator(child)
    }
}

impl Drop for Operator {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

async fn setup(labels: BTreeMap<String, String>) -> (Client, TestNamespace) {
    let client = ControlPlane::shared().client().await.expect("client");
    install_crds(&client).await.expect("CRDs");
    let ns = TestNamespace::create(&client, "operator", labels)
        .await
        .expect("namespace");
    (client, ns)
}

async fn apply(client: &Client, ns: &str, manifest: serde_json::Value) {
    let out = {
        let mut cmd = ControlPlane::shared().kubectl();
        cmd.args([
            "apply",
            "--server-side",
            "--force-conflicts",
            "-n",
            ns,
            "-f",
            "-",
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
        let mut child = cmd.spawn().expect("kubectl");
        use std::io::Write;
        child
            .stdin
            .take()
            .expect("stdin")
            .write_all(manifest.to_string().as_bytes())
            .expect("write");
        child.wait_with_output().expect("kubectl")
    };
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let _ = client;
}

fn domain() -> serde_json::Value {
    json!({"apiVersion": "kubemail.io/v1alpha1", "kind": "MailDomain",
           "metadata": {"name": "example"},
           "spec": {"domain": "example.test", "relayPolicyRef": {"name": "apps"}}})
}

fn mailbox(name: &str) -> serde_json::Value {
    json!({"apiVersion": "kubemail.io/v1alpha1", "kind": "Mailbox",
           "metadata": {"name": name},
           "spec": {"address": format!("{name}@example.test"), "passwordSecretRef": {"name": format!("{name}-password")}}})
}

fn password(name: &str, value: &str) -> serde_json::Value {
    json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": format!("{name}-password")},
           "stringData": {"password": value}})
}

fn relay() -> serde_json::Value {
    json!({"apiVersion": "kubemail.io/v1alpha1", "kind": "RelayPolicy",
           "metadata": {"name": "apps"}, "spec": {"allow": {"clientCIDRs": ["10.42.0.0/16"]}}})
}

async fn eventually<T, F, Fut>(what: &str, check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    eventually_within(what, Duration::from_secs(60), check).await
}

async fn eventually_within<T, F, Fut>(what: &str, timeout: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{what}: not within {timeout:?}"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

async fn config(client: &Client, ns: &str) -> Option<(String, kubemail_config::RawConfig, String)> {
    let secret = Api::<Secret>::namespaced(client.clone(), ns)
        .get_opt("example-runtime-config")
        .await
        .ok()??;
    let yaml = String::from_utf8(secret.data.as_ref()?.get("runtime.yaml")?.0.clone()).ok()?;
    let raw = serde_yaml_ng::from_str(&yaml).ok()?;
    Some((yaml, raw, secret.resource_version().unwrap_or_default()))
}

fn addresses(raw: &kubemail_config::RawConfig) -> Vec<String> {
    raw.mailboxes.iter().map(|m| m.address.clone()).collect()
}

/// The reason and message of a Mailbox's condition, once one `matches`.
async fn mailbox_condition_where(
    client: &Client,
    ns: &str,
    name: &str,
    matches: impl Fn(&k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition) -> bool,
) -> Option<(String, String)> {
    let mbx = Api::<Mailbox>::namespaced(client.clone(), ns)
        .get_opt(name)
        .await
        .ok()??;
    let c = mbx.status?.conditions.into_iter().find(|c| matches(c))?;
    Some((c.reason, c.message))
}

async fn condition(client: &Client, ns: &str, name: &str, type_: &str) -> Option<(String, String)> {
    let mbx = Api::<Mailbox>::namespaced(client.clone(), ns)
        .get_opt(name)
        .await
        .ok()??;
    mbx.status?
        .conditions
        .into_iter()
        .find(|c| c.type_ == type_)
        .map(|c| (c.status, c.reason))
}

#[tokio::test]
async fn a_domain_with_mailboxes_is_rendered_changed_and_cleaned_up() {
    let (client, ns) = setup(BTreeMap::new()).await;
    let ns = ns.name;
    let _operator = Operator::start(ControlPlane::shared(), &ns);
    for manifest in [
        relay(),
        domain(),
        password("alice", "alice-pw"),
        mailbox("alice"),
        password(
            "bob",
            "$2b$04$0123456789012345678901uJ2eQ0R8vCgkSIfTpIGVDSzlPs6Y3xW",
        ),
        mailbox("bob"),
    ] {
        apply(&client, &ns, manifest).await;
    }

    // Every object appears with the expected fields.
    let (yaml, raw, _) = eventually("the config holds both mailboxes", || async {
        config(&client, &ns)
            .await
            .filter(|(_, raw, _)| raw.mailboxes.len() == 2)
    })
    .await;
    assert_eq!(addresses(&raw), ["alice@example.test", "bob@example.test"]);
    assert!(
        !yaml.contains("alice-pw"),
        "a plaintext password reached the rendered config"
    );
    assert!(raw.mailboxes[0].password_hash.starts_with("$argon2id$"));
    assert!(
        raw.mailboxes[1].password_hash.starts_with("$2b$"),
        "a given hash is used as it is"
    );
    assert_eq!(raw.relay.client_networks, ["10.42.0.0/16"]);
    kubemail_config::Config::parse(&yaml).expect("the runtime accepts the rendered config");

    // The config Secret is applied before the Deployment (and the Services between them): the
    // Deployment follows within the same reconcile, not necessarily before the check above.
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), &ns);
    let deployment = eventually("the Deployment", || async {
        deployments.get_opt("example-mail").await.ok().flatten()
    })
    .await;
    let pod = deployment.spec.template.spec.clone().expect("pod spec");
    let container = &pod.containers[0];
    assert_eq!(
        container.image.as_deref(),
        Some("kubemail/mail-runtime:test")
    );
    let sc = container
        .security_context
        .clone()
        .expect("security context");
    assert_eq!(sc.read_only_root_filesystem, Some(true));
    assert_eq!(sc.allow_privilege_escalation, Some(false));
    assert_eq!(
        deployment.spec.strategy.and_then(|s| s.type_).as_deref(),
        Some("Recreate")
    );
    let service = Api::<Service>::namespaced(client.clone(), &ns)
        .get("example-mail")
        .await
        .expect("Service");
    let ports: Vec<i32> = service
        .spec
        .and_then(|s| s.ports)
        .unwrap_or_default()
        .iter()
        .map(|p| p.port)
        .collect();
    assert_eq!(
        ports,
        [25, 587, 465, 143, 993, 110, 995, 4190],
        "the mail Service has no HTTP port"
    );
    // /metrics and /readyz are on their own ClusterIP Service, owned by the domain.
    let metrics = Api::<Service>::namespaced(client.clone(), &ns)
        .get("example-metrics")
        .await
        .expect("metrics Service");
    assert_eq!(
        metrics
            .metadata
            .owner_references
            .as_ref()
            .and_then(|o| o.first())
            .map(|o| o.kind.as_str()),
        Some("MailDomain")
    );
    let spec = metrics.spec.expect("spec");
    assert_eq!(spec.type_.as_deref(), Some("ClusterIP"));
    let ports: Vec<(Option<String>, i32)> = spec
        .ports
        .unwrap_or_default()
        .into_iter()
        .map(|p| (p.name, p.port))
        .collect();
    assert_eq!(ports, [(Some("http".to_string()), 8080)]);
    Api::<ServiceAccount>::namespaced(client.clone(), &ns)
        .get("example-mail")
        .await
        .expect("ServiceAccount");
    let pvc = Api::<PersistentVolumeClaim>::namespaced(client.clone(), &ns)
        .get("example-data")
        .await
        .expect("PVC");
    assert!(
        pvc.metadata.owner_references.is_none(),
        "retained mail must not be garbage-collected"
    );
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &ns);
    let tls = secrets
        .get("example-tls")
        .await
        .expect("self-signed TLS Secret");
    assert_eq!(tls.type_.as_deref(), Some("kubernetes.io/tls"));
    let dkim = secrets.get("example-dkim").await.expect("DKIM Secret");

    // Status: DNS records with the real DKIM key, mailbox count, conditions.
    let md = eventually("the MailDomain status", || async {
        Api::<MailDomain>::namespaced(client.clone(), &ns)
            .get("example")
            .await
            .ok()
            .filter(|m| m.status.as_ref().is_some_and(|s| s.mailboxes == 2))
    })
    .await;
    let status = md.status.expect("status");
    assert_eq!(status.observed_generation, md.metadata.generation);
    let dkim_record = status
        .dns_records
        .iter()
        .find(|r| r.purpose == "DKIM")
        .expect("DKIM record");
    let pem = String::from_utf8(dkim.data.expect("data")["private.pem"].0.clone()).expect("pem");
    assert_eq!(
        Some(dkim_record.value.clone()),
        kubemail_operator::keys::dkim_dns_value(&pem)
    );
    assert!(
        status
            .dns_records
            .iter()
            .any(|r| r.type_ == "MX" && r.value == "10 mail.example.test.")
    );
    let ready = status
        .conditions
        .iter()
        .find(|c| c.type_ == "Ready")
        .expect("Ready");
    assert_eq!(
        ready.status, "False",
        "no runtime runs here, so the probes fail"
    );
    let smtp = status
        .conditions
        .iter()
        .find(|c| c.type_ == "SMTPReady")
        .expect("SMTPReady");
    assert_eq!(smtp.reason, "ProbeFailed");
    eventually("alice finds her domain", || async {
        condition(&client, &ns, "alice", "DomainFound")
            .await
            .filter(|c| c.0 == "True")
    })
    .await;

    // Nothing changed: no writes (resourceVersions stay) across more than one resync.
    let versions = || async {
        let (_, _, config_rv) = config(&client, &ns).await.expect("config");
        let d = deployments
            .get("example-mail")
            .await
            .expect("d")
            .resource_version();
        let m = Api::<MailDomain>::namespaced(client.clone(), &ns)
            .get("example")
            .await
            .expect("md")
            .resource_version();
        let a = Api::<Mailbox>::namespaced(client.clone(), &ns)
            .get("alice")
            .await
            .expect("mbx")
            .resource_version();
        (config_rv, d, m, a)
    };
    let before = versions().await;
    let status_before = Api::<MailDomain>::namespaced(client.clone(), &ns)
        .get("example")
        .await
        .expect("md")
        .status;
    tokio::time::sleep(Duration::from_secs(13)).await;
    let status_after = Api::<MailDomain>::namespaced(client.clone(), &ns)
        .get("example")
        .await
        .expect("md")
        .status;
    assert_eq!(status_after, status_before);
    assert_eq!(
        versions().await,
        before,
        "an unchanged domain was written to"
    );

    // Someone edits the Deployment by hand: the operator puts its image back (an apply it
    // skips while nothing changed is made again once the object moved).
    let mut out = ControlPlane::shared().kubectl();
    let out = out
        .args(["-n", &ns, "set", "image", "deployment/example-mail"])
        .arg("mail-runtime=example.invalid/hand-edited:1")
        .output()
        .expect("kubectl");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    eventually("the operator restores the runtime image", || async {
        deployments
            .get("example-mail")
            .await
            .ok()
            .and_then(|d| d.spec.template.spec)
            .and_then(|pod| pod.containers.into_iter().next()?.image)
            .filter(|image| image == "kubemail/mail-runtime:test")
    })
    .await;

    // Someone makes the metrics Service public: the operator makes it ClusterIP again.
    let mut out = ControlPlane::shared().kubectl();
    let out = out
        .args([
            "-n",
            &ns,
            "patch",
            "service",
            "example-metrics",
            "--type=merge",
        ])
        .args(["-p", r#"{"spec":{"type":"LoadBalancer"}}"#])
        .output()
        .expect("kubectl");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    eventually(
        "the operator makes the metrics Service ClusterIP again",
        || async {
            Api::<Service>::namespaced(client.clone(), &ns)
                .get("example-metrics")
                .await
                .ok()
                .and_then(|s| s.spec?.type_)
                .filter(|t| t == "ClusterIP")
        },
    )
    .await;

    // A changed mailbox changes the config Secret and nothing else: the Deployment's spec (what
    // the operator writes; the controller-manager keeps writing its status after the rollouts
    // above) stays as it is, so the runtime is not restarted.
    let deployment_before = deployments.get("example-mail").await.expect("d");
    Api::<Mailbox>::namespaced(client.clone(), &ns)
        .patch(
            "alice",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"suspended": true}})),
        )
        .await
        .expect("suspend alice");
    eventually("alice is suspended in the config", || async {
        config(&client, &ns).await.filter(|(_, raw, _)| {
            raw.mailboxes
                .iter()
                .any(|m| m.address == "alice@example.test" && m.suspended)
        })
    })
    .await;
    let deployment_after = deployments.get("example-mail").await.expect("d");
    assert_eq!(
        (deployment_after.metadata.generation, deployment_after.spec),
        (
            deployment_before.metadata.generation,
            deployment_before.spec
        ),
        "a mailbox change restarted the runtime"
    );

    // A missing Secret gives a condition, and the mailbox recovers when it appears.
    apply(&client, &ns, mailbox("carol")).await;
    let missing = eventually("carol's Secret is reported missing", || async {
        condition(&client, &ns, "carol", "SecretFound")
            .await
            .filter(|c| c.0 == "False")
    })
    .await;
    assert_eq!(missing.1, "SecretNotFound");
    // kstatus: a Secret that may still come is awaited (Reconciling), not a dead end.
    let reconciling = eventually("carol is Reconciling", || async {
        condition(&client, &ns, "carol", "Reconciling").await
    })
    .await;
    assert_eq!(
        reconciling,
        ("True".to_string(), "SecretNotFound".to_string())
    );
    assert_eq!(condition(&client, &ns, "carol", "Stalled").await, None);
    // A Secret without the key needs a change by the user: Stalled, at once.
    apply(
        &client,
        &ns,
        json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "carol-password"},
               "stringData": {"passwd": "carol-pw"}}),
    )
    .await;
    let stalled = eventually("carol is Stalled", || async {
        condition(&client, &ns, "carol", "Stalled").await
    })
    .await;
    assert_eq!(stalled, ("True".to_string(), "KeyNotFound".to_string()));
    assert_eq!(condition(&client, &ns, "carol", "Reconciling").await, None);
    apply(&client, &ns, password("carol", "carol-pw")).await;
    eventually("carol joins the config", || async {
        config(&client, &ns)
            .await
            .filter(|(_, raw, _)| addresses(raw).contains(&"carol@example.test".to_string()))
    })
    .await;
    eventually("carol's Secret is found", || async {
        condition(&client, &ns, "carol", "SecretFound")
            .await
            .filter(|c| c.0 == "True")
    })
    .await;
    // Recovered from the user's side: no longer Stalled; with no runtime running here, she
    // waits for it to serve her (Reconciling). Ready clears both: the end-to-end test.
    eventually("carol is no longer Stalled", || async {
        let reconciling = condition(&client, &ns, "carol", "Reconciling").await?;
        let stalled = condition(&client, &ns, "carol", "Stalled").await;
        (reconciling.0 == "True" && stalled.is_none()).then_some(())
    })
    .await;

    // A deleted Mailbox leaves the config.
    Api::<Mailbox>::namespaced(client.clone(), &ns)
        .delete("bob", &DeleteParams::default())
        .await
        .expect("delete bob");
    eventually("bob leaves the config", || async {
        config(&client, &ns)
            .await
            .filter(|(_, raw, _)| !addresses(raw).contains(&"bob@example.test".to_string()))
    })
    .await;

    // A deleted MailDomain takes its runtime with it and leaves the mail (the PVC).
    Api::<MailDomain>::namespaced(client.clone(), &ns)
        .delete("example", &DeleteParams::default())
        .await
        .expect("delete domain");
    if ControlPlane::shared().has_controller_manager() {
        eventually("the Deployment is garbage-collected", || async {
            deployments
                .get_opt("example-mail")
                .await
                .expect("get")
                .is_none()
                .then_some(())
        })
        .await;
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(
        Api::<PersistentVolumeClaim>::namespaced(client.clone(), &ns)
            .get_opt("example-data")
            .await
            .expect("get")
            .is_some(),
        "the mail volume was deleted with the domain"
    );
}

#[tokio::test]
async fn the_rendered_pod_is_admitted_under_the_restricted_pod_security_standard() {
    let labels = BTreeMap::from([(
        "pod-security.kubernetes.io/enforce".to_string(),
        "restricted".to_string(),
    )]);
    let (client, ns) = setup(labels).await;
    let ns = ns.name;
    let _operator = Operator::start(ControlPlane::shared(), &ns);
    apply(&client, &ns, domain()).await;
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), &ns);
    let deployment = eventually("the Deployment", || async {
        deployments.get_opt("example-mail").await.ok().flatten()
    })
    .await;
    let template = deployment.spec.template;
    let pod = Pod {
        metadata: kube::api::ObjectMeta {
            name: Some("admission-check".into()),
            labels: template.metadata.and_then(|m| m.labels),
            ..Default::default()
        },
        spec: template.spec,
        ..Pod::default()
    };
    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns);
    match pods.create(&PostParams::default(), &pod).await {
        Ok(_) => {}
        Err(err) => panic!("the restricted namespace refused the runtime's pod: {err}"),
    }
    // And a pod that breaks the standard is refused there, so the check above means something.
    let mut bad = pod.clone();
    bad.metadata.name = Some("privileged".into());
    if let Some(spec) = bad.spec.as_mut() {
        spec.containers[0].security_context = None;
    }
    assert!(pods.create(&PostParams::default(), &bad).await.is_err());
}

#[tokio::test]
async fn a_restarted_operator_converges() {
    let (client, ns) = setup(BTreeMap::new()).await;
    let ns = ns.name;
    let operator = Operator::start(ControlPlane::shared(), &ns);
    for manifest in [domain(), password("alice", "pw"), mailbox("alice")] {
        apply(&client, &ns, manifest).await;
    }
    eventually("alice in the config", || async {
        config(&client, &ns)
            .await
            .filter(|(_, raw, _)| raw.mailboxes.len() == 1)
    })
    .await;
    drop(operator);
    // Changes made while it is down are picked up when it is back.
    apply(&client, &ns, password("dave", "pw")).await;
    apply(&client, &ns, mailbox("dave")).await;
    let _operator = Operator::start(ControlPlane::shared(), &ns);
    eventually("dave in the config after the restart", || async {
        config(&client, &ns)
            .await
            .filter(|(_, raw, _)| raw.mailboxes.len() == 2)
    })
    .await;
}

#[tokio::test]
async fn one_operator_serves_several_namespaces_and_no_others() {
    let (client, first) = setup(BTreeMap::new()).await;
    let second = TestNamespace::create(&client, "operator", BTreeMap::new())
        .await
        .expect("ns");
    let ignored = TestNamespace::create(&client, "operator", BTreeMap::new())
        .await
        .expect("ns");
    let _operator = Operator::start_in(ControlPlane::shared(), &[&first.name, &second.name]);
    for ns in [&first.name, &second.name, &ignored.name] {
        apply(&client, ns, domain()).await;
    }
    for ns in [&first.name, &second.name] {
        eventually("a config in each served namespace", || async {
            config(&client, ns).await
        })
        .await;
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(
        config(&client, &ignored.name).await.is_none(),
        "a namespace not served was written to"
    );
}

#[tokio::test]
async fn the_operator_converges_after_the_api_server_restarts() {
    // A private control plane: restarting the shared one would disturb other tests.
    let plane = ControlPlane::start().expect("a private control plane");
    let client = plane.client().await.expect("client");
    install_crds(&client).await.expect("CRDs");
    let ns = TestNamespace::create(&client, "restart", BTreeMap::new())
        .await
        .expect("ns")
        .name;
    let kubectl_apply = |manifest: serde_json::Value| {
        let mut child = plane
            .kubectl()
            .args(["apply", "--server-side", "-n", &ns, "-f", "-"])
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .spawn()
            .expect("kubectl");
        use std::io::Write;
        child
            .stdin
            .take()
            .expect("stdin")
            .write_all(manifest.to_string().as_bytes())
            .expect("write");
        assert!(child.wait().expect("kubectl").success());
    };
    let _operator = Operator::start(&plane, &ns);
    kubectl_apply(domain());
    kubectl_apply(password("alice", "pw"));
    kubectl_apply(mailbox("alice"));
    eventually("alice in the config", || async {
        config(&client, &ns)
            .await
            .filter(|(_, raw, _)| raw.mailboxes.len() == 1)
    })
    .await;
    plane.restart_apiserver().expect("kube-apiserver restarts");
    let client = plane.client().await.expect("client");
    kubectl_apply(password("erin", "pw"));
    kubectl_apply(mailbox("erin"));
    // The operator's watches reconnect with exponential backoff (up to 30 s a step in
    // kube-runtime) and then relist; on a loaded machine that takes more than a minute.
    eventually_within(
        "erin in the config after the restart",
        Duration::from_secs(180),
        || async {
            config(&client, &ns)
                .await
                .filter(|(_, raw, _)| raw.mailboxes.len() == 2)
        },
    )
    .await;
}

#[tokio::test]
async fn only_the_lease_holder_reconciles_and_a_follower_takes_over() {
    use k8s_openapi::api::coordination::v1::Lease;
    let (client, ns) = setup(BTreeMap::new()).await;
    let ns = ns.name;
    let start = |plane: &ControlPlane| {
        Operator::start_with(plane, &[&ns], "off", &["--leader-election", &ns])
    };
    let leader = start(ControlPlane::shared());
    let leases: Api<Lease> = Api::namespaced(client.clone(), &ns);
    let holder = || async {
        leases
            .get_opt("kubemail-operator")
            .await
            .ok()
            .flatten()
            .and_then(|l| l.spec?.holder_identity)
    };
    let first = eventually("a leader", holder).await;
    let follower = start(ControlPlane::shared());
    apply(&client, &ns, domain()).await;
    eventually("the leader reconciles", || async {
        config(&client, &ns).await
    })
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        holder().await.as_ref(),
        Some(&first),
        "the follower took the Lease from a live leader"
    );

    // The leader dies; the follower takes over within the Lease's duration and reconciles.
    drop(leader);
    apply(&client, &ns, password("fay", "pw")).await;
    apply(&client, &ns, mailbox("fay")).await;
    eventually("the follower serves fay", || async {
        config(&client, &ns)
            .await
            .filter(|(_, raw, _)| raw.mailboxes.len() == 1)
    })
    .await;
    let second = holder().await.expect("a holder");
    assert_ne!(second, first);

    // A leader stopped the way Kubernetes stops pods (SIGTERM) gives the Lease up: a new
    // standby takes it within a few seconds, not after the Lease's 15 s.
    let _standby = start(ControlPlane::shared());
    tokio::time::sleep(Duration::from_secs(2)).await;
    let stopped = std::time::Instant::now();
    let status = Command::new("kill")
        .args(["-TERM", &follower.0.id().to_string()])
        .status()
        .expect("kill");
    assert!(status.success());
    let third = eventually("a standby takes the released Lease", || async {
        holder().await.filter(|h| *h != second)
    })
    .await;
    assert!(
        stopped.elapsed() < Duration::from_secs(8),
        "{third} took the Lease {:?} after SIGTERM",
        stopped.elapsed()
    );
}

#[tokio::test]
async fn pods_chosen_by_a_relay_policy_relay_by_their_addresses() {
    let (client, ns) = setup(BTreeMap::new()).await;
    let ns = ns.name;
    let _operator = Operator::start(ControlPlane::shared(), &ns);
    apply(&client, &ns, domain()).await;
    apply(
        &client,
        &ns,
        json!({"apiVersion": "kubemail.io/v1alpha1", "kind": "RelayPolicy",
               "metadata": {"name": "apps"},
               "spec": {"allow": {"podSelector": {"matchLabels": {"kubemail.io/relay": "allowed"}}}}}),
    )
    .await;
    // Pods as a kubelet would report them: nothing schedules them here, so their status (the
    // address) is written the way the kubelet writes it, through the status subresource.
    let pods = Api::<Pod>::namespaced(client.clone(), &ns);
    for (name, label, ip) in [
        ("shop", "allowed", "10.42.1.7"),
        ("other", "denied", "10.42.1.8"),
    ] {
        apply(
            &client,
            &ns,
            json!({"apiVersion": "v1", "kind": "Pod",
                   "metadata": {"name": name, "labels": {"kubemail.io/relay": label}},
                   "spec": {"containers": [{"name": "app", "image": "example/app"}]}}),
        )
        .await;
        pods.patch_status(
            name,
            &PatchParams::default(),
            &Patch::Merge(json!({"status": {"podIP": ip, "podIPs": [{"ip": ip}]}})),
        )
        .await
        .expect("pod status");
    }
    eventually("the chosen pod's address in the relay networks", || async {
        config(&client, &ns)
            .await
            .filter(|(_, raw, _)| raw.relay.client_networks == ["10.42.1.7/32"])
    })
    .await;
    // It goes away with the pod.
    pods.delete("shop", &DeleteParams::default().grace_period(0))
        .await
        .expect("delete");
    eventually("the address gone with the pod", || async {
        config(&client, &ns)
            .await
            .filter(|(_, raw, _)| raw.relay.client_networks.is_empty())
    })
    .await;
}

#[tokio::test]
async fn condition_changes_show_as_events_in_kubectl_describe() {
    let (client, ns) = setup(BTreeMap::new()).await;
    let ns = ns.name;
    let _operator = Operator::start(ControlPlane::shared(), &ns);
    // The Mailbox comes first: its domain and Secret are missing (Warning events), then appear.
    apply(&client, &ns, mailbox("erin")).await;
    eventually("a Warning about the missing Secret", || async {
        let out = ControlPlane::shared()
            .kubectl()
            .args(["describe", "mailbox", "erin", "-n", &ns])
            .output()
            .ok()?;
        let text = String::from_utf8_lossy(&out.stdout).to_string();
        text.contains("Warning  SecretFoundFalse").then_some(())
    })
    .await;
    for manifest in [domain(), password("erin", "pw")] {
        apply(&client, &ns, manifest).await;
    }
    eventually("Normal events once it is found", || async {
        let out = ControlPlane::shared()
            .kubectl()
            .args(["describe", "mailbox", "erin", "-n", &ns])
            .output()
            .ok()?;
        let text = String::from_utf8_lossy(&out.stdout).to_string();
        (text.contains("Normal   SecretFound") && text.contains("Normal   DomainFound"))
            .then_some(())
    })
    .await;
}

async fn domain_condition(client: &Client, ns: &str, type_: &str) -> Option<(String, String)> {
    let md = Api::<MailDomain>::namespaced(client.clone(), ns)
        .get_opt("example")
        .await
        .ok()??;
    md.status?
        .conditions
        .into_iter()
        .find(|c| c.type_ == type_)
        .map(|c| (c.status, c.reason))
}

#[tokio::test]
async fn hostile_mailboxes_cannot_stop_the_domain_and_ten_thousand_aliases_are_served() {
    let (client, ns) = setup(BTreeMap::new()).await;
    let ns = ns.name;
    let mut operator = Operator::start(ControlPlane::shared(), &ns);
    let mut domain = domain();
    domain["spec"]["catchAll"] = json!("postmaster@example.test");
    let mut alice = mailbox("alice");
    alice["spec"]["aliases"] = json!(["info@example.test", "alice@elsewhere.test"]);
    // Unicode tricks where the API allows free text: a right-to-left override and a wide name.
    alice["spec"]["displayName"] = json!("\u{202e}ecilA \u{FF21}lice \u{1F4E8}");
    let mut bob = mailbox("bob");
    // Alice's alias, alice's address and one of its own.
    bob["spec"]["aliases"] = json!([
        "INFO@example.test",
        "alice@example.test",
        "bob2@example.test"
    ]);
    let mut items = vec![
        relay(),
        domain,
        password("alice", "alice-pw"),
        alice,
        password("bob", "bob-pw"),
    ];
    // 40 Mailboxes with 250 aliases each (the most one Mailbox may have): 10,000 aliases.
    for i in 0..40 {
        let name = format!("m{i:02}");
        let mut m = mailbox(&name);
        m["spec"]["aliases"] = (0..250)
            .map(|j| format!("{name}-alias{j}@example.test"))
            .collect();
        items.push(password(
            &name,
            "$2b$04$0123456789012345678901uJ2eQ0R8vCgkSIfTpIGVDSzlPs6Y3xW",
        ));
        items.push(m);
    }
    apply(
        &client,
        &ns,
        json!({"apiVersion": "v1", "kind": "List", "items": items}),
    )
    .await;
    // Bob comes later than alice: the older Mailbox keeps what they share.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    apply(&client, &ns, bob).await;

    let (yaml, raw, _) = eventually("the config holds all 42 mailboxes", || async {
        config(&client, &ns)
            .await
            .filter(|(_, raw, _)| raw.mailboxes.len() == 42)
    })
    .await;
    kubemail_config::Config::parse(&yaml).expect("the runtime accepts the rendered config");
    let of = |address: &str| {
        raw.mailboxes
            .iter()
            .find(|m| m.address == address)
            .unwrap_or_else(|| panic!("{address} is served"))
    };
    assert_eq!(of("alice@example.test").aliases, ["info@example.test"]);
    assert_eq!(of("bob@example.test").aliases, ["bob2@example.test"]);
    let aliases: usize = raw.mailboxes.iter().map(|m| m.aliases.len()).sum();
    assert_eq!(aliases, 10_002);
    assert_eq!(
        raw.domains[0].catch_all, None,
        "no Mailbox has the catch-all address"
    );
    println!(
        "42 mailboxes, {aliases} aliases: the rendered config is {} KiB",
        yaml.len() / 1024
    );

    // Each owner of a problem reads it in its status.
    let (status, reason) = eventually("bob reports its refused aliases", || async {
        condition(&client, &ns, "bob", "AliasesAccepted").await
    })
    .await;
    assert_eq!(
        (status.as_str(), reason.as_str()),
        ("False", "AliasRefused")
    );
    let (status, _) = eventually("alice reports its foreign alias", || async {
        condition(&client, &ns, "alice", "AliasesAccepted").await
    })
    .await;
    assert_eq!(status, "False");
    let (status, reason) = eventually("the domain reports the missing catch-all", || async {
        domain_condition(&client, &ns, "CatchAllFound").await
    })
    .await;
    assert_eq!(
        (status.as_str(), reason.as_str()),
        ("False", "CatchAllNotFound")
    );
    assert_eq!(domain_condition(&client, &ns, "ConfigValid").await, None);

    // The catch-all's Mailbox appears: it is rendered and the condition turns.
    apply(&client, &ns, password("postmaster", "pm-pw")).await;
    apply(&client, &ns, mailbox("postmaster")).await;
    eventually("the catch-all is rendered", || async {
        config(&client, &ns).await.filter(|(_, raw, _)| {
            raw.domains[0].catch_all.as_deref() == Some("postmaster@example.test")
        })
    })
    .await;
    eventually("CatchAllFound turns True", || async {
        domain_condition(&client, &ns, "CatchAllFound")
            .await
            .filter(|(s, _)| s == "True")
    })
    .await;
    // Bob drops the colliding aliases: its condition goes away.
    let mut bob = mailbox("bob");
    bob["spec"]["aliases"] = json!(["bob2@example.test"]);
    apply(&client, &ns, bob).await;
    eventually("bob's condition clears", || async {
        condition(&client, &ns, "bob", "AliasesAccepted")
            .await
            .is_none()
            .then_some(())
    })
    .await;
    assert!(
        operator.0.try_wait().expect("status").is_none(),
        "the operator is still running"
    );
}

async fn relay_condition(client: &Client, ns: &str, type_: &str) -> Option<(String, String)> {
    let rp = Api::<kubemail_crds::RelayPolicy>::namespaced(client.clone(), ns)
        .get_opt("apps")
        .await
        .ok()??;
    rp.status?
        .conditions
        .into_iter()
        .find(|c| c.type_ == type_)
        .map(|c| (c.status, c.reason))
}

#[tokio::test]
async fn a_smarthost_is_probed_for_real_and_a_dead_one_is_reported() {
    let postfix = kubemail_e2e::Peers::start().expect("Postfix starts");
    let (client, ns) = setup(BTreeMap::new()).await;
    let ns = ns.name;
    let _operator = Operator::start(ControlPlane::shared(), &ns);
    apply(
        &client,
        &ns,
        json!({"apiVersion": "v1", "kind": "Secret",
               "metadata": {"name": "provider-login",
                            "labels": {"kubemail.io/smarthost-credentials": "true"}},
               "stringData": {"username": "relay", "password": "relay-pw"}}),
    )
    .await;
    let policy = |port: u64| {
        json!({"apiVersion": "kubemail.io/v1alpha1", "kind": "RelayPolicy",
               "metadata": {"name": "apps"},
               "spec": {"route": {"mode": "Smarthost", "smarthost": {
                   "host": "127.0.0.1", "port": port, "tls": "StartTLS",
                   "credentialsSecretRef": {"name": "provider-login"}}}}})
    };
    apply(&client, &ns, policy(u64::from(postfix.port("smtp")))).await;
    for (type_, reason) in [
        ("SmarthostReachable", "ProbePassed"),
        ("CredentialsFound", "Ready"),
        ("Ready", "Ready"),
    ] {
        let (status, got) = eventually(&format!("{type_} against Postfix"), || async {
            relay_condition(&client, &ns, type_)
                .await
                .filter(|(s, _)| s == "True")
        })
        .await;
        assert_eq!((status.as_str(), got.as_str()), ("True", reason));
    }

    // Postfix stops answering: the probe says so.
    drop(postfix);
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a port")
        .port();
    apply(&client, &ns, policy(u64::from(closed))).await;
    let (_, reason) = eventually("SmarthostReachable turns False", || async {
        relay_condition(&client, &ns, "SmarthostReachable")
            .await
            .filter(|(s, _)| s == "False")
    })
    .await;
    assert_eq!(reason, "ProbeFailed");
}

/// A RelayPolicy's credentials Secret is used (mounted, rendered, sent to the smarthost) only
/// when the Secret says it is meant for that: any Secret of the namespace could be named.
#[tokio::test]
async fn smarthost_credentials_are_used_only_from_a_labelled_secret() {
    let (client, ns) = setup(BTreeMap::new()).await;
    let ns = ns.name;
    let _operator = Operator::start(ControlPlane::shared(), &ns);
    let login = |labels: serde_json::Value| {
        json!({"apiVersion": "v1", "kind": "Secret",
               "metadata": {"name": "provider-login", "labels": labels},
               "stringData": {"username": "relay", "password": "relay-pw"}})
    };
    apply(&client, &ns, login(json!({}))).await;
    apply(&client, &ns, domain()).await;
    // The smarthost need not answer: the credentials' condition does not depend on it.
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a port")
        .port();
    apply(
        &client,
        &ns,
        json!({"apiVersion": "kubemail.io/v1alpha1", "kind": "RelayPolicy",
               "metadata": {"name": "apps"},
               "spec": {"route": {"mode": "Smarthost", "smarthost": {
                   "host": "127.0.0.1", "port": closed, "tls": "StartTLS",
                   "credentialsSecretRef": {"name": "provider-login"}}}}}),
    )
    .await;
    let (status, reason) = eventually("CredentialsFound without the label", || async {
        relay_condition(&client, &ns, "CredentialsFound").await
    })
    .await;
    assert_eq!(
        (status.as_str(), reason.as_str()),
        ("False", "SecretNotLabelled")
    );
    let rp = Api::<kubemail_crds::RelayPolicy>::namespaced(client.clone(), &ns)
        .get("apps")
        .await
        .expect("RelayPolicy");
    let message = rp
        .status
        .and_then(|s| {
            s.conditions
                .into_iter()
                .find(|c| c.type_ == "CredentialsFound")
        })
        .map(|c| c.message)
        .unwrap_or_default();
    assert!(
        message.contains("kubemail.io/smarthost-credentials"),
        "the message says which label to add: {message}"
    );
    // Nothing of the Secret reaches the runtime: no volume, no credential files in the config.
    let smarthost_volume = |d: &Deployment| {
        d.spec
            .template
            .spec
            .as_ref()
            .and_then(|p| p.volumes.as_ref())
            .is_some_and(|v| v.iter().any(|v| v.name == "smarthost"))
    };
    let deployments = Api::<Deployment>::namespaced(client.clone(), &ns);
    let raw = eventually("the config routes to the smarthost", || async {
        config(&client, &ns)
            .await
            .map(|(_, raw, _)| raw)
            .filter(|raw| raw.relay.route.smarthost.is_some())
    })
    .await;
    let smarthost = raw.relay.route.smarthost.expect("smarthost");
    assert!(smarthost.username_file.is_none() && smarthost.password_file.is_none());
    let deployment = deployments.get("example-mail").await.expect("Deployment");
    assert!(
        !smarthost_volume(&deployment),
        "an unlabelled Secret is mounted"
    );

    // Labelled: used.
    apply(
        &client,
        &ns,
        login(json!({"kubemail.io/smarthost-credentials": "true"})),
    )
    .await;
    let (_, reason) = eventually("CredentialsFound with the label", || async {
        relay_condition(&client, &ns, "CredentialsFound")
            .await
            .filter(|(s, _)| s == "True")
    })
    .await;
    assert_eq!(reason, "Ready");
    eventually("the credentials in the config", || async {
        config(&client, &ns).await.filter(|(_, raw, _)| {
            raw.relay
                .route
                .smarthost
                .as_ref()
                .is_some_and(|h| h.username_file.is_some() && h.password_file.is_some())
        })
    })
    .await;
    eventually("the credentials mounted", || async {
        deployments
            .get_opt("example-mail")
            .await
            .ok()
            .flatten()
            .filter(smarthost_volume)
    })
    .await;
}

/// App passwords reach the runtime as hashes with their protocols; one whose Secret is missing
/// is named in the Mailbox's status and left out while the rest serve; removing one from the
/// spec takes its hash out of the config (the runtime then ends its sessions).
#[tokio::test]
async fn app_passwords_are_served_reported_and_revoked() {
    let (client, ns) = setup(BTreeMap::new()).await;
    let ns = ns.name;
    let _operator = Operator::start(ControlPlane::shared(), &ns);
    let mut gina = mailbox("gina");
    gina["spec"]["appPasswords"] = json!([
        {"name": "phone", "secretRef": {"name": "gina-phone"}, "protocols": ["IMAP"]},
        {"name": "tablet", "secretRef": {"name": "gina-tablet", "key": "pw"}},
    ]);
    let phone = json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "gina-phone"},
                       "stringData": {"password": "phone-secret"}});
    for manifest in [
        domain(),
        password("gina", "own-secret"),
        phone,
        gina.clone(),
    ] {
        apply(&client, &ns, manifest).await;
    }
    // The tablet's Secret is missing: named, and the phone is served meanwhile.
    let (_, message) = eventually("the missing tablet Secret reported", || async {
        mailbox_condition_where(&client, &ns, "gina", |c| {
            c.type_ == "AppPasswordsFound" && c.status == "False"
        })
        .await
    })
    .await;
    assert!(
        message.contains("tablet") && !message.contains("phone"),
        "{message}"
    );
    let gina_of = |raw: &kubemail_config::RawConfig| -> Option<kubemail_config::MailboxConfig> {
        raw.mailboxes
            .iter()
            .find(|m| m.address == "gina@example.test")
            .cloned()
    };
    let served =
        |raw: &kubemail_config::RawConfig| -> Vec<(String, Vec<kubemail_config::LoginProtocol>)> {
            gina_of(raw)
                .map(|m| {
                    m.app_passwords
                        .iter()
                        .map(|a| (a.name.clone(), a.protocols.clone()))
                        .collect()
                })
                .unwrap_or_default()
        };
    use kubemail_config::LoginProtocol::{Imap, Pop3, Smtp};
    let raw = eventually("the phone served", || async {
        let (_, raw, _) = config(&client, &ns).await?;
        (served(&raw) == [("phone".to_string(), vec![Imap])]).then_some(raw)
    })
    .await;
    // Only hashes, each verifying its own password.
    let gina_config = gina_of(&raw).expect("gina");
    let phone_hash = &gina_config.app_passwords[0].password_hash;
    assert!(!raw_contains_plaintext(&raw, "phone-secret"));
    let parsed = kubemail_config::password::PasswordHash::parse(phone_hash).expect("a hash");
    assert!(parsed.verify(b"phone-secret") && !parsed.verify(b"own-secret"));

    // The tablet's Secret appears: served too, with every protocol.
    apply(
        &client,
        &ns,
        json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "gina-tablet"},
               "stringData": {"pw": "tablet-secret"}}),
    )
    .await;
    eventually("the tablet served", || async {
        let (_, raw, _) = config(&client, &ns).await?;
        (served(&raw).len() == 2
            && served(&raw)[1] == ("tablet".to_string(), vec![Smtp, Imap, Pop3]))
            .then_some(())
    })
    .await;
    eventually("AppPasswordsFound", || async {
        let (status, _) = condition(&client, &ns, "gina", "AppPasswordsFound").await?;
        (status == "True").then_some(())
    })
    .await;

    // The phone is revoked: its hash leaves the config, the tablet's and the own stay.
    gina["spec"]["appPasswords"] =
        json!([{"name": "tablet", "secretRef": {"name": "gina-tablet", "key": "pw"}}]);
    apply(&client, &ns, gina).await;
    let raw = eventually("the phone revoked", || async {
        let (_, raw, _) = config(&client, &ns).await?;
        (served(&raw)
            .iter()
            .map(|(n, _)| n.as_str())
            .collect::<Vec<_>>()
            == ["tablet"])
        .then_some(raw)
    })
    .await;
    let gina_config = gina_of(&raw).expect("gina");
    let own =
        kubemail_config::password::PasswordHash::parse(&gina_config.password_hash).expect("a hash");
    assert!(own.verify(b"own-secret"), "the own password stays");
    assert!(!raw_contains_plaintext(&raw, "tablet-secret"));
}

fn raw_contains_plaintext(raw: &kubemail_config::RawConfig, secret: &str) -> bool {
    serde_yaml_ng::to_string(raw)
        .expect("yaml")
        .contains(secret)
}

/// Mailbox usage from a real runtime (`mail-runtime serve` on a loopback address of its own,
/// serving the config
/// the operator rendered, with its HTTP and SMTP listeners there) reaches each Mailbox's
/// status, and the writes are bounded: one per Mailbox for its first figures, and none while
/// the usage interval has not passed, however much mail arrives.
/// A loopback address of this run's own: another test's runtime (or one a killed run left
/// behind) never answers for this one.
fn own_loopback() -> String {
    format!(
        "127.{}.{}.{}",
        std::process::id() % 200 + 20,
        std::process::id() / 200 % 250 + 1,
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos())
            % 250
            + 1
    )
}

/// Writes the rendered config as the runtime reads it on this machine: a certificate of its
/// own, its files under `dir`, no sender checks over the network, only SMTP and HTTP, on
/// `host`. Writing it again (after the operator rendered a new revision) is a live reload.
fn write_runtime_config(raw: &mut kubemail_config::RawConfig, dir: &std::path::Path, host: &str) {
    let (cert, key) = (dir.join("tls.crt"), dir.join("tls.key"));
    if !cert.exists() {
        let made = Command::new("openssl")
            .args([
                "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
            ])
            .args(["-subj", "/CN=mail.example.test", "-keyout"])
            .arg(&key)
            .arg("-out")
            .arg(&cert)
            .output()
            .expect("openssl");
        assert!(made.status.success());
    }
    raw.tls.cert_file = cert;
    raw.tls.key_file = key;
    raw.storage.path = dir.join("data");
    raw.inbound.verify = false;
    raw.dkim = None;
    raw.listeners.retain(|l| {
        matches!(
            l.protocol,
            kubemail_config::ListenerProtocol::Smtp | kubemail_config::ListenerProtocol::Http
        )
    });
    for l in &mut raw.listeners {
        let port = l.address.rsplit_once(':').map(|(_, p)| p.to_string());
        l.address = format!("{host}:{}", port.expect("a port"));
    }
    // Written beside and renamed, as the kubelet swaps a Secret volume's files: the runtime
    // never reads half a file.
    let file = dir.join("runtime.yaml");
    let next = dir.join("runtime.yaml.next");
    std::fs::write(&next, serde_yaml_ng::to_string(&raw).expect("yaml")).expect("write");
    std::fs::rename(&next, &file).expect("rename");
}

/// The runtime serving the rendered config on `host` (see [`write_runtime_config`]), killed
/// when dropped.
fn serve_on_loopback(
    raw: &mut kubemail_config::RawConfig,
    dir: &std::path::Path,
    host: &str,
) -> Operator {
    write_runtime_config(raw, dir, host);
    serve_config(dir)
}

/// `mail-runtime serve` on the config written in `dir`, killed when dropped.
fn serve_config(dir: &std::path::Path) -> Operator {
    let runtime = kubemail_e2e::workspace_binary("mail-runtime", "KUBEMAIL_RUNTIME_BIN")
        .expect("the runtime binary (cargo build --bins)");
    Operator(
        Command::new(runtime)
            .args(["serve", "--config"])
            .arg(dir.join("runtime.yaml"))
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .spawn()
            .expect("mail-runtime serve"),
    )
}

#[tokio::test]
async fn usage_reaches_status_in_bounded_writes() {
    use futures::StreamExt;
    use kube::runtime::{WatchStreamExt, watcher};
    const COUNT: usize = 250;
    let host = own_loopback();
    let host = host.as_str();
    let (client, ns) = setup(BTreeMap::new()).await;
    let ns = ns.name;
    let _operator = Operator::start_with(
        ControlPlane::shared(),
        &[&ns],
        "off",
        &["--probe-host-override", host, "--usage-interval", "600"],
    );
    apply(
        &client,
        &ns,
        json!({"apiVersion": "kubemail.io/v1alpha1", "kind": "MailDomain",
               "metadata": {"name": "example"},
               "spec": {"domain": "example.test", "dkim": {"enabled": false}}}),
    )
    .await;
    // One hash for all: the operator serves a hash as it is, without hashing 250 passwords.
    let hash = kubemail_config::password::hash_password("pw");
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &ns);
    let mailboxes: Api<Mailbox> = Api::namespaced(client.clone(), &ns);
    for n in 0..COUNT {
        let secret: Secret = serde_json::from_value(json!({
            "metadata": {"name": format!("u{n}-password")}, "stringData": {"password": hash}}))
        .expect("secret");
        secrets
            .create(&PostParams::default(), &secret)
            .await
            .expect("create");
        let mailbox: Mailbox = serde_json::from_value(json!({
            "apiVersion": "kubemail.io/v1alpha1", "kind": "Mailbox",
            "metadata": {"name": format!("u{n}")},
            "spec": {"address": format!("u{n}@example.test"),
                     "passwordSecretRef": {"name": format!("u{n}-password")}, "quota": "1Mi"}}))
        .expect("mailbox");
        mailboxes
            .create(&PostParams::default(), &mailbox)
            .await
            .expect("create");
    }
    let (_, mut raw, _) = eventually("all mailboxes rendered", || async {
        let found = config(&client, &ns).await?;
        (found.1.mailboxes.len() == COUNT).then_some(found)
    })
    .await;

    // The runtime, as the pod would run it, on this machine's loopback.
    let dir = tempfile::tempdir().expect("tmp");
    let served = serve_on_loopback(&mut raw, dir.path(), host);

    // Every write of a usage, as a watch sees it.
    let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::<(Instant, String)>::new()));
    let recorder = {
        let seen = seen.clone();
        let stream = watcher(mailboxes.clone(), watcher::Config::default()).applied_objects();
        tokio::spawn(async move {
            let mut last: BTreeMap<String, Option<kubemail_crds::mailbox::MailboxUsage>> =
                BTreeMap::new();
            let mut stream = std::pin::pin!(stream);
            while let Some(Ok(m)) = stream.next().await {
                let usage = m.status.as_ref().and_then(|s| s.usage.clone());
                let name = m.name_any();
                if usage.is_some() && last.get(&name) != Some(&usage) {
                    seen.lock()
                        .expect("seen")
                        .push((Instant::now(), name.clone()));
                }
                last.insert(name, usage);
            }
        })
    };
    use std::time::Instant;
    eventually_within(
        "every Mailbox's first figures",
        Duration::from_secs(120),
        || async {
            let list = mailboxes.list(&Default::default()).await.ok()?;
            list.items
                .iter()
                .all(|m| {
                    m.status
                        .as_ref()
                        .and_then(|s| s.usage.as_ref())
                        .is_some_and(|u| u.messages == 0)
                })
                .then_some(())
        },
    )
    .await;
    // Bounded: one write per Mailbox for its first figures, in passes of at most 200.
    let first = seen.lock().expect("seen").clone();
    let mut passes: Vec<usize> = Vec::new();
    for (i, (t, _)) in first.iter().enumerate() {
        match i.checked_sub(1).map(|p| t.duration_since(first[p].0)) {
            Some(gap) if gap < Duration::from_secs(1) => *passes.last_mut().expect("a pass") += 1,
            _ => passes.push(1),
        }
    }
    println!(
        "first figures of {COUNT} Mailboxes: {} writes in passes of {passes:?}",
        first.len()
    );
    // One write per Mailbox; the bursts are printed, not asserted: each write also wakes the
    // domain's reconcile, so how passes fall in time depends on the machine's load (each
    // pass's cap of 200 is `usage`'s unit test).
    assert_eq!(first.len(), COUNT, "one write per Mailbox");

    // Mail for everyone (Python's smtplib, one session): the figures change in the runtime at
    // once, and status follows only after the usage interval (600 s here): no writes now.
    let script = "import smtplib, sys\n\
s = smtplib.SMTP(sys.argv[1], 2525, timeout=30)\n\
for n in range(int(sys.argv[2])):\n    s.sendmail('a@example.net', ['u%d@example.test' % n], b'Subject: hi\\r\\n\\r\\nhello\\r\\n')\n\
s.quit()\n";
    let sent = Command::new("python3")
        .args(["-c", script, host, &COUNT.to_string()])
        .output()
        .expect("python3");
    assert!(
        sent.status.success(),
        "{}",
        String::from_utf8_lossy(&sent.stderr)
    );
    let before = seen.lock().expect("seen").len();
    // The runtime counts each delivery (its count is at most a second old).
    eventually_within(
        "the runtime counts every delivery",
        Duration::from_secs(10),
        || async {
            let out = Command::new("curl")
                .args([
                    "-sf",
                    "--max-time",
                    "5",
                    &format!("http://{host}:8080/usage"),
                ])
                .output()
                .ok()?;
            let usage: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
            let delivered = usage["mailboxes"]
                .as_array()
                .map_or(0, |l| l.iter().filter(|m| m["messages"] == 1).count());
            (delivered == COUNT).then_some(())
        },
    )
    .await;
    // Three passes of the operator (3 s apart while the domain is new).
    tokio::time::sleep(Duration::from_secs(10)).await;
    let after = seen.lock().expect("seen").len();
    println!(
        "after {COUNT} deliveries: {} usage writes in 10 s",
        after - before
    );
    assert_eq!(after, before, "usage written before the interval passed");
    recorder.abort();
    drop(served);
}

#[tokio::test]
async fn sieve_scripts_and_auto_replies_are_rendered_and_a_broken_script_is_reported() {
    let (client, ns) = setup(BTreeMap::new()).await;
    let ns = ns.name;
    let _operator = Operator::start(ControlPlane::shared(), &ns);
    let mut hana = mailbox("hana");
    hana["spec"]["sieve"] = json!({"configMapRef": {"name": "hana-rules"}});
    hana["spec"]["autoReply"] = json!({
        "subject": "Away", "body": "Back in January.", "days": 3,
        "start": "2026-12-20T00:00:00Z", "end": "2027-01-05T00:00:00Z"});
    for manifest in [domain(), password("hana", "hana-secret"), hana.clone()] {
        apply(&client, &ns, manifest).await;
    }
    // The ConfigMap is missing: named, and the mailbox is served without a script.
    let hana_of = |raw: &kubemail_config::RawConfig| {
        raw.mailboxes
            .iter()
            .find(|m| m.address == "hana@example.test")
            .cloned()
    };
    eventually("the missing ConfigMap reported", || async {
        let (status, reason) = condition(&client, &ns, "hana", "SieveScriptValid").await?;
        (status == "False" && reason == "ConfigMapNotFound").then_some(())
    })
    .await;
    let served = eventually("hana served with her auto-reply", || async {
        let (_, raw, _) = config(&client, &ns).await?;
        hana_of(&raw)
    })
    .await;
    assert_eq!(served.sieve_script, None);
    let reply = served.auto_reply.expect("the auto-reply is rendered");
    assert_eq!(
        (reply.subject.as_str(), reply.body.as_str(), reply.days),
        ("Away", "Back in January.", 3)
    );
    assert_eq!(
        (reply.start, reply.end),
        (Some(1_797_724_800), Some(1_799_107_200))
    );

    // A script that does not compile: reported with its line, never served.
    let rules = |script: &str| {
        json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "hana-rules"},
               "data": {"script.sieve": script}})
    };
    apply(&client, &ns, rules("require \"fileinto\";\nfileinto;\n")).await;
    let (_, message) = eventually("the broken script reported", || async {
        mailbox_condition_where(&client, &ns, "hana", |c| {
            c.type_ == "SieveScriptValid" && c.reason == "ScriptInvalid"
        })
        .await
    })
    .await;
    assert!(message.contains("line 2"), "{message}");
    let (_, raw, _) = config(&client, &ns).await.expect("config");
    assert_eq!(hana_of(&raw).expect("hana").sieve_script, None);

    // A hostile one: 6,000 rules. Refused with the reason, quickly, never served.
    let huge: String = "if true { keep; }\n".repeat(3000);
    apply(&client, &ns, rules(&huge)).await;
    let (_, message) = eventually("the huge script reported", || async {
        mailbox_condition_where(&client, &ns, "hana", |c| {
            c.type_ == "SieveScriptValid" && c.message.contains("more than")
        })
        .await
    })
    .await;
    assert!(message.contains("4096 commands and tests"), "{message}");

    // Fixed: served as written, and the condition turns True.
    let good = "require \"fileinto\";\nif header :contains \"subject\" \"invoice\" { fileinto \"Invoices\"; }\n";
    apply(&client, &ns, rules(good)).await;
    eventually("the script served", || async {
        let (_, raw, _) = config(&client, &ns).await?;
        (hana_of(&raw)?.sieve_script.as_deref() == Some(good)).then_some(())
    })
    .await;
    eventually("the script reported valid", || async {
        let (status, _) = condition(&client, &ns, "hana", "SieveScriptValid").await?;
        (status == "True").then_some(())
    })
    .await;

    // The auto-reply turned off: gone from the config; the script stays.
    hana["spec"]["autoReply"]["enabled"] = json!(false);
    apply(&client, &ns, hana.clone()).await;
    eventually("the auto-reply removed", || async {
        let (_, raw, _) = config(&client, &ns).await?;
        let h = hana_of(&raw)?;
        (h.auto_reply.is_none() && h.sieve_script.is_some()).then_some(())
    })
    .await;

    // The API server refuses an end before the start and two script sources.
    let mut bad = hana.clone();
    bad["metadata"]["name"] = json!("hana2");
    bad["spec"]["address"] = json!("hana2@example.test");
    bad["spec"]["autoReply"]["end"] = json!("2026-12-01T00:00:00Z");
    let refused = Api::<Mailbox>::namespaced(client.clone(), &ns)
        .create(
            &Default::default(),
            &serde_json::from_value(bad).expect("a Mailbox"),
        )
        .await
        .expect_err("end before start");
    assert!(
        refused.to_string().contains("end must come after start"),
        "{refused}"
    );
    let mut both = hana.clone();
    both["metadata"]["name"] = json!("hana3");
    both["spec"]["address"] = json!("hana3@example.test");
    both["spec"]["sieve"]["secretRef"] = json!({"name": "x"});
    let refused = Api::<Mailbox>::namespaced(client.clone(), &ns)
        .create(
            &Default::default(),
            &serde_json::from_value(both).expect("a Mailbox"),
        )
        .await
        .expect_err("two sources");
    assert!(refused.to_string().contains("exactly one"), "{refused}");
}

/// The MailDomain's content scanners, probed for real (clamd and rspamd from Debian): both
/// answering is `ScannersReachable=True`; the controller's password Secret is used only with
/// its label (until then the condition says learning is off and nothing of the Secret reaches
/// the runtime); clamd stopped is named in the condition.
#[tokio::test]
async fn scanners_are_probed_for_real_and_the_learning_password_needs_its_label() {
    let scanners = kubemail_e2e::Scanners::start("").expect("clamd and rspamd");
    let (client, ns) = setup(BTreeMap::new()).await;
    let ns = ns.name;
    let _operator = Operator::start(ControlPlane::shared(), &ns);
    let learn = |labels: serde_json::Value| {
        json!({"apiVersion": "v1", "kind": "Secret",
               "metadata": {"name": "rspamd-learn", "labels": labels},
               "stringData": {"password": scanners.password()}})
    };
    apply(&client, &ns, learn(json!({}))).await;
    let mut md = domain();
    md["spec"]["inbound"] = json!({
        "clamav": {"address": format!("127.0.0.1:{}", scanners.port("clamd"))},
        "rspamd": {
            "url": format!("http://127.0.0.1:{}", scanners.port("rspamd")),
            "controllerUrl": format!("http://127.0.0.1:{}", scanners.port("controller")),
            "controllerPasswordSecretRef": {"name": "rspamd-learn"},
        },
    });
    apply(&client, &ns, md).await;
    let scanners_condition = || async {
        let md = Api::<MailDomain>::namespaced(client.clone(), &ns)
            .get_opt("example")
            .await
            .ok()??;
        md.status?
            .conditions
            .into_iter()
            .find(|c| c.type_ == "ScannersReachable")
            .map(|c| (c.status, c.reason, c.message))
    };
    let password_file = || async {
        config(&client, &ns)
            .await
            .and_then(|(_, raw, _)| raw.inbound.rspamd)
            .map(|r| r.controller_password_file.is_some())
    };
    let rspamd_volume = || async {
        Api::<Deployment>::namespaced(client.clone(), &ns)
            .get_opt("example-mail")
            .await
            .ok()
            .flatten()
            .and_then(|d| d.spec.template.spec?.volumes)
            .map(|v| v.iter().any(|v| v.name == "rspamd"))
    };

    // Unlabelled: the scanners answer, but learning is off and says why.
    let (status, reason, message) = eventually("ScannersReachable without the label", || async {
        scanners_condition()
            .await
            .filter(|(_, r, _)| r != "Pending")
    })
    .await;
    assert_eq!(
        (status.as_str(), reason.as_str()),
        ("False", "SecretNotLabelled"),
        "{message}"
    );
    assert!(message.contains("kubemail.io/rspamd-password"), "{message}");
    assert_eq!(password_file().await, Some(false));
    assert_eq!(rspamd_volume().await, Some(false));

    // Labelled: all three workers answer, and the password is mounted for the runtime.
    apply(
        &client,
        &ns,
        learn(json!({"kubemail.io/rspamd-password": "true"})),
    )
    .await;
    let (_, reason, message) = eventually("ScannersReachable with the label", || async {
        scanners_condition().await.filter(|(s, _, _)| s == "True")
    })
    .await;
    assert_eq!(reason, "Ready");
    for worker in ["clamd at", "rspamd at", "rspamd's controller at"] {
        assert!(message.contains(worker), "{worker} missing: {message}");
    }
    eventually("the password file in the config", || async {
        password_file().await.filter(|f| *f)
    })
    .await;
    eventually("the password mounted", || async {
        rspamd_volume().await.filter(|v| *v)
    })
    .await;

    // clamd stopped: named, with what happens to mail meanwhile.
    scanners.stop("clamd");
    let (_, reason, message) = eventually("ScannersReachable after clamd stopped", || async {
        scanners_condition().await.filter(|(s, _, _)| s == "False")
    })
    .await;
    assert_eq!(reason, "ScannerUnreachable");
    let clamd = format!("clamd at 127.0.0.1:{}", scanners.port("clamd"));
    assert!(
        message.contains(&clamd) && message.contains("onFailure"),
        "{message}"
    );
    assert!(
        !message.contains("rspamd"),
        "rspamd still answers: {message}"
    );
}

/// The text of `kubectl describe` for one object, events included.
fn describe(kind: &str, name: &str, ns: &str) -> String {
    let out = ControlPlane::shared()
        .kubectl()
        .args(["describe", kind, name, "-n", ns])
        .output()
        .expect("kubectl");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The open-relay self-test, against the runtime serving the rendered config: a RelayPolicy
/// that lets 0.0.0.0/0 relay turns `OpenRelay` True with a Warning event (and is flagged on
/// the policy itself); narrowing it turns both False. The test's relay attempts never get past
/// RCPT: nothing is queued.
#[tokio::test]
async fn an_open_relay_is_found_by_the_self_test_and_a_wide_policy_is_flagged() {
    let host = own_loopback();
    let host = host.as_str();
    let (client, ns) = setup(BTreeMap::new()).await;
    let ns = ns.name;
    let _operator = Operator::start_with(
        ControlPlane::shared(),
        &[&ns],
        "off",
        &["--probe-host-override", host],
    );
    let policy = |cidrs: &[&str]| {
        json!({"apiVersion": "kubemail.io/v1alpha1", "kind": "RelayPolicy",
               "metadata": {"name": "apps"}, "spec": {"allow": {"clientCIDRs": cidrs}}})
    };
    apply(&client, &ns, policy(&["0.0.0.0/0"])).await;
    apply(
        &client,
        &ns,
        json!({"apiVersion": "kubemail.io/v1alpha1", "kind": "MailDomain",
               "metadata": {"name": "example"},
               "spec": {"domain": "example.test", "dkim": {"enabled": false},
                        "relayPolicyRef": {"name": "apps"}}}),
    )
    .await;
    let (status, reason) = eventually("the policy's wide network is flagged", || async {
        relay_condition(&client, &ns, "WideClientNetworks").await
    })
    .await;
    assert_eq!((status.as_str(), reason.as_str()), ("True", "WideNetworks"));
    let (_, mut raw, _) = eventually("the open policy rendered", || async {
        config(&client, &ns)
            .await
            .filter(|(_, raw, _)| raw.relay.client_networks.iter().any(|n| n == "0.0.0.0/0"))
    })
    .await;
    let dir = tempfile::tempdir().expect("tmp");
    let _runtime = serve_on_loopback(&mut raw, dir.path(), host);

    let (_, reason) = eventually("OpenRelay turns True", || async {
        domain_condition(&client, &ns, "OpenRelay")
            .await
            .filter(|(s, _)| s == "True")
    })
    .await;
    assert_eq!(reason, "RelayAccepted");
    eventually("a Warning event names the open relay", || async {
        describe("maildomain", "example", &ns)
            .contains("Warning  OpenRelay ")
            .then_some(())
    })
    .await;
    // Ready stays about whether mail works; the open relay is its own condition.
    let md = Api::<MailDomain>::namespaced(client.clone(), &ns)
        .get("example")
        .await
        .expect("get");
    let open = md
        .status
        .as_ref()
        .and_then(|s| s.conditions.iter().find(|c| c.type_ == "OpenRelay"))
        .expect("OpenRelay");
    assert!(
        open.message.contains("250") && open.message.contains("clientCIDRs"),
        "{}",
        open.message
    );

    // Narrowed to a documentation network: the runtime (reloaded) refuses, the flag goes.
    apply(&client, &ns, policy(&["192.0.2.0/24"])).await;
    let (_, mut raw, _) = eventually("the narrowed policy rendered", || async {
        config(&client, &ns)
            .await
            .filter(|(_, raw, _)| raw.relay.client_networks == ["192.0.2.0/24".to_string()])
    })
    .await;
    write_runtime_config(&mut raw, dir.path(), host);
    let (_, reason) = eventually("OpenRelay turns False", || async {
        domain_condition(&client, &ns, "OpenRelay")
            .await
            .filter(|(s, _)| s == "False")
    })
    .await;
    assert_eq!(reason, "RelayRefused");
    let (status, reason) = eventually("the flag goes", || async {
        relay_condition(&client, &ns, "WideClientNetworks")
            .await
            .filter(|(s, _)| s == "False")
    })
    .await;
    assert_eq!(
        (status.as_str(), reason.as_str()),
        ("False", "NarrowNetworks")
    );
    eventually("a Normal event says it is closed", || async {
        describe("maildomain", "example", &ns)
            .contains("Normal   OpenRelayFalse")
            .then_some(())
    })
    .await;
    // Nothing the tests sent was queued: they stopped at RCPT.
    let queue = dir.path().join("data/queue");
    let queued: Vec<_> = std::fs::read_dir(&queue)
        .expect("the runtime's queue directory")
        .flatten()
        .map(|e| e.file_name())
        .collect();
    assert!(queued.is_empty(), "queued: {queued:?}");
}

/// dnsmasq's options serving `records` as status lists them (names without the final dot; TXT
/// values in strings of at most 255 bytes, as a DKIM key is published; on dnsmasq's command
/// line a quote is part of the text, and none of these values has a comma).
fn zone(records: &[kubemail_crds::mail_domain::DnsRecord]) -> Vec<String> {
    let bare = |name: &str| name.trim_end_matches('.').to_string();
    records
        .iter()
        .map(|r| match r.type_.as_str() {
            "MX" => {
                let (preference, host) = r.value.split_once(' ').expect("MX value");
                format!("--mx-host={},{},{preference}", bare(&r.name), bare(host))
            }
            "TXT" => {
                let strings: Vec<String> = r
                    .value
                    .as_bytes()
                    .chunks(255)
                    .map(|c| String::from_utf8_lossy(c).into_owned())
                    .collect();
                format!("--txt-record={},{}", bare(&r.name), strings.join(","))
            }
            "SRV" => {
                let v: Vec<&str> = r.value.split_whitespace().collect();
                format!(
                    "--srv-host={},{},{},{},{}",
                    bare(&r.name),
                    bare(v[3]),
                    v[2],
                    v[0],
                    v[1]
                )
            }
            other => panic!("no zone line for {other}"),
        })
        .collect()
}

/// `DNSVerified` against dnsmasq on loopback: nothing published (False), the records status
/// lists (True), then a stale DKIM key and no MX (False, naming both).
#[tokio::test]
async fn dns_records_are_verified_against_the_zone_as_served() {
    let mut dns = kubemail_e2e::Dns::start(&[]);
    let host = own_loopback();
    let (client, ns) = setup(BTreeMap::new()).await;
    let ns = ns.name;
    let _operator = Operator::start_with(
        ControlPlane::shared(),
        &[&ns],
        "off",
        &[
            "--probe-host-override",
            &host,
            "--dns-check",
            &format!("127.0.0.1:{}", dns.port),
            "--dns-check-interval",
            "2",
        ],
    );
    apply(
        &client,
        &ns,
        json!({"apiVersion": "kubemail.io/v1alpha1", "kind": "MailDomain",
               "metadata": {"name": "example"},
               "spec": {"domain": "example.test"}}),
    )
    .await;
    let message = |client: Client, ns: String| async move {
        let md = Api::<MailDomain>::namespaced(client, &ns)
            .get_opt("example")
            .await
            .ok()??;
        let c = md
            .status?
            .conditions
            .into_iter()
            .find(|c| c.type_ == "DNSVerified")?;
        Some((c.status, c.reason, c.message))
    };
    let (_, reason, text) = eventually("DNSVerified False with nothing published", || {
        message(client.clone(), ns.clone())
    })
    .await;
    assert_eq!(reason, "RecordsWrong", "{text}");
    assert!(text.contains("MX MX example.test.: missing"), "{text}");

    let records = Api::<MailDomain>::namespaced(client.clone(), &ns)
        .get("example")
        .await
        .expect("get")
        .status
        .expect("status")
        .dns_records;
    assert!(records.iter().any(|r| r.purpose == "DKIM"), "{records:?}");
    dns.restart(&zone(&records));
    let (_, reason, text) = eventually("DNSVerified True once published", || async {
        message(client.clone(), ns.clone())
            .await
            .filter(|(s, ..)| s == "True")
    })
    .await;
    assert_eq!(reason, "RecordsVerified");
    assert!(
        text.contains(&format!("all {} records", records.len())),
        "{text}"
    );

    // A stale DKIM key (as after a rotation published nowhere) and the MX forgotten.
    let stale: Vec<_> = records
        .iter()
        .filter(|r| r.type_ != "MX")
        .cloned()
        .map(|mut r| {
            if r.purpose == "DKIM" {
                r.value =
                    "v=DKIM1; k=rsa; p=MIIBIjANBgkqhkiG9w0BAQEFAAOCAQ8AMIIBCgKCAQEAstale".into();
            }
            r
        })
        .collect();
    dns.restart(&zone(&stale));
    let (_, reason, text) = eventually("DNSVerified False, naming both", || async {
        message(client.clone(), ns.clone())
            .await
            .filter(|(s, ..)| s == "False")
    })
    .await;
    assert_eq!(reason, "RecordsWrong");
    assert!(text.starts_with("2 of the records"), "{text}");
    assert!(text.contains("MX MX example.test.: missing"), "{text}");
    assert!(
        text.contains("DKIM TXT kubemail._domainkey.example.test.: another key is published"),
        "{text}"
    );
}

/// `spec.dns.publish`: without external-dns's CRD a condition says so; with it (installed from
/// the project's own YAML) a DNSEndpoint of the name it would use that it did not write is left
/// alone (`NotOwned`); then the operator writes one holding every record of status (and the
/// host's address from the LoadBalancer Service), removes it when publishing is turned off, and
/// the API server's garbage collector removes it with the MailDomain.
#[tokio::test]
async fn dns_records_are_published_as_an_external_dns_endpoint() {
    use kube::api::{ApiResource, DynamicObject, GroupVersionKind};
    let host = own_loopback();
    let (client, ns) = setup(BTreeMap::new()).await;
    let ns = ns.name;
    let _operator = Operator::start_with(
        ControlPlane::shared(),
        &[&ns],
        "off",
        &["--probe-host-override", &host],
    );
    let domain = |publish: bool| {
        json!({"apiVersion": "kubemail.io/v1alpha1", "kind": "MailDomain",
               "metadata": {"name": "example"},
               "spec": {"domain": "example.test", "dns": {"publish": publish, "ttl": 300},
                        "runtime": {"service": {"type": "LoadBalancer"}}}})
    };
    apply(&client, &ns, domain(false)).await;
    let crds = Api::<k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition>::all(client.clone());
    let installed = crds
        .get_opt("dnsendpoints.externaldns.k8s.io")
        .await
        .expect("read CRDs")
        .is_some();
    // Only this test installs it; a cluster of the user's (KUBEMAIL_KUBECONFIG) may have it.
    if !installed || std::env::var_os("KUBEMAIL_KUBECONFIG").is_none() {
        assert!(
            !installed,
            "external-dns's CRD is installed before the test"
        );
        apply(&client, &ns, domain(true)).await;
        let (status, reason) = eventually("DNSPublished says the CRD is missing", || async {
            domain_condition(&client, &ns, "DNSPublished").await
        })
        .await;
        assert_eq!(
            (status.as_str(), reason.as_str()),
            ("False", "CRDNotInstalled")
        );
        // Publishing off while the CRD is installed and somebody else's object is made: the
        // operator must not write one of its own before the test's is there.
        apply(&client, &ns, domain(false)).await;
        eventually("DNSPublished gone with publishing off", || async {
            domain_condition(&client, &ns, "DNSPublished")
                .await
                .is_none()
                .then_some(())
        })
        .await;
        kubemail_e2e::install_external_dns_crd(&client)
            .await
            .expect("external-dns's CRD installs");
    }
    let resource = ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk("externaldns.k8s.io", "v1alpha1", "DNSEndpoint"),
        "dnsendpoints",
    );
    let endpoints: Api<DynamicObject> = Api::namespaced_with(client.clone(), &ns, &resource);
    // Somebody else's DNSEndpoint with the name the operator would use: left alone.
    let theirs = endpoints
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({
                "apiVersion": "externaldns.k8s.io/v1alpha1", "kind": "DNSEndpoint",
                "metadata": {"name": "example-dns"},
                "spec": {"endpoints": [{"dnsName": "www.example.test", "recordType": "A",
                                        "targets": ["192.0.2.80"]}]}}))
            .expect("object"),
        )
        .await
        .expect("create theirs");
    apply(&client, &ns, domain(true)).await;
    let (_, reason) = eventually("DNSPublished says it is not ours", || async {
        domain_condition(&client, &ns, "DNSPublished")
            .await
            .filter(|(_, r)| r == "NotOwned")
    })
    .await;
    assert_eq!(reason, "NotOwned");
    // Several reconciles later it is unchanged.
    tokio::time::sleep(Duration::from_secs(5)).await;
    let still = endpoints.get("example-dns").await.expect("theirs");
    assert_eq!(
        still.metadata.resource_version,
        theirs.metadata.resource_version
    );
    endpoints
        .delete("example-dns", &DeleteParams::default())
        .await
        .expect("delete theirs");
    // The load balancer gives the mail Service an address.
    Api::<Service>::namespaced(client.clone(), &ns)
        .patch_status(
            "example-mail",
            &PatchParams::default(),
            &Patch::Merge(json!({"status": {"loadBalancer": {"ingress": [{"ip": "192.0.2.25"}]}}})),
        )
        .await
        .expect("the Service's address");

    let (status, reason) = eventually("DNSPublished True", || async {
        domain_condition(&client, &ns, "DNSPublished")
            .await
            .filter(|(s, _)| s == "True")
    })
    .await;
    assert_eq!((status.as_str(), reason.as_str()), ("True", "Ready"));
    let (md, ours) = eventually(
        "status and the DNSEndpoint agree, the host's A included",
        || async {
            let md = Api::<MailDomain>::namespaced(client.clone(), &ns)
                .get("example")
                .await
                .ok()?;
            let records = md.status.as_ref()?.dns_records.clone();
            let ours = endpoints.get_opt("example-dns").await.ok()??;
            let listed = ours.data["spec"]["endpoints"].as_array()?.len();
            (records.iter().any(|r| r.type_ == "A") && listed > 0).then_some((md, ours))
        },
    )
    .await;
    let records = md.status.expect("status").dns_records;
    let host_a = records
        .iter()
        .find(|r| r.type_ == "A")
        .expect("the host's A record");
    assert_eq!(
        (host_a.name.as_str(), host_a.value.as_str()),
        ("mail.example.test.", "192.0.2.25")
    );
    let listed = ours.data["spec"]["endpoints"]
        .as_array()
        .expect("endpoints");
    // Field by field: every record of status is a target of the endpoint of its name and type,
    // with the TTL asked for; nothing else is there.
    let bare = |s: &str| s.strip_suffix('.').unwrap_or(s).to_string();
    for r in &records {
        let endpoint = listed
            .iter()
            .find(|e| e["dnsName"] == bare(&r.name).as_str() && e["recordType"] == r.type_.as_str())
            .unwrap_or_else(|| panic!("no endpoint for {r:?} in {listed:?}"));
        assert_eq!(endpoint["recordTTL"], 300, "{endpoint}");
        let value = if r.value == "0 0 0 ." {
            r.value.clone()
        } else if matches!(r.type_.as_str(), "MX" | "SRV") {
            bare(&r.value)
        } else {
            r.value.clone()
        };
        assert!(
            endpoint["targets"]
                .as_array()
                .expect("targets")
                .iter()
                .any(|t| t == value.as_str()),
            "{value} not in {endpoint}"
        );
    }
    let targets: usize = listed
        .iter()
        .map(|e| e["targets"].as_array().map_or(0, Vec::len))
        .sum();
    assert_eq!(targets, records.len(), "{listed:?}");
    let owner = ours.metadata.owner_references.clone().unwrap_or_default();
    assert!(
        owner
            .iter()
            .any(|o| o.kind == "MailDomain" && o.name == "example" && o.controller == Some(true)),
        "{owner:?}"
    );

    // Publishing off: the operator removes its own, and only its own.
    apply(&client, &ns, domain(false)).await;
    eventually("the DNSEndpoint removed", || async {
        endpoints
            .get_opt("example-dns")
            .await
            .ok()
            .and_then(|o| o.is_none().then_some(()))
    })
    .await;
    eventually("DNSPublished gone", || async {
        domain_condition(&client, &ns, "DNSPublished")
            .await
            .is_none()
            .then_some(())
    })
    .await;
    // On again, then the domain deleted: the garbage collector takes the DNSEndpoint.
    apply(&client, &ns, domain(true)).await;
    eventually("published again", || async {
        endpoints.get_opt("example-dns").await.ok()?.map(|_| ())
    })
    .await;
    Api::<MailDomain>::namespaced(client.clone(), &ns)
        .delete("example", &DeleteParams::default())
        .await
        .expect("delete");
    if ControlPlane::shared().has_controller_manager() {
        eventually_within(
            "the DNSEndpoint collected with the domain",
            Duration::from_secs(90),
            || async {
                endpoints
                    .get_opt("example-dns")
                    .await
                    .ok()
                    .and_then(|o| o.is_none().then_some(()))
            },
        )
        .await;
    }
}

/// The condition of any MailDomain: (status, reason, message).
async fn condition_of(
    client: &Client,
    ns: &str,
    name: &str,
    type_: &str,
) -> Option<(String, String, String)> {
    let md = Api::<MailDomain>::namespaced(client.clone(), ns)
        .get_opt(name)
        .await
        .ok()??;
    md.status?
        .conditions
        .into_iter()
        .find(|c| c.type_ == type_)
        .map(|c| (c.status, c.reason, c.message))
}

/// A Secret's key, as text.
async fn secret_text(client: &Client, ns: &str, name: &str, key: &str) -> Option<String> {
    let secret = Api::<Secret>::namespaced(client.clone(), ns)
        .get_opt(name)
        .await
        .ok()??;
    String::from_utf8(secret.data?.get(key)?.0.clone()).ok()
}

/// The server's config Secret as the runtime reads it on this machine: every file of the
/// Secret (the config, hosted domains' certificates and keys) written under `dir`, the paths
/// pointing there, the server's own certificate from its Secret, the listeners on `host`.
async fn write_hosting_config(client: &Client, ns: &str, dir: &std::path::Path, host: &str) {
    let secret = Api::<Secret>::namespaced(client.clone(), ns)
        .get("example-runtime-config")
        .await
        .expect("the config Secret");
    let data = secret.data.expect("data");
    for (key, value) in &data {
        if key.starts_with("hosted.") {
            std::fs::write(dir.join(key), &value.0).expect("write");
        }
    }
    let mut raw: kubemail_config::RawConfig =
        serde_yaml_ng::from_slice(&data["runtime.yaml"].0).expect("yaml");
    for (key, file) in [("tls.crt", "tls.crt"), ("tls.key", "tls.key")] {
        let text = secret_text(client, ns, "example-tls", key)
            .await
            .expect("the server's certificate");
        std::fs::write(dir.join(file), text).expect("write");
    }
    raw.tls.cert_file = dir.join("tls.crt");
    raw.tls.key_file = dir.join("tls.key");
    let local = |p: &std::path::Path| dir.join(p.file_name().expect("a file name"));
    for d in &mut raw.domains {
        if let Some(tls) = &mut d.tls {
            tls.cert_file = local(&tls.cert_file);
            tls.key_file = local(&tls.key_file);
        }
        if let Some(dkim) = &mut d.dkim {
            dkim.key_file = local(&dkim.key_file);
        }
    }
    raw.storage.path = dir.join("data");
    raw.inbound.verify = false;
    raw.dkim = None;
    for l in &mut raw.listeners {
        let port = l.address.rsplit_once(':').map(|(_, p)| p.to_string());
        l.address = format!("{host}:{}", port.expect("a port"));
    }
    let next = dir.join("runtime.yaml.next");
    std::fs::write(&next, serde_yaml_ng::to_string(&raw).expect("yaml")).expect("write");
    std::fs::rename(&next, dir.join("runtime.yaml")).expect("rename");
}

/// The certificate (PEM) `openssl s_client` gets asking for `name`, directly or after STARTTLS.
fn served_certificate(address: &str, starttls: Option<&str>, name: &str) -> String {
    let mut cmd = Command::new("openssl");
    cmd.args(["s_client", "-connect", address, "-servername", name]);
    if let Some(protocol) = starttls {
        cmd.args(["-starttls", protocol]);
    }
    let out = cmd.stdin(Stdio::null()).output().expect("openssl");
    let text = String::from_utf8_lossy(&out.stdout);
    let begin = text.find("-----BEGIN CERTIFICATE-----").unwrap_or(0);
    let end = text
        .find("-----END CERTIFICATE-----")
        .map_or(0, |e| e + "-----END CERTIFICATE-----".len());
    text.get(begin..end).unwrap_or_default().to_string()
}

fn domain_on(name: &str, domain: &str, server: Option<&str>) -> serde_json::Value {
    let mut spec = json!({"domain": domain});
    if let Some(server) = server {
        spec["hostedBy"] = json!({"name": server});
    }
    json!({"apiVersion": "kubemail.io/v1alpha1", "kind": "MailDomain",
           "metadata": {"name": name}, "spec": spec})
}

fn mailbox_at(name: &str, address: &str) -> serde_json::Value {
    json!({"apiVersion": "kubemail.io/v1alpha1", "kind": "Mailbox",
           "metadata": {"name": name},
           "spec": {"address": address, "passwordSecretRef": {"name": format!("{name}-password")}}})
}

/// Two companies' domains on one runtime: a domain that ran its own runtime moves onto another
/// MailDomain's (its Deployment goes, its volume stays); each domain's certificate is what
/// `openssl s_client -servername` gets on IMAPS and after STARTTLS on 587; mail for both is
/// delivered; a broken Mailbox or a conflicting alias of one domain does not stop the other's
/// config changes; the hosted domain is dropped from the config when deleted.
#[tokio::test]
async fn two_domains_share_one_runtime_each_with_its_own_certificate() {
    let host = own_loopback();
    let host = host.as_str();
    let (client, ns) = setup(BTreeMap::new()).await;
    let ns = ns.name;
    let _operator = Operator::start_with(
        ControlPlane::shared(),
        &[&ns],
        "off",
        &["--probe-host-override", host],
    );
    let mut server = domain_on("example", "example.test", None);
    server["spec"]["aliasDomains"] = json!(["example.org"]);
    apply(&client, &ns, server).await;
    for (name, address) in [
        ("alice", "alice@example.test"),
        ("carol", "carol@brand.test"),
    ] {
        apply(&client, &ns, password(name, &format!("{name}-pw"))).await;
        apply(&client, &ns, mailbox_at(name, address)).await;
    }
    // brand.test first runs on its own runtime, as every domain did before hosting.
    apply(&client, &ns, domain_on("brand", "brand.test", None)).await;
    let deployments = Api::<Deployment>::namespaced(client.clone(), &ns);
    eventually("brand's own Deployment", || async {
        deployments.get_opt("brand-mail").await.ok()?.map(|_| ())
    })
    .await;
    apply(
        &client,
        &ns,
        domain_on("brand", "brand.test", Some("example")),
    )
    .await;
    assert!(
        deployments
            .get_opt("brand-mail")
            .await
            .expect("get")
            .is_some(),
        "brand's own runtime goes only once the server serves brand"
    );
    let (_, raw, _) = eventually("both domains in the server's config", || async {
        config(&client, &ns).await.filter(|(_, raw, _)| {
            raw.domains.len() == 2 && addresses(raw).contains(&"carol@brand.test".to_string())
        })
    })
    .await;
    let brand = &raw.domains[1];
    assert_eq!(brand.name, "brand.test");
    assert_eq!(brand.hostname.as_deref(), Some("mail.brand.test"));
    assert!(brand.tls.is_some() && brand.dkim.is_some(), "{brand:?}");
    assert!(raw.domains[0].hostname.is_none());

    let dir = tempfile::tempdir().expect("tmp");
    write_hosting_config(&client, &ns, dir.path(), host).await;
    let _runtime = serve_config(dir.path());
    let port = |p: kubemail_config::ListenerProtocol| {
        raw.listeners
            .iter()
            .find(|l| l.protocol == p)
            .and_then(|l| l.address.rsplit_once(':'))
            .map(|(_, port)| format!("{host}:{port}"))
            .expect("a listener")
    };
    use kubemail_config::ListenerProtocol as L;
    let (imaps, submission, smtp) = (port(L::Imaps), port(L::Submission), port(L::Smtp));
    eventually("the runtime answers", || async {
        std::net::TcpStream::connect(&smtp).ok().map(|_| ())
    })
    .await;
    let brand_cert = secret_text(&client, &ns, "brand-tls", "tls.crt")
        .await
        .expect("brand's certificate");
    let own_cert = secret_text(&client, &ns, "example-tls", "tls.crt")
        .await
        .expect("the server's certificate");
    assert_ne!(brand_cert, own_cert);
    for (address, starttls) in [(&imaps, None), (&submission, Some("smtp"))] {
        assert_eq!(
            served_certificate(address, starttls, "mail.brand.test"),
            brand_cert.trim(),
            "brand's name on {address}"
        );
        assert_eq!(
            served_certificate(address, starttls, "mail.example.test"),
            own_cert.trim(),
            "the server's name on {address}"
        );
    }
    // Mail for both is delivered.
    for to in ["carol@brand.test", "alice@example.test"] {
        let out = Command::new("swaks")
            .args([
                "--server",
                &smtp,
                "--from",
                "someone@outside.test",
                "--to",
                to,
            ])
            .output()
            .expect("swaks");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stdout)
        );
    }
    for (domain, user) in [("brand.test", "carol"), ("example.test", "alice")] {
        let new = dir
            .path()
            .join("data/mail")
            .join(domain)
            .join(user)
            .join("new");
        assert_eq!(
            std::fs::read_dir(&new).map(|d| d.count()).unwrap_or(0),
            1,
            "{new:?}"
        );
    }
    let (status, reason, message) = eventually("brand is Hosted", || async {
        condition_of(&client, &ns, "brand", "Hosted")
            .await
            .filter(|(s, ..)| s == "True")
    })
    .await;
    assert_eq!(reason, "Hosted", "{status} {message}");
    assert!(message.contains("MailDomain example"), "{message}");
    // Served by the server now, its own runtime goes (not before: its mail kept flowing).
    eventually("brand's own runtime goes", || async {
        deployments
            .get_opt("brand-mail")
            .await
            .ok()?
            .is_none()
            .then_some(())
    })
    .await;
    assert!(
        Api::<PersistentVolumeClaim>::namespaced(client.clone(), &ns)
            .get_opt("brand-data")
            .await
            .expect("get")
            .is_some(),
        "the mail brand stored before stays on its volume"
    );
    let md = Api::<MailDomain>::namespaced(client.clone(), &ns)
        .get("brand")
        .await
        .expect("brand");
    let status = md.status.expect("status");
    assert_eq!(status.hostname.as_deref(), Some("mail.brand.test"));
    assert!(
        status.dns_records.iter().any(|r| r.type_ == "MX"
            && r.name == "brand.test."
            && r.value.contains("mail.brand.test")),
        "{:?}",
        status.dns_records
    );
    assert!(
        status
            .endpoints
            .iter()
            .all(|e| e.host.starts_with("example-mail."))
    );

    // brand's broken Mailbox (its password Secret missing) and then an alias that the server
    // already has: brand's part keeps what is served; the server's changes go on.
    apply(&client, &ns, mailbox_at("ghost", "ghost@brand.test")).await;
    let mut conflicting = domain_on("brand", "brand.test", Some("example"));
    conflicting["spec"]["aliasDomains"] = json!(["example.org"]);
    apply(&client, &ns, conflicting).await;
    let (_, _, message) = eventually("brand's ConfigValid turns False", || async {
        condition_of(&client, &ns, "brand", "ConfigValid")
            .await
            .filter(|(s, ..)| s == "False")
    })
    .await;
    assert!(message.contains("example.org"), "{message}");
    apply(&client, &ns, password("bob", "bob-pw")).await;
    apply(&client, &ns, mailbox_at("bob", "bob@example.test")).await;
    let (_, raw, _) = eventually("the server's new Mailbox is rendered", || async {
        config(&client, &ns)
            .await
            .filter(|(_, raw, _)| addresses(raw).contains(&"bob@example.test".to_string()))
    })
    .await;
    let brand = raw
        .domains
        .iter()
        .find(|d| d.name == "brand.test")
        .expect("brand's served part stays");
    assert!(brand.aliases.is_empty(), "{brand:?}");
    let served = addresses(&raw);
    assert!(served.contains(&"carol@brand.test".to_string()));
    assert!(!served.contains(&"ghost@brand.test".to_string()));

    // Deleted: its part leaves the server's config, files too.
    Api::<MailDomain>::namespaced(client.clone(), &ns)
        .delete("brand", &DeleteParams::default())
        .await
        .expect("delete");
    let secret = eventually("brand leaves the config", || async {
        let (_, raw, _) = config(&client, &ns).await?;
        (raw.domains.len() == 1).then_some(())?;
        Api::<Secret>::namespaced(client.clone(), &ns)
            .get("example-runtime-config")
            .await
            .ok()
    })
    .await;
    assert!(
        secret
            .data
            .expect("data")
            .keys()
            .all(|k| !k.starts_with("hosted.")),
        "brand's files stay in the config Secret"
    );
}

/// A DKIM key rotation, started by changing `spec.dkim.selector`: the new key's record is
/// published beside the old one first, the runtime signs with the new key only after the
/// records' TTL (its key file named after it, so config and key never disagree), and the old
/// record stays published for mail still on its way.
#[tokio::test]
async fn a_dkim_key_rotates_published_first_switched_after_the_ttl() {
    let (client, ns) = setup(BTreeMap::new()).await;
    let ns = ns.name;
    let _operator = Operator::start(ControlPlane::shared(), &ns);
    let mut md = domain_on("example", "example.test", None);
    md["spec"]["dns"] = json!({"ttl": 60});
    apply(&client, &ns, md.clone()).await;
    let dkim_records = |md: MailDomain| -> Vec<(String, String)> {
        md.status
            .map(|s| s.dns_records)
            .unwrap_or_default()
            .into_iter()
            .filter(|r| r.purpose == "DKIM")
            .map(|r| (r.name, r.value))
            .collect()
    };
    let domains = Api::<MailDomain>::namespaced(client.clone(), &ns);
    let first = eventually("the first key's record", || async {
        let records = dkim_records(domains.get("example").await.ok()?);
        (records.len() == 1).then_some(records)
    })
    .await;
    assert_eq!(first[0].0, "kubemail._domainkey.example.test.");
    let (_, raw, _) = eventually("signing with the first key", || async {
        config(&client, &ns)
            .await
            .filter(|(_, raw, _)| raw.dkim.is_some())
    })
    .await;
    let dkim = raw.dkim.expect("dkim");
    assert_eq!(dkim.selector, "kubemail");
    assert!(dkim.key_file.ends_with("private.pem"));

    md["spec"]["dkim"] = json!({"selector": "k2"});
    apply(&client, &ns, md).await;
    let started = std::time::Instant::now();
    let both = eventually("the new record published beside the old", || async {
        let records = dkim_records(domains.get("example").await.ok()?);
        (records.len() == 2).then_some(records)
    })
    .await;
    assert!(both.contains(&first[0]), "{both:?}");
    let (_, new_value) = both
        .iter()
        .find(|(name, _)| name == "k2._domainkey.example.test.")
        .expect("k2's record")
        .clone();
    assert_ne!(new_value, first[0].1);
    // Still signing with the old key while the new record may not be everywhere yet.
    let (_, raw, _) = config(&client, &ns).await.expect("config");
    assert_eq!(
        raw.dkim.as_ref().map(|d| d.selector.as_str()),
        Some("kubemail")
    );

    let (_, raw, _) = eventually_within(
        "the switch after the TTL",
        Duration::from_secs(150),
        || async {
            config(&client, &ns)
                .await
                .filter(|(_, raw, _)| raw.dkim.as_ref().is_some_and(|d| d.selector == "k2"))
        },
    )
    .await;
    assert!(
        started.elapsed() >= Duration::from_secs(55),
        "switched {:?} after the new record appeared: before the TTL",
        started.elapsed()
    );
    let key_file = raw.dkim.expect("dkim").key_file;
    let file = key_file
        .file_name()
        .and_then(|f| f.to_str())
        .expect("a file name")
        .to_string();
    assert!(file.starts_with("k2-") && file.ends_with(".pem"), "{file}");
    // The key file holds the key whose record was published.
    let pem = secret_text(&client, &ns, "example-dkim", &file)
        .await
        .expect("k2's key");
    let der = Command::new("openssl")
        .args(["pkey", "-pubout", "-outform", "DER"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .and_then(|mut child| {
            use std::io::Write;
            child
                .stdin
                .take()
                .expect("stdin")
                .write_all(pem.as_bytes())?;
            child.wait_with_output()
        })
        .expect("openssl");
    use base64::Engine as _;
    let public = base64::engine::general_purpose::STANDARD.encode(der.stdout);
    assert!(new_value.ends_with(&format!("p={public}")), "{new_value}");
    // The old record stays published (for mail signed with it still on its way).
    let records = dkim_records(domains.get("example").await.expect("get"));
    assert!(
        records.contains(&first[0]) && records.len() == 2,
        "{records:?}"
    );
}

/// With `--network-policies` each runtime gets a NetworkPolicy the API server accepts: the
/// mail ports from anywhere, the HTTP port only from the operator's and monitoring's
/// namespaces, and out only DNS, SMTP, HTTPS and the scanner the domain names.
#[tokio::test]
async fn a_network_policy_keeps_the_runtime_to_its_mail_ports() {
    let (client, ns) = setup(BTreeMap::new()).await;
    let ns = ns.name;
    let _operator = Operator::start_with(
        ControlPlane::shared(),
        &[&ns],
        "off",
        &[
            "--network-policies",
            "--network-policy-http-from",
            "kubemail-system",
            "--network-policy-http-from",
            "monitoring",
        ],
    );
    let mut md = domain_on("example", "example.test", None);
    md["spec"]["inbound"] = json!({"rspamd": {"url": "http://rspamd.mail.svc:11333"}});
    md["spec"]["protocols"] = json!({"pop3": {"enabled": false}, "pop3s": {"enabled": false}});
    apply(&client, &ns, md).await;
    let policies =
        Api::<k8s_openapi::api::networking::v1::NetworkPolicy>::namespaced(client.clone(), &ns);
    let policy = eventually("the runtime's NetworkPolicy", || async {
        policies.get_opt("example-mail").await.ok()?
    })
    .await;
    let spec = policy.spec.expect("spec");
    let ports = |rule_ports: &Option<Vec<k8s_openapi::api::networking::v1::NetworkPolicyPort>>| {
        let mut out: Vec<String> = rule_ports
            .iter()
            .flatten()
            .map(|p| {
                let n = match &p.port {
                    Some(k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::Int(n)) => *n,
                    other => panic!("a numeric port: {other:?}"),
                };
                format!("{}/{n}", p.protocol.as_deref().unwrap_or("TCP"))
            })
            .collect();
        out.sort();
        out
    };
    let ingress = spec.ingress.expect("ingress");
    // The mail ports (container ports of the enabled protocols), from anywhere: no POP3.
    let deployment = Api::<Deployment>::namespaced(client.clone(), &ns)
        .get("example-mail")
        .await
        .expect("deployment");
    let pod = serde_json::to_value(&deployment).expect("json");
    let mut served: Vec<String> = pod["spec"]["template"]["spec"]["containers"][0]["ports"]
        .as_array()
        .expect("ports")
        .iter()
        .filter(|p| p["name"] != "http")
        .map(|p| format!("TCP/{}", p["containerPort"]))
        .collect();
    served.sort();
    assert_eq!(ports(&ingress[0].ports), served);
    assert!(ingress[0].from.is_none());
    assert!(!served.contains(&"TCP/1100".to_string()) && !served.contains(&"TCP/110".to_string()));
    assert_eq!(ports(&ingress[1].ports), ["TCP/8080"]);
    let from = serde_json::to_value(&ingress[1].from).expect("json");
    assert_eq!(
        from[0]["namespaceSelector"]["matchExpressions"][0]["values"],
        json!(["kubemail-system", "monitoring"])
    );
    let egress = spec.egress.expect("egress");
    assert_eq!(ports(&egress[0].ports), ["TCP/53", "UDP/53"]);
    assert_eq!(
        ports(&egress[1].ports),
        ["TCP/11333", "TCP/25", "TCP/443", "TCP/465", "TCP/587"]
    );
    assert_eq!(
        spec.policy_types,
        Some(vec!["Ingress".to_string(), "Egress".to_string()])
    );
    // A domain on a database reaches it on the ports of its URI: here a primary and a standby.
    let secret: Secret = serde_json::from_value(json!({
        "metadata": {"name": "mail-db-app"},
        "stringData": {"uri": "postgresql://app:pw@db-a:5433,db-b:6432/app?target_session_attrs=read-write"}
    }))
    .expect("secret");
    Api::<Secret>::namespaced(client.clone(), &ns)
        .create(&PostParams::default(), &secret)
        .await
        .expect("create");
    let mut md = domain_on("scaled", "scaled.test", None);
    md["spec"]["storage"] = json!({"database": {"secretRef": {"name": "mail-db-app"}}});
    apply(&client, &ns, md).await;
    let policy = eventually("the database domain's NetworkPolicy", || async {
        policies.get_opt("scaled-mail").await.ok()?
    })
    .await;
    let egress = policy.spec.expect("spec").egress.expect("egress");
    assert_eq!(
        ports(&egress[1].ports),
        [
            "TCP/25", "TCP/443", "TCP/465", "TCP/5433", "TCP/587", "TCP/6432"
        ]
    );
}

/// A MailDomain on PostgreSQL: three replicas rolled one at a time (RollingUpdate with no pod
/// unavailable), a PodDisruptionBudget, no volume; `DatabaseReady` says what is missing while
/// the database Secret or its key is, and what the runtime reports after.
#[tokio::test]
async fn a_domain_on_a_database_rolls_several_replicas_and_reports_its_database() {
    let (client, ns) = setup(BTreeMap::new()).await;
    let ns = ns.name;
    let _operator = Operator::start(ControlPlane::shared(), &ns);
    let mut md = domain_on("scaled", "scaled.test", None);
    md["spec"]["storage"] = json!({"database": {"secretRef": {"name": "mail-db-app"}}});
    md["spec"]["runtime"] = json!({"replicas": 3});
    apply(&client, &ns, md).await;
    let database = || async { condition_of(&client, &ns, "scaled", "DatabaseReady").await };
    let (status, reason, message) = eventually("DatabaseReady False: no Secret", || async {
        database().await.filter(|c| c.1 == "SecretNotFound")
    })
    .await;
    assert_eq!(status, "False");
    assert!(message.contains("mail-db-app"), "{reason}: {message}");
    let deployment = Api::<Deployment>::namespaced(client.clone(), &ns)
        .get("scaled-mail")
        .await
        .expect("deployment");
    let spec = serde_json::to_value(&deployment.spec).expect("json");
    assert_eq!(spec["replicas"], 3);
    assert_eq!(spec["strategy"]["type"], "RollingUpdate");
    assert_eq!(spec["strategy"]["rollingUpdate"]["maxUnavailable"], 0);
    let volumes = &spec["template"]["spec"]["volumes"];
    assert!(
        volumes
            .as_array()
            .expect("volumes")
            .iter()
            .all(|v| v.get("persistentVolumeClaim").is_none()),
        "{volumes}"
    );
    let budget =
        Api::<k8s_openapi::api::policy::v1::PodDisruptionBudget>::namespaced(client.clone(), &ns)
            .get("scaled-mail")
            .await
            .expect("a PodDisruptionBudget");
    assert_eq!(
        serde_json::to_value(&budget.spec).expect("json")["maxUnavailable"],
        1
    );
    let claims = Api::<PersistentVolumeClaim>::namespaced(client.clone(), &ns);
    assert!(
        claims.get_opt("scaled-data").await.expect("get").is_none(),
        "no volume on a database"
    );
    // CloudNativePG's Secret, first without the key, then with it.
    let secrets = Api::<Secret>::namespaced(client.clone(), &ns);
    let secret = |data: serde_json::Value| {
        serde_json::from_value::<Secret>(json!({
            "metadata": {"name": "mail-db-app"}, "stringData": data}))
        .expect("secret")
    };
    secrets
        .create(&PostParams::default(), &secret(json!({"username": "app"})))
        .await
        .expect("create");
    let (_, _, message) = eventually("DatabaseReady False: no key", || async {
        database().await.filter(|c| c.1 == "KeyNotFound")
    })
    .await;
    assert!(message.contains("\"uri\""), "{message}");
    // A value that is no connection URI is named as such, without repeating it (a password).
    secrets
        .patch(
            "mail-db-app",
            &PatchParams::default(),
            &Patch::Merge(json!({"stringData": {"uri": "postgresql://app:hunter2@db:port/app"}})),
        )
        .await
        .expect("patch");
    let (_, _, message) = eventually("DatabaseReady False: not a URI", || async {
        database().await.filter(|c| c.1 == "InvalidURI")
    })
    .await;
    assert!(
        message.contains("mail-db-app") && !message.contains("hunter2"),
        "{message}"
    );
    secrets
        .patch(
            "mail-db-app",
            &PatchParams::default(),
            &Patch::Merge(
                json!({"stringData": {"uri": "postgresql://app:pw@mail-db-rw:5432/app"}}),
            ),
        )
        .await
        .expect("patch");
    // No runtime runs in this test: the operator waits for its report, and Ready waits too.
    let (status, reason, _) = eventually("DatabaseReady waits for the runtime", || async {
        database().await.filter(|c| c.1 == "Waiting")
    })
    .await;
    assert_eq!((status.as_str(), reason.as_str()), ("False", "Waiting"));
    let ready = condition_of(&client, &ns, "scaled", "Ready")
        .await
        .expect("Ready");
    assert_eq!(ready.0, "False");
    assert!(ready.2.contains("DatabaseReady"), "{}", ready.2);
    // Back to one replica: the budget goes.
    Api::<MailDomain>::namespaced(client.clone(), &ns)
        .patch(
            "scaled",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"runtime": {"replicas": 1}}})),
        )
        .await
        .expect("patch");
    let budgets =
        Api::<k8s_openapi::api::policy::v1::PodDisruptionBudget>::namespaced(client.clone(), &ns);
    eventually("the budget deleted", || async {
        budgets
            .get_opt("scaled-mail")
            .await
            .ok()
            .filter(Option::is_none)
    })
    .await;
}
