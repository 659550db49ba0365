//! Kafka: topic names, client settings, the producer, consumer groups, topic creation and the
//! embedded in-memory broker.

pub mod admin;
pub mod changelog;
pub mod consumer;
pub mod embedded;
pub mod producer;

use rdkafka::ClientConfig;

use crate::config::KafkaConfig;

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

/// Settings every client shares: the brokers, then the user's `[kafka.options]` (TLS, SASL …).
pub fn client_config(kafka: &KafkaConfig, bootstrap: &str) -> ClientConfig {
    let mut cfg = ClientConfig::new();
    cfg.set("bootstrap.servers", bootstrap);
    for (k, v) in &kafka.options {
        cfg.set(k, v);
    }
    cfg
}
