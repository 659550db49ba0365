//! The notifications of an Outbound Message → [`LeadEvent`]s:
//! - `Lead` and `Contact` → a patch of every field sent (current values; `xsi:nil` → null) plus
//!   canonical aliases ([`DEFAULT_FIELDS`], overridden by `[sources.NAME.fields]`), on
//!   `salesforce:{Id}`, at `LastModifiedDate` when sent; a lead owned by a queue has no owner yet;
//! - `Task` and `Event` → an activity on `salesforce:{WhoId}` (the lead or contact): a Task's
//!   kind is its `TaskSubtype` or `Type` (`call`, `email` …), an Event is a `meeting`; a Task
//!   still open (`Status` other than `Completed`, or `IsClosed` false) is not an activity yet;
//!   a list email (`TaskSubtype` `ListEmail`) is `automated`;
//! - other sObjects concern no lead: ignored.
//!
//! An event's id is `salesforce:{org}:{Notification Id}`: Salesforce retries with the same one.

use jiff::Timestamp;
use serde_json::Value;

use super::config::SalesforceConfig;
use super::soap::Notification;
use crate::event::{Activity, Change, LeadEvent};
use crate::ingest::fields::Mapping;
use crate::ingest::{IngestError, Parsed, check_batch};

/// Canonical name → Lead/Contact field API name.
pub const DEFAULT_FIELDS: &[(&str, &str)] = &[
    ("stage", "Status"),
    ("status", "Status"),
    ("owner", "OwnerId"),
    ("email", "Email"),
    ("phone", "Phone"),
    ("company", "Company"),
    ("first_name", "FirstName"),
    ("last_name", "LastName"),
    ("name", "Name"),
    ("job_title", "Title"),
    ("employees", "NumberOfEmployees"),
    ("annual_revenue", "AnnualRevenue"),
    ("industry", "Industry"),
    ("region", "State"),
    ("country", "Country"),
    ("lead_source", "LeadSource"),
];

/// Task subtypes Salesforce gives sends to many at once (`ListEmail`: a list email): the
/// activity is `automated`. `Email`, `Call`, `Cadence`, `LinkedIn` and `Task` say nothing of
/// whether a person or a program did it, and `Type` is each org's own picklist: left alone.
pub const AUTOMATED_SUBTYPES: &[&str] = &["ListEmail"];

/// How notifications become lead events: the field mapping.
#[derive(Debug)]
pub struct Mapper {
    mapping: Mapping,
}

impl Mapper {
    pub fn from_config(cfg: &SalesforceConfig) -> Self {
        Self {
            mapping: Mapping::new(DEFAULT_FIELDS, &cfg.fields),
        }
    }

    /// The events of up to 100 notifications from `org`.
    pub fn events(
        &self,
        source: &str,
        org: &str,
        notifications: Vec<Notification>,
        received_at: Timestamp,
    ) -> Result<Parsed, IngestError> {
        check_batch(notifications.len())?;
        let mut parsed = Parsed::default();
        for notification in notifications {
            match self.event(source, org, notification, received_at)? {
                Some(event) => parsed.events.push(event),
                None => parsed.ignored += 1,
            }
        }
        Ok(parsed)
    }

    fn event(
        &self,
        source: &str,
        org: &str,
        n: Notification,
        received_at: Timestamp,
    ) -> Result<Option<LeadEvent>, IngestError> {
        let object = n.sobject;
        let kind = object
            .r#type
            .as_deref()
            .map(|t| t.rsplit(':').next().unwrap_or(t))
            .unwrap_or("");
        let text = |name: &str| object.fields.get(name).and_then(Value::as_str);
        let at = |name: &str| text(name).and_then(|s| s.parse::<Timestamp>().ok());
        if n.id.trim().is_empty() {
            return Err(IngestError::malformed(
                "a notification has an empty Id (it is how Salesforce retries are recognised)",
            ));
        }
        let id = format!("salesforce:{org}:{}", n.id.trim());
        let (lead, change, occurred_at) = match kind {
            "Lead" | "Contact" => {
                let Some(record) = text("Id").map(str::trim).filter(|s| !s.is_empty()) else {
                    return Err(IngestError::malformed(format!(
                        "notification {}: the {kind} has no Id field",
                        n.id
                    )));
                };
                let mut fields = object.fields.clone();
                self.mapping.add_aliases_from(&object.fields, &mut fields);
                // A lead waiting in a queue (an owner id starting `00G`) has no one on it yet:
                // it is under the handoff rule, and the queue is kept as `owner_queue`.
                if let Some(queue) = fields
                    .get("owner")
                    .and_then(Value::as_str)
                    .filter(|o| o.starts_with("00G"))
                    .map(str::to_string)
                {
                    fields.insert("owner".into(), Value::Null);
                    fields.insert("owner_queue".into(), Value::String(queue));
                }
                let occurred = at("LastModifiedDate").or_else(|| at("SystemModstamp"));
                (record.to_string(), Change::Updated { fields }, occurred)
            }
            "Task" | "Event" => {
                // A task on no one (or on an account only) concerns no lead.
                let Some(who) = text("WhoId").map(str::trim).filter(|s| !s.is_empty()) else {
                    return Ok(None);
                };
                // A Task is a to-do until it is closed; without either field we take it as done
                // (a logged call is created completed).
                let done = match (text("IsClosed"), text("Status")) {
                    (Some(closed), _) => closed.eq_ignore_ascii_case("true"),
                    (None, Some(status)) => status.eq_ignore_ascii_case("completed"),
                    (None, None) => true,
                };
                if kind == "Task" && !done {
                    return Ok(None);
                }
                let activity_kind = if kind == "Event" {
                    "meeting".to_string()
                } else {
                    text("TaskSubtype")
                        .filter(|s| !s.eq_ignore_ascii_case("task"))
                        .or_else(|| text("Type"))
                        .unwrap_or("task")
                        .to_lowercase()
                };
                // When it was done: its completion, else its last change (a to-do closed days
                // after it was created is not an on-time touch), else its creation.
                let occurred = at("CompletedDateTime")
                    .or_else(|| at("LastModifiedDate"))
                    .or_else(|| at("CreatedDate"));
                // A list email is one send to a whole list view: Salesforce's own subtype says it
                // is not a person reaching this lead.
                let automated = kind == "Task"
                    && text("TaskSubtype").is_some_and(|s| {
                        AUTOMATED_SUBTYPES
                            .iter()
                            .any(|a| s.trim().eq_ignore_ascii_case(a))
                    });
                let change = Change::Activity {
                    activity: Activity {
                        kind: activity_kind,
                        by: text("OwnerId").map(str::to_string),
                        automated,
                    },
                };
                (who.to_string(), change, occurred)
            }
            _ => return Ok(None),
        };
        Ok(Some(LeadEvent {
            id,
            source: source.to_string(),
            lead: format!("salesforce:{lead}"),
            occurred_at: occurred_at.unwrap_or(received_at),
            received_at,
            change,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ingest::Handler;
    use crate::ingest::salesforce::tests::{body, now, source};
    use serde_json::json;

    #[test]
    fn a_lead_message_becomes_a_patch_of_current_values() {
        let parsed = source("")
            .parse("sf", &body("lead_sales_ready.http"), now())
            .unwrap();
        assert_eq!(parsed.events.len(), 1);
        let e = &parsed.events[0];
        assert_eq!(e.lead, "salesforce:00Q5g00000ABCDEEA2");
        assert_eq!(e.id, "salesforce:00D5g000004Xq2REAS:04l5g00000ZZ1aAAAT");
        assert_eq!(
            e.occurred_at,
            "2026-11-25T09:58:12Z".parse::<Timestamp>().unwrap()
        );
        let Change::Updated { fields } = &e.change else {
            panic!("{e:?}")
        };
        assert_eq!(fields["Status"], json!("Open - Not Contacted"));
        assert_eq!(fields["stage"], json!("Open - Not Contacted"));
        assert_eq!(fields["OwnerId"], json!("0055g00000OWNR1AAA"));
        assert_eq!(fields["owner"], json!("0055g00000OWNR1AAA"));
        assert_eq!(fields["NumberOfEmployees"], json!("250"));
        assert_eq!(fields["employees"], json!(250));
        assert_eq!(fields["annual_revenue"], json!(5000000));
        assert_eq!(fields["Industry"], Value::Null, "xsi:nil is null");
        assert_eq!(fields["Disqualified_Reason__c"], Value::Null);
    }

    /// Each Notification `Id` is produced once, under the org that sent it: the engine
    /// recognises Salesforce's retries (for up to 24 hours) by this id. Derived any other way
    /// after an upgrade, those retries would be applied again. Literals; do not update them,
    /// undo the change.
    #[test]
    fn event_ids_are_pinned() {
        let ids = |fixture: &str| -> Vec<(String, String)> {
            source("")
                .parse("sf", &body(fixture), now())
                .unwrap()
                .events
                .into_iter()
                .map(|e| (e.lead, e.id))
                .collect()
        };
        let pair = |lead: &str, id: &str| (lead.to_string(), id.to_string());
        assert_eq!(
            ids("lead_sales_ready.http"),
            [pair(
                "salesforce:00Q5g00000ABCDEEA2",
                "salesforce:00D5g000004Xq2REAS:04l5g00000ZZ1aAAAT"
            )]
        );
        assert_eq!(
            ids("task_call.http"),
            [
                // A closed call Task, on its WhoId.
                pair(
                    "salesforce:00Q5g00000ABCDEEA2",
                    "salesforce:00D5g000004Xq2REAS:04l5g00000ZZ2bAAAT"
                ),
                // An Event (a meeting), on its WhoId.
                pair(
                    "salesforce:0035g00000CONT1AAA",
                    "salesforce:00D5g000004Xq2REAS:04l5g00000ZZ2dAAAT"
                ),
            ]
        );
    }

    #[test]
    fn a_lead_in_a_queue_has_no_owner_yet() {
        let queued = String::from_utf8(body("lead_sales_ready.http"))
            .unwrap()
            .replace("0055g00000OWNR1AAA", "00G5g00000QUEUEAAA");
        let parsed = source("").parse("sf", queued.as_bytes(), now()).unwrap();
        let Change::Updated { fields } = &parsed.events[0].change else {
            panic!()
        };
        assert_eq!(fields["owner"], Value::Null);
        assert_eq!(fields["owner_queue"], json!("00G5g00000QUEUEAAA"));
        assert_eq!(fields["OwnerId"], json!("00G5g00000QUEUEAAA"));
    }

    #[test]
    fn a_task_closed_later_is_dated_by_its_last_change_not_its_creation() {
        let text = String::from_utf8(body("task_call.http")).unwrap();
        assert!(
            text.contains("<sf:CreatedDate>"),
            "the fixture dates its tasks"
        );
        let later = text.replacen(
            "<sf:CreatedDate>",
            "<sf:LastModifiedDate>2026-11-27T15:00:00.000Z</sf:LastModifiedDate><sf:CreatedDate>",
            1,
        );
        let parsed = source("").parse("sf", later.as_bytes(), now()).unwrap();
        assert_eq!(
            parsed.events[0].occurred_at,
            "2026-11-27T15:00:00Z".parse::<Timestamp>().unwrap()
        );
    }

    #[test]
    fn a_completed_call_task_is_a_touch_on_its_who_and_open_tasks_are_not() {
        let parsed = source("")
            .parse("sf", &body("task_call.http"), now())
            .unwrap();
        assert_eq!(parsed.events.len(), 2, "{parsed:?}");
        assert_eq!(parsed.ignored, 2, "the open task and the account");
        let call = &parsed.events[0];
        assert_eq!(call.lead, "salesforce:00Q5g00000ABCDEEA2");
        assert_eq!(
            call.change,
            Change::Activity {
                activity: Activity {
                    kind: "call".into(),
                    by: Some("0055g00000OWNR1AAA".into()),
                    automated: false,
                }
            }
        );
        let meeting = &parsed.events[1];
        assert!(
            matches!(&meeting.change, Change::Activity { activity } if activity.kind == "meeting")
        );
    }

    /// A list email (`TaskSubtype` `ListEmail`, one send to a whole list view) is recorded as
    /// an activity but marked `automated`, so it never counts as the rep's touch; an email the
    /// rep sent (`Email`) and a call are theirs.
    #[test]
    fn a_list_email_task_is_automated_and_a_reps_email_is_not() {
        let text = String::from_utf8(body("task_call.http")).unwrap();
        let automated = |subtype: &str| -> Vec<(String, bool)> {
            let body = text.replacen(
                "<sf:TaskSubtype>Call</sf:TaskSubtype>",
                &format!("<sf:TaskSubtype>{subtype}</sf:TaskSubtype>"),
                1,
            );
            source("")
                .parse("sf", body.as_bytes(), now())
                .unwrap()
                .events
                .into_iter()
                .map(|e| match e.change {
                    Change::Activity { activity } => (activity.kind, activity.automated),
                    other => panic!("{other:?}"),
                })
                .collect()
        };
        assert_eq!(
            automated("ListEmail"),
            [
                ("listemail".to_string(), true),
                ("meeting".to_string(), false)
            ]
        );
        assert_eq!(automated("Email")[0], ("email".to_string(), false));
        assert_eq!(automated("Call")[0], ("call".to_string(), false));
        assert_eq!(automated("Cadence")[0], ("cadence".to_string(), false));
    }

    #[test]
    fn more_than_a_hundred_notifications_are_too_many() {
        let text = String::from_utf8(body("lead_sales_ready.http")).unwrap();
        let start = text.find("<Notification>").unwrap();
        let end = text.find("</Notification>").unwrap() + "</Notification>".len();
        let one = &text[start..end];
        let many = format!("{}{}{}", &text[..start], one.repeat(101), &text[end..]);
        assert!(matches!(
            source("").parse("sf", many.as_bytes(), now()),
            Err(IngestError::TooManyEvents(101))
        ));
    }
}
