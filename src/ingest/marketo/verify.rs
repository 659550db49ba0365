//! Whether a request is Marketo's. Marketo cannot sign: the webhook sends a configured header
//! (`header`) with a shared secret, compared in constant time (a list rotates).

use super::config::MarketoConfig;
use crate::conf::PlainSecrets;
use crate::ingest::{Head, IngestError, Request, Verify, auth};

/// The header a Marketo request must carry, and the secrets it may hold.
#[derive(Debug)]
pub struct Credentials {
    /// Lowercase, as `HeaderMap` looks names up.
    pub header: String,
    secrets: PlainSecrets,
}

impl Credentials {
    pub fn from_config(cfg: &MarketoConfig) -> Self {
        Self {
            header: cfg.header.to_ascii_lowercase(),
            secrets: cfg.secret.clone(),
        }
    }
}

impl Verify for Credentials {
    /// The header token is all there is: checked before the body is read.
    fn authenticate_head(&self, head: &Head<'_>) -> Result<(), IngestError> {
        let Some(given) = head.headers.get(self.header.as_str()) else {
            return Err(IngestError::Unauthorized(format!(
                "missing header `{}`",
                self.header
            )));
        };
        if auth::matches_any(given.as_bytes(), &self.secrets.0) {
            Ok(())
        } else {
            Err(IngestError::Unauthorized(format!(
                "wrong secret in header `{}`",
                self.header
            )))
        }
    }

    fn authenticate(&self, req: &Request<'_>) -> Result<(), IngestError> {
        self.authenticate_head(&req.head())
    }

    fn secret_headers(&self) -> Vec<String> {
        vec![self.header.clone()]
    }
}
