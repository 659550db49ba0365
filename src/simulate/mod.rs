//! `leadwatch simulate`: the live engine's code ([`PartitionState`], [`Engine`]) over a file of
//! past events with a simulated clock, so an admin can test a rules file on last quarter's export
//! before deploying it.
//!
//! Events are applied in `occurred_at` order (file order for equal instants); before each event,
//! every deadline strictly before it fires, so an event stamped exactly at a deadline is applied
//! first; at the end, deadlines up to `until` fire. Each alert is the body a sink would receive,
//! with `fired_at` (simulated time) on top. The scorecard measures each owner and each source:
//! leads handed off, touched within the SLA, business time to first touch, attempts before close,
//! close-out reasons, leads never touched.

use std::collections::BTreeMap;
use std::io::BufRead;
use std::time::Duration;

use jiff::Timestamp;
use serde::{Deserialize, Serialize};

use crate::alert::Alert;
use crate::engine::calendar;
use crate::engine::partition::PartitionState;
use crate::engine::step::{Input, Write};
use crate::engine::{Closeout, Engine};
use crate::event::{Change, LeadEvent};

/// One line of the events file: the canonical event (as on `{prefix}.events`, or as the generic
/// source takes it: `source` and `received_at` may be left out).
#[derive(Debug, Deserialize)]
struct Line {
    id: String,
    lead: String,
    occurred_at: Timestamp,
    #[serde(default)]
    source: Option<String>,
    #[serde(default)]
    received_at: Option<Timestamp>,
    #[serde(flatten)]
    change: Change,
}

/// A line that could not be read.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct BadLine {
    pub line: usize,
    pub message: String,
}

/// Reads events, one JSON object per line (blank lines skipped); bad lines are returned, not
/// fatal.
pub fn read_events(reader: impl BufRead) -> std::io::Result<(Vec<LeadEvent>, Vec<BadLine>)> {
    let mut events = Vec::new();
    let mut bad = Vec::new();
    for (i, line) in reader.lines().enumerate() {
        let line = line?;
        if line.trim().is_empty() {
            continue;
        }
        match serde_json::from_str::<Line>(&line) {
            Ok(l) => events.push(LeadEvent {
                id: l.id,
                source: l.source.unwrap_or_else(|| "simulate".into()),
                lead: l.lead,
                occurred_at: l.occurred_at,
                received_at: l.received_at.unwrap_or(l.occurred_at),
                change: l.change,
            }),
            Err(e) => bad.push(BadLine {
                line: i + 1,
                message: e.to_string(),
            }),
        }
    }
    Ok((events, bad))
}

/// An alert as `simulate` prints it: the delivered body plus when it fired.
#[derive(Debug, Serialize)]
pub struct Fired<'a> {
    #[serde(flatten)]
    pub alert: &'a Alert,
    pub fired_at: Timestamp,
}

/// Runs the events through the engine up to `until` (default: the last event's time), handing
/// each alert to `emit` as it fires; returns the scorecard.
///
/// Leads are placed on `partitions` partitions as the daemon's producers place them (the pools'
/// round-robin is kept per partition), so suggested owners are the daemon's too. Each partition
/// is stepped as the daemon steps it, with every event of the file up to the simulated clock
/// read: it is always at its end, so deadlines fire at the clock.
pub fn run(
    engine: &Engine,
    mut events: Vec<LeadEvent>,
    until: Option<Timestamp>,
    partitions: i32,
    mut emit: impl FnMut(&Alert),
) -> Scorecard {
    // Stable: events stamped alike keep their file order.
    events.sort_by_key(|e| e.occurred_at);
    let until = until
        .or_else(|| events.last().map(|e| e.occurred_at))
        .unwrap_or(Timestamp::UNIX_EPOCH);
    let from = events.first().map(|e| e.occurred_at);
    let partitions = partitions.max(1);
    let mut parts: Vec<Simulated> = (0..partitions)
        .map(|_| Simulated::new(engine, from.unwrap_or(until)))
        .collect();
    let mut card = Recorder::default();
    // Every partition's deadlines, earliest first (ties: the lower partition first).
    let mut fire_before =
        |parts: &mut [Simulated], card: &mut Recorder, limit: Timestamp, inclusive: bool| {
            while let Some((d, i)) = parts
                .iter()
                .enumerate()
                .filter_map(|(i, p)| Some((p.wake?, i)))
                .min()
            {
                if d > limit || (d == limit && !inclusive) {
                    break;
                }
                for write in parts[i].step(engine, Input::Tick, d) {
                    let Write::Lead(write) = write else { continue };
                    for alert in &write.fired {
                        card.alert(alert);
                        emit(alert);
                    }
                }
            }
        };
    for event in events.iter().filter(|e| e.occurred_at <= until) {
        fire_before(&mut parts, &mut card, event.occurred_at, false);
        let p = &mut parts
            [crate::partitioner::partition_for(event.lead.as_bytes(), partitions) as usize];
        let before = p.state.lead(&event.lead).cloned().unwrap_or_default();
        p.step(engine, Input::Event(event), event.occurred_at);
        p.step(engine, Input::End, event.occurred_at);
        if let Some(after) = p.state.lead(&event.lead) {
            card.observe(
                engine,
                &event.lead,
                &before.lead,
                &after.lead,
                event.occurred_at,
            );
        }
    }
    fire_before(&mut parts, &mut card, until, true);
    for (key, state) in parts.iter().flat_map(|p| p.state.iter()) {
        card.finish(engine, key, &state.lead, until);
    }
    card.scorecard(from, until)
}

/// One simulated partition: its state, and when it next has something to fire.
struct Simulated {
    state: PartitionState,
    wake: Option<Timestamp>,
}

impl Simulated {
    /// A partition read to its end (there is nothing in it yet).
    fn new(engine: &Engine, now: Timestamp) -> Self {
        let mut p = Self {
            state: PartitionState::default(),
            wake: None,
        };
        p.step(engine, Input::End, now);
        p
    }

    /// Steps the partition as the daemon does; returns what it would write (what the engine
    /// noticed is not counted here).
    fn step(&mut self, engine: &Engine, input: Input<'_>, now: Timestamp) -> Vec<Write> {
        let step = self.state.step(engine, input, now);
        self.wake = step.wake;
        step.writes
    }
}

/// Why `simulate` over files could not finish.
#[derive(Debug, thiserror::Error)]
pub enum FileError {
    #[error("reading {}: {source}", path.display())]
    Events {
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("writing the alerts: {0}")]
    Alerts(#[source] std::io::Error),
    #[error("writing the scorecard to {}: {source}", path.display())]
    Scorecard {
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// `leadwatch simulate`: reads the events file, prints every alert as a JSON line on stdout
/// (with `fired_at`), names unreadable lines on stderr, and writes the scorecard to `scorecard`
/// (or stderr). `links` are the sources' link templates into the CRM, by source name.
pub fn run_files(
    rules: crate::engine::rules::Rules,
    links: std::collections::HashMap<String, String>,
    events: &std::path::Path,
    until: Option<Timestamp>,
    partitions: i32,
    scorecard: Option<&std::path::Path>,
) -> Result<(), FileError> {
    use std::io::Write;
    let events_error = |source| FileError::Events {
        path: events.to_path_buf(),
        source,
    };
    let file = std::fs::File::open(events).map_err(events_error)?;
    let (read, bad) = read_events(std::io::BufReader::new(file)).map_err(events_error)?;
    for b in &bad {
        eprintln!("{}:{}: skipped: {}", events.display(), b.line, b.message);
    }
    let engine = Engine::new(std::sync::Arc::new(rules)).with_links(links);
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    let mut failed = None;
    let card = run(&engine, read, until, partitions, |alert| {
        let line = Fired {
            alert,
            fired_at: alert.timestamp,
        };
        if failed.is_none()
            && let Err(e) = serde_json::to_writer(&mut out, &line)
                .map_err(std::io::Error::from)
                .and_then(|_| out.write_all(b"\n"))
        {
            failed = Some(e);
        }
    });
    if let Some(e) = failed.or_else(|| out.flush().err()) {
        return Err(FileError::Alerts(e));
    }
    let text = serde_json::to_string_pretty(&card).expect("scorecard serializes");
    match scorecard {
        Some(path) => std::fs::write(path, text + "\n").map_err(|source| FileError::Scorecard {
            path: path.to_path_buf(),
            source,
        }),
        None => {
            eprintln!("{text}");
            Ok(())
        }
    }
}

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

#[derive(Debug, Default)]
struct Recorder {
    handoffs: Vec<Handoff>,
    closeouts: Vec<(String, String, Closeout)>,
    alerts: BTreeMap<String, u64>,
}

impl Recorder {
    fn alert(&mut self, alert: &Alert) {
        *self.alerts.entry(alert.kind.clone()).or_default() += 1;
    }

    /// Records the clocks and close-outs an event ended or made.
    fn observe(
        &mut self,
        engine: &Engine,
        key: &str,
        before: &crate::engine::Lead,
        after: &crate::engine::Lead,
        at: Timestamp,
    ) {
        let old = before.episode.as_ref().and_then(|e| e.clock.as_ref());
        let new = after.episode.as_ref().and_then(|e| e.clock.as_ref());
        if let Some(old) = old
            && new != Some(old)
        {
            // No episode left: the lead left sales, and the clock with it.
            let left_sales = after.episode.is_none();
            self.clock_ended(engine, key, after, old, at, left_sales);
        }
        if (after.closeouts.len() > before.closeouts.len()
            || after.closeouts.last() != before.closeouts.last())
            && let Some(c) = after.closeouts.last()
        {
            // A close refreshed by an event at the same instant replaces its first record.
            if let Some(last) = self.closeouts.last()
                && last.0 == key
                && last.2.closed_at == c.closed_at
            {
                self.closeouts.pop();
            }
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
            self.closeouts.push((key.to_string(), source, c));
        }
    }

    fn clock_ended(
        &mut self,
        engine: &Engine,
        key: &str,
        lead: &crate::engine::Lead,
        clock: &crate::engine::state::Clock,
        ended: Timestamp,
        left_sales: bool,
    ) {
        let settings = engine.settings(lead);
        let cal = settings.calendar.as_deref();
        let touch = lead
            .first_touch_since(clock.started_at)
            .filter(|t| *t <= ended);
        let deadline = settings
            .first_touch
            .as_ref()
            .map(|ft| calendar::add(cal, clock.started_at, ft.within));
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
            to_first_touch: touch.map(|t| calendar::between(cal, clock.started_at, t)),
            outcome,
        });
    }

    /// Clocks still running at the end.
    fn finish(&mut self, engine: &Engine, key: &str, lead: &crate::engine::Lead, until: Timestamp) {
        if let Some(clock) = lead.episode.as_ref().and_then(|e| e.clock.as_ref()) {
            self.clock_ended(engine, key, lead, clock, until, false);
        }
    }

    fn scorecard(self, from: Option<Timestamp>, until: Timestamp) -> Scorecard {
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
        for (_, source, c) in &self.closeouts {
            let owner = c.owner.clone().unwrap_or_else(|| "(none)".into());
            for t in [
                by_owner.entry(owner.clone()).or_default(),
                by_source.entry(source.clone()).or_default(),
                &mut total,
            ] {
                t.closeout(c);
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
    attempts: Vec<u32>,
    reasons: BTreeMap<String, u64>,
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
}

#[cfg(test)]
mod tests {
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

    fn simulate(
        until: Option<&str>,
    ) -> (Vec<(String, String, Timestamp)>, Scorecard, Vec<BadLine>) {
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
        // touched and then closed after one attempt without a reason. C is untouched, but the
        // file ends (and the default `until` with it) at 16:00.
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
                    ts("15:00:00")
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
}
