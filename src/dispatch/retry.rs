//! When to try a delivery again.
//!
//! A delivery's attempts are numbered from 1; attempt 1 is immediate, and after attempt `n`
//! fails (retriably) attempt `n + 1` is due after the `n`-th delay of the [`Schedule`]. The
//! default schedule spans about a day (5 s, 5 min, 30 min, 2 h, 5 h, 10 h, 10 h), each delay
//! moved by a random jitter so the retries of many alerts spread out. A sink's `Retry-After` is
//! honoured when it asks for longer (clamped to `dispatch.max_retry_after`), never for shorter:
//! a sink that says "retry in 1 s" through an outage must not exhaust a day's schedule in
//! seconds. An attempt made early because the sink answered again does not use up a step (up to
//! one such attempt per step). After the last step's attempt fails, or once a delivery has been
//! failing for twice the schedule's span, it is dead-lettered.
//!
//! The schedule is computed per attempt number because the retries are durable: between two
//! attempts an alert sits in the Kafka-backed backlog ([`super::backlog`]), possibly across a
//! restart, not in a sleeping task. For retry loops that do live in one task (`dlq replay`), a
//! [`Schedule`] is also a `backon` backoff.

use std::time::Duration;

use super::config::DispatchConfig;

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
            jitter: 0.2,
            max_retry_after: Duration::from_secs(3600),
        }
    }
}

impl From<&DispatchConfig> for Schedule {
    fn from(c: &DispatchConfig) -> Self {
        let delays = match (&c.retry_schedule, c.retry_min_delay, c.retry_max_delay) {
            (Some(list), _, _) => list.iter().map(|d| d.0).collect(),
            (None, None, None) if c.max_retries.is_none() => DEFAULT_SCHEDULE.to_vec(),
            (None, min, max) => {
                // The exponential form: min, 2·min, 4·min … capped at max, `max_retries` times.
                let min = min.map_or(Duration::from_secs(1), |d| d.0);
                let max = max.map_or(Duration::from_secs(300), |d| d.0);
                let n = c.max_retries.unwrap_or(20);
                let mut delay = min;
                (0..n)
                    .map(|_| {
                        let this = delay.min(max);
                        delay = delay.saturating_mul(2);
                        this
                    })
                    .collect()
            }
        };
        Self {
            delays,
            jitter: c.retry_jitter,
            max_retry_after: c.max_retry_after.0,
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
        d.mul_f64(factor.max(0.0))
    }

    /// Everything the schedule waits, without jitter.
    pub fn span(&self) -> Duration {
        self.delays.iter().sum()
    }

    /// Whether a delivery failing since `since` has failed long enough to give up whatever its
    /// attempts: twice the span, so that free attempts (made early) and long `Retry-After`s
    /// cannot keep an alert out of the dead letters much longer than the schedule says.
    pub fn given_up(&self, since: jiff::Timestamp, now: jiff::Timestamp) -> bool {
        let limit = self.span().saturating_mul(2).max(self.max_retry_after);
        now.duration_since(since)
            >= jiff::SignedDuration::try_from(limit).unwrap_or(jiff::SignedDuration::MAX)
    }
}

/// The delays as a `backon` backoff, for retry loops within one task.
impl backon::BackoffBuilder for Schedule {
    type Backoff = std::vec::IntoIter<Duration>;

    fn build(self) -> Self::Backoff {
        (1..self.attempts())
            .filter_map(|n| self.next_delay(n, None))
            .collect::<Vec<_>>()
            .into_iter()
    }
}

/// 5xx and the 4xx that mean "later" are worth retrying; other 4xx are permanent.
pub fn is_retriable(status: u16) -> bool {
    status >= 500 || matches!(status, 408 | 409 | 425 | 429)
}

/// `Retry-After` as seconds or as an HTTP date (relative to `now`); a date in the past is zero.
pub fn parse_retry_after(value: &str, now: jiff::Timestamp) -> Option<Duration> {
    let value = value.trim();
    if let Ok(secs) = value.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    // Fractions are not in the RFC, but some servers send them.
    if let Ok(secs) = value.parse::<f64>() {
        return (secs.is_finite() && secs >= 0.0).then(|| Duration::from_secs_f64(secs));
    }
    let at = jiff::fmt::rfc2822::parse(value).ok()?.timestamp();
    Some(Duration::try_from(at.duration_since(now)).unwrap_or(Duration::ZERO))
}

/// `Retry-After` of a response.
pub fn retry_after(headers: &reqwest::header::HeaderMap) -> Option<Duration> {
    let v = headers.get(reqwest::header::RETRY_AFTER)?.to_str().ok()?;
    parse_retry_after(v, jiff::Timestamp::now())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::conf::HumanDuration;

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
    fn the_exponential_form_and_the_list_both_configure_it() {
        let mut c = DispatchConfig {
            retry_min_delay: Some(HumanDuration(Duration::from_millis(100))),
            retry_max_delay: Some(HumanDuration(Duration::from_millis(500))),
            max_retries: Some(5),
            ..DispatchConfig::default()
        };
        let s = Schedule::from(&c);
        let ms: Vec<u128> = s.delays.iter().map(|d| d.as_millis()).collect();
        assert_eq!(ms, [100, 200, 400, 500, 500]);
        assert!(c.problems().is_empty());
        c.retry_schedule = Some(vec![HumanDuration(Duration::from_secs(1))]);
        let problems = c.problems();
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert_eq!(problems[0].0, "retry_schedule");
        let only_list = DispatchConfig {
            retry_schedule: Some(vec![
                HumanDuration(Duration::from_secs(1)),
                HumanDuration(Duration::from_secs(7)),
            ]),
            ..DispatchConfig::default()
        };
        assert_eq!(
            Schedule::from(&only_list).delays,
            [Duration::from_secs(1), Duration::from_secs(7)]
        );
        assert_eq!(Schedule::from(&DispatchConfig::default()).attempts(), 8);
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

    #[test]
    fn only_the_4xx_that_mean_later_are_retriable() {
        for s in [408, 409, 425, 429, 500, 502, 503, 504] {
            assert!(is_retriable(s), "{s}");
        }
        for s in [400, 401, 403, 404, 410, 422] {
            assert!(!is_retriable(s), "{s}");
        }
    }

    #[tokio::test(start_paused = true)]
    async fn as_a_backon_backoff_it_waits_the_schedule() {
        use backon::Retryable;
        let s = Schedule {
            delays: vec![Duration::from_secs(5), Duration::from_secs(300)],
            jitter: 0.0,
            max_retry_after: Duration::from_secs(60),
        };
        let start = tokio::time::Instant::now();
        let tries = std::sync::atomic::AtomicU32::new(0);
        let result: Result<(), &str> = (|| async {
            tries.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            Err("down")
        })
        .retry(s)
        .await;
        assert!(result.is_err());
        assert_eq!(tries.load(std::sync::atomic::Ordering::SeqCst), 3);
        assert_eq!(start.elapsed(), Duration::from_secs(305));
    }
}
