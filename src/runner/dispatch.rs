//! The dispatcher on Kafka: consumes `{prefix}.alerts` as the group `{group_id}.dispatch` on the
//! shared skeleton ([`super::group`]). Each assigned partition's delivery ledger
//! (`{prefix}.delivered`) and retry backlog (`{prefix}.alerts.retry`) are read back before its
//! alerts are handed out; each alert is brought to its sinks by [`crate::dispatch::deliver`],
//! and its offset is stored once every sink is settled. One timer runs the backlog's due
//! retries, a batch per sink at a time (about a second's worth, the next as those are sent); a
//! sink that answers again gets its backlog at once, in such batches.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::future::BoxFuture;
use futures::stream::FuturesUnordered;
use futures::{FutureExt, StreamExt};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::Context;
use super::group::{Event, Group, Next, Read, Waited};
use crate::alert::Alert;
use crate::bus::changelog::Restorer;
use crate::bus::consumer::{self, RebalanceHooks, Revocation};
use crate::bus::producer::Unreadable;
use crate::dispatch::DispatchSections;
use crate::dispatch::deliver::{Shared, Unread, Work, fan_out, retry_one};
use tokio_util::task::AbortOnDropHandle;

/// How often the ledgers held are swept of deliveries past `dispatch.ledger_retention`.
const LEDGER_SWEEP: Duration = Duration::from_secs(600);

/// The longest a revocation waits for its partitions' deliveries under way: a rebalance is held
/// meanwhile (every member of the group waits for it).
const REVOKE_WAIT_CAP: Duration = Duration::from_secs(30);

/// Time for a delivery's record to be acknowledged by Kafka, once the sink answered.
const RECORD_WAIT: Duration = Duration::from_secs(5);

/// Due retries handed at once to a sink no longer configured (each is dead-lettered at once).
const UNKNOWN_SINK_BATCH: usize = 16;

/// The dispatcher, ready to run.
pub struct Dispatcher {
    shared: Arc<Shared>,
    /// Sinks that answered again after failing.
    recovered_rx: mpsc::UnboundedReceiver<String>,
    ctx: Context,
    max_in_flight: usize,
    restore_timeout: Duration,
    /// The ready partitions' work, for the revocation hook (on the consumer's thread) to wait
    /// for what they have under way.
    owned: Arc<std::sync::Mutex<HashMap<i32, Work>>>,
}

/// The dispatcher's own work, besides what the group hands it.
enum Own {
    /// A due retry to this sink finished.
    Retried(String),
    /// A sink answers again after failing.
    Recovered(String),
    /// Backlog entries may be due.
    Due,
    /// A backlog gained an entry (the timer may need to wake earlier).
    Changed,
    /// Time to publish the backlog gauge.
    Gauge,
    /// Time to forget deliveries older than the ledger's retention.
    Expire,
}

/// An alert as it came from `{prefix}.alerts`: read, and its bytes (the body sinks receive).
fn decode(payload: Option<&[u8]>) -> Result<(Alert, Bytes), String> {
    let body = Bytes::copy_from_slice(payload.unwrap_or_default());
    let alert = serde_json::from_slice(&body).map_err(|e| e.to_string())?;
    Ok((alert, body))
}

impl Dispatcher {
    /// Builds the sinks of `[sinks.*]`, the routes and the templates. `restore_timeout`: the
    /// longest a partition's restore of its ledger and backlog may take before it is retried.
    pub fn new(
        config: DispatchSections<'_>,
        restore_timeout: Duration,
        ctx: &Context,
    ) -> anyhow::Result<Self> {
        let (shared, recovered_rx) = Shared::new(
            config,
            ctx.producer.clone(),
            ctx.topics.clone(),
            ctx.metrics.clone(),
            ctx.clock.clone(),
        )?;
        Ok(Self {
            shared,
            recovered_rx,
            ctx: ctx.clone(),
            max_in_flight: config.dispatch.max_in_flight,
            restore_timeout,
            owned: Arc::default(),
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
        let ctx = self.ctx.clone();
        let topics = &ctx.topics;
        let group_id = format!("{}.dispatch", ctx.kafka.group_id);
        let (producer, owned, for_revoke) =
            (ctx.producer.clone(), self.owned.clone(), shared.clone());
        let hooks = RebalanceHooks {
            pause_on_assign: true,
            report_end: false,
            // Before partitions move, the deliveries under way for them end and are recorded
            // (the rest is abandoned unsent), and every ledger and backlog write so far is made
            // durable, so the next owner's restore sees it.
            // What cannot be made durable in time is purged when no kept partition shares the
            // producer's queue (a delivery's late record, written until acknowledged whatever
            // the partition, is queued again: it is meant to land after the revocation).
            on_revoke: Some(Box::new(move |revocation: &Revocation| {
                let works: Vec<Work> = {
                    let owned = owned.lock().expect("owned partitions lock");
                    revocation
                        .partitions
                        .iter()
                        .filter_map(|p| owned.get(p).cloned())
                        .collect()
                };
                finish_underway(&for_revoke, &works, revocation.can_wait);
                producer.settle_revocation(
                    crate::bus::producer::REVOKE_FLUSH,
                    !revocation.keeps_others,
                );
            })),
        };
        let subscribed = consumer::subscribe(
            &ctx.base,
            &ctx.kafka,
            &group_id,
            &topics.alerts,
            ctx.metrics.clone(),
            hooks,
        )?;
        let restorer = |topic: &str| {
            Restorer::new(
                ctx.base.clone(),
                topic,
                self.restore_timeout,
                ctx.clock.clone(),
            )
        };
        // Per partition: its ledger, then its backlog.
        let changelogs = vec![restorer(&topics.delivered), restorer(&topics.retry)];
        let mut group: Group<Work, (Alert, Bytes)> = Group::new(
            subscribed,
            &topics.alerts,
            changelogs,
            self.max_in_flight,
            decode,
        );
        group = group
            .counting(ctx.metrics.clone(), ctx.producer.backlog().cloned())
            .dead_lettering(ctx.producer.clone(), shared.abandon.clone());
        if let Some(beat) = ctx.beat("dispatch") {
            group = group.watched(beat);
        }
        tracing::info!(group = %group_id, topic = %topics.alerts, sinks = shared.queues.len(), routes = shared.routes.configs().len(), "dispatcher started");
        // Due retries being attempted. Each sink is handed its due retries a batch at a time,
        // as much as its queue has room for (`SinkQueue::retry_room`: about a second's worth
        // waiting for their turn), the next as those are sent; a sink no longer configured, a
        // batch at a time of those not yet finished (each is dead-lettered at once).
        let mut retrying: FuturesUnordered<BoxFuture<'static, String>> = FuturesUnordered::new();
        let mut retrying_per_sink: HashMap<String, usize> = HashMap::new();
        let room = |per_sink: &HashMap<String, usize>, sink: &str| match shared.queues.get(sink) {
            Some(queue) => queue.retry_room(),
            None => UNKNOWN_SINK_BATCH.saturating_sub(per_sink.get(sink).copied().unwrap_or(0)),
        };
        let mut gauge = tokio::time::interval(Duration::from_secs(1));
        gauge.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // Restored ledgers are swept as they come; this is for the ones held for days.
        let mut expire = tokio::time::interval(LEDGER_SWEEP);
        expire.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);

        loop {
            let next_due = group
                .partitions()
                .filter_map(|(_, w)| {
                    w.backlog
                        .next_due_of(|sink| room(&retrying_per_sink, sink) > 0)
                })
                .min();
            let wake = next_due
                .map(|t| shared.clock.until(t))
                .unwrap_or(Duration::from_secs(3600));
            // The dispatcher's own work comes after what the group must hand it first (a
            // revocation before anything else) and before new alerts (so a steady stream of
            // alerts never starves the backlog).
            let own = async {
                tokio::select! {
                    biased;
                    Some(sink) = retrying.next(), if !retrying.is_empty() => Own::Retried(sink),
                    Some(sink) = self.recovered_rx.recv() => Own::Recovered(sink),
                    _ = tokio::time::sleep(wake) => Own::Due,
                    _ = shared.changed.notified() => Own::Changed,
                    _ = gauge.tick() => Own::Gauge,
                    _ = expire.tick() => Own::Expire,
                }
            };
            tokio::select! {
                biased;
                _ = shutdown.cancelled() => break,
                next = group.next_or(own) => match next {
                    Next::Group(event) => self.on(event, &mut group),
                    Next::Stage(Own::Retried(sink)) => {
                        if let Some(n) = retrying_per_sink.get_mut(&sink) {
                            *n = n.saturating_sub(1);
                        }
                    }
                    Next::Stage(Own::Changed) => {}
                    Next::Stage(Own::Recovered(sink)) => {
                        let now = shared.clock.now();
                        let moved: usize = group.partitions().map(|(_, w)| w.backlog.pull_forward(&sink, now)).sum();
                        if moved > 0 {
                            tracing::info!(%sink, moved, "sink answers again; its backlog goes now");
                        }
                    }
                    Next::Stage(Own::Due) => {
                        let now = shared.clock.now();
                        // Taken now and not yet in their queue: counted against its room.
                        let mut taken: HashMap<String, usize> = HashMap::new();
                        for (_, work) in group.partitions() {
                            let due = work.backlog.take_due_at_most(now, |sink| {
                                room(&retrying_per_sink, sink).saturating_sub(taken.get(sink).copied().unwrap_or(0))
                            });
                            for (lead, entry) in due {
                                let sink = entry.sink.clone();
                                *taken.entry(sink.clone()).or_default() += 1;
                                *retrying_per_sink.entry(sink.clone()).or_default() += 1;
                                // A task of its own: it goes on while a revocation holds
                                // this loop (`finish_underway`).
                                let task = AbortOnDropHandle::new(tokio::spawn(retry_one(shared.clone(), work.clone(), lead, entry)));
                                retrying.push(task.map(move |_| sink).boxed());
                            }
                        }
                    }
                    Next::Stage(Own::Gauge) => {
                        shared.report_backlog(group.partitions().map(|(_, w)| w))
                    }
                    Next::Stage(Own::Expire) => {
                        for (_, work) in group.partitions() {
                            shared.expire_ledger(work);
                        }
                    }
                }
            }
        }

        tracing::info!(
            in_flight = group.in_flight(),
            retrying = retrying.len(),
            "dispatcher stopping"
        );
        let retries = async { while retrying.next().await.is_some() {} };
        if !group.drain(grace, retries).await {
            tracing::warn!("grace period over; unfinished deliveries are redone after a restart");
            shared.abandon.cancel();
        }
        // The grace was the wait: leaving the group waits for nothing more.
        self.owned.lock().expect("owned partitions lock").clear();
        group.close(Duration::from_secs(5)).await;
        tracing::info!("dispatcher stopped");
        Ok(())
    }

    /// Dead-letters the ledger and retry-backlog records of `partition` that could not be read
    /// back (each logged and counted). Nothing waits on them: no offset of the alerts topic
    /// depends on a restore's records.
    fn dead_letter_unread(&self, partition: i32, unread: Unread) {
        let topics = &self.shared.topics;
        let (ledger, backlog) = (
            unread.ledger.into_iter().map(|k| {
                (
                    &topics.delivered,
                    k,
                    "not a delivery record this version can read; its alerts may be delivered again",
                )
            }),
            unread.backlog.into_iter().map(|k| {
                (
                    &topics.retry,
                    k,
                    "not a retry record this version can read; its pending retries are lost",
                )
            }),
        );
        for (topic, key, reason) in ledger.chain(backlog) {
            let record = Unreadable {
                topic: topic.clone(),
                partition,
                offset: None,
                key: Some(key),
                reason: reason.into(),
            };
            let shared = self.shared.clone();
            tokio::spawn(
                async move { shared.producer.dead_letter(&record, &shared.abandon).await },
            );
        }
    }

    /// What the group hands the dispatcher.
    fn on(&self, event: Event<Work, (Alert, Bytes)>, group: &mut Group<Work, (Alert, Bytes)>) {
        match event {
            Event::Assigned(ps) => {
                tracing::info!(partitions = ?ps, "dispatcher assigned partitions; restoring deliveries and retries");
            }
            Event::Restored {
                partition,
                snapshots,
                generation,
                superseded,
            } => {
                let [ledger, backlog]: [_; 2] = snapshots.try_into().expect("two changelogs");
                let (work, unread) = Work::restore(
                    partition,
                    (ledger, backlog),
                    generation,
                    self.shared.clock.now(),
                );
                self.dead_letter_unread(partition, unread);
                self.shared.fold_late_deliveries(&work);
                let [ledger_keys, backlog_keys]: [_; 2] =
                    superseded.try_into().expect("two changelogs");
                self.shared
                    .write_superseded_again(&work, ledger_keys, backlog_keys);
                self.shared.expire_ledger(&work);
                self.owned
                    .lock()
                    .expect("owned partitions lock")
                    .insert(partition, work.clone());
                // The alerts that waited for the restore go first, in order.
                for waited in group.ready(partition, work.clone()) {
                    match waited {
                        Waited::Message {
                            offset,
                            message: (alert, body),
                        } => self.fan_out(group, &work, offset, alert, body),
                        Waited::Unreadable { offset } => group.skip(partition, offset),
                        Waited::End => {}
                    }
                }
            }
            Event::Read(read) => {
                for r in read {
                    match r {
                        Read::Message {
                            partition,
                            offset,
                            message: (alert, body),
                        } => {
                            if let Some(work) = group.partition_mut(partition).cloned() {
                                self.fan_out(group, &work, offset, alert, body);
                            }
                        }
                        Read::Unreadable {
                            partition,
                            offset,
                            error,
                        } => {
                            tracing::debug!(partition, offset, %error, "a message that is not an alert; dead-lettered when skipped");
                            self.shared.metrics.delivery("", "unreadable_alert");
                            if group.partition_mut(partition).is_some() {
                                group.skip(partition, offset);
                            }
                        }
                        Read::End { .. } => {}
                        Read::Error(e) => tracing::warn!(error = %e, "dispatcher consumer error"),
                    }
                }
            }
            Event::Revoked(partitions) => {
                let ps: Vec<i32> = partitions.iter().map(|(p, _)| *p).collect();
                tracing::info!(partitions = ?ps, "dispatcher partitions revoked");
                {
                    let mut owned = self.owned.lock().expect("owned partitions lock");
                    for p in &ps {
                        owned.remove(p);
                    }
                }
                // Its deliveries in flight stop writing; the next owner redoes what is unsettled.
                for work in partitions.into_iter().filter_map(|(_, w)| w) {
                    work.revoked.cancel();
                }
            }
        }
    }

    /// Brings one alert to its sinks; its offset is stored once every sink is settled.
    fn fan_out(
        &self,
        group: &mut Group<Work, (Alert, Bytes)>,
        work: &Work,
        offset: i64,
        alert: Alert,
        body: Bytes,
    ) {
        // A task of its own: it goes on while a revocation holds this loop (`finish_underway`).
        let settled = AbortOnDropHandle::new(tokio::spawn(fan_out(
            self.shared.clone(),
            work.clone(),
            offset,
            alert,
            body,
        )));
        group.track(
            work.partition,
            offset,
            settled.map(|done| matches!(done, Ok(Some(_)))),
        );
    }
}

/// On revocation, before the partitions move: their attempts waiting for their turn are
/// abandoned unsent, and those already under way at a sink are waited for until what they came
/// to is recorded and acknowledged (a delivery as a late record the next owner's restore folds
/// in), so that the next owner does not send them again. The wait is bounded by the longest
/// attempt any sink may take plus [`RECORD_WAIT`], at most [`REVOKE_WAIT_CAP`]; past it, a
/// warning names how many were left (the next owner may send those again).
fn finish_underway(shared: &Shared, works: &[Work], can_wait: bool) {
    for work in works {
        work.revoked.cancel();
    }
    let underway: usize = works.iter().map(|w| w.sending.count()).sum();
    if underway == 0 {
        return;
    }
    if !can_wait {
        tracing::warn!(
            underway,
            "revoked partitions' deliveries under way cannot be waited for on a single-threaded runtime; the next owner may send them again"
        );
        return;
    }
    let longest = shared
        .queues
        .values()
        .map(|q| q.attempt_timeout())
        .max()
        .unwrap_or_default();
    let bound = (longest + RECORD_WAIT).min(REVOKE_WAIT_CAP);
    let clock = &shared.clock;
    let deadline = clock.instant() + bound;
    shared.metrics.set_revoke_waiting(underway);
    tracing::info!(
        underway,
        ?bound,
        "revocation waits for its partitions' deliveries under way"
    );
    let left: usize = works
        .iter()
        .map(|w| {
            w.sending
                .wait(deadline.saturating_duration_since(clock.instant()), clock)
        })
        .sum();
    shared.metrics.set_revoke_waiting(0);
    if left > 0 {
        shared.metrics.revoke_wait_exceeded();
        tracing::warn!(
            underway,
            left,
            ?bound,
            "revocation stopped waiting for its partitions' deliveries: those left may be sent again by the next owner"
        );
    }
}
