//! Kafka: topic names, client settings, the producer, consumer groups, topic creation and the
//! embedded in-memory broker.

pub mod admin;
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

/// The partitioner of every producer: murmur2 of the key, as Kafka's Java clients place keys.
/// Pinned, because a lead's state lives in the partition its events go to, and `simulate`
/// places leads the same way ([`partition_for`]) to rotate the pools as the daemon does.
pub const PARTITIONER: &str = "murmur2_random";

/// The partition [`PARTITIONER`] gives `key` among `partitions`.
pub fn partition_for(key: &[u8], partitions: i32) -> i32 {
    ((murmur2(key) & 0x7fff_ffff) % partitions.max(1) as u32) as i32
}

/// MurmurHash2 with Kafka's seed, as `org.apache.kafka.common.utils.Utils.murmur2` and
/// librdkafka's `rd_murmur2`.
fn murmur2(data: &[u8]) -> u32 {
    const SEED: u32 = 0x9747_b28c;
    const M: u32 = 0x5bd1_e995;
    const R: u32 = 24;
    let mut h = SEED ^ data.len() as u32;
    let mut chunks = data.chunks_exact(4);
    for c in &mut chunks {
        let mut k = u32::from_le_bytes([c[0], c[1], c[2], c[3]]);
        k = k.wrapping_mul(M);
        k ^= k >> R;
        k = k.wrapping_mul(M);
        h = h.wrapping_mul(M);
        h ^= k;
    }
    let rest = chunks.remainder();
    if !rest.is_empty() {
        for (i, b) in rest.iter().enumerate().rev() {
            h ^= u32::from(*b) << (8 * i);
        }
        h = h.wrapping_mul(M);
    }
    h ^= h >> 13;
    h = h.wrapping_mul(M);
    h ^= h >> 15;
    h
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn murmur2_matches_kafkas_own_vectors() {
        // From Kafka's UtilsTest.
        for (key, want) in [
            (&b"21"[..], -973_932_308i32),
            (b"foobar", -790_332_482),
            (b"a-little-bit-long-string", -985_981_536),
            (b"a-little-bit-longer-string", -1_486_304_829),
            (
                b"lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8",
                -58_897_971,
            ),
            (b"abc", 479_470_107),
        ] {
            assert_eq!(
                murmur2(key) as i32,
                want,
                "{:?}",
                String::from_utf8_lossy(key)
            );
        }
    }
}
