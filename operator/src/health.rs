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
        Metrics {
            registry,
            reconciles,
            probes,
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
