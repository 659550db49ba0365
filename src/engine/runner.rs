//! The engine's shell: consumes `{prefix}.events` as a consumer group, applies each event to its
//! partition's state, writes each changed lead state to the compacted `{prefix}.state`, fires due
//! deadlines into `{prefix}.alerts`, and stores an event's offset only after what it caused is in
//! Kafka.
//!
//! Partitions move between members: a newly assigned partition is paused (in the rebalance
//! callback), its leads are read back from `{prefix}.state` (same partition number: both topics
//! are keyed by lead) by an assigned consumer on a blocking thread, and only then resumed. Its
//! deadlines come back with the state, so those that passed meanwhile fire at once.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use futures::future::{BoxFuture, Shared};
use futures::stream::{FuturesOrdered, FuturesUnordered};
use futures::{FutureExt, StreamExt};
use jiff::Timestamp;
use rdkafka::ClientConfig;
use rdkafka::Message;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::Engine;
use super::EngineConfig;
use super::partition::{PartitionState, ROTATION_KEY, Write};
use super::rules::Rules;
use crate::alert::Alert;
use crate::bus::KafkaConfig;
use crate::bus::Topics;
use crate::bus::changelog::{Restored, Restorer};
use crate::bus::consumer::{self, Assignment, RebalanceHooks};
use crate::bus::producer::Producer;
use crate::event::LeadEvent;
use crate::telemetry::Metrics;

/// Everything the engine loop needs.
pub struct EngineRunner {
    pub engine: Engine,
    /// New rules (a reload on SIGHUP): open leads get deadlines under them.
    pub rules: tokio::sync::watch::Receiver<Arc<Rules>>,
    pub producer: Arc<Producer>,
    pub base: ClientConfig,
    pub kafka: KafkaConfig,
    pub topics: Topics,
    pub config: EngineConfig,
    pub metrics: Arc<Metrics>,
}

/// How long until `t`, from the wall clock.
fn until(t: Timestamp) -> Duration {
    let now = Timestamp::now();
    if t <= now {
        Duration::ZERO
    } else {
        Duration::try_from(t.duration_since(now)).unwrap_or(Duration::MAX)
    }
}

type Slots = crate::bus::changelog::Slots<Owned, (i64, LeadEvent)>;
use crate::bus::changelog::Slot;

/// A partition this member owns, with how far its events have been read.
struct Owned {
    leads: PartitionState,
    /// Newest `received_at` applied: every event received before it has been read.
    seen_until: Option<Timestamp>,
    /// Its writes to Kafka, in order per lead.
    writes: Writes,
}

/// A write to Kafka that resolves to whether it was acknowledged.
type Acked = Shared<BoxFuture<'static, bool>>;

/// The writes of one owned partition, chained per lead: each waits for the lead's write before
/// it, so a lead's records reach Kafka in the order they were made — an alert before the state
/// that marks it fired, an older state never after a newer one — and a write whose predecessor
/// failed is not made at all (its event's offset is then not stored, and the event is read
/// again). Revoking the partition cancels `token`: nothing is written for it any more, so the
/// next owner's restore cannot be overwritten by a late write of ours.
struct Writes {
    tails: HashMap<String, Acked>,
    token: CancellationToken,
}

impl Writes {
    fn new(abandon: &CancellationToken) -> Self {
        Self {
            tails: HashMap::new(),
            token: abandon.child_token(),
        }
    }

    /// Runs `write` (given the partition's token) after every earlier write of `key`.
    fn chain(
        &mut self,
        key: &str,
        write: impl FnOnce(CancellationToken) -> BoxFuture<'static, bool> + Send + 'static,
    ) -> Acked {
        let before = self.tails.get(key).cloned();
        let token = self.token.clone();
        let acked = async move {
            if let Some(before) = before
                && !before.await
            {
                return false;
            }
            write(token).await
        }
        .boxed()
        .shared();
        self.tails.insert(key.to_string(), acked.clone());
        acked
    }

    /// Forgets the writes that are done (they no longer hold back anything).
    fn prune(&mut self) {
        self.tails.retain(|_, acked| acked.peek().is_none());
    }
}

impl Owned {
    /// Deadlines up to this instant may fire. `at_end`: every event accepted so far has been
    /// applied. Otherwise the engine is behind, and a touch that happened in time but still waits
    /// in the partition must get its chance to cancel the breach first.
    fn horizon(&self, at_end: bool, now: Timestamp) -> Option<Timestamp> {
        if at_end {
            Some(now)
        } else {
            self.seen_until.map(|t| t.min(now))
        }
    }
}

type Pending = FuturesOrdered<BoxFuture<'static, Option<(i32, i64)>>>;

/// Messages already fetched that are applied before deadlines fire: events of one request
/// (a status change and its reason, sent as two events) are judged together.
const DRAIN_BATCH: usize = 500;
type Firing = FuturesUnordered<BoxFuture<'static, Result<(), (i32, Vec<Alert>)>>>;

impl EngineRunner {
    /// Runs until `shutdown`; then finishes in-flight writes within `grace`, commits, and leaves
    /// the group. Work abandoned at the grace limit has no stored offset and is redone later.
    pub async fn run(
        mut self,
        shutdown: CancellationToken,
        grace: Duration,
    ) -> Result<(), rdkafka::error::KafkaError> {
        let producer_for_revoke = self.producer.clone();
        let hooks = RebalanceHooks {
            pause_on_assign: true,
            report_end: true,
            // Before partitions move, make every state change written so far durable, so the
            // next owner's restore sees it.
            on_revoke: Some(Box::new(move || {
                producer_for_revoke.flush_blocking(Duration::from_secs(5))
            })),
        };
        let (consumer, mut assignments) = consumer::subscribe(
            &self.base,
            &self.kafka,
            &self.kafka.group_id,
            &self.topics.events,
            self.metrics.clone(),
            hooks,
        )?;
        tracing::info!(group = %self.kafka.group_id, topic = %self.topics.events, "engine started");

        let abandon = CancellationToken::new();
        let (restored_tx, mut restored_rx) = mpsc::unbounded_channel::<Restored>();
        let mut slots = Slots::default();
        let restorer = self.restorer();
        // Partitions whose end was reached with no message since (every event read).
        let mut at_end: HashMap<i32, bool> = HashMap::new();
        // Per consumed event, resolves to its offset once what it caused is acknowledged.
        let mut pending: Pending = FuturesOrdered::new();
        // Fired alerts on their way to Kafka; an error hands the alert back to be fired again.
        let mut firing: Firing = FuturesUnordered::new();
        let mut sweep = tokio::time::interval(self.config.sweep_interval.0);
        sweep.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);

        loop {
            // A partition that is behind wakes the loop with its messages instead.
            let next = slots
                .iter_ready()
                .filter(|(partition, _)| at_end.get(partition).copied().unwrap_or(false))
                .filter_map(|(_, p)| p.leads.next_deadline())
                .min();
            let wake = next.map(until).unwrap_or(Duration::from_secs(3600));
            tokio::select! {
                biased;
                _ = shutdown.cancelled() => break,
                Some(change) = assignments.recv() => match change {
                    Assignment::Assigned(ps) => {
                        tracing::info!(partitions = ?ps, "engine assigned partitions; restoring their state");
                        slots.assigned(ps, &restorer, &restored_tx);
                    }
                    Assignment::Revoked(ps) => {
                        tracing::info!(partitions = ?ps, "engine partitions revoked");
                        for p in &ps {
                            if let Some(owned) = slots.ready_mut(*p) {
                                owned.writes.token.cancel();
                            }
                        }
                        slots.revoked(&ps);
                        for p in ps {
                            at_end.remove(&p);
                        }
                    }
                },
                Some(done) = restored_rx.recv() => {
                    self.on_restored(done, &mut slots, &consumer, &mut pending, &restorer, &restored_tx, &abandon);
                }
                Some(done) = pending.next(), if !pending.is_empty() => {
                    if let Some((partition, offset)) = done {
                        consumer::store(&consumer, &self.topics.events, partition, offset);
                    }
                }
                Some(result) = firing.next(), if !firing.is_empty() => {
                    if let Err((partition, alerts)) = result
                        && let Some(p) = slots.ready_mut(partition)
                    {
                        for alert in &alerts {
                            p.leads.unfire(&self.engine, alert);
                        }
                    }
                }
                Ok(()) = self.rules.changed() => {
                    let rules = self.rules.borrow_and_update().clone();
                    self.engine = self.engine.with_rules(rules);
                    let mut leads = 0;
                    for (_, p) in slots.iter_ready_mut() {
                        p.leads.reload(&self.engine, Timestamp::now());
                        leads += p.leads.len();
                    }
                    tracing::info!(leads, "rules reloaded; open leads have deadlines under the new rules");
                }
                received = consumer.recv(), if pending.len() < self.config.max_in_flight => {
                    self.received(received, &mut slots, &mut at_end, &mut pending);
                    // What was fetched with it is applied before anything fires.
                    for _ in 0..DRAIN_BATCH {
                        if pending.len() >= self.config.max_in_flight {
                            break;
                        }
                        match consumer.recv().now_or_never() {
                            Some(received) => {
                                self.received(received, &mut slots, &mut at_end, &mut pending)
                            }
                            None => break,
                        }
                    }
                }
                _ = sweep.tick() => {
                    let now = Timestamp::now();
                    for (partition, p) in slots.iter_ready_mut() {
                        p.writes.prune();
                        p.leads.settle(&self.engine, now);
                        for lead in p.leads.expire(&self.engine, now, self.config.retention()) {
                            tracing::debug!(partition, %lead, "lead state retention over; tombstoned");
                            self.spawn_tombstone(&mut firing, p, lead);
                        }
                    }
                }
                _ = tokio::time::sleep(wake) => {}
            }

            // Fire whatever is due, also under a steady stream of events.
            let now = Timestamp::now();
            for (partition, p) in slots.iter_ready_mut() {
                let end = at_end.get(&partition).copied().unwrap_or(false);
                let Some(horizon) = p.horizon(end, now) else {
                    continue;
                };
                if p.leads.next_deadline().is_none_or(|d| d > horizon) {
                    continue;
                }
                for (lead, mut alerts) in p.leads.fire_due(&self.engine, horizon) {
                    // The state as it is now, recording these alerts as fired.
                    let Some(state) = p
                        .leads
                        .lead(&lead)
                        .map(|s| serde_json::to_vec(s).expect("lead state serializes"))
                    else {
                        continue;
                    };
                    for alert in &mut alerts {
                        alert.timestamp = now;
                        self.metrics.alert_fired(&alert.kind);
                        tracing::info!(alert_id = %alert.id(), lead = %alert.data.lead, kind = %alert.kind, "alert fired");
                    }
                    firing.push(write_alerts(
                        self.producer.clone(),
                        self.topics.clone(),
                        p,
                        partition,
                        alerts,
                        state,
                    ));
                }
                // The pools' round-robin moved: kept in this partition of the changelog, so the
                // next owner of the partition goes on from there.
                if let Some(rotation) = p.leads.take_rotation() {
                    let (producer, topic, abandon) = (
                        self.producer.clone(),
                        self.topics.state.clone(),
                        abandon.clone(),
                    );
                    firing.push(
                        async move {
                            producer
                                .send_until_acked_at(
                                    &topic,
                                    Some(partition),
                                    ROTATION_KEY,
                                    Some(&rotation),
                                    &abandon,
                                )
                                .await;
                            Ok(())
                        }
                        .boxed(),
                    );
                }
            }
            self.metrics
                .set_leads(slots.iter_ready().map(|(_, p)| p.leads.len() as i64).sum());
        }

        tracing::info!(in_flight = pending.len() + firing.len(), "engine stopping");
        let drain = async {
            while let Some(done) = pending.next().await {
                if let Some((partition, offset)) = done {
                    consumer::store(&consumer, &self.topics.events, partition, offset);
                }
            }
            while firing.next().await.is_some() {}
        };
        if tokio::time::timeout(grace, drain).await.is_err() {
            tracing::warn!(
                "grace period over; unfinished engine work will be redone after restart"
            );
            abandon.cancel();
        }
        consumer::close(consumer, Duration::from_secs(5)).await;
        tracing::info!("engine stopped");
        Ok(())
    }

    /// One message (or consumer error) from the events topic.
    fn received(
        &self,
        received: Result<rdkafka::message::BorrowedMessage<'_>, rdkafka::error::KafkaError>,
        slots: &mut Slots,
        at_end: &mut HashMap<i32, bool>,
        pending: &mut Pending,
    ) {
        let msg = match received {
            Ok(msg) => msg,
            Err(rdkafka::error::KafkaError::PartitionEOF(partition)) => {
                tracing::debug!(partition, "engine read to the end of a partition");
                at_end.insert(partition, true);
                return;
            }
            Err(e) => {
                tracing::warn!(error = %e, "engine consumer error");
                return;
            }
        };
        let (partition, offset) = (msg.partition(), msg.offset());
        at_end.insert(partition, false);
        let event = msg
            .payload()
            .ok_or_else(|| "empty message".to_string())
            .and_then(|p| serde_json::from_slice::<LeadEvent>(p).map_err(|e| e.to_string()));
        let event = match event {
            Ok(event) => event,
            Err(error) => {
                // Not ours to fix: count it, log where it is, and move on.
                self.metrics.engine_event("invalid");
                tracing::error!(partition, offset, %error, "skipping an event that is not a LeadEvent");
                pending.push_back(futures::future::ready(Some((partition, offset))).boxed());
                return;
            }
        };
        match slots.route(partition) {
            Slot::Restoring { waiting, .. } => waiting.push((offset, event)),
            Slot::Ready(p) => {
                let write = self.apply(p, partition, offset, event);
                pending.push_back(write);
            }
        }
    }

    /// A restore finished: make the partition ready (applying what waited for it) and resume
    /// it, or retry a failed restore.
    #[allow(clippy::too_many_arguments)]
    fn on_restored(
        &self,
        done: Restored,
        slots: &mut Slots,
        consumer: &consumer::GroupConsumer,
        pending: &mut Pending,
        restorer: &Restorer,
        restored_tx: &mpsc::UnboundedSender<Restored>,
        abandon: &CancellationToken,
    ) {
        if !slots.is_current(&done) {
            return;
        }
        let Restored {
            partition,
            generation,
            result,
        } = done;
        let snapshot = match result {
            Ok(snapshot) => snapshot,
            Err(e) => {
                tracing::error!(partition, error = %e, "restoring lead state failed; retrying");
                restorer.spawn(
                    partition,
                    generation,
                    Duration::from_secs(1),
                    restored_tx.clone(),
                );
                return;
            }
        };
        let mut leads = PartitionState::default();
        let mut broken = 0usize;
        for (key, bytes) in snapshot {
            if !leads.restore_record(&self.engine, key, &bytes) {
                broken += 1;
            }
        }
        if broken > 0 {
            tracing::error!(
                partition,
                broken,
                "lead states in the changelog could not be read; those leads start afresh"
            );
        }
        // The rules may have been edited while the daemon was down: every lead is looked at
        // again under the rules now in force, as on a reload (a no-op for unchanged rules).
        leads.reload(&self.engine, Timestamp::now());
        tracing::info!(partition, leads = leads.len(), "lead state restored");
        let waiting = slots.ready(
            partition,
            Owned {
                leads,
                seen_until: None,
                writes: Writes::new(abandon),
            },
        );
        if let Some(owned) = slots.ready_mut(partition) {
            for (offset, event) in waiting {
                pending.push_back(self.apply(owned, partition, offset, event));
            }
        }
        consumer::resume(consumer, &self.topics.events, partition);
    }

    fn restorer(&self) -> Restorer {
        Restorer {
            base: self.base.clone(),
            topic: self.topics.state.clone(),
            timeout: self.config.restore_timeout.0,
        }
    }

    /// Applies one event; the returned future resolves to its offset once its state write is acked.
    fn apply(
        &self,
        owned: &mut Owned,
        partition: i32,
        offset: i64,
        event: LeadEvent,
    ) -> BoxFuture<'static, Option<(i32, i64)>> {
        owned.seen_until = Some(
            owned
                .seen_until
                .map_or(event.received_at, |t| t.max(event.received_at)),
        );
        let payload = match owned.leads.apply(&self.engine, &event) {
            Write::Nothing => {
                self.metrics.engine_event("duplicate");
                return futures::future::ready(Some((partition, offset))).boxed();
            }
            Write::State(state) => {
                self.metrics.engine_event("applied");
                Some(serde_json::to_vec(state).expect("lead state serializes"))
            }
            Write::Tombstone => {
                self.metrics.engine_event("forgotten");
                tracing::info!(lead = %event.lead, "lead forgotten on request; state tombstoned");
                None
            }
        };
        let producer = self.producer.clone();
        let topic = self.topics.state.clone();
        let lead = event.lead.clone();
        let acked = owned.writes.chain(&event.lead, move |token| {
            async move {
                producer
                    .send_until_acked(&topic, &lead, payload.as_deref(), &token)
                    .await
            }
            .boxed()
        });
        acked
            .map(move |ok| ok.then_some((partition, offset)))
            .boxed()
    }

    /// Tombstones a lead's state outside of an event (retention), after its other writes.
    fn spawn_tombstone(&self, firing: &mut Firing, owned: &mut Owned, lead: String) {
        let producer = self.producer.clone();
        let topic = self.topics.state.clone();
        let key = lead.clone();
        let acked = owned.writes.chain(&key, move |token| {
            async move { producer.send_until_acked(&topic, &lead, None, &token).await }.boxed()
        });
        firing.push(acked.map(|_| Ok(())).boxed());
    }
}

/// Writes a lead's fired alerts, then (only once they are all in Kafka) the state that says they
/// fired: a crash in between makes them fire again under the same ids, never lose them. Chained
/// after the lead's earlier writes, so any later state (which also says they fired) waits for
/// them.
fn write_alerts(
    producer: Arc<Producer>,
    topics: Topics,
    owned: &mut Owned,
    partition: i32,
    alerts: Vec<Alert>,
    state: Vec<u8>,
) -> BoxFuture<'static, Result<(), (i32, Vec<Alert>)>> {
    let Some(lead) = alerts.first().map(|a| a.data.lead.clone()) else {
        return futures::future::ready(Ok(())).boxed();
    };
    let payloads: Vec<Vec<u8>> = alerts
        .iter()
        .map(|a| serde_json::to_vec(a).expect("alert serializes"))
        .collect();
    let key = lead.clone();
    let acked = owned.writes.chain(&key, move |token| {
        async move {
            // Queued together, in order: one lead's alerts keep their order in its partition.
            let written = futures::future::join_all(payloads.iter().map(|payload| {
                producer.send_until_acked(&topics.alerts, &lead, Some(payload), &token)
            }))
            .await;
            if written.iter().any(|ok| !ok) {
                return false;
            }
            producer
                .send_until_acked(&topics.state, &lead, Some(&state), &token)
                .await
        }
        .boxed()
    });
    async move {
        if acked.await {
            Ok(())
        } else {
            // Not written (abandoned, or the partition moved): fire them again if it is ours.
            Err((partition, alerts))
        }
    }
    .boxed()
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use tokio::sync::oneshot;

    use super::*;

    /// A write that records when it runs and finishes with what the test sends it.
    fn write(
        log: &Arc<Mutex<Vec<&'static str>>>,
        name: &'static str,
    ) -> (
        oneshot::Sender<bool>,
        impl FnOnce(CancellationToken) -> BoxFuture<'static, bool> + Send + 'static,
    ) {
        let (tx, rx) = oneshot::channel::<bool>();
        let log = log.clone();
        (tx, move |_token| {
            async move {
                log.lock().unwrap().push(name);
                rx.await.unwrap_or(false)
            }
            .boxed()
        })
    }

    #[tokio::test]
    async fn a_leads_writes_reach_kafka_in_order_and_stop_after_a_failure() {
        let log = Arc::new(Mutex::new(Vec::new()));
        let abandon = CancellationToken::new();
        let mut writes = Writes::new(&abandon);
        // The alert (and the state that marks it fired), then the state of a later event of the
        // same lead, then a write of another lead.
        let (alert_done, alert) = write(&log, "alert");
        let (_, later) = write(&log, "later-state");
        let (other_done, other) = write(&log, "other-lead");
        let alert = tokio::spawn(writes.chain("L-1", alert));
        let later = tokio::spawn(writes.chain("L-1", later));
        let other = tokio::spawn(writes.chain("L-2", other));
        other_done.send(true).unwrap();
        assert!(other.await.unwrap(), "other leads do not wait");
        tokio::task::yield_now().await;
        assert_eq!(*log.lock().unwrap(), ["alert", "other-lead"]);
        // The alert could not be written: the later state (which says it fired) is not either.
        alert_done.send(false).unwrap();
        assert!(!alert.await.unwrap());
        assert!(!later.await.unwrap());
        assert_eq!(*log.lock().unwrap(), ["alert", "other-lead"]);
    }

    #[tokio::test]
    async fn revoking_the_partition_stops_its_writes() {
        let abandon = CancellationToken::new();
        let mut writes = Writes::new(&abandon);
        writes.token.cancel();
        let seen = writes.chain("L-1", |token| async move { !token.is_cancelled() }.boxed());
        assert!(!seen.await, "the write is handed a cancelled token");
        assert!(!abandon.is_cancelled(), "only this partition's writes");
        // Finished writes are forgotten.
        writes.prune();
        assert!(writes.tails.is_empty());
    }
}
