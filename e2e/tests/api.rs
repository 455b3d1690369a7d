//! The kubemail.io API on a real kube-apiserver: the CRDs install, the examples are accepted,
//! invalid objects are refused with a message that names the field, and kubectl reads well.
use std::{
    io::Write,
    process::{Output, Stdio},
};

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::{
    Api,
    api::{Patch, PatchParams},
};
use kubemail_crds::{MailDomain, Mailbox};
use kubemail_e2e::{ControlPlane, install_crds, with_namespace, workspace_root};
use serde_json::{Value, json};

async fn client() -> kube::Client {
    let client = ControlPlane::shared()
        .client()
        .await
        .expect("a client for the test control plane");
    install_crds(&client).await.expect("installing the CRDs");
    client
}

fn kubectl(args: &[&str], stdin: Option<&str>) -> Output {
    let mut cmd = ControlPlane::shared().kubectl();
    cmd.args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().expect("kubectl starts");
    let mut pipe = child.stdin.take().expect("stdin");
    pipe.write_all(stdin.unwrap_or_default().as_bytes())
        .expect("writing to kubectl");
    drop(pipe);
    child.wait_with_output().expect("kubectl runs")
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

#[tokio::test]
async fn crds_install_and_become_established() {
    let client = client().await;
    let api: Api<CustomResourceDefinition> = Api::all(client);
    for name in [
        "maildomains.kubemail.io",
        "mailboxes.kubemail.io",
        "relaypolicies.kubemail.io",
    ] {
        let crd = api.get(name).await.expect("the CRD exists");
        let conditions = crd.status.and_then(|s| s.conditions).unwrap_or_default();
        for type_ in ["Established", "NamesAccepted"] {
            assert!(
                conditions
                    .iter()
                    .any(|c| c.type_ == type_ && c.status == "True"),
                "{name}: {type_} is not True: {conditions:?}"
            );
        }
        assert_eq!(crd.spec.names.categories, Some(vec!["mail".to_string()]));
    }
}

#[tokio::test]
async fn every_example_is_accepted_by_the_api_server() {
    let client = client().await;
    let examples = workspace_root().join("examples");
    let mut files = Vec::new();
    let mut dirs = vec![examples.clone()];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(&dir).expect("examples dir").flatten() {
            let path = entry.path();
            if path.is_dir() {
                dirs.push(path);
            } else if path.extension().is_some_and(|e| e == "yaml" || e == "yml") {
                files.push(path);
            }
        }
    }
    files.sort();
    assert!(
        !files.is_empty(),
        "no manifests under {}",
        examples.display()
    );
    with_namespace(&client, "examples", |ns| async move {
        for file in &files {
            let text_in = std::fs::read_to_string(file).expect("readable example");
            // Kustomize and GitOps tool files are not Kubernetes objects the API server takes.
            if !text_in.contains("apiVersion:") || is_tool_config(&text_in) {
                continue;
            }
            let path = file.to_string_lossy();
            let out = kubectl(
                &["create", "--dry-run=server", "-n", &ns.name, "-f", &path],
                None,
            );
            assert!(
                out.status.success(),
                "{} was refused:\n{}",
                file.display(),
                text(&out)
            );
        }
        // The GitOps kustomization renders the quickstart into its namespace.
        let gitops = examples.to_string_lossy().to_string();
        let out = kubectl(&["kustomize", &gitops], None);
        let rendered = text(&out);
        assert!(out.status.success(), "{rendered}");
        assert!(
            rendered.contains("kind: MailDomain") && rendered.contains("namespace: mail"),
            "{rendered}"
        );
    })
    .await;
}

/// Manifests of other tools (kustomize, Argo CD, Flux, cert-manager), whose CRDs this control
/// plane does not have; the kustomization is rendered by `kubectl kustomize` instead.
fn is_tool_config(manifest: &str) -> bool {
    manifest.lines().any(|line| {
        line.strip_prefix("apiVersion: ").is_some_and(|v| {
            [
                "kustomize.config.k8s.io/",
                "argoproj.io/",
                "fluxcd.io/",
                "cert-manager.io/",
            ]
            .iter()
            .any(|group| v.contains(group))
        })
    })
}

/// One invalid manifest: what it changes in a valid base, and what the refusal must say.
struct Invalid {
    what: &'static str,
    manifest: Value,
    field: &'static str,
    says: &'static str,
}

fn domain(spec: Value) -> Value {
    json!({"apiVersion": "kubemail.io/v1alpha1", "kind": "MailDomain",
           "metadata": {"name": "invalid"}, "spec": spec})
}

fn mailbox(extra: Value) -> Value {
    let mut spec = json!({"address": "jane@example.com", "passwordSecretRef": {"name": "jane"}});
    merge(&mut spec, extra);
    json!({"apiVersion": "kubemail.io/v1alpha1", "kind": "Mailbox",
           "metadata": {"name": "invalid"}, "spec": spec})
}

fn relay(spec: Value) -> Value {
    json!({"apiVersion": "kubemail.io/v1alpha1", "kind": "RelayPolicy",
           "metadata": {"name": "invalid"}, "spec": spec})
}

fn merge(base: &mut Value, extra: Value) {
    match (base, extra) {
        (Value::Object(base), Value::Object(extra)) => {
            for (k, v) in extra {
                if v.is_null() {
                    base.remove(&k);
                } else {
                    merge(base.entry(k).or_insert(Value::Null), v);
                }
            }
        }
        (base, extra) => *base = extra,
    }
}

fn invalid_manifests() -> Vec<Invalid> {
    let d = |what, spec, field, says| Invalid {
        what,
        manifest: domain(spec),
        field,
        says,
    };
    let m = |what, extra, field, says| Invalid {
        what,
        manifest: mailbox(extra),
        field,
        says,
    };
    let r = |what, spec, field, says| Invalid {
        what,
        manifest: relay(spec),
        field,
        says,
    };
    let many_aliases: Vec<String> = (0..10_000).map(|i| format!("a{i}@example.com")).collect();
    vec![
        d(
            "PROXY protocol without trusted proxies",
            json!({"domain": "example.com", "runtime": {"service": {"type": "LoadBalancer", "proxyProtocol": true}}}),
            "spec.runtime.service.trustedProxies",
            "proxyProtocol needs trustedProxies",
        ),
        d(
            "trusted proxies holding the pod's own probes",
            json!({"domain": "example.com", "runtime": {"service": {"proxyProtocol": true, "trustedProxies": ["10.0.0.0/16", "0.0.0.0/0"]}}}),
            "spec.runtime.service.trustedProxies",
            "without 127.0.0.1 or ::1",
        ),
        d(
            "trusted proxy that is no network",
            json!({"domain": "example.com", "runtime": {"service": {"proxyProtocol": true, "trustedProxies": ["10.0.0.0/33"]}}}),
            "spec.runtime.service.trustedProxies",
            "CIDR notation",
        ),
        d(
            "uppercase domain",
            json!({"domain": "Example.COM"}),
            "spec.domain",
            "lowercase DNS domain name",
        ),
        d(
            "domain with a space",
            json!({"domain": "my domain.com"}),
            "spec.domain",
            "lowercase DNS domain name",
        ),
        d(
            "domain label starting with -",
            json!({"domain": "-bad.example.com"}),
            "spec.domain",
            "lowercase DNS domain name",
        ),
        d(
            "single-label domain",
            json!({"domain": "localhost"}),
            "spec.domain",
            "lowercase DNS domain name",
        ),
        d("missing domain", json!({}), "spec.domain", "Required value"),
        d(
            "port 0",
            json!({"domain": "example.com", "protocols": {"smtp": {"port": 0}}}),
            "spec.protocols.smtp.port",
            "greater than or equal to 1",
        ),
        d(
            "port above 65535",
            json!({"domain": "example.com", "protocols": {"imaps": {"port": 70000}}}),
            "spec.protocols.imaps.port",
            "less than or equal to 65535",
        ),
        d(
            "unknown protocol",
            json!({"domain": "example.com", "protocols": {"gopher": {"port": 70}}}),
            "spec.protocols.gopher",
            "unknown field",
        ),
        d(
            "two protocols on one port",
            json!({"domain": "example.com", "protocols": {"imap": {"port": 25}}}),
            "spec.protocols",
            "two enabled protocols cannot share a port",
        ),
        d(
            "a protocol moved onto another's registered port",
            json!({"domain": "example.com", "protocols": {"pop3": {"enabled": true}, "imap": {"port": 110}}}),
            "spec.protocols",
            "two enabled protocols cannot share a port",
        ),
        d(
            "negative storage size",
            json!({"domain": "example.com", "storage": {"size": "-5Gi"}}),
            "spec.storage.size",
            "positive quantity",
        ),
        d(
            "storage size that is not a quantity",
            json!({"domain": "example.com", "storage": {"size": "lots"}}),
            "spec.storage.size",
            "positive quantity",
        ),
        d(
            "unknown retention policy",
            json!({"domain": "example.com", "storage": {"retentionPolicy": "Shred"}}),
            "spec.storage.retentionPolicy",
            "Unsupported value",
        ),
        d(
            "catch-all in another domain",
            json!({"domain": "example.com", "catchAll": "all@example.org"}),
            "spec.catchAll",
            "address in this domain",
        ),
        d(
            "three replicas of the Maildir store",
            json!({"domain": "example.com", "runtime": {"replicas": 3}}),
            "spec.runtime.replicas",
            "runtime.replicas above 1 needs storage.database",
        ),
        d(
            "a database without a Secret name",
            json!({"domain": "example.com", "storage": {"database": {"secretRef": {"key": "uri"}}}}),
            "spec.storage.database.secretRef.name",
            "Required value",
        ),
        d(
            "seventeen replicas",
            json!({"domain": "example.com", "runtime": {"replicas": 17}, "storage": {"database": {"secretRef": {"name": "db"}}}}),
            "spec.runtime.replicas",
            "less than or equal to 16",
        ),
        d(
            "DKIM selector with _",
            json!({"domain": "example.com", "dkim": {"selector": "my_selector"}}),
            "spec.dkim.selector",
            "one DNS label",
        ),
        d(
            "message size above 1Gi",
            json!({"domain": "example.com", "limits": {"maxMessageSize": "5Gi"}}),
            "spec.limits.maxMessageSize",
            "at most 1Gi",
        ),
        d(
            "TLS Secret name with capitals",
            json!({"domain": "example.com", "tls": {"secretName": "My_Cert"}}),
            "spec.tls.secretName",
            "name of a Kubernetes object",
        ),
        d(
            "alias domain repeating the domain",
            json!({"domain": "example.com", "aliasDomains": ["example.com"]}),
            "spec.aliasDomains",
            "must not repeat domain",
        ),
        d(
            "unknown Service type",
            json!({"domain": "example.com", "runtime": {"service": {"type": "Ingress"}}}),
            "spec.runtime.service.type",
            "Unsupported value",
        ),
        m(
            "an app password with a name that is not a label",
            json!({"appPasswords": [{"name": "My Phone", "secretRef": {"name": "p"}}]}),
            "spec.appPasswords[0].name",
            "lowercase letters, digits and '-'",
        ),
        m(
            "two app passwords with one name",
            json!({"appPasswords": [{"name": "phone", "secretRef": {"name": "p"}}, {"name": "phone", "secretRef": {"name": "q"}}]}),
            "spec.appPasswords[1]",
            "Duplicate value",
        ),
        m(
            "nine app passwords",
            json!({"appPasswords": (0..9).map(|i| json!({"name": format!("d{i}"), "secretRef": {"name": "p"}})).collect::<Vec<_>>()}),
            "spec.appPasswords",
            "must have at most 8 items",
        ),
        m(
            "an app password that opens no protocol",
            json!({"appPasswords": [{"name": "phone", "secretRef": {"name": "p"}, "protocols": []}]}),
            "spec.appPasswords[0].protocols",
            "should have at least 1 items",
        ),
        m(
            "address without @",
            json!({"address": "jane"}),
            "spec.address",
            "must be a mail address",
        ),
        m(
            "an address whose local part has a slash (the store's directory name)",
            json!({"address": "a/b@example.com"}),
            "spec.address",
            "without '/'",
        ),
        m(
            "address with two @",
            json!({"address": "jane@@example.com"}),
            "spec.address",
            "must be a mail address",
        ),
        m(
            "address with a non-ASCII look-alike",
            json!({"address": "j\u{0430}ne@example.com"}),
            "spec.address",
            "must be a mail address",
        ),
        m(
            "address with an uppercase domain",
            json!({"address": "jane@EXAMPLE.com"}),
            "spec.address",
            "must be a mail address",
        ),
        m(
            "address with a 65-character local part",
            json!({"address": format!("{}@example.com", "x".repeat(65))}),
            "spec.address",
            "local part of at most 64",
        ),
        m(
            "quoted local part",
            json!({"address": "\"jane doe\"@example.com"}),
            "spec.address",
            "must be a mail address",
        ),
        m(
            "negative quota",
            json!({"quota": "-1Gi"}),
            "spec.quota",
            "positive quantity",
        ),
        m(
            "unknown protocol",
            json!({"protocols": ["SMTP", "GOPHER"]}),
            "spec.protocols[1]",
            "Unsupported value",
        ),
        m(
            "no password Secret",
            json!({"passwordSecretRef": null}),
            "spec.passwordSecretRef",
            "Required value",
        ),
        m(
            "display name with a header injection",
            json!({"displayName": "Jane\r\nBcc: all@example.com"}),
            "spec.displayName",
            "must be one line",
        ),
        m(
            "10,000 aliases",
            json!({"aliases": many_aliases}),
            "spec.aliases",
            "must have at most 256 items",
        ),
        m(
            "alias that is no address",
            json!({"aliases": ["not an address"]}),
            "spec.aliases",
            "every entry of aliases must be a mail address",
        ),
        m(
            "forward to itself",
            json!({"forwardTo": ["jane@example.com"]}),
            "spec.forwardTo",
            "own address",
        ),
        r(
            "smarthost route without a smarthost",
            json!({"route": {"mode": "Smarthost"}}),
            "spec.route.smarthost",
            "required when route.mode is Smarthost",
        ),
        r(
            "smarthost without a host",
            json!({"route": {"mode": "Smarthost", "smarthost": {"port": 587}}}),
            "spec.route.smarthost.host",
            "Required value",
        ),
        r(
            "smarthost port 0",
            json!({"route": {"mode": "Smarthost", "smarthost": {"host": "smtp.example.net", "port": 0}}}),
            "spec.route.smarthost.port",
            "greater than or equal to 1",
        ),
        r(
            "smarthost host that is no name",
            json!({"route": {"mode": "Smarthost", "smarthost": {"host": "smtp example"}}}),
            "spec.route.smarthost.host",
            "DNS name or an IP address",
        ),
        r(
            "smarthost credentials over plaintext",
            json!({"route": {"mode": "Smarthost", "smarthost": {"host": "smtp.example.net", "tls": "None",
                   "credentialsSecretRef": {"name": "provider-login"}}}}),
            "spec.route.smarthost.credentialsSecretRef",
            "are never sent without TLS",
        ),
        r(
            "unknown smarthost TLS mode",
            json!({"route": {"mode": "Smarthost", "smarthost": {"host": "smtp.example.net", "tls": "SSLv3"}}}),
            "spec.route.smarthost.tls",
            "Unsupported value",
        ),
        r(
            "unknown route",
            json!({"route": {"mode": "Pigeon"}}),
            "spec.route.mode",
            "Unsupported value",
        ),
        r(
            "invalid client network",
            json!({"allow": {"clientCIDRs": ["10.0.0.0/33"]}}),
            "spec.allow.clientCIDRs",
            "CIDR notation",
        ),
        r(
            "rate of zero messages",
            json!({"rateLimits": {"perSender": {"messages": 0, "period": "1h"}}}),
            "spec.rateLimits.perSender.messages",
            "greater than or equal to 1",
        ),
        r(
            "queue age that is no duration",
            json!({"retry": {"maxAge": "forever"}}),
            "spec.retry.maxAge",
            "must be a duration",
        ),
        d(
            "DNS list zone that is no domain",
            json!({"domain": "example.com", "inbound": {"dnsLists": [{"zone": "not a zone"}]}}),
            "spec.inbound.dnsLists[0].zone",
            "must be a lowercase DNS domain name",
        ),
        d(
            "DNS list answer outside 127.0.0.0/8",
            json!({"domain": "example.com", "inbound": {"dnsLists": [{"zone": "bl.example.org", "answers": ["10.0.0.2"]}]}}),
            "spec.inbound.dnsLists[0].answers",
            "127.0.0.0/8",
        ),
        d(
            "clamd address without a port",
            json!({"domain": "example.com", "inbound": {"clamav": {"address": "clamav.mail.svc"}}}),
            "spec.inbound.clamav.address",
            "must be host:port",
        ),
        d(
            "rspamd controller password with no controller to send it to",
            json!({"domain": "example.com", "inbound": {"rspamd": {"url": "http://rspamd:11333", "controllerPasswordSecretRef": {"name": "learn"}}}}),
            "spec.inbound.rspamd.controllerPasswordSecretRef",
            "needs controllerUrl",
        ),
        d(
            "hosted domain with a RelayPolicy of its own",
            json!({"domain": "brand.com", "hostedBy": {"name": "acme"}, "relayPolicyRef": {"name": "apps"}}),
            "spec.relayPolicyRef",
            "a hosted domain sends under its server's RelayPolicy",
        ),
        d(
            "hosted domain with a database of its own",
            json!({"domain": "brand.com", "hostedBy": {"name": "acme"}, "storage": {"database": {"secretRef": {"name": "db"}}}}),
            "spec.storage",
            "a hosted domain's mail is stored by its server",
        ),
        d(
            "hosted domain with replicas of its own",
            json!({"domain": "brand.com", "hostedBy": {"name": "acme"}, "runtime": {"replicas": 0}}),
            "spec.runtime",
            "a hosted domain runs on its server's runtime",
        ),
        d(
            "hosted domain with a LoadBalancer of its own",
            json!({"domain": "brand.com", "hostedBy": {"name": "acme"}, "runtime": {"service": {"type": "LoadBalancer"}}}),
            "spec.runtime",
            "a hosted domain runs on its server's runtime",
        ),
        d(
            "hosted domain with protocols of its own",
            json!({"domain": "brand.com", "hostedBy": {"name": "acme"}, "protocols": {"pop3": {"enabled": false}}}),
            "spec.protocols",
            "a hosted domain is served on its server's protocols and ports",
        ),
        d(
            "hosted domain with a scanner of its own",
            json!({"domain": "brand.com", "hostedBy": {"name": "acme"}, "inbound": {"clamav": {"address": "clamd:3310"}}}),
            "spec.inbound",
            "a hosted domain's incoming mail is checked as its server says",
        ),
        d(
            "hosted domain with storage of its own",
            json!({"domain": "brand.com", "hostedBy": {"name": "acme"}, "storage": {"size": "1Gi"}}),
            "spec.storage",
            "a hosted domain's mail is stored by its server",
        ),
        d(
            "greylisting delay that is no duration",
            json!({"domain": "example.com", "inbound": {"greylisting": {"delay": "soon"}}}),
            "spec.inbound.greylisting.delay",
            "must be a duration",
        ),
        m(
            "auto-reply that ends before it starts",
            json!({"autoReply": {"subject": "Away", "body": "x", "start": "2026-12-20T00:00:00Z", "end": "2026-12-01T00:00:00Z"}}),
            "spec.autoReply.end",
            "end must come after start",
        ),
        m(
            "Sieve script from two places",
            json!({"sieve": {"configMapRef": {"name": "a"}, "secretRef": {"name": "b"}}}),
            "spec.sieve",
            "exactly one of configMapRef and secretRef",
        ),
    ]
}

#[tokio::test]
async fn proxy_protocol_with_trusted_proxies_is_accepted() {
    let client = client().await;
    with_namespace(&client, "proxy", |ns| async move {
        let manifest = domain(json!({"domain": "example.com", "runtime": {"service": {
            "type": "LoadBalancer", "proxyProtocol": true,
            "trustedProxies": ["10.0.0.0/16", "127.0.0.2/32", "2001:db8::/32"]}}}));
        let manifest = serde_json::to_string(&manifest).expect("json");
        let out = kubectl(
            &["create", "--dry-run=server", "-n", &ns.name, "-f", "-"],
            Some(&manifest),
        );
        assert!(out.status.success(), "{}", text(&out));
    })
    .await;
}

#[tokio::test]
async fn invalid_manifests_are_refused_with_a_message_naming_the_field() {
    let client = client().await;
    let cases = invalid_manifests();
    assert!(cases.len() >= 15);
    with_namespace(&client, "invalid", |ns| async move {
        let mut failures = Vec::new();
        for case in &cases {
            let manifest = serde_json::to_string(&case.manifest).expect("json");
            let out = kubectl(
                &["create", "--dry-run=server", "-n", &ns.name, "-f", "-"],
                Some(&manifest),
            );
            let said = text(&out);
            println!(
                "{:<45} -> {}",
                case.what,
                said.lines().next().unwrap_or_default()
            );
            if out.status.success() {
                failures.push(format!("{}: accepted", case.what));
            } else if !said.contains(case.field) || !said.contains(case.says) {
                failures.push(format!(
                    "{}: expected {:?} and {:?} in:\n{said}",
                    case.what, case.field, case.says
                ));
            }
        }
        assert!(failures.is_empty(), "{}", failures.join("\n\n"));
    })
    .await;
}

#[tokio::test]
async fn immutable_fields_stay_immutable() {
    let client = client().await;
    with_namespace(&client, "immutable", |ns| async move {
        let md = domain(json!({"domain": "example.com"}));
        let mbx = mailbox(json!({}));
        for manifest in [&md, &mbx] {
            let out = kubectl(
                &["create", "-n", &ns.name, "-f", "-"],
                Some(&manifest.to_string()),
            );
            assert!(out.status.success(), "{}", text(&out));
        }
        let changes = [
            (
                {
                    let mut m = md.clone();
                    m["spec"]["domain"] = json!("example.org");
                    m
                },
                "spec.domain",
                "domain is immutable",
            ),
            (
                {
                    let mut m = mbx.clone();
                    m["spec"]["address"] = json!("john@example.com");
                    m
                },
                "spec.address",
                "address is immutable",
            ),
        ];
        for (changed, field, says) in changes {
            let out = kubectl(
                &[
                    "apply",
                    "--server-side",
                    "--force-conflicts",
                    "-n",
                    &ns.name,
                    "-f",
                    "-",
                ],
                Some(&changed.to_string()),
            );
            let said = text(&out);
            assert!(!out.status.success(), "the change was accepted: {said}");
            assert!(said.contains(field) && said.contains(says), "{said}");
        }
        // A change to a mutable field is accepted.
        let mut changed = mbx.clone();
        changed["spec"]["quota"] = json!("2Gi");
        let out = kubectl(
            &[
                "apply",
                "--server-side",
                "--force-conflicts",
                "-n",
                &ns.name,
                "-f",
                "-",
            ],
            Some(&changed.to_string()),
        );
        assert!(out.status.success(), "{}", text(&out));
    })
    .await;
}

#[tokio::test]
async fn defaults_are_filled_in_by_the_api_server() {
    let client = client().await;
    with_namespace(&client, "defaults", |ns| {
        let client = client.clone();
        async move {
            let md = domain(json!({"domain": "example.com"}));
            let out = kubectl(
                &["create", "-n", &ns.name, "-f", "-"],
                Some(&md.to_string()),
            );
            assert!(out.status.success(), "{}", text(&out));
            let out = kubectl(
                &["create", "-n", &ns.name, "-f", "-"],
                Some(&mailbox(json!({})).to_string()),
            );
            assert!(out.status.success(), "{}", text(&out));

            let stored = Api::<MailDomain>::namespaced(client.clone(), &ns.name)
                .get("invalid")
                .await
                .expect("the MailDomain");
            let spec = stored.spec;
            assert_eq!(spec.protocols.smtp.port, Some(25));
            assert_eq!(spec.protocols.submission.port, Some(587));
            assert_eq!(spec.protocols.submissions.port, Some(465));
            assert_eq!(spec.protocols.imap.port, Some(143));
            assert_eq!(spec.protocols.imaps.port, Some(993));
            assert_eq!(spec.protocols.pop3.port, Some(110));
            assert_eq!(spec.protocols.pop3s.port, Some(995));
            assert!(spec.protocols.pop3s.enabled);
            assert_eq!(spec.storage.size, "10Gi");
            assert_eq!(
                spec.storage.retention_policy,
                kubemail_crds::mail_domain::RetentionPolicy::Retain
            );
            assert_eq!(spec.dkim.selector, "kubemail");
            assert_eq!(spec.limits.max_message_size, "25Mi");
            assert_eq!(spec.runtime.replicas, 1);

            let stored = Api::<Mailbox>::namespaced(client.clone(), &ns.name)
                .get("invalid")
                .await
                .expect("the Mailbox");
            assert_eq!(stored.spec.password_secret_ref.key, "password");
            assert_eq!(stored.spec.protocols.len(), 3);
            assert!(!stored.spec.suspended);
        }
    })
    .await;
}

#[tokio::test]
async fn kubectl_explain_reads_well() {
    let _client = client().await;
    let out = kubectl(&["explain", "mailbox.spec"], None);
    // kubectl wraps lines at its own width; compare words, not line breaks.
    let said = text(&out).split_whitespace().collect::<Vec<_>>().join(" ");
    assert!(out.status.success(), "{said}");
    for expected in [
        "passwordSecretRef",
        "The Secret key holding the password",
        "quota",
        "Mail over quota is",
        "suspended",
    ] {
        assert!(said.contains(expected), "missing {expected:?} in:\n{said}");
    }
    let out = kubectl(
        &["explain", "maildomain.spec.storage.retentionPolicy"],
        None,
    );
    let said = text(&out);
    assert!(out.status.success(), "{said}");
    assert!(
        said.contains("Retain") && said.contains("every message"),
        "{said}"
    );
    let out = kubectl(&["explain", "relaypolicy.spec.route.smarthost.tls"], None);
    let said = text(&out);
    assert!(
        said.contains("StartTLS") && said.contains("Implicit"),
        "{said}"
    );
}

#[tokio::test]
async fn kubectl_get_mail_lists_every_kind_with_its_columns() {
    let client = client().await;
    with_namespace(&client, "getmail", |ns| {
        let client = client.clone();
        async move {
            let quickstart = workspace_root().join("examples/quickstart");
            let out = kubectl(
                &["apply", "-n", &ns.name, "-f", &quickstart.to_string_lossy()],
                None,
            );
            assert!(out.status.success(), "{}", text(&out));

            // The status subresource: what the operator writes shows in the READY column, and a
            // duplicate condition type is refused (conditions are a list-map keyed by type).
            let status = json!({
                "apiVersion": "kubemail.io/v1alpha1", "kind": "MailDomain",
                "status": {"mailboxes": 2, "hostname": "mail.example.test", "conditions": [{
                    "type": "Ready", "status": "True", "reason": "ProbesPassed",
                    "message": "every enabled protocol answered", "lastTransitionTime": "2026-01-01T00:00:00Z"
                }]}
            });
            let api = Api::<MailDomain>::namespaced(client.clone(), &ns.name);
            api.patch_status("example-test", &PatchParams::apply("kubemail-e2e"), &Patch::Apply(&status))
                .await
                .expect("status patch");
            let mut duplicate = status.clone();
            let condition = duplicate["status"]["conditions"][0].clone();
            duplicate["status"]["conditions"] = json!([condition.clone(), condition]);
            let refused = api
                .patch_status("example-test", &PatchParams::apply("kubemail-e2e"), &Patch::Apply(&duplicate))
                .await;
            assert!(refused.is_err(), "duplicate condition types were accepted");

            let out = kubectl(&["get", "mail", "-n", &ns.name], None);
            let said = text(&out);
            assert!(out.status.success(), "{said}");
            for expected in [
                "maildomain.kubemail.io/example-test",
                "mailbox.kubemail.io/alice",
                "mailbox.kubemail.io/bob",
                "relaypolicy.kubemail.io/apps",
                "DOMAIN", "HOSTNAME", "MAILBOXES", "ADDRESS", "ROUTE", "READY", "AGE",
                "example.test", "mail.example.test", "alice@example.test", "Direct",
            ] {
                assert!(said.contains(expected), "missing {expected:?} in:\n{said}");
            }
            let out = kubectl(&["get", "md", "-n", &ns.name], None);
            let said = text(&out);
            let row = said.lines().find(|l| l.starts_with("example-test")).unwrap_or_default();
            assert!(row.contains("True") && row.contains(" 2 "), "{said}");
            for short in ["mbx", "rp"] {
                let out = kubectl(&["get", short, "-n", &ns.name], None);
                assert!(out.status.success(), "{}", text(&out));
            }
        }
    })
    .await;
}
