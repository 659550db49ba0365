//! The `salesforce` source: Salesforce Outbound Messages.
//!
//! A workflow rule or flow sends a SOAP `notifications` message: the org id, the action id and up
//! to 100 `Notification`s, each with its own `Id` (the same on every retry) and an `sObject` of
//! the fields the admin selected, with their current values. Salesforce wants the SOAP
//! `notificationsResponse` `<Ack>true</Ack>` back; anything else (we send a SOAP fault) makes it
//! retry for up to 24 hours. There is no signature.
//!
//! Where each job lives:
//! - `config.rs`: `[sources.NAME] kind = "salesforce"` and its checks;
//! - `verify.rs`: whether a message is Salesforce's: path secret, basic auth, allowed org ids;
//! - `soap.rs`: the SOAP envelope read into notifications, and the Ack or fault written back;
//! - `map.rs`: notifications → lead events: the default field mapping, event ids;
//! - `redact.rs`: the session id blanked before a message is kept raw.

pub mod config;
mod map;
mod redact;
mod soap;
mod verify;

pub use map::DEFAULT_FIELDS;

use std::time::Duration;

use axum::response::Response;
use jiff::Timestamp;

use super::{Handler, Head, IngestError, Parsed, Request};
use config::SalesforceConfig;

/// A Salesforce source: its messages checked by `verify.rs`, read by `soap.rs`, made into events
/// by `map.rs`.
#[derive(Debug)]
pub struct SalesforceSource {
    credentials: verify::Credentials,
    mapper: map::Mapper,
}

impl SalesforceSource {
    pub fn from_config(cfg: &SalesforceConfig) -> Self {
        Self {
            credentials: verify::Credentials::from_config(cfg),
            mapper: map::Mapper::from_config(cfg),
        }
    }
}

impl Handler for SalesforceSource {
    fn kind(&self) -> &'static str {
        "salesforce"
    }

    /// "Send Session ID" puts a live API session of the sending user in the message: it never
    /// reaches `{prefix}.raw`.
    fn redact_body(&self, body: &[u8]) -> Option<Vec<u8>> {
        redact::redact_session_ids(body)
    }

    fn authenticate_head(&self, head: &Head<'_>) -> Result<(), IngestError> {
        self.credentials.authenticate_head(head)
    }

    fn authenticate(&self, req: &Request<'_>) -> Result<(), IngestError> {
        self.credentials.authenticate(req)
    }

    fn authentic_before_parse(&self) -> bool {
        self.credentials.authentic_before_parse()
    }

    fn authentic_unparsed(&self, body: &[u8]) -> bool {
        self.credentials.authentic_unparsed(body)
    }

    fn takes_path_secret(&self) -> bool {
        self.credentials.takes_path_secret()
    }

    fn parse(
        &self,
        source: &str,
        body: &[u8],
        received_at: Timestamp,
    ) -> Result<Parsed, IngestError> {
        let message = soap::read(body)?;
        let org = message.organization_id.trim();
        self.credentials.check_org(org)?;
        self.mapper
            .events(source, org, message.notification, received_at)
    }

    fn accepted(&self, _accepted: usize, _duplicates: usize) -> Response {
        soap::ack()
    }

    fn refused(&self, error: &IngestError, retry_after: Duration) -> Response {
        soap::fault(error, retry_after)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ingest::testing::{arbitrary_bytes, fixture_file, parse_never_panics};
    use proptest::strategy::Strategy;

    pub(super) fn source(extra: &str) -> SalesforceSource {
        let text = format!("organization_ids = [\"00D5g000004Xq2R\"]\n{extra}");
        SalesforceSource::from_config(&crate::ingest::testing::source_config(&text))
    }

    pub(super) fn now() -> Timestamp {
        "2026-11-25T10:00:00Z".parse().unwrap()
    }

    pub(super) fn body(name: &str) -> Vec<u8> {
        fixture_file("salesforce", name).3
    }

    #[test]
    fn arbitrary_bytes_never_panic() {
        parse_never_panics(&source(""), "sf", now(), arbitrary_bytes());
    }

    #[test]
    fn a_mangled_message_never_panics() {
        let text = String::from_utf8(body("task_call.http")).unwrap();
        let mangled = (0usize..4000, ".{0,8}").prop_map(move |(cut, insert)| {
            let mut at = cut.min(text.len());
            while !text.is_char_boundary(at) {
                at -= 1;
            }
            format!("{}{insert}{}", &text[..at], &text[at..]).into_bytes()
        });
        parse_never_panics(&source(""), "sf", now(), mangled);
    }
}
