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
    /// agent, and no redirects followed: a redirect would carry the signature, the body and (to
    /// the same host) the credentials wherever the answer points; it is a failure instead
    /// ([`DeliveryError::from_response`]).
    pub fn new(request_timeout: Duration, clock: Clock) -> Result<Http, reqwest::Error> {
        let client = reqwest::Client::builder()
            .timeout(request_timeout)
            .connect_timeout(request_timeout)
            .redirect(reqwest::redirect::Policy::none())
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
        self.send_showing(what, request, Shown::Path).await
    }

    /// As [`Http::send`], to a URL that is itself a secret (a chat webhook): a redirect's
    /// target is named by its origin only.
    pub async fn send_secret(
        &self,
        what: &str,
        request: reqwest::RequestBuilder,
    ) -> Result<reqwest::Response, DeliveryError> {
        self.send_showing(what, request, Shown::Origin).await
    }

    async fn send_showing(
        &self,
        what: &str,
        request: reqwest::RequestBuilder,
        shown: Shown,
    ) -> Result<reqwest::Response, DeliveryError> {
        let response = request
            .send()
            .await
            .map_err(|e| DeliveryError::transport(what, e))?;
        if response.status().is_success() {
            return Ok(response);
        }
        Err(DeliveryError::answered(what, response, self.clock.now(), shown).await)
    }
}

/// How much of a URL from an answer (a redirect's `Location`) an error may say.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shown {
    /// Scheme, host, port and path ([`redact`]).
    Path,
    /// Scheme, host and port: the path may be a secret.
    Origin,
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

/// The longest alert id taken (the engine's are `alert_` and 32 hex digits).
pub const ALERT_ID_MAX: usize = 64;

/// Why no sink may take `alert`, if none may. An alert read from Kafka is untrusted: its id is
/// the idempotency key toward every sink (a `webhook-id` header, a Salesforce external id in a
/// URL, a search term, a Subject of at most 255 characters), so it must be 1 to
/// [`ALERT_ID_MAX`] ASCII letters, digits, `_` or `-`. Everything else an alert carries is
/// delivered — escaped, cut and clamped by each sink.
pub fn refusal(alert: &Alert) -> Option<String> {
    let id = &alert.data.alert_id;
    let fits = (1..=ALERT_ID_MAX).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
    (!fits).then(|| {
        format!(
            "the alert id `{}` ({} bytes) is no leadwatch alert id: 1 to {ALERT_ID_MAX} ASCII \
             letters, digits, `_` or `-`; refused without a request",
            truncate(id, 80),
            id.len()
        )
    })
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
#[derive(Debug, Clone, Default, thiserror::Error)]
#[error("{message}")]
pub struct DeliveryError {
    /// Worth trying again (timeouts, 5xx, 408/409/425/429, API limits); otherwise permanent.
    pub retriable: bool,
    /// What the sink asked us to wait (`Retry-After`, or its rate-limit headers).
    pub retry_after: Option<Duration>,
    /// Hold every request to this sink for this long (the whole endpoint is rate-limited).
    pub pause_sink: Option<Duration>,
    /// The sink's credentials were refused — a token endpoint's refusal, a 401 with a fresh (or
    /// a static) token, a token without the scopes it needs: no alert's fault, and every alert
    /// would meet it. Why, in a word (`token_refused`, `unauthorized`, `missing_scopes`): the
    /// queue pauses the whole sink under that reason ([`crate::dispatch::queue`]).
    pub credentials: Option<&'static str>,
    /// The sink is paused for its credentials: this delivery waits this long (until the sink's
    /// next probe) without using up an attempt; set by the queue, never by a sink.
    pub wait_for_sink: Option<Duration>,
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
            message: format!("{what}: {}", without_url(e)),
            ..Self::default()
        }
    }

    pub fn permanent(message: impl Into<String>) -> Self {
        Self {
            retriable: false,
            message: message.into(),
            ..Self::default()
        }
    }

    /// Worth another attempt later (no answer said so: a timeout of our own, a local failure).
    pub fn retriable(message: impl Into<String>) -> Self {
        Self {
            retriable: true,
            message: message.into(),
            ..Self::default()
        }
    }

    /// From a non-2xx answer received at `now`: retriable as [`is_retriable`] says,
    /// `Retry-After` honoured; a redirect is not followed, and says where it pointed.
    pub async fn from_response(what: &str, response: reqwest::Response, now: Timestamp) -> Self {
        Self::answered(what, response, now, Shown::Path).await
    }

    async fn answered(
        what: &str,
        response: reqwest::Response,
        now: Timestamp,
        shown: Shown,
    ) -> Self {
        let status = response.status().as_u16();
        let retry_after = retry_after(response.headers(), now);
        let mut message = format!("{what} answered {status}");
        let mut retriable = is_retriable(status);
        if response.status().is_redirection() {
            // A permanent move is for the operator to follow in the config; a temporary one
            // may end.
            retriable = !matches!(status, 301 | 308);
            let to = response
                .headers()
                .get(reqwest::header::LOCATION)
                .and_then(|l| l.to_str().ok())
                .and_then(|l| response.url().join(l).ok());
            message.push_str(&match (to, shown) {
                (Some(to), Shown::Path) => {
                    format!(", a redirect to {} (not followed)", redact(&to))
                }
                (Some(to), Shown::Origin) => {
                    format!(", a redirect to {}/… (not followed)", origin(&to))
                }
                (None, _) => ", a redirect (not followed)".to_string(),
            });
        }
        let excerpt = excerpt(response).await;
        Self {
            retriable,
            retry_after,
            pause_sink: if status == 429 { retry_after } else { None },
            status: Some(status),
            message,
            excerpt,
            ..Self::default()
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
    fn wait_for_sink(&self) -> Option<Duration> {
        self.wait_for_sink
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
    format!("{}{}", origin(url), url.path())
}

/// `scheme://host[:port]` of a URL.
pub fn origin(url: &url::Url) -> String {
    let port = url.port().map(|p| format!(":{p}")).unwrap_or_default();
    format!("{}://{}{port}", url.scheme(), url.host_str().unwrap_or(""))
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
