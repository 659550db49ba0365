//! A partition's writes to Kafka, chained per key: each waits for the key's write before it, so
//! a key's records reach Kafka in the order they were made, and a write whose predecessor failed
//! is not made at all. Revoking the partition stops them. And what the partition has to write at
//! its next flush ([`Dirty`]): a lead changed k times in a flush interval is written once.

use std::collections::HashMap;

use futures::FutureExt;
use futures::future::{BoxFuture, Shared};
use tokio::sync::oneshot;
use tokio_util::sync::CancellationToken;

use crate::alert::Alert;

/// A write to Kafka that resolves to whether it was acknowledged.
pub type Acked = Shared<BoxFuture<'static, bool>>;

/// The writes of one owned partition, chained per key (a lead): each waits for the key's write
/// before it, so a lead's records reach Kafka in the order they were made — an alert before the
/// state that marks it fired, an older state never after a newer one — and a write whose
/// predecessor failed is not made at all (its event's offset is then not stored, and the event
/// is read again). Revoking the partition cancels `token`: nothing is written for it any more,
/// so the next owner's restore cannot be overwritten by a late write of ours.
pub struct Writes {
    tails: HashMap<String, Acked>,
    token: CancellationToken,
}

impl Writes {
    /// Writes that give up when `abandon` (the end of the grace period) is cancelled, or when
    /// the partition is revoked ([`Writes::revoke`]).
    pub fn new(abandon: &CancellationToken) -> Self {
        Self {
            tails: HashMap::new(),
            token: abandon.child_token(),
        }
    }

    /// Runs `write` (given the partition's token) after every earlier write of `key`.
    pub fn chain(
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

    /// The partition was revoked: nothing more is written for it.
    pub fn revoke(&self) {
        self.token.cancel();
    }

    /// What [`Writes::revoke`] cancels, for a revocation hook to cancel before the revocation
    /// reaches the loop (a write failing meanwhile is then not queued again).
    pub fn revoker(&self) -> CancellationToken {
        self.token.clone()
    }

    /// Forgets the writes that are done (they no longer hold back anything).
    pub fn prune(&mut self) {
        self.tails.retain(|_, acked| acked.peek().is_none());
    }
}

/// What one lead has to write at the next flush.
#[derive(Debug, Default)]
pub struct Pending {
    /// The alerts it fired since the last flush, in order: written first.
    pub alerts: Vec<Alert>,
    /// Then its state as it stands at the flush (true), or its tombstone (false).
    pub state: bool,
}

/// What a partition has to write at its next flush, coalesced: per lead changed since the last
/// flush, its alerts and one state (however many events changed it), and the partition's
/// rotation as it last stood; and the events whose offsets wait for that flush. Dropped with its
/// partition on revocation: nothing of it is written (a late write could land over the next
/// owner's restore), the waiting events' offsets are not stored, and the next owner reads those
/// events again and fires those alerts itself — what a crash costs.
#[derive(Default)]
pub struct Dirty {
    leads: HashMap<String, Pending>,
    rotation: Option<Vec<u8>>,
    /// Where the events waiting for the next flush learn whether it was acknowledged.
    next: Option<(oneshot::Sender<bool>, Acked)>,
    /// How many events wait for the next flush.
    waiting: usize,
    /// How many of `leads` fired alerts (what a paced burst counts as on its way).
    alerted: usize,
    /// Writes noted so far (ever): tells a step that wrote something from one that did not.
    marks: u64,
}

/// What one flush writes: per lead its [`Pending`], the rotation, and whom to tell the outcome.
pub struct Flush {
    pub leads: HashMap<String, Pending>,
    pub rotation: Option<Vec<u8>>,
    /// Told whether every write of the flush was acknowledged (the events waiting for it).
    pub done: Option<oneshot::Sender<bool>>,
}

impl Dirty {
    /// Notes a lead's write: its `alerts` after those noted before, and its state (`true`) or
    /// tombstone (`false`), the last noted winning.
    pub fn lead(&mut self, lead: String, alerts: Vec<Alert>, state: bool) {
        self.marks += 1;
        let pending = self.leads.entry(lead).or_default();
        if pending.alerts.is_empty() && !alerts.is_empty() {
            self.alerted += 1;
        }
        pending.alerts.extend(alerts);
        pending.state = state;
    }

    /// Notes the partition's rotation record (a later one carries everything an earlier did).
    pub fn rotation(&mut self, record: Vec<u8>) {
        self.marks += 1;
        self.rotation = Some(record);
    }

    /// Writes noted so far.
    pub fn marks(&self) -> u64 {
        self.marks
    }

    /// For an event whose writes were noted: resolves to whether the next flush (which holds
    /// them) was acknowledged; false if the partition is dropped before.
    pub fn wait(&mut self) -> Acked {
        self.waiting += 1;
        self.next
            .get_or_insert_with(|| {
                let (tx, rx) = oneshot::channel();
                (tx, rx.map(|r| r.unwrap_or(false)).boxed().shared())
            })
            .1
            .clone()
    }

    /// How many events wait for the next flush.
    pub fn waiting(&self) -> usize {
        self.waiting
    }

    /// How many leads noted for the next flush fired alerts.
    pub fn alerted(&self) -> usize {
        self.alerted
    }

    /// Whether a flush would write nothing and tell nobody.
    pub fn is_empty(&self) -> bool {
        self.leads.is_empty() && self.rotation.is_none() && self.next.is_none()
    }

    /// What to write now; the next flush starts empty.
    pub fn take(&mut self) -> Flush {
        self.waiting = 0;
        self.alerted = 0;
        Flush {
            leads: std::mem::take(&mut self.leads),
            rotation: self.rotation.take(),
            done: self.next.take().map(|(tx, _)| tx),
        }
    }
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

    #[tokio::test]
    async fn a_lead_changed_many_times_is_written_once_and_its_events_wait_for_that_write() {
        let mut dirty = Dirty::default();
        let first = dirty.wait();
        for _ in 0..5 {
            dirty.lead("L-1".into(), Vec::new(), true);
        }
        dirty.lead("L-2".into(), Vec::new(), true);
        dirty.lead("L-2".into(), Vec::new(), false);
        let second = dirty.wait();
        assert_eq!(dirty.waiting(), 2);
        assert!(first.peek().is_none());
        let flush = dirty.take();
        assert_eq!(flush.leads.len(), 2, "one write per lead");
        assert!(flush.leads["L-1"].state);
        assert!(
            !flush.leads["L-2"].state,
            "the last noted wins: a tombstone"
        );
        assert!(dirty.is_empty() && dirty.waiting() == 0);
        flush.done.unwrap().send(true).unwrap();
        assert!(first.await && second.await);
        // A partition dropped before its flush: its events' offsets are not stored.
        let mut dirty = Dirty::default();
        let waiting = dirty.wait();
        drop(dirty);
        assert!(!waiting.await);
    }
}
