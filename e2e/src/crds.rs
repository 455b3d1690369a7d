//! Installing kubemail's CRDs, from the committed YAML under `charts/kubemail/crds/`, the
//! same files Helm installs.
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::{
    Api, Client,
    api::{Patch, PatchParams},
};

use crate::tools::workspace_root;

/// Applies every CRD file of the chart (server-side apply) and waits until each is Established.
/// Returns the CRDs' names.
pub async fn install_crds(client: &Client) -> Result<Vec<String>> {
    let dir = workspace_root().join("charts/kubemail/crds");
    let api: Api<CustomResourceDefinition> = Api::all(client.clone());
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .with_context(|| format!("reading {}", dir.display()))?
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    files.sort();
    let mut crds = Vec::new();
    for path in files {
        let text = std::fs::read_to_string(&path)?;
        let crd: CustomResourceDefinition = serde_yaml_ng::from_str(&text)
            .with_context(|| format!("parsing {}", path.display()))?;
        crds.push(crd);
    }
    apply_established(&api, crds).await
}

/// Installs external-dns's `DNSEndpoint` CRD as the project publishes it (the file of its
/// release kept in `e2e/external-dns/`) and waits until it is Established.
pub async fn install_external_dns_crd(client: &Client) -> Result<()> {
    let path = workspace_root().join("e2e/external-dns/dnsendpoints.externaldns.k8s.io.yaml");
    let text =
        std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    let crd: CustomResourceDefinition =
        serde_yaml_ng::from_str(&text).with_context(|| format!("parsing {}", path.display()))?;
    apply_established(&Api::all(client.clone()), vec![crd]).await?;
    Ok(())
}

/// Applies the CRDs (server-side apply) and waits until each is Established; their names.
async fn apply_established(
    api: &Api<CustomResourceDefinition>,
    crds: Vec<CustomResourceDefinition>,
) -> Result<Vec<String>> {
    let mut names = Vec::new();
    for crd in crds {
        let name = crd.metadata.name.clone().context("a CRD without a name")?;
        api.patch(
            &name,
            &PatchParams::apply("kubemail-e2e").force(),
            &Patch::Apply(&crd),
        )
        .await
        .with_context(|| format!("applying CRD {name}"))?;
        names.push(name);
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    for name in &names {
        loop {
            let crd = api.get(name).await?;
            let established = crd
                .status
                .as_ref()
                .and_then(|s| s.conditions.as_ref())
                .is_some_and(|cs| {
                    cs.iter()
                        .any(|c| c.type_ == "Established" && c.status == "True")
                });
            if established {
                break;
            }
            if Instant::now() > deadline {
                bail!(
                    "CRD {name} was not Established within 30 s: {:?}",
                    crd.status
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    Ok(names)
}
