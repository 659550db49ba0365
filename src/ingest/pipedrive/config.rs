//! `[sources.NAME] kind = "pipedrive"`: Pipedrive webhooks v2.

use std::collections::BTreeMap;

use serde::Deserialize;

use crate::conf::{HumanDuration, KeyProblems, PlainSecrets};
use crate::ingest::fields;

/// Pipedrive webhooks v2, with HTTP basic auth.
#[derive(Debug, Clone, eserde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PipedriveConfig {
    pub username: String,
    #[eserde(compat)]
    pub password: PlainSecrets,
    #[serde(default)]
    pub link: Option<String>,
    #[serde(default)]
    #[eserde(compat)]
    pub dedupe_window: Option<HumanDuration>,
    /// Canonical field name → Pipedrive field key (custom fields by their hash key).
    #[serde(default)]
    pub fields: BTreeMap<String, String>,
    /// Which record's owner is the lead's `owner`: `person` (the default), `lead` (Leads
    /// Inbox) or `deal`. The others' owners are `person_owner`, `lead_owner`, `deal_owner`.
    #[serde(default)]
    #[eserde(compat)]
    pub owner_from: PipedriveOwner,
}

/// Which Pipedrive record's owner owns the lead.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PipedriveOwner {
    #[default]
    Person,
    Lead,
    Deal,
}

impl PipedriveConfig {
    /// Every problem beyond the types, keys relative to `sources.NAME`.
    pub fn problems(&self) -> KeyProblems {
        let mut problems = KeyProblems::new();
        if self.username.is_empty() {
            problems.push(("username".into(), "must not be empty".into()));
        }
        problems.extend(fields::unknown_names(&self.fields, &[]));
        problems
    }
}

/// Settings for tests: basic auth `pd` / `s3cret`, and `fields` lines under `[fields]`.
#[cfg(test)]
pub(super) fn example(fields: &str) -> PipedriveConfig {
    crate::ingest::testing::source_config(&format!(
        "username = \"pd\"\npassword = \"s3cret\"\n[fields]\n{fields}"
    ))
}
