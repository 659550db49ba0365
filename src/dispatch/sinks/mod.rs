//! Where alerts go: one module per kind of sink. Each turns one attempt at one alert into the
//! request(s) its API wants and classifies the answer; when to try again is
//! [`super::retry`]'s business, queueing and rate limits [`super::queue`]'s.
//!
//! Every sink treats the alert id as the idempotency key: the `webhook-id` of signed webhooks,
//! an external id (or a looked-up marker) in CRM tasks. Secrets (tokens, client secrets, chat
//! webhook URLs) never appear in errors, logs or `Debug`.
//!
//! What every sink shares — the attempt, its outcome and the HTTP plumbing — is in [`attempt`],
//! what the CRM sinks share in [`crm`]; Slack and Teams are one [`ChatWebhook`] each with its
//! own payload; this module only picks the sink a `[sinks.NAME]` configures.

pub mod attempt;
pub mod config;
pub mod crm;
pub mod hubspot;
pub mod log;
pub mod salesforce;
pub mod slack;
pub mod teams;
pub mod webhook;

use super::template::Style;
use crate::conf::SecretUrl;
pub use attempt::{Attempt, Delivered, DeliveryError, Http};
pub use config::SinkConfig;

/// A chat's incoming webhook (Slack, Teams): the message as that chat's JSON (`payload`),
/// POSTed to a URL that is itself a secret and never logged.
pub struct ChatWebhook {
    url: SecretUrl,
    http: Http,
    payload: fn(&Attempt<'_>) -> serde_json::Value,
}

impl ChatWebhook {
    pub fn new(url: SecretUrl, http: Http, payload: fn(&Attempt<'_>) -> serde_json::Value) -> Self {
        Self { url, http, payload }
    }

    pub async fn deliver(&self, a: &Attempt<'_>) -> Result<Delivered, DeliveryError> {
        let what = format!("POST {}", self.url.redacted());
        let request = self
            .http
            .client
            .post(self.url.0.clone())
            .json(&(self.payload)(a));
        self.http.send_secret(&what, request).await?;
        Ok(Delivered::Sent)
    }
}

/// A configured sink.
pub enum Sink {
    Webhook(webhook::WebhookSink),
    Log,
    Slack(ChatWebhook),
    Teams(ChatWebhook),
    Salesforce(Box<salesforce::SalesforceSink>),
    Hubspot(hubspot::HubspotSink),
}

impl std::fmt::Debug for Sink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Sink({})", self.kind())
    }
}

impl Sink {
    pub fn from_config(cfg: &SinkConfig, http: Http) -> Sink {
        match cfg {
            SinkConfig::Webhook(c) => Sink::Webhook(webhook::WebhookSink::new(
                c.url.clone(),
                c.secret.clone(),
                http,
            )),
            SinkConfig::Log(_) => Sink::Log,
            SinkConfig::Slack(c) => Sink::Slack(ChatWebhook::new(
                c.webhook_url.clone(),
                http,
                slack::payload,
            )),
            SinkConfig::Teams(c) => Sink::Teams(ChatWebhook::new(
                c.webhook_url.clone(),
                http,
                teams::payload,
            )),
            SinkConfig::Salesforce(c) => {
                Sink::Salesforce(Box::new(salesforce::SalesforceSink::from_config(c, http)))
            }
            SinkConfig::Hubspot(c) => Sink::Hubspot(hubspot::HubspotSink::from_config(c, http)),
        }
    }

    /// Counts under `name` (`[sinks.NAME]`) what the sink reports beside its outcome: the
    /// suggested reassignments a CRM sink leaves alone.
    pub fn observed(
        mut self,
        name: &str,
        metrics: std::sync::Arc<crate::telemetry::Metrics>,
    ) -> Sink {
        match &mut self {
            Sink::Salesforce(s) => s.observed(name, metrics),
            Sink::Hubspot(s) => s.observed(name, metrics),
            _ => {}
        }
        self
    }

    pub fn kind(&self) -> &'static str {
        match self {
            Sink::Webhook(_) => "webhook",
            Sink::Log => "log",
            Sink::Slack(_) => "slack",
            Sink::Teams(_) => "teams",
            Sink::Salesforce(_) => "salesforce",
            Sink::Hubspot(_) => "hubspot",
        }
    }

    /// How this sink writes messages.
    pub fn style(&self) -> Style {
        match self {
            Sink::Slack(_) => Style::Slack,
            Sink::Teams(_) => Style::Teams,
            _ => Style::Plain,
        }
    }

    /// What an attempt comes to without a request, when the alert alone decides it: an alert
    /// no sink takes ([`attempt::refusal`]) is refused for good; a CRM sink skips another
    /// system's lead and refuses a record id it cannot put in a URL. No pause, pace or
    /// concurrency limit applies to these.
    pub fn precheck(&self, a: &Attempt<'_>) -> Option<Result<Delivered, DeliveryError>> {
        if let Some(why) = attempt::refusal(a.alert) {
            return Some(Err(DeliveryError::permanent(why)));
        }
        match self {
            Sink::Salesforce(_) => crm::record_id(a, "salesforce", "Salesforce").err(),
            Sink::Hubspot(_) => crm::record_id(a, "hubspot", "HubSpot").err(),
            _ => None,
        }
    }

    /// One attempt.
    pub async fn deliver(&self, a: &Attempt<'_>) -> Result<Delivered, DeliveryError> {
        match self {
            Sink::Webhook(s) => s.deliver(a).await,
            Sink::Log => log::deliver(a),
            Sink::Slack(s) => s.deliver(a).await,
            Sink::Teams(s) => s.deliver(a).await,
            Sink::Salesforce(s) => s.deliver(a).await,
            Sink::Hubspot(s) => s.deliver(a).await,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn salesforce(extra: serde_json::Value) -> SinkConfig {
        let mut v = serde_json::json!({
            "kind": "salesforce",
            "instance_url": "https://example.my.salesforce.com",
            "token_url": "https://login.salesforce.com/services/oauth2/token",
            "client_id": "cid",
        });
        v.as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        serde_json::from_value(v).unwrap()
    }

    fn keys(cfg: &SinkConfig) -> Vec<String> {
        cfg.problems().into_iter().map(|(k, _)| k).collect()
    }

    #[test]
    fn salesforce_needs_exactly_one_way_to_its_token() {
        assert!(keys(&salesforce(serde_json::json!({"client_secret": "s"}))).is_empty());
        assert_eq!(keys(&salesforce(serde_json::json!({}))), ["client_secret"]);
        assert_eq!(
            keys(&salesforce(
                serde_json::json!({"client_secret": "s", "private_key": "k"})
            )),
            ["private_key"]
        );
        assert_eq!(
            keys(&salesforce(serde_json::json!({"private_key": "not a key"}))),
            ["username", "private_key"]
        );
        assert_eq!(
            keys(&salesforce(
                serde_json::json!({"client_secret": "s", "api_version": "v62", "external_id_field": "x-y", "max_per_second": 0.0})
            )),
            ["max_per_second", "api_version", "external_id_field"]
        );
    }
}
