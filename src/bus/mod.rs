//! Kafka: topic names, client settings, the producer, consumer groups, topic creation and the
//! embedded in-memory broker.

pub mod admin;
pub mod backlog;
pub mod changelog;
pub mod config;
pub mod consumer;
pub mod embedded;
pub mod producer;

use rdkafka::ClientConfig;

pub use config::{DEFAULT_PARTITIONS, KafkaConfig, RawKafkaConfig};

/// The daemon's topics, named from `kafka.topic_prefix`.
#[derive(Debug, Clone)]
pub struct Topics {
    /// Canonical lead events, keyed by lead.
    pub events: String,
    /// Authentic raw requests, for audit and replay.
    pub raw: String,
    /// The engine's lead-state changelog, keyed by lead, compacted.
    pub state: String,
    /// Alert intents, keyed by lead.
    pub alerts: String,
    /// What each sink has received, per (alert, sink), keyed by lead, compacted.
    pub delivered: String,
    /// Alerts a sink refused for good or that exhausted retries.
    pub dlq: String,
    /// Deliveries waiting for a retry, per lead, compacted (the dispatcher's durable backlog).
    pub retry: String,
}

impl Topics {
    pub fn new(prefix: &str) -> Self {
        Self {
            events: format!("{prefix}.events"),
            raw: format!("{prefix}.raw"),
            state: format!("{prefix}.state"),
            alerts: format!("{prefix}.alerts"),
            delivered: format!("{prefix}.delivered"),
            dlq: format!("{prefix}.alerts.dlq"),
            retry: format!("{prefix}.alerts.retry"),
        }
    }

    /// Every topic with whether it is compacted.
    pub fn all(&self) -> [(&str, bool); 7] {
        [
            (&self.events, false),
            (&self.raw, false),
            (&self.state, true),
            (&self.alerts, false),
            (&self.delivered, true),
            (&self.dlq, false),
            (&self.retry, true),
        ]
    }
}

/// Logs a librdkafka client error at its real weight: reaching the end of a partition (reported
/// because the engine asks for it) is not an error at all.
pub fn log_client_error(client: &str, error: rdkafka::error::KafkaError, reason: &str) {
    use rdkafka::error::{KafkaError, RDKafkaErrorCode};
    match error {
        KafkaError::PartitionEOF(_) | KafkaError::Global(RDKafkaErrorCode::PartitionEOF) => {
            tracing::trace!(client, reason, "end of partition")
        }
        e => tracing::warn!(client, error = %e, reason, "Kafka client error"),
    }
}

/// A client context for short-lived consumers (changelog restore): quiet about partition ends.
#[derive(Clone, Default)]
pub struct QuietContext;

impl rdkafka::ClientContext for QuietContext {
    fn error(&self, error: rdkafka::error::KafkaError, reason: &str) {
        log_client_error("restore", error, reason);
    }
}

impl rdkafka::consumer::ConsumerContext for QuietContext {}

/// Settings every client shares: the brokers, then the user's `[kafka.options]` (TLS, SASL …).
pub fn client_config(kafka: &KafkaConfig, bootstrap: &str) -> ClientConfig {
    let mut cfg = ClientConfig::new();
    cfg.set("bootstrap.servers", bootstrap);
    for (k, v) in &kafka.options {
        cfg.set(k, v);
    }
    cfg
}
