//! The canonical event format → [`LeadEvent`]s, taken as they come: one event or an array of up
//! to 100, each naming every malformed field (`[2].occurred_at`). Lead keys are taken verbatim.

use jiff::Timestamp;
use serde_json::{Map, Value};

use super::config::GenericConfig;
use crate::event::{Activity, Change, LeadEvent};
use crate::ingest::{
    FieldProblem, IngestError, MAX_VERBATIM_KEY_LEN, Parse, Parsed, check_batch, json_body,
    namespace_of, object_id_problem,
};

/// The accepted `type`s.
const TYPES: &str = "lead.updated, lead.activity, lead.deleted, lead.merged";

/// The canonical format: its events are what the body says, in the namespaces it may name.
#[derive(Debug, Default)]
pub struct Mapper {
    /// The other systems whose lead keys this source may name (`namespaces`).
    namespaces: Vec<String>,
}

impl Mapper {
    pub fn from_config(cfg: &GenericConfig) -> Self {
        Self {
            namespaces: cfg.namespaces.clone(),
        }
    }
}

impl Parse for Mapper {
    fn parse(
        &self,
        source: &str,
        body: &[u8],
        received_at: Timestamp,
    ) -> Result<Parsed, IngestError> {
        Ok(Parsed {
            events: self.lead_events(source, body, received_at)?,
            ..Parsed::default()
        })
    }
}

impl Mapper {
    /// Turns an authentic body into events, or names every malformed field.
    pub fn lead_events(
        &self,
        source: &str,
        body: &[u8],
        received_at: Timestamp,
    ) -> Result<Vec<LeadEvent>, IngestError> {
        let (items, batch) = match json_body(body)? {
            Value::Array(items) => (items, true),
            other => (vec![other], false),
        };
        if items.is_empty() {
            return Err(IngestError::malformed("the array holds no events"));
        }
        check_batch(items.len())?;
        let mut events = Vec::with_capacity(items.len());
        let mut problems = Vec::new();
        for (i, item) in items.into_iter().enumerate() {
            match self.event(source, item, received_at) {
                Ok(event) => events.push(event),
                Err(ps) if batch => problems.extend(ps.into_iter().map(|p| p.in_item(i))),
                Err(ps) => problems.extend(ps),
            }
        }
        if problems.is_empty() {
            Ok(events)
        } else {
            Err(IngestError::Malformed(problems))
        }
    }

    /// A lead key (`lead`, `into`) as given: verbatim, unless it names another system this
    /// source may not speak for, or that system's object id is no id.
    fn key(
        &self,
        obj: &Map<String, Value>,
        field: &str,
        problems: &mut Vec<FieldProblem>,
    ) -> Option<String> {
        let key = key_string(obj, field, problems)?;
        let Some(ns) = namespace_of(&key) else {
            return Some(key);
        };
        if !self.namespaces.iter().any(|n| n == ns) {
            problems.push(FieldProblem::new(
                field,
                format!(
                    "names a lead of another system (`{ns}:`); list \"{ns}\" in this source's \
                     `namespaces` to allow it"
                ),
            ));
            return None;
        }
        if let Some(problem) = object_id_problem(&key) {
            problems.push(FieldProblem::new(field, problem));
            return None;
        }
        Some(key)
    }

    fn event(
        &self,
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
        let lead = self.key(&obj, "lead", &mut problems);
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
            Some("lead.merged") => self
                .key(&obj, "into", &mut problems)
                .map(|into| Change::Merged { into }),
            Some(other) => {
                problems.push(FieldProblem::new(
                    "type",
                    format!("`{}` is not one of {TYPES}", crate::ingest::quote(other)),
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
}

fn key_string(
    obj: &Map<String, Value>,
    field: &str,
    problems: &mut Vec<FieldProblem>,
) -> Option<String> {
    match obj.get(field) {
        Some(Value::String(s)) if !s.trim().is_empty() && s.len() <= MAX_VERBATIM_KEY_LEN => {
            Some(s.clone())
        }
        Some(Value::String(s)) if s.len() > MAX_VERBATIM_KEY_LEN => {
            problems.push(FieldProblem::new(
                field,
                format!("is longer than {MAX_VERBATIM_KEY_LEN} bytes"),
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
    let automated = match obj.get("automated") {
        None | Some(Value::Null) => false,
        Some(Value::Bool(b)) => *b,
        Some(_) => {
            problems.push(FieldProblem::new(
                "activity.automated",
                "must be true (done by a program, not a person) or false",
            ));
            return None;
        }
    };
    kind.map(|kind| Change::Activity {
        activity: Activity {
            kind,
            by,
            automated,
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ingest::generic::tests::now;

    #[test]
    fn parses_the_documented_examples() {
        let body = br#"[
          {"id":"evt-1","type":"lead.updated","lead":"L-1","occurred_at":"2026-11-22T10:00:00Z","fields":{"stage":"sales_ready","owner":"alice@example.com"}},
          {"id":"evt-2","type":"lead.activity","lead":"L-1","occurred_at":"2026-11-22T10:30:00Z","activity":{"kind":"call","by":"alice@example.com"}}
        ]"#;
        let events = Mapper::default().lead_events("web", body, now()).unwrap();
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
        assert_eq!(
            Mapper::default()
                .lead_events("web", one, now())
                .unwrap()
                .len(),
            1
        );
    }

    /// The event id is the sender's, verbatim, and so is the lead key: the engine recognises a
    /// re-sent event by it, and a sender's retry after an upgrade must still be recognised. Do
    /// not change what this asserts; undo the change.
    #[test]
    fn event_ids_are_pinned() {
        let body = br#"{"id":" evt-1 ","type":"lead.activity","lead":"L-1","occurred_at":"2026-11-22T10:30:00Z","activity":{"kind":"call"}}"#;
        let events = Mapper::default().lead_events("web", body, now()).unwrap();
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
        let Err(IngestError::Malformed(problems)) =
            Mapper::default().lead_events("web", body, now())
        else {
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

    /// A sender marks what a program did with `"automated": true`; absent is false; anything
    /// but a boolean is named.
    #[test]
    fn an_activity_may_say_it_was_automated() {
        let body = br#"[
          {"id":"a","type":"lead.activity","lead":"L","occurred_at":"2026-11-22T10:30:00Z","activity":{"kind":"email","automated":true}},
          {"id":"b","type":"lead.activity","lead":"L","occurred_at":"2026-11-22T10:30:00Z","activity":{"kind":"email"}}
        ]"#;
        let automated: Vec<bool> = Mapper::default()
            .lead_events("web", body, now())
            .unwrap()
            .into_iter()
            .map(|e| match e.change {
                Change::Activity { activity } => activity.automated,
                other => panic!("{other:?}"),
            })
            .collect();
        assert_eq!(automated, [true, false]);
        let body = br#"{"id":"c","type":"lead.activity","lead":"L","occurred_at":"2026-11-22T10:30:00Z","activity":{"kind":"email","automated":"yes"}}"#;
        let Err(IngestError::Malformed(problems)) =
            Mapper::default().lead_events("web", body, now())
        else {
            panic!("expected malformed");
        };
        assert_eq!(problems[0].field, "activity.automated");
    }

    #[test]
    fn deletions_and_merges_are_events_too() {
        let body = br#"[
          {"id":"d1","type":"lead.deleted","lead":"L-1","occurred_at":"2026-11-22T10:00:00Z"},
          {"id":"m1","type":"lead.merged","lead":"L-2","occurred_at":"2026-11-22T10:00:00Z","into":"L-3"}
        ]"#;
        let events = Mapper::default().lead_events("web", body, now()).unwrap();
        assert_eq!(events[0].change, Change::Deleted {});
        assert_eq!(events[1].change, Change::Merged { into: "L-3".into() });
    }

    #[test]
    fn refuses_more_than_a_hundred_events_and_non_json() {
        let one = r#"{"id":"e","type":"lead.activity","lead":"L","occurred_at":"2026-11-22T10:30:00Z","activity":{"kind":"email"}}"#;
        let body = format!("[{}]", vec![one; 101].join(","));
        assert!(matches!(
            Mapper::default().lead_events("web", body.as_bytes(), now()),
            Err(IngestError::TooManyEvents(101))
        ));
        assert!(matches!(
            Mapper::default().lead_events("web", b"{not json", now()),
            Err(IngestError::Malformed(_))
        ));
        assert!(matches!(
            Mapper::default().lead_events("web", b"[]", now()),
            Err(IngestError::Malformed(_))
        ));
    }

    #[test]
    fn a_verbatim_key_may_be_max_verbatim_key_len_bytes_and_no_more() {
        let body = |lead: &str| {
            serde_json::json!({"id": "e", "type": "lead.deleted", "lead": lead,
                "occurred_at": "2026-11-22T10:00:00Z"})
            .to_string()
        };
        let longest = "L".repeat(MAX_VERBATIM_KEY_LEN);
        assert!(
            Mapper::default()
                .lead_events("web", body(&longest).as_bytes(), now())
                .is_ok()
        );
        let Err(IngestError::Malformed(ps)) =
            Mapper::default().lead_events("web", body(&format!("{longest}L")).as_bytes(), now())
        else {
            panic!("expected malformed");
        };
        assert_eq!(ps[0].field, "lead");
        assert_eq!(ps[0].message, "is longer than 512 bytes");
    }
}
