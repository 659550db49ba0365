//! The vendor sources end to end: the vendor's documented payload (fixtures under
//! `tests/fixtures/VENDOR/`) → the daemon's HTTP endpoint → Kafka (librdkafka's mock cluster) →
//! the first-touch SLA → a breach alert at a real HTTP receiver, or none when the CRM logged a
//! touch in time. Plus how each vendor's bad requests are refused, raw capture and replay.
//!
//! Times in the fixtures are moved to now, so deadlines fall a few seconds ahead.

mod support;

use leadwatch::clock::Clock;
use std::time::Duration;

use serde_json::{Value, json};
use support::*;

const PATIENCE: Duration = Duration::from_secs(60);

const HS_SECRET: &str = "hs-client-secret-9f2c";
const HS_URL: &str = "https://hooks.example.com/webhooks/hs";

const SOURCES: &str = r#"
[sources.hs]
kind = "hubspot"
secret = ["hs-client-secret-next", "hs-client-secret-9f2c"]
public_url = "https://hooks.example.com/webhooks/hs"
portal_ids = [62515]
link = "https://app.hubspot.com/contacts/62515/record/0-1/{id}"

[sources.sf]
kind = "salesforce"
organization_ids = ["00D5g000004Xq2R"]
username = "sfuser"
password = "sfpass-31"
path_secret = "s3gment"

[sources.mk]
kind = "marketo"
header = "X-Leadwatch-Token"
secret = ["t0k3n-new", "t0k3n-old"]
[sources.mk.fields]
id = "/eventId"

[sources.pd]
kind = "pipedrive"
username = "pd"
password = "s3cret"
[sources.pd.fields]
stage = "5c1fa2a38fd6e5e7b9e0a6d4b8e6b1c2d3e4f5a6"
"#;

fn rules(sales_ready: &str, within: &str) -> String {
    format!("[lifecycle]\nsales_ready = '{sales_ready}'\n[first_touch]\nwithin = \"{within}\"\n")
}

fn now_ms() -> i64 {
    Clock::system().now().as_millisecond()
}

fn iso(ms: i64) -> String {
    jiff::Timestamp::from_millisecond(ms).unwrap().to_string()
}

/// Starts a whole daemon (ingest, engine, dispatch) with the four vendor sources.
async fn daemon(
    kafka: &leadwatch::bus::embedded::EmbeddedKafka,
    receiver: &Receiver,
    sales_ready: &str,
) -> Daemon {
    Daemon::start(
        &config_text(kafka.bootstrap(), &receiver.url, SOURCES),
        &rules(sales_ready, "3s"),
    )
    .await
}

/// Waits for the one breach alert, then checks it is for `lead` and that nothing else fired.
async fn only_breach_is(daemon: Daemon, receiver: &Receiver, lead: &str, owner: &str) {
    wait_for("the breach alert", PATIENCE, || async {
        receiver.count() >= 1
    })
    .await;
    let alert = receiver.all()[0].json();
    assert_eq!(alert["type"], "sla.first_touch.breached");
    assert_eq!(alert["data"]["lead"], lead);
    assert_eq!(alert["data"]["owner"], owner);
    // The touched lead's deadline came first: had it fired, it would be counted by now.
    assert_eq!(
        daemon
            .metric("leadwatch_alerts_fired_total{type=\"sla.first_touch.breached\"}")
            .await,
        1.0
    );
    daemon.stop().await;
    assert_eq!(receiver.count(), 1, "{:?}", receiver.all());
}

/// A HubSpot fixture batch for `contact`, its events moved to start at `at_ms`.
fn hubspot_batch(name: &str, contact: u64, at_ms: i64, attempt: u64) -> String {
    let (_, body) = fixture("hubspot", name);
    let mut events: Value = serde_json::from_str(&body).unwrap();
    let first = events
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["occurredAt"].as_i64().unwrap())
        .min()
        .unwrap();
    for e in events.as_array_mut().unwrap() {
        let shifted = at_ms + (e["occurredAt"].as_i64().unwrap() - first);
        e["occurredAt"] = json!(shifted);
        e["attemptNumber"] = json!(attempt);
        for key in ["objectId", "fromObjectId", "toObjectId"] {
            if e[key] == json!(1551) {
                e[key] = json!(contact);
            }
        }
    }
    events.to_string()
}

async fn post_hubspot(url: &str, body: &str) -> (u16, Value) {
    let mut headers = vec![("Content-Type".to_string(), "application/json".to_string())];
    headers.extend(hubspot_v3(HS_SECRET, HS_URL, body));
    let (status, _, text) = post_with(url, &headers, body.to_string()).await;
    (status, serde_json::from_str(&text).unwrap_or(Value::Null))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hubspot_a_sales_qualified_contact_breaches_and_a_logged_call_cancels_it() {
    let kafka = kafka(1);
    let receiver = Receiver::start().await;
    let daemon = daemon(&kafka, &receiver, r#"lead.stage == "salesqualifiedlead""#).await;
    let url = daemon.url("/webhooks/hs");
    let t = now_ms();

    // Contact 1551 becomes an SQL with an owner (the batch is out of order, holds a duplicate and
    // a company event); a call is logged on it soon after. Contact 1552 the same, never called.
    let first = hubspot_batch("contact_sales_ready.http", 1551, t, 0);
    let (status, body) = post_hubspot(&url, &first).await;
    assert_eq!(
        (status, body),
        (202, json!({"accepted": 3, "duplicates": 1}))
    );
    let call = hubspot_batch("call_engagement.http", 1551, t + 2500, 0);
    let (status, body) = post_hubspot(&url, &call).await;
    assert_eq!(
        (status, body),
        (202, json!({"accepted": 1, "duplicates": 1}))
    );
    let other = hubspot_batch("contact_sales_ready.http", 1552, t + 500, 0);
    assert_eq!(post_hubspot(&url, &other).await.0, 202);
    // HubSpot retries the first batch: nothing new goes downstream.
    let retry = hubspot_batch("contact_sales_ready.http", 1551, t, 1);
    let (status, body) = post_hubspot(&url, &retry).await;
    assert_eq!(
        (status, body),
        (202, json!({"accepted": 0, "duplicates": 4}))
    );

    daemon
        .wait_for_metric(
            "the engine to apply 7 events",
            "leadwatch_engine_events_total{outcome=\"applied\"}",
            PATIENCE,
            |v| v >= 7.0,
        )
        .await;
    assert_eq!(
        daemon
            .metric_or_zero("leadwatch_engine_events_total{outcome=\"duplicate\"}")
            .await,
        0.0,
        "ingest already dropped the retried events"
    );
    assert_eq!(
        daemon
            .metric("leadwatch_ingest_events_total{source=\"hs\",outcome=\"ignored\"}")
            .await,
        5.0,
        "three company events, the call's creation and a removed association"
    );
    only_breach_is(daemon, &receiver, "hubspot:1552", "7001").await;
}

fn salesforce_headers() -> Vec<(String, String)> {
    let (mut headers, _) = fixture("salesforce", "lead_sales_ready.http");
    // sfuser:sfpass-31
    headers.push((
        "Authorization".into(),
        "Basic c2Z1c2VyOnNmcGFzcy0zMQ==".into(),
    ));
    headers
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn salesforce_an_open_lead_breaches_and_a_completed_call_task_cancels_it() {
    let kafka = kafka(1);
    let receiver = Receiver::start().await;
    let daemon = daemon(&kafka, &receiver, r#"lead.stage == "Open - Not Contacted""#).await;
    let url = daemon.url("/webhooks/sf/s3gment");
    let t = now_ms();
    let (_, lead) = fixture("salesforce", "lead_sales_ready.http");
    let (_, task) = fixture("salesforce", "task_call.http");
    let lead_a = lead.replace("2026-11-25T09:58:12.000Z", &iso(t));
    let lead_b = lead
        .replace("2026-11-25T09:58:12.000Z", &iso(t + 200))
        .replace("00Q5g00000ABCDEEA2", "00Q5g00000ABCDEEA3")
        .replace("04l5g00000ZZ1aAAAT", "04l5g00000ZZ1bAAAT");
    let task = task.replace("2026-11-25T09:59:30.000Z", &iso(t + 300));

    for body in [&lead_a, &task, &lead_b, &lead_a] {
        let (status, headers, text) = post_with(&url, &salesforce_headers(), body.clone()).await;
        assert_eq!(status, 200, "{text}");
        assert!(
            headers["content-type"]
                .to_str()
                .unwrap()
                .starts_with("text/xml")
        );
        assert!(text.contains("<Ack>true</Ack>"), "{text}");
    }
    assert_eq!(
        daemon
            .metric("leadwatch_ingest_events_total{source=\"sf\",outcome=\"duplicate\"}")
            .await,
        1.0,
        "the retried notification"
    );
    only_breach_is(
        daemon,
        &receiver,
        "salesforce:00Q5g00000ABCDEEA3",
        "0055g00000OWNR1AAA",
    )
    .await;
}

/// A CRM's starter rules file (`config/examples/`), its reason judged `grace` after the close.
fn starter_rules(crm: &str, grace: &str) -> String {
    let path = format!(
        "{}/config/examples/{crm}.rules.toml",
        env!("CARGO_MANIFEST_DIR")
    );
    let text = std::fs::read_to_string(path).unwrap();
    let changed = text.replace(
        "reason_grace     = \"5m\"",
        &format!("reason_grace     = \"{grace}\""),
    );
    assert_ne!(changed, text, "the starter file sets reason_grace");
    changed
}

/// Waits for both close-out alerts for `lead` (and only those).
async fn both_close_out_alerts(daemon: Daemon, receiver: &Receiver, lead: &str) {
    wait_for("both close-out alerts", PATIENCE, || async {
        receiver.count() >= 2
    })
    .await;
    daemon.stop().await;
    let mut fired: Vec<(String, String)> = receiver
        .all()
        .iter()
        .map(|r| {
            let a = r.json();
            (
                a["type"].as_str().unwrap().to_string(),
                a["data"]["lead"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    fired.sort();
    assert_eq!(
        fired,
        vec![
            ("disposition.missing_reason".to_string(), lead.to_string()),
            (
                "follow_up.insufficient_attempts".to_string(),
                lead.to_string()
            ),
        ]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn salesforce_starter_rules_catch_a_lead_worked_once_then_closed_without_a_reason() {
    let kafka = kafka(1);
    let receiver = Receiver::start().await;
    let daemon = Daemon::start(
        &config_text(kafka.bootstrap(), &receiver.url, SOURCES),
        &starter_rules("salesforce", "2s"),
    )
    .await;
    let url = daemon.url("/webhooks/sf/s3gment");
    let t = now_ms();
    let (_, lead) = fixture("salesforce", "lead_sales_ready.http");
    let (_, task) = fixture("salesforce", "task_call.http");
    // Open - Not Contacted → Working - Contacted → one completed call → Unqualified, no reason.
    let status = |at: i64, status: &str, notification: &str| {
        lead.replace("2026-11-25T09:58:12.000Z", &iso(at))
            .replace("Open - Not Contacted", status)
            .replace("04l5g00000ZZ1aAAAT", notification)
    };
    let open = status(t, "Open - Not Contacted", "04l5g00000ZZ1aAAAT");
    let working = status(t + 100, "Working - Contacted", "04l5g00000ZZ1wAAAT");
    let call = task.replace("2026-11-25T09:59:30.000Z", &iso(t + 200));
    let closed = status(t + 300, "Unqualified", "04l5g00000ZZ1uAAAT");
    for body in [&open, &working, &call, &closed] {
        let (status, _, text) = post_with(&url, &salesforce_headers(), body.clone()).await;
        assert_eq!(status, 200, "{text}");
        assert!(text.contains("<Ack>true</Ack>"), "{text}");
    }
    both_close_out_alerts(daemon, &receiver, "salesforce:00Q5g00000ABCDEEA2").await;
}

/// One HubSpot contact property change, shaped like the fixture's.
fn hubspot_property(contact: u64, event_id: u64, at_ms: i64, name: &str, value: &str) -> String {
    let (_, body) = fixture("hubspot", "contact_sales_ready.http");
    let events: Value = serde_json::from_str(&body).unwrap();
    let mut event = events[0].clone();
    event["eventId"] = json!(event_id);
    event["objectId"] = json!(contact);
    event["occurredAt"] = json!(at_ms);
    event["propertyName"] = json!(name);
    event["propertyValue"] = json!(value);
    json!([event]).to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hubspot_starter_rules_catch_a_contact_worked_once_then_closed_without_a_reason() {
    let kafka = kafka(1);
    let receiver = Receiver::start().await;
    let daemon = Daemon::start(
        &config_text(kafka.bootstrap(), &receiver.url, SOURCES),
        &starter_rules("hubspot", "2s"),
    )
    .await;
    let url = daemon.url("/webhooks/hs");
    let t = now_ms();
    // An owned MQL, lead status NEW → IN_PROGRESS → one logged call → UNQUALIFIED, no reason.
    let mql = hubspot_batch("contact_sales_ready.http", 1551, t, 0)
        .replace("salesqualifiedlead", "marketingqualifiedlead");
    let batches = [
        mql,
        hubspot_property(1551, 3930001, t + 2600, "hs_lead_status", "NEW"),
        hubspot_property(1551, 3930002, t + 2650, "hs_lead_status", "IN_PROGRESS"),
        hubspot_batch("call_engagement.http", 1551, t + 2700, 0),
        hubspot_property(1551, 3930003, t + 3500, "hs_lead_status", "UNQUALIFIED"),
    ];
    for body in &batches {
        let (status, answer) = post_hubspot(&url, body).await;
        assert_eq!(status, 202, "{answer}");
    }
    both_close_out_alerts(daemon, &receiver, "hubspot:1551").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn marketo_a_sales_ready_lead_breaches_and_a_logged_touch_cancels_it() {
    let kafka = kafka(1);
    let receiver = Receiver::start().await;
    let daemon = daemon(
        &kafka,
        &receiver,
        r#"lead.stage == "sales_ready" && lead.score >= 80"#,
    )
    .await;
    let url = daemon.url("/webhooks/mk");
    let t = now_ms();
    let (headers, body) = fixture("marketo", "lead_mql.http");
    let mut a: Value = serde_json::from_str(&body).unwrap();
    a["occurred_at"] = json!(iso(t));
    let mut b = a.clone();
    b["leadId"] = json!(318582);
    b["eventId"] = json!("mkto-318582-1");
    b["occurred_at"] = json!(iso(t + 200));
    let touch = json!({"eventId": "mkto-act-1", "leadId": 318581, "activity": "Email",
        "activity_by": "dana@ourco.example", "occurred_at": iso(t + 300)});
    for body in [&a, &touch, &b] {
        let (status, _, text) = post_with(&url, &headers, body.to_string()).await;
        assert_eq!(status, 202, "{text}");
    }
    only_breach_is(daemon, &receiver, "marketo:318582", "dana@ourco.example").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipedrive_a_sales_ready_person_breaches_and_an_activity_marked_done_cancels_it() {
    let kafka = kafka(1);
    let receiver = Receiver::start().await;
    let daemon = daemon(&kafka, &receiver, r#"lead.stage == "sales_ready""#).await;
    let url = daemon.url("/webhooks/pd");
    let t = now_ms();
    let (headers, person) = fixture("pipedrive", "person_sales_ready.http");
    let (_, activity) = fixture("pipedrive", "activity_done.http");
    let mut a: Value = serde_json::from_str(&person).unwrap();
    a["meta"]["timestamp"] = json!(iso(t));
    let mut b = a.clone();
    b["data"]["id"] = json!(4712);
    b["meta"]["entity_id"] = json!("4712");
    b["meta"]["id"] = json!("1a2b3c4d-0000-4000-8000-000000004712");
    b["meta"]["timestamp"] = json!(iso(t + 200));
    let mut done: Value = serde_json::from_str(&activity).unwrap();
    done["data"]["marked_as_done_time"] = json!(iso(t + 300));
    done["meta"]["timestamp"] = json!(iso(t + 300));
    for body in [&a, &done, &b] {
        let (status, _, text) = post_with(&url, &headers, body.to_string()).await;
        assert_eq!(status, 202, "{text}");
    }
    only_breach_is(daemon, &receiver, "pipedrive:4712", "88001").await;
}

/// A daemon that only ingests: no consumer group to join, so it is ready at once.
async fn ingest_only(kafka: &leadwatch::bus::embedded::EmbeddedKafka, extra: &str) -> Daemon {
    let config = format!(
        "roles = [\"ingest\"]\n{}",
        config_text(
            kafka.bootstrap(),
            "http://127.0.0.1:1/alerts",
            &format!("{SOURCES}{extra}")
        )
    );
    Daemon::start(&config, &rules(r#"lead.stage == "x""#, "1h")).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_vendor_refuses_bad_requests_precisely_and_keeps_authentic_ones_raw() {
    let kafka = kafka(1);
    let daemon = ingest_only(&kafka, "").await;
    let json_ct = || vec![("Content-Type".to_string(), "application/json".to_string())];

    // HubSpot.
    let hs = daemon.url("/webhooks/hs");
    let good = hubspot_batch("contact_sales_ready.http", 1551, now_ms(), 0);
    let status = |r: (u16, HeaderMap, String)| {
        (
            r.0,
            serde_json::from_str::<Value>(&r.2).unwrap_or(Value::Null),
        )
    };
    let (code, body) = status(post_with(&hs, &json_ct(), good.clone()).await);
    assert_eq!((code, body["error"].as_str()), (401, Some("unauthorized")));
    assert_eq!(body["message"], "missing header `X-HubSpot-Signature-v3`");
    let mut wrong = json_ct();
    wrong.extend(hubspot_v3("not-the-client-secret", HS_URL, &good));
    assert_eq!(
        post_with(&hs, &wrong, good.clone()).await.0,
        401,
        "wrong secret"
    );
    let mut signed = json_ct();
    signed.extend(hubspot_v3(HS_SECRET, HS_URL, &good));
    let tampered = good.replace("salesqualifiedlead", "customer");
    assert_eq!(
        post_with(&hs, &signed, tampered).await.0,
        401,
        "tampered body"
    );
    assert_eq!(
        post_with(&hs, &signed, good.clone()).await.0,
        202,
        "the same headers with the body they signed"
    );
    // Signed correctly, six minutes ago.
    let stale_ts = (now_ms() - 6 * 60 * 1000).to_string();
    let stale_sig = {
        use base64::Engine as _;
        use hmac::{KeyInit, Mac};
        let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(HS_SECRET.as_bytes()).unwrap();
        mac.update(format!("POST{HS_URL}{good}{stale_ts}").as_bytes());
        base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes())
    };
    let mut stale = json_ct();
    stale.push(("X-HubSpot-Signature-v3".into(), stale_sig));
    stale.push(("X-HubSpot-Request-Timestamp".into(), stale_ts));
    let (code, body) = status(post_with(&hs, &stale, good.clone()).await);
    assert_eq!(code, 401);
    assert!(
        body["message"].as_str().unwrap().contains("5 minutes old"),
        "{body}"
    );
    let foreign = good.replace("62515", "99999");
    assert_eq!(post_hubspot(&hs, &foreign).await.0, 403, "another portal");
    let one = json!({"eventId": 1, "subscriptionType": "contact.creation", "portalId": 62515, "objectId": 1, "occurredAt": now_ms()});
    let many = Value::Array(vec![one; 101]).to_string();
    let (code, body) = post_hubspot(&hs, &many).await;
    assert_eq!((code, body["error"].as_str()), (413, Some("too_large")));
    let (code, body) = post_hubspot(&hs, "[{\"subscriptionType\": 5}]").await;
    assert_eq!((code, body["error"].as_str()), (400, Some("malformed")));
    let fields: Vec<&str> = body["problems"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["field"].as_str().unwrap())
        .collect();
    assert_eq!(
        fields,
        ["[0].subscriptionType", "[0].occurredAt", "[0].portalId"]
    );

    // Salesforce answers in SOAP.
    let (_, lead) = fixture("salesforce", "lead_sales_ready.http");
    let sf = daemon.url("/webhooks/sf/s3gment");
    let (xml_headers, _) = fixture("salesforce", "lead_sales_ready.http");
    let (code, headers, text) = post_with(&sf, &xml_headers, lead.clone()).await;
    assert_eq!(code, 401, "no basic auth");
    assert!(
        headers["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/xml")
    );
    assert!(
        text.contains("<faultcode>soapenv:Client</faultcode>"),
        "{text}"
    );
    let (code, _, _) = post_with(
        &daemon.url("/webhooks/sf/guess"),
        &salesforce_headers(),
        lead.clone(),
    )
    .await;
    assert_eq!(code, 401, "wrong path secret");
    let (code, _, _) = post_with(
        &daemon.url("/webhooks/sf"),
        &salesforce_headers(),
        lead.clone(),
    )
    .await;
    assert_eq!(code, 401, "no path secret");
    let other_org = lead.replace("00D5g000004Xq2REAS", "00D000000000001AAA");
    let (code, _, text) = post_with(&sf, &salesforce_headers(), other_org).await;
    assert_eq!(code, 403);
    assert!(text.contains("is not in `organization_ids`"), "{text}");
    let (code, _, text) = post_with(&sf, &salesforce_headers(), "<soapenv:Envelope><broken").await;
    assert_eq!(code, 400);
    assert!(
        text.contains("malformed: not a SOAP Outbound Message"),
        "{text}"
    );

    // Marketo.
    let mk = daemon.url("/webhooks/mk");
    let (mk_headers, mk_body) = fixture("marketo", "lead_mql.http");
    assert_eq!(post_with(&mk, &json_ct(), mk_body.clone()).await.0, 401);
    let mut wrong = json_ct();
    wrong.push(("X-Leadwatch-Token".into(), "t0k3n".into()));
    assert_eq!(post_with(&mk, &wrong, mk_body.clone()).await.0, 401);
    let (code, body) = status(post_with(&mk, &mk_headers, "{\"email\": \"x@y.example\"}").await);
    assert_eq!(
        (code, body["problems"][0]["field"].as_str()),
        (400, Some("lead"))
    );

    // Pipedrive.
    let pd = daemon.url("/webhooks/pd");
    let (pd_headers, pd_body) = fixture("pipedrive", "person_sales_ready.http");
    assert_eq!(post_with(&pd, &json_ct(), pd_body.clone()).await.0, 401);
    let mut wrong = json_ct();
    wrong.push(("Authorization".into(), "Basic cGQ6d3Jvbmc=".into()));
    assert_eq!(post_with(&pd, &wrong, pd_body.clone()).await.0, 401);
    assert_eq!(post_with(&pd, &pd_headers, "{\"meta\": ").await.0, 400);

    // Every authentic request is in the raw topic — the unparseable ones marked so — and no
    // credential is.
    for (source, unparsed) in [("hs", 2.0), ("sf", 1.0), ("mk", 1.0), ("pd", 1.0)] {
        let metric =
            format!("leadwatch_raw_records_total{{source=\"{source}\",outcome=\"unparsed\"}}");
        assert_eq!(daemon.metric(&metric).await, unparsed, "{source}");
    }
    let raw = read_topic(kafka.bootstrap(), "lwtest.raw", 6).await;
    let text = serde_json::to_string(&raw).unwrap();
    for secret in [
        "hs-client-secret",
        "sfpass",
        "s3gment",
        "t0k3n",
        "s3cret",
        "c2Z1c2Vy",
        "cGQ6",
        "x-hubspot-signature-v3",
    ] {
        assert!(!text.contains(secret), "`{secret}` reached the raw topic");
    }
    let unparsed: Vec<&Value> = raw
        .iter()
        .map(|(_, v)| v)
        .filter(|v| v["parsed"] == false)
        .collect();
    assert_eq!(unparsed.len(), 5, "{unparsed:#?}");
    assert!(
        unparsed
            .iter()
            .all(|r| r["error"]["error"].is_string() && r["body"].is_string())
    );
    let sf_raw = raw
        .iter()
        .find(|(k, v)| k == "sf" && v["parsed"] == false)
        .unwrap();
    assert_eq!(sf_raw.1["body"], "<soapenv:Envelope><broken");
    assert_eq!(
        sf_raw.1["headers"]["content-type"],
        "text/xml; charset=utf-8"
    );
    daemon.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replay_re_normalises_raw_requests_with_a_corrected_mapping() {
    let kafka = kafka(1);
    let daemon = ingest_only(&kafka, "").await;
    let hs = daemon.url("/webhooks/hs");
    // The portal keeps its score in a custom property the default mapping does not know.
    let body = json!([{"eventId": 77, "subscriptionType": "contact.propertyChange", "portalId": 62515,
        "objectId": 1551, "propertyName": "predictive_score", "propertyValue": "77", "occurredAt": now_ms()}])
    .to_string();
    assert_eq!(post_hubspot(&hs, &body).await.0, 202);
    assert_eq!(post_hubspot(&hs, "[not json").await.0, 400);
    let events = read_topic(kafka.bootstrap(), "lwtest.events", 1).await;
    let original = &events[0].1;
    assert_eq!(original["fields"], json!({"predictive_score": "77"}));

    // The admin maps it, and replays.
    let corrected = std::fs::read_to_string(daemon.dir.path().join("leadwatch.toml"))
        .unwrap()
        .replace(
            "[sources.sf]",
            "[sources.hs.fields]\nscore = \"predictive_score\"\n\n[sources.sf]",
        );
    let path = daemon.dir.path().join("corrected.toml");
    std::fs::write(&path, corrected).unwrap();
    let cfg = leadwatch::app::Config::load_with_env(&path, Vec::new()).unwrap();
    let report = leadwatch::ingest::replay::replay(
        &cfg.kafka,
        &cfg.server,
        &cfg.sources,
        "hs",
        None,
        None,
        &leadwatch::clock::Clock::system(),
    )
    .await
    .unwrap();
    assert_eq!(
        (report.records, report.events, report.failed.len()),
        (2, 1, 1),
        "{report}"
    );
    assert!(report.failed[0].1.contains("not valid JSON"), "{report}");

    let events = read_topic(kafka.bootstrap(), "lwtest.events", 2).await;
    let replayed = &events[1].1;
    let id = replayed["id"].as_str().unwrap();
    assert_eq!(
        id,
        format!("replay:{}:{}", report.run, original["id"].as_str().unwrap())
    );
    assert_eq!(
        replayed["fields"],
        json!({"predictive_score": "77", "score": 77})
    );
    assert_eq!(replayed["lead"], "hubspot:1551");
    assert_eq!(replayed["occurred_at"], original["occurred_at"]);

    // A time range that holds nothing replays nothing.
    let future = Clock::system().now() + jiff::SignedDuration::from_hours(1);
    let report = leadwatch::ingest::replay::replay(
        &cfg.kafka,
        &cfg.server,
        &cfg.sources,
        "hs",
        Some(future),
        None,
        &leadwatch::clock::Clock::system(),
    )
    .await
    .unwrap();
    assert_eq!((report.records, report.events), (0, 0));
    daemon.stop().await;
}

use axum::http::HeaderMap;

/// With Kafka down, Salesforce gets a SOAP fault with a 5xx (so its outbound message queue
/// retries) and, once Kafka is back, the Ack; nothing is acknowledged that is not in Kafka.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn salesforce_gets_a_soap_fault_while_kafka_is_down_and_the_ack_after() {
    let kafka = kafka(1);
    let daemon = ingest_only(&kafka, "").await;
    let url = daemon.url("/webhooks/sf/s3gment");
    let (_, lead) = fixture("salesforce", "lead_sales_ready.http");
    wait_for("readiness", PATIENCE, || async {
        reqwest::get(daemon.url("/readyz")).await.unwrap().status() == 200
    })
    .await;

    kafka.broker_down();
    let (status, headers, text) = post_with(&url, &salesforce_headers(), lead.clone()).await;
    assert_eq!(status, 503, "{text}");
    assert!(
        headers["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/xml")
    );
    assert!(headers.contains_key("retry-after"));
    assert!(
        text.contains("<soapenv:Fault>") || text.contains(":Fault>"),
        "{text}"
    );
    assert!(text.contains("faultstring"), "{text}");
    assert!(!text.contains("<Ack>true</Ack>"), "{text}");

    kafka.broker_up();
    wait_for("the Ack once Kafka is back", PATIENCE, || async {
        let (status, _, text) = post_with(&url, &salesforce_headers(), lead.clone()).await;
        status == 200 && text.contains("<Ack>true</Ack>")
    })
    .await;
    daemon.stop().await;
}
