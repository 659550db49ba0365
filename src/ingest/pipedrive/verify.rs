//! Whether a request is Pipedrive's: the HTTP basic auth given when the webhook was created
//! (`http_auth_user`, `http_auth_password`), checked in constant time.

use super::config::PipedriveConfig;
use crate::conf::PlainSecrets;
use crate::ingest::{Head, IngestError, Request, Verify, auth};

/// The basic-auth credentials a Pipedrive request must carry (any of the passwords).
#[derive(Debug)]
pub struct Credentials {
    username: String,
    passwords: PlainSecrets,
}

impl Credentials {
    pub fn from_config(cfg: &PipedriveConfig) -> Self {
        Self {
            username: cfg.username.clone(),
            passwords: cfg.password.clone(),
        }
    }
}

impl Verify for Credentials {
    /// Basic auth is all there is: checked before the body is read.
    fn authenticate_head(&self, head: &Head<'_>) -> Result<(), IngestError> {
        auth::check_basic(head.headers, &self.username, &self.passwords.0)
            .map_err(IngestError::Unauthorized)
    }

    fn authenticate(&self, req: &Request<'_>) -> Result<(), IngestError> {
        self.authenticate_head(&req.head())
    }
}
