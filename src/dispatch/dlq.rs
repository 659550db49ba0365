//! Dead letters: an alert a sink refused for good (a 4xx other than 408/409/425/429, a second
//! 401 after a token refresh) or that ran out of retries goes to `{prefix}.alerts.dlq`, keyed by
//! alert id, with the sink, the attempts, the last status, error and body excerpt — and is counted
//! (`leadwatch_alert_deliveries_total{outcome="dead_lettered"}`).
//!
//! `leadwatch dlq replay --config PATH --sink NAME` re-sends one sink's dead letters after the
//! cause is fixed. It reads the topic from where the previous replay for that sink stopped (its
//! own consumer group, `{group_id}.dlq-replay.{sink}`, so replaying one sink never skips another's
//! letters), delivers each with a few quick retries (decided by [`super::retry::decide`], as live
//! delivery's are, on a short schedule of its own, waiting in the task), records each delivery
//! in the ledger (a record of that one delivery, as a revoked dispatcher does: merged at the
//! partition's next restore), writes those that fail again back to the topic, and commits its
//! position past each letter before the next: an interrupted replay resumes where it stopped and
//! re-sends nothing it sent (only a letter whose request was under way when it was stopped can
//! reach the sink twice). A record that is no dead letter this version can read is referenced in
//! the topic again with the reason (`sink = "(quarantine)"`), never skipped unseen; a letter
//! whose alert cannot be read is written back, failed again, with the reason. It says how many of
//! each.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use bytes::Bytes;
use jiff::Timestamp;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::{Message as _, Offset, TopicPartitionList};
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

use super::config::DispatchSections;
use super::ledger::Ledger;
use super::queue::SinkQueue;
use super::retry::{self, DEFAULT_JITTER, Decision, Schedule, Tries};
use super::routes::{self, Routes};
use super::sinks::attempt::ALERT_ID_MAX;
use super::sinks::{Attempt, Delivered, DeliveryError, Http};
use crate::alert::Alert;
use crate::bus::KafkaConfig;
use crate::bus::consumer::partition_count;
use crate::bus::producer::{Producer, QUARANTINE_SINK, Unreadable};
use crate::bus::{self, Topics};
use crate::clock::Clock;
use crate::partitioner::partition_for;
use crate::telemetry::Metrics;

/// How long one call to Kafka (metadata, offsets, the final flush) may take in a replay.
const KAFKA_TIMEOUT: Duration = Duration::from_secs(30);

/// How long reading the dead-letter topic to its end may take (2 minutes, as its error says).
const READ_DEADLINE: Duration = Duration::from_secs(120);

/// One record of `{prefix}.alerts.dlq`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DeadLetter {
    /// The sink that did not take it.
    pub sink: String,
    /// The alert as delivered.
    pub alert: serde_json::Value,
    /// Attempts made before giving up.
    pub attempts: u32,
    /// The last HTTP status, when there was an answer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<u16>,
    /// What went wrong, without secrets.
    pub error: String,
    /// The start of the last answer's body.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub body_excerpt: String,
    pub dead_at: Timestamp,
}

impl DeadLetter {
    /// The letter of `body` (the alert's JSON) that `sink` did not take by `now`; a body that is
    /// no JSON is kept as a string, so nothing of it is lost.
    pub fn new(sink: &str, body: &[u8], attempts: u32, e: &DeliveryError, now: Timestamp) -> Self {
        Self {
            sink: sink.to_string(),
            alert: serde_json::from_slice(body).unwrap_or_else(|_| {
                serde_json::Value::String(String::from_utf8_lossy(body).into_owned())
            }),
            attempts,
            status: e.status,
            error: e.message.clone(),
            body_excerpt: e.excerpt.clone(),
            dead_at: now,
        }
    }

    /// Its key: the alert id, when it is one (a letter refused for its id is keyed `invalid`).
    fn alert_id(&self) -> String {
        let id = self.alert["data"]["alert_id"].as_str().unwrap_or("unknown");
        let fits = id.len() <= ALERT_ID_MAX
            && id
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
        if fits { id } else { "invalid" }.to_string()
    }
}

/// Writes a dead letter and waits for Kafka (retrying, until `abandon`).
pub async fn write(
    producer: &Producer,
    topic: &str,
    letter: &DeadLetter,
    abandon: &tokio_util::sync::CancellationToken,
) -> bool {
    let bytes = serde_json::to_vec(letter).expect("a dead letter serializes");
    producer
        .send_until_acked(topic, &letter.alert_id(), Some(&bytes), abandon)
        .await
}

/// What a replay did.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct ReplayReport {
    pub sink: String,
    /// Dead letters of this sink read.
    pub found: usize,
    pub delivered: usize,
    /// Failed again: written back to the dead-letter topic.
    pub dead_again: usize,
    /// Dead letters of other sinks passed over.
    pub other_sinks: usize,
    /// Records that were no dead letter this version can read: referenced again in the
    /// dead-letter topic, with the reason.
    pub unreadable: usize,
}

impl std::fmt::Display for ReplayReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "replayed {} dead letter(s) to sink `{}`: {} delivered, {} failed again (back in the \
             dead-letter topic); {} for other sinks left as they are",
            self.found, self.sink, self.delivered, self.dead_again, self.other_sinks
        )?;
        if self.unreadable > 0 {
            write!(
                f,
                "; {} unreadable record(s) dead-lettered again with the reason",
                self.unreadable
            )?;
        }
        Ok(())
    }
}

/// One record of the dead-letter topic as a replay reads it.
#[derive(Debug)]
struct Read {
    partition: i32,
    offset: i64,
    letter: Letter,
}

#[derive(Debug)]
enum Letter {
    Dead(Box<DeadLetter>),
    /// A reference to a record that could not be read (`sink = "(quarantine)"`): no sink's.
    Quarantined,
    /// Not a dead letter this version can read, and why.
    Unreadable(String),
}

fn letter(payload: Option<&[u8]>) -> Letter {
    let payload = payload.unwrap_or_default();
    match serde_json::from_slice::<DeadLetter>(payload) {
        Ok(letter) => Letter::Dead(Box::new(letter)),
        Err(e) => {
            let sink = serde_json::from_slice::<serde_json::Value>(payload)
                .ok()
                .and_then(|v| v["sink"].as_str().map(str::to_string));
            if sink.as_deref() == Some(QUARANTINE_SINK) {
                Letter::Quarantined
            } else {
                Letter::Unreadable(format!("not a dead letter this version can read: {e}"))
            }
        }
    }
}

/// Reads every record of `partitions` from `group`'s committed offsets to the current end.
fn read_new(
    clock: &Clock,
    consumer: &BaseConsumer,
    topic: &str,
    partitions: usize,
) -> anyhow::Result<(Vec<Read>, TopicPartitionList)> {
    let timeout = KAFKA_TIMEOUT;
    let mut all = TopicPartitionList::new();
    for p in 0..partitions as i32 {
        all.add_partition(topic, p);
    }
    let committed = consumer
        .committed_offsets(all, timeout)
        .context("reading the replay's committed offsets")?;
    let mut assign = TopicPartitionList::new();
    let mut ends = BTreeMap::new();
    let mut done = TopicPartitionList::new();
    for e in committed.elements() {
        let p = e.partition();
        let (low, high) = consumer
            .fetch_watermarks(topic, p, timeout)
            .context("reading the dead-letter topic's end")?;
        // From where the last replay stopped, or the oldest letter retention kept.
        let start = match e.offset() {
            Offset::Offset(o) => o.max(low),
            _ => low,
        };
        done.add_partition_offset(topic, p, Offset::Offset(high))?;
        if start < high {
            assign.add_partition_offset(topic, p, Offset::Offset(start))?;
            ends.insert(p, high);
        }
    }
    let mut letters = Vec::new();
    if ends.is_empty() {
        return Ok((letters, done));
    }
    consumer.assign(&assign)?;
    let started = clock.instant();
    while !ends.is_empty() {
        anyhow::ensure!(
            clock.instant() - started < READ_DEADLINE,
            "the dead-letter topic could not be read to its end within 2 minutes"
        );
        let Some(msg) = consumer.poll(Duration::from_millis(200)) else {
            continue;
        };
        let msg = msg.context("reading the dead-letter topic")?;
        letters.push(Read {
            partition: msg.partition(),
            offset: msg.offset(),
            letter: letter(msg.payload()),
        });
        if let Some(end) = ends.get(&msg.partition())
            && msg.offset() + 1 >= *end
        {
            ends.remove(&msg.partition());
        }
    }
    Ok((letters, done))
}

/// Commits the replay's position in `partition` past `offset` (that letter is settled: sent
/// and recorded, written back, or passed over), so an interrupted replay resumes after it.
async fn commit_past(
    consumer: &Arc<BaseConsumer>,
    topic: &str,
    partition: i32,
    offset: i64,
) -> anyhow::Result<()> {
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset(topic, partition, Offset::Offset(offset + 1))?;
    let consumer = consumer.clone();
    tokio::task::spawn_blocking(move || consumer.commit(&tpl, CommitMode::Sync))
        .await
        .expect("the commit task panicked")
        .context("committing the replay's position")
}

/// `leadwatch dlq replay`: re-sends `sink`'s dead letters.
pub async fn replay(
    kafka: &KafkaConfig,
    config: DispatchSections<'_>,
    sink_name: &str,
    clock: &Clock,
) -> anyhow::Result<ReplayReport> {
    anyhow::ensure!(
        !kafka.is_embedded(),
        "dlq replay needs `kafka.brokers`: the embedded broker lives inside the running daemon"
    );
    let sink_config = config.sinks.get(sink_name).with_context(|| {
        let known: Vec<&str> = config.sinks.keys().map(String::as_str).collect();
        format!("no sink `{sink_name}` (configured: {})", known.join(", "))
    })?;
    let topics = Topics::new(&kafka.topic_prefix);
    let base = bus::client_config(kafka, &kafka.brokers);
    let metrics = Arc::new(Metrics::new());
    let producer = Producer::new(&base, metrics.clone()).context("creating the producer")?;
    // An unreadable record of the dead-letter topic is referenced there again, with its reason.
    producer.quarantine_to(&topics.dlq, clock.clone());
    let http = Http::new(config.dispatch.request_timeout.0, clock.clone())
        .context("building the HTTP client")?;
    let queue = SinkQueue::from_config(
        sink_name,
        sink_config,
        config.dispatch,
        http,
        metrics.clone(),
    );
    let routes = Routes::new(config.routes.to_vec(), config.sinks.keys().cloned());
    let templates =
        routes::templates(config.routes).map_err(|p| anyhow::anyhow!("templates: {p:?}"))?;

    let group = format!("{}.dlq-replay.{sink_name}", kafka.group_id);
    let mut cfg = base.clone();
    cfg.set("group.id", &group)
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("auto.offset.reset", "earliest");
    let consumer: BaseConsumer = cfg.create().context("creating the consumer")?;
    let topic = topics.dlq.clone();
    let reading_clock = clock.clone();
    let ledger_topic = topics.delivered.clone();
    let (consumer, (letters, done), ledger_partitions) = tokio::task::spawn_blocking(move || {
        let partitions = partition_count(&consumer, &topic, KAFKA_TIMEOUT)?;
        let ledger_partitions = partition_count(&consumer, &ledger_topic, KAFKA_TIMEOUT)?;
        let read = read_new(&reading_clock, &consumer, &topic, partitions as usize)?;
        anyhow::Ok((Arc::new(consumer), read, ledger_partitions))
    })
    .await
    .expect("the reading task panicked")?;

    let mut report = ReplayReport {
        sink: sink_name.to_string(),
        ..Default::default()
    };
    // A few quick retries, a Retry-After honoured up to a minute.
    let schedule = Schedule {
        delays: vec![
            Duration::from_secs(1),
            Duration::from_secs(5),
            Duration::from_secs(30),
        ],
        jitter: DEFAULT_JITTER,
        max_retry_after: Duration::from_secs(60),
    };
    let never = tokio_util::sync::CancellationToken::new();
    // Each letter is settled — sent and recorded in the ledger, written back, or passed over —
    // and the replay's position committed past it before the next: an interrupted replay
    // resumes where it stopped and re-sends nothing it sent.
    for Read {
        partition,
        offset,
        letter,
    } in letters
    {
        let letter = match letter {
            Letter::Dead(letter) if letter.sink == sink_name => letter,
            Letter::Dead(_) | Letter::Quarantined => {
                report.other_sinks += 1;
                commit_past(&consumer, &topics.dlq, partition, offset).await?;
                continue;
            }
            Letter::Unreadable(reason) => {
                let record = Unreadable {
                    topic: topics.dlq.clone(),
                    partition,
                    offset: Some(offset),
                    key: None,
                    reason,
                };
                anyhow::ensure!(
                    producer.dead_letter(&record, &never).await,
                    "could not dead-letter an unreadable record again"
                );
                report.unreadable += 1;
                commit_past(&consumer, &topics.dlq, partition, offset).await?;
                continue;
            }
        };
        report.found += 1;
        let body = Bytes::from(serde_json::to_vec(&letter.alert)?);
        let alert: Alert = match serde_json::from_slice(&body) {
            Ok(a) => a,
            Err(e) => {
                // Written back with the reason: never skipped and committed past unseen.
                tracing::error!(error = %e, "a dead letter's alert is unreadable; written back");
                let e =
                    DeliveryError::permanent(format!("the dead letter's alert is unreadable: {e}"));
                let again = DeadLetter::new(sink_name, &body, letter.attempts, &e, clock.now());
                anyhow::ensure!(
                    write(&producer, &topics.dlq, &again, &never).await,
                    "could not write a dead letter back"
                );
                report.dead_again += 1;
                commit_past(&consumer, &topics.dlq, partition, offset).await?;
                continue;
            }
        };
        let message = templates.render(
            &alert,
            routes.route_for(&alert, sink_name),
            queue.sink.style(),
        );
        // The same decision as live delivery's, on the replay's own quick schedule; the sink
        // sees the attempts numbered on from the letter's.
        let mut tries = Tries::default();
        let result = loop {
            tries.attempts += 1;
            let a = Attempt {
                alert: &alert,
                body: &body,
                attempt: letter.attempts + tries.attempts,
                maybe_attempted: true,
                message: &message,
            };
            let outcome = queue.attempt(&a, &CancellationToken::new()).await.result;
            match retry::decide(tries, outcome, &schedule, clock.now()) {
                Decision::Done(delivered) => break Ok(delivered),
                Decision::RetryAt {
                    after, tries: t, ..
                } => {
                    tries = t;
                    tokio::time::sleep(after).await;
                }
                // Paused for its credentials: the letter goes back, as one that failed again.
                Decision::DeadLetter(e) | Decision::Wait { error: e, .. } => break Err(e),
            }
        };
        match result {
            Ok(Delivered::Skipped(why)) => {
                tracing::warn!(alert_id = %alert.id(), %why, "not for this sink; dropped from the dead letters");
                report.delivered += 1;
            }
            Ok(_) => {
                tracing::info!(alert_id = %alert.id(), sink = sink_name, "dead letter re-sent");
                // The sink has it: recorded in the ledger as one delivery of its own (merged into
                // the lead's entry when the dispatcher restores that partition next, never
                // written over it).
                let lead = &alert.data.lead;
                let ledger_partition = partition_for(lead.as_bytes(), ledger_partitions);
                anyhow::ensure!(
                    Ledger::record_late(
                        &producer,
                        &topics.delivered,
                        ledger_partition,
                        0,
                        lead,
                        alert.id(),
                        sink_name,
                        clock.now(),
                        &never,
                    )
                    .await,
                    "could not record a delivery in the ledger"
                );
                report.delivered += 1;
            }
            Err(e) => {
                tracing::error!(alert_id = %alert.id(), sink = sink_name, error = %e, "failed again");
                let again = DeadLetter::new(
                    sink_name,
                    &body,
                    letter.attempts + tries.attempts,
                    &e,
                    clock.now(),
                );
                anyhow::ensure!(
                    write(&producer, &topics.dlq, &again, &never).await,
                    "could not write a dead letter back"
                );
                report.dead_again += 1;
            }
        }
        commit_past(&consumer, &topics.dlq, partition, offset).await?;
    }
    producer.flush(KAFKA_TIMEOUT).await;
    tokio::task::spawn_blocking(move || consumer.commit(&done, CommitMode::Sync))
        .await
        .expect("the commit task panicked")
        .context("committing the replay's position")?;
    Ok(report)
}
