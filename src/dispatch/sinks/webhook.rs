//! A Standard Webhooks-signed POST of the alert's JSON; `webhook-id` is the alert id, so a
//! receiver can drop a repeat.

use url::Url;

use super::attempt::{Attempt, Delivered, DeliveryError, Http, redact};
use crate::conf::KeyProblems;
use crate::signature::{self, Secrets};

pub struct WebhookSink {
    url: Url,
    secrets: Secrets,
    http: Http,
}

impl WebhookSink {
    pub fn new(url: Url, secrets: Secrets, http: Http) -> Self {
        Self { url, secrets, http }
    }

    pub async fn deliver(&self, a: &Attempt<'_>) -> Result<Delivered, DeliveryError> {
        // Re-signed on every attempt with a fresh timestamp; the body never changes.
        let ts = self.http.clock.now().as_second();
        let what = format!("POST {}", redact(&self.url));
        let mut request = self
            .http
            .client
            .post(self.url.clone())
            .header("content-type", "application/json")
            .body(a.body.clone());
        for (name, value) in signature::headers(&self.secrets.0, a.alert.id(), ts, a.body) {
            request = request.header(name, value);
        }
        self.http.send(&what, request).await?;
        Ok(Delivered::Sent)
    }
}

/// A Standard Webhooks-signed JSON POST.
#[derive(Debug, Clone, eserde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebhookConfig {
    #[eserde(compat)]
    pub url: Url,
    #[eserde(compat)]
    pub secret: Secrets,
    /// At most this many requests per second (none: no limit).
    #[serde(default)]
    pub max_per_second: Option<f64>,
}

impl WebhookConfig {
    /// Every problem beyond the types, keys relative to `sinks.NAME`.
    pub fn problems(&self) -> KeyProblems {
        let mut problems = KeyProblems::new();
        if !matches!(self.url.scheme(), "http" | "https") {
            problems.push(("url".into(), "must be an http or https URL".into()));
        }
        problems
    }
}
