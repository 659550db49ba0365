//! Where alerts go: one module per kind of sink. Each turns one attempt at one alert into the
//! request(s) its API wants and classifies the answer; when to try again is
//! [`super::retry`]'s business, queueing and rate limits [`super::queue`]'s.
//!
//! Every sink treats the alert id as the idempotency key: the `webhook-id` of signed webhooks,
//! an external id (or a looked-up marker) in CRM tasks. Secrets (tokens, client secrets, chat
//! webhook URLs) never appear in errors, logs or `Debug`.

pub mod config;
pub mod crm;
pub mod hubspot;
pub mod log;
pub mod salesforce;
pub mod slack;
pub mod teams;
pub mod webhook;

use std::time::Duration;

use bytes::Bytes;
use jiff::Timestamp;

use super::retry::{self, is_retriable, retry_after};
use super::template::{Message, Style};
use crate::alert::Alert;
use crate::clock::Clock;
use crate::conf::SecretUrl;
pub use config::SinkConfig;

/// What every sink sends through: the HTTP client they share, and the clock that dates what
/// they send (webhook signatures, token assertions) and reads what comes back (`Retry-After`
/// dates).
#[derive(Debug, Clone)]
pub struct Http {
    pub client: reqwest::Client,
    pub clock: Clock,
}

impl Http {
    /// The client every sink shares: `request_timeout` per request (and to connect), our user
    /// agent.
    pub fn new(request_timeout: Duration, clock: Clock) -> Result<Http, reqwest::Error> {
        let client = reqwest::Client::builder()
            .timeout(request_timeout)
            .connect_timeout(request_timeout)
            .user_agent(concat!("leadwatch/", env!("CARGO_PKG_VERSION")))
            .build()?;
        Ok(Http { client, clock })
    }

    /// Sends one request (`what` names it in errors, without secrets): a 2xx is the answer,
    /// anything else the error it makes ([`DeliveryError::from_response`]).
    pub async fn send(
        &self,
        what: &str,
        request: reqwest::RequestBuilder,
    ) -> Result<reqwest::Response, DeliveryError> {
        let response = request
            .send()
            .await
            .map_err(|e| DeliveryError::transport(what, e))?;
        if response.status().is_success() {
            return Ok(response);
        }
        Err(DeliveryError::from_response(what, response, self.clock.now()).await)
    }
}

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
        self.http.send(&what, request).await?;
        Ok(Delivered::Sent)
    }
}

/// One attempt at delivering one alert to one sink.
pub struct Attempt<'a> {
    pub alert: &'a Alert,
    /// The alert's JSON, the same bytes on every attempt.
    pub body: &'a Bytes,
    /// 1 for the first attempt. After an earlier attempt whose outcome is unknown (a timeout, a
    /// 5xx), CRM sinks look for what it may have created before creating it again.
    pub attempt: u32,
    /// The alert was in `{prefix}.alerts` before this dispatcher took its partition: whoever
    /// had it before (this process before a restart, another member before a rebalance) may
    /// have attempted it when it stopped, so CRM sinks look before creating, as on a retry.
    pub maybe_attempted: bool,
    /// The rendered message (title, text, facts) for this sink.
    pub message: &'a Message,
}

impl Attempt<'_> {
    /// Whether an earlier attempt may have reached the sink (a retry, or an alert an earlier
    /// owner of its partition may have attempted): CRM sinks look before creating.
    pub fn may_exist(&self) -> bool {
        self.attempt > 1 || self.maybe_attempted
    }
}

/// What a successful attempt did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Delivered {
    /// The sink has the alert.
    Sent,
    /// It was already there (a CRM task an earlier, uncertain attempt created).
    AlreadyThere,
    /// Not for this sink (e.g. a HubSpot lead routed to Salesforce); logged and counted.
    Skipped(String),
}

/// Why one delivery attempt failed.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{message}")]
pub struct DeliveryError {
    /// Worth trying again (timeouts, 5xx, 408/409/425/429, API limits); otherwise permanent.
    pub retriable: bool,
    /// What the sink asked us to wait (`Retry-After`, or its rate-limit headers).
    pub retry_after: Option<Duration>,
    /// Hold every request to this sink for this long (the whole endpoint is rate-limited).
    pub pause_sink: Option<Duration>,
    pub status: Option<u16>,
    /// What failed, without secrets.
    pub message: String,
    /// The start of the answer's body.
    pub excerpt: String,
}

impl DeliveryError {
    /// A transport failure (connect, timeout, reset): the request may or may not have arrived.
    pub fn transport(what: &str, e: reqwest::Error) -> Self {
        Self {
            retriable: true,
            retry_after: None,
            pause_sink: None,
            status: None,
            message: format!("{what}: {}", without_url(e)),
            excerpt: String::new(),
        }
    }

    pub fn permanent(message: impl Into<String>) -> Self {
        Self {
            retriable: false,
            retry_after: None,
            pause_sink: None,
            status: None,
            message: message.into(),
            excerpt: String::new(),
        }
    }

    /// From a non-2xx answer received at `now`: retriable as [`is_retriable`] says,
    /// `Retry-After` honoured.
    pub async fn from_response(what: &str, response: reqwest::Response, now: Timestamp) -> Self {
        let status = response.status().as_u16();
        let retry_after = retry_after(response.headers(), now);
        let excerpt = excerpt(response).await;
        Self {
            retriable: is_retriable(status),
            retry_after,
            pause_sink: if status == 429 { retry_after } else { None },
            status: Some(status),
            message: format!("{what} answered {status}"),
            excerpt,
        }
    }
}

impl retry::Failure for DeliveryError {
    fn retriable(&self) -> bool {
        self.retriable
    }
    fn retry_after(&self) -> Option<Duration> {
        self.retry_after
    }
}

/// The first 500 characters of a response body.
pub async fn excerpt(response: reqwest::Response) -> String {
    let text = response.text().await.unwrap_or_default();
    text.chars().take(500).collect()
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

/// A reqwest error's text without the URL (which may carry a secret), with its causes.
pub fn without_url(e: reqwest::Error) -> String {
    let timeout = e.is_timeout();
    let e = e.without_url();
    let mut text = e.to_string();
    let mut source = std::error::Error::source(&e);
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    if timeout && !text.contains("timed out") {
        text.push_str(" (timed out)");
    }
    text
}

/// A URL as it may be logged: no user info, no query.
pub fn redact(url: &url::Url) -> String {
    format!(
        "{}://{}{}",
        url.scheme(),
        url.host_str().unwrap_or(""),
        url.path()
    )
}

/// Truncates to at most `max` characters (CRM fields have limits).
pub fn truncate(s: &str, max: usize) -> String {
    if s.chars().count() <= max {
        s.to_string()
    } else {
        let mut t: String = s.chars().take(max.saturating_sub(1)).collect();
        t.push('…');
        t
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
