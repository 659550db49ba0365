//! What a source is to the plumbing: the [`Handler`] each vendor implements (most through
//! [`Vendor`], its `verify.rs` and `map.rs`), what it sees of a request ([`Request`]) and what a
//! body turns into ([`Parsed`]); and reading a JSON body ([`json_body`]), which every JSON
//! vendor's parsing shares (the batch limit is [`super::check_batch`]).

use std::fmt;
use std::time::Duration;

use axum::Json;
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use jiff::Timestamp;
use serde_json::{Value, json};

use super::error::{IngestError, refuse};
use crate::event::LeadEvent;

/// A body that must be JSON, parsed (400 naming the JSON error otherwise).
pub fn json_body(body: &[u8]) -> Result<Value, IngestError> {
    serde_json::from_slice(body).map_err(|e| IngestError::malformed(format!("not valid JSON: {e}")))
}

/// What a handler sees of a request before its body is read.
pub struct Head<'a> {
    pub method: &'a Method,
    pub uri: &'a Uri,
    pub headers: &'a HeaderMap,
    /// The last path segment of `/webhooks/NAME/SECRET`, when the request has one.
    pub path_secret: Option<&'a str>,
    /// Now, by ingest's clock: for timestamp tolerances.
    pub now: Timestamp,
}

/// What a handler sees of a request before anything is parsed.
pub struct Request<'a> {
    pub method: &'a Method,
    pub uri: &'a Uri,
    pub headers: &'a HeaderMap,
    /// The raw body bytes, exactly as received (signatures cover them).
    pub body: &'a [u8],
    /// The last path segment of `/webhooks/NAME/SECRET`, when the request has one.
    pub path_secret: Option<&'a str>,
    /// Now, by ingest's clock: for timestamp tolerances.
    pub now: Timestamp,
}

impl Request<'_> {
    /// The request without its body.
    pub fn head(&self) -> Head<'_> {
        Head {
            method: self.method,
            uri: self.uri,
            headers: self.headers,
            path_secret: self.path_secret,
            now: self.now,
        }
    }
}

/// What a body turned into.
#[derive(Debug, Default)]
pub struct Parsed {
    pub events: Vec<LeadEvent>,
    /// Vendor events that concern no lead (a company, an open task, an unknown type …): kept in
    /// `{prefix}.raw`, counted, not produced.
    pub ignored: usize,
    /// Vendor events from an account that is not allowed (produced nowhere).
    pub forbidden: usize,
    /// What holding the events to `[server]`'s limits changed (values cut, times clamped).
    pub adjusted: super::normalize::Adjusted,
}

/// Who sent a request: a vendor's `verify.rs`.
pub trait Verify: Send + Sync + fmt::Debug {
    /// Checks what can be checked of the credentials before the body is read (a header token,
    /// basic auth; a signature's presence and timestamp), so a request that cannot be authentic
    /// is refused without buffering its body. Nothing by default.
    fn authenticate_head(&self, _head: &Head<'_>) -> Result<(), IngestError> {
        Ok(())
    }

    /// Checks the credentials of a request on the raw bytes, before anything is parsed.
    fn authenticate(&self, req: &Request<'_>) -> Result<(), IngestError>;

    /// Lowercase names of headers that carry the credentials (never captured).
    fn secret_headers(&self) -> Vec<String> {
        Vec::new()
    }
}

/// What a body means: a vendor's `map.rs`.
pub trait Parse: Send + Sync + fmt::Debug {
    /// Turns an authentic body into events. `source` is the configured name.
    fn parse(
        &self,
        source: &str,
        body: &[u8],
        received_at: Timestamp,
    ) -> Result<Parsed, IngestError>;
}

/// A vendor whose jobs are a file each: `verify` checks who sent a request, `map` turns its body
/// into events; answers are the plumbing's. (A vendor that needs more — Salesforce's SOAP
/// answers — implements [`Handler`] itself.)
#[derive(Debug)]
pub struct Vendor<V, M> {
    kind: &'static str,
    pub(crate) verify: V,
    pub(crate) map: M,
}

impl<V, M> Vendor<V, M> {
    pub fn new(kind: &'static str, verify: V, map: M) -> Self {
        Self { kind, verify, map }
    }
}

impl<V: Verify, M: Parse> Handler for Vendor<V, M> {
    fn kind(&self) -> &'static str {
        self.kind
    }

    fn authenticate_head(&self, head: &Head<'_>) -> Result<(), IngestError> {
        self.verify.authenticate_head(head)
    }

    fn authenticate(&self, req: &Request<'_>) -> Result<(), IngestError> {
        self.verify.authenticate(req)
    }

    fn secret_headers(&self) -> Vec<String> {
        self.verify.secret_headers()
    }

    fn parse(
        &self,
        source: &str,
        body: &[u8],
        received_at: Timestamp,
    ) -> Result<Parsed, IngestError> {
        self.map.parse(source, body, received_at)
    }
}

/// One source kind: how its vendor authenticates, what its body means, how it wants answers.
pub trait Handler: Send + Sync + fmt::Debug {
    /// `generic`, `hubspot`, … (as `kind` in the config).
    fn kind(&self) -> &'static str;

    /// Checks what can be checked of the credentials before the body is read (see
    /// [`Verify::authenticate_head`]). Nothing by default.
    fn authenticate_head(&self, _head: &Head<'_>) -> Result<(), IngestError> {
        Ok(())
    }

    /// Checks the credentials of a request on the raw bytes, before anything is parsed.
    fn authenticate(&self, req: &Request<'_>) -> Result<(), IngestError>;

    /// Whether a request that passed [`Handler::authenticate`] is known to be authentic before it
    /// is parsed (so an unparseable one is captured). False where only the body can tell
    /// (Salesforce with neither basic auth nor a path secret: the org id is inside).
    fn authentic_before_parse(&self) -> bool {
        true
    }

    /// Whether a request whose body could not be parsed is authentic all the same (so it is
    /// captured). By default, what [`Handler::authentic_before_parse`] says; a source that finds
    /// its credentials in the body says whether they were there.
    fn authentic_unparsed(&self, _body: &[u8]) -> bool {
        self.authentic_before_parse()
    }

    /// Turns an authentic body into events. `source` is the configured name.
    fn parse(
        &self,
        source: &str,
        body: &[u8],
        received_at: Timestamp,
    ) -> Result<Parsed, IngestError>;

    /// Lowercase names of headers that carry this source's credentials (never captured).
    fn secret_headers(&self) -> Vec<String> {
        Vec::new()
    }

    /// The body as it may be kept in `{prefix}.raw`: a source whose vendor can put a credential
    /// in the body (Salesforce's session id) blanks it here. `None` keeps the body as it came.
    fn redact_body(&self, _body: &[u8]) -> Option<Vec<u8>> {
        None
    }

    /// Whether `/webhooks/NAME/SECRET` is this source's URL.
    fn takes_path_secret(&self) -> bool {
        false
    }

    /// The answer once every event is in Kafka.
    fn accepted(&self, accepted: usize, duplicates: usize) -> Response {
        let mut body = json!({ "accepted": accepted });
        if duplicates > 0 {
            body["duplicates"] = json!(duplicates);
        }
        (StatusCode::ACCEPTED, Json(body)).into_response()
    }

    /// The answer to a refused request.
    fn refused(&self, error: &IngestError, retry_after: Duration) -> Response {
        refuse(error, retry_after)
    }
}
