//! Why a request was not accepted ([`IngestError`], with the [`FieldProblem`]s of a malformed
//! one), and how each answers: one status, one metric outcome, one JSON body.

use std::time::Duration;

use axum::Json;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use serde_json::{Value, json};

use crate::bus::producer::SendError;

/// Most events one request may carry.
pub const MAX_BATCH: usize = 100;

/// A batch of `len` vendor events is within [`MAX_BATCH`] (413 past it).
pub fn check_batch(len: usize) -> Result<(), IngestError> {
    if len > MAX_BATCH {
        return Err(IngestError::TooManyEvents(len));
    }
    Ok(())
}

/// A sender's text as quoted in an answer (and a log line, and an unparsed raw record's
/// error): its first 64 bytes, on a character boundary, then `…` when there was more.
pub fn quote(text: &str) -> String {
    const MAX: usize = 64;
    if text.len() <= MAX {
        return text.to_string();
    }
    let mut end = MAX;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &text[..end])
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

    /// The problem as found in item `i` of a batch: at `[i]`, or `[i].field`.
    pub fn in_item(self, i: usize) -> Self {
        let field = if self.field.is_empty() {
            format!("[{i}]")
        } else {
            format!("[{i}].{}", self.field)
        };
        Self { field, ..self }
    }
}

/// Why a request was not accepted; each maps to one status and a body.
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
    #[error("{0}")]
    Forbidden(String),
    #[error("the request is malformed")]
    Malformed(Vec<FieldProblem>),
    #[error("an event is too large")]
    EventTooLarge(FieldProblem),
    #[error("ingest is at its limit of {0} requests at once")]
    Busy(usize),
    #[error("Kafka could not take the events: {0}")]
    Unavailable(#[source] SendError),
}

impl IngestError {
    /// The body as a whole is malformed.
    pub fn malformed(message: impl Into<String>) -> Self {
        Self::Malformed(vec![FieldProblem::new("", message)])
    }

    pub fn status(&self) -> StatusCode {
        match self {
            Self::UnknownSource => StatusCode::NOT_FOUND,
            Self::TooLarge(_) | Self::TooManyEvents(_) | Self::EventTooLarge(_) => {
                StatusCode::PAYLOAD_TOO_LARGE
            }
            Self::BodyTimeout(_) => StatusCode::REQUEST_TIMEOUT,
            Self::BodyRead(_) | Self::Malformed(_) => StatusCode::BAD_REQUEST,
            Self::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            Self::Forbidden(_) => StatusCode::FORBIDDEN,
            Self::Unavailable(_) | Self::Busy(_) => StatusCode::SERVICE_UNAVAILABLE,
        }
    }

    /// The `outcome` label of the request counter, and `error` of the JSON body.
    pub fn outcome(&self) -> &'static str {
        match self {
            Self::UnknownSource => "unknown_source",
            Self::TooLarge(_) | Self::TooManyEvents(_) | Self::EventTooLarge(_) => "too_large",
            Self::BodyTimeout(_) => "body_timeout",
            Self::BodyRead(_) => "body_error",
            Self::Unauthorized(_) => "unauthorized",
            Self::Forbidden(_) => "forbidden",
            Self::Malformed(_) => "malformed",
            Self::Unavailable(_) => "unavailable",
            Self::Busy(_) => "overloaded",
        }
    }

    /// The JSON that says what was wrong (also kept with an unparsed raw record).
    pub fn body(&self) -> Value {
        let mut body = json!({ "error": self.outcome(), "message": self.to_string() });
        match self {
            IngestError::Malformed(problems) => body["problems"] = json!(problems),
            IngestError::EventTooLarge(problem) => body["problems"] = json!([problem]),
            _ => {}
        }
        body
    }

    /// One line for a person: the message and every problem.
    pub fn describe(&self) -> String {
        match self {
            IngestError::Malformed(problems) => problems
                .iter()
                .map(|p| {
                    if p.field.is_empty() {
                        p.message.clone()
                    } else {
                        format!("{}: {}", p.field, p.message)
                    }
                })
                .collect::<Vec<_>>()
                .join("; "),
            IngestError::EventTooLarge(p) => format!("{}: {}", p.field, p.message),
            other => other.to_string(),
        }
    }
}

/// The JSON answer to a refused request; `retry_after` goes with 503.
pub fn refuse(error: &IngestError, retry_after: Duration) -> Response {
    let response = (error.status(), Json(error.body())).into_response();
    error.with_retry_after(response, retry_after)
}

impl IngestError {
    /// The answer to this error, with `Retry-After` (whole seconds, at least 1) when it is a 503:
    /// the sender is to come back.
    pub fn with_retry_after(&self, mut response: Response, retry_after: Duration) -> Response {
        if matches!(self, IngestError::Unavailable(_) | IngestError::Busy(_)) {
            response.headers_mut().insert(
                header::RETRY_AFTER,
                HeaderValue::from(retry_after.as_secs().max(1)),
            );
        }
        response
    }
}
