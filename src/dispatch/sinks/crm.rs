//! What the CRM sinks ([`super::salesforce`], [`super::hubspot`]) share: which leads are theirs,
//! the suggested reassignment, and the task's owner and description. Each sink keeps only its
//! API's requests and answers.

use std::future::Future;
use std::sync::Arc;

use super::attempt::{Attempt, Delivered, DeliveryError, truncate};
use crate::alert::split_lead_key;
use crate::dispatch::template::addressed;
use crate::telemetry::Metrics;

/// The longest object id a CRM sink takes (Salesforce's have 15 or 18 characters, HubSpot's a
/// dozen digits).
pub const MAX_OBJECT_ID: usize = 64;

/// The lead's record id in `system` (`salesforce`, `hubspot`; a key without a system prefix is
/// used verbatim; `name`: the system as people write it), or what the attempt comes to without
/// a request: another system's lead is skipped; a record id that is not 1 to
/// [`MAX_OBJECT_ID`] ASCII letters and digits is refused for good.
///
/// The record id becomes a segment of the CRM's URL, and the alert it comes from is untrusted
/// (a generic source took `hubspot:1/../../companies/5` verbatim): `..`, `/`, `?` or `%` could
/// reach another object. Refused rather than skipped, so it is dead-lettered — counted, with
/// the reason and the whole alert, where the operator sees it and can still act on the lead by
/// hand — rather than only logged; and never attempted, not even for the task alone, since the
/// task would be associated with the same id.
pub fn record_id<'a>(
    a: &Attempt<'a>,
    system: &str,
    name: &str,
) -> Result<&'a str, Result<Delivered, DeliveryError>> {
    let lead = &a.alert.data.lead;
    let id = match split_lead_key(lead) {
        (Some(other), _) if other != system => {
            return Err(Ok(Delivered::Skipped(format!(
                "lead {} is not a {name} record",
                truncate(lead, 200)
            ))));
        }
        (_, id) => id,
    };
    if is_object_id(id) {
        Ok(id)
    } else {
        Err(Err(DeliveryError::permanent(format!(
            "lead {}: a {name} record id must be 1 to {MAX_OBJECT_ID} ASCII letters and digits; \
             refused without a request",
            truncate(lead, 200)
        ))))
    }
}

/// 1 to [`MAX_OBJECT_ID`] ASCII letters and digits: safe as a path segment, a SOQL literal and
/// a JSON value, and the shape of every Salesforce and HubSpot id.
pub fn is_object_id(id: &str) -> bool {
    (1..=MAX_OBJECT_ID).contains(&id.len()) && id.bytes().all(|b| b.is_ascii_alphanumeric())
}

/// Why a suggested reassignment was not applied: the `reason` of
/// `leadwatch_reassignments_skipped_total{sink,reason}`. The task is created all the same.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Skipped {
    /// The lead's owner in the CRM is no longer the one the alert names: someone reassigned
    /// (or took) the lead since; their decision stands.
    OwnerChanged,
    /// The record changed between every read and its write (Salesforce's conditional write
    /// answered 412 each time, [`ROUNDS`] times).
    KeptChanging,
    /// The CRM refused the read or the write for good (a converted or deleted lead, an owner
    /// id it does not know).
    Refused,
    /// The suggested owner is no CRM user id (letters and digits).
    NotAUser,
}

impl Skipped {
    pub fn reason(self) -> &'static str {
        match self {
            Skipped::OwnerChanged => "owner_changed",
            Skipped::KeptChanging => "kept_changing",
            Skipped::Refused => "refused",
            Skipped::NotAUser => "not_a_user",
        }
    }
}

/// The lead's owner as the CRM has it now (`None`: no one), and what a conditional write needs
/// to know the record did not change since (Salesforce: its `LastModifiedDate`).
#[derive(Debug, Clone)]
pub struct Current<V> {
    pub owner: Option<String>,
    pub version: V,
}

/// What a write of the new owner came to, when it was not an error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Written {
    Done,
    /// The CRM refused it because the record changed since it was read (412): read again.
    Changed,
}

/// How often the owner is read again after a conditional write found the record changed.
pub const ROUNDS: usize = 3;

/// A CRM sink's suggested reassignments: whether it applies them (`apply_reassignment`), how
/// it compares owner ids, and where it counts the ones it leaves alone.
#[derive(Clone)]
pub struct Reassigner {
    apply: bool,
    /// The sink's name in `leadwatch_reassignments_skipped_total` (its kind until
    /// [`Reassigner::observed`] names it).
    sink: String,
    metrics: Option<Arc<Metrics>>,
    /// Whether two owner ids name the same user (Salesforce: a 15- and an 18-character id).
    same_owner: fn(&str, &str) -> bool,
}

impl Reassigner {
    pub fn new(apply: bool, kind: &str, same_owner: fn(&str, &str) -> bool) -> Self {
        Self {
            apply,
            sink: kind.to_string(),
            metrics: None,
            same_owner,
        }
    }

    /// Counts what it leaves alone under the sink's configured name.
    pub fn observed(&mut self, sink: &str, metrics: Arc<Metrics>) {
        self.sink = sink.to_string();
        self.metrics = Some(metrics);
    }

    /// Applies the alert's suggested new owner before the task is created, when the sink is to
    /// and nothing changed meanwhile: `read` gives the lead's owner in the CRM now, and only if
    /// it is still the owner the alert names (`data.owner`; none, if it names none) is the new
    /// one written through `write` (given the owner and what `read` said of the record's
    /// version, for a conditional write). A write the CRM refuses because the record changed
    /// since the read ([`Written::Changed`]) is read again, at most [`ROUNDS`] times.
    ///
    /// The new owner when the CRM has it — also when it already had it (an earlier attempt
    /// wrote it, or a person made the same choice). `None` when there is none to apply, the
    /// owner changed meanwhile, or the CRM refused it for good: logged with the reason and
    /// counted, and the task is still created, for the current owner. A failure worth retrying
    /// (or of the sink's credentials) fails the attempt.
    pub async fn reassign<'a, V, RF, WF>(
        &self,
        a: &Attempt<'a>,
        read: impl Fn() -> RF,
        write: impl Fn(&'a str, V) -> WF,
    ) -> Result<Option<&'a str>, DeliveryError>
    where
        RF: Future<Output = Result<Current<V>, DeliveryError>>,
        WF: Future<Output = Result<Written, DeliveryError>>,
    {
        let Some(suggested) = a
            .alert
            .data
            .suggested_owner
            .as_deref()
            .filter(|_| self.apply)
        else {
            return Ok(None);
        };
        if !is_object_id(suggested) {
            // Untrusted like the rest of the alert: no CRM user id looks like this.
            self.skipped(
                a,
                Skipped::NotAUser,
                "the suggested owner is no CRM user id",
            );
            return Ok(None);
        }
        let named = a.alert.data.owner.as_deref().filter(|o| !o.is_empty());
        for _ in 0..ROUNDS {
            let current = match read().await {
                Ok(current) => current,
                Err(e) => return self.refused(a, e, "reading the lead's owner"),
            };
            let now = current.owner.as_deref().filter(|o| !o.is_empty());
            let same = |x: Option<&str>, y: Option<&str>| match (x, y) {
                (Some(x), Some(y)) => (self.same_owner)(x, y),
                (x, y) => x == y,
            };
            if same(now, Some(suggested)) {
                return Ok(Some(suggested));
            }
            if !same(now, named) {
                tracing::warn!(
                    sink = %self.sink,
                    alert_id = %a.alert.id(),
                    lead = %truncate(&a.alert.data.lead, 200),
                    alert_owner = named.unwrap_or("(none)"),
                    crm_owner = now.unwrap_or("(none)"),
                    suggested,
                    reason = Skipped::OwnerChanged.reason(),
                    "the lead's owner changed since the alert fired; the reassignment is left \
                     out and the task is created for the lead as it stands"
                );
                self.count(Skipped::OwnerChanged);
                return Ok(None);
            }
            match write(suggested, current.version).await {
                Ok(Written::Done) => return Ok(Some(suggested)),
                Ok(Written::Changed) => continue,
                Err(e) => return self.refused(a, e, "writing the new owner"),
            }
        }
        self.skipped(
            a,
            Skipped::KeptChanging,
            "the lead changed between every read of its owner and the write",
        );
        Ok(None)
    }

    /// A failed read or write: retriable ones (and the credentials') fail the attempt, others
    /// leave the reassignment out.
    fn refused<'a>(
        &self,
        a: &Attempt<'_>,
        e: DeliveryError,
        doing: &str,
    ) -> Result<Option<&'a str>, DeliveryError> {
        if e.retriable || e.credentials.is_some() {
            return Err(e);
        }
        tracing::warn!(
            sink = %self.sink,
            alert_id = %a.alert.id(),
            lead = %truncate(&a.alert.data.lead, 200),
            status = ?e.status,
            error = %e,
            excerpt = %e.excerpt,
            reason = Skipped::Refused.reason(),
            "the CRM refused {doing}; the task is created without the reassignment"
        );
        self.count(Skipped::Refused);
        Ok(None)
    }

    fn skipped(&self, a: &Attempt<'_>, why: Skipped, what: &str) {
        tracing::warn!(
            sink = %self.sink,
            alert_id = %a.alert.id(),
            lead = %truncate(&a.alert.data.lead, 200),
            reason = why.reason(),
            "{what}; the task is created without the reassignment"
        );
        self.count(why);
    }

    fn count(&self, why: Skipped) {
        if let Some(m) = &self.metrics {
            m.reassignment_skipped(&self.sink, why.reason());
        }
    }
}

/// An id as a CRM answer holds it: a non-empty string, or a number.
pub fn id_value(v: &serde_json::Value) -> Option<String> {
    match v {
        serde_json::Value::String(s) if !s.is_empty() => Some(s.clone()),
        serde_json::Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

/// Owner ids that are the same string.
pub fn same_id(a: &str, b: &str) -> bool {
    a == b
}

/// Whom the task is for: the new owner of a reassignment, else the first addressed recipient
/// whose id is one of the CRM's users (`is_user`, and an object id), else the lead's owner if
/// that is one.
pub fn task_owner<'a>(
    a: &Attempt<'a>,
    reassigned: Option<&'a str>,
    is_user: impl Fn(&str) -> bool,
) -> Option<&'a str> {
    let is_user = |id: &str| is_object_id(id) && is_user(id);
    reassigned
        .or_else(|| {
            addressed(a.alert, &[])
                .into_iter()
                .map(|r| r.id.as_str())
                .find(|id| is_user(id))
        })
        .or(a.alert.data.owner.as_deref().filter(|id| is_user(id)))
}

/// The task's description: the message, then the lead, its owner, the deadline, how late, the
/// link, and the alert id (which a search for an earlier attempt's task may look for).
pub fn task_description(a: &Attempt<'_>) -> String {
    let m = a.message;
    let mut lines = vec![m.text.clone(), String::new()];
    lines.push(format!("Lead: {}", m.lead));
    if !m.owner.is_empty() {
        lines.push(format!("Owner: {}", m.owner));
    }
    lines.push(format!("Deadline: {}", m.deadline));
    if !m.late.is_empty() {
        lines.push(format!("Late by: {}", m.late));
    }
    if !m.link.is_empty() {
        lines.push(m.link.clone());
    }
    lines.push(format!("leadwatch alert id: {}", a.alert.id()));
    lines.join("\n")
}

/// A CRM field's or property's API name (`Leadwatch_Alert_Id__c`).
pub fn is_api_name(s: &str) -> bool {
    !s.is_empty()
        && s.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
        && s.chars().next().is_some_and(|c| c.is_ascii_alphabetic())
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;

    use super::*;
    use crate::alert::Alert;
    use crate::dispatch::template::{Message, Style, Templates, sample_alert};

    fn attempt_with<T>(alert: &Alert, then: impl FnOnce(&Attempt<'_>) -> T) -> T {
        let body = Bytes::from(serde_json::to_vec(alert).unwrap());
        let message: Message = Templates::new(&[])
            .unwrap()
            .render(alert, None, Style::Plain);
        then(&Attempt {
            alert,
            body: &body,
            attempt: 1,
            maybe_attempted: false,
            message: &message,
        })
    }

    #[test]
    fn a_crm_sink_takes_its_own_leads_and_those_without_a_system() {
        let mut alert = sample_alert("sla.first_touch.breached");
        attempt_with(&alert, |a| {
            assert_eq!(
                record_id(a, "salesforce", "Salesforce").ok(),
                Some("00Q5g000001")
            );
            match record_id(a, "hubspot", "HubSpot") {
                Err(Ok(skipped)) => assert_eq!(
                    skipped,
                    Delivered::Skipped(
                        "lead salesforce:00Q5g000001 is not a HubSpot record".into()
                    )
                ),
                other => panic!("{:?}", other.map_err(|e| e.map_err(|e| e.message))),
            }
        });
        alert.data.lead = "L1".into();
        attempt_with(&alert, |a| {
            assert_eq!(record_id(a, "hubspot", "HubSpot").ok(), Some("L1"))
        });
    }

    /// The object id is the last segment of the CRM's URL: anything but letters and digits
    /// (`..`, `/`, `%`, spaces, other scripts' digits, nothing at all) could leave the record,
    /// so the lead is refused for good — a permanent error, dead-lettered with the reason —
    /// before any request is made.
    #[test]
    fn an_object_id_that_is_not_letters_and_digits_is_refused_for_good() {
        let mut alert = sample_alert("sla.first_touch.escalated");
        for (lead, system) in [
            ("hubspot:1/../../companies/5", "hubspot"),
            ("hubspot:1%2F..%2Fcompanies%2F5", "hubspot"),
            ("hubspot:", "hubspot"),
            ("hubspot:12 34", "hubspot"),
            ("hubspot:１２", "hubspot"),
            ("salesforce:00Q/../Account/001", "salesforce"),
            ("salesforce:00Q5g000001?x=1", "salesforce"),
            ("1/../x", "hubspot"),
            ("L-1", "salesforce"),
        ] {
            alert.data.lead = lead.into();
            attempt_with(&alert, |a| match record_id(a, system, system) {
                Err(Err(e)) => {
                    assert!(!e.retriable, "{lead}: {e}");
                    assert!(e.message.contains("letters and digits"), "{lead}: {e}");
                }
                other => panic!("{lead}: {:?}", other.map_err(|e| e.map_err(|e| e.message))),
            });
        }
        let long = format!("hubspot:{}", "9".repeat(65));
        alert.data.lead = long.clone();
        attempt_with(&alert, |a| {
            assert!(
                matches!(record_id(a, "hubspot", "HubSpot"), Err(Err(_))),
                "{long}"
            )
        });
    }

    #[test]
    fn the_task_goes_to_the_new_owner_else_an_addressed_user_else_the_owner() {
        let is_user = |id: &str| id.starts_with("005");
        let mut alert = sample_alert("sla.first_touch.escalated");
        attempt_with(&alert, |a| {
            assert_eq!(task_owner(a, Some("005N"), is_user), Some("005N"));
            // Addressed to the manager.
            assert_eq!(task_owner(a, None, is_user), Some("005A0000002"));
            assert_eq!(
                task_owner(a, None, |id: &str| id == "005A0000001"),
                Some("005A0000001")
            );
        });
        alert.data.recipients.clear();
        attempt_with(&alert, |a| {
            assert_eq!(task_owner(a, None, is_user), Some("005A0000001"));
            assert_eq!(task_owner(a, None, |_: &str| false), None);
        });
    }

    #[test]
    fn the_description_says_the_message_the_facts_and_the_alert_id() {
        attempt_with(&sample_alert("sla.first_touch.breached"), |a| {
            let lines: Vec<String> = task_description(a).lines().map(String::from).collect();
            assert_eq!(lines[0], a.message.text);
            assert_eq!(lines[1], "");
            assert!(lines.contains(&"Lead: Jane Doe".to_string()), "{lines:?}");
            assert!(lines.contains(&"Owner: Alice Rep".to_string()), "{lines:?}");
            assert_eq!(
                lines.last().unwrap(),
                "leadwatch alert id: alert_00000000000000000000000000000000"
            );
        });
    }
}
