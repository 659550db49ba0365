//! `[engine]`: how the engine holds lead state — its reorder window, retention and the sweep
//! that applies it — and how much work it keeps in flight.

use std::time::Duration;

use crate::conf::{HumanDuration, KeyProblems};

/// Default reorder window: how far back in event time a late event still takes its place.
pub const DEFAULT_REORDER_WINDOW: Duration = Duration::from_secs(3600);

/// The SLA engine.
#[derive(Debug, Clone, eserde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EngineConfig {
    /// Most events whose outputs are waiting for Kafka's acknowledgement at once.
    #[serde(default = "default_in_flight")]
    pub max_in_flight: usize,
    /// A lead that was closed, converted, deleted or merged, with nothing pending, is dropped from
    /// the state (tombstoned in `{prefix}.state`) this long after it ended.
    #[serde(default = "default_retention")]
    #[eserde(compat)]
    pub state_retention: HumanDuration,
    /// Any other lead with nothing pending is dropped after this long without an event.
    #[serde(default = "default_idle_retention")]
    #[eserde(compat)]
    pub idle_retention: HumanDuration,
    /// How often leads past their retention are looked for.
    #[serde(default = "default_sweep")]
    #[eserde(compat)]
    pub sweep_interval: HumanDuration,
    /// Longest a partition's state restore may take before it is retried.
    #[serde(default = "default_restore_timeout")]
    #[eserde(compat)]
    pub restore_timeout: HumanDuration,
    /// How far back in event time a late event still takes its place among a lead's events (and
    /// can change an outcome); older ones are applied as they come.
    #[serde(default = "default_reorder_window")]
    #[eserde(compat)]
    pub reorder_window: HumanDuration,
    /// What the leads may hold in memory, in MiB (estimated, see `leadwatch_engine_held_bytes`).
    /// Over it, the reorder window gives way first: it is halved, down to nothing, and the
    /// windows fold early; it grows back a step at each sweep once memory is under 80 % of the
    /// budget. The default leaves room in the shipped manifest's 1 GiB for ingest, dispatch and
    /// the Kafka clients.
    #[serde(default = "default_memory_budget_mib")]
    pub memory_budget_mib: usize,
    /// How often the leads changed since the last flush are written to `{prefix}.state`: a lead
    /// is written once per interval however many events it had (its alerts, then its state), and
    /// an event's offset is stored only once that write is acknowledged. A crash loses no more
    /// than the events of the last interval, which are read again. At most an hour.
    #[serde(default = "default_flush_interval")]
    #[eserde(compat)]
    pub flush_interval: HumanDuration,
}

impl Default for EngineConfig {
    fn default() -> Self {
        Self {
            max_in_flight: default_in_flight(),
            state_retention: default_retention(),
            idle_retention: default_idle_retention(),
            sweep_interval: default_sweep(),
            restore_timeout: default_restore_timeout(),
            reorder_window: default_reorder_window(),
            memory_budget_mib: default_memory_budget_mib(),
            flush_interval: default_flush_interval(),
        }
    }
}

fn default_retention() -> HumanDuration {
    HumanDuration(Duration::from_secs(30 * 24 * 3600))
}
fn default_idle_retention() -> HumanDuration {
    HumanDuration(Duration::from_secs(365 * 24 * 3600))
}
fn default_sweep() -> HumanDuration {
    HumanDuration(Duration::from_secs(60))
}
fn default_reorder_window() -> HumanDuration {
    HumanDuration(DEFAULT_REORDER_WINDOW)
}
fn default_restore_timeout() -> HumanDuration {
    HumanDuration(Duration::from_secs(600))
}

fn default_flush_interval() -> HumanDuration {
    HumanDuration(Duration::from_millis(250))
}

fn default_memory_budget_mib() -> usize {
    640
}

fn default_in_flight() -> usize {
    10_000
}

impl EngineConfig {
    /// Every problem of `[engine]` beyond its types, keys relative to the section.
    pub fn problems(&self) -> KeyProblems {
        let mut problems = KeyProblems::new();
        if self.max_in_flight == 0 {
            problems.push(("max_in_flight".into(), "must be at least 1".into()));
        }
        if self.memory_budget_mib == 0 {
            problems.push(("memory_budget_mib".into(), "must be at least 1".into()));
        }
        if self.flush_interval.0 > Duration::from_secs(3600) {
            problems.push((
                "flush_interval".into(),
                "must be at most 1h (events' offsets wait for it)".into(),
            ));
        }
        problems
    }

    /// How long a lead's state is kept once nothing is pending for it.
    pub fn retention(&self) -> super::Retention {
        super::Retention {
            ended: self.state_retention.0,
            idle: self.idle_retention.0,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_flush_interval_defaults_to_a_quarter_second_and_may_not_pass_an_hour() {
        let config = EngineConfig::default();
        assert_eq!(config.flush_interval.0, Duration::from_millis(250));
        assert!(config.problems().is_empty());
        let config = EngineConfig {
            flush_interval: HumanDuration(Duration::from_secs(7200)),
            ..EngineConfig::default()
        };
        let keys: Vec<String> = config.problems().into_iter().map(|(k, _)| k).collect();
        assert_eq!(keys, ["flush_interval"]);
    }
}
