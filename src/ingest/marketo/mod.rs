//! The `marketo` source: a Marketo webhook (Admin → Webhooks, called by a smart campaign's
//! "Call Webhook" flow step).
//!
//! Marketo cannot sign: the webhook sends a configured header with a shared secret. Its body is
//! whatever template the admin wrote; the suggested one:
//!
//! ```json
//! {"leadId": {{lead.Id}}, "email": "{{lead.Email Address}}", "score": "{{lead.Lead Score}}",
//!  "stage": "{{lead.Lead Status}}", "owner": "{{lead.Lead Owner Email Address}}"}
//! ```
//!
//! Marketo waits for the answer and does not retry: ingest answers as soon as Kafka has the
//! event, and an unparseable body is kept in `{prefix}.raw` for a replay.
//!
//! Where each job lives:
//! - `config.rs`: `[sources.NAME] kind = "marketo"` and its checks;
//! - `verify.rs`: the header secret;
//! - `map.rs`: the templated body (JSON or form) → a lead event, by the configured pointers.

pub mod config;
mod map;
mod verify;

use jiff::Timestamp;

use super::{Handler, IngestError, Parsed, Request};
use config::MarketoConfig;

/// A Marketo source: its requests checked by `verify.rs`, made into events by `map.rs`.
#[derive(Debug)]
pub struct MarketoSource {
    credentials: verify::Credentials,
    mapper: map::Mapper,
}

impl MarketoSource {
    pub fn from_config(cfg: &MarketoConfig) -> Self {
        Self {
            credentials: verify::Credentials::from_config(cfg),
            mapper: map::Mapper::from_config(cfg),
        }
    }
}

impl Handler for MarketoSource {
    fn kind(&self) -> &'static str {
        "marketo"
    }

    fn authenticate(&self, req: &Request<'_>) -> Result<(), IngestError> {
        self.credentials.authenticate(req)
    }

    fn secret_headers(&self) -> Vec<String> {
        vec![self.credentials.header.clone()]
    }

    fn parse(
        &self,
        source: &str,
        body: &[u8],
        received_at: Timestamp,
    ) -> Result<Parsed, IngestError> {
        self.mapper.parse(source, body, received_at)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ingest::testing::{arbitrary_bytes, json_bodies, parse_never_panics};

    pub(super) fn source(fields: &str) -> MarketoSource {
        MarketoSource::from_config(&config::example(fields))
    }

    pub(super) fn now() -> Timestamp {
        "2026-11-25T10:00:00Z".parse().unwrap()
    }

    #[test]
    fn arbitrary_bytes_never_panic() {
        parse_never_panics(&source(""), "mk", now(), arbitrary_bytes());
    }

    #[test]
    fn arbitrary_json_never_panics() {
        let s = source("id = \"/id\"\nactivity = \"/kind\"");
        parse_never_panics(&s, "mk", now(), json_bodies(|value| value));
    }
}
