//! The dispatcher: consumes `{prefix}.alerts` as its own consumer group and brings each alert to
//! the sinks its routes name ([`routes`]), in the words of its templates ([`template`]), through
//! one queue per sink ([`queue`]), retrying on a durable schedule ([`retry`], [`backlog`]) and
//! dead-lettering what cannot be delivered ([`dlq`]).
//!
//! # Where things are
//!
//! - The consumer-group loop is not here: it runs on the shared skeleton, in
//!   `runner/dispatch.rs` (assignments, the two restores of each partition — ledger and backlog —,
//!   the timer of due retries, storing offsets, the drain at shutdown). What it does per
//!   message, per due backlog entry and per restored partition is [`deliver`]'s (`fan_out`,
//!   `retry_one`, `Work::restore`).
//! - [`deliver`]: one alert to each of its sinks — the inline first attempt or the backlog, one
//!   delivery of an (alert, sink) at a time with the ledger and backlog checked under that lock,
//!   and carrying out what the retry decision says (ledger mark, backlog entry, dead letter).
//! - [`retry`]: whether and when a failed attempt is tried again (`retry::decide`, pure; live
//!   delivery and `dlq replay` both ask it), and where the other parts of a retry live.
//! - [`backlog`] and [`ledger`]: the two per-lead changelogs of a partition, written through
//!   `bus::producer::Producer::until_acked`; [`queue`]: one per sink (concurrency, pace, the pause on 429, health);
//!   [`sinks`]: one module per kind, what they share in `sinks::attempt` and `sinks::crm`;
//!   [`dlq`]: dead letters and their replay; [`config`]: `[dispatch]`.
//!
//! # Why the queues and the backlog look like this
//!
//! Two requirements pull against each other. An alert's offset may be stored only once nothing
//! can be lost if the process dies (at-least-once), yet a sink that is down for hours must not
//! hold back the alerts of the other sinks. Waiting for every sink's delivery before storing an
//! offset (the first design) meets the first and fails the second: once `max_in_flight` alerts
//! wait on a dead sink, nothing moves.
//!
//! So an alert's offset waits only until each of its sinks is *settled*: delivered and recorded
//! in `{prefix}.delivered` (the ledger), dead-lettered, or written to the retry backlog in
//! `{prefix}.alerts.retry`. The backlog takes over from there. A healthy sink with room in its
//! queue gets the first attempt at once, inline (no extra hop, lowest latency); a failing or
//! busy sink (its queue holding about a second's worth) gets the alert written straight to the
//! backlog, so the offset moves on after one Kafka write whatever the sink does.
//!
//! The backlog is a compacted changelog keyed by lead, like the ledger, and partitioned like
//! the alerts. It is not consumed as a stream but restored per partition on assignment, with the
//! ledger: a consumed retry topic would need its own group, whose partitions need not land on
//! the member holding the same partition of the ledger (two members writing one lead's ledger
//! entry would lose marks), and holding records with far-off due times would pin its committed
//! offset for a day. Restored, the backlog is exactly as durable and always co-located. Each
//! partition's backlog keeps its entries in due-time order; one timer in the loop wakes for the
//! earliest, hands the due entries to their sinks' queues, and each outcome is written back
//! (the next due time, or removal on delivery or dead-lettering). A sink that answers again after
//! failing gets its whole backlog pulled forward to now, so a recovered receiver catches up in
//! seconds, not at each alert's next scheduled retry.
//!
//! Before every attempt the ledger is consulted, so an alert replayed after a crash, or a retry
//! whose removal from the backlog did not reach Kafka, is not delivered again to a sink that has
//! it. Only an attempt in flight at the moment of a crash can reach a sink twice, under the same
//! idempotency key (the webhook-id; the alert id in a CRM task).

pub mod backlog;
pub mod config;
pub mod deliver;
pub mod dlq;
pub mod ledger;
pub mod queue;
pub mod retry;
pub mod routes;
pub mod sinks;
pub mod template;

pub use config::{DispatchConfig, DispatchSections};
