//! `[dispatch]`: how alerts are delivered — how many at once, request timeouts, per-sink
//! concurrency, and the retry schedule (the [`Schedule`] is built from it here; what it means is
//! [`super::retry`]'s business).

use std::collections::BTreeMap;
use std::time::Duration;

use super::retry::{DEFAULT_JITTER, DEFAULT_MAX_RETRY_AFTER, DEFAULT_SCHEDULE, Schedule};
use super::routes::RouteConfig;
use super::sinks::SinkConfig;
use crate::conf::{HumanDuration, KeyProblems};

/// The sections delivery reads: `[dispatch]`, `[sinks.NAME]` and `[[routes]]`.
#[derive(Debug, Clone, Copy)]
pub struct DispatchSections<'a> {
    pub dispatch: &'a DispatchConfig,
    pub sinks: &'a BTreeMap<String, SinkConfig>,
    pub routes: &'a [RouteConfig],
}

/// Alert delivery.
#[derive(Debug, Clone, eserde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DispatchConfig {
    /// Most alerts being fanned out to their sinks at once (each waits until every sink has it,
    /// or has it durably queued for a retry, before its offset is stored).
    #[serde(default = "default_dispatch_in_flight")]
    pub max_in_flight: usize,
    /// Timeout of one HTTP request to a sink.
    #[serde(default = "default_request_timeout")]
    #[eserde(compat)]
    pub request_timeout: HumanDuration,
    /// Requests one sink may have open at once.
    #[serde(default = "default_sink_concurrency")]
    pub sink_concurrency: usize,
    /// Delays before each retry after the first attempt (which is immediate); after the last one
    /// fails the alert is dead-lettered for that sink. Default: 5s, 5m, 30m, 2h, 5h, 10h, 10h
    /// (about 28 hours in all).
    #[serde(default)]
    #[eserde(compat)]
    pub retry_schedule: Option<Vec<HumanDuration>>,
    /// The older exponential form, instead of `retry_schedule`: the first retry delay, doubling
    /// up to `retry_max_delay`, `max_retries` times.
    #[serde(default)]
    #[eserde(compat)]
    pub retry_min_delay: Option<HumanDuration>,
    #[serde(default)]
    #[eserde(compat)]
    pub retry_max_delay: Option<HumanDuration>,
    #[serde(default)]
    pub max_retries: Option<usize>,
    /// Each delay is moved by up to this fraction either way, so retries of many alerts spread.
    #[serde(default = "default_retry_jitter")]
    pub retry_jitter: f64,
    /// The longest `Retry-After` honoured; a sink asking for more gets this.
    #[serde(default = "default_max_retry_after")]
    #[eserde(compat)]
    pub max_retry_after: HumanDuration,
    /// How long the ledger remembers which sinks have an alert: set it to the alerts topic's
    /// retention (Kafka's default is 7 days). An alert older than that can no longer be read
    /// again, so its entry only costs memory and restore time; it is dropped (and the lead's
    /// record tombstoned once it holds none).
    #[serde(default = "default_ledger_retention")]
    #[eserde(compat)]
    pub ledger_retention: HumanDuration,
}

impl Default for DispatchConfig {
    fn default() -> Self {
        Self {
            max_in_flight: default_dispatch_in_flight(),
            request_timeout: default_request_timeout(),
            sink_concurrency: default_sink_concurrency(),
            retry_schedule: None,
            retry_min_delay: None,
            retry_max_delay: None,
            max_retries: None,
            retry_jitter: default_retry_jitter(),
            max_retry_after: default_max_retry_after(),
            ledger_retention: default_ledger_retention(),
        }
    }
}

fn default_dispatch_in_flight() -> usize {
    256
}
fn default_request_timeout() -> HumanDuration {
    HumanDuration(Duration::from_secs(10))
}
fn default_sink_concurrency() -> usize {
    16
}
fn default_retry_jitter() -> f64 {
    DEFAULT_JITTER
}
fn default_max_retry_after() -> HumanDuration {
    HumanDuration(DEFAULT_MAX_RETRY_AFTER)
}
fn default_ledger_retention() -> HumanDuration {
    HumanDuration(Duration::from_secs(7 * 86_400))
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

impl DispatchConfig {
    /// Every problem of `[dispatch]` beyond its types, keys relative to the section.
    pub fn problems(&self) -> KeyProblems {
        let mut problems = KeyProblems::new();
        if self.max_in_flight == 0 {
            problems.push(("max_in_flight".into(), "must be at least 1".into()));
        }
        let exponential = self.retry_min_delay.is_some()
            || self.retry_max_delay.is_some()
            || self.max_retries.is_some();
        if self.retry_schedule.is_some() && exponential {
            problems.push((
                "retry_schedule".into(),
                "give either `retry_schedule` or `retry_min_delay`/`retry_max_delay`/`max_retries`, \
                 not both"
                    .into(),
            ));
        }
        if let (Some(min), Some(max)) = (self.retry_min_delay, self.retry_max_delay)
            && min > max
        {
            problems.push((
                "retry_min_delay".into(),
                "must not be longer than `dispatch.retry_max_delay`".into(),
            ));
        }
        if !(0.0..=1.0).contains(&self.retry_jitter) {
            problems.push((
                "retry_jitter".into(),
                "must be between 0 and 1 (a fraction of each delay)".into(),
            ));
        }
        if self.sink_concurrency == 0 {
            problems.push(("sink_concurrency".into(), "must be at least 1".into()));
        }
        // An alert is retried until it is given up (twice the schedule's span, or the longest
        // Retry-After): its entry must outlive that, or a retry after a restart would send it
        // again where it already arrived.
        let schedule = Schedule::from(self);
        let retrying = schedule
            .span()
            .saturating_mul(2)
            .max(schedule.max_retry_after);
        let at_least = retrying.max(Duration::from_secs(86_400));
        if self.ledger_retention.0 < at_least {
            problems.push((
                "ledger_retention".into(),
                format!(
                    "must be at least {} (a day, and until a retried alert is given up: twice the \
                     retry schedule): the alerts topic's retention",
                    humantime::format_duration(at_least)
                ),
            ));
        }
        problems
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
    fn the_ledger_outlives_a_day_and_every_retry_of_an_alert() {
        let day = Duration::from_secs(86_400);
        assert!(DispatchConfig::default().problems().is_empty());
        let short = DispatchConfig {
            ledger_retention: HumanDuration(Duration::from_secs(3600)),
            ..DispatchConfig::default()
        };
        let problems = short.problems();
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert_eq!(problems[0].0, "ledger_retention");
        // The default schedule (about 27.6 h) is given up after twice that.
        assert!(problems[0].1.contains("2days 7h"), "{problems:?}");
        // Retries for two days (given up after four): a ledger of one day would forget
        // deliveries still retried.
        let long_retries = DispatchConfig {
            retry_schedule: Some(vec![HumanDuration(day), HumanDuration(day)]),
            ledger_retention: HumanDuration(day),
            ..DispatchConfig::default()
        };
        let problems = long_retries.problems();
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert!(problems[0].1.contains("4days"), "{problems:?}");
    }
}
