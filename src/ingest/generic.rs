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

use http::HeaderMap;
use jiff::Timestamp;
use serde_json::{Map, Value};

use super::{FieldProblem, Handler, IngestError, MAX_BATCH, Parsed, Request};
use crate::event::{Activity, Change, LeadEvent};
use crate::signature::{self, SignedHeaders, WebhookSecret};

/// Longest id or lead key accepted.
const MAX_KEY_LEN: usize = 512;

/// The accepted `type`s.
const TYPES: &str = "lead.updated, lead.activity, lead.deleted, lead.merged";

#[derive(Debug)]
pub struct GenericSource {
    pub secrets: Vec<WebhookSecret>,
}

impl Handler for GenericSource {
    fn kind(&self) -> &'static str {
        "generic"
    }

    fn authenticate(&self, req: &Request<'_>) -> Result<(), IngestError> {
        self.verify(req.headers, req.body, req.now)
    }

    fn parse(
        &self,
        source: &str,
        body: &[u8],
        received_at: Timestamp,
    ) -> Result<Parsed, IngestError> {
        Ok(Parsed {
            events: self.events(source, body, received_at)?,
            ..Parsed::default()
        })
    }
}

impl GenericSource {
    /// Checks the signature over the raw bytes, before anything is parsed.
    pub fn verify(
        &self,
        headers: &HeaderMap,
        body: &[u8],
        now: Timestamp,
    ) -> Result<(), IngestError> {
        let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
        let signed = SignedHeaders {
            id: header("webhook-id"),
            timestamp: header("webhook-timestamp"),
            signature: header("webhook-signature"),
        };
        signature::verify(
            &self.secrets,
            &signed,
            body,
            now.as_second(),
            signature::DEFAULT_TOLERANCE_SECS,
        )
        .map_err(|e| IngestError::Unauthorized(e.to_string()))
    }

    /// Turns an authentic body into events, or names every malformed field.
    pub fn events(
        &self,
        source: &str,
        body: &[u8],
        received_at: Timestamp,
    ) -> Result<Vec<LeadEvent>, IngestError> {
        let value: Value = serde_json::from_slice(body).map_err(|e| {
            IngestError::Malformed(vec![FieldProblem::new("", format!("not valid JSON: {e}"))])
        })?;
        let (items, batch) = match value {
            Value::Array(items) => (items, true),
            other => (vec![other], false),
        };
        if items.is_empty() {
            return Err(IngestError::Malformed(vec![FieldProblem::new(
                "",
                "the array holds no events",
            )]));
        }
        if items.len() > MAX_BATCH {
            return Err(IngestError::TooManyEvents(items.len()));
        }
        let mut events = Vec::with_capacity(items.len());
        let mut problems = Vec::new();
        for (i, item) in items.into_iter().enumerate() {
            let at = |field: &str| match (batch, field.is_empty()) {
                (true, true) => format!("[{i}]"),
                (true, false) => format!("[{i}].{field}"),
                (false, _) => field.to_string(),
            };
            match event(source, item, received_at) {
                Ok(event) => events.push(event),
                Err(mut ps) => {
                    for p in &mut ps {
                        p.field = at(&p.field);
                    }
                    problems.append(&mut ps);
                }
            }
        }
        if problems.is_empty() {
            Ok(events)
        } else {
            Err(IngestError::Malformed(problems))
        }
    }
}

fn event(
    source: &str,
    item: Value,
    received_at: Timestamp,
) -> Result<LeadEvent, Vec<FieldProblem>> {
    let Value::Object(mut obj) = item else {
        return Err(vec![FieldProblem::new(
            "",
            "an event must be a JSON object",
        )]);
    };
    let mut problems = Vec::new();
    let id = key_string(&obj, "id", &mut problems);
    let lead = key_string(&obj, "lead", &mut problems);
    let occurred_at = match obj.get("occurred_at") {
        Some(Value::String(s)) => s
            .parse::<Timestamp>()
            .map_err(|e| {
                problems.push(FieldProblem::new(
                    "occurred_at",
                    format!("not an RFC 3339 timestamp: {e}"),
                ))
            })
            .ok(),
        Some(_) => {
            problems.push(FieldProblem::new(
                "occurred_at",
                "must be an RFC 3339 timestamp string",
            ));
            None
        }
        None => {
            problems.push(FieldProblem::new("occurred_at", "is required"));
            None
        }
    };
    let change = match obj.get("type").and_then(Value::as_str) {
        Some("lead.updated") => match obj.remove("fields") {
            Some(Value::Object(fields)) => Some(Change::Updated { fields }),
            Some(_) => {
                problems.push(FieldProblem::new(
                    "fields",
                    "must be an object of field values",
                ));
                None
            }
            None => {
                problems.push(FieldProblem::new("fields", "is required for lead.updated"));
                None
            }
        },
        Some("lead.activity") => activity(obj.get("activity"), &mut problems),
        Some("lead.deleted") => Some(Change::Deleted {}),
        Some("lead.merged") => {
            key_string(&obj, "into", &mut problems).map(|into| Change::Merged { into })
        }
        Some(other) => {
            problems.push(FieldProblem::new(
                "type",
                format!("`{other}` is not one of {TYPES}"),
            ));
            None
        }
        None => {
            problems.push(FieldProblem::new(
                "type",
                format!("is required: one of {TYPES}"),
            ));
            None
        }
    };
    match (id, lead, occurred_at, change) {
        (Some(id), Some(lead), Some(occurred_at), Some(change)) if problems.is_empty() => {
            Ok(LeadEvent {
                id,
                source: source.to_string(),
                lead,
                occurred_at,
                received_at,
                change,
            })
        }
        _ => Err(problems),
    }
}

fn key_string(
    obj: &Map<String, Value>,
    field: &str,
    problems: &mut Vec<FieldProblem>,
) -> Option<String> {
    match obj.get(field) {
        Some(Value::String(s)) if !s.trim().is_empty() && s.len() <= MAX_KEY_LEN => Some(s.clone()),
        Some(Value::String(s)) if s.len() > MAX_KEY_LEN => {
            problems.push(FieldProblem::new(
                field,
                format!("is longer than {MAX_KEY_LEN} bytes"),
            ));
            None
        }
        Some(Value::String(_)) => {
            problems.push(FieldProblem::new(field, "must not be empty"));
            None
        }
        Some(_) => {
            problems.push(FieldProblem::new(field, "must be a string"));
            None
        }
        None => {
            problems.push(FieldProblem::new(field, "is required"));
            None
        }
    }
}

fn activity(value: Option<&Value>, problems: &mut Vec<FieldProblem>) -> Option<Change> {
    let Some(Value::Object(obj)) = value else {
        problems.push(FieldProblem::new(
            "activity",
            "is required for lead.activity: an object with `kind`",
        ));
        return None;
    };
    let kind = match obj.get("kind") {
        Some(Value::String(k)) if !k.trim().is_empty() => Some(k.trim().to_string()),
        _ => {
            problems.push(FieldProblem::new(
                "activity.kind",
                "must be a non-empty string such as \"call\"",
            ));
            None
        }
    };
    let by = match obj.get("by") {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) => Some(s.clone()),
        Some(_) => {
            problems.push(FieldProblem::new("activity.by", "must be a string"));
            return None;
        }
    };
    kind.map(|kind| Change::Activity {
        activity: Activity { kind, by },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn source() -> GenericSource {
        GenericSource {
            secrets: vec!["whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD".parse().unwrap()],
        }
    }

    fn now() -> Timestamp {
        "2026-11-22T12:00:00Z".parse().unwrap()
    }

    #[test]
    fn parses_the_documented_examples() {
        let body = br#"[
          {"id":"evt-1","type":"lead.updated","lead":"L-1","occurred_at":"2026-11-22T10:00:00Z","fields":{"stage":"sales_ready","owner":"alice@example.com"}},
          {"id":"evt-2","type":"lead.activity","lead":"L-1","occurred_at":"2026-11-22T10:30:00Z","activity":{"kind":"call","by":"alice@example.com"}}
        ]"#;
        let events = source().events("web", body, now()).unwrap();
        assert_eq!(events.len(), 2);
        assert_eq!(events[0].lead, "L-1");
        assert_eq!(events[0].source, "web");
        assert!(
            matches!(&events[0].change, Change::Updated { fields } if fields["stage"] == "sales_ready")
        );
        assert!(
            matches!(&events[1].change, Change::Activity { activity } if activity.kind == "call")
        );
        // One object alone is a batch of one.
        let one = br#"{"id":"e","type":"lead.activity","lead":"L","occurred_at":"2026-11-22T10:30:00Z","activity":{"kind":"email"}}"#;
        assert_eq!(source().events("web", one, now()).unwrap().len(), 1);
    }

    /// The event id is the sender's, verbatim, and so is the lead key: the engine recognises a
    /// re-sent event by it, and a sender's retry after an upgrade must still be recognised. Do
    /// not change what this asserts; undo the change.
    #[test]
    fn event_ids_are_pinned() {
        let body = br#"{"id":" evt-1 ","type":"lead.activity","lead":"L-1","occurred_at":"2026-11-22T10:30:00Z","activity":{"kind":"call"}}"#;
        let events = source().events("web", body, now()).unwrap();
        assert_eq!(
            (events[0].id.as_str(), events[0].lead.as_str()),
            (" evt-1 ", "L-1")
        );
    }

    #[test]
    fn names_every_malformed_field() {
        let body = br#"[
          {"id":"evt-1","type":"lead.updated","lead":"L-1","occurred_at":"yesterday","fields":{}},
          {"type":"lead.activity","lead":"","occurred_at":"2026-11-22T10:30:00Z","activity":{}},
          {"id":"x","type":"lead.exploded","lead":"L","occurred_at":"2026-11-22T10:30:00Z"},
          {"id":"y","type":"lead.merged","lead":"L","occurred_at":"2026-11-22T10:30:00Z"}
        ]"#;
        let Err(IngestError::Malformed(problems)) = source().events("web", body, now()) else {
            panic!("expected malformed");
        };
        let fields: Vec<&str> = problems.iter().map(|p| p.field.as_str()).collect();
        assert_eq!(
            fields,
            [
                "[0].occurred_at",
                "[1].id",
                "[1].lead",
                "[1].activity.kind",
                "[2].type",
                "[3].into"
            ]
        );
    }

    #[test]
    fn deletions_and_merges_are_events_too() {
        let body = br#"[
          {"id":"d1","type":"lead.deleted","lead":"L-1","occurred_at":"2026-11-22T10:00:00Z"},
          {"id":"m1","type":"lead.merged","lead":"L-2","occurred_at":"2026-11-22T10:00:00Z","into":"L-3"}
        ]"#;
        let events = source().events("web", body, now()).unwrap();
        assert_eq!(events[0].change, Change::Deleted {});
        assert_eq!(events[1].change, Change::Merged { into: "L-3".into() });
    }

    proptest::proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(body in proptest::collection::vec(proptest::num::u8::ANY, 0..512)) {
            let _ = source().events("web", &body, now());
        }

        #[test]
        fn arbitrary_json_never_panics(value in crate::ingest::tests::json_value()) {
            let body = serde_json::to_vec(&value).unwrap();
            let _ = source().events("web", &body, now());
        }
    }

    #[test]
    fn refuses_more_than_a_hundred_events_and_non_json() {
        let one = r#"{"id":"e","type":"lead.activity","lead":"L","occurred_at":"2026-11-22T10:30:00Z","activity":{"kind":"email"}}"#;
        let body = format!("[{}]", vec![one; 101].join(","));
        assert!(matches!(
            source().events("web", body.as_bytes(), now()),
            Err(IngestError::TooManyEvents(101))
        ));
        assert!(matches!(
            source().events("web", b"{not json", now()),
            Err(IngestError::Malformed(_))
        ));
        assert!(matches!(
            source().events("web", b"[]", now()),
            Err(IngestError::Malformed(_))
        ));
    }
}
