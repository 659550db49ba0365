//! Where an alert is retried: this module decides, for every failed attempt, whether and when
//! the delivery is tried again or dead-lettered ([`decide`]). Live delivery
//! ([`super::deliver`]) and `leadwatch dlq replay` ([`super::dlq`]) both ask it; neither decides
//! on its own.
//!
//! A delivery's attempts are numbered from 1; attempt 1 is immediate, and after attempt `n`
//! fails (retriably) attempt `n + 1` is due after the `n`-th delay of the [`Schedule`]. The
//! default schedule spans about a day (5 s, 5 min, 30 min, 2 h, 5 h, 10 h, 10 h), each delay
//! moved by a random jitter so the retries of many alerts spread out. A sink's `Retry-After` is
//! honoured when it asks for longer (clamped to `dispatch.max_retry_after`), never for shorter:
//! a sink that says "retry in 1 s" through an outage must not exhaust a day's schedule in
//! seconds. An attempt made early because the sink answered again does not use up a step (up to
//! one such attempt per step). After the last step's attempt fails, or once a delivery has been
//! failing for twice the schedule's span, or on a permanent error ([`is_retriable`] says which
//! answers are), it is dead-lettered.
//!
//! The decision is pure: the delivery's past ([`Tries`]), the attempt's outcome, the schedule
//! and the time are handed in; nothing here waits, writes or reads a clock. The other parts of a
//! retry live where their state is:
//! - the durable wait between two attempts: [`super::backlog`] (an entry per delivery in the
//!   compacted `{prefix}.alerts.retry`, due at the time decided here; a sink that answers again
//!   gets its whole backlog pulled forward, and those attempts are the "early" ones);
//! - carrying out a decision (the ledger mark, the backlog entry, the dead letter) and the
//!   re-attempt of a due entry: [`super::deliver`] (`settle`, `retry_one`);
//! - the pause of a whole sink on 429 (every request to it held for the `Retry-After`):
//!   [`super::queue`];
//! - the dead letters and their replay, which waits in one task between its quick retries:
//!   [`super::dlq`].
//!
//! The schedule is computed per attempt number because the retries are durable: between two
//! attempts an alert sits in the Kafka-backed backlog, possibly across a restart, not in a
//! sleeping task.

use std::time::Duration;

use jiff::{SignedDuration, Timestamp};

/// The default delays before retries 1, 2, …: about a day in all, like Svix's.
pub const DEFAULT_SCHEDULE: [Duration; 7] = [
    Duration::from_secs(5),
    Duration::from_secs(5 * 60),
    Duration::from_secs(30 * 60),
    Duration::from_secs(2 * 3600),
    Duration::from_secs(5 * 3600),
    Duration::from_secs(10 * 3600),
    Duration::from_secs(10 * 3600),
];

/// The default jitter: each delay ± 20 %.
pub const DEFAULT_JITTER: f64 = 0.2;

/// The default longest `Retry-After` honoured (and longest pause of a rate-limited sink).
pub const DEFAULT_MAX_RETRY_AFTER: Duration = Duration::from_secs(3600);

/// The longest any remote answer can make something wait (a `Retry-After`, a rate-limit
/// window), before `max_retry_after` clamps it further: a year. Larger values, and values no
/// `Duration` or clock can hold, become this.
pub const LONGEST_WAIT: Duration = Duration::from_secs(366 * 86_400);

/// Delays between attempts, with jitter, and the clamp for `Retry-After`.
#[derive(Debug, Clone, PartialEq)]
pub struct Schedule {
    /// Delay before retry `i + 1` (so `delays.len()` retries after the first attempt).
    pub delays: Vec<Duration>,
    /// Each delay is moved by up to this fraction either way (0 … 1).
    pub jitter: f64,
    /// The longest `Retry-After` honoured.
    pub max_retry_after: Duration,
}

impl Default for Schedule {
    fn default() -> Self {
        Self {
            delays: DEFAULT_SCHEDULE.to_vec(),
            jitter: DEFAULT_JITTER,
            max_retry_after: DEFAULT_MAX_RETRY_AFTER,
        }
    }
}

impl Schedule {
    /// How many attempts a delivery gets in all.
    pub fn attempts(&self) -> u32 {
        self.delays.len() as u32 + 1
    }

    /// The planned delay after attempt `attempt` (1-based) failed, without jitter; `None` when
    /// it was the last.
    pub fn planned(&self, attempt: u32) -> Option<Duration> {
        self.delays.get(attempt.checked_sub(1)? as usize).copied()
    }

    /// The delay after attempt `attempt` failed: the schedule's (with jitter), or the sink's
    /// `Retry-After` (clamped) when that is longer — a sink may ask for more time, never for
    /// less, so the schedule keeps its span; `None` when no attempt is left.
    pub fn next_delay(&self, attempt: u32, retry_after: Option<Duration>) -> Option<Duration> {
        let planned = self.jittered(self.planned(attempt)?);
        Some(match retry_after {
            Some(asked) => asked.min(self.max_retry_after).max(planned),
            None => planned,
        })
    }

    fn jittered(&self, d: Duration) -> Duration {
        if self.jitter <= 0.0 || d.is_zero() {
            return d;
        }
        let factor = 1.0 + self.jitter * (fastrand::f64() * 2.0 - 1.0);
        // A delay of centuries times 1.2 is no Duration: it stays the longest one.
        Duration::try_from_secs_f64(d.as_secs_f64() * factor.max(0.0)).unwrap_or(Duration::MAX)
    }

    /// Everything the schedule waits, without jitter (saturating).
    pub fn span(&self) -> Duration {
        self.delays
            .iter()
            .fold(Duration::ZERO, |sum, d| sum.saturating_add(*d))
    }

    /// Whether a delivery failing since `since` has failed long enough to give up whatever its
    /// attempts: twice the span, so that free attempts (made early) and long `Retry-After`s
    /// cannot keep an alert out of the dead letters much longer than the schedule says.
    pub fn given_up(&self, since: Timestamp, now: Timestamp) -> bool {
        let limit = self.span().saturating_mul(2).max(self.max_retry_after);
        now.duration_since(since) >= SignedDuration::try_from(limit).unwrap_or(SignedDuration::MAX)
    }
}

/// A delivery's past, as far as retrying goes: what [`decide`] needs to know and hands back
/// for the next time. Between attempts it is kept in the delivery's backlog entry.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Tries {
    /// Attempts made, the one just made included (the first is 1).
    pub attempts: u32,
    /// Failed attempts that did not use up a step of the schedule: those made early because the
    /// sink answered again (at most as many as the schedule has attempts).
    pub free: u32,
    /// The attempt just made was made early (the sink answered again): if it failed, it is free.
    pub early: bool,
    /// When the first attempt failed.
    pub failing_since: Option<Timestamp>,
}

/// What a failed attempt tells about trying again.
pub trait Failure {
    /// Worth another attempt (a timeout, a 5xx, a 4xx that means "later"); else permanent.
    fn retriable(&self) -> bool;
    /// How long the sink asked us to wait (`Retry-After` or its rate-limit headers).
    fn retry_after(&self) -> Option<Duration>;
    /// The sink is paused (it refused our credentials): how long this delivery waits for it.
    fn wait_for_sink(&self) -> Option<Duration> {
        None
    }
}

/// What comes after an attempt.
#[derive(Debug, Clone, PartialEq)]
pub enum Decision<T, E> {
    /// The attempt reached the sink (or the alert was not for it): nothing is left to retry.
    Done(T),
    /// Try again at `at`, `after` from now; `tries` is the delivery's past from now on.
    RetryAt {
        at: Timestamp,
        after: Duration,
        tries: Tries,
        error: E,
    },
    /// The sink is paused — it refused our credentials, which is no alert's fault — so the
    /// delivery waits for it until `at`, `after` from now, and the attempt does not count:
    /// `tries` is the delivery's past before it (no step used up, no failing clock started).
    Wait {
        at: Timestamp,
        after: Duration,
        tries: Tries,
        error: E,
    },
    /// Give up (a permanent error, no step left, or failing for too long): dead-letter it.
    DeadLetter(E),
}

/// Decides what follows an attempt: `tries` is the delivery's past (this attempt counted),
/// `outcome` what the attempt came to, `now` when it ended.
///
/// An attempt the sink's queue held back because the sink is paused for its credentials
/// ([`Failure::wait_for_sink`]) waits for the sink and counts for nothing ([`Decision::Wait`]).
///
/// A failure is retried after the schedule's delay for its step, unless it is permanent, the
/// schedule has no step left, or the delivery has failed for twice the schedule's span. The step
/// is the attempt's number less the free attempts: an attempt made early because the sink
/// answered again does not use one up (at most one per step, and no more than the schedule has).
/// The sink's `Retry-After` lengthens the delay, never shortens it, clamped to the schedule's
/// `max_retry_after` ([`Schedule::next_delay`]).
pub fn decide<T, E: Failure>(
    tries: Tries,
    outcome: Result<T, E>,
    schedule: &Schedule,
    now: Timestamp,
) -> Decision<T, E> {
    let error = match outcome {
        Ok(done) => return Decision::Done(done),
        Err(e) => e,
    };
    if let Some(after) = error.wait_for_sink() {
        let tries = Tries {
            attempts: tries.attempts.saturating_sub(1),
            early: false,
            ..tries
        };
        return Decision::Wait {
            at: later(now, after),
            after,
            tries,
            error,
        };
    }
    let mut tries = tries;
    let since = *tries.failing_since.get_or_insert(now);
    // A flapping sink cannot turn the backlog into a storm: its early attempts are free only up
    // to one per step.
    if std::mem::take(&mut tries.early) && tries.free < schedule.attempts() {
        tries.free += 1;
    }
    let step = tries.attempts.saturating_sub(tries.free).max(1);
    let delay = (error.retriable() && !schedule.given_up(since, now))
        .then(|| schedule.next_delay(step, error.retry_after()))
        .flatten();
    match delay {
        Some(after) => Decision::RetryAt {
            at: later(now, after),
            after,
            tries,
            error,
        },
        None => Decision::DeadLetter(error),
    }
}

/// `now + d`, or the end of time when that is past it.
pub fn later(now: Timestamp, d: Duration) -> Timestamp {
    SignedDuration::try_from(d)
        .ok()
        .and_then(|d| now.checked_add(d).ok())
        .unwrap_or(Timestamp::MAX)
}

/// 5xx and the 4xx that mean "later" are worth retrying; other 4xx are permanent.
pub fn is_retriable(status: u16) -> bool {
    status >= 500 || matches!(status, 408 | 409 | 425 | 429)
}

/// `Retry-After` as seconds or as an HTTP date (relative to `now`); a date in the past is zero.
/// It comes from anywhere: a wait longer than [`LONGEST_WAIT`] (or longer than any duration) is
/// that; a negative, infinite or unreadable one is none.
pub fn parse_retry_after(value: &str, now: Timestamp) -> Option<Duration> {
    let value = value.trim();
    if let Some(secs) = parse_seconds(value) {
        return Some(secs);
    }
    let at = jiff::fmt::rfc2822::parse(value).ok()?.timestamp();
    Some(match Duration::try_from(at.duration_since(now)) {
        Ok(d) => d.min(LONGEST_WAIT),
        // Negative: the date has passed.
        Err(_) => Duration::ZERO,
    })
}

/// A number of seconds from a remote answer (whole, or with a fraction, which the RFC does not
/// allow but some servers send), at most [`LONGEST_WAIT`]; none when negative, not finite or
/// not a number.
pub fn parse_seconds(value: &str) -> Option<Duration> {
    parse_clamped(value, 1.0)
}

/// A number of milliseconds from a remote answer, as [`parse_seconds`].
pub fn parse_millis(value: &str) -> Option<Duration> {
    parse_clamped(value, 1e-3)
}

/// `value` × `unit` seconds, clamped to [`LONGEST_WAIT`].
fn parse_clamped(value: &str, unit: f64) -> Option<Duration> {
    let value = value.trim();
    if !value.is_empty() && value.bytes().all(|b| b.is_ascii_digit()) {
        // Whole numbers exactly, however many digits (past u64: longer than any wait).
        let clamped = match value.parse::<u64>() {
            Ok(n) if unit == 1.0 => Duration::from_secs(n),
            Ok(n) => Duration::from_millis(n),
            Err(_) => LONGEST_WAIT,
        };
        return Some(clamped.min(LONGEST_WAIT));
    }
    let n = value.parse::<f64>().ok()?;
    if !n.is_finite() || n < 0.0 {
        return None;
    }
    let secs = (n * unit).min(LONGEST_WAIT.as_secs_f64());
    Some(Duration::try_from_secs_f64(secs).map_or(LONGEST_WAIT, |d| d.min(LONGEST_WAIT)))
}

/// `Retry-After` of a response received at `now`.
pub fn retry_after(headers: &reqwest::header::HeaderMap, now: Timestamp) -> Option<Duration> {
    let v = headers.get(reqwest::header::RETRY_AFTER)?.to_str().ok()?;
    parse_retry_after(v, now)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A failed attempt as the decision sees it.
    #[derive(Debug, Clone, Copy, PartialEq)]
    struct Failed {
        retriable: bool,
        retry_after: Option<Duration>,
    }

    impl Failure for Failed {
        fn retriable(&self) -> bool {
            self.retriable
        }
        fn retry_after(&self) -> Option<Duration> {
            self.retry_after
        }
    }

    const DOWN: Failed = Failed {
        retriable: true,
        retry_after: None,
    };

    /// A sink paused for its credentials, probed again in a minute.
    #[derive(Debug, Clone, Copy, PartialEq)]
    struct Paused;

    impl Failure for Paused {
        fn retriable(&self) -> bool {
            false
        }
        fn retry_after(&self) -> Option<Duration> {
            None
        }
        fn wait_for_sink(&self) -> Option<Duration> {
            Some(Duration::from_secs(60))
        }
    }

    /// Refused credentials are no alert's fault: a delivery held back by its paused sink
    /// waits for the sink, however many times, and is never dead-lettered for it — no step of
    /// the schedule used up, the failing clock neither started nor moved.
    #[test]
    fn a_delivery_waiting_for_a_paused_sink_uses_up_nothing() {
        let now = t0();
        let past = Tries {
            attempts: 4,
            free: 1,
            early: true,
            failing_since: Some(now - secs(7 * 86_400)),
        };
        assert_eq!(
            decide::<(), _>(past, Err(Paused), &exact(), now),
            Decision::Wait {
                at: now + secs(60),
                after: Duration::from_secs(60),
                tries: Tries {
                    attempts: 3,
                    early: false,
                    ..past
                },
                error: Paused,
            }
        );
        // The first attempt, held back: still the first to come.
        match decide::<(), _>(tries(1), Err(Paused), &exact(), now) {
            Decision::Wait { tries, .. } => assert_eq!(tries, Tries::default()),
            other => panic!("{other:?}"),
        }
    }

    fn t0() -> Timestamp {
        "2026-11-25T10:00:00Z".parse().unwrap()
    }

    fn secs(n: i64) -> SignedDuration {
        SignedDuration::from_secs(n)
    }

    /// The default schedule without jitter: 5 s, 5 min, 30 min, 2 h, 5 h, 10 h, 10 h.
    fn exact() -> Schedule {
        Schedule {
            jitter: 0.0,
            ..Schedule::default()
        }
    }

    fn tries(attempts: u32) -> Tries {
        Tries {
            attempts,
            ..Tries::default()
        }
    }

    /// The delay decided, or None for a dead letter.
    fn after(tries: Tries, failed: Failed, now: Timestamp) -> Option<Duration> {
        match decide::<(), _>(tries, Err(failed), &exact(), now) {
            Decision::RetryAt { after, .. } => Some(after),
            Decision::DeadLetter(_) => None,
            Decision::Done(()) | Decision::Wait { .. } => panic!("{failed:?} is a failure"),
        }
    }

    #[test]
    fn an_attempt_that_reached_the_sink_is_done() {
        assert_eq!(
            decide::<_, Failed>(tries(3), Ok("sent"), &exact(), t0()),
            Decision::Done("sent")
        );
    }

    #[test]
    fn a_retriable_failure_waits_its_step_and_the_failing_clock_starts_once() {
        let now = t0();
        assert_eq!(
            decide::<(), _>(tries(1), Err(DOWN), &exact(), now),
            Decision::RetryAt {
                at: now + secs(5),
                after: Duration::from_secs(5),
                tries: Tries {
                    attempts: 1,
                    failing_since: Some(now),
                    ..Tries::default()
                },
                error: DOWN,
            }
        );
        // Later failures keep the first failure's time; the third attempt waits the third delay.
        let earlier = now - secs(600);
        let third = Tries {
            failing_since: Some(earlier),
            ..tries(3)
        };
        match decide::<(), _>(third, Err(DOWN), &exact(), now) {
            Decision::RetryAt { at, tries, .. } => {
                assert_eq!(at, now + secs(1800));
                assert_eq!(tries.failing_since, Some(earlier));
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_permanent_failure_is_dead_lettered_at_once() {
        let refused = Failed {
            retriable: false,
            retry_after: Some(Duration::from_secs(5)),
        };
        assert_eq!(
            decide::<(), _>(tries(1), Err(refused), &exact(), t0()),
            Decision::DeadLetter(refused)
        );
    }

    #[test]
    fn after_the_last_step_the_delivery_is_dead_lettered() {
        assert_eq!(
            after(tries(7), DOWN, t0()),
            Some(Duration::from_secs(36_000))
        );
        assert_eq!(after(tries(8), DOWN, t0()), None);
        let short = Schedule {
            delays: vec![Duration::from_secs(1)],
            ..exact()
        };
        assert!(matches!(
            decide::<(), _>(tries(2), Err(DOWN), &short, t0()),
            Decision::DeadLetter(_)
        ));
    }

    #[test]
    fn failing_for_twice_the_span_gives_up_with_steps_left() {
        let span = SignedDuration::try_from(exact().span()).unwrap();
        let since = |ago: SignedDuration| Tries {
            failing_since: Some(t0() - ago),
            ..tries(2)
        };
        assert_eq!(
            after(since(span * 2 - secs(1)), DOWN, t0()),
            Some(Duration::from_secs(300))
        );
        assert_eq!(after(since(span * 2), DOWN, t0()), None);
    }

    #[test]
    fn retry_after_lengthens_the_wait_never_shortens_it_and_is_clamped() {
        let asked = |s: u64| Failed {
            retriable: true,
            retry_after: Some(Duration::from_secs(s)),
        };
        // Longer than the first step's 5 s: the sink's.
        assert_eq!(
            after(tries(1), asked(60), t0()),
            Some(Duration::from_secs(60))
        );
        // Shorter than the third step's 30 min: the schedule's.
        assert_eq!(
            after(tries(3), asked(2), t0()),
            Some(Duration::from_secs(1800))
        );
        // A day: clamped to max_retry_after (1 h).
        assert_eq!(
            after(tries(1), asked(86_400), t0()),
            Some(Duration::from_secs(3600))
        );
        // It never buys an attempt past the last step.
        assert_eq!(after(tries(8), asked(1), t0()), None);
    }

    #[test]
    fn an_early_attempt_does_not_use_up_a_step_up_to_one_per_step() {
        let early = |attempts, free| Tries {
            attempts,
            free,
            early: true,
            ..Tries::default()
        };
        // Third attempt, made early: free, so it waits the second step's delay again.
        match decide::<(), _>(early(3, 0), Err(DOWN), &exact(), t0()) {
            Decision::RetryAt { after, tries, .. } => {
                assert_eq!(after, Duration::from_secs(300));
                assert_eq!((tries.free, tries.early), (1, false), "spent, and cleared");
            }
            other => panic!("{other:?}"),
        }
        // Not early: it uses its step.
        assert_eq!(
            after(
                Tries {
                    free: 1,
                    ..tries(4)
                },
                DOWN,
                t0()
            ),
            Some(Duration::from_secs(1800))
        );
        // No more free attempts than the schedule has attempts (8): the twelfth is step 4.
        assert_eq!(
            after(early(12, 8), DOWN, t0()),
            Some(Duration::from_secs(7200))
        );
        // The step is never below the first.
        assert_eq!(
            after(
                Tries {
                    free: 1,
                    ..tries(1)
                },
                DOWN,
                t0()
            ),
            Some(Duration::from_secs(5))
        );
    }

    #[test]
    fn a_delivery_failing_for_twice_the_span_is_given_up_however_it_failed() {
        let s = Schedule::default();
        let since: jiff::Timestamp = "2026-11-25T10:00:00Z".parse().unwrap();
        let span = jiff::SignedDuration::try_from(s.span()).unwrap();
        assert!(!s.given_up(since, since));
        assert!(!s.given_up(since, since + span));
        assert!(!s.given_up(since, since + span * 2 - jiff::SignedDuration::from_secs(1)));
        assert!(s.given_up(since, since + span * 2));
        // A schedule shorter than the longest Retry-After still waits one of those out.
        let short = Schedule {
            delays: vec![Duration::from_millis(100)],
            ..Schedule::default()
        };
        assert!(!short.given_up(since, since + jiff::SignedDuration::from_secs(60)));
        assert!(short.given_up(since, since + jiff::SignedDuration::from_secs(3600)));
    }

    #[test]
    fn the_default_schedule_spans_about_a_day_and_ends() {
        let s = Schedule::default();
        assert_eq!(s.attempts(), 8);
        let span = s.span();
        assert!(
            span > Duration::from_secs(20 * 3600) && span < Duration::from_secs(36 * 3600),
            "{span:?}"
        );
        assert_eq!(s.planned(1), Some(Duration::from_secs(5)));
        assert_eq!(s.planned(2), Some(Duration::from_secs(300)));
        assert_eq!(s.planned(7), Some(Duration::from_secs(36_000)));
        assert_eq!(s.planned(8), None, "no retry after the last attempt");
        assert_eq!(s.next_delay(8, Some(Duration::from_secs(1))), None);
        assert_eq!(s.planned(0), None);
    }

    #[test]
    fn jitter_stays_within_its_fraction_and_varies() {
        let s = Schedule::default();
        let delays: Vec<Duration> = (0..200).map(|_| s.next_delay(2, None).unwrap()).collect();
        for d in &delays {
            assert!(
                *d >= Duration::from_secs(240) && *d <= Duration::from_secs(360),
                "{d:?}"
            );
        }
        let distinct: std::collections::BTreeSet<_> = delays.iter().collect();
        assert!(distinct.len() > 100, "no jitter: {distinct:?}");
        let none = Schedule {
            jitter: 0.0,
            ..Schedule::default()
        };
        assert_eq!(none.next_delay(2, None), Some(Duration::from_secs(300)));
    }

    #[test]
    fn retry_after_may_lengthen_the_wait_never_shorten_it_and_is_clamped() {
        let s = Schedule {
            jitter: 0.0,
            ..Schedule::default()
        };
        // Longer than planned (5 s): the sink's.
        assert_eq!(
            s.next_delay(1, Some(Duration::from_secs(60))),
            Some(Duration::from_secs(60))
        );
        // Shorter than planned (30 min): the schedule's, so it keeps its day-long span.
        assert_eq!(
            s.next_delay(3, Some(Duration::from_secs(2))),
            Some(Duration::from_secs(1800))
        );
        // Clamped to max_retry_after, and never past the last step.
        assert_eq!(
            s.next_delay(1, Some(Duration::from_secs(86_400))),
            Some(Duration::from_secs(3600))
        );
        assert_eq!(s.next_delay(8, Some(Duration::from_secs(1))), None);
    }

    #[test]
    fn retry_after_parses_seconds_and_http_dates() {
        let now: jiff::Timestamp = "2026-11-22T10:00:00Z".parse().unwrap();
        assert_eq!(
            parse_retry_after("120", now),
            Some(Duration::from_secs(120))
        );
        assert_eq!(parse_retry_after(" 3 ", now), Some(Duration::from_secs(3)));
        assert_eq!(
            parse_retry_after("1.5", now),
            Some(Duration::from_millis(1500))
        );
        assert_eq!(
            parse_retry_after("Sun, 22 Nov 2026 10:01:30 GMT", now),
            Some(Duration::from_secs(90))
        );
        assert_eq!(
            parse_retry_after("Sun, 22 Nov 2026 09:00:00 GMT", now),
            Some(Duration::ZERO),
            "a date in the past means now"
        );
        assert_eq!(parse_retry_after("soon", now), None);
        assert_eq!(parse_retry_after("-5", now), None);
    }

    /// Whatever a sink writes in `Retry-After` — too large for any clock, negative, not a
    /// number, a date a hundred centuries away or long past — the answer is a wait no longer
    /// than [`LONGEST_WAIT`], or none: never a panic.
    #[test]
    fn absurd_retry_after_values_are_clamped_never_a_panic() {
        let now: jiff::Timestamp = "2026-11-22T10:00:00Z".parse().unwrap();
        for huge in [
            "20000000000000000000",
            "18446744073709551616",
            "99999999999999999999999999999999999999",
            "18446744073709551615",
            "1e300",
            "1.7976931348623157e308",
            "31536000000.5",
            "Wed, 01 Dec 9999 23:59:59 GMT",
        ] {
            assert_eq!(parse_retry_after(huge, now), Some(LONGEST_WAIT), "{huge}");
        }
        for nothing in [
            "NaN",
            "nan",
            "inf",
            "-inf",
            "-1",
            "-0.5",
            "-20000000000000000000",
            "",
        ] {
            assert_eq!(parse_retry_after(nothing, now), None, "{nothing}");
        }
        assert_eq!(parse_retry_after("-0", now), Some(Duration::ZERO));
        assert_eq!(
            parse_retry_after("Mon, 01 Jan 0001 00:00:00 GMT", now),
            Some(Duration::ZERO),
            "long past means now"
        );
        // Through the whole decision: the wait is the schedule's clamp, at a time that exists.
        let huge = Failed {
            retriable: true,
            retry_after: parse_retry_after("20000000000000000000", now),
        };
        assert_eq!(
            decide::<(), _>(tries(1), Err(huge), &exact(), now),
            Decision::RetryAt {
                at: now + secs(3600),
                after: Duration::from_secs(3600),
                tries: Tries {
                    attempts: 1,
                    failing_since: Some(now),
                    ..Tries::default()
                },
                error: huge,
            }
        );
    }

    /// A schedule or a clock at the edges of what durations and timestamps hold (a config
    /// asking for centuries, the clock at the end of time) saturates instead of panicking.
    #[test]
    fn schedules_and_clocks_at_the_edges_saturate() {
        let centuries = Schedule {
            delays: vec![Duration::MAX, Duration::MAX],
            jitter: 1.0,
            max_retry_after: Duration::MAX,
        };
        assert_eq!(centuries.span(), Duration::MAX);
        assert!(centuries.next_delay(1, Some(Duration::MAX)).is_some());
        let end = Timestamp::MAX;
        assert!(!centuries.given_up(end, end));
        match decide::<(), _>(tries(1), Err(DOWN), &centuries, end) {
            Decision::RetryAt { at, .. } => assert_eq!(at, Timestamp::MAX),
            other => panic!("{other:?}"),
        }
        match decide::<(), _>(tries(1), Err(DOWN), &exact(), end) {
            Decision::RetryAt { at, .. } => assert_eq!(at, Timestamp::MAX),
            other => panic!("{other:?}"),
        }
        // A delivery failing since the beginning of time has failed long enough.
        assert!(exact().given_up(Timestamp::MIN, end));
    }

    #[test]
    fn only_the_4xx_that_mean_later_are_retriable() {
        for s in [408, 409, 425, 429, 500, 502, 503, 504] {
            assert!(is_retriable(s), "{s}");
        }
        for s in [400, 401, 403, 404, 410, 422] {
            assert!(!is_retriable(s), "{s}");
        }
    }
}
