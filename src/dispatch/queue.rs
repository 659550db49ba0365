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
//!
//! A sink that refuses our credentials ([`DeliveryError::credentials`]: a token endpoint's
//! refusal, a 401 with a fresh or static token, a token without its scopes) is paused
//! ([`CredentialPause`]): no alert is at fault, so none is dead-lettered for it. Its attempts are
//! held back — each delivery waits in the backlog for the next probe, without using up an
//! attempt (`retry::Decision::Wait`) — and one attempt at a time goes through as a probe, on a
//! backoff: the retry schedule's delays, each at most `max_retry_after`, the last repeating.
//! Credentials fixed at the vendor are found at the next probe (a restart probes at once, with
//! the config as it is then); the probe that gets through resumes the sink, and its backlog
//! goes at once. `leadwatch_sink_paused{sink, reason}` is 1 meanwhile, and every refused probe
//! logs an error saying why.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::Semaphore;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::config::DispatchConfig;
use super::retry::{LONGEST_WAIT, Schedule};
use super::sinks::{Attempt, Delivered, DeliveryError, Http, Sink, SinkConfig};
use crate::clock::Clock;
use crate::telemetry::Metrics;

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

/// A sink paused because it refused our credentials, and when to probe it again.
#[derive(Debug)]
pub struct CredentialPause {
    /// The wait after the n-th refused probe (the last repeating).
    delays: Vec<Duration>,
    refused: Option<Refused>,
}

#[derive(Debug, Clone, Copy)]
struct Refused {
    /// Why, in a word: the `reason` of `leadwatch_sink_paused`.
    reason: &'static str,
    /// The next attempt at or after this goes through, as a probe.
    next_probe: Instant,
    /// Refusals so far that moved the next probe (the first, and each refused probe).
    probes: u32,
}

/// What an attempt at a paused sink may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Gate {
    /// Not paused: go.
    Open,
    /// Paused, and a probe is due: this attempt is it.
    Probe,
    /// Paused: wait this long for the next probe.
    Wait(Duration),
}

/// A refusal as the pause took it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Refusal {
    /// How long deliveries wait for the next probe.
    pub wait: Duration,
    /// The reason the sink was paused for before, if another one (or none: it was not paused).
    pub was: Option<Option<&'static str>>,
}

impl CredentialPause {
    /// Probes on `schedule`'s delays, each at most its `max_retry_after`.
    pub fn new(schedule: &Schedule) -> Self {
        let cap = schedule.max_retry_after.max(Duration::from_secs(1));
        let mut delays: Vec<Duration> = schedule.delays.iter().map(|d| (*d).min(cap)).collect();
        if delays.is_empty() {
            delays.push(cap);
        }
        Self {
            delays,
            refused: None,
        }
    }

    /// Why the sink is paused, if it is.
    pub fn reason(&self) -> Option<&'static str> {
        self.refused.map(|r| r.reason)
    }

    /// What an attempt at `now` may do.
    pub fn gate(&self, now: Instant) -> Gate {
        match self.refused {
            None => Gate::Open,
            Some(r) if r.next_probe <= now => Gate::Probe,
            Some(r) => Gate::Wait(r.next_probe - now),
        }
    }

    /// The sink refused our credentials at `now` (`reason`): paused, or paused longer when a
    /// probe was due. A refusal before the next probe is due (an attempt already under way when
    /// the pause began) leaves the pause as it is.
    pub fn refused(&mut self, reason: &'static str, now: Instant) -> Refusal {
        let was = self.reason();
        let probes = match self.refused {
            Some(r) if r.next_probe > now => {
                self.refused = Some(Refused { reason, ..r });
                return Refusal {
                    wait: r.next_probe - now,
                    was: (was != Some(reason)).then_some(was),
                };
            }
            Some(r) => r.probes.saturating_add(1),
            None => 1,
        };
        let index = (probes as usize - 1).min(self.delays.len() - 1);
        let wait = self.delays[index];
        self.refused = Some(Refused {
            reason,
            next_probe: at_most_a_year_from(now, wait),
            probes,
        });
        Refusal {
            wait,
            was: (was != Some(reason)).then_some(was),
        }
    }

    /// The sink took our credentials: no longer paused; the reason it was paused for, if it was.
    pub fn accepted(&mut self) -> Option<&'static str> {
        self.refused.take().map(|r| r.reason)
    }
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
    /// Paused because it refused our credentials.
    pause: Mutex<CredentialPause>,
    /// While paused, attempts go through one at a time: a probe, or a wait.
    probe: tokio::sync::Mutex<()>,
    clock: Clock,
    /// `leadwatch_sink_paused`.
    metrics: Arc<Metrics>,
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
        metrics: Arc<Metrics>,
    ) -> Self {
        let max_per_second = cfg.max_per_second();
        let concurrency = dispatch.sink_concurrency;
        let inline_capacity = match max_per_second {
            Some(rate) => (rate.ceil() as usize).max(1),
            None => concurrency * 2,
        };
        Self {
            name: name.to_string(),
            pause: Mutex::new(CredentialPause::new(&Schedule::from(dispatch))),
            probe: tokio::sync::Mutex::new(()),
            clock: http.clock.clone(),
            limiter: RateLimiter::new(max_per_second, http.clock.clone()),
            sink: Sink::from_config(cfg, http).observed(name, metrics.clone()),
            metrics,
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

    /// How many more due retries the sink may be handed now: up to about a second's worth (what
    /// it may hold inline) waiting for their turn; the next batch goes as these are sent.
    pub fn retry_room(&self) -> usize {
        self.inline_capacity
            .saturating_sub(self.waiting.load(Ordering::SeqCst))
    }

    /// The longest one attempt may take.
    pub fn attempt_timeout(&self) -> Duration {
        self.attempt_timeout
    }

    pub fn is_failing(&self) -> bool {
        self.failing.load(Ordering::SeqCst)
    }

    /// Why the sink is paused (it refused our credentials), if it is.
    pub fn paused(&self) -> Option<&'static str> {
        self.pause.lock().expect("pause lock").reason()
    }

    /// One attempt, in turn: decided without a request when the sink can tell from the alert
    /// alone; held back while the sink is paused for its credentials, unless it is the probe.
    /// Abandoned, unsent, once `revoked` is cancelled while it waits for its turn (its partition
    /// moved to another member, which delivers it): revocation is looked at once more after the
    /// pace's wait, right before the request.
    pub async fn attempt(&self, a: &Attempt<'_>, revoked: &CancellationToken) -> Outcome {
        if let Some(result) = self.sink.precheck(a) {
            return Outcome {
                result,
                recovered: false,
            };
        }
        // Taken only while paused: one attempt at a time learns whether the credentials work.
        let _one_at_a_time = match self.paused() {
            Some(_) => Some(self.probe.lock().await),
            None => None,
        };
        let gate = self
            .pause
            .lock()
            .expect("pause lock")
            .gate(self.clock.instant());
        if let Gate::Wait(wait) = gate {
            let reason = self.paused().unwrap_or("paused");
            return Outcome {
                result: Err(DeliveryError {
                    wait_for_sink: Some(wait),
                    ..DeliveryError::retriable(format!(
                        "the sink is paused: it refused our credentials ({reason}); next try in \
                         {wait:.0?}"
                    ))
                }),
                recovered: false,
            };
        }
        self.waiting.fetch_add(1, Ordering::SeqCst);
        let turn = async {
            let permit = self
                .permits
                .acquire()
                .await
                .expect("the semaphore is never closed");
            self.limiter.until_ready().await;
            permit
        };
        let permit = tokio::select! {
            biased;
            _ = revoked.cancelled() => None,
            permit = turn => Some(permit),
        };
        self.waiting.fetch_sub(1, Ordering::SeqCst);
        // Checked again after the wait: the request is the last moment to not send it.
        let Some(permit) = permit.filter(|_| !revoked.is_cancelled()) else {
            self.metrics.delivery(&self.name, "abandoned_on_revoke");
            return Outcome {
                result: Err(DeliveryError::retriable(
                    "abandoned unsent: the partition was revoked (its new owner delivers it)",
                )),
                recovered: false,
            };
        };
        let result = match tokio::time::timeout(self.attempt_timeout, self.sink.deliver(a)).await {
            Ok(r) => r,
            Err(_) => Err(DeliveryError::retriable(format!(
                "no answer within {:?}",
                self.attempt_timeout
            ))),
        };
        drop(permit);
        let mut result = result;
        let recovered = match &mut result {
            Ok(_) => {
                self.resume();
                self.failing.swap(false, Ordering::SeqCst)
            }
            Err(e) if e.credentials.is_some() => {
                e.wait_for_sink = Some(self.refused(e));
                self.failing.store(true, Ordering::SeqCst);
                false
            }
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

    /// The sink refused our credentials (`e`): paused, the gauge set, the error logged (the
    /// first refusal and each refused probe). How long deliveries wait.
    fn refused(&self, e: &DeliveryError) -> Duration {
        let reason = e.credentials.unwrap_or("refused");
        let now = self.clock.instant();
        let (refusal, moved) = {
            let mut pause = self.pause.lock().expect("pause lock");
            // Not yet paused, or a probe was due: this refusal pauses, or pauses longer.
            let moved = !matches!(pause.gate(now), Gate::Wait(_));
            (pause.refused(reason, now), moved)
        };
        if let Some(was) = refusal.was {
            if let Some(old) = was {
                self.metrics.set_sink_paused(&self.name, old, false);
            }
            self.metrics.set_sink_paused(&self.name, reason, true);
        }
        if moved || refusal.was.is_some() {
            tracing::error!(
                sink = %self.name, reason, status = ?e.status, error = %e, excerpt = %e.excerpt,
                next_try_in = ?refusal.wait,
                "the sink refused our credentials: it is paused and its alerts wait in the retry \
                 backlog (nothing is dead-lettered for this); fix the credentials at the vendor \
                 (found at the next try) or in the config (a restart tries at once)"
            );
        }
        refusal.wait
    }

    /// The sink took an attempt: no longer paused, if it was.
    fn resume(&self) {
        let was = self.pause.lock().expect("pause lock").accepted();
        if let Some(reason) = was {
            self.metrics.set_sink_paused(&self.name, reason, false);
            tracing::warn!(sink = %self.name, reason, "the sink accepts our credentials again; resumed, its backlog goes now");
        }
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

    /// A sink that refused our credentials is probed on the retry schedule (each delay at most
    /// `max_retry_after`, the last repeating), one probe per due time; a refusal from an attempt
    /// already under way moves nothing; credentials taken again end the pause.
    #[tokio::test(start_paused = true)]
    async fn refused_credentials_are_probed_on_the_schedule_until_taken_again() {
        let clock = Clock::system();
        let secs = Duration::from_secs;
        let schedule = Schedule {
            delays: vec![secs(5), secs(300), secs(7200)],
            jitter: 0.2,
            max_retry_after: secs(3600),
        };
        let mut pause = CredentialPause::new(&schedule);
        let t = clock.instant();
        assert_eq!(pause.gate(t), Gate::Open);
        let first = pause.refused("token_refused", t);
        assert_eq!(
            first,
            Refusal {
                wait: secs(5),
                was: Some(None)
            }
        );
        assert_eq!(pause.reason(), Some("token_refused"));
        assert_eq!(pause.gate(t + secs(1)), Gate::Wait(secs(4)));
        // Another attempt that was under way is refused too: the pause stands as it was.
        assert_eq!(
            pause.refused("token_refused", t + secs(1)),
            Refusal {
                wait: secs(4),
                was: None
            }
        );
        assert_eq!(pause.gate(t + secs(5)), Gate::Probe);
        // The probe is refused: the next waits the second delay, then the third (clamped to
        // max_retry_after), which repeats.
        let t = t + secs(5);
        assert_eq!(pause.refused("token_refused", t).wait, secs(300));
        let t = t + secs(300);
        assert_eq!(pause.refused("token_refused", t).wait, secs(3600));
        let t = t + secs(3600);
        assert_eq!(pause.refused("token_refused", t).wait, secs(3600));
        // Now refused for another reason: the gauge moves from one to the other.
        let t = t + secs(3600);
        let other = pause.refused("unauthorized", t);
        assert_eq!(
            other,
            Refusal {
                wait: secs(3600),
                was: Some(Some("token_refused"))
            }
        );
        assert_eq!(pause.accepted(), Some("unauthorized"));
        assert_eq!(pause.gate(t), Gate::Open);
        assert_eq!(pause.accepted(), None);
        // Paused again later: from the first delay.
        assert_eq!(pause.refused("unauthorized", t).wait, secs(5));
        // A schedule without delays probes every max_retry_after.
        let none = Schedule {
            delays: vec![],
            ..schedule
        };
        assert_eq!(CredentialPause::new(&none).refused("x", t).wait, secs(3600));
    }

    /// A pause or a pace no clock can reach (a sink's absurd answer, a config asking for one
    /// request per millennium) holds requests as long as a clock can count, without a panic.
    #[tokio::test(start_paused = true)]
    async fn a_pause_or_pace_past_the_end_of_time_saturates() {
        let clock = Clock::system();
        let limiter = RateLimiter::new(Some(1e-300), clock.clone());
        limiter.until_ready().await;
        limiter.pause(Duration::MAX);
        let waiting = tokio::time::timeout(Duration::from_secs(86_400), limiter.until_ready());
        assert!(waiting.await.is_err(), "held");
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
