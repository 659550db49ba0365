//! The first-touch state machine, at its edges. Pure: no Kafka, time passed in.

use std::sync::Arc;

use jiff::{SignedDuration, Timestamp};
use serde_json::json;

use super::partition::{PartitionState, Write};
use super::rules::Rules;
use super::*;
use crate::event::{Activity, Change, LeadEvent};

const RULES: &str = r#"
[lifecycle]
sales_ready = 'lead.stage == "sales_ready"'
[first_touch]
within = "4h"
"#;

fn engine() -> Engine {
    Engine::new(
        Arc::new(Rules::parse(RULES).unwrap()),
        Arc::new(Metrics::new()),
    )
}

fn t(s: &str) -> Timestamp {
    format!("2026-11-22T{s}Z").parse().unwrap()
}

fn update(id: &str, at: &str, fields: serde_json::Value) -> LeadEvent {
    LeadEvent {
        id: id.into(),
        source: "test".into(),
        lead: "L-1".into(),
        occurred_at: t(at),
        received_at: t(at),
        change: Change::Updated {
            fields: fields.as_object().unwrap().clone(),
        },
    }
}

fn activity(id: &str, at: &str, kind: &str) -> LeadEvent {
    LeadEvent {
        id: id.into(),
        source: "test".into(),
        lead: "L-1".into(),
        occurred_at: t(at),
        received_at: t(at),
        change: Change::Activity {
            activity: Activity {
                kind: kind.into(),
                by: None,
            },
        },
    }
}

fn ready_owned(at: &str) -> LeadEvent {
    update(
        "e-ready",
        at,
        json!({"stage": "sales_ready", "owner": "alice"}),
    )
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

#[test]
fn leaving_sales_ready_ends_the_clock() {
    let e = engine();
    let mut s = LeadState::default();
    e.apply(&mut s, &ready_owned("10:00:00"));
    e.apply(
        &mut s,
        &update("e2", "11:00:00", json!({"stage": "nurture"})),
    );
    assert_eq!(e.next_deadline(&s), None);
    assert!(e.fire_due("L-1", &mut s, t("23:00:00")).is_empty());
    // A new episode gets a new clock.
    e.apply(
        &mut s,
        &update("e3", "12:00:00", json!({"stage": "sales_ready"})),
    );
    assert_eq!(e.next_deadline(&s), Some(t("16:00:00")));
}

#[test]
fn a_null_field_clears_it_and_a_blank_owner_is_no_owner() {
    let e = engine();
    let mut s = LeadState::default();
    e.apply(&mut s, &ready_owned("10:00:00"));
    e.apply(&mut s, &update("e2", "10:30:00", json!({"owner": null})));
    assert!(!s.fields.contains_key("owner"));
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
    for (lead, at) in [
        ("L-b", "10:00:00"),
        ("L-a", "09:00:00"),
        ("L-c", "11:00:00"),
    ] {
        let mut ev = ready_owned(at);
        ev.lead = lead.into();
        ev.id = format!("ready-{lead}");
        assert!(matches!(p.apply(&e, &ev), Write::State(_)));
    }
    assert_eq!(p.next_deadline(), Some(t("13:00:00")));
    let fired = p.fire_due(&e, t("14:30:00"));
    let leads: Vec<&str> = fired.iter().map(|(a, _)| a.data.lead.as_str()).collect();
    assert_eq!(leads, ["L-a", "L-b"]);
    assert!(
        fired
            .iter()
            .all(|(a, s)| s.has_fired("first_touch", 0, a.data.clock_started_at))
    );
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
    assert_eq!(again[0].0.data.alert_id, alert.data.alert_id);
}

#[test]
fn deadlines_are_event_time_plus_within_with_sub_second_precision() {
    let rules = Rules::parse(
        "[lifecycle]\nsales_ready = 'lead.stage == \"sales_ready\"'\n[first_touch]\nwithin = \"1500ms\"\n",
    )
    .unwrap();
    let e = Engine::new(Arc::new(rules), Arc::new(Metrics::new()));
    let mut s = LeadState::default();
    e.apply(&mut s, &ready_owned("10:00:00"));
    assert_eq!(
        e.next_deadline(&s),
        Some(t("10:00:00") + SignedDuration::from_millis(1500))
    );
}

#[test]
fn a_rule_that_errors_counts_as_false_and_is_counted() {
    let metrics = Arc::new(Metrics::new());
    let e = Engine::new(Arc::new(Rules::parse(RULES).unwrap()), metrics.clone());
    let mut s = LeadState::default();
    // No `stage` at all: the expression errors; the lead is simply not sales-ready.
    e.apply(&mut s, &update("e1", "10:00:00", json!({"owner": "alice"})));
    assert_eq!(s.sales_ready_at, None);
    assert!(
        metrics
            .encode()
            .contains("leadwatch_rule_errors_total{rule=\"lifecycle.sales_ready\"} 1")
    );
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
        &update("e3", "11:00:00", json!({"owner": "carol", "score": 10})),
    );
    assert_eq!(s.owner.as_deref(), Some("bob"));
    assert_eq!(
        s.fields["score"], 10,
        "fields it does not contradict still apply"
    );
    assert_eq!(e.next_deadline(&s), Some(t("16:00:00")));
    // A late "not ready" older than the sales-ready change does not end the episode.
    e.apply(&mut s, &update("e4", "09:00:00", json!({"stage": "new"})));
    assert!(s.sales_ready_at.is_some());
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
fn leads_with_nothing_pending_expire_after_the_retention() {
    let e = engine();
    let mut p = PartitionState::default();
    let mut quiet = update("q", "10:00:00", json!({"stage": "new"}));
    quiet.lead = "L-quiet".into();
    p.apply(&e, &quiet);
    p.apply(&e, &ready_owned("10:00:00")); // L-1: a deadline pending at 14:00
    let day = std::time::Duration::from_secs(86_400);
    assert!(p.expire(&e, t("12:00:00"), day).is_empty());
    let tomorrow: Timestamp = "2026-11-23T10:00:00Z".parse().unwrap();
    assert_eq!(p.expire(&e, tomorrow, day), ["L-quiet"]);
    assert!(
        p.lead("L-1").is_some(),
        "a lead with a deadline pending is kept"
    );
}

mod properties {
    use super::*;
    use proptest::prelude::*;

    /// A random event on one of three leads within one day.
    fn event() -> impl Strategy<Value = LeadEvent> {
        (0u32..3, 0u32..20, 0i64..86_400, 0u32..6).prop_map(|(lead, id, secs, kind)| {
            let at = t("00:00:00") + SignedDuration::from_secs(secs);
            let change = match kind {
                0 => Change::Updated {
                    fields: json!({"stage": "sales_ready"}).as_object().unwrap().clone(),
                },
                1 => Change::Updated {
                    fields: json!({"stage": "nurture"}).as_object().unwrap().clone(),
                },
                2 => Change::Updated {
                    fields: json!({"owner": "alice"}).as_object().unwrap().clone(),
                },
                3 => Change::Updated {
                    fields: json!({"owner": "bob"}).as_object().unwrap().clone(),
                },
                4 => Change::Activity {
                    activity: Activity {
                        kind: "call".into(),
                        by: None,
                    },
                },
                _ => Change::Activity {
                    activity: Activity {
                        kind: "note".into(),
                        by: None,
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

    fn run(
        events: &[LeadEvent],
        ticks: &[i64],
    ) -> (Vec<crate::alert::Alert>, Vec<(String, LeadState)>) {
        let e = engine();
        let mut p = PartitionState::default();
        let mut alerts = Vec::new();
        for (i, ev) in events.iter().enumerate() {
            p.apply(&e, ev);
            if let Some(secs) = ticks.get(i) {
                let now = t("00:00:00") + SignedDuration::from_secs(*secs);
                alerts.extend(p.fire_due(&e, now).into_iter().map(|(a, _)| a));
            }
        }
        alerts.extend(p.fire_due(&e, Timestamp::MAX).into_iter().map(|(a, _)| a));
        let mut states: Vec<(String, LeadState)> = ["L-0", "L-1", "L-2"]
            .iter()
            .filter_map(|k| p.lead(k).map(|s| (k.to_string(), s.clone())))
            .collect();
        states.sort_by(|a, b| a.0.cmp(&b.0));
        (alerts, states)
    }

    proptest! {
        /// The same inputs always give the same state and alerts.
        #[test]
        fn transitions_are_deterministic(events in proptest::collection::vec(event(), 0..40),
                                         ticks in proptest::collection::vec(0i64..100_000, 0..40)) {
            prop_assert_eq!(run(&events, &ticks), run(&events, &ticks));
        }

        /// Applying every event twice (a replay, a retried request) changes nothing.
        #[test]
        fn applying_an_event_twice_changes_nothing(events in proptest::collection::vec(event(), 0..40),
                                                   ticks in proptest::collection::vec(0i64..100_000, 0..40)) {
            let doubled: Vec<LeadEvent> = events.iter().flat_map(|e| [e.clone(), e.clone()]).collect();
            let doubled_ticks: Vec<i64> = ticks.iter().flat_map(|t| [*t, *t]).collect();
            let (a1, s1) = run(&events, &ticks);
            let (a2, s2) = run(&doubled, &doubled_ticks);
            prop_assert_eq!(a1, a2);
            let strip = |v: Vec<(String, LeadState)>| v.into_iter().map(|(k, mut s)| { s.recent_events.clear(); (k, s) }).collect::<Vec<_>>();
            prop_assert_eq!(strip(s1), strip(s2));
        }

        /// Never the same (lead, rule, level) twice for one clock.
        #[test]
        fn an_alert_id_fires_at_most_once(events in proptest::collection::vec(event(), 0..60),
                                          ticks in proptest::collection::vec(0i64..100_000, 0..60)) {
            let (alerts, _) = run(&events, &ticks);
            let mut ids: Vec<&str> = alerts.iter().map(|a| a.data.alert_id.as_str()).collect();
            let n = ids.len();
            ids.sort();
            ids.dedup();
            prop_assert_eq!(ids.len(), n);
        }
    }
}
