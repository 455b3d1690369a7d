//! A fresh namespace per test, deleted afterwards even when the test fails.
use std::{collections::BTreeMap, panic::AssertUnwindSafe};

use anyhow::Result;
use futures::FutureExt;
use k8s_openapi::api::core::v1::Namespace;
use kube::{
    Api, Client,
    api::{DeleteParams, ObjectMeta, PostParams},
};

use crate::control_plane::random_suffix;

/// A namespace created for one test.
#[derive(Debug, Clone)]
pub struct TestNamespace {
    /// Its name: the prefix and a random suffix.
    pub name: String,
}

impl TestNamespace {
    /// Creates `<prefix>-<random>` with the given labels.
    pub async fn create(
        client: &Client,
        prefix: &str,
        labels: BTreeMap<String, String>,
    ) -> Result<Self> {
        let name = format!("{prefix}-{}", random_suffix());
        let ns = Namespace {
            metadata: ObjectMeta {
                name: Some(name.clone()),
                labels: Some(labels),
                ..ObjectMeta::default()
            },
            ..Namespace::default()
        };
        Api::<Namespace>::all(client.clone())
            .create(&PostParams::default(), &ns)
            .await?;
        Ok(Self { name })
    }

    /// Deletes the namespace (and, with a controller manager running, everything in it).
    pub async fn delete(&self, client: &Client) -> Result<()> {
        Api::<Namespace>::all(client.clone())
            .delete(&self.name, &DeleteParams::default())
            .await?;
        Ok(())
    }
}

/// Runs `test` in a fresh namespace and deletes the namespace afterwards, whether the test
/// returned or panicked; a panic is passed on.
pub async fn with_namespace<F, Fut, T>(client: &Client, prefix: &str, test: F) -> T
where
    F: FnOnce(TestNamespace) -> Fut,
    Fut: Future<Output = T>,
{
    let ns = TestNamespace::create(client, prefix, BTreeMap::new())
        .await
        .expect("creating the test namespace");
    let outcome = AssertUnwindSafe(test(ns.clone())).catch_unwind().await;
    if let Err(err) = ns.delete(client).await {
        eprintln!("could not delete test namespace {}: {err:#}", ns.name);
    }
    match outcome {
        Ok(value) => value,
        Err(panic) => std::panic::resume_unwind(panic),
    }
}
