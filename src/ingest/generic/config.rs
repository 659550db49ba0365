//! `[sources.NAME] kind = "generic"`: the canonical event format, signed per Standard Webhooks.

use crate::conf::{HumanDuration, KeyProblems};
use crate::ingest::NAMESPACES;
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
    /// The other systems (`hubspot`, `salesforce`, `marketo`, `pipedrive`) this source may name
    /// leads of, as `{system}:{object id}`. None by default: a `lead` or `into` in another
    /// system's namespace is refused (400), so a generic sender cannot touch, close or reassign
    /// a CRM's leads.
    #[serde(default)]
    pub namespaces: Vec<String>,
}

impl GenericConfig {
    /// Every problem beyond the types, keys relative to `sources.NAME`.
    pub fn problems(&self) -> KeyProblems {
        let mut problems = KeyProblems::new();
        for (i, ns) in self.namespaces.iter().enumerate() {
            if !NAMESPACES.contains(&ns.as_str()) {
                problems.push((
                    format!("namespaces.{i}"),
                    format!("`{ns}` is not one of {}", NAMESPACES.join(", ")),
                ));
            }
        }
        problems
    }
}
