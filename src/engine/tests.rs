//! The state machine at its edges. Pure: no Kafka, time passed in.

use std::sync::Arc;

use jiff::{SignedDuration, Timestamp};
use serde_json::json;

use super::partition::PartitionState;
use super::rules::Rules;
use super::step::{Diagnostic, Input};
use super::*;
use crate::alert::Alert;
use crate::event::{Activity, Change, LeadEvent};

/// The moves the tests make on a partition, under the names they had as methods of their own;
/// each is made through [`PartitionState::step`], the engine's one entry point.
trait Moves {
    /// Applies an event: what it wrote for its lead.
    fn apply(&mut self, e: &Engine, event: &LeadEvent) -> Write;
    /// Fires everything due at `now`, every event read: per lead, its alerts.
    fn fire_due(&mut self, e: &Engine, now: Timestamp) -> Vec<(String, Vec<Alert>)>;
    /// `alert` was not written: it fires again.
    fn unfire(&mut self, e: &Engine, alert: &Alert);
    /// Drops the leads past `retention` at `now`: their keys.
    fn expire(&mut self, e: &Engine, now: Timestamp, retention: Retention) -> Vec<String>;
    /// Looks at every lead again under `e`'s rules at `now`.
    fn reload(&mut self, e: &Engine, now: Timestamp);
}

/// What applying an event wrote for its lead.
#[derive(Debug, PartialEq)]
enum Write {
    Nothing,
    State(Box<LeadState>),
    Tombstone,
}

impl Moves for PartitionState {
    fn apply(&mut self, e: &Engine, event: &LeadEvent) -> Write {
        let step = self.step(e, Input::Event(event), event.received_at);
        match step.writes.as_slice() {
            [] => Write::Nothing,
            [step::Write::Lead(w)] => match w.state_record() {
                Some(state) => {
                    Write::State(Box::new(LeadState::decode(&state).expect("a state record")))
                }
                None => Write::Tombstone,
            },
            other => panic!("an event wrote {other:?}"),
        }
    }

    fn fire_due(&mut self, e: &Engine, now: Timestamp) -> Vec<(String, Vec<Alert>)> {
        self.step(e, Input::End, now);
        let step = self.step(e, Input::Tick, now);
        step.writes
            .into_iter()
            .filter_map(|w| match w {
                step::Write::Lead(w) => Some((w.lead, w.alerts)),
                step::Write::Rotation(_) => None,
            })
            .collect()
    }

    fn unfire(&mut self, e: &Engine, alert: &Alert) {
        self.step(
            e,
            Input::Unwritten(std::slice::from_ref(alert)),
            alert.timestamp,
        );
    }

    fn expire(&mut self, e: &Engine, now: Timestamp, retention: Retention) -> Vec<String> {
        let e = e.clone().with_retention(retention);
        let step = self.step(&e, Input::Sweep, now);
        step.diagnostics
            .into_iter()
            .filter_map(|d| match d {
                Diagnostic::Expired { lead } => Some(lead),
                _ => None,
            })
            .collect()
    }

    fn reload(&mut self, e: &Engine, now: Timestamp) {
        self.step(e, Input::Reload, now);
    }
}

const RULES: &str = r#"
[lifecycle]
sales_ready = 'lead.stage == "sales_ready"'
[first_touch]
within = "4h"
"#;

/// Every rule on, around the clock (no calendar), so times read plainly.
const ALL_RULES: &str = r#"
pool = ["alice", "bob", "dave"]

[lifecycle]
sales_ready = 'lead.stage == "MQL"'
closed      = 'lead.status in ["Unqualified", "Closed - Not Converted"]'
converted   = 'lead.status == "Converted"'
touch       = 'lead.status == "Working - Contacted"'

[handoff]
assign_within = "15m"

[first_touch]
within        = "4h"
remind_before = "1h"
escalate = [ { after = "8h", notify = "manager" },
             { after = "24h", notify = "marketing_ops", reassign = true } ]

[follow_up]
min_attempts = 3
attempt_every = "1d"

[disposition]
reasons          = ["No budget", "Wrong contact", "Competitor chosen"]
vague            = ["Not interested", "Not a fit", "Other"]
detail_min_chars = 20
feedback_within  = "5d"

[directory.alice]
name = "Alice Adams"
manager = "carol"
slack = "U0ALICE"
[directory.bob]
away = true
[directory.carol]
name = "Carol Chen"
slack = "U0CAROL"

[recipients]
marketing_ops = ["mops@example.com"]
queue = ["sdr@example.com"]
"#;

fn engine_with(text: &str) -> Engine {
    Engine::new(Arc::new(Rules::parse(text).unwrap()))
}

fn engine() -> Engine {
    engine_with(RULES)
}

fn t(s: &str) -> Timestamp {
    format!("2026-11-22T{s}Z").parse().unwrap()
}

/// `"10:00:00"` on 2026-11-22, or `"+2d 10:00:00"` days later.
fn at(s: &str) -> Timestamp {
    let (sign, rest) = match (s.strip_prefix('+'), s.strip_prefix('-')) {
        (Some(rest), _) => (1, rest),
        (_, Some(rest)) => (-1, rest),
        _ => return t(s),
    };
    let (days, time) = rest.split_once("d ").unwrap();
    t(time) + SignedDuration::from_hours(sign * 24 * days.parse::<i64>().unwrap())
}

fn update(id: &str, when: &str, fields: serde_json::Value) -> LeadEvent {
    LeadEvent {
        id: id.into(),
        source: "test".into(),
        lead: "L-1".into(),
        occurred_at: at(when),
        received_at: at(when),
        change: Change::Updated {
            fields: fields.as_object().unwrap().clone(),
        },
    }
}

fn activity(id: &str, when: &str, kind: &str) -> LeadEvent {
    LeadEvent {
        id: id.into(),
        source: "test".into(),
        lead: "L-1".into(),
        occurred_at: at(when),
        received_at: at(when),
        change: Change::Activity {
            activity: Activity {
                kind: kind.into(),
                by: None,
                automated: false,
            },
        },
    }
}

fn ready_owned(when: &str) -> LeadEvent {
    update(
        "e-ready",
        when,
        json!({"stage": "sales_ready", "owner": "alice"}),
    )
}

/// What a step fired, by type, with the time each was stamped.
fn fired(step: &step::Step<'_>) -> Vec<(String, Timestamp)> {
    step.writes
        .iter()
        .filter_map(|w| match w {
            step::Write::Lead(w) => Some(w.alerts.iter()),
            step::Write::Rotation(_) => None,
        })
        .flatten()
        .map(|a| (a.kind.clone(), a.timestamp))
        .collect()
}

/// A deadline fires only once the partition's events up to it are read: while the partition is
/// behind (not read to its end), nothing fires past the newest arrival it has read, however late
/// the clock says it is — a touch that came in time may still be waiting in it. Whatever fires
/// is stamped with the clock's time, not the horizon's.
#[test]
fn a_partition_that_is_behind_fires_nothing_past_what_it_has_read() {
    let e = engine();
    let mut p = PartitionState::default();
    // Sales-ready and owned at 10:00: the first touch is due by 14:00.
    p.step(&e, Input::Event(&ready_owned("10:00:00")), t("10:00:00"));
    let step = p.step(&e, Input::Tick, t("15:00:00"));
    assert!(
        fired(&step).is_empty(),
        "read only up to 10:00: the breach waits"
    );
    // A later arrival (received 14:30) is read: the horizon moves past the deadline.
    let later = update("e-later", "14:30:00", json!({"score": 10}));
    p.step(&e, Input::Event(&later), t("15:00:00"));
    let step = p.step(&e, Input::Tick, t("15:00:00"));
    assert_eq!(
        fired(&step),
        [("sla.first_touch.breached".to_string(), t("15:00:00"))]
    );

    // Another lead, the partition read to its end: the clock alone decides.
    let mut p = PartitionState::default();
    p.step(&e, Input::Event(&ready_owned("10:00:00")), t("10:00:00"));
    p.step(&e, Input::End, t("10:00:00"));
    assert!(fired(&p.step(&e, Input::Tick, t("13:59:59"))).is_empty());
    assert_eq!(
        fired(&p.step(&e, Input::Tick, t("14:00:00"))),
        [("sla.first_touch.breached".to_string(), t("14:00:00"))]
    );
    // A message that is not an event: the partition is not at its end any more.
    let mut p = PartitionState::default();
    p.step(&e, Input::Event(&ready_owned("10:00:00")), t("10:00:00"));
    p.step(&e, Input::End, t("10:00:00"));
    p.step(&e, Input::NotAnEvent, t("10:00:00"));
    assert!(fired(&p.step(&e, Input::Tick, t("15:00:00"))).is_empty());
}

/// A burst is fired in batches: a tick bounded to `n` leads fires the `n` earliest due, stamped
/// with the tick's time; the others stay due (the step wakes at once) and fire at the next ticks,
/// each lead's alert exactly once, none lost.
#[test]
fn a_bounded_tick_fires_a_burst_in_batches_each_alert_once() {
    let e = engine();
    let mut p = PartitionState::default();
    for i in 0..10 {
        let mut event = ready_owned(&format!("10:00:{i:02}"));
        event.id = format!("e-{i}");
        event.lead = format!("L-{i}");
        p.step(&e, Input::Event(&event), t("10:00:10"));
    }
    p.step(&e, Input::End, t("10:00:10"));
    let now = t("15:00:00");
    assert_eq!(p.due(now), 10, "every first touch is late");
    let mut leads = Vec::new();
    let mut batches = Vec::new();
    loop {
        let step = p.step(&e, Input::TickUpTo(4), now);
        let fired: Vec<String> = step
            .writes
            .iter()
            .filter_map(|w| match w {
                step::Write::Lead(w) if !w.alerts.is_empty() => Some(w.lead.clone()),
                _ => None,
            })
            .collect();
        let again = step.wake.is_some_and(|w| w <= now);
        if fired.is_empty() {
            assert!(!again, "nothing left due");
            break;
        }
        assert!(fired.len() <= 4, "{fired:?}");
        leads.extend(fired.iter().cloned());
        batches.push(fired.len());
        assert_eq!(
            again,
            p.due(now) > 0,
            "the step wakes at once while some are due"
        );
    }
    assert_eq!(batches, [4, 4, 2]);
    // The earliest deadlines first, each lead once.
    let expected: Vec<String> = (0..10).map(|i| format!("L-{i}")).collect();
    assert_eq!(leads, expected);
    assert_eq!(p.due(now), 0);
}

#[test]
fn an_untouched_lead_breaches_exactly_at_the_deadline() {
    let e = engine();
    let mut s = LeadState::default();
    e.apply(&mut s, &ready_owned("10:00:00"));
    assert_eq!(e.next_deadline(&s), Some(t("14:00:00")));
    assert!(e.fire_due("L-1", &mut s, t("13:59:59")).is_empty());
    let alerts = e.fire_due("L-1", &mut s, t("14:00:00"));
    assert_eq!(alerts.len(), 1);
    let a = &alerts[0];
    assert_eq!(a.kind, "sla.first_touch.breached");
    assert_eq!(a.data.lead, "L-1");
    assert_eq!(a.data.owner.as_deref(), Some("alice"));
    assert_eq!(a.data.level, 0);
    assert_eq!(a.data.to, ["owner"]);
    assert_eq!(a.data.deadline, t("14:00:00"));
    assert_eq!(a.data.sales_ready_at, Some(t("10:00:00")));
    assert_eq!(
        a.data.alert_id,
        crate::alert::alert_id("L-1", "first_touch", 0, t("10:00:00"))
    );
    // Once only.
    assert!(e.fire_due("L-1", &mut s, t("20:00:00")).is_empty());
    assert_eq!(e.next_deadline(&s), None);
}

#[test]
fn a_touch_before_the_deadline_means_no_alert() {
    let e = engine();
    let mut s = LeadState::default();
    e.apply(&mut s, &ready_owned("10:00:00"));
    e.apply(&mut s, &activity("e-call", "13:59:59", "call"));
    assert_eq!(e.next_deadline(&s), None);
    assert!(e.fire_due("L-1", &mut s, t("23:00:00")).is_empty());
}

#[test]
fn a_touch_exactly_at_the_deadline_counts() {
    let e = engine();
    let mut s = LeadState::default();
    e.apply(&mut s, &ready_owned("10:00:00"));
    e.apply(&mut s, &activity("e-call", "14:00:00", "Call"));
    assert!(e.fire_due("L-1", &mut s, t("23:00:00")).is_empty());
}

#[test]
fn a_late_touch_does_not_cancel_the_breach() {
    let e = engine();
    let mut s = LeadState::default();
    e.apply(&mut s, &ready_owned("10:00:00"));
    // Happened after the deadline, arrives before the alert fired: still a breach.
    e.apply(&mut s, &activity("e-call", "14:00:01", "call"));
    assert_eq!(e.fire_due("L-1", &mut s, t("14:00:02")).len(), 1);
}

#[test]
fn a_touch_that_happened_in_time_but_arrives_late_cancels_the_breach() {
    let e = engine();
    let mut s = LeadState::default();
    e.apply(&mut s, &ready_owned("10:00:00"));
    // Processed at 14:30 (after the deadline) but it happened at 11:00: no breach.
    e.apply(&mut s, &activity("e-call", "11:00:00", "call"));
    assert!(e.fire_due("L-1", &mut s, t("14:30:00")).is_empty());
}

#[test]
fn activities_that_are_not_touches_and_touches_before_the_clock_do_not_count() {
    let e = engine();
    let mut s = LeadState::default();
    e.apply(&mut s, &activity("e-early", "09:00:00", "call"));
    e.apply(&mut s, &ready_owned("10:00:00"));
    e.apply(&mut s, &activity("e-note", "10:30:00", "note"));
    assert_eq!(e.fire_due("L-1", &mut s, t("14:00:00")).len(), 1);
}

#[test]
fn the_clock_starts_when_the_lead_is_both_ready_and_owned() {
    let e = engine();
    let mut s = LeadState::default();
    e.apply(
        &mut s,
        &update("e1", "10:00:00", json!({"stage": "sales_ready"})),
    );
    assert_eq!(e.next_deadline(&s), None, "no owner, no first-touch clock");
    e.apply(&mut s, &update("e2", "11:00:00", json!({"owner": "alice"})));
    assert_eq!(e.next_deadline(&s), Some(t("15:00:00")));
    let a = e.fire_due("L-1", &mut s, t("15:00:00"));
    assert_eq!(a[0].data.sales_ready_at, Some(t("10:00:00")));
    assert_eq!(a[0].data.clock_started_at, t("11:00:00"));
}

#[test]
fn an_owner_change_restarts_the_clock_with_a_new_alert_id() {
    let e = engine();
    let mut s = LeadState::default();
    e.apply(&mut s, &ready_owned("10:00:00"));
    let first = e.fire_due("L-1", &mut s, t("14:00:00"));
    e.apply(&mut s, &update("e2", "15:00:00", json!({"owner": "bob"})));
    assert_eq!(e.next_deadline(&s), Some(t("19:00:00")));
    let second = e.fire_due("L-1", &mut s, t("19:00:00"));
    assert_eq!(second[0].data.owner.as_deref(), Some("bob"));
    assert_ne!(first[0].data.alert_id, second[0].data.alert_id);
}

#[test]
fn re_sending_sales_ready_starts_nothing_new() {
    let e = engine();
    let mut s = LeadState::default();
    e.apply(&mut s, &ready_owned("10:00:00"));
    e.apply(
        &mut s,
        &update(
            "e2",
            "12:00:00",
            json!({"stage": "sales_ready", "score": 80}),
        ),
    );
    assert_eq!(e.next_deadline(&s), Some(t("14:00:00")));
}

/// Issue 12: an episode is the handoff's whole life in sales. Leaving the sales-ready stage while
/// sales works the lead keeps it (and its clock); a close ends it; sales-ready again after the
/// close is a new episode with a new clock. (Before, leaving sales-ready ended the episode.)
#[test]
fn working_a_lead_keeps_its_episode_and_only_a_close_ends_it() {
    let e = engine_with(&RULES.replace(
        "[first_touch]",
        "closed = 'lead.status == \"Unqualified\"'\n[first_touch]",
    ));
    let mut s = LeadState::default();
    e.apply(&mut s, &ready_owned("10:00:00"));
    e.apply(
        &mut s,
        &update("e2", "11:00:00", json!({"stage": "working"})),
    );
    assert_eq!(
        e.next_deadline(&s),
        Some(t("14:00:00")),
        "still the same handoff"
    );
    e.apply(
        &mut s,
        &update("e3", "12:00:00", json!({"status": "Unqualified"})),
    );
    assert_eq!(e.next_deadline(&s), None);
    assert!(e.fire_due("L-1", &mut s, t("23:00:00")).is_empty());
    // Sales-ready again after the close: a new episode gets a new clock.
    e.apply(
        &mut s,
        &update(
            "e4",
            "+1d 12:00:00",
            json!({"stage": "sales_ready", "status": "Open"}),
        ),
    );
    assert_eq!(e.next_deadline(&s), Some(at("+1d 16:00:00")));
}

#[test]
fn a_null_field_clears_it_and_a_blank_owner_is_no_owner() {
    let e = engine();
    let mut s = LeadState::default();
    e.apply(&mut s, &ready_owned("10:00:00"));
    e.apply(&mut s, &update("e2", "10:30:00", json!({"owner": null})));
    assert!(!s.lead.fields.contains_key("owner"));
    assert_eq!(e.next_deadline(&s), None);
    e.apply(&mut s, &update("e3", "10:40:00", json!({"owner": "  "})));
    assert_eq!(e.next_deadline(&s), None);
}

#[test]
fn the_same_event_twice_changes_nothing() {
    let e = engine();
    let mut s = LeadState::default();
    assert_eq!(e.apply(&mut s, &ready_owned("10:00:00")), Applied::Changed);
    let before = s.clone();
    assert_eq!(
        e.apply(&mut s, &ready_owned("10:00:00")),
        Applied::Duplicate
    );
    assert_eq!(s, before);
}

#[test]
fn a_partition_fires_leads_in_deadline_order_and_rearms() {
    let e = engine();
    let mut p = PartitionState::default();
    for (lead, when) in [
        ("L-b", "10:00:00"),
        ("L-a", "09:00:00"),
        ("L-c", "11:00:00"),
    ] {
        let mut ev = ready_owned(when);
        ev.lead = lead.into();
        ev.id = format!("ready-{lead}");
        assert!(matches!(p.apply(&e, &ev), Write::State(_)));
    }
    assert_eq!(p.next_deadline(), Some(t("13:00:00")));
    let due = p.fire_due(&e, t("14:30:00"));
    let fired: Vec<(Alert, LeadState)> = due
        .into_iter()
        .flat_map(|(lead, alerts)| {
            let s = p.lead(&lead).unwrap().clone();
            alerts.into_iter().map(move |a| (a, s.clone()))
        })
        .collect();
    let leads: Vec<&str> = fired.iter().map(|(a, _)| a.data.lead.as_str()).collect();
    assert_eq!(leads, ["L-a", "L-b"]);
    assert!(fired.iter().all(|(a, s)| s.has_fired(
        "first_touch",
        0,
        At::new(a.data.clock_started_at),
        None
    )));
    assert_eq!(p.next_deadline(), Some(t("15:00:00")));
    // A touch disarms L-c.
    let mut touch = activity("touch-c", "12:00:00", "email");
    touch.lead = "L-c".into();
    p.apply(&e, &touch);
    assert_eq!(p.next_deadline(), None);
    // A failed write un-fires an alert, which then fires again with the same id.
    let (alert, _) = &fired[0];
    p.unfire(&e, alert);
    let again = p.fire_due(&e, t("14:31:00"));
    assert_eq!(again.len(), 1);
    assert_eq!(again[0].1[0].data.alert_id, alert.data.alert_id);
}

#[test]
fn deadlines_are_event_time_plus_within_with_sub_second_precision() {
    let e = engine_with(
        "[lifecycle]\nsales_ready = 'lead.stage == \"sales_ready\"'\n[first_touch]\nwithin = \"1500ms\"\n",
    );
    let mut s = LeadState::default();
    e.apply(&mut s, &ready_owned("10:00:00"));
    assert_eq!(
        e.next_deadline(&s),
        Some(t("10:00:00") + SignedDuration::from_millis(1500))
    );
}

#[test]
fn a_rule_that_errors_counts_as_false_and_is_counted() {
    let rules = "[lifecycle]\nsales_ready = 'lead.stage == \"sales_ready\" && lead.score > 50'\n[first_touch]\nwithin = \"4h\"\n";
    let e = Engine::new(Arc::new(Rules::parse(rules).unwrap()));
    let mut p = PartitionState::default();
    let mut noticed = Vec::new();
    // No `stage` at all: the comparison is false — counted apart, as a missing field.
    let ev = update("e1", "10:00:00", json!({"owner": "alice"}));
    noticed.extend(p.step(&e, Input::Event(&ev), ev.received_at).diagnostics);
    assert!(p.lead("L-1").unwrap().lead.episode.is_none());
    // A score that cannot be compared with a number: an error, counted, and false.
    let ev = update(
        "e2",
        "10:01:00",
        json!({"stage": "sales_ready", "score": [1]}),
    );
    noticed.extend(p.step(&e, Input::Event(&ev), ev.received_at).diagnostics);
    assert!(p.lead("L-1").unwrap().lead.episode.is_none());
    let counted = |missing: bool| {
        noticed
            .iter()
            .filter(|n| match n {
                Diagnostic::RuleMissingField { rule, .. } => {
                    missing && rule == "lifecycle.sales_ready"
                }
                Diagnostic::RuleError { rule, .. } => !missing && rule == "lifecycle.sales_ready",
                _ => false,
            })
            .count()
    };
    assert_eq!(counted(true), 1, "{noticed:?}");
    assert_eq!(counted(false), 1, "{noticed:?}");
}

#[test]
fn a_late_patch_does_not_overwrite_a_newer_value() {
    let e = engine();
    let mut s = LeadState::default();
    e.apply(&mut s, &ready_owned("10:00:00"));
    e.apply(&mut s, &update("e2", "12:00:00", json!({"owner": "bob"})));
    // Sent at 11:00, arrives after the 12:00 change: bob stays the owner, the clock stays his.
    e.apply(
        &mut s,
        &update(
            "e3",
            "11:00:00",
            json!({"owner": "carol", "company": "Acme"}),
        ),
    );
    assert_eq!(s.lead.owner.as_deref(), Some("bob"));
    assert_eq!(
        s.lead.fields.get("company").and_then(FieldValue::as_str),
        Some("Acme"),
        "fields it does not contradict still apply"
    );
    assert_eq!(e.next_deadline(&s), Some(t("16:00:00")));
    // A late "not ready" older than the sales-ready change does not end the episode.
    e.apply(&mut s, &update("e4", "09:00:00", json!({"stage": "new"})));
    assert!(s.lead.episode.is_some());
}

#[test]
fn forgetting_a_lead_erases_it_and_its_deadline() {
    let e = engine();
    let mut p = PartitionState::default();
    assert!(matches!(
        p.apply(&e, &ready_owned("10:00:00")),
        Write::State(_)
    ));
    let forget = LeadEvent {
        id: "forget-1".into(),
        source: "cli".into(),
        lead: "L-1".into(),
        occurred_at: t("10:05:00"),
        received_at: t("10:05:00"),
        change: Change::Forgotten {},
    };
    assert_eq!(p.apply(&e, &forget), Write::Tombstone);
    assert!(p.lead("L-1").is_none());
    assert_eq!(p.next_deadline(), None);
}

#[test]
fn a_deleted_or_merged_lead_owes_nothing_more() {
    for change in [
        Change::Deleted {},
        Change::Merged {
            into: "hubspot:2".into(),
        },
    ] {
        let e = engine();
        let mut s = LeadState::default();
        e.apply(&mut s, &ready_owned("10:00:00"));
        let mut gone = update("gone", "11:00:00", json!({}));
        gone.change = change;
        e.apply(&mut s, &gone);
        assert_eq!(e.next_deadline(&s), None);
        assert!(s.lead.deleted_at.is_some());
    }
}

#[test]
fn leads_with_nothing_pending_expire_after_their_retention() {
    let e = engine_with(ALL_RULES);
    let mut p = PartitionState::default();
    let day = std::time::Duration::from_secs(86_400);
    let retention = Retention {
        ended: day,
        idle: 10 * day,
    };
    let lead = |key: &str, mut ev: LeadEvent| {
        ev.lead = key.into();
        ev.id = format!("{key}-{}", ev.id);
        ev
    };
    // Ended: converted, and deleted.
    p.apply(&e, &lead("L-won", mql("10:00:00", Some("alice"))));
    p.apply(
        &e,
        &lead(
            "L-won",
            update("c", "10:30:00", json!({"status": "Converted"})),
        ),
    );
    let mut gone = update("d", "10:30:00", json!({}));
    gone.change = Change::Deleted {};
    p.apply(&e, &lead("L-gone", gone));
    // Open and waiting on its rep (a deadline pending), and open but quiet (nurture).
    p.apply(&e, &lead("L-open", mql("10:00:00", Some("alice"))));
    p.apply(
        &e,
        &lead(
            "L-nurture",
            update("n", "10:00:00", json!({"stage": "nurture"})),
        ),
    );

    assert!(p.expire(&e, at("+1d 10:29:59"), retention).is_empty());
    let mut ended = p.expire(&e, at("+1d 10:30:00"), retention);
    ended.sort();
    assert_eq!(ended, ["L-gone", "L-won"]);
    // A quiet lead that never ended is kept much longer, its fields intact for its next event.
    assert!(p.expire(&e, at("+9d 10:00:00"), retention).is_empty());
    assert_eq!(p.expire(&e, at("+10d 10:00:00"), retention), ["L-nurture"]);
    assert!(
        p.lead("L-open").is_some(),
        "a lead with a deadline pending is kept"
    );
}

#[test]
fn a_restored_state_keeps_its_window_for_late_events() {
    let e = engine();
    let mut s = LeadState::default();
    e.apply(&mut s, &ready_owned("10:00:00"));
    e.apply(&mut s, &update("o", "10:30:00", json!({"owner": "bob"})));
    let stored = serde_json::to_vec(&s).unwrap();
    let mut back: LeadState = serde_json::from_slice(&stored).unwrap();
    assert_eq!(back, s);
    // A late event still takes its place after the restore: alice was called at 10:15, before
    // bob took over, and bob's clock is what remains.
    for state in [&mut s, &mut back] {
        e.apply(state, &activity("late", "10:15:00", "call"));
    }
    assert_eq!(back, s);
    assert_eq!(
        back.lead
            .touches
            .iter()
            .map(|t| t.at.ts())
            .collect::<Vec<_>>(),
        [t("10:15:00")]
    );
    assert_eq!(e.next_deadline(&back), Some(t("14:30:00")));
    // Once the window has passed, a quiet lead holds (and stores) one copy of itself.
    let mut quiet = LeadState::default();
    e.apply(&mut quiet, &ready_owned("10:00:00"));
    e.apply(&mut quiet, &update("x", "12:00:00", json!({"score": 1})));
    assert!(e.settle(&mut quiet, t("12:59:59")));
    assert!(quiet.base.is_some() && quiet.log.len() == 1);
    let before = quiet.lead.clone();
    assert!(!e.settle(&mut quiet, t("13:00:01")));
    assert!(quiet.base.is_none() && quiet.log.is_empty());
    assert_eq!(quiet.lead, before);
}

/// The alerts (type, level) that a lead with `events` (applied in this order) has fired by `now`,
/// firing once at `now`.
fn fired_by(events: &[LeadEvent], now: &str) -> Vec<(String, u32)> {
    let e = engine_with(ALL_RULES);
    let mut s = LeadState::default();
    for ev in events {
        e.apply(&mut s, ev);
    }
    e.fire_due("L-1", &mut s, at(now))
        .into_iter()
        .map(|a| (a.kind, a.data.level))
        .collect()
}

fn kinds(v: &[(&str, u32)]) -> Vec<(String, u32)> {
    v.iter().map(|(k, l)| (k.to_string(), *l)).collect()
}

fn mql(when: &str, owner: Option<&str>) -> LeadEvent {
    let mut fields = json!({"stage": "MQL", "name": "Jane Doe", "company": "Acme"});
    if let Some(o) = owner {
        fields["owner"] = json!(o);
    }
    update("mql", when, fields)
}

fn close(id: &str, when: &str, reason: Option<&str>, detail: Option<&str>) -> LeadEvent {
    let mut fields = json!({"status": "Unqualified"});
    if let Some(r) = reason {
        fields["disposition_reason"] = json!(r);
    }
    if let Some(d) = detail {
        fields["disposition_detail"] = json!(d);
    }
    update(id, when, fields)
}

fn calls(n: usize, from: &str) -> Vec<LeadEvent> {
    (0..n)
        .map(|i| {
            let mut c = activity(&format!("call-{i}"), from, "call");
            c.occurred_at += SignedDuration::from_secs(i as i64);
            c
        })
        .collect()
}

/// Salesforce's own flow (stage and status both read `Status`): Open - Not Contacted (sales-ready)
/// → Working - Contacted → Unqualified after one call and with no reason. "Working" is not
/// sales-ready, and the close is still this handoff's close-out: both alerts.
#[test]
fn a_close_after_working_the_lead_is_judged() {
    let rules = ALL_RULES
        .replace(
            "sales_ready = 'lead.stage == \"MQL\"'",
            "sales_ready = 'lead.status == \"Open - Not Contacted\"'",
        )
        .replace("feedback_within  = \"5d\"", "");
    let e = engine_with(&rules);
    let mut p = PartitionState::default();
    let status = |id: &str, when: &str, v: &str| update(id, when, json!({"status": v}));
    let mut open = status("open", "10:00:00", "Open - Not Contacted");
    if let Change::Updated { fields } = &mut open.change {
        fields.insert("owner".into(), json!("alice"));
    }
    for ev in [
        open,
        status("working", "10:20:00", "Working - Contacted"),
        activity("call", "10:30:00", "call"),
        status("unq", "+1d 11:00:00", "Unqualified"),
    ] {
        p.apply(&e, &ev);
    }
    let fired = p.fire_due(&e, at("+1d 11:05:00"));
    let kinds: Vec<&str> = fired
        .iter()
        .flat_map(|(_, a)| a.iter().map(|a| a.kind.as_str()))
        .collect();
    assert_eq!(
        kinds,
        [
            "follow_up.insufficient_attempts",
            "disposition.missing_reason"
        ]
    );
    assert_eq!(fired[0].1[0].data.sales_ready_at, Some(t("10:00:00")));
}

/// Issue 12: the ladder counts from the handoff. A lead bounced between owners every few hours
/// and never touched reaches the manager 8h after the handoff and marketing ops 24h after it,
/// each once, whoever owns it then; each owner still gets a breach of their own. (Before, every
/// owner change restarted the ladder, and the lead never escalated.)
#[test]
fn a_lead_bounced_between_owners_still_escalates_from_the_handoff() {
    let e = engine_with(ALL_RULES);
    let mut p = PartitionState::default();
    p.apply(&e, &mql("10:00:00", Some("alice")));
    let owners = [
        "dave", "alice", "dave", "alice", "dave", "alice", "dave", "alice", "dave",
    ];
    let mut fired = Vec::new();
    for (i, owner) in owners.iter().enumerate() {
        let when = at("10:00:00") + SignedDuration::from_hours(3 * (i as i64 + 1));
        // Everything due before the reassignment fires first.
        for (_, alerts) in p.fire_due(&e, when - SignedDuration::from_secs(1)) {
            fired.extend(alerts);
        }
        let mut ev = update(&format!("o{i}"), "10:00:00", json!({"owner": owner}));
        (ev.occurred_at, ev.received_at) = (when, when);
        p.apply(&e, &ev);
    }
    for (_, alerts) in p.fire_due(&e, at("+3d 10:00:00")) {
        fired.extend(alerts);
    }
    let escalated: Vec<(u32, Timestamp, Option<&str>)> = fired
        .iter()
        .filter(|a| a.kind == "sla.first_touch.escalated")
        .map(|a| (a.data.level, a.data.deadline, a.data.owner.as_deref()))
        .collect();
    assert_eq!(
        escalated,
        [
            (1, t("18:00:00"), Some("alice")),
            (2, at("+1d 10:00:00"), Some("alice")),
        ]
    );
    let breaches = fired
        .iter()
        .filter(|a| a.kind == "sla.first_touch.breached")
        .count();
    assert!(breaches >= 1, "each owner's own clock still runs");
    // Escalation ids are made of the handoff: one per (rule, level) in the episode.
    assert!(
        fired
            .iter()
            .filter(|a| a.kind == "sla.first_touch.escalated")
            .all(|a| a.data.clock_started_at == t("10:00:00"))
    );
}

fn activity_by(id: &str, when: &str, kind: &str, by: &str) -> LeadEvent {
    let mut ev = activity(id, when, kind);
    if let Change::Activity { activity } = &mut ev.change {
        activity.by = Some(by.into());
    }
    ev
}

/// Issue 12: touches are people's. An email "by" a nurture program five minutes after the
/// handoff neither cancels the first-touch SLA nor counts as an attempt; the owner's call, a
/// call by someone in `[directory]`, and one whose source does not say who, do. (Before, any
/// activity of a touch kind counted.)
#[test]
fn only_peoples_activities_are_touches() {
    use deadlines::*;
    let ready = mql("10:00:00", Some("alice"));
    let nurture = activity_by("n", "10:05:00", "email", "nurture-program@mkto.example");
    assert_eq!(
        fired_by(&[ready.clone(), nurture], "14:00:00"),
        kinds(&[(BREACHED, 0)]),
        "the reminder is superseded by the breach"
    );
    for (who, by) in [
        ("the owner", "Alice"),
        ("the directory", "carol"),
        ("nobody said", ""),
    ] {
        let touch = if by.is_empty() {
            activity("c", "10:05:00", "call")
        } else {
            activity_by("c", "10:05:00", "call", by)
        };
        assert_eq!(fired_by(&[ready.clone(), touch], "14:00:00"), [], "{who}");
    }
    // Three emails by the program and one call by the owner: one attempt.
    let mut events = vec![ready.clone()];
    for i in 0..3 {
        events.push(activity_by(
            &format!("n{i}"),
            "10:05:00",
            "email",
            "nurture",
        ));
    }
    events.push(activity_by("c", "10:30:00", "call", "alice"));
    events.push(close("x", "11:00:00", Some("No budget"), None));
    assert_eq!(
        fired_by(&events, "11:00:00"),
        kinds(&[(INSUFFICIENT_ATTEMPTS, 0)])
    );
}

/// An activity its source marks `automated` (a Salesforce list email, a Marketo program send)
/// is no touch, even "by" the owner (a list email goes out under the owner's name), or with
/// nobody named.
#[test]
fn an_activity_its_source_marks_automated_is_no_touch() {
    use deadlines::*;
    let ready = mql("10:00:00", Some("alice"));
    for by in ["alice", ""] {
        let mut email = if by.is_empty() {
            activity("e", "10:05:00", "email")
        } else {
            activity_by("e", "10:05:00", "email", by)
        };
        if let Change::Activity { activity } = &mut email.change {
            activity.automated = true;
        }
        assert_eq!(
            fired_by(&[ready.clone(), email], "14:00:00"),
            kinds(&[(BREACHED, 0)]),
            "automated, by {by:?}"
        );
    }
}

/// `[first_touch] touch_counts` replaces the default with a CEL predicate over `activity` and
/// `lead`: here, everything but the program's emails counts.
#[test]
fn touch_counts_decides_whose_activities_count() {
    let rules = ALL_RULES.replace(
        "escalate =",
        "touch_counts = '!has(activity.by) || activity.by != \"nurture\"'\nescalate =",
    );
    let e = engine_with(&rules);
    let fired = |events: &[LeadEvent]| {
        let mut s = LeadState::default();
        for ev in events {
            e.apply(&mut s, ev);
        }
        e.fire_due("L-1", &mut s, t("14:00:00"))
            .into_iter()
            .map(|a| a.kind)
            .collect::<Vec<_>>()
    };
    let ready = mql("10:00:00", Some("alice"));
    let stranger = activity_by("c", "10:05:00", "call", "temp-sdr@agency.example");
    assert_eq!(fired(&[ready.clone(), stranger]), Vec::<String>::new());
    let program = activity_by("c", "10:05:00", "email", "nurture");
    assert_eq!(fired(&[ready, program]), ["sla.first_touch.breached"]);
}

#[test]
fn every_alert_type_at_its_edges() {
    use deadlines::*;
    let ready = mql("10:00:00", Some("alice"));
    let unowned = mql("10:00:00", None);
    let three_calls = calls(3, "10:30:00");
    let two_calls = calls(2, "10:30:00");
    let with = |mut events: Vec<LeadEvent>, more: &[LeadEvent]| {
        events.extend_from_slice(more);
        events
    };
    /// (what, events in arrival order, when to fire, what fires)
    type Case<'a> = (&'a str, Vec<LeadEvent>, &'a str, Vec<(&'a str, u32)>);
    #[rustfmt::skip]
    let cases: Vec<Case> = vec![
        ("unassigned, a second early", vec![unowned.clone()], "10:14:59", vec![]),
        ("unassigned, at the deadline", vec![unowned.clone()], "10:15:00", vec![(UNASSIGNED, 0)]),
        ("assigned at the deadline", vec![unowned.clone(), update("o", "10:15:00", json!({"owner": "alice"}))], "10:15:00", vec![]),
        ("reminder, a second early", vec![ready.clone()], "12:59:59", vec![]),
        ("reminder, an hour before", vec![ready.clone()], "13:00:00", vec![(REMINDER, 0)]),
        ("breach, a second early", vec![ready.clone()], "13:59:59", vec![(REMINDER, 0)]),
        ("breach supersedes a missed reminder", vec![ready.clone()], "14:00:00", vec![(BREACHED, 0)]),
        ("first escalation, a second early", vec![ready.clone()], "17:59:59", vec![(BREACHED, 0)]),
        ("first escalation", vec![ready.clone()], "18:00:00", vec![(BREACHED, 0), (ESCALATED, 1)]),
        ("second escalation, a second early", vec![ready.clone()], "+1d 09:59:59", vec![(BREACHED, 0), (ESCALATED, 1)]),
        ("second escalation", vec![ready.clone()], "+1d 10:00:00", vec![(BREACHED, 0), (ESCALATED, 1), (ESCALATED, 2)]),
        ("a call before the reminder cancels all", vec![ready.clone(), activity("c", "12:59:59", "call")], "+1d 12:00:00", vec![]),
        ("a call after the reminder cancels the breach", vec![ready.clone(), activity("c", "13:30:00", "call")], "13:59:59", vec![(REMINDER, 0)]),
        ("a reminder late for its deadline is dropped", vec![ready.clone(), activity("c", "13:30:00", "call")], "+1d 13:00:00", vec![]),
        ("a call after the breach cancels the escalations", vec![ready.clone(), activity("c", "14:00:01", "call")], "+1d 14:00:00", vec![(BREACHED, 0)]),
        ("a touching field change counts", vec![ready.clone(), update("w", "11:00:00", json!({"status": "Working - Contacted"}))], "+1d 10:30:00", vec![]),
        ("closing ends the clock", vec![ready.clone(), close("x", "11:00:00", Some("No budget"), None)], "+2d 10:00:00", vec![(INSUFFICIENT_ATTEMPTS, 0)]),
        ("enough attempts, an agreed reason", with(vec![ready.clone()], &with(three_calls.clone(), &[close("x", "11:00:00", Some(" no budget "), None)])), "+2d 10:00:00", vec![]),
        ("too few attempts, at the close", with(vec![ready.clone()], &with(two_calls.clone(), &[close("x", "11:00:00", Some("No budget"), None)])), "11:00:00", vec![(INSUFFICIENT_ATTEMPTS, 0)]),
        ("too few attempts, a second before the close", with(vec![ready.clone()], &with(two_calls.clone(), &[close("x", "11:00:00", Some("No budget"), None)])), "10:59:59", vec![]),
        ("no reason", with(vec![ready.clone()], &with(three_calls.clone(), &[close("x", "11:00:00", None, None)])), "11:05:00", vec![(MISSING_REASON, 0)]),
        ("a blank reason is no reason", with(vec![ready.clone()], &with(three_calls.clone(), &[close("x", "11:00:00", Some("   "), None)])), "11:05:00", vec![(MISSING_REASON, 0)]),
        ("a reason off the list", with(vec![ready.clone()], &with(three_calls.clone(), &[close("x", "11:00:00", Some("Bad timing"), None)])), "11:05:00", vec![(UNKNOWN_REASON, 0)]),
        ("vague without detail", with(vec![ready.clone()], &with(three_calls.clone(), &[close("x", "11:00:00", Some("NOT INTERESTED "), None)])), "11:05:00", vec![(VAGUE_REASON, 0)]),
        ("vague, detail one short", with(vec![ready.clone()], &with(three_calls.clone(), &[close("x", "11:00:00", Some("Other"), Some("  nineteen characters  "))])), "11:05:00", vec![(VAGUE_REASON, 0)]),
        ("vague, detail long enough", with(vec![ready.clone()], &with(three_calls.clone(), &[close("x", "11:00:00", Some("Other"), Some("twenty characters ok"))])), "11:05:00", vec![]),
        ("no reason, judged at the grace's end", with(vec![ready.clone()], &with(three_calls.clone(), &[close("x", "11:00:00", None, None)])), "11:04:59", vec![]),
        ("both attempts and reason", with(vec![ready.clone()], &[close("x", "11:00:00", None, None)]), "11:05:00", vec![(INSUFFICIENT_ATTEMPTS, 0), (MISSING_REASON, 0)]),
        ("closed exactly at the feedback limit", with(vec![ready.clone()], &with(three_calls.clone(), &[close("x", "+5d 10:30:02", Some("No budget"), None)])), "+6d 10:00:00", vec![]),
        ("closed a second after it", with(vec![ready.clone()], &with(three_calls.clone(), &[close("x", "+5d 10:30:03", Some("No budget"), None)])), "+6d 10:00:00", vec![(LATE, 0)]),
        ("converting owes nothing", vec![ready.clone(), update("cv", "11:00:00", json!({"status": "Converted"}))], "+6d 10:00:00", vec![]),
        ("closing a lead never sales-ready owes nothing", vec![close("x", "11:00:00", None, None)], "+6d 10:00:00", vec![]),
        ("next attempt, a second early", vec![ready.clone(), activity("c", "10:30:00", "call")], "+1d 10:29:59", vec![]),
        ("next attempt, overdue", vec![ready.clone(), activity("c", "10:30:00", "call")], "+1d 10:30:00", vec![(ATTEMPT_OVERDUE, 0)]),
        ("a next attempt at its deadline cancels it", vec![ready.clone(), activity("c", "10:30:00", "call"), activity("c2", "+1d 10:30:00", "call")], "+1d 10:30:00", vec![]),
        ("each gap is owed its own", vec![ready.clone(), activity("c", "10:30:00", "call"), activity("c2", "+1d 10:30:00", "call")], "+2d 10:30:00", vec![(ATTEMPT_OVERDUE, 0)]),
        ("enough attempts owe no next one", with(vec![ready.clone()], &three_calls), "+4d 10:00:00", vec![]),
        ("an unowned lead owes no next attempt", vec![unowned.clone(), activity("c", "10:10:00", "call")], "+1d 10:10:00", vec![(UNASSIGNED, 0)]),
        ("a nurture email is no attempt", vec![ready.clone(), activity("c", "10:30:00", "call"), activity_by("n", "+1d 10:00:00", "email", "nurture")], "+1d 10:30:00", vec![(ATTEMPT_OVERDUE, 0)]),
        ("close-out, a second early", with(vec![ready.clone()], &three_calls), "+5d 10:30:01", vec![]),
        ("close-out overdue after the last touch", with(vec![ready.clone()], &three_calls), "+5d 10:30:02", vec![(OVERDUE, 0)]),
        ("an untouched lead's close-out counts from the handoff", vec![ready.clone()], "+5d 10:00:00", vec![(BREACHED, 0), (ESCALATED, 1), (ESCALATED, 2), (OVERDUE, 0)]),
        ("a close in time owes no overdue", with(vec![ready.clone()], &with(three_calls.clone(), &[close("x", "+5d 10:30:01", Some("No budget"), None)])), "+9d 10:00:00", vec![]),
        ("removing the owner puts it back under the handoff rule", vec![ready.clone(), activity("c", "10:30:00", "call"), update("u", "11:00:00", json!({"owner": null}))], "11:15:00", vec![(UNASSIGNED, 0)]),
    ];
    for (name, events, now, want) in cases {
        let mut got = fired_by(&events, now);
        let mut want = kinds(&want);
        got.sort();
        want.sort();
        assert_eq!(got, want, "{name}");
    }
}

/// The ids of the alerts the engine fires, one of each type, are literals computed once: which
/// rule, level, clock start and variant feed an alert's id is decided here (deadlines, alerts)
/// and a move could pass another part (the deadline for the clock start, the type for the
/// variant). Any other id after an upgrade would deliver every alert that already fired again.
/// Do not update the literals; undo the change.
#[test]
fn the_alert_ids_the_engine_fires_are_pinned() {
    let e = engine_with(ALL_RULES);
    let fire = |events: &[LeadEvent], nows: &[&str]| -> Vec<(String, String)> {
        let mut s = LeadState::default();
        for ev in events {
            e.apply(&mut s, ev);
        }
        nows.iter()
            .flat_map(|now| e.fire_due("L-1", &mut s, at(now)))
            .map(|a| (a.kind, a.data.alert_id))
            .collect()
    };
    let ready = mql("10:00:00", Some("alice"));
    let closed_after_three_calls = |when: &str, reason: &str, detail: Option<&str>| {
        let mut events = vec![ready.clone()];
        events.extend(calls(3, "10:30:00"));
        events.push(close("x", when, Some(reason), detail));
        events
    };
    let mut got = Vec::new();
    got.extend(fire(&[mql("10:00:00", None)], &["10:15:00"]));
    got.extend(fire(
        std::slice::from_ref(&ready),
        &["13:00:00", "14:00:00", "18:00:00", "+1d 10:00:00"],
    ));
    got.extend(fire(
        &[ready.clone(), close("x", "11:00:00", None, None)],
        &["11:05:00"],
    ));
    got.extend(fire(
        &closed_after_three_calls("11:00:00", "Bad timing", None),
        &["11:05:00"],
    ));
    got.extend(fire(
        &closed_after_three_calls("11:00:00", "Other", None),
        &["11:05:00"],
    ));
    got.extend(fire(
        &closed_after_three_calls("+5d 10:30:03", "No budget", None),
        &["+6d 10:00:00"],
    ));
    // Issue 12's alerts while the lead is open.
    got.extend(fire(
        &[ready.clone(), activity("c", "10:30:00", "call")],
        &["+1d 10:30:00", "+5d 10:30:00"],
    ));
    let got: Vec<(&str, &str)> = got.iter().map(|(k, i)| (k.as_str(), i.as_str())).collect();
    assert_eq!(
        got,
        [
            ("lead.unassigned", "alert_58ab3bf097dd0c0cc2baecec7498e937"),
            (
                "sla.first_touch.reminder",
                "alert_f322c71b24ae3fd1cf295edf4573725e"
            ),
            (
                "sla.first_touch.breached",
                "alert_cb070952382793f05aa37c7d7779d9a7"
            ),
            (
                "sla.first_touch.escalated",
                "alert_75c69bdd6f22215a4e0c452d6cfb6f44"
            ),
            (
                "sla.first_touch.escalated",
                "alert_7107ca3fb9c9c37e9ab1a9ef2a2e8b42"
            ),
            (
                "follow_up.insufficient_attempts",
                "alert_a0179d91916a54f2a89fcae3b03b02aa"
            ),
            (
                "disposition.missing_reason",
                "alert_67333343048e5ec80a659b9e58b87f9c"
            ),
            (
                "disposition.unknown_reason",
                "alert_b6c0db4834896048911742a1ea23270e"
            ),
            (
                "disposition.vague_reason",
                "alert_9787b61ff91c49a2a4ebadb8421d1e8f"
            ),
            ("disposition.late", "alert_4d523d5e81d0fdbf4fb67911a6147c75"),
            (
                "follow_up.attempt_overdue",
                "alert_3473425365e4f90df0b8a63b03ff25ef"
            ),
            (
                "disposition.overdue",
                "alert_eb5969ed5e51cf73f7dab433bf85d4ae"
            ),
        ]
    );
}

/// Issue 12: a lead called once and left open raises its next attempt with the owner, then its
/// close-out with the owner and marketing ops, one alert per gap; a later close of that gap is
/// scored late but not alerted again, while its reason is still judged.
#[test]
fn a_lead_called_once_and_left_open_is_followed_up() {
    let e = engine_with(ALL_RULES);
    let mut p = PartitionState::default();
    let mut fired = Vec::new();
    let mut step = |p: &mut PartitionState, ev: Option<LeadEvent>, now: &str| {
        if let Some(ev) = ev {
            p.apply(&e, &ev);
        }
        for (_, alerts) in p.fire_due(&e, at(now)) {
            fired.extend(alerts.into_iter().map(|a| {
                (
                    a.kind,
                    a.data.deadline,
                    a.data.to.join("+"),
                    a.data.recipients.len(),
                )
            }));
        }
    };
    step(&mut p, Some(mql("10:00:00", Some("alice"))), "10:00:00");
    step(&mut p, Some(activity("c1", "10:30:00", "call")), "10:30:00");
    // A nurture program's email is recorded, not an attempt: the gap still runs from the call.
    let nurture = activity_by("n", "+1d 09:00:00", "email", "nurture");
    step(&mut p, Some(nurture), "+1d 10:30:00");
    step(&mut p, None, "+3d 10:00:00");
    // A second call starts a new gap: its own next attempt, and the close-out counts from it.
    step(
        &mut p,
        Some(activity("c2", "+3d 11:00:00", "call")),
        "+9d 00:00:00",
    );
    step(
        &mut p,
        Some(close("x", "+9d 01:00:00", None, None)),
        "+12d 00:00:00",
    );
    let owner = "owner".to_string();
    let both = "owner+marketing_ops".to_string();
    assert_eq!(
        fired,
        [
            (
                "follow_up.attempt_overdue".into(),
                at("+1d 10:30:00"),
                owner.clone(),
                1
            ),
            (
                "follow_up.attempt_overdue".into(),
                at("+4d 11:00:00"),
                owner,
                1
            ),
            (
                "disposition.overdue".into(),
                at("+8d 11:00:00"),
                both.clone(),
                2
            ),
            // The close after the overdue one: its reason and attempts are judged, its lateness
            // was already said.
            (
                "follow_up.insufficient_attempts".into(),
                at("+9d 01:00:00"),
                both.clone(),
                2
            ),
            (
                "disposition.missing_reason".into(),
                at("+9d 01:00:00"),
                both,
                2
            ),
        ]
    );
    let c = p
        .lead("L-1")
        .unwrap()
        .lead
        .closeouts
        .last()
        .unwrap()
        .clone();
    assert!(
        c.owes.iter().any(|o| o.kind == "disposition.late"),
        "scored late all the same"
    );
}

/// A daemon that was down, or a partition read from its start, applies a lead's later touches
/// before their gaps' deadlines get a chance to fire: every gap the lead went through is still
/// owed, with the ids a daemon that never stopped fires.
#[test]
#[ignore = "known limitation (issue 14): a partition catching up applies a later touch before the gap it ends fires"]
fn catching_up_owes_every_gap_the_lead_went_through() {
    let e = engine_with(ALL_RULES);
    let events = [
        mql("10:00:00", Some("alice")),
        activity("c1", "10:30:00", "call"),
        // Three days without a call (the next attempt was due a day after the first), then six
        // more without anyone closing the lead (the close-out was due five after a touch).
        activity("c2", "+3d 11:00:00", "call"),
        activity("c3", "+9d 12:00:00", "call"),
        // Closed long after the close-out was due: the overdue alert said so while it was open.
        close("x", "+20d 12:00:00", Some("No budget"), None),
    ];
    let ids = |p: &mut PartitionState, now: &str| -> Vec<(String, String)> {
        p.fire_due(&e, at(now))
            .into_iter()
            .flat_map(|(_, alerts)| alerts)
            .map(|a| (a.kind, a.data.alert_id))
            .collect()
    };
    let mut live = PartitionState::default();
    let mut as_it_happened = Vec::new();
    for (ev, next) in events.iter().zip([
        "10:00:00",
        "+3d 10:59:59",
        "+9d 11:59:59",
        "+20d 11:59:59",
        "+30d 00:00:00",
    ]) {
        live.apply(&e, ev);
        as_it_happened.extend(ids(&mut live, next));
    }
    // Read after downtime: one event after the other, no timer in between.
    let mut caught_up = PartitionState::default();
    let mut after_downtime = Vec::new();
    for ev in &events {
        let step = caught_up.step(&e, Input::Event(ev), at("+30d 00:00:00"));
        for w in step.writes {
            if let step::Write::Lead(w) = w {
                after_downtime.extend(w.alerts.into_iter().map(|a| (a.kind, a.data.alert_id)));
            }
        }
    }
    after_downtime.extend(ids(&mut caught_up, "+30d 00:00:00"));
    as_it_happened.sort();
    after_downtime.sort();
    let kinds: Vec<&str> = as_it_happened.iter().map(|(k, _)| k.as_str()).collect();
    assert_eq!(
        kinds
            .iter()
            .filter(|k| **k == "follow_up.attempt_overdue")
            .count(),
        2,
        "the gaps after the first and the second call: {kinds:?}"
    );
    assert_eq!(
        kinds
            .iter()
            .filter(|k| **k == "disposition.overdue")
            .count(),
        2,
        "the six days after the second call, and the days after the third: {kinds:?}"
    );
    assert!(
        !kinds.contains(&"disposition.late"),
        "the late close was said while the lead was open: {kinds:?}"
    );
    assert_eq!(after_downtime, as_it_happened);
}

#[test]
fn a_replayed_activity_is_not_a_second_attempt() {
    use deadlines::*;
    let mut events = vec![mql("10:00:00", Some("alice"))];
    events.extend(calls(2, "10:30:00"));
    // The same two calls again, replayed from the raw topic under new ids.
    for mut c in calls(2, "10:30:00") {
        c.id = format!("replay:1:{}", c.id);
        events.push(c);
    }
    events.push(close("x", "11:00:00", Some("No budget"), None));
    assert_eq!(
        fired_by(&events, "11:00:00"),
        kinds(&[(INSUFFICIENT_ATTEMPTS, 0)])
    );
}

#[test]
fn two_calls_in_the_same_second_are_two_attempts() {
    let mut events = vec![mql("10:00:00", Some("alice"))];
    let mut email = activity("email", "10:30:00", "email");
    email.occurred_at = at("10:30:00");
    events.push(activity("call", "10:30:00", "call"));
    events.push(email);
    events.push(activity("sms", "10:30:00", "sms"));
    events.push(close("x", "11:00:00", Some("No budget"), None));
    assert_eq!(fired_by(&events, "11:00:00"), []);
}

#[test]
fn lateness_counts_from_this_episode_not_a_call_last_quarter() {
    let events = vec![
        activity("old-call", "-80d 10:00:00", "call"),
        mql("10:00:00", Some("alice")),
        activity("c1", "10:10:00", "call"),
        activity("c2", "10:20:00", "call"),
        activity("c3", "10:30:00", "call"),
        close("x", "+1d 10:00:00", Some("No budget"), None),
    ];
    assert_eq!(fired_by(&events, "+1d 10:00:00"), []);
}

#[test]
fn a_lead_restored_after_its_deletion_is_judged_again() {
    let e = engine_with(ALL_RULES);
    let mut s = LeadState::default();
    e.apply(&mut s, &mql("10:00:00", Some("alice")));
    let mut gone = update("del", "10:10:00", json!({}));
    gone.change = Change::Deleted {};
    e.apply(&mut s, &gone);
    assert_eq!(e.next_deadline(&s), None);
    // HubSpot's restore is an empty patch after the deletion; the lead is back, still an MQL.
    e.apply(&mut s, &update("restore", "11:00:00", json!({})));
    assert!(s.lead.deleted_at.is_none());
    assert_eq!(
        e.next_deadline(&s),
        Some(t("14:00:00")),
        "reminder at 14:00"
    );
}

/// Issue 12: the reason and detail are judged `reason_grace` (default 5m, wall-clock) after the
/// close, as they stand then; one set before the episode began is not this close-out's. (Before,
/// they were judged at the close: a reason a second later gave `disposition.missing_reason`.)
#[test]
fn the_reason_is_judged_as_it_stands_reason_grace_after_the_close() {
    use deadlines::*;
    let ready = mql("10:00:00", Some("alice"));
    let reason = |when: &str| update("r", when, json!({"disposition_reason": "Wrong contact"}));
    let mut base = vec![ready];
    base.extend(calls(3, "10:30:00"));
    let close = close("x", "11:00:00", None, None);
    // Set by an earlier event.
    let mut earlier = base.clone();
    earlier.extend([reason("10:45:00"), close.clone()]);
    assert_eq!(fired_by(&earlier, "+1d 10:00:00"), []);
    // By another event stamped with the same instant, arriving after the close.
    let mut same = base.clone();
    same.extend([close.clone(), reason("11:00:00")]);
    assert_eq!(fired_by(&same, "+1d 10:00:00"), []);
    // As its own update two seconds later, and at the very end of the grace.
    for when in ["11:00:02", "11:05:00"] {
        let mut later = base.clone();
        later.extend([close.clone(), reason(when)]);
        assert_eq!(fired_by(&later, "+1d 10:00:00"), [], "{when}");
    }
    // After the grace is too late.
    let mut late = base.clone();
    late.extend([close.clone(), reason("11:05:01")]);
    assert_eq!(
        fired_by(&late, "+1d 10:00:00"),
        kinds(&[(MISSING_REASON, 0)])
    );
    // A reason left over from before this episode is not this close-out's reason, even when the
    // CRM sends it again with every update.
    let mut recycled = vec![
        update(
            "old",
            "-30d 10:00:00",
            json!({"disposition_reason": "No budget"}),
        ),
        mql("10:00:00", Some("alice")),
    ];
    recycled.extend(calls(3, "10:30:00"));
    recycled.push(update(
        "x",
        "11:00:00",
        json!({"status": "Unqualified", "disposition_reason": "No budget"}),
    ));
    assert_eq!(
        fired_by(&recycled, "+1d 10:00:00"),
        kinds(&[(MISSING_REASON, 0)])
    );
}

#[test]
fn alerts_name_their_recipients_and_suggest_a_new_owner() {
    let e = engine_with(ALL_RULES);
    let mut s = LeadState::default();
    e.apply(&mut s, &mql("10:00:00", Some("alice")));
    let alerts = e.fire_due("L-1", &mut s, at("+1d 10:00:00"));
    let by_kind = |level: u32| alerts.iter().find(|a| a.data.level == level).unwrap();
    let breach = by_kind(0);
    assert_eq!(breach.data.recipients[0].slack.as_deref(), Some("U0ALICE"));
    assert_eq!(breach.data.lead_info.name.as_deref(), Some("Jane Doe"));
    assert!(
        breach.data.message.contains("Jane Doe, Acme")
            && breach.data.message.contains("Alice Adams"),
        "{}",
        breach.data.message
    );
    let manager = by_kind(1);
    assert_eq!(manager.data.to, ["manager"]);
    assert_eq!(manager.data.recipients[0].id, "carol");
    assert_eq!(manager.data.recipients[0].slack.as_deref(), Some("U0CAROL"));
    let mops = by_kind(2);
    assert_eq!(mops.data.to, ["marketing_ops"]);
    assert_eq!(
        mops.data.recipients[0].email.as_deref(),
        Some("mops@example.com")
    );
    // Not the owner (alice), not away (bob): dave.
    assert_eq!(mops.data.suggested_owner.as_deref(), Some("dave"));
    assert!(manager.data.suggested_owner.is_none());
}

#[test]
fn suggested_owners_rotate_through_the_pool() {
    let rules = ALL_RULES.replace(
        "pool = [\"alice\", \"bob\", \"dave\"]",
        "pool = [\"p1\", \"p2\", \"p3\", \"p4\"]",
    );
    let e = engine_with(&rules);
    let mut p = PartitionState::default();
    for i in 0..6 {
        let mut ev = mql("10:00:00", Some("alice"));
        ev.lead = format!("L-{i}");
        // One minute apart, so they escalate in this order.
        ev.occurred_at += SignedDuration::from_mins(i);
        p.apply(&e, &ev);
    }
    let mut suggested = Vec::new();
    let mut rotations = Vec::new();
    p.step(&e, Input::End, t("10:05:00"));
    while let Some(d) = p.next_deadline() {
        for write in p.step(&e, Input::Tick, d).writes {
            match write {
                step::Write::Lead(w) => {
                    suggested.extend(w.alerts.into_iter().filter_map(|a| a.data.suggested_owner))
                }
                step::Write::Rotation(r) => rotations.push(r),
            }
        }
    }
    assert_eq!(suggested, ["p1", "p2", "p3", "p4", "p1", "p2"]);
    // The rotation goes on where it stood after a restore of the partition.
    let saved = rotations.pop().expect("the rotation moved");
    let again = p.step(&e, Input::Tick, at("+9d 10:00:00"));
    assert_eq!(again.writes, [], "written once");
    let mut restored = PartitionState::default();
    let records = [(super::partition::ROTATION_KEY.to_string(), saved)];
    let back = restored.step(&e, Input::Restore(records.into()), at("+2d 10:00:00"));
    assert_eq!(back.diagnostics, [], "the rotation is read back");
    let mut ev = mql("10:00:00", Some("p3"));
    ev.lead = "L-next".into();
    restored.apply(&e, &ev);
    let next: Vec<String> = restored
        .fire_due(&e, at("+2d 10:00:00"))
        .into_iter()
        .flat_map(|(_, a)| a)
        .filter_map(|a| a.data.suggested_owner)
        .collect();
    // p3 is next, but it owns the lead: p4.
    assert_eq!(next, ["p4"]);
}

#[test]
fn business_time_and_segments_through_the_engine() {
    let rules = r#"
default_calendar = "us"
[lifecycle]
sales_ready = 'lead.stage == "MQL"'
[first_touch]
within = "4h"
[calendars.us]
time_zone = "America/New_York"
hours = { mon = "09:00-17:00", tue = "09:00-17:00", wed = "09:00-17:00", thu = "09:00-17:00", fri = "09:00-17:00" }
holidays = ["2026-11-26"]
[calendars.emea]
time_zone = "Europe/Berlin"
hours = { mon = "09:00-18:00", tue = "09:00-18:00", wed = "09:00-18:00", thu = "09:00-18:00", fri = "09:00-18:00" }
[[segments]]
when = 'lead.region == "EMEA"'
calendar = "emea"
first_touch = { within = "2h" }
"#;
    let e = engine_with(rules);
    // Friday 2026-11-20 16:30 New York (21:30 UTC): due Monday 12:30 New York.
    let mut s = LeadState::default();
    let mut ev = update("r", "10:00:00", json!({"stage": "MQL", "owner": "alice"}));
    ev.occurred_at = "2026-11-20T21:30:00Z".parse().unwrap();
    e.apply(&mut s, &ev);
    assert_eq!(
        e.next_deadline(&s),
        Some("2026-11-23T17:30:00Z".parse().unwrap())
    );
    let a = e.fire_due("L-1", &mut s, "2026-11-23T17:30:00Z".parse().unwrap());
    assert!(a[0].data.message.contains("EST"), "{}", a[0].data.message);
    // EMEA: Friday 17:30 Berlin (16:30 UTC) + 2h → Monday 10:30 Berlin.
    let mut s = LeadState::default();
    ev.id = "r2".into();
    ev.change = Change::Updated {
        fields: json!({"stage": "MQL", "owner": "alice", "region": "EMEA"})
            .as_object()
            .unwrap()
            .clone(),
    };
    ev.occurred_at = "2026-11-20T16:30:00Z".parse().unwrap();
    e.apply(&mut s, &ev);
    assert_eq!(
        e.next_deadline(&s),
        Some("2026-11-23T09:30:00Z".parse().unwrap())
    );
}

#[test]
fn edited_rules_move_open_deadlines_and_never_re_fire() {
    let e = engine();
    let mut p = PartitionState::default();
    let mut a = ready_owned("10:00:00");
    a.lead = "L-a".into();
    let mut b = ready_owned("10:00:00");
    b.lead = "L-b".into();
    b.id = "rb".into();
    p.apply(&e, &a);
    p.apply(&e, &b);
    let fired = p.fire_due(&e, t("14:00:00"));
    assert_eq!(fired.len(), 2);
    // Shorter or longer now: the breaches already fired in this episode do not fire again.
    for within in ["2h", "6h"] {
        let edited = e.with_rules(Arc::new(
            Rules::parse(&RULES.replace("\"4h\"", &format!("\"{within}\""))).unwrap(),
        ));
        p.reload(&edited, t("15:00:00"));
        assert_eq!(p.next_deadline(), None, "{within}");
        assert!(p.fire_due(&edited, t("23:00:00")).is_empty(), "{within}");
    }
    let shorter = e.with_rules(Arc::new(
        Rules::parse(&RULES.replace("\"4h\"", "\"2h\"")).unwrap(),
    ));

    // An open lead gets its deadline under the new rules.
    let mut c = ready_owned("15:00:00");
    c.lead = "L-c".into();
    c.id = "rc".into();
    p.apply(&e, &c);
    assert_eq!(p.next_deadline(), Some(t("19:00:00")));
    p.reload(&shorter, t("15:00:01"));
    assert_eq!(p.next_deadline(), Some(t("17:00:00")));
}

#[test]
fn a_rules_edit_does_not_reopen_past_close_outs() {
    // Closed after one call with an agreed reason: nothing owed under the rules of the day.
    let lenient = ALL_RULES.replace("min_attempts = 3", "min_attempts = 1");
    let e = engine_with(&lenient);
    let mut p = PartitionState::default();
    for ev in [
        mql("10:00:00", Some("alice")),
        activity("c", "10:30:00", "call"),
        close("x", "11:00:00", Some("No budget"), None),
    ] {
        p.apply(&e, &ev);
    }
    assert!(p.fire_due(&e, t("11:00:00")).is_empty());
    // Then three attempts become the rule and "No budget" leaves the list: the old close stays
    // judged as it was.
    let strict = engine_with(&ALL_RULES.replace("\"No budget\", ", ""));
    p.reload(&strict, t("23:00:00"));
    assert_eq!(p.next_deadline(), None);
    assert!(p.fire_due(&strict, t("23:00:00")).is_empty());
}

#[test]
fn a_rules_edit_applies_the_lifecycle_to_leads_as_they_stand() {
    let e = engine_with(ALL_RULES);
    let mut p = PartitionState::default();
    let mut low = update(
        "low",
        "10:00:00",
        json!({"stage": "MQL", "score": 40, "owner": "alice"}),
    );
    low.lead = "L-low".into();
    let mut nurture = update("n", "10:00:00", json!({"stage": "nurture", "owner": "bob"}));
    nurture.lead = "L-nurture".into();
    p.apply(&e, &low);
    p.apply(&e, &nurture);
    assert!(p.lead("L-low").unwrap().lead.episode.is_some());
    // Sales-ready now means MQL with a score of 60, or nurture: L-nurture's episode begins at the
    // reload, with its clock from then. L-low's stays open (issue 12: an episode ends only with a
    // close, a conversion, a deletion or a merge, whatever `sales_ready` says later).
    let edited = engine_with(&ALL_RULES.replace(
        "sales_ready = 'lead.stage == \"MQL\"'",
        "sales_ready = '(lead.stage == \"MQL\" && lead.score >= 60) || lead.stage == \"nurture\"'",
    ));
    p.reload(&edited, t("12:00:00"));
    let kept = p.lead("L-low").unwrap().lead.episode.clone().unwrap();
    assert_eq!(kept.started_at, At::new(t("10:00:00")));
    let started = p.lead("L-nurture").unwrap().lead.episode.clone().unwrap();
    assert_eq!(started.started_at, At::new(t("12:00:00")));
    let fired = p.fire_due(&edited, at("+2d 10:00:00"));
    let nurture: Vec<_> = fired.iter().filter(|(k, _)| k == "L-nurture").collect();
    assert_eq!(nurture.len(), 1);
    assert!(
        nurture[0]
            .1
            .iter()
            .all(|a| a.data.clock_started_at == t("12:00:00"))
    );
}

/// A restore looks at every lead again under the rules in force, as a reload does: a lead whose
/// record predates a rules edit made while nobody owned its partition starts the episode the
/// edited rules call for at the restore, and the deadline that passed before the partition was
/// restored fires once. (Without the look again, the lead would never alert.)
#[test]
fn a_restore_under_edited_rules_starts_the_episodes_they_call_for_and_fires_once() {
    let e = engine_with(ALL_RULES);
    let mut p = PartitionState::default();
    let mut nurture = update("n", "10:00:00", json!({"stage": "nurture", "owner": "bob"}));
    nurture.lead = "L-nurture".into();
    p.apply(&e, &nurture);
    assert!(p.lead("L-nurture").unwrap().lead.episode.is_none());
    let records: step::Records = p.iter().map(|(k, s)| (k.to_string(), s.encode())).collect();
    let edited = engine_with(&ALL_RULES.replace(
        "sales_ready = 'lead.stage == \"MQL\"'",
        "sales_ready = '(lead.stage == \"MQL\" && lead.score >= 60) || lead.stage == \"nurture\"'",
    ));
    let mut q = PartitionState::default();
    q.step(&edited, Input::Restore(records), t("12:00:00"));
    let started = q.lead("L-nurture").unwrap().lead.episode.clone();
    assert_eq!(
        started.map(|episode| episode.started_at),
        Some(At::new(t("12:00:00"))),
        "the episode the edited rules call for, from the restore"
    );
    let fired: Vec<Alert> = q
        .fire_due(&edited, at("+2d 10:00:00"))
        .into_iter()
        .flat_map(|(_, alerts)| alerts)
        .collect();
    assert!(!fired.is_empty(), "the passed deadline fires");
    assert!(
        fired
            .iter()
            .all(|a| a.data.clock_started_at == t("12:00:00"))
    );
    assert_eq!(q.fire_due(&edited, at("+2d 10:00:00")), [], "once");
}

#[test]
fn no_reminder_after_its_deadline() {
    let e = engine();
    let mut s = LeadState::default();
    e.apply(&mut s, &ready_owned("10:00:00"));
    assert_eq!(e.fire_due("L-1", &mut s, t("14:00:00")).len(), 1);
    // A reminder added after the breach fired would be about a deadline already passed.
    let with_reminder = e.with_rules(Arc::new(
        Rules::parse(&RULES.replace("within = \"4h\"", "within = \"4h\"\nremind_before = \"1h\""))
            .unwrap(),
    ));
    assert!(
        with_reminder
            .fire_due("L-1", &mut s, t("15:00:00"))
            .is_empty()
    );
    assert_eq!(with_reminder.next_deadline(&s), None);
}

#[test]
fn a_weekend_handoff_counts_working_days_and_reminds_on_monday() {
    let rules = r#"
default_calendar = "us"
[lifecycle]
sales_ready = 'lead.stage == "MQL"'
[first_touch]
within = "1d"
remind_before = "1h"
[calendars.us]
time_zone = "America/New_York"
hours = { mon = "09:00-17:00", tue = "09:00-17:00", wed = "09:00-17:00", thu = "09:00-17:00", fri = "09:00-17:00" }
"#;
    let e = engine_with(rules);
    let mut s = LeadState::default();
    let mut ev = mql("10:00:00", Some("alice"));
    // Saturday 2026-11-21 07:00 New York.
    ev.occurred_at = "2026-11-21T12:00:00Z".parse().unwrap();
    e.apply(&mut s, &ev);
    // Reminded Monday 16:00 (an hour of Monday's working time before the end), due when
    // Monday's working time is used up: 17:00.
    assert_eq!(
        e.next_deadline(&s),
        Some("2026-11-23T21:00:00Z".parse().unwrap())
    );
    let reminded = e.fire_due("L-1", &mut s, "2026-11-23T21:00:00Z".parse().unwrap());
    assert_eq!(reminded.len(), 1);
    assert_eq!(reminded[0].kind, "sla.first_touch.reminder");
    // One second before the deadline, nothing; at it, the breach.
    assert!(
        e.fire_due("L-1", &mut s, "2026-11-23T21:59:59Z".parse().unwrap())
            .is_empty()
    );
    let due = e.fire_due("L-1", &mut s, "2026-11-23T22:00:00Z".parse().unwrap());
    assert_eq!(due.len(), 1);
    assert_eq!(due[0].kind, "sla.first_touch.breached");
    assert_eq!(
        due[0].data.deadline,
        "2026-11-23T22:00:00Z".parse::<Timestamp>().unwrap()
    );
}

#[test]
fn rules_that_read_the_change_are_not_asked_again_without_an_event() {
    let rules = r#"
[lifecycle]
sales_ready = 'lead.stage == "MQL"'
closed      = 'has(change.status) && change.status == "Unqualified"'
[first_touch]
within = "4h"
"#;
    let e = engine_with(rules);
    let mut p = PartitionState::default();
    p.apply(&e, &mql("10:00:00", Some("alice")));
    p.apply(
        &e,
        &update("u1", "11:00:00", json!({"status": "Unqualified"})),
    );
    assert!(p.lead("L-1").unwrap().lead.episode.is_none(), "closed");
    // A reload (or a restore) has no event: `change` is empty, and the close stands.
    p.reload(&e, t("12:00:00"));
    assert!(p.lead("L-1").unwrap().lead.episode.is_none(), "reopened");
    let fired: Vec<String> = p
        .fire_due(&e, Timestamp::MAX)
        .into_iter()
        .flat_map(|(_, a)| a)
        .map(|a| a.kind)
        .collect();
    assert!(fired.is_empty(), "{fired:?}");
}

/// A Salesforce Lead snapshot of 40 fields: what the shipped rules and alerts read, and 27 they
/// do not (long text among them).
fn forty_fields() -> serde_json::Value {
    let mut fields = json!({
        "stage": "sales_ready", "status": "Open - Not Contacted", "owner": "alice@example.com",
        "score": 75, "employees": 5000, "region": "EMEA", "name": "Ann Lee",
        "first_name": "Ann", "last_name": "Lee", "email": "ann@example.com",
        "company": "Acme", "disposition_reason": "", "disposition_detail": "",
    });
    let map = fields.as_object_mut().unwrap();
    map.insert("Description".into(), json!("long text ".repeat(150)));
    for i in 0..26 {
        map.insert(format!("Custom_{i}__c"), json!(format!("value {i}")));
    }
    assert_eq!(map.len(), 40);
    fields
}

/// A lead keeps only the fields something reads: after a 40-field snapshot, its state (the lead,
/// the window's copy of it and the patch in the window) holds no field the shipped rules, the
/// engine or alerts do not read, and the record written to the changelog none either.
#[test]
fn a_lead_keeps_only_the_fields_something_reads() {
    let e = Engine::new(Arc::new(
        Rules::parse(include_str!("../../config/rules.toml")).unwrap(),
    ));
    let mut p = PartitionState::default();
    p.apply(&e, &update("big", "10:00:00", forty_fields()));
    p.apply(&e, &update("late", "09:59:00", forty_fields()));
    let state = p.lead("L-1").unwrap();
    let kept = e.rules().kept_fields().fields().unwrap().clone();
    let mut held: Vec<&str> = state.lead.fields.names().collect();
    if let Some(base) = &state.base {
        held.extend(base.fields.names());
    }
    for entry in &state.log {
        if let crate::engine::Patch::Updated(fields) = &entry.change {
            held.extend(fields.keys());
        }
    }
    assert_eq!(state.log.len(), 2, "both events are in the window");
    let unread: Vec<&&str> = held.iter().filter(|f| !kept.contains(**f)).collect();
    assert!(unread.is_empty(), "fields nothing reads: {unread:?}");
    // What is read is all there.
    assert_eq!(state.lead.fields.len(), 13);
    // Nor is any of it written: the changelog record (binary, its names and text as they are).
    let record = String::from_utf8_lossy(&state.encode()).into_owned();
    assert!(
        record.contains("disposition_detail"),
        "the record names its fields"
    );
    assert!(!record.contains("Custom_") && !record.contains("long text"));
    // And the lead is what the rules see.
    assert!(state.lead.episode.is_some());
}

/// A state written by an older version, holding every field, loses those nothing reads when it
/// is restored; nothing else about it changes.
#[test]
fn a_restored_state_keeps_only_the_fields_something_reads() {
    let rules = Arc::new(Rules::parse(include_str!("../../config/rules.toml")).unwrap());
    let (all, projected) = (
        Engine::new(rules.clone()).keeping_every_field(),
        Engine::new(rules),
    );
    let mut old = PartitionState::default();
    old.apply(&all, &update("big", "10:00:00", forty_fields()));
    let written = old.lead("L-1").unwrap().clone();
    assert_eq!(written.lead.fields.len(), 40, "kept whole before");
    let mut p = PartitionState::default();
    let records = [("L-1".to_string(), written.encode())]
        .into_iter()
        .collect();
    p.step(&projected, Input::Restore(records), at("10:01:00"));
    let restored = p.lead("L-1").unwrap();
    assert_eq!(restored.lead.fields.len(), 13);
    assert!(!restored.lead.fields.contains_key("Description"));
    let mut expected = written.clone();
    projected.project(&mut expected);
    assert_eq!(restored, &expected);
    assert_eq!(restored.lead.episode, written.lead.episode);
}

mod properties {
    use super::*;
    use proptest::prelude::*;

    /// A random event on one of three leads within one day.
    fn event() -> impl Strategy<Value = LeadEvent> {
        (0u32..3, 0u32..20, 0i64..86_400, 0u32..9).prop_map(|(lead, id, secs, kind)| {
            let at = t("00:00:00") + SignedDuration::from_secs(secs);
            let fields = |v: serde_json::Value| Change::Updated {
                fields: v.as_object().unwrap().clone(),
            };
            let change = match kind {
                0 => fields(json!({"stage": "MQL"})),
                1 => fields(json!({"stage": "nurture"})),
                2 => fields(json!({"owner": "alice"})),
                3 => fields(json!({"owner": "bob"})),
                4 => Change::Activity {
                    activity: Activity {
                        kind: "call".into(),
                        by: None,
                        automated: false,
                    },
                },
                5 => fields(json!({"status": "Unqualified", "disposition_reason": "Other"})),
                6 => fields(json!({"status": "Working - Contacted"})),
                7 => fields(json!({"owner": null})),
                _ => Change::Activity {
                    activity: Activity {
                        kind: "note".into(),
                        by: None,
                        automated: false,
                    },
                },
            };
            LeadEvent {
                id: format!("e{lead}-{id}-{secs}-{kind}"),
                source: "p".into(),
                lead: format!("L-{lead}"),
                occurred_at: at,
                received_at: at,
                change,
            }
        })
    }

    /// A reorder window of days (`wide`: events a day late still take their place), or the
    /// one the daemon runs with by default (`[engine] reorder_window`).
    fn reorder_window(wide: bool) -> std::time::Duration {
        if wide {
            std::time::Duration::from_secs(3 * 86_400)
        } else {
            crate::engine::EngineConfig::default().reorder_window.0
        }
    }

    /// Every rule on, around the clock, with that reorder window.
    fn window_engine(wide: bool) -> Engine {
        engine_with(ALL_RULES).with_reorder_window(reorder_window(wide))
    }

    fn prop_engine() -> Engine {
        window_engine(true)
    }

    fn live_engine() -> Engine {
        window_engine(false)
    }

    /// The retention the daemon sweeps with by default (`[engine] state_retention`,
    /// `idle_retention`).
    fn live_retention() -> Retention {
        let c = crate::engine::EngineConfig::default();
        Retention {
            ended: c.state_retention.0,
            idle: c.idle_retention.0,
        }
    }

    /// One partition, driven as `engine::runner` drives it: events are applied as they arrive;
    /// whenever the clock is read (it never goes back), the sweep settles the reorder windows
    /// that time has left behind and expires leads past their retention, then everything due by
    /// then fires (every event read has been applied: the horizon is the clock).
    struct Live<'a> {
        e: &'a Engine,
        p: PartitionState,
        retention: Retention,
        now: Timestamp,
        alerts: Vec<crate::alert::Alert>,
        /// The leads the sweep dropped, with the clock then.
        expired: Vec<(String, Timestamp)>,
    }

    impl<'a> Live<'a> {
        fn new(e: &'a Engine, retention: Retention) -> Self {
            Self {
                e,
                p: PartitionState::default(),
                retention,
                now: t("00:00:00"),
                alerts: Vec::new(),
                expired: Vec::new(),
            }
        }

        fn apply(&mut self, event: &LeadEvent) {
            self.p.apply(self.e, event);
        }

        /// The clock reads `at` (or stays where it is, if that is later): the sweep, then
        /// whatever is due. Returns what fired.
        fn tick(&mut self, at: Timestamp) -> Vec<crate::alert::Alert> {
            self.sweep(at);
            self.fire()
        }

        /// The sweep at `at` (or where the clock is, if that is later): reorder windows that
        /// time has left behind are settled, then leads past their retention are dropped.
        fn sweep(&mut self, at: Timestamp) {
            self.now = self.now.max(at);
            // One sweep: the windows settled, then the leads past retention dropped.
            for key in self.p.expire(self.e, self.now, self.retention) {
                self.expired.push((key, self.now));
            }
        }

        /// Whatever is due by the clock fires. Returns it.
        fn fire(&mut self) -> Vec<crate::alert::Alert> {
            let fired: Vec<_> = self
                .p
                .fire_due(self.e, self.now)
                .into_iter()
                .flat_map(|(_, a)| a)
                .collect();
            self.alerts.extend(fired.iter().cloned());
            fired
        }

        /// New rules, as on SIGHUP: every lead looked at again at the clock's reading.
        fn reload(&mut self, e: &'a Engine) {
            self.e = e;
            self.p.reload(e, self.now);
        }

        /// Time runs on with no more events: everything still owed fires. The alerts, and the
        /// leads' states then.
        fn finish(mut self) -> (Vec<crate::alert::Alert>, Vec<(String, LeadState)>) {
            let rest = self.p.fire_due(self.e, Timestamp::MAX);
            self.alerts.extend(rest.into_iter().flat_map(|(_, a)| a));
            let mut states: Vec<(String, LeadState)> = ["L-0", "L-1", "L-2"]
                .iter()
                .filter_map(|k| self.p.lead(k).map(|s| (k.to_string(), s.clone())))
                .collect();
            states.sort_by(|a, b| a.0.cmp(&b.0));
            (self.alerts, states)
        }
    }

    /// `events` arriving one by one, the clock read at `ticks[i]` seconds into the day after
    /// the i-th (when there is one), under the daemon's default retention.
    fn run(
        e: &Engine,
        events: &[LeadEvent],
        ticks: &[i64],
    ) -> (Vec<crate::alert::Alert>, Vec<(String, LeadState)>) {
        let mut live = Live::new(e, live_retention());
        for (i, ev) in events.iter().enumerate() {
            live.apply(ev);
            if let Some(secs) = ticks.get(i) {
                live.tick(t("00:00:00") + SignedDuration::from_secs(*secs));
            }
        }
        live.finish()
    }

    /// The events in time order, and in an arrival order shuffled deterministically from `seed`.
    fn in_order_and_shuffled(
        events: Vec<LeadEvent>,
        seed: u64,
    ) -> (Vec<LeadEvent>, Vec<LeadEvent>) {
        let mut in_order = events.clone();
        in_order.sort_by_key(|e| e.occurred_at);
        let mut shuffled = events;
        let mut x = seed | 1;
        for i in (1..shuffled.len()).rev() {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            shuffled.swap(i, (x % (i as u64 + 1)) as usize);
        }
        (in_order, shuffled)
    }

    /// What `transitions_are_deterministic` checks of one case.
    fn deterministic(e: &Engine, events: &[LeadEvent], ticks: &[i64]) -> Result<(), TestCaseError> {
        prop_assert_eq!(run(e, events, ticks), run(e, events, ticks));
        Ok(())
    }

    /// What `applying_an_event_twice_changes_nothing` checks of one case.
    fn applying_twice_changes_nothing(
        e: &Engine,
        events: &[LeadEvent],
        ticks: &[i64],
    ) -> Result<(), TestCaseError> {
        let doubled: Vec<LeadEvent> = events.iter().flat_map(|e| [e.clone(), e.clone()]).collect();
        let doubled_ticks: Vec<i64> = ticks.iter().flat_map(|t| [*t, *t]).collect();
        let (a1, s1) = run(e, events, ticks);
        let (a2, s2) = run(e, &doubled, &doubled_ticks);
        prop_assert_eq!(a1, a2);
        let strip = |v: Vec<(String, LeadState)>| {
            v.into_iter()
                .map(|(k, mut s)| {
                    s.recent_events.clear();
                    (k, s)
                })
                .collect::<Vec<_>>()
        };
        prop_assert_eq!(strip(s1), strip(s2));
        Ok(())
    }

    /// What `an_alert_id_fires_at_most_once` checks of one case; the alerts that fired.
    fn fires_each_id_at_most_once(
        e: &Engine,
        events: &[LeadEvent],
        ticks: &[i64],
    ) -> Result<Vec<crate::alert::Alert>, TestCaseError> {
        let (alerts, _) = run(e, events, ticks);
        let mut ids: Vec<&str> = alerts.iter().map(|a| a.data.alert_id.as_str()).collect();
        ids.sort();
        let twice: Vec<&str> = ids
            .windows(2)
            .filter(|w| w[0] == w[1])
            .map(|w| w[0])
            .collect();
        prop_assert!(twice.is_empty(), "fired twice: {:?}", twice);
        Ok(alerts)
    }

    /// An alert as JSON, without the instant it fired.
    fn body(alert: &crate::alert::Alert) -> String {
        let mut v = serde_json::to_value(alert).unwrap();
        v.as_object_mut().unwrap().remove("timestamp");
        v.to_string()
    }

    fn ids(alerts: &[crate::alert::Alert]) -> Vec<(String, String)> {
        let mut v: Vec<(String, String)> = alerts
            .iter()
            .map(|a| (a.data.alert_id.clone(), a.kind.clone()))
            .collect();
        v.sort();
        v
    }

    /// An event of [`event`] whose patch also carries what vendors send besides: fields alerts
    /// show, fields segments of the shipped rules read, and fields nothing reads (long text).
    fn vendor_event() -> impl Strategy<Value = LeadEvent> {
        (event(), 0u32..4, 0u32..3).prop_map(|(mut ev, extra, segment)| {
            if let Change::Updated { fields } = &mut ev.change {
                let shown = ["Ann Lee", "Bo Yu", "", "Cy"][extra as usize];
                fields.insert("name".into(), json!(shown));
                fields.insert("email".into(), json!(format!("{extra}@example.com")));
                fields.insert("company".into(), json!(format!("Company {extra}")));
                fields.insert(
                    "region".into(),
                    json!(["EMEA", "NA", "APAC"][segment as usize]),
                );
                fields.insert("employees".into(), json!([50, 5000, 900][segment as usize]));
                fields.insert("industry".into(), json!("Software"));
                fields.insert(
                    "Description".into(),
                    json!("text ".repeat(40 * extra as usize)),
                );
                fields.insert(format!("Custom_{extra}__c"), json!(extra));
            }
            ev
        })
    }

    /// What `projection_changes_no_alert` checks of one case under one set of rules: the same
    /// alerts (ids, kinds, recipients, messages: every byte), and states that are the reference's
    /// with the unread fields dropped.
    fn projection_changes_nothing(
        rules: &str,
        events: &[LeadEvent],
        ticks: &[i64],
        wide: bool,
    ) -> Result<(), TestCaseError> {
        let projected = engine_with(rules).with_reorder_window(reorder_window(wide));
        let all = projected.clone().keeping_every_field();
        prop_assert!(projected.projection() != all.projection());
        let (alerts, states) = run(&projected, events, ticks);
        let (expected, reference) = run(&all, events, ticks);
        prop_assert_eq!(&alerts, &expected);
        let reference: Vec<(String, LeadState)> = reference
            .into_iter()
            .map(|(k, mut s)| {
                projected.project(&mut s);
                (k, s)
            })
            .collect();
        prop_assert_eq!(states, reference);
        Ok(())
    }

    proptest! {
        /// Keeping only the fields something reads changes no alert: the engine as the daemon
        /// runs it and a reference keeping every field fire the same alerts, byte for byte, over
        /// events carrying fields nothing reads — under every rule, and under the shipped rules
        /// (calendars, segments on `employees` and `region`).
        #[test]
        fn projection_changes_no_alert(events in proptest::collection::vec(vendor_event(), 0..40),
                                       ticks in proptest::collection::vec(0i64..100_000, 0..40),
                                       wide in any::<bool>()) {
            projection_changes_nothing(ALL_RULES, &events, &ticks, wide)?;
            projection_changes_nothing(include_str!("../../config/rules.toml"), &events, &ticks, wide)?;
        }

        /// A restart under the same rules changes nothing: the restored leads, looked at again
        /// under the rules (as after every restore), keep their state and owe the same alerts.
        #[test]
        fn a_restore_under_the_same_rules_changes_nothing(events in proptest::collection::vec(event(), 0..40),
                                                          ticks in proptest::collection::vec(0i64..100_000, 0..40),
                                                          later in 0i64..200_000,
                                                          wide in any::<bool>()) {
            let e = window_engine(wide);
            let mut live = Live::new(&e, live_retention());
            for (i, ev) in events.iter().enumerate() {
                live.apply(ev);
                if let Some(secs) = ticks.get(i) {
                    live.tick(t("00:00:00") + SignedDuration::from_secs(*secs));
                }
            }
            let mut p = live.p;
            let mut q = PartitionState::default();
            let records = p.iter().map(|(key, state)| (key.to_string(), serde_json::to_vec(state).unwrap())).collect();
            let restored = q.step(&e, Input::Restore(records), t("00:00:00") + SignedDuration::from_secs(later));
            let unreadable = restored.diagnostics.iter().any(|d| matches!(d, Diagnostic::Unreadable { .. }));
            prop_assert!(!unreadable, "every record is read back");
            let states = |p: &PartitionState| {
                let mut v: Vec<(String, String)> = p
                    .iter()
                    .map(|(k, s)| (k.to_string(), serde_json::to_string(s).unwrap()))
                    .collect();
                v.sort();
                v
            };
            prop_assert_eq!(states(&p), states(&q));
            let rest = |p: &mut PartitionState| -> Vec<_> {
                p.fire_due(&e, Timestamp::MAX).into_iter().flat_map(|(_, a)| a).collect()
            };
            prop_assert_eq!(ids(&rest(&mut p)), ids(&rest(&mut q)));
        }

        /// The same inputs always give the same state and alerts.
        #[test]
        fn transitions_are_deterministic(events in proptest::collection::vec(event(), 0..40),
                                         ticks in proptest::collection::vec(0i64..100_000, 0..40),
                                         wide in any::<bool>()) {
            deterministic(&window_engine(wide), &events, &ticks)?;
        }

        /// Applying every event twice (a replay, a retried request) changes nothing.
        #[test]
        fn applying_an_event_twice_changes_nothing(events in proptest::collection::vec(event(), 0..40),
                                                   ticks in proptest::collection::vec(0i64..100_000, 0..40),
                                                   wide in any::<bool>()) {
            applying_twice_changes_nothing(&window_engine(wide), &events, &ticks)?;
        }

        /// Never the same (lead, rule, level, clock) twice.
        #[test]
        fn an_alert_id_fires_at_most_once(events in proptest::collection::vec(event(), 0..60),
                                          ticks in proptest::collection::vec(0i64..100_000, 0..60),
                                          wide in any::<bool>()) {
            fires_each_id_at_most_once(&window_engine(wide), &events, &ticks)?;
        }

        /// A touch at or before a first-touch deadline always cancels it, whatever else happens
        /// to the lead and whatever order the events arrive in, as long as the touch arrives
        /// before the alert would fire.
        #[test]
        fn a_touch_before_a_deadline_always_cancels_it(
            touch_at in 0i64..(2 * 86_400),
            noise in proptest::collection::vec((0i64..(2 * 86_400), 0u32..3), 0..10),
            touch_arrives in 0usize..12,
            ticks in proptest::collection::vec(0i64..(3 * 86_400), 0..12),
            wide in any::<bool>(),
        ) {
            let e = window_engine(wide);
            let secs = |s: i64| t("00:00:00") + SignedDuration::from_secs(s);
            let mut events = vec![mql("00:00:00", Some("alice"))];
            for (i, (at, kind)) in noise.iter().enumerate() {
                let mut ev = match kind {
                    0 => activity(&format!("n{i}"), "00:00:00", "note"),
                    1 => update(&format!("n{i}"), "00:00:00", json!({"score": i})),
                    _ => update(&format!("n{i}"), "00:00:00", json!({"stage": "MQL"})),
                };
                ev.occurred_at = secs(*at);
                events.push(ev);
            }
            let mut touch = activity("touch", "00:00:00", "call");
            touch.occurred_at = secs(touch_at);
            let arrives = touch_arrives.min(events.len());
            events.insert(arrives, touch);
            let mut live = Live::new(&e, live_retention());
            let mut fired = Vec::new();
            for (i, ev) in events.iter().enumerate() {
                live.apply(ev);
                if let Some(tick) = ticks.get(i) {
                    fired.extend(live.tick(secs(*tick)).into_iter().map(|a| (a, i >= arrives)));
                }
            }
            let before = live.alerts.len();
            let (all, _) = live.finish();
            fired.extend(all.into_iter().skip(before).map(|a| (a, true)));
            // The first-touch alerts (the follow-up ones count from the touch itself).
            for (a, touch_applied) in fired.into_iter().filter(|(a, _)| a.data.rule == "first_touch") {
                let due = match a.kind.as_str() {
                    "sla.first_touch.reminder" => a.data.deadline - SignedDuration::from_hours(1),
                    _ => a.data.deadline,
                };
                prop_assert!(
                    !(touch_applied && secs(touch_at) <= due),
                    "{} (due {}) fired despite a touch at {}", a.kind, due, secs(touch_at)
                );
            }
        }

        /// The same in business time, with the shipped rules (calendars, segments, ladder,
        /// close-outs) and the default reorder window: a lead's events within an hour, in any
        /// order, give the same alerts.
        #[test]
        fn arrival_order_does_not_matter_in_business_time(
            events in proptest::collection::vec(event(), 0..30),
            start in 0i64..(7 * 86_400),
            seed in any::<u64>(),
        ) {
            let rules = Rules::parse(include_str!("../../config/rules.toml")).unwrap();
            let e = Engine::new(Arc::new(rules));
            // Squeeze the day of generated times into one hour of a random week.
            let base = t("00:00:00") + SignedDuration::from_secs(start);
            let mut seen = std::collections::HashSet::new();
            let events: Vec<LeadEvent> = events
                .into_iter()
                .map(|mut ev| {
                    let secs = ev.occurred_at.duration_since(t("00:00:00")).as_secs() / 24;
                    ev.occurred_at = base + SignedDuration::from_secs(secs);
                    ev.received_at = ev.occurred_at;
                    if let Change::Updated { fields } = &mut ev.change {
                        if fields.get("stage") == Some(&json!("MQL")) {
                            fields.insert("score".into(), json!(70));
                        }
                        for v in fields.values_mut() {
                            if v == &json!("alice") || v == &json!("bob") {
                                *v = json!(format!("{}@example.com", v.as_str().unwrap()));
                            }
                        }
                    }
                    ev
                })
                .filter(|ev| seen.insert(ev.occurred_at))
                .collect();
            let (in_order, shuffled) = in_order_and_shuffled(events, seed);
            let (a1, _) = run(&e, &in_order, &[]);
            let (a2, _) = run(&e, &shuffled, &[]);
            prop_assert_eq!(ids(&a1), ids(&a2));
        }

        /// Never the same (lead, rule, level, clock start) twice, even when the rules change
        /// between events (a reload moves deadlines; what fired stays fired).
        #[test]
        fn nothing_fires_twice_across_rules_reloads(
            events in proptest::collection::vec(event(), 0..40),
            ticks in proptest::collection::vec(0i64..100_000, 0..40),
            reloads in proptest::collection::vec((0usize..40, 0usize..3), 0..4),
            wide in any::<bool>(),
        ) {
            // The first-touch, next-attempt and close-out deadlines move with each reload.
            let within = |w: &str, every: &str, feedback: &str| {
                let rules = ALL_RULES
                    .replace("within        = \"4h\"", &format!("within        = \"{w}\""))
                    .replace("attempt_every = \"1d\"", &format!("attempt_every = \"{every}\""))
                    .replace("feedback_within  = \"5d\"", &format!("feedback_within  = \"{feedback}\""));
                engine_with(&rules).with_reorder_window(reorder_window(wide))
            };
            let variants = [within("4h", "1d", "5d"), within("2h", "2h", "8h"), within("6h", "3d", "1d")];
            for key in ["within        = \"4h\"", "attempt_every = \"1d\"", "feedback_within  = \"5d\""] {
                prop_assert!(ALL_RULES.contains(key), "the variants differ in {}", key);
            }
            let mut live = Live::new(&variants[0], live_retention());
            for (i, ev) in events.iter().enumerate() {
                for (at, which) in &reloads {
                    if *at == i {
                        live.reload(&variants[*which]);
                    }
                }
                live.apply(ev);
                if let Some(secs) = ticks.get(i) {
                    live.tick(t("00:00:00") + SignedDuration::from_secs(*secs));
                }
            }
            let (fired, _) = live.finish();
            let mut keys: Vec<_> = fired
                .iter()
                .map(|a| (a.data.lead.clone(), a.kind.clone(), a.data.level, a.data.clock_started_at))
                .collect();
            let n = keys.len();
            keys.sort();
            keys.dedup();
            prop_assert_eq!(keys.len(), n, "{:?}", fired.iter().map(|a| (&a.data.lead, &a.kind, a.data.level)).collect::<Vec<_>>());
        }

        /// With time moving on between arrivals: whenever every event up to an instant has
        /// arrived and none after it (a clock that can stand there), the sweep runs and
        /// everything due by then fires. A lead's events, in order or shuffled (up to a day
        /// late: a window of days), then give the same alerts, body for body, fired at the same
        /// instants.
        #[test]
        fn arrival_order_does_not_matter_with_firing_between_arrivals(
            events in proptest::collection::vec(event(), 0..40),
            seed in any::<u64>(),
        ) {
            let mut seen = std::collections::HashSet::new();
            let events: Vec<LeadEvent> = events.into_iter().filter(|e| seen.insert(e.occurred_at)).collect();
            let (in_order, shuffled) = in_order_and_shuffled(events, seed);
            // The instants a clock can stand at after each arrival, in the shuffled order.
            let stands = |arrivals: &[LeadEvent]| -> Vec<Option<Timestamp>> {
                let mut newest = Timestamp::MIN;
                (0..arrivals.len())
                    .map(|i| {
                        newest = newest.max(arrivals[i].occurred_at);
                        let next = arrivals[i + 1..].iter().map(|n| n.occurred_at).min();
                        let at = next.map_or(Timestamp::MAX, |n| n - SignedDuration::from_nanos(1));
                        (at >= newest).then_some(at)
                    })
                    .collect()
            };
            let times: Vec<Timestamp> = stands(&shuffled).into_iter().flatten().collect();
            let e = prop_engine();
            // The clock read (the sweep, then firing) at each instant it can stand at.
            let go = |arrivals: &[LeadEvent], read_at: &dyn Fn(usize) -> Vec<Timestamp>| {
                let mut live = Live::new(&e, live_retention());
                let mut fired = Vec::new();
                for (i, ev) in arrivals.iter().enumerate() {
                    live.apply(ev);
                    for at in read_at(i) {
                        fired.extend(live.tick(at).into_iter().map(|a| (at, body(&a))));
                    }
                }
                fired.sort();
                fired
            };
            let in_order_stands = stands(&in_order);
            let shuffled_stands = stands(&shuffled);
            // In order, the same instants, each once every event up to it has arrived.
            let a1 = go(&in_order, &|i| {
                times
                    .iter()
                    .copied()
                    .filter(|t| in_order_stands[i].is_some_and(|s| s >= *t) && (i == 0 || in_order_stands[i - 1].is_none_or(|s| s < *t)))
                    .collect()
            });
            let a2 = go(&shuffled, &|i| shuffled_stands[i].into_iter().collect());
            prop_assert_eq!(a1, a2);
        }

        /// The reorder window the daemon runs with, and its sweep: each event arrives less than
        /// the window after it happened, the clock reading each arrival's instant and the sweep
        /// settling there the windows time has left behind; whenever no event older than the
        /// clock is still on its way, what is due fires. A lead's events then give the alerts,
        /// body for body and at the same instants, that they give in order.
        #[test]
        fn events_late_by_less_than_the_default_reorder_window_take_their_place_under_the_sweep(
            events in proptest::collection::vec(event(), 0..40),
            delays in proptest::collection::vec(0..DEFAULT_REORDER_WINDOW.as_millis() as i64, 40),
        ) {
            let mut seen = std::collections::HashSet::new();
            let mut in_order: Vec<LeadEvent> = events.into_iter().filter(|e| seen.insert(e.occurred_at)).collect();
            in_order.sort_by_key(|e| e.occurred_at);
            // (arrival instant, event), by arrival.
            let mut arrivals: Vec<(Timestamp, LeadEvent)> = in_order
                .iter()
                .zip(&delays)
                .map(|(e, d)| (e.occurred_at + SignedDuration::from_millis(*d), e.clone()))
                .collect();
            arrivals.sort_by_key(|(at, _)| *at);
            // Arrival instants at which nothing older is still on its way: firing is safe.
            let safe: Vec<Timestamp> = (0..arrivals.len())
                .filter(|&i| arrivals[i + 1..].iter().all(|(_, later)| later.occurred_at > arrivals[i].0))
                .map(|i| arrivals[i].0)
                .collect();
            let e = live_engine();
            let mut late = Live::new(&e, live_retention());
            let mut fired_late = Vec::new();
            for (at, ev) in &arrivals {
                late.apply(ev);
                late.sweep(*at);
                if safe.contains(at) {
                    fired_late.extend(late.fire().into_iter().map(|a| (*at, body(&a))));
                }
            }
            let mut in_time = Live::new(&e, live_retention());
            let mut fired_in_time = Vec::new();
            let mut next = in_order.iter().peekable();
            for at in &safe {
                while let Some(ev) = next.next_if(|ev| ev.occurred_at <= *at) {
                    in_time.apply(ev);
                }
                fired_in_time.extend(in_time.tick(*at).into_iter().map(|a| (*at, body(&a))));
            }
            prop_assert!(next.next().is_none(), "the last arrival is a safe instant");
            prop_assert_eq!(fired_late, fired_in_time);
            // And what is still owed at the end.
            let (all_late, _) = late.finish();
            let (all_in_time, _) = in_time.finish();
            prop_assert_eq!(ids(&all_late), ids(&all_in_time));
        }

        /// The sweep drops a lead only when it owes nothing more: with a retention of hours,
        /// each lead fires the alerts, at the same clock readings, that it fires when kept (as
        /// under the daemon's retention of days, which drops none of these leads) — until an
        /// event comes for a lead that was dropped (it starts again from nothing: that is what
        /// retention means).
        #[test]
        fn a_dropped_lead_loses_none_of_its_alerts(
            events in proptest::collection::vec(event(), 0..40),
            ticks in proptest::collection::vec(0i64..100_000, 0..40),
            wide in any::<bool>(),
            ended in 0u64..(12 * 3600),
            idle in 0u64..(30 * 3600),
        ) {
            let e = window_engine(wide);
            let short = Retention {
                ended: std::time::Duration::from_secs(ended),
                idle: std::time::Duration::from_secs(idle),
            };
            // (which clock reading, lead, alert id) of each alert, and when each lead was first
            // heard from after being dropped.
            let go = |retention: Retention| {
                let mut live = Live::new(&e, retention);
                let mut fired = Vec::new();
                let mut heard_again = std::collections::HashMap::new();
                for (i, ev) in events.iter().enumerate() {
                    if live.expired.iter().any(|(lead, _)| *lead == ev.lead) {
                        heard_again.entry(ev.lead.clone()).or_insert(i);
                    }
                    live.apply(ev);
                    if let Some(secs) = ticks.get(i) {
                        let now = t("00:00:00") + SignedDuration::from_secs(*secs);
                        fired.extend(live.tick(now).into_iter().map(|a| (i, a.data.lead, a.data.alert_id)));
                    }
                }
                // Then three days without an event, the clock read every hour.
                let quiet = live.now;
                for hour in 1..=72 {
                    let now = quiet + SignedDuration::from_hours(hour);
                    let at = events.len() + hour as usize;
                    fired.extend(live.tick(now).into_iter().map(|a| (at, a.data.lead, a.data.alert_id)));
                }
                let dropped = live.expired.clone();
                let before = live.alerts.len();
                let (all, _) = live.finish();
                fired.extend(all.into_iter().skip(before).map(|a| (usize::MAX, a.data.lead, a.data.alert_id)));
                (fired, heard_again, dropped)
            };
            let (with_drops, heard_again, dropped) = go(short);
            let (kept, _, none) = go(live_retention());
            prop_assert!(none.is_empty(), "the daemon's retention drops none of these");
            let until_heard_again = |fired: Vec<(usize, String, String)>| {
                let mut v: Vec<_> = fired
                    .into_iter()
                    .filter(|(i, lead, _)| heard_again.get(lead).is_none_or(|h| i < h))
                    .collect();
                v.sort();
                v
            };
            prop_assert_eq!(until_heard_again(with_drops), until_heard_again(kept), "dropped: {:?}", dropped);
        }

        /// Alerts are the same whether a lead's events arrive in order or shuffled, as long as
        /// they all arrive before the first deadline they affect.
        #[test]
        fn arrival_order_does_not_matter(events in proptest::collection::vec(event(), 0..40),
                                         seed in any::<u64>()) {
            // Distinct instants: events stamped alike apply in arrival order by design.
            let mut seen = std::collections::HashSet::new();
            let events: Vec<LeadEvent> = events.into_iter().filter(|e| seen.insert(e.occurred_at)).collect();
            let (in_order, shuffled) = in_order_and_shuffled(events, seed);
            let e = prop_engine();
            let (a1, _) = run(&e, &in_order, &[]);
            let (a2, _) = run(&e, &shuffled, &[]);
            prop_assert_eq!(ids(&a1), ids(&a2));
        }
    }

    /// An event of a case proptest once found and shrank: `(id, lead, time of day, fields)` on
    /// 2026-11-22, from the source `p`, as the generator made them then.
    fn saved(id: &str, lead: &str, when: &str, fields: serde_json::Value) -> LeadEvent {
        LeadEvent {
            id: id.into(),
            source: "p".into(),
            lead: lead.into(),
            occurred_at: t(when),
            received_at: t(when),
            change: Change::Updated {
                fields: fields.as_object().unwrap().clone(),
            },
        }
    }

    /// The engine those cases were found with: sales-ready is `stage == "sales_ready"`, a
    /// first-touch SLA of 4 h, and a reorder window wide enough to take events a day late.
    fn saved_case_engine() -> Engine {
        engine_with(RULES).with_reorder_window(std::time::Duration::from_secs(3 * 86_400))
    }

    /// Each property over `events` and `ticks`, for one case.
    fn every_property(events: &[LeadEvent], ticks: &[i64]) -> Vec<crate::alert::Alert> {
        let e = saved_case_engine();
        deterministic(&e, events, ticks).unwrap();
        applying_twice_changes_nothing(&e, events, ticks).unwrap();
        fires_each_id_at_most_once(&e, events, ticks).unwrap()
    }

    /// (lead, type, clock start, owner, when it fired) of each alert.
    fn fired(alerts: &[crate::alert::Alert]) -> Vec<(&str, &str, Timestamp, &str, Timestamp)> {
        alerts
            .iter()
            .map(|a| {
                (
                    a.data.lead.as_str(),
                    a.kind.as_str(),
                    a.data.clock_started_at,
                    a.data.owner.as_deref().unwrap_or(""),
                    a.timestamp,
                )
            })
            .collect()
    }

    /// Saved as proptest seed `cc 63505a9f…` (its generator has changed since, so the seed no
    /// longer makes this case). L-2 becomes sales-ready at 20:15:12; its owner, bob, set at
    /// 00:00, arrives late and starts the clock at 20:15:12; the breach fires the next day at
    /// 00:15:12. Then a second owner change stamped at the same instant as bob's (alice) arrives:
    /// the clock still starts at 20:15:12, now alice's, and that breach has fired.
    #[test]
    fn an_owner_change_arriving_after_the_breach_stamped_like_the_first_owner_does_not_fire_it_again()
     {
        let events = [
            saved(
                "e2-0-72912-0",
                "L-2",
                "20:15:12",
                json!({"stage": "sales_ready"}),
            ),
            saved("e2-0-0-3", "L-2", "00:00:00", json!({"owner": "bob"})),
            saved(
                "e0-0-0-0",
                "L-0",
                "00:00:00",
                json!({"stage": "sales_ready"}),
            ),
            saved(
                "e0-0-0-0",
                "L-0",
                "00:00:00",
                json!({"stage": "sales_ready"}),
            ),
            saved(
                "e0-0-0-0",
                "L-0",
                "00:00:00",
                json!({"stage": "sales_ready"}),
            ),
            saved("e2-0-0-2", "L-2", "00:00:00", json!({"owner": "alice"})),
        ];
        let alerts = every_property(&events, &[0, 87_312]);
        let breached = "sla.first_touch.breached";
        assert_eq!(
            fired(&alerts),
            [("L-2", breached, t("20:15:12"), "bob", at("+1d 00:15:12"))]
        );
    }

    /// Saved as proptest seed `cc 8b95ca20…` (its generator has changed since, so the seed no
    /// longer makes this case). L-2 is owned from 16:10:44; it became sales-ready at 00:00
    /// (arriving late), so its clock starts at 16:10:44 and the breach fires at 20:10:44. Late
    /// events then end that episode at 00:00 (nurture, stamped like the sales-ready) and start
    /// another at 00:00:01: the new episode's clock starts at 16:10:44 again, and that breach
    /// has fired.
    #[test]
    fn an_episode_ended_and_begun_again_by_late_events_under_the_same_clock_does_not_fire_again() {
        let events = [
            saved("e2-0-58244-2", "L-2", "16:10:44", json!({"owner": "alice"})),
            saved(
                "e2-0-0-0",
                "L-2",
                "00:00:00",
                json!({"stage": "sales_ready"}),
            ),
            saved("e2-0-0-1", "L-2", "00:00:00", json!({"stage": "nurture"})),
            saved(
                "e2-0-1-0",
                "L-2",
                "00:00:01",
                json!({"stage": "sales_ready"}),
            ),
        ];
        let alerts = every_property(&events, &[0, 72_644]);
        let breached = "sla.first_touch.breached";
        assert_eq!(
            fired(&alerts),
            [("L-2", breached, t("16:10:44"), "alice", t("20:10:44"))]
        );
    }
}

/// Over the memory budget the shell halves the reorder window and steps every partition with
/// [`Input::Shrink`]: windows fold early, the partition holds less, and a late event still inside
/// what is left of the window takes its place as before — the alerts are those of a partition
/// that never shrank.
#[test]
fn over_budget_the_window_gives_way_and_alerts_stay_right() {
    let e = engine();
    let detail = "a long note ".repeat(200);
    let events: Vec<LeadEvent> = std::iter::once(ready_owned("10:00:00"))
        .chain(
            // Three of them folded by the shrink: a new lead's window keeps no base until its
            // first fold, which then holds one of the notes.
            ["10:05:00", "10:10:00", "10:20:00", "10:30:00"]
                .iter()
                .enumerate()
                .map(|(i, when)| {
                    update(
                        &format!("d{i}"),
                        when,
                        json!({"disposition_detail": format!("{detail}{i}")}),
                    )
                }),
        )
        .collect();
    // Sent at 10:25, arriving at 10:56 after the shrink: inside the window left (30 minutes back
    // from the lead's newest event, 10:30).
    let late = update("late", "10:25:00", json!({"owner": "bob"}));
    let run = |shrink: bool| {
        let mut p = PartitionState::default();
        for ev in &events {
            p.step(&e, Input::Event(ev), ev.received_at);
        }
        let mut engine = e.clone();
        let mut folded = None;
        let before = p.held_bytes();
        if shrink {
            engine = e
                .clone()
                .with_reorder_window(std::time::Duration::from_secs(1800));
            let step = p.step(&engine, Input::Shrink, t("10:55:00"));
            folded = step.diagnostics.iter().find_map(|d| match d {
                Diagnostic::WindowShrunk { folded } => Some(*folded),
                _ => None,
            });
        }
        let after = p.held_bytes();
        p.step(&engine, Input::Event(&late), t("10:56:00"));
        p.step(&engine, Input::End, t("10:56:00"));
        let alerts: Vec<(String, String)> = p
            .step(&engine, Input::Tick, at("+2d 00:00:00"))
            .writes
            .into_iter()
            .filter_map(|w| match w {
                step::Write::Lead(w) => Some(w.alerts),
                step::Write::Rotation(_) => None,
            })
            .flatten()
            .map(|a| (a.kind, a.data.alert_id))
            .collect();
        (before, after, folded, alerts)
    };
    let (kept_held, _, _, kept_alerts) = run(false);
    let (before, after, folded, alerts) = run(true);
    assert_eq!(
        before, kept_held,
        "the same leads and windows before the shrink"
    );
    assert!(
        after + detail.len() < before,
        "the folded events' copies are gone: {before} → {after} bytes"
    );
    assert_eq!(
        folded,
        Some(0),
        "the lead still has events inside the shorter window"
    );
    assert!(!alerts.is_empty(), "bob's clock runs out: {alerts:?}");
    assert_eq!(alerts, kept_alerts);
}

/// Issue 13: a rule is evaluated again only when a field it reads changed. An event that changes
/// no field a rule reads (a new email address, the same snapshot sent again) and deadlines
/// firing evaluate no rule at all; a change of a field one reads is judged as before, the
/// segment that applies included.
#[test]
fn rules_are_evaluated_again_only_when_a_field_they_read_changes() {
    let rules = format!(
        "{ALL_RULES}\n[[segments]]\nname = \"enterprise\"\n\
         when = 'has(lead.employees) && lead.employees >= 1000'\n\
         first_touch = {{ within = \"2h\" }}\n"
    );
    let e = engine_with(&rules);
    let mut p = PartitionState::default();
    let snapshot = |id: &str, when: &str, email: &str| {
        update(
            id,
            when,
            json!({"stage": "MQL", "owner": "alice", "employees": 50, "email": email}),
        )
    };
    p.apply(&e, &snapshot("e1", "10:00:00", "jane@example.org"));
    let evaluated = rules::cel::evaluations();
    p.apply(&e, &snapshot("e2", "10:10:00", "jane.doe@example.org"));
    let fired: Vec<String> = [at("13:00:00"), at("14:00:00")]
        .into_iter()
        .flat_map(|now| p.fire_due(&e, now))
        .flat_map(|(_, alerts)| alerts)
        .map(|a| a.kind)
        .collect();
    assert_eq!(
        rules::cel::evaluations(),
        evaluated,
        "nothing a rule reads changed"
    );
    assert_eq!(fired, [deadlines::REMINDER, deadlines::BREACHED]);
    let lead = &p.lead("L-1").unwrap().lead;
    assert_eq!(lead.text("email").as_deref(), Some("jane.doe@example.org"));
    assert_eq!(e.settings(lead).segment, None);

    // A field a rule reads changes: the segment's `when`, then `closed`, are judged again.
    p.apply(&e, &update("e3", "14:10:00", json!({"employees": 5000})));
    assert!(rules::cel::evaluations() > evaluated);
    let lead = &p.lead("L-1").unwrap().lead;
    assert_eq!(e.settings(lead).segment.as_deref(), Some("enterprise"));
    p.apply(
        &e,
        &update("e4", "14:20:00", json!({"status": "Unqualified"})),
    );
    let lead = &p.lead("L-1").unwrap().lead;
    assert!(lead.episode.is_none(), "closed");
    assert_eq!(lead.closeouts.len(), 1);
}
