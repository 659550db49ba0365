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
    /// Longest string value of an event, in bytes as written in the event's JSON: a longer one
    /// is cut on a character boundary and ends with [`super::normalize::CUT_MARK`] (the raw
    /// topic keeps the original).
    #[serde(default = "default_max_field_bytes")]
    pub max_field_bytes: usize,
    /// Largest event as produced to `{prefix}.events`, in bytes: the longest values of a larger
    /// one are cut further; one still larger (its keys alone) is refused with 413. Must stay
    /// below the producer's `message.max.bytes` (checked).
    #[serde(default = "default_max_event_bytes")]
    pub max_event_bytes: usize,
    /// How far ahead of its arrival an event's time may be; later ones are clamped to the
    /// arrival time (a sender's clock, or a typo, must not freeze a lead's fields forever).
    #[serde(default = "default_max_clock_skew")]
    #[eserde(compat)]
    pub max_clock_skew: HumanDuration,
    /// Most open HTTP connections; one more is answered 503 (with `Retry-After`) and closed.
    #[serde(default = "default_max_connections")]
    pub max_connections: usize,
    /// Most webhook requests handled at once; one more is answered 503 (with `Retry-After`).
    #[serde(default = "default_max_requests_in_flight")]
    pub max_requests_in_flight: usize,
    /// Most bytes of request headers (names and values); more gets 431.
    #[serde(default = "default_max_header_bytes")]
    pub max_header_bytes: usize,
    /// On SIGTERM, how long `/readyz` says "draining" while the listener keeps serving, before
    /// it closes: the time an orchestrator takes to stop sending requests to a terminating
    /// instance (Kubernetes: a few seconds for its endpoints to update). At most a minute; a
    /// deployment setting it longer adds it to the termination grace period.
    #[serde(default = "default_drain_delay")]
    #[eserde(compat)]
    pub drain_delay: HumanDuration,
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
            max_field_bytes: default_max_field_bytes(),
            max_event_bytes: default_max_event_bytes(),
            max_clock_skew: default_max_clock_skew(),
            max_connections: default_max_connections(),
            max_requests_in_flight: default_max_requests_in_flight(),
            max_header_bytes: default_max_header_bytes(),
            drain_delay: default_drain_delay(),
        }
    }
}

fn default_drain_delay() -> HumanDuration {
    HumanDuration(Duration::from_secs(1))
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
fn default_max_field_bytes() -> usize {
    64 * 1024
}
fn default_max_event_bytes() -> usize {
    512 * 1024
}
fn default_max_clock_skew() -> HumanDuration {
    HumanDuration(Duration::from_secs(5 * 60))
}
fn default_max_connections() -> usize {
    1024
}
fn default_max_requests_in_flight() -> usize {
    512
}
fn default_max_header_bytes() -> usize {
    32 * 1024
}

pub use crate::bus::config::LIBRDKAFKA_MESSAGE_MAX_BYTES;

/// Room in a Kafka record for what is not the event's JSON: its key (a lead key, at most
/// [`super::MAX_KEY_LEN`] bytes) and the record's own framing.
pub const RECORD_OVERHEAD: usize = 4096;

/// Smallest `max_field_bytes`: a cut value keeps some of itself besides its mark.
const MIN_FIELD_BYTES: usize = 1024;

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
        if self.max_field_bytes < MIN_FIELD_BYTES {
            problems.push((
                "max_field_bytes".into(),
                format!("must be at least {MIN_FIELD_BYTES}"),
            ));
        }
        if self.max_event_bytes < self.max_field_bytes {
            problems.push((
                "max_event_bytes".into(),
                "must be at least `max_field_bytes`".into(),
            ));
        }
        if self.drain_delay.0 > Duration::from_secs(60) {
            problems.push(("drain_delay".into(), "must be at most 1m".into()));
        }
        for (key, value) in [
            ("max_connections", self.max_connections),
            ("max_requests_in_flight", self.max_requests_in_flight),
        ] {
            if value == 0 {
                problems.push((key.into(), "must be at least 1".into()));
            }
        }
        if self.max_header_bytes < 4096 {
            problems.push(("max_header_bytes".into(), "must be at least 4096".into()));
        }
        problems
    }

    /// Whether every event fits a Kafka record of at most `message_max_bytes` (the producer's
    /// `message.max.bytes`: `[kafka.options]`'s, else librdkafka's
    /// [`LIBRDKAFKA_MESSAGE_MAX_BYTES`]): one the producer refuses would turn every retry of
    /// its request into a 503. (The raw record has a fixed ceiling, [`super::raw::MAX_RAW_RECORD`],
    /// which the root configuration checks against the same limit.)
    pub fn problems_within(&self, message_max_bytes: usize) -> KeyProblems {
        let mut problems = KeyProblems::new();
        if self.max_event_bytes + RECORD_OVERHEAD > message_max_bytes {
            problems.push((
                "max_event_bytes".into(),
                format!(
                    "must be at most the producer's `message.max.bytes` ({message_max_bytes}) \
                     less {RECORD_OVERHEAD} for the key and framing"
                ),
            ));
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

#[cfg(test)]
mod tests {
    use super::*;

    /// The producer sets no `message.max.bytes` of its own, so unless `[kafka.options]` does,
    /// librdkafka's default is the limit every record must fit: read from librdkafka itself.
    #[test]
    fn librdkafkas_default_message_max_bytes_is_the_one_assumed() {
        let native = rdkafka::ClientConfig::new().create_native_config().unwrap();
        assert_eq!(
            native.get("message.max.bytes").unwrap(),
            LIBRDKAFKA_MESSAGE_MAX_BYTES.to_string()
        );
    }

    #[test]
    fn events_must_fit_the_producers_limit_with_room_for_their_key() {
        let server = ServerConfig::default();
        assert!(server.problems().is_empty());
        assert!(
            server
                .problems_within(LIBRDKAFKA_MESSAGE_MAX_BYTES)
                .is_empty()
        );
        let keys = |p: KeyProblems| p.into_iter().map(|(k, _)| k).collect::<Vec<_>>();
        assert_eq!(
            keys(server.problems_within(512 * 1024)),
            ["max_event_bytes"]
        );
        let odd = ServerConfig {
            max_field_bytes: 10,
            max_connections: 0,
            ..ServerConfig::default()
        };
        assert_eq!(keys(odd.problems()), ["max_field_bytes", "max_connections"]);
    }
}
