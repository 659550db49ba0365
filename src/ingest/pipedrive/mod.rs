//! The `pipedrive` source: Pipedrive webhooks v2 (`"version": "2.0"` when created).
//!
//! One event per request: `{"meta": {"id": "…", "action": "create"|"change"|"delete",
//! "entity": "person"|"lead"|"deal"|"activity"|…, "entity_id": "…", "timestamp": "…", …},
//! "data": {…current…}, "previous": {…changed fields before…}}`, with the HTTP basic auth given
//! when the webhook was created. `meta.id` is the event's id: a retry carries the same one.
//!
//! Where each job lives:
//! - `config.rs`: `[sources.NAME] kind = "pipedrive"` and its checks;
//! - `verify.rs`: the basic auth;
//! - `map.rs`: the body → a lead event: persons, their Pipedrive leads, deals and activities, the
//!   default field mapping, event ids.

pub mod config;
mod map;
mod verify;

use super::Vendor;
use config::PipedriveConfig;

/// A Pipedrive source: its requests checked by `verify.rs`, made into events by `map.rs`.
pub type PipedriveSource = Vendor<verify::Credentials, map::Mapper>;

impl PipedriveSource {
    pub fn from_config(cfg: &PipedriveConfig) -> Self {
        Vendor::new(
            "pipedrive",
            verify::Credentials::from_config(cfg),
            map::Mapper::from_config(cfg),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ingest::testing::{arbitrary_bytes, json_value, parse_never_panics};
    use proptest::strategy::Strategy;

    pub(super) fn source(fields: &str) -> PipedriveSource {
        PipedriveSource::from_config(&config::example(fields))
    }

    pub(super) fn now() -> jiff::Timestamp {
        "2026-11-25T10:00:00Z".parse().unwrap()
    }

    #[test]
    fn arbitrary_bytes_never_panic() {
        parse_never_panics(&source(""), "pd", now(), arbitrary_bytes());
    }

    #[test]
    fn arbitrary_json_never_panics() {
        let bodies =
            (json_value(), json_value(), json_value()).prop_map(|(meta, data, previous)| {
                let body = serde_json::json!({"meta": meta, "data": data, "previous": previous});
                body.to_string().into_bytes()
            });
        parse_never_panics(&source(""), "pd", now(), bodies);
    }
}
