//! HubSpot's JSON array of events → [`LeadEvent`]s.
//!
//! A HubSpot lead is a contact; its key is `hubspot:{objectId}`:
//! - contact property changes → a patch `{property: value}` plus canonical aliases
//!   ([`DEFAULT_FIELDS`], overridden by `[sources.NAME.fields]`);
//! - contact creation and restore → an empty patch (the lead exists); deletion → `lead.deleted`;
//!   privacy deletion (GDPR) → `lead.forgotten`; merge → `lead.merged` for each merged-away id;
//! - an engagement (call, email, meeting, communication …) associated with a contact → an activity
//!   on that contact (`object.associationChange`, either direction; removals are ignored);
//! - events of companies, deals, tickets and other objects concern no lead: kept in
//!   `{prefix}.raw` and counted as ignored (a company's lifecycle stage would otherwise raise SLA
//!   alerts nobody can clear with a call on the contact);
//! - events of a portal not in `portal_ids` are forbidden.
//!
//! Event ids are hashed from the portal, subscription type, contact, HubSpot's `eventId` and
//! time (a retry makes the same id); both directions of one association make one id.

use jiff::Timestamp;
use serde_json::{Map, Value};

use super::config::HubspotConfig;
use crate::event::{Activity, Change, LeadEvent};
use crate::ingest::fields::Mapping;
use crate::ingest::{FieldProblem, IngestError, Parse, Parsed, check_batch, hashed_id, json_body};

/// Canonical name → HubSpot contact property.
pub const DEFAULT_FIELDS: &[(&str, &str)] = &[
    ("stage", "lifecyclestage"),
    ("status", "hs_lead_status"),
    ("owner", "hubspot_owner_id"),
    ("score", "hubspotscore"),
    ("email", "email"),
    ("phone", "phone"),
    ("company", "company"),
    ("first_name", "firstname"),
    ("last_name", "lastname"),
    ("job_title", "jobtitle"),
    ("disposition_reason", "hs_lead_disqualification_reason"),
    ("employees", "numemployees"),
    ("annual_revenue", "annualrevenue"),
    ("industry", "industry"),
    ("region", "state"),
    ("country", "country"),
    ("lead_source", "hs_analytics_source"),
];

/// How HubSpot events become lead events: the accounts allowed, the field mapping.
#[derive(Debug)]
pub struct Mapper {
    portal_ids: Vec<u64>,
    mapping: Mapping,
}

impl Mapper {
    pub fn from_config(cfg: &HubspotConfig) -> Self {
        Self {
            portal_ids: cfg.portal_ids.clone(),
            mapping: Mapping::new(DEFAULT_FIELDS, &cfg.fields),
        }
    }

    fn event(
        &self,
        source: &str,
        item: &Value,
        received_at: Timestamp,
    ) -> Result<Outcome, Vec<FieldProblem>> {
        let Value::Object(obj) = item else {
            return Err(vec![FieldProblem::new(
                "",
                "an event must be a JSON object",
            )]);
        };
        let mut problems = Vec::new();
        let subscription = match obj.get("subscriptionType").and_then(Value::as_str) {
            Some(s) => s,
            None => {
                problems.push(FieldProblem::new("subscriptionType", "is required"));
                ""
            }
        };
        let occurred_at = match obj.get("occurredAt").and_then(Value::as_i64) {
            Some(ms) => from_millis(ms).or_else(|| {
                problems.push(FieldProblem::new("occurredAt", "is out of range"));
                None
            }),
            None => {
                problems.push(FieldProblem::new(
                    "occurredAt",
                    "is required: Unix milliseconds",
                ));
                None
            }
        };
        let portal = id_of(obj.get("portalId"));
        if !self.portal_ids.is_empty() && portal.is_none() {
            problems.push(FieldProblem::new(
                "portalId",
                "is required when `portal_ids` is configured",
            ));
        }
        let Some(occurred_at) = occurred_at.filter(|_| problems.is_empty()) else {
            return Err(problems);
        };
        if let Some(p) = &portal
            && !self.portal_ids.is_empty()
            && !self.portal_ids.iter().any(|a| a.to_string() == *p)
        {
            return Ok(Outcome::Forbidden);
        }
        let portal = portal.unwrap_or_default();

        let (object, action) = match subscription.split_once('.') {
            Some(("object", action)) => (
                obj.get("objectTypeId")
                    .and_then(Value::as_str)
                    .and_then(object_type),
                action,
            ),
            Some((object, action)) => (object_type(object), action),
            None => return Ok(Outcome::Ignored),
        };
        let event_id = obj
            .get("eventId")
            .map(|v| v.to_string())
            .unwrap_or_default();
        let occurred = occurred_at.as_millisecond().to_string();
        let make = |lead: &str, change: Change, extra: &[&str]| {
            let mut parts = vec![portal.as_str(), subscription, lead, &event_id, &occurred];
            parts.extend_from_slice(extra);
            LeadEvent {
                id: hashed_id("hubspot", &parts),
                source: source.to_string(),
                lead: format!("hubspot:{lead}"),
                occurred_at,
                received_at,
                change,
            }
        };

        if action == "associationChange" {
            return Ok(self.association(obj, &make));
        }
        if object != Some("contact") {
            return Ok(Outcome::Ignored);
        }
        let Some(object_id) = id_of(obj.get("objectId")) else {
            return Err(vec![FieldProblem::new(
                "objectId",
                "is required: the contact's id",
            )]);
        };
        let event = match action {
            "creation" | "restore" => make(&object_id, Change::Updated { fields: Map::new() }, &[]),
            "deletion" => make(&object_id, Change::Deleted {}, &[]),
            "privacyDeletion" => make(&object_id, Change::Forgotten {}, &[]),
            "propertyChange" => {
                let Some(property) = obj.get("propertyName").and_then(Value::as_str) else {
                    return Err(vec![FieldProblem::new(
                        "propertyName",
                        "is required for a property change",
                    )]);
                };
                let value = obj.get("propertyValue").cloned().unwrap_or(Value::Null);
                let mut vendor = Map::new();
                vendor.insert(property.to_string(), value);
                let mut fields = vendor.clone();
                self.mapping.add_aliases_from(&vendor, &mut fields);
                make(&object_id, Change::Updated { fields }, &[property])
            }
            "merge" => return Ok(merge(obj, &object_id, &make)),
            _ => return Ok(Outcome::Ignored),
        };
        Ok(Outcome::Events(vec![event]))
    }

    /// An engagement associated with a contact is an activity on the contact.
    fn association(
        &self,
        obj: &Map<String, Value>,
        make: &dyn Fn(&str, Change, &[&str]) -> LeadEvent,
    ) -> Outcome {
        if obj.get("associationRemoved").and_then(Value::as_bool) == Some(true) {
            return Outcome::Ignored;
        }
        let named = obj
            .get("associationType")
            .and_then(Value::as_str)
            .and_then(|t| t.split_once("_TO_"));
        let side = |type_key: &str, fallback: Option<&str>| {
            obj.get(type_key)
                .and_then(Value::as_str)
                .and_then(object_type)
                .or_else(|| fallback.and_then(object_type))
        };
        let from = side("fromObjectTypeId", named.map(|n| n.0));
        let to = side("toObjectTypeId", named.map(|n| n.1));
        let (from_id, to_id) = (id_of(obj.get("fromObjectId")), id_of(obj.get("toObjectId")));
        let (contact, engagement, kind) = match (from, to, from_id, to_id) {
            (Some("contact"), Some(other), Some(c), Some(e))
            | (Some(other), Some("contact"), Some(e), Some(c)) => match activity_kind(other) {
                Some(kind) => (c, e, kind),
                None => return Outcome::Ignored,
            },
            _ => return Outcome::Ignored,
        };
        // Both directions of one association make the same id: one activity.
        let mut event = make(
            &contact,
            Change::Activity {
                activity: Activity {
                    kind: kind.to_string(),
                    by: None,
                    // An association event carries none of the engagement's properties, and
                    // HubSpot's email direction (`EMAIL`, `INCOMING_EMAIL`, `FORWARDED_EMAIL`)
                    // does not tell a program from a person; marketing emails are no
                    // engagement at all. Nothing to mark.
                    automated: false,
                },
            },
            &[],
        );
        event.id = hashed_id("hubspot", &["engagement", kind, &engagement, &contact]);
        Outcome::Events(vec![event])
    }
}

impl Parse for Mapper {
    /// The events of a body: a JSON array of up to 100 HubSpot events.
    fn parse(
        &self,
        source: &str,
        body: &[u8],
        received_at: Timestamp,
    ) -> Result<Parsed, IngestError> {
        let Value::Array(items) = json_body(body)? else {
            return Err(IngestError::malformed(
                "HubSpot sends a JSON array of events",
            ));
        };
        check_batch(items.len())?;
        let mut parsed = Parsed::default();
        let mut problems = Vec::new();
        for (i, item) in items.iter().enumerate() {
            match self.event(source, item, received_at) {
                Ok(Outcome::Events(mut events)) => parsed.events.append(&mut events),
                Ok(Outcome::Ignored) => parsed.ignored += 1,
                Ok(Outcome::Forbidden) => parsed.forbidden += 1,
                Err(ps) => problems.extend(ps.into_iter().map(|p| p.in_item(i))),
            }
        }
        if problems.is_empty() {
            Ok(parsed)
        } else {
            Err(IngestError::Malformed(problems))
        }
    }
}

/// What one HubSpot event means.
enum Outcome {
    Events(Vec<LeadEvent>),
    Ignored,
    Forbidden,
}

/// A timestamp in epoch milliseconds (`occurredAt`).
fn from_millis(ms: i64) -> Option<Timestamp> {
    Timestamp::from_millisecond(ms).ok()
}

/// The object type of a HubSpot type id (`0-1`) or name (`contact`, `CALL`).
fn object_type(id_or_name: &str) -> Option<&'static str> {
    Some(match id_or_name.to_ascii_lowercase().as_str() {
        "0-1" | "contact" | "contacts" => "contact",
        "0-2" | "company" | "companies" => "company",
        "0-3" | "deal" | "deals" => "deal",
        "0-5" | "ticket" | "tickets" => "ticket",
        "0-136" | "lead" | "leads" => "lead",
        "0-48" | "call" | "calls" => "call",
        "0-49" | "email" | "emails" => "email",
        "0-47" | "meeting" | "meetings" | "meeting_event" => "meeting",
        "0-18" | "communication" | "communications" => "communication",
        "0-46" | "note" | "notes" => "note",
        "0-27" | "task" | "tasks" => "task",
        "0-116" | "postal_mail" => "postal_mail",
        _ => return None,
    })
}

/// The activity kind of an engagement type: the engine counts call, email, meeting and sms as
/// touches by default. Communications are SMS, WhatsApp and LinkedIn messages.
fn activity_kind(object: &str) -> Option<&'static str> {
    Some(match object {
        "call" => "call",
        "email" => "email",
        "meeting" => "meeting",
        "communication" => "sms",
        "note" => "note",
        "task" => "task",
        "postal_mail" => "postal_mail",
        _ => return None,
    })
}

/// An id as HubSpot writes it: a number (or, defensively, a string of digits).
fn id_of(v: Option<&Value>) -> Option<String> {
    match v? {
        Value::Number(n) if n.is_u64() || n.is_i64() => Some(n.to_string()),
        Value::String(s) if !s.is_empty() && s.chars().all(|c| c.is_ascii_digit()) => {
            Some(s.clone())
        }
        _ => None,
    }
}

/// The contacts merged away become `lead.merged` into the one that remains.
fn merge(
    obj: &Map<String, Value>,
    object_id: &str,
    make: &dyn Fn(&str, Change, &[&str]) -> LeadEvent,
) -> Outcome {
    let primary = id_of(obj.get("primaryObjectId")).unwrap_or_else(|| object_id.to_string());
    let into = id_of(obj.get("newObjectId")).unwrap_or_else(|| primary.clone());
    let mut losers: Vec<String> = obj
        .get("mergedObjectIds")
        .and_then(Value::as_array)
        .map(|ids| ids.iter().filter_map(|v| id_of(Some(v))).collect())
        .unwrap_or_default();
    if into != primary {
        losers.push(primary);
    }
    losers.retain(|l| *l != into);
    losers.sort();
    losers.dedup();
    if losers.is_empty() {
        return Outcome::Ignored;
    }
    Outcome::Events(
        losers
            .iter()
            .map(|l| {
                make(
                    l,
                    Change::Merged {
                        into: format!("hubspot:{into}"),
                    },
                    &[l],
                )
            })
            .collect(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ingest::Handler;
    use crate::ingest::hubspot::HubspotSource;
    use crate::ingest::hubspot::tests::{now, source};
    use crate::ingest::testing::fixture_file;
    use serde_json::json;

    fn fixture_events(name: &str, s: &HubspotSource) -> Parsed {
        let (_, _, _, body) = fixture_file("hubspot", name);
        s.parse("hs", &body, now()).unwrap()
    }

    #[test]
    fn a_sales_ready_contact_becomes_patches_with_canonical_aliases() {
        let parsed = fixture_events("contact_sales_ready.http", &source(""));
        assert_eq!(parsed.ignored, 1, "the company event concerns no lead");
        let mut fields = Map::new();
        for e in &parsed.events {
            assert_eq!(e.lead, "hubspot:1551");
            assert_eq!(e.source, "hs");
            if let Change::Updated { fields: f } = &e.change {
                fields.extend(f.clone());
            }
        }
        assert_eq!(fields["lifecyclestage"], json!("salesqualifiedlead"));
        assert_eq!(fields["stage"], json!("salesqualifiedlead"));
        assert_eq!(fields["hubspot_owner_id"], json!("7001"));
        assert_eq!(fields["owner"], json!("7001"));
        // HubSpot sends every property as a string; canonical numbers are numbers.
        assert_eq!(fields["hubspotscore"], json!("85"));
        assert_eq!(fields["score"], json!(85));
        // Ids are stable: the same body gives the same ids.
        let again = fixture_events("contact_sales_ready.http", &source(""));
        let ids: Vec<_> = parsed.events.iter().map(|e| &e.id).collect();
        let ids2: Vec<_> = again.events.iter().map(|e| &e.id).collect();
        assert_eq!(ids, ids2);
    }

    /// The contact's synced Salesforce lead id reaches the event under HubSpot's own name, where
    /// `[identity]`'s default key (`hubspot` → `salesforceleadid`) reads it; so does the email,
    /// under its canonical name, trimmed.
    #[test]
    fn the_synced_salesforce_id_and_the_email_reach_the_patch() {
        let s = source("");
        let change = |property: &str, value: &str| {
            format!(
                r#"[{{"eventId":1,"subscriptionId":2,"portalId":62515,"occurredAt":1764064800000,"subscriptionType":"contact.propertyChange","objectId":1551,"propertyName":"{property}","propertyValue":"{value}"}}]"#
            )
        };
        let fields = |body: String| {
            let parsed = s.parse("hs", body.as_bytes(), now()).unwrap();
            match &parsed.events[0].change {
                Change::Updated { fields } => fields.clone(),
                other => panic!("{other:?}"),
            }
        };
        let f = fields(change("salesforceleadid", "00Q5e00000AbCdE"));
        assert_eq!(f["salesforceleadid"], json!("00Q5e00000AbCdE"));
        let f = fields(change("email", " Ann@Example.com "));
        assert_eq!(f["email"], json!("Ann@Example.com"));
    }

    #[test]
    fn a_call_associated_with_a_contact_is_a_touch_once() {
        let parsed = fixture_events("call_engagement.http", &source(""));
        // Both directions of the association and a removed one: one activity.
        let activities: Vec<&LeadEvent> = parsed.events.iter().collect();
        assert_eq!(activities.len(), 2, "{activities:?}");
        assert_eq!(activities[0].id, activities[1].id);
        assert_eq!(activities[0].lead, "hubspot:1551");
        assert_eq!(
            activities[0].change,
            Change::Activity {
                activity: Activity {
                    kind: "call".into(),
                    by: None,
                    automated: false,
                }
            }
        );
        assert_eq!(parsed.ignored, 2, "the call's creation and the removal");
    }

    #[test]
    fn deletion_merge_and_privacy_deletion() {
        let body = json!([
            {"eventId":1,"subscriptionType":"contact.deletion","portalId":1,"objectId":5,"occurredAt":1_700_000_000_000u64},
            {"eventId":2,"subscriptionType":"contact.privacyDeletion","portalId":1,"objectId":6,"occurredAt":1_700_000_000_000u64},
            {"eventId":3,"subscriptionType":"contact.merge","portalId":1,"objectId":7,"primaryObjectId":7,"mergedObjectIds":[8,9],"newObjectId":10,"occurredAt":1_700_000_000_000u64}
        ]);
        let parsed = source("")
            .parse("hs", body.to_string().as_bytes(), now())
            .unwrap();
        let got: Vec<(&str, &Change)> = parsed
            .events
            .iter()
            .map(|e| (e.lead.as_str(), &e.change))
            .collect();
        let into = || Change::Merged {
            into: "hubspot:10".into(),
        };
        assert_eq!(
            got,
            [
                ("hubspot:5", &Change::Deleted {}),
                ("hubspot:6", &Change::Forgotten {}),
                ("hubspot:7", &into()),
                ("hubspot:8", &into()),
                ("hubspot:9", &into()),
            ]
        );
    }

    /// HubSpot's ids are hashes of what identifies each event (its portal, subscription, object,
    /// `eventId`, time and what else tells two events of one delivery apart); an engagement's is
    /// a hash of the association alone, so both directions are one touch. The engine recognises
    /// HubSpot's retries (for up to a day) by them: derived any other way after an upgrade,
    /// those retries would be applied again. Literals computed once, one per path; do not update
    /// them, undo the change.
    #[test]
    fn event_ids_are_pinned() {
        let at = 1_700_000_000_000u64;
        let body = json!([
            {"eventId":11,"subscriptionType":"contact.propertyChange","portalId":62515,"objectId":1551,"propertyName":"lifecyclestage","propertyValue":"salesqualifiedlead","occurredAt":at},
            {"eventId":12,"subscriptionType":"contact.creation","portalId":62515,"objectId":1551,"occurredAt":at},
            {"eventId":13,"subscriptionType":"object.restore","objectTypeId":"0-1","portalId":62515,"objectId":1551,"occurredAt":at},
            {"eventId":14,"subscriptionType":"contact.deletion","portalId":62515,"objectId":1551,"occurredAt":at},
            {"eventId":15,"subscriptionType":"contact.privacyDeletion","portalId":62515,"objectId":1551,"occurredAt":at},
            {"eventId":16,"subscriptionType":"contact.merge","portalId":62515,"objectId":1551,"primaryObjectId":1551,"mergedObjectIds":[1552],"newObjectId":1551,"occurredAt":at},
            // Without an `eventId` or a portal (only when `portal_ids` is not configured).
            {"subscriptionType":"contact.creation","objectId":1553,"occurredAt":at},
            // A call associated with the contact, in both directions: one id.
            {"eventId":17,"subscriptionType":"object.associationChange","portalId":62515,"associationType":"CONTACT_TO_CALL","fromObjectTypeId":"0-1","fromObjectId":1551,"toObjectTypeId":"0-48","toObjectId":9001,"occurredAt":at},
            {"eventId":18,"subscriptionType":"object.associationChange","portalId":62515,"associationType":"CALL_TO_CONTACT","fromObjectTypeId":"0-48","fromObjectId":9001,"toObjectTypeId":"0-1","toObjectId":1551,"occurredAt":at}
        ]);
        let parsed = source("")
            .parse("hs", body.to_string().as_bytes(), now())
            .unwrap();
        let ids: Vec<(&str, &str)> = parsed
            .events
            .iter()
            .map(|e| (e.lead.as_str(), e.id.as_str()))
            .collect();
        assert_eq!(
            ids,
            [
                // property change
                ("hubspot:1551", "hubspot:3b2d504bd19f5e9f9f48505056d17a19"),
                // creation
                ("hubspot:1551", "hubspot:6620cbde04d36f060d75afb7125ace06"),
                // restore
                ("hubspot:1551", "hubspot:edf82f23cdce0a4b0f4004d92c704f49"),
                // deletion
                ("hubspot:1551", "hubspot:ffc97f35831631a477a4997e2d2b87db"),
                // privacy deletion
                ("hubspot:1551", "hubspot:6b0b87c4f9bc6eb9e6cb074828370c8c"),
                // merged away
                ("hubspot:1552", "hubspot:04484716c822bec7e5f14a9d2d353d49"),
                // no eventId, no portal
                ("hubspot:1553", "hubspot:5726f5d3b4287fe4a56c29020409e8ff"),
                // the call, contact to call
                ("hubspot:1551", "hubspot:34ae95601486c39c7dc9873c170bb32e"),
                // the call, call to contact
                ("hubspot:1551", "hubspot:34ae95601486c39c7dc9873c170bb32e"),
            ]
        );
    }

    #[test]
    fn a_portal_not_allowed_is_forbidden() {
        let s = source("portal_ids = [62515]");
        let body = json!([
            {"eventId":1,"subscriptionType":"contact.creation","portalId":62515,"objectId":5,"occurredAt":1_700_000_000_000u64},
            {"eventId":2,"subscriptionType":"contact.creation","portalId":999,"objectId":6,"occurredAt":1_700_000_000_000u64}
        ]);
        let parsed = s.parse("hs", body.to_string().as_bytes(), now()).unwrap();
        assert_eq!((parsed.events.len(), parsed.forbidden), (1, 1));
    }

    #[test]
    fn malformed_batches_name_each_problem() {
        let s = source("");
        let Err(IngestError::Malformed(ps)) = s.parse("hs", b"[{\"x\":1},2]", now()) else {
            panic!("expected malformed");
        };
        let fields: Vec<&str> = ps.iter().map(|p| p.field.as_str()).collect();
        assert_eq!(fields, ["[0].subscriptionType", "[0].occurredAt", "[1]"]);
        assert!(matches!(
            s.parse("hs", b"{\"not\":\"an array\"}", now()),
            Err(IngestError::Malformed(_))
        ));
        assert!(matches!(
            s.parse("hs", b"[{", now()),
            Err(IngestError::Malformed(_))
        ));
        let one = json!({"eventId":1,"subscriptionType":"contact.creation","portalId":1,"objectId":5,"occurredAt":1});
        let many = Value::Array(vec![one; 101]);
        assert!(matches!(
            s.parse("hs", many.to_string().as_bytes(), now()),
            Err(IngestError::TooManyEvents(101))
        ));
    }
}
