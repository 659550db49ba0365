//! Microsoft Teams through a Workflows webhook ("When a Teams webhook request is received"):
//! a `message` with one Adaptive Card attachment — the title, the text with the addressed people
//! mentioned (`<at>…</at>` plus `msteams.entities`), the lead's facts, a button into the CRM.
//! The workflow URL carries its signature, so it is a secret and never logged.

use serde_json::{Value, json};

use super::attempt::Attempt;
use crate::conf::SecretUrl;

/// The JSON the workflow receives.
pub fn payload(a: &Attempt<'_>) -> Value {
    let m = a.message;
    let mut facts = vec![
        json!({"title": "Lead", "value": m.lead}),
        json!({"title": "Owner", "value": if m.owner.is_empty() { "–" } else { &m.owner }}),
        json!({"title": "Deadline", "value": m.deadline}),
    ];
    if !m.late.is_empty() {
        facts.push(json!({"title": "Late by", "value": m.late}));
    }
    let entities: Vec<Value> = m
        .recipients
        .iter()
        .filter_map(|r| {
            let id = r.teams.as_ref()?;
            let name = r.name.clone().unwrap_or_else(|| r.id.clone());
            Some(json!({
                "type": "mention",
                "text": format!("<at>{name}</at>"),
                "mentioned": {"id": id, "name": name},
            }))
        })
        .collect();
    let mut card = json!({
        "$schema": "http://adaptivecards.io/schemas/adaptive-card.json",
        "type": "AdaptiveCard",
        "version": "1.4",
        "body": [
            {"type": "TextBlock", "text": m.title, "weight": "Bolder", "size": "Medium", "wrap": true},
            {"type": "TextBlock", "text": m.text, "wrap": true},
            {"type": "FactSet", "facts": facts},
            {"type": "TextBlock", "text": format!("{} · {}", a.alert.kind, a.alert.id()), "isSubtle": true, "size": "Small", "wrap": true},
        ],
    });
    if !m.link.is_empty() {
        card["actions"] =
            json!([{"type": "Action.OpenUrl", "title": "Open in CRM", "url": m.link}]);
    }
    if !entities.is_empty() {
        card["msteams"] = json!({"entities": entities});
    }
    json!({
        "type": "message",
        "attachments": [{
            "contentType": "application/vnd.microsoft.card.adaptive",
            "contentUrl": null,
            "content": card,
        }],
    })
}

/// A Microsoft Teams Workflows webhook ("Post to a channel when a webhook request is
/// received"), carrying an Adaptive Card.
#[derive(Debug, Clone, eserde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TeamsConfig {
    /// The workflow's HTTP trigger URL (a secret: it carries its signature).
    #[eserde(compat)]
    pub webhook_url: SecretUrl,
    #[serde(default = "default_teams_rate")]
    pub max_per_second: Option<f64>,
}

fn default_teams_rate() -> Option<f64> {
    Some(4.0)
}
