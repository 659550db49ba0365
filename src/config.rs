//! Typed configuration: loaded with the `config` crate (built-in defaults → TOML file →
//! `LEADWATCH__SECTION__KEY` environment variables), deserialized with every problem collected
//! (not just the first), then validated as a whole. `leadwatch check-config` prints the problems
//! one per line as `<file>:<key.path>: <message>` and exits 64.

// `SinkConfig` (and the type eserde derives from it) has one large variant: it is loaded once
// at start, so a few hundred bytes per sink do not matter.
#![allow(clippy::large_enum_variant)]

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use url::Url;

use crate::engine::rules::Rules;
use crate::signature::WebhookSecret;

/// One problem found in a configuration or rules file, with where it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub file: PathBuf,
    /// Dotted key path, e.g. `sinks.alerts.url`; empty for the file as a whole.
    pub key: String,
    pub message: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}: {}", self.file.display(), self.key, self.message)
    }
}

/// Every problem found, in file order as far as they could be found.
#[derive(Debug, thiserror::Error)]
#[error("{} configuration problem(s):\n{}", .0.len(), .0.iter().map(|p| p.to_string()).collect::<Vec<_>>().join("\n"))]
pub struct Problems(pub Vec<Problem>);

/// The daemon's whole configuration, validated.
#[derive(Debug)]
pub struct Config {
    pub server: ServerConfig,
    pub kafka: KafkaConfig,
    pub engine: EngineConfig,
    pub dispatch: DispatchConfig,
    pub roles: Roles,
    /// How long shutdown may take before in-flight work is abandoned (it is re-done on restart).
    pub shutdown_grace: Duration,
    pub sources: BTreeMap<String, SourceConfig>,
    pub sinks: BTreeMap<String, SinkConfig>,
    /// `[[routes]]`, checked against the sinks and alert types, templates compiled and tried.
    pub routes: Vec<RouteConfig>,
    /// Where the rules were read from (resolved against the config file's folder).
    pub rules_path: PathBuf,
    pub rules: Rules,
}

/// The file's shape. Every section and field has a default except sources and sinks.
#[derive(Debug, eserde::Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    #[serde(default)]
    server: ServerConfig,
    #[serde(default)]
    kafka: RawKafkaConfig,
    #[serde(default)]
    engine: EngineConfig,
    #[serde(default)]
    dispatch: DispatchConfig,
    /// Which roles this instance runs; all three by default.
    #[serde(default = "default_roles")]
    roles: Vec<Role>,
    /// Read before deserialization (so its problems are listed too); declared so it is a known key.
    #[serde(default = "default_rules")]
    #[allow(dead_code)]
    rules: String,
    #[serde(default = "default_grace")]
    #[eserde(compat)]
    shutdown_grace: HumanDuration,
    #[serde(default)]
    sources: BTreeMap<String, SourceConfig>,
    #[serde(default)]
    sinks: BTreeMap<String, SinkConfig>,
    /// Which alerts go to which sinks; none: every alert to every sink.
    #[serde(default)]
    routes: Vec<RouteConfig>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, eserde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    Ingest,
    Engine,
    Dispatch,
}

/// Which of the three roles this instance runs.
#[derive(Debug, Clone, Copy)]
pub struct Roles {
    pub ingest: bool,
    pub engine: bool,
    pub dispatch: bool,
}

fn default_roles() -> Vec<Role> {
    vec![Role::Ingest, Role::Engine, Role::Dispatch]
}
fn default_rules() -> String {
    "rules.toml".into()
}
fn default_grace() -> HumanDuration {
    HumanDuration(Duration::from_secs(20))
}

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

#[derive(Debug, eserde::Deserialize)]
#[serde(deny_unknown_fields)]
struct RawKafkaConfig {
    #[serde(default)]
    brokers: String,
    #[serde(default = "default_prefix")]
    topic_prefix: String,
    #[serde(default = "default_group")]
    group_id: String,
    #[serde(default = "default_partitions")]
    partitions: i32,
    #[serde(default = "default_replication")]
    replication_factor: i32,
    #[serde(default = "default_session_timeout")]
    #[eserde(compat)]
    session_timeout: HumanDuration,
    #[serde(default)]
    #[eserde(compat)]
    options: KafkaOptions,
}

impl Default for RawKafkaConfig {
    fn default() -> Self {
        Self {
            brokers: String::new(),
            topic_prefix: default_prefix(),
            group_id: default_group(),
            partitions: default_partitions(),
            replication_factor: default_replication(),
            session_timeout: default_session_timeout(),
            options: Default::default(),
        }
    }
}

fn default_prefix() -> String {
    "leadwatch".into()
}
fn default_group() -> String {
    "leadwatch".into()
}
/// Partitions of the daemon's topics when `kafka.partitions` is not set.
pub const DEFAULT_PARTITIONS: i32 = 6;

fn default_partitions() -> i32 {
    DEFAULT_PARTITIONS
}
fn default_replication() -> i32 {
    -1
}
fn default_session_timeout() -> HumanDuration {
    HumanDuration(Duration::from_secs(10))
}

/// Kafka connection and topics.
#[derive(Clone)]
pub struct KafkaConfig {
    /// `host:port,host:port`; empty means the embedded in-memory broker.
    pub brokers: String,
    pub topic_prefix: String,
    /// Consumer group of the engine; the dispatcher uses `{group_id}.dispatch`.
    pub group_id: String,
    /// Partitions of the topics the daemon creates.
    pub partitions: i32,
    /// Replication factor of created topics; -1 takes the broker's default.
    pub replication_factor: i32,
    /// Consumer group session timeout: how long a dead member keeps its partitions.
    pub session_timeout: Duration,
    /// Passed through to librdkafka as they are (`security.protocol`, `sasl.*`, `ssl.*` …).
    /// Nested tables are joined with dots, so `[kafka.options.sasl] mechanism = "PLAIN"` works.
    pub options: BTreeMap<String, String>,
}

/// Option keys whose values may be secrets, redacted in `Debug`.
fn is_secret_option(key: &str) -> bool {
    key.contains("password")
        || key.contains("secret")
        || key.contains("key")
        || key.contains("jaas")
}

impl fmt::Debug for KafkaConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let options: BTreeMap<&str, &str> = self
            .options
            .iter()
            .map(|(k, v)| {
                let shown = if is_secret_option(k) {
                    "<redacted>"
                } else {
                    v.as_str()
                };
                (k.as_str(), shown)
            })
            .collect();
        f.debug_struct("KafkaConfig")
            .field("brokers", &self.brokers)
            .field("topic_prefix", &self.topic_prefix)
            .field("group_id", &self.group_id)
            .field("partitions", &self.partitions)
            .field("replication_factor", &self.replication_factor)
            .field("session_timeout", &self.session_timeout)
            .field("options", &options)
            .finish()
    }
}

impl KafkaConfig {
    pub fn is_embedded(&self) -> bool {
        self.brokers.trim().is_empty()
    }
}

/// The SLA engine.
#[derive(Debug, Clone, eserde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EngineConfig {
    /// Most events whose outputs are waiting for Kafka's acknowledgement at once.
    #[serde(default = "default_in_flight")]
    pub max_in_flight: usize,
    /// A lead that was closed, converted, deleted or merged, with nothing pending, is dropped from
    /// the state (tombstoned in `{prefix}.state`) this long after it ended.
    #[serde(default = "default_retention")]
    #[eserde(compat)]
    pub state_retention: HumanDuration,
    /// Any other lead with nothing pending is dropped after this long without an event.
    #[serde(default = "default_idle_retention")]
    #[eserde(compat)]
    pub idle_retention: HumanDuration,
    /// How often leads past their retention are looked for.
    #[serde(default = "default_sweep")]
    #[eserde(compat)]
    pub sweep_interval: HumanDuration,
    /// Longest a partition's state restore may take before it is retried.
    #[serde(default = "default_restore_timeout")]
    #[eserde(compat)]
    pub restore_timeout: HumanDuration,
    /// How far back in event time a late event still takes its place among a lead's events (and
    /// can change an outcome); older ones are applied as they come.
    #[serde(default = "default_reorder_window")]
    #[eserde(compat)]
    pub reorder_window: HumanDuration,
}

impl Default for EngineConfig {
    fn default() -> Self {
        Self {
            max_in_flight: default_in_flight(),
            state_retention: default_retention(),
            idle_retention: default_idle_retention(),
            sweep_interval: default_sweep(),
            restore_timeout: default_restore_timeout(),
            reorder_window: default_reorder_window(),
        }
    }
}

fn default_retention() -> HumanDuration {
    HumanDuration(Duration::from_secs(30 * 24 * 3600))
}
fn default_idle_retention() -> HumanDuration {
    HumanDuration(Duration::from_secs(365 * 24 * 3600))
}
fn default_sweep() -> HumanDuration {
    HumanDuration(Duration::from_secs(60))
}
fn default_reorder_window() -> HumanDuration {
    HumanDuration(crate::engine::DEFAULT_REORDER_WINDOW)
}
fn default_restore_timeout() -> HumanDuration {
    HumanDuration(Duration::from_secs(600))
}

fn default_in_flight() -> usize {
    10_000
}

/// Alert delivery.
#[derive(Debug, Clone, eserde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DispatchConfig {
    /// Most alerts being fanned out to their sinks at once (each waits until every sink has it,
    /// or has it durably queued for a retry, before its offset is stored).
    #[serde(default = "default_dispatch_in_flight")]
    pub max_in_flight: usize,
    /// Timeout of one HTTP request to a sink.
    #[serde(default = "default_request_timeout")]
    #[eserde(compat)]
    pub request_timeout: HumanDuration,
    /// Requests one sink may have open at once.
    #[serde(default = "default_sink_concurrency")]
    pub sink_concurrency: usize,
    /// Delays before each retry after the first attempt (which is immediate); after the last one
    /// fails the alert is dead-lettered for that sink. Default: 5s, 5m, 30m, 2h, 5h, 10h, 10h
    /// (about 28 hours in all).
    #[serde(default)]
    #[eserde(compat)]
    pub retry_schedule: Option<Vec<HumanDuration>>,
    /// The older exponential form, instead of `retry_schedule`: the first retry delay, doubling
    /// up to `retry_max_delay`, `max_retries` times.
    #[serde(default)]
    #[eserde(compat)]
    pub retry_min_delay: Option<HumanDuration>,
    #[serde(default)]
    #[eserde(compat)]
    pub retry_max_delay: Option<HumanDuration>,
    #[serde(default)]
    pub max_retries: Option<usize>,
    /// Each delay is moved by up to this fraction either way, so retries of many alerts spread.
    #[serde(default = "default_retry_jitter")]
    pub retry_jitter: f64,
    /// The longest `Retry-After` honoured; a sink asking for more gets this.
    #[serde(default = "default_max_retry_after")]
    #[eserde(compat)]
    pub max_retry_after: HumanDuration,
}

impl Default for DispatchConfig {
    fn default() -> Self {
        Self {
            max_in_flight: default_dispatch_in_flight(),
            request_timeout: default_request_timeout(),
            sink_concurrency: default_sink_concurrency(),
            retry_schedule: None,
            retry_min_delay: None,
            retry_max_delay: None,
            max_retries: None,
            retry_jitter: default_retry_jitter(),
            max_retry_after: default_max_retry_after(),
        }
    }
}

fn default_dispatch_in_flight() -> usize {
    256
}
fn default_request_timeout() -> HumanDuration {
    HumanDuration(Duration::from_secs(10))
}
fn default_sink_concurrency() -> usize {
    16
}
fn default_retry_jitter() -> f64 {
    0.2
}
fn default_max_retry_after() -> HumanDuration {
    HumanDuration(Duration::from_secs(3600))
}

/// A webhook endpoint, `POST /webhooks/NAME`. Every kind takes `link` (a template of a link
/// into the CRM, `{id}` standing for the object id) and `dedupe_window` (overrides the server's).
#[derive(Debug, Clone, eserde::Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum SourceConfig {
    /// The canonical event format, signed per Standard Webhooks.
    Generic {
        /// `whsec_…`, or a list of them while rotating.
        #[eserde(compat)]
        secret: Secrets,
        #[serde(default)]
        link: Option<String>,
        #[serde(default)]
        #[eserde(compat)]
        dedupe_window: Option<HumanDuration>,
    },
    /// HubSpot webhook subscriptions (a JSON array of up to 100 events), signed with the app's
    /// client secret.
    Hubspot {
        /// The app's client secret, or a list while rotating.
        #[eserde(compat)]
        secret: PlainSecrets,
        /// The URL HubSpot calls (its v3 signature covers it; behind an ingress our Host differs).
        /// Kept as written: HubSpot signs the string it was given, not a normalised URL.
        public_url: String,
        /// Also accept the older `X-HubSpot-Signature` (v1, v2), which carry no timestamp.
        #[serde(default)]
        legacy_signatures: bool,
        /// When set, only these HubSpot accounts (portal ids) are accepted; others get 403.
        #[serde(default)]
        portal_ids: Vec<u64>,
        #[serde(default)]
        link: Option<String>,
        #[serde(default)]
        #[eserde(compat)]
        dedupe_window: Option<HumanDuration>,
        /// Canonical field name → HubSpot property name, over the defaults.
        #[serde(default)]
        fields: BTreeMap<String, String>,
    },
    /// Salesforce Outbound Messages (SOAP).
    Salesforce {
        /// The org ids (15 or 18 characters, `00D…`) whose messages are accepted; others get 403.
        organization_ids: Vec<String>,
        /// Basic auth, when the endpoint URL carries `user:password@`.
        #[serde(default)]
        username: Option<String>,
        #[serde(default)]
        #[eserde(compat)]
        password: Option<PlainSecrets>,
        /// A secret last path segment: `POST /webhooks/NAME/SECRET`.
        #[serde(default)]
        #[eserde(compat)]
        path_secret: Option<PlainSecrets>,
        #[serde(default)]
        link: Option<String>,
        #[serde(default)]
        #[eserde(compat)]
        dedupe_window: Option<HumanDuration>,
        /// Canonical field name → Salesforce field API name, over the defaults.
        #[serde(default)]
        fields: BTreeMap<String, String>,
    },
    /// Marketo "Call Webhook" flow steps: a JSON body templated by the admin, authenticated by a
    /// header that carries a shared secret.
    Marketo {
        /// The request header that carries the secret, e.g. `X-Leadwatch-Token`.
        header: String,
        #[eserde(compat)]
        secret: PlainSecrets,
        #[serde(default)]
        link: Option<String>,
        #[serde(default)]
        #[eserde(compat)]
        dedupe_window: Option<HumanDuration>,
        /// JSON pointers into the templated body: `lead` (required by default `/leadId`), `id`,
        /// `occurred_at`, `activity`, `activity_by`, and canonical field names.
        #[serde(default)]
        fields: BTreeMap<String, String>,
        /// The IANA time zone of an `occurred_at` without an offset (Marketo's
        /// `{{system.dateTime}}` is `2026-11-25 09:30:00` in the instance's zone); default UTC.
        #[serde(default)]
        time_zone: Option<String>,
    },
    /// Pipedrive webhooks v2, with HTTP basic auth.
    Pipedrive {
        username: String,
        #[eserde(compat)]
        password: PlainSecrets,
        #[serde(default)]
        link: Option<String>,
        #[serde(default)]
        #[eserde(compat)]
        dedupe_window: Option<HumanDuration>,
        /// Canonical field name → Pipedrive field key (custom fields by their hash key).
        #[serde(default)]
        fields: BTreeMap<String, String>,
        /// Which record's owner is the lead's `owner`: `person` (the default), `lead` (Leads
        /// Inbox) or `deal`. The others' owners are `person_owner`, `lead_owner`, `deal_owner`.
        #[serde(default)]
        #[eserde(compat)]
        owner_from: PipedriveOwner,
    },
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

impl SourceConfig {
    /// The template of a link into the source's CRM (`{id}` = the object id of the lead key).
    pub fn link(&self) -> Option<&str> {
        match self {
            Self::Generic { link, .. }
            | Self::Hubspot { link, .. }
            | Self::Salesforce { link, .. }
            | Self::Marketo { link, .. }
            | Self::Pipedrive { link, .. } => link.as_deref(),
        }
    }

    /// The source's own deduplication window, if it sets one.
    pub fn dedupe_window(&self) -> Option<Duration> {
        match self {
            Self::Generic { dedupe_window, .. }
            | Self::Hubspot { dedupe_window, .. }
            | Self::Salesforce { dedupe_window, .. }
            | Self::Marketo { dedupe_window, .. }
            | Self::Pipedrive { dedupe_window, .. } => dedupe_window.map(|d| d.0),
        }
    }

    /// The `kind` as written in the file.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Generic { .. } => "generic",
            Self::Hubspot { .. } => "hubspot",
            Self::Salesforce { .. } => "salesforce",
            Self::Marketo { .. } => "marketo",
            Self::Pipedrive { .. } => "pipedrive",
        }
    }

    /// Every problem of this source's settings, as `(key below sources.NAME, message)`.
    fn problems(&self) -> Vec<(String, String)> {
        let mut problems = Vec::new();
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
        let field_keys = |fields: &BTreeMap<String, String>,
                          extra: &[&str],
                          problems: &mut Vec<(String, String)>| {
            for key in fields.keys() {
                if !crate::ingest::fields::is_canonical(key) && !extra.contains(&key.as_str()) {
                    let mut known: Vec<&str> = crate::ingest::fields::CANONICAL
                        .iter()
                        .map(|(n, _)| *n)
                        .collect();
                    known.extend_from_slice(extra);
                    problems.push((
                        format!("fields.{key}"),
                        format!("unknown field name; expected one of {}", known.join(", ")),
                    ));
                }
            }
        };
        match self {
            Self::Generic { .. } => {}
            Self::Hubspot {
                public_url, fields, ..
            } => {
                match Url::parse(public_url.trim()) {
                    Ok(url) if matches!(url.scheme(), "http" | "https") => {}
                    Ok(_) => problems.push(("public_url".into(), "must be an http(s) URL".into())),
                    Err(e) => problems.push(("public_url".into(), format!("not a URL: {e}"))),
                }
                field_keys(fields, &[], &mut problems);
            }
            Self::Salesforce {
                organization_ids,
                username,
                password,
                fields,
                ..
            } => {
                if organization_ids.is_empty() {
                    problems.push((
                        "organization_ids".into(),
                        "name at least one org id (Setup → Company Information)".into(),
                    ));
                }
                for (i, id) in organization_ids.iter().enumerate() {
                    let ok = (id.len() == 15 || id.len() == 18)
                        && id.starts_with("00D")
                        && id.chars().all(|c| c.is_ascii_alphanumeric());
                    if !ok {
                        problems.push((
                            format!("organization_ids.{i}"),
                            format!(
                                "`{id}` is not a Salesforce org id (15 or 18 characters, `00D…`)"
                            ),
                        ));
                    }
                }
                if username.is_some() != password.is_some() {
                    problems.push((
                        "username".into(),
                        "basic auth needs both `username` and `password`".into(),
                    ));
                }
                field_keys(fields, &[], &mut problems);
            }
            Self::Marketo {
                header,
                fields,
                time_zone,
                ..
            } => {
                if http::HeaderName::from_bytes(header.as_bytes()).is_err() {
                    problems.push(("header".into(), format!("`{header}` is not a header name")));
                }
                if let Some(tz) = time_zone
                    && jiff::tz::TimeZone::get(tz).is_err()
                {
                    problems.push((
                        "time_zone".into(),
                        format!("`{tz}` is not an IANA time zone such as \"America/Chicago\""),
                    ));
                }
                field_keys(fields, crate::ingest::marketo::STRUCTURAL, &mut problems);
                for (key, pointer) in fields {
                    if !pointer.is_empty() && !pointer.starts_with('/') {
                        problems.push((
                            format!("fields.{key}"),
                            format!("`{pointer}` is not a JSON pointer such as \"/leadId\""),
                        ));
                    }
                }
                if fields.get("lead").is_some_and(|p| p.is_empty()) {
                    problems.push((
                        "fields.lead".into(),
                        "the lead id is required: give its JSON pointer".into(),
                    ));
                }
            }
            Self::Pipedrive {
                username, fields, ..
            } => {
                if username.is_empty() {
                    problems.push(("username".into(), "must not be empty".into()));
                }
                field_keys(fields, &[], &mut problems);
            }
        }
        problems
    }
}

/// Secrets compared as they are (a HubSpot client secret, a password, a token): one string or a
/// list while rotating. Never shown in `Debug`.
#[derive(Clone)]
pub struct PlainSecrets(pub Vec<String>);

impl fmt::Debug for PlainSecrets {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PlainSecrets(<{} redacted>)", self.0.len())
    }
}

impl<'de> Deserialize<'de> for PlainSecrets {
    fn deserialize<D: serde::Deserializer<'de>>(de: D) -> Result<Self, D::Error> {
        let raw = one_or_many(de, "expected a secret string or a list of them")?;
        if raw.is_empty() {
            return Err(serde::de::Error::custom("at least one secret is needed"));
        }
        if raw.iter().any(|s| s.trim().is_empty()) {
            return Err(serde::de::Error::custom("a secret must not be empty"));
        }
        Ok(PlainSecrets(raw))
    }
}

/// Where alerts go.
#[derive(Debug, Clone, eserde::Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum SinkConfig {
    /// A Standard Webhooks-signed JSON POST.
    Webhook {
        #[eserde(compat)]
        url: Url,
        #[eserde(compat)]
        secret: Secrets,
        /// At most this many requests per second (none: no limit).
        #[serde(default)]
        max_per_second: Option<f64>,
    },
    /// One JSON line per alert on stdout.
    Log {},
    /// A Slack incoming webhook: text plus blocks, the recipient mentioned.
    Slack {
        /// `https://hooks.slack.com/services/…` (a secret: whoever has it can post).
        #[eserde(compat)]
        webhook_url: SecretUrl,
        /// Slack allows one message per second per webhook; bursts wait their turn.
        #[serde(default = "default_slack_rate")]
        max_per_second: Option<f64>,
    },
    /// A Microsoft Teams Workflows webhook ("Post to a channel when a webhook request is
    /// received"), carrying an Adaptive Card.
    Teams {
        /// The workflow's HTTP trigger URL (a secret: it carries its signature).
        #[eserde(compat)]
        webhook_url: SecretUrl,
        #[serde(default = "default_teams_rate")]
        max_per_second: Option<f64>,
    },
    /// A Task on the lead in Salesforce (REST API), OAuth 2.0 client credentials.
    Salesforce {
        /// `https://yourorg.my.salesforce.com`
        #[eserde(compat)]
        instance_url: Url,
        /// `https://login.salesforce.com/services/oauth2/token` or the org's My Domain.
        #[eserde(compat)]
        token_url: Url,
        client_id: String,
        /// The client-credentials flow: the connected app's secret.
        #[serde(default)]
        #[eserde(compat)]
        client_secret: Option<SecretString>,
        /// The JWT bearer flow instead (no secret): the user the integration acts as …
        #[serde(default)]
        username: Option<String>,
        /// … and the PEM of the RSA key whose certificate the connected app holds (from the
        /// environment, e.g. `LEADWATCH__SINKS__CRM__PRIVATE_KEY`, rather than the file).
        #[serde(default)]
        #[eserde(compat)]
        private_key: Option<SecretString>,
        /// The JWT's audience: `https://login.salesforce.com`, or `https://test.salesforce.com`
        /// for a sandbox.
        #[serde(default = "default_salesforce_audience")]
        audience: String,
        #[serde(default = "default_salesforce_version")]
        api_version: String,
        /// A unique external-id field on Task (e.g. `Leadwatch_Alert_Id__c`): tasks are upserted
        /// by alert id, so no retry or replay can create a second one. Without it the alert id is
        /// put in the Subject and looked up (SOQL) before a retry creates the task again.
        #[serde(default)]
        external_id_field: Option<String>,
        /// Escalations that suggest a new owner reassign the lead in Salesforce.
        #[serde(default)]
        apply_reassignment: bool,
        /// The task is due this long after the alert fired (its ActivityDate is that day, UTC).
        #[serde(default = "default_due_in")]
        #[eserde(compat)]
        due_in: HumanDuration0,
        #[serde(default)]
        max_per_second: Option<f64>,
    },
    /// A task associated with the contact in HubSpot (CRM v3), private-app token.
    Hubspot {
        #[eserde(compat)]
        token: SecretString,
        #[serde(default = "default_hubspot_url")]
        #[eserde(compat)]
        base_url: Url,
        /// A task property holding the alert id (searched before a retry re-creates the task);
        /// without it the id is written into the task body and searched there.
        #[serde(default)]
        alert_id_property: Option<String>,
        #[serde(default)]
        apply_reassignment: bool,
        #[serde(default = "default_due_in")]
        #[eserde(compat)]
        due_in: HumanDuration0,
        /// HubSpot allows 100–190 requests per 10 s per app; stay under it.
        #[serde(default = "default_hubspot_rate")]
        max_per_second: Option<f64>,
    },
}

fn default_slack_rate() -> Option<f64> {
    Some(1.0)
}
fn default_teams_rate() -> Option<f64> {
    Some(4.0)
}
fn default_hubspot_rate() -> Option<f64> {
    Some(9.0)
}
fn default_salesforce_audience() -> String {
    "https://login.salesforce.com".into()
}
fn default_salesforce_version() -> String {
    "62.0".into()
}
fn default_due_in() -> HumanDuration0 {
    HumanDuration0(Duration::ZERO)
}
fn default_hubspot_url() -> Url {
    Url::parse("https://api.hubapi.com").expect("a valid URL")
}

impl SinkConfig {
    /// The `kind` as written in the file.
    pub fn kind(&self) -> &'static str {
        match self {
            SinkConfig::Webhook { .. } => "webhook",
            SinkConfig::Log {} => "log",
            SinkConfig::Slack { .. } => "slack",
            SinkConfig::Teams { .. } => "teams",
            SinkConfig::Salesforce { .. } => "salesforce",
            SinkConfig::Hubspot { .. } => "hubspot",
        }
    }

    /// The configured request rate limit, if any.
    pub fn max_per_second(&self) -> Option<f64> {
        match self {
            SinkConfig::Webhook { max_per_second, .. }
            | SinkConfig::Slack { max_per_second, .. }
            | SinkConfig::Teams { max_per_second, .. }
            | SinkConfig::Salesforce { max_per_second, .. }
            | SinkConfig::Hubspot { max_per_second, .. } => *max_per_second,
            SinkConfig::Log {} => None,
        }
    }
}

/// Which alerts go to which sinks (`[[routes]]`).
#[derive(Debug, Clone, Default, eserde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteConfig {
    /// Alert types (`sla.first_touch.breached`, or a prefix such as `disposition.*`); empty:
    /// every type.
    #[serde(default)]
    pub alerts: Vec<String>,
    /// Roles the alert must be addressed to (any of them; `data.to`); empty: any.
    #[serde(default)]
    pub to: Vec<String>,
    /// Sinks (names of `[sinks.NAME]`).
    pub sinks: Vec<String>,
    /// A minijinja template for the message's title (chat header, CRM task subject).
    #[serde(default)]
    pub title: Option<String>,
    /// A minijinja template for the message's text (chat body, CRM task description).
    #[serde(default)]
    pub text: Option<String>,
}

/// A secret string (a token, a client secret): never shown in `Debug` or logs.
#[derive(Clone, PartialEq, Eq)]
pub struct SecretString(pub String);

impl fmt::Debug for SecretString {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

impl<'de> Deserialize<'de> for SecretString {
    fn deserialize<D: serde::Deserializer<'de>>(de: D) -> Result<Self, D::Error> {
        let s =
            String::deserialize(de).map_err(|_| serde::de::Error::custom("expected a string"))?;
        if s.trim().is_empty() {
            return Err(serde::de::Error::custom("must not be empty"));
        }
        Ok(SecretString(s))
    }
}

/// A URL that is itself a secret (Slack and Teams webhook URLs): `Debug` shows the host only.
#[derive(Clone, PartialEq, Eq)]
pub struct SecretUrl(pub Url);

impl fmt::Debug for SecretUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SecretUrl({})", self.redacted())
    }
}

impl SecretUrl {
    /// `scheme://host/…`: what may be logged.
    pub fn redacted(&self) -> String {
        format!(
            "{}://{}/…",
            self.0.scheme(),
            self.0.host_str().unwrap_or("")
        )
    }
}

impl<'de> Deserialize<'de> for SecretUrl {
    fn deserialize<D: serde::Deserializer<'de>>(de: D) -> Result<Self, D::Error> {
        // The message never repeats the value: it is a secret.
        let s = String::deserialize(de)
            .map_err(|_| serde::de::Error::custom("expected a URL string"))?;
        let url =
            Url::parse(&s).map_err(|e| serde::de::Error::custom(format!("not a URL: {e}")))?;
        if !matches!(url.scheme(), "http" | "https") {
            return Err(serde::de::Error::custom("must be an http or https URL"));
        }
        Ok(SecretUrl(url))
    }
}

/// A duration that may be zero (`"0s"`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct HumanDuration0(pub Duration);

impl<'de> Deserialize<'de> for HumanDuration0 {
    fn deserialize<D: serde::Deserializer<'de>>(de: D) -> Result<Self, D::Error> {
        let s = String::deserialize(de).map_err(|_| {
            serde::de::Error::custom("expected a duration such as \"0s\" or \"4h\"")
        })?;
        humantime::parse_duration(s.trim())
            .map(HumanDuration0)
            .map_err(|e| serde::de::Error::custom(format!("`{s}` is not a duration: {e}")))
    }
}

/// One or more signing secrets (`secret = "whsec_…"` or `secret = ["whsec_new", "whsec_old"]`).
#[derive(Clone)]
pub struct Secrets(pub Vec<WebhookSecret>);

impl fmt::Debug for Secrets {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Secrets(<{} redacted>)", self.0.len())
    }
}

impl<'de> Deserialize<'de> for Secrets {
    fn deserialize<D: serde::Deserializer<'de>>(de: D) -> Result<Self, D::Error> {
        let raw = one_or_many(de, "expected a `whsec_…` string or a list of them")?;
        if raw.is_empty() {
            return Err(serde::de::Error::custom("at least one secret is needed"));
        }
        raw.iter()
            .enumerate()
            .map(|(i, s)| {
                s.parse::<WebhookSecret>().map_err(|e| {
                    let which = if raw.len() > 1 {
                        format!("secret #{}: ", i + 1)
                    } else {
                        String::new()
                    };
                    serde::de::Error::custom(format!("{which}{e}"))
                })
            })
            .collect::<Result<_, _>>()
            .map(Secrets)
    }
}

/// `"x"` or `["x", "y"]` as a list; `expected` is the error when it is neither.
pub(crate) fn one_or_many<'de, D: serde::Deserializer<'de>>(
    de: D,
    expected: &str,
) -> Result<Vec<String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum OneOrMany {
        One(String),
        Many(Vec<String>),
    }
    match OneOrMany::deserialize(de) {
        Ok(OneOrMany::One(s)) => Ok(vec![s]),
        Ok(OneOrMany::Many(v)) => Ok(v),
        Err(_) => Err(serde::de::Error::custom(expected)),
    }
}

/// A duration written the human way: `250ms`, `90s`, `4h`, `2days`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct HumanDuration(pub Duration);

impl std::ops::Deref for HumanDuration {
    type Target = Duration;
    fn deref(&self) -> &Duration {
        &self.0
    }
}

impl<'de> Deserialize<'de> for HumanDuration {
    fn deserialize<D: serde::Deserializer<'de>>(de: D) -> Result<Self, D::Error> {
        let s = String::deserialize(de).map_err(|_| {
            serde::de::Error::custom("expected a duration such as \"90s\" or \"4h\"")
        })?;
        parse_duration(&s)
            .map(HumanDuration)
            .map_err(serde::de::Error::custom)
    }
}

/// Parses a humantime duration that must be positive.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let d = humantime::parse_duration(s.trim())
        .map_err(|e| format!("`{s}` is not a duration such as \"90s\" or \"4h\": {e}"))?;
    if d.is_zero() {
        return Err(format!("`{s}` must be longer than zero"));
    }
    Ok(d)
}

/// librdkafka options as the user wrote them, flattened and checked.
#[derive(Default)]
struct KafkaOptions(BTreeMap<String, String>);

impl fmt::Debug for KafkaOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "KafkaOptions({} options)", self.0.len())
    }
}

impl<'de> Deserialize<'de> for KafkaOptions {
    fn deserialize<D: serde::Deserializer<'de>>(de: D) -> Result<Self, D::Error> {
        let map = serde_json::Map::<String, serde_json::Value>::deserialize(de)?;
        let mut options = BTreeMap::new();
        let mut problems = Vec::new();
        flatten_options("", &map, &mut options, &mut problems);
        for (key, why) in PINNED_OPTIONS {
            if options.contains_key(*key) {
                problems.push((key.to_string(), format!("may not be overridden: {why}")));
            }
        }
        if problems.is_empty() {
            Ok(KafkaOptions(options))
        } else {
            let text: Vec<String> = problems.iter().map(|(k, m)| format!("`{k}` {m}")).collect();
            Err(serde::de::Error::custom(text.join("; ")))
        }
    }
}

/// Turns `{ sasl: { mechanism: "PLAIN" }, "linger.ms": 5 }` into `sasl.mechanism=PLAIN`, `linger.ms=5`.
fn flatten_options(
    prefix: &str,
    map: &serde_json::Map<String, serde_json::Value>,
    out: &mut BTreeMap<String, String>,
    problems: &mut Vec<(String, String)>,
) {
    for (k, v) in map {
        let key = if prefix.is_empty() {
            k.clone()
        } else {
            format!("{prefix}.{k}")
        };
        match v {
            serde_json::Value::Object(inner) => flatten_options(&key, inner, out, problems),
            serde_json::Value::String(s) => {
                out.insert(key, s.clone());
            }
            serde_json::Value::Number(n) => {
                out.insert(key, n.to_string());
            }
            serde_json::Value::Bool(b) => {
                out.insert(key, b.to_string());
            }
            _ => problems.push((key, "must be a string, number or boolean".into())),
        }
    }
}

/// librdkafka options the daemon's guarantees depend on; a user may not turn them off.
const PINNED_OPTIONS: &[(&str, &str)] = &[
    (
        "enable.idempotence",
        "ingest's 2xx promises an idempotent producer",
    ),
    ("acks", "ingest's 2xx promises acks=all"),
    (
        "enable.auto.offset.store",
        "offsets are stored only after an event's outputs are in Kafka",
    ),
    (
        "partitioner",
        "a lead's state lives where its events go: every producer (and `simulate`) places keys by murmur2",
    ),
    ("group.id", "set `kafka.group_id` instead"),
    ("bootstrap.servers", "set `kafka.brokers` instead"),
];

impl Config {
    /// The sources' link templates into their CRM, by source name.
    pub fn source_links(&self) -> std::collections::HashMap<String, String> {
        self.sources
            .iter()
            .filter_map(|(name, s)| Some((name.clone(), s.link()?.to_string())))
            .collect()
    }

    /// Loads and validates `path` (and the rules file it names), with the environment on top.
    pub fn load(path: &Path) -> Result<Config, Problems> {
        Self::load_with_env(path, std::env::vars())
    }

    /// As [`Config::load`], with the environment passed in (tests).
    pub fn load_with_env(
        path: &Path,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Config, Problems> {
        let whole = |message: String| {
            Problems(vec![Problem {
                file: path.to_path_buf(),
                key: String::new(),
                message,
            }])
        };
        let env: std::collections::HashMap<String, String> = env
            .into_iter()
            .filter(|(k, _)| k.starts_with("LEADWATCH__"))
            .collect();
        let layered = config::Config::builder()
            .add_source(
                config::File::from(path)
                    .format(config::FileFormat::Toml)
                    .required(true),
            )
            .add_source(
                config::Environment::with_prefix("LEADWATCH")
                    .prefix_separator("__")
                    .separator("__")
                    .try_parsing(true)
                    .source(Some(env)),
            )
            .build()
            .map_err(|e| whole(e.to_string()))?;
        let value: serde_json::Value = layered
            .try_deserialize()
            .map_err(|e| whole(e.to_string()))?;
        let parsed: Result<(RawConfig, _), _> = from_value_lenient(&value);

        // The rules file is checked even when the config file has problems, so one run lists all.
        let rules_name = value
            .get("rules")
            .and_then(|v| v.as_str())
            .map(str::to_string)
            .unwrap_or_else(default_rules);
        let rules_path = path.parent().unwrap_or(Path::new(".")).join(rules_name);
        let rules = Rules::load(&rules_path);

        match parsed {
            Ok((raw, unknown)) => {
                let early = unknown
                    .into_iter()
                    .map(|(key, message)| Problem {
                        file: path.to_path_buf(),
                        key,
                        message,
                    })
                    .collect();
                Self::validate(path, raw, rules_path, rules, early)
            }
            Err(errors) => {
                let mut problems: Vec<Problem> = errors
                    .into_iter()
                    .map(|(key, message)| Problem {
                        file: path.to_path_buf(),
                        key,
                        message,
                    })
                    .collect();
                if let Err(Problems(mut more)) = rules {
                    problems.append(&mut more);
                }
                Err(Problems(problems))
            }
        }
    }

    /// Checks the whole; `early` are problems already found (unknown keys) to list with the rest.
    fn validate(
        path: &Path,
        raw: RawConfig,
        rules_path: PathBuf,
        rules: Result<Rules, Problems>,
        early: Vec<Problem>,
    ) -> Result<Config, Problems> {
        let mut problems = early;
        let mut problem = |key: String, message: String| {
            problems.push(Problem {
                file: path.to_path_buf(),
                key,
                message,
            })
        };

        if raw.kafka.topic_prefix.is_empty()
            || !raw
                .kafka
                .topic_prefix
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "._-".contains(c))
        {
            problem(
                "kafka.topic_prefix".into(),
                "must be non-empty and use only letters, digits, `.`, `_` and `-`".into(),
            );
        }
        if raw.kafka.group_id.trim().is_empty() {
            problem("kafka.group_id".into(), "must not be empty".into());
        }
        if raw.kafka.partitions < 1 {
            problem("kafka.partitions".into(), "must be at least 1".into());
        }
        if raw.kafka.replication_factor == 0 || raw.kafka.replication_factor < -1 {
            problem(
                "kafka.replication_factor".into(),
                "must be at least 1, or -1 for the broker's default".into(),
            );
        }
        if raw.server.max_body_bytes == 0 {
            problem(
                "server.max_body_bytes".into(),
                "must be larger than zero".into(),
            );
        }
        if raw.engine.max_in_flight == 0 {
            problem("engine.max_in_flight".into(), "must be at least 1".into());
        }
        if raw.dispatch.max_in_flight == 0 {
            problem("dispatch.max_in_flight".into(), "must be at least 1".into());
        }
        for (key, message) in crate::dispatch::retry::check_config(&raw.dispatch) {
            problem(key, message);
        }
        if raw.roles.is_empty() {
            problem(
                "roles".into(),
                "name at least one of ingest, engine, dispatch".into(),
            );
        }
        for (name, source) in &raw.sources {
            if !valid_name(name) {
                problem(
                    format!("sources.{name}"),
                    "a source name becomes a URL path: use only letters, digits, `_` and `-`"
                        .into(),
                );
            }
            for (key, message) in source.problems() {
                problem(format!("sources.{name}.{key}"), message);
            }
        }
        if raw.server.dedupe_capacity == 0 {
            problem("server.dedupe_capacity".into(), "must be at least 1".into());
        }
        for (name, sink) in &raw.sinks {
            if !valid_name(name) {
                problem(
                    format!("sinks.{name}"),
                    "use only letters, digits, `_` and `-`".into(),
                );
            }
            if let SinkConfig::Webhook { url, .. } = sink
                && !matches!(url.scheme(), "http" | "https")
            {
                problem(
                    format!("sinks.{name}.url"),
                    "must be an http or https URL".into(),
                );
            }
            for (key, message) in crate::dispatch::sinks::check_config(sink) {
                problem(format!("sinks.{name}.{key}"), message);
            }
        }
        for (key, message) in crate::dispatch::routes::check_config(&raw.routes, &raw.sinks) {
            problem(key, message);
        }
        let roles = Roles {
            ingest: raw.roles.contains(&Role::Ingest),
            engine: raw.roles.contains(&Role::Engine),
            dispatch: raw.roles.contains(&Role::Dispatch),
        };
        if roles.ingest && raw.sources.is_empty() {
            problem(
                "sources".into(),
                "ingest runs, but no `[sources.NAME]` is configured".into(),
            );
        }
        if roles.dispatch && raw.sinks.is_empty() {
            problem(
                "sinks".into(),
                "dispatch runs, but no `[sinks.NAME]` is configured".into(),
            );
        }

        let rules = match rules {
            Ok(rules) => Some(rules),
            Err(Problems(mut rule_problems)) => {
                problems.append(&mut rule_problems);
                None
            }
        };

        match rules {
            Some(rules) if problems.is_empty() => Ok(Config {
                server: raw.server,
                kafka: KafkaConfig {
                    brokers: raw.kafka.brokers,
                    topic_prefix: raw.kafka.topic_prefix,
                    group_id: raw.kafka.group_id,
                    partitions: raw.kafka.partitions,
                    replication_factor: raw.kafka.replication_factor,
                    session_timeout: raw.kafka.session_timeout.0,
                    options: raw.kafka.options.0,
                },
                engine: raw.engine,
                dispatch: raw.dispatch,
                roles,
                shutdown_grace: raw.shutdown_grace.0,
                sources: raw.sources,
                sinks: raw.sinks,
                routes: raw.routes,
                rules_path,
                rules,
            }),
            _ => Err(Problems(problems)),
        }
    }
}

/// Reads a TOML file into a JSON value (the form [`from_value`] checks).
pub(crate) fn read_toml(path: &Path) -> Result<serde_json::Value, String> {
    config::Config::builder()
        .add_source(
            config::File::from(path)
                .format(config::FileFormat::Toml)
                .required(true),
        )
        .build()
        .and_then(|c| c.try_deserialize::<serde_json::Value>())
        .map_err(|e| e.to_string())
}

/// Problems as `(key path, message)`.
pub(crate) type KeyProblems = Vec<(String, String)>;

/// Deserializes `value`, or lists every problem as `(key path, message)` — not just the first.
///
/// `eserde` collects the errors, but an unknown key derails what it reports after it (wrong
/// paths, lost errors). So: keep the errors up to the first unknown key, remove that key, and
/// look again, until a pass finds no unknown key; that pass's errors are all sound.
///
/// A value whose only problems are unknown keys is still returned, with them: the checks that
/// need the value can then run too, and one pass lists everything.
pub(crate) fn from_value_lenient<T>(
    value: &serde_json::Value,
) -> Result<(T, KeyProblems), KeyProblems>
where
    T: for<'de> eserde::EDeserialize<'de>,
{
    if let Ok(v) = T::deserialize(value) {
        return Ok((v, Vec::new()));
    }
    let mut value = value.clone();
    let mut problems: KeyProblems = Vec::new();
    // Each pass removes one key, so this ends; the bound only guards against a surprise.
    for _ in 0..64 {
        let text = value.to_string();
        let errors = match eserde::json::from_str::<T>(&text) {
            Ok(v) => return Ok((v, problems)),
            Err(errors) => errors,
        };
        let mut unknown = None;
        for e in errors.iter() {
            let key = e.path().map(|p| p.to_string()).unwrap_or_default();
            let message = strip_position(e.message());
            let is_unknown = message.starts_with("unknown field `");
            if !problems.contains(&(key.clone(), message.clone())) {
                problems.push((key.clone(), message));
            }
            if is_unknown {
                unknown = Some(key);
                break;
            }
        }
        match unknown {
            Some(key) if remove_path(&mut value, &key) => {
                // Keep only the unknown keys: the next pass finds the other errors again.
                problems.retain(|(_, m)| m.starts_with("unknown field `"));
            }
            _ => return Err(problems),
        }
    }
    Err(problems)
}

/// Removes the key at a dotted path (`segments[1].extra`); false when there is none.
fn remove_path(value: &mut serde_json::Value, path: &str) -> bool {
    // `a.b[1][2].c` → steps a, b, [1], [2], c.
    let mut steps: Vec<Result<usize, &str>> = Vec::new();
    for part in path.split('.') {
        let (name, mut rest) = part.split_at(part.find('[').unwrap_or(part.len()));
        if !name.is_empty() {
            steps.push(Err(name));
        }
        while let Some(open) = rest.strip_prefix('[') {
            let Some((index, after)) = open.split_once(']') else {
                return false;
            };
            match index.parse() {
                Ok(i) => steps.push(Ok(i)),
                Err(_) => return false,
            }
            rest = after;
        }
    }
    let Some(Err(last)) = steps.pop() else {
        return false;
    };
    let mut node = value;
    for step in steps {
        let next = match step {
            Ok(i) => node.get_mut(i),
            Err(key) => node.get_mut(key),
        };
        match next {
            Some(next) => node = next,
            None => return false,
        }
    }
    node.as_object_mut()
        .is_some_and(|m| m.remove(last).is_some())
}

fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
}

/// serde_json appends where in the (re-serialized) document an error sits; the key path says it better.
pub(crate) fn strip_position(message: &str) -> String {
    match message.rfind(" at line ") {
        Some(i) if message[i..].contains(" column ") => message[..i].to_string(),
        _ => message.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
        let p = dir.join(name);
        std::fs::write(&p, text).unwrap();
        p
    }

    const RULES: &str = r#"
[lifecycle]
sales_ready = 'lead.stage == "sales_ready"'
[first_touch]
within = "4h"
"#;

    const GOOD: &str = r#"
[server]
listen = "127.0.0.1:9999"
[kafka]
brokers = "127.0.0.1:9092"
[kafka.options]
"security.protocol" = "SASL_SSL"
sasl = { mechanism = "PLAIN", password = "hunter2" }
"linger.ms" = 5
[sources.web]
kind = "generic"
secret = "whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD"
[sinks.hook]
kind = "webhook"
url = "http://127.0.0.1:1/alerts"
secret = ["whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD", "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"]
[sinks.stdout]
kind = "log"
"#;

    #[test]
    fn a_good_file_loads_with_defaults_and_flattened_options() {
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), "rules.toml", RULES);
        let path = write(dir.path(), "leadwatch.toml", GOOD);
        let cfg = Config::load_with_env(&path, Vec::new()).unwrap();
        assert_eq!(cfg.server.listen.port(), 9999);
        assert_eq!(cfg.server.max_body_bytes, 1024 * 1024);
        assert_eq!(cfg.kafka.topic_prefix, "leadwatch");
        assert_eq!(cfg.kafka.options["security.protocol"], "SASL_SSL");
        assert_eq!(cfg.kafka.options["sasl.mechanism"], "PLAIN");
        assert_eq!(cfg.kafka.options["linger.ms"], "5");
        assert!(cfg.roles.ingest && cfg.roles.engine && cfg.roles.dispatch);
        assert_eq!(cfg.sinks.len(), 2);
        // No secret in Debug output.
        let debug = format!("{cfg:?}");
        assert!(!debug.contains("hunter2"), "{debug}");
        assert!(!debug.contains("C2FVsBQ"), "{debug}");
    }

    #[test]
    fn the_environment_overrides_the_file() {
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), "rules.toml", RULES);
        let path = write(dir.path(), "leadwatch.toml", GOOD);
        let env = vec![
            (
                "LEADWATCH__KAFKA__BROKERS".to_string(),
                "broker-a:9093,broker-b:9093".to_string(),
            ),
            (
                "LEADWATCH__SERVER__MAX_BODY_BYTES".to_string(),
                "2048".to_string(),
            ),
        ];
        let cfg = Config::load_with_env(&path, env).unwrap();
        assert_eq!(cfg.kafka.brokers, "broker-a:9093,broker-b:9093");
        assert_eq!(cfg.server.max_body_bytes, 2048);
    }

    const VENDORS: &str = r#"
[sources.hs]
kind = "hubspot"
secret = ["hs-new-secret", "hs-old-secret"]
public_url = "https://hooks.example.com/webhooks/hs"
portal_ids = [62515]
link = "https://app.hubspot.com/contacts/62515/record/0-1/{id}"
dedupe_window = "2h"
[sources.hs.fields]
score = "predictive_score"
[sources.sf]
kind = "salesforce"
organization_ids = ["00D5g000004Xq2R", "00D5g000004Xq2REAS"]
username = "sf"
password = "sf-password"
path_secret = "sf-path-secret"
[sources.mk]
kind = "marketo"
header = "X-Leadwatch-Token"
secret = "mk-token"
[sources.mk.fields]
lead = "/leadId"
email = "/email"
[sources.pd]
kind = "pipedrive"
username = "pd"
password = "pd-password"
"#;

    #[test]
    fn vendor_sources_load_with_links_windows_and_no_secret_in_debug() {
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), "rules.toml", RULES);
        let path = write(dir.path(), "leadwatch.toml", &format!("{GOOD}{VENDORS}"));
        let cfg = Config::load_with_env(&path, Vec::new()).unwrap();
        let kinds: Vec<&str> = cfg.sources.values().map(|s| s.kind()).collect();
        assert_eq!(
            kinds,
            ["hubspot", "marketo", "pipedrive", "salesforce", "generic"]
        );
        assert_eq!(
            cfg.sources["hs"].link(),
            Some("https://app.hubspot.com/contacts/62515/record/0-1/{id}")
        );
        assert_eq!(cfg.sources["sf"].link(), None);
        assert_eq!(
            cfg.sources["hs"].dedupe_window(),
            Some(Duration::from_secs(7200))
        );
        assert_eq!(cfg.server.dedupe_window.0, Duration::from_secs(24 * 3600));
        let debug = format!("{cfg:?}");
        for secret in [
            "hs-new-secret",
            "hs-old-secret",
            "sf-password",
            "sf-path-secret",
            "mk-token",
            "pd-password",
        ] {
            assert!(!debug.contains(secret), "{secret} in {debug}");
        }
    }

    #[test]
    fn vendor_source_problems_name_their_key() {
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), "rules.toml", RULES);
        let bad = r#"
[sources.hs]
kind = "hubspot"
secret = "s"
public_url = "ftp://hooks.example.com/hs"
link = "https://app.hubspot.com/contacts/1/record/0-1/"
[sources.hs.fields]
scor = "hubspotscore"
[sources.sf]
kind = "salesforce"
organization_ids = ["00Dshort", "00D5g000004Xq2R"]
username = "only-a-user"
[sources.mk]
kind = "marketo"
header = "bad header"
secret = "t"
[sources.mk.fields]
lead = ""
email = "email"
[sources.pd]
kind = "pipedrive"
username = ""
password = "p"
"#;
        let path = write(dir.path(), "leadwatch.toml", &format!("{GOOD}{bad}"));
        let Problems(problems) = Config::load_with_env(&path, Vec::new()).unwrap_err();
        let keys: Vec<&str> = problems.iter().map(|p| p.key.as_str()).collect();
        assert_eq!(
            keys,
            [
                "sources.hs.link",
                "sources.hs.public_url",
                "sources.hs.fields.scor",
                "sources.mk.header",
                "sources.mk.fields.email",
                "sources.mk.fields.lead",
                "sources.pd.username",
                "sources.sf.organization_ids.0",
                "sources.sf.username",
            ],
            "{problems:#?}"
        );
        assert!(problems[2].message.contains("stage"), "{problems:#?}");

        // An unknown key inside a source is an error too, and so is a missing required one.
        let path = write(
            dir.path(),
            "leadwatch.toml",
            &format!(
                "{GOOD}\n[sources.pd]\nkind = \"pipedrive\"\nusername = \"u\"\npasword = \"p\"\n"
            ),
        );
        let Problems(problems) = Config::load_with_env(&path, Vec::new()).unwrap_err();
        assert!(
            problems
                .iter()
                .any(|p| p.key == "sources.pd" && p.message.contains("pasword")),
            "{problems:#?}"
        );
    }

    #[test]
    fn every_problem_is_reported_with_its_key_path() {
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), "rules.toml", RULES);
        let path = write(
            dir.path(),
            "leadwatch.toml",
            r#"
[server]
listen = "not an address"
max_body_bytez = 5
[kafka.options]
"enable.idempotence" = false
[sources.web]
kind = "generic"
secret = "hunter2"
[sinks.hook]
kind = "webhook"
url = "http://127.0.0.1:1/alerts"
secret = "whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD"
"#,
        );
        let Problems(problems) = Config::load_with_env(&path, Vec::new()).unwrap_err();
        let keys: Vec<&str> = problems.iter().map(|p| p.key.as_str()).collect();
        assert!(keys.contains(&"server.listen"), "{problems:?}");
        assert!(keys.contains(&"server.max_body_bytez"), "{problems:?}");
        assert!(keys.contains(&"kafka.options"), "{problems:?}");
        assert_eq!(problems.len(), 4, "{problems:?}");
        // Inside a `kind`-tagged table the path stops at the table; the message names the secret.
        assert!(keys.contains(&"sources.web"), "{problems:?}");
        assert!(
            problems
                .iter()
                .any(|p| p.message.contains("max_body_bytez")),
            "{problems:?}"
        );
        // Secrets are not echoed back in errors.
        assert!(
            !problems.iter().any(|p| p.message.contains("hunter2")),
            "{problems:?}"
        );
    }

    #[test]
    fn chat_and_crm_sinks_load_with_defaults_and_keep_their_secrets_out_of_debug() {
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), "rules.toml", RULES);
        let path = write(
            dir.path(),
            "leadwatch.toml",
            r#"
roles = ["dispatch"]
[dispatch]
retry_schedule = ["1s", "1m"]
[sinks.chat]
kind = "slack"
webhook_url = "https://hooks.slack.com/services/T0/B0/slacksecret"
[sinks.ms]
kind = "teams"
webhook_url = "https://prod.westeurope.logic.azure.com/workflows/x?sig=teamssecret"
[sinks.sf]
kind = "salesforce"
instance_url = "https://example.my.salesforce.com"
token_url = "https://login.salesforce.com/services/oauth2/token"
client_id = "cid"
client_secret = "sfsecret"
external_id_field = "Leadwatch_Alert_Id__c"
apply_reassignment = true
due_in = "1h"
[sinks.hs]
kind = "hubspot"
token = "pat-na1-hubsecret"
[[routes]]
alerts = ["sla.*"]
to = ["owner"]
sinks = ["chat", "sf"]
title = "{{ lead }}"
"#,
        );
        let cfg = Config::load_with_env(&path, Vec::new()).unwrap();
        assert_eq!(cfg.sinks["chat"].max_per_second(), Some(1.0));
        assert_eq!(cfg.sinks["hs"].kind(), "hubspot");
        match &cfg.sinks["hs"] {
            SinkConfig::Hubspot { base_url, .. } => {
                assert_eq!(base_url.as_str(), "https://api.hubapi.com/")
            }
            other => panic!("{other:?}"),
        }
        match &cfg.sinks["sf"] {
            SinkConfig::Salesforce {
                api_version,
                due_in,
                ..
            } => {
                assert_eq!(api_version, "62.0");
                assert_eq!(due_in.0, Duration::from_secs(3600));
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(cfg.routes.len(), 1);
        assert_eq!(
            crate::dispatch::retry::Schedule::from(&cfg.dispatch).delays,
            [Duration::from_secs(1), Duration::from_secs(60)]
        );
        let debug = format!("{cfg:?}");
        for secret in ["slacksecret", "teamssecret", "sfsecret", "hubsecret"] {
            assert!(!debug.contains(secret), "{secret} in {debug}");
        }
        assert!(debug.contains("hooks.slack.com"), "{debug}");
    }
}
