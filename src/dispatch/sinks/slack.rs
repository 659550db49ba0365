//! Slack incoming webhooks: a `text` (the notification and fallback) plus Block Kit `blocks`
//! (header, the message with the recipient mentioned, the lead's facts, a button into the CRM).
//!
//! Slack allows about one message per second per webhook and answers 429 with `Retry-After`
//! beyond it: the sink's queue paces requests (`max_per_second`, default 1) and a 429 holds the
//! whole webhook for as long as Slack asks. Errors such as 404 `channel_not_found` or 410
//! `channel_is_archived` are permanent. The webhook URL is a secret and is never logged.

use serde_json::{Value, json};

use super::attempt::{Attempt, truncate};
use crate::conf::SecretUrl;
use crate::dispatch::template::slack_escape;

/// The JSON Slack receives.
pub fn payload(a: &Attempt<'_>) -> Value {
    let m = a.message;
    let mut fields = vec![
        json!({"type": "mrkdwn", "text": format!("*Lead*\n{}", m_or_dash(&slack_escape(&m.lead)))}),
    ];
    fields.push(json!({"type": "mrkdwn", "text": format!("*Owner*\n{}", m_or_dash(&slack_escape(&m.owner)))}));
    fields.push(json!({"type": "mrkdwn", "text": format!("*Deadline*\n{}", m.deadline)}));
    if !m.late.is_empty() {
        fields.push(json!({"type": "mrkdwn", "text": format!("*Late by*\n{}", m.late)}));
    }
    let mut blocks = vec![
        json!({"type": "header", "text": {"type": "plain_text", "text": truncate(&m.title, 150), "emoji": true}}),
        json!({"type": "section", "text": {"type": "mrkdwn", "text": truncate(&m.text, 3000)}}),
        json!({"type": "section", "fields": fields}),
    ];
    if !m.link.is_empty() {
        blocks.push(json!({"type": "actions", "elements": [{
            "type": "button",
            "text": {"type": "plain_text", "text": "Open in CRM"},
            "url": m.link,
        }]}));
    }
    blocks.push(json!({"type": "context", "elements": [{
        "type": "mrkdwn",
        "text": format!("{} · {}", a.alert.kind, a.alert.id()),
    }]}));
    json!({
        "text": format!("{}\n{}", slack_escape(&m.title), m.text),
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
