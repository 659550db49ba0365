//! Test support for ingest and its vendors: configs from TOML text, HTTP fixtures, arbitrary
//! bodies built from the vendors' vocabulary, and the property every handler holds
//! ([`parse_never_panics`]).

use std::panic::Location;

use http::{HeaderMap, HeaderName, HeaderValue, Method, Uri};
use jiff::Timestamp;
use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};
use serde_json::Value;

use super::Handler;

/// A source's config from TOML text (what `[sources.NAME]` holds), ready to deserialize.
pub fn source_config<T: serde::de::DeserializeOwned>(text: &str) -> T {
    let value: Value = config::Config::builder()
        .add_source(config::File::from_str(text, config::FileFormat::Toml))
        .build()
        .unwrap()
        .try_deserialize()
        .unwrap();
    serde_json::from_value(value).unwrap()
}

/// Parses a fixture: an HTTP/1.1 request as text (request line, headers, a blank line, the
/// body; one final newline of the file is not part of the body).
pub fn fixture(text: &str) -> (Method, Uri, HeaderMap, Vec<u8>) {
    let (head, body) = text
        .split_once("\r\n\r\n")
        .or_else(|| text.split_once("\n\n"))
        .expect("a blank line after the headers");
    let mut lines = head.lines();
    let mut request = lines.next().expect("a request line").split_whitespace();
    let method: Method = request.next().unwrap().parse().unwrap();
    let uri: Uri = request.next().unwrap().parse().unwrap();
    let mut headers = HeaderMap::new();
    for line in lines {
        let (k, v) = line.split_once(':').expect("`Name: value`");
        headers.append(
            HeaderName::from_bytes(k.trim().as_bytes()).unwrap(),
            HeaderValue::from_str(v.trim()).unwrap(),
        );
    }
    let body = body.strip_suffix('\n').unwrap_or(body);
    (method, uri, headers, body.as_bytes().to_vec())
}

/// A fixture file of `tests/fixtures/{vendor}/`, parsed by [`fixture`].
pub fn fixture_file(vendor: &str, name: &str) -> (Method, Uri, HeaderMap, Vec<u8>) {
    let path = format!(
        "{}/tests/fixtures/{vendor}/{name}",
        env!("CARGO_MANIFEST_DIR")
    );
    fixture(&std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}")))
}

/// The property every handler holds: whatever a sender posts, parsing answers (events or an
/// error) and never panics. Runs as `proptest!` would (cases, shrinking, `PROPTEST_*`
/// settings), with failing seeds kept beside the calling test's file.
#[track_caller]
pub fn parse_never_panics(
    handler: &dyn Handler,
    source: &str,
    now: Timestamp,
    bodies: impl Strategy<Value = Vec<u8>>,
) {
    let mut runner = TestRunner::new(Config {
        source_file: Some(Location::caller().file()),
        ..Config::default()
    });
    let result = runner.run(&bodies, |body| {
        let _ = handler.parse(source, &body, now);
        Ok(())
    });
    if let Err(e) = result {
        panic!("{e}\n{runner}");
    }
}

/// Any bytes, up to 512 of them.
pub fn arbitrary_bytes() -> impl Strategy<Value = Vec<u8>> {
    proptest::collection::vec(proptest::num::u8::ANY, 0..512)
}

/// [`json_value`]s as bodies, each put in the vendor's envelope by `wrap`.
pub fn json_bodies(wrap: fn(Value) -> Value) -> impl Strategy<Value = Vec<u8>> {
    json_value().prop_map(move |value| serde_json::to_vec(&wrap(value)).expect("JSON serializes"))
}

/// Keys the vendor parsers look for, so arbitrary JSON reaches deep into them.
const KEYS: &[&str] = &[
    "id",
    "type",
    "lead",
    "occurred_at",
    "fields",
    "activity",
    "kind",
    "by",
    "into",
    "eventId",
    "subscriptionType",
    "portalId",
    "objectId",
    "objectTypeId",
    "occurredAt",
    "propertyName",
    "propertyValue",
    "mergedObjectIds",
    "primaryObjectId",
    "newObjectId",
    "associationType",
    "associationRemoved",
    "fromObjectId",
    "toObjectId",
    "fromObjectTypeId",
    "toObjectTypeId",
    "meta",
    "data",
    "previous",
    "action",
    "entity",
    "entity_id",
    "timestamp",
    "person_id",
    "lead_id",
    "deal_id",
    "done",
    "owner_id",
    "custom_fields",
    "emails",
    "participants",
    "merged_to_id",
    "leadId",
    "email",
    "score",
    "stage",
];
const WORDS: &[&str] = &[
    "contact.propertyChange",
    "contact.merge",
    "object.associationChange",
    "0-1",
    "0-48",
    "CALL_TO_CONTACT",
    "person",
    "lead",
    "deal",
    "activity",
    "create",
    "change",
    "delete",
    "2026-11-22T10:00:00Z",
    "call",
    "lead.updated",
    "lead.activity",
    "lead.merged",
    "",
    "1551",
];

/// Arbitrary JSON values built from the vocabulary of the vendors' formats.
pub fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        prop::sample::select(vec![i64::MIN, i64::MAX, -1, 0]).prop_map(Value::from),
        (-1.0e12f64..1.0e12).prop_map(Value::from),
        prop::sample::select(WORDS).prop_map(Value::from),
        ".{0,12}".prop_map(Value::String),
    ];
    leaf.prop_recursive(4, 48, 8, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            prop::collection::btree_map(prop::sample::select(KEYS), inner, 0..10).prop_map(|m| {
                Value::Object(m.into_iter().map(|(k, v)| (k.to_string(), v)).collect())
            }),
        ]
    })
}
