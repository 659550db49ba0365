//! The HTTP surface for webhooks: the plumbing every source shares (body limit and deadline,
//! verification before parsing, produce-then-answer, precise errors, metrics) lives here once;
//! each source module only says how to verify and parse its vendor's requests.

pub mod generic;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use axum::Json;
use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use http_body_util::{BodyExt, LengthLimitError, Limited};
use jiff::Timestamp;
use serde::Serialize;
use serde_json::json;

use crate::bus::producer::{Producer, SendError};
use crate::config::{ServerConfig, SourceConfig};
use crate::event::LeadEvent;
use crate::telemetry::Metrics;
use generic::GenericSource;

/// Most events one request may carry.
pub const MAX_BATCH: usize = 100;

/// A configured source.
#[derive(Debug)]
pub enum Source {
    Generic(GenericSource),
}

impl Source {
    pub fn from_config(name: &str, cfg: &SourceConfig) -> Source {
        match cfg {
            SourceConfig::Generic { secret } => Source::Generic(GenericSource {
                name: name.to_string(),
                secrets: secret.0.clone(),
            }),
        }
    }

    fn verify(&self, headers: &HeaderMap, body: &[u8], now: Timestamp) -> Result<(), IngestError> {
        match self {
            Source::Generic(s) => s.verify(headers, body, now),
        }
    }

    fn parse(&self, body: &[u8], received_at: Timestamp) -> Result<Vec<LeadEvent>, IngestError> {
        match self {
            Source::Generic(s) => s.parse(body, received_at),
        }
    }
}

/// What the webhook handler needs.
pub struct Ingest {
    pub sources: HashMap<String, Source>,
    pub producer: Arc<Producer>,
    pub events_topic: String,
    pub server: ServerConfig,
    pub metrics: Arc<Metrics>,
}

/// One malformed field of a request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct FieldProblem {
    /// Where, e.g. `[2].occurred_at` (empty for the body as a whole).
    pub field: String,
    pub message: String,
}

impl FieldProblem {
    pub fn new(field: &str, message: impl Into<String>) -> Self {
        Self {
            field: field.to_string(),
            message: message.into(),
        }
    }
}

/// Why a request was not accepted; each maps to one status and a JSON body.
#[derive(Debug, thiserror::Error)]
pub enum IngestError {
    #[error("no source is configured under this name")]
    UnknownSource,
    #[error("the body is larger than {0} bytes")]
    TooLarge(u64),
    #[error("a request carries at most {MAX_BATCH} events; this one has {0}")]
    TooManyEvents(usize),
    #[error("the body did not arrive within {0:?}")]
    BodyTimeout(Duration),
    #[error("reading the body failed: {0}")]
    BodyRead(String),
    #[error("{0}")]
    Unauthorized(String),
    #[error("the request is malformed")]
    Malformed(Vec<FieldProblem>),
    #[error("Kafka could not take the events: {0}")]
    Unavailable(#[source] SendError),
}

impl IngestError {
    fn status(&self) -> StatusCode {
        match self {
            Self::UnknownSource => StatusCode::NOT_FOUND,
            Self::TooLarge(_) | Self::TooManyEvents(_) => StatusCode::PAYLOAD_TOO_LARGE,
            Self::BodyTimeout(_) => StatusCode::REQUEST_TIMEOUT,
            Self::BodyRead(_) | Self::Malformed(_) => StatusCode::BAD_REQUEST,
            Self::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            Self::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
        }
    }

    /// The `outcome` label of the request counter.
    fn outcome(&self) -> &'static str {
        match self {
            Self::UnknownSource => "unknown_source",
            Self::TooLarge(_) | Self::TooManyEvents(_) => "too_large",
            Self::BodyTimeout(_) => "body_timeout",
            Self::BodyRead(_) => "body_error",
            Self::Unauthorized(_) => "unauthorized",
            Self::Malformed(_) => "malformed",
            Self::Unavailable(_) => "unavailable",
        }
    }
}

/// Answers a refused request; `retry_after` goes with 503.
fn refuse(error: &IngestError, retry_after: Duration) -> Response {
    let mut body = json!({ "error": error.outcome(), "message": error.to_string() });
    if let IngestError::Malformed(problems) = error {
        body["problems"] = json!(problems);
    }
    let mut response = (error.status(), Json(body)).into_response();
    if matches!(error, IngestError::Unavailable(_)) {
        let secs = retry_after.as_secs().max(1).to_string();
        response.headers_mut().insert(
            header::RETRY_AFTER,
            HeaderValue::from_str(&secs).expect("digits"),
        );
    }
    response
}

/// `POST /webhooks/{name}`.
pub async fn receive(
    State(ingest): State<Arc<Ingest>>,
    Path(name): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let Some(source) = ingest.sources.get(&name) else {
        // The path is the caller's: never a metric label.
        ingest.metrics.webhook_request("unknown", "unknown_source");
        return refuse(&IngestError::UnknownSource, ingest.server.retry_after.0);
    };
    match ingest.accept(source, &headers, body).await {
        Ok(n) => {
            ingest.metrics.webhook_request(&name, "accepted");
            ingest.metrics.events_produced(&name, n as u64);
            (StatusCode::ACCEPTED, Json(json!({ "accepted": n }))).into_response()
        }
        Err(e) => {
            ingest.metrics.webhook_request(&name, e.outcome());
            match &e {
                IngestError::Unavailable(_) => {
                    tracing::warn!(source = %name, error = %e, "answered 503")
                }
                _ => tracing::info!(source = %name, error = %e, "request refused"),
            }
            refuse(&e, ingest.server.retry_after.0)
        }
    }
}

impl Ingest {
    async fn accept(
        &self,
        source: &Source,
        headers: &HeaderMap,
        body: Body,
    ) -> Result<usize, IngestError> {
        let body = self.read_body(headers, body).await?;
        let now = Timestamp::now();
        source.verify(headers, &body, now)?;
        let events = source.parse(&body, now)?;
        let payloads: Vec<(String, Vec<u8>)> = events
            .iter()
            .map(|e| {
                (
                    e.lead.clone(),
                    serde_json::to_vec(e).expect("events serialize"),
                )
            })
            .collect();
        let records: Vec<(&str, &str, Vec<u8>)> = payloads
            .iter()
            .map(|(lead, payload)| (self.events_topic.as_str(), lead.as_str(), payload.clone()))
            .collect();
        // Only a delivery report for every event makes a 2xx.
        self.producer
            .send_all(&records, self.server.ack_timeout.0)
            .await
            .map_err(IngestError::Unavailable)?;
        Ok(events.len())
    }

    /// The whole body within the size limit and the body deadline.
    async fn read_body(&self, headers: &HeaderMap, body: Body) -> Result<Bytes, IngestError> {
        let max = self.server.max_body_bytes;
        let declared = headers
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        if declared.is_some_and(|n| n > max) {
            return Err(IngestError::TooLarge(max));
        }
        let limit = usize::try_from(max).unwrap_or(usize::MAX);
        let deadline = self.server.body_timeout.0;
        match tokio::time::timeout(deadline, Limited::new(body, limit).collect()).await {
            Err(_) => Err(IngestError::BodyTimeout(deadline)),
            Ok(Ok(collected)) => Ok(collected.to_bytes()),
            Ok(Err(e)) if e.is::<LengthLimitError>() => Err(IngestError::TooLarge(max)),
            Ok(Err(e)) => Err(IngestError::BodyRead(e.to_string())),
        }
    }
}
