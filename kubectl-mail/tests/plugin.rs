//! `kubectl mail` against a real control plane with the operator running: each command as a
//! person would type it (through kubectl's plugin discovery for one of them), checked by what
//! lands in the cluster and in the runtime config the operator renders. `test` needs a runtime
//! and runs in the real-node test (e2e/tests/end_to_end.rs).
use std::{
    collections::BTreeMap,
    process::{Child, Command, Output, Stdio},
    time::{Duration, Instant},
};

use k8s_openapi::api::core::v1::Secret;
use kube::{Api, Client};
use kubemail_crds::Mailbox;
use kubemail_e2e::{ControlPlane, TestNamespace, install_crds, workspace_binary};

struct Operator(Child);

impl Drop for Operator {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn plugin(ns: &str, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_kubectl-mail"))
        .args(["-n", ns])
        .args(args)
        .env("KUBECONFIG", ControlPlane::shared().kubeconfig())
        .output()
        .expect("kubectl-mail runs")
}

fn ok(ns: &str, args: &[&str]) -> String {
    let out = plugin(ns, args);
    assert!(
        out.status.success(),
        "kubectl mail {args:?}:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The password a command printed ("Password (shown only now): ...").
fn printed_password(out: &str) -> String {
    out.lines()
        .find_map(|l| l.strip_prefix("Password (shown only now): "))
        .unwrap_or_else(|| panic!("no password in:\n{out}"))
        .to_string()
}

async fn secret_value(client: &Client, ns: &str, name: &str, key: &str) -> Option<String> {
    let secret = Api::<Secret>::namespaced(client.clone(), ns)
        .get_opt(name)
        .await
        .ok()??;
    let data = secret.data?;
    Some(String::from_utf8_lossy(&data.get(key)?.0).into_owned())
}

/// The rendered config's entry for `address`, once `check` holds for it.
async fn served(
    client: &Client,
    ns: &str,
    address: &str,
    what: &str,
    check: impl Fn(&kubemail_config::MailboxConfig) -> bool,
) -> kubemail_config::MailboxConfig {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Some(yaml) = secret_value(client, ns, "example-runtime-config", "runtime.yaml").await
            && let Ok(raw) = serde_yaml_ng::from_str::<kubemail_config::RawConfig>(&yaml)
            && let Some(m) = raw.mailboxes.into_iter().find(|m| m.address == address)
            && check(&m)
        {
            return m;
        }
        assert!(Instant::now() < deadline, "{what}: not within 60 s");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

fn verifies(hash: &str, password: &str) -> bool {
    kubemail_config::password::PasswordHash::parse(hash)
        .is_ok_and(|h| h.verify(password.as_bytes()))
}

#[tokio::test]
async fn add_passwd_app_passwords_and_status_on_a_real_control_plane() {
    let plane = ControlPlane::shared();
    let client = plane.client().await.expect("client");
    install_crds(&client).await.expect("CRDs");
    let ns = TestNamespace::create(&client, "plugin", BTreeMap::new())
        .await
        .expect("namespace")
        .name;
    let operator = workspace_binary("kubemail-operator", "KUBEMAIL_OPERATOR_BIN")
        .expect("the operator binary (cargo build --bins)");
    let _operator = Operator(
        Command::new(operator)
            .args([
                "--namespace",
                &ns,
                "--health-addr",
                "off",
                "--probe-timeout",
                "1",
            ])
            .args(["--runtime-image", "kubemail/mail-runtime:test"])
            .env("KUBECONFIG", plane.kubeconfig())
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .spawn()
            .expect("the operator starts"),
    );
    let mut apply = plane
        .kubectl()
        .args(["apply", "-n", &ns, "-f", "-"])
        .stdin(Stdio::piped())
        .spawn()
        .expect("kubectl");
    std::io::Write::write_all(
        apply.stdin.as_mut().expect("stdin"),
        b"apiVersion: kubemail.io/v1alpha1\nkind: MailDomain\nmetadata: {name: example}\nspec: {domain: example.test}\n",
    )
    .expect("write");
    assert!(apply.wait().expect("kubectl").success());

    // add: a Mailbox and a Secret holding the password printed once; the operator serves its
    // hash.
    let out = ok(&ns, &["add", "carol@example.test", "--quota", "2Gi"]);
    assert!(
        out.starts_with("Mailbox carol created for carol@example.test"),
        "{out}"
    );
    let password = printed_password(&out);
    assert_eq!(password.len(), 24);
    assert_eq!(
        secret_value(&client, &ns, "carol-password", "password")
            .await
            .as_deref(),
        Some(password.as_str())
    );
    let mailbox = Api::<Mailbox>::namespaced(client.clone(), &ns)
        .get("carol")
        .await
        .expect("the Mailbox");
    assert_eq!(mailbox.spec.quota.as_deref(), Some("2Gi"));
    served(&client, &ns, "carol@example.test", "carol served", |m| {
        verifies(&m.password_hash, &password)
    })
    .await;

    // The same address again, and an address the API server refuses: an error naming why, and
    // nothing left behind.
    let again = plugin(&ns, &["add", "CAROL@example.test", "--name", "carol2"]);
    assert!(!again.status.success());
    assert!(
        String::from_utf8_lossy(&again.stderr).contains("already has the address"),
        "{again:?}"
    );
    let bad = plugin(&ns, &["add", "not an address"]);
    assert!(!bad.status.success());
    let said = String::from_utf8_lossy(&bad.stderr);
    assert!(said.contains("address must be a mail address"), "{said}");
    assert_eq!(
        secret_value(&client, &ns, "not-an-address-password", "password").await,
        None
    );

    // passwd: a new password, printed; the served hash follows it.
    let out = ok(&ns, &["passwd", "carol@example.test"]);
    let new_password = printed_password(&out);
    assert_ne!(new_password, password);
    served(
        &client,
        &ns,
        "carol@example.test",
        "the new password served",
        |m| verifies(&m.password_hash, &new_password),
    )
    .await;
    // From stdin, as a script would set it.
    let mut child = Command::new(env!("CARGO_BIN_EXE_kubectl-mail"))
        .args([
            "-n",
            &ns,
            "passwd",
            "carol@example.test",
            "--password-stdin",
        ])
        .env("KUBECONFIG", plane.kubeconfig())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("kubectl-mail");
    std::io::Write::write_all(child.stdin.as_mut().expect("stdin"), b"chosen by carol\n")
        .expect("write");
    let out = child.wait_with_output().expect("kubectl-mail");
    assert!(out.status.success());
    assert!(!String::from_utf8_lossy(&out.stdout).contains("chosen by carol"));
    served(
        &client,
        &ns,
        "carol@example.test",
        "the chosen password served",
        |m| verifies(&m.password_hash, "chosen by carol"),
    )
    .await;

    // app-password add: IMAP only, served with its protocols; list shows it.
    let out = ok(
        &ns,
        &[
            "app-password",
            "add",
            "carol@example.test",
            "phone",
            "--protocols",
            "IMAP",
        ],
    );
    let phone = printed_password(&out);
    let served_phone = served(
        &client,
        &ns,
        "carol@example.test",
        "the phone served",
        |m| m.app_passwords.iter().any(|a| a.name == "phone"),
    )
    .await;
    let entry = &served_phone.app_passwords[0];
    assert_eq!(entry.protocols, [kubemail_config::LoginProtocol::Imap]);
    assert!(verifies(&entry.password_hash, &phone));
    let list = ok(&ns, &["app-password", "list", "carol@example.test"]);
    assert!(
        list.lines()
            .any(|l| l.split_whitespace().collect::<Vec<_>>()
                == ["phone", "IMAP", "carol-app-phone", "served"]),
        "{list}"
    );
    let twice = plugin(&ns, &["app-password", "add", "carol@example.test", "phone"]);
    assert!(!twice.status.success(), "a second phone was added");

    // revoke: the entry and its Secret go; the runtime config loses the hash.
    let out = ok(
        &ns,
        &["app-password", "revoke", "carol@example.test", "phone"],
    );
    assert!(out.contains("revoked"), "{out}");
    served(
        &client,
        &ns,
        "carol@example.test",
        "the phone revoked",
        |m| m.app_passwords.is_empty(),
    )
    .await;
    assert_eq!(
        secret_value(&client, &ns, "carol-app-phone", "password").await,
        None
    );

    // status, through kubectl's plugin discovery (kubectl-mail on PATH): no runtime runs
    // here, so the probes fail and say so; the DNS records to publish are listed.
    let bin_dir = std::path::Path::new(env!("CARGO_BIN_EXE_kubectl-mail"))
        .parent()
        .expect("a directory")
        .to_path_buf();
    let path = format!(
        "{}:{}",
        bin_dir.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let deadline = Instant::now() + Duration::from_secs(60);
    let text = loop {
        let out = plane
            .kubectl()
            .args(["mail", "status", "example.test", "-n", &ns])
            .env("PATH", &path)
            .output()
            .expect("kubectl mail");
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        if out.status.success() && text.contains("ProbeFailed") && text.contains("DKIM") {
            break text;
        }
        assert!(
            Instant::now() < deadline,
            "kubectl mail status:\n{text}{}",
            String::from_utf8_lossy(&out.stderr)
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    println!("kubectl mail status example.test:\n{text}");
    assert!(
        text.starts_with(&format!(
            "MailDomain example (example.test) in namespace {ns}: Ready False"
        )),
        "{text}"
    );
    assert!(text.contains("Mailboxes: 1 served"), "{text}");
    let unknown = plugin(&ns, &["status", "example.org"]);
    assert!(
        String::from_utf8_lossy(&unknown.stderr).contains("no MailDomain in namespace"),
        "{unknown:?}"
    );
}
