//! The stages that run on Kafka consumer groups, and the skeleton they all run on, written once.
//!
//! - [`group`]: the consumer-group skeleton: assign → pause → restore → resume → hand out
//!   messages → store offsets once their work is done → revoke.
//! - [`engine`]: the SLA engine's shell ([`engine::EngineRunner`]), around
//!   [`crate::engine::PartitionState::step`].
//! - [`dispatch`]: the dispatcher ([`dispatch::Dispatcher`]), around [`crate::dispatch::deliver`].
//! - [`writes`]: a partition's writes to Kafka, chained per key, stopped on revocation.

pub mod dispatch;
pub mod engine;
pub mod group;
pub mod writes;

use std::sync::Arc;

use rdkafka::ClientConfig;

use crate::bus::producer::Producer;
use crate::bus::{KafkaConfig, Topics};
use crate::clock::Clock;
use crate::telemetry::Metrics;

/// What every stage is handed: the Kafka clients' settings, the topics, the producer they share,
/// the metrics and the clock.
#[derive(Clone)]
pub struct Context {
    /// Settings every Kafka client shares (brokers, TLS, SASL …).
    pub base: ClientConfig,
    pub kafka: KafkaConfig,
    pub topics: Topics,
    pub producer: Arc<Producer>,
    pub metrics: Arc<Metrics>,
    pub clock: Clock,
}
