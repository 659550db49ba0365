//! leadwatch holds sales and marketing to the lead-management rules they agreed on.
//!
//! Data flow (see DESIGN.md): webhooks → [`ingest`] (verify, parse, normalise into
//! [`event::LeadEvent`]) → Kafka `{prefix}.events` → [`engine`] (per-lead state, SLA deadlines,
//! rules) → Kafka `{prefix}.alerts` → [`dispatch`] (sinks, retries) → people.
//!
//! The modules, in their layers bottom up (the README's "Architecture"; `tests/layers.rs` keeps
//! every arrow pointing down):
//! - leaves: [`conf`] (configuration vocabulary), [`clock`] (the only clock reads);
//! - vocabulary: [`event`], [`alert`], [`partitioner`], [`signature`], [`telemetry`];
//! - core: [`bus`] (Kafka plumbing), [`engine`] (pure, one entry point:
//!   [`engine::PartitionState::step`]);
//! - edges: [`ingest`] (one folder per vendor), [`identity`] (which records are one person),
//!   [`dispatch`] (sinks, the retry decision), [`simulate`] (the engine over a file, the
//!   scorecard), [`forget`];
//! - [`runner`]: the consumer-group skeleton, once, and the stages on it;
//! - [`app`]: wiring, the root configuration, the HTTP listener;
//! - [`cli`]: one file per subcommand.
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
pub mod identity;
pub mod ingest;
pub mod partitioner;
pub mod runner;
pub mod signature;
pub mod simulate;
pub mod stamp;
pub mod telemetry;
