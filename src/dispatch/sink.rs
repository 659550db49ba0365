//! Where alerts go. Each sink turns one alert into one request; retrying is [`super::retry`]'s job.

use std::time::Duration;

use bytes::Bytes;
use reqwest::header::{HeaderMap, RETRY_AFTER};
use url::Url;

use crate::alert::Alert;
use crate::config::{Secrets, SinkConfig};

/// Why one delivery attempt failed.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{message}")]
pub struct DeliveryError {
    /// Worth trying again (timeouts, 5xx, 408/409/425/429); otherwise permanent.
    pub retriable: bool,
    /// What the sink asked us to wait (`Retry-After`).
    pub retry_after: Option<Duration>,
    pub status: Option<u16>,
    pub message: String,
}

/// A configured sink.
pub enum Sink {
    Webhook(WebhookSink),
    Log,
}

impl Sink {
    pub fn from_config(cfg: &SinkConfig, client: reqwest::Client) -> Sink {
        match cfg {
            SinkConfig::Webhook { url, secret } => Sink::Webhook(WebhookSink {
                url: url.clone(),
                secrets: secret.clone(),
                client,
            }),
            SinkConfig::Log {} => Sink::Log,
        }
    }

    /// One attempt. `body` is the alert's JSON, the same bytes on every attempt.
    pub async fn deliver(&self, alert: &Alert, body: &Bytes) -> Result<(), DeliveryError> {
        match self {
            Sink::Webhook(w) => w.deliver(alert, body).await,
            Sink::Log => {
                use std::io::Write;
                let mut out = std::io::stdout().lock();
                let written = out
                    .write_all(body)
                    .and_then(|_| out.write_all(b"\n"))
                    .and_then(|_| out.flush());
                written.map_err(|e| DeliveryError {
                    retriable: true,
                    retry_after: None,
                    status: None,
                    message: format!("writing to stdout: {e}"),
                })
            }
        }
    }
}

/// A Standard Webhooks-signed POST; `webhook-id` is the alert id, so a receiver can dedupe.
pub struct WebhookSink {
    url: Url,
    secrets: Secrets,
    client: reqwest::Client,
}

impl WebhookSink {
    async fn deliver(&self, alert: &Alert, body: &Bytes) -> Result<(), DeliveryError> {
        // Re-signed on every attempt with a fresh timestamp; the body never changes.
        let ts = jiff::Timestamp::now().as_second();
        let signature = self
            .secrets
            .0
            .iter()
            .map(|s| s.sign(alert.id(), ts, body))
            .collect::<Vec<_>>()
            .join(" ");
        let response = self
            .client
            .post(self.url.clone())
            .header("content-type", "application/json")
            .header("webhook-id", alert.id())
            .header("webhook-timestamp", ts.to_string())
            .header("webhook-signature", signature)
            .body(body.clone())
            .send()
            .await
            .map_err(|e| DeliveryError {
                retriable: true,
                retry_after: None,
                status: None,
                message: format!("POST {}: {}", redact(&self.url), without_url(e)),
            })?;
        let status = response.status();
        if status.is_success() {
            return Ok(());
        }
        let retry_after = retry_after(response.headers());
        let excerpt: String = response
            .text()
            .await
            .unwrap_or_default()
            .chars()
            .take(200)
            .collect();
        Err(DeliveryError {
            retriable: is_retriable(status.as_u16()),
            retry_after,
            status: Some(status.as_u16()),
            message: format!("POST {} answered {status}: {excerpt}", redact(&self.url)),
        })
    }
}

/// 5xx and the 4xx that mean "later" are worth retrying; other 4xx are permanent.
pub fn is_retriable(status: u16) -> bool {
    status >= 500 || matches!(status, 408 | 409 | 425 | 429)
}

/// `Retry-After` in seconds (the HTTP-date form is rare from webhook receivers).
pub fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    headers
        .get(RETRY_AFTER)?
        .to_str()
        .ok()?
        .trim()
        .parse::<u64>()
        .ok()
        .map(Duration::from_secs)
}

/// A URL as it may be logged: no user info, no query (tokens live there).
fn redact(url: &Url) -> String {
    format!(
        "{}://{}{}",
        url.scheme(),
        url.host_str().unwrap_or(""),
        url.path()
    )
}

fn without_url(e: reqwest::Error) -> String {
    let e = e.without_url();
    let mut text = e.to_string();
    let mut source = std::error::Error::source(&e);
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}
