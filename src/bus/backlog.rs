//! The embedded broker's limits, kept: librdkafka's mock cluster trims every partition to 5 MiB
//! or 100,000 message sets, hard-coded, whether its records were read or not. So the producer
//! accounts, per partition of each topic a consumer group of this process reads, what was
//! produced (offset and bytes, from the delivery reports) and what that group has consumed (the
//! offsets its skeleton stores), and refuses new writes while the unconsumed backlog of any
//! such partition is past half the limit: ingest answers 503 with `Retry-After`, and a burst is
//! slowed, never trimmed away. A real cluster needs none of it (its retention is the operator's;
//! a skip there is detected and counted by the consumer-group skeleton).

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;

/// What the mock cluster keeps per partition (`rdkafka_mock.c`: `max_size`, `max_cnt`).
pub const EMBEDDED_MAX_BYTES: u64 = 5 * 1024 * 1024;
/// Message sets the mock cluster keeps per partition (each record at most one set).
pub const EMBEDDED_MAX_MESSAGES: u64 = 100_000;

/// Per partition: the records produced and not yet consumed, in offset order.
#[derive(Debug, Default)]
struct Partition {
    produced: VecDeque<(i64, u64)>,
    bytes: u64,
    /// The next offset the consumer group has not consumed.
    consumed: i64,
}

/// Per watched topic: its partitions, and what is on its way to it (reserved, not yet
/// acknowledged, partition unknown: counted against each of them).
#[derive(Debug, Default)]
struct Topic {
    partitions: HashMap<i32, Partition>,
    /// (records, bytes) reserved by writes in flight.
    pending: (u64, u64),
}

/// Unconsumed records per watched partition, against a limit.
#[derive(Debug)]
pub struct Backlog {
    /// Refused past these (bytes, records) per partition.
    max: (u64, u64),
    topics: Mutex<HashMap<String, Topic>>,
}

/// The fullest partition of the topics watched.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fullest {
    pub topic: String,
    pub partition: i32,
    /// Unconsumed bytes and records, with those of writes in flight to the topic.
    pub bytes: u64,
    pub records: u64,
}

/// Room held for writes in flight ([`Backlog::reserve`]), given back when dropped (by then the
/// delivery reports have accounted what was written).
#[derive(Debug)]
pub struct Reserved<'a> {
    backlog: &'a Backlog,
    held: Vec<(String, u64, u64)>,
}

impl Drop for Reserved<'_> {
    fn drop(&mut self) {
        let mut topics = self.backlog.lock();
        for (topic, records, bytes) in self.held.drain(..) {
            if let Some(t) = topics.get_mut(&topic) {
                t.pending.0 = t.pending.0.saturating_sub(records);
                t.pending.1 = t.pending.1.saturating_sub(bytes);
            }
        }
    }
}

impl Backlog {
    /// For the embedded broker: refuses past half its trimming limits, a margin for writes in
    /// flight and for the overhead of each message set.
    pub fn embedded() -> Self {
        Self::with_limits(EMBEDDED_MAX_BYTES / 2, EMBEDDED_MAX_MESSAGES / 2)
    }

    /// Refuses past `bytes` or `records` unconsumed in one partition.
    pub fn with_limits(bytes: u64, records: u64) -> Self {
        Self {
            max: (bytes, records),
            topics: Mutex::new(HashMap::new()),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Topic>> {
        // The data stays consistent whatever panicked while holding the lock.
        self.topics
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Accounts `topic` from now on: a consumer group of this process reads it.
    pub fn watch(&self, topic: &str) {
        self.lock().entry(topic.to_string()).or_default();
    }

    /// Whether `topic` is accounted.
    pub fn watches(&self, topic: &str) -> bool {
        self.lock().contains_key(topic)
    }

    /// A record of `bytes` was acknowledged at `offset`.
    pub fn produced(&self, topic: &str, partition: i32, offset: i64, bytes: u64) {
        let mut topics = self.lock();
        let Some(t) = topics.get_mut(topic) else {
            return;
        };
        let p = t.partitions.entry(partition).or_default();
        if offset < p.consumed {
            return;
        }
        // Delivery reports of one partition come in offset order; one out of order goes where
        // it belongs.
        let at = p.produced.partition_point(|(o, _)| *o < offset);
        p.produced.insert(at, (offset, bytes));
        p.bytes += bytes;
    }

    /// The consumer group has consumed `topic[partition]` up to (not including) `next`.
    pub fn consumed(&self, topic: &str, partition: i32, next: i64) {
        let mut topics = self.lock();
        let Some(t) = topics.get_mut(topic) else {
            return;
        };
        let p = t.partitions.entry(partition).or_default();
        p.consumed = p.consumed.max(next);
        while let Some((offset, bytes)) = p.produced.front().copied() {
            if offset >= p.consumed {
                break;
            }
            p.produced.pop_front();
            p.bytes -= bytes;
        }
    }

    /// `topic`'s fullest partition, with the writes in flight to the topic added to it.
    fn fullest_of(&self, name: &str, t: &Topic) -> Fullest {
        let share = |p: &Partition| {
            (p.bytes as f64 / self.max.0 as f64).max(p.produced.len() as f64 / self.max.1 as f64)
        };
        let (partition, bytes, records) = t
            .partitions
            .iter()
            .max_by(|a, b| share(a.1).total_cmp(&share(b.1)))
            .map_or((0, 0, 0), |(i, p)| (*i, p.bytes, p.produced.len() as u64));
        Fullest {
            topic: name.to_string(),
            partition,
            bytes: bytes + t.pending.1,
            records: records + t.pending.0,
        }
    }

    /// Holds room for `writes` (topic, records, bytes): refused, naming the partition, when
    /// they could push a watched partition past the limit (each could land on its topic's
    /// fullest partition). Writes to topics not watched need no room.
    pub fn reserve<'a>(&'a self, writes: &[(&str, u64, u64)]) -> Result<Reserved<'a>, Fullest> {
        let mut topics = self.lock();
        let mut wanted: HashMap<&str, (u64, u64)> = HashMap::new();
        for (topic, records, bytes) in writes {
            if topics.contains_key(*topic) {
                let w = wanted.entry(topic).or_default();
                w.0 += records;
                w.1 += bytes;
            }
        }
        for (topic, (records, bytes)) in &wanted {
            let fullest = self.fullest_of(topic, &topics[*topic]);
            if fullest.bytes + bytes > self.max.0 || fullest.records + records > self.max.1 {
                return Err(fullest);
            }
        }
        let mut held = Vec::new();
        for (topic, (records, bytes)) in wanted {
            let t = topics.get_mut(topic).expect("watched");
            t.pending.0 += records;
            t.pending.1 += bytes;
            held.push((topic.to_string(), records, bytes));
        }
        Ok(Reserved {
            backlog: self,
            held,
        })
    }

    /// Whether a partition of `topic` is past the limit already.
    pub fn full(&self, topic: &str) -> bool {
        let topics = self.lock();
        topics.get(topic).is_some_and(|t| {
            let f = self.fullest_of(topic, t);
            f.bytes > self.max.0 || f.records > self.max.1
        })
    }

    /// Whether any watched partition is past the limit already.
    pub fn any_full(&self) -> bool {
        let topics = self.lock();
        topics.iter().any(|(name, t)| {
            let f = self.fullest_of(name, t);
            f.bytes > self.max.0 || f.records > self.max.1
        })
    }

    /// The unconsumed bytes of each watched topic's fullest partition (for the gauge).
    /// The unconsumed bytes of `topic`'s fullest partition (writes in flight included), if the
    /// topic is accounted.
    pub fn fullest_bytes(&self, topic: &str) -> Option<u64> {
        let topics = self.lock();
        topics.get(topic).map(|t| self.fullest_of(topic, t).bytes)
    }

    pub fn fullest_per_topic(&self) -> Vec<(String, u64)> {
        let topics = self.lock();
        topics
            .iter()
            .map(|(name, t)| (name.clone(), self.fullest_of(name, t).bytes))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn what_is_produced_and_not_yet_consumed_counts_against_the_limit() {
        let b = Backlog::with_limits(1000, 10);
        b.watch("events");
        // Not watched: not counted, and needs no room.
        b.produced("raw", 0, 0, 10_000);
        assert!(b.reserve(&[("raw", 1, 1_000_000)]).is_ok());
        for offset in 0..4 {
            b.produced("events", 0, offset, 200);
        }
        b.produced("events", 1, 0, 100);
        assert!(
            b.reserve(&[("events", 1, 200)]).is_ok(),
            "exactly at the limit"
        );
        let refused = b.reserve(&[("events", 1, 201)]).unwrap_err();
        assert_eq!(
            (refused.partition, refused.bytes, refused.records),
            (0, 800, 4)
        );
        // Consumed up to offset 2: those no longer count.
        b.consumed("events", 0, 2);
        assert!(b.reserve(&[("events", 1, 600)]).is_ok());
        // A report for an offset already consumed changes nothing; too many records is over too.
        b.produced("events", 0, 1, 200);
        assert!(b.reserve(&[("events", 1, 601)]).is_err());
        assert!(b.reserve(&[("events", 9, 0)]).is_err());
    }

    #[test]
    fn writes_in_flight_hold_their_room_until_they_are_done() {
        let b = Backlog::with_limits(1000, 100);
        b.watch("events");
        let first = b.reserve(&[("events", 1, 600)]).unwrap();
        // Concurrent requests cannot both take the same room.
        assert!(b.reserve(&[("events", 1, 600)]).is_err());
        assert!(!b.full("events"));
        drop(first);
        assert!(b.reserve(&[("events", 1, 600)]).is_ok());
    }
}
