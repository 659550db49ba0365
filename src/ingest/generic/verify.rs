//! Whether a request is signed per Standard Webhooks (`webhook-id`, `webhook-timestamp`,
//! `webhook-signature`) with one of the source's `whsec_` secrets, within the timestamp
//! tolerance; the check itself is [`crate::signature`]'s.

use super::config::GenericConfig;
use crate::ingest::{Head, IngestError, Request, Verify};
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

/// The Standard Webhooks headers of a request.
fn signed_headers(headers: &http::HeaderMap) -> SignedHeaders<'_> {
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    SignedHeaders {
        id: header("webhook-id"),
        timestamp: header("webhook-timestamp"),
        signature: header("webhook-signature"),
    }
}

impl Verify for Credentials {
    /// The headers are there and the timestamp is in time: checked before the body is read.
    fn authenticate_head(&self, head: &Head<'_>) -> Result<(), IngestError> {
        signature::check_headers(
            &signed_headers(head.headers),
            head.now.as_second(),
            signature::DEFAULT_TOLERANCE_SECS,
        )
        .map_err(|e| IngestError::Unauthorized(e.to_string()))
    }

    /// Checks the signature over the raw bytes, before anything is parsed.
    fn authenticate(&self, req: &Request<'_>) -> Result<(), IngestError> {
        let signed = signed_headers(req.headers);
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
