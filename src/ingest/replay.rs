//! `leadwatch replay`: re-normalise the raw requests of one source (`{prefix}.raw`) with the
//! current configuration, and produce the events again on `{prefix}.events` — after a mapping was
//! corrected, or once a payload that could not be parsed can be.
//!
//! Why this is safe to run (and to run twice):
//! - A replayed event's id is `replay:{run}:{original id}`. The engine ignores event ids it has
//!   already applied, so the original id would be dropped as a duplicate — and with it the
//!   corrected mapping; the new id gets through, and the prefix marks it as replayed (the
//!   original id is the rest of it, for anything that counts distinct vendor events).
//! - Re-applying is harmless: the engine applies a field by event time (a replayed old value
//!   never overwrites a newer one), a touch only ever moves the first touch earlier, and alert
//!   ids are a hash of (lead, rule, level, clock start) — an alert that already fired is not sent
//!   again.
//! - Events keep their original `occurred_at` and `received_at`.

use std::time::Duration;

use anyhow::{Context as _, bail};
use jiff::Timestamp;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::{Message, Offset, TopicPartitionList};

use super::Source;
use super::raw::RawRecord;
use super::receive::encode;
use super::{ServerConfig, SourceConfig};
use crate::bus::KafkaConfig;
use crate::bus::producer::Producer;
use crate::bus::{self, Topics};
use crate::clock::Clock;
use crate::telemetry::Metrics;

/// What a replay did.
#[derive(Debug, Default)]
pub struct ReplayReport {
    /// The run's mark, in every replayed event's id.
    pub run: String,
    /// Raw records of the source in the time range.
    pub records: usize,
    /// Events produced.
    pub events: usize,
    /// Records that still cannot be parsed: (received_at, why).
    pub failed: Vec<(Timestamp, String)>,
}

impl std::fmt::Display for ReplayReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(
            f,
            "replay {}: {} raw record(s), {} event(s) produced, {} record(s) not parsed",
            self.run,
            self.records,
            self.events,
            self.failed.len()
        )?;
        for (at, why) in &self.failed {
            writeln!(f, "  {at}: {why}")?;
        }
        Ok(())
    }
}

/// The id a replayed event gets.
pub fn replay_id(run: &str, original: &str) -> String {
    format!("replay:{run}:{original}")
}

/// Replays the raw records of `source` received in `[from, until)`; `clock` names the run.
pub async fn replay(
    kafka: &KafkaConfig,
    server: &ServerConfig,
    sources: &std::collections::BTreeMap<String, SourceConfig>,
    source: &str,
    from: Option<Timestamp>,
    until: Option<Timestamp>,
    clock: &Clock,
) -> anyhow::Result<ReplayReport> {
    let Some(source_cfg) = sources.get(source) else {
        bail!("no `[sources.{source}]` in the configuration");
    };
    if kafka.is_embedded() {
        bail!(
            "replay reads `{}.raw` from `kafka.brokers`; the embedded broker lives only inside a \
             running daemon",
            kafka.topic_prefix
        );
    }
    let handler = Source::from_config(source, source_cfg, server);
    let topics = Topics::new(&kafka.topic_prefix);
    let base = bus::client_config(kafka, &kafka.brokers);
    let run = clock.now().as_millisecond().to_string();

    let records = {
        let base = base.clone();
        let topic = topics.raw.clone();
        let source = source.to_string();
        let clock = clock.clone();
        tokio::task::spawn_blocking(move || read_raw(&base, &topic, &source, from, until, &clock))
            .await
            .context("reading the raw topic")??
    };

    let producer = Producer::new(&base, std::sync::Arc::new(Metrics::new()))
        .context("creating the Kafka producer")?;
    let mut report = ReplayReport {
        run: run.clone(),
        records: records.len(),
        ..ReplayReport::default()
    };
    for record in records {
        if record.truncated {
            report.failed.push((
                record.received_at,
                "the body was too large to keep whole".into(),
            ));
            continue;
        }
        let body = match record.body_bytes() {
            Ok(b) => b,
            Err(e) => {
                report.failed.push((record.received_at, e));
                continue;
            }
        };
        if record.kind != handler.handler.kind() {
            report.failed.push((
                record.received_at,
                format!(
                    "captured from a `{}` source; `{source}` is now `{}`",
                    record.kind,
                    handler.handler.kind()
                ),
            ));
            continue;
        }
        let parsed = match handler.parse(&body, record.received_at) {
            Ok(p) => p,
            Err(e) => {
                report.failed.push((record.received_at, e.describe()));
                continue;
            }
        };
        let payloads: Vec<(String, Vec<u8>)> = parsed
            .events
            .into_iter()
            .map(|mut e| {
                e.id = replay_id(&run, &e.id);
                let payload = encode(&e);
                (e.lead, payload)
            })
            .collect();
        let batch: Vec<(&str, &str, Vec<u8>)> = payloads
            .iter()
            .map(|(lead, p)| (topics.events.as_str(), lead.as_str(), p.clone()))
            .collect();
        producer
            .send_all(&batch, Duration::from_secs(30))
            .await
            .context("producing replayed events")?;
        report.events += batch.len();
    }
    producer.flush(Duration::from_secs(10)).await;
    Ok(report)
}

/// Every raw record of `source` received in the range, from every partition up to its end at
/// the start of the replay.
fn read_raw(
    base: &rdkafka::ClientConfig,
    topic: &str,
    source: &str,
    from: Option<Timestamp>,
    until: Option<Timestamp>,
    clock: &Clock,
) -> anyhow::Result<Vec<RawRecord>> {
    let mut cfg = base.clone();
    cfg.set(
        "group.id",
        format!("leadwatch-replay-{}", clock.now().as_millisecond()),
    )
    .set("enable.auto.commit", "false")
    .set("enable.auto.offset.store", "false")
    .set("auto.offset.reset", "earliest");
    let consumer: BaseConsumer = cfg.create().context("creating the Kafka consumer")?;
    let timeout = Duration::from_secs(10);
    let metadata = consumer
        .fetch_metadata(Some(topic), timeout)
        .with_context(|| format!("reading the metadata of `{topic}`"))?;
    let partitions: Vec<i32> = metadata
        .topics()
        .iter()
        .filter(|t| t.name() == topic)
        .flat_map(|t| t.partitions().iter().map(|p| p.id()))
        .collect();
    if partitions.is_empty() {
        bail!("the topic `{topic}` does not exist");
    }
    let mut ends = std::collections::HashMap::new();
    let mut assignment = TopicPartitionList::new();
    for &p in &partitions {
        let (low, high) = consumer
            .fetch_watermarks(topic, p, timeout)
            .with_context(|| format!("reading the end of `{topic}` [{p}]"))?;
        if high > low {
            ends.insert(p, high);
            let start = match from {
                Some(t) => Offset::Offset(t.as_millisecond()),
                None => Offset::Beginning,
            };
            assignment.add_partition_offset(topic, p, start)?;
        }
    }
    if from.is_some() && assignment.count() > 0 {
        assignment = consumer
            .offsets_for_times(assignment, timeout)
            .context("finding the offsets of `--from`")?;
        // A partition with nothing at or after `--from` has nothing to replay.
        for elem in assignment.elements() {
            if matches!(elem.offset(), Offset::End | Offset::Invalid) {
                ends.remove(&elem.partition());
            }
        }
    }
    consumer.assign(&assignment)?;
    let mut records = Vec::new();
    let mut last_progress = clock.instant();
    while !ends.is_empty() {
        match consumer.poll(Duration::from_millis(500)) {
            Some(Ok(msg)) => {
                last_progress = clock.instant();
                let partition = msg.partition();
                if let Some(end) = ends.get(&partition)
                    && msg.offset() + 1 >= *end
                {
                    ends.remove(&partition);
                }
                if msg.key() != Some(source.as_bytes()) {
                    continue;
                }
                let Some(payload) = msg.payload() else {
                    continue;
                };
                let Ok(record) = serde_json::from_slice::<RawRecord>(payload) else {
                    continue;
                };
                let in_range = from.is_none_or(|f| record.received_at >= f)
                    && until.is_none_or(|u| record.received_at < u);
                if record.source == source && in_range {
                    records.push(record);
                }
            }
            Some(Err(e)) => return Err(e).context("reading the raw topic"),
            None => {
                if clock.instant().duration_since(last_progress) > Duration::from_secs(30) {
                    bail!("no progress reading `{topic}` for 30 s");
                }
            }
        }
    }
    Ok(records)
}
