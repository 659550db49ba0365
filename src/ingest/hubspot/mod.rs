//! The `hubspot` source: HubSpot webhook subscriptions.
//!
//! HubSpot POSTs a JSON array of up to 100 events, possibly out of order and with duplicates:
//! `[{"eventId":…,"subscriptionType":"contact.propertyChange","portalId":62515,"objectId":123,
//! "propertyName":"lifecyclestage","propertyValue":"salesqualifiedlead","occurredAt":1564113600000,
//! "attemptNumber":0,…}]`. Legacy subscription types name the object (`contact.creation`);
//! generic ones say `object.creation` with an `objectTypeId` (`0-1` = contact, `0-48` = call …).
//! Each request is signed with the app's client secret.
//!
//! Where each job lives:
//! - `config.rs`: `[sources.NAME] kind = "hubspot"` and its checks;
//! - `verify.rs`: the signatures (v3; v1 and v2 with `legacy_signatures`);
//! - `map.rs`: the JSON array → lead events: which events concern a lead, the default field
//!   mapping, event ids, the portal allowlist.

pub mod config;
mod map;
mod verify;

use super::Vendor;
use config::HubspotConfig;

/// A HubSpot source: its signatures checked by `verify.rs`, its events made by `map.rs`.
pub type HubspotSource = Vendor<verify::Credentials, map::Mapper>;

impl HubspotSource {
    pub fn from_config(cfg: &HubspotConfig) -> Self {
        Vendor::new(
            "hubspot",
            verify::Credentials::from_config(cfg),
            map::Mapper::from_config(cfg),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ingest::testing::{arbitrary_bytes, json_bodies, parse_never_panics};
    use serde_json::Value;

    pub(super) fn source(extra: &str) -> HubspotSource {
        HubspotSource::from_config(&config::example(extra))
    }

    pub(super) fn now() -> jiff::Timestamp {
        "2026-11-22T12:00:00Z".parse().unwrap()
    }

    #[test]
    fn arbitrary_bytes_never_panic() {
        let s = source("portal_ids = [1]");
        parse_never_panics(&s, "hs", now(), arbitrary_bytes());
    }

    #[test]
    fn arbitrary_json_never_panics() {
        let bodies = json_bodies(|value| Value::Array(vec![value]));
        parse_never_panics(&source(""), "hs", now(), bodies);
    }
}
