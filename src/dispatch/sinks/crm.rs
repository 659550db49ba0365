//! What the CRM sinks ([`super::salesforce`], [`super::hubspot`]) share: which leads are theirs,
//! the suggested reassignment, and the task's owner and description. Each sink keeps only its
//! API's requests and answers.

use std::future::Future;

use super::attempt::{Attempt, Delivered, DeliveryError};
use crate::alert::split_lead_key;
use crate::dispatch::template::addressed;

/// The lead's record id in `system` (`salesforce`, `hubspot`; a key without a system prefix is
/// used verbatim), or, for another system's lead, the skip that says so (`name`: the system as
/// people write it).
pub fn record_id<'a>(a: &Attempt<'a>, system: &str, name: &str) -> Result<&'a str, Delivered> {
    let lead = &a.alert.data.lead;
    match split_lead_key(lead) {
        (Some(other), _) if other != system => Err(Delivered::Skipped(format!(
            "lead {lead} is not a {name} record"
        ))),
        (_, id) => Ok(id),
    }
}

/// Applies the alert's suggested new owner before the task is created, when the sink is to
/// (`apply`: its `apply_reassignment`), through `patch` (given the owner). The new owner when the
/// CRM took it; `None` when there is none to apply, or the CRM refused it for good (a converted
/// lead, an owner id it does not know) — logged, and the task is still created, for the current
/// owner. A failure worth retrying fails the attempt.
pub async fn reassign<'a, T, F>(
    a: &Attempt<'a>,
    apply: bool,
    patch: impl FnOnce(&'a str) -> F,
) -> Result<Option<&'a str>, DeliveryError>
where
    F: Future<Output = Result<T, DeliveryError>>,
{
    let Some(owner) = a.alert.data.suggested_owner.as_deref().filter(|_| apply) else {
        return Ok(None);
    };
    match patch(owner).await {
        Ok(_) => Ok(Some(owner)),
        // Retriable, or our credentials (a 401 after a fresh token): not the reassignment's fault.
        Err(e) if e.retriable || e.status == Some(401) => Err(e),
        Err(e) => {
            tracing::warn!(
                alert_id = %a.alert.id(),
                lead = %a.alert.data.lead,
                status = ?e.status,
                error = %e,
                excerpt = %e.excerpt,
                "the CRM refused the suggested reassignment; the task is created without it"
            );
            Ok(None)
        }
    }
}

/// Whom the task is for: the new owner of a reassignment, else the first addressed recipient
/// whose id is one of the CRM's users (`is_user`), else the lead's owner if that is one.
pub fn task_owner<'a>(
    a: &Attempt<'a>,
    reassigned: Option<&'a str>,
    is_user: impl Fn(&str) -> bool,
) -> Option<&'a str> {
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
            assert_eq!(record_id(a, "salesforce", "Salesforce"), Ok("00Q5g000001"));
            assert_eq!(
                record_id(a, "hubspot", "HubSpot"),
                Err(Delivered::Skipped(
                    "lead salesforce:00Q5g000001 is not a HubSpot record".into()
                ))
            );
        });
        alert.data.lead = "L-1".into();
        attempt_with(&alert, |a| {
            assert_eq!(record_id(a, "hubspot", "HubSpot"), Ok("L-1"))
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
