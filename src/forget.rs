//! `leadwatch forget --lead KEY`: erase one lead's state on request (a data-protection request),
//! and say what still holds it.

use std::time::Duration;

use anyhow::Context as _;
use rdkafka::admin::{AdminClient, AdminOptions, ResourceSpecifier};
use rdkafka::client::DefaultClientContext;

use crate::bus::KafkaConfig;
use crate::bus::producer::Producer;
use crate::bus::{self, Topics};
use crate::clock::Clock;
use crate::event::{Change, LeadEvent};
use crate::telemetry::Metrics;

/// Tombstones the lead in the state and delivery changelogs and asks the running engine (through
/// the events topic, in order with the lead's other events) to drop it from memory. Returns what
/// to tell the user.
pub async fn forget(kafka: &KafkaConfig, lead: &str, clock: &Clock) -> anyhow::Result<String> {
    anyhow::ensure!(
        !kafka.is_embedded(),
        "forget needs `kafka.brokers`: the embedded broker lives inside the running daemon and \
         forgets everything when it stops"
    );
    let topics = Topics::new(&kafka.topic_prefix);
    let base = bus::client_config(kafka, &kafka.brokers);
    let producer = Producer::new(&base, std::sync::Arc::new(Metrics::new()))
        .context("creating the producer")?;
    let now = clock.now();
    let request = LeadEvent {
        id: format!("forget-{}", now.as_nanosecond()),
        source: "leadwatch-forget".into(),
        lead: lead.to_string(),
        occurred_at: now,
        received_at: now,
        change: Change::Forgotten {},
    };
    let payload = serde_json::to_vec(&request)?;
    let writes = [
        producer.enqueue(&topics.state, lead, None),
        producer.enqueue(&topics.delivered, lead, None),
        producer.enqueue(&topics.retry, lead, None),
        producer.enqueue(&topics.events, lead, Some(&payload)),
    ];
    for write in writes {
        let delivery = write.context("queueing the erasure")?;
        match tokio::time::timeout(Duration::from_secs(30), delivery).await {
            Ok(Ok(Ok(_))) => {}
            Ok(Ok(Err((e, _)))) => return Err(e).context("Kafka refused the erasure"),
            Ok(Err(_)) | Err(_) => {
                anyhow::bail!("Kafka did not acknowledge the erasure within 30 s")
            }
        }
    }

    let retention = retention_of(
        &base,
        &[&topics.events, &topics.raw, &topics.alerts, &topics.dlq],
    )
    .await;
    let mut report = format!(
        "lead `{lead}` erased: tombstones written to {}, {} and {} (compaction removes the \
         older records), and the running engine drops it from memory when it reads the request.\n\
         Still held until their retention ends:\n",
        topics.state, topics.delivered, topics.retry
    );
    for (topic, what) in [
        (&topics.events, "the lead's events"),
        (&topics.raw, "the raw requests that carried them"),
        (&topics.alerts, "alerts about the lead"),
        (&topics.dlq, "dead-lettered alerts about the lead"),
    ] {
        let until = retention
            .iter()
            .find(|(t, _)| t == topic)
            .map(|(_, r)| r.clone())
            .unwrap_or_else(|| "the topic's retention.ms".into());
        report.push_str(&format!("  {topic}: {what} ({until})\n"));
    }
    report.push_str("  and whatever the sinks (CRM, chat, webhook receivers) received.\n");
    Ok(report)
}

/// `retention.ms` of each topic, in words, where the cluster tells it.
async fn retention_of(base: &rdkafka::ClientConfig, topics: &[&String]) -> Vec<(String, String)> {
    let Ok(admin) = base.create::<AdminClient<DefaultClientContext>>() else {
        return Vec::new();
    };
    let specs: Vec<ResourceSpecifier<'_>> =
        topics.iter().map(|t| ResourceSpecifier::Topic(t)).collect();
    let opts = AdminOptions::new().request_timeout(Some(Duration::from_secs(5)));
    let Ok(results) = admin.describe_configs(specs.iter(), &opts).await else {
        return Vec::new();
    };
    results
        .into_iter()
        .zip(topics)
        .filter_map(|(r, topic)| {
            let resource = r.ok()?;
            let ms: i64 = resource
                .get("retention.ms")?
                .value
                .as_deref()?
                .parse()
                .ok()?;
            let text = if ms < 0 {
                "kept forever: retention.ms=-1".to_string()
            } else {
                format!(
                    "retention {}",
                    humantime::format_duration(Duration::from_millis(ms as u64))
                )
            };
            Some((topic.to_string(), text))
        })
        .collect()
}
