//! The operator's errors. Each has a category for metrics, events and the retry policy: an
//! invalid object waits for a change, a transient failure is retried with backoff.
use std::time::Duration;

/// What went wrong in a reconcile.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The API server refused or could not be reached.
    #[error("Kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    /// A key could not be made (its cause kept as the source).
    #[error("key generation: {0}")]
    Keys(#[source] Box<dyn std::error::Error + Send + Sync>),
    /// The object has no namespace or name (never for stored objects).
    #[error("object without {0}")]
    Incomplete(&'static str),
}

impl Error {
    /// A short category for metrics and events.
    pub fn category(&self) -> &'static str {
        match self {
            Error::Kube(_) => "api",
            Error::Keys(_) => "keys",
            Error::Incomplete(_) => "invalid",
        }
    }

    /// How long to wait before retrying.
    pub fn retry_after(&self) -> Duration {
        match self {
            Error::Incomplete(_) => Duration::from_secs(300),
            _ => Duration::from_secs(5),
        }
    }
}

/// The result of a reconcile step.
pub type Result<T, E = Error> = std::result::Result<T, E>;
