//! The Helm chart on the real control plane: lint, render, install (CRDs, RBAC, the operator
//! Deployment), the operator doing its whole job with exactly the chart's ServiceAccount
//! permissions, no more than it needs, and an uninstall that leaves the mail.
use std::{
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use k8s_openapi::api::{
    apps::v1::Deployment,
    core::v1::{PersistentVolumeClaim, Secret},
    rbac::v1::{ClusterRole, Role},
};
use kube::{Api, api::ListParams};
use kubemail_crds::MailDomain;
use kubemail_e2e::{ControlPlane, TestNamespace, install_crds, workspace_root};

fn chart() -> String {
    workspace_root()
        .join("charts/kubemail")
        .to_string_lossy()
        .to_string()
}

fn ok(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{cmd:?} failed:\n{text}");
    String::from_utf8_lossy(&out.stdout).to_string()
}

#[test]
fn the_chart_lints_and_refuses_wrong_values() {
    let plane = ControlPlane::shared();
    ok(plane.helm().args(["lint", "--strict", &chart()]));
    for bad in [
        "watchNamespaces={Not_A_Namespace}",
        "operator.image.pullPolicy=Sometimes",
        "unknownValue=1",
    ] {
        let out = plane
            .helm()
            .args([
                "template",
                "x",
                &chart(),
                "--kube-version",
                "1.37.2",
                "--set",
                bad,
            ])
            .output()
            .expect("helm");
        assert!(!out.status.success(), "{bad} was accepted");
        assert!(
            String::from_utf8_lossy(&out.stderr)
                .contains("values don't meet the specifications of the schema"),
            "{bad}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

#[tokio::test]
async fn install_run_with_the_charts_permissions_and_uninstall() {
    let plane = ControlPlane::shared();
    let client = plane.client().await.expect("client");
    install_crds(&client).await.expect("CRDs");
    let ns = TestNamespace::create(&client, "chart", Default::default())
        .await
        .expect("ns")
        .name;

    // Every rendered object passes the API server's own validation (strict fields).
    let rendered = ok(plane.helm().args([
        "template",
        "kubemail",
        &chart(),
        "-n",
        &ns,
        "--kube-version",
        "1.37.2",
    ]));
    let mut dry = plane
        .kubectl()
        .args(["apply", "--dry-run=server", "-n", &ns, "-f", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("kubectl");
    std::io::Write::write_all(dry.stdin.as_mut().expect("stdin"), rendered.as_bytes())
        .expect("write");
    let out = dry.wait_with_output().expect("kubectl");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    ok(plane
        .helm()
        .args(["install", "kubemail", &chart(), "-n", &ns, "--wait=false"]));
    let deployment = Api::<Deployment>::namespaced(client.clone(), &ns)
        .get("kubemail-operator")
        .await
        .expect("operator Deployment");
    let pod = deployment.spec.template.spec.expect("pod");
    assert_eq!(
        pod.service_account_name.as_deref(),
        Some("kubemail-operator")
    );
    let roles = Api::<Role>::namespaced(client.clone(), &ns)
        .list(&ListParams::default())
        .await
        .expect("roles");
    let role = roles
        .items
        .iter()
        .find(|r| r.metadata.name.as_deref() == Some("kubemail-operator"))
        .expect("the operator's Role");
    // No more than needed: no wildcard, and no ClusterRole that writes Secrets.
    for rule in role.rules.clone().unwrap_or_default() {
        assert!(
            !rule.verbs.iter().any(|v| v == "*"),
            "wildcard verb: {rule:?}"
        );
        assert!(
            !rule
                .resources
                .clone()
                .unwrap_or_default()
                .iter()
                .any(|r| r == "*"),
            "wildcard resource: {rule:?}"
        );
        assert!(
            !rule
                .verbs
                .iter()
                .any(|v| v == "delete" || v == "update" || v == "deletecollection"),
            "needless verb: {rule:?}"
        );
    }
    let cluster_roles = Api::<ClusterRole>::all(client.clone())
        .list(&ListParams::default())
        .await
        .expect("cluster roles");
    assert!(
        !cluster_roles
            .items
            .iter()
            .any(|r| r.metadata.name.as_deref() == Some("kubemail-operator")),
        "a default install must not grant cluster-wide access"
    );

    // The operator, as the chart's ServiceAccount (a token from the TokenRequest API), does its
    // whole job: reads the kinds, renders and applies, makes keys, writes status.
    let token = ok(plane.kubectl().args([
        "create",
        "token",
        "kubemail-operator",
        "-n",
        &ns,
        "--duration",
        "1h",
    ]));
    let kubeconfig = plane
        .scratch_dir(&format!("chart-{ns}"))
        .expect("dir")
        .join("kubeconfig");
    let admin = std::fs::read_to_string(plane.kubeconfig()).expect("kubeconfig");
    let as_operator: String = admin
        .lines()
        .map(|l| {
            if l.trim_start().starts_with("token:") {
                format!("    token: {}", token.trim())
            } else {
                l.to_string()
            }
        })
        .collect::<Vec<_>>()
        .join("\n");
    std::fs::write(&kubeconfig, as_operator).expect("write");
    let exe = std::env::current_exe().expect("exe");
    let bin = exe
        .parent()
        .and_then(|d| d.parent())
        .expect("target")
        .join("kubemail-operator");
    let mut operator = Command::new(
        std::env::var_os("KUBEMAIL_OPERATOR_BIN")
            .map(Into::into)
            .unwrap_or(bin),
    )
    .args([
        "--namespace",
        &ns,
        "--probe-timeout",
        "1",
        "--leader-election",
        &ns,
    ])
    .args(["--health-addr", "off"])
    .env("KUBECONFIG", &kubeconfig)
    .env("RUST_LOG", "warn")
    .spawn()
    .expect("operator");
    ok(plane
        .kubectl()
        .args(["apply", "-n", &ns, "-f"])
        .arg(workspace_root().join("examples/quickstart")));
    let start = Instant::now();
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &ns);
    loop {
        let config = secrets
            .get_opt("example-test-runtime-config")
            .await
            .expect("get");
        let status = Api::<MailDomain>::namespaced(client.clone(), &ns)
            .get("example-test")
            .await
            .expect("md")
            .status;
        let dkim = secrets.get_opt("example-test-dkim").await.expect("get");
        if config.is_some() && dkim.is_some() && status.is_some_and(|s| s.mailboxes == 2) {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "the operator could not do its job with the chart's permissions"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let _ = operator.kill();
    let _ = operator.wait();

    // Uninstalling the chart leaves the mail alone.
    ok(plane.helm().args(["uninstall", "kubemail", "-n", &ns]));
    assert!(
        Api::<Deployment>::namespaced(client.clone(), &ns)
            .get_opt("kubemail-operator")
            .await
            .expect("get")
            .is_none()
    );
    assert!(
        Api::<PersistentVolumeClaim>::namespaced(client.clone(), &ns)
            .get_opt("example-test-data")
            .await
            .expect("get")
            .is_some()
    );
}
