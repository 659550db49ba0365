//! Webhooks in. Each vendor's request becomes canonical [`LeadEvent`](crate::event::LeadEvent)s on
//! `{prefix}.events`, and its raw form on `{prefix}.raw`; nothing after ingest knows a vendor's
//! format. The plumbing every source shares lives here once; each vendor's folder only says,
//! through its [`Handler`], how to check its credentials, how to turn its body into events and
//! how to answer.
//!
//! A request's way through ([`receive`]):
//! 1. the body is read within `server.max_body_bytes` (413) and `server.body_timeout` (408);
//! 2. the handler checks credentials on the raw bytes (401);
//! 3. the handler parses (400 naming the problem, 413 past 100 events, 403 for an account that
//!    is not allowed);
//! 4. events seen within the dedupe window are dropped; the raw request (`{prefix}.raw`) and the
//!    rest of the events (`{prefix}.events`) are produced together;
//! 5. only when Kafka acknowledged every record does the sender get its 2xx (or Ack); otherwise
//!    503 + `Retry-After`, so it retries. An authentic request that could not be parsed is
//!    captured too (marked unparsed) before its 400.
//!
//! Where each thing lives:
//! - `receive.rs`: the HTTP handlers and the way above, once for every source;
//! - `handler.rs`: the [`Handler`] trait, what it sees of a request ([`Request`]) and what a body
//!   turns into ([`Parsed`]), the batch limit;
//! - `error.rs`: [`IngestError`] and [`FieldProblem`], and the status, metric outcome and body
//!   each answers with;
//! - `keys.rs`: lead keys and event ids: how long they may be, hashed ids;
//! - `dedupe.rs`: the event ids produced within the dedupe window;
//! - `raw.rs`: the raw record kept of every authentic request; `replay.rs`: `leadwatch replay`;
//! - `auth.rs`: credential checks sources share (constant-time comparison, basic auth);
//! - `fields.rs`: the canonical field names and each source's mapping onto them;
//! - `config.rs`: `[server]` and `[sources.NAME]` (each vendor's settings in its folder);
//! - `testing.rs`: test support (configs, fixtures, arbitrary bodies, the never-panics property).
//!
//! One folder per vendor (`generic/`, `hubspot/`, `salesforce/`, `marketo/`, `pipedrive/`), each
//! alike: `mod.rs` says what the vendor sends and wires its [`Handler`] (verify → parse → map);
//! `config.rs` holds its settings; `verify.rs` checks that a request is the vendor's;
//! `map.rs` turns its body into lead events (default field mapping, event ids). Salesforce adds
//! `soap.rs` (the envelope, the Ack and fault) and `redact.rs` (its session id). So a HubSpot
//! payload is parsed in `hubspot/map.rs`, a Salesforce message authenticated in
//! `salesforce/verify.rs`.
//!
//! This file builds [`Ingest`] from the configuration.

pub mod auth;
pub mod config;
pub mod dedupe;
mod error;
pub mod fields;
pub mod generic;
mod handler;
pub mod hubspot;
mod keys;
pub mod marketo;
pub mod normalize;
pub mod pipedrive;
pub mod raw;
mod receive;
pub mod replay;
pub mod salesforce;
#[cfg(test)]
pub(crate) mod testing;

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use crate::bus::Topics;
use crate::bus::producer::Producer;
use crate::clock::Clock;
use crate::telemetry::Metrics;
pub use config::{ServerConfig, SourceConfig};
use dedupe::Dedupe;
pub use error::{FieldProblem, IngestError, MAX_BATCH, check_batch, quote, refuse};
pub use handler::{Handler, Head, Parse, Parsed, Request, Vendor, Verify, json_body};
pub use keys::{
    MAX_KEY_LEN, MAX_VERBATIM_KEY_LEN, NAMESPACES, hashed_id, namespace_of, object_id_problem,
};
pub use receive::{LogGate, WebhookPath, receive};

/// A configured source.
#[derive(Debug)]
pub struct Source {
    pub name: String,
    pub handler: Box<dyn Handler>,
    /// How long a produced event id counts as a duplicate.
    pub dedupe_window: Duration,
    /// What every event is held to once parsed.
    pub limits: normalize::Limits,
}

impl Source {
    pub fn from_config(name: &str, cfg: &SourceConfig, server: &ServerConfig) -> Source {
        let handler: Box<dyn Handler> = match cfg {
            SourceConfig::Generic(c) => Box::new(generic::GenericSource::from_config(c)),
            SourceConfig::Hubspot(c) => Box::new(hubspot::HubspotSource::from_config(c)),
            SourceConfig::Salesforce(c) => Box::new(salesforce::SalesforceSource::from_config(c)),
            SourceConfig::Marketo(c) => Box::new(marketo::MarketoSource::from_config(c)),
            SourceConfig::Pipedrive(c) => Box::new(pipedrive::PipedriveSource::from_config(c)),
        };
        Source {
            name: name.to_string(),
            handler,
            dedupe_window: cfg.dedupe_window().unwrap_or(server.dedupe_window.0),
            limits: normalize::Limits {
                field_bytes: server.max_field_bytes,
                event_bytes: server.max_event_bytes,
                clock_skew: server.max_clock_skew.0,
            },
        }
    }

    /// What an authentic body turns into, its lead keys and event ids checked and its events
    /// held to the limits (live and in a replay alike).
    pub fn parse(&self, body: &[u8], received_at: jiff::Timestamp) -> Result<Parsed, IngestError> {
        self.handler
            .parse(&self.name, body, received_at)
            .and_then(keys::check_keys)
            .and_then(|parsed| normalize::normalize(&self.limits, parsed))
    }
}

/// What the webhook handler needs.
pub struct Ingest {
    pub sources: HashMap<String, Source>,
    pub producer: Arc<Producer>,
    pub events_topic: String,
    pub raw_topic: String,
    pub server: ServerConfig,
    pub metrics: Arc<Metrics>,
    pub dedupe: Dedupe,
    /// Arrival times (`received_at`, signature tolerances) and deduplication windows read it.
    pub clock: Clock,
    /// One place per request being handled (`server.max_requests_in_flight`).
    pub in_flight: tokio::sync::Semaphore,
    /// Refused requests are logged at most once per second per source.
    pub refusal_log: receive::LogGate,
}

impl Ingest {
    pub fn new(
        sources: &BTreeMap<String, SourceConfig>,
        producer: Arc<Producer>,
        topics: &Topics,
        server: &ServerConfig,
        metrics: Arc<Metrics>,
        clock: Clock,
    ) -> Self {
        for (name, cfg) in sources {
            if let Some(warning) = cfg.warning() {
                tracing::warn!(source = %name, "{warning}");
            }
        }
        Self {
            sources: sources
                .iter()
                .map(|(name, cfg)| (name.clone(), Source::from_config(name, cfg, server)))
                .collect(),
            producer,
            events_topic: topics.events.clone(),
            raw_topic: topics.raw.clone(),
            server: server.clone(),
            metrics,
            dedupe: Dedupe::new(server.dedupe_capacity),
            clock,
            in_flight: tokio::sync::Semaphore::new(server.max_requests_in_flight),
            refusal_log: receive::LogGate::default(),
        }
    }
}
