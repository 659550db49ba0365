//! Serving HTTP: the router (webhooks, health, readiness, metrics) and a connection loop with a
//! header read timeout (hyper's is off unless given a timer, and `axum::serve` gives none),
//! graceful shutdown, and the limits no sender may push past (`[server]`):
//! - at most `max_connections` open connections: one more is answered `503` with `Retry-After`
//!   and a JSON body straight away, without reading its request, and closed (cheaper than
//!   serving it, kinder than leaving it in the accept queue until it times out);
//! - request headers of at most `max_header_bytes`: more gets `431` with a JSON body; past twice
//!   that (hyper's read buffer), or past 100 headers, hyper answers a bare `431` and closes;
//! - the webhooks' own limits (requests in flight, body size and time) are ingest's.
//!
//! Every refusal here is counted (`leadwatch_http_refused_total{reason}`) and logged at most
//! once a second per reason, the line saying how many were refused unlogged since the last.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::{get, post};
use axum::{Json, Router};
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

use crate::bus::producer::Producer;
use crate::clock::Clock;
use crate::ingest::{self, Ingest, LogGate, ServerConfig};
use crate::runner::health::Liveness;
use crate::telemetry::Metrics;

#[derive(Clone)]
struct Health {
    producer: Arc<Producer>,
    metrics: Arc<Metrics>,
    liveness: Arc<Liveness>,
    /// Cancelled on SIGTERM: `/readyz` answers 503 from then on, while the listener still
    /// serves for `server.drain_delay`.
    draining: CancellationToken,
}

/// The routes, and the limits the listener holds every connection to.
pub struct HttpApp {
    router: Router,
    limits: Limits,
    refusals: Arc<Refusals>,
}

/// Connections and requests refused before any route saw them: counted, and logged at most
/// once a second per reason (a flood of them must not flood the logs).
struct Refusals {
    metrics: Arc<Metrics>,
    log: LogGate,
    clock: Clock,
}

impl Refusals {
    fn refused(&self, reason: &'static str, why: &dyn std::fmt::Display) {
        self.refused_at(reason, why, self.clock.instant());
    }

    fn refused_at(
        &self,
        reason: &'static str,
        why: &dyn std::fmt::Display,
        now: tokio::time::Instant,
    ) {
        self.metrics.http_refused(reason);
        if let Some(unlogged) = self.log.admit(reason, now) {
            tracing::warn!(reason, unlogged, "refused: {why}");
        }
    }
}

/// What `[server]` says of connections and headers.
#[derive(Debug, Clone, Copy)]
struct Limits {
    max_connections: usize,
    max_header_bytes: usize,
    retry_after: Duration,
}

impl Limits {
    fn of(server: &ServerConfig) -> Self {
        Self {
            max_connections: server.max_connections,
            max_header_bytes: server.max_header_bytes,
            retry_after: server.retry_after.0,
        }
    }
}

/// The routes; webhooks only when this instance runs ingest. The limits are `[server]`'s (an
/// instance without ingest serves health and metrics within the defaults).
pub fn router(
    ingest: Option<Arc<Ingest>>,
    producer: Arc<Producer>,
    metrics: Arc<Metrics>,
    clock: Clock,
    liveness: Arc<Liveness>,
    draining: CancellationToken,
) -> HttpApp {
    let limits = Limits::of(
        &ingest
            .as_ref()
            .map(|i| i.server.clone())
            .unwrap_or_default(),
    );
    let health = Router::new()
        .route("/healthz", get(alive))
        .route("/readyz", get(ready))
        .route("/metrics", get(metrics_text))
        .with_state(Health {
            producer,
            metrics: metrics.clone(),
            liveness,
            draining,
        });
    let routes = match ingest {
        Some(ingest) => health.merge(
            Router::new()
                .route("/webhooks/{name}", post(ingest::receive))
                .route("/webhooks/{name}/{secret}", post(ingest::receive))
                .with_state(ingest),
        ),
        None => health,
    };
    let refusals = Arc::new(Refusals {
        metrics,
        log: LogGate::default(),
        clock,
    });
    let router = routes.layer(axum::middleware::from_fn_with_state(
        (limits, refusals.clone()),
        header_limit,
    ));
    HttpApp {
        router,
        limits,
        refusals,
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

/// Headers over `max_header_bytes` (names and values): 431, with a JSON body.
async fn header_limit(
    State((limits, refusals)): State<(Limits, Arc<Refusals>)>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    let bytes: usize = request
        .headers()
        .iter()
        .map(|(name, value)| name.as_str().len() + value.len())
        .sum();
    if bytes > limits.max_header_bytes {
        let message = format!(
            "the request headers are {bytes} bytes; at most {} are read",
            limits.max_header_bytes
        );
        refusals.refused("headers_too_large", &message);
        let body = serde_json::json!({
            "error": "headers_too_large",
            "message": message,
        });
        return (StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE, Json(body)).into_response();
    }
    next.run(request).await
}

/// Ready when webhooks can be accepted: the producer is healthy and Kafka answers. The engine's
/// partitions (or a rebalance) do not matter here.
async fn ready(State(h): State<Health>) -> impl IntoResponse {
    if h.draining.is_cancelled() {
        (StatusCode::SERVICE_UNAVAILABLE, "draining")
    } else if h.producer.is_ready() {
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
    app: HttpApp,
    header_read_timeout: Duration,
    shutdown: CancellationToken,
    grace: Duration,
) {
    let HttpApp {
        router: app,
        limits,
        refusals,
    } = app;
    let graceful = GracefulShutdown::new();
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(header_read_timeout)
        // Headers past twice the limit are not even buffered (the middleware answers those
        // between the two with JSON).
        .max_buf_size((limits.max_header_bytes.saturating_mul(2)).max(8192));
    let places = Arc::new(Semaphore::new(limits.max_connections));
    // Refusing takes a moment (the answer is written, the request drained briefly): a few at a
    // time; past them, a connection over the limit is closed unanswered.
    let refusing = Arc::new(Semaphore::new(REFUSALS_AT_ONCE));
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
        let Ok(place) = places.clone().try_acquire_owned() else {
            refusals.refused(
                "connection_limit",
                &format_args!(
                    "a connection over the limit of {} connections",
                    limits.max_connections
                ),
            );
            if let Ok(refusal) = refusing.clone().try_acquire_owned() {
                tokio::spawn(async move {
                    refuse_connection(stream, limits).await;
                    drop(refusal);
                });
            }
            continue;
        };
        let service = TowerToHyperService::new(app.clone());
        let connection = http.serve_connection(TokioIo::new(stream), service);
        let watched = graceful.watch(connection);
        let refusals = refusals.clone();
        tokio::spawn(async move {
            if let Err(e) = watched.await {
                if e.is_parse_too_large() {
                    refusals.refused(
                        "headers_too_large",
                        &format_args!(
                            "request headers past {} bytes answered with a bare 431",
                            limits.max_header_bytes.saturating_mul(2).max(8192)
                        ),
                    );
                }
                tracing::debug!(error = %e, "connection ended with an error");
            }
            drop(place);
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

/// Connections over the limit being answered at once.
const REFUSALS_AT_ONCE: usize = 64;

/// How long a refused connection's request is read (and dropped) after the answer, so that the
/// client reads the answer rather than a reset.
const REFUSAL_DRAIN: Duration = Duration::from_secs(1);

/// Answers a connection over the limit: `503`, `Retry-After`, a JSON body, and closes it.
async fn refuse_connection(mut stream: tokio::net::TcpStream, limits: Limits) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let body = serde_json::json!({
        "error": "overloaded",
        "message": format!(
            "the server is at its limit of {} connections",
            limits.max_connections
        ),
    })
    .to_string();
    let answer = format!(
        "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\n\
         retry-after: {}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        limits.retry_after.as_secs().max(1),
        body.len()
    );
    let _ = tokio::time::timeout(REFUSAL_DRAIN, async {
        stream.write_all(answer.as_bytes()).await?;
        stream.shutdown().await?;
        // Read what the client sends until it closes (or the drain time is up): closing with
        // unread data would reset the connection before the client reads the answer.
        let mut sink = [0u8; 4096];
        while stream.read(&mut sink).await? > 0 {}
        Ok::<_, std::io::Error>(())
    })
    .await;
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The log lines written through it.
    #[derive(Clone, Default)]
    struct Lines(Arc<std::sync::Mutex<Vec<u8>>>);

    impl std::io::Write for Lines {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn refusals_are_each_counted_and_logged_once_a_second_per_reason() {
        let lines = Lines::default();
        let subscriber = tracing_subscriber::fmt()
            .with_writer({
                let lines = lines.clone();
                move || lines.clone()
            })
            .with_ansi(false)
            .finish();
        let metrics = Arc::new(Metrics::new());
        let refusals = Refusals {
            metrics: metrics.clone(),
            log: LogGate::default(),
            clock: Clock::system(),
        };
        let t0 = Clock::system().instant();
        let at = |ms: u64| t0 + Duration::from_millis(ms);
        tracing::subscriber::with_default(subscriber, || {
            for ms in [0, 1, 2, 999] {
                refusals.refused_at("connection_limit", &"over the limit", at(ms));
            }
            refusals.refused_at("headers_too_large", &"too large", at(3));
            refusals.refused_at("connection_limit", &"over the limit", at(1000));
        });
        let text = String::from_utf8(lines.0.lock().unwrap().clone()).unwrap();
        let logged: Vec<&str> = text.lines().collect();
        assert_eq!(logged.len(), 3, "{text}");
        assert!(logged[0].contains("refused: over the limit"), "{text}");
        assert!(logged[1].contains("reason=\"headers_too_large\""), "{text}");
        assert!(logged[2].contains("unlogged=3"), "{text}");
        let exported = metrics.encode();
        assert!(
            exported.contains("leadwatch_http_refused_total{reason=\"connection_limit\"} 5"),
            "{exported}"
        );
        assert!(
            exported.contains("leadwatch_http_refused_total{reason=\"headers_too_large\"} 1"),
            "{exported}"
        );
    }
}
