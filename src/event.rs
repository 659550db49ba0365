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
}
