//! The engine's shell: consumes `{prefix}.events` as a consumer group, steps each partition's
//! state ([`PartitionState::step`]) with what it reads and with the clock, and carries each step
//! out: writes its records to `{prefix}.alerts` and `{prefix}.state` in the order and chaining the
//! step gives, stores an event's offset only after what it caused is in Kafka, and counts and
//! logs what the engine noticed. It decides nothing about leads.
//!
//! Partitions move between members: a newly assigned partition is paused (in the rebalance
//! callback), its leads are read back from `{prefix}.state` (same partition number: both topics
//! are keyed by lead) by an assigned consumer on a blocking thread, and only then resumed. Its
//! deadlines come back with the state, so those that passed meanwhile fire at once.
//!
//! Writes are coalesced: a step's writes are noted per partition ([`super::writes::Dirty`]) and
//! written every `[engine] flush_interval` (and at shutdown, and sooner when half the room for
//! work in flight waits for them) — per lead changed since, its alerts, then its state as it
//! stands then: one state record however many events it had. An event's offset waits for the
//! flush that holds what it changed.
//!
//! It runs on the consumer-group skeleton ([`super::group`]), which does the assigning, pausing,
//! restoring, resuming, offset storing and revoking; what is the engine's own is `Work`'s —
//! a restore (`Work::restored`), stepping a partition with an event, a tick, a sweep, a reload or
//! an unwritten write and carrying the step out (`Work::step`).

use std::collections::BTreeSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use futures::future::BoxFuture;
use futures::stream::FuturesUnordered;
use futures::{FutureExt, StreamExt};
use jiff::Timestamp;
use rdkafka::error::KafkaError;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use super::Context;
use super::group::{Event, Group, Next, Read, Waited};
use super::writes::{Acked, Dirty, Flush, Writes};
use crate::alert::Alert;
use crate::bus::Topics;
use crate::bus::changelog::Restorer;
use crate::bus::consumer::{self, RebalanceHooks, Revocation};
use crate::bus::producer::{Permanent, Producer, Unreadable, Written};
use crate::engine::partition::{PartitionState, ROTATION_KEY};
use crate::engine::rules::Rules;
use crate::engine::step::{Diagnostic, Input, LeadWrite, Records, Write};
use crate::engine::{Engine, EngineConfig, LeadState};
use crate::event::LeadEvent;
use crate::telemetry::Metrics;

/// Most leads whose fired alerts are on their way to Kafka at once while a burst of due alerts
/// is fired (fewer when the engine's producer has less room): the burst is fired in batches, the
/// next once at most half of one is still on its way, so the loop goes on reading events and
/// storing offsets between them, and the producer's queue never fills with alerts.
const FIRE_WINDOW: usize = 1_000;

/// The records a fired lead writes at least: its alert, then its state.
const RECORDS_PER_FIRED_LEAD: usize = 2;

/// How soon a paced burst looks for room again when none of its own writes finishes meanwhile
/// (the dispatcher's writes hold the producer's room).
const PACE: Duration = Duration::from_millis(100);

/// How many more leads may fire now, with `on_their_way` fired and not yet written and room for
/// `window` in all: none while more than half of it is on its way (firing goes in batches).
fn allowance(window: usize, on_their_way: usize) -> usize {
    if on_their_way > window / 2 {
        0
    } else {
        window - on_their_way
    }
}

/// Leads whose fired alerts were handed to Kafka and are not written yet, counted while their
/// writes are on their way (each is one [`OnItsWay`], released when its write settles or is
/// dropped).
#[derive(Clone, Default)]
struct OnTheirWay(Arc<AtomicUsize>);

impl OnTheirWay {
    fn count(&self) -> usize {
        self.0.load(Ordering::Relaxed)
    }

    fn one(&self) -> OnItsWay {
        self.0.fetch_add(1, Ordering::Relaxed);
        OnItsWay(self.0.clone())
    }
}

/// One lead's fired alerts on their way (see [`OnTheirWay`]).
struct OnItsWay(Arc<AtomicUsize>);

impl Drop for OnItsWay {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Everything the engine loop needs.
pub struct EngineRunner {
    pub engine: Engine,
    /// New rules (a reload on SIGHUP): open leads get deadlines under them.
    pub rules: watch::Receiver<Arc<Rules>>,
    /// How the shell runs (work in flight, sweep interval, restore timeout); what the engine
    /// itself keeps to (reorder window, retention) is set on `engine`.
    pub config: EngineConfig,
    /// Kafka, the metrics, and the clock deadlines are measured against and alerts stamped with.
    pub ctx: Context,
}

/// A partition this member owns.
pub struct Owned {
    leads: PartitionState,
    /// Its writes to Kafka, in order per lead.
    writes: Writes,
    /// What it writes at its next flush, and the events waiting for it.
    dirty: Dirty,
    /// When it next has something to fire, as its latest step said.
    wake: Option<Timestamp>,
    /// The partition generation its state records are written with
    /// ([`crate::bus::changelog::next_generation`]): a restore passes over an earlier owner's
    /// late records.
    generation: u64,
}

impl Owned {
    /// A partition with no leads yet, whose writes give up at `abandon` and carry `generation`.
    fn new(abandon: &CancellationToken, generation: u64) -> Self {
        Self {
            leads: PartitionState::default(),
            writes: Writes::new(abandon),
            dirty: Dirty::default(),
            wake: None,
            generation,
        }
    }

    /// Steps its leads with `input` at `now`: notes when to wake and the step's writes for the
    /// next flush ([`Work::flush`]), where a lead written by several steps in one flush
    /// interval is written once, as it stands then. Returns what the engine noticed.
    fn step(&mut self, engine: &Engine, input: Input<'_>, now: Timestamp) -> Vec<Diagnostic> {
        let step = self.leads.step(engine, input, now);
        self.wake = step.wake;
        for write in step.writes {
            match write {
                Write::Lead(write) => {
                    self.dirty
                        .lead(write.lead, write.alerts, write.state.is_some())
                }
                Write::Rotation(record) => self.dirty.rotation(record),
            }
        }
        step.diagnostics
    }
}

/// A partition's state built from its changelog records on a blocking thread, off the event
/// loop (decoding a million leads takes seconds), with what the engine noticed doing it.
struct Built {
    partition: i32,
    /// The restore it was built for ([`Group::generation`]): a partition revoked meanwhile, or
    /// assigned again, makes it stale.
    generation: Option<u64>,
    /// The rules reloads seen when it started: one since is applied to it before it is ready.
    reloads: u64,
    built: Result<(Owned, Vec<Diagnostic>), tokio::task::JoinError>,
}

/// Partitions' states being built off the event loop.
type Building = FuturesUnordered<BoxFuture<'static, Built>>;

/// What arrived for a partition.
enum Arrived {
    /// An event, at its offset.
    Event(i64, LeadEvent),
    /// A message that is not an event, at its offset (stored in its turn).
    NotAnEvent(i64),
    /// The end of the partition.
    End,
}

/// The engine's own work, besides what the group hands it.
enum Own {
    /// A write besides an event's own is done (or failed: its alerts, to fire again).
    Written(Result<(), (i32, Vec<Alert>)>),
    /// New rules.
    Rules,
    /// A partition's state is built from its records.
    Built(Box<Built>),
    /// Time to write the leads changed since the last flush.
    Flush,
    /// Time to settle reorder windows and drop leads past retention.
    Sweep,
    /// Something may be due.
    Wake,
}

/// Writes on their way to Kafka besides the events' own; one that failed hands back the alerts
/// it fires, to be fired again.
type Firing = FuturesUnordered<BoxFuture<'static, Result<(), (i32, Vec<Alert>)>>>;

/// The event a message holds, or why it holds none.
fn decode(payload: Option<&[u8]>) -> Result<LeadEvent, String> {
    let payload = payload.ok_or_else(|| "empty message".to_string())?;
    serde_json::from_slice(payload).map_err(|e| e.to_string())
}

impl EngineRunner {
    /// Runs until `shutdown`; then finishes in-flight writes within `grace`, commits, and leaves
    /// the group. Work abandoned at the grace limit has no stored offset and is redone later.
    pub async fn run(self, shutdown: CancellationToken, grace: Duration) -> Result<(), KafkaError> {
        let EngineRunner {
            engine,
            mut rules,
            config,
            ctx,
        } = self;
        let producer_for_revoke = ctx.producer.clone();
        let revokers = Revokers::default();
        let for_revoke = revokers.clone();
        let hooks = RebalanceHooks {
            pause_on_assign: true,
            report_end: true,
            // Before partitions move, their writes stop (none is queued again), and every state
            // change written so far is made durable, so the next owner's restore sees it; what
            // cannot be made durable in time is purged when no kept partition shares the queue.
            on_revoke: Some(Box::new(move |revocation: &Revocation| {
                for_revoke.revoke(&revocation.partitions);
                producer_for_revoke.settle_revocation(
                    crate::bus::producer::REVOKE_FLUSH,
                    !revocation.keeps_others,
                );
            })),
        };
        let subscribed = consumer::subscribe(
            &ctx.base,
            &ctx.kafka,
            &ctx.kafka.group_id,
            &ctx.topics.events,
            ctx.metrics.clone(),
            hooks,
        )?;
        let restorer = Restorer::new(
            ctx.base.clone(),
            &ctx.topics.state,
            config.restore_timeout.0,
            ctx.clock.clone(),
        );
        let mut group: Group<Owned, LeadEvent> = Group::new(
            subscribed,
            &ctx.topics.events,
            vec![restorer],
            config.max_in_flight,
            decode,
        );
        let abandon = CancellationToken::new();
        group = group
            .counting(ctx.metrics.clone(), ctx.producer.backlog().cloned())
            .dead_lettering(ctx.producer.clone(), abandon.clone());
        if let Some(beat) = ctx.beat("engine") {
            group = group.watched(beat);
        }
        tracing::info!(group = %ctx.kafka.group_id, topic = %ctx.topics.events, "engine started");

        let clock = ctx.clock.clone();
        let mut work = Work {
            engine,
            producer: ctx.producer.clone(),
            topics: Arc::new(ctx.topics.clone()),
            metrics: ctx.metrics.clone(),
            abandon,
            reloads: 0,
            on_their_way: OnTheirWay::default(),
            revokers,
        };
        let mut firing: Firing = FuturesUnordered::new();
        let mut building: Building = FuturesUnordered::new();
        let mut flush = tokio::time::interval(config.flush_interval.0);
        flush.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // Under a burst, the events waiting for a flush are written before they fill the room
        // for work in flight.
        let flush_at = (config.max_in_flight / 2).max(1);
        let mut sweep = tokio::time::interval(config.sweep_interval.0);
        sweep.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut budget = Budget::new(&config, work.engine.reorder_window(), &work.metrics);
        // Some partition has alerts due that the last tick held back (a burst fired in batches).
        let mut pacing = false;

        loop {
            // On the embedded broker, alerts wait while the dispatcher is far behind (the broker
            // would trim alerts not delivered yet); their deadlines stay, so they fire later.
            let held = ctx
                .producer
                .backlog()
                .is_some_and(|b| b.full(&ctx.topics.alerts));
            // A partition that is behind wakes the loop with its messages instead.
            // A paced burst goes on as its writes finish (or, failing those, after a pause).
            let wake = if held {
                Duration::from_millis(100)
            } else if pacing {
                PACE
            } else {
                group
                    .partitions()
                    .filter_map(|(_, p)| p.wake)
                    .min()
                    .map(|t| clock.until(t))
                    .unwrap_or(Duration::from_secs(3600))
            };
            // The engine's own work comes after what the group must hand it first (a revocation
            // before anything else) and before what was read (so a stream of events never
            // starves it).
            let own = async {
                tokio::select! {
                    biased;
                    Some(result) = firing.next(), if !firing.is_empty() => Own::Written(result),
                    Some(built) = building.next(), if !building.is_empty() => Own::Built(Box::new(built)),
                    Ok(()) = rules.changed() => Own::Rules,
                    _ = flush.tick() => Own::Flush,
                    _ = sweep.tick() => Own::Sweep,
                    _ = tokio::time::sleep(wake) => Own::Wake,
                }
            };
            tokio::select! {
                biased;
                _ = shutdown.cancelled() => break,
                next = group.next_or(own) => match next {
                    Next::Group(event) => work.on(event, &mut group, &mut building, clock.now()),
                    Next::Stage(Own::Built(built)) => work.ready(*built, &mut group, clock.now()),
                    Next::Stage(Own::Written(result)) => {
                        if let Err((partition, alerts)) = result
                            && let Some(p) = group.partition_mut(partition)
                        {
                            work.step(partition, p, Input::Unwritten(&alerts), clock.now());
                        }
                    }
                    Next::Stage(Own::Rules) => {
                        let new = rules.borrow_and_update().clone();
                        work.engine = work.engine.with_rules(new);
                        work.reloads += 1;
                        let now = clock.now();
                        let mut leads = 0;
                        for (partition, p) in group.partitions_mut() {
                            work.step(partition, p, Input::Reload, now);
                            leads += p.leads.len();
                        }
                        tracing::info!(leads, "rules reloaded; open leads have deadlines under the new rules");
                    }
                    Next::Stage(Own::Flush) => {
                        for (partition, p) in group.partitions_mut() {
                            work.flush(partition, p, &mut firing);
                        }
                        let now = clock.now();
                        work.metrics.set_alerts_deferred(
                            group.partitions().map(|(_, p)| p.leads.due(now)).sum(),
                        );
                    }
                    Next::Stage(Own::Sweep) => {
                        let now = clock.now();
                        for (partition, p) in group.partitions_mut() {
                            p.writes.prune();
                            work.step(partition, p, Input::Sweep, now);
                        }
                        if let Some(window) = budget.regrow(held_bytes(&group)) {
                            work.engine = work.engine.with_reorder_window(window);
                        }
                    }
                    Next::Stage(Own::Wake) => {}
                }
            }

            // Fire whatever is due, also under a steady stream of events; a burst in batches,
            // each sized to the room the producer has.
            let now = clock.now();
            if !held {
                let window = FIRE_WINDOW.min(work.producer.room() / RECORDS_PER_FIRED_LEAD);
                let mut on_their_way = work.on_their_way.count()
                    + group
                        .partitions()
                        .map(|(_, p)| p.dirty.alerted())
                        .sum::<usize>();
                for (partition, p) in group.partitions_mut() {
                    let before = p.dirty.alerted();
                    let most = allowance(window, on_their_way);
                    work.step(partition, p, Input::TickUpTo(most), now);
                    on_their_way += p.dirty.alerted() - before;
                }
                let paced = pacing;
                pacing = group
                    .partitions()
                    .any(|(_, p)| p.wake.is_some_and(|wake| wake <= now));
                // A batch is written at once, not at the next flush: the next one waits for it.
                if pacing || paced {
                    for (partition, p) in group.partitions_mut() {
                        if p.dirty.alerted() > 0 {
                            work.flush(partition, p, &mut firing);
                        }
                    }
                }
            }
            work.metrics
                .set_leads(group.partitions().map(|(_, p)| p.leads.len() as i64).sum());
            // Over budget, the window is halved and the windows folded until the leads fit or
            // no window is left.
            while let Some(window) = budget.look(held_bytes(&group)) {
                work.engine = work.engine.with_reorder_window(window);
                for (partition, p) in group.partitions_mut() {
                    work.step(partition, p, Input::Shrink, now);
                }
            }
            let waiting: usize = group.partitions().map(|(_, p)| p.dirty.waiting()).sum();
            if waiting >= flush_at {
                for (partition, p) in group.partitions_mut() {
                    work.flush(partition, p, &mut firing);
                }
            }
        }

        // What changed since the last flush is written before the drain waits for it.
        for (partition, p) in group.partitions_mut() {
            work.flush(partition, p, &mut firing);
        }

        tracing::info!(
            in_flight = group.in_flight() + firing.len(),
            "engine stopping"
        );
        let writes = async { while firing.next().await.is_some() {} };
        if !group.drain(grace, writes).await {
            tracing::warn!(
                "grace period over; unfinished engine work will be redone after restart"
            );
            work.abandon.cancel();
        }
        group.close(Duration::from_secs(5)).await;
        tracing::info!("engine stopped");
        Ok(())
    }
}

/// The engine's own work on Kafka — per message, per tick, per restore — each a function of the
/// partition it concerns and of what arrived, never of the loop's state: steps the partition,
/// counts and logs what the engine noticed, and sends the step's writes as it orders them.
struct Work {
    engine: Engine,
    producer: Arc<Producer>,
    topics: Arc<Topics>,
    metrics: Arc<Metrics>,
    /// Cancelled when the grace period is over: every write still waiting gives up.
    abandon: CancellationToken,
    /// Rules reloads so far.
    reloads: u64,
    /// Leads whose fired alerts are being written.
    on_their_way: OnTheirWay,
    /// What stops each owned partition's writes, for the revocation hook.
    revokers: Revokers,
}

/// What stops each owned partition's writes ([`Writes::revoker`]), shared with the revocation
/// hook: it stops them before the revocation reaches the loop, so that a write failing
/// meanwhile — a purged one above all — is not queued again.
#[derive(Clone, Default)]
struct Revokers(Arc<std::sync::Mutex<std::collections::HashMap<i32, CancellationToken>>>);

impl Revokers {
    fn insert(&self, partition: i32, token: CancellationToken) {
        self.0
            .lock()
            .expect("revokers lock")
            .insert(partition, token);
    }

    /// Stops the writes of `partitions` and forgets them.
    fn revoke(&self, partitions: &[i32]) {
        let mut map = self.0.lock().expect("revokers lock");
        for p in partitions {
            if let Some(token) = map.remove(p) {
                token.cancel();
            }
        }
    }
}

/// One write of a step on its way to Kafka.
struct Sent {
    acked: Acked,
    /// The alerts it fires: handed back to the engine if it is not written.
    fired: Vec<Alert>,
}

impl Sent {
    /// Resolves once the write is done: to the alerts to fire again, if it was not written. Its
    /// fired alerts count as on their way until then.
    fn refire(
        self,
        partition: i32,
        on_their_way: &OnTheirWay,
    ) -> BoxFuture<'static, Result<(), (i32, Vec<Alert>)>> {
        let on_its_way = (!self.fired.is_empty()).then(|| on_their_way.one());
        async move {
            let _on_its_way = on_its_way;
            if self.acked.await || self.fired.is_empty() {
                Ok(())
            } else {
                // Not written (abandoned, or the partition moved): fire them again if it is ours.
                Err((partition, self.fired))
            }
        }
        .boxed()
    }
}

impl Work {
    /// Steps `partition` with `input` at `now` ([`Owned::step`]), and counts and logs what the
    /// engine noticed.
    fn step(&self, partition: i32, owned: &mut Owned, input: Input<'_>, now: Timestamp) {
        let diagnostics = owned.step(&self.engine, input, now);
        self.noticed(partition, &diagnostics);
    }

    /// Counts and logs what the engine noticed in a step of `partition`, and dead-letters the
    /// records it could not read.
    fn noticed(&self, partition: i32, diagnostics: &[Diagnostic]) {
        report(&self.metrics, partition, diagnostics);
        for diagnostic in diagnostics {
            if let Diagnostic::Unreadable { keys } = diagnostic {
                self.dead_letter_states(partition, keys);
            }
        }
    }

    /// Writes what `owned` noted since its last flush: per lead, its alerts, then (only once
    /// they are all in Kafka) its state as it stands now, chained after the lead's earlier
    /// writes; the rotation on its own. The events waiting for it are told once every write is
    /// acknowledged; a lead's alerts not written are handed back to fire again.
    fn flush(&self, partition: i32, owned: &mut Owned, firing: &mut Firing) {
        if owned.dirty.is_empty() {
            return;
        }
        let Flush {
            leads,
            rotation,
            done,
        } = owned.dirty.take();
        let mut sent = Vec::with_capacity(leads.len() + 1);
        for (lead, pending) in leads {
            // Encoded now, as the lead stands after every step since the last flush.
            let write = LeadWrite {
                state: owned.leads.lead(&lead).filter(|_| pending.state),
                lead,
                alerts: pending.alerts,
            };
            let state = match (pending.state, write.state.is_some()) {
                (false, _) => Some(None),
                (true, true) => Some(write.state_record_of(owned.generation)),
                (true, false) => {
                    // The engine drops a lead only with a tombstone; should it not, its last
                    // written state stays rather than a tombstone nobody asked for.
                    tracing::warn!(partition, lead = %write.lead, "a lead to write is no longer held; its state is not written");
                    None
                }
            };
            let alerts = write.alert_records();
            sent.push(self.send_lead(
                &mut owned.writes,
                owned.generation,
                write.lead,
                write.alerts,
                alerts,
                state,
            ));
        }
        if let Some(rotation) = rotation {
            sent.push(self.send_rotation(partition, rotation));
        }
        if let Some(done) = done {
            let acked: Vec<Acked> = sent.iter().map(|s| s.acked.clone()).collect();
            firing.push(
                async move {
                    let oks = futures::future::join_all(acked).await;
                    let _ = done.send(oks.into_iter().all(|ok| ok));
                    Ok(())
                }
                .boxed(),
            );
        }
        see_through(firing, partition, sent, &self.on_their_way);
    }

    /// Sends one lead's write after its earlier writes: the records of its `fired` alerts, then
    /// — only once they are all in Kafka — its state (`Some(None)`: its tombstone; `None`:
    /// nothing), both of partition generation `generation`.
    fn send_lead(
        &self,
        writes: &mut Writes,
        generation: u64,
        lead: String,
        fired: Vec<Alert>,
        alerts: Vec<Vec<u8>>,
        state: Option<Option<Vec<u8>>>,
    ) -> Sent {
        let producer = self.producer.clone();
        let topics = self.topics.clone();
        let metrics = self.metrics.clone();
        let key = lead.clone();
        let acked = writes.chain(&key, move |token| {
            async move {
                // Queued together, in order: one lead's alerts keep their order in its
                // partition.
                let written = futures::future::join_all(alerts.iter().map(|payload| {
                    producer.send_until_acked(&topics.alerts, &lead, Some(payload), &token)
                }))
                .await;
                if written.iter().any(|ok| !ok) {
                    return false;
                }
                match state {
                    Some(state) => {
                        let to = (topics.state.as_str(), lead.as_str(), generation);
                        write_state(&producer, to, state, &metrics, &token).await
                    }
                    None => true,
                }
            }
            .boxed()
        });
        Sent { acked, fired }
    }

    /// Sends the partition's rotation record, on its own.
    fn send_rotation(&self, partition: i32, rotation: Vec<u8>) -> Sent {
        let producer = self.producer.clone();
        let topics = self.topics.clone();
        let abandon = self.abandon.clone();
        let acked = async move {
            producer
                .send_until_acked_at(
                    &topics.state,
                    Some(partition),
                    ROTATION_KEY,
                    Some(&rotation),
                    &abandon,
                )
                .await
        }
        .boxed()
        .shared();
        Sent {
            acked,
            fired: Vec::new(),
        }
    }

    /// A partition's records are back from the changelog: its state is built from them on a
    /// blocking thread, so the loop goes on with the other partitions meanwhile (and the
    /// runtime's other tasks, ingest's among them, keep their threads).
    fn restored(
        &self,
        partition: i32,
        generation: Option<u64>,
        (records, writes_as, superseded): (Records, u64, Vec<String>),
        building: &mut Building,
        now: Timestamp,
    ) {
        let (engine, abandon, reloads) = (self.engine.clone(), self.abandon.clone(), self.reloads);
        building.push(
            async move {
                let built = tokio::task::spawn_blocking(move || {
                    let mut owned = Owned::new(&abandon, writes_as);
                    let diagnostics = owned.step(&engine, Input::Restore(records), now);
                    // A lead whose newest state was followed by an earlier owner's late one is
                    // written again at the first flush: compaction keeps the last record.
                    for lead in superseded.into_iter().collect::<BTreeSet<_>>() {
                        if owned.leads.lead(&lead).is_some() {
                            owned.dirty.lead(lead, Vec::new(), true);
                        }
                    }
                    (owned, diagnostics)
                })
                .await;
                Built {
                    partition,
                    generation,
                    reloads,
                    built,
                }
            }
            .boxed(),
        );
    }

    /// A partition's state is built: unless the partition moved meanwhile, it is ready, and
    /// what arrived for it meanwhile is processed, in order, before anything else.
    fn ready(&self, built: Built, group: &mut Group<Owned, LeadEvent>, now: Timestamp) {
        let Built {
            partition,
            generation,
            reloads,
            built,
        } = built;
        if group.generation(partition) != generation {
            tracing::debug!(partition, "a restore made stale by a rebalance is dropped");
            return;
        }
        let (mut owned, diagnostics) = match built {
            Ok(built) => built,
            // A panic stepping the engine is the engine's to report, as on the loop: the role
            // is restarted by its supervisor.
            Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
            Err(_) => return,
        };
        self.noticed(partition, &diagnostics);
        if reloads != self.reloads {
            // Rules reloaded while it was built.
            self.step(partition, &mut owned, Input::Reload, now);
        }
        tracing::info!(partition, leads = owned.leads.len(), "lead state restored");
        self.revokers.insert(partition, owned.writes.revoker());
        for waited in group.ready(partition, owned) {
            let arrived = match waited {
                Waited::Message { offset, message } => Arrived::Event(offset, message),
                Waited::Unreadable { offset } => Arrived::NotAnEvent(offset),
                Waited::End => Arrived::End,
            };
            self.process(group, partition, arrived, now);
        }
    }

    /// Dead-letters the lead states of `partition`'s changelog that could not be read back
    /// (counted and logged one by one); their leads start afresh. Nothing waits on them: no
    /// offset of the events topic depends on a restore's records.
    fn dead_letter_states(&self, partition: i32, keys: &[String]) {
        for key in keys {
            let record = Unreadable {
                topic: self.topics.state.clone(),
                partition,
                offset: None,
                key: Some(key.clone()),
                reason: "not a lead state this version can read; the lead starts afresh".into(),
            };
            let (producer, abandon) = (self.producer.clone(), self.abandon.clone());
            tokio::spawn(async move { producer.dead_letter(&record, &abandon).await });
        }
    }

    /// What the group hands the engine.
    fn on(
        &self,
        event: Event<Owned, LeadEvent>,
        group: &mut Group<Owned, LeadEvent>,
        building: &mut Building,
        now: Timestamp,
    ) {
        match event {
            Event::Assigned(ps) => {
                tracing::info!(partitions = ?ps, "engine assigned partitions; restoring their state");
            }
            Event::Restored {
                partition,
                snapshots,
                generation: writes_as,
                superseded,
            } => {
                let records = snapshots.into_iter().next().unwrap_or_default();
                let superseded = superseded.into_iter().next().unwrap_or_default();
                let generation = group.generation(partition);
                self.restored(
                    partition,
                    generation,
                    (records, writes_as, superseded),
                    building,
                    now,
                );
            }
            Event::Read(read) => {
                for r in read {
                    let (partition, arrived) = match r {
                        Read::Message {
                            partition,
                            offset,
                            message,
                        } => (partition, Arrived::Event(offset, message)),
                        Read::Unreadable {
                            partition,
                            offset,
                            error,
                        } => {
                            // Not ours to fix: counted, then dead-lettered when skipped.
                            self.metrics.engine_event("invalid");
                            tracing::debug!(partition, offset, %error, "an event that is not a LeadEvent");
                            (partition, Arrived::NotAnEvent(offset))
                        }
                        Read::End { partition } => {
                            tracing::debug!(partition, "engine read to the end of a partition");
                            (partition, Arrived::End)
                        }
                        Read::Error(e) => {
                            tracing::warn!(error = %e, "engine consumer error");
                            continue;
                        }
                    };
                    self.process(group, partition, arrived, now);
                }
            }
            Event::Revoked(partitions) => {
                let ps: Vec<i32> = partitions.iter().map(|(p, _)| *p).collect();
                tracing::info!(partitions = ?ps, "engine partitions revoked");
                self.revokers.revoke(&ps);
                for (partition, owned) in partitions {
                    if let Some(owned) = owned {
                        owned.writes.revoke();
                        // Not written now: the partition may already be the next owner's, and
                        // a late write could land over its restore. Its events' offsets stay
                        // unstored, so the next owner reads them again.
                        if owned.dirty.waiting() > 0 {
                            tracing::info!(
                                partition,
                                events = owned.dirty.waiting(),
                                "changes since the last flush left to the next owner, which reads their events again"
                            );
                        }
                    }
                }
            }
        }
    }

    /// Steps a ready partition with what arrived for it. An event's offset is stored once the
    /// flush that writes what it changed is acknowledged (at once when it changed nothing, in
    /// its turn after the offsets before it).
    fn process(
        &self,
        group: &mut Group<Owned, LeadEvent>,
        partition: i32,
        arrived: Arrived,
        now: Timestamp,
    ) {
        let Some(owned) = group.partition_mut(partition) else {
            return;
        };
        let input = match &arrived {
            Arrived::Event(_, event) => Input::Event(event),
            Arrived::NotAnEvent(_) => Input::NotAnEvent,
            Arrived::End => Input::End,
        };
        let marks = owned.dirty.marks();
        self.step(partition, owned, input, now);
        let flushed = match arrived {
            Arrived::Event(..) if owned.dirty.marks() != marks => Some(owned.dirty.wait()),
            _ => None,
        };
        match (arrived, flushed) {
            (Arrived::Event(offset, _), Some(flushed)) => group.track(partition, offset, flushed),
            (Arrived::Event(offset, _), None) => {
                group.track(partition, offset, futures::future::ready(true))
            }
            // Not ours to fix: its offset is stored in its turn.
            (Arrived::NotAnEvent(offset), _) => group.skip(partition, offset),
            (Arrived::End, _) => {}
        }
    }
}

/// Writes a lead's state (`None`: its tombstone) until Kafka has it. A state Kafka refuses as
/// too large (a huge field, held once in the lead and once in its reorder window) is written
/// again without its reorder window — the lead as it stands, its fired alerts and the ids it
/// has seen: after a restore, only a late event's place among older ones is lost. A state still
/// refused, or refused for another reason, is quarantined (a reference to it in the dead-letter
/// topic, an error log, a counter): this member keeps the lead in memory, so the lead still gets
/// its alerts while it owns the partition, and the event's offset is stored; after a restore the
/// lead is as its last state written. True once settled; false when abandoned.
async fn write_state(
    producer: &Producer,
    (topic, lead, generation): (&str, &str, u64),
    state: Option<Vec<u8>>,
    metrics: &Metrics,
    token: &CancellationToken,
) -> bool {
    let mut refusal = match producer
        .write(generation, topic, lead, state.as_deref(), token)
        .await
    {
        Written::Acked => return true,
        Written::Abandoned => return false,
        Written::Refused(refusal) => refusal,
    };
    if refusal.why == Permanent::TooLarge
        && let Some(slim) = state.as_deref().and_then(without_window)
    {
        match producer
            .write(generation, topic, lead, Some(&slim), token)
            .await
        {
            Written::Acked => {
                metrics.state_without_window();
                tracing::warn!(
                    %lead,
                    bytes = refusal.record.bytes,
                    written = slim.len(),
                    "lead state too large for Kafka; written without its reorder window"
                );
                return true;
            }
            Written::Abandoned => return false,
            Written::Refused(again) => refusal = again,
        }
    }
    producer.quarantine(&refusal, token).await
}

/// A state record without its reorder window (the lead folded as it stands), if that is
/// smaller.
fn without_window(record: &[u8]) -> Option<Vec<u8>> {
    let (generation, mut state) = LeadState::decode_with_generation(record)?;
    if state.log.is_empty() && state.base.is_none() {
        return None;
    }
    state.log.clear();
    state.base = None;
    Some(state.encode_with(generation))
}

/// About the bytes the leads of every partition this instance owns hold
/// ([`PartitionState::held_bytes`]).
fn held_bytes(group: &Group<Owned, LeadEvent>) -> usize {
    group.partitions().map(|(_, p)| p.leads.held_bytes()).sum()
}

/// The engine's memory against `[engine] memory_budget_mib`: the reorder window gives way
/// first, halved while the leads hold more than the budget (down to nothing), grown back a step
/// at each sweep once they hold less than 80 % of it; with no window left, the open leads alone
/// are over, which is said (a gauge and a warning) rather than waited out until the pod is
/// killed.
struct Budget {
    bytes: usize,
    full: Duration,
    window: Duration,
    over: bool,
    metrics: Arc<Metrics>,
}

impl Budget {
    fn new(config: &EngineConfig, window: Duration, metrics: &Arc<Metrics>) -> Self {
        metrics.engine_budget().set_window(window);
        Self {
            bytes: config.memory_budget_mib.saturating_mul(1 << 20),
            full: window,
            window,
            over: false,
            metrics: metrics.clone(),
        }
    }

    /// Looks at `held` bytes: the shorter reorder window to put in force, while they are over
    /// the budget and a window is left to give way.
    fn look(&mut self, held: usize) -> Option<Duration> {
        let gauges = self.metrics.engine_budget();
        gauges.set_held(held);
        if held <= self.bytes {
            if self.over {
                self.over = false;
                gauges.set_over(false);
            }
            return None;
        }
        if self.window.is_zero() {
            if !self.over {
                tracing::warn!(
                    held,
                    budget = self.bytes,
                    "the leads held exceed engine.memory_budget_mib with no reorder window left \
                     to give way: raise the budget (and the pod's memory) or run more instances"
                );
                self.over = true;
                gauges.set_over(true);
            }
            return None;
        }
        // Halved, and nothing under a second.
        let before = self.window;
        let half = self.window / 2;
        self.window = if half < Duration::from_secs(1) {
            Duration::ZERO
        } else {
            half
        };
        gauges.shrunk();
        gauges.set_window(self.window);
        if before == self.full {
            tracing::warn!(
                held,
                budget = self.bytes,
                window = ?self.window,
                "engine memory over budget: reorder window shrunk, windows fold early"
            );
        } else {
            tracing::debug!(held, window = ?self.window, "reorder window shrunk again");
        }
        Some(self.window)
    }

    /// At a sweep: under 80 % of the budget, the window grows back a step (doubled, up to the
    /// configured one), so memory near the budget does not swing the window back and forth.
    fn regrow(&mut self, held: usize) -> Option<Duration> {
        let gauges = self.metrics.engine_budget();
        gauges.set_held(held);
        // (Under budget, `look` clears the over-budget gauge.)
        if held >= self.bytes / 10 * 8 || self.window == self.full {
            return None;
        }
        self.window = self
            .window
            .saturating_mul(2)
            .max(Duration::from_secs(1))
            .min(self.full);
        gauges.set_window(self.window);
        if self.window == self.full {
            tracing::info!(held, window = ?self.window, "engine memory under budget again: reorder window restored");
        }
        Some(self.window)
    }
}

/// Sees writes through in `firing`: one that is not written hands its alerts back.
fn see_through(
    firing: &mut Firing,
    partition: i32,
    sent: impl IntoIterator<Item = Sent>,
    on_their_way: &OnTheirWay,
) {
    firing.extend(sent.into_iter().map(|s| s.refire(partition, on_their_way)));
}

/// Counts and logs what the engine noticed in a step of `partition`.
fn report(metrics: &Metrics, partition: i32, diagnostics: &[Diagnostic]) {
    for d in diagnostics {
        match d {
            Diagnostic::Applied => metrics.engine_event("applied"),
            Diagnostic::Duplicate => metrics.engine_event("duplicate"),
            Diagnostic::Forgotten { lead } => {
                metrics.engine_event("forgotten");
                tracing::info!(%lead, "lead forgotten on request; state tombstoned");
            }
            Diagnostic::RuleMissingField { rule, field } => {
                if let Some(field) = field {
                    tracing::trace!(%rule, %field, "missing field: rule false");
                }
                metrics.rule_missing_field(rule);
            }
            Diagnostic::RuleError { rule, error } => {
                if let Some(error) = error {
                    tracing::debug!(%rule, %error, "rule counted as false");
                }
                metrics.rule_errors(rule);
            }
            Diagnostic::AlertFired { id, lead, kind } => {
                metrics.alert_fired(kind);
                tracing::info!(alert_id = %id, %lead, %kind, "alert fired");
            }
            Diagnostic::NoRecipients { lead, kind, to } => {
                tracing::warn!(%lead, %kind, ?to, "alert names no recipient; add them to [directory] or [recipients]");
                metrics.alert_without_recipients(kind);
            }
            Diagnostic::Expired { lead } => {
                tracing::debug!(partition, %lead, "lead state retention over; tombstoned");
            }
            Diagnostic::WindowShrunk { folded } => {
                tracing::debug!(partition, folded, "reorder windows folded early");
            }
            // Each is logged, counted and dead-lettered by `Work::dead_letter_states`.
            Diagnostic::Unreadable { .. } => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn what_the_engine_noticed_is_counted_under_the_daemons_metric_names() {
        let metrics = Metrics::new();
        let rule = "lifecycle.sales_ready".to_string();
        report(
            &metrics,
            0,
            &[
                Diagnostic::Applied,
                Diagnostic::Applied,
                Diagnostic::Duplicate,
                Diagnostic::Forgotten { lead: "L-1".into() },
                Diagnostic::RuleMissingField {
                    rule: rule.clone(),
                    field: Some("score".into()),
                },
                Diagnostic::RuleMissingField {
                    rule: "segments[0].when".into(),
                    field: None,
                },
                Diagnostic::RuleError {
                    rule: rule.clone(),
                    error: None,
                },
                Diagnostic::AlertFired {
                    id: "a-1".into(),
                    lead: "L-1".into(),
                    kind: "sla.first_touch.breached".into(),
                },
                Diagnostic::NoRecipients {
                    lead: "L-1".into(),
                    kind: "lead.unassigned".into(),
                    to: vec!["queue".into()],
                },
                Diagnostic::Expired { lead: "L-2".into() },
                Diagnostic::Unreadable {
                    keys: vec!["L-3".into()],
                },
            ],
        );
        let text = metrics.encode();
        for line in [
            "leadwatch_engine_events_total{outcome=\"applied\"} 2",
            "leadwatch_engine_events_total{outcome=\"duplicate\"} 1",
            "leadwatch_engine_events_total{outcome=\"forgotten\"} 1",
            "leadwatch_rule_missing_fields_total{rule=\"lifecycle.sales_ready\"} 1",
            "leadwatch_rule_missing_fields_total{rule=\"segments[0].when\"} 1",
            "leadwatch_rule_errors_total{rule=\"lifecycle.sales_ready\"} 1",
            "leadwatch_alerts_fired_total{type=\"sla.first_touch.breached\"} 1",
            "leadwatch_alerts_without_recipients_total{type=\"lead.unassigned\"} 1",
        ] {
            assert!(text.contains(line), "{line} in\n{text}");
        }
    }
}
