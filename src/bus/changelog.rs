//! Compacted changelog topics (`{prefix}.state`, `{prefix}.delivered`): reading one partition back
//! into memory when it is assigned (Kafka Streams' restore), with an assigned — not subscribed —
//! consumer, so the group member doing the restore is never ejected for it.

use std::collections::HashMap;
use std::time::Duration;

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::message::Headers as _;
use rdkafka::{ClientConfig, Message, Offset, TopicPartitionList};

use crate::clock::Clock;

#[derive(Debug, thiserror::Error)]
pub enum RestoreError {
    #[error("reading {topic}[{partition}]: {source}")]
    Kafka {
        topic: String,
        partition: i32,
        #[source]
        source: KafkaError,
    },
    #[error("reading {topic}[{partition}] did not reach offset {end} within {timeout:?} (at {at})")]
    Timeout {
        topic: String,
        partition: i32,
        end: i64,
        at: i64,
        timeout: Duration,
    },
    /// The restore's thread panicked, or its task ended without an answer.
    #[error("restoring {topic}[{partition}] died: {reason}")]
    Died {
        topic: String,
        partition: i32,
        reason: String,
    },
}

/// What a partition held: the latest value of every key that is not tombstoned.
pub type Snapshot = HashMap<String, Vec<u8>>;

/// A changelog partition read back ([`read_partition`]).
#[derive(Debug, Clone, Default)]
pub struct Folded {
    /// Per key, the record of the highest partition generation (see [`generation_of`]); of
    /// those, the last. Tombstoned keys are left out.
    pub records: Snapshot,
    /// The highest partition generation of any record read (0: none carried one). The next
    /// owner writes with one more ([`next_generation`]).
    pub generation: u64,
    /// Records passed over because their key already had a record of a newer generation: late
    /// writes of an earlier owner.
    pub superseded: Vec<String>,
}

/// `body` under the header every changelog record starts with ([`crate::stamp`]: the format
/// version, then `generation`, the writer's partition generation); the ledger's and backlog's bodies are JSON, the state's
/// is its own (`engine::record`, under the same header).
///
/// **The partition generation** is one more than the highest generation read back from the
/// partition's changelogs when it was assigned ([`next_generation`]). So it only grows per
/// partition, across owners and restarts, without asking anything of the broker: the consumer
/// group's generation id is not exposed by librdkafka's API, and it grows per group, not per
/// partition (a group whose offsets expired starts again at 1). Two owners in a row share a
/// generation only when none of the earlier one's writes had reached the changelog when the
/// later one read it: such a late write then ties, and the later offset wins (the README's
/// "Guarantees" says what remains).
pub fn stamp(generation: u64, body: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(body.len() + 1 + crate::stamp::VARINT_MAX);
    crate::stamp::write(&mut out, generation);
    out.extend_from_slice(body);
    out
}

/// The partition generation that wrote `record` (0 when it says none, or cannot be read: an
/// unreadable record is its reader's to report, not the fold's).
pub fn generation_of(record: &[u8]) -> u64 {
    crate::stamp::read(record).map_or(0, |(generation, _)| generation)
}

/// The generation a new owner of a partition writes with, from what its changelogs held.
pub fn next_generation<'a>(read: impl IntoIterator<Item = &'a Folded>) -> u64 {
    read.into_iter().map(|f| f.generation).max().unwrap_or(0) + 1
}

/// Folds one partition's records, in offset order, per key: a record replaces what its key
/// holds unless that is of a newer generation (a late write of an earlier owner is passed over);
/// a tombstone (its generation in its header) likewise removes the key's value unless that is of
/// a newer generation, but not the generation the key reached, so an older late record after it
/// stays passed over too. A record without a generation (0: an earlier build
/// wrote it, as during a rolling upgrade, where such a member may own the partition after one of
/// this build) cannot be told late: it replaces what its key holds, as every record did before.
///
/// A kept record's generation is read again from its header when the next record of its key
/// comes (a few bytes), so the fold holds nothing per key besides the record itself.
#[derive(Debug, Default)]
pub struct Fold {
    records: Snapshot,
    /// The generation a tombstoned key had reached.
    tombstoned: HashMap<String, u64>,
    generation: u64,
    superseded: Vec<String>,
}

impl Fold {
    /// The next record of the partition (a tombstone goes to [`Fold::tombstone`]).
    pub fn push(&mut self, key: &str, value: &[u8]) {
        let generation = generation_of(value);
        self.generation = self.generation.max(generation);
        let reached = match self.records.get_mut(key) {
            Some(kept) => {
                if generation > 0 && generation_of(kept) > generation {
                    self.superseded.push(key.to_string());
                } else {
                    *kept = value.to_vec();
                }
                return;
            }
            None => self.tombstoned.get(key).copied(),
        };
        match reached {
            Some(reached) if generation > 0 && reached > generation => {
                self.superseded.push(key.to_string())
            }
            Some(_) => {
                self.tombstoned.remove(key);
                self.records.insert(key.to_string(), value.to_vec());
            }
            None => {
                self.records.insert(key.to_string(), value.to_vec());
            }
        }
    }

    /// The next record of the partition is a tombstone written by `generation` (its header,
    /// [`crate::stamp::TOMBSTONE_HEADER`]; 0: none, an earlier build's or `forget`'s). One of an
    /// earlier generation than the key's record is an earlier owner's late write: passed over,
    /// as a late record is (the owner writes the key again). Otherwise it removes the key's
    /// value, and the generation the key reached (its record's or the tombstone's) passes over
    /// older records after it.
    pub fn tombstone(&mut self, key: &str, generation: u64) {
        self.generation = self.generation.max(generation);
        if let Some(kept) = self.records.get(key) {
            let reached = generation_of(kept);
            if generation > 0 && reached > generation {
                self.superseded.push(key.to_string());
                return;
            }
            self.records.remove(key);
            self.tombstoned
                .insert(key.to_string(), reached.max(generation));
            return;
        }
        if generation > 0 {
            let reached = self.tombstoned.entry(key.to_string()).or_default();
            *reached = (*reached).max(generation);
        }
    }

    pub fn finish(self) -> Folded {
        Folded {
            records: self.records,
            generation: self.generation,
            superseded: self.superseded,
        }
    }
}

/// How the record of a late delivery in `{prefix}.delivered` (the dispatcher's ledger writes
/// one when a delivery reaches its sink after the partition was revoked) is told from a lead's
/// entry, which is keyed by the lead: no lead key starts with NUL.
pub const LATE_PREFIX: &str = "\u{0}late\u{0}";

/// The lead a late delivery's record names, if `key` is one (its value carries the lead:
/// `forget` must find the records of a lead to erase them).
pub fn late_lead(key: &str, value: &[u8]) -> Option<String> {
    #[derive(serde::Deserialize)]
    struct Named {
        lead: String,
    }
    if !key.starts_with(LATE_PREFIX) {
        return None;
    }
    let (_, body) = crate::stamp::read(value)?;
    serde_json::from_slice::<Named>(body).ok().map(|n| n.lead)
}

/// How `forget`'s marker in `{prefix}.delivered` is keyed: this, then the lead (no lead key
/// starts with NUL). It sits in the partition of the lead's alerts, stamped with a generation
/// above every owner's that could have written a late delivery of the lead before the erasure
/// ([`Forgotten`]).
pub const FORGOT_PREFIX: &str = "\u{0}forgot\u{0}";

/// The key of `lead`'s forget marker.
pub fn forgot_key(lead: &str) -> String {
    format!("{FORGOT_PREFIX}{lead}")
}

/// The body of a forget marker ([`FORGOT_PREFIX`]): a restore drops (and tombstones) the late
/// deliveries of `lead` written with the marker's generation or an earlier one — by the owners
/// of the partition up to the erasure, landing after `forget` read the partition — and keeps
/// those of owners that restored after it (a delivery of the lead coming back with new events).
/// The marker itself is tombstoned once it is older than the ledger's retention.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Forgotten {
    pub lead: String,
    /// When the lead was forgotten.
    pub at: jiff::Timestamp,
}

/// Reads `topic[partition]` from its start to its end — at least to its end offset as of this
/// call, and on to where the broker says the partition ends (a broker may report an end offset
/// short of its last batch's records: tansu gives that batch's first offset + 1) — (blocking: run
/// it with `spawn_blocking`). Per key, the later record of the highest generation wins
/// ([`Fold`]); a record without a value (tombstone) removes its key.
pub fn read_partition(
    base: &ClientConfig,
    topic: &str,
    partition: i32,
    timeout: Duration,
    clock: &Clock,
) -> Result<Folded, RestoreError> {
    let kafka = |source| RestoreError::Kafka {
        topic: topic.to_string(),
        partition,
        source,
    };
    let mut cfg = base.clone();
    cfg.set("group.id", format!("{topic}.restore"))
        .set("enable.auto.commit", "false")
        // The end of the partition is reported, so offsets the consumer never sees (the last
        // record compacted away, control records) cannot keep the restore waiting.
        .set("enable.partition.eof", "true")
        .set("fetch.max.bytes", "52428800")
        .set("max.partition.fetch.bytes", "10485760");
    let consumer: BaseConsumer<super::QuietContext> = cfg
        .create_with_context(super::QuietContext)
        .map_err(kafka)?;
    let (low, high) = consumer
        .fetch_watermarks(topic, partition, Duration::from_secs(10))
        .map_err(kafka)?;
    let mut fold = Fold::default();
    if high <= low {
        return Ok(fold.finish());
    }
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset(topic, partition, Offset::Beginning)
        .map_err(kafka)?;
    consumer.assign(&tpl).map_err(kafka)?;
    let started = clock.instant();
    // The offset of the last record read: none yet.
    let mut at = low - 1;
    loop {
        if clock.instant() - started > timeout {
            return Err(RestoreError::Timeout {
                topic: topic.to_string(),
                partition,
                end: high,
                at,
                timeout,
            });
        }
        let Some(result) = consumer.poll(Duration::from_millis(200)) else {
            continue;
        };
        let msg = match result {
            Ok(msg) => msg,
            // The end as the fetcher sees it: done once it is at (or past) the end taken above;
            // a broker may report it early, before the fetches catch up.
            Err(KafkaError::PartitionEOF(_)) => {
                let position = consumer.position().ok().and_then(|tpl| {
                    tpl.find_partition(topic, partition)
                        .and_then(|e| e.offset().to_raw())
                });
                if position.is_some_and(|next| next >= high) {
                    break;
                }
                continue;
            }
            Err(e) => return Err(kafka(e)),
        };
        at = msg.offset();
        let Some(key) = msg.key().and_then(|k| std::str::from_utf8(k).ok()) else {
            continue;
        };
        match msg.payload() {
            Some(value) => fold.push(key, value),
            None => {
                let header = msg.headers().and_then(|headers| {
                    headers
                        .iter()
                        .find(|h| h.key == crate::stamp::TOMBSTONE_HEADER)
                        .and_then(|h| h.value)
                });
                fold.tombstone(key, crate::stamp::tombstone_generation(header));
            }
        }
    }
    let read = fold.finish();
    tracing::debug!(
        topic,
        partition,
        low,
        high,
        at,
        keys = read.records.len(),
        generation = read.generation,
        superseded = read.superseded.len(),
        "changelog partition read"
    );
    if !read.superseded.is_empty() {
        tracing::info!(
            topic,
            partition,
            superseded = read.superseded.len(),
            "late records of an earlier owner were passed over"
        );
    }
    Ok(read)
}

/// One assigned partition of a loop that keeps state per partition: restoring (with the
/// messages that arrived meanwhile, in order) or ready.
pub enum Slot<S, W> {
    Restoring { generation: u64, waiting: Vec<W> },
    Ready(S),
}

/// The partitions a loop owns, each restoring or ready.
pub struct Slots<S, W> {
    pub slots: std::collections::HashMap<i32, Slot<S, W>>,
    generation: u64,
}

impl<S, W> Default for Slots<S, W> {
    fn default() -> Self {
        Self {
            slots: Default::default(),
            generation: 0,
        }
    }
}

impl<S, W> Slots<S, W> {
    /// Marks newly assigned partitions as restoring, each under a new generation (keeping
    /// messages that already wait for them); returns each with its generation, whose restores
    /// the caller starts ([`Restorer::spawn`]).
    pub fn assign(&mut self, partitions: Vec<i32>) -> Vec<(i32, u64)> {
        partitions
            .into_iter()
            .map(|p| {
                self.generation += 1;
                let waiting = match self.slots.remove(&p) {
                    Some(Slot::Restoring { waiting, .. }) => waiting,
                    _ => Vec::new(),
                };
                self.slots.insert(
                    p,
                    Slot::Restoring {
                        generation: self.generation,
                        waiting,
                    },
                );
                (p, self.generation)
            })
            .collect()
    }

    pub fn revoked(&mut self, partitions: &[i32]) {
        for p in partitions {
            self.slots.remove(p);
        }
    }

    /// Whether `done` is the restore the partition waits for (not one made stale by a
    /// revocation and a new assignment meanwhile).
    pub fn is_current(&self, done: &Restored) -> bool {
        matches!(self.slots.get(&done.partition), Some(Slot::Restoring { generation, .. }) if *generation == done.generation)
    }

    /// Makes a restored partition ready; returns the messages that waited for it, in order.
    pub fn ready(&mut self, partition: i32, state: S) -> Vec<W> {
        let waiting = match self.slots.remove(&partition) {
            Some(Slot::Restoring { waiting, .. }) => waiting,
            _ => Vec::new(),
        };
        self.slots.insert(partition, Slot::Ready(state));
        waiting
    }

    /// Where a message for `partition` goes: its state, or (while it is restoring, or before
    /// its assignment is seen) the queue of messages waiting for it.
    pub fn route(&mut self, partition: i32) -> &mut Slot<S, W> {
        self.slots
            .entry(partition)
            .or_insert_with(|| Slot::Restoring {
                generation: 0,
                waiting: Vec::new(),
            })
    }

    pub fn ready_mut(&mut self, partition: i32) -> Option<&mut S> {
        match self.slots.get_mut(&partition) {
            Some(Slot::Ready(s)) => Some(s),
            _ => None,
        }
    }

    /// Every ready partition.
    pub fn iter_ready_mut(&mut self) -> impl Iterator<Item = (i32, &mut S)> {
        self.slots.iter_mut().filter_map(|(p, s)| match s {
            Slot::Ready(s) => Some((*p, s)),
            Slot::Restoring { .. } => None,
        })
    }

    pub fn iter_ready(&self) -> impl Iterator<Item = (i32, &S)> {
        self.slots.iter().filter_map(|(p, s)| match s {
            Slot::Ready(s) => Some((*p, s)),
            Slot::Restoring { .. } => None,
        })
    }
}

/// A restore that finished (or failed) on its blocking thread.
pub struct Restored {
    pub partition: i32,
    /// Which assignment it was started for: a partition revoked and assigned again meanwhile
    /// makes an older restore stale.
    pub generation: u64,
    pub result: Result<Folded, RestoreError>,
}

/// How one changelog partition is read ([`read_partition`]; tests hand in others).
pub type ReadFn = fn(&ClientConfig, &str, i32, Duration, &Clock) -> Result<Folded, RestoreError>;

/// Starts restores of one changelog topic on blocking threads.
#[derive(Clone)]
pub struct Restorer {
    pub base: ClientConfig,
    pub topic: String,
    pub timeout: Duration,
    /// Measures the timeout.
    pub clock: Clock,
    /// Reads a partition: [`read_partition`].
    pub read: ReadFn,
}

impl Restorer {
    /// Reads `topic` with [`read_partition`], each partition within `timeout`.
    pub fn new(base: ClientConfig, topic: &str, timeout: Duration, clock: Clock) -> Self {
        Self {
            base,
            topic: topic.to_string(),
            timeout,
            clock,
            read: read_partition,
        }
    }

    /// The failure a restore that ended without an answer came to.
    pub fn died(&self, partition: i32, reason: impl Into<String>) -> RestoreError {
        RestoreError::Died {
            topic: self.topic.clone(),
            partition,
            reason: reason.into(),
        }
    }

    /// Reads `partition` on a blocking thread and sends the outcome to `done`, after `delay`.
    /// A read that panics comes back as [`RestoreError::Died`], to be retried like any failure.
    pub fn spawn(
        &self,
        partition: i32,
        generation: u64,
        delay: Duration,
        done: tokio::sync::mpsc::UnboundedSender<Restored>,
    ) {
        let this = self.clone();
        tokio::spawn(async move {
            tokio::time::sleep(delay).await;
            let reader = this.clone();
            let result = tokio::task::spawn_blocking(move || {
                (reader.read)(
                    &reader.base,
                    &reader.topic,
                    partition,
                    reader.timeout,
                    &reader.clock,
                )
            })
            .await
            .unwrap_or_else(|e| Err(this.died(partition, panic_text(e))));
            let _ = done.send(Restored {
                partition,
                generation,
                result,
            });
        });
    }
}

/// What a failed blocking task said.
fn panic_text(e: tokio::task::JoinError) -> String {
    if !e.is_panic() {
        return e.to_string();
    }
    let payload = e.into_panic();
    payload
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "panicked".into())
}

#[cfg(test)]
mod tests {
    use super::*;
    use rdkafka::producer::{BaseProducer, BaseRecord, Producer as _};

    /// A stamped record reads back as its generation and body, whatever the generation's size
    /// (the header's edge cases are `stamp.rs`'s).
    #[test]
    fn a_stamped_record_reads_back_its_generation_and_body() {
        for generation in [0, 1, 127, 128, 300, u64::from(u32::MAX), u64::MAX] {
            let record = stamp(generation, br#"{"a":1}"#);
            assert_eq!(record[0], crate::stamp::V1);
            assert_eq!(
                crate::stamp::read(&record),
                Some((generation, &br#"{"a":1}"#[..]))
            );
            assert_eq!(generation_of(&record), generation);
        }
        assert_eq!(generation_of(br#"{"a":1}"#), 0, "an earlier build's JSON");
    }

    /// Per key, the record of the highest generation is kept, of those the last: a late record
    /// of an earlier owner, landing after the new owner's, is passed over (and said so), also
    /// after the key was tombstoned; a record of the same generation after it wins as before.
    #[test]
    fn the_fold_keeps_per_key_the_last_record_of_the_highest_generation() {
        let mut fold = Fold::default();
        fold.push("L-old-first", &stamp(3, b"{\"by\":\"old\"}"));
        fold.push("L-old-first", &stamp(4, b"{\"by\":\"new\"}"));
        // The old owner's queued writes land after the new owner's.
        fold.push("L-old-first", &stamp(3, b"{\"by\":\"old, late\"}"));
        fold.push("L-same", &stamp(4, b"1"));
        fold.push("L-same", &stamp(4, b"2"));
        fold.push("L-gone", &stamp(4, b"1"));
        fold.tombstone("L-gone", 0);
        fold.push("L-gone", &stamp(2, b"late"));
        fold.push("L-back", &stamp(4, b"1"));
        fold.tombstone("L-back", 0);
        fold.push("L-back", &stamp(4, b"again"));
        fold.push("L-json", b"{\"v\":1}");
        fold.push("L-json", b"{\"v\":2}");
        // An earlier build's record after this build's: it cannot be told late, so it wins as
        // every later record did before (a rolling upgrade moves partitions both ways).
        fold.push("L-upgrade", &stamp(4, b"1"));
        fold.push("L-upgrade", b"{\"by\":\"an earlier build\"}");
        let read = fold.finish();
        assert_eq!(read.generation, 4);
        assert_eq!(read.records["L-old-first"], stamp(4, b"{\"by\":\"new\"}"));
        assert_eq!(read.records["L-same"], stamp(4, b"2"));
        assert!(
            !read.records.contains_key("L-gone"),
            "a late record cannot bring a tombstoned key back"
        );
        assert_eq!(read.records["L-back"], stamp(4, b"again"));
        assert_eq!(read.records["L-json"], b"{\"v\":2}");
        assert_eq!(read.records["L-upgrade"], b"{\"by\":\"an earlier build\"}");
        assert_eq!(read.superseded, ["L-old-first", "L-gone"]);
        assert_eq!(next_generation([&read, &Folded::default()]), 5);
        assert_eq!(next_generation(&[]), 1);
    }

    /// A tombstone carrying its writer's generation is honoured as a record is: an earlier
    /// owner's late tombstone, landing after the newer owner's record, is passed over (and
    /// the key named, so the owner writes it again); the owner's own removes the key, and an
    /// older record after it stays passed over even when nothing of the key came before. A
    /// tombstone without one (an earlier build's, `forget`'s) removes the key as before.
    #[test]
    fn the_fold_honours_the_generation_a_tombstone_carries() {
        let mut fold = Fold::default();
        fold.push("L-kept", &stamp(4, b"new"));
        fold.tombstone("L-kept", 3);
        fold.push("L-own", &stamp(4, b"1"));
        fold.tombstone("L-own", 4);
        fold.push("L-own", &stamp(3, b"late"));
        fold.tombstone("L-bare", 6);
        fold.push("L-bare", &stamp(5, b"late"));
        fold.push("L-old-build", &stamp(4, b"1"));
        fold.tombstone("L-old-build", 0);
        let read = fold.finish();
        assert_eq!(read.records["L-kept"], stamp(4, b"new"));
        assert!(!read.records.contains_key("L-own"));
        assert!(!read.records.contains_key("L-bare"));
        assert!(!read.records.contains_key("L-old-build"));
        assert_eq!(read.superseded, ["L-kept", "L-own", "L-bare"]);
        assert_eq!(read.generation, 6, "a tombstone's generation counts");
    }

    /// Through Kafka: a tombstone written as an earlier generation (its header) that lands after
    /// the next owner's record does not remove it at restore. Before, a tombstone carried no
    /// generation and removed the newer record.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_earlier_owners_late_tombstone_does_not_remove_the_newer_record() {
        use crate::bus::producer::Producer;
        let kafka = crate::bus::embedded::EmbeddedKafka::start(&[("state".into(), 1)]).unwrap();
        let mut cfg = ClientConfig::new();
        cfg.set("bootstrap.servers", kafka.bootstrap());
        let producer =
            Producer::new(&cfg, std::sync::Arc::new(crate::telemetry::Metrics::new())).unwrap();
        let written = |generation: u64, key: &'static str, value: Option<Vec<u8>>| {
            let queued = producer
                .enqueue_as(generation, "state", Some(0), key, value.as_deref())
                .unwrap();
            async move { assert!(matches!(queued.await, Ok(Ok(_)))) }
        };
        written(3, "L-1", Some(stamp(3, b"old"))).await;
        written(4, "L-1", Some(stamp(4, b"new"))).await;
        // The earlier owner's tombstone, queued before the partition moved, lands last.
        written(3, "L-1", None).await;
        written(4, "L-2", Some(stamp(4, b"1"))).await;
        written(4, "L-2", None).await;
        let read = tokio::task::spawn_blocking(move || {
            read_partition(&cfg, "state", 0, Duration::from_secs(20), &Clock::system()).unwrap()
        })
        .await
        .unwrap();
        assert_eq!(
            read.records.get("L-1"),
            Some(&stamp(4, b"new")),
            "the late tombstone removed the newer owner's record"
        );
        assert_eq!(read.superseded, ["L-1"], "the owner writes it again");
        assert!(
            !read.records.contains_key("L-2"),
            "the owner's own tombstone"
        );
    }

    #[test]
    fn a_partition_holding_a_single_record_is_read_back() {
        let kafka = crate::bus::embedded::EmbeddedKafka::start(&[("one".into(), 1)]).unwrap();
        let mut base = ClientConfig::new();
        base.set("bootstrap.servers", kafka.bootstrap());
        let producer: BaseProducer = base.create().unwrap();
        producer
            .send(BaseRecord::to("one").key("L-1").payload("v1"))
            .unwrap();
        producer.flush(Duration::from_secs(10)).unwrap();
        let read =
            read_partition(&base, "one", 0, Duration::from_secs(20), &Clock::system()).unwrap();
        assert_eq!(read.records.get("L-1").map(Vec::as_slice), Some(&b"v1"[..]));
    }
}
