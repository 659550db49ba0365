//! The stages that run on Kafka consumer groups, and the skeleton they all run on, written once.
//!
//! - [`group`]: the consumer-group skeleton: assign → pause → restore → resume → hand out
//!   messages → store offsets once their work is done → revoke.
//! - [`engine`]: the SLA engine's shell ([`engine::EngineRunner`]), around
//!   [`crate::engine::PartitionState::step`].
//! - [`dispatch`]: the dispatcher ([`dispatch::Dispatcher`]), around [`crate::dispatch::deliver`].
//! - [`writes`]: a partition's writes to Kafka, chained per key, stopped on revocation.
//! - [`health`]: liveness as progress: loops that turn, partitions whose work moves on.

pub mod dispatch;
pub mod engine;
pub mod group;
pub mod health;
pub mod writes;

use std::sync::Arc;

use rdkafka::ClientConfig;

use crate::bus::producer::Producer;
use crate::bus::{KafkaConfig, Topics};
use crate::clock::Clock;
use crate::telemetry::Metrics;

/// What every stage is handed: the Kafka clients' settings, the topics, the producer they share,
/// the metrics, the clock, and where to report progress.
#[derive(Clone)]
pub struct Context {
    /// Settings every Kafka client shares (brokers, TLS, SASL …).
    pub base: ClientConfig,
    pub kafka: KafkaConfig,
    pub topics: Topics,
    pub producer: Arc<Producer>,
    pub metrics: Arc<Metrics>,
    pub clock: Clock,
    /// Where the stages report their progress (`/healthz`), if anywhere.
    pub liveness: Option<Arc<health::Liveness>>,
}

impl Context {
    /// The handle `stage` reports its progress through, if progress is watched.
    pub fn beat(&self, stage: &'static str) -> Option<health::Beat> {
        self.liveness.as_ref().map(|l| l.stage(stage))
    }
}
