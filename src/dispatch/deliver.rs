//! Delivery: one alert to each of its sinks. The per-message work of the dispatcher
//! (`fan_out`: the inline first attempt, or the backlog), the per-due-entry work (`retry_one`),
//! a partition's state restored from its ledger and backlog (`Work::restore`), and carrying out
//! what [`super::retry::decide`] decided for an attempt (`settle`: the ledger mark, the backlog
//! entry, or the dead letter, in that order of writes). One (alert, sink) is delivered at a time
//! (`Deliveries`), and the ledger and the backlog are consulted under that lock.
//!
//! Nothing here depends on the consumer-group loop in [`super`]: it hands in the partition's
//! `Work`, the message, or the due entry, and stores the offset `fan_out` resolves to.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use jiff::Timestamp;
use tokio::sync::{Notify, mpsc};
use tokio_util::sync::CancellationToken;

use super::backlog::{self, Backlog, Pending};
use super::config::DispatchSections;
use super::dlq;
use super::ledger::{Ledger, Mark};
use super::queue::SinkQueue;
use super::retry::{self, Decision, Schedule};
use super::routes::{self, Routes};
use super::sinks::attempt::{refusal, truncate};
use super::sinks::{Attempt, Delivered, DeliveryError, Http};
use super::template::Templates;
use crate::alert::{ALERT_TYPES, Alert};
use crate::bus::Topics;
use crate::bus::changelog::{FORGOT_PREFIX, LATE_PREFIX, Snapshot};
use crate::bus::producer::Producer;
use crate::clock::Clock;
use crate::telemetry::Metrics;

/// Keys of a partition's changelog records that could not be read back.
#[derive(Debug, Default)]
pub(crate) struct Unread {
    /// In `{prefix}.delivered`: those leads' deliveries are not known to have happened.
    pub(crate) ledger: Vec<String>,
    /// In `{prefix}.alerts.retry`: those leads' pending retries are lost.
    pub(crate) backlog: Vec<String>,
}

/// One partition's delivery state.
#[derive(Clone)]
pub(crate) struct Work {
    pub(crate) partition: i32,
    pub(crate) ledger: Ledger,
    pub(crate) backlog: Backlog,
    /// Cancelled when the partition is revoked: its deliveries in flight stop writing.
    pub(crate) revoked: CancellationToken,
    /// When this dispatcher took the partition (restored and ready).
    pub(crate) assigned_at: Timestamp,
    /// The partition generation its records are written with.
    pub(crate) generation: u64,
    /// Its attempts past the backlog, from before their request until what they came to is
    /// recorded: a revocation waits for them ([`Sending::wait`]).
    pub(crate) sending: Arc<Sending>,
}

/// A partition's attempts under way: each from before its request (while it waits its turn in
/// the sink's queue, which a revocation ends unsent) until its settling, the ledger record
/// included, is acknowledged by Kafka. A revocation waits for them on the consumer's thread,
/// so this is a plain lock and condition variable, not tokio's.
#[derive(Default)]
pub(crate) struct Sending {
    count: std::sync::Mutex<usize>,
    idle: std::sync::Condvar,
}

/// One attempt under way, from [`Sending::start`] until dropped.
pub(crate) struct Underway(Arc<Sending>);

impl Sending {
    pub(crate) fn start(self: &Arc<Self>) -> Underway {
        *self.count.lock().expect("sending lock") += 1;
        Underway(self.clone())
    }

    /// Attempts under way now.
    pub(crate) fn count(&self) -> usize {
        *self.count.lock().expect("sending lock")
    }

    /// Blocks until no attempt is under way, for at most `bound` (as `clock` tells); returns
    /// how many still are.
    pub(crate) fn wait(&self, bound: Duration, clock: &Clock) -> usize {
        let deadline = clock.instant() + bound;
        let mut count = self.count.lock().expect("sending lock");
        while *count > 0 {
            let left = deadline.saturating_duration_since(clock.instant());
            if left.is_zero() {
                break;
            }
            count = self.idle.wait_timeout(count, left).expect("sending lock").0;
        }
        *count
    }
}

impl Drop for Underway {
    fn drop(&mut self) {
        let mut count = self.0.count.lock().expect("sending lock");
        *count = count.saturating_sub(1);
        if *count == 0 {
            self.0.idle.notify_all();
        }
    }
}

impl Work {
    /// A partition's delivery state from its restored ledger (`{prefix}.delivered`) and backlog
    /// (`{prefix}.alerts.retry`), taken at `assigned_at`; also the keys of the records that could
    /// not be read ([`Unread`]: the caller dead-letters them).
    /// Its records are written with partition generation `generation`.
    pub(crate) fn restore(
        partition: i32,
        (ledger, backlog): (Snapshot, Snapshot),
        generation: u64,
        assigned_at: Timestamp,
    ) -> (Work, Unread) {
        let (ledger, ledger_keys) = Ledger::from_snapshot(ledger, generation);
        let (backlog, backlog_keys) = Backlog::from_snapshot(backlog, generation);
        let unread = Unread {
            ledger: ledger_keys,
            backlog: backlog_keys,
        };
        tracing::info!(
            partition,
            leads = ledger.len(),
            retries = backlog.len(),
            "deliveries and retries restored"
        );
        let work = Work {
            partition,
            ledger,
            backlog,
            revoked: CancellationToken::new(),
            assigned_at,
            generation,
            sending: Arc::default(),
        };
        (work, unread)
    }
}

/// What every delivery shares.
pub(crate) struct Shared {
    pub(crate) queues: HashMap<String, Arc<SinkQueue>>,
    pub(crate) routes: Routes,
    pub(crate) templates: Templates,
    pub(crate) schedule: Schedule,
    pub(crate) producer: Arc<Producer>,
    pub(crate) topics: Topics,
    pub(crate) metrics: Arc<Metrics>,
    /// The time of attempts, retries and records.
    pub(crate) clock: Clock,
    /// Set when a backlog gained an entry (the loop's timer may need to wake earlier).
    pub(crate) changed: Notify,
    /// Sinks that answered again after failing.
    pub(crate) recovered: mpsc::UnboundedSender<String>,
    /// Cancelled when the grace period is over.
    pub(crate) abandon: CancellationToken,
    /// One delivery of an (alert, sink) at a time, across the generations of a partition.
    pub(crate) deliveries: Deliveries,
    /// How long the ledger remembers a delivery (`dispatch.ledger_retention`).
    pub(crate) ledger_retention: Duration,
}

impl Shared {
    /// Builds the sinks of `[sinks.*]` with their queues, the routes and the templates. The
    /// receiver hears of every sink that answers again after failing (its backlog may go now).
    pub(crate) fn new(
        config: DispatchSections<'_>,
        producer: Arc<Producer>,
        topics: Topics,
        metrics: Arc<Metrics>,
        clock: Clock,
    ) -> anyhow::Result<(Arc<Shared>, mpsc::UnboundedReceiver<String>)> {
        let http = Http::new(config.dispatch.request_timeout.0, clock.clone())?;
        let queues = config
            .sinks
            .iter()
            .map(|(name, cfg)| {
                let queue = SinkQueue::from_config(
                    name,
                    cfg,
                    config.dispatch,
                    http.clone(),
                    metrics.clone(),
                );
                (name.clone(), Arc::new(queue))
            })
            .collect();
        let templates = routes::templates(config.routes)
            .map_err(|p| anyhow::anyhow!("route templates: {p:?}"))?;
        let (recovered, recovered_rx) = mpsc::unbounded_channel();
        let shared = Shared {
            queues,
            routes: Routes::new(config.routes.to_vec(), config.sinks.keys().cloned()),
            templates,
            schedule: Schedule::from(config.dispatch),
            producer,
            topics,
            metrics,
            clock,
            changed: Notify::new(),
            recovered,
            abandon: CancellationToken::new(),
            deliveries: Deliveries::default(),
            ledger_retention: config.dispatch.ledger_retention.0,
        };
        Ok((Arc::new(shared), recovered_rx))
    }

    /// Forgets what `work`'s ledger holds of alerts older than `ledger_retention`, and writes
    /// each lead it changed (a tombstone for one left with nothing) in the background; the
    /// writes stop if the partition is revoked.
    pub(crate) fn expire_ledger(self: &Arc<Self>, work: &Work) {
        let retention = jiff::SignedDuration::try_from(self.ledger_retention)
            .unwrap_or(jiff::SignedDuration::MAX);
        let Ok(before) = self.clock.now().checked_sub(retention) else {
            return;
        };
        let markers = work.ledger.expire_markers(before);
        if !markers.is_empty() {
            tracing::info!(
                partition = work.partition,
                markers = markers.len(),
                "forget markers older than dispatch.ledger_retention are tombstoned"
            );
            self.tombstone_late(work, markers);
        }
        let (forgotten, leads) = work.ledger.expire(before, &work.backlog.leads());
        if forgotten == 0 {
            return;
        }
        self.metrics.ledger_expired(forgotten);
        tracing::info!(
            partition = work.partition,
            forgotten,
            leads = leads.len(),
            "ledger forgot deliveries older than dispatch.ledger_retention"
        );
        let (shared, work) = (self.clone(), work.clone());
        // Given up on revocation (a write of this generation must not land over the next
        // owner's) and at the end of the grace period.
        tokio::spawn(async move {
            shared.persist_leads(&work, leads).await;
        });
    }

    /// Writes the ledger entry of each of `leads`, one after another; false once one is not
    /// written (the partition revoked) or the dispatcher gives up its writes.
    async fn persist_leads(&self, work: &Work, leads: impl IntoIterator<Item = String>) -> bool {
        let topic = &self.topics.delivered;
        for lead in leads {
            let write = work
                .ledger
                .persist(&self.producer, topic, &lead, &work.revoked);
            tokio::select! {
                _ = self.abandon.cancelled() => return false,
                written = write => if !written { return false },
            }
        }
        true
    }

    /// Writes, in the background, the entry of each lead into which `work`'s restore merged
    /// late deliveries (recorded by a previous owner after it lost the partition), then
    /// tombstones those records: in that order, so a crash in between merges them again. The
    /// writes stop if the partition is revoked.
    pub(crate) fn fold_late_deliveries(self: &Arc<Self>, work: &Work) {
        let dropped = work.ledger.take_dropped();
        if !dropped.is_empty() {
            tracing::info!(
                partition = work.partition,
                deliveries = dropped.len(),
                "late deliveries of forgotten leads dropped; their records are tombstoned"
            );
            self.tombstone_late(work, dropped);
        }
        let folded = work.ledger.take_folded();
        if folded.is_empty() {
            return;
        }
        tracing::info!(
            partition = work.partition,
            deliveries = folded.len(),
            "merged deliveries a previous owner recorded after losing the partition"
        );
        let (shared, work) = (self.clone(), work.clone());
        tokio::spawn(async move {
            let topic = &shared.topics.delivered;
            let (producer, revoked) = (&shared.producer, &work.revoked);
            for (key, lead) in folded {
                let write = async {
                    work.ledger.persist(producer, topic, &lead, revoked).await
                        && Ledger::forget_late(
                            producer,
                            (topic, work.partition, work.generation),
                            &key,
                            revoked,
                        )
                        .await
                };
                tokio::select! {
                    _ = shared.abandon.cancelled() => break,
                    written = write => if !written { break },
                }
            }
        });
    }

    /// Tombstones, in the background, records of `work`'s partition of the ledger that are not
    /// a lead's entry (dropped late deliveries, expired forget markers); the writes stop if the
    /// partition is revoked.
    fn tombstone_late(self: &Arc<Self>, work: &Work, keys: Vec<String>) {
        let (shared, work) = (self.clone(), work.clone());
        tokio::spawn(async move {
            let topic = &shared.topics.delivered;
            for key in keys {
                let at = (topic.as_str(), work.partition, work.generation);
                let write = Ledger::forget_late(&shared.producer, at, &key, &work.revoked);
                tokio::select! {
                    _ = shared.abandon.cancelled() => break,
                    written = write => if !written { break },
                }
            }
        });
    }

    /// Writes again the ledger and backlog entries of the leads whose newest record was
    /// followed by a late one of an earlier owner (passed over at restore): the last record of
    /// each key, the one compaction keeps, is this owner's again (a tombstone where the lead has
    /// nothing). Late-delivery records are keyed per delivery and folded anyway; forget markers are `forget`'s.
    pub(crate) fn write_superseded_again(
        self: &Arc<Self>,
        work: &Work,
        ledger: Vec<String>,
        backlog: Vec<String>,
    ) {
        let ledger: BTreeSet<String> = ledger
            .into_iter()
            .filter(|k| !k.starts_with(LATE_PREFIX) && !k.starts_with(FORGOT_PREFIX))
            .collect();
        let backlog: BTreeSet<String> = backlog.into_iter().collect();
        if ledger.is_empty() && backlog.is_empty() {
            return;
        }
        tracing::info!(
            partition = work.partition,
            ledger = ledger.len(),
            backlog = backlog.len(),
            "writing again the leads an earlier owner's late records would replace under compaction"
        );
        let (shared, work) = (self.clone(), work.clone());
        tokio::spawn(async move {
            if !shared.persist_leads(&work, ledger).await {
                return;
            }
            for lead in backlog {
                tokio::select! {
                    _ = shared.abandon.cancelled() => return,
                    written = write_backlog(&shared, &work, &lead) => if !written { return },
                }
            }
        });
    }

    /// Sets `leadwatch_delivery_retry_backlog{sink}` from the backlogs of `works`.
    pub(crate) fn report_backlog<'a>(&self, works: impl Iterator<Item = &'a Work>) {
        let mut per_sink: HashMap<&str, i64> =
            self.queues.keys().map(|k| (k.as_str(), 0)).collect();
        for work in works {
            for (sink, n) in work.backlog.per_sink() {
                if let Some(total) = per_sink.get_mut(sink.as_str()) {
                    *total += n as i64;
                }
            }
        }
        for (sink, n) in per_sink {
            self.metrics.set_retry_backlog(sink, n);
        }
    }
}

/// A lock per (alert id, sink) being delivered. The same alert can be in `{prefix}.alerts`
/// twice (the engine fired it again after a crash, before the state that marked it fired was
/// written), and a partition taken back can meet an alert its previous generation is still
/// attempting: the later copy waits for the earlier delivery to end, then looks at the ledger
/// and the backlog again.
#[derive(Default)]
pub(crate) struct Deliveries {
    locks: Arc<std::sync::Mutex<HashMap<DeliveryKey, Arc<tokio::sync::Mutex<()>>>>>,
}

/// (alert id, sink)
type DeliveryKey = (String, String);

/// Holds one (alert, sink); the entry goes when its last holder or waiter does.
pub(crate) struct Turn {
    locks: Arc<std::sync::Mutex<HashMap<DeliveryKey, Arc<tokio::sync::Mutex<()>>>>>,
    key: DeliveryKey,
    /// Released first when the turn ends, so that only the map's own reference is left to
    /// count when no one else holds or waits.
    guard: Option<tokio::sync::OwnedMutexGuard<()>>,
}

impl Deliveries {
    /// Waits until no one else delivers `alert_id` to `sink`, then holds it until the turn is
    /// dropped.
    pub(crate) async fn turn(&self, alert_id: &str, sink: &str) -> Turn {
        let key = (alert_id.to_string(), sink.to_string());
        let lock = self
            .locks
            .lock()
            .expect("deliveries lock")
            .entry(key.clone())
            .or_default()
            .clone();
        Turn {
            locks: self.locks.clone(),
            key,
            guard: Some(lock.lock_owned().await),
        }
    }
}

impl Drop for Turn {
    fn drop(&mut self) {
        // The guard holds a reference to the lock too: while it lived, the count below could
        // never come down to the map's alone, and every (alert, sink) ever delivered stayed.
        drop(self.guard.take());
        if let Ok(mut locks) = self.locks.lock()
            && locks
                .get(&self.key)
                .is_some_and(|l| Arc::strong_count(l) == 1)
        {
            locks.remove(&self.key);
        }
    }
}

/// Brings one alert from `{prefix}.alerts` to each of its sinks, or to the backlog; resolves to
/// the offset to store once every sink is settled (None: not all of them, e.g. the partition was
/// revoked — its next owner redoes the alert).
pub(crate) async fn fan_out(
    shared: Arc<Shared>,
    work: Work,
    offset: i64,
    alert: Alert,
    body: Bytes,
) -> Option<(i32, i64)> {
    let targets = shared.routes.targets(&alert);
    if targets.is_empty() {
        // A type no engine fires is counted as `other`: the label keeps few values.
        let kind = if ALERT_TYPES.contains(&alert.kind.as_str()) {
            alert.kind.as_str()
        } else {
            "other"
        };
        shared.metrics.unrouted(kind);
        tracing::warn!(
            alert_id = %truncate(alert.id(), 80), r#type = %truncate(&alert.kind, 80),
            lead = %truncate(&alert.data.lead, 200),
            alert = %truncate(&String::from_utf8_lossy(&body), 2000),
            "no route matches this alert; it is not delivered anywhere"
        );
        return (!work.revoked.is_cancelled()).then_some((work.partition, offset));
    }
    if let Some(why) = refusal(&alert) {
        // Its id is the key of the ledger, the backlog and every sink's idempotency: it goes
        // to the dead letters for each of its sinks, and nowhere else.
        for t in &targets {
            if !refuse(&shared, &t.sink, &body, &why).await {
                return None;
            }
        }
        return (!work.revoked.is_cancelled()).then_some((work.partition, offset));
    }
    let lead = alert.data.lead.clone();
    let each = targets.into_iter().map(|t| {
            let (shared, work, alert, body, lead) =
                (shared.clone(), work.clone(), &alert, &body, &lead);
            async move {
                // A copy of this alert being delivered goes first; settled or in the backlog
                // (by it, or before), nothing is left to do.
                let _turn = shared.deliveries.turn(alert.id(), &t.sink).await;
                if work.ledger.settled(lead, alert.id()).contains(&t.sink)
                    || work.backlog.contains(lead, alert.id(), &t.sink)
                {
                    return true;
                }
                let Some(queue) = shared.queues.get(&t.sink).cloned() else {
                    return true;
                };
                let mut entry = Pending {
                    alert_id: alert.id().to_string(),
                    sink: t.sink.clone(),
                    body: String::from_utf8_lossy(body).into_owned(),
                    not_before: shared.clock.now(),
                    ..Pending::default()
                };
                if !queue.has_room_inline() {
                    // Busy or failing: the backlog takes it, the offset moves on.
                    let reason = if queue.is_failing() { "failing" } else { "busy" };
                    tracing::debug!(sink = %t.sink, alert_id = %alert.id(), reason, "handed to the backlog");
                    return schedule(&shared, &work, lead, entry).await;
                }
                entry.attempts = 1;
                let _underway = work.sending.start();
                // Fired before this dispatcher took the partition: its earlier owner may have
                // attempted it (the alert's own time: engine and dispatcher share a clock, or
                // NTP keeps theirs close).
                let maybe_attempted = alert.timestamp < work.assigned_at;
                let outcome = attempt(&shared, &work, &queue, alert, body, 1, maybe_attempted).await;
                settle(&shared, &work, lead, alert, entry, outcome, false).await
            }
        });
    let all = futures::future::join_all(each).await;
    // A revoked partition's offsets are its next owner's to store: what this generation skipped
    // may hang on a delivery it abandoned.
    (all.into_iter().all(|ok| ok) && !work.revoked.is_cancelled())
        .then_some((work.partition, offset))
}

/// One attempt through the sink's queue (abandoned unsent if `work`'s partition is revoked
/// while it waits its turn); reports a recovered sink to the loop.
async fn attempt(
    shared: &Shared,
    work: &Work,
    queue: &SinkQueue,
    alert: &Alert,
    body: &Bytes,
    n: u32,
    maybe_attempted: bool,
) -> Result<Delivered, DeliveryError> {
    let message = shared.templates.render(
        alert,
        shared.routes.route_for(alert, &queue.name),
        queue.sink.style(),
    );
    let a = Attempt {
        alert,
        body,
        attempt: n,
        maybe_attempted,
        message: &message,
    };
    let outcome = queue.attempt(&a, &work.revoked).await;
    if outcome.recovered {
        let _ = shared.recovered.send(queue.name.clone());
    }
    outcome.result
}

/// Dead-letters `body` (an alert, or what should have been one) for `sink` without an attempt:
/// `why` no sink may take it. True once the letter is in Kafka.
async fn refuse(shared: &Shared, sink: &str, body: &[u8], why: &str) -> bool {
    shared.metrics.delivery(sink, "dead_lettered");
    tracing::error!(%sink, error = %why, "alert refused without an attempt; dead-lettered");
    let e = DeliveryError::permanent(why);
    let letter = dlq::DeadLetter::new(sink, body, 0, &e, shared.clock.now());
    dlq::write(
        &shared.producer,
        &shared.topics.dlq,
        &letter,
        &shared.abandon,
    )
    .await
}

/// A backlog entry whose time has come.
pub(crate) async fn retry_one(shared: Arc<Shared>, work: Work, lead: String, mut entry: Pending) {
    let _turn = shared.deliveries.turn(&entry.alert_id, &entry.sink).await;
    if work
        .ledger
        .settled(&lead, &entry.alert_id)
        .contains(&entry.sink)
    {
        // Done before (its removal from the backlog did not reach Kafka).
        remove(&shared, &work, &lead, &entry).await;
        return;
    }
    let body = Bytes::from(entry.body.clone());
    // The entry is read from Kafka like the alert was: what cannot be delivered is
    // dead-lettered (its body kept as it is), then removed.
    let readable = match serde_json::from_slice::<Alert>(&body) {
        Ok(alert) if alert.id() != entry.alert_id => {
            Err("a retry-backlog entry whose alert id is not its alert's".to_string())
        }
        Ok(alert) => refusal(&alert).map_or(Ok(alert), Err),
        Err(e) => {
            shared.metrics.delivery(&entry.sink, "unreadable_alert");
            Err(format!("a retry-backlog entry's alert is unreadable: {e}"))
        }
    };
    let alert = match readable {
        Ok(alert) => alert,
        Err(why) => {
            if refuse(&shared, &entry.sink, &body, &why).await {
                remove(&shared, &work, &lead, &entry).await;
            }
            return;
        }
    };
    let _underway = work.sending.start();
    let outcome = match shared.queues.get(&entry.sink).cloned() {
        Some(queue) => {
            entry.attempts = entry.attempts.saturating_add(1);
            attempt(&shared, &work, &queue, &alert, &body, entry.attempts, true).await
        }
        None => Err(DeliveryError::permanent(format!(
            "sink `{}` is no longer configured",
            entry.sink
        ))),
    };
    settle(&shared, &work, &lead, &alert, entry, outcome, true).await;
}

/// Records what an attempt came to: delivered (ledger), retry (backlog), or dead letter.
/// Returns whether it is durably settled.
async fn settle(
    shared: &Shared,
    work: &Work,
    lead: &str,
    alert: &Alert,
    mut entry: Pending,
    outcome: Result<Delivered, DeliveryError>,
    from_backlog: bool,
) -> bool {
    if work.revoked.is_cancelled() {
        // Another member owns the partition now and redoes what is not recorded. What did
        // reach the sink is recorded all the same (Slack and Teams have no idempotency key):
        // that one delivery, merged into the lead's entry at the next restore, never written
        // over the new owner's entry.
        if let Ok(Delivered::Sent | Delivered::AlreadyThere) = outcome {
            shared
                .metrics
                .delivery(&entry.sink, "delivered_after_revoke");
            tracing::info!(sink = %entry.sink, alert_id = %alert.id(), partition = work.partition, "delivered as its partition was revoked; recorded for the next owner");
            Ledger::record_late(
                &shared.producer,
                &shared.topics.delivered,
                work.partition,
                work.generation,
                lead,
                alert.id(),
                &entry.sink,
                shared.clock.now(),
                &shared.abandon,
            )
            .await;
        }
        return false;
    }
    let sink = entry.sink.clone();
    let (producer, topics, abandon) = (&shared.producer, &shared.topics, &shared.abandon);
    let now = shared.clock.now();
    match retry::decide(entry.tries(), outcome, &shared.schedule, now) {
        Decision::Done(delivered) => {
            match &delivered {
                Delivered::Sent | Delivered::AlreadyThere => {
                    let outcome = if delivered == Delivered::Sent {
                        "delivered"
                    } else {
                        "already_there"
                    };
                    shared.metrics.delivery(&sink, outcome);
                    shared.metrics.delivery_latency(&sink, latency(alert, now));
                    tracing::info!(%sink, alert_id = %alert.id(), attempts = entry.attempts, outcome, "alert delivered");
                }
                Delivered::Skipped(why) => {
                    shared.metrics.delivery(&sink, "skipped");
                    tracing::warn!(%sink, alert_id = %alert.id(), %why, "alert not for this sink; skipped");
                }
            }
            done(
                shared,
                work,
                lead,
                alert,
                &entry,
                Mark::Delivered,
                now,
                from_backlog,
            )
            .await
        }
        Decision::RetryAt {
            at,
            after,
            tries,
            error: e,
        } => {
            entry.failed(tries, e.status, &e.message, &e.excerpt);
            shared.metrics.delivery(&sink, "retry_scheduled");
            tracing::warn!(%sink, alert_id = %alert.id(), attempt = entry.attempts, error = %e, delay = ?after, "delivery failed; retry scheduled");
            entry.not_before = at;
            schedule(shared, work, lead, entry).await
        }
        Decision::Wait {
            at,
            after,
            tries,
            error: e,
        } => {
            // The sink is paused (its credentials): the queue logged why, once; this delivery
            // only waits for it.
            entry.failed(tries, e.status, &e.message, &e.excerpt);
            shared.metrics.delivery(&sink, "sink_paused");
            tracing::debug!(%sink, alert_id = %alert.id(), delay = ?after, "the sink is paused; the delivery waits for it");
            entry.not_before = at;
            schedule(shared, work, lead, entry).await
        }
        Decision::DeadLetter(e) => {
            shared.metrics.delivery(&sink, "dead_lettered");
            tracing::error!(%sink, alert_id = %alert.id(), attempts = entry.attempts, status = ?e.status, error = %e, "alert dead-lettered");
            let letter =
                dlq::DeadLetter::new(&sink, entry.body.as_bytes(), entry.attempts, &e, now);
            if !dlq::write(producer, &topics.dlq, &letter, abandon).await {
                return false;
            }
            done(
                shared,
                work,
                lead,
                alert,
                &entry,
                Mark::DeadLettered,
                now,
                from_backlog,
            )
            .await
        }
    }
}

/// Records in the ledger what a sink is done with an alert by, then, for a delivery that came
/// from the backlog, removes its entry there (in that order: a crash in between leaves an entry
/// whose retry finds the ledger's mark). True once both are in Kafka.
#[allow(clippy::too_many_arguments)]
async fn done(
    shared: &Shared,
    work: &Work,
    lead: &str,
    alert: &Alert,
    entry: &Pending,
    mark: Mark,
    now: Timestamp,
    from_backlog: bool,
) -> bool {
    let (alert_id, sink) = (alert.id(), &entry.sink);
    let topic = &shared.topics.delivered;
    let ok = work
        .ledger
        .record(
            &shared.producer,
            topic,
            lead,
            alert_id,
            sink,
            mark,
            now,
            &shared.abandon,
        )
        .await;
    if from_backlog {
        remove(shared, work, lead, entry).await && ok
    } else {
        ok
    }
}

/// From an alert's deadline (or, for an alert fired before it, its firing) to `now`, in seconds.
fn latency(alert: &Alert, now: Timestamp) -> f64 {
    let due = alert.data.deadline.min(alert.timestamp);
    now.duration_since(due).as_secs_f64().max(0.0)
}

/// Puts an entry in the backlog and writes it; true once Kafka has it.
async fn schedule(shared: &Shared, work: &Work, lead: &str, entry: Pending) -> bool {
    if work.revoked.is_cancelled() {
        return false;
    }
    work.backlog.schedule(lead, entry);
    shared.changed.notify_one();
    write_backlog(shared, work, lead).await
}

async fn remove(shared: &Shared, work: &Work, lead: &str, entry: &Pending) -> bool {
    if work.revoked.is_cancelled() {
        return false;
    }
    work.backlog.remove(lead, &entry.alert_id, &entry.sink);
    write_backlog(shared, work, lead).await
}

/// Writes the lead's current backlog entry (a tombstone once empty).
async fn write_backlog(shared: &Shared, work: &Work, lead: &str) -> bool {
    let snapshot = || {
        // The entry as it is when the write is queued: a later write carries later state.
        let b = &work.backlog;
        b.contains_lead(lead).then(|| b.serialize_lead(lead))
    };
    backlog::persist(
        &shared.producer,
        (&shared.topics.retry, work.generation),
        lead,
        snapshot,
        &shared.abandon,
    )
    .await
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use futures::FutureExt;

    use super::*;
    use crate::dispatch::backlog::LeadBacklog;
    use crate::dispatch::config::DispatchConfig;
    use crate::dispatch::ledger::{Delivery, LeadDeliveries};
    use crate::dispatch::routes::RouteConfig;
    use crate::dispatch::sinks::SinkConfig;
    use crate::dispatch::template::sample_alert;

    fn t0() -> Timestamp {
        "2026-11-22T15:00:00Z".parse().unwrap()
    }

    /// Shares of a dispatcher with one webhook sink, `hook`, and `routes`, whose Kafka is
    /// nowhere and whose writes give up at once: a test that needs no write passes, one that
    /// would write sees it fail.
    fn shared(routes: &[RouteConfig]) -> Arc<Shared> {
        let sinks: BTreeMap<String, SinkConfig> = [(
            "hook".to_string(),
            serde_json::from_value(serde_json::json!({
                "kind": "webhook",
                "url": "http://127.0.0.1:1/hook",
                "secret": "whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD",
            }))
            .unwrap(),
        )]
        .into();
        let mut nowhere = rdkafka::ClientConfig::new();
        nowhere.set("bootstrap.servers", "127.0.0.1:1");
        let metrics = Arc::new(Metrics::new());
        let sections = DispatchSections {
            dispatch: &DispatchConfig::default(),
            sinks: &sinks,
            routes,
        };
        let producer = Producer::new(&nowhere, metrics.clone()).unwrap();
        let clock = Clock::manual(t0());
        let (shared, _) =
            Shared::new(sections, producer, Topics::new("t"), metrics, clock).unwrap();
        shared.abandon.cancel();
        shared
    }

    /// A partition whose ledger says `hook` has `alert` and whose backlog holds `pending`.
    fn work(delivered: Option<&Alert>, pending: &[Pending]) -> Work {
        let mut ledger = Snapshot::new();
        if let Some(alert) = delivered {
            let entry = LeadDeliveries {
                alerts: [(
                    alert.id().to_string(),
                    Delivery {
                        sinks: ["hook".to_string()].into(),
                        dead_lettered: Default::default(),
                        first_at: t0(),
                    },
                )]
                .into(),
            };
            ledger.insert(alert.data.lead.clone(), serde_json::to_vec(&entry).unwrap());
        }
        let mut backlog = Snapshot::new();
        for p in pending {
            let lead = serde_json::from_str::<Alert>(&p.body)
                .map_or_else(|_| "L-unreadable".to_string(), |a| a.data.lead);
            let entry = LeadBacklog {
                pending: vec![p.clone()],
            };
            backlog.insert(lead, serde_json::to_vec(&entry).unwrap());
        }
        Work::restore(3, (ledger, backlog), 1, t0()).0
    }

    fn breach() -> Alert {
        sample_alert("sla.first_touch.breached")
    }

    fn body(alert: &Alert) -> Bytes {
        Bytes::from(serde_json::to_vec(alert).unwrap())
    }

    fn pending(alert: &Alert, body: &str) -> Pending {
        Pending {
            alert_id: alert.id().to_string(),
            sink: "hook".into(),
            body: body.to_string(),
            attempts: 1,
            not_before: t0(),
            ..Pending::default()
        }
    }

    /// `alert`'s delivery to `hook`, waiting in the backlog.
    fn queued(alert: &Alert) -> Pending {
        pending(alert, &String::from_utf8_lossy(&body(alert)))
    }

    #[tokio::test]
    async fn one_delivery_of_an_alert_to_a_sink_at_a_time() {
        let deliveries = Deliveries::default();
        let first = deliveries.turn("a1", "hook").await;
        let mut copy = Box::pin(deliveries.turn("a1", "hook"));
        assert!(futures::poll!(copy.as_mut()).is_pending(), "the copy waits");
        // Another sink, another alert: no wait.
        assert!(deliveries.turn("a1", "crm").now_or_never().is_some());
        assert!(deliveries.turn("a2", "hook").now_or_never().is_some());
        drop(first);
        assert_eq!(
            deliveries.locks.lock().unwrap().len(),
            1,
            "kept for its waiter"
        );
        let copy = copy.await;
        // The entry goes with its last holder.
        drop(copy);
        assert_eq!(
            deliveries.locks.lock().unwrap().len(),
            0,
            "a lock left behind"
        );
    }

    /// Fans the sample breach out at `offset`.
    async fn fan(shared: &Arc<Shared>, work: &Work, offset: i64) -> Option<(i32, i64)> {
        let alert = breach();
        fan_out(
            shared.clone(),
            work.clone(),
            offset,
            alert.clone(),
            body(&alert),
        )
        .await
    }

    /// Runs every backlog entry due by `t0`.
    async fn retry_due(shared: &Arc<Shared>, work: &Work) {
        for (lead, entry) in work.backlog.take_due(t0()) {
            retry_one(shared.clone(), work.clone(), lead, entry).await;
        }
    }

    /// Whether the metrics have `line`.
    fn counted(shared: &Shared, line: &str) -> bool {
        let metrics = shared.metrics.encode();
        metrics.contains(line) || panic!("no `{line}` in\n{metrics}")
    }

    #[tokio::test]
    async fn an_alert_no_route_matches_is_counted_and_its_offset_stored_unless_revoked() {
        let routes = [RouteConfig {
            alerts: vec!["disposition.*".into()],
            sinks: vec!["hook".into()],
            ..RouteConfig::default()
        }];
        let shared = shared(&routes);
        let w = work(None, &[]);
        assert_eq!(fan(&shared, &w, 7).await, Some((3, 7)));
        assert!(counted(
            &shared,
            r#"leadwatch_alerts_unrouted_total{type="sla.first_touch.breached"} 1"#
        ));
        w.revoked.cancel();
        assert_eq!(
            fan(&shared, &w, 8).await,
            None,
            "a revoked partition's offsets are its next owner's"
        );
    }

    #[tokio::test]
    async fn a_sink_that_has_the_alert_or_holds_it_in_the_backlog_is_not_attempted_again() {
        let shared = shared(&[]);
        let alert = breach();
        // Any attempt would fail (nothing listens) and its write to the backlog would give up:
        // the offset is stored only because nothing was left to do.
        assert_eq!(
            fan(&shared, &work(Some(&alert), &[]), 1).await,
            Some((3, 1))
        );
        let waiting = work(None, &[queued(&alert)]);
        assert_eq!(fan(&shared, &waiting, 2).await, Some((3, 2)));
        assert_eq!(
            fan(&shared, &work(None, &[]), 3).await,
            None,
            "the attempt failed and its retry was not written"
        );
    }

    #[tokio::test]
    async fn every_retry_looks_at_the_ledger_first_and_unreadable_entries_are_dead_lettered() {
        let shared = shared(&[]);
        let alert = breach();
        // Delivered before (its removal from the backlog did not reach Kafka): not sent again.
        let w = work(Some(&alert), &[queued(&alert)]);
        assert_eq!(w.backlog.len(), 1);
        retry_due(&shared, &w).await;
        assert!(w.backlog.is_empty());
        assert!(!shared.metrics.encode().contains("outcome=\"delivered\""));
        // An entry whose alert cannot be read is counted and dead-lettered (its body as it
        // is), never just dropped: here the dead letter cannot be written (Kafka is nowhere),
        // so the entry stays in the backlog, to be dead-lettered after a restart.
        let w = work(None, &[pending(&alert, "{")]);
        retry_due(&shared, &w).await;
        assert_eq!(
            w.backlog.len(),
            1,
            "dropped before its dead letter was written"
        );
        assert!(counted(
            &shared,
            r#"leadwatch_alert_deliveries_total{sink="hook",outcome="unreadable_alert"} 1"#
        ));
        assert!(counted(
            &shared,
            r#"leadwatch_alert_deliveries_total{sink="hook",outcome="dead_lettered"} 1"#
        ));
    }

    /// An alert whose id cannot be anyone's idempotency key (300 characters, a newline, a
    /// path) is refused for every sink its routes name — dead-lettered, saying why — before
    /// any delivery, ledger mark or backlog entry: its offset waits only for the dead letters.
    #[tokio::test]
    async fn an_alert_whose_id_is_no_alert_id_is_dead_lettered_before_any_delivery() {
        let shared = shared(&[]);
        for id in [
            format!("alert_{}", "0".repeat(294)),
            "alert_1\r\nx-injected: 1".to_string(),
            "../../Task/1".to_string(),
            String::new(),
        ] {
            let mut alert = breach();
            alert.data.alert_id = id.clone();
            let w = work(None, &[]);
            // The dead letter cannot be written here: the offset is not stored, and nothing
            // else was attempted or written.
            let stored = fan_out(shared.clone(), w.clone(), 1, alert.clone(), body(&alert)).await;
            assert_eq!(stored, None, "{id:?}");
            assert!(w.backlog.is_empty() && w.ledger.is_empty(), "{id:?}");
        }
        assert!(counted(
            &shared,
            r#"leadwatch_alert_deliveries_total{sink="hook",outcome="dead_lettered"} 4"#
        ));
        assert!(
            !shared
                .metrics
                .encode()
                .contains("outcome=\"retry_scheduled\"")
        );
    }

    #[test]
    fn a_restored_partition_knows_its_deliveries_and_retries() {
        let alert = breach();
        let w = work(Some(&alert), &[queued(&alert)]);
        assert_eq!(w.partition, 3);
        assert_eq!(w.assigned_at, t0());
        let lead = &alert.data.lead;
        assert!(w.ledger.settled(lead, alert.id()).contains("hook"));
        assert!(w.backlog.contains(lead, alert.id(), "hook"));
        assert_eq!(w.backlog.next_due(), Some(t0()));
        assert!(!w.revoked.is_cancelled());
    }
}
