//! The `generic` source: the canonical event format, signed per Standard Webhooks. For systems
//! without a dedicated module (Zoho, Dynamics, Outreach, home-grown automation …).
//!
//! Body: one event or an array of up to 100:
//! `{"id":"evt-1","type":"lead.updated","lead":"L-1","occurred_at":"…","fields":{…}}`
//! `{"id":"evt-2","type":"lead.activity","lead":"L-1","occurred_at":"…","activity":{"kind":"call","by":"…"}}`
//! `{"id":"evt-3","type":"lead.deleted","lead":"L-1","occurred_at":"…"}`
//! `{"id":"evt-4","type":"lead.merged","lead":"L-1","occurred_at":"…","into":"L-2"}`
//!
//! Lead keys are taken verbatim.
//!
//! Where each job lives:
//! - `config.rs`: `[sources.NAME] kind = "generic"`;
//! - `verify.rs`: the Standard Webhooks signature;
//! - `map.rs`: the body → lead events, every malformed field named.

pub mod config;
mod map;
mod verify;

use super::Vendor;
use config::GenericConfig;

/// A generic source: its requests checked by `verify.rs`, made into events by `map.rs`.
pub type GenericSource = Vendor<verify::Credentials, map::Mapper>;

impl GenericSource {
    pub fn from_config(cfg: &GenericConfig) -> Self {
        Vendor::new(
            "generic",
            verify::Credentials::from_config(cfg),
            map::Mapper::from_config(cfg),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ingest::testing::{arbitrary_bytes, json_bodies, parse_never_panics};

    pub(super) fn source() -> GenericSource {
        GenericSource::from_config(&crate::ingest::testing::source_config(
            "secret = \"whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD\"",
        ))
    }

    pub(super) fn now() -> jiff::Timestamp {
        "2026-11-22T12:00:00Z".parse().unwrap()
    }

    #[test]
    fn arbitrary_bytes_never_panic() {
        parse_never_panics(&source(), "web", now(), arbitrary_bytes());
    }

    #[test]
    fn arbitrary_json_never_panics() {
        parse_never_panics(&source(), "web", now(), json_bodies(|value| value));
    }
}
