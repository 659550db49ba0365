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

/// Tombstones the lead in the state and delivery changelogs (its entry, and the records of its
/// late deliveries) and asks the running engine (through
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
    let Scanned {
        partition,
        late,
        generation,
    } = scan(&base, &topics, lead, clock).await?;
    let marker = bus::changelog::stamp(
        generation,
        &serde_json::to_vec(&bus::changelog::Forgotten {
            lead: lead.to_string(),
            at: now,
        })?,
    );
    let marker_key = bus::changelog::forgot_key(lead);
    let mut writes = vec![
        producer.enqueue(&topics.state, lead, None),
        producer.enqueue(&topics.delivered, lead, None),
        producer.enqueue(&topics.retry, lead, None),
    ];
    // A late delivery's record names the lead under a key of its own: left there, the next
    // restore would fold it back into the lead's entry.
    for key in &late {
        writes.push(producer.enqueue_at(&topics.delivered, Some(partition), key, None));
    }
    // One written after the partition was read (a dispatcher that lost the partition, its
    // delivery under way) is dropped at restore by the marker.
    writes.push(producer.enqueue_at(
        &topics.delivered,
        Some(partition),
        &marker_key,
        Some(&marker),
    ));
    writes.push(producer.enqueue(&topics.events, lead, Some(&payload)));
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
        "lead `{lead}` erased: tombstones written to {}, {} (its entry and {} late-delivery \
         record{}) with a marker that drops those landing later, and {} (compaction removes \
         the older records), and the running engine drops it from memory when it reads the request.\n\
         Still held until their retention ends:\n",
        topics.state,
        topics.delivered,
        late.len(),
        if late.len() == 1 { "" } else { "s" },
        topics.retry
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

/// What `forget` read of the lead's partition of the delivery ledger.
struct Scanned {
    /// The partition of the lead's alerts, its ledger entry and its late deliveries.
    partition: i32,
    /// The keys of the late-delivery records (see `dispatch::ledger::LateDelivery`) that name
    /// the lead, as of now.
    late: Vec<String>,
    /// The generation of the forget marker: above every generation the partition's ledger and
    /// retry backlog hold, so at least that of every owner that restored it so far (each wrote
    /// with one more than it read), and below that of every owner restoring after the marker.
    generation: u64,
}

/// Reads the lead's partition of `{prefix}.delivered` and `{prefix}.alerts.retry` (the alerts'
/// partition, the one the lead's key hashes to) to its end as of now.
async fn scan(
    base: &rdkafka::ClientConfig,
    topics: &Topics,
    lead: &str,
    clock: &Clock,
) -> anyhow::Result<Scanned> {
    let (base, delivered, retry, lead, clock) = (
        base.clone(),
        topics.delivered.clone(),
        topics.retry.clone(),
        lead.to_string(),
        clock.clone(),
    );
    tokio::task::spawn_blocking(move || {
        let consumer: rdkafka::consumer::BaseConsumer = base
            .create()
            .context("creating a consumer to read the delivery ledger")?;
        let partitions =
            bus::consumer::partition_count(&consumer, &delivered, Duration::from_secs(10))?;
        let partition = crate::partitioner::partition_for(lead.as_bytes(), partitions);
        let read = |topic: &str| {
            bus::changelog::read_partition(
                &base,
                topic,
                partition,
                Duration::from_secs(120),
                &clock,
            )
            .with_context(|| format!("reading {topic}[{partition}]"))
        };
        let (ledger, backlog) = (read(&delivered)?, read(&retry)?);
        let generation = bus::changelog::next_generation([&ledger, &backlog]);
        let late = ledger
            .records
            .into_iter()
            .filter(|(k, v)| bus::changelog::late_lead(k, v).as_deref() == Some(lead.as_str()))
            .map(|(k, _)| k)
            .collect();
        Ok(Scanned {
            partition,
            late,
            generation,
        })
    })
    .await
    .context("reading the delivery ledger died")?
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
