//! Compacted changelog topics (`{prefix}.state`, `{prefix}.delivered`): reading one partition back
//! into memory when it is assigned (Kafka Streams' restore), with an assigned — not subscribed —
//! consumer, so the group member doing the restore is never ejected for it.

use std::collections::HashMap;
use std::time::Duration;

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
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
    serde_json::from_slice::<Named>(value).ok().map(|n| n.lead)
}

/// Reads `topic[partition]` from its start to its end — at least to its end offset as of this
/// call, and on to where the broker says the partition ends (a broker may report an end offset
/// short of its last batch's records: tansu gives that batch's first offset + 1) — (blocking: run
/// it with `spawn_blocking`). Later records win; a record without a value (tombstone) removes
/// its key.
pub fn read_partition(
    base: &ClientConfig,
    topic: &str,
    partition: i32,
    timeout: Duration,
    clock: &Clock,
) -> Result<Snapshot, RestoreError> {
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
    let mut snapshot = Snapshot::new();
    if high <= low {
        return Ok(snapshot);
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
            Some(value) => {
                snapshot.insert(key.to_string(), value.to_vec());
            }
            None => {
                snapshot.remove(key);
            }
        }
    }
    tracing::debug!(
        topic,
        partition,
        low,
        high,
        at,
        keys = snapshot.len(),
        "changelog partition read"
    );
    Ok(snapshot)
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
    pub result: Result<Snapshot, RestoreError>,
}

/// How one changelog partition is read ([`read_partition`]; tests hand in others).
pub type ReadFn = fn(&ClientConfig, &str, i32, Duration, &Clock) -> Result<Snapshot, RestoreError>;

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
        let snapshot =
            read_partition(&base, "one", 0, Duration::from_secs(20), &Clock::system()).unwrap();
        assert_eq!(snapshot.get("L-1").map(Vec::as_slice), Some(&b"v1"[..]));
    }
}
