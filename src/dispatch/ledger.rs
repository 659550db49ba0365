//! What each sink has received: per lead, alert id → sinks. The whole entry of a lead is written
//! to the compacted `{prefix}.delivered` (keyed by lead, so co-partitioned with the alerts) after
//! each delivery and before the alert's offset is stored; a partition's ledger is read back when
//! it is assigned. A replayed alert is therefore not sent again to a sink that has it.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex};

use jiff::Timestamp;
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

use crate::bus::changelog::{self, FORGOT_PREFIX, Forgotten, LATE_PREFIX};
use crate::bus::producer::Producer;

/// How many alerts a lead's entry remembers (the oldest are forgotten first).
const ALERTS_PER_LEAD: usize = 256;

/// One lead's deliveries.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct LeadDeliveries {
    pub alerts: BTreeMap<String, Delivery>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Delivery {
    /// Sinks that have the alert.
    pub sinks: BTreeSet<String>,
    /// Sinks that refused it for good, or ran out of retries: it is in the dead-letter topic
    /// for them, and a replayed alert is not sent there again (`leadwatch dlq replay` is the
    /// way to re-send it).
    #[serde(default, skip_serializing_if = "BTreeSet::is_empty")]
    pub dead_lettered: BTreeSet<String>,
    /// When the alert first reached a sink.
    pub first_at: Timestamp,
}

/// What a sink is done with an alert by.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mark {
    /// The sink has it.
    Delivered,
    /// The sink refused it for good, or it ran out of retries: it is in the dead letters.
    DeadLettered,
}

/// One delivery that reached its sink after its partition was revoked: written under a key of
/// its own ([`late_key`]) to the partition of its alert, so it cannot overwrite the lead's entry
/// a newer owner writes (compaction keeps the last record per key), and merged into the lead's
/// entry when the partition is restored next ([`Ledger::take_folded`]). `forget` finds a lead's
/// records by their `lead` ([`crate::bus::changelog::late_lead`]).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LateDelivery {
    pub lead: String,
    pub alert_id: String,
    pub sink: String,
    /// When it reached the sink.
    pub at: Timestamp,
}

/// The key of `alert_id`'s late delivery to `sink` (one per delivery, so two never merge by
/// overwriting each other either).
pub fn late_key(alert_id: &str, sink: &str) -> String {
    format!("{LATE_PREFIX}{alert_id}\u{0}{sink}")
}

/// One partition's ledger, shared by the deliveries in flight.
#[derive(Debug, Clone, Default)]
pub struct Ledger {
    leads: Arc<Mutex<HashMap<String, LeadDeliveries>>>,
    /// Late deliveries merged at restore, as (their record's key, their lead): once the lead's
    /// entry holding them is written, their records are tombstoned.
    folded: Arc<Mutex<Vec<(String, String)>>>,
    /// Late deliveries of forgotten leads dropped at restore (their records' keys): their
    /// records are tombstoned.
    dropped: Arc<Mutex<Vec<String>>>,
    /// `forget`'s markers ([`Forgotten`]) by their key, with when the lead was forgotten: each
    /// is tombstoned once older than the ledger's retention ([`Ledger::expire_markers`]).
    markers: Arc<Mutex<BTreeMap<String, Timestamp>>>,
    /// The partition generation its records are written with
    /// ([`changelog::next_generation`]): a restore passes over an earlier owner's late ones.
    generation: u64,
}

impl Ledger {
    /// From the partition's records in `{prefix}.delivered`; also the keys of those that could
    /// not be read.
    /// Late deliveries ([`LateDelivery`]) are merged into their lead's entry, except those of a
    /// lead `forget` erased that were written with its marker's generation or an earlier one
    /// (they landed after `forget` read the partition): those are dropped, their records to be
    /// tombstoned ([`Ledger::take_dropped`]). Its records are written with partition generation
    /// `generation`.
    pub fn from_snapshot(
        snapshot: crate::bus::changelog::Snapshot,
        generation: u64,
    ) -> (Ledger, Vec<String>) {
        let mut broken = Vec::new();
        let mut late = Vec::new();
        let mut leads: HashMap<String, LeadDeliveries> = HashMap::new();
        // Per forgotten lead, its marker's generation.
        let mut forgotten: HashMap<String, u64> = HashMap::new();
        let mut markers = BTreeMap::new();
        for (k, v) in snapshot {
            let Some((written_by, v)) = crate::stamp::read(&v) else {
                broken.push(k);
                continue;
            };
            if k.starts_with(LATE_PREFIX) {
                match serde_json::from_slice::<LateDelivery>(v) {
                    Ok(d) => late.push((k, written_by, d)),
                    Err(_) => broken.push(k),
                }
                continue;
            }
            if k.starts_with(FORGOT_PREFIX) {
                match serde_json::from_slice::<Forgotten>(v) {
                    Ok(f) => {
                        let reached = forgotten.entry(f.lead).or_default();
                        *reached = (*reached).max(written_by);
                        markers.insert(k, f.at);
                    }
                    Err(_) => broken.push(k),
                }
                continue;
            }
            match serde_json::from_slice(v) {
                Ok(d) => {
                    leads.insert(k, d);
                }
                Err(_) => broken.push(k),
            }
        }
        let mut folded = Vec::new();
        let mut dropped = Vec::new();
        for (key, written_by, d) in late {
            if forgotten
                .get(&d.lead)
                .is_some_and(|&marker| written_by <= marker)
            {
                dropped.push(key);
                continue;
            }
            let entry = leads.entry(d.lead.clone()).or_default();
            entry
                .alerts
                .entry(d.alert_id)
                .or_insert_with(|| Delivery {
                    sinks: BTreeSet::new(),
                    dead_lettered: BTreeSet::new(),
                    first_at: d.at,
                })
                .sinks
                .insert(d.sink);
            folded.push((key, d.lead));
        }
        (
            Ledger {
                leads: Arc::new(Mutex::new(leads)),
                folded: Arc::new(Mutex::new(folded)),
                dropped: Arc::new(Mutex::new(dropped)),
                markers: Arc::new(Mutex::new(markers)),
                generation,
            },
            broken,
        )
    }

    /// The late deliveries merged at restore, as (record key, lead), once: write each lead's
    /// entry, then tombstone the record.
    pub fn take_folded(&self) -> Vec<(String, String)> {
        std::mem::take(&mut *self.folded.lock().expect("ledger lock"))
    }

    /// The records of forgotten leads' late deliveries dropped at restore, once: tombstone them.
    pub fn take_dropped(&self) -> Vec<String> {
        std::mem::take(&mut *self.dropped.lock().expect("ledger lock"))
    }

    /// Forgets `forget`'s markers of leads forgotten before `before` (the ledger's retention:
    /// every late delivery they drop was written long before), returning their keys, to be
    /// tombstoned.
    pub fn expire_markers(&self, before: Timestamp) -> Vec<String> {
        let mut old = Vec::new();
        self.markers.lock().expect("ledger lock").retain(|k, at| {
            let keep = *at >= before;
            if !keep {
                old.push(k.clone());
            }
            keep
        });
        old
    }

    /// Records that `sink` has `alert_id` although this member no longer owns the partition
    /// (revoked while the request was under way): a record of that one delivery under its own
    /// key in `partition`, merged at the next restore, written with the partition generation
    /// this member had (`generation`; 0 where none, as `dlq replay`). True once Kafka has it.
    #[allow(clippy::too_many_arguments)]
    pub async fn record_late(
        producer: &Producer,
        topic: &str,
        partition: i32,
        generation: u64,
        lead: &str,
        alert_id: &str,
        sink: &str,
        now: Timestamp,
        abandon: &CancellationToken,
    ) -> bool {
        let late = LateDelivery {
            lead: lead.to_string(),
            alert_id: alert_id.to_string(),
            sink: sink.to_string(),
            at: now,
        };
        let bytes = changelog::stamp(
            generation,
            &serde_json::to_vec(&late).expect("a late delivery serializes"),
        );
        let key = late_key(alert_id, sink);
        let enqueue = || producer.enqueue_at(topic, Some(partition), &key, Some(&bytes));
        producer.until_acked(topic, enqueue, abandon).await
    }

    /// Tombstones a late delivery's record (`key`, in `partition`) once its lead's entry holds
    /// it (or its lead was forgotten), or an expired forget marker, as partition generation
    /// `generation` wrote it. True once Kafka has it.
    pub async fn forget_late(
        producer: &Producer,
        (topic, partition, generation): (&str, i32, u64),
        key: &str,
        abandon: &CancellationToken,
    ) -> bool {
        let enqueue = || producer.enqueue_as(generation, topic, Some(partition), key, None);
        producer.until_acked(topic, enqueue, abandon).await
    }

    pub fn len(&self) -> usize {
        self.leads.lock().expect("ledger lock").len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Forgets the deliveries of alerts first delivered before `before` (the alerts topic no
    /// longer holds them, so they cannot come back), and leads left with none; the leads in
    /// `retrying` (a delivery of theirs still pending in the backlog) keep everything. Returns how
    /// many deliveries were forgotten and the leads whose entry changed, to [`Ledger::persist`].
    pub fn expire(
        &self,
        before: Timestamp,
        retrying: &std::collections::HashSet<String>,
    ) -> (usize, Vec<String>) {
        let mut leads = self.leads.lock().expect("ledger lock");
        let mut forgotten = 0;
        let mut changed = Vec::new();
        leads.retain(|lead, entry| {
            if retrying.contains(lead) {
                return true;
            }
            let was = entry.alerts.len();
            entry.alerts.retain(|_, d| d.first_at >= before);
            if entry.alerts.len() < was {
                forgotten += was - entry.alerts.len();
                changed.push(lead.clone());
            }
            !entry.alerts.is_empty()
        });
        (forgotten, changed)
    }

    /// Sinks that already have `alert_id`.
    pub fn delivered(&self, lead: &str, alert_id: &str) -> BTreeSet<String> {
        self.leads
            .lock()
            .expect("ledger lock")
            .get(lead)
            .and_then(|d| d.alerts.get(alert_id))
            .map(|d| d.sinks.clone())
            .unwrap_or_default()
    }

    /// Sinks that are done with `alert_id`: they have it, or it was dead-lettered for them.
    pub fn settled(&self, lead: &str, alert_id: &str) -> BTreeSet<String> {
        self.leads
            .lock()
            .expect("ledger lock")
            .get(lead)
            .and_then(|d| d.alerts.get(alert_id))
            .map(|d| d.sinks.union(&d.dead_lettered).cloned().collect())
            .unwrap_or_default()
    }

    /// Records `mark` for `alert_id` and `sink` (at `now`) and makes it durable; returns once
    /// Kafka has it (or false when abandoned at shutdown).
    #[allow(clippy::too_many_arguments)]
    pub async fn record(
        &self,
        producer: &Producer,
        topic: &str,
        lead: &str,
        alert_id: &str,
        sink: &str,
        mark: Mark,
        now: Timestamp,
        abandon: &CancellationToken,
    ) -> bool {
        {
            let mut leads = self.leads.lock().expect("ledger lock");
            let entry = leads.entry(lead.to_string()).or_default();
            entry
                .alerts
                .entry(alert_id.to_string())
                .or_insert_with(|| Delivery {
                    sinks: BTreeSet::new(),
                    dead_lettered: BTreeSet::new(),
                    first_at: now,
                });
            let marks = entry.alerts.get_mut(alert_id).expect("just inserted");
            match mark {
                Mark::Delivered => marks.sinks.insert(sink.to_string()),
                Mark::DeadLettered => marks.dead_lettered.insert(sink.to_string()),
            };
            while entry.alerts.len() > ALERTS_PER_LEAD {
                let oldest = entry
                    .alerts
                    .iter()
                    .min_by_key(|(_, d)| d.first_at)
                    .map(|(id, _)| id.clone());
                match oldest {
                    Some(id) => entry.alerts.remove(&id),
                    None => break,
                };
            }
        }
        self.persist(producer, topic, lead, abandon).await
    }

    /// Writes `lead`'s entry as it stands (a tombstone once it has none); returns once Kafka has
    /// it (or false when abandoned). The snapshot is taken and queued under the lock, so writes
    /// of one lead reach Kafka in the order of their snapshots and the last one holds every mark;
    /// a retry snapshots anew.
    pub async fn persist(
        &self,
        producer: &Producer,
        topic: &str,
        lead: &str,
        abandon: &CancellationToken,
    ) -> bool {
        let enqueue = || {
            let leads = self.leads.lock().expect("ledger lock");
            let bytes = leads.get(lead).map(|entry| {
                changelog::stamp(
                    self.generation,
                    &serde_json::to_vec(entry).expect("ledger serializes"),
                )
            });
            producer.enqueue_as(self.generation, topic, None, lead, bytes.as_deref())
        };
        producer.until_acked(topic, enqueue, abandon).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn leads_retrying(leads: &[&str]) -> std::collections::HashSet<String> {
        leads.iter().map(|l| l.to_string()).collect()
    }

    fn delivery(first_at: &str) -> Delivery {
        Delivery {
            sinks: BTreeSet::from(["slack".to_string()]),
            dead_lettered: BTreeSet::new(),
            first_at: first_at.parse().unwrap(),
        }
    }

    /// A delivery recorded by an owner that had lost the partition sits under its own key: it
    /// cannot overwrite the new owner's entry of the lead, and the next restore merges the two.
    #[test]
    fn a_late_delivery_is_merged_into_the_leads_entry_at_restore() {
        let mut newer = LeadDeliveries::default();
        newer
            .alerts
            .insert("alert_b".into(), delivery("2026-11-20T10:00:00Z"));
        let late = LateDelivery {
            lead: "L-1".into(),
            alert_id: "alert_a".into(),
            sink: "slack".into(),
            at: "2026-11-20T09:59:00Z".parse().unwrap(),
        };
        let key = late_key("alert_a", "slack");
        let snapshot = [
            // A record of this build (stamped with its generation) beside one of an earlier
            // build (JSON): both read.
            (
                "L-1".to_string(),
                changelog::stamp(3, &serde_json::to_vec(&newer).unwrap()),
            ),
            (key.clone(), serde_json::to_vec(&late).unwrap()),
            (late_key("alert_x", "slack"), b"{".to_vec()),
        ]
        .into();
        let (ledger, broken) = Ledger::from_snapshot(snapshot, 2);
        assert_eq!(broken, [late_key("alert_x", "slack")]);
        assert_eq!(ledger.len(), 1, "a late record is no lead");
        assert!(ledger.delivered("L-1", "alert_a").contains("slack"));
        assert!(ledger.delivered("L-1", "alert_b").contains("slack"));
        assert_eq!(ledger.take_folded(), [(key, "L-1".to_string())]);
        assert!(ledger.take_folded().is_empty(), "handed out once");
    }

    /// `forget`'s marker drops the late deliveries of its lead written by owners up to the
    /// erasure (its generation or earlier, an earlier build's included), not those written
    /// after it, nor other leads'; the marker is no lead, and it expires with the retention.
    #[test]
    fn a_forget_marker_drops_its_leads_late_deliveries_of_owners_up_to_the_erasure() {
        let late = |lead: &str, alert: &str, generation: u64| {
            let body = serde_json::to_vec(&LateDelivery {
                lead: lead.into(),
                alert_id: alert.into(),
                sink: "slack".into(),
                at: "2026-11-20T09:59:00Z".parse().unwrap(),
            })
            .unwrap();
            let record = match generation {
                0 => body,
                g => changelog::stamp(g, &body),
            };
            (late_key(alert, "slack"), record)
        };
        let marker = changelog::stamp(
            4,
            &serde_json::to_vec(&Forgotten {
                lead: "L-gone".into(),
                at: "2026-11-20T10:00:00Z".parse().unwrap(),
            })
            .unwrap(),
        );
        let snapshot = [
            (changelog::forgot_key("L-gone"), marker),
            late("L-gone", "alert_old", 0),
            late("L-gone", "alert_at", 4),
            late("L-gone", "alert_new", 5),
            late("L-other", "alert_other", 3),
        ]
        .into();
        let (ledger, broken) = Ledger::from_snapshot(snapshot, 6);
        assert!(broken.is_empty(), "{broken:?}");
        assert!(ledger.delivered("L-gone", "alert_old").is_empty());
        assert!(ledger.delivered("L-gone", "alert_at").is_empty());
        assert!(ledger.delivered("L-gone", "alert_new").contains("slack"));
        assert!(ledger.delivered("L-other", "alert_other").contains("slack"));
        assert_eq!(ledger.len(), 2, "a marker is no lead");
        let mut dropped = ledger.take_dropped();
        dropped.sort();
        assert_eq!(
            dropped,
            [
                late_key("alert_at", "slack"),
                late_key("alert_old", "slack")
            ]
        );
        assert!(
            ledger
                .expire_markers("2026-11-20T10:00:00Z".parse().unwrap())
                .is_empty(),
            "kept for the retention"
        );
        assert_eq!(
            ledger.expire_markers("2026-11-27T10:00:01Z".parse().unwrap()),
            [changelog::forgot_key("L-gone")]
        );
        assert!(
            ledger
                .expire_markers("2026-11-28T10:00:00Z".parse().unwrap())
                .is_empty(),
            "tombstoned once"
        );
    }

    #[test]
    fn deliveries_older_than_the_retention_are_forgotten_and_leads_left_with_none_go() {
        let ledger = Ledger::default();
        {
            let mut leads = ledger.leads.lock().unwrap();
            let mut both = LeadDeliveries::default();
            both.alerts
                .insert("alert_old".into(), delivery("2026-11-01T10:00:00Z"));
            both.alerts
                .insert("alert_new".into(), delivery("2026-11-20T10:00:00Z"));
            leads.insert("L-both".into(), both);
            let mut old = LeadDeliveries::default();
            old.alerts
                .insert("alert_gone".into(), delivery("2026-11-02T10:00:00Z"));
            leads.insert("L-old".into(), old);
            let mut new = LeadDeliveries::default();
            new.alerts
                .insert("alert_kept".into(), delivery("2026-11-21T10:00:00Z"));
            leads.insert("L-new".into(), new);
        }
        // A lead with a delivery still being retried keeps everything.
        let mut retrying = leads_retrying(&["L-retrying"]);
        {
            let mut leads = ledger.leads.lock().unwrap();
            let mut old = LeadDeliveries::default();
            old.alerts
                .insert("alert_retried".into(), delivery("2026-11-02T10:00:00Z"));
            leads.insert("L-retrying".into(), old);
        }
        let (forgotten, mut changed) =
            ledger.expire("2026-11-13T10:00:00Z".parse().unwrap(), &retrying);
        changed.sort();
        assert_eq!(forgotten, 2);
        assert_eq!(changed, ["L-both", "L-old"]);
        assert_eq!(ledger.delivered("L-retrying", "alert_retried").len(), 1);
        retrying.clear();
        assert_eq!(ledger.len(), 3, "L-old holds nothing and is gone");
        assert_eq!(ledger.delivered("L-new", "alert_kept").len(), 1);
        assert_eq!(ledger.delivered("L-both", "alert_new").len(), 1);
        assert!(ledger.delivered("L-both", "alert_old").is_empty());
        // Its retries done, it is forgotten too; then nothing more to forget.
        assert_eq!(
            ledger.expire("2026-11-13T10:00:00Z".parse().unwrap(), &retrying),
            (1, vec!["L-retrying".to_string()])
        );
        assert_eq!(
            ledger.expire("2026-11-13T10:00:00Z".parse().unwrap(), &retrying),
            (0, vec![])
        );
    }
}
