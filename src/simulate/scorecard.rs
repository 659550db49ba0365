//! The scorecard `simulate` writes: per owner, per source and in total, leads handed off and
//! touched within the SLA, business time to first touch, attempts and reasons at close-outs,
//! leads never touched, attempts and close-outs that became overdue, and the alerts fired.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use jiff::Timestamp;
use serde::Serialize;

use crate::alert::{ATTEMPT_OVERDUE, Alert, LATE, OVERDUE};
use crate::engine::state::Clock;
use crate::engine::{Closeout, Engine, Lead, calendar};

/// Where what nobody owned is counted.
const NO_OWNER: &str = "(none)";

/// One first-touch clock: a lead handed to an owner.
#[derive(Debug, Clone)]
struct Handoff {
    lead: String,
    owner: String,
    source: String,
    /// Business time from the clock start to the first touch, when it was touched.
    to_first_touch: Option<Duration>,
    outcome: Outcome,
}

/// How a first-touch clock ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    /// Touched by the deadline.
    InTime,
    /// Touched, after the deadline.
    Late,
    /// The deadline passed with no touch, or the lead left sales (closed, converted, back to
    /// marketing) before anyone touched it.
    NeverTouched,
    /// Not judged: still running at the end of the period, or handed on before its deadline.
    Pending,
}

/// What the simulated run saw happen to leads, as it happened.
#[derive(Debug, Default)]
pub(super) struct Recorder {
    handoffs: Vec<Handoff>,
    /// Each lead's close-outs, by when they closed: the source, the close-out.
    closeouts: HashMap<(String, Timestamp), (String, Closeout)>,
    alerts: BTreeMap<String, u64>,
    /// Attempts and close-outs that became overdue while the lead was open: (owner, source,
    /// alert type).
    overdue: Vec<(String, String, &'static str)>,
}

/// What [`Recorder::observe`] compares of a lead before an event: its first-touch clock and its
/// close-outs. A few fields, not a copy of the lead's whole state.
#[derive(Debug, Default)]
pub(super) struct Before {
    clock: Option<Clock>,
    closeouts: usize,
    last_closeout: Option<Closeout>,
}

impl Before {
    pub(super) fn of(lead: Option<&Lead>) -> Self {
        lead.map_or_else(Self::default, |lead| Self {
            clock: lead.episode.as_ref().and_then(|e| e.clock.clone()),
            closeouts: lead.closeouts.len(),
            last_closeout: lead.closeouts.last().cloned(),
        })
    }
}

impl Recorder {
    /// An alert fired for a lead that came from `origin`.
    pub(super) fn alert(&mut self, alert: &Alert, origin: Option<&str>) {
        *self.alerts.entry(alert.kind.clone()).or_default() += 1;
        let kind = match alert.kind.as_str() {
            ATTEMPT_OVERDUE => ATTEMPT_OVERDUE,
            OVERDUE => OVERDUE,
            _ => return,
        };
        let owner = alert.data.owner.clone().unwrap_or_else(|| NO_OWNER.into());
        self.overdue
            .push((owner, origin.unwrap_or_default().to_string(), kind));
    }

    /// Takes in what another partition's recorder saw (a lead is on one partition only, and the
    /// scorecard counts, so the order they are taken in changes nothing).
    pub(super) fn merge(&mut self, other: Recorder) {
        self.handoffs.extend(other.handoffs);
        self.closeouts.extend(other.closeouts);
        for (kind, n) in other.alerts {
            *self.alerts.entry(kind).or_default() += n;
        }
        self.overdue.extend(other.overdue);
    }

    /// Records the clocks and close-outs an event ended or made.
    pub(super) fn observe(
        &mut self,
        engine: &Engine,
        key: &str,
        before: &Before,
        after: &Lead,
        at: Timestamp,
    ) {
        let old = before.clock.as_ref();
        let new = after.episode.as_ref().and_then(|e| e.clock.as_ref());
        if let Some(old) = old
            && new != Some(old)
        {
            // No episode left: the lead left sales, and the clock with it.
            let left_sales = after.episode.is_none();
            self.clock_ended(engine, key, after, old, at, left_sales);
        }
        if (after.closeouts.len() > before.closeouts
            || after.closeouts.last() != before.last_closeout.as_ref())
            && let Some(c) = after.closeouts.last()
        {
            // A close refreshed by a later event (the same instant, or its reason within
            // `reason_grace`) replaces its first record, whatever other leads did in between.
            let source = after.origin.clone().unwrap_or_default();
            let mut c = c.clone();
            // Counted under the agreed spelling ("no budget" is "No budget").
            if let (Some(reason), Some(d)) = (&c.reason, &engine.settings(after).disposition) {
                let trimmed = reason.trim();
                c.reason = Some(
                    d.reasons
                        .iter()
                        .chain(&d.vague)
                        .find(|r| r.eq_ignore_ascii_case(trimmed))
                        .cloned()
                        .unwrap_or_else(|| trimmed.to_string()),
                );
            }
            self.closeouts
                .insert((key.to_string(), c.closed_at.ts()), (source, c));
        }
    }

    fn clock_ended(
        &mut self,
        engine: &Engine,
        key: &str,
        lead: &Lead,
        clock: &Clock,
        ended: Timestamp,
        left_sales: bool,
    ) {
        let settings = engine.settings(lead);
        let cal = settings.calendar.as_deref();
        let started = clock.started_at.ts();
        let touch = lead
            .first_touch_since(clock.started_at)
            .map(|t| t.ts())
            .filter(|t| *t <= ended);
        let deadline = settings
            .first_touch
            .as_ref()
            .map(|ft| calendar::add(cal, started, ft.within));
        let outcome = match (touch, deadline) {
            (Some(t), Some(d)) if t > d => Outcome::Late,
            (Some(_), _) => Outcome::InTime,
            (None, Some(d)) if d <= ended => Outcome::NeverTouched,
            (None, _) if left_sales => Outcome::NeverTouched,
            (None, _) => Outcome::Pending,
        };
        self.handoffs.push(Handoff {
            lead: key.to_string(),
            owner: clock.owner.clone(),
            source: lead.origin.clone().unwrap_or_default(),
            to_first_touch: touch.map(|t| calendar::between(cal, started, t)),
            outcome,
        });
    }

    /// Clocks still running at the end.
    pub(super) fn finish(&mut self, engine: &Engine, key: &str, lead: &Lead, until: Timestamp) {
        if let Some(clock) = lead.episode.as_ref().and_then(|e| e.clock.as_ref()) {
            self.clock_ended(engine, key, lead, clock, until, false);
        }
    }

    pub(super) fn scorecard(self, from: Option<Timestamp>, until: Timestamp) -> Scorecard {
        let mut by_owner: BTreeMap<String, Tally> = BTreeMap::new();
        let mut by_source: BTreeMap<String, Tally> = BTreeMap::new();
        let mut total = Tally::default();
        for h in &self.handoffs {
            for t in [
                by_owner.entry(h.owner.clone()).or_default(),
                by_source.entry(h.source.clone()).or_default(),
                &mut total,
            ] {
                t.handoff(h);
            }
        }
        for (source, c) in self.closeouts.values() {
            let owner = c.owner.clone().unwrap_or_else(|| NO_OWNER.into());
            for t in [
                by_owner.entry(owner.clone()).or_default(),
                by_source.entry(source.clone()).or_default(),
                &mut total,
            ] {
                t.closeout(c);
            }
        }
        for (owner, source, kind) in &self.overdue {
            for t in [
                by_owner.entry(owner.clone()).or_default(),
                by_source.entry(source.clone()).or_default(),
                &mut total,
            ] {
                match *kind {
                    ATTEMPT_OVERDUE => t.attempts_overdue += 1,
                    _ => t.closeouts_overdue += 1,
                }
            }
        }
        Scorecard {
            from,
            until,
            alerts: self.alerts,
            total: total.report(),
            by_owner: by_owner.into_iter().map(|(k, t)| (k, t.report())).collect(),
            by_source: by_source
                .into_iter()
                .map(|(k, t)| (k, t.report()))
                .collect(),
        }
    }
}

#[derive(Debug, Default)]
struct Tally {
    leads: std::collections::BTreeSet<String>,
    touched_leads: std::collections::BTreeSet<String>,
    untouched_leads: std::collections::BTreeSet<String>,
    handed_off: u64,
    within_sla: u64,
    late: u64,
    never_touched: u64,
    pending: u64,
    to_first_touch: Vec<Duration>,
    closed: u64,
    closed_late: u64,
    attempts: Vec<u32>,
    reasons: BTreeMap<String, u64>,
    attempts_overdue: u64,
    closeouts_overdue: u64,
}

impl Tally {
    fn handoff(&mut self, h: &Handoff) {
        self.handed_off += 1;
        self.leads.insert(h.lead.clone());
        match h.outcome {
            Outcome::InTime | Outcome::Late => {
                self.touched_leads.insert(h.lead.clone());
            }
            Outcome::NeverTouched => {
                self.untouched_leads.insert(h.lead.clone());
            }
            Outcome::Pending => {}
        }
        match h.outcome {
            Outcome::InTime => self.within_sla += 1,
            Outcome::Late => self.late += 1,
            Outcome::NeverTouched => self.never_touched += 1,
            Outcome::Pending => self.pending += 1,
        }
        if let Some(d) = h.to_first_touch {
            self.to_first_touch.push(d);
        }
    }

    fn closeout(&mut self, c: &Closeout) {
        self.closed += 1;
        if c.owes.iter().any(|o| o.kind == LATE) {
            self.closed_late += 1;
        }
        self.attempts.push(c.attempts);
        let reason = c
            .reason
            .clone()
            .unwrap_or_else(|| "(no reason)".to_string());
        *self.reasons.entry(reason).or_default() += 1;
    }

    fn report(mut self) -> Report {
        self.to_first_touch.sort();
        self.attempts.sort();
        let pct = |d: &[Duration], p: f64| -> Option<Duration> {
            if d.is_empty() {
                return None;
            }
            let i = ((d.len() as f64 - 1.0) * p).round() as usize;
            Some(d[i])
        };
        let secs = |d: Option<Duration>| d.map(|d| d.as_secs_f64());
        let median = pct(&self.to_first_touch, 0.5);
        let p90 = pct(&self.to_first_touch, 0.9);
        let judged = self.within_sla + self.late + self.never_touched;
        Report {
            leads_handed_off: self.leads.len() as u64,
            leads_never_touched: self.untouched_leads.difference(&self.touched_leads).count()
                as u64,
            handed_off: self.handed_off,
            touched_within_sla: self.within_sla,
            touched_within_sla_pct: (judged > 0)
                .then(|| (self.within_sla as f64 * 1000.0 / judged as f64).round() / 10.0),
            touched_late: self.late,
            never_touched: self.never_touched,
            pending: self.pending,
            median_business_time_to_first_touch_secs: secs(median),
            p90_business_time_to_first_touch_secs: secs(p90),
            median_business_time_to_first_touch: median
                .map(|d| humantime::format_duration(Duration::from_secs(d.as_secs())).to_string()),
            closed: self.closed,
            median_attempts_before_close: (!self.attempts.is_empty())
                .then(|| self.attempts[(self.attempts.len() - 1) / 2]),
            mean_attempts_before_close: (!self.attempts.is_empty()).then(|| {
                let sum: u32 = self.attempts.iter().sum();
                (sum as f64 * 10.0 / self.attempts.len() as f64).round() / 10.0
            }),
            close_reasons: self.reasons,
            closed_late: self.closed_late,
            next_attempts_overdue: self.attempts_overdue,
            closeouts_overdue: self.closeouts_overdue,
        }
    }
}

/// The scorecard `simulate` writes (JSON).
#[derive(Debug, Serialize)]
pub struct Scorecard {
    pub from: Option<Timestamp>,
    pub until: Timestamp,
    /// Alerts fired, by type.
    pub alerts: BTreeMap<String, u64>,
    pub total: Report,
    pub by_owner: BTreeMap<String, Report>,
    pub by_source: BTreeMap<String, Report>,
}

/// One owner's, one source's, or everyone's figures.
#[derive(Debug, Serialize, PartialEq)]
pub struct Report {
    /// Distinct leads handed to an owner.
    pub leads_handed_off: u64,
    /// Of those, leads nobody touched in any of their handoffs, though a deadline passed or
    /// the lead left sales (closed, converted, back to marketing) first.
    pub leads_never_touched: u64,
    /// First-touch clocks started: leads handed to an owner (a new owner is a new handoff).
    pub handed_off: u64,
    pub touched_within_sla: u64,
    /// Of the handoffs whose deadline has passed (`handed_off - pending`).
    pub touched_within_sla_pct: Option<f64>,
    pub touched_late: u64,
    /// The deadline passed and nobody touched the lead by the end of the period, or the lead
    /// left sales before anyone touched it.
    pub never_touched: u64,
    /// Not judged: the deadline is after the end of the period, or the lead went to another
    /// owner before it.
    pub pending: u64,
    pub median_business_time_to_first_touch_secs: Option<f64>,
    pub p90_business_time_to_first_touch_secs: Option<f64>,
    pub median_business_time_to_first_touch: Option<String>,
    /// Close-outs of sales-ready leads.
    pub closed: u64,
    pub median_attempts_before_close: Option<u32>,
    pub mean_attempts_before_close: Option<f64>,
    pub close_reasons: BTreeMap<String, u64>,
    /// Close-outs that came later than `feedback_within` after the episode's last touch (or its
    /// start), whether or not `disposition.overdue` said so while the lead was open.
    pub closed_late: u64,
    /// Gaps after an attempt in which the next one did not come in time
    /// (`follow_up.attempt_overdue`), with fewer attempts than agreed.
    pub next_attempts_overdue: u64,
    /// Open leads whose close-out became overdue (`disposition.overdue`): one per gap after the
    /// last touch.
    pub closeouts_overdue: u64,
}
