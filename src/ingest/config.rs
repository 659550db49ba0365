//! `[server]` (the HTTP surface webhooks arrive on) and `[sources.NAME]` (one webhook endpoint
//! each, its settings owned by its vendor's module and chosen by `kind`).

use std::net::SocketAddr;
use std::time::Duration;

use url::Url;

use super::{generic, hubspot, marketo, pipedrive, salesforce};
use crate::conf::{HumanDuration, KeyProblems};

/// The HTTP surface.
#[derive(Debug, Clone, eserde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerConfig {
    /// Address to listen on.
    #[serde(default = "default_listen")]
    #[eserde(compat)]
    pub listen: SocketAddr,
    /// Largest accepted request body; larger gets 413.
    #[serde(default = "default_max_body")]
    pub max_body_bytes: u64,
    /// A client must send its request headers within this time, or the connection is closed.
    #[serde(default = "default_header_timeout")]
    #[eserde(compat)]
    pub header_read_timeout: HumanDuration,
    /// A client must send its whole body within this time, or gets 408.
    #[serde(default = "default_body_timeout")]
    #[eserde(compat)]
    pub body_timeout: HumanDuration,
    /// How long ingest waits for Kafka to acknowledge a request's events before answering 503.
    /// Senders give up quickly (HubSpot counts 5 s as a failure), so keep it a few seconds.
    #[serde(default = "default_ack_timeout")]
    #[eserde(compat)]
    pub ack_timeout: HumanDuration,
    /// The `Retry-After` sent with a 503.
    #[serde(default = "default_retry_after")]
    #[eserde(compat)]
    pub retry_after: HumanDuration,
    /// A vendor's event id seen again within this window is not produced again (vendors retry
    /// for up to a day); a source may set its own `dedupe_window`.
    #[serde(default = "default_dedupe_window")]
    #[eserde(compat)]
    pub dedupe_window: HumanDuration,
    /// Most event ids remembered for deduplication (the oldest are forgotten first).
    #[serde(default = "default_dedupe_capacity")]
    pub dedupe_capacity: usize,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            listen: default_listen(),
            max_body_bytes: default_max_body(),
            header_read_timeout: default_header_timeout(),
            body_timeout: default_body_timeout(),
            ack_timeout: default_ack_timeout(),
            retry_after: default_retry_after(),
            dedupe_window: default_dedupe_window(),
            dedupe_capacity: default_dedupe_capacity(),
        }
    }
}

fn default_listen() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 8080))
}
fn default_max_body() -> u64 {
    1024 * 1024
}
fn default_header_timeout() -> HumanDuration {
    HumanDuration(Duration::from_secs(5))
}
fn default_body_timeout() -> HumanDuration {
    HumanDuration(Duration::from_secs(10))
}
fn default_ack_timeout() -> HumanDuration {
    HumanDuration(Duration::from_secs(3))
}
fn default_retry_after() -> HumanDuration {
    HumanDuration(Duration::from_secs(5))
}
fn default_dedupe_window() -> HumanDuration {
    HumanDuration(Duration::from_secs(24 * 3600))
}
fn default_dedupe_capacity() -> usize {
    100_000
}

impl ServerConfig {
    /// Every problem of `[server]` beyond its types, keys relative to the section.
    pub fn problems(&self) -> KeyProblems {
        let mut problems = KeyProblems::new();
        if self.max_body_bytes == 0 {
            problems.push(("max_body_bytes".into(), "must be larger than zero".into()));
        }
        if self.dedupe_capacity == 0 {
            problems.push(("dedupe_capacity".into(), "must be at least 1".into()));
        }
        problems
    }
}

/// A webhook endpoint, `POST /webhooks/NAME`. Every kind takes `link` (a template of a link
/// into the CRM, `{id}` standing for the object id) and `dedupe_window` (overrides the server's).
#[derive(Debug, Clone, eserde::Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum SourceConfig {
    Generic(generic::config::GenericConfig),
    Hubspot(hubspot::config::HubspotConfig),
    Salesforce(salesforce::config::SalesforceConfig),
    Marketo(marketo::config::MarketoConfig),
    Pipedrive(pipedrive::config::PipedriveConfig),
}

impl SourceConfig {
    /// The template of a link into the source's CRM (`{id}` = the object id of the lead key).
    pub fn link(&self) -> Option<&str> {
        match self {
            Self::Generic(c) => c.link.as_deref(),
            Self::Hubspot(c) => c.link.as_deref(),
            Self::Salesforce(c) => c.link.as_deref(),
            Self::Marketo(c) => c.link.as_deref(),
            Self::Pipedrive(c) => c.link.as_deref(),
        }
    }

    /// The source's own deduplication window, if it sets one.
    pub fn dedupe_window(&self) -> Option<Duration> {
        let window = match self {
            Self::Generic(c) => c.dedupe_window,
            Self::Hubspot(c) => c.dedupe_window,
            Self::Salesforce(c) => c.dedupe_window,
            Self::Marketo(c) => c.dedupe_window,
            Self::Pipedrive(c) => c.dedupe_window,
        };
        window.map(|d| d.0)
    }

    /// The `kind` as written in the file.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Generic(_) => "generic",
            Self::Hubspot(_) => "hubspot",
            Self::Salesforce(_) => "salesforce",
            Self::Marketo(_) => "marketo",
            Self::Pipedrive(_) => "pipedrive",
        }
    }

    /// What an operator should hear at start about settings that are valid but leave the
    /// source weakly guarded.
    pub fn warning(&self) -> Option<&'static str> {
        match self {
            Self::Hubspot(c) => c.warning(),
            Self::Salesforce(c) => c.warning(),
            Self::Generic(_) | Self::Marketo(_) | Self::Pipedrive(_) => None,
        }
    }

    /// Every problem of this source's settings, keys relative to `sources.NAME`.
    pub fn problems(&self) -> KeyProblems {
        let mut problems = KeyProblems::new();
        if let Some(link) = self.link() {
            let ok = Url::parse(&link.replace("{id}", "x"))
                .is_ok_and(|u| matches!(u.scheme(), "http" | "https"));
            if !ok || !link.contains("{id}") {
                problems.push((
                    "link".into(),
                    "must be an http(s) URL template containing `{id}`".into(),
                ));
            }
        }
        problems.extend(match self {
            Self::Generic(c) => c.problems(),
            Self::Hubspot(c) => c.problems(),
            Self::Salesforce(c) => c.problems(),
            Self::Marketo(c) => c.problems(),
            Self::Pipedrive(c) => c.problems(),
        });
        problems
    }
}
