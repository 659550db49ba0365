//! One attempt at one sink: what a sink is given ([`Attempt`]), what it comes to ([`Delivered`],
//! [`DeliveryError`], which knows whether it is worth retrying), and the HTTP every sink sends
//! through ([`Http`]: the shared client, the clock, a request's answer classified once; errors
//! and logs without secrets). A leaf of `sinks/`: every sink imports it, it imports no sink.

use std::time::Duration;

use bytes::Bytes;
use jiff::Timestamp;

use crate::alert::Alert;
use crate::clock::Clock;
use crate::dispatch::retry::{self, is_retriable, retry_after};
use crate::dispatch::template::Message;

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

/// As [`truncate`], for escaped text (Slack's `&amp;`, Markdown's `\*`): the cut never splits
/// an escape, which would show half of it.
pub fn truncate_escaped(s: &str, max: usize) -> String {
    if s.chars().count() <= max {
        return s.to_string();
    }
    let mut t: String = s.chars().take(max.saturating_sub(1)).collect();
    // An entity begun and not ended, or a backslash whose character was cut off.
    if let Some(amp) = t.rfind('&')
        && !t[amp..].contains(';')
    {
        t.truncate(amp);
    }
    let backslashes = t.chars().rev().take_while(|c| *c == '\\').count();
    if backslashes % 2 == 1 {
        t.pop();
    }
    t.push('…');
    t
}
