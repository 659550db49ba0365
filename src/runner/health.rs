//! Liveness means progress: every stage's loop says when it turns, and its consumer-group
//! skeleton says, per partition, when work starts waiting and when it moves on. A loop that has
//! not turned, or a partition whose work has waited without moving on, for `stall_timeout` is
//! *stalled*: `/healthz` fails, naming it, so the orchestrator restarts the pod.
//!
//! Progress, precisely:
//! - a loop turns each time it comes back for its next event (at least once a second when idle);
//! - a partition *waits* while messages were handed to the stage whose work is not done (its
//!   offsets are not stored yet), or while its changelogs are being read back; it *moves on*
//!   when an offset is stored, a restore reads records, or it is ready; a partition with nothing
//!   in flight (idle, or read to its end) never stalls, however long it is quiet.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::Serialize;
use tokio::time::Instant;

use crate::clock::Clock;
use crate::telemetry::Metrics;

/// What a waiting partition waits for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Waiting {
    /// Messages were handed to the stage and their work (writes to Kafka, deliveries) is not done.
    WorkInFlight,
    /// Its changelogs are being read back.
    Restore,
}

/// A loop or partition that made no progress for the stall time.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Stalled {
    pub stage: &'static str,
    /// The partition; none for the stage's loop itself.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub partition: Option<i32>,
    /// What is waiting: `loop` (it has not turned), `work_in_flight` or `restore`.
    pub waiting: String,
    /// Seconds since it last moved.
    pub for_seconds: u64,
}

#[derive(Debug)]
struct Stage {
    turned: Instant,
    partitions: BTreeMap<i32, (Waiting, Instant)>,
}

/// Every stage's progress, shared by the stages and `/healthz`.
#[derive(Debug)]
pub struct Liveness {
    clock: Clock,
    stall: Duration,
    stages: Mutex<BTreeMap<&'static str, Stage>>,
    metrics: Arc<Metrics>,
}

impl Liveness {
    /// Loops and partitions are stalled after `stall` without progress.
    pub fn new(clock: Clock, stall: Duration, metrics: Arc<Metrics>) -> Arc<Self> {
        Arc::new(Self {
            clock,
            stall,
            stages: Mutex::new(BTreeMap::new()),
            metrics,
        })
    }

    /// The handle `stage` reports through; it starts anew (no partition waiting, the loop just
    /// turned), as a stage does when its supervisor (re)starts it.
    pub fn stage(self: &Arc<Self>, stage: &'static str) -> Beat {
        let beat = Beat {
            liveness: self.clone(),
            stage,
        };
        beat.reset();
        beat
    }

    /// What is stalled now; also published as `leadwatch_stalled{stage}`.
    pub fn stalled(&self) -> Vec<Stalled> {
        let now = self.clock.instant();
        let stages = self.stages.lock().expect("liveness lock");
        let mut out = Vec::new();
        for (stage, s) in stages.iter() {
            let before = out.len();
            let quiet = now.saturating_duration_since(s.turned);
            if quiet > self.stall {
                out.push(Stalled {
                    stage,
                    partition: None,
                    waiting: "loop".into(),
                    for_seconds: quiet.as_secs(),
                });
            }
            for (partition, (waiting, since)) in &s.partitions {
                let quiet = now.saturating_duration_since(*since);
                if quiet > self.stall {
                    out.push(Stalled {
                        stage,
                        partition: Some(*partition),
                        waiting: match waiting {
                            Waiting::WorkInFlight => "work_in_flight".into(),
                            Waiting::Restore => "restore".into(),
                        },
                        for_seconds: quiet.as_secs(),
                    });
                }
            }
            self.metrics.set_stalled(stage, (out.len() - before) as i64);
        }
        out
    }

    fn with(&self, stage: &'static str, f: impl FnOnce(&mut Stage, Instant)) {
        let now = self.clock.instant();
        let mut stages = self.stages.lock().expect("liveness lock");
        let s = stages.entry(stage).or_insert_with(|| Stage {
            turned: now,
            partitions: BTreeMap::new(),
        });
        f(s, now);
    }
}

/// One stage's reports.
#[derive(Debug, Clone)]
pub struct Beat {
    liveness: Arc<Liveness>,
    stage: &'static str,
}

impl Beat {
    /// The stage's loop turned.
    pub fn turned(&self) {
        self.liveness.with(self.stage, |s, now| s.turned = now);
    }

    /// The partition waits for `what`; the clock runs from when it started waiting for it.
    pub fn waiting(&self, partition: i32, what: Waiting) {
        self.liveness.with(self.stage, |s, now| {
            let entry = s.partitions.entry(partition).or_insert((what, now));
            if entry.0 != what {
                *entry = (what, now);
            }
        });
    }

    /// The partition moved on; it still waits (for what it waited for) when `still` is true.
    pub fn progressed(&self, partition: i32, still: bool) {
        self.liveness.with(self.stage, |s, now| {
            if still {
                if let Some(entry) = s.partitions.get_mut(&partition) {
                    entry.1 = now;
                }
            } else {
                s.partitions.remove(&partition);
            }
        });
    }

    /// The partition waits for nothing (ready and idle, or no longer ours).
    pub fn idle(&self, partition: i32) {
        self.progressed(partition, false);
    }

    /// The stage starts anew.
    pub fn reset(&self) {
        self.liveness.with(self.stage, |s, now| {
            s.turned = now;
            s.partitions.clear();
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stalled(l: &Liveness) -> Vec<(Option<i32>, String)> {
        l.stalled()
            .into_iter()
            .map(|s| (s.partition, s.waiting))
            .collect()
    }

    /// Only waiting without moving on stalls: an idle partition never does, a partition whose
    /// offsets keep being stored never does, a loop that turns never does.
    #[tokio::test(start_paused = true)]
    async fn a_partition_or_loop_stalls_only_when_it_waits_without_moving_on() {
        let metrics = Arc::new(Metrics::new());
        let l = Liveness::new(Clock::system(), Duration::from_secs(60), metrics.clone());
        let beat = l.stage("engine");
        beat.waiting(0, Waiting::WorkInFlight);
        beat.waiting(1, Waiting::WorkInFlight);
        beat.idle(1);
        beat.waiting(2, Waiting::Restore);
        for _ in 0..5 {
            tokio::time::advance(Duration::from_secs(30)).await;
            beat.turned();
            // Partition 2 reads its changelog; partition 0's work never finishes.
            beat.progressed(2, true);
            // Waiting again for the same thing does not restart its clock.
            beat.waiting(0, Waiting::WorkInFlight);
        }
        assert_eq!(stalled(&l), [(Some(0), "work_in_flight".to_string())]);
        assert!(
            metrics
                .encode()
                .contains("leadwatch_stalled{stage=\"engine\"} 1")
        );
        beat.progressed(0, true);
        assert!(stalled(&l).is_empty());

        // A loop that stops turning stalls; a stage that starts anew does not.
        tokio::time::advance(Duration::from_secs(61)).await;
        assert_eq!(
            stalled(&l),
            [
                (None, "loop".to_string()),
                (Some(0), "work_in_flight".to_string()),
                (Some(2), "restore".to_string())
            ]
        );
        let again = l.stage("engine");
        assert!(stalled(&l).is_empty());
        again.turned();
    }
}
