//! Vendors retry (HubSpot for a day, Salesforce for 24 hours, Pipedrive for days): an event id
//! produced once within the window is not produced again. A bounded in-memory cache: it only
//! saves work downstream, since the engine ignores ids it already applied per lead, so a restart
//! or an evicted id costs nothing but a duplicate the engine drops.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

/// Recently produced event ids.
#[derive(Debug)]
pub struct Dedupe {
    inner: Mutex<Inner>,
    capacity: usize,
}

#[derive(Debug, Default)]
struct Inner {
    /// id → when it stops counting as a duplicate.
    expires: HashMap<String, Instant>,
    /// Insertion order, to evict the oldest first.
    order: VecDeque<(Instant, String)>,
}

impl Dedupe {
    pub fn new(capacity: usize) -> Self {
        Self {
            inner: Mutex::new(Inner::default()),
            capacity: capacity.max(1),
        }
    }

    /// Whether `id` was produced within its window.
    pub fn seen(&self, id: &str, now: Instant) -> bool {
        let inner = self.inner.lock().expect("dedupe lock poisoned");
        inner.expires.get(id).is_some_and(|until| *until > now)
    }

    /// Remembers ids that are now in Kafka, each for `window`.
    pub fn remember<'a>(
        &self,
        ids: impl IntoIterator<Item = &'a str>,
        window: Duration,
        now: Instant,
    ) {
        let until = now + window;
        let mut inner = self.inner.lock().expect("dedupe lock poisoned");
        for id in ids {
            inner.expires.insert(id.to_string(), until);
            inner.order.push_back((until, id.to_string()));
        }
        // Expired entries first, then the oldest while over capacity. An id remembered twice has
        // two entries in `order`: only the one matching its current expiry removes it.
        while let Some((until, id)) = inner.order.front().cloned() {
            let over = inner.expires.len() > self.capacity;
            if until > now && !over {
                break;
            }
            inner.order.pop_front();
            if inner.expires.get(&id) == Some(&until) {
                inner.expires.remove(&id);
            }
        }
    }

    pub fn len(&self) -> usize {
        self.inner
            .lock()
            .expect("dedupe lock poisoned")
            .expires
            .len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// The key an event id is remembered under: ids are the vendor's, so two sources may share one.
pub fn dedupe_key(source: &str, id: &str) -> String {
    format!("{source}\u{0}{id}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::Clock;

    #[test]
    fn an_id_is_a_duplicate_within_its_window_only() {
        let d = Dedupe::new(10);
        let t0 = Clock::system().instant();
        assert!(!d.seen("a", t0));
        d.remember(["a"], Duration::from_secs(60), t0);
        assert!(d.seen("a", t0 + Duration::from_secs(59)));
        assert!(!d.seen("a", t0 + Duration::from_secs(60)));
        // Expired entries are dropped on the next insert.
        d.remember(["b"], Duration::from_secs(60), t0 + Duration::from_secs(61));
        assert_eq!(d.len(), 1);
    }

    #[test]
    fn the_oldest_ids_go_first_when_full() {
        let d = Dedupe::new(2);
        let t0 = Clock::system().instant();
        d.remember(["a"], Duration::from_secs(60), t0);
        d.remember(["b"], Duration::from_secs(60), t0 + Duration::from_secs(1));
        d.remember(["c"], Duration::from_secs(60), t0 + Duration::from_secs(2));
        let now = t0 + Duration::from_secs(3);
        assert!(!d.seen("a", now));
        assert!(d.seen("b", now) && d.seen("c", now));
        // Remembering an id again extends it without losing it to its older entry.
        d.remember(["b"], Duration::from_secs(60), now);
        d.remember(["d"], Duration::from_secs(60), now);
        assert!(d.seen("b", now), "b was refreshed");
        assert!(!d.seen("c", now), "c is now the oldest");
    }
}
