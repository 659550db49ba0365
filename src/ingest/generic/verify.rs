//! Whether a request is signed per Standard Webhooks (`webhook-id`, `webhook-timestamp`,
//! `webhook-signature`) with one of the source's `whsec_` secrets, within the timestamp
//! tolerance; the check itself is [`crate::signature`]'s.

use super::config::GenericConfig;
use crate::ingest::{IngestError, Request, Verify};
use crate::signature::{self, SignedHeaders, WebhookSecret};

/// The secrets a generic request may be signed with (any of them, while rotating).
#[derive(Debug)]
pub struct Credentials {
    secrets: Vec<WebhookSecret>,
}

impl Credentials {
    pub fn from_config(cfg: &GenericConfig) -> Self {
        Self {
            secrets: cfg.secret.0.clone(),
        }
    }
}

impl Verify for Credentials {
    /// Checks the signature over the raw bytes, before anything is parsed.
    fn authenticate(&self, req: &Request<'_>) -> Result<(), IngestError> {
        let header = |name: &str| req.headers.get(name).and_then(|v| v.to_str().ok());
        let signed = SignedHeaders {
            id: header("webhook-id"),
            timestamp: header("webhook-timestamp"),
            signature: header("webhook-signature"),
        };
        signature::verify(
            &self.secrets,
            &signed,
            req.body,
            req.now.as_second(),
            signature::DEFAULT_TOLERANCE_SECS,
        )
        .map_err(|e| IngestError::Unauthorized(e.to_string()))
    }
}
