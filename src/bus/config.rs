//! `[kafka]`: the brokers, the topics' names and shape, the consumer groups, and librdkafka
//! options passed through (TLS, SASL, compression) — except those the guarantees rest on.

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use serde::Deserialize;

use crate::conf::{HumanDuration, KeyProblems};

#[derive(Debug, eserde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawKafkaConfig {
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
    /// The fewest replicas each of the daemon's topics must have: the daemon refuses to start
    /// on fewer. Unset: fewer than 3 is a warning.
    #[serde(default)]
    min_replication_factor: Option<i32>,
    /// The lowest `min.insync.replicas` each of the daemon's topics must have (checked where the
    /// broker describes topic configurations): the daemon refuses to start below it. Unset: below
    /// 2 is a warning.
    #[serde(default)]
    min_insync_replicas: Option<i32>,
    /// This instance's static group membership id (`group.instance.id` of its consumer groups):
    /// a member restarted within `session_timeout` under the same id gets its partitions back
    /// without a rebalance. Unique per instance and stable across its restarts (a StatefulSet's
    /// pod name, e.g. from `LEADWATCH__KAFKA__INSTANCE_ID`); unset: dynamic membership.
    #[serde(default)]
    instance_id: Option<String>,
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
            min_replication_factor: None,
            min_insync_replicas: None,
            instance_id: None,
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
    /// Refuse to start when a topic has fewer replicas (unset: warn below 3).
    pub min_replication_factor: Option<i32>,
    /// Refuse to start when a topic's `min.insync.replicas` is lower (unset: warn below 2).
    pub min_insync_replicas: Option<i32>,
    /// Static group membership (`group.instance.id`) when set; dynamic when not.
    pub instance_id: Option<String>,
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

/// librdkafka's default `message.max.bytes`: what the producer refuses a record over unless
/// `[kafka.options]` sets it (pinned by a test against librdkafka itself).
pub const LIBRDKAFKA_MESSAGE_MAX_BYTES: usize = 1_000_000;

impl KafkaConfig {
    /// The producer's `message.max.bytes`: `[kafka.options]`'s, else librdkafka's default.
    pub fn message_max_bytes(&self) -> usize {
        self.options
            .get("message.max.bytes")
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(LIBRDKAFKA_MESSAGE_MAX_BYTES)
    }

    pub fn is_embedded(&self) -> bool {
        self.brokers.trim().is_empty()
    }
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
    ("group.instance.id", "set `kafka.instance_id` instead"),
    ("bootstrap.servers", "set `kafka.brokers` instead"),
];

impl RawKafkaConfig {
    /// Every problem of `[kafka]` beyond its types, keys relative to the section.
    pub fn problems(&self) -> KeyProblems {
        let mut problems = KeyProblems::new();
        if self.topic_prefix.is_empty()
            || !self
                .topic_prefix
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "._-".contains(c))
        {
            problems.push((
                "topic_prefix".into(),
                "must be non-empty and use only letters, digits, `.`, `_` and `-`".into(),
            ));
        }
        if self.group_id.trim().is_empty() {
            problems.push(("group_id".into(), "must not be empty".into()));
        }
        if self.partitions < 1 {
            problems.push(("partitions".into(), "must be at least 1".into()));
        }
        for (key, value) in [
            ("min_replication_factor", self.min_replication_factor),
            ("min_insync_replicas", self.min_insync_replicas),
        ] {
            if value.is_some_and(|v| v < 1) {
                problems.push((key.into(), "must be at least 1 when set".into()));
            }
        }
        if let Some(id) = &self.instance_id
            && (id.is_empty()
                || id.len() > 249
                || !id
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "._-".contains(c)))
        {
            problems.push((
                "instance_id".into(),
                "must be 1 to 249 letters, digits, `.`, `_` or `-`".into(),
            ));
        }
        if self.replication_factor == 0 || self.replication_factor < -1 {
            problems.push((
                "replication_factor".into(),
                "must be at least 1, or -1 for the broker's default".into(),
            ));
        }
        problems
    }
}

impl From<RawKafkaConfig> for KafkaConfig {
    fn from(raw: RawKafkaConfig) -> Self {
        KafkaConfig {
            brokers: raw.brokers,
            topic_prefix: raw.topic_prefix,
            group_id: raw.group_id,
            partitions: raw.partitions,
            replication_factor: raw.replication_factor,
            session_timeout: raw.session_timeout.0,
            min_replication_factor: raw.min_replication_factor,
            min_insync_replicas: raw.min_insync_replicas,
            instance_id: raw.instance_id,
            options: raw.options.0,
        }
    }
}
