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

use super::Vendor;
use config::MarketoConfig;

/// A Marketo source: its requests checked by `verify.rs`, made into events by `map.rs`.
pub type MarketoSource = Vendor<verify::Credentials, map::Mapper>;

impl MarketoSource {
    pub fn from_config(cfg: &MarketoConfig) -> Self {
        Vendor::new(
            "marketo",
            verify::Credentials::from_config(cfg),
            map::Mapper::from_config(cfg),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ingest::testing::{arbitrary_bytes, json_bodies, parse_never_panics};

    pub(super) fn source(fields: &str) -> MarketoSource {
        MarketoSource::from_config(&config::example(fields))
    }

    pub(super) fn now() -> jiff::Timestamp {
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
