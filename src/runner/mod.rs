//! The stages that run on Kafka consumer groups, and the skeleton they all run on, written once
//! ([`group`]): the dispatcher ([`dispatch`]).

pub mod dispatch;
pub mod group;

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
