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
        problems.extend(fields::unknown_names(&self.fields, &[]));
        problems
    }

    /// Without basic auth or a path secret, only the org id guards the source (logged at start).
    pub fn warning(&self) -> Option<&'static str> {
        (self.username.is_none() && self.path_secret.is_none()).then_some(
            "Salesforce source without basic auth or a path secret: only the org id (not a \
             secret) guards it. Restrict it by IP allowlist or client certificate at the \
             ingress (see README).",
        )
    }
}
