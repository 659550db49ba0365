//! What every event goes through once its vendor's mapping made it, live and in a replay alike,
//! so that no single input can wedge what comes after ingest:
//! - a string value longer than `server.max_field_bytes` (as written in the event's JSON) is cut
//!   on a character boundary and ends with [`CUT_MARK`];
//! - an event still larger than `server.max_event_bytes` has its longest values cut further, all
//!   to one length (the longest first, so short ones such as `stage` and `owner` are kept); one
//!   whose keys alone are too large is refused (413, naming the event): no event the producer
//!   would refuse reaches it;
//! - an `occurred_at` more than `server.max_clock_skew` ahead of the arrival is clamped to the
//!   arrival (a lead stamped a month ahead would never alert, and its fields would be frozen).
//!
//! The raw topic keeps the request as it came; what was cut or clamped is counted
//! ([`Adjusted`], as `leadwatch_ingest_values_cut_total` and
//! `leadwatch_ingest_clock_clamped_total`).

use std::time::Duration;

use jiff::{SignedDuration, Timestamp};
use serde_json::Value;

use super::error::{FieldProblem, IngestError};
use super::handler::Parsed;
use crate::event::{Change, LeadEvent};

/// The end of a value that was cut: rules can tell (`lead.notes.endsWith("…[truncated]")`).
pub const CUT_MARK: &str = "…[truncated]";

/// Shortest length a value is cut to to make an event fit: below it, the event is refused.
const MIN_CUT: usize = 256;

/// The limits every event is held to (`[server]`).
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Longest string value, in bytes of its JSON form (without the quotes).
    pub field_bytes: usize,
    /// Largest event, in bytes of its JSON form.
    pub event_bytes: usize,
    /// How far ahead of its arrival an event may be stamped.
    pub clock_skew: Duration,
}

/// What normalising a request's events changed.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Adjusted {
    /// String values cut.
    pub values_cut: usize,
    /// Events whose `occurred_at` was clamped to their arrival.
    pub clamped: usize,
}

/// Holds every event of `parsed` to `limits` (see the module's doc).
pub fn normalize(limits: &Limits, mut parsed: Parsed) -> Result<Parsed, IngestError> {
    for (i, event) in parsed.events.iter_mut().enumerate() {
        let skew = SignedDuration::try_from(limits.clock_skew).unwrap_or(SignedDuration::MAX);
        let latest = event
            .received_at
            .checked_add(skew)
            .unwrap_or(Timestamp::MAX);
        if event.occurred_at > latest {
            event.occurred_at = event.received_at;
            parsed.adjusted.clamped += 1;
        }
        parsed.adjusted.values_cut += fit(event, limits).map_err(|bytes| {
            IngestError::EventTooLarge(FieldProblem::new(
                &format!("[{i}]"),
                format!(
                    "event `{}` is {bytes} bytes even with its values cut to {MIN_CUT}; at \
                     most {} (its field names alone are too long)",
                    event.id, limits.event_bytes
                ),
            ))
        })?;
    }
    Ok(parsed)
}

/// Cuts the values of one event to the limits; how many were cut, or the size it still has.
fn fit(event: &mut LeadEvent, limits: &Limits) -> Result<usize, usize> {
    let mut cut = 0;
    for_each_string(event, &mut |s| {
        if cut_to(s, limits.field_bytes) {
            cut += 1;
        }
    });
    // A few rounds: cutting at character boundaries only ever takes more than planned.
    for _ in 0..4 {
        let size = encoded_len(event);
        if size <= limits.event_bytes {
            return Ok(cut);
        }
        let mut lengths = Vec::new();
        for_each_string(event, &mut |s| lengths.push(escaped_len(s)));
        let Some(level) = water_level(lengths, size - limits.event_bytes) else {
            return Err(size);
        };
        for_each_string(event, &mut |s| {
            if cut_to(s, level) {
                cut += 1;
            }
        });
    }
    match encoded_len(event) {
        size if size <= limits.event_bytes => Ok(cut),
        size => Err(size),
    }
}

/// The length to cut every longer value to so that `over` bytes go, or `None` when cutting
/// them all to [`MIN_CUT`] would not be enough.
fn water_level(mut lengths: Vec<usize>, over: usize) -> Option<usize> {
    lengths.sort_unstable_by(|a, b| b.cmp(a));
    // With the `k` longest cut to `level`, what goes is sum(longest k) - k * level.
    let mut sum = 0usize;
    for k in 1..=lengths.len() {
        sum += lengths[k - 1];
        let next = lengths.get(k).copied().unwrap_or(0);
        // The level that frees exactly `over` from the k longest, if it stays above the next.
        let level = sum.saturating_sub(over) / k;
        if level >= next.max(MIN_CUT) {
            return Some(level);
        }
        if next < MIN_CUT {
            // Cutting deeper would take values below the floor.
            return (sum.saturating_sub(k * MIN_CUT) >= over).then_some(MIN_CUT);
        }
    }
    None
}

/// Every string value an event carries from its sender: field values (nested ones too) and an
/// activity's kind and author. Keys (`id`, `lead`, `into`) have their own limit.
fn for_each_string(event: &mut LeadEvent, f: &mut impl FnMut(&mut String)) {
    fn walk(value: &mut Value, f: &mut impl FnMut(&mut String)) {
        match value {
            Value::String(s) => f(s),
            Value::Array(items) => items.iter_mut().for_each(|v| walk(v, f)),
            Value::Object(map) => map.values_mut().for_each(|v| walk(v, f)),
            Value::Null | Value::Bool(_) | Value::Number(_) => {}
        }
    }
    match &mut event.change {
        Change::Updated { fields } => fields.values_mut().for_each(|v| walk(v, f)),
        Change::Activity { activity } => {
            f(&mut activity.kind);
            if let Some(by) = &mut activity.by {
                f(by);
            }
        }
        Change::Deleted {} | Change::Merged { .. } | Change::Forgotten {} => {}
    }
}

/// Cuts `s` so that its JSON form (without quotes) is at most `max` bytes, mark included, on a
/// character boundary; whether it was cut.
fn cut_to(s: &mut String, max: usize) -> bool {
    if escaped_len(s) <= max {
        return false;
    }
    let room = max.saturating_sub(CUT_MARK.len());
    let mut used = 0;
    let mut end = 0;
    for (at, c) in s.char_indices() {
        let len = escaped_char_len(c);
        if used + len > room {
            break;
        }
        used += len;
        end = at + c.len_utf8();
    }
    s.truncate(end);
    s.push_str(CUT_MARK);
    true
}

/// The bytes of a string as serde_json writes it, without the quotes.
fn escaped_len(s: &str) -> usize {
    s.chars().map(escaped_char_len).sum()
}

fn escaped_char_len(c: char) -> usize {
    match c {
        '"' | '\\' | '\n' | '\r' | '\t' | '\u{8}' | '\u{c}' => 2,
        c if (c as u32) < 0x20 => 6,
        c => c.len_utf8(),
    }
}

/// The event's size as produced.
fn encoded_len(event: &LeadEvent) -> usize {
    serde_json::to_vec(event).map_or(usize::MAX, |v| v.len())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::Activity;
    use serde_json::{Map, json};

    const LIMITS: Limits = Limits {
        field_bytes: 1024,
        event_bytes: 8 * 1024,
        clock_skew: Duration::from_secs(300),
    };

    fn now() -> Timestamp {
        "2026-11-22T12:00:00Z".parse().unwrap()
    }

    fn updated(fields: Value) -> LeadEvent {
        let Value::Object(fields) = fields else {
            panic!()
        };
        LeadEvent {
            id: "e-1".into(),
            source: "web".into(),
            lead: "L-1".into(),
            occurred_at: now(),
            received_at: now(),
            change: Change::Updated { fields },
        }
    }

    fn one(event: LeadEvent) -> Parsed {
        Parsed {
            events: vec![event],
            ..Parsed::default()
        }
    }

    fn fields(parsed: &Parsed) -> &Map<String, Value> {
        match &parsed.events[0].change {
            Change::Updated { fields } => fields,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_long_value_is_cut_on_a_character_boundary_and_marked() {
        // One byte, then two-byte characters: 1024 less the mark falls inside one.
        let long = format!("x{}", "é".repeat(2000));
        let parsed = normalize(
            &LIMITS,
            one(updated(json!({"notes": long, "stage": "ready"}))),
        );
        let parsed = parsed.unwrap();
        let kept = fields(&parsed)["notes"].as_str().unwrap();
        assert!(kept.len() <= 1024 && kept.len() > 1000, "{}", kept.len());
        assert!(kept.ends_with(CUT_MARK));
        assert!(long.starts_with(kept.strip_suffix(CUT_MARK).unwrap()));
        assert_eq!(fields(&parsed)["stage"], "ready");
        assert_eq!(parsed.adjusted.values_cut, 1);
        // Measured as written: a value of characters JSON escapes is cut by its escaped form.
        let escapes = "\u{1}".repeat(1000);
        let parsed = normalize(&LIMITS, one(updated(json!({"x": escapes})))).unwrap();
        let kept = fields(&parsed)["x"].as_str().unwrap();
        assert!(escaped_len(kept) <= 1024, "{}", escaped_len(kept));
        // Nested values and an activity's author alike; short values are left alone.
        let nested = json!({"deal": {"notes": ["a".repeat(5000)], "id": 7}, "owner": "alice"});
        let parsed = normalize(&LIMITS, one(updated(nested))).unwrap();
        assert!(fields(&parsed)["deal"]["notes"][0].as_str().unwrap().len() <= 1024);
        assert_eq!(fields(&parsed)["deal"]["id"], 7);
        let mut activity = updated(json!({}));
        activity.change = Change::Activity {
            activity: Activity {
                kind: "call".into(),
                by: Some("b".repeat(3000)),
                automated: false,
            },
        };
        let parsed = normalize(&LIMITS, one(activity)).unwrap();
        let Change::Activity { activity } = &parsed.events[0].change else {
            panic!()
        };
        assert_eq!(activity.kind, "call");
        assert!(activity.by.as_ref().unwrap().ends_with(CUT_MARK));
    }

    #[test]
    fn an_event_over_its_limit_loses_its_longest_values_first_and_fits() {
        // Twenty values just under the field limit: 20 KB, over 8 KiB.
        let mut many = Map::new();
        for i in 0..20 {
            many.insert(format!("f{i}"), json!("v".repeat(1000)));
        }
        many.insert("stage".into(), json!("sales_ready"));
        many.insert("owner".into(), json!("alice@example.com"));
        let parsed = normalize(&LIMITS, one(updated(Value::Object(many)))).unwrap();
        let size = serde_json::to_vec(&parsed.events[0]).unwrap().len();
        assert!(size <= LIMITS.event_bytes, "{size}");
        assert!(
            size > LIMITS.event_bytes - 1024,
            "cut far more than needed: {size}"
        );
        assert_eq!(fields(&parsed)["stage"], "sales_ready");
        assert_eq!(fields(&parsed)["owner"], "alice@example.com");
        assert!(fields(&parsed)["f3"].as_str().unwrap().ends_with(CUT_MARK));
        assert_eq!(parsed.adjusted.values_cut, 20);
    }

    #[test]
    fn an_event_whose_names_alone_are_too_large_is_refused_naming_it() {
        let mut names = Map::new();
        for i in 0..2000 {
            names.insert(format!("field_number_{i}"), Value::Null);
        }
        let mut parsed = one(updated(json!({"stage": "x"})));
        parsed.events.push(updated(Value::Object(names)));
        let Err(IngestError::EventTooLarge(problem)) = normalize(&LIMITS, parsed) else {
            panic!("expected a refusal");
        };
        assert_eq!(problem.field, "[1]");
        assert!(problem.message.contains("`e-1`"), "{}", problem.message);
    }

    #[test]
    fn a_time_too_far_ahead_is_clamped_to_the_arrival() {
        let mut ahead = updated(json!({}));
        ahead.occurred_at = now() + SignedDuration::from_hours(24 * 30);
        let mut soon = updated(json!({}));
        soon.occurred_at = now() + SignedDuration::from_secs(300);
        let mut last = updated(json!({}));
        last.occurred_at = Timestamp::MAX;
        last.received_at = Timestamp::MAX - SignedDuration::from_secs(1);
        let parsed = Parsed {
            events: vec![ahead, soon, last],
            ..Parsed::default()
        };
        let parsed = normalize(&LIMITS, parsed).unwrap();
        assert_eq!(parsed.events[0].occurred_at, now());
        assert_eq!(
            parsed.events[1].occurred_at,
            now() + SignedDuration::from_secs(300)
        );
        assert_eq!(parsed.events[2].occurred_at, Timestamp::MAX);
        assert_eq!(parsed.adjusted.clamped, 1);
    }

    #[test]
    fn the_water_level_frees_what_is_over_from_the_longest_values() {
        assert_eq!(water_level(vec![1000, 1000, 300], 600), Some(700));
        assert_eq!(water_level(vec![5000, 400, 300], 1000), Some(4000));
        // Down to the floor and no further.
        assert_eq!(water_level(vec![300, 300], 88), Some(256));
        assert_eq!(water_level(vec![300, 300], 89), None);
        assert_eq!(water_level(vec![1000, 100], 700), Some(300));
        assert_eq!(water_level(vec![], 1), None);
    }
}
