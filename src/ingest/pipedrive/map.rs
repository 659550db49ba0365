//! A Pipedrive webhook v2 body → a [`LeadEvent`]. The lead is the person,
//! `pipedrive:{person id}`; everything about a person lands on that key:
//! - person → a patch of its fields (custom fields by their hash key, unwrapped) plus canonical
//!   aliases ([`DEFAULT_FIELDS`], overridden by `[sources.NAME.fields]`); deleted →
//!   `lead.deleted`, or `lead.merged` into `merged_to_id`;
//! - lead (Leads Inbox) → `{"lead": {…its fields…}}` plus canonical aliases (its owner becomes
//!   `owner`) on its person; a lead without a person is its own key, `pipedrive:{lead uuid}`;
//!   deleted → `{"lead": null}` (or `lead.deleted` for a lead keyed by itself);
//! - deal → `{"deal": {…}}` plus aliases on its person (a deal without a person is ignored);
//!   deleted → `{"deal": null}`;
//! - activity → when it is created done, or marked done (`previous.done` false), an activity
//!   of its `type` (`call`, `meeting`, `email` …) by its owner, on its person (else its lead);
//!   anything else about activities is ignored;
//! - other entities (organization, product, note …) are ignored.
//!
//! Only the record `owner_from` names gives the lead's `owner`. The event id is
//! `pipedrive:{meta.id}` (a retry carries the same one); an activity done is
//! `pipedrive:activity:{id}:done`, once however often it is marked done.

use jiff::Timestamp;
use serde_json::{Map, Value};

use super::config::{PipedriveConfig, PipedriveOwner};
use crate::event::{Activity, Change, LeadEvent};
use crate::ingest::fields::Mapping;
use crate::ingest::{FieldProblem, IngestError, Parse, Parsed, json_body};

/// Canonical name → Pipedrive field key (of the person, lead or deal the event is about).
pub const DEFAULT_FIELDS: &[(&str, &str)] = &[
    ("owner", "owner_id"),
    ("name", "name"),
    ("first_name", "first_name"),
    ("last_name", "last_name"),
    ("email", "emails"),
    ("phone", "phones"),
    ("job_title", "job_title"),
    ("status", "status"),
    ("stage", "stage_id"),
    ("disposition_reason", "lost_reason"),
];

/// How webhook bodies become lead events: the field mapping, whose owner is the lead's.
#[derive(Debug)]
pub struct Mapper {
    mapping: Mapping,
    owner_from: PipedriveOwner,
}

impl Mapper {
    pub fn from_config(cfg: &PipedriveConfig) -> Self {
        Self {
            mapping: Mapping::new(DEFAULT_FIELDS, &cfg.fields),
            owner_from: cfg.owner_from,
        }
    }
}

impl Parse for Mapper {
    /// The event of a body: one webhook v2 event, `{"meta", "data", "previous"}`.
    fn parse(
        &self,
        source: &str,
        body: &[u8],
        received_at: Timestamp,
    ) -> Result<Parsed, IngestError> {
        let value = json_body(body)?;
        let Some(meta) = value.get("meta").and_then(Value::as_object) else {
            return Err(IngestError::Malformed(vec![FieldProblem::new(
                "meta",
                "is required: a webhooks v2 body has `meta`, `data` and `previous`",
            )]));
        };
        if let Some(version) = meta.get("version").and_then(Value::as_str)
            && version.starts_with('1')
        {
            return Err(IngestError::Malformed(vec![FieldProblem::new(
                "meta.version",
                "webhooks v1 are not supported: create the webhook with version 2.0",
            )]));
        }
        let mut problems = Vec::new();
        let event_id = id_text(meta.get("id"));
        if event_id.is_none() {
            problems.push(FieldProblem::new("meta.id", "is required"));
        }
        let action = meta.get("action").and_then(Value::as_str).unwrap_or("");
        if !matches!(action, "create" | "change" | "delete") {
            problems.push(FieldProblem::new(
                "meta.action",
                "must be create, change or delete",
            ));
        }
        let entity = meta.get("entity").and_then(Value::as_str).unwrap_or("");
        if entity.is_empty() {
            problems.push(FieldProblem::new("meta.entity", "is required"));
        }
        let data = match value.get("data") {
            Some(Value::Object(d)) => Some(d),
            None | Some(Value::Null) => None,
            Some(_) => {
                problems.push(FieldProblem::new("data", "must be an object or null"));
                None
            }
        };
        let previous = match value.get("previous") {
            Some(Value::Object(p)) => Some(p),
            None | Some(Value::Null) => None,
            Some(_) => {
                problems.push(FieldProblem::new("previous", "must be an object or null"));
                None
            }
        };
        if action != "delete"
            && data.is_none()
            && matches!(entity, "person" | "lead" | "deal" | "activity")
        {
            problems.push(FieldProblem::new("data", "is required unless deleted"));
        }
        let Some(event_id) = event_id.filter(|_| problems.is_empty()) else {
            return Err(IngestError::Malformed(problems));
        };
        let event_id = format!("pipedrive:{event_id}");
        // The state as it is, or as it was before the deletion.
        let known = data.or(previous);
        let field = |name: &str| known.and_then(|d| d.get(name));
        let occurred_at = time_of(meta.get("timestamp"))
            .or_else(|| time_of(field("update_time")))
            .unwrap_or(received_at);
        let entity_id = id_text(meta.get("entity_id")).or_else(|| id_text(field("id")));
        let event = |lead: String, id: String, at: Timestamp, change: Change| LeadEvent {
            id,
            source: source.to_string(),
            lead: format!("pipedrive:{lead}"),
            occurred_at: at,
            received_at,
            change,
        };
        // A person, its Pipedrive leads (nested under `lead`) and its deals (under `deal`) each
        // have an owner; only the record `owner_from` names gives the lead's `owner` — were
        // they all written to it, every edit of a deal owned by someone else would hand the
        // person over and restart its first-touch clock. The others' are `{entity}_owner`.
        let owner_entity = match self.owner_from {
            PipedriveOwner::Person => "person",
            PipedriveOwner::Lead => "lead",
            PipedriveOwner::Deal => "deal",
        };
        let patch = |nested: Option<&str>, data: &Map<String, Value>| {
            let flat = flatten(data);
            let mut fields = Map::new();
            self.mapping.add_aliases_from(&flat, &mut fields);
            let entity = nested.unwrap_or("person");
            if entity != owner_entity
                && let Some(owner) = fields.remove("owner")
            {
                fields.insert(format!("{entity}_owner"), owner);
            }
            match nested {
                Some(key) => {
                    fields.insert(key.to_string(), Value::Object(flat));
                }
                None => fields.extend(flat),
            }
            Change::Updated { fields }
        };
        let person = id_text(field("person_id")).or_else(|| {
            field("participants")
                .and_then(Value::as_array)
                .and_then(|ps| {
                    ps.iter()
                        .find(|p| p.get("primary").and_then(Value::as_bool) == Some(true))
                        .or_else(|| ps.first())
                })
                .and_then(|p| id_text(p.get("person_id")))
        });

        // `data` is there for every action but delete of these entities (checked above).
        let made = match (entity, action, data) {
            ("person", "delete", _) => {
                let Some(id) = entity_id else {
                    return Err(missing_id());
                };
                let merged =
                    id_text(meta.get("merged_to_id")).or_else(|| id_text(field("merged_to_id")));
                let change = match merged {
                    Some(into) => Change::Merged {
                        into: format!("pipedrive:{into}"),
                    },
                    None => Change::Deleted {},
                };
                Some(event(id, event_id, occurred_at, change))
            }
            ("person", _, Some(data)) => {
                let Some(id) = entity_id else {
                    return Err(missing_id());
                };
                Some(event(id, event_id, occurred_at, patch(None, data)))
            }
            ("lead" | "deal", _, _) => {
                let key = match (&person, entity) {
                    (Some(p), _) => Some(p.clone()),
                    (None, "lead") => entity_id.clone(),
                    (None, _) => None,
                };
                key.map(|key| {
                    let change = match (action, data) {
                        ("delete", _) if person.is_none() => Change::Deleted {},
                        ("delete", _) | (_, None) => {
                            let mut fields = Map::new();
                            fields.insert(entity.to_string(), Value::Null);
                            Change::Updated { fields }
                        }
                        (_, Some(d)) => patch(Some(entity), d),
                    };
                    event(key, event_id, occurred_at, change)
                })
            }
            ("activity", "create" | "change", Some(data)) => {
                let done = data.get("done").and_then(Value::as_bool) == Some(true);
                let was_open = action == "create"
                    || previous
                        .and_then(|p| p.get("done"))
                        .and_then(Value::as_bool)
                        == Some(false);
                let key = person.clone().or_else(|| id_text(data.get("lead_id")));
                match (done && was_open, key, entity_id) {
                    (true, Some(key), Some(activity)) => {
                        let kind = data
                            .get("type")
                            .and_then(Value::as_str)
                            .filter(|t| !t.is_empty())
                            .unwrap_or("task")
                            .to_lowercase();
                        let by =
                            id_text(data.get("owner_id")).or_else(|| id_text(data.get("user_id")));
                        let at = time_of(data.get("marked_as_done_time"))
                            .or_else(|| time_of(data.get("done_time")))
                            .unwrap_or(occurred_at);
                        // One touch per activity, however often it is marked done.
                        let id = format!("pipedrive:activity:{activity}:done");
                        Some(event(
                            key,
                            id,
                            at,
                            Change::Activity {
                                activity: Activity {
                                    kind,
                                    by,
                                    // Pipedrive gives no hint of a program's activity.
                                    automated: false,
                                },
                            },
                        ))
                    }
                    _ => None,
                }
            }
            _ => None,
        };
        Ok(match made {
            Some(e) => Parsed {
                events: vec![e],
                ..Parsed::default()
            },
            None => Parsed {
                ignored: 1,
                ..Parsed::default()
            },
        })
    }
}

/// An id Pipedrive writes as a number or a string. A number only when it is a whole one of at
/// most 64 bits: a longer one was rounded on parsing, and neighbouring ids would share its text.
fn id_text(v: Option<&Value>) -> Option<String> {
    match v? {
        Value::Number(n) if n.is_u64() || n.is_i64() => Some(n.to_string()),
        Value::String(s) if !s.trim().is_empty() => Some(s.trim().to_string()),
        // v1-style references: {"value": 12, "name": "…"}.
        Value::Object(o) => id_text(o.get("value").or_else(|| o.get("id"))),
        _ => None,
    }
}

/// RFC 3339, `YYYY-MM-DD HH:MM:SS` (UTC), or Unix seconds or milliseconds.
fn time_of(v: Option<&Value>) -> Option<Timestamp> {
    match v? {
        Value::String(s) => {
            let s = s.trim();
            s.parse::<Timestamp>().ok().or_else(|| {
                format!("{}Z", s.replacen(' ', "T", 1))
                    .parse::<Timestamp>()
                    .ok()
            })
        }
        Value::Number(n) => {
            let n = n.as_i64()?;
            if n.unsigned_abs() < 100_000_000_000 {
                Timestamp::from_second(n).ok()
            } else {
                Timestamp::from_millisecond(n).ok()
            }
        }
        _ => None,
    }
}

/// The entity's fields as the engine sees them: custom fields (`custom_fields: {hash: {type,
/// value}}`) become top-level fields under their key, with their value.
fn flatten(data: &Map<String, Value>) -> Map<String, Value> {
    let mut out = Map::new();
    for (k, v) in data {
        if k == "custom_fields"
            && let Value::Object(custom) = v
        {
            for (ck, cv) in custom {
                let value = match cv {
                    Value::Object(o) if o.contains_key("value") => o["value"].clone(),
                    other => other.clone(),
                };
                out.insert(ck.clone(), value);
            }
            continue;
        }
        out.insert(k.clone(), v.clone());
    }
    out
}

fn missing_id() -> IngestError {
    IngestError::Malformed(vec![FieldProblem::new(
        "meta.entity_id",
        "is required: the id of the person (a whole number of at most 64 bits, or a string)",
    )])
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ingest::pipedrive::PipedriveSource;
    use crate::ingest::pipedrive::tests::{now, source};
    use crate::ingest::testing::fixture_file;
    use crate::ingest::{Handler, Request};
    use serde_json::json;

    impl PipedriveSource {
        fn with_owner_from(mut self, owner_from: PipedriveOwner) -> Self {
            self.map.owner_from = owner_from;
            self
        }
    }

    fn load(name: &str) -> (http::HeaderMap, Vec<u8>) {
        let (_, _, h, b) = fixture_file("pipedrive", name);
        (h, b)
    }

    const STAGE_KEY: &str = "stage = \"5c1fa2a38fd6e5e7b9e0a6d4b8e6b1c2d3e4f5a6\"";

    #[test]
    fn a_person_change_is_a_patch_with_custom_fields_unwrapped() {
        let (headers, body) = load("person_sales_ready.http");
        let s = source(STAGE_KEY);
        let method = http::Method::POST;
        let uri: http::Uri = "/webhooks/pd".parse().unwrap();
        assert!(
            s.authenticate(&Request {
                method: &method,
                uri: &uri,
                headers: &headers,
                body: &body,
                path_secret: None,
                now: now(),
            })
            .is_ok()
        );
        let parsed = s.parse("pd", &body, now()).unwrap();
        let e = &parsed.events[0];
        assert_eq!(e.lead, "pipedrive:4711");
        assert_eq!(e.id, "pipedrive:0f6e2c1e-7c55-4d2b-9a4e-51b1c2a3d4e5");
        assert_eq!(
            e.occurred_at,
            "2026-11-25T09:30:00Z".parse::<Timestamp>().unwrap()
        );
        let Change::Updated { fields } = &e.change else {
            panic!("{e:?}")
        };
        assert_eq!(
            fields["owner"],
            json!("88001"),
            "a string, though Pipedrive sends a number"
        );
        assert_eq!(fields["owner_id"], json!(88001));
        assert_eq!(fields["email"], json!("ana@initech.example"));
        assert_eq!(fields["stage"], json!("sales_ready"));
        assert_eq!(
            fields["5c1fa2a38fd6e5e7b9e0a6d4b8e6b1c2d3e4f5a6"],
            json!("sales_ready")
        );
    }

    /// Pipedrive retries for days; the engine recognises a retry by `meta.id` (whatever the
    /// record), and an activity marked done twice by its own id. Derived any other way after an
    /// upgrade, those retries would be applied again (a done activity counted as a second
    /// attempt). Literals; do not update them, undo the change.
    #[test]
    fn event_ids_are_pinned() {
        let ids = |body: Value| {
            let e = &source("")
                .parse("pd", body.to_string().as_bytes(), now())
                .unwrap()
                .events[0];
            (e.lead.clone(), e.id.clone())
        };
        let pair = |lead: &str, id: &str| (lead.to_string(), id.to_string());
        let person = |id: Value| {
            json!({"meta": {"id": id, "action": "change", "entity": "person", "entity_id": 4711, "version": "2.0"},
                   "data": {"id": 4711, "name": "Ana"}, "previous": null})
        };
        assert_eq!(
            ids(person(json!("0f6e2c1e-7c55-4d2b-9a4e-51b1c2a3d4e5"))),
            pair(
                "pipedrive:4711",
                "pipedrive:0f6e2c1e-7c55-4d2b-9a4e-51b1c2a3d4e5"
            )
        );
        assert_eq!(
            ids(person(json!(" m-1 "))),
            pair("pipedrive:4711", "pipedrive:m-1")
        );
        assert_eq!(
            ids(person(json!(123456))),
            pair("pipedrive:4711", "pipedrive:123456")
        );
        // A deal on its person: still the delivery's id.
        assert_eq!(
            ids(
                json!({"meta": {"id": "m-2", "action": "change", "entity": "deal", "entity_id": 77, "version": "2.0"},
                       "data": {"id": 77, "person_id": 4711, "title": "Initech"}, "previous": null})
            ),
            pair("pipedrive:4711", "pipedrive:m-2")
        );
        // An activity done: its own id, however often it is marked done.
        assert_eq!(
            ids(
                json!({"meta": {"id": "m-3", "action": "create", "entity": "activity", "entity_id": 9901, "version": "2.0"},
                       "data": {"id": 9901, "done": true, "type": "call", "person_id": 4711}, "previous": null})
            ),
            pair("pipedrive:4711", "pipedrive:activity:9901:done")
        );
    }

    #[test]
    fn an_activity_marked_done_is_one_touch_on_its_person() {
        let (_, body) = load("activity_done.http");
        let parsed = source("").parse("pd", &body, now()).unwrap();
        let e = &parsed.events[0];
        assert_eq!(e.lead, "pipedrive:4711");
        assert_eq!(e.id, "pipedrive:activity:9901:done");
        assert_eq!(
            e.change,
            Change::Activity {
                activity: Activity {
                    kind: "call".into(),
                    by: Some("88001".into()),
                    automated: false,
                }
            }
        );
        // Edited again later (already done): nothing new.
        let mut v: Value = serde_json::from_slice(&body).unwrap();
        v["previous"] = json!({"note": "old"});
        v["meta"]["id"] = json!("another");
        let parsed = source("")
            .parse("pd", v.to_string().as_bytes(), now())
            .unwrap();
        assert_eq!((parsed.events.len(), parsed.ignored), (0, 1));
        // Scheduled, not done: nothing.
        v["data"]["done"] = json!(false);
        v["meta"]["action"] = json!("create");
        let parsed = source("")
            .parse("pd", v.to_string().as_bytes(), now())
            .unwrap();
        assert_eq!(parsed.events.len(), 0);
    }

    #[test]
    fn leads_and_deals_belong_to_their_person() {
        let s = source("");
        let lead = json!({"meta": {"id": "m1", "action": "change", "entity": "lead", "entity_id": "adf21080-0e10-11eb-879b-05d71fb426ec", "timestamp": "2026-11-25T09:00:00Z", "version": "2.0"},
            "data": {"id": "adf21080-0e10-11eb-879b-05d71fb426ec", "title": "Initech lead", "owner_id": 88002, "person_id": 4711, "label_ids": ["hot"]},
            "previous": {"owner_id": 88001}});
        let parsed = s.parse("pd", lead.to_string().as_bytes(), now()).unwrap();
        let e = &parsed.events[0];
        assert_eq!(e.lead, "pipedrive:4711");
        let Change::Updated { fields } = &e.change else {
            panic!()
        };
        // The person's owner is the lead's owner (by default): the Pipedrive lead's is apart.
        assert_eq!(fields["lead_owner"], json!("88002"));
        assert!(!fields.contains_key("owner"));
        assert_eq!(fields["lead"]["title"], json!("Initech lead"));
        let by_lead = source("").with_owner_from(PipedriveOwner::Lead);
        let parsed = by_lead
            .parse("pd", lead.to_string().as_bytes(), now())
            .unwrap();
        let Change::Updated { fields } = &parsed.events[0].change else {
            panic!()
        };
        assert_eq!(fields["owner"], json!("88002"));

        let orphan = json!({"meta": {"id": "m2", "action": "create", "entity": "lead", "entity_id": "abc-uuid", "version": "2.0"},
            "data": {"id": "abc-uuid", "title": "No person", "owner_id": 1}, "previous": null});
        let parsed = s.parse("pd", orphan.to_string().as_bytes(), now()).unwrap();
        assert_eq!(parsed.events[0].lead, "pipedrive:abc-uuid");
        assert_eq!(
            parsed.events[0].occurred_at,
            now(),
            "no timestamp: arrival time"
        );

        let deal_lost = json!({"meta": {"id": "m3", "action": "change", "entity": "deal", "entity_id": "31", "version": "2.0", "timestamp": 1764064800},
            "data": {"id": 31, "status": "lost", "lost_reason": "No budget", "person_id": 4711, "stage_id": 2},
            "previous": {"status": "open"}});
        let parsed = s
            .parse("pd", deal_lost.to_string().as_bytes(), now())
            .unwrap();
        let Change::Updated { fields } = &parsed.events[0].change else {
            panic!()
        };
        assert_eq!(fields["disposition_reason"], json!("No budget"));
        assert_eq!(fields["deal"]["status"], json!("lost"));
        assert_eq!(
            parsed.events[0].occurred_at,
            Timestamp::from_second(1764064800).unwrap()
        );

        let deal_deleted = json!({"meta": {"id": "m4", "action": "delete", "entity": "deal", "entity_id": "31", "version": "2.0"},
            "data": null, "previous": {"id": 31, "person_id": 4711}});
        let parsed = s
            .parse("pd", deal_deleted.to_string().as_bytes(), now())
            .unwrap();
        assert_eq!(
            parsed.events[0].change,
            Change::Updated {
                fields: Map::from_iter([("deal".to_string(), Value::Null)])
            }
        );
    }

    #[test]
    fn a_person_deleted_by_a_merge_is_merged() {
        let s = source("");
        let merged = json!({"meta": {"id": "m5", "action": "delete", "entity": "person", "entity_id": "4712", "merged_to_id": "4711", "version": "2.0"},
            "data": null, "previous": {"id": 4712, "name": "Ana (dup)"}});
        let parsed = s.parse("pd", merged.to_string().as_bytes(), now()).unwrap();
        assert_eq!(parsed.events[0].lead, "pipedrive:4712");
        assert_eq!(
            parsed.events[0].change,
            Change::Merged {
                into: "pipedrive:4711".into()
            }
        );
        let deleted = json!({"meta": {"id": "m6", "action": "delete", "entity": "person", "entity_id": 4713, "version": "2.0"}, "data": null, "previous": null});
        let parsed = s
            .parse("pd", deleted.to_string().as_bytes(), now())
            .unwrap();
        assert_eq!(parsed.events[0].change, Change::Deleted {});
    }

    /// Found by fuzzing: an id beyond 64 bits was rounded to a float and keyed by its text, the
    /// same key for neighbouring persons.
    #[test]
    fn a_person_id_beyond_64_bits_is_refused_not_rounded() {
        let s = source("");
        let body = |id: &str| {
            json!({
                "meta": {"action": "change", "entity": "person", "id": "m-1", "entity_id": id,
                         "version": "2.0"},
                "data": {"id": id, "name": "Ana"}
            })
            .to_string()
            .replace(&format!("\"{id}\""), id)
        };
        let Err(IngestError::Malformed(ps)) =
            s.parse("pd", body("444444444444444444444444").as_bytes(), now())
        else {
            panic!()
        };
        assert_eq!(ps[0].field, "meta.entity_id");
        let parsed = s.parse("pd", body("4711").as_bytes(), now()).unwrap();
        assert_eq!(parsed.events[0].lead, "pipedrive:4711");
    }

    #[test]
    fn malformed_bodies_are_named_and_v1_is_refused() {
        let s = source("");
        let Err(IngestError::Malformed(ps)) =
            s.parse("pd", br#"{"meta":{"entity":"person"}}"#, now())
        else {
            panic!()
        };
        let fields: Vec<&str> = ps.iter().map(|p| p.field.as_str()).collect();
        assert_eq!(fields, ["meta.id", "meta.action", "data"]);
        let v1 = br#"{"v":1,"meta":{"v":1,"version":"1.0","action":"updated","object":"person","id":5},"current":{}}"#;
        assert!(
            matches!(s.parse("pd", v1, now()), Err(IngestError::Malformed(ps)) if ps[0].field == "meta.version")
        );
        assert!(matches!(
            s.parse("pd", b"nope", now()),
            Err(IngestError::Malformed(_))
        ));
    }
}
