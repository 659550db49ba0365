//! The canonical lead event: what every source turns its payload into, and the only format on the
//! `{prefix}.events` topic. Nothing after ingest knows a vendor's format.

use jiff::Timestamp;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// One thing that happened to one lead.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LeadEvent {
    /// Stable and unique per source event: the engine ignores an id it has already applied, so a
    /// sender's retry (after a 503) changes nothing.
    pub id: String,
    /// The configured source name (`[sources.NAME]`) the event came through.
    pub source: String,
    /// The lead key; the Kafka key of the event, and `data.lead` in alerts.
    pub lead: String,
    /// When it happened, by the source's clock. Deadlines are computed from this.
    pub occurred_at: Timestamp,
    /// When leadwatch accepted it.
    pub received_at: Timestamp,
    #[serde(flatten)]
    pub change: Change,
}

/// What changed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type")]
pub enum Change {
    /// A patch of the lead's fields: keys not mentioned keep their value; `null` clears one.
    #[serde(rename = "lead.updated")]
    Updated { fields: Map<String, Value> },
    /// Something a person did to the lead (a call, an email, a meeting …).
    #[serde(rename = "lead.activity")]
    Activity { activity: Activity },
    /// The lead was deleted in its system: its episode ends, and its state is tombstoned after
    /// the retention.
    #[serde(rename = "lead.deleted")]
    Deleted {},
    /// The lead was merged into another record (`into`, a lead key): as deleted, for this key.
    #[serde(rename = "lead.merged")]
    Merged { into: String },
    /// Erase everything leadwatch holds on the lead (a data-protection request; `leadwatch forget`).
    #[serde(rename = "lead.forgotten")]
    Forgotten {},
}

/// A logged activity on a lead.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Activity {
    /// `call`, `email`, `meeting`, `sms`, … as the source names it.
    pub kind: String,
    /// Who did it, when the source says.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub by: Option<String>,
    /// Done by a program, not a person, as the vendor itself tells apart (a Salesforce list
    /// email, a Marketo program email): such an activity is recorded but never a touch by
    /// default. `false` — and absent on the wire — when the source gives no such hint.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub automated: bool,
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A field's number reads back from `{prefix}.events` as the number ingest parsed: a vendor's
    /// integer beyond 64 bits (or a long decimal) is a float, and without serde_json's
    /// `float_roundtrip` the engine read it back one step off (found by fuzzing).
    /// `automated` is on the wire only when true: an activity no source marked reads (and is
    /// written) exactly as before it existed.
    #[test]
    fn automated_is_written_only_when_true() {
        let mut activity = Activity {
            kind: "email".into(),
            by: None,
            automated: false,
        };
        assert_eq!(
            serde_json::to_value(&activity).unwrap(),
            serde_json::json!({"kind": "email"})
        );
        activity.automated = true;
        let wire = serde_json::to_value(&activity).unwrap();
        assert_eq!(
            wire,
            serde_json::json!({"kind": "email", "automated": true})
        );
        assert_eq!(serde_json::from_value::<Activity>(wire).unwrap(), activity);
    }

    #[test]
    fn a_number_too_long_for_an_integer_reads_back_as_parsed() {
        let body = br#"{"id":"pd:1","source":"pd","lead":"pd:1",
            "occurred_at":"2026-11-25T09:30:00Z","received_at":"2026-11-25T10:00:00Z",
            "type":"lead.updated",
            "fields":{"org_id":88666266666666666666666666666666666666666666001}}"#;
        let parsed: LeadEvent = serde_json::from_slice(body).expect("an event");
        let record = serde_json::to_vec(&parsed).expect("an event serializes");
        let read: LeadEvent = serde_json::from_slice(&record).expect("the record reads back");
        assert_eq!(read, parsed);
    }
}
