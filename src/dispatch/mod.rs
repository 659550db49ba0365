//! The dispatcher: consumes `{prefix}.alerts` as its own consumer group and brings each alert to
//! the sinks its routes name ([`routes`]), in the words of its templates ([`template`]), through
//! one queue per sink ([`queue`]), retrying on a durable schedule ([`retry`], [`backlog`]) and
//! dead-lettering what cannot be delivered ([`dlq`]).
//!
//! # Where things are
//!
//! - This file: the consumer-group loop and nothing else — assignments and revocations, the two
//!   restores of each partition (ledger and backlog), the timer of due retries, storing offsets,
//!   the drain at shutdown. What it does per message, per due backlog entry and per restored
//!   partition is [`deliver`]'s (`fan_out`, `retry_one`, `Work::restore`), which depend on no
//!   state of the loop, so the loop can become the shared consumer-group skeleton.
//! - [`deliver`]: one alert to each of its sinks — the inline first attempt or the backlog, one
//!   delivery of an (alert, sink) at a time with the ledger and backlog checked under that lock,
//!   and carrying out what the retry decision says (ledger mark, backlog entry, dead letter).
//! - [`retry`]: whether and when a failed attempt is tried again (`retry::decide`, pure; live
//!   delivery and `dlq replay` both ask it), and where the other parts of a retry live.
//! - [`backlog`] and [`ledger`]: the two per-lead changelogs of a partition, written through
//!   `durable`; [`queue`]: one per sink (concurrency, pace, the pause on 429, health);
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
mod durable;
pub mod ledger;
pub mod queue;
pub mod retry;
pub mod routes;
pub mod sinks;
pub mod template;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::future::BoxFuture;
use futures::stream::{FuturesOrdered, FuturesUnordered};
use futures::{FutureExt, StreamExt};
use rdkafka::{ClientConfig, Message};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::alert::Alert;
use crate::bus::KafkaConfig;
use crate::bus::Topics;
use crate::bus::changelog::{Restored, Restorer, Slot, Snapshot};
use crate::bus::consumer::{self, Assignment, RebalanceHooks};
use crate::bus::producer::Producer;
use crate::clock::Clock;
use crate::telemetry::Metrics;
pub use config::{DispatchConfig, DispatchSections};
use deliver::{Shared, Work, fan_out, retry_one};

type Slots = crate::bus::changelog::Slots<Work, (i64, Alert, Bytes)>;
type Pendings = FuturesOrdered<BoxFuture<'static, Option<(i32, i64)>>>;

/// The dispatcher, ready to run.
pub struct Dispatcher {
    shared: Arc<Shared>,
    recovered_rx: mpsc::UnboundedReceiver<String>,
    base: ClientConfig,
    kafka: KafkaConfig,
    config: DispatchConfig,
    restore_timeout: Duration,
}

impl Dispatcher {
    /// Builds the sinks of `[sinks.*]`, the routes and the templates. `restore_timeout`: the
    /// longest a partition's restore of its ledger and backlog may take before it is retried;
    /// `clock`: the time of everything the dispatcher does.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        config: DispatchSections<'_>,
        kafka: &KafkaConfig,
        restore_timeout: Duration,
        producer: Arc<Producer>,
        base: ClientConfig,
        topics: Topics,
        metrics: Arc<Metrics>,
        clock: Clock,
    ) -> anyhow::Result<Self> {
        let (shared, recovered_rx) = Shared::new(config, producer, topics, metrics, clock)?;
        Ok(Self {
            shared,
            recovered_rx,
            base,
            kafka: kafka.clone(),
            config: config.dispatch.clone(),
            restore_timeout,
        })
    }

    /// Runs until `shutdown`; deliveries still in flight after `grace` are abandoned (the alert's
    /// offset or its backlog entry is still there, so they are redone after a restart).
    pub async fn run(
        mut self,
        shutdown: CancellationToken,
        grace: Duration,
    ) -> Result<(), rdkafka::error::KafkaError> {
        let shared = self.shared.clone();
        let topics = shared.topics.clone();
        let group = format!("{}.dispatch", self.kafka.group_id);
        let producer = shared.producer.clone();
        let hooks = RebalanceHooks {
            pause_on_assign: true,
            report_end: false,
            on_revoke: Some(Box::new(move || {
                producer.flush_blocking(Duration::from_secs(5))
            })),
        };
        let (consumer, mut assignments) = consumer::subscribe(
            &self.base,
            &self.kafka,
            &group,
            &topics.alerts,
            shared.metrics.clone(),
            hooks,
        )?;
        tracing::info!(%group, topic = %topics.alerts, sinks = shared.queues.len(), routes = shared.routes.configs().len(), "dispatcher started");
        let ledger_restorer = Restorer {
            base: self.base.clone(),
            topic: topics.delivered.clone(),
            timeout: self.restore_timeout,
        };
        let backlog_restorer = Restorer {
            base: self.base.clone(),
            topic: topics.retry.clone(),
            timeout: self.restore_timeout,
        };
        let (ledger_tx, mut ledger_rx) = mpsc::unbounded_channel::<Restored>();
        let (backlog_tx, mut backlog_rx) = mpsc::unbounded_channel::<Restored>();
        // Restores finished for the current generation of a partition: (ledger, backlog).
        let mut halves: HashMap<i32, (u64, Option<Snapshot>, Option<Snapshot>)> = HashMap::new();
        let mut slots = Slots::default();
        let mut pending: Pendings = FuturesOrdered::new();
        let mut retrying: FuturesUnordered<BoxFuture<'static, ()>> = FuturesUnordered::new();
        let mut gauge = tokio::time::interval(Duration::from_secs(1));
        gauge.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);

        loop {
            let next_due = slots
                .iter_ready()
                .filter_map(|(_, w)| w.backlog.next_due())
                .min();
            let wake = next_due
                .map(|t| shared.clock.until(t))
                .unwrap_or(Duration::from_secs(3600));
            tokio::select! {
                biased;
                _ = shutdown.cancelled() => break,
                Some(change) = assignments.recv() => match change {
                    Assignment::Assigned(ps) => {
                        tracing::info!(partitions = ?ps, "dispatcher assigned partitions; restoring deliveries and retries");
                        slots.assigned(ps.clone(), &ledger_restorer, &ledger_tx);
                        for p in ps {
                            if let Some(Slot::Restoring { generation, .. }) = slots.slots.get(&p) {
                                halves.insert(p, (*generation, None, None));
                                backlog_restorer.spawn(p, *generation, Duration::ZERO, backlog_tx.clone());
                            }
                        }
                    }
                    Assignment::Revoked(ps) => {
                        tracing::info!(partitions = ?ps, "dispatcher partitions revoked");
                        for p in &ps {
                            if let Some(w) = slots.ready_mut(*p) {
                                w.revoked.cancel();
                            }
                            halves.remove(p);
                        }
                        slots.revoked(&ps);
                    }
                },
                Some(done) = ledger_rx.recv() => {
                    if let Some(half) = Self::restored(&slots, &mut halves, done, 0, &ledger_restorer, &ledger_tx) {
                        self.ready(half, &mut slots, &mut halves, &consumer, &mut pending);
                    }
                }
                Some(done) = backlog_rx.recv() => {
                    if let Some(half) = Self::restored(&slots, &mut halves, done, 1, &backlog_restorer, &backlog_tx) {
                        self.ready(half, &mut slots, &mut halves, &consumer, &mut pending);
                    }
                }
                Some(done) = pending.next(), if !pending.is_empty() => {
                    if let Some((partition, offset)) = done {
                        consumer::store(&consumer, &topics.alerts, partition, offset);
                    }
                }
                Some(()) = retrying.next(), if !retrying.is_empty() => {}
                Some(sink) = self.recovered_rx.recv() => {
                    let now = shared.clock.now();
                    let moved: usize = slots.iter_ready().map(|(_, w)| w.backlog.pull_forward(&sink, now)).sum();
                    if moved > 0 {
                        tracing::info!(%sink, moved, "sink answers again; its backlog goes now");
                    }
                }
                _ = tokio::time::sleep(wake) => {
                    let now = shared.clock.now();
                    for (_, work) in slots.iter_ready() {
                        for (lead, entry) in work.backlog.take_due(now) {
                            retrying.push(retry_one(shared.clone(), work.clone(), lead, entry).boxed());
                        }
                    }
                }
                _ = shared.changed.notified() => {}
                _ = gauge.tick() => shared.report_backlog(slots.iter_ready().map(|(_, w)| w)),
                received = consumer.recv(), if pending.len() < self.config.max_in_flight => {
                    let msg = match received {
                        Ok(msg) => msg,
                        Err(e) => {
                            tracing::warn!(error = %e, "dispatcher consumer error");
                            continue;
                        }
                    };
                    let (partition, offset) = (msg.partition(), msg.offset());
                    let payload = Bytes::copy_from_slice(msg.payload().unwrap_or_default());
                    let alert: Alert = match serde_json::from_slice(&payload) {
                        Ok(alert) => alert,
                        Err(error) => {
                            tracing::error!(partition, offset, %error, "skipping a message that is not an alert");
                            shared.metrics.delivery("", "unreadable_alert");
                            pending.push_back(futures::future::ready(Some((partition, offset))).boxed());
                            continue;
                        }
                    };
                    match slots.route(partition) {
                        Slot::Restoring { waiting, .. } => waiting.push((offset, alert, payload)),
                        Slot::Ready(work) => {
                            pending.push_back(fan_out(shared.clone(), work.clone(), offset, alert, payload).boxed());
                        }
                    }
                }
            }
        }

        tracing::info!(
            in_flight = pending.len(),
            retrying = retrying.len(),
            "dispatcher stopping"
        );
        let drain = async {
            loop {
                tokio::select! {
                    Some(done) = pending.next(), if !pending.is_empty() => {
                        if let Some((partition, offset)) = done {
                            consumer::store(&consumer, &topics.alerts, partition, offset);
                        }
                    }
                    Some(()) = retrying.next(), if !retrying.is_empty() => {}
                    else => break,
                }
            }
        };
        if tokio::time::timeout(grace, drain).await.is_err() {
            tracing::warn!("grace period over; unfinished deliveries are redone after a restart");
            shared.abandon.cancel();
        }
        consumer::close(consumer, Duration::from_secs(5)).await;
        tracing::info!("dispatcher stopped");
        Ok(())
    }

    /// Files a finished restore (`which`: 0 ledger, 1 backlog); returns the partition once both
    /// halves of its current generation are in.
    fn restored(
        slots: &Slots,
        halves: &mut HashMap<i32, (u64, Option<Snapshot>, Option<Snapshot>)>,
        done: Restored,
        which: usize,
        restorer: &Restorer,
        again: &mpsc::UnboundedSender<Restored>,
    ) -> Option<i32> {
        if !slots.is_current(&done) {
            return None;
        }
        let Restored {
            partition,
            generation,
            result,
        } = done;
        let snapshot = match result {
            Ok(s) => s,
            Err(e) => {
                tracing::error!(partition, topic = %restorer.topic, error = %e, "restore failed; retrying");
                restorer.spawn(partition, generation, Duration::from_secs(1), again.clone());
                return None;
            }
        };
        let half = halves.get_mut(&partition)?;
        if half.0 != generation {
            return None;
        }
        if which == 0 {
            half.1 = Some(snapshot);
        } else {
            half.2 = Some(snapshot);
        }
        (half.1.is_some() && half.2.is_some()).then_some(partition)
    }

    /// Makes a restored partition ready: its waiting alerts are fanned out, it is resumed.
    fn ready(
        &self,
        partition: i32,
        slots: &mut Slots,
        halves: &mut HashMap<i32, (u64, Option<Snapshot>, Option<Snapshot>)>,
        consumer: &consumer::GroupConsumer,
        pending: &mut Pendings,
    ) {
        let Some((_, Some(ledger), Some(backlog))) = halves.remove(&partition) else {
            return;
        };
        let work = Work::restore(partition, ledger, backlog, self.shared.clock.now());
        for (offset, alert, body) in slots.ready(partition, work.clone()) {
            pending
                .push_back(fan_out(self.shared.clone(), work.clone(), offset, alert, body).boxed());
        }
        consumer::resume(consumer, &self.shared.topics.alerts, partition);
    }
}
