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
    let (events, bad) = read_events(text.as_bytes()).unwrap();
    assert!(bad.is_empty(), "{bad:?}");
    let mut fired = Vec::new();
    let card = run(&engine(), events, Some(until.parse().unwrap()), 6, |a| {
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
    let (events, bad) = read_events(text.as_bytes()).unwrap();
    assert!(bad.is_empty(), "{bad:?}");
    let mut fired = Vec::new();
    let card = run(
        &engine,
        events,
        Some("2026-11-25T00:00:00Z".parse().unwrap()),
        6,
        |a| fired.push(a.kind.clone()),
    );
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
