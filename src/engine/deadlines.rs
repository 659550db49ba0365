//! Where every SLA deadline is computed: from a lead's state and the rules that apply to it, the
//! alerts it is owed and when each is due. Nothing here is stored; deadlines always derive from
//! the state, so a restore or a rules edit recomputes them.
//!
//! - `lead.unassigned` (rule `handoff`): sales-ready without an owner for `assign_within`.
//! - `sla.first_touch.reminder` / `.breached` / `.escalated` (rule `first_touch`, levels 0, 0, n):
//!   no touch by `within - remind_before` and `within`, counted from the owner's clock start, and
//!   by each step's `after`, counted from the handoff (the episode's first clock start), all in
//!   the segment's calendar; a touch at or before one cancels it.
//! - `follow_up.attempt_overdue` (rule `follow_up`): while the episode is open and owned, touched
//!   at least once and fewer than `min_attempts` times, the next attempt is due `attempt_every`
//!   after the last; one alert per gap (its id is made of the last touch), cancelled by a touch
//!   at or before it.
//! - `disposition.overdue` (rule `disposition`): while the episode is open, no close-out
//!   `feedback_within` after its last touch (or its start, untouched); one per gap likewise.
//! - `follow_up.insufficient_attempts` and `disposition.*` of a close-out: judged at the close;
//!   the reason alerts fire `reason_grace` (wall-clock) after it, on the reason as it stands then;
//!   `disposition.late` only if `disposition.overdue` did not already say it for that gap.

use jiff::Timestamp;

use super::at::At;
use super::calendar;
use super::rules::Settings;
use super::state::{Closeout, Lead, Owed};

/// One alert a lead is owed, with when it is due. It borrows from the lead and the settings it
/// was computed from: working out when a lead next has something due (on every event) copies
/// nothing.
#[derive(Debug, Clone, PartialEq)]
pub struct Due<'a> {
    /// The alert type.
    pub kind: &'static str,
    pub rule: &'static str,
    pub level: u32,
    /// Distinguishes alert types that share (rule, level): the reminder, the close-out reasons.
    pub variant: Option<&'static str>,
    /// The clock start the alert id is made of.
    pub clock: Timestamp,
    /// The deadline the alert reports.
    pub deadline: Timestamp,
    /// When it fires (the deadline, a reminder's lead time before it, or the close).
    pub fire_at: Timestamp,
    /// The roles it is addressed to.
    pub to: To<'a>,
    pub what: What<'a>,
    /// Another alert that, once fired, said this one already: `disposition.late` of a gap whose
    /// `disposition.overdue` fired while the lead was open.
    pub said_by: Option<Said>,
}

/// What an alert's id is made of, bar the lead: (rule, level, clock start, variant).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Said {
    pub rule: &'static str,
    pub level: u32,
    pub clock: Timestamp,
    pub variant: Option<&'static str>,
}

/// The roles an alert is addressed to.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum To<'a> {
    /// Roles every lead has, or `[recipients]`' built-in ones.
    Roles(&'static [&'static str]),
    /// One role named in the rules (an escalation step's `notify`).
    Role(&'a str),
}

impl<'a> To<'a> {
    /// The roles, in order.
    pub fn roles(&self) -> Vec<&'a str> {
        match *self {
            To::Roles(roles) => roles.to_vec(),
            To::Role(role) => vec![role],
        }
    }
}

/// What the alert is about, for its body.
#[derive(Debug, Clone, PartialEq)]
pub enum What<'a> {
    Unassigned,
    FirstTouch {
        owner: &'a str,
        /// The escalation step (0-based), for levels above 0.
        step: Option<usize>,
    },
    /// Fewer attempts than agreed, and the next one overdue.
    Attempts {
        owner: &'a str,
        attempts: u32,
        last_touch: Timestamp,
    },
    /// No close-out while it was due.
    NoCloseout {
        owner: Option<&'a str>,
        /// The episode's last touch, if it had one (else the close-out was due after its start).
        last_touch: Option<Timestamp>,
    },
    Closeout(&'a Closeout),
}

pub use crate::alert::{
    ALERT_TYPES, ATTEMPT_OVERDUE, BREACHED, ESCALATED, INSUFFICIENT_ATTEMPTS, LATE, MISSING_REASON,
    OVERDUE, REMINDER, UNASSIGNED, UNKNOWN_REASON, VAGUE_REASON,
};

/// The variant part of an alert's id, from its type.
pub fn variant_of(kind: &str) -> Option<&'static str> {
    match kind {
        REMINDER => Some("reminder"),
        MISSING_REASON => Some(MISSING_REASON),
        UNKNOWN_REASON => Some(UNKNOWN_REASON),
        VAGUE_REASON => Some(VAGUE_REASON),
        LATE => Some(LATE),
        ATTEMPT_OVERDUE => Some(ATTEMPT_OVERDUE),
        OVERDUE => Some(OVERDUE),
        _ => None,
    }
}

/// Every alert the lead is owed under `settings`, cancelled ones left out, fired ones included
/// (the caller knows which fired).
pub fn owed<'a>(lead: &'a Lead, settings: &'a Settings) -> Vec<Due<'a>> {
    let cal = settings.calendar.as_deref();
    // Room for what an episode owes at most without a close-out, so it is allocated once.
    let mut out = Vec::with_capacity(8);
    if let Some(episode) = &lead.episode {
        if let (Some(since), Some(handoff)) =
            (episode.unassigned_since.map(At::ts), &settings.handoff)
        {
            let deadline = calendar::add(cal, since, handoff.assign_within);
            out.push(Due {
                kind: UNASSIGNED,
                rule: "handoff",
                level: 0,
                variant: None,
                clock: since,
                deadline,
                fire_at: deadline,
                to: To::Roles(&["queue"]),
                what: What::Unassigned,
                said_by: None,
            });
        }
        if let (Some(clock), Some(ft)) = (&episode.clock, &settings.first_touch) {
            let touched = lead.first_touch_since(clock.started_at).map(At::ts);
            let cancelled = |at: Timestamp| touched.is_some_and(|t| t <= at);
            let start = clock.started_at.ts();
            let deadline = calendar::add(cal, start, ft.within);
            let first_touch = |step| What::FirstTouch {
                owner: &clock.owner,
                step,
            };
            if let Some(before) = ft.remind_before {
                // Never before the clock can first run (a handoff on Saturday is reminded of on
                // Monday, not on Saturday).
                let at =
                    calendar::sub(cal, deadline, before).max(calendar::next_working(cal, start));
                if !cancelled(at) {
                    out.push(Due {
                        kind: REMINDER,
                        rule: "first_touch",
                        level: 0,
                        variant: Some("reminder"),
                        clock: start,
                        deadline,
                        fire_at: at,
                        to: To::Roles(&["owner"]),
                        what: first_touch(None),
                        said_by: None,
                    });
                }
            }
            if !cancelled(deadline) {
                out.push(Due {
                    kind: BREACHED,
                    rule: "first_touch",
                    level: 0,
                    variant: None,
                    clock: start,
                    deadline,
                    fire_at: deadline,
                    to: To::Roles(&["owner"]),
                    what: first_touch(None),
                    said_by: None,
                });
            }
            // The ladder counts from the handoff (the episode's first clock start), not from
            // this owner's: reassigning a lead does not keep it from the manager. Its ids are
            // made of the handoff, so each step fires once per episode whoever owns the lead;
            // any touch since the handoff, at or before a step, cancels it.
            let handoff = episode.handed_off_at.map_or(start, At::ts);
            let touched_since_handoff = lead.first_touch_since(At::new(handoff)).map(At::ts);
            // Each step no earlier than the one before, whatever the calendar does to them.
            let mut previous = calendar::add(cal, handoff, ft.within);
            for (i, step) in ft.escalate.iter().enumerate() {
                let at = calendar::add(cal, handoff, step.after).max(previous);
                previous = at;
                if touched_since_handoff.is_none_or(|t| t > at) {
                    out.push(Due {
                        kind: ESCALATED,
                        rule: "first_touch",
                        level: i as u32 + 1,
                        variant: None,
                        clock: handoff,
                        deadline: at,
                        fire_at: at,
                        to: To::Role(&step.notify),
                        what: first_touch(Some(i)),
                        said_by: None,
                    });
                }
            }
        }
        let (attempts, last_touch) = lead.touches_since(episode.started_at);
        let last_touch = last_touch.map(At::ts);
        if let (Some(clock), Some(f)) = (&episode.clock, &settings.follow_up)
            && let (Some(every), Some(last)) = (f.attempt_every, last_touch)
            && attempts < f.min_attempts
        {
            let deadline = calendar::add(cal, last, every);
            out.push(Due {
                kind: ATTEMPT_OVERDUE,
                rule: "follow_up",
                level: 0,
                variant: Some(ATTEMPT_OVERDUE),
                clock: last,
                deadline,
                fire_at: deadline,
                to: To::Roles(&["owner"]),
                what: What::Attempts {
                    owner: &clock.owner,
                    attempts,
                    last_touch: last,
                },
                said_by: None,
            });
        }
        if let Some(within) = settings
            .disposition
            .as_ref()
            .and_then(|d| d.feedback_within)
        {
            let from = last_touch.unwrap_or(episode.started_at.ts());
            let deadline = calendar::add(cal, from, within);
            out.push(Due {
                kind: OVERDUE,
                rule: "disposition",
                level: 0,
                variant: Some(OVERDUE),
                clock: from,
                deadline,
                fire_at: deadline,
                to: To::Roles(&["owner", "marketing_ops"]),
                what: What::NoCloseout {
                    owner: lead.owner.as_deref(),
                    last_touch,
                },
                said_by: None,
            });
        }
    }
    // Reasons are judged `reason_grace` (wall-clock) after the close.
    let grace = settings
        .disposition
        .as_ref()
        .map_or(jiff::SignedDuration::ZERO, |d| d.reason_grace);
    for c in &lead.closeouts {
        for owed in &c.owes {
            let (kind, rule, variant) = match owed.kind.as_str() {
                INSUFFICIENT_ATTEMPTS => (INSUFFICIENT_ATTEMPTS, "follow_up", None),
                MISSING_REASON => (MISSING_REASON, "disposition", Some(MISSING_REASON)),
                UNKNOWN_REASON => (UNKNOWN_REASON, "disposition", Some(UNKNOWN_REASON)),
                VAGUE_REASON => (VAGUE_REASON, "disposition", Some(VAGUE_REASON)),
                LATE => (LATE, "disposition", Some(LATE)),
                _ => continue,
            };
            let fire_at = match kind {
                MISSING_REASON | UNKNOWN_REASON | VAGUE_REASON => c
                    .closed_at
                    .ts()
                    .saturating_add(grace)
                    .unwrap_or(Timestamp::MAX),
                _ => c.closed_at.ts(),
            };
            // A late close whose gap was already called overdue while the lead was open is
            // scored late, not alerted again.
            let said_by = (kind == LATE).then(|| Said {
                rule: "disposition",
                level: 0,
                clock: feedback_from(c),
                variant: Some(OVERDUE),
            });
            out.push(Due {
                kind,
                rule,
                level: 0,
                variant,
                clock: c.closed_at.ts(),
                deadline: owed.deadline.ts(),
                fire_at,
                to: To::Roles(&["owner", "marketing_ops"]),
                what: What::Closeout(c),
                said_by,
            });
        }
    }
    out
}

/// What a close-out owes under the rules in force when it happens: too few attempts, a missing,
/// unknown or vague reason, a late close. Judged once, at the close: a later edit of the rules
/// does not reopen a month of past close-outs.
pub fn judge(c: &Closeout, settings: &Settings) -> Vec<Owed> {
    let cal = settings.calendar.as_deref();
    let mut owes = Vec::new();
    let owed = |kind: &str, deadline| Owed {
        kind: kind.to_string(),
        deadline: At::new(deadline),
    };
    if let Some(f) = &settings.follow_up
        && c.attempts < f.min_attempts
    {
        owes.push(owed(INSUFFICIENT_ATTEMPTS, c.closed_at.ts()));
    }
    let Some(d) = &settings.disposition else {
        return owes;
    };
    if let Some(kind) = reason_problem(c, d) {
        owes.push(owed(kind, c.closed_at.ts()));
    }
    if let Some(within) = d.feedback_within {
        let due_by = calendar::add(cal, feedback_from(c), within);
        if c.closed_at.ts() > due_by {
            owes.push(owed(LATE, due_by));
        }
    }
    owes
}

/// Where a close-out's `feedback_within` counts from: the episode's last touch before the close,
/// or its start (an older touch, a call last quarter, is not this episode's; an activity nobody
/// did in person, a nurture email, is no touch).
fn feedback_from(c: &Closeout) -> Timestamp {
    c.last_touch_at
        .filter(|t| *t >= c.sales_ready_at)
        .unwrap_or(c.sales_ready_at)
        .ts()
}

/// Which reason alert a close-out gets, if any. Reasons match trimmed and case-insensitively.
pub fn reason_problem(c: &Closeout, d: &super::rules::DispositionRules) -> Option<&'static str> {
    let same = |a: &str, b: &str| a.trim().to_lowercase() == b.trim().to_lowercase();
    let Some(reason) = c.reason.as_deref().filter(|r| !r.trim().is_empty()) else {
        return Some(MISSING_REASON);
    };
    if d.vague.iter().any(|v| same(v, reason)) {
        let detail = c.detail.as_deref().map_or(0, |s| s.trim().chars().count());
        return (detail < d.detail_min_chars).then_some(VAGUE_REASON);
    }
    if d.reasons.iter().any(|r| same(r, reason)) {
        return None;
    }
    Some(UNKNOWN_REASON)
}
