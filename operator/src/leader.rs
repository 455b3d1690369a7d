//! Leader election with a `coordination.k8s.io/v1` Lease, so a second operator replica (or
//! the old pod of a rollout) never reconciles at the same time as the leader.
//!
//! The holder renews the Lease every `RENEW`; another replica takes it over once it has not
//! been renewed for `DURATION`. Every write carries the resourceVersion it read, so two
//! replicas cannot both win. A leader that cannot renew in time exits, and its Deployment
//! restarts it as a follower. A leader that stops (SIGTERM: a rollout, a drain, `kubectl delete
//! pod`) releases the Lease, so its successor takes over within a second instead of waiting for
//! the Lease to run out.
use std::time::Duration;

use k8s_openapi::{
    api::coordination::v1::{Lease, LeaseSpec},
    apimachinery::pkg::apis::meta::v1::MicroTime,
    jiff::Timestamp,
};
use kube::{
    Api, Client,
    api::{ObjectMeta, PostParams},
};

/// How long a Lease holds without renewal.
pub const DURATION: Duration = Duration::from_secs(15);
/// How often the holder renews.
pub const RENEW: Duration = Duration::from_secs(5);
/// How often a replica waiting for the Lease looks again.
pub const STANDBY_POLL: Duration = Duration::from_secs(1);

/// A Lease held, or to be held, by this process.
#[derive(Debug, Clone)]
pub struct Election {
    api: Api<Lease>,
    name: String,
    identity: String,
}

impl Election {
    /// An election for Lease `name` in `namespace` as `identity`.
    pub fn new(client: Client, namespace: &str, name: &str, identity: &str) -> Self {
        Self {
            api: Api::namespaced(client, namespace),
            name: name.to_string(),
            identity: identity.to_string(),
        }
    }

    fn spec(&self, transitions: i32, acquired: Option<MicroTime>) -> LeaseSpec {
        let now = MicroTime(Timestamp::now());
        LeaseSpec {
            holder_identity: Some(self.identity.clone()),
            lease_duration_seconds: Some(DURATION.as_secs() as i32),
            acquire_time: Some(acquired.unwrap_or_else(|| now.clone())),
            renew_time: Some(now),
            lease_transitions: Some(transitions),
            ..LeaseSpec::default()
        }
    }

    /// One attempt to take or keep the Lease; true when this process holds it afterwards.
    pub async fn try_acquire(&self) -> kube::Result<bool> {
        let Some(mut lease) = self.api.get_opt(&self.name).await? else {
            let lease = Lease {
                metadata: ObjectMeta {
                    name: Some(self.name.clone()),
                    ..ObjectMeta::default()
                },
                spec: Some(self.spec(0, None)),
            };
            return match self.api.create(&PostParams::default(), &lease).await {
                Ok(_) => Ok(true),
                Err(kube::Error::Api(e)) if e.code == 409 => Ok(false),
                Err(e) => Err(e),
            };
        };
        let spec = lease.spec.clone().unwrap_or_default();
        let mine = spec.holder_identity.as_deref() == Some(self.identity.as_str());
        let released = spec.holder_identity.as_deref().is_none_or(str::is_empty);
        let expired = released
            || spec.renew_time.as_ref().is_none_or(|t| {
                let held = spec
                    .lease_duration_seconds
                    .map_or(DURATION, |s| Duration::from_secs(s.max(1) as u64));
                // A renewal time in the future (clock skew) counts as fresh, not as expired.
                Timestamp::now().duration_since(t.0).as_secs() >= held.as_secs() as i64
            });
        if !mine && !expired {
            return Ok(false);
        }
        let transitions = spec.lease_transitions.unwrap_or(0) + i32::from(!mine);
        let acquired = if mine {
            spec.acquire_time.clone()
        } else {
            None
        };
        lease.spec = Some(self.spec(transitions, acquired));
        // The resourceVersion read above makes this a compare-and-swap.
        match self
            .api
            .replace(&self.name, &PostParams::default(), &lease)
            .await
        {
            Ok(_) => Ok(true),
            Err(kube::Error::Api(e)) if e.code == 409 => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Waits until this process holds the Lease.
    pub async fn acquire(&self) {
        loop {
            match self.try_acquire().await {
                Ok(true) => {
                    tracing::info!(lease = %self.name, identity = %self.identity, "became the leader");
                    return;
                }
                Ok(false) => {}
                Err(err) => tracing::warn!(error = %err, "leader election attempt failed"),
            }
            tokio::time::sleep(STANDBY_POLL).await;
        }
    }

    /// Gives the Lease up if this process holds it (on shutdown, after the controllers
    /// stopped), so a successor need not wait for it to run out.
    pub async fn release(&self) -> kube::Result<()> {
        let Some(mut lease) = self.api.get_opt(&self.name).await? else {
            return Ok(());
        };
        let Some(spec) = lease.spec.as_mut() else {
            return Ok(());
        };
        if spec.holder_identity.as_deref() != Some(self.identity.as_str()) {
            return Ok(());
        }
        spec.holder_identity = None;
        spec.acquire_time = None;
        spec.lease_duration_seconds = Some(1);
        spec.renew_time = Some(MicroTime(Timestamp::now()));
        match self
            .api
            .replace(&self.name, &PostParams::default(), &lease)
            .await
        {
            // Taken over meanwhile: nothing of ours to give up.
            Err(kube::Error::Api(e)) if e.code == 409 => Ok(()),
            other => other.map(|_| ()),
        }
    }

    /// Renews the Lease until renewal fails for longer than it lasts; then returns, and the
    /// caller must stop reconciling.
    pub async fn keep(&self) {
        let mut last_renewal = tokio::time::Instant::now();
        loop {
            tokio::time::sleep(RENEW).await;
            match self.try_acquire().await {
                Ok(true) => last_renewal = tokio::time::Instant::now(),
                Ok(false) => {
                    tracing::error!("the Lease was taken over");
                    return;
                }
                Err(err) => {
                    tracing::warn!(error = %err, "renewing the Lease failed");
                    if last_renewal.elapsed() >= DURATION - RENEW {
                        return;
                    }
                }
            }
        }
    }
}
