//! The operator's own HTTP endpoint: `/healthz`, `/readyz` and Prometheus `/metrics`
//! (reconciles by kind and outcome, and the last probe result of each MailDomain's protocols).
use std::{
    convert::Infallible,
    net::SocketAddr,
    sync::{
        OnceLock,
        atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering},
    },
};

use http_body_util::Full;
use hyper::{Response, StatusCode, body::Bytes, server::conn::http1, service::service_fn};
use hyper_util::rt::{TokioIo, TokioTimer};
use prometheus_client::{
    encoding::text::encode,
    metrics::{counter::Counter, family::Family, gauge::Gauge},
    registry::Registry,
};

type Labels = Vec<(&'static str, &'static str)>;

struct Metrics {
    registry: Registry,
    reconciles: Family<Labels, Counter<u64, AtomicU64>>,
    probes: Family<Vec<(&'static str, String)>, Gauge<i64, AtomicI64>>,
    api_requests: Family<Vec<(&'static str, String)>, Counter<u64, AtomicU64>>,
}

static READY: AtomicBool = AtomicBool::new(false);

fn metrics() -> &'static Metrics {
    static M: OnceLock<Metrics> = OnceLock::new();
    M.get_or_init(|| {
        let mut registry = Registry::with_prefix("kubemail_operator");
        let reconciles = Family::<Labels, Counter<u64, AtomicU64>>::default();
        registry.register(
            "reconciles",
            "Reconciles by kind and outcome (ok, or the error category)",
            reconciles.clone(),
        );
        let probes = Family::<Vec<(&'static str, String)>, Gauge<i64, AtomicI64>>::default();
        registry.register(
            "protocol_ready",
            "1 when the operator's last probe of a MailDomain's protocol passed, 0 when it failed",
            probes.clone(),
        );
        let api_requests = Family::<Vec<(&'static str, String)>, Counter<u64, AtomicU64>>::default();
        registry.register(
            "api_requests",
            "Requests the operator made to the Kubernetes API server, by verb and resource (a watch counts once, when it starts)",
            api_requests.clone(),
        );
        Metrics {
            registry,
            reconciles,
            probes,
            api_requests,
        }
    })
}

/// Counts one reconcile.
pub fn reconciled(kind: &'static str, outcome: &'static str) {
    metrics()
        .reconciles
        .get_or_create(&vec![("kind", kind), ("outcome", outcome)])
        .inc();
}

/// Counts one request to the API server: `watch`, or the HTTP method in lowercase, and the
/// resource (`secrets`, `mailboxes/status`, ...).
pub fn api_request<B>(request: &hyper::Request<B>) {
    let watch = request
        .uri()
        .query()
        .is_some_and(|q| q.split('&').any(|p| p == "watch=true" || p == "watch=1"));
    let verb = match *request.method() {
        _ if watch => "watch",
        hyper::Method::GET => "get",
        hyper::Method::POST => "post",
        hyper::Method::PUT => "put",
        hyper::Method::PATCH => "patch",
        hyper::Method::DELETE => "delete",
        _ => "other",
    };
    metrics()
        .api_requests
        .get_or_create(&vec![
            ("verb", verb.to_string()),
            ("resource", resource_of(request.uri().path())),
        ])
        .inc();
}

/// The resource a request path names: `/api/v1/namespaces/mail/secrets/x` -> `secrets`,
/// `/apis/kubemail.io/v1alpha1/namespaces/mail/mailboxes/x/status` -> `mailboxes/status`.
fn resource_of(path: &str) -> String {
    let segments: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
    let rest = match segments.first() {
        Some(&"api") => segments.get(2..),
        Some(&"apis") => segments.get(3..),
        _ => None,
    }
    .unwrap_or_default();
    let rest = match rest {
        ["namespaces", _, tail @ ..] if !tail.is_empty() => tail,
        other => other,
    };
    match rest {
        [resource, _, sub, ..] => format!("{resource}/{sub}"),
        [resource, ..] => (*resource).to_string(),
        [] => "other".into(),
    }
}

/// Records a probe result of a MailDomain's protocol group (`SMTPReady`, ...).
pub fn probe_result(namespace: &str, name: &str, condition: &str, ok: bool) {
    metrics()
        .probes
        .get_or_create(&vec![
            ("namespace", namespace.to_string()),
            ("maildomain", name.to_string()),
            ("condition", condition.to_string()),
        ])
        .set(i64::from(ok));
}

/// Marks the operator ready (its controllers run).
pub fn set_ready() {
    READY.store(true, Ordering::Release);
}

/// Serves the endpoint on `addr` until the process ends.
pub async fn serve(addr: SocketAddr) -> std::io::Result<()> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        tokio::spawn(async move {
            let service = service_fn(|req: hyper::Request<hyper::body::Incoming>| async move {
                let (status, body) = match req.uri().path() {
                    "/healthz" => (StatusCode::OK, "ok\n".to_string()),
                    "/readyz" if READY.load(Ordering::Acquire) => (StatusCode::OK, "ok\n".into()),
                    "/readyz" => (StatusCode::SERVICE_UNAVAILABLE, "starting\n".into()),
                    "/metrics" => {
                        let mut text = String::new();
                        let _ = encode(&mut text, &metrics().registry);
                        (StatusCode::OK, text)
                    }
                    _ => (StatusCode::NOT_FOUND, "not found\n".into()),
                };
                Ok::<_, Infallible>(
                    Response::builder()
                        .status(status)
                        .body(Full::new(Bytes::from(body)))
                        .unwrap_or_default(),
                )
            });
            let _ = http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(std::time::Duration::from_secs(10))
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

#[cfg(test)]
mod tests {
    use super::resource_of;

    #[test]
    fn request_paths_name_their_resource() {
        for (path, resource) in [
            ("/api/v1/namespaces/mail/secrets/x", "secrets"),
            ("/api/v1/namespaces/mail/secrets", "secrets"),
            ("/api/v1/secrets", "secrets"),
            ("/api/v1/namespaces/mail", "namespaces"),
            (
                "/apis/kubemail.io/v1alpha1/namespaces/mail/mailboxes/x/status",
                "mailboxes/status",
            ),
            (
                "/apis/coordination.k8s.io/v1/namespaces/k/leases/op",
                "leases",
            ),
            ("/version", "other"),
        ] {
            assert_eq!(resource_of(path), resource, "{path}");
        }
    }
}
