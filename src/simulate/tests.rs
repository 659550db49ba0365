//! `simulate` on a small file: time order, `until`, the scorecard.

use std::sync::Arc;

use super::*;
use crate::engine::rules::Rules;

const RULES: &str = r#"
[lifecycle]
sales_ready = 'lead.stage == "MQL"'
closed = 'lead.status == "Unqualified"'
[first_touch]
within = "4h"
escalate = [ { after = "8h", notify = "manager" } ]
[follow_up]
min_attempts = 2
[disposition]
reasons = ["No budget"]
[recipients]
marketing_ops = ["mops@example.com"]
"#;

fn engine() -> Engine {
    Engine::new(Arc::new(Rules::parse(RULES).unwrap()))
}

const EVENTS: &str = r#"
{"id":"3","type":"lead.activity","lead":"B","occurred_at":"2026-11-22T11:00:00Z","activity":{"kind":"call"},"source":"hs"}
{"id":"1","type":"lead.updated","lead":"A","occurred_at":"2026-11-22T10:00:00Z","fields":{"stage":"MQL","owner":"alice"},"source":"hs"}
{"id":"2","type":"lead.updated","lead":"B","occurred_at":"2026-11-22T10:00:00Z","fields":{"stage":"MQL","owner":"bob"},"source":"web"}
not json
{"id":"4","type":"lead.activity","lead":"A","occurred_at":"2026-11-22T14:00:00Z","activity":{"kind":"call"}}
{"id":"5","type":"lead.updated","lead":"B","occurred_at":"2026-11-22T15:00:00Z","fields":{"status":"Unqualified"},"source":"web"}
{"id":"6","type":"lead.updated","lead":"C","occurred_at":"2026-11-22T16:00:00Z","fields":{"stage":"MQL","owner":"alice"},"source":"hs"}
"#;

fn simulate(until: Option<&str>) -> (Vec<(String, String, Timestamp)>, Scorecard, Vec<BadLine>) {
    let (events, bad) = read_events(EVENTS.as_bytes()).unwrap();
    let mut fired = Vec::new();
    let card = run(
        &engine(),
        events,
        until.map(|u| u.parse().unwrap()),
        6,
        |a| fired.push((a.data.lead.clone(), a.kind.clone(), a.timestamp)),
    );
    (fired, card, bad)
}

fn ts(s: &str) -> Timestamp {
    format!("2026-11-22T{s}Z").parse().unwrap()
}

#[test]
fn events_apply_in_time_order_and_an_event_at_a_deadline_comes_first() {
    let (fired, card, bad) = simulate(None);
    // C, handed off at 16:00 when the file ends, is not judged yet.
    let alice = &card.by_owner["alice"];
    assert_eq!((alice.handed_off, alice.pending), (2, 1));
    assert_eq!(alice.touched_within_sla_pct, Some(100.0));
    assert_eq!(
        bad,
        [BadLine {
            line: 5,
            message: bad[0].message.clone()
        }]
    );
    // A's touch at exactly 14:00 is applied before its 14:00 deadline: no breach. B was
    // touched and then closed after one attempt without a reason (judged at the end of
    // `reason_grace`, 5 minutes later). C is untouched, but the file ends (and the default
    // `until` with it) at 16:00.
    assert_eq!(
        fired,
        [
            (
                "B".into(),
                "follow_up.insufficient_attempts".into(),
                ts("15:00:00")
            ),
            (
                "B".into(),
                "disposition.missing_reason".into(),
                ts("15:05:00")
            ),
        ]
    );
}

#[test]
fn deadlines_up_to_until_fire_and_events_after_it_do_not_apply() {
    let (fired, _, _) = simulate(Some("2026-11-23T00:00:00Z"));
    let c: Vec<_> = fired.iter().filter(|f| f.0 == "C").collect();
    assert_eq!(
        c.iter().map(|f| (f.1.as_str(), f.2)).collect::<Vec<_>>(),
        [
            ("sla.first_touch.breached", ts("20:00:00")),
            (
                "sla.first_touch.escalated",
                "2026-11-23T00:00:00Z".parse().unwrap()
            )
        ]
    );
    // Until 12:00: B's close (15:00) and C (16:00) never happen.
    let (fired, card, _) = simulate(Some("2026-11-22T12:00:00Z"));
    assert!(fired.is_empty());
    assert_eq!(card.total.closed, 0);
    assert_eq!(card.total.handed_off, 2);
}

fn run_text(text: &str, until: &str) -> (Vec<Alert>, Scorecard) {
    run_with(&engine(), text, until)
}

/// The events of `text` through `engine` up to `until`: what fired, and the scorecard.
fn run_with(engine: &Engine, text: &str, until: &str) -> (Vec<Alert>, Scorecard) {
    let (events, bad) = read_events(text.as_bytes()).unwrap();
    assert!(bad.is_empty(), "{bad:?}");
    let mut fired = Vec::new();
    let card = run(engine, events, Some(until.parse().unwrap()), 6, |a| {
        fired.push(a.clone())
    });
    (fired, card)
}

#[test]
fn a_lead_closed_before_anyone_touched_it_was_never_touched_and_leads_count_once() {
    let text = r#"
{"id":"d1","type":"lead.updated","lead":"D","occurred_at":"2026-11-22T10:00:00Z","fields":{"stage":"MQL","owner":"alice"},"source":"hs"}
{"id":"d2","type":"lead.updated","lead":"D","occurred_at":"2026-11-22T11:00:00Z","fields":{"status":"Unqualified","disposition_reason":"  no BUDGET "},"source":"hs"}
{"id":"e1","type":"lead.updated","lead":"E","occurred_at":"2026-11-22T10:00:00Z","fields":{"stage":"MQL","owner":"alice"},"source":"hs"}
{"id":"e2","type":"lead.updated","lead":"E","occurred_at":"2026-11-22T15:00:00Z","fields":{"owner":"bob"},"source":"hs"}
{"id":"e3","type":"lead.activity","lead":"E","occurred_at":"2026-11-22T16:00:00Z","activity":{"kind":"call"},"source":"hs"}
"#;
    let (_, card) = run_text(text, "2026-11-23T00:00:00Z");
    let alice = &card.by_owner["alice"];
    // D closed at 11:00 with its deadline (14:00) still ahead and no touch: never touched,
    // not pending. E breached under alice.
    assert_eq!((alice.never_touched, alice.pending), (2, 0));
    assert_eq!((alice.leads_handed_off, alice.leads_never_touched), (2, 2));
    // For the source, E was touched in the end (by bob): one lead never touched, D.
    let hs = &card.by_source["hs"];
    assert_eq!((hs.handed_off, hs.leads_handed_off), (3, 2));
    assert_eq!(hs.leads_never_touched, 1);
    // The reason is counted under the agreed spelling.
    assert_eq!(hs.close_reasons.keys().collect::<Vec<_>>(), ["No budget"]);
}

#[test]
fn events_stamped_alike_apply_in_file_order() {
    // The same instant: the owner arrives, then the lead is closed; in the other order the
    // close comes first and the owner is set on a closed lead.
    let first = r#"
{"id":"1","type":"lead.updated","lead":"F","occurred_at":"2026-11-22T10:00:00Z","fields":{"stage":"MQL"}}
{"id":"2","type":"lead.updated","lead":"F","occurred_at":"2026-11-22T10:00:00Z","fields":{"owner":"alice"}}
{"id":"3","type":"lead.updated","lead":"F","occurred_at":"2026-11-22T10:00:00Z","fields":{"status":"Unqualified","disposition_reason":"No budget"}}
"#;
    let (fired, _) = run_text(first, "2026-11-23T00:00:00Z");
    let kinds: Vec<&str> = fired.iter().map(|a| a.kind.as_str()).collect();
    assert_eq!(kinds, ["follow_up.insufficient_attempts"]);
    assert_eq!(fired[0].data.owner.as_deref(), Some("alice"));
    let swapped = first
        .replace(r#""id":"2""#, r#""id":"x""#)
        .replace(r#""id":"3""#, r#""id":"2""#)
        .replace(r#""id":"x""#, r#""id":"3""#);
    let lines: Vec<&str> = swapped.trim().lines().collect();
    let reordered = format!("{}\n{}\n{}\n", lines[0], lines[2], lines[1]);
    let (fired, _) = run_text(&reordered, "2026-11-23T00:00:00Z");
    assert_eq!(fired.len(), 1, "{fired:?}");
    assert_eq!(fired[0].data.owner, None, "closed before it had an owner");
}

#[test]
fn the_scorecard_measures_owners_and_sources() {
    let (_, card, _) = simulate(Some("2026-11-23T00:00:00Z"));
    let alice = &card.by_owner["alice"];
    // A touched at 4h (within), C never.
    assert_eq!(alice.handed_off, 2);
    assert_eq!(alice.touched_within_sla, 1);
    assert_eq!(alice.touched_within_sla_pct, Some(50.0));
    assert_eq!(alice.never_touched, 1);
    assert_eq!(
        alice.median_business_time_to_first_touch_secs,
        Some(14_400.0)
    );
    let bob = &card.by_owner["bob"];
    assert_eq!(bob.median_business_time_to_first_touch_secs, Some(3_600.0));
    assert_eq!(bob.closed, 1);
    assert_eq!(bob.median_attempts_before_close, Some(1));
    assert_eq!(bob.close_reasons["(no reason)"], 1);
    assert_eq!(card.by_source["hs"].handed_off, 2);
    assert_eq!(card.by_source["web"].handed_off, 1);
    assert_eq!(card.alerts["sla.first_touch.breached"], 1);
}

/// Issue 12, through `simulate` in a Berlin calendar: Salesforce's flow, where stage and status
/// both read `Status`. The lead is worked ("Working - Contacted" is not sales-ready), called once
/// and closed without a reason: the close is this handoff's close-out, judged, and counted.
#[test]
fn a_lead_worked_then_closed_after_one_call_is_judged_in_a_berlin_calendar() {
    let rules = r#"
default_calendar = "emea"
[lifecycle]
sales_ready = 'lead.status == "Open - Not Contacted"'
closed = 'lead.status in ["Unqualified", "Closed - Not Converted"]'
[first_touch]
within = "4h"
[follow_up]
min_attempts = 3
[disposition]
reasons = ["No budget"]
[recipients]
marketing_ops = ["mops@example.com"]
[calendars.emea]
time_zone = "Europe/Berlin"
hours = { mon = "09:00-18:00", tue = "09:00-18:00", wed = "09:00-18:00", thu = "09:00-18:00", fri = "09:00-17:00" }
"#;
    let engine = Engine::new(Arc::new(Rules::parse(rules).unwrap()));
    let text = r#"
{"id":"s1","type":"lead.updated","lead":"S","occurred_at":"2026-11-23T09:00:00Z","fields":{"stage":"Open - Not Contacted","status":"Open - Not Contacted","owner":"alice"},"source":"sf"}
{"id":"s2","type":"lead.updated","lead":"S","occurred_at":"2026-11-23T09:30:00Z","fields":{"stage":"Working - Contacted","status":"Working - Contacted"},"source":"sf"}
{"id":"s3","type":"lead.activity","lead":"S","occurred_at":"2026-11-23T09:31:00Z","activity":{"kind":"call"},"source":"sf"}
{"id":"s4","type":"lead.updated","lead":"S","occurred_at":"2026-11-24T10:00:00Z","fields":{"stage":"Unqualified","status":"Unqualified"},"source":"sf"}
"#;
    let (fired, card) = run_with(&engine, text, "2026-11-25T00:00:00Z");
    let fired: Vec<&str> = fired.iter().map(|a| a.kind.as_str()).collect();
    assert_eq!(
        fired,
        [
            "follow_up.insufficient_attempts",
            "disposition.missing_reason"
        ]
    );
    let alice = &card.by_owner["alice"];
    assert_eq!((alice.closed, alice.touched_within_sla), (1, 1));
    assert_eq!(alice.median_attempts_before_close, Some(1));
}

/// Issue 12, through `simulate`: the reason sent as its own update two seconds after the status
/// is the close's reason (no alert); a reason left over from the lead's last round in sales is
/// not (`disposition.missing_reason`, five minutes after the close).
#[test]
fn reasons_are_judged_after_the_grace_and_never_from_an_earlier_episode() {
    let text = r#"
{"id":"r1","type":"lead.updated","lead":"R","occurred_at":"2026-11-22T10:00:00Z","fields":{"stage":"MQL","owner":"alice"}}
{"id":"r2","type":"lead.activity","lead":"R","occurred_at":"2026-11-22T10:10:00Z","activity":{"kind":"call"}}
{"id":"r3","type":"lead.activity","lead":"R","occurred_at":"2026-11-22T10:20:00Z","activity":{"kind":"call"}}
{"id":"r4","type":"lead.updated","lead":"R","occurred_at":"2026-11-22T11:00:00Z","fields":{"status":"Unqualified"}}
{"id":"r5","type":"lead.updated","lead":"R","occurred_at":"2026-11-22T11:00:02Z","fields":{"disposition_reason":"No budget"}}
{"id":"o1","type":"lead.updated","lead":"O","occurred_at":"2026-10-01T10:00:00Z","fields":{"stage":"nurture","status":"Unqualified","disposition_reason":"No budget"}}
{"id":"o2","type":"lead.updated","lead":"O","occurred_at":"2026-11-22T10:00:00Z","fields":{"stage":"MQL","status":"Open","owner":"alice","disposition_reason":"No budget"}}
{"id":"o3","type":"lead.activity","lead":"O","occurred_at":"2026-11-22T10:10:00Z","activity":{"kind":"call"}}
{"id":"o4","type":"lead.activity","lead":"O","occurred_at":"2026-11-22T10:20:00Z","activity":{"kind":"call"}}
{"id":"o5","type":"lead.updated","lead":"O","occurred_at":"2026-11-22T11:00:00Z","fields":{"status":"Unqualified","disposition_reason":"No budget"}}
"#;
    let (fired, card) = run_text(text, "2026-11-23T00:00:00Z");
    let got: Vec<(&str, &str, Timestamp)> = fired
        .iter()
        .map(|a| (a.data.lead.as_str(), a.kind.as_str(), a.timestamp))
        .collect();
    assert_eq!(got, [("O", "disposition.missing_reason", ts("11:05:00"))]);
    assert_eq!(card.by_owner["alice"].close_reasons["No budget"], 1);
}

/// Issue 12, through `simulate`: a lead bounced between owners every three hours reaches the
/// manager 8 h after the handoff, once; a nurture program's email is no touch (its lead breaches),
/// the owner's call is.
#[test]
fn bounced_leads_escalate_from_the_handoff_and_programs_do_not_touch() {
    let text = r#"
{"id":"p1","type":"lead.updated","lead":"P","occurred_at":"2026-11-22T10:00:00Z","fields":{"stage":"MQL","owner":"alice"}}
{"id":"p2","type":"lead.updated","lead":"P","occurred_at":"2026-11-22T13:00:00Z","fields":{"owner":"bob"}}
{"id":"p3","type":"lead.updated","lead":"P","occurred_at":"2026-11-22T16:00:00Z","fields":{"owner":"alice"}}
{"id":"p4","type":"lead.updated","lead":"P","occurred_at":"2026-11-22T19:00:00Z","fields":{"owner":"bob"}}
{"id":"n1","type":"lead.updated","lead":"N","occurred_at":"2026-11-22T10:00:00Z","fields":{"stage":"MQL","owner":"alice"}}
{"id":"n2","type":"lead.activity","lead":"N","occurred_at":"2026-11-22T10:05:00Z","activity":{"kind":"email","by":"nurture-program"}}
{"id":"t1","type":"lead.updated","lead":"T","occurred_at":"2026-11-22T10:00:00Z","fields":{"stage":"MQL","owner":"alice"}}
{"id":"t2","type":"lead.activity","lead":"T","occurred_at":"2026-11-22T10:05:00Z","activity":{"kind":"call","by":"alice"}}
"#;
    let (fired, _) = run_text(text, "2026-11-22T21:59:00Z");
    let got: Vec<(&str, &str, Timestamp)> = fired
        .iter()
        .map(|a| (a.data.lead.as_str(), a.kind.as_str(), a.timestamp))
        .collect();
    assert_eq!(
        got,
        [
            ("N", "sla.first_touch.breached", ts("14:00:00")),
            ("N", "sla.first_touch.escalated", ts("18:00:00")),
            ("P", "sla.first_touch.escalated", ts("18:00:00")),
        ]
    );
}

/// Issue 12, through `simulate` in a Sydney calendar: a lead called once and then left open is
/// followed up (its next attempt a working day after the call, then its close-out three working
/// days after it), one alert per gap; a lead closed after its close-out was called overdue is
/// scored late but not alerted again. The scorecard counts both per owner and per source.
#[test]
fn a_lead_called_once_and_left_open_is_followed_up_in_a_sydney_calendar() {
    let rules = r#"
default_calendar = "au"
[lifecycle]
sales_ready = 'lead.stage == "MQL"'
closed = 'lead.status == "Unqualified"'
[first_touch]
within = "4h"
[follow_up]
min_attempts = 3
attempt_every = "1d"
[disposition]
reasons = ["No budget"]
feedback_within = "3d"
[recipients]
marketing_ops = ["mops@example.com"]
[calendars.au]
time_zone = "Australia/Sydney"
hours = { mon = "09:00-17:00", tue = "09:00-17:00", wed = "09:00-17:00", thu = "09:00-17:00", fri = "09:00-17:00" }
"#;
    let engine = Engine::new(Arc::new(Rules::parse(rules).unwrap()));
    // Monday 2026-11-23 09:00 in Sydney (AEDT, UTC+11) is 2026-11-22T22:00Z.
    let text = r#"
{"id":"k1","type":"lead.updated","lead":"K","occurred_at":"2026-11-22T22:00:00Z","fields":{"stage":"MQL","owner":"alice"},"source":"sf"}
{"id":"k2","type":"lead.activity","lead":"K","occurred_at":"2026-11-22T22:30:00Z","activity":{"kind":"call","by":"alice"},"source":"sf"}
{"id":"l1","type":"lead.updated","lead":"L","occurred_at":"2026-11-22T22:00:00Z","fields":{"stage":"MQL","owner":"bob"},"source":"sf"}
{"id":"l2","type":"lead.activity","lead":"L","occurred_at":"2026-11-22T22:40:00Z","activity":{"kind":"call","by":"bob"},"source":"sf"}
{"id":"l3","type":"lead.activity","lead":"L","occurred_at":"2026-11-23T23:00:00Z","activity":{"kind":"call","by":"bob"},"source":"sf"}
{"id":"l4","type":"lead.updated","lead":"L","occurred_at":"2026-11-26T23:30:00Z","fields":{"status":"Unqualified","disposition_reason":"No budget"},"source":"sf"}
"#;
    let (fired, card) = run_with(&engine, text, "2026-11-27T00:00:00Z");
    let got: Vec<(&str, &str, String)> = fired
        .iter()
        .map(|a| {
            let local = a.timestamp.in_tz("Australia/Sydney").unwrap();
            (
                a.data.lead.as_str(),
                a.kind.as_str(),
                local.strftime("%a %H:%M").to_string(),
            )
        })
        .collect();
    let local = |lead, kind, when: &str| (lead, kind, when.to_string());
    assert_eq!(
        got,
        [
            // Each gap's next attempt a working day after the call before it.
            local("K", "follow_up.attempt_overdue", "Tue 09:30"),
            local("L", "follow_up.attempt_overdue", "Tue 09:40"),
            local("L", "follow_up.attempt_overdue", "Wed 10:00"),
            // The close-out three working days after the last call.
            local("K", "disposition.overdue", "Thu 09:30"),
            local("L", "disposition.overdue", "Fri 10:00"),
            // L's close at 10:30 is late, and already said to be: only its attempts are judged.
            local("L", "follow_up.insufficient_attempts", "Fri 10:30"),
        ]
    );
    let overdue = fired
        .iter()
        .find(|a| a.kind == "disposition.overdue")
        .unwrap();
    assert_eq!(overdue.data.to, ["owner", "marketing_ops"]);
    assert!(
        overdue
            .data
            .message
            .contains("3 working days after its last touch"),
        "{}",
        overdue.data.message
    );
    let next = &fired[0];
    assert_eq!(next.data.to, ["owner"]);
    assert!(
        next.data.message.contains("1 attempt(s)") && next.data.message.contains("1 working day"),
        "{}",
        next.data.message
    );
    let (alice, bob) = (&card.by_owner["alice"], &card.by_owner["bob"]);
    assert_eq!(
        (alice.next_attempts_overdue, alice.closeouts_overdue),
        (1, 1)
    );
    assert_eq!((bob.next_attempts_overdue, bob.closeouts_overdue), (2, 1));
    assert_eq!((bob.closed, bob.closed_late), (1, 1));
    let sf = &card.by_source["sf"];
    assert_eq!(
        (
            sf.next_attempts_overdue,
            sf.closeouts_overdue,
            sf.closed_late
        ),
        (3, 2, 1)
    );
    assert_eq!(card.alerts.get("disposition.late"), None);
}

/// Issue 15, the README's Marketo recipe: Marketo marks a person MQL with an owner, and the
/// rep calls that person's Salesforce lead minutes later. `at` gives each event's time: the
/// Salesforce lead's update (with its email), Marketo's MQL, the call.
fn marketo_recipe(salesforce_at: &str, marketo_at: &str, call_at: &str) -> String {
    format!(
        r#"
{{"id":"sf1","type":"lead.updated","lead":"salesforce:00Q1","occurred_at":"2026-11-22T{salesforce_at}Z","fields":{{"Email":"Ann@Example.com","email":"Ann@Example.com","status":"Open - Not Contacted","owner":"rep@example.com"}},"source":"sf"}}
{{"id":"mk1","type":"lead.updated","lead":"marketo:501","occurred_at":"2026-11-22T{marketo_at}Z","fields":{{"email":" ann@example.com","stage":"MQL","score":80,"owner":"rep@example.com"}},"source":"mk"}}
{{"id":"sf2","type":"lead.activity","lead":"salesforce:00Q1","occurred_at":"2026-11-22T{call_at}Z","activity":{{"kind":"call","by":"rep@example.com"}},"source":"sf"}}
"#
    )
}

/// The alerts of `text` under `RULES` with `identity` (a section of the rules file) through
/// `simulate`'s join, as (lead, type, time).
fn joined(identity: &str, text: &str) -> Vec<(String, String, Timestamp)> {
    joined_alerts(identity, text)
        .into_iter()
        .map(|a| (a.data.lead, a.kind, a.timestamp))
        .collect()
}

/// As [`joined`], the whole alerts.
fn joined_alerts(identity: &str, text: &str) -> Vec<Alert> {
    let rules = format!("{RULES}\n{identity}");
    let engine = Engine::new(Arc::new(Rules::parse(&rules).unwrap()));
    let identity = crate::identity::IdentityConfig::parse(&rules).unwrap();
    let (events, bad) = read_events(text.as_bytes()).unwrap();
    assert!(bad.is_empty(), "{bad:?}");
    let mut fired = Vec::new();
    run_joined(
        &engine,
        &identity,
        events,
        Some("2026-11-23T00:00:00Z".parse().unwrap()),
        6,
        |a| fired.push(a.clone()),
    );
    fired
}

#[test]
fn a_person_marketo_handed_off_and_the_rep_called_in_salesforce_gets_no_alerts() {
    let crm_first = marketo_recipe("09:58:00", "10:00:00", "10:05:00");
    assert_eq!(joined("", &crm_first), []);
    // Marketo's MQL before the Salesforce lead is seen: the same.
    let map_first = marketo_recipe("10:02:00", "10:00:00", "10:05:00");
    assert_eq!(joined("", &map_first), []);
}

#[test]
fn without_the_join_the_marketo_record_is_a_lead_of_its_own_and_alerts_falsely() {
    let text = marketo_recipe("09:58:00", "10:00:00", "10:05:00");
    let off = joined("[identity]\nenabled = false\n", &text);
    let marketo = |kind: &str, at: &str| ("marketo:501".to_string(), kind.to_string(), ts(at));
    assert_eq!(
        off,
        [
            marketo("sla.first_touch.breached", "14:00:00"),
            marketo("sla.first_touch.escalated", "18:00:00"),
        ]
    );
    // The email join by the MAP turned off: the same as today.
    assert_eq!(
        joined("[identity]\nsources = [\"salesforce\"]\n", &text),
        off
    );
}

#[test]
fn the_crm_record_names_the_joined_lead_whichever_system_came_first() {
    // The call comes an hour late: one breach, for the person, under the Salesforce key.
    let breach = [(
        "salesforce:00Q1".to_string(),
        "sla.first_touch.breached".to_string(),
        ts("14:00:00"),
    )];
    for (sf, mk) in [
        ("09:58:00", "10:00:00"),
        ("10:02:00", "10:00:00"),
        ("10:00:00", "10:00:00"),
    ] {
        let text = marketo_recipe(sf, mk, "15:00:00");
        assert_eq!(
            joined("", &text),
            breach,
            "salesforce at {sf}, marketo at {mk}"
        );
    }
    // The alert lists the person's records; a lead of one record lists none.
    let text = marketo_recipe("09:58:00", "10:00:00", "15:00:00");
    let alerts = joined_alerts("", &text);
    assert_eq!(alerts[0].data.records, ["marketo:501", "salesforce:00Q1"]);
    let off = joined_alerts("[identity]\nenabled = false\n", &text);
    assert!(off.iter().all(|a| a.data.records.is_empty()), "{off:?}");
    // Left out of the JSON, and an alert without it (an earlier build's) reads back the same.
    let json = serde_json::to_string(&off[0]).unwrap();
    assert!(!json.contains("records"), "{json}");
    assert_eq!(serde_json::from_str::<Alert>(&json).unwrap(), off[0]);
}

#[test]
fn marketo_s_salesforce_id_joins_without_an_email() {
    // The template sends `sfdcLeadId` and no email; Salesforce's events carry none either.
    let text = marketo_recipe("09:58:00", "10:00:00", "15:00:00")
        .replace(r#""email":" ann@example.com","#, r#""sfdcLeadId":"00Q1","#)
        .replace(
            r#""Email":"Ann@Example.com","email":"Ann@Example.com","#,
            "",
        );
    assert_eq!(
        joined("", &text),
        [(
            "salesforce:00Q1".to_string(),
            "sla.first_touch.breached".to_string(),
            ts("14:00:00"),
        )]
    );
}

/// A CRM's merge of two records of one person ends no lead: the person goes on, and its clock
/// with it.
#[test]
fn a_merge_of_two_records_of_one_person_ends_no_lead() {
    let text = r#"
{"id":"a1","type":"lead.updated","lead":"salesforce:00QB","occurred_at":"2026-11-22T10:00:00Z","fields":{"email":"ann@example.com","stage":"MQL","owner":"rep@example.com"}}
{"id":"b1","type":"lead.updated","lead":"salesforce:00QA","occurred_at":"2026-11-22T10:01:00Z","fields":{"email":"ann@example.com"}}
{"id":"m1","type":"lead.merged","lead":"salesforce:00QB","occurred_at":"2026-11-22T10:02:00Z","into":"salesforce:00QA"}
"#;
    let breached = |lead: &str| {
        (
            lead.to_string(),
            "sla.first_touch.breached".to_string(),
            ts("14:00:00"),
        )
    };
    assert_eq!(joined("", text)[0], breached("salesforce:00QA"));
    // Without the join the merge ends 00QB's episode: nothing fires.
    assert_eq!(joined("[identity]\nenabled = false\n", text), []);
}

/// A record merged into one the file never shows leaves its person, who goes on (here the
/// Salesforce lead, still untouched, breaches); a lone record merged away still ends.
#[test]
fn a_record_merged_away_leaves_its_person_who_goes_on() {
    let text = r#"
{"id":"sf1","type":"lead.updated","lead":"salesforce:00Q1","occurred_at":"2026-11-22T10:00:00Z","fields":{"email":"ann@example.com","stage":"MQL","owner":"rep@example.com"}}
{"id":"mk1","type":"lead.updated","lead":"marketo:501","occurred_at":"2026-11-22T10:01:00Z","fields":{"email":"ann@example.com","stage":"MQL"}}
{"id":"m1","type":"lead.merged","lead":"marketo:501","occurred_at":"2026-11-22T10:02:00Z","into":"marketo:999"}
{"id":"mk2","type":"lead.updated","lead":"marketo:777","occurred_at":"2026-11-22T10:00:00Z","fields":{"stage":"MQL","owner":"rep@example.com"}}
{"id":"m2","type":"lead.merged","lead":"marketo:777","occurred_at":"2026-11-22T10:02:00Z","into":"marketo:999"}
"#;
    let fired = joined("", text);
    let breached: Vec<&str> = fired
        .iter()
        .filter(|(_, kind, _)| kind == "sla.first_touch.breached")
        .map(|(lead, _, _)| lead.as_str())
        .collect();
    assert_eq!(breached, ["salesforce:00Q1"], "{fired:?}");
}

/// What comes after `--until` is not applied, so it joins no one either: an email the CRM
/// record gains the day after leaves the Marketo lead its own until then.
#[test]
fn an_identity_learned_after_until_joins_no_one() {
    let text = r#"
{"id":"mk1","type":"lead.updated","lead":"marketo:501","occurred_at":"2026-11-22T10:00:00Z","fields":{"email":"ann@example.com","stage":"MQL","owner":"rep@example.com"}}
{"id":"sf1","type":"lead.updated","lead":"salesforce:00Q1","occurred_at":"2026-11-22T10:00:00Z","fields":{"status":"Open"}}
{"id":"sf2","type":"lead.updated","lead":"salesforce:00Q1","occurred_at":"2026-11-24T10:00:00Z","fields":{"email":"ann@example.com"}}
"#;
    let leads: Vec<String> = joined("", text)
        .into_iter()
        .map(|(lead, _, _)| lead)
        .collect();
    assert!(!leads.is_empty(), "the MQL breaches before --until");
    assert!(leads.iter().all(|l| l == "marketo:501"), "{leads:?}");
}

#[test]
fn partitions_run_side_by_side_still_fire_in_the_one_clock_s_order() {
    // Eight leads handed off seven minutes apart, on several partitions, their deadlines
    // interleaved with each other and with later events (one lead touched in between).
    let mut text: String = (0..8)
        .map(|i| {
            format!(
                r#"{{"id":"h{i}","type":"lead.updated","lead":"L{i}","occurred_at":"2026-11-22T10:{:02}:00Z","fields":{{"stage":"MQL","owner":"alice"}},"source":"hs"}}
"#,
                i * 7
            )
        })
        .collect();
    text += r#"{"id":"c3","type":"lead.activity","lead":"L3","occurred_at":"2026-11-22T14:05:00Z","activity":{"kind":"call"},"source":"hs"}
"#;
    let on: std::collections::BTreeSet<i32> = (0..8)
        .map(|i| crate::partitioner::partition_for(format!("L{i}").as_bytes(), 6))
        .collect();
    assert!(on.len() > 2, "the leads share a partition: {on:?}");
    let (fired, card) = run_text(&text, "2026-11-23T00:00:00Z");
    let order: Vec<(Timestamp, &str, &str)> = fired
        .iter()
        .map(|a| (a.timestamp, a.data.lead.as_str(), a.kind.as_str()))
        .collect();
    let mut expected = order.clone();
    expected.sort();
    assert_eq!(order, expected);
    // Every breach but L3's (touched at 14:05, before its 14:21 deadline), then the
    // escalations.
    assert_eq!(order.len(), 14, "{order:?}");
    assert!(!order.iter().any(|(_, lead, _)| *lead == "L3"));
    // One partition, one thread: the same alerts in the same order.
    let events = read_events(text.as_bytes()).unwrap().0;
    let mut one = Vec::new();
    run(
        &engine(),
        events,
        Some("2026-11-23T00:00:00Z".parse().unwrap()),
        1,
        |a| one.push(a.clone()),
    );
    assert_eq!(one, fired);
    assert_eq!(card.total.handed_off, 8);
}
