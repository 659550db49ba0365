//! Turning an owed alert ([`Due`]) into the alert people receive: its id, recipients from the
//! directory, a suggested new owner, and one sentence a person can act on.

use std::time::Duration;

use jiff::Timestamp;

use super::at::At;
use super::calendar::{Calendar, SlaDuration};
use super::deadlines::{self, Due, What};
use super::rules::{Rules, Settings};
use super::state::Lead;
use crate::alert::{
    Alert, AlertData, Disposition, LeadInfo, Recipient, alert_id_of, split_lead_key,
};

/// Builds the alert for `due`, fired at `now`.
#[allow(clippy::too_many_arguments)]
pub fn build(
    rules: &Rules,
    settings: &Settings,
    key: &str,
    lead: &Lead,
    due: &Due,
    now: Timestamp,
    link: Option<&str>,
    rotation: &mut Rotation,
) -> Alert {
    let owner = match &due.what {
        What::FirstTouch { owner, .. } | What::Attempts { owner, .. } => Some(owner.to_string()),
        What::NoCloseout { owner, .. } => owner.map(str::to_string),
        What::Closeout(c) => c.owner.clone(),
        What::Unassigned => None,
    };
    let step = match &due.what {
        What::FirstTouch { step: Some(i), .. } => settings
            .first_touch
            .as_ref()
            .and_then(|f| f.escalate.get(*i)),
        _ => None,
    };
    let suggested_owner = step
        .filter(|s| s.reassign)
        .and_then(|_| suggest_owner(rules, settings, owner.as_deref(), rotation));
    let to = due.to.roles();
    let recipients = to
        .iter()
        .flat_map(|role| recipients(rules, settings, role, owner.as_deref()))
        .collect();
    let info = lead_info(lead);
    let disposition = match &due.what {
        What::Closeout(c) => Some(Disposition {
            reason: c.reason.clone(),
            detail: c.detail.clone(),
            attempts: c.attempts,
            closed_at: c.closed_at.ts(),
            last_activity_at: c.last_activity_at.map(At::ts),
        }),
        _ => None,
    };
    let sales_ready_at = match &due.what {
        What::Closeout(c) => Some(c.sales_ready_at.ts()),
        _ => lead.episode.as_ref().map(|e| e.started_at.ts()),
    };
    let message = message(
        rules,
        settings,
        key,
        &info,
        owner.as_deref(),
        due,
        suggested_owner.as_deref(),
    );
    Alert {
        kind: due.kind.to_string(),
        timestamp: now,
        data: AlertData {
            alert_id: alert_id_of(key, due.rule, due.level, due.clock, due.variant),
            lead: key.to_string(),
            owner,
            rule: due.rule.to_string(),
            level: due.level,
            to: to.into_iter().map(str::to_string).collect(),
            recipients,
            sales_ready_at,
            clock_started_at: due.clock,
            deadline: due.deadline,
            suggested_owner,
            disposition,
            lead_info: info,
            link: link.map(|template| template.replace("{id}", split_lead_key(key).1)),
            message,
            // The identity join's to fill (`simulate` does); the engine sees one lead key.
            records: Vec::new(),
        },
    }
}

/// The people behind a role: the owner and their manager from the directory; other roles from
/// `[recipients]`, each looked up in the directory.
fn recipients(
    rules: &Rules,
    settings: &Settings,
    role: &str,
    owner: Option<&str>,
) -> Vec<Recipient> {
    let person = |id: &str| {
        let p = rules.directory.get(id);
        Recipient {
            role: role.to_string(),
            id: id.to_string(),
            name: p.and_then(|p| p.name.clone()),
            email: p
                .and_then(|p| p.email.clone())
                .or_else(|| id.contains('@').then(|| id.to_string())),
            slack: p.and_then(|p| p.slack.clone()),
            teams: p.and_then(|p| p.teams.clone()),
        }
    };
    match role {
        "owner" => owner.map(person).into_iter().collect(),
        "manager" => owner
            .and_then(|o| rules.directory.get(o))
            .and_then(|p| p.manager.as_deref())
            .map(person)
            .into_iter()
            .collect(),
        other => settings
            .recipients
            .get(other)
            .into_iter()
            .flatten()
            .map(|id| person(id))
            .collect(),
    }
}

/// Where each pool's round-robin stands: the index of the next owner to suggest, by segment
/// (`""` for the top level). One per partition of the events topic; kept in the state changelog.
pub type Rotation = std::collections::BTreeMap<String, u64>;

/// The next owner in the segment's pool, round-robin, skipping the current owner and anyone the
/// directory marks away; the rotation moves past whoever is suggested.
fn suggest_owner(
    rules: &Rules,
    settings: &Settings,
    owner: Option<&str>,
    rotation: &mut Rotation,
) -> Option<String> {
    let pool = &settings.pool;
    if pool.is_empty() {
        return None;
    }
    let next = rotation
        .entry(settings.segment.clone().unwrap_or_default())
        .or_insert(0);
    let start = (*next % pool.len() as u64) as usize;
    let (i, chosen) = (0..pool.len())
        .map(|i| (start + i) % pool.len())
        .map(|i| (i, &pool[i]))
        .find(|(_, candidate)| {
            Some(candidate.as_str()) != owner
                && !rules.directory.get(*candidate).is_some_and(|p| p.away)
        })?;
    *next = i as u64 + 1;
    Some(chosen.clone())
}

/// Who the lead is, from its fields. A lead keeps only the fields something reads: each one read
/// here is in [`super::projection::ENGINE_FIELDS`].
pub fn lead_info(lead: &Lead) -> LeadInfo {
    let name = lead.text("name").or_else(|| {
        let parts: Vec<String> = ["first_name", "last_name"]
            .iter()
            .filter_map(|f| lead.text(f))
            .collect();
        (!parts.is_empty()).then(|| parts.join(" "))
    });
    LeadInfo {
        name,
        email: lead.text("email"),
        company: lead.text("company"),
        source: lead.source.clone(),
    }
}

/// A time as people read it: in the calendar's zone, or UTC.
fn when(settings: &Settings, t: Timestamp) -> String {
    let tz = settings
        .calendar
        .as_ref()
        .map(|c| c.time_zone().clone())
        .unwrap_or(jiff::tz::TimeZone::UTC);
    t.to_zoned(tz).strftime("%a %Y-%m-%d %H:%M %Z").to_string()
}

/// A span as people read it: in a calendar, working time in words ("30.5 working hours", not
/// "1day 6h 30m", which reads as wall-clock time); around the clock, as a plain duration.
fn span(cal: Option<&Calendar>, d: Duration) -> String {
    if cal.is_some() {
        return working_words(d);
    }
    // Whole minutes read better than "3h 59m 59s 999ms".
    let secs = d.as_secs();
    let rounded = if secs >= 120 { secs / 60 * 60 } else { secs };
    humantime::format_duration(Duration::from_secs(rounded)).to_string()
}

/// An SLA of the rules as people read it: in a calendar, "4 working days", "1 working day and 2
/// working hours", "30 working minutes"; around the clock, as written ("4h").
fn sla_words(cal: Option<&Calendar>, d: SlaDuration) -> String {
    if cal.is_none() {
        return d.to_string();
    }
    let mut parts = Vec::new();
    if d.days > 0 {
        parts.push(count(u64::from(d.days), "working day"));
    }
    if !d.time.is_zero() || d.days == 0 {
        parts.push(working_words(d.time));
    }
    parts.join(" and ")
}

/// Working time in words: seconds under a minute, minutes under an hour, then hours to a tenth.
fn working_words(d: Duration) -> String {
    let secs = d.as_secs();
    if secs < 60 {
        return count(secs, "working second");
    }
    if secs < 3600 {
        return count(secs / 60, "working minute");
    }
    let tenths = (secs + 180) / 360;
    if tenths.is_multiple_of(10) {
        count(tenths / 10, "working hour")
    } else {
        format!("{}.{} working hours", tenths / 10, tenths % 10)
    }
}

fn count(n: u64, what: &str) -> String {
    if n == 1 {
        format!("1 {what}")
    } else {
        format!("{n} {what}s")
    }
}

fn name_of(rules: &Rules, id: &str) -> String {
    rules
        .directory
        .get(id)
        .and_then(|p| p.name.clone())
        .unwrap_or_else(|| id.to_string())
}

#[allow(clippy::too_many_arguments)]
fn message(
    rules: &Rules,
    settings: &Settings,
    key: &str,
    info: &LeadInfo,
    owner: Option<&str>,
    due: &Due,
    suggested: Option<&str>,
) -> String {
    let who = {
        let known: Vec<&str> = [info.name.as_deref(), info.company.as_deref()]
            .into_iter()
            .flatten()
            .collect();
        if known.is_empty() {
            format!("Lead {key}")
        } else {
            format!("Lead {key} ({})", known.join(", "))
        }
    };
    let owner_name = owner.map_or_else(|| "its owner".to_string(), |o| name_of(rules, o));
    let at = |t| when(settings, t);
    let cal = settings.calendar.as_deref();
    let late_by = |from, to| span(cal, super::calendar::between(cal, from, to));
    match (&due.what, due.kind) {
        (What::Unassigned, _) => {
            let within = settings
                .handoff
                .as_ref()
                .map(|h| sla_words(cal, h.assign_within));
            format!(
                "{who} has been sales-ready since {} with no owner; it had to be assigned within {} \
                 (by {}). Assign it now.",
                at(due.clock),
                within.unwrap_or_default(),
                at(due.deadline)
            )
        }
        (What::FirstTouch { .. }, deadlines::REMINDER) => format!(
            "Reminder for {owner_name}: {who} needs a first touch by {} (it has been theirs since {}).",
            at(due.deadline),
            at(due.clock)
        ),
        (What::FirstTouch { .. }, deadlines::BREACHED) => {
            let within = settings
                .first_touch
                .as_ref()
                .map(|f| sla_words(cal, f.within));
            format!(
                "{who}, sales-ready and owned by {owner_name} since {}, got no touch within {}: the \
                 first-touch deadline passed at {}. Call or email them now.",
                at(due.clock),
                within.unwrap_or_default(),
                at(due.deadline)
            )
        }
        (What::FirstTouch { step, .. }, _) => {
            let breach = settings.first_touch.as_ref().map_or(due.deadline, |f| {
                super::calendar::add(cal, due.clock, f.within)
            });
            let suggestion = suggested
                .map(|s| format!(" Suggested new owner: {}.", name_of(rules, s)))
                .unwrap_or_default();
            format!(
                "Escalation {}: {who}, owned by {owner_name} since {}, still has no first touch, {} \
                 past its deadline.{suggestion}",
                step.map_or(1, |s| s + 1),
                at(due.clock),
                late_by(breach, due.deadline),
            )
        }
        (
            What::Attempts {
                attempts,
                last_touch,
                ..
            },
            _,
        ) => {
            let f = settings.follow_up.as_ref();
            format!(
                "Follow-up for {owner_name}: {who} has had {attempts} attempt(s) since it became \
                 sales-ready, the last at {}; the next was due within {} of it (by {}), and the \
                 agreement is at least {} before a lead is disqualified. Try again now.",
                at(*last_touch),
                f.and_then(|f| f.attempt_every)
                    .map(|e| sla_words(cal, e))
                    .unwrap_or_default(),
                at(due.deadline),
                f.map_or(0, |f| f.min_attempts)
            )
        }
        (What::NoCloseout { last_touch, .. }, _) => {
            let within = settings
                .disposition
                .as_ref()
                .and_then(|d| d.feedback_within)
                .map(|f| sla_words(cal, f))
                .unwrap_or_default();
            let since = match last_touch {
                Some(t) => format!("its last touch ({})", at(*t)),
                None => format!("it became sales-ready ({}), with no touch", at(due.clock)),
            };
            format!(
                "{who}, owned by {owner_name}, is still open with no close-out {within} after \
                 {since}: the close-out was due by {}. Close it with one of the agreed reasons, \
                 or work it again.",
                at(due.deadline)
            )
        }
        (What::Closeout(c), kind) => {
            let closer = c
                .owner
                .as_deref()
                .map_or_else(|| "someone".to_string(), |o| name_of(rules, o));
            let d = settings.disposition.as_ref();
            let agreed = d.map(|d| d.reasons.join(", ")).unwrap_or_default();
            match kind {
                deadlines::INSUFFICIENT_ATTEMPTS => format!(
                    "{who} was closed by {closer} at {} after {} attempt(s); the agreement is at least {} \
                     before a lead is disqualified.",
                    at(c.closed_at.ts()),
                    c.attempts,
                    settings.follow_up.as_ref().map_or(0, |f| f.min_attempts)
                ),
                deadlines::MISSING_REASON => format!(
                    "{who} was closed by {closer} at {} without a reason. Give one of: {agreed}.",
                    at(c.closed_at.ts())
                ),
                deadlines::UNKNOWN_REASON => format!(
                    "{who} was closed by {closer} with the reason \"{}\", which is not on the agreed \
                     list: {agreed}.",
                    c.reason.as_deref().unwrap_or_default()
                ),
                deadlines::VAGUE_REASON => format!(
                    "{who} was closed by {closer} as \"{}\" without a written detail (at least {} \
                     characters). Say why, so marketing can learn from it.",
                    c.reason.as_deref().unwrap_or_default(),
                    d.map_or(1, |d| d.detail_min_chars)
                ),
                _ => format!(
                    "{who} was closed by {closer} at {}, {} after the close-out was due ({}, {} \
                     after its last touch).",
                    at(c.closed_at.ts()),
                    late_by(due.deadline, c.closed_at.ts()),
                    at(due.deadline),
                    d.and_then(|d| d.feedback_within)
                        .map(|f| sla_words(cal, f))
                        .unwrap_or_default()
                ),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Issue 12: working time is written as working time, so "1day 6h 30m" (which reads as
    /// wall-clock) is "30.5 working hours"; around the clock, durations read as before.
    #[test]
    fn spans_in_a_calendar_are_written_as_working_time() {
        let hours = [("mon".to_string(), "09:00-17:00".to_string())].into();
        let cal = Calendar::new("us", "America/New_York", &hours, &[]).unwrap();
        let cal = Some(&cal);
        let hours = |h: u64, m: u64| Duration::from_secs(h * 3600 + m * 60);
        assert_eq!(span(cal, hours(30, 30)), "30.5 working hours");
        assert_eq!(span(cal, hours(1, 0)), "1 working hour");
        assert_eq!(span(cal, hours(0, 45)), "45 working minutes");
        assert_eq!(span(None, hours(30, 30)), "1day 6h 30m");
        let sla = |s: &str| s.parse::<SlaDuration>().unwrap();
        assert_eq!(sla_words(cal, sla("4d")), "4 working days");
        assert_eq!(
            sla_words(cal, sla("1d 2h")),
            "1 working day and 2 working hours"
        );
        assert_eq!(sla_words(cal, sla("15m")), "15 working minutes");
        assert_eq!(sla_words(None, sla("4h")), "4h");
    }
}
