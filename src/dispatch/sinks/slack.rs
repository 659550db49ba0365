//! Slack incoming webhooks: a `text` (the notification and fallback) plus Block Kit `blocks`
//! (header, the message with the recipient mentioned, the lead's facts, a button into the CRM).
//!
//! Slack allows about one message per second per webhook and answers 429 with `Retry-After`
//! beyond it: the sink's queue paces requests (`max_per_second`, default 1) and a 429 holds the
//! whole webhook for as long as Slack asks. Errors such as 404 `channel_not_found` or 410
//! `channel_is_archived` are permanent. The webhook URL is a secret and is never logged.

use serde_json::{Value, json};

use super::attempt::{Attempt, truncate, truncate_escaped};
use crate::conf::SecretUrl;
use crate::dispatch::template::slack_escape;

/// Block Kit's limits, in characters: a header, a section's text, a field, a context element,
/// the message's fallback text.
const HEADER_MAX: usize = 150;
const SECTION_MAX: usize = 3000;
const FIELD_MAX: usize = 2000;
const CONTEXT_MAX: usize = 2000;
const TEXT_MAX: usize = 40_000;

/// The JSON Slack receives. Every text is escaped (the message's values by the templates) and
/// cut to Block Kit's limits after escaping, so no alert is refused with `invalid_blocks`.
pub fn payload(a: &Attempt<'_>) -> Value {
    let m = a.message;
    let field = |name: &str, value: &str| {
        let text = format!("*{name}*\n{}", m_or_dash(value));
        json!({"type": "mrkdwn", "text": truncate_escaped(&text, FIELD_MAX)})
    };
    let mut fields = vec![
        field("Lead", &slack_escape(&m.lead)),
        field("Owner", &slack_escape(&m.owner)),
        field("Deadline", &m.deadline),
    ];
    if !m.late.is_empty() {
        fields.push(field("Late by", &m.late));
    }
    let mut blocks = vec![
        json!({"type": "header", "text": {"type": "plain_text", "text": truncate(&m.title, HEADER_MAX), "emoji": true}}),
        json!({"type": "section", "text": {"type": "mrkdwn", "text": truncate_escaped(&m.text, SECTION_MAX)}}),
        json!({"type": "section", "fields": fields}),
    ];
    // Only an http(s) link fits for Slack's button (the templates keep no other).
    if !m.link.is_empty() {
        blocks.push(json!({"type": "actions", "elements": [{
            "type": "button",
            "text": {"type": "plain_text", "text": "Open in CRM"},
            "url": m.link,
        }]}));
    }
    let about = format!(
        "{} · {}",
        slack_escape(&a.alert.kind),
        slack_escape(a.alert.id())
    );
    blocks.push(json!({"type": "context", "elements": [{
        "type": "mrkdwn",
        "text": truncate_escaped(&about, CONTEXT_MAX),
    }]}));
    let text = format!("{}\n{}", slack_escape(&m.title), m.text);
    json!({
        "text": truncate_escaped(&text, TEXT_MAX),
        "blocks": blocks,
    })
}

fn m_or_dash(s: &str) -> &str {
    if s.is_empty() { "–" } else { s }
}

/// A Slack incoming webhook: text plus blocks, the recipient mentioned.
#[derive(Debug, Clone, eserde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SlackConfig {
    /// `https://hooks.slack.com/services/…` (a secret: whoever has it can post).
    #[eserde(compat)]
    pub webhook_url: SecretUrl,
    /// Slack allows one message per second per webhook; bursts wait their turn.
    #[serde(default = "default_slack_rate")]
    pub max_per_second: Option<f64>,
}

fn default_slack_rate() -> Option<f64> {
    Some(1.0)
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;

    use super::*;
    use crate::alert::Alert;
    use crate::dispatch::template::{Style, Templates, sample_alert};

    fn message(alert: &Alert) -> Value {
        let message = Templates::new(&[])
            .unwrap()
            .render(alert, None, Style::Slack);
        let body = Bytes::from(serde_json::to_vec(alert).unwrap());
        payload(&Attempt {
            alert,
            body: &body,
            attempt: 1,
            maybe_attempted: false,
            message: &message,
        })
    }

    /// Every mrkdwn text of the message: the fallback, sections, fields and context.
    fn mrkdwn(msg: &Value) -> Vec<String> {
        let mut out = vec![msg["text"].as_str().unwrap().to_string()];
        for block in msg["blocks"].as_array().unwrap() {
            let texts = [&block["text"]]
                .into_iter()
                .chain(block["fields"].as_array().into_iter().flatten())
                .chain(block["elements"].as_array().into_iter().flatten());
            for t in texts {
                if t["type"] == "mrkdwn" {
                    out.push(t["text"].as_str().unwrap().to_string());
                }
            }
        }
        out
    }

    /// Whatever an alert record says — its type, the lead's link, its fields — nothing in it
    /// becomes a Slack control sequence (`<!channel>`, `<@U…>`, `<url|text>`).
    #[test]
    fn nothing_an_alert_says_becomes_a_slack_control_sequence() {
        let mut alert = sample_alert("sla.first_touch.breached");
        alert.kind = "<!channel> <@U0BOSS0001>".into();
        alert.data.rule = "<!here>".into();
        alert.data.lead_info.name = Some("<https://evil.example|Jane>".into());
        alert.data.lead_info.company = Some("<!channel> & [x](https://evil.example)".into());
        alert.data.message = "Call <!everyone> now".into();
        alert.data.link = Some("https://crm.example/x?a=1&b=<!channel>".into());
        for t in mrkdwn(&message(&alert)) {
            for control in [
                "<!channel>",
                "<!here>",
                "<!everyone>",
                "<@U0BOSS0001>",
                "<https://evil",
            ] {
                assert!(!t.contains(control), "`{control}` is live in {t:?}");
            }
        }
    }

    /// A link that is not http(s), or too long for a button, gives no button.
    #[test]
    fn only_a_web_link_becomes_the_button() {
        let mut alert = sample_alert("sla.first_touch.breached");
        let button = |alert: &Alert| {
            message(alert)["blocks"]
                .as_array()
                .unwrap()
                .iter()
                .any(|b| b["type"] == "actions")
        };
        assert!(button(&alert));
        for link in [
            "javascript:alert(1)".to_string(),
            "not a url".into(),
            format!("https://crm.example/{}", "x".repeat(3000)),
        ] {
            alert.data.link = Some(link.clone());
            assert!(!button(&alert), "{link}");
        }
    }

    /// However long a lead's fields, every block stays within Block Kit's limits (header 150,
    /// section 3,000, field 2,000, context 2,000 characters; fallback text 40,000): cut, never
    /// refused with `invalid_blocks`.
    #[test]
    fn every_block_stays_within_block_kits_limits_however_long_the_fields() {
        let mut alert = sample_alert("sla.first_touch.breached");
        alert.kind = "K".repeat(10_000);
        alert.data.lead_info.name = Some("N&".repeat(50_000));
        alert.data.message = "M<".repeat(150_000);
        alert.data.owner = Some("O".repeat(100_000));
        alert.data.recipients.clear();
        let msg = message(&alert);
        let chars = |v: &Value| v.as_str().unwrap().chars().count();
        assert!(chars(&msg["text"]) <= 40_000);
        for block in msg["blocks"].as_array().unwrap() {
            match block["type"].as_str().unwrap() {
                "header" => assert!(chars(&block["text"]["text"]) <= 150),
                "section" if block.get("text").is_some() => {
                    assert!(chars(&block["text"]["text"]) <= 3000)
                }
                "section" => {
                    for f in block["fields"].as_array().unwrap() {
                        assert!(chars(&f["text"]) <= 2000);
                    }
                }
                "context" => {
                    for e in block["elements"].as_array().unwrap() {
                        assert!(chars(&e["text"]) <= 2000);
                    }
                }
                _ => {}
            }
        }
        // Cut after escaping, never inside an escape.
        for t in mrkdwn(&msg) {
            let end: String = t.chars().rev().take(8).collect();
            assert!(!t.contains("&l…") && !t.contains("&am…"), "…{end}");
        }
    }
}
