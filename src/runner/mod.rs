//! The shells that run the stages on Kafka: each consumes its topic as a consumer group, hands
//! what it reads to its stage's pure core, and carries out what comes back — writes chained per
//! key, offsets stored once what they caused is in Kafka.
//!
//! - [`engine`]: the SLA engine's shell ([`engine::EngineRunner`]), around
//!   [`crate::engine::PartitionState::step`].
//! - [`writes`]: a partition's writes to Kafka, chained per key, stopped on revocation.

pub mod engine;
pub mod writes;
