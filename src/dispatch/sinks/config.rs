//! `[sinks.NAME]`: one sink's settings, chosen by `kind`; each kind's settings live in its
//! module, next to the code that uses them.

// The Salesforce variant (and the type eserde derives from the enum) is large: sinks are loaded
// once at start, so a few hundred bytes per sink do not matter.
#![allow(clippy::large_enum_variant)]

use super::{hubspot, log, salesforce, slack, teams, webhook};
use crate::conf::KeyProblems;

/// Where alerts go: one `[sinks.NAME]`, its settings owned by its kind's module.
#[derive(Debug, Clone, eserde::Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum SinkConfig {
    Webhook(webhook::WebhookConfig),
    Log(log::LogConfig),
    Slack(slack::SlackConfig),
    Teams(teams::TeamsConfig),
    Salesforce(salesforce::SalesforceConfig),
    Hubspot(hubspot::HubspotConfig),
}

impl SinkConfig {
    /// The `kind` as written in the file.
    pub fn kind(&self) -> &'static str {
        match self {
            SinkConfig::Webhook(_) => "webhook",
            SinkConfig::Log(_) => "log",
            SinkConfig::Slack(_) => "slack",
            SinkConfig::Teams(_) => "teams",
            SinkConfig::Salesforce(_) => "salesforce",
            SinkConfig::Hubspot(_) => "hubspot",
        }
    }

    /// The configured request rate limit, if any.
    pub fn max_per_second(&self) -> Option<f64> {
        match self {
            SinkConfig::Webhook(c) => c.max_per_second,
            SinkConfig::Slack(c) => c.max_per_second,
            SinkConfig::Teams(c) => c.max_per_second,
            SinkConfig::Salesforce(c) => c.max_per_second,
            SinkConfig::Hubspot(c) => c.max_per_second,
            SinkConfig::Log(_) => None,
        }
    }

    /// Every problem of one `[sinks.NAME]` beyond its types, keys relative to it.
    pub fn problems(&self) -> KeyProblems {
        let mut problems = match self {
            SinkConfig::Webhook(c) => c.problems(),
            _ => KeyProblems::new(),
        };
        if let Some(rate) = self.max_per_second()
            && !(rate > 0.0 && rate.is_finite())
        {
            problems.push(("max_per_second".into(), "must be larger than zero".into()));
        }
        match self {
            SinkConfig::Salesforce(c) => problems.extend(c.problems()),
            SinkConfig::Hubspot(c) => problems.extend(c.problems()),
            _ => {}
        }
        problems
    }
}
