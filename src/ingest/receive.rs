//! The way every request takes, once for all sources: read the body within its limits →
//! authenticate → parse → capture the raw request → drop retried events → produce → answer
//! (only after Kafka acknowledged every record).

use std::collections::HashSet;
use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, Method, Uri, header};
use axum::response::Response;
use bytes::Bytes;
use http_body_util::{BodyExt, LengthLimitError, Limited};
use serde::{Deserialize, Serialize};

use super::dedupe::dedupe_key;
use super::error::{IngestError, refuse};
use super::handler::{Head, Parsed, Request};
use super::raw::RawRecord;
use super::{Ingest, Source};

/// A webhook's path: `/webhooks/{name}`, or `/webhooks/{name}/{secret}` for a source that takes
/// a secret in its URL.
#[derive(Debug, Deserialize)]
pub struct WebhookPath {
    name: String,
    #[serde(default)]
    secret: Option<String>,
}

/// `POST /webhooks/{name}` and `POST /webhooks/{name}/{secret}`.
pub async fn receive(
    State(ingest): State<Arc<Ingest>>,
    Path(path): Path<WebhookPath>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Body,
) -> Response {
    ingest
        .handle(
            &path.name,
            path.secret.as_deref(),
            &method,
            &uri,
            &headers,
            body,
        )
        .await
}

/// How an accepted request went.
struct Accepted {
    produced: usize,
    duplicates: usize,
}

impl Ingest {
    async fn handle(
        &self,
        name: &str,
        path_secret: Option<&str>,
        method: &Method,
        uri: &Uri,
        headers: &HeaderMap,
        body: Body,
    ) -> Response {
        let retry_after = self.server.retry_after.0;
        let source = match self.sources.get(name) {
            Some(s) if path_secret.is_none() || s.handler.takes_path_secret() => s,
            _ => {
                // The path is the caller's: never a metric label.
                self.metrics.webhook_request("unknown", "unknown_source");
                let e = IngestError::UnknownSource;
                self.log_refusal("unknown", &e);
                return refuse(&e, retry_after);
            }
        };
        // Beyond the limit, an answer at once rather than a queue: the sender retries.
        let Ok(_place) = self.in_flight.try_acquire() else {
            let e = IngestError::Busy(self.server.max_requests_in_flight);
            self.metrics.webhook_request(name, e.outcome());
            self.log_refusal(name, &e);
            return source.handler.refused(&e, retry_after);
        };
        match self
            .accept(source, path_secret, method, uri, headers, body)
            .await
        {
            Ok(done) => {
                self.metrics.webhook_request(name, "accepted");
                self.metrics.events_produced(name, done.produced as u64);
                source.handler.accepted(done.produced, done.duplicates)
            }
            Err(e) => {
                self.metrics.webhook_request(name, e.outcome());
                self.log_refusal(name, &e);
                source.handler.refused(&e, retry_after)
            }
        }
    }

    /// Logs a refused request, at most one line per second per source (a flood of bad
    /// requests must not flood the logs); the line says how many were refused unlogged since
    /// the last one. Every refusal is counted all the same.
    fn log_refusal(&self, source: &str, e: &IngestError) {
        let Some(unlogged) = self.refusal_log.admit(source, self.clock.instant()) else {
            return;
        };
        match e {
            IngestError::Unavailable(_) | IngestError::Busy(_) => {
                tracing::warn!(source = %source, error = %e, unlogged, "answered 503")
            }
            _ => {
                tracing::info!(source = %source, error = %e.describe(), unlogged, "request refused")
            }
        }
    }

    async fn accept(
        &self,
        source: &Source,
        path_secret: Option<&str>,
        method: &Method,
        uri: &Uri,
        headers: &HeaderMap,
        body: Body,
    ) -> Result<Accepted, IngestError> {
        let handler = source.handler.as_ref();
        // What the headers alone can refuse is refused before the body is buffered.
        handler.authenticate_head(&Head {
            method,
            uri,
            headers,
            path_secret,
            now: self.clock.now(),
        })?;
        let body = self.read_body(headers, body).await?;
        let now = self.clock.now();
        handler.authenticate(&Request {
            method,
            uri,
            headers,
            body: &body,
            path_secret,
            now,
        })?;
        let redacted = handler.redact_body(&body);
        let mut record = RawRecord::capture(
            &source.name,
            handler.kind(),
            now,
            headers,
            &handler.secret_headers(),
            redacted.as_deref().unwrap_or(&body),
        );
        let parsed = match source.parse(&body, now) {
            Ok(parsed) => parsed,
            Err(
                e @ (IngestError::Malformed(_)
                | IngestError::TooManyEvents(_)
                | IngestError::EventTooLarge(_)),
            ) if handler.authentic_unparsed(&body) => {
                // Authentic but not understood: kept (marked unparsed) for a corrected replay.
                record.set_error(e.body());
                self.send_owned(&[(
                    self.raw_topic.as_str(),
                    source.name.as_str(),
                    encode(&record),
                )])
                .await?;
                self.metrics.raw_captured(&source.name, false);
                return Err(e);
            }
            Err(e) => return Err(e),
        };
        let Parsed {
            mut events,
            ignored,
            forbidden,
            adjusted,
        } = parsed;
        // Nothing from an allowed account: refused, even if the batch also held events that
        // concern no lead (those would be ignored anyway).
        if events.is_empty() && forbidden > 0 {
            self.metrics
                .ingest_events(&source.name, "forbidden", forbidden);
            return Err(IngestError::Forbidden(
                "the account that sent these events is not allowed for this source".into(),
            ));
        }
        record.parsed = true;
        record.events = events.len();

        // A batch may hold the same event twice and out of order (HubSpot says so): the first of
        // each id, in event-time order.
        let total = events.len();
        let mut in_batch = HashSet::new();
        events.retain(|e| in_batch.insert(e.id.clone()));
        events.sort_by_key(|e| e.occurred_at);
        let at = self.clock.instant();
        events.retain(|e| !self.dedupe.seen(&dedupe_key(&source.name, &e.id), at));
        let duplicates = total - events.len();

        let raw_payload = encode(&record);
        let mut records = Vec::with_capacity(events.len() + 1);
        records.push((self.raw_topic.as_str(), source.name.as_str(), raw_payload));
        let payloads: Vec<(String, Vec<u8>)> =
            events.iter().map(|e| (e.lead.clone(), encode(e))).collect();
        for (lead, payload) in &payloads {
            records.push((self.events_topic.as_str(), lead.as_str(), payload.clone()));
        }
        if let Err(e) = self.send_owned(&records).await {
            self.metrics
                .ingest_events(&source.name, "unavailable", events.len());
            return Err(e);
        }
        // Only ids now in Kafka count as seen: a failed request's retry must get through.
        let keys: Vec<String> = events
            .iter()
            .map(|e| dedupe_key(&source.name, &e.id))
            .collect();
        self.dedupe.remember(
            keys.iter().map(String::as_str),
            source.dedupe_window,
            self.clock.instant(),
        );
        self.metrics.raw_captured(&source.name, true);
        self.metrics
            .ingest_events(&source.name, "produced", events.len());
        self.metrics
            .ingest_events(&source.name, "duplicate", duplicates);
        self.metrics.ingest_events(&source.name, "ignored", ignored);
        self.metrics
            .ingest_events(&source.name, "forbidden", forbidden);
        self.metrics
            .ingest_adjusted(&source.name, adjusted.values_cut, adjusted.clamped);
        Ok(Accepted {
            produced: events.len(),
            duplicates,
        })
    }

    /// Only a delivery report for every record makes a 2xx.
    async fn send_owned(&self, records: &[(&str, &str, Vec<u8>)]) -> Result<(), IngestError> {
        self.producer
            .send_all(records, self.server.ack_timeout.0)
            .await
            .map_err(IngestError::Unavailable)
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

/// A record's bytes on `{prefix}.events` or `{prefix}.raw` (live and replayed alike).
pub(super) fn encode<T: Serialize>(value: &T) -> Vec<u8> {
    serde_json::to_vec(value).expect("events and raw records serialize")
}

/// At most one log line per key and second ([`Ingest`]'s refused requests, per source).
#[derive(Debug, Default)]
pub struct LogGate {
    /// Per key: when a line was last let through, and how many were held back since.
    last: std::sync::Mutex<std::collections::HashMap<String, (tokio::time::Instant, u64)>>,
}

impl LogGate {
    const EVERY: std::time::Duration = std::time::Duration::from_secs(1);

    /// Whether a line for `key` may be logged at `now`: `Some(held back since the last)`, or
    /// `None` (counted as held back).
    pub fn admit(&self, key: &str, now: tokio::time::Instant) -> Option<u64> {
        let mut last = self.last.lock().unwrap_or_else(|e| e.into_inner());
        match last.get_mut(key) {
            Some((at, held)) if now.saturating_duration_since(*at) < Self::EVERY => {
                *held += 1;
                None
            }
            Some((at, held)) => {
                let unlogged = *held;
                *at = now;
                *held = 0;
                Some(unlogged)
            }
            None => {
                last.insert(key.to_string(), (now, 0));
                Some(0)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn one_line_per_second_per_source_says_how_many_it_held_back() {
        let gate = LogGate::default();
        let t0 = crate::clock::Clock::system().instant();
        let at = |ms: u64| t0 + Duration::from_millis(ms);
        assert_eq!(gate.admit("web", at(0)), Some(0));
        for ms in [1, 200, 999] {
            assert_eq!(gate.admit("web", at(ms)), None);
        }
        // Another source has its own second.
        assert_eq!(gate.admit("hs", at(500)), Some(0));
        assert_eq!(gate.admit("web", at(1000)), Some(3));
        assert_eq!(gate.admit("web", at(1500)), None);
        assert_eq!(gate.admit("web", at(2500)), Some(1));
    }
}
