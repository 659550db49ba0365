//! leadwatch holds sales and marketing to the lead-management rules they agreed on.
//!
//! Data flow (see DESIGN.md): webhooks → [`ingest`] (verify, parse, normalise into
//! [`event::LeadEvent`]) → Kafka `{prefix}.events` → [`engine`] (per-lead state, SLA deadlines,
//! rules) → Kafka `{prefix}.alerts` → [`dispatch`] (sinks, retries) → people.
//!
//! - [`config`]: typed configuration, loaded and validated with every problem reported.
//! - [`signature`]: Standard Webhooks signing and verification.
//! - [`bus`]: Kafka producer, consumer groups, topics, the embedded broker.
//! - [`engine`]: the pure SLA engine, with one entry point ([`engine::PartitionState::step`]).
//! - [`runner`]: the shells that run the stages on Kafka (the engine's: [`runner::engine`]).
//! - [`simulate`]: the engine over a file of past events, with a scorecard.
//! - [`dispatch`]: routes, templates, sinks ([`dispatch::sinks`]), per-sink queues, durable
//!   retries ([`dispatch::backlog`], [`dispatch::retry`]) and dead letters ([`dispatch::dlq`]).
//! - [`http`] / [`app`]: serving and wiring; [`telemetry`]: logs and metrics.
#![forbid(unsafe_code)]

pub mod alert;
pub mod app;
pub mod bus;
pub mod cli;
pub mod clock;
pub mod conf;
pub mod dispatch;
pub mod engine;
pub mod event;
pub mod forget;
pub mod ingest;
pub mod partitioner;
pub mod runner;
pub mod signature;
pub mod simulate;
pub mod telemetry;
