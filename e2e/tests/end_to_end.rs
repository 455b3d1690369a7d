//! From `kubectl apply` to mail in an inbox, on a real control plane with the real operator and
//! the runtime pod started from the rendered Deployment (the harness plays the node). Prints a
//! timing table: apply -> Ready, apply -> first login, password change -> effect.
use std::{
    path::PathBuf,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use k8s_openapi::api::{
    apps::v1::Deployment,
    core::v1::{PersistentVolumeClaim, Secret},
};
use kube::{
    Api,
    api::{DeleteParams, Patch, PatchParams},
};
use kubemail_crds::{MailDomain, Mailbox, RelayPolicy};
use kubemail_e2e::{ControlPlane, PodRunner, TestNamespace, install_crds, workspace_root};

const ENTRYPOINT: &str = "/usr/local/bin/mail-runtime";

/// A workspace binary: from the environment, or next to this test in the target directory.
fn workspace_binary(name: &str, var: &str) -> PathBuf {
    if let Some(path) = std::env::var_os(var) {
        return PathBuf::from(path);
    }
    let exe = std::env::current_exe().expect("test path");
    let dir = exe.parent().and_then(|d| d.parent()).expect("target dir");
    let path = dir.join(name);
    assert!(
        path.is_file(),
        "{} is missing: build it (cargo build -p ...) or set {var}",
        path.display()
    );
    path
}

struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Whether `user` can log in over submission (587, STARTTLS + AUTH) — Python's smtplib.
fn can_log_in(user: &str, password: &str) -> bool {
    let script = "import smtplib, ssl, sys\n\
ctx = ssl.create_default_context(); ctx.check_hostname = False; ctx.verify_mode = ssl.CERT_NONE\n\
s = smtplib.SMTP('127.0.0.1', 2587, timeout=5); s.starttls(context=ctx)\n\
try:\n    s.login(sys.argv[1], sys.argv[2]); print('ok')\nexcept smtplib.SMTPAuthenticationError:\n    print('refused')\n";
    let out = Command::new("python3")
        .args(["-c", script, user, password])
        .output()
        .expect("python3");
    String::from_utf8_lossy(&out.stdout).trim() == "ok"
}

/// bob's messages on the pod's volume (new and cur).
fn bob_messages(pod: &PodRunner) -> usize {
    let dir = pod
        .data_dir
        .clone()
        .expect("data")
        .join("mail/example.test/bob");
    ["new", "cur"]
        .iter()
        .map(|sub| {
            std::fs::read_dir(dir.join(sub))
                .map(|d| d.count())
                .unwrap_or(0)
        })
        .sum()
}

fn wait_for(what: &str, timeout: Duration, mut check: impl FnMut() -> bool) -> Duration {
    let start = Instant::now();
    while start.elapsed() < timeout {
        if check() {
            return start.elapsed();
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("{what}: not within {timeout:?}");
}

fn runtime_pids() -> Vec<String> {
    let out = Command::new("pgrep")
        .args(["-f", &format!("^{ENTRYPOINT} serve")])
        .output()
        .expect("pgrep");
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .map(String::from)
        .collect()
}

fn kubectl_apply(plane: &ControlPlane, ns: &str, path: &std::path::Path) {
    let out = plane
        .kubectl()
        .args(["apply", "-n", ns, "-f"])
        .arg(path)
        .output()
        .expect("kubectl");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test]
async fn from_apply_to_an_inbox() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let plane = ControlPlane::start().expect("control plane");
    let client = plane.client().await.expect("client");
    install_crds(&client).await.expect("CRDs");
    let ns = TestNamespace::create(&client, "e2e", Default::default())
        .await
        .expect("ns")
        .name;
    // The operator runs with the chart's ServiceAccount: the chart is installed (its operator
    // Deployment has no node to run on here) and the operator is started by hand with a token
    // for that ServiceAccount from the TokenRequest API.
    let helm = plane
        .helm()
        .args(["install", "kubemail"])
        .arg(workspace_root().join("charts/kubemail"))
        .args(["-n", &ns, "--skip-crds", "--wait=false"])
        .output()
        .expect("helm");
    assert!(
        helm.status.success(),
        "{}",
        String::from_utf8_lossy(&helm.stderr)
    );
    let token = plane
        .kubectl()
        .args(["create", "token", "kubemail-operator", "-n", &ns])
        .args(["--duration", "2h"])
        .output()
        .expect("kubectl create token");
    assert!(
        token.status.success(),
        "no token for the chart's ServiceAccount"
    );
    let token = String::from_utf8_lossy(&token.stdout).trim().to_string();
    let operator_kubeconfig = plane
        .scratch_dir("e2e")
        .expect("dir")
        .join("operator.kubeconfig");
    let admin = std::fs::read_to_string(plane.kubeconfig()).expect("kubeconfig");
    std::fs::write(
        &operator_kubeconfig,
        admin
            .lines()
            .map(|l| {
                if l.trim_start().starts_with("token:") {
                    format!("    token: {token}")
                } else {
                    l.to_string()
                }
            })
            .collect::<Vec<_>>()
            .join("\n"),
    )
    .expect("operator kubeconfig");
    let log_path = plane.scratch_dir("e2e").expect("dir").join("operator.log");
    let start_operator = || {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
            .expect("log");
        Killed(
            Command::new(workspace_binary(
                "kubemail-operator",
                "KUBEMAIL_OPERATOR_BIN",
            ))
            .args([
                "--namespace",
                &ns,
                "--probe-host-override",
                "127.0.0.1",
                "--runtime-binary",
                ENTRYPOINT,
            ])
            .args(["--health-addr", "off"])
            .env("KUBECONFIG", &operator_kubeconfig)
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .expect("operator"),
        )
    };
    let operator = start_operator();
    let mut timings: Vec<(String, Duration)> = Vec::new();

    // Apply the quickstart; the runtime pod starts from the rendered Deployment.
    let applied = Instant::now();
    kubectl_apply(&plane, &ns, &workspace_root().join("examples/quickstart"));
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), &ns);
    let deployment = loop {
        if let Some(d) = deployments.get_opt("example-test-mail").await.expect("get") {
            break d;
        }
        assert!(applied.elapsed() < Duration::from_secs(60), "no Deployment");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let dir = plane.scratch_dir("e2e/pod").expect("dir");
    let runtime = workspace_binary("mail-runtime", "KUBEMAIL_RUNTIME_BIN");
    let mut pod = PodRunner::start(&client, &ns, &deployment, &runtime, ENTRYPOINT, &dir)
        .await
        .expect("pod");
    let first_login = tokio::task::spawn_blocking(|| {
        wait_for("alice's first login", Duration::from_secs(60), || {
            can_log_in("alice@example.test", "alice-quickstart-password")
        })
    });
    let domains: Api<MailDomain> = Api::namespaced(client.clone(), &ns);
    loop {
        let md = domains.get("example-test").await.expect("md");
        let status = md.status.unwrap_or_default();
        if status
            .conditions
            .iter()
            .any(|c| c.type_ == "Ready" && c.status == "True")
        {
            for t in ["SMTPReady", "SubmissionReady", "IMAPReady", "POP3Ready"] {
                assert!(
                    status
                        .conditions
                        .iter()
                        .any(|c| c.type_ == t && c.status == "True"),
                    "{t}"
                );
            }
            assert!(status.dns_records.iter().any(|r| r.purpose == "DKIM"));
            break;
        }
        assert!(pod.running(), "the runtime exited:\n{}", pod.log_tail());

        assert!(
            applied.elapsed() < Duration::from_secs(120),
            "not Ready: {:?}",
            status.conditions
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    timings.push(("apply -> MailDomain Ready".into(), applied.elapsed()));

    first_login.await.expect("login check");
    timings.push(("apply -> first login".into(), applied.elapsed()));
    let out = plane
        .kubectl()
        .args(["get", "mail", "-n", &ns])
        .output()
        .expect("kubectl");
    let listing = String::from_utf8_lossy(&out.stdout);
    assert!(
        listing.contains("example-test") && listing.contains("True"),
        "{listing}"
    );

    // Real clients: swaks submits alice -> bob; Python's poplib downloads it for bob.
    let out = Command::new("swaks")
        .args(["--server", "127.0.0.1:2587", "--tls", "--auth", "PLAIN"])
        .args([
            "--auth-user",
            "alice@example.test",
            "--auth-password",
            "alice-quickstart-password",
        ])
        .args([
            "--from",
            "alice@example.test",
            "--to",
            "bob@example.test",
            "--header",
            "Subject: e2e",
        ])
        .output()
        .expect("swaks");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    let poplib = workspace_root().join("mail-runtime/tests/clients/poplib_download.py");
    let out = Command::new("python3")
        .arg(&poplib)
        .args([
            "stls",
            "127.0.0.1",
            "2110",
            "bob@example.test",
            "bob-quickstart-password",
            "list",
        ])
        .output()
        .expect("poplib");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let listed: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(listed["uidl"].as_array().map(Vec::len), Some(1));

    // Bob reads it over IMAP (143 STARTTLS), and an IDLE session hears of the next delivery.
    let idle = workspace_root().join("mail-runtime/tests/clients/imap_idle.py");
    let out = Command::new("python3")
        .arg(&idle)
        .args([
            "127.0.0.1",
            "2143",
            "2525",
            "bob@example.test",
            "bob-quickstart-password",
        ])
        .output()
        .expect("imap_idle.py");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let idle: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(idle["subjects"], serde_json::json!(["e2e"]));
    assert_eq!(idle["exists"], "* 2 EXISTS");
    let woke = Duration::from_millis(idle["latency_ms"].as_u64().expect("latency"));
    timings.push(("SMTP delivery -> IDLE wakes".into(), woke));
    assert!(woke < Duration::from_secs(1), "IDLE woke after {woke:?}");
    // Mail to an outside address leaves through the RelayPolicy: switched to a smarthost on
    // loopback (aiosmtpd), a change the runtime takes without a restart. The message arrives
    // DKIM-signed with the operator's key, and dkimpy verifies it against the DKIM record the
    // MailDomain's status says to publish.
    let peer_dir = plane.scratch_dir("e2e/peer").expect("dir");
    let mut peer = Command::new("python3")
        .arg(workspace_root().join("mail-runtime/tests/clients/smtp_peer.py"))
        .args(["127.0.0.36", "2526"])
        .arg(&peer_dir)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("smtp_peer.py");
    let mut ready = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(peer.stdout.take().expect("stdout")),
        &mut ready,
    )
    .expect("ready");
    assert_eq!(ready.trim(), "ready");
    let _peer = Killed(peer);
    let policies: Api<RelayPolicy> = Api::namespaced(client.clone(), &ns);
    let start = Instant::now();
    policies
        .patch(
            "apps",
            &PatchParams::default(),
            &Patch::Merge(serde_json::json!({"spec": {"route": {
                "mode": "Smarthost",
                "smarthost": {"host": "127.0.0.36", "port": 2526, "tls": "None"}
            }}})),
        )
        .await
        .expect("patch the RelayPolicy");
    let status_file = pod
        .data_dir
        .clone()
        .expect("data")
        .join("kubemail-runtime-status.json");
    let configs: Api<Secret> = Api::namespaced(client.clone(), &ns);
    loop {
        let secret = configs
            .get("example-test-runtime-config")
            .await
            .expect("config");
        let yaml = secret
            .data
            .as_ref()
            .and_then(|d| d.get("runtime.yaml"))
            .map(|b| String::from_utf8_lossy(&b.0).into_owned())
            .unwrap_or_default();
        let revision = secret
            .metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get("kubemail.io/config-revision"))
            .cloned()
            .unwrap_or_default();
        let served: serde_json::Value = std::fs::read(&status_file)
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or_default();
        if yaml.contains("127.0.0.36") && served["revision"] == revision.as_str() {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "the smarthost route was not served"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    timings.push(("RelayPolicy change -> served".into(), start.elapsed()));
    let out = Command::new("swaks")
        .args(["--server", "127.0.0.1:2587", "--tls", "--auth", "PLAIN"])
        .args([
            "--auth-user",
            "alice@example.test",
            "--auth-password",
            "alice-quickstart-password",
        ])
        .args([
            "--from",
            "alice@example.test",
            "--to",
            "friend@outside.test",
        ])
        .args(["--h-Subject", "leaving through the relay"])
        .output()
        .expect("swaks");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    let sent = Instant::now();
    let relayed = peer_dir.join("1.eml");
    while !relayed.exists() {
        assert!(
            sent.elapsed() < Duration::from_secs(30),
            "the smarthost never got the message"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    timings.push(("submit -> at the smarthost".into(), sent.elapsed()));
    let dkim = domains
        .get("example-test")
        .await
        .expect("md")
        .status
        .unwrap_or_default()
        .dns_records
        .into_iter()
        .find(|r| r.purpose == "DKIM")
        .expect("a DKIM record in status");
    // A zone-file value may be split into quoted strings; DNS joins them.
    let txt: String = if dkim.value.contains('"') {
        dkim.value.split('"').skip(1).step_by(2).collect()
    } else {
        dkim.value.clone()
    };
    let txt_file = peer_dir.join("dkim.txt");
    std::fs::write(&txt_file, &txt).expect("txt");
    let verdict = Command::new("python3")
        .arg(workspace_root().join("mail-runtime/tests/clients/dkim_verify.py"))
        .arg(&relayed)
        .arg(dkim.name.trim_end_matches('.'))
        .arg(&txt_file)
        .output()
        .expect("dkim_verify.py");
    assert_eq!(
        String::from_utf8_lossy(&verdict.stdout).trim(),
        "pass",
        "{}",
        String::from_utf8_lossy(&verdict.stderr)
    );

    let pids = runtime_pids();
    assert_eq!(pids.len(), 1, "one runtime process: {pids:?}");

    // Kill the operator mid-run and restart kube-apiserver: a new operator converges (a Mailbox
    // applied meanwhile can log in), nothing is lost and the runtime keeps running.
    let mail_before = bob_messages(&pod);
    drop(operator);
    let start = Instant::now();
    plane.restart_apiserver().expect("restart kube-apiserver");
    let _operator = start_operator();
    let dave = plane
        .scratch_dir("e2e/dave")
        .expect("dir")
        .join("dave.yaml");
    std::fs::write(&dave, "apiVersion: v1\nkind: Secret\nmetadata: {name: dave-password}\nstringData: {password: dave-pw}\n---\n\
apiVersion: kubemail.io/v1alpha1\nkind: Mailbox\nmetadata: {name: dave}\nspec: {address: dave@example.test, passwordSecretRef: {name: dave-password}}\n").expect("write");
    kubectl_apply(&plane, &ns, &dave);
    tokio::task::spawn_blocking(|| {
        wait_for("dave logs in", Duration::from_secs(120), || {
            can_log_in("dave@example.test", "dave-pw")
        })
    })
    .await
    .expect("join");
    timings.push((
        "operator kill + apiserver restart -> converged".into(),
        start.elapsed(),
    ));
    assert_eq!(bob_messages(&pod), mail_before, "mail was lost");
    assert_eq!(runtime_pids(), pids, "the runtime restarted");

    // A new Mailbox can log in within 2 s, without a runtime restart.
    let carol = plane
        .scratch_dir("e2e/carol")
        .expect("dir")
        .join("carol.yaml");
    std::fs::write(&carol, "apiVersion: v1\nkind: Secret\nmetadata: {name: carol-password}\nstringData: {password: carol-pw}\n---\n\
apiVersion: kubemail.io/v1alpha1\nkind: Mailbox\nmetadata: {name: carol}\nspec: {address: carol@example.test, passwordSecretRef: {name: carol-password}}\n").expect("write");
    let start = Instant::now();
    kubectl_apply(&plane, &ns, &carol);
    let took = tokio::task::spawn_blocking(|| {
        wait_for("carol logs in", Duration::from_secs(10), || {
            can_log_in("carol@example.test", "carol-pw")
        })
    })
    .await
    .expect("join");
    timings.push(("new Mailbox apply -> login".into(), start.elapsed()));
    assert!(took < Duration::from_secs(2), "a new mailbox took {took:?}");
    assert_eq!(runtime_pids(), pids, "the runtime restarted");

    // carol downloads her mail with fetchmail over POP3 (110 STLS, the certificate checked
    // against the pod's own), and it is gone from the server.
    let out = Command::new("swaks")
        .args(["--server", "127.0.0.1:2525"])
        .args([
            "--from",
            "sender@outside.test",
            "--to",
            "carol@example.test",
        ])
        .args(["--h-Subject", "for carol's fetchmail"])
        .output()
        .expect("swaks");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    let home = plane.scratch_dir("e2e/fetchmail").expect("dir");
    let fetched = home.join("fetched.mbox");
    let rc = home.join(".fetchmailrc");
    std::fs::write(
        &rc,
        format!(
            "poll 127.0.0.1 service 2110 protocol POP3 auth password\n  \
             user \"carol@example.test\" password \"carol-pw\" is \"carol\" here\n  \
             sslproto 'tls1.2+' sslcertck sslcertfile \"{cert}\" sslcommonname \"mail.example.test\"\n  \
             mda \"cat >> {out}\"\n",
            cert = pod.dir.join("volumes/tls/tls.crt").display(),
            out = fetched.display(),
        ),
    )
    .expect("fetchmailrc");
    std::fs::set_permissions(&rc, std::os::unix::fs::PermissionsExt::from_mode(0o600))
        .expect("chmod");
    let out = Command::new("fetchmail")
        .args(["--nodetach", "--fetchmailrc"])
        .arg(&rc)
        .env("HOME", &home)
        .output()
        .expect("fetchmail");
    assert!(
        out.status.success(),
        "fetchmail: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let mbox = std::fs::read_to_string(&fetched).expect("fetched mail");
    assert!(mbox.contains("Subject: for carol's fetchmail"), "{mbox}");
    let carol_dir = pod
        .data_dir
        .clone()
        .expect("data")
        .join("mail/example.test/carol");
    let left: usize = ["new", "cur"]
        .iter()
        .map(|sub| {
            std::fs::read_dir(carol_dir.join(sub))
                .map(|d| d.count())
                .unwrap_or(0)
        })
        .sum();
    assert_eq!(left, 0, "fetchmail left carol's message on the server");

    // A changed password: the old one fails and the new one works within 2 s.
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &ns);
    let start = Instant::now();
    secrets
        .patch(
            "alice-password",
            &PatchParams::default(),
            &Patch::Merge(serde_json::json!({"stringData": {"password": "alice-new-password"}})),
        )
        .await
        .expect("patch password");
    let took = tokio::task::spawn_blocking(|| {
        wait_for("the new password works", Duration::from_secs(10), || {
            can_log_in("alice@example.test", "alice-new-password")
        })
    })
    .await
    .expect("join");
    timings.push(("password change -> effect".into(), start.elapsed()));
    assert!(
        took < Duration::from_secs(2),
        "a password change took {took:?}"
    );
    assert!(
        !can_log_in("alice@example.test", "alice-quickstart-password"),
        "the old password still works"
    );
    assert_eq!(runtime_pids(), pids, "the runtime restarted");

    // A deleted Mailbox cannot log in, and its mail stays on disk.
    Api::<Mailbox>::namespaced(client.clone(), &ns)
        .delete("bob", &DeleteParams::default())
        .await
        .expect("delete bob");
    tokio::task::spawn_blocking(|| {
        wait_for("bob is refused", Duration::from_secs(10), || {
            !can_log_in("bob@example.test", "bob-quickstart-password")
        })
    })
    .await
    .expect("join");
    let bob_mail = pod
        .data_dir
        .clone()
        .expect("data")
        .join("mail/example.test/bob");
    let kept: usize = ["new", "cur"]
        .iter()
        .map(|sub| {
            std::fs::read_dir(bob_mail.join(sub))
                .map(|d| d.count())
                .unwrap_or(0)
        })
        .sum();
    assert_eq!(kept, 2, "bob's mail was deleted with his Mailbox");

    // A deleted MailDomain leaves its PVC.
    domains
        .delete("example-test", &DeleteParams::default())
        .await
        .expect("delete domain");
    tokio::time::sleep(Duration::from_secs(3)).await;
    let pvc = Api::<PersistentVolumeClaim>::namespaced(client.clone(), &ns)
        .get_opt("example-test-data")
        .await
        .expect("get");
    assert!(pvc.is_some(), "the PVC went with the MailDomain");
    pod.stop();

    println!("\n| step | time |\n|---|---|");
    for (step, took) in &timings {
        println!("| {step} | {:.3} s |", took.as_secs_f64());
    }
}
