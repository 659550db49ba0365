//! The retry backlog of one partition: every (alert, sink) delivery waiting for its next attempt,
//! kept in memory with its due time and made durable in the compacted `{prefix}.alerts.retry`
//! (keyed by lead, so co-partitioned with `{prefix}.alerts` and `{prefix}.delivered`; the value is
//! the lead's whole list of pending deliveries, a tombstone once it is empty). A partition's
//! backlog is read back when the partition is assigned, exactly like its delivery ledger, so a
//! retry survives a restart or a move to another member.
//!
//! This is the durable wait of a retry: when an entry is due is decided by
//! [`super::retry::decide`], and a due entry is attempted by `deliver::retry_one`. Times are
//! wall-clock [`Timestamp`]s (they outlive the process) and are passed in, so the bookkeeping is
//! tested without a clock.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::{Arc, Mutex};

use jiff::Timestamp;
use serde::{Deserialize, Serialize};

use super::retry::Tries;
use crate::bus::changelog;
use crate::bus::producer::Producer;

/// One delivery waiting for a retry.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Pending {
    pub alert_id: String,
    pub sink: String,
    /// The alert's JSON exactly as it came from `{prefix}.alerts`.
    pub body: String,
    /// Attempts made so far (0: handed over before the first, because the sink was busy or
    /// failing).
    pub attempts: u32,
    /// Not to be attempted before this.
    pub not_before: Timestamp,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_status: Option<u16>,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub last_error: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub excerpt: String,
    /// Failed attempts that did not use up a step of the schedule: those made early because the
    /// sink answered again (at most as many as the schedule has attempts).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub free: u32,
    /// When the first attempt failed: however the failures came, a delivery failing for twice
    /// the schedule's span is dead-lettered.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failing_since: Option<Timestamp>,
    /// Moved forward because the sink answered again (its next failure is free).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub early: bool,
}

impl Pending {
    /// Its past, as [`super::retry::decide`] wants it.
    pub fn tries(&self) -> Tries {
        Tries {
            attempts: self.attempts,
            free: self.free,
            early: self.early,
            failing_since: self.failing_since,
        }
    }

    /// Records a failed attempt: the past [`super::retry::decide`] handed back, and what the
    /// sink answered (the first 200 characters of its body).
    pub fn failed(&mut self, tries: Tries, status: Option<u16>, error: &str, excerpt: &str) {
        self.set_tries(tries);
        self.last_status = status;
        self.last_error = error.to_string();
        self.excerpt = excerpt.chars().take(200).collect();
    }

    /// Takes the past [`super::retry::decide`] handed back.
    fn set_tries(&mut self, tries: Tries) {
        let Tries {
            attempts,
            free,
            early,
            failing_since,
        } = tries;
        (self.attempts, self.free, self.early, self.failing_since) =
            (attempts, free, early, failing_since);
    }
}

fn is_zero(n: &u32) -> bool {
    *n == 0
}

/// A lead's entry in `{prefix}.alerts.retry`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct LeadBacklog {
    pub pending: Vec<Pending>,
}

type Key = (String, String); // (alert id, sink)

#[derive(Debug, Default)]
struct Inner {
    leads: HashMap<String, BTreeMap<Key, Pending>>,
    /// Per sink, due times of its entries not being attempted right now.
    due: HashMap<String, BTreeSet<(Timestamp, String, String)>>, // sink → (when, lead, alert id)
    in_flight: HashSet<(String, String, String)>,
    per_sink: HashMap<String, usize>,
    /// The partition generation its records are written with
    /// ([`changelog::next_generation`]): a restore passes over an earlier owner's late ones.
    generation: u64,
}

/// One partition's backlog, shared by the loop and the deliveries in flight.
#[derive(Debug, Clone, Default)]
pub struct Backlog {
    inner: Arc<Mutex<Inner>>,
}

impl Backlog {
    /// From the partition's records in `{prefix}.alerts.retry`; also the keys of those that
    /// could not be read. Its records are written with partition generation `generation`.
    pub fn from_snapshot(
        snapshot: crate::bus::changelog::Snapshot,
        generation: u64,
    ) -> (Backlog, Vec<String>) {
        let backlog = Backlog::default();
        let mut broken = Vec::new();
        {
            let mut inner = backlog.inner.lock().expect("backlog lock");
            inner.generation = generation;
            for (lead, bytes) in snapshot {
                let entry = crate::stamp::read(&bytes)
                    .and_then(|(_, body)| serde_json::from_slice::<LeadBacklog>(body).ok());
                match entry {
                    Some(entry) => {
                        for p in entry.pending {
                            inner.insert(&lead, p);
                        }
                    }
                    None => broken.push(lead),
                }
            }
        }
        (backlog, broken)
    }

    pub fn len(&self) -> usize {
        self.inner
            .lock()
            .expect("backlog lock")
            .leads
            .values()
            .map(|m| m.len())
            .sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Pending deliveries per sink.
    pub fn per_sink(&self) -> HashMap<String, usize> {
        self.inner.lock().expect("backlog lock").per_sink.clone()
    }

    pub fn contains(&self, lead: &str, alert_id: &str, sink: &str) -> bool {
        self.inner
            .lock()
            .expect("backlog lock")
            .leads
            .get(lead)
            .is_some_and(|m| m.contains_key(&(alert_id.to_string(), sink.to_string())))
    }

    /// The leads with a pending delivery.
    pub fn leads(&self) -> HashSet<String> {
        self.inner
            .lock()
            .expect("backlog lock")
            .leads
            .keys()
            .cloned()
            .collect()
    }

    /// Whether the lead has any pending delivery.
    pub fn contains_lead(&self, lead: &str) -> bool {
        self.inner
            .lock()
            .expect("backlog lock")
            .leads
            .contains_key(lead)
    }

    /// The lead's entry as written to `{prefix}.alerts.retry`.
    pub fn serialize_lead(&self, lead: &str) -> Vec<u8> {
        self.inner.lock().expect("backlog lock").serialized(lead)
    }

    /// Adds or replaces a pending delivery (no longer in flight); returns the lead's entry to
    /// write to Kafka.
    pub fn schedule(&self, lead: &str, p: Pending) -> Option<Vec<u8>> {
        let mut inner = self.inner.lock().expect("backlog lock");
        inner.remove(lead, &p.alert_id, &p.sink);
        inner.insert(lead, p);
        Some(inner.serialized(lead))
    }

    /// Removes a delivery (done or dead-lettered); returns the lead's entry to write (an empty
    /// entry is written as a tombstone: `None`).
    pub fn remove(&self, lead: &str, alert_id: &str, sink: &str) -> Option<Vec<u8>> {
        let mut inner = self.inner.lock().expect("backlog lock");
        inner.remove(lead, alert_id, sink);
        inner
            .leads
            .contains_key(lead)
            .then(|| inner.serialized(lead))
    }

    /// The earliest due time of an entry not in flight.
    pub fn next_due(&self) -> Option<Timestamp> {
        self.next_due_of(|_| true)
    }

    /// The earliest due time of an entry not in flight, of the sinks `open` says may take more.
    pub fn next_due_of(&self, open: impl Fn(&str) -> bool) -> Option<Timestamp> {
        let inner = self.inner.lock().expect("backlog lock");
        inner
            .due
            .iter()
            .filter(|(sink, _)| open(sink))
            .filter_map(|(_, due)| due.first().map(|(t, ..)| *t))
            .min()
    }

    /// Takes every entry due at `now` (they stay in the backlog, marked in flight), in due
    /// order.
    pub fn take_due(&self, now: Timestamp) -> Vec<(String, Pending)> {
        self.take_due_at_most(now, |_| usize::MAX)
    }

    /// Takes, per sink, at most `room(sink)` of its entries due at `now`, the earliest first (they
    /// stay in the backlog, marked in flight); all of them in due order. The rest stay due: a
    /// sink that answers again after a long outage gets its backlog in batches it can take, not
    /// all at once.
    pub fn take_due_at_most(
        &self,
        now: Timestamp,
        mut room: impl FnMut(&str) -> usize,
    ) -> Vec<(String, Pending)> {
        let mut inner = self.inner.lock().expect("backlog lock");
        let inner = &mut *inner;
        let mut out = Vec::new();
        for (sink, due) in inner.due.iter_mut() {
            let mut room = room(sink);
            while room > 0 {
                let Some(first) = due.first().filter(|(t, ..)| *t <= now).cloned() else {
                    break;
                };
                due.pop_first();
                let (at, lead, alert_id) = first;
                let key = (alert_id.clone(), sink.clone());
                if let Some(p) = inner.leads.get(&lead).and_then(|m| m.get(&key)).cloned() {
                    inner
                        .in_flight
                        .insert((lead.clone(), alert_id, sink.clone()));
                    out.push((at, lead, p));
                    room -= 1;
                }
            }
        }
        out.sort_by(|a, b| (a.0, &a.1, &a.2.alert_id).cmp(&(b.0, &b.1, &b.2.alert_id)));
        out.into_iter().map(|(_, lead, p)| (lead, p)).collect()
    }

    /// Makes every waiting entry of `sink` due at `now` (the sink answers again). The next
    /// write of a lead's entry carries the earlier time.
    pub fn pull_forward(&self, sink: &str, now: Timestamp) -> usize {
        let mut inner = self.inner.lock().expect("backlog lock");
        let inner = &mut *inner;
        let Some(due) = inner.due.get_mut(sink) else {
            return 0;
        };
        let moved: Vec<_> = due.iter().filter(|(t, ..)| *t > now).cloned().collect();
        for entry in &moved {
            due.remove(entry);
            let (_, lead, alert_id) = entry.clone();
            if let Some(p) = inner
                .leads
                .get_mut(&lead)
                .and_then(|m| m.get_mut(&(alert_id.clone(), sink.to_string())))
            {
                p.not_before = now;
                p.early = true;
            }
            due.insert((now, lead, alert_id));
        }
        moved.len()
    }
}

impl Inner {
    fn insert(&mut self, lead: &str, p: Pending) {
        self.due.entry(p.sink.clone()).or_default().insert((
            p.not_before,
            lead.to_string(),
            p.alert_id.clone(),
        ));
        *self.per_sink.entry(p.sink.clone()).or_default() += 1;
        self.leads
            .entry(lead.to_string())
            .or_default()
            .insert((p.alert_id.clone(), p.sink.clone()), p);
    }

    fn remove(&mut self, lead: &str, alert_id: &str, sink: &str) {
        let key = (alert_id.to_string(), sink.to_string());
        let Some(map) = self.leads.get_mut(lead) else {
            return;
        };
        if let Some(old) = map.remove(&key) {
            if let Some(due) = self.due.get_mut(sink) {
                due.remove(&(old.not_before, lead.to_string(), alert_id.to_string()));
                if due.is_empty() {
                    self.due.remove(sink);
                }
            }
            if let Some(n) = self.per_sink.get_mut(sink) {
                *n = n.saturating_sub(1);
            }
        }
        if map.is_empty() {
            self.leads.remove(lead);
        }
        self.in_flight
            .remove(&(lead.to_string(), alert_id.to_string(), sink.to_string()));
    }

    fn serialized(&self, lead: &str) -> Vec<u8> {
        let entry = LeadBacklog {
            pending: self
                .leads
                .get(lead)
                .map(|m| m.values().cloned().collect())
                .unwrap_or_default(),
        };
        changelog::stamp(
            self.generation,
            &serde_json::to_vec(&entry).expect("the backlog serializes"),
        )
    }
}

/// Writes one lead's entry (a snapshot taken by `snapshot`, `None` = tombstone) and waits for
/// Kafka; a failed write is retried with a fresh snapshot, until `abandon`. The snapshot is taken
/// and queued without an await in between, and every writer runs on the dispatcher's task, so
/// one lead's writes reach Kafka in the order of their snapshots and the last holds the latest.
pub async fn persist(
    producer: &Producer,
    (topic, generation): (&str, u64),
    lead: &str,
    snapshot: impl Fn() -> Option<Vec<u8>>,
    abandon: &tokio_util::sync::CancellationToken,
) -> bool {
    let enqueue = || producer.enqueue_as(generation, topic, None, lead, snapshot().as_deref());
    producer.until_acked(topic, enqueue, abandon).await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: i64) -> Timestamp {
        Timestamp::from_second(1_800_000_000 + s).unwrap()
    }

    fn pending(alert: &str, sink: &str, at: i64) -> Pending {
        Pending {
            alert_id: alert.into(),
            sink: sink.into(),
            body: format!("{{\"id\":\"{alert}\"}}"),
            attempts: 1,
            not_before: t(at),
            last_status: Some(503),
            last_error: "down".into(),
            ..Pending::default()
        }
    }

    #[test]
    fn entries_come_due_in_time_order_and_stay_until_removed() {
        let b = Backlog::default();
        b.schedule("L-1", pending("a1", "slack", 30));
        b.schedule("L-2", pending("a2", "slack", 10));
        b.schedule("L-1", pending("a1", "crm", 20));
        assert_eq!(b.next_due(), Some(t(10)));
        assert!(b.take_due(t(9)).is_empty());
        let due = b.take_due(t(25));
        let got: Vec<(&str, &str)> = due
            .iter()
            .map(|(l, p)| (l.as_str(), p.sink.as_str()))
            .collect();
        assert_eq!(got, [("L-2", "slack"), ("L-1", "crm")]);
        // In flight: still pending (a replayed alert must not start a second delivery) but not due.
        assert!(b.contains("L-1", "a1", "crm"));
        assert_eq!(b.next_due(), Some(t(30)));
        // Rescheduled after a failure: due again, no longer in flight.
        let mut again = due[1].1.clone();
        again.attempts = 2;
        again.not_before = t(100);
        b.schedule("L-1", again);
        assert_eq!(b.len(), 3);
        assert_eq!(b.per_sink()["crm"], 1);
        // Removing the last of a lead's entries writes a tombstone.
        assert!(b.remove("L-2", "a2", "slack").is_none());
        let left = b.remove("L-1", "a1", "crm").unwrap();
        let (_, left) = crate::stamp::read(&left).unwrap();
        let left: LeadBacklog = serde_json::from_slice(left).unwrap();
        assert_eq!(left.pending.len(), 1);
        assert_eq!(left.pending[0].sink, "slack");
        assert_eq!(b.per_sink()["slack"], 1);
        assert_eq!(b.per_sink()["crm"], 0);
    }

    #[test]
    fn a_written_entry_restores_the_same_backlog() {
        let b = Backlog::default();
        let bytes = b.schedule("L-1", pending("a1", "slack", 30)).unwrap();
        b.schedule("L-1", pending("a2", "hook", 40));
        let bytes2 = b.schedule("L-1", pending("a2", "hook", 40)).unwrap();
        assert_ne!(bytes, bytes2);
        let snapshot = [
            ("L-1".to_string(), bytes2),
            ("L-9".to_string(), b"{".to_vec()),
        ]
        .into();
        let (restored, broken) = Backlog::from_snapshot(snapshot, 5);
        assert_eq!(broken, ["L-9"]);
        assert_eq!(restored.len(), 2);
        assert_eq!(restored.next_due(), Some(t(30)));
        assert!(restored.contains("L-1", "a2", "hook"));
        // Restored for generation 5, its records say so; an earlier build's JSON reads too.
        let written = restored.serialize_lead("L-1");
        assert_eq!(changelog::generation_of(&written), 5);
        let json = crate::stamp::read(&written).unwrap().1.to_vec();
        let (earlier, broken) = Backlog::from_snapshot([("L-1".to_string(), json)].into(), 6);
        assert!(broken.is_empty());
        assert_eq!(earlier.len(), 2);
    }

    #[test]
    fn due_entries_are_taken_in_batches_each_sink_as_much_as_it_has_room_for() {
        let b = Backlog::default();
        for i in 0..5 {
            b.schedule(&format!("L-{i}"), pending(&format!("a{i}"), "slack", i));
        }
        b.schedule("L-9", pending("a9", "hook", 3));
        let room = |sink: &str| if sink == "slack" { 2 } else { 10 };
        let due: Vec<String> = b
            .take_due_at_most(t(60), room)
            .into_iter()
            .map(|(l, _)| l)
            .collect();
        assert_eq!(due, ["L-0", "L-1", "L-9"], "the earliest two of slack's");
        // The rest stay due, for the next batch; a sink without room wakes nobody.
        assert_eq!(b.next_due(), Some(t(2)));
        assert_eq!(b.next_due_of(|sink| sink != "slack"), None);
        let due: Vec<String> = b
            .take_due_at_most(t(60), room)
            .into_iter()
            .map(|(l, _)| l)
            .collect();
        assert_eq!(due, ["L-2", "L-3"]);
        assert_eq!(b.len(), 6, "taken entries stay until settled");
    }

    #[test]
    fn a_sink_that_answers_again_gets_its_backlog_now() {
        let b = Backlog::default();
        b.schedule("L-1", pending("a1", "hook", 3600));
        b.schedule("L-2", pending("a2", "hook", 7200));
        b.schedule("L-3", pending("a3", "slack", 3600));
        assert_eq!(b.pull_forward("hook", t(5)), 2);
        let due: Vec<String> = b.take_due(t(5)).into_iter().map(|(l, _)| l).collect();
        assert_eq!(due, ["L-1", "L-2"]);
        assert_eq!(b.next_due(), Some(t(3600)));
    }
}
