//! The consumer-group skeleton every stage runs on, written once: join the group, and for each
//! partition this member is given: pause it (in the rebalance callback) → read its changelogs
//! back → hand the stage the snapshots to build its state from → resume it → hand the stage its
//! messages → store each message's offset once the stage says its work is done (in order per
//! partition, then auto-committed) → on revocation, hand the state back to the stage to stop.
//! Only the processing is the stage's.
//!
//! A stage (the engine, the dispatcher) keeps its own `select!` loop: one arm awaits
//! [`Group::next`], which handles assignments, restores and stored offsets by itself and returns
//! what the stage must act on ([`Event`]); the stage's other arms (timers, reloads, retries) sit
//! beside it. [`Group::next`] is cancel-safe, so losing a `select!` race loses nothing.

use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use futures::stream::{FuturesOrdered, FuturesUnordered};
use futures::{FutureExt, StreamExt};
use rdkafka::Message;
use rdkafka::error::KafkaError;
use rdkafka::message::BorrowedMessage;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::health::{Beat, Waiting};
use crate::bus::backlog::Backlog;
use crate::bus::changelog::{self, Folded, Restored, Restorer, Slot, Slots, Snapshot};
use crate::bus::consumer::{self, Assignment, GroupConsumer};
use crate::bus::producer::{Producer, Unreadable};
use crate::telemetry::Metrics;

/// What [`Group::next_or`] came to: the group's event, or the stage's own work.
pub enum Next<E, T> {
    Group(E),
    Stage(T),
}

/// What the stage must act on.
pub enum Event<P, M> {
    /// Partitions given to this member: their changelogs are being read back.
    Assigned(Vec<i32>),
    /// The partition's changelogs were read back, one snapshot per changelog in the order given
    /// to [`Group::new`]: build its state and give it to [`Group::ready`].
    Restored {
        partition: i32,
        snapshots: Vec<Snapshot>,
        /// The partition generation this member writes the partition's changelog records with
        /// while it owns it: one more than the highest its changelogs held
        /// ([`changelog::next_generation`]), so a restore tells its records from an earlier
        /// owner's late ones.
        generation: u64,
        /// Per changelog, the keys whose newest record was followed by a late one of an earlier
        /// owner (passed over): the stage writes them again, so that the last record of each
        /// key, the one compaction keeps, is the newest generation's again.
        superseded: Vec<Vec<String>>,
    },
    /// What was read: a message and whatever was fetched with it, in order, so the stage
    /// processes them together before its other work (events of one request — a status change
    /// and its reason — are judged together).
    Read(Vec<Read<M>>),
    /// Partitions taken away, with the state of those that were ready: stop their work (what is
    /// not done, the next owner redoes).
    Revoked(Vec<(i32, Option<P>)>),
}

/// One thing read from the topic.
pub enum Read<M> {
    /// A message of a ready partition: process it and [`Group::track`] its offset.
    Message {
        partition: i32,
        offset: i64,
        message: M,
    },
    /// A message the stage's decoder refused, of any partition (reported at once): the stage
    /// counts it and says where it is. It is not ours to fix: of a ready partition, the stage
    /// [`Group::skip`]s it; of a restoring one, it comes back as [`Waited::Unreadable`].
    Unreadable {
        partition: i32,
        offset: i64,
        error: String,
    },
    /// Every message of a ready partition accepted so far has been read (only when the consumer
    /// was asked to report partition ends).
    End { partition: i32 },
    /// A consumer error (the group goes on; the stage logs it).
    Error(KafkaError),
}

/// What arrived for a partition while it was being restored, in order: [`Group::ready`] hands
/// it back.
pub enum Waited<M> {
    /// A message, at its offset: process it and [`Group::track`] its offset.
    Message { offset: i64, message: M },
    /// A message that could not be read (already reported): [`Group::skip`] it.
    Unreadable { offset: i64 },
    /// The end of the partition was reached.
    End,
}

/// Turns a message's payload into the stage's message, or says why it cannot.
pub type Decode<M> = fn(Option<&[u8]>) -> Result<M, String>;

/// A joined consumer group and the partitions it gave this member.
pub struct Group<P, M> {
    consumer: GroupConsumer,
    topic: String,
    assignments: mpsc::UnboundedReceiver<Assignment>,
    /// One per changelog read back on assignment.
    restorers: Vec<Restorer>,
    restored_tx: mpsc::UnboundedSender<(usize, Restored)>,
    restored_rx: mpsc::UnboundedReceiver<(usize, Restored)>,
    /// Per restoring partition: its generation, and each changelog's snapshot once read.
    restoring: HashMap<i32, (u64, Vec<Option<Folded>>)>,
    slots: Slots<P, Waited<M>>,
    /// Per partition, per processed message: its offset and whether its work is done (false:
    /// it was not, e.g. the partition moved; its next owner redoes it). In order within a
    /// partition, so an offset is stored only once every earlier message's work is done; apart
    /// between partitions, so no partition's offsets wait on another's.
    pending: Pending,
    /// The work of partitions revoked while it was pending: still driven to its end (a delivery
    /// in flight records what it did), its offsets never stored. They are the next owner's; and
    /// a partition assigned back to this member starts again from its committed offset, with a
    /// state restored anew that need not hold what this work did.
    abandoned: FuturesUnordered<BoxFuture<'static, ()>>,
    /// Per partition, the highest offset stored in its current assignment: a stored offset
    /// never goes backwards.
    stored: HashMap<i32, i64>,
    max_in_flight: usize,
    decode: Decode<M>,
    /// Where the stage's progress is reported (liveness), if anywhere.
    beat: Option<Beat>,
    /// Turns an idle loop once a second, so a loop that turns is told from one that is stuck.
    heartbeat: tokio::time::Interval,
    /// Per partition, the next offset to be read: the committed one at assignment, then one
    /// past the last read. A message past it means offsets were jumped over (deleted by
    /// retention or trimming before they were read): the events and alerts topics are neither
    /// compacted nor transactional, so their offsets are contiguous.
    expected: HashMap<i32, i64>,
    /// Where skipped offsets are counted.
    metrics: Option<Arc<Metrics>>,
    /// Where consumed offsets are reported (the embedded broker's limits).
    backlog: Option<Arc<Backlog>>,
    /// Per (changelog, partition): the failed attempts of a restore being retried.
    failing: HashMap<(usize, i32), u32>,
    /// Per partition: why each unreadable message, by offset, could not be read; dead-lettered
    /// when the stage skips it.
    unreadable: HashMap<i32, HashMap<i64, String>>,
    /// Where unreadable messages are dead-lettered, and when to give up writing them.
    dead_letters: Option<(Arc<Producer>, CancellationToken)>,
}

/// The wait before the next attempt of a restore that failed `attempts` times: 1 s, doubling,
/// at most a minute.
fn restore_backoff(attempts: u32) -> Duration {
    let secs = 1u64
        .checked_shl(attempts.saturating_sub(1))
        .unwrap_or(u64::MAX);
    Duration::from_secs(secs.min(60))
}

/// Per partition, the work of its messages, in order: each resolves to (offset, done).
type Pending = HashMap<i32, FuturesOrdered<BoxFuture<'static, (i64, bool)>>>;

/// A message as it came: (partition, offset, decoded or why not), or a consumer error.
type Received<M> = Result<(i32, i64, Result<M, String>), KafkaError>;

/// Decodes a fetched message, so the consumer is no longer borrowed.
fn decoded<M>(received: Result<BorrowedMessage<'_>, KafkaError>, decode: Decode<M>) -> Received<M> {
    received.map(|msg| (msg.partition(), msg.offset(), decode(msg.payload())))
}

/// The next message whose work finished, of any partition: (partition, offset, done). `None`
/// once nothing is pending.
fn next_done(pending: &mut Pending) -> impl Future<Output = Option<(i32, i64, bool)>> + '_ {
    futures::future::poll_fn(move |cx| {
        let mut any = false;
        for (partition, queue) in pending.iter_mut() {
            if queue.is_empty() {
                continue;
            }
            any = true;
            if let std::task::Poll::Ready(Some((offset, done))) = queue.poll_next_unpin(cx) {
                return std::task::Poll::Ready(Some((*partition, offset, done)));
            }
        }
        if any {
            std::task::Poll::Pending
        } else {
            std::task::Poll::Ready(None)
        }
    })
}

/// Most messages already fetched that are handed out with the one awaited (events of one
/// request — a status change and its reason — are processed together).
const BATCH: usize = 500;

impl<P, M> Group<P, M> {
    /// Takes over a consumer subscribed to `topic` ([`consumer::subscribe`]) whose rebalances
    /// arrive on `assignments`; each assigned partition's state is read back from `changelogs`
    /// (partitioned like `topic`). At most `max_in_flight` messages' work is pending at once.
    pub fn new(
        (consumer, assignments): (GroupConsumer, mpsc::UnboundedReceiver<Assignment>),
        topic: &str,
        changelogs: Vec<Restorer>,
        max_in_flight: usize,
        decode: Decode<M>,
    ) -> Self {
        let (restored_tx, restored_rx) = mpsc::unbounded_channel();
        Self {
            consumer,
            topic: topic.to_string(),
            assignments,
            restorers: changelogs,
            restored_tx,
            restored_rx,
            restoring: HashMap::new(),
            slots: Slots::default(),
            pending: HashMap::new(),
            abandoned: FuturesUnordered::new(),
            stored: HashMap::new(),
            max_in_flight: max_in_flight.max(1),
            decode,
            beat: None,
            expected: HashMap::new(),
            metrics: None,
            backlog: None,
            failing: HashMap::new(),
            unreadable: HashMap::new(),
            dead_letters: None,
            heartbeat: {
                let mut tick = tokio::time::interval(Duration::from_secs(1));
                tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                tick
            },
        }
    }

    /// Reports the stage's progress to `beat` (see [`super::health`]): the loop turning, and per
    /// partition, work waiting and moving on.
    pub fn watched(mut self, beat: Beat) -> Self {
        beat.reset();
        self.beat = Some(beat);
        self
    }

    /// Counts skipped offsets in `metrics`, and reports what was consumed to `backlog` (kept
    /// for the embedded broker), which accounts the topic from now on.
    pub fn counting(mut self, metrics: Arc<Metrics>, backlog: Option<Arc<Backlog>>) -> Self {
        if let Some(backlog) = &backlog {
            backlog.watch(&self.topic);
        }
        // Exported at 0 from the start, so an alert rule sees the series before any skip.
        metrics.offsets_skipped(&self.topic, 0);
        for r in &self.restorers {
            metrics.set_restores_failing(&r.topic, 0);
        }
        self.metrics = Some(metrics);
        self.backlog = backlog;
        self
    }

    /// Dead-letters the messages the stage's decoder refuses through `producer` (each one's
    /// offset is stored once its letter is written), giving up at `abandon`.
    pub fn dead_lettering(mut self, producer: Arc<Producer>, abandon: CancellationToken) -> Self {
        self.dead_letters = Some((producer, abandon));
        self
    }

    /// Refreshes `leadwatch_embedded_backlog_bytes` for this topic (once a second, on the
    /// heartbeat): writes set it as they reserve room, and this brings it down as the group
    /// consumes, so it never stays where the last write left it.
    fn report_backlog(&self) {
        if let (Some(backlog), Some(metrics)) = (&self.backlog, &self.metrics)
            && let Some(bytes) = backlog.fullest_bytes(&self.topic)
        {
            metrics.set_embedded_backlog(&self.topic, i64::try_from(bytes).unwrap_or(i64::MAX));
        }
    }

    fn report(&self, f: impl FnOnce(&Beat)) {
        if let Some(beat) = &self.beat {
            f(beat);
        }
    }

    /// Stores a finished message's offset (when its work was done); the partition moved on.
    fn finished(&mut self, partition: i32, offset: i64, done: bool) {
        let ahead = self
            .stored
            .get(&partition)
            .is_none_or(|last| offset > *last);
        if done && ahead {
            self.stored.insert(partition, offset);
            consumer::store(&self.consumer, &self.topic, partition, offset);
            if let Some(backlog) = &self.backlog {
                backlog.consumed(&self.topic, partition, offset + 1);
            }
        }
        let still = self.pending.get(&partition).is_some_and(|q| !q.is_empty());
        self.report(|b| b.progressed(partition, still));
    }

    /// The next thing the stage must act on. Cancel-safe.
    pub async fn next(&mut self) -> Event<P, M> {
        match self
            .next_or(std::future::pending::<std::convert::Infallible>())
            .await
        {
            Next::Group(event) => event,
            Next::Stage(never) => match never {},
        }
    }

    /// The next thing to act on, in this order: what the group must hand the stage first
    /// (assignments, revocations, finished restores; offsets are stored meanwhile), then
    /// `stage` — the stage's own work (its timers, its writes finishing …) — then what was read.
    /// So a revocation is acted on before the stage's work, and a steady stream of messages
    /// never starves that work. Cancel-safe when `stage` is.
    pub async fn next_or<T>(&mut self, stage: impl Future<Output = T>) -> Next<Event<P, M>, T> {
        let mut stage = std::pin::pin!(stage);
        loop {
            self.report(Beat::turned);
            let in_flight = self.in_flight();
            let room = in_flight < self.max_in_flight;
            tokio::select! {
                biased;
                Some(change) = self.assignments.recv() => match change {
                    Assignment::Assigned(ps, committed) => {
                        for p in &ps {
                            match committed.get(p) {
                                Some(offset) => self.expected.insert(*p, *offset),
                                None => self.expected.remove(p),
                            };
                        }
                        self.assigned(ps.clone());
                        return Next::Group(Event::Assigned(ps));
                    }
                    Assignment::Revoked(ps) => {
                        return Next::Group(Event::Revoked(self.revoked(&ps)));
                    }
                },
                Some((which, done)) = self.restored_rx.recv() => {
                    if let Some(event) = self.restored(which, done) {
                        return Next::Group(event);
                    }
                }
                Some((partition, offset, done)) = next_done(&mut self.pending), if in_flight > 0 => {
                    self.finished(partition, offset, done);
                }
                Some(()) = self.abandoned.next(), if !self.abandoned.is_empty() => {}
                _ = self.heartbeat.tick() => self.report_backlog(),
                out = &mut stage => return Next::Stage(out),
                received = self.consumer.recv(), if room => {
                    let first = decoded(received, self.decode);
                    let mut read = Vec::new();
                    let mut messages = self.received(first, &mut read);
                    // What was fetched with it comes along, within the room for work in flight.
                    for _ in 0..BATCH {
                        if in_flight + messages >= self.max_in_flight {
                            break;
                        }
                        let Some(received) = self.consumer.recv().now_or_never() else {
                            break;
                        };
                        let more = decoded(received, self.decode);
                        messages += self.received(more, &mut read);
                    }
                    if !read.is_empty() {
                        return Next::Group(Event::Read(read));
                    }
                }
            }
        }
    }

    /// Makes a restored partition ready with the stage's `state` and resumes it; returns what
    /// arrived while it restored, in order, for the stage to process first.
    pub fn ready(&mut self, partition: i32, state: P) -> Vec<Waited<M>> {
        let waiting = self.slots.ready(partition, state);
        consumer::resume(&self.consumer, &self.topic, partition);
        waiting
    }

    /// Stores `offset` once `done` resolves to true (in order with the partition's other
    /// messages); false: the work was not done, the offset is not stored.
    pub fn track(
        &mut self,
        partition: i32,
        offset: i64,
        done: impl Future<Output = bool> + Send + 'static,
    ) {
        let queue = self.pending.entry(partition).or_default();
        if queue.is_empty()
            && let Some(beat) = &self.beat
        {
            beat.waiting(partition, Waiting::WorkInFlight);
        }
        queue.push_back(done.map(move |ok| (offset, ok)).boxed());
    }

    /// A message that is not for the stage (unreadable): it is dead-lettered (logged, counted,
    /// a reference written to the dead-letter topic), and its offset stored in its turn.
    pub fn skip(&mut self, partition: i32, offset: i64) {
        let reason = self
            .unreadable
            .get_mut(&partition)
            .and_then(|at| at.remove(&offset));
        let Some(reason) = reason else {
            self.track(partition, offset, futures::future::ready(true));
            return;
        };
        let record = Unreadable {
            topic: self.topic.clone(),
            partition,
            offset: Some(offset),
            key: None,
            reason,
        };
        match self.dead_letters.clone() {
            Some((producer, abandon)) => self.track(partition, offset, async move {
                producer.dead_letter(&record, &abandon).await
            }),
            None => {
                tracing::error!(topic = %record.topic, partition, offset, reason = %record.reason, "a record could not be read; it is skipped");
                if let Some(metrics) = &self.metrics {
                    metrics.record_unreadable(&record.topic);
                }
                self.track(partition, offset, futures::future::ready(true));
            }
        }
    }

    /// Messages whose work is pending.
    pub fn in_flight(&self) -> usize {
        self.pending.values().map(FuturesOrdered::len).sum()
    }

    /// The generation of `partition`'s restore while it is restoring (also once its snapshots
    /// were handed out and until it is [`Group::ready`]): a stage that builds its state
    /// elsewhere checks it is unchanged before making it ready, since a revocation, or a new
    /// assignment, meanwhile makes that state stale.
    pub fn generation(&self, partition: i32) -> Option<u64> {
        match self.slots.slots.get(&partition) {
            Some(Slot::Restoring { generation, .. }) => Some(*generation),
            _ => None,
        }
    }

    /// A ready partition's state.
    pub fn partition_mut(&mut self, partition: i32) -> Option<&mut P> {
        self.slots.ready_mut(partition)
    }

    /// Every ready partition.
    pub fn partitions_mut(&mut self) -> impl Iterator<Item = (i32, &mut P)> {
        self.slots.iter_ready_mut()
    }

    /// Every ready partition.
    pub fn partitions(&self) -> impl Iterator<Item = (i32, &P)> {
        self.slots.iter_ready()
    }

    /// At shutdown: waits, for at most `grace`, until every pending message's work and `also`
    /// (the stage's own work in flight) are done, storing offsets as they are. False when the
    /// grace ran out (the rest is redone after a restart).
    pub async fn drain(&mut self, grace: Duration, also: impl Future<Output = ()>) -> bool {
        let mut abandoned = std::mem::take(&mut self.abandoned);
        let offsets = async {
            while let Some((partition, offset, done)) = next_done(&mut self.pending).await {
                self.finished(partition, offset, done);
            }
        };
        let abandoned_done = async { while abandoned.next().await.is_some() {} };
        tokio::time::timeout(grace, futures::future::join3(offsets, abandoned_done, also))
            .await
            .is_ok()
    }

    /// Commits the stored offsets and leaves the group, for at most `timeout`.
    pub async fn close(self, timeout: Duration) {
        consumer::close(self.consumer, timeout).await;
    }

    fn assigned(&mut self, partitions: Vec<i32>) {
        for (partition, generation) in self.slots.assign(partitions) {
            self.report(|b| b.waiting(partition, Waiting::Restore));
            self.restoring
                .insert(partition, (generation, vec![None; self.restorers.len()]));
            for which in 0..self.restorers.len() {
                self.restore(which, partition, generation, Duration::ZERO);
            }
        }
    }

    /// Reads one changelog's partition on a blocking thread, after `delay`.
    /// Whatever becomes of the read, an answer comes back: a restore task that dies without
    /// one is answered as failed ([`RestoreError::Died`](crate::bus::changelog::RestoreError)),
    /// and retried.
    fn restore(&self, which: usize, partition: i32, generation: u64, delay: Duration) {
        let (done_tx, mut done_rx) = mpsc::unbounded_channel();
        let restorer = &self.restorers[which];
        restorer.spawn(partition, generation, delay, done_tx);
        let died = restorer.died(partition, "the restore task ended without an answer");
        let tx = self.restored_tx.clone();
        tokio::spawn(async move {
            let done = done_rx.recv().await.unwrap_or(Restored {
                partition,
                generation,
                result: Err(died),
            });
            let _ = tx.send((which, done));
        });
    }

    /// Updates `leadwatch_restores_failing{topic}` for changelog `which`.
    fn report_failing(&self, which: usize) {
        if let Some(metrics) = &self.metrics {
            let n = self.failing.keys().filter(|(w, _)| *w == which).count();
            metrics.set_restores_failing(&self.restorers[which].topic, n as i64);
        }
    }

    fn revoked(&mut self, partitions: &[i32]) -> Vec<(i32, Option<P>)> {
        partitions
            .iter()
            .map(|p| {
                self.report(|b| b.idle(*p));
                if let Some(work) = self.pending.remove(p) {
                    self.abandoned.push(work.for_each(|_| async {}).boxed());
                }
                self.stored.remove(p);
                self.expected.remove(p);
                self.unreadable.remove(p);
                self.restoring.remove(p);
                for which in 0..self.restorers.len() {
                    if self.failing.remove(&(which, *p)).is_some() {
                        self.report_failing(which);
                    }
                }
                let state = match self.slots.slots.remove(p) {
                    Some(Slot::Ready(state)) => Some(state),
                    _ => None,
                };
                (*p, state)
            })
            .collect()
    }

    /// Files a finished restore; the partition's snapshots once every changelog is in.
    fn restored(&mut self, which: usize, done: Restored) -> Option<Event<P, M>> {
        if !self.slots.is_current(&done) {
            return None;
        }
        let Restored {
            partition,
            generation,
            result,
        } = done;
        let snapshot = match result {
            Ok(snapshot) => {
                if self.failing.remove(&(which, partition)).is_some() {
                    self.report_failing(which);
                }
                snapshot
            }
            Err(e) => {
                let attempts = self.failing.entry((which, partition)).or_default();
                *attempts += 1;
                let (attempts, delay) = (*attempts, restore_backoff(*attempts));
                let topic = &self.restorers[which].topic;
                tracing::error!(partition, %topic, error = %e, attempts, retry_in = ?delay, "restoring a partition failed; retrying");
                if let Some(metrics) = &self.metrics {
                    metrics.restore_failed(topic);
                }
                self.report_failing(which);
                self.restore(which, partition, generation, delay);
                return None;
            }
        };
        let (current, snapshots) = self.restoring.get_mut(&partition)?;
        if *current != generation {
            return None;
        }
        snapshots[which] = Some(snapshot);
        if snapshots.iter().any(Option::is_none) {
            return None;
        }
        let (_, snapshots) = self.restoring.remove(&partition)?;
        let still = self.pending.get(&partition).is_some_and(|q| !q.is_empty());
        self.report(|b| b.progressed(partition, still));
        let read: Vec<Folded> = snapshots.into_iter().flatten().collect();
        let generation = changelog::next_generation(read.iter());
        tracing::debug!(
            partition,
            generation,
            "partition restored; its writes carry this generation"
        );
        let (snapshots, superseded) = read.into_iter().map(|r| (r.records, r.superseded)).unzip();
        Some(Event::Restored {
            partition,
            snapshots,
            generation,
            superseded,
        })
    }

    /// Reports offsets jumped over before `offset` of `partition`: an error log naming the
    /// partition and how many, and `leadwatch_kafka_offsets_skipped_total{topic}`.
    fn check_contiguous(&mut self, partition: i32, offset: i64) {
        if let Some(expected) = self.expected.insert(partition, offset + 1)
            && offset > expected
        {
            let skipped = offset - expected;
            tracing::error!(
                topic = %self.topic,
                partition,
                from = expected,
                to = offset - 1,
                skipped,
                "offsets were deleted before they were read (retention, or the embedded broker's trimming): their records are lost to this group"
            );
            if let Some(metrics) = &self.metrics {
                metrics.offsets_skipped(&self.topic, skipped as u64);
            }
        }
    }

    /// Files one message (or consumer error): what a ready partition's stage must see goes to
    /// `read`; what a restoring partition's must see later waits for it. Returns how many
    /// messages it filed (0 or 1: partition ends and errors are not messages).
    fn received(&mut self, received: Received<M>, read: &mut Vec<Read<M>>) -> usize {
        let (partition, offset, decoded) = match received {
            Ok(msg) => msg,
            Err(KafkaError::PartitionEOF(partition)) => {
                match self.slots.route(partition) {
                    Slot::Restoring { waiting, .. } => waiting.push(Waited::End),
                    Slot::Ready(_) => read.push(Read::End { partition }),
                }
                return 0;
            }
            Err(e) => {
                read.push(Read::Error(e));
                return 0;
            }
        };
        self.check_contiguous(partition, offset);
        match (decoded, self.slots.route(partition)) {
            (Ok(message), Slot::Restoring { waiting, .. }) => {
                waiting.push(Waited::Message { offset, message })
            }
            (Ok(message), Slot::Ready(_)) => read.push(Read::Message {
                partition,
                offset,
                message,
            }),
            (Err(error), slot) => {
                // Reported now; its offset is stored in its turn, after every message before it.
                self.unreadable
                    .entry(partition)
                    .or_default()
                    .insert(offset, error.clone());
                if let Slot::Restoring { waiting, .. } = slot {
                    waiting.push(Waited::Unreadable { offset });
                }
                read.push(Read::Unreadable {
                    partition,
                    offset,
                    error,
                });
            }
        }
        1
    }
}

#[cfg(test)]
mod tests {
    use rdkafka::ClientConfig;
    use rdkafka::consumer::{BaseConsumer, Consumer};
    use rdkafka::producer::{BaseProducer, BaseRecord, Producer as _};
    use rdkafka::{Offset, TopicPartitionList};

    use super::*;
    use crate::bus::KafkaConfig;
    use crate::bus::consumer::RebalanceHooks;
    use crate::bus::embedded::EmbeddedKafka;
    use crate::clock::Clock;

    fn decode(payload: Option<&[u8]>) -> Result<String, String> {
        let bytes = payload.ok_or("empty")?;
        let text = std::str::from_utf8(bytes).map_err(|e| e.to_string())?;
        if text == "garbage" {
            return Err("not a message".into());
        }
        Ok(text.to_string())
    }

    /// A member of `group` on topic `in` of `broker` that pauses each partition it is assigned
    /// until the group has restored it.
    fn subscribe_paused(
        base: &ClientConfig,
        broker: &EmbeddedKafka,
        group: &str,
        metrics: Arc<Metrics>,
    ) -> (
        consumer::GroupConsumer,
        tokio::sync::mpsc::UnboundedReceiver<consumer::Assignment>,
    ) {
        let hooks = RebalanceHooks {
            pause_on_assign: true,
            ..RebalanceHooks::default()
        };
        consumer::subscribe(
            base,
            &kafka(broker.bootstrap()),
            group,
            "in",
            metrics,
            hooks,
        )
        .unwrap()
    }

    /// A restorer of `topic`'s partitions, patient for 30 s.
    fn restorer(base: &ClientConfig, topic: &str) -> Restorer {
        Restorer::new(
            base.clone(),
            topic,
            Duration::from_secs(30),
            Clock::system(),
        )
    }

    fn kafka(bootstrap: &str) -> KafkaConfig {
        KafkaConfig {
            brokers: bootstrap.to_string(),
            topic_prefix: "t".into(),
            group_id: "g".into(),
            partitions: 2,
            replication_factor: -1,
            session_timeout: Duration::from_secs(3),
            min_replication_factor: None,
            min_insync_replicas: None,
            instance_id: None,
            options: Default::default(),
        }
    }

    /// A partition is restored from its changelogs before its messages are handed out; a
    /// message is done only when its work is; offsets are committed at close up to the last
    /// done message, so a member joining after gets exactly the rest.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_partition_is_restored_then_processed_and_its_done_offsets_committed() {
        let broker =
            EmbeddedKafka::start(&[("in".into(), 1), ("log".into(), 1), ("other".into(), 1)])
                .unwrap();
        let mut base = ClientConfig::new();
        base.set("bootstrap.servers", broker.bootstrap());
        let producer: BaseProducer = base.create().unwrap();
        producer
            .send(BaseRecord::to("log").key("lead").payload("state"))
            .unwrap();
        // The last message's work never finishes; what follows it, unreadable, must not carry the
        // committed offset past it.
        for text in ["one", "garbage", "two", "three", "garbage"] {
            producer
                .send(BaseRecord::to("in").key("lead").payload(text))
                .unwrap();
        }
        producer.flush(Duration::from_secs(10)).unwrap();

        let subscribed = subscribe_paused(&base, &broker, "g", Arc::new(Metrics::new()));
        let mut group: Group<Vec<String>, String> = Group::new(
            subscribed,
            "in",
            vec![restorer(&base, "log"), restorer(&base, "other")],
            10,
            decode,
        );

        let mut seen = Vec::new();
        let mut unreadable = Vec::new();
        // What the stage does with a message: keeps it; the last one's work never finishes, so
        // its offset stays unstored.
        let process = |group: &mut Group<Vec<String>, String>,
                       seen: &mut Vec<(i64, String)>,
                       partition: i32,
                       offset: i64,
                       message: String| {
            let state = group.partition_mut(partition).expect("ready");
            state.push(message.clone());
            let done = message != "three";
            group.track(partition, offset, async move {
                if !done {
                    std::future::pending::<()>().await;
                }
                true
            });
            seen.push((offset, message));
        };
        let deadline = Clock::system().instant() + Duration::from_secs(60);
        while seen.len() < 3 || unreadable.len() < 2 {
            let event = tokio::time::timeout_at(deadline, group.next())
                .await
                .expect("the partition's messages within a minute");
            match event {
                Event::Restored {
                    partition,
                    snapshots,
                    ..
                } => {
                    assert_eq!(snapshots.len(), 2, "one snapshot per changelog");
                    assert_eq!(snapshots[0]["lead"], b"state");
                    assert!(snapshots[1].is_empty());
                    assert!(seen.is_empty(), "restored before any message");
                    for waited in group.ready(partition, vec!["restored".into()]) {
                        match waited {
                            Waited::Message { offset, message } => {
                                process(&mut group, &mut seen, partition, offset, message)
                            }
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
                                message,
                            } => process(&mut group, &mut seen, partition, offset, message),
                            Read::Unreadable {
                                partition,
                                offset,
                                error,
                            } => {
                                unreadable.push((offset, error));
                                group.skip(partition, offset);
                            }
                            Read::End { .. } | Read::Error(_) => {}
                        }
                    }
                }
                Event::Assigned(_) | Event::Revoked(_) => {}
            }
        }
        assert_eq!(
            seen,
            [
                (0, "one".to_string()),
                (2, "two".into()),
                (3, "three".into())
            ]
        );
        assert_eq!(
            unreadable,
            [
                (1, "not a message".to_string()),
                (4, "not a message".into())
            ]
        );
        assert_eq!(
            group.partitions().map(|(_, s)| s.len()).sum::<usize>(),
            4,
            "the stage's state holds what it processed"
        );
        assert!(
            !group.drain(Duration::from_secs(2), async {}).await,
            "the last message's work is not done"
        );
        group.close(Duration::from_secs(10)).await;

        // The group's committed offset: after "two", before "three" (not past it, whatever
        // followed it).
        let committed = committed(&base, &[0]);
        assert_eq!(
            committed.find_partition("in", 0).unwrap().offset(),
            Offset::Offset(3)
        );
    }

    /// A partition revoked while a message's work is pending, then assigned back to this same
    /// member: that work finishing afterwards (done) does not store its offset. It was the
    /// earlier assignment's; the state the new assignment restored may not hold what it did, so
    /// its offset stored now would skip the message for good. It is still driven to its end.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn work_of_an_earlier_assignment_never_stores_its_offset_in_a_later_one() {
        let broker = EmbeddedKafka::start(&[("in".into(), 1), ("log".into(), 1)]).unwrap();
        let mut base = ClientConfig::new();
        base.set("bootstrap.servers", broker.bootstrap());
        let producer: BaseProducer = base.create().unwrap();
        producer
            .send(BaseRecord::to("in").key("lead").payload("one"))
            .unwrap();
        producer.flush(Duration::from_secs(10)).unwrap();
        let subscribed = subscribe_paused(&base, &broker, "g-again", Arc::new(Metrics::new()));
        let mut group: Group<(), String> =
            Group::new(subscribed, "in", vec![restorer(&base, "log")], 10, decode);
        let deadline = Clock::system().instant() + Duration::from_secs(60);
        let next = async |group: &mut Group<(), String>| {
            tokio::time::timeout_at(deadline, group.next())
                .await
                .expect("the group's events within a minute")
        };

        // The first assignment: the message's work starts, and waits.
        let (finish, finished) = tokio::sync::oneshot::channel::<bool>();
        let mut finished = Some(finished);
        let ended = Arc::new(std::sync::atomic::AtomicBool::new(false));
        while finished.is_some() {
            let read = match next(&mut group).await {
                Event::Restored { partition, .. } => group
                    .ready(partition, ())
                    .into_iter()
                    .filter_map(|w| match w {
                        Waited::Message { offset, .. } => Some((partition, offset)),
                        _ => None,
                    })
                    .collect(),
                Event::Read(read) => read
                    .into_iter()
                    .filter_map(|r| match r {
                        Read::Message {
                            partition, offset, ..
                        } => Some((partition, offset)),
                        _ => None,
                    })
                    .collect(),
                _ => Vec::new(),
            };
            for (partition, offset) in read {
                let finished = finished.take().expect("one message");
                let ended = ended.clone();
                group.track(partition, offset, async move {
                    let done = finished.await.unwrap_or(false);
                    ended.store(true, std::sync::atomic::Ordering::SeqCst);
                    done
                });
            }
        }

        // The partition is revoked, then assigned back to this member.
        group.consumer.unsubscribe();
        while !matches!(next(&mut group).await, Event::Revoked(_)) {}
        group.consumer.subscribe(&["in"]).unwrap();
        loop {
            if let Event::Restored { partition, .. } = next(&mut group).await {
                // What waited is the new assignment's to redo (not done here).
                let _ = group.ready(partition, ());
                break;
            }
        }

        // The earlier assignment's work is done now.
        finish.send(true).unwrap();
        assert!(group.drain(Duration::from_secs(10), async {}).await);
        assert!(
            ended.load(std::sync::atomic::Ordering::SeqCst),
            "the earlier work was driven to its end"
        );
        group.close(Duration::from_secs(10)).await;
        let mut cfg = base.clone();
        cfg.set("group.id", "g-again");
        let check: BaseConsumer = cfg.create().unwrap();
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition("in", 0);
        let committed = check
            .committed_offsets(tpl, Duration::from_secs(10))
            .unwrap();
        assert_eq!(
            committed.find_partition("in", 0).unwrap().offset(),
            Offset::Invalid,
            "an earlier assignment's offset was stored"
        );
    }

    /// What group `g` has committed for `partitions` of topic `in`.
    fn committed(base: &ClientConfig, partitions: &[i32]) -> TopicPartitionList {
        let mut cfg = base.clone();
        cfg.set("group.id", "g");
        let check: BaseConsumer = cfg.create().unwrap();
        let mut tpl = TopicPartitionList::new();
        for p in partitions {
            tpl.add_partition("in", *p);
        }
        check
            .committed_offsets(tpl, Duration::from_secs(10))
            .unwrap()
    }

    /// One partition's work that never finishes holds back no other partition's offsets.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_partition_whose_work_hangs_holds_back_no_other_partitions_offsets() {
        let broker = EmbeddedKafka::start(&[("in".into(), 2)]).unwrap();
        let mut base = ClientConfig::new();
        base.set("bootstrap.servers", broker.bootstrap());
        let producer: BaseProducer = base.create().unwrap();
        for partition in [0, 1] {
            producer
                .send(
                    BaseRecord::to("in")
                        .key("lead")
                        .payload("m")
                        .partition(partition),
                )
                .unwrap();
        }
        producer.flush(Duration::from_secs(10)).unwrap();
        let subscribed = consumer::subscribe(
            &base,
            &kafka(broker.bootstrap()),
            "g",
            "in",
            Arc::new(Metrics::new()),
            RebalanceHooks::default(),
        )
        .unwrap();
        let mut group: Group<(), String> = Group::new(subscribed, "in", Vec::new(), 10, decode);
        let mut read = Vec::new();
        let deadline = Clock::system().instant() + Duration::from_secs(60);
        while read.len() < 2 {
            let event = tokio::time::timeout_at(deadline, group.next())
                .await
                .expect("both messages within a minute");
            match event {
                // Nothing to restore: ready at once.
                Event::Assigned(partitions) => {
                    for partition in partitions {
                        for waited in group.ready(partition, ()) {
                            if let Waited::Message { offset, .. } = waited {
                                read.push((partition, offset));
                            }
                        }
                    }
                }
                Event::Read(rs) => {
                    for r in rs {
                        if let Read::Message {
                            partition, offset, ..
                        } = r
                        {
                            read.push((partition, offset));
                        }
                    }
                }
                _ => {}
            }
        }
        // Partition 0's work never finishes, and was handed in first; partition 1's is done.
        read.sort();
        assert_eq!(read, [(0, 0), (1, 0)]);
        group.track(0, 0, std::future::pending());
        group.track(1, 0, futures::future::ready(true));
        assert!(!group.drain(Duration::from_secs(2), async {}).await);
        group.close(Duration::from_secs(10)).await;

        let committed = committed(&base, &[0, 1]);
        assert_eq!(
            committed.find_partition("in", 1).unwrap().offset(),
            Offset::Offset(1),
            "partition 1's offset is committed"
        );
        assert_eq!(
            committed.find_partition("in", 0).unwrap().offset(),
            Offset::Invalid,
            "partition 0's work is not done"
        );
    }

    /// A stage that has not finished a message's work, and an unreadable message after it in
    /// the same fetch: the unreadable one's offset waits its turn (storing it would commit past
    /// the unfinished one). And messages of a restoring partition wait for it, in order.
    #[tokio::test]
    async fn an_offset_is_stored_in_its_turn_and_a_restoring_partition_keeps_what_came() {
        let broker = EmbeddedKafka::start(&[("in".into(), 2)]).unwrap();
        let mut base = ClientConfig::new();
        base.set("bootstrap.servers", broker.bootstrap());
        let subscribed = consumer::subscribe(
            &base,
            &kafka(broker.bootstrap()),
            "g",
            "in",
            Arc::new(Metrics::new()),
            RebalanceHooks::default(),
        )
        .unwrap();
        let mut group: Group<(), String> = Group::new(subscribed, "in", Vec::new(), 10, decode);
        let message =
            |partition, offset, text: &str| Ok((partition, offset, decode(Some(text.as_bytes()))));

        // Partition 0 is ready; what was fetched together comes out together, in order.
        group.slots.ready(0, ());
        let mut read = Vec::new();
        group.received(message(0, 3, "three"), &mut read);
        group.received(message(0, 4, "garbage"), &mut read);
        for r in read {
            match r {
                Read::Message {
                    partition, offset, ..
                } => group.track(partition, offset, std::future::pending()),
                Read::Unreadable {
                    partition, offset, ..
                } => group.skip(partition, offset),
                _ => panic!("only a message and an unreadable one were read"),
            }
        }
        assert_eq!(group.in_flight(), 2);
        assert!(
            next_done(&mut group.pending).now_or_never().is_none(),
            "the unreadable offset waits behind the unfinished work"
        );

        // Partition 1 is restoring: its messages, unreadable ones and its end wait, in order.
        group.slots.assign(vec![1]);
        let mut read = Vec::new();
        group.received(message(1, 0, "a"), &mut read);
        group.received(message(1, 1, "garbage"), &mut read);
        group.received(Err(KafkaError::PartitionEOF(1)), &mut read);
        assert!(
            matches!(
                read.as_slice(),
                [Read::Unreadable {
                    partition: 1,
                    offset: 1,
                    ..
                }]
            ),
            "only the unreadable one is reported at once"
        );
        let waited: Vec<String> = group
            .ready(1, ())
            .into_iter()
            .map(|w| match w {
                Waited::Message { offset, message } => format!("{offset}:{message}"),
                Waited::Unreadable { offset } => format!("{offset}:unreadable"),
                Waited::End => "end".into(),
            })
            .collect();
        assert_eq!(waited, ["0:a", "1:unreadable", "end"]);
    }

    /// A restore that panics, then one that fails: each is counted and retried with backoff,
    /// and the partition is restored in the end — never left paused.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_restore_that_dies_or_fails_is_counted_and_retried_until_the_partition_is_restored() {
        static ATTEMPTS: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        fn flaky(
            base: &ClientConfig,
            topic: &str,
            partition: i32,
            timeout: Duration,
            clock: &Clock,
        ) -> Result<Folded, crate::bus::changelog::RestoreError> {
            match ATTEMPTS.fetch_add(1, std::sync::atomic::Ordering::SeqCst) {
                0 => panic!("a restore thread dies"),
                1 => Err(crate::bus::changelog::RestoreError::Timeout {
                    topic: topic.into(),
                    partition,
                    end: 1,
                    at: 0,
                    timeout,
                }),
                _ => crate::bus::changelog::read_partition(base, topic, partition, timeout, clock),
            }
        }

        let broker = EmbeddedKafka::start(&[("in".into(), 1), ("log".into(), 1)]).unwrap();
        let mut base = ClientConfig::new();
        base.set("bootstrap.servers", broker.bootstrap());
        let producer: BaseProducer = base.create().unwrap();
        producer
            .send(BaseRecord::to("log").key("lead").payload("state"))
            .unwrap();
        producer.flush(Duration::from_secs(10)).unwrap();
        let mut flaky_restorer = restorer(&base, "log");
        flaky_restorer.read = flaky;
        let metrics = Arc::new(Metrics::new());
        let subscribed = subscribe_paused(&base, &broker, "g-restore", metrics.clone());
        let mut group: Group<(), String> =
            Group::new(subscribed, "in", vec![flaky_restorer], 10, decode)
                .counting(metrics.clone(), None);

        let deadline = Clock::system().instant() + Duration::from_secs(30);
        let snapshots = loop {
            let event = tokio::time::timeout_at(deadline, group.next())
                .await
                .expect("the partition restored within 30 s");
            if let Event::Restored { snapshots, .. } = event {
                break snapshots;
            }
        };
        assert_eq!(snapshots[0]["lead"], b"state");
        assert_eq!(ATTEMPTS.load(std::sync::atomic::Ordering::SeqCst), 3);
        let text = metrics.encode();
        let value = |line: &str| {
            text.lines()
                .find_map(|l| l.strip_prefix(line))
                .map(str::trim)
                .unwrap_or_else(|| panic!("{line} not in {text}"))
                .to_string()
        };
        assert_eq!(
            value("leadwatch_restore_failures_total{topic=\"log\"}"),
            "2"
        );
        assert_eq!(value("leadwatch_restores_failing{topic=\"log\"}"), "0");
        group.close(Duration::from_secs(10)).await;
    }

    #[test]
    fn restore_retries_back_off_from_a_second_to_a_minute() {
        let delays: Vec<u64> = [1, 2, 3, 6, 7, 40]
            .map(|n| restore_backoff(n).as_secs())
            .to_vec();
        assert_eq!(delays, [1, 2, 4, 32, 60, 60]);
    }
}
