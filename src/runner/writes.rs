//! A partition's writes to Kafka, chained per key: each waits for the key's write before it, so
//! a key's records reach Kafka in the order they were made, and a write whose predecessor failed
//! is not made at all. Revoking the partition stops them.

use std::collections::HashMap;

use futures::FutureExt;
use futures::future::{BoxFuture, Shared};
use tokio_util::sync::CancellationToken;

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

    /// Forgets the writes that are done (they no longer hold back anything).
    pub fn prune(&mut self) {
        self.tails.retain(|_, acked| acked.peek().is_none());
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
}
