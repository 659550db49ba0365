//! `[sources.NAME] kind = "salesforce"`: Salesforce Outbound Messages.

use std::collections::BTreeMap;

use crate::conf::{HumanDuration, KeyProblems, PlainSecrets};
use crate::ingest::fields;

/// Salesforce Outbound Messages (SOAP).
#[derive(Debug, Clone, eserde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SalesforceConfig {
    /// The org ids (15 or 18 characters, `00D…`) whose messages are accepted; others get 403.
    pub organization_ids: Vec<String>,
    /// Basic auth, when the endpoint URL carries `user:password@`.
    #[serde(default)]
    pub username: Option<String>,
    #[serde(default)]
    #[eserde(compat)]
    pub password: Option<PlainSecrets>,
    /// A secret last path segment: `POST /webhooks/NAME/SECRET`.
    #[serde(default)]
    #[eserde(compat)]
    pub path_secret: Option<PlainSecrets>,
    #[serde(default)]
    pub link: Option<String>,
    #[serde(default)]
    #[eserde(compat)]
    pub dedupe_window: Option<HumanDuration>,
    /// Canonical field name → Salesforce field API name, over the defaults.
    #[serde(default)]
    pub fields: BTreeMap<String, String>,
    /// Accept messages with neither basic auth nor a path secret (only the org id, which is no
    /// secret, guards the source: restrict it at the ingress). `check-config` refuses such a
    /// source unless this says so.
    #[serde(default)]
    pub allow_unauthenticated: bool,
}

impl SalesforceConfig {
    /// Every problem beyond the types, keys relative to `sources.NAME`.
    pub fn problems(&self) -> KeyProblems {
        let mut problems = KeyProblems::new();
        if self.organization_ids.is_empty() {
            problems.push((
                "organization_ids".into(),
                "name at least one org id (Setup → Company Information)".into(),
            ));
        }
        for (i, id) in self.organization_ids.iter().enumerate() {
            let ok = (id.len() == 15 || id.len() == 18)
                && id.starts_with("00D")
                && id.chars().all(|c| c.is_ascii_alphanumeric());
            if !ok {
                problems.push((
                    format!("organization_ids.{i}"),
                    format!("`{id}` is not a Salesforce org id (15 or 18 characters, `00D…`)"),
                ));
            }
        }
        if self.username.is_some() != self.password.is_some() {
            problems.push((
                "username".into(),
                "basic auth needs both `username` and `password`".into(),
            ));
        }
        if self.unauthenticated() && !self.allow_unauthenticated {
            problems.push((
                "path_secret".into(),
                "neither basic auth (`username`, `password`) nor a `path_secret` guards this \
                 source: anyone who knows the org id (no secret) could post to it. Set one, or \
                 `allow_unauthenticated = true` if the ingress restricts it (IP allowlist, client \
                 certificate)"
                    .into(),
            ));
        }
        problems.extend(fields::unknown_names(&self.fields, &[]));
        problems
    }

    /// No credential at all is configured (a half-configured basic auth is its own problem).
    fn unauthenticated(&self) -> bool {
        self.username.is_none() && self.password.is_none() && self.path_secret.is_none()
    }

    /// Allowed without basic auth or a path secret, only the org id guards the source (logged
    /// at start).
    pub fn warning(&self) -> Option<&'static str> {
        (self.username.is_none() && self.path_secret.is_none()).then_some(
            "Salesforce source without basic auth or a path secret: only the org id (not a \
             secret) guards it. Restrict it by IP allowlist or client certificate at the \
             ingress (see README).",
        )
    }
}
