//! The rules on a running daemon: the live pipeline and `simulate` give the same alerts for the
//! same events (one code path), and a rules edit applies on SIGHUP without a restart.

mod support;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use jiff::{SignedDuration, Timestamp};
use leadwatch::clock::Clock;
use leadwatch::engine::Engine;
use leadwatch::engine::rules::Rules;
use leadwatch::simulate;
use serde_json::{Value, json};
use support::*;

const PATIENCE: Duration = Duration::from_secs(60);

const RULES: &str = r#"
pool = ["dave@example.com", "erin@example.com"]

[lifecycle]
sales_ready = 'lead.stage == "MQL"'
closed      = 'lead.status == "Unqualified"'

[handoff]
assign_within = "3s"

[first_touch]
within        = "4s"
remind_before = "1s"
escalate      = [ { after = "6s", notify = "manager", reassign = true } ]

[follow_up]
min_attempts = 2

[disposition]
reasons = ["No budget"]
vague   = ["Other"]
# D's reason is judged 2 s after its close (the daemon and `simulate` alike).
reason_grace = "2s"

[directory."alice@example.com"]
name    = "Alice Adams"
manager = "carol@example.com"
slack   = "U0ALICE"
[directory."carol@example.com"]
slack   = "U0CAROL"

[recipients]
marketing_ops = ["mops@example.com"]
queue         = ["sdr@example.com"]
"#;

/// `RULES` plus business calendars and segments, for leads with a `region`: APAC runs on a
/// calendar whose working hours are the whole day (business time runs now) in Kiritimati
/// (UTC+14), with a 2 s first-touch SLA and a 1 s handoff; DACH runs on Berlin's calendar, whose
/// holidays (dates in Berlin) are `holidays`: nothing it owes falls due while they last.
fn rules_with_calendars(holidays: [jiff::civil::Date; 2]) -> String {
    let all_day = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"]
        .map(|d| format!("{d} = \"00:00-24:00\""))
        .join(", ");
    format!(
        r#"{RULES}
[calendars.apac]
time_zone = "Pacific/Kiritimati"
hours     = {{ {all_day} }}
holidays  = ["2026-01-01"]

[calendars.dach]
time_zone = "Europe/Berlin"
hours     = {{ {all_day} }}
holidays  = ["{}", "{}"]

[[segments]]
name        = "apac"
when        = 'has(lead.region) && lead.region == "APAC"'
calendar    = "apac"
first_touch = {{ within = "2s" }}
handoff     = {{ assign_within = "1s" }}

[[segments]]
name     = "dach"
when     = 'has(lead.region) && lead.region == "DACH"'
calendar = "dach"

[[segments]]
name        = "follow-up"
when        = 'has(lead.region) && lead.region == "FU"'
follow_up   = {{ attempt_every = "2s" }}
disposition = {{ feedback_within = "4s" }}
"#,
        holidays[0], holidays[1]
    )
}

fn at(t0: Timestamp, millis: i64) -> String {
    (t0 + SignedDuration::from_millis(millis)).to_string()
}

fn event(id: &str, lead: &str, when: String, fields: Value) -> Value {
    json!({"id": id, "type": "lead.updated", "lead": lead, "occurred_at": when, "fields": fields})
}

fn call(id: &str, lead: &str, when: String) -> Value {
    json!({"id": id, "type": "lead.activity", "lead": lead, "occurred_at": when,
           "activity": {"kind": "call", "by": "alice@example.com"}})
}

/// An alert without the instant it fired (the live one fires on the wall clock).
fn comparable(mut alert: Value) -> (String, Value) {
    alert.as_object_mut().unwrap().remove("timestamp");
    alert.as_object_mut().unwrap().remove("fired_at");
    (
        alert["data"]["alert_id"].as_str().unwrap().to_string(),
        alert,
    )
}

/// Waits until the daemon's engine holds its partitions: a first event is applied.
async fn warm_up(daemon: &Daemon) {
    let now = now_plus(0);
    let (status, _, _) = post_signed(
        &daemon.url("/webhooks/web"),
        SOURCE_SECRET,
        &event("warm", "L-warm", now, json!({"stage": "new"})),
    )
    .await;
    assert_eq!(status, 202);
    daemon
        .wait_for_metric(
            "the engine to apply a first event",
            "leadwatch_engine_events_total{outcome=\"applied\"}",
            PATIENCE,
            |v| v >= 1.0,
        )
        .await;
}

/// Round-the-clock rules, and (leads with a `region`) segments with their own rules and
/// business calendars: the same alerts, body for body, live and in `simulate`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn simulate_and_the_live_daemon_give_the_same_alerts() {
    let kafka = kafka(3);
    let receiver = Receiver::start().await;
    // Berlin's today and tomorrow: whenever the test runs, its minutes are holidays there.
    let berlin = Clock::system().now().in_tz("Europe/Berlin").unwrap().date();
    let rules = rules_with_calendars([berlin, berlin.tomorrow().unwrap()]);
    let daemon = Daemon::start(&config_text(kafka.bootstrap(), &receiver.url, ""), &rules).await;
    warm_up(&daemon).await;

    let t0 = Clock::system().now() + SignedDuration::from_millis(500);
    let owned = || json!({"stage": "MQL", "owner": "alice@example.com"});
    let mut events = vec![
        // A: untouched — reminder at 3 s, breach at 4 s, escalation (with a new owner) at 6 s.
        event(
            "a1",
            "L-a",
            at(t0, 0),
            json!({"stage": "MQL", "owner": "alice@example.com", "name": "Ann Able", "company": "Acme"}),
        ),
        // B: nobody owns it — unassigned at 3 s.
        event("b1", "L-b", at(t0, 0), json!({"stage": "MQL"})),
        // C: called in time — nothing.
        event("c1", "L-c", at(t0, 0), owned()),
        call("c2", "L-c", at(t0, 1000)),
        // D: one call, then closed as "Other" without a detail — too few attempts, vague reason.
        event("d1", "L-d", at(t0, 0), owned()),
        call("d2", "L-d", at(t0, 500)),
        event(
            "d3",
            "L-d",
            at(t0, 1000),
            json!({"status": "Unqualified", "disposition_reason": "Other"}),
        ),
    ];
    // E0…E5: untouched like A; with A, seven escalations suggest new owners from the pool's
    // round-robin, which runs per partition: `simulate` must place leads as the daemon does.
    for i in 0..6 {
        events.push(event(
            &format!("e{i}"),
            &format!("L-e{i}"),
            at(t0, 0),
            owned(),
        ));
    }
    let region = |r: &str, owner: Option<&str>| {
        let mut fields = json!({"stage": "MQL", "region": r});
        if let Some(o) = owner {
            fields["owner"] = json!(o);
        }
        fields
    };
    // F: APAC, untouched — its segment's SLA in its calendar: reminder at 1 s, breach at 2 s,
    // escalation at 6 s (the ladder from above).
    events.push(event(
        "f1",
        "L-f",
        at(t0, 0),
        region("APAC", Some("alice@example.com")),
    ));
    // I: APAC, nobody owns it — unassigned at 1 s (its segment's handoff).
    events.push(event("i1", "L-i", at(t0, 0), region("APAC", None)));
    // G and H: DACH, untouched and unowned — on holiday in Berlin: nothing falls due.
    events.push(event(
        "g1",
        "L-g",
        at(t0, 0),
        region("DACH", Some("alice@example.com")),
    ));
    events.push(event("h1", "L-h", at(t0, 0), region("DACH", None)));
    // J: called once at 0.5 s and left open — its next attempt is overdue at 2.5 s, its
    // close-out at 4.5 s (its segment's follow-up rules).
    events.push(event(
        "j1",
        "L-j",
        at(t0, 0),
        region("FU", Some("alice@example.com")),
    ));
    events.push(call("j2", "L-j", at(t0, 500)));
    let (status, _, body) =
        post_signed(&daemon.url("/webhooks/web"), SOURCE_SECRET, &json!(events)).await;
    assert_eq!(status, 202, "{body}");

    const ALERTS: usize = 6 + 6 * 3 + 3 + 1 + 2;
    wait_for("every alert", PATIENCE, || async {
        receiver.distinct() >= ALERTS
    })
    .await;
    // Nothing else is owed: wait out the last deadline (6 s) before counting.
    let end = t0 + SignedDuration::from_secs(8);
    wait_for("the last deadline to pass", PATIENCE, || async {
        Clock::system().now() > end
    })
    .await;
    let live: BTreeMap<String, Value> = receiver
        .all()
        .iter()
        .map(|r| comparable(r.json()))
        .collect();
    assert_eq!(live.len(), ALERTS, "{live:#?}");
    assert_eq!(receiver.count(), ALERTS, "an alert was delivered twice");

    // The same events through `simulate`, as a file of JSON lines.
    let lines: String = events
        .iter()
        .map(|e| {
            let mut e = e.clone();
            e["source"] = json!("web");
            e.to_string() + "\n"
        })
        .collect();
    let (read, bad) = simulate::read_events(lines.as_bytes()).unwrap();
    assert!(bad.is_empty());
    let engine = Engine::new(Arc::new(Rules::parse(&rules).unwrap()));
    let mut simulated = BTreeMap::new();
    simulate::run(&engine, read, Some(end), 3, |alert| {
        let (id, body) = comparable(serde_json::to_value(alert).unwrap());
        simulated.insert(id, body);
    });
    assert_eq!(simulated, live);

    let suggested: std::collections::BTreeSet<&str> = live
        .values()
        .filter_map(|a| a["data"]["suggested_owner"].as_str())
        .collect();
    assert_eq!(
        suggested.into_iter().collect::<Vec<_>>(),
        ["dave@example.com", "erin@example.com"],
        "the pool rotates"
    );
    let kinds: Vec<(&str, &str)> = live
        .values()
        .filter(|a| !a["data"]["lead"].as_str().unwrap().starts_with("L-e"))
        .map(|a| {
            (
                a["data"]["lead"].as_str().unwrap(),
                a["type"].as_str().unwrap(),
            )
        })
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .collect();
    assert_eq!(
        kinds,
        [
            ("L-a", "sla.first_touch.breached"),
            ("L-a", "sla.first_touch.escalated"),
            ("L-a", "sla.first_touch.reminder"),
            ("L-b", "lead.unassigned"),
            ("L-d", "disposition.vague_reason"),
            ("L-d", "follow_up.insufficient_attempts"),
            ("L-f", "sla.first_touch.breached"),
            ("L-f", "sla.first_touch.escalated"),
            ("L-f", "sla.first_touch.reminder"),
            ("L-i", "lead.unassigned"),
            ("L-j", "disposition.overdue"),
            ("L-j", "follow_up.attempt_overdue"),
        ]
    );
    // Each lead's deadlines are its own segment's, in its calendar.
    let deadline = |lead: &str, kind: &str| -> Timestamp {
        let a = live
            .values()
            .find(|a| a["data"]["lead"] == lead && a["type"] == kind)
            .unwrap();
        a["data"]["deadline"].as_str().unwrap().parse().unwrap()
    };
    let breached = "sla.first_touch.breached";
    assert_eq!(deadline("L-a", breached), t0 + SignedDuration::from_secs(4));
    assert_eq!(deadline("L-f", breached), t0 + SignedDuration::from_secs(2));
    assert_eq!(
        deadline("L-j", "follow_up.attempt_overdue"),
        t0 + SignedDuration::from_millis(2500)
    );
    assert_eq!(
        deadline("L-j", "disposition.overdue"),
        t0 + SignedDuration::from_millis(4500)
    );
    assert_eq!(
        deadline("L-i", "lead.unassigned"),
        t0 + SignedDuration::from_secs(1)
    );
    let escalation = live
        .values()
        .find(|a| a["type"] == "sla.first_touch.escalated")
        .unwrap();
    assert_eq!(escalation["data"]["to"], json!(["manager"]));
    assert_eq!(escalation["data"]["recipients"][0]["slack"], "U0CAROL");
    assert!(escalation["data"]["suggested_owner"].is_string());
    daemon.stop().await;
}

/// A lead keeps only the fields its rules read: new rules that read another (`lead.industry`)
/// cannot see it on leads held yet, and the daemon says so — a warning and a count per field; a
/// reload needing nothing new counts nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_that_reads_a_field_not_kept_says_so() {
    let kafka = kafka(3);
    let receiver = Receiver::start().await;
    let (daemon, reload) = Daemon::start_with_reloads(
        &config_text(kafka.bootstrap(), &receiver.url, ""),
        &rules_text("1h"),
    )
    .await;
    warm_up(&daemon).await;
    let missing = "leadwatch_engine_fields_missing_after_reload_total{field=\"industry\"}";
    let reads_industry = rules_text("1h").replace(
        "'lead.stage == \"sales_ready\"'",
        "'lead.stage == \"sales_ready\" && lead.industry == \"SaaS\"'",
    );
    assert!(reads_industry.contains("lead.industry"));
    std::fs::write(daemon.dir.path().join("rules.toml"), &reads_industry).unwrap();
    reload.send(()).unwrap();
    daemon
        .wait_for_metric("the missing field counted", missing, PATIENCE, |v| v == 1.0)
        .await;

    // The same rules again, a shorter SLA: nothing more is read, nothing more counted.
    std::fs::write(
        daemon.dir.path().join("rules.toml"),
        reads_industry.replace("\"1h\"", "\"2h\""),
    )
    .unwrap();
    reload.send(()).unwrap();
    daemon
        .wait_for_metric(
            "the second reload applied",
            "leadwatch_rules_reloads_total{outcome=\"applied\"}",
            PATIENCE,
            |v| v == 2.0,
        )
        .await;
    assert_eq!(daemon.metric(missing).await, 1.0);
    daemon.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn edited_rules_apply_on_reload_and_bad_ones_are_refused() {
    let kafka = kafka(3);
    let receiver = Receiver::start().await;
    let (daemon, reload) = Daemon::start_with_reloads(
        &config_text(kafka.bootstrap(), &receiver.url, ""),
        &rules_text("1h"),
    )
    .await;
    warm_up(&daemon).await;
    let url = daemon.url("/webhooks/web");

    // Under the 1 h rule this lead would wait an hour.
    let ready_at: Timestamp = now_plus(0).parse().unwrap();
    let (status, _, _) = post_signed(
        &url,
        SOURCE_SECRET,
        &ready_event("r1", "L-r", &ready_at.to_string()),
    )
    .await;
    assert_eq!(status, 202);
    daemon
        .wait_for_metric(
            "the lead applied",
            "leadwatch_engine_events_total{outcome=\"applied\"}",
            PATIENCE,
            |v| v >= 2.0,
        )
        .await;

    // The agreement changes to 2 s: the open lead's deadline moves, and its alert comes now.
    std::fs::write(daemon.dir.path().join("rules.toml"), rules_text("2s")).unwrap();
    reload.send(()).unwrap();
    wait_for("the breach under the edited rules", PATIENCE, || async {
        receiver.count() >= 1
    })
    .await;
    let alert = receiver.all()[0].json();
    assert_eq!(alert["data"]["lead"], "L-r");
    let deadline: Timestamp = alert["data"]["deadline"].as_str().unwrap().parse().unwrap();
    assert_eq!(deadline, ready_at + SignedDuration::from_secs(2));
    assert_eq!(
        daemon
            .metric("leadwatch_rules_reloads_total{outcome=\"applied\"}")
            .await,
        1.0
    );

    // A broken file is refused and counted; the rules in force stay (2 s).
    std::fs::write(
        daemon.dir.path().join("rules.toml"),
        "[lifecycle]\nsales_ready = 'lead.stage == '\n",
    )
    .unwrap();
    reload.send(()).unwrap();
    daemon
        .wait_for_metric(
            "the refused reload counted",
            "leadwatch_rules_reloads_total{outcome=\"invalid\"}",
            PATIENCE,
            |v| v == 1.0,
        )
        .await;
    let (status, _, _) =
        post_signed(&url, SOURCE_SECRET, &ready_event("s1", "L-s", &now_plus(0))).await;
    assert_eq!(status, 202);
    wait_for(
        "a breach under the rules still in force",
        PATIENCE,
        || async { receiver.distinct() >= 2 },
    )
    .await;
    let second = receiver
        .all()
        .iter()
        .map(|r| r.json())
        .find(|a| a["data"]["lead"] == "L-s")
        .unwrap();
    let (ready, deadline): (Timestamp, Timestamp) = (
        second["data"]["sales_ready_at"]
            .as_str()
            .unwrap()
            .parse()
            .unwrap(),
        second["data"]["deadline"]
            .as_str()
            .unwrap()
            .parse()
            .unwrap(),
    );
    assert_eq!(deadline, ready + SignedDuration::from_secs(2));
    assert_eq!(receiver.count(), 2, "the first lead's breach came again");
    daemon.stop().await;
}

/// Rules edited while the daemon was down apply at its restart: a lead that the new rules make
/// sales-ready starts its clock then, without waiting for its next event.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rules_edited_across_a_restart_apply_to_leads_as_they_stand() {
    let kafka = kafka(3);
    let receiver = Receiver::start().await;
    let config = config_text(kafka.bootstrap(), &receiver.url, "");
    let a = Daemon::start(&config, &rules_text("2s")).await;
    warm_up(&a).await;
    // Not sales-ready under these rules (`stage == "sales_ready"`).
    let (status, _, _) = post_signed(
        &a.url("/webhooks/web"),
        SOURCE_SECRET,
        &event(
            "q1",
            "L-q",
            now_plus(0),
            json!({"stage": "SQL", "owner": "alice@example.com"}),
        ),
    )
    .await;
    assert_eq!(status, 202);
    a.wait_for_metric(
        "the lead applied",
        "leadwatch_engine_events_total{outcome=\"applied\"}",
        PATIENCE,
        |v| v >= 2.0,
    )
    .await;
    a.stop().await;
    assert_eq!(receiver.count(), 0);

    // The agreement now counts SQLs as sales-ready; the daemon starts again.
    let rules = rules_text("2s").replace(
        r#"lead.stage == "sales_ready""#,
        r#"lead.stage in ["sales_ready", "SQL"]"#,
    );
    let restarted_at = Clock::system().now();
    let b = Daemon::start(&config, &rules).await;
    wait_for("the breach under the edited rules", PATIENCE, || async {
        receiver.count() >= 1
    })
    .await;
    let alert = receiver.all()[0].json();
    assert_eq!(alert["data"]["lead"], "L-q");
    assert_eq!(alert["type"], "sla.first_touch.breached");
    // The clock started when the new rules took effect, not when the lead last changed.
    let started: Timestamp = alert["data"]["clock_started_at"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(started >= restarted_at, "{started} < {restarted_at}");
    b.stop().await;
}
