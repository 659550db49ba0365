//! Nothing remote can stop, wedge or silently skip leadwatch (issue 11), end to end on a real
//! Kafka-protocol endpoint: records Kafka refuses for good, roles that fail, a broker that
//! trims what was not read yet, records that cannot be read.

mod support;

use std::time::Duration;

use leadwatch::clock::Clock;
use rdkafka::producer::{FutureProducer, FutureRecord};
use serde_json::json;
use support::*;

const PATIENCE: Duration = Duration::from_secs(60);

/// Produces `records` (key, JSON) to `topic` as another producer would (bypassing ingest and
/// its limits).
async fn produce(bootstrap: &str, topic: &str, records: &[(&str, serde_json::Value)]) {
    let producer: FutureProducer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("partitioner", leadwatch::partitioner::PARTITIONER)
        .create()
        .unwrap();
    for (key, value) in records {
        let payload = serde_json::to_vec(value).unwrap();
        producer
            .send(
                FutureRecord::to(topic).key(*key).payload(&payload),
                Duration::from_secs(10),
            )
            .await
            .unwrap();
    }
}

/// A sales-ready event as it sits on `{prefix}.events`, with `fields` on top.
fn event_record(id: &str, lead: &str, fields: serde_json::Value) -> serde_json::Value {
    let now = Clock::system().now().to_string();
    let mut all = json!({"stage": "sales_ready", "owner": "alice@example.com"});
    all.as_object_mut()
        .unwrap()
        .extend(fields.as_object().unwrap().clone());
    json!({"id": id, "source": "web", "lead": lead, "occurred_at": now, "received_at": now,
           "type": "lead.updated", "fields": all})
}

/// A lead whose state is too large for Kafka wedges nothing: a state held twice (the lead and
/// its reorder window) is written without the window; one too large even so is quarantined to
/// the dead-letter topic. Each of those leads still gets its alert, and so does every other.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lead_state_too_large_for_kafka_wedges_nothing_and_its_lead_still_alerts() {
    let kafka = kafka(1);
    let receiver = Receiver::start().await;
    let daemon = Daemon::start(
        &config_text(kafka.bootstrap(), &receiver.url, ""),
        &rules_text("3s"),
    )
    .await;
    let topics = leadwatch::bus::Topics::new(PREFIX);
    let huge = |n: usize| "x".repeat(n);
    produce(
        kafka.bootstrap(),
        &topics.events,
        &[
            // Fields a lead keeps (the close-out's reason and detail; one nothing reads is
            // dropped before it reaches the state).
            // ~900 kB: its state with the reorder window is ~1.8 MB, without it ~900 kB.
            (
                "L-huge",
                event_record("h1", "L-huge", json!({"disposition_detail": huge(900_000)})),
            ),
            // Two fields of ~600 kB: the state is over 1 MB even without the window.
            (
                "L-huger",
                event_record(
                    "g1",
                    "L-huger",
                    json!({"disposition_reason": huge(600_000)}),
                ),
            ),
            (
                "L-huger",
                event_record(
                    "g2",
                    "L-huger",
                    json!({"disposition_detail": huge(600_000)}),
                ),
            ),
            ("L-small", event_record("s1", "L-small", json!({}))),
        ],
    )
    .await;

    wait_for("an alert for every lead", PATIENCE, || async {
        receiver.distinct() >= 3
    })
    .await;
    let mut leads: Vec<String> = receiver
        .all()
        .iter()
        .map(|r| r.json()["data"]["lead"].as_str().unwrap().to_string())
        .collect();
    leads.sort();
    leads.dedup();
    assert_eq!(leads, ["L-huge", "L-huger", "L-small"]);
    assert!(
        daemon
            .metric("leadwatch_engine_states_without_window_total")
            .await
            >= 1.0
    );
    assert!(
        daemon
            .metric(
                "leadwatch_kafka_records_quarantined_total{topic=\"lwtest.state\",reason=\"too_large\"}"
            )
            .await
            >= 1.0
    );
    daemon.stop().await;

    // The changelog holds L-huge without its window; the dead-letter topic says why L-huger's
    // last state is not there.
    let bootstrap = kafka.bootstrap().to_string();
    let (state, dlq) = tokio::task::spawn_blocking(move || {
        let mut base = rdkafka::ClientConfig::new();
        base.set("bootstrap.servers", &bootstrap);
        let read = |topic: &str| {
            leadwatch::bus::changelog::read_partition(
                &base,
                topic,
                0,
                Duration::from_secs(30),
                &Clock::system(),
            )
            .unwrap()
            .records
        };
        (read("lwtest.state"), read("lwtest.alerts.dlq"))
    })
    .await
    .unwrap();
    let huge_state = leadwatch::engine::LeadState::decode(&state["L-huge"]).unwrap();
    assert_eq!(
        huge_state
            .lead
            .fields
            .get("disposition_detail")
            .and_then(|v| v.as_str())
            .unwrap()
            .len(),
        900_000
    );
    assert!(huge_state.log.is_empty(), "written without its window");
    let letter: serde_json::Value = serde_json::from_slice(&dlq["L-huger"]).unwrap();
    assert_eq!(letter["quarantined"]["topic"], "lwtest.state");
    assert_eq!(letter["quarantined"]["reason"], "too_large");
}

/// A role that fails (here: its consumer cannot be created) is restarted with backoff and
/// counted, never stopping the daemon: webhooks are still accepted and `/readyz` keeps its
/// meaning. A role that cannot get going makes no progress: `/healthz` fails, naming it, once
/// the stall time has passed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_role_that_fails_is_restarted_and_healthz_names_it_once_it_stalls() {
    let kafka = kafka(3);
    let receiver = Receiver::start().await;
    let config = config_text(
        kafka.bootstrap(),
        &receiver.url,
        "[kafka.options]\n\"fetch.max.bytes\" = \"1000\"\n",
    )
    .replace(
        "shutdown_grace = \"5s\"",
        "shutdown_grace = \"5s\"\nstall_timeout = \"2s\"",
    );
    let daemon = Daemon::start(&config, &rules_text("1h")).await;
    daemon
        .wait_for_metric(
            "the engine restarted twice",
            "leadwatch_role_restarts_total{role=\"engine\"}",
            PATIENCE,
            |v| v >= 2.0,
        )
        .await;
    // Still up: ingest accepts webhooks, readiness is about that alone.
    let (status, _, body) = post_signed(
        &daemon.url("/webhooks/web"),
        SOURCE_SECRET,
        &ready_event("e1", "L-1", &now_plus(0)),
    )
    .await;
    assert_eq!(status, 202, "{body}");
    assert_eq!(
        reqwest::get(daemon.url("/readyz")).await.unwrap().status(),
        200
    );
    let body = std::sync::Mutex::new(String::new());
    // Both roles fail over and over; each stalls once its own loop has not turned for the
    // stall timeout, one a moment after the other.
    wait_for("/healthz to fail naming both roles", PATIENCE, || async {
        let resp = reqwest::get(daemon.url("/healthz")).await.unwrap();
        let failed = resp.status() == 503;
        let text = resp.text().await.unwrap();
        let both = text.contains("\"engine\"") && text.contains("\"dispatch\"");
        *body.lock().unwrap() = text;
        failed && both
    })
    .await;
    let stalled: serde_json::Value = serde_json::from_str(&body.into_inner().unwrap()).unwrap();
    let stages: Vec<&str> = stalled["stalled"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["stage"].as_str().unwrap())
        .collect();
    assert!(stages.contains(&"engine"), "{stalled}");
    assert!(stages.contains(&"dispatch"), "{stalled}");
    assert_eq!(stalled["stalled"][0]["waiting"], "loop", "{stalled}");
    assert!(daemon.metric("leadwatch_stalled{stage=\"engine\"}").await >= 1.0);
    // A graceful stop still ends well.
    daemon.stop().await;
}

/// On the embedded broker (which trims every partition to 5 MiB, read or not), a burst faster
/// than the engine is answered 503 with Retry-After once a partition's unconsumed backlog nears
/// the limit; the sender retries, and every event is applied — none trimmed away.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_on_the_embedded_broker_is_slowed_never_lost() {
    const EVENTS: usize = 240;
    const BATCH: usize = 10;
    let receiver = Receiver::start().await;
    // The embedded broker (no brokers), one partition, and an engine far slower than ingest:
    // one event at a time, each state write lingering 50 ms (about 20 events a second), its
    // consumer fetching at most 1 MB ahead (the rest waits on the broker, where it is trimmed).
    let config = config_text(
        "",
        &receiver.url,
        "[kafka.options]\n\"linger.ms\" = \"50\"\n\"queued.max.messages.kbytes\" = \"1024\"",
    )
    .replace(
        "session_timeout = \"6s\"",
        "session_timeout = \"6s\"\npartitions = 1",
    )
    .replace("[engine]", "[engine]\nmax_in_flight = 1");
    let daemon = Daemon::start(&config, &rules_text("1h")).await;
    wait_for("readiness", PATIENCE, || async {
        reqwest::get(daemon.url("/readyz")).await.unwrap().status() == 200
    })
    .await;
    // ~45 kB events (three 15 kB fields): 10.8 MB in all, twice what the broker keeps.
    let now = now_plus(0);
    let pad = "p".repeat(15_000);
    let batches: Vec<serde_json::Value> = (0..EVENTS)
        .map(|i| {
            json!({"id": format!("burst-{i}"), "type": "lead.updated", "lead": format!("B-{i}"),
                   "occurred_at": now,
                   "fields": {"stage": "new", "a": pad, "b": pad, "c": pad}})
        })
        .collect::<Vec<_>>()
        .chunks(BATCH)
        .map(|c| json!(c))
        .collect();
    let url = daemon.url("/webhooks/web");
    let unavailable = std::sync::atomic::AtomicUsize::new(0);
    let senders = batches.chunks(batches.len() / 8).map(|mine| {
        let (url, unavailable) = (&url, &unavailable);
        async move {
            for batch in mine {
                // As a vendor does: a 503 is retried (here sooner than Retry-After says).
                loop {
                    let (status, headers, body) = post_signed(url, SOURCE_SECRET, batch).await;
                    if status == 202 {
                        break;
                    }
                    assert_eq!(status, 503, "{body}");
                    assert!(headers.contains_key("retry-after"));
                    unavailable.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
    });
    futures::future::join_all(senders).await;
    daemon
        .wait_for_metric(
            "every event applied",
            "leadwatch_engine_events_total{outcome=\"applied\"}",
            PATIENCE,
            |v| v >= EVENTS as f64,
        )
        .await;
    assert!(
        unavailable.into_inner() > 0,
        "the burst never met the limit: the test proves nothing"
    );
    assert_eq!(
        daemon
            .metric("leadwatch_kafka_offsets_skipped_total{topic=\"lwtest.events\"}")
            .await,
        0.0
    );
    // Once everything is consumed, the gauge an alert rule watches says so (no write needed).
    daemon
        .wait_for_metric(
            "the backlog gauge back to empty",
            "leadwatch_embedded_backlog_bytes{topic=\"lwtest.events\"}",
            PATIENCE,
            |v| v == 0.0,
        )
        .await;
    daemon.stop().await;
}

/// Records deleted before the group read them (retention; here the broker's trimming while no
/// daemon ran) are never jumped over silently: an error log names the partition, and the
/// offsets skipped are counted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn offsets_deleted_before_they_were_read_are_counted_as_skipped() {
    let kafka = kafka(1);
    let receiver = Receiver::start().await;
    let config = config_text(kafka.bootstrap(), &receiver.url, "");
    let a = Daemon::start(&config, &rules_text("1h")).await;
    let (status, _, _) = post_signed(
        &a.url("/webhooks/web"),
        SOURCE_SECRET,
        &ready_event("first", "L-1", &now_plus(0)),
    )
    .await;
    assert_eq!(status, 202);
    a.wait_for_metric(
        "the first event applied",
        "leadwatch_engine_events_total{outcome=\"applied\"}",
        PATIENCE,
        |v| v >= 1.0,
    )
    .await;
    a.stop().await;

    // While no daemon runs, 8 MB more: the broker keeps 5 MiB of the partition.
    let topics = leadwatch::bus::Topics::new(PREFIX);
    let pad = "p".repeat(20_000);
    let records: Vec<(String, serde_json::Value)> = (0..400)
        .map(|i| {
            let lead = format!("T-{i}");
            (
                lead.clone(),
                event_record(&format!("t{i}"), &lead, json!({"notes": pad})),
            )
        })
        .collect();
    let refs: Vec<(&str, serde_json::Value)> = records
        .iter()
        .map(|(k, v)| (k.as_str(), v.clone()))
        .collect();
    produce(kafka.bootstrap(), &topics.events, &refs).await;
    let bootstrap = kafka.bootstrap().to_string();
    let (low, high) = tokio::task::spawn_blocking(move || {
        use rdkafka::consumer::{BaseConsumer, Consumer};
        let consumer: BaseConsumer = rdkafka::ClientConfig::new()
            .set("bootstrap.servers", &bootstrap)
            .create()
            .unwrap();
        consumer
            .fetch_watermarks("lwtest.events", 0, Duration::from_secs(10))
            .unwrap()
    })
    .await
    .unwrap();
    assert_eq!(high, 401);
    assert!(
        low > 1,
        "the broker trimmed nothing: the test proves nothing"
    );

    let b = Daemon::start(&config, &rules_text("1h")).await;
    b.wait_for_metric(
        "the skipped offsets counted",
        "leadwatch_kafka_offsets_skipped_total{topic=\"lwtest.events\"}",
        PATIENCE,
        |v| v >= 1.0,
    )
    .await;
    // Committed after "first" (offset 0): offsets 1 .. low-1 were never read.
    assert_eq!(
        b.metric("leadwatch_kafka_offsets_skipped_total{topic=\"lwtest.events\"}")
            .await,
        (low - 1) as f64
    );
    b.stop().await;
}

/// A record that cannot be read, in any topic — the events and alerts read live, the state,
/// ledger and retry-backlog changelogs read back at restore — is never just logged and skipped:
/// it is counted and dead-lettered with where it was (topic, partition, and the offset, or for
/// a changelog the key) and why, and what follows it is processed as usual.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreadable_record_in_any_topic_is_counted_and_dead_lettered() {
    let kafka = kafka(1);
    let receiver = Receiver::start().await;
    let topics = leadwatch::bus::Topics::new(PREFIX);
    for topic in [&topics.state, &topics.delivered, &topics.retry] {
        produce(
            kafka.bootstrap(),
            topic,
            &[("L-broken", json!("not a record"))],
        )
        .await;
    }
    let daemon = Daemon::start(
        &config_text(kafka.bootstrap(), &receiver.url, ""),
        &rules_text("1s"),
    )
    .await;
    produce(
        kafka.bootstrap(),
        &topics.events,
        &[("L-bad", json!("not an event"))],
    )
    .await;
    produce(
        kafka.bootstrap(),
        &topics.alerts,
        &[("L-bad", json!({"not": "an alert"}))],
    )
    .await;
    produce(
        kafka.bootstrap(),
        &topics.events,
        &[("L-good", event_record("e1", "L-good", json!({})))],
    )
    .await;
    let all = [
        "lwtest.events",
        "lwtest.alerts",
        "lwtest.state",
        "lwtest.delivered",
        "lwtest.alerts.retry",
    ];
    for topic in all {
        daemon
            .wait_for_metric(
                &format!("the unreadable record of {topic} counted"),
                &format!("leadwatch_kafka_records_unreadable_total{{topic=\"{topic}\"}}"),
                PATIENCE,
                |v| v == 1.0,
            )
            .await;
    }
    // What followed the unreadable event still alerts.
    wait_for("L-good's alert", PATIENCE, || async {
        !receiver.all().is_empty()
    })
    .await;

    let letters = read_topic(kafka.bootstrap(), &topics.dlq, all.len()).await;
    let mut found: Vec<(String, i64, serde_json::Value, serde_json::Value)> = letters
        .iter()
        .filter_map(|(_, letter)| {
            let u = letter.get("unreadable")?;
            assert!(
                !u["reason"].as_str().unwrap_or_default().is_empty(),
                "{letter}"
            );
            Some((
                u["topic"].as_str()?.to_string(),
                u["partition"].as_i64()?,
                u["offset"].clone(),
                u["key"].clone(),
            ))
        })
        .collect();
    found.sort_by(|a, b| a.0.cmp(&b.0));
    let changelog = |topic: &str| (topic.to_string(), 0, json!(null), json!("L-broken"));
    let live = |topic: &str| (topic.to_string(), 0, json!(0), json!(null));
    assert_eq!(
        found,
        [
            live("lwtest.alerts"),
            changelog("lwtest.alerts.retry"),
            changelog("lwtest.delivered"),
            live("lwtest.events"),
            changelog("lwtest.state"),
        ]
    );
    daemon.stop().await;
}
