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
use kubemail_e2e::{ControlPlane, TestNamespace, Tools, install_crds, workspace_root};

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

/// Runs `helm template` with `values` and feeds the output to kubeconform in strict mode.
fn kubeconform(plane: &ControlPlane, schemas: &std::path::Path, values: &[&str]) -> (bool, String) {
    let rendered = ok(plane
        .helm()
        .args(["template", "kubemail", &chart(), "--kube-version", "1.37.2"])
        .args(values));
    let mut check = Command::new(Tools::get().expect("tools").path("kubeconform"))
        .args(["-strict", "-summary", "-output", "text"])
        .arg("-schema-location")
        .arg(format!(
            "{}/{{{{ .ResourceKind }}}}_{{{{ .Group }}}}_{{{{ .ResourceAPIVersion }}}}.json",
            schemas.display()
        ))
        // The Prometheus Operator's kinds are not installed here, so there are no schemas.
        .args(["-skip", "ServiceMonitor,PrometheusRule", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("kubeconform");
    std::io::Write::write_all(check.stdin.as_mut().expect("stdin"), rendered.as_bytes())
        .expect("write");
    let out = check.wait_with_output().expect("kubeconform");
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

#[tokio::test]
async fn helm_template_passes_kubeconform_strict_with_schemas_made_here() {
    let plane = ControlPlane::shared();
    let client = plane.client().await.expect("client");
    install_crds(&client).await.expect("CRDs");
    // The schemas: every kind the API server knows (built-in and our CRDs from crds/), from its
    // OpenAPI document, since kubeconform's own come from the internet.
    let dir = plane.scratch_dir("kubeconform").expect("dir");
    let openapi = ok(plane.kubectl().args(["get", "--raw", "/openapi/v2"]));
    std::fs::write(dir.join("openapi.json"), openapi).expect("write");
    let schemas = dir.join("schemas");
    ok(Command::new("python3")
        .arg(workspace_root().join("e2e/scripts/kubeconform-schemas.py"))
        .arg(dir.join("openapi.json"))
        .arg(&schemas));
    assert!(
        schemas
            .join("maildomain_kubemail.io_v1alpha1.json")
            .exists()
    );
    for values in [
        &[][..],
        &[
            "--set",
            "monitoring.serviceMonitor.enabled=true,monitoring.prometheusRule.enabled=true,monitoring.grafanaDashboard.enabled=true,podDisruptionBudget.enabled=true,networkPolicy.enabled=true",
        ][..],
        &["--set", "watchNamespaces={*}"][..],
    ] {
        let (passed, said) = kubeconform(plane, &schemas, values);
        assert!(passed, "kubeconform {values:?}:\n{said}");
        assert!(said.contains("Invalid: 0, Errors: 0"), "{said}");
    }
    // Strict mode bites: an unknown field in a rendered Deployment is refused.
    let bad = dir.join("bad.yaml");
    std::fs::write(
        &bad,
        "apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: x}\nspec:\n  replicaz: 1\n  selector: {matchLabels: {a: b}}\n  template:\n    metadata: {labels: {a: b}}\n    spec: {containers: [{name: c, image: i}]}\n",
    )
    .expect("write");
    let out = Command::new(Tools::get().expect("tools").path("kubeconform"))
        .args(["-strict", "-schema-location"])
        .arg(format!(
            "{}/{{{{ .ResourceKind }}}}_{{{{ .Group }}}}_{{{{ .ResourceAPIVersion }}}}.json",
            schemas.display()
        ))
        .arg(&bad)
        .output()
        .expect("kubeconform");
    assert!(!out.status.success(), "an unknown field passed kubeconform");
    // The dashboard is valid JSON with panels.
    let dashboard: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(workspace_root().join("charts/kubemail/dashboards/kubemail.json"))
            .expect("dashboard"),
    )
    .expect("the dashboard is JSON");
    assert!(dashboard["panels"].as_array().is_some_and(|p| p.len() >= 5));
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
        // Deleting is needed for the DNSEndpoint a MailDomain stops publishing, for the
        // runtime of a domain that moves onto another's (Deployment, Services, ServiceAccount)
        // and for the PodDisruptionBudget of one back to one replica; never for Secrets, PVCs
        // (mail) or the kubemail kinds.
        let deletable = [
            "dnsendpoints",
            "deployments",
            "services",
            "serviceaccounts",
            "poddisruptionbudgets",
        ];
        let may_delete = rule
            .resources
            .as_deref()
            .is_some_and(|r| r.iter().all(|r| deletable.contains(&r.as_str())));
        assert!(
            !rule.verbs.iter().any(|v| v == "update"
                || v == "deletecollection"
                || (v == "delete" && !may_delete)),
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

/// The chart's alerts, evaluated by Prometheus's own `promtool test rules` over series shaped
/// like the runtime's `/metrics`: a mailbox at 95% of its quota for 15 minutes fires
/// KubemailMailboxNearQuota (naming it), one at 50% and one without a quota do not.
#[test]
fn the_quota_alert_fires_near_the_quota_and_only_there() {
    let plane = ControlPlane::shared();
    let rendered = ok(plane.helm().args([
        "template",
        "kubemail",
        &chart(),
        "--set",
        "monitoring.prometheusRule.enabled=true",
        "--show-only",
        "templates/monitoring.yaml",
        "--kube-version",
        "1.37.2",
    ]));
    let rule: serde_yaml_ng::Value = rendered
        .split("\n---")
        .filter_map(|doc| serde_yaml_ng::from_str::<serde_yaml_ng::Value>(doc).ok())
        .find(|doc| doc["kind"] == "PrometheusRule")
        .unwrap_or_else(|| panic!("no PrometheusRule in:\n{rendered}"));
    let dir = tempfile::tempdir().expect("tmp");
    std::fs::write(
        dir.path().join("rules.yaml"),
        serde_yaml_ng::to_string(&rule["spec"]).expect("yaml"),
    )
    .expect("write");
    let target = r#"namespace="mail", pod="example-runtime-0", job="example-metrics""#;
    let tests = format!(
        r#"rule_files: [rules.yaml]
evaluation_interval: 1m
tests:
  - interval: 1m
    input_series:
      - series: 'kubemail_mailbox_used_bytes{{{target}, mailbox="full@example.test"}}'
        values: '500x5 950x25'
      - series: 'kubemail_mailbox_quota_bytes{{{target}, mailbox="full@example.test"}}'
        values: '1000x30'
      - series: 'kubemail_mailbox_used_bytes{{{target}, mailbox="half@example.test"}}'
        values: '500x30'
      - series: 'kubemail_mailbox_quota_bytes{{{target}, mailbox="half@example.test"}}'
        values: '1000x30'
      - series: 'kubemail_mailbox_used_bytes{{{target}, mailbox="unlimited@example.test"}}'
        values: '99999999x30'
    alert_rule_test:
      - eval_time: 10m
        alertname: KubemailMailboxNearQuota
        exp_alerts: []
      - eval_time: 25m
        alertname: KubemailMailboxNearQuota
        exp_alerts:
          - exp_labels: {{severity: warning, namespace: mail, pod: example-runtime-0, job: example-metrics, mailbox: full@example.test}}
            exp_annotations:
              summary: "Mailbox full@example.test is 95% full"
              description: "Mail over its quota is refused (452 4.2.2); raise the Mailbox's quota or ask its owner to delete mail. `kubectl get mbx -n mail` shows USED and QUOTA."
"#
    );
    std::fs::write(dir.path().join("tests.yaml"), tests).expect("write");
    let out = Command::new("promtool")
        .args(["test", "rules", "tests.yaml"])
        .current_dir(dir.path())
        .output()
        .expect("promtool (Debian's prometheus package) runs");
    assert!(
        out.status.success(),
        "promtool:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}
