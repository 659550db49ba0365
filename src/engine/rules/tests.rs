use std::time::Duration;

use serde_json::{Value, json};

use super::*;

/// The shape of the issue's sketch, complete.
pub const FULL: &str = r#"
default_calendar = "us"
pool = ["alice", "bob", "dave"]

[lifecycle]
sales_ready = 'lead.stage == "MQL" && lead.score >= 60'
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

[disposition]
reasons          = ["No budget", "Wrong contact", "Competitor chosen", "Too small", "Duplicate"]
vague            = ["Not interested", "Not a fit", "Other"]
detail_min_chars = 20
feedback_within  = "5d"

[calendars.us]
time_zone = "America/New_York"
hours     = { mon = "09:00-17:00", tue = "09:00-17:00", wed = "09:00-17:00", thu = "09:00-17:00", fri = "09:00-17:00" }
holidays  = ["2026-11-26", "2026-12-25"]

[calendars.emea]
time_zone = "Europe/Berlin"
hours     = { mon = "09:00-18:00", tue = "09:00-18:00", wed = "09:00-18:00", thu = "09:00-18:00", fri = "09:00-18:00" }

[[segments]]
name     = "emea"
when     = 'lead.region == "EMEA"'
calendar = "emea"
first_touch = { within = "2h" }

[[segments]]
name = "enterprise"
when = 'lead.employees >= 1000'
first_touch = { within = "1h", remind_before = "15m" }
pool = ["erin"]

[directory.alice]
name = "Alice Adams"
email = "alice@example.com"
manager = "carol"
slack = "U0ALICE"
[directory.bob]
name = "Bob Brown"
away = true
[directory.carol]
name = "Carol Chen"
slack = "U0CAROL"

[recipients]
marketing_ops = ["mops@example.com"]
queue = "sdr-queue@example.com"
"#;

fn fields(v: Value) -> crate::engine::LeadFields {
    v.as_object().unwrap().into()
}

#[test]
fn the_full_sketch_compiles_with_segments_merged_over_the_top_level() {
    let rules = Rules::parse(FULL).unwrap();
    let base = &rules.base;
    assert_eq!(base.calendar.as_ref().unwrap().name, "us");
    let ft = base.first_touch.as_ref().unwrap();
    assert_eq!(ft.within.time, Duration::from_secs(4 * 3600));
    assert_eq!(ft.escalate.len(), 2);
    assert!(ft.escalate[1].reassign);
    assert_eq!(base.recipients["queue"], ["sdr-queue@example.com"]);
    assert_eq!(base.disposition.as_ref().unwrap().detail_min_chars, 20);

    let none = |_: &str, _: bool| {};
    let emea = rules.settings_for(&Facts::new(&fields(json!({"region": "EMEA"}))), none);
    assert_eq!(emea.segment.as_deref(), Some("emea"));
    assert_eq!(emea.calendar.as_ref().unwrap().name, "emea");
    let ft = emea.first_touch.as_ref().unwrap();
    assert_eq!(ft.within.time, Duration::from_secs(2 * 3600));
    // Not overridden: from the top level.
    assert_eq!(ft.remind_before.unwrap().time, Duration::from_secs(3600));
    assert_eq!(ft.escalate.len(), 2);

    // The first matching segment in file order applies.
    let both = rules.settings_for(
        &Facts::new(&fields(json!({"region": "EMEA", "employees": 5000}))),
        none,
    );
    assert_eq!(both.segment.as_deref(), Some("emea"));
    let ent = rules.settings_for(&Facts::new(&fields(json!({"employees": "5000"}))), none);
    assert_eq!(ent.segment.as_deref(), Some("enterprise"));
    assert_eq!(ent.calendar.as_ref().unwrap().name, "us");
    assert_eq!(ent.pool, ["erin"]);
    let other = rules.settings_for(&Facts::new(&fields(json!({}))), none);
    assert!(other.segment.is_none());
}

#[test]
fn a_segment_when_that_errors_does_not_match_and_is_counted() {
    let rules = Rules::parse(FULL).unwrap();
    let mut errors = Vec::new();
    // `employees` is absent: the enterprise segment's comparison errors.
    let s = rules.settings_for(
        &Facts::new(&fields(json!({"region": "US"}))),
        |k, missing| errors.push((k.to_string(), missing)),
    );
    assert!(s.segment.is_none());
    assert_eq!(errors, [("segments[1].when".to_string(), true)]);
}

#[test]
fn sub_second_and_day_durations() {
    for (text, days, time) in [
        ("250ms", 0, Duration::from_millis(250)),
        ("2days", 2, Duration::ZERO),
    ] {
        let rules = Rules::parse(&format!(
            "[lifecycle]\nsales_ready = 'true'\n[first_touch]\nwithin = \"{text}\"\n"
        ))
        .unwrap();
        let ft = rules.base.first_touch.clone().unwrap();
        assert_eq!((ft.within.days, ft.within.time), (days, time));
    }
}

#[test]
fn only_sales_ready_is_required() {
    let rules = Rules::parse("[lifecycle]\nsales_ready = 'lead.stage == \"SQL\"'\n").unwrap();
    assert!(rules.base.first_touch.is_none());
    assert_eq!(rules.touch_kinds, ["call", "email", "meeting", "sms"]);
    let problems = Rules::parse("[first_touch]\nwithin = \"4h\"\n").unwrap_err();
    assert!(problems[0].1.contains("lifecycle"), "{problems:?}");
}

fn keys(text: &str) -> Vec<String> {
    let mut problems = Rules::parse(text).unwrap_err();
    problems.sort();
    problems.into_iter().map(|(k, _)| k).collect()
}

#[test]
fn every_problem_is_listed_with_its_key_path() {
    let text = r#"
default_calendar = "nowhere"

[lifecycle]
sales_ready = 'lead.stage == '
closed = 'lead.status in ['
converted = 'leed.status == "Converted"'

[handoff]

[first_touch]
within = "4h"
remind_before = "5h"
escalate = [ { after = "3h", notify = "manager" },
             { after = "2h", notify = "cfo", reassign = true } ]

[follow_up]
min_attempts = 0

[disposition]
reasons = ["No budget", "Other"]
vague = ["other"]
detail_min_chars = 0

[calendars.us]
time_zone = "America/Gotham"
hours = { mon = "17:00-09:00" }

[[segments]]
when = 'lead.region == '
calendar = "mars"
first_touch = { touch_kinds = ["fax"] }

[directory.alice]
manager = "nobody"
"#;
    assert_eq!(
        keys(text),
        [
            "calendars.us.hours.mon",
            "calendars.us.time_zone",
            "default_calendar",
            "directory.alice.manager",
            "disposition.detail_min_chars",
            "disposition.vague",
            "first_touch.escalate[0].after",
            "first_touch.escalate[1].after",
            "first_touch.escalate[1].notify",
            "first_touch.escalate[1].reassign",
            "first_touch.remind_before",
            "follow_up.min_attempts",
            "handoff.assign_within",
            "lifecycle.closed",
            "lifecycle.converted",
            "lifecycle.sales_ready",
            "recipients",
            "segments[0].calendar",
            "segments[0].first_touch.touch_kinds",
            "segments[0].when",
        ]
    );
}

#[test]
fn one_pass_lists_shape_and_meaning_problems_together() {
    // A mistyped key, a bad duration, a bad expression, an unknown time zone and a ladder out of
    // order: all five at once, not one fix at a time.
    let text = r#"
[lifecycle]
sales_ready = 'lead.stage =='
sales_reddy = 'true'
[first_touch]
within = "soon"
escalate = [ { after = "2h", notify = "manager" } ]
remind_before = "1h"
[calendars.us]
time_zone = "US/Gotham"
hours = { mon = "09:00-17:00" }
"#;
    assert_eq!(
        keys(text),
        [
            "calendars.us.time_zone",
            "first_touch.within",
            "lifecycle.sales_ready",
            "lifecycle.sales_reddy",
        ]
    );
    let ladder = text.replace("\"soon\"", "\"4h\"");
    assert!(keys(&ladder).contains(&"first_touch.escalate[0].after".to_string()));
}

#[test]
fn days_and_hours_are_compared_in_the_calendar() {
    let rules = |within: &str, after: &str| {
        format!(
            r#"
default_calendar = "us"
[lifecycle]
sales_ready = 'true'
[first_touch]
within = "{within}"
escalate = [ {{ after = "{after}", notify = "manager" }} ]
[calendars.us]
time_zone = "America/New_York"
hours = {{ mon = "09:00-17:00", tue = "09:00-17:00", wed = "09:00-17:00", thu = "09:00-17:00", fri = "09:00-17:00" }}
"#
        )
    };
    // 20 working hours are two and a half working days: a step at 1d would come first.
    assert_eq!(keys(&rules("20h", "1d")), ["first_touch.escalate[0].after"]);
    // 9 working hours are more than a working day.
    assert!(Rules::parse(&rules("1d", "9h")).is_ok());
}

#[test]
fn shape_problems_are_listed_too() {
    let text = r#"
[lifecycle]
sales_ready = 'true'
sales_reddy = 'true'
[first_touch]
within = "soon"
escalate = [ { after = "8h" } ]
"#;
    let problems = Rules::parse(text).unwrap_err();
    let all = format!("{problems:?}");
    assert!(all.contains("sales_reddy"), "{all}");
    assert!(
        problems.iter().any(|(k, _)| k == "first_touch.within"),
        "{all}"
    );
}

#[test]
fn unknown_keys_inside_lists_are_found_with_the_rest() {
    let text = r#"
[lifecycle]
sales_ready = 'true'
[first_touch]
within = "4h"
escalate = [ { after = "8h", notify = "manager", notfy = "x" } ]
[[segments]]
when = 'true'
calender = "us"
[[segments]]
when = 'true'
first_touch = { within = "later" }
"#;
    let problems = Rules::parse(text).unwrap_err();
    let keys: Vec<&str> = problems.iter().map(|(k, _)| k.as_str()).collect();
    assert!(
        keys.contains(&"first_touch.escalate[0].notfy"),
        "{problems:?}"
    );
    assert!(keys.contains(&"segments[0].calender"), "{problems:?}");
    assert!(
        keys.contains(&"segments[1].first_touch.within"),
        "{problems:?}"
    );
}

#[test]
fn a_segment_problem_is_reported_at_the_segment_and_not_repeated() {
    let text = r#"
[lifecycle]
sales_ready = 'true'
[first_touch]
within = "4h"
escalate = [ { after = "8h", notify = "manager" } ]
[[segments]]
when = 'true'
first_touch = { within = "9h" }
"#;
    assert_eq!(keys(text), ["segments[0].first_touch.escalate[0].after"]);
    // A top-level problem is not repeated for every segment.
    let text = r#"
[lifecycle]
sales_ready = 'true'
[first_touch]
within = "4h"
escalate = [ { after = "8h", notify = "ceo" } ]
[[segments]]
when = 'true'
first_touch = { within = "1h" }
"#;
    assert_eq!(keys(text), ["first_touch.escalate[0].notify"]);
}

#[test]
fn handoff_and_close_out_rules_need_their_recipients() {
    let text = r#"
[lifecycle]
sales_ready = 'true'
closed = 'false'
[handoff]
assign_within = "15m"
[follow_up]
min_attempts = 2
[recipients]
owner = ["x"]
"#;
    assert_eq!(keys(text), ["handoff", "recipients", "recipients.owner"]);
}

/// An episode ends only with a close, a conversion, a deletion or a merge: close-out rules
/// (at the top or in a segment) without `lifecycle.closed` would never judge anything.
#[test]
fn close_out_rules_need_to_know_when_a_lead_is_closed() {
    let top = "[lifecycle]\nsales_ready = 'true'\n[disposition]\nreasons = [\"x\"]\n[recipients]\nmarketing_ops = [\"m\"]\n";
    assert_eq!(keys(top), ["lifecycle.closed"]);
    let segment = "[lifecycle]\nsales_ready = 'true'\n[[segments]]\nwhen = 'true'\nfollow_up = { min_attempts = 2 }\n[recipients]\nmarketing_ops = [\"m\"]\n";
    assert_eq!(keys(segment), ["lifecycle.closed"]);
    let fine = top.replace(
        "sales_ready = 'true'",
        "sales_ready = 'true'\nclosed = 'false'",
    );
    assert!(Rules::parse(&fine).is_ok());
}

#[test]
fn reason_grace_is_a_wall_clock_duration_of_at_most_a_day() {
    let text = |grace: &str| {
        format!(
            "[lifecycle]\nsales_ready = 'true'\nclosed = 'false'\n[disposition]\nreasons = [\"x\"]\nreason_grace = \"{grace}\"\n[recipients]\nmarketing_ops = [\"m\"]\n"
        )
    };
    let grace = |g: &str| {
        Rules::parse(&text(g))
            .unwrap()
            .base
            .disposition
            .clone()
            .unwrap()
            .reason_grace
    };
    assert_eq!(grace("0s"), jiff::SignedDuration::ZERO);
    assert_eq!(grace("90s"), jiff::SignedDuration::from_secs(90));
    assert_eq!(keys(&text("soon")), ["disposition.reason_grace"]);
    assert_eq!(keys(&text("2d")), ["disposition.reason_grace"]);
    let default = text("5m").replace("reason_grace = \"5m\"\n", "");
    let rules = Rules::parse(&default).unwrap();
    assert_eq!(
        rules.base.disposition.as_ref().unwrap().reason_grace,
        jiff::SignedDuration::from_mins(5)
    );
}

/// `touch_counts` sees `activity` and `lead` and nothing else, and is set once for every lead.
#[test]
fn touch_counts_is_checked_like_every_predicate() {
    let base = "[lifecycle]\nsales_ready = 'true'\n[first_touch]\nwithin = \"4h\"\n";
    let ok = format!("{base}touch_counts = 'activity.by == lead.owner'\n");
    assert!(Rules::parse(&ok).unwrap().touch_counts.is_some());
    assert_eq!(
        keys(&format!("{base}touch_counts = 'actvity.by == \"x\"'\n")),
        ["first_touch.touch_counts"]
    );
    assert_eq!(
        keys(&format!(
            "{base}[[segments]]\nwhen = 'true'\nfirst_touch = {{ touch_counts = 'true' }}\n"
        )),
        ["segments[0].first_touch.touch_counts"]
    );
    // Elsewhere `activity` is not a name.
    assert_eq!(
        keys("[lifecycle]\nsales_ready = 'activity.kind == \"call\"'\n"),
        ["lifecycle.sales_ready"]
    );
}

/// `[follow_up] attempt_every` is an SLA duration like every other, unset by default, and a
/// segment may set its own over the top-level `min_attempts`.
#[test]
fn attempt_every_is_checked_under_its_key_and_merges_into_segments() {
    let text = |every: &str| {
        format!(
            "[lifecycle]\nsales_ready = 'true'\nclosed = 'false'\n[follow_up]\nmin_attempts = 3\n{every}\n[[segments]]\nname = \"eu\"\nwhen = 'true'\nfollow_up = {{ attempt_every = \"2h\" }}\n[recipients]\nmarketing_ops = [\"m\"]\n"
        )
    };
    let rules = Rules::parse(&text("")).unwrap();
    assert_eq!(rules.base.follow_up.as_ref().unwrap().attempt_every, None);
    let segment = rules.segments[0].settings.follow_up.clone().unwrap();
    assert_eq!(segment.min_attempts, 3);
    assert_eq!(segment.attempt_every, Some("2h".parse().unwrap()));
    let rules = Rules::parse(&text("attempt_every = \"1d\"")).unwrap();
    assert_eq!(
        rules.base.follow_up.as_ref().unwrap().attempt_every,
        Some("1d".parse().unwrap())
    );
    assert_eq!(
        keys(&text("attempt_every = \"soon\"")),
        ["follow_up.attempt_every"]
    );
}
