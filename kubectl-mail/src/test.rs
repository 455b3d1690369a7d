//! `kubectl mail test DOMAIN`: a temporary Mailbox sends a message to itself through the
//! domain's submission port and reads it back over IMAP, through a port-forward to the
//! runtime's pod (as `kubectl port-forward` does, so it works from a laptop). The Mailbox and
//! its Secret are removed afterwards, whatever happened; the message is deleted once read.
use std::{
    io::Write,
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};
use k8s_openapi::api::{apps::v1::Deployment, core::v1::Pod};
use kube::{
    Api, Client, ResourceExt,
    api::{DeleteParams, ListParams, PostParams},
};
use kubemail_crds::{MailDomain, Mailbox, Protocol};

/// `kubectl mail test`.
pub async fn run(
    client: &Client,
    ns: &str,
    domain: &str,
    timeout: Duration,
    out: &mut impl Write,
) -> anyhow::Result<()> {
    let md = crate::status::find(client, ns, domain).await?;
    let enabled = |p: Protocol| md.spec.protocols.iter().any(|(q, s)| q == p && s.enabled);
    // Implicit TLS when the domain serves both such ports, STARTTLS otherwise.
    let (submission, imap, implicit) = if enabled(Protocol::Submissions) && enabled(Protocol::Imaps)
    {
        (Protocol::Submissions, Protocol::Imaps, true)
    } else if enabled(Protocol::Submission) && enabled(Protocol::Imap) {
        (Protocol::Submission, Protocol::Imap, false)
    } else {
        bail!(
            "{domain} serves neither submissions and imaps nor submission and imap: nothing to test with"
        );
    };
    let pod = runtime_pod(client, ns, &md).await?;
    let port_of = |protocol: Protocol| container_port(&pod, protocol.field());
    let (submission_port, imap_port) = (port_of(submission)?, port_of(imap)?);
    writeln!(
        out,
        "Testing {} through pod {} (port-forward):",
        md.spec.domain,
        pod.name_any()
    )?;
    let submission_local = forward(client, ns, &pod.name_any(), submission_port).await?;
    let imap_local = forward(client, ns, &pod.name_any(), imap_port).await?;

    let temporary = Temporary::create(client, ns, &md.spec.domain).await?;
    let result = async {
        let started = Instant::now();
        temporary.ready(timeout).await?;
        writeln!(
            out,
            "  temporary mailbox {} served in {:.1} s",
            temporary.address,
            started.elapsed().as_secs_f64()
        )?;
        let options = kubemail_probe::Options {
            implicit_tls: implicit,
            timeout,
            // The certificate's name is the domain's host name; whether a client trusts it is
            // the TLS setup's business, not this test's.
            verify_tls: false,
            tls_name: md.status.as_ref().and_then(|s| s.hostname.clone()),
            login: None,
        };
        let trip = kubemail_probe::round_trip(
            &submission_local,
            &imap_local,
            &temporary.address,
            &temporary.password,
            &options,
        )
        .await
        .map_err(anyhow::Error::msg)?;
        let tls = if implicit { "TLS" } else { "STARTTLS" };
        writeln!(
            out,
            "  {} ({tls}): message accepted in {:.2} s\n  {} ({tls}): message found in {:.2} s, then deleted",
            submission.field(),
            trip.submitted_ms as f64 / 1000.0,
            imap.field(),
            trip.seen_ms as f64 / 1000.0
        )?;
        anyhow::Ok(())
    }
    .await;
    let cleaned = temporary.remove().await;
    match (&result, &cleaned) {
        (_, Ok(())) => writeln!(out, "  temporary mailbox removed")?,
        (_, Err(err)) => writeln!(out, "  the temporary mailbox could not be removed: {err:#}")?,
    }
    result?;
    cleaned?;
    writeln!(out, "OK")?;
    Ok(())
}

/// A running pod of the domain's runtime Deployment.
async fn runtime_pod(client: &Client, ns: &str, md: &MailDomain) -> anyhow::Result<Pod> {
    let name = format!("{}-mail", md.name_any());
    let deployment = Api::<Deployment>::namespaced(client.clone(), ns)
        .get_opt(&name)
        .await?
        .with_context(|| format!("the runtime Deployment {name} does not exist (yet)"))?;
    let labels = deployment.spec.selector.match_labels.unwrap_or_default();
    let selector = labels
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(",");
    let pods = Api::<Pod>::namespaced(client.clone(), ns)
        .list(&ListParams::default().labels(&selector))
        .await?;
    pods.items
        .into_iter()
        .find(|p| {
            p.metadata.deletion_timestamp.is_none()
                && p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running")
        })
        .with_context(|| format!("no running pod of {name}"))
}

/// The container port named `name` in the runtime's pod.
fn container_port(pod: &Pod, name: &str) -> anyhow::Result<u16> {
    pod.spec
        .iter()
        .flat_map(|s| &s.containers)
        .flat_map(|c| c.ports.iter().flatten())
        .find(|p| p.name.as_deref() == Some(name))
        .and_then(|p| u16::try_from(p.container_port).ok())
        .with_context(|| format!("the runtime's pod has no port named {name}"))
}

/// Listens on a free port of 127.0.0.1 and forwards each connection to `port` of the pod
/// through the API server. Returns `127.0.0.1:PORT`; forwarding ends with this process.
async fn forward(client: &Client, ns: &str, pod: &str, port: u16) -> anyhow::Result<String> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let local = listener.local_addr()?.to_string();
    let pods = Api::<Pod>::namespaced(client.clone(), ns);
    let pod = pod.to_string();
    tokio::spawn(async move {
        while let Ok((mut socket, _)) = listener.accept().await {
            let pods = pods.clone();
            let pod = pod.clone();
            tokio::spawn(async move {
                let mut forwarder = match pods.portforward(&pod, &[port]).await {
                    Ok(f) => f,
                    Err(err) => {
                        eprintln!("port-forward to {pod}:{port} failed: {err}");
                        return;
                    }
                };
                if let Some(mut upstream) = forwarder.take_stream(port) {
                    let _ = tokio::io::copy_bidirectional(&mut socket, &mut upstream).await;
                }
                drop(forwarder);
            });
        }
    });
    Ok(local)
}

/// The temporary Mailbox and its Secret.
struct Temporary {
    client: Client,
    ns: String,
    name: String,
    address: String,
    password: String,
}

impl Temporary {
    async fn create(client: &Client, ns: &str, domain: &str) -> anyhow::Result<Temporary> {
        use rand::{Rng, distr::Alphanumeric};
        let suffix: String = rand::rng()
            .sample_iter(&Alphanumeric)
            .filter(u8::is_ascii_lowercase)
            .take(8)
            .map(char::from)
            .collect();
        let name = format!("kubemail-test-{suffix}");
        let temporary = Temporary {
            client: client.clone(),
            ns: ns.to_string(),
            address: format!("{name}@{domain}"),
            password: crate::mailbox::generate_password(),
            name,
        };
        let secret = crate::mailbox::secret(
            ns,
            &format!("{}-password", temporary.name),
            &[("kubemail.io/mailbox", &temporary.name)],
            "password",
            &temporary.password,
        );
        Api::namespaced(client.clone(), ns)
            .create(&PostParams::default(), &secret)
            .await
            .context("creating the temporary mailbox's Secret")?;
        let mailbox: Mailbox = serde_json::from_value(serde_json::json!({
            "apiVersion": "kubemail.io/v1alpha1", "kind": "Mailbox",
            "metadata": {"name": temporary.name,
                         "labels": {"app.kubernetes.io/managed-by": "kubectl-mail"}},
            "spec": {"address": temporary.address,
                     "passwordSecretRef": {"name": format!("{}-password", temporary.name)},
                     "protocols": ["SMTP", "IMAP"], "quota": "1Mi"},
        }))?;
        if let Err(err) = Api::<Mailbox>::namespaced(client.clone(), ns)
            .create(&PostParams::default(), &mailbox)
            .await
        {
            let _ = temporary.remove().await;
            return Err(err).context("creating the temporary Mailbox");
        }
        Ok(temporary)
    }

    /// Waits until the runtime serves the Mailbox.
    async fn ready(&self, timeout: Duration) -> anyhow::Result<()> {
        let api = Api::<Mailbox>::namespaced(self.client.clone(), &self.ns);
        let deadline = Instant::now() + timeout;
        loop {
            let mailbox = api.get(&self.name).await?;
            let ready = mailbox
                .status
                .as_ref()
                .and_then(|s| s.conditions.iter().find(|c| c.type_ == "Ready").cloned());
            if ready.as_ref().is_some_and(|c| c.status == "True") {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!(
                    "the temporary mailbox was not served within {timeout:?}: {}",
                    ready.map_or("no status yet".into(), |c| format!(
                        "{}: {}",
                        c.reason, c.message
                    ))
                );
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    async fn remove(&self) -> anyhow::Result<()> {
        let gone = |r: Result<_, kube::Error>| match r {
            Ok(_) => Ok(()),
            Err(kube::Error::Api(e)) if e.code == 404 => Ok(()),
            Err(e) => Err(e),
        };
        gone(
            Api::<Mailbox>::namespaced(self.client.clone(), &self.ns)
                .delete(&self.name, &DeleteParams::default())
                .await
                .map(|_| ()),
        )?;
        gone(
            Api::<k8s_openapi::api::core::v1::Secret>::namespaced(self.client.clone(), &self.ns)
                .delete(&format!("{}-password", self.name), &DeleteParams::default())
                .await
                .map(|_| ()),
        )?;
        Ok(())
    }
}
