//! `[sources.NAME] kind = "marketo"`: Marketo "Call Webhook" flow steps.

use std::collections::BTreeMap;

use crate::conf::{HumanDuration, KeyProblems, PlainSecrets};
use crate::ingest::fields;

/// Keys of `[sources.NAME.fields]` besides the canonical names.
pub const STRUCTURAL: &[&str] = &["lead", "id", "occurred_at", "activity", "activity_by"];

/// Marketo "Call Webhook" flow steps: a JSON body templated by the admin, authenticated by a
/// header that carries a shared secret.
#[derive(Debug, Clone, eserde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MarketoConfig {
    /// The request header that carries the secret, e.g. `X-Leadwatch-Token`.
    pub header: String,
    #[eserde(compat)]
    pub secret: PlainSecrets,
    #[serde(default)]
    pub link: Option<String>,
    #[serde(default)]
    #[eserde(compat)]
    pub dedupe_window: Option<HumanDuration>,
    /// JSON pointers into the templated body: `lead` (required by default `/leadId`), `id`,
    /// `occurred_at`, `activity`, `activity_by`, and canonical field names.
    #[serde(default)]
    pub fields: BTreeMap<String, String>,
    /// The IANA time zone of an `occurred_at` without an offset (Marketo's
    /// `{{system.dateTime}}` is `2026-11-25 09:30:00` in the instance's zone); default UTC.
    #[serde(default)]
    pub time_zone: Option<String>,
}

impl MarketoConfig {
    /// Every problem beyond the types, keys relative to `sources.NAME`.
    pub fn problems(&self) -> KeyProblems {
        let mut problems = KeyProblems::new();
        if http::HeaderName::from_bytes(self.header.as_bytes()).is_err() {
            let header = &self.header;
            problems.push(("header".into(), format!("`{header}` is not a header name")));
        }
        if let Some(tz) = &self.time_zone
            && jiff::tz::TimeZone::get(tz).is_err()
        {
            problems.push((
                "time_zone".into(),
                format!("`{tz}` is not an IANA time zone such as \"America/Chicago\""),
            ));
        }
        problems.extend(fields::unknown_names(&self.fields, STRUCTURAL));
        for (key, pointer) in &self.fields {
            if !pointer.is_empty() && !pointer.starts_with('/') {
                problems.push((
                    format!("fields.{key}"),
                    format!("`{pointer}` is not a JSON pointer such as \"/leadId\""),
                ));
            }
        }
        if self.fields.get("lead").is_some_and(|p| p.is_empty()) {
            problems.push((
                "fields.lead".into(),
                "the lead id is required: give its JSON pointer".into(),
            ));
        }
        problems
    }
}

/// Settings for tests: header `X-Leadwatch-Token` with two secrets (rotating), and `fields`
/// lines under `[fields]`.
#[cfg(test)]
pub(super) fn example(fields: &str) -> MarketoConfig {
    crate::ingest::testing::source_config(&format!(
        "header = \"X-Leadwatch-Token\"\nsecret = [\"t0k3n-new\", \"t0k3n-old\"]\n\
         [fields]\n{fields}"
    ))
}
