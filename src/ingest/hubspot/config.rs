//! `[sources.NAME] kind = "hubspot"`: HubSpot webhook subscriptions.

use std::collections::BTreeMap;

use url::Url;

use crate::conf::{HumanDuration, KeyProblems, PlainSecrets};
use crate::ingest::fields;

/// HubSpot webhook subscriptions (a JSON array of up to 100 events), signed with the app's
/// client secret.
#[derive(Debug, Clone, eserde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HubspotConfig {
    /// The app's client secret, or a list while rotating.
    #[eserde(compat)]
    pub secret: PlainSecrets,
    /// The URL HubSpot calls (its v3 signature covers it; behind an ingress our Host differs).
    /// Kept as written: HubSpot signs the string it was given, not a normalised URL.
    pub public_url: String,
    /// Also accept the older `X-HubSpot-Signature` (v1, v2), which carry no timestamp.
    #[serde(default)]
    pub legacy_signatures: bool,
    /// When set, only these HubSpot accounts (portal ids) are accepted; others get 403.
    #[serde(default)]
    pub portal_ids: Vec<u64>,
    #[serde(default)]
    pub link: Option<String>,
    #[serde(default)]
    #[eserde(compat)]
    pub dedupe_window: Option<HumanDuration>,
    /// Canonical field name → HubSpot property name, over the defaults.
    #[serde(default)]
    pub fields: BTreeMap<String, String>,
}

impl HubspotConfig {
    /// Every problem beyond the types, keys relative to `sources.NAME`.
    pub fn problems(&self) -> KeyProblems {
        let mut problems = KeyProblems::new();
        match Url::parse(self.public_url.trim()) {
            Ok(url) if matches!(url.scheme(), "http" | "https") => {}
            Ok(_) => problems.push(("public_url".into(), "must be an http(s) URL".into())),
            Err(e) => problems.push(("public_url".into(), format!("not a URL: {e}"))),
        }
        problems.extend(fields::unknown_names(&self.fields, &[]));
        problems
    }

    /// Without `portal_ids`, any account's requests are taken (logged at start).
    pub fn warning(&self) -> Option<&'static str> {
        self.portal_ids.is_empty().then_some(
            "HubSpot source without `portal_ids`: every account that installs the app sends \
             requests signed with its secret, and they would all write to the same \
             `hubspot:{id}` leads. List your portal id.",
        )
    }
}

/// HubSpot's documentation and SDK examples sign with this client secret.
#[cfg(test)]
pub(super) const EXAMPLE_SECRET: &str = "yyyyyyyy-yyyy-yyyy-yyyy-yyyyyyyyyyyy";

/// Settings for tests: the documented client secret (after another, as while rotating), the
/// documented target URL, and `extra` lines.
#[cfg(test)]
pub(super) fn example(extra: &str) -> HubspotConfig {
    crate::ingest::testing::source_config(&format!(
        "secret = [\"other-secret\", \"{EXAMPLE_SECRET}\"]\n\
         public_url = \"https://www.example.com/webhook_uri\"\n{extra}"
    ))
}
