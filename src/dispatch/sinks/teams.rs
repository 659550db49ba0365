//! Microsoft Teams through a Workflows webhook ("When a Teams webhook request is received"):
//! a `message` with one Adaptive Card attachment — the title, the text with the addressed people
//! mentioned (`<at>…</at>` plus `msteams.entities`), the lead's facts, a button into the CRM.
//! The workflow URL carries its signature, so it is a secret and never logged.

use serde_json::{Value, json};

use super::attempt::{Attempt, truncate_escaped};
use crate::conf::SecretUrl;
use crate::dispatch::template::{mention_name, teams_escape};

/// How much of each part of the card is kept, in characters (after escaping): Teams takes
/// messages up to about 28 KB, and these keep a card under 24 KB whatever the characters.
const TITLE_MAX: usize = 300;
const TEXT_MAX: usize = 4000;
const FACT_MAX: usize = 300;

/// The JSON the workflow receives. The message's values come escaped for Markdown from the
/// templates (`template::teams_escape`); each part is cut after escaping.
pub fn payload(a: &Attempt<'_>) -> Value {
    let m = a.message;
    let fact = |title: &str, value: &str| {
        let value = if value.is_empty() { "–" } else { value };
        json!({"title": title, "value": truncate_escaped(value, FACT_MAX)})
    };
    let mut facts = vec![
        fact("Lead", &m.lead),
        fact("Owner", &m.owner),
        fact("Deadline", &m.deadline),
    ];
    if !m.late.is_empty() {
        facts.push(fact("Late by", &m.late));
    }
    let text = truncate_escaped(&m.text, TEXT_MAX);
    // One entity per mention the (cut) text still holds: the same `<at>…</at>` the templates
    // wrote (`template::mention_name`, escaped alike).
    let entities: Vec<Value> = m
        .recipients
        .iter()
        .filter_map(|r| {
            let id = r.teams.as_ref()?;
            let name = mention_name(r);
            let at = format!("<at>{}</at>", teams_escape(&name));
            text.contains(&at).then(|| {
                json!({
                    "type": "mention",
                    "text": at,
                    "mentioned": {"id": id, "name": name},
                })
            })
        })
        .collect();
    let about = format!(
        "{} · {}",
        teams_escape(&a.alert.kind),
        teams_escape(a.alert.id())
    );
    let mut card = json!({
        "$schema": "http://adaptivecards.io/schemas/adaptive-card.json",
        "type": "AdaptiveCard",
        "version": "1.4",
        "body": [
            {"type": "TextBlock", "text": truncate_escaped(&m.title, TITLE_MAX), "weight": "Bolder", "size": "Medium", "wrap": true},
            {"type": "TextBlock", "text": text, "wrap": true},
            {"type": "FactSet", "facts": facts},
            {"type": "TextBlock", "text": truncate_escaped(&about, FACT_MAX), "isSubtle": true, "size": "Small", "wrap": true},
        ],
    });
    // Only an http(s) link fits (the templates keep no other).
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

#[cfg(test)]
mod tests {
    use bytes::Bytes;

    use super::*;
    use crate::alert::Alert;
    use crate::dispatch::template::{Style, Templates, sample_alert};

    fn card(alert: &Alert) -> Value {
        let message = Templates::new(&[])
            .unwrap()
            .render(alert, None, Style::Teams);
        let body = Bytes::from(serde_json::to_vec(alert).unwrap());
        payload(&Attempt {
            alert,
            body: &body,
            attempt: 1,
            maybe_attempted: false,
            message: &message,
        })["attachments"][0]["content"]
            .clone()
    }

    /// Every text of the card Teams reads as Markdown: the text blocks and the facts.
    fn texts(card: &Value) -> Vec<String> {
        let mut out = Vec::new();
        for block in card["body"].as_array().unwrap() {
            if let Some(t) = block["text"].as_str() {
                out.push(t.to_string());
            }
            for fact in block["facts"].as_array().into_iter().flatten() {
                out.push(fact["title"].as_str().unwrap().to_string());
                out.push(fact["value"].as_str().unwrap().to_string());
            }
        }
        out
    }

    /// A lead's fields are data, not markup: whatever a sender put in a name, a company or a
    /// message — a link, a mention, bold, a list, a date function — reads as written on the
    /// card, links nowhere and pings no one; the card's own mention still works.
    #[test]
    fn what_a_lead_says_cannot_link_mention_or_format_on_the_card() {
        let mut alert = sample_alert("sla.first_touch.breached");
        alert.data.lead_info.name =
            Some("**Boss** [click](https://evil.example) <at>Mona Manager</at>".into());
        alert.data.lead_info.company = Some("_Acme_ {{DATE(2017-02-14T06:00:00Z, SHORT)}}".into());
        alert.data.message = "Lead untouched.\n- [urgent](https://evil.example)".into();
        alert.data.owner = Some("~~005~~".into());
        alert.data.recipients.retain(|r| r.role == "owner");
        let card = card(&alert);
        let texts = texts(&card);
        for t in &texts {
            for markup in [
                "**Boss**", "](", "<at>Mona", "{{DATE", "\n-", "_Acme_", "~~005",
            ] {
                assert!(!t.contains(markup), "`{markup}` is live in {t:?}");
            }
        }
        let text = card["body"][1]["text"].as_str().unwrap();
        assert!(
            text.starts_with("<at>Alice Rep</at>: Lead untouched."),
            "{text}"
        );
        assert_eq!(
            card["msteams"]["entities"],
            serde_json::json!([{"type": "mention", "text": "<at>Alice Rep</at>", "mentioned": {"id": "owner@example.com", "name": "Alice Rep"}}])
        );
        // Escaped, not mangled: without its escapes the title says what the lead said.
        let title = card["body"][0]["text"].as_str().unwrap();
        assert_eq!(
            unescape(title),
            "First-touch SLA missed: **Boss** [click](https://evil.example) <at>Mona Manager</at>"
        );
    }

    /// CommonMark's backslash escapes undone.
    fn unescape(s: &str) -> String {
        let mut out = String::new();
        let mut chars = s.chars().peekable();
        while let Some(c) = chars.next() {
            match (c, chars.peek()) {
                ('\\', Some(n)) if n.is_ascii_punctuation() => {
                    out.push(*n);
                    chars.next();
                }
                _ => out.push(c),
            }
        }
        out
    }

    /// However long a lead's fields, the card stays within what Teams takes (about 28 KB a
    /// message), cut rather than refused.
    #[test]
    fn a_card_stays_within_what_teams_takes_however_long_the_fields() {
        let mut alert = sample_alert("sla.first_touch.escalated");
        alert.data.lead_info.name = Some("N".repeat(100_000));
        alert.data.lead_info.company = Some("C".repeat(100_000));
        alert.data.message = "M".repeat(300_000);
        alert.data.link = Some(format!("https://crm.example/{}", "l".repeat(10_000)));
        for r in &mut alert.data.recipients {
            r.name = Some("R".repeat(50_000));
        }
        let card = card(&alert);
        let size = serde_json::to_vec(&card).unwrap().len();
        assert!(size < 24_000, "{size} bytes");
        assert!(card["body"][1]["text"].as_str().unwrap().contains("MMMM"));
        // A link too long to keep whole is left out rather than cut into a wrong one.
        assert!(card.get("actions").is_none(), "{}", card["actions"]);
    }
}
