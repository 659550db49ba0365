//! Alerts: what the engine decides and the dispatcher delivers. The JSON form is exactly the body
//! a webhook sink receives.
//!
//! Types (`type`): `lead.unassigned`, `sla.first_touch.reminder`, `sla.first_touch.breached`,
//! `sla.first_touch.escalated`, `follow_up.attempt_overdue`, `follow_up.insufficient_attempts`,
//! `disposition.overdue`, `disposition.missing_reason`, `disposition.unknown_reason`,
//! `disposition.vague_reason`, `disposition.late`.

use jiff::Timestamp;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

pub const REMINDER: &str = "sla.first_touch.reminder";
pub const BREACHED: &str = "sla.first_touch.breached";
pub const ESCALATED: &str = "sla.first_touch.escalated";
pub const UNASSIGNED: &str = "lead.unassigned";
pub const ATTEMPT_OVERDUE: &str = "follow_up.attempt_overdue";
pub const INSUFFICIENT_ATTEMPTS: &str = "follow_up.insufficient_attempts";
pub const OVERDUE: &str = "disposition.overdue";
pub const MISSING_REASON: &str = "disposition.missing_reason";
pub const UNKNOWN_REASON: &str = "disposition.unknown_reason";
pub const VAGUE_REASON: &str = "disposition.vague_reason";
pub const LATE: &str = "disposition.late";

/// Every alert type.
pub const ALERT_TYPES: [&str; 11] = [
    UNASSIGNED,
    REMINDER,
    BREACHED,
    ESCALATED,
    ATTEMPT_OVERDUE,
    INSUFFICIENT_ATTEMPTS,
    OVERDUE,
    MISSING_REASON,
    UNKNOWN_REASON,
    VAGUE_REASON,
    LATE,
];

/// One alert, as delivered: `{"type":…,"timestamp":…,"data":{…}}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Alert {
    /// `sla.first_touch.breached`, …
    #[serde(rename = "type")]
    pub kind: String,
    /// When the engine fired it.
    pub timestamp: Timestamp,
    pub data: AlertData,
}

/// What an alert says. Fields that do not apply to an alert type are left out of the JSON.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AlertData {
    /// Deterministic: the same after any retry, restart, replay or rules edit (see [`alert_id`]).
    pub alert_id: String,
    /// The lead key (`hubspot:123`, `salesforce:00Q…`, or a generic source's key verbatim).
    pub lead: String,
    /// The lead's owner when the alert fired (the CRM's owner id, as the source sends it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub owner: Option<String>,
    /// The rule of the rules file that was broken: `handoff`, `first_touch`, `follow_up`,
    /// `disposition`.
    pub rule: String,
    /// 0 for the breach itself (and for every non-ladder alert), n for the n-th escalation step;
    /// the reminder before a deadline is level 0 of its own type.
    pub level: u32,
    /// The roles the alert is addressed to: `owner`, `manager`, `marketing_ops`, `queue`, or any
    /// role named in the rules' `[recipients]`. Routes choose sinks by these.
    #[serde(default = "default_to")]
    pub to: Vec<String>,
    /// The people behind those roles, as far as the rules' `[directory]` and `[recipients]` know
    /// them (chat handles for mentions, emails). May be empty.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub recipients: Vec<Recipient>,
    /// When the current sales-ready episode began.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sales_ready_at: Option<Timestamp>,
    /// When this SLA clock started: for first touch the later of sales-ready and owned (an owner
    /// change restarts it); for handoff the start of the episode; for close-out rules the close.
    pub clock_started_at: Timestamp,
    /// The instant the rule was due (the SLA deadline; for close-out rules, the close itself).
    pub deadline: Timestamp,
    /// Who should take the lead over (escalation steps with `reassign = true`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub suggested_owner: Option<String>,
    /// How the lead was closed out (close-out rules).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disposition: Option<Disposition>,
    /// What identifies the lead to a person, from its fields.
    #[serde(default, skip_serializing_if = "LeadInfo::is_empty")]
    pub lead_info: LeadInfo,
    /// A link to the lead in its CRM, when the source names a link template.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub link: Option<String>,
    /// One sentence a person can act on.
    pub message: String,
    /// Every record of the lead's person when the identity join made it of several
    /// (`marketo:501`, `salesforce:00Q…`), least key first; left out for a lead of one record
    /// (and by alerts of builds before the join, which read back as such).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub records: Vec<String>,
}

fn default_to() -> Vec<String> {
    vec!["owner".into()]
}

/// A person (or channel) an alert is addressed to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Recipient {
    /// The role they are addressed in (`owner`, `manager`, `marketing_ops`, …).
    pub role: String,
    /// Their id: the CRM owner id, an email, or a name from `[recipients]`.
    pub id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub email: Option<String>,
    /// Slack member id (`U024BE7LH`) or handle, for a mention.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub slack: Option<String>,
    /// Teams user (email or AAD id), for a mention.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub teams: Option<String>,
}

/// How a lead was closed out, for the close-out rules.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Disposition {
    /// The lead's `disposition_reason` at the close, as written.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
    /// Attempts (touches) logged in the episode before the close.
    pub attempts: u32,
    pub closed_at: Timestamp,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_activity_at: Option<Timestamp>,
}

/// The lead as a person recognises it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeadInfo {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub email: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub company: Option<String>,
    /// The configured source the lead came through (`[sources.NAME]`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
}

impl LeadInfo {
    pub fn is_empty(&self) -> bool {
        self == &LeadInfo::default()
    }
}

impl Alert {
    pub fn id(&self) -> &str {
        &self.data.alert_id
    }

    /// The lead's id in its own system: `123` of `hubspot:123`; a key without a system prefix
    /// is returned whole.
    pub fn object_id(&self) -> &str {
        split_lead_key(&self.data.lead).1
    }
}

/// Splits a lead key `"{system}:{object id}"` into its parts; a key without a known system
/// prefix has no system.
pub fn split_lead_key(lead: &str) -> (Option<&str>, &str) {
    match lead.split_once(':') {
        Some((system, id))
            if matches!(
                system,
                "hubspot" | "salesforce" | "marketo" | "pipedrive" | "zoho" | "dynamics"
            ) =>
        {
            (Some(system), id)
        }
        _ => (None, lead),
    }
}

/// The id of an alert: a hash of (lead, rule, level, start of that SLA clock) and, for the
/// types that share a rule and level (the reminder and the breach), the type. It does not depend
/// on the deadline, so editing the rules never makes an alert that already fired fire again.
pub fn alert_id(lead: &str, rule: &str, level: u32, clock_started_at: Timestamp) -> String {
    alert_id_of(lead, rule, level, clock_started_at, None)
}

/// As [`alert_id`], for a second alert type under the same (rule, level), e.g. the reminder.
pub fn alert_id_of(
    lead: &str,
    rule: &str,
    level: u32,
    clock_started_at: Timestamp,
    variant: Option<&str>,
) -> String {
    use std::fmt::Write as _;
    let mut h = Sha256::new();
    let mut part = |bytes: &[u8]| {
        h.update((bytes.len() as u64).to_be_bytes());
        h.update(bytes);
    };
    part(lead.as_bytes());
    part(rule.as_bytes());
    // The level and the clock start as text (as they always were hashed), written into one
    // buffer on the stack rather than a string each.
    let mut text = Text::default();
    write!(text, "{level}").expect("fits");
    let level_end = text.len;
    write!(text, "{clock_started_at}").expect("fits");
    part(&text.buf[..level_end]);
    part(&text.buf[level_end..text.len]);
    if let Some(v) = variant {
        part(v.as_bytes());
    }
    let digest = h.finalize();
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut id = String::with_capacity(6 + 32);
    id.push_str("alert_");
    for b in &digest[..16] {
        id.push(char::from(HEX[usize::from(b >> 4)]));
        id.push(char::from(HEX[usize::from(b & 0xf)]));
    }
    id
}

/// A little text written on the stack (an alert id's level and clock start: at most a few dozen
/// bytes).
struct Text {
    buf: [u8; 96],
    len: usize,
}

impl Default for Text {
    fn default() -> Self {
        Self {
            buf: [0; 96],
            len: 0,
        }
    }
}

impl std::fmt::Write for Text {
    fn write_str(&mut self, s: &str) -> std::fmt::Result {
        let end = self.len + s.len();
        self.buf
            .get_mut(self.len..end)
            .ok_or(std::fmt::Error)?
            .copy_from_slice(s.as_bytes());
        self.len = end;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_deterministic_and_distinguish_each_part() {
        let t: Timestamp = "2026-11-22T10:00:00Z".parse().unwrap();
        let a = alert_id("L-1", "first_touch", 0, t);
        assert_eq!(a, alert_id("L-1", "first_touch", 0, t));
        assert!(a.starts_with("alert_") && a.len() == 6 + 32);
        assert_ne!(a, alert_id("L-2", "first_touch", 0, t));
        assert_ne!(a, alert_id("L-1", "handoff", 0, t));
        assert_ne!(a, alert_id("L-1", "first_touch", 1, t));
        assert_ne!(
            a,
            alert_id(
                "L-1",
                "first_touch",
                0,
                t + jiff::SignedDuration::from_secs(1)
            )
        );
        // Length-prefixed parts: moving a character between parts changes the id.
        assert_ne!(alert_id("L-1f", "irst_touch", 0, t), a);
        assert_ne!(alert_id_of("L-1", "first_touch", 0, t, Some("reminder")), a);
    }

    /// An alert id is the idempotency key toward every sink, the key of the delivery ledger and
    /// the retry backlog, and what a lead's "fired" marks stand for. Derived any other way after
    /// an upgrade, every alert that already fired would look new and be delivered again. So the
    /// ids of fixed inputs are literals here, computed once: a change that makes this fail
    /// re-keys alerts in production. Do not update the literals; undo the change.
    #[test]
    fn alert_ids_are_pinned() {
        let t: Timestamp = "2026-11-22T10:00:00Z".parse().unwrap();
        let sub_second: Timestamp = "2026-11-22T10:00:00.25Z".parse().unwrap();
        // Every (rule, level, variant) the engine fires (see `engine::deadlines::owed`).
        let got = [
            alert_id("L-1", "handoff", 0, t),
            alert_id_of("L-1", "first_touch", 0, t, Some("reminder")),
            alert_id("L-1", "first_touch", 0, t),
            alert_id("L-1", "first_touch", 1, t),
            alert_id("L-1", "first_touch", 2, t),
            alert_id("L-1", "follow_up", 0, t),
            alert_id_of(
                "L-1",
                "disposition",
                0,
                t,
                Some("disposition.missing_reason"),
            ),
            alert_id_of(
                "L-1",
                "disposition",
                0,
                t,
                Some("disposition.unknown_reason"),
            ),
            alert_id_of("L-1", "disposition", 0, t, Some("disposition.vague_reason")),
            alert_id_of("L-1", "disposition", 0, t, Some("disposition.late")),
            // A vendor lead key, and a clock with a fraction of a second (how the instant is
            // written is part of the id).
            alert_id("hubspot:1551", "first_touch", 0, sub_second),
        ];
        assert_eq!(
            got,
            [
                "alert_58ab3bf097dd0c0cc2baecec7498e937",
                "alert_f322c71b24ae3fd1cf295edf4573725e",
                "alert_cb070952382793f05aa37c7d7779d9a7",
                "alert_75c69bdd6f22215a4e0c452d6cfb6f44",
                "alert_7107ca3fb9c9c37e9ab1a9ef2a2e8b42",
                "alert_fcb4660450864da0f818e299e7833733",
                "alert_8b94b4e07751a91a8b3e1e6330084640",
                "alert_56b6bee1517c6f0fd765bfa665165701",
                "alert_67f762d9f69280163445b4ab6b4eb1c5",
                "alert_67509963e4fb758f1fcc39fd38655e5e",
                "alert_3c4f611c9bf5c58d780a8974c97c138a",
            ]
        );
    }

    #[test]
    fn lead_keys_split_into_system_and_object_id() {
        assert_eq!(split_lead_key("hubspot:123"), (Some("hubspot"), "123"));
        assert_eq!(
            split_lead_key("salesforce:00Q5g000001"),
            (Some("salesforce"), "00Q5g000001")
        );
        assert_eq!(split_lead_key("L-1"), (None, "L-1"));
        assert_eq!(split_lead_key("urn:x:1"), (None, "urn:x:1"));
    }
}
