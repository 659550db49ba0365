//! Serving HTTP: the router (webhooks, health, readiness, metrics) and a connection loop with a
//! header read timeout (hyper's is off unless given a timer, and `axum::serve` gives none) and
//! graceful shutdown.

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::{get, post};
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::bus::producer::Producer;
use crate::ingest::{self, Ingest};
use crate::runner::health::Liveness;
use crate::telemetry::Metrics;

#[derive(Clone)]
struct Health {
    producer: Arc<Producer>,
    metrics: Arc<Metrics>,
    liveness: Arc<Liveness>,
}

/// The routes; webhooks only when this instance runs ingest.
pub fn router(
    ingest: Option<Arc<Ingest>>,
    producer: Arc<Producer>,
    metrics: Arc<Metrics>,
    liveness: Arc<Liveness>,
) -> Router {
    let health = Router::new()
        .route("/healthz", get(alive))
        .route("/readyz", get(ready))
        .route("/metrics", get(metrics_text))
        .with_state(Health {
            producer,
            metrics,
            liveness,
        });
    match ingest {
        Some(ingest) => health.merge(
            Router::new()
                .route("/webhooks/{name}", post(ingest::receive))
                .route("/webhooks/{name}/{secret}", post(ingest::receive))
                .with_state(ingest),
        ),
        None => health,
    }
}

/// Alive while every stage makes progress: 503 naming each loop or partition that made none for
/// `stall_timeout` (see [`crate::runner::health`]), so the orchestrator restarts the pod.
async fn alive(State(h): State<Health>) -> axum::response::Response {
    let stalled = h.liveness.stalled();
    if stalled.is_empty() {
        return (StatusCode::OK, "ok").into_response();
    }
    let body = serde_json::json!({"error": "stalled", "stalled": stalled});
    (StatusCode::SERVICE_UNAVAILABLE, axum::Json(body)).into_response()
}

/// Ready when webhooks can be accepted: the producer is healthy and Kafka answers. The engine's
/// partitions (or a rebalance) do not matter here.
async fn ready(State(h): State<Health>) -> impl IntoResponse {
    if h.producer.is_ready() {
        (StatusCode::OK, "ready")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "kafka unavailable")
    }
}

async fn metrics_text(State(h): State<Health>) -> impl IntoResponse {
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        h.metrics.encode(),
    )
}

/// Accepts connections until `shutdown`, then lets open requests finish for up to `grace`.
pub async fn serve(
    listener: TcpListener,
    app: Router,
    header_read_timeout: Duration,
    shutdown: CancellationToken,
    grace: Duration,
) {
    let graceful = GracefulShutdown::new();
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(header_read_timeout);
    loop {
        let stream = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(e) => {
                    // Out of file descriptors and the like: back off briefly, keep serving.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = shutdown.cancelled() => break,
        };
        let service = TowerToHyperService::new(app.clone());
        let connection = http.serve_connection(TokioIo::new(stream), service);
        let watched = graceful.watch(connection);
        tokio::spawn(async move {
            if let Err(e) = watched.await {
                tracing::debug!(error = %e, "connection ended with an error");
            }
        });
    }
    drop(listener);
    if tokio::time::timeout(grace, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!("open HTTP connections did not finish within the grace period");
    }
}
