//! The pipeline end to end: signed webhook → Kafka (a real Kafka-protocol endpoint) → first-touch
//! SLA → signed alert at a real HTTP receiver.

mod support;

use std::time::Duration;

use leadwatch::clock::Clock;
use leadwatch::signature::{self, SignedHeaders, WebhookSecret};
use rdkafka::Message;
use rdkafka::consumer::{BaseConsumer, Consumer};
use serde_json::json;
use support::*;

const PATIENCE: Duration = Duration::from_secs(60);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_untouched_lead_gets_one_signed_breach_alert_and_a_touched_one_none() {
    let kafka = kafka(3);
    let receiver = Receiver::start().await;
    let daemon = Daemon::start(
        &config_text(kafka.bootstrap(), &receiver.url, ""),
        &rules_text("3s"),
    )
    .await;
    let url = daemon.url("/webhooks/web");

    // L-touched: sales-ready, then a call a moment later. L-ignored: sales-ready later still,
    // so its deadline is the later one; nobody calls.
    let (status, _, body) = post_signed(
        &url,
        SOURCE_SECRET,
        &ready_event("e1", "L-touched", &now_plus(0)),
    )
    .await;
    assert_eq!((status, body), (202, json!({"accepted": 1})));
    let batch = json!([
        call_event("e2", "L-touched", &now_plus(100)),
        ready_event("e3", "L-ignored", &now_plus(200)),
    ]);
    let (status, _, body) = post_signed(&url, SOURCE_SECRET, &batch).await;
    assert_eq!((status, body), (202, json!({"accepted": 2})));

    wait_for("the breach alert", PATIENCE, || async {
        receiver.count() >= 1
    })
    .await;
    let got = receiver.all();
    let alert = got[0].json();
    assert_eq!(alert["type"], "sla.first_touch.breached");
    assert_eq!(alert["data"]["lead"], "L-ignored");
    assert_eq!(alert["data"]["owner"], "alice@example.com");
    assert_eq!(alert["data"]["rule"], "first_touch");
    assert_eq!(alert["data"]["level"], 0);
    let alert_id = alert["data"]["alert_id"].as_str().unwrap();
    assert!(alert_id.starts_with("alert_"));
    // Deadline = sales-ready + 3 s, in event time.
    let ready_at: jiff::Timestamp = alert["data"]["sales_ready_at"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    let deadline: jiff::Timestamp = alert["data"]["deadline"].as_str().unwrap().parse().unwrap();
    assert_eq!(
        deadline.duration_since(ready_at),
        jiff::SignedDuration::from_secs(3)
    );
    let fired_at: jiff::Timestamp = alert["timestamp"].as_str().unwrap().parse().unwrap();
    assert!(
        fired_at >= deadline,
        "fired {fired_at} before the deadline {deadline}"
    );

    // Signed per Standard Webhooks with the sink's secret, webhook-id = the alert id.
    assert_eq!(got[0].header("webhook-id"), alert_id);
    let secret: WebhookSecret = SINK_SECRET.parse().unwrap();
    let headers = SignedHeaders {
        id: Some(got[0].header("webhook-id")),
        timestamp: Some(got[0].header("webhook-timestamp")),
        signature: Some(got[0].header("webhook-signature")),
    };
    let now = Clock::system().now().as_second();
    assert_eq!(
        signature::verify(&[secret], &headers, &got[0].body, now, 300),
        Ok(())
    );

    // L-touched's deadline came first, so had it fired it would be counted by now.
    assert_eq!(
        daemon
            .metric("leadwatch_alerts_fired_total{type=\"sla.first_touch.breached\"}")
            .await,
        1.0
    );
    daemon.stop().await;
    // Nothing more arrived while stopping, either.
    assert_eq!(receiver.count(), 1, "{:?}", receiver.all());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_signature_gets_401_and_nothing_reaches_kafka() {
    let kafka = kafka(1);
    let receiver = Receiver::start().await;
    let daemon = Daemon::start(
        &config_text(kafka.bootstrap(), &receiver.url, ""),
        &rules_text("1h"),
    )
    .await;
    let url = daemon.url("/webhooks/web");

    let forged = ready_event("forged", "L-1", &now_plus(0));
    let wrong = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
    let (status, _, body) = post_signed(&url, wrong, &forged).await;
    assert_eq!(status, 401);
    assert_eq!(body["error"], "unauthorized");

    // Stale timestamp: signed correctly, but 10 minutes ago.
    let bytes = serde_json::to_vec(&forged).unwrap();
    let secret: WebhookSecret = SOURCE_SECRET.parse().unwrap();
    let old = Clock::system().now().as_second() - 600;
    let resp = reqwest::Client::new()
        .post(&url)
        .header("webhook-id", "msg_old")
        .header("webhook-timestamp", old.to_string())
        .header("webhook-signature", secret.sign("msg_old", old, &bytes))
        .body(bytes)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 401);

    // Then a genuine event for the same lead (same partition): it is the first message there.
    let (status, _, _) = post_signed(
        &url,
        SOURCE_SECRET,
        &ready_event("genuine", "L-1", &now_plus(0)),
    )
    .await;
    assert_eq!(status, 202);
    let bootstrap = kafka.bootstrap().to_string();
    let first = tokio::task::spawn_blocking(move || {
        let consumer: BaseConsumer = rdkafka::ClientConfig::new()
            .set("bootstrap.servers", &bootstrap)
            .set("group.id", "lwtest-inspect")
            .set("auto.offset.reset", "earliest")
            .create()
            .unwrap();
        let mut tpl = rdkafka::TopicPartitionList::new();
        tpl.add_partition_offset("lwtest.events", 0, rdkafka::Offset::Beginning)
            .unwrap();
        consumer.assign(&tpl).unwrap();
        let deadline = Clock::system().instant() + Duration::from_secs(30);
        while Clock::system().instant() < deadline {
            if let Some(Ok(msg)) = consumer.poll(Duration::from_millis(500)) {
                return serde_json::from_slice::<serde_json::Value>(msg.payload().unwrap())
                    .unwrap();
            }
        }
        panic!("no event reached Kafka");
    })
    .await
    .unwrap();
    assert_eq!(first["id"], "genuine");
    assert_eq!(first["source"], "web");
    assert_eq!(
        daemon
            .metric("leadwatch_webhook_requests_total{source=\"web\",outcome=\"unauthorized\"}")
            .await,
        2.0
    );
    daemon.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_the_broker_down_ingest_answers_503_and_recovers_when_it_returns() {
    let kafka = kafka(1);
    let receiver = Receiver::start().await;
    let daemon = Daemon::start(
        &config_text(kafka.bootstrap(), &receiver.url, ""),
        &rules_text("1h"),
    )
    .await;
    let url = daemon.url("/webhooks/web");
    wait_for("readiness", PATIENCE, || async {
        reqwest::get(daemon.url("/readyz")).await.unwrap().status() == 200
    })
    .await;
    let (status, _, _) = post_signed(
        &url,
        SOURCE_SECRET,
        &ready_event("before", "L-1", &now_plus(0)),
    )
    .await;
    assert_eq!(status, 202);

    kafka.broker_down();
    let (status, headers, body) = post_signed(
        &url,
        SOURCE_SECRET,
        &ready_event("during", "L-2", &now_plus(0)),
    )
    .await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["error"], "unavailable");
    assert_eq!(headers.get("retry-after").unwrap(), "2");
    wait_for("readiness to turn off", PATIENCE, || async {
        reqwest::get(daemon.url("/readyz")).await.unwrap().status() == 503
    })
    .await;
    // Liveness is not readiness: the process itself is fine.
    assert_eq!(
        reqwest::get(daemon.url("/healthz")).await.unwrap().status(),
        200
    );

    kafka.broker_up();
    // The sender retries, as told by Retry-After, until it is accepted.
    wait_for("a 202 after the broker returned", PATIENCE, || async {
        post_signed(
            &url,
            SOURCE_SECRET,
            &ready_event("during", "L-2", &now_plus(0)),
        )
        .await
        .0 == 202
    })
    .await;
    wait_for("readiness to return", PATIENCE, || async {
        reqwest::get(daemon.url("/readyz")).await.unwrap().status() == 200
    })
    .await;
    daemon.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_get_precise_errors() {
    let kafka = kafka(1);
    let receiver = Receiver::start().await;
    let daemon = Daemon::start(
        &config_text(kafka.bootstrap(), &receiver.url, "[server.extra]\n")
            .replace("[server.extra]\n", "")
            .replace(
                "ack_timeout = \"1s\"",
                "ack_timeout = \"1s\"\nmax_body_bytes = 2048",
            ),
        &rules_text("1h"),
    )
    .await;
    let url = daemon.url("/webhooks/web");

    // Unknown source.
    let (status, _, body) =
        post_signed(&daemon.url("/webhooks/nope"), SOURCE_SECRET, &json!({})).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (404, Some("unknown_source"))
    );

    // Too large, refused before reading it all.
    let big = json!({"id": "x", "pad": "a".repeat(4096)});
    let (status, _, body) = post_signed(&url, SOURCE_SECRET, &big).await;
    assert_eq!((status, body["error"].as_str()), (413, Some("too_large")));

    // Malformed: every bad field named.
    let bad = json!([
        {"id": "e1", "type": "lead.updated", "lead": "L-1", "occurred_at": "yesterday", "fields": {}},
        {"id": "e2", "type": "lead.activity", "lead": "L-1", "occurred_at": now_plus(0)}
    ]);
    let (status, _, body) = post_signed(&url, SOURCE_SECRET, &bad).await;
    assert_eq!(status, 400);
    assert_eq!(body["error"], "malformed");
    let fields: Vec<&str> = body["problems"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["field"].as_str().unwrap())
        .collect();
    assert_eq!(fields, ["[0].occurred_at", "[1].activity"]);

    // Missing signature headers.
    let resp = reqwest::Client::new()
        .post(&url)
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 401);
    let body: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(body["message"], "missing header `webhook-id`");

    // The pipeline still works.
    let (status, _, _) =
        post_signed(&url, SOURCE_SECRET, &ready_event("ok", "L-1", &now_plus(0))).await;
    assert_eq!(status, 202);
    assert_eq!(
        daemon
            .metric("leadwatch_webhook_requests_total{source=\"web\",outcome=\"malformed\"}")
            .await,
        1.0
    );
    daemon.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_never_finishes_its_headers_is_disconnected() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let kafka = kafka(1);
    let receiver = Receiver::start().await;
    let daemon = Daemon::start(
        &config_text(kafka.bootstrap(), &receiver.url, "").replace(
            "ack_timeout = \"1s\"",
            "ack_timeout = \"1s\"\nheader_read_timeout = \"1s\"",
        ),
        &rules_text("1h"),
    )
    .await;
    let mut slow = tokio::net::TcpStream::connect(daemon.addr).await.unwrap();
    slow.write_all(b"POST /webhooks/web HTTP/1.1\r\nHost: x\r\n")
        .await
        .unwrap();
    // The server closes the connection (read returns 0 or an error) instead of waiting forever.
    let mut buf = [0u8; 1024];
    let closed = tokio::time::timeout(Duration::from_secs(15), async {
        loop {
            match slow.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => continue, // a 408 may come first
            }
        }
    })
    .await;
    assert!(
        closed.is_ok(),
        "a client stalling in its headers held the connection open"
    );
    // Others are still served.
    assert_eq!(
        reqwest::get(daemon.url("/healthz")).await.unwrap().status(),
        200
    );
    daemon.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forgetting_a_lead_erases_its_state_and_cancels_its_alerts() {
    let kafka = kafka(1);
    let receiver = Receiver::start().await;
    let daemon = Daemon::start(
        &config_text(kafka.bootstrap(), &receiver.url, ""),
        &rules_text("10s"),
    )
    .await;
    let url = daemon.url("/webhooks/web");
    let batch = json!([
        ready_event("f1", "L-forget", &now_plus(0)),
        ready_event("f2", "L-keep", &now_plus(100)),
    ]);
    assert_eq!(post_signed(&url, SOURCE_SECRET, &batch).await.0, 202);
    daemon
        .wait_for_metric(
            "both leads applied",
            "leadwatch_engine_events_total{outcome=\"applied\"}",
            PATIENCE,
            |v| v >= 2.0,
        )
        .await;

    let cfg = leadwatch::app::Config::load_with_env(
        &daemon.dir.path().join("leadwatch.toml"),
        Vec::new(),
    )
    .unwrap();
    let report = leadwatch::forget::forget(&cfg.kafka, "L-forget", &Clock::system())
        .await
        .unwrap();
    assert!(report.contains("lwtest.events"), "{report}");
    assert!(report.contains("lwtest.raw"), "{report}");
    daemon
        .wait_for_metric(
            "the engine to drop the lead",
            "leadwatch_engine_events_total{outcome=\"forgotten\"}",
            PATIENCE,
            |v| v >= 1.0,
        )
        .await;
    assert!(
        receiver
            .all()
            .iter()
            .all(|r| r.json()["data"]["lead"] == "L-keep"),
        "the forgotten lead was alerted on"
    );

    wait_for("L-keep's alert", PATIENCE, || async {
        receiver.count() >= 1
    })
    .await;
    assert_eq!(receiver.count(), 1);
    assert_eq!(receiver.all()[0].json()["data"]["lead"], "L-keep");
    assert_eq!(
        daemon
            .metric("leadwatch_alerts_fired_total{type=\"sla.first_touch.breached\"}")
            .await,
        1.0,
        "the forgotten lead's deadline came first and must not have fired"
    );
    daemon.stop().await;

    let bootstrap = kafka.bootstrap().to_string();
    let state = tokio::task::spawn_blocking(move || {
        let mut base = rdkafka::ClientConfig::new();
        base.set("bootstrap.servers", &bootstrap);
        leadwatch::bus::changelog::read_partition(
            &base,
            "lwtest.state",
            0,
            Duration::from_secs(30),
            &Clock::system(),
        )
        .unwrap()
        .records
    })
    .await
    .unwrap();
    assert!(
        !state.contains_key("L-forget"),
        "the state changelog still holds the lead"
    );
    assert!(state.contains_key("L-keep"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fatal_producer_error_turns_readiness_off_and_the_producer_is_rebuilt() {
    use rdkafka::types::{RDKafkaApiKey, RDKafkaRespErr};
    let kafka = kafka(1);
    // The idempotent producers' first producer-id requests (ingest's, the engine's and the
    // dispatcher's, one each) are refused for good: librdkafka raises a fatal error, after which
    // that producer instance can never deliver again.
    kafka.request_errors(
        RDKafkaApiKey::InitProducerId,
        &[RDKafkaRespErr::RD_KAFKA_RESP_ERR_CLUSTER_AUTHORIZATION_FAILED; 3],
    );
    let receiver = Receiver::start().await;
    let daemon = Daemon::start(
        &config_text(kafka.bootstrap(), &receiver.url, ""),
        &rules_text("1h"),
    )
    .await;
    let url = daemon.url("/webhooks/web");
    // Never a 2xx from the broken producer: 503 until the rebuilt one delivers.
    let statuses = std::sync::Mutex::new(Vec::new());
    wait_for("a 202 from the rebuilt producer", PATIENCE, || async {
        let status = post_signed(&url, SOURCE_SECRET, &ready_event("e1", "L-1", &now_plus(0)))
            .await
            .0;
        statuses.lock().unwrap().push(status);
        status == 202
    })
    .await;
    let statuses = statuses.into_inner().unwrap();
    assert!(
        statuses.iter().all(|s| *s == 202 || *s == 503),
        "{statuses:?}"
    );
    // A refused producer other than ingest's may still be on its way to being rebuilt.
    wait_for("a refused producer rebuilt", PATIENCE, || async {
        daemon.metric("leadwatch_producer_rebuilds_total").await >= 1.0
    })
    .await;
    wait_for("ready again", PATIENCE, || async {
        reqwest::get(daemon.url("/readyz")).await.unwrap().status() == 200
    })
    .await;
    daemon.stop().await;
}

/// `simulate` places leads on partitions by `leadwatch::partitioner::partition_for`; librdkafka's
/// partitioner, as the producers are configured, must agree key for key.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_land_on_the_partition_simulate_computes() {
    use rdkafka::producer::{FutureProducer, FutureRecord};
    let kafka = kafka(6);
    let producer: FutureProducer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", kafka.bootstrap())
        .set("partitioner", leadwatch::partitioner::PARTITIONER)
        .create()
        .unwrap();
    let topic = leadwatch::bus::Topics::new(PREFIX).events;
    let mut seen = std::collections::BTreeSet::new();
    for i in 0..60 {
        let key = format!("salesforce:00Q5g00000{i}");
        let partition = producer
            .send(
                FutureRecord::to(&topic).key(&key).payload("{}"),
                Duration::from_secs(10),
            )
            .await
            .unwrap()
            .partition;
        assert_eq!(
            partition,
            leadwatch::partitioner::partition_for(key.as_bytes(), 6),
            "{key}"
        );
        seen.insert(partition);
    }
    assert_eq!(seen.len(), 6, "the keys spread over every partition");
}

/// How the tests read metrics: a missing line fails the test and says what is exported (a
/// renamed metric never reads as 0); a series never counted reads as 0 only while its family is
/// exported.
#[test]
fn a_missing_metric_fails_the_test() {
    let m = leadwatch::telemetry::Metrics::new();
    m.engine_event("applied");
    let text = m.encode();
    let panics = |f: &dyn Fn() -> f64| {
        let e = std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)).unwrap_err();
        e.downcast_ref::<String>().cloned().unwrap_or_default()
    };
    let applied = "leadwatch_engine_events_total{outcome=\"applied\"}";
    assert_eq!(metric_in(&text, applied), 1.0);
    assert_eq!(metric_in(&text, "leadwatch_engine_leads"), 0.0);
    let renamed = panics(&|| metric_in(&text, "leadwatch_engine_event_total{outcome=\"applied\"}"));
    assert!(
        renamed.contains("leadwatch_engine_event_total")
            && renamed.contains("leadwatch_engine_events_total, ")
            && renamed.contains("leadwatch_engine_leads, "),
        "{renamed}"
    );
    let other_label = panics(&|| {
        metric_in(
            &text,
            "leadwatch_engine_events_total{outcome=\"duplicate\"}",
        )
    });
    assert!(other_label.contains(applied), "{other_label}");
    // Never counted, its family exported: 0. Its family not exported: the test fails.
    let duplicate = "leadwatch_engine_events_total{outcome=\"duplicate\"}";
    assert_eq!(metric_or_zero_in(&text, duplicate), 0.0);
    let family = panics(&|| metric_or_zero_in(&text, "leadwatch_alerts_fired_total{type=\"x\"}"));
    assert!(
        family.contains("no metric family `leadwatch_alerts_fired`"),
        "{family}"
    );
}

/// A burst of leads with long kept fields pushes the engine past `engine.memory_budget_mib`: the
/// reorder window gives way first (halved down to nothing, windows folded early), and once there
/// is none left the daemon says the open leads alone are over budget — gauges and a counter an
/// operator can alert on — while it goes on applying every event.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_its_memory_budget_the_engine_gives_up_its_window_first_and_says_so() {
    let kafka = kafka(3);
    let receiver = Receiver::start().await;
    let config = config_text(kafka.bootstrap(), &receiver.url, "").replace(
        "[engine]\nrestore_timeout = \"20s\"",
        "[engine]\nrestore_timeout = \"20s\"\nmemory_budget_mib = 1",
    );
    assert!(config.contains("memory_budget_mib = 1"));
    let daemon = Daemon::start(&config, &rules_text("1h")).await;
    daemon
        .wait_for_metric(
            "the whole reorder window in force at the start",
            "leadwatch_engine_reorder_window_seconds",
            PATIENCE,
            |n| n == 3600.0,
        )
        .await;
    let url = daemon.url("/webhooks/web");
    // 60 leads, each with 30 KB of close-out detail (a field the engine keeps): several copies
    // of each while the window holds them, and more than a MiB even without one.
    let detail = "Called twice, left a voicemail, asked to call back next quarter. ".repeat(470);
    for batch in 0..6 {
        let events: Vec<serde_json::Value> = (0..10)
            .map(|i| {
                let lead = format!("L-{batch}-{i}");
                let mut e = ready_event(&format!("e-{lead}"), &lead, &now_plus(0));
                e["fields"]["disposition_detail"] = json!(detail);
                e
            })
            .collect();
        let (status, _, body) = post_signed(&url, SOURCE_SECRET, &json!(events)).await;
        assert_eq!((status, body), (202, json!({"accepted": 10})));
    }
    daemon
        .wait_for_metric(
            "every lead applied",
            "leadwatch_engine_leads",
            PATIENCE,
            |n| n >= 60.0,
        )
        .await;
    daemon
        .wait_for_metric(
            "the open leads alone over budget",
            "leadwatch_engine_over_budget",
            PATIENCE,
            |n| n == 1.0,
        )
        .await;
    assert!(daemon.metric("leadwatch_engine_window_shrinks_total").await >= 1.0);
    assert_eq!(
        daemon
            .metric("leadwatch_engine_reorder_window_seconds")
            .await,
        0.0,
        "the window gave way entirely first"
    );
    assert!(daemon.metric("leadwatch_engine_held_bytes").await > (1 << 20) as f64);
    daemon.stop().await;
}

/// A lead's events within one flush interval are written to the state changelog once (as the
/// lead stands after the last of them), not once per event.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leads_events_within_a_flush_interval_write_its_state_once() {
    let kafka = kafka(1);
    let receiver = Receiver::start().await;
    // An interval no test outlasts: the one flush is the one at shutdown.
    let config = config_text(kafka.bootstrap(), &receiver.url, "").replace(
        "restore_timeout = \"20s\"",
        "restore_timeout = \"20s\"\nflush_interval = \"1h\"",
    );
    let daemon = Daemon::start(&config, &rules_text("1h")).await;
    let events: Vec<serde_json::Value> = (0..5)
        .map(|i| {
            json!({"id": format!("e{i}"), "type": "lead.updated", "lead": "L-1",
                   "occurred_at": now_plus(i * 10), "fields": {"stage": "working", "step": i}})
        })
        .collect();
    let (status, _, body) =
        post_signed(&daemon.url("/webhooks/web"), SOURCE_SECRET, &json!(events)).await;
    assert_eq!(status, 202, "{body}");
    daemon
        .wait_for_metric(
            "the engine to apply the five events",
            "leadwatch_engine_events_total{outcome=\"applied\"}",
            PATIENCE,
            |v| v >= 5.0,
        )
        .await;
    daemon.stop().await;

    let records = read_topic(kafka.bootstrap(), "lwtest.state", 1).await;
    let of_lead = records.iter().filter(|(key, _)| key == "L-1").count();
    assert_eq!(of_lead, 1, "state records of L-1: {records:?}");
}

/// Ingest answers while the engine restores its partitions: the broker refuses to list offsets
/// a few times, so the engine's restore fails and is retried with backoff (1 s, then 2 s …);
/// meanwhile a webhook gets its 202, and its event is applied once the partition is restored.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ingest_answers_while_the_engine_restores() {
    use rdkafka::types::{RDKafkaApiKey, RDKafkaRespErr};
    let kafka = kafka(1);
    // Only ingest and the engine, so the restore's requests meet most of the refusals. The
    // events consumer's first offset lookups, every 100 ms from the assignment, may take some
    // before a loaded machine's restore asks: five leave the restore its share (and at most
    // 1 + 2 + 4 + 8 + 16 s of its backoff).
    kafka.request_errors(
        RDKafkaApiKey::ListOffsets,
        &[RDKafkaRespErr::RD_KAFKA_RESP_ERR_TOPIC_AUTHORIZATION_FAILED; 5],
    );
    let receiver = Receiver::start().await;
    let config = config_text(kafka.bootstrap(), &receiver.url, "").replace(
        "shutdown_grace = \"5s\"",
        "shutdown_grace = \"5s\"\nroles = [\"ingest\", \"engine\"]",
    );
    let daemon = Daemon::start(&config, &rules_text("1h")).await;
    const FAILING: &str = "leadwatch_restores_failing{topic=\"lwtest.state\"}";
    daemon
        .wait_for_metric("the engine's restore to fail", FAILING, PATIENCE, |v| {
            v >= 1.0
        })
        .await;
    let (status, _, body) = post_signed(
        &daemon.url("/webhooks/web"),
        SOURCE_SECRET,
        &ready_event("during-restore", "L-1", &now_plus(0)),
    )
    .await;
    assert_eq!(status, 202, "{body}");
    assert_eq!(daemon.metric(FAILING).await, 1.0, "still restoring");

    daemon
        .wait_for_metric(
            "the event applied once the partition is restored",
            "leadwatch_engine_events_total{outcome=\"applied\"}",
            PATIENCE,
            |v| v >= 1.0,
        )
        .await;
    assert_eq!(daemon.metric(FAILING).await, 0.0);
    assert_eq!(daemon.metric("leadwatch_engine_leads").await, 1.0);
    daemon.stop().await;
}
