//! One queue per sink: its own concurrency limit, its own pace (`max_per_second`, plus a pause
//! when the endpoint says it is rate-limited), and its own health. Sinks never wait on each
//! other: a slow or dead sink fills only its own queue.
//!
//! Requests wait their turn in arrival order (tokio's mutex is fair), so a burst to a
//! rate-limited webhook is sent at its pace, not dropped. When a sink is failing, or its queue
//! already holds about a second's worth of work, new alerts for it are not attempted inline but
//! handed to the durable backlog (see [`super`]), so the alerts topic keeps moving.
//!
//! The pause on 429 holds the whole sink; whether and when the alert that got the 429 is tried
//! again is [`super::retry`]'s decision, like any failure's.

use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use tokio::sync::Semaphore;
use tokio::time::Instant;

use super::config::DispatchConfig;
use super::retry::LONGEST_WAIT;
use super::sinks::{Attempt, Delivered, DeliveryError, Http, Sink, SinkConfig};
use crate::clock::Clock;

/// Paces requests: at most one per `interval`, and none before a pause ends.
#[derive(Debug)]
pub struct RateLimiter {
    clock: Clock,
    interval: Option<Duration>,
    /// When the next request may start.
    next: tokio::sync::Mutex<Instant>,
    /// The endpoint asked us to hold off until then.
    paused_until: Mutex<Option<Instant>>,
}

impl RateLimiter {
    pub fn new(max_per_second: Option<f64>, clock: Clock) -> Self {
        Self {
            next: tokio::sync::Mutex::new(clock.instant()),
            clock,
            interval: max_per_second
                .filter(|r| *r > 0.0 && r.is_finite())
                .map(|r| Duration::try_from_secs_f64(1.0 / r).unwrap_or(LONGEST_WAIT)),
            paused_until: Mutex::new(None),
        }
    }

    /// Waits for this request's turn (callers are served in arrival order).
    pub async fn until_ready(&self) {
        let mut next = self.next.lock().await;
        loop {
            let paused = *self.paused_until.lock().expect("limiter lock");
            let at = paused.map_or(*next, |p| p.max(*next));
            if at <= self.clock.instant() {
                break;
            }
            tokio::time::sleep_until(at).await;
        }
        if let Some(interval) = self.interval {
            *next = at_most_a_year_from(self.clock.instant(), interval);
        }
    }

    /// Holds every request for `d` from now (a 429 for the whole endpoint).
    pub fn pause(&self, d: Duration) {
        let until = at_most_a_year_from(self.clock.instant(), d);
        let mut paused = self.paused_until.lock().expect("limiter lock");
        if paused.is_none_or(|p| p < until) {
            *paused = Some(until);
        }
    }
}

/// `now + d`, `d` clamped to [`LONGEST_WAIT`] (no clock reaches past that).
fn at_most_a_year_from(now: Instant, d: Duration) -> Instant {
    now.checked_add(d.min(LONGEST_WAIT)).unwrap_or(now)
}

/// What one attempt through the queue came to.
pub struct Outcome {
    pub result: Result<Delivered, DeliveryError>,
    /// The sink had been failing and this attempt reached it: its backlog may go now.
    pub recovered: bool,
}

/// One sink with its queue.
pub struct SinkQueue {
    pub name: String,
    pub sink: Sink,
    permits: Semaphore,
    limiter: RateLimiter,
    /// Attempts waiting for a permit or their turn.
    waiting: AtomicUsize,
    /// The last attempt failed retriably.
    failing: AtomicBool,
    /// Attempts that may wait in the queue before new alerts go to the backlog instead.
    inline_capacity: usize,
    /// Bound on one attempt (a CRM sink makes up to four requests in one).
    attempt_timeout: Duration,
    /// The longest a rate-limit answer may hold the whole sink (`dispatch.max_retry_after`).
    max_pause: Duration,
}

impl std::fmt::Debug for SinkQueue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SinkQueue")
            .field("name", &self.name)
            .field("sink", &self.sink)
            .finish()
    }
}

impl SinkQueue {
    /// The sink `name` of `[sinks.NAME]` with its queue, as `[dispatch]` sets queues up: its
    /// concurrency, its pace, a bound on one attempt, and a `Retry-After` holding the whole sink
    /// no longer than one retry's wait may be (`max_retry_after`).
    pub fn from_config(
        name: &str,
        cfg: &SinkConfig,
        dispatch: &DispatchConfig,
        http: Http,
    ) -> Self {
        let max_per_second = cfg.max_per_second();
        let concurrency = dispatch.sink_concurrency;
        let inline_capacity = match max_per_second {
            Some(rate) => (rate.ceil() as usize).max(1),
            None => concurrency * 2,
        };
        Self {
            name: name.to_string(),
            limiter: RateLimiter::new(max_per_second, http.clock.clone()),
            sink: Sink::from_config(cfg, http),
            permits: Semaphore::new(concurrency.max(1)),
            waiting: AtomicUsize::new(0),
            failing: AtomicBool::new(false),
            inline_capacity,
            attempt_timeout: dispatch
                .request_timeout
                .0
                .saturating_mul(4)
                .saturating_add(Duration::from_secs(1)),
            max_pause: dispatch.max_retry_after.0,
        }
    }

    /// Whether a new alert may be attempted right away rather than go to the backlog.
    pub fn has_room_inline(&self) -> bool {
        !self.failing.load(Ordering::SeqCst)
            && self.waiting.load(Ordering::SeqCst) < self.inline_capacity
    }

    pub fn is_failing(&self) -> bool {
        self.failing.load(Ordering::SeqCst)
    }

    /// One attempt, in turn: decided without a request when the sink can tell from the alert
    /// alone.
    pub async fn attempt(&self, a: &Attempt<'_>) -> Outcome {
        if let Some(result) = self.sink.precheck(a) {
            return Outcome {
                result,
                recovered: false,
            };
        }
        self.waiting.fetch_add(1, Ordering::SeqCst);
        let permit = self
            .permits
            .acquire()
            .await
            .expect("the semaphore is never closed");
        self.limiter.until_ready().await;
        self.waiting.fetch_sub(1, Ordering::SeqCst);
        let result = match tokio::time::timeout(self.attempt_timeout, self.sink.deliver(a)).await {
            Ok(r) => r,
            Err(_) => Err(DeliveryError::retriable(format!(
                "no answer within {:?}",
                self.attempt_timeout
            ))),
        };
        drop(permit);
        let recovered = match &result {
            Ok(_) => self.failing.swap(false, Ordering::SeqCst),
            Err(e) => {
                if let Some(d) = e.pause_sink {
                    self.limiter.pause(d.min(self.max_pause));
                }
                if e.retriable {
                    self.failing.store(true, Ordering::SeqCst);
                }
                false
            }
        };
        Outcome { result, recovered }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[tokio::test(start_paused = true)]
    async fn a_burst_is_paced_not_dropped_and_keeps_its_order() {
        let clock = Clock::system();
        let limiter = Arc::new(RateLimiter::new(Some(1.0), clock.clone()));
        let start = clock.instant();
        let order = Arc::new(Mutex::new(Vec::new()));
        let mut tasks = Vec::new();
        for i in 0..5 {
            let (limiter, order, clock) = (limiter.clone(), order.clone(), clock.clone());
            tasks.push(tokio::spawn(async move {
                limiter.until_ready().await;
                order.lock().unwrap().push((i, clock.instant() - start));
            }));
            // Arrival order is spawn order.
            tokio::task::yield_now().await;
        }
        for t in tasks {
            t.await.unwrap();
        }
        let order = order.lock().unwrap().clone();
        let expected: Vec<(i32, Duration)> =
            (0..5).map(|i| (i, Duration::from_secs(i as u64))).collect();
        assert_eq!(order, expected);
    }

    #[tokio::test(start_paused = true)]
    async fn a_pause_holds_every_request_until_it_ends() {
        let clock = Clock::system();
        let limiter = RateLimiter::new(None, clock.clone());
        let start = clock.instant();
        limiter.until_ready().await;
        assert_eq!(clock.instant() - start, Duration::ZERO, "no limit, no wait");
        limiter.pause(Duration::from_secs(30));
        limiter.pause(Duration::from_secs(5)); // a shorter pause does not shorten it
        limiter.until_ready().await;
        assert_eq!(clock.instant() - start, Duration::from_secs(30));
        limiter.until_ready().await;
        assert_eq!(clock.instant() - start, Duration::from_secs(30));
    }
}
