//! Consumer groups: at-least-once (offsets stored by the caller only after the work a message
//! caused is in Kafka, then auto-committed), rebalances reported to the owning loop, and lag
//! published as a metric.

use std::sync::Arc;
use std::time::Duration;

use rdkafka::consumer::{
    BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance, StreamConsumer,
};
use rdkafka::error::KafkaError;
use rdkafka::statistics::Statistics;
use rdkafka::{ClientConfig, ClientContext, TopicPartitionList};
use tokio::sync::mpsc;

use super::KafkaConfig;
use crate::telemetry::Metrics;

/// A change of which partitions this member owns.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Assignment {
    /// Partitions given to this member, with the group's committed offset of each, where one
    /// was committed and could be read. The first offset read that is past it was jumped over:
    /// deleted (retention, trimming) before this group read it.
    Assigned(Vec<i32>, std::collections::HashMap<i32, i64>),
    Revoked(Vec<i32>),
}

/// A revocation, as a hook is told of it ([`RebalanceHooks::on_revoke`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Revocation {
    /// The partitions being revoked.
    pub partitions: Vec<i32>,
    /// Whether the member keeps other partitions of the topic (the group rebalances
    /// incrementally, `cooperative-sticky`: a revocation can be partial). Writes of a kept
    /// partition may be in the producer's queue beside the revoked ones'.
    pub keeps_others: bool,
    /// Whether the hook may wait for other tasks: not on a single-threaded runtime, where they
    /// would only run once the hook returns.
    pub can_wait: bool,
}

/// A hook given the partitions being revoked ([`RebalanceHooks::on_revoke`]).
pub type OnRevoke = Box<dyn Fn(&Revocation) + Send + Sync>;

/// What a member does when partitions move.
#[derive(Default)]
pub struct RebalanceHooks {
    /// Pause newly assigned partitions; the owning loop resumes each once its state is restored.
    pub pause_on_assign: bool,
    /// Runs on revocation, given the partitions revoked, before they move, on the consumer's
    /// thread (the one polling it, a tokio worker's, whose other tasks are moved to another
    /// worker meanwhile: [`on_consumer_thread`]): keep it bounded (flushing the producer, so
    /// the next owner reads every state change written so far), and wait for nothing that needs
    /// the loop polling the consumer.
    pub on_revoke: Option<OnRevoke>,
    /// Report reaching the end of a partition (`KafkaError::PartitionEOF`), so the owner knows it
    /// has read everything accepted so far.
    pub report_end: bool,
}

/// Forwards rebalances to the loop that owns the consumer, and reports lag.
pub struct GroupContext {
    group: String,
    topic: String,
    metrics: Arc<Metrics>,
    assignments: mpsc::UnboundedSender<Assignment>,
    hooks: RebalanceHooks,
}

impl ClientContext for GroupContext {
    fn error(&self, error: KafkaError, reason: &str) {
        super::log_client_error(&self.group, error, reason);
    }

    fn stats(&self, stats: Statistics) {
        if let Some(topic) = stats.topics.get(&self.topic) {
            let lag: i64 = topic
                .partitions
                .values()
                .filter(|p| p.partition >= 0 && p.consumer_lag >= 0)
                .map(|p| p.consumer_lag)
                .sum();
            self.metrics.set_consumer_lag(&self.group, lag);
        }
    }
}

fn partitions(tpl: &TopicPartitionList) -> Vec<i32> {
    tpl.elements().iter().map(|e| e.partition()).collect()
}

/// The group's committed offsets of `tpl`'s partitions (a short call to the group coordinator,
/// from the rebalance callback); none where it cannot be read.
fn committed(
    consumer: &BaseConsumer<GroupContext>,
    tpl: &TopicPartitionList,
) -> std::collections::HashMap<i32, i64> {
    if tpl.count() == 0 {
        return Default::default();
    }
    match consumer.committed_offsets(tpl.clone(), Duration::from_secs(10)) {
        Ok(committed) => committed
            .elements()
            .iter()
            .filter_map(|e| match e.offset() {
                rdkafka::Offset::Offset(o) => Some((e.partition(), o)),
                // Nothing committed yet: a group new to the topic starts at its earliest
                // record, and what retention deleted before it existed was never its to read.
                _ => None,
            })
            .collect(),
        Err(e) => {
            tracing::warn!(error = %e, "reading the committed offsets of assigned partitions failed; a skip at their first read is not detected");
            Default::default()
        }
    }
}

impl ConsumerContext for GroupContext {
    fn pre_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Revoke(tpl) = rebalance {
            let revoked = partitions(tpl);
            if let Some(hook) = &self.hooks.on_revoke {
                // Before the revocation is applied, the assignment still holds the revoked
                // partitions; unreadable, it is taken to hold others (the cautious answer).
                let held = consumer.assignment().map(|a| partitions(&a)).ok();
                let keeps_others = held.is_none_or(|held| keeps_others(&held, &revoked));
                on_consumer_thread(|can_wait| {
                    hook(&Revocation {
                        partitions: revoked.clone(),
                        keeps_others,
                        can_wait,
                    })
                });
            }
            let _ = self.assignments.send(Assignment::Revoked(revoked));
        }
    }

    fn post_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        match rebalance {
            Rebalance::Assign(tpl) => {
                if self.hooks.pause_on_assign
                    && tpl.count() > 0
                    && let Err(e) = consumer.pause(tpl)
                {
                    tracing::error!(group = %self.group, error = %e, "pausing assigned partitions failed");
                }
                let committed = committed(consumer, tpl);
                let _ = self
                    .assignments
                    .send(Assignment::Assigned(partitions(tpl), committed));
            }
            Rebalance::Error(e) => {
                tracing::warn!(group = %self.group, error = %e, "rebalance error")
            }
            Rebalance::Revoke(_) => {}
        }
    }

    fn commit_callback(&self, result: rdkafka::error::KafkaResult<()>, _: &TopicPartitionList) {
        if let Err(e) = result
            && !matches!(
                e,
                KafkaError::ConsumerCommit(rdkafka::error::RDKafkaErrorCode::NoOffset)
            )
        {
            tracing::warn!(group = %self.group, error = %e, "offset commit failed");
        }
    }
}

pub type GroupConsumer = StreamConsumer<GroupContext>;

/// Whether a member holding `held` keeps any partition once `revoked` is taken away.
pub fn keeps_others(held: &[i32], revoked: &[i32]) -> bool {
    held.iter().any(|p| !revoked.contains(p))
}

/// Runs `f` on the consumer's thread, a tokio worker, moving the worker's other tasks to
/// another thread while it blocks (ingest answering webhooks, the roles' writes). `f` is told
/// whether waiting for other tasks can work: not on a single-threaded runtime, where they would
/// only run once `f` returns.
pub fn on_consumer_thread<R>(f: impl FnOnce(bool) -> R) -> R {
    use tokio::runtime::{Handle, RuntimeFlavor};
    match Handle::try_current().map(|h| h.runtime_flavor()) {
        Ok(RuntimeFlavor::CurrentThread) => f(false),
        Ok(_) => tokio::task::block_in_place(|| f(true)),
        // A thread of its own (leaving the group at shutdown): tasks run elsewhere.
        Err(_) => f(true),
    }
}

/// How many partitions `topic` has, as the cluster `consumer` reaches says (blocking, up to
/// `timeout`); an error naming the topic when it has none (it does not exist).
pub fn partition_count(
    consumer: &rdkafka::consumer::BaseConsumer,
    topic: &str,
    timeout: Duration,
) -> anyhow::Result<i32> {
    use anyhow::Context as _;
    let metadata = consumer
        .fetch_metadata(Some(topic), timeout)
        .with_context(|| format!("reading the partitions of `{topic}`"))?;
    let partitions = metadata
        .topics()
        .first()
        .map_or(0, |t| t.partitions().len());
    anyhow::ensure!(partitions > 0, "topic `{topic}` does not exist");
    Ok(partitions as i32)
}

/// Joins `group` and subscribes to `topic`.
pub fn subscribe(
    base: &ClientConfig,
    kafka: &KafkaConfig,
    group: &str,
    topic: &str,
    metrics: Arc<Metrics>,
    hooks: RebalanceHooks,
) -> Result<(GroupConsumer, mpsc::UnboundedReceiver<Assignment>), KafkaError> {
    let cfg = group_config(base, kafka, group, hooks.report_end);
    let (tx, rx) = mpsc::unbounded_channel();
    let ctx = GroupContext {
        group: group.to_string(),
        topic: topic.to_string(),
        metrics,
        assignments: tx,
        hooks,
    };
    let consumer: GroupConsumer = cfg.create_with_context(ctx)?;
    consumer.subscribe(&[topic])?;
    Ok((consumer, rx))
}

/// The configuration of a member of `group`: `base` and `[kafka.options]`, then what
/// at-least-once processing rests on, and static membership when `kafka.instance_id` is set.
fn group_config(
    base: &ClientConfig,
    kafka: &KafkaConfig,
    group: &str,
    report_end: bool,
) -> ClientConfig {
    let session_ms = kafka.session_timeout.as_millis().max(1000);
    let mut cfg = ClientConfig::new();
    // Defaults a user may change in `[kafka.options]` …
    cfg.set("auto.commit.interval.ms", "1000");
    cfg.set("statistics.interval.ms", "5000");
    // Incremental rebalancing: a member joining or leaving moves only the partitions that must
    // move, so only those are restored, instead of every partition of every member.
    cfg.set("partition.assignment.strategy", "cooperative-sticky");
    for (k, v) in base.config_map() {
        cfg.set(k, v);
    }
    // … and what at-least-once processing rests on.
    cfg.set("group.id", group)
        .set("enable.auto.commit", "true")
        .set("enable.auto.offset.store", "false")
        // A partition with no committed offset is read from its start, never skipped.
        .set("auto.offset.reset", "earliest")
        .set("session.timeout.ms", session_ms.to_string())
        .set(
            "heartbeat.interval.ms",
            (session_ms / 3).max(100).to_string(),
        )
        .set("enable.partition.eof", report_end.to_string());
    if let Some(id) = &kafka.instance_id {
        // Static membership: a restart within the session timeout keeps the partitions.
        cfg.set("group.instance.id", id);
    }
    cfg
}

/// Stores `offset` (of a message whose work is done) for the next auto-commit.
pub fn store(consumer: &GroupConsumer, topic: &str, partition: i32, offset: i64) {
    if let Err(e) = consumer.store_offset(topic, partition, offset) {
        // The partition was revoked meanwhile: its new owner redoes the work.
        tracing::debug!(topic, partition, offset, error = %e, "offset not stored");
    }
}

/// Resumes fetching one partition (after its state was restored).
pub fn resume(consumer: &GroupConsumer, topic: &str, partition: i32) {
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition(topic, partition);
    if let Err(e) = consumer.resume(&tpl) {
        tracing::warn!(topic, partition, error = %e, "resuming a partition failed");
    }
}

/// Commits stored offsets synchronously and leaves the group (shutdown), for at most
/// `timeout`. The work runs on a thread of its own, not tokio's blocking pool: with the brokers
/// gone, librdkafka's close never finishes, and a runtime shutting down waits for its blocking
/// tasks — the process would hang at exit.
pub async fn close(consumer: GroupConsumer, timeout: Duration) {
    let (done, closed) = tokio::sync::oneshot::channel::<()>();
    let spawned = std::thread::Builder::new()
        .name("consumer-close".into())
        .spawn(move || {
            if let Err(e) = consumer.commit_consumer_state(CommitMode::Sync)
                && !matches!(
                    e,
                    KafkaError::ConsumerCommit(rdkafka::error::RDKafkaErrorCode::NoOffset)
                )
            {
                tracing::warn!(error = %e, "final offset commit failed");
            }
            consumer.unsubscribe();
            drop(consumer);
            let _ = done.send(());
        });
    match spawned {
        Ok(_) => {
            if tokio::time::timeout(timeout, closed).await.is_err() {
                tracing::warn!(
                    ?timeout,
                    "leaving the consumer group did not finish in time"
                );
            }
        }
        Err(e) => tracing::warn!(error = %e, "could not start the consumer close"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kafka(instance_id: Option<&str>) -> KafkaConfig {
        let raw = crate::bus::config::RawKafkaConfig::default();
        KafkaConfig {
            instance_id: instance_id.map(str::to_string),
            ..raw.into()
        }
    }

    /// A revocation is partial when the member keeps any other partition (cooperative-sticky
    /// takes only what must move): then the revocation hooks purge nothing.
    #[test]
    fn a_revocation_keeps_others_unless_it_takes_every_partition_held() {
        assert!(keeps_others(&[0, 1, 2], &[1]));
        assert!(!keeps_others(&[0, 1, 2], &[2, 0, 1]));
        assert!(!keeps_others(&[3], &[3]));
        assert!(!keeps_others(&[], &[]));
    }

    /// `kafka.instance_id` makes each of the instance's groups' members static
    /// (`group.instance.id`); unset, membership is dynamic as before.
    #[test]
    fn an_instance_id_makes_the_member_static() {
        let base = ClientConfig::new();
        let dynamic = group_config(&base, &kafka(None), "lw.dispatch", false);
        assert_eq!(dynamic.get("group.instance.id"), None);
        assert_eq!(dynamic.get("group.id"), Some("lw.dispatch"));
        let fixed = group_config(&base, &kafka(Some("leadwatch-0")), "lw.dispatch", false);
        assert_eq!(fixed.get("group.instance.id"), Some("leadwatch-0"));
        assert_eq!(fixed.get("enable.auto.offset.store"), Some("false"));
    }
}
