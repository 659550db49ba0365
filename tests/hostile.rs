//! Nothing a sender posts stops, wedges or silently skips ingest (issue 11, the ingest side):
//! oversized values are cut, marked and counted while the raw topic keeps the original and the
//! lead still alerts; times from the future are clamped; a generic source cannot speak for
//! another system's leads; and hostile load — slow connections up to the cap, absurd signature
//! headers, a megabyte of `SessionId` — is answered cheaply while normal webhooks keep working.

mod support;

use std::time::Duration;

use serde_json::{Value, json};
use support::*;

const PATIENCE: Duration = Duration::from_secs(60);

/// The `lead.updated` of `lead`, sales-ready, with `extra` fields.
fn ready_with(id: &str, lead: &str, at: &str, extra: Value) -> Value {
    let mut event = ready_event(id, lead, at);
    for (k, v) in extra.as_object().unwrap() {
        event["fields"][k] = v.clone();
    }
    event
}

/// The records of `topic` whose key is `key`.
async fn records_keyed(bootstrap: &str, topic: &str, key: &str, min: usize) -> Vec<Value> {
    read_topic(bootstrap, &format!("{PREFIX}.{topic}"), min)
        .await
        .into_iter()
        .filter(|(k, _)| k == key)
        .map(|(_, v)| v)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oversized_value_is_cut_marked_and_counted_while_raw_keeps_it_and_the_lead_alerts() {
    let kafka = kafka(1);
    let receiver = Receiver::start().await;
    let daemon = Daemon::start(
        &config_text(kafka.bootstrap(), &receiver.url, ""),
        &rules_text("3s"),
    )
    .await;
    // 600 KB of two-byte characters after one one-byte character: a cut at 64 KiB falls inside
    // a character unless it looks for a boundary.
    let notes = format!("x{}", "é".repeat(300_000));
    let event = ready_with("big-1", "L-big", &now_plus(0), json!({ "notes": notes }));
    let (status, _, body) = post_signed(&daemon.url("/webhooks/web"), SOURCE_SECRET, &event).await;
    assert_eq!((status, body), (202, json!({"accepted": 1})));

    // The event as produced: the value cut on a character boundary, marked at its end.
    let produced = records_keyed(kafka.bootstrap(), "events", "L-big", 1).await;
    let kept = produced[0]["fields"]["notes"].as_str().unwrap();
    assert!(kept.len() <= 64 * 1024, "{} bytes kept", kept.len());
    assert!(kept.len() > 60 * 1024, "cut to {} bytes", kept.len());
    assert!(
        kept.ends_with("…[truncated]"),
        "{}",
        &kept[kept.len() - 40..]
    );
    assert!(notes.starts_with(kept.strip_suffix("…[truncated]").unwrap()));
    assert_eq!(produced[0]["fields"]["stage"], "sales_ready");
    // The raw topic keeps the body as it came.
    let raw = records_keyed(kafka.bootstrap(), "raw", "web", 1).await;
    let original: Value = serde_json::from_str(raw[0]["body"].as_str().unwrap()).unwrap();
    assert_eq!(original["fields"]["notes"].as_str(), Some(notes.as_str()));
    assert_eq!(
        daemon
            .metric("leadwatch_ingest_values_cut_total{source=\"web\"}")
            .await,
        1.0
    );
    // The rules still see the lead: it alerts.
    wait_for("the breach alert", PATIENCE, || async {
        receiver.count() >= 1
    })
    .await;
    assert_eq!(receiver.all()[0].json()["data"]["lead"], "L-big");
    daemon.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_event_from_the_future_is_clamped_to_its_arrival_and_counted() {
    let kafka = kafka(1);
    let receiver = Receiver::start().await;
    let daemon = Daemon::start(
        &config_text(kafka.bootstrap(), &receiver.url, ""),
        &rules_text("3s"),
    )
    .await;
    let month = 30 * 24 * 3600 * 1000;
    let url = daemon.url("/webhooks/web");
    let ahead = ready_event("future-1", "L-future", &now_plus(month));
    assert_eq!(post_signed(&url, SOURCE_SECRET, &ahead).await.0, 202);
    // Within the skew (default 5 minutes) a sender's clock is taken as it is.
    let slightly = ready_event("soon-1", "L-soon", &now_plus(60_000));
    assert_eq!(post_signed(&url, SOURCE_SECRET, &slightly).await.0, 202);

    let produced = records_keyed(kafka.bootstrap(), "events", "L-future", 1).await;
    assert_eq!(
        produced[0]["occurred_at"], produced[0]["received_at"],
        "{produced:?}"
    );
    let soon = records_keyed(kafka.bootstrap(), "events", "L-soon", 1).await;
    assert_ne!(soon[0]["occurred_at"], soon[0]["received_at"]);
    assert_eq!(
        daemon
            .metric("leadwatch_ingest_clock_clamped_total{source=\"web\"}")
            .await,
        1.0
    );
    // Stamped a month ahead, it would neither alert nor expire; clamped, it breaches on time.
    wait_for("the breach alert of the clamped lead", PATIENCE, || async {
        receiver
            .all()
            .iter()
            .any(|r| r.json()["data"]["lead"] == "L-future")
    })
    .await;
    daemon.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_generic_source_speaks_for_another_systems_leads_only_where_it_lists_the_namespace() {
    let kafka = kafka(1);
    let extra = format!(
        "[sources.bridge]\nkind = \"generic\"\nsecret = \"{SOURCE_SECRET}\"\nnamespaces = [\"hubspot\"]\n"
    );
    let config = format!(
        "roles = [\"ingest\"]\n{}",
        config_text(kafka.bootstrap(), "http://127.0.0.1:1/alerts", &extra)
    );
    let daemon = Daemon::start(&config, &rules_text("1h")).await;
    let web = daemon.url("/webhooks/web");
    let bridge = daemon.url("/webhooks/bridge");
    let at = now_plus(0);
    let refused = |answer: (u16, axum::http::HeaderMap, Value)| {
        assert_eq!(answer.0, 400, "{answer:?}");
        assert_eq!(answer.2["error"], "malformed", "{answer:?}");
        answer.2["problems"][0]["field"]
            .as_str()
            .unwrap()
            .to_string()
    };

    // Bare keys stay verbatim.
    let bare = ready_event("b-1", "L-1", &at);
    assert_eq!(post_signed(&web, SOURCE_SECRET, &bare).await.0, 202);
    // Another system's namespace, in `lead` or in `into`: refused, the field named.
    let traversal = ready_event("t-1", "hubspot:1/../../companies/5", &at);
    assert_eq!(
        refused(post_signed(&web, SOURCE_SECRET, &traversal).await),
        "lead"
    );
    let plain = ready_event("t-2", "hubspot:1551", &at);
    assert_eq!(
        refused(post_signed(&web, SOURCE_SECRET, &plain).await),
        "lead"
    );
    let merge = json!([bare, {"id": "m-1", "type": "lead.merged", "lead": "L-2",
        "occurred_at": at, "into": "salesforce:00Q5g00000ABCDEEA2"}]);
    let answer = post_signed(&web, SOURCE_SECRET, &merge).await;
    assert_eq!(refused(answer.clone()), "[1].into");
    assert!(
        answer.2["problems"][0]["message"]
            .as_str()
            .unwrap()
            .contains("namespaces"),
        "{answer:?}"
    );
    let upper = ready_event("t-3", "HubSpot:1551", &at);
    assert_eq!(
        refused(post_signed(&web, SOURCE_SECRET, &upper).await),
        "lead"
    );

    // A source that lists the namespace may use it, with an object id of letters and digits.
    assert_eq!(post_signed(&bridge, SOURCE_SECRET, &plain).await.0, 202);
    assert_eq!(
        refused(post_signed(&bridge, SOURCE_SECRET, &traversal).await),
        "lead"
    );
    let other = ready_event("t-4", "salesforce:00Q5g00000ABCDEEA2", &at);
    assert_eq!(
        refused(post_signed(&bridge, SOURCE_SECRET, &other).await),
        "lead"
    );
    assert_eq!(
        daemon
            .metric("leadwatch_webhook_requests_total{source=\"web\",outcome=\"malformed\"}")
            .await,
        4.0
    );
    daemon.stop().await;
}
