//! `[sources.NAME] kind = "generic"`: the canonical event format, signed per Standard Webhooks.

use crate::conf::{HumanDuration, KeyProblems};
use crate::signature::Secrets;

/// The canonical event format, signed per Standard Webhooks.
#[derive(Debug, Clone, eserde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GenericConfig {
    /// `whsec_…`, or a list of them while rotating.
    #[eserde(compat)]
    pub secret: Secrets,
    #[serde(default)]
    pub link: Option<String>,
    #[serde(default)]
    #[eserde(compat)]
    pub dedupe_window: Option<HumanDuration>,
}

impl GenericConfig {
    /// Every problem beyond the types, keys relative to `sources.NAME`.
    pub fn problems(&self) -> KeyProblems {
        KeyProblems::new()
    }
}
