//! The SLA engine, pure: no I/O, no clock reads (time is handed in), no counting or logging (what
//! it notices is returned). One entry point, [`PartitionState::step`]: `(partition state, input,
//! now)` → the records to write in order, what to count and log, and when to wake. The same code
//! runs live (the Kafka shell in `runner`) and over past events (`simulate`).
//!
//! - [`step`]: the entry point's vocabulary: [`step::Input`], [`step::Step`].
//! - [`partition`]: one Kafka partition's leads and their deadlines in one ordered set, and
//!   [`PartitionState::step`].
//! - [`rules`]: the rules file, compiled and validated; [`rules::cel`] evaluates its predicates.
//! - [`state`]: a lead's state, its event-time fold and its changelog record; [`Engine::apply`]
//!   changes it.
//! - [`projection`]: which of a lead's fields it keeps (those something reads).
//! - [`calendar`]: business time. [`deadlines`]: where each SLA deadline is computed.
//! - [`alerts`]: an owed alert turned into what people receive (recipients, message).

pub mod alerts;
pub mod at;
pub mod calendar;
pub mod config;
pub mod deadlines;
pub mod fields;
pub mod footprint;
pub mod partition;
pub mod projection;
pub mod record;
pub mod rules;
pub mod state;
pub mod step;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use jiff::{SignedDuration, Timestamp};

use crate::alert::Alert;
use crate::event::{Change, LeadEvent};
use at::At;
pub use config::{DEFAULT_REORDER_WINDOW, EngineConfig};
use deadlines::Due;
pub use fields::{FieldValue, LeadFields};
pub use partition::PartitionState;
pub use projection::Projection;
use rules::{Facts, Predicate, Rules, Settings};
pub use state::{Closeout, Episode, Fields, Lead, LeadState, Logged, Memo, Patch};
use step::Diagnostic;

/// How long a lead's state is kept once nothing is pending for it.
#[derive(Debug, Clone, Copy)]
pub struct Retention {
    /// After it was closed, converted, deleted or merged.
    pub ended: Duration,
    /// After its last event, otherwise.
    pub idle: Duration,
}

/// What applying an event did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Applied {
    /// The state changed (write it to the changelog).
    Changed,
    /// The event id was already applied; nothing changed.
    Duplicate,
    /// The lead is to be erased (tombstone it).
    Forget,
}

/// What `[lifecycle]` says of a lead after a patch.
#[derive(Debug, Clone, Copy)]
struct Verdict {
    ready: bool,
    closed: bool,
    converted: bool,
}

/// The rules, compiled, and what is needed to evaluate them.
#[derive(Clone)]
pub struct Engine {
    rules: Arc<Rules>,
    reorder_window: SignedDuration,
    retention: Retention,
    /// Source name → link template (`https://…/{id}`) into the CRM.
    links: Arc<HashMap<String, String>>,
    /// Where what the engine notices goes: on the copy of the engine a step works with
    /// ([`Engine::noting`]), its partition's notes; nowhere otherwise.
    notes: Option<Notes>,
    /// Keep every field of a lead, not only those the rules' [`Projection`] keeps: the
    /// reference that projection changes no alert is checked against.
    keep_all: bool,
}

/// What the engine noticed during a step, in order: a partition's, taken at the end of each of
/// its steps.
#[derive(Debug, Clone, Default)]
struct Notes(Arc<Mutex<Vec<Diagnostic>>>);

impl Notes {
    fn take(&self) -> Vec<Diagnostic> {
        std::mem::take(&mut *self.0.lock().expect("notes lock"))
    }
}

impl Engine {
    pub fn new(rules: Arc<Rules>) -> Self {
        Self {
            rules,
            reorder_window: SignedDuration::try_from(DEFAULT_REORDER_WINDOW).expect("fits"),
            retention: EngineConfig::default().retention(),
            links: Arc::new(HashMap::new()),
            notes: None,
            keep_all: false,
        }
    }

    /// The same engine keeping every field of a lead (a reference run; the daemon keeps only
    /// what the rules and alerts read).
    pub fn keeping_every_field(mut self) -> Self {
        self.keep_all = true;
        self
    }

    /// The fields a lead keeps: the rules' [`Projection`], or every field.
    pub fn projection(&self) -> &Projection {
        if self.keep_all {
            &Projection::All
        } else {
            self.rules.kept_fields()
        }
    }

    /// Drops the fields a lead does not keep from its state: one read back from the changelog
    /// (an older version kept every field), or after a rules reload.
    pub fn project(&self, state: &mut LeadState) {
        self.projection().state(state);
    }

    /// How long a lead's state is kept once nothing is pending for it ([`step::Input::Sweep`]).
    pub fn with_retention(mut self, retention: Retention) -> Self {
        self.retention = retention;
        self
    }

    /// How far back in event time a late event still takes its place (see
    /// [`Engine::with_reorder_window`]).
    pub fn reorder_window(&self) -> Duration {
        self.reorder_window.unsigned_abs()
    }

    /// How far back in event time a late event still takes its place in the fold.
    pub fn with_reorder_window(mut self, window: Duration) -> Self {
        self.reorder_window = SignedDuration::try_from(window).unwrap_or(SignedDuration::MAX);
        self
    }

    /// Link templates into the CRM, by source name.
    pub fn with_links(mut self, links: HashMap<String, String>) -> Self {
        self.links = Arc::new(links);
        self
    }

    /// The same engine under other rules (a reload).
    pub fn with_rules(&self, rules: Arc<Rules>) -> Self {
        Self {
            rules,
            ..self.clone()
        }
    }

    pub fn rules(&self) -> &Rules {
        &self.rules
    }

    /// A copy of the engine for one step, noting what it notices in `notes`.
    fn noting(&self, notes: &Notes) -> Self {
        Self {
            notes: Some(notes.clone()),
            ..self.clone()
        }
    }

    /// Notes what the engine noticed, when it is stepping.
    fn note(&self, diagnostic: impl FnOnce() -> Diagnostic) {
        if let Some(notes) = &self.notes {
            notes.0.lock().expect("notes lock").push(diagnostic());
        }
    }

    fn eval(&self, p: &Predicate, facts: &Facts) -> bool {
        match p.eval(&self.rules.cel, facts) {
            Ok(b) => b,
            Err(rules::PredicateError::MissingField { field, .. }) => {
                self.note(|| Diagnostic::RuleMissingField {
                    rule: p.key.clone(),
                    field: Some(field),
                });
                false
            }
            Err(e) => {
                self.note(|| Diagnostic::RuleError {
                    rule: p.key.clone(),
                    error: Some(e),
                });
                false
            }
        }
    }

    /// The verdict of the `[lifecycle]` predicate in `slot` on the lead's fields (`facts`), as
    /// [`Engine::eval`] gives it (and notes it), remembered in `memo` until a field it reads
    /// changes: most events change no field a rule reads. One that reads `change` is evaluated
    /// every time.
    fn judge(&self, memo: &mut Memo, slot: u8, p: &Predicate, facts: &Facts) -> bool {
        if p.uses_change() {
            return self.eval(p, facts);
        }
        match memo.get(slot) {
            Some(state::Verdict::Is(b)) => return b,
            Some(state::Verdict::Missing(j)) => {
                self.note(|| Diagnostic::RuleMissingField {
                    rule: p.key.clone(),
                    field: p.reads().and_then(|r| r.get(j)).cloned(),
                });
                return false;
            }
            None => {}
        }
        let (verdict, remembered) = match p.eval(&self.rules.cel, facts) {
            Ok(b) => (Some(b), Some(state::Verdict::Is(b))),
            Err(rules::PredicateError::MissingField { field, .. }) => {
                let j = p.reads().and_then(|r| r.iter().position(|f| *f == field));
                self.note(|| Diagnostic::RuleMissingField {
                    rule: p.key.clone(),
                    field: Some(field),
                });
                (None, j.map(state::Verdict::Missing))
            }
            Err(e) => {
                self.note(|| Diagnostic::RuleError {
                    rule: p.key.clone(),
                    error: Some(e),
                });
                (None, None)
            }
        };
        memo.set(slot, remembered);
        verdict.unwrap_or(false)
    }

    /// Finds which settings apply to the lead, if its memo does not know, and remembers it: what
    /// [`Engine::settings`] then reads. Silent: [`Engine::settings`] notes the segments that
    /// lacked a field whenever asked, as evaluating them did; a `when` that fails otherwise
    /// leaves it unknown, and [`Engine::settings`] evaluates (and notes) it whenever asked.
    fn know_segment(&self, lead: &mut Lead) {
        lead.memo.under(self.rules.id());
        if self.rules.segments.is_empty() || lead.memo.segment().is_some() {
            return;
        }
        let (mut missing, mut failed) = (0u16, false);
        let segment =
            self.rules.segment_for(
                &Facts::new(&lead.fields),
                |i, was_missing| match u16::try_from(i) {
                    Ok(i) if was_missing && i < 16 => missing |= 1 << i,
                    _ => failed = true,
                },
            );
        if !failed {
            lead.memo.set_segment(segment, missing);
        }
    }

    /// The settings (top level or segment) that apply to a lead now.
    pub fn settings(&self, lead: &Lead) -> Arc<Settings> {
        if self.rules.segments.is_empty() {
            return self.rules.base.clone();
        }
        if lead.memo.holds_for(self.rules.id())
            && let Some((segment, missing)) = lead.memo.segment()
        {
            for (i, s) in self.rules.segments.iter().enumerate().take(16) {
                if missing & (1 << i) != 0 {
                    self.note(|| Diagnostic::RuleMissingField {
                        rule: s.when.key.clone(),
                        field: None,
                    });
                }
            }
            return self.rules.settings_at(segment).clone();
        }
        let facts = Facts::new(&lead.fields);
        self.rules
            .settings_for(&facts, |key, missing| {
                self.note(|| {
                    let rule = key.to_string();
                    if missing {
                        Diagnostic::RuleMissingField { rule, field: None }
                    } else {
                        Diagnostic::RuleError { rule, error: None }
                    }
                })
            })
            .clone()
    }

    /// Applies one event to a lead's state.
    pub fn apply(&self, state: &mut LeadState, event: &LeadEvent) -> Applied {
        let (seen, key) = state::event_hashes(&event.id);
        if !state.remember_hash(seen) {
            return Applied::Duplicate;
        }
        if matches!(event.change, Change::Forgotten {}) {
            return Applied::Forget;
        }
        state.seq += 1;
        let entry = Logged {
            at: At::new(event.occurred_at),
            seq: state.seq,
            event: key,
            source: event.source.clone(),
            // Only the fields something reads enter the state (the window's log, the lead).
            change: self.projection().logged(&event.change),
        };
        let at = state.position(entry.at);
        if state.log.is_empty() {
            // The window opens: keep the lead as it was before it, to fold again from.
            state.open_window();
        }
        // The window holds a few events for an hour: grown one at a time, not doubled.
        state.log.reserve_exact(1);
        if at == state.log.len() {
            // In order: one more step.
            self.step(&mut state.lead, &entry);
            state.log.push(entry);
        } else {
            // Late: in its place, and the window folded again.
            state.log.insert(at, entry);
            self.rebuild(state);
        }
        self.trim(state);
        Applied::Changed
    }

    /// Recomputes the lead from `base` and the window (after a late event, a rules reload).
    pub fn rebuild(&self, state: &mut LeadState) {
        let Some(base) = state.window_base() else {
            return;
        };
        let mut lead = base.clone();
        for entry in &state.log {
            self.step(&mut lead, entry);
        }
        state.lead = lead;
    }

    /// New rules for a lead as it stands: `[lifecycle]` asked again of its current fields at
    /// `now` — an episode the new rules no longer see ends, one they now see begins (its clocks
    /// from `now`). Nothing is folded again: past close-outs stay judged as they were, and a close
    /// this reveals is not judged (it did not happen now).
    pub fn reevaluate(&self, state: &mut LeadState, now: Timestamp) {
        let lead = &mut state.lead;
        // Which settings apply, known before deadlines are computed from them.
        self.know_segment(lead);
        if lead.fields.is_empty() {
            return;
        }
        let l = &self.rules.lifecycle;
        // A rule that reads `change` is judged at events only: with no event, `change` is
        // empty, and asking it now would end or start episodes no event did.
        if [
            Some(&l.sales_ready),
            l.closed.as_ref(),
            l.converted.as_ref(),
        ]
        .into_iter()
        .flatten()
        .any(Predicate::uses_change)
        {
            return;
        }
        let now = At::new(now);
        let at = lead.last_event_at.map_or(now, |t| t.max(now));
        let facts = Facts::new(&lead.fields);
        let verdict = Verdict {
            ready: self.eval(&l.sales_ready, &facts),
            closed: l.closed.as_ref().is_some_and(|p| self.eval(p, &facts)),
            converted: l.converted.as_ref().is_some_and(|p| self.eval(p, &facts)),
        };
        let before = (lead.episode.is_some(), lead.ended_at.is_some());
        let ended = verdict.closed || verdict.converted;
        let after = (
            // An open episode stays open whatever `sales_ready` says now.
            !ended && lead.deleted_at.is_none() && (verdict.ready || lead.episode.is_some()),
            ended,
        );
        if before != after {
            self.lifecycle(lead, at, verdict, false);
        }
    }

    /// Folds the events that are out of the reorder window by now (`now` minus the window) into
    /// `base`; a lead with none left keeps one copy of itself. Returns whether a window remains.
    pub fn settle(&self, state: &mut LeadState, now: Timestamp) -> bool {
        self.trim_before(state, now);
        !state.log.is_empty()
    }

    /// Folds events older than the reorder window (counted back from the newest) into `base`.
    fn trim(&self, state: &mut LeadState) {
        if let Some(newest) = state.log.last().map(|e| e.at) {
            self.trim_before(state, newest.ts());
        }
    }

    fn trim_before(&self, state: &mut LeadState, now: Timestamp) {
        let horizon = At::new(
            now.saturating_sub(self.reorder_window)
                .unwrap_or(Timestamp::MIN),
        );
        let old = state
            .log
            .iter()
            .take_while(|e| e.at < horizon)
            .count()
            .max(state.log.len().saturating_sub(state::LOG_MAX));
        if old == 0 {
            return;
        }
        if old == state.log.len() {
            // Let go of the window's vector too, not only its events: a closed window is how
            // most leads spend their life.
            state.log = Vec::new();
            state.base = None;
            return;
        }
        // No base kept: the window opened on the empty lead.
        let base = state.base.get_or_insert_with(Box::default);
        for entry in state.log.drain(..old) {
            self.step(base, &entry);
        }
    }

    /// One event folded into a lead, in event-time order.
    fn step(&self, lead: &mut Lead, e: &Logged) {
        let at = e.at;
        lead.last_event_at = Some(lead.last_event_at.map_or(at, |t| t.max(at)));
        if lead.source.as_deref() != Some(e.source.as_str()) {
            lead.source = Some(e.source.clone());
        }
        lead.origin.get_or_insert_with(|| e.source.clone());
        match &e.change {
            Patch::Updated(fields) => {
                // A change after a deletion is the record back (HubSpot's restore, an undelete).
                if lead.deleted_at.is_some_and(|d| at > d) {
                    lead.deleted_at = None;
                }
                // Only a patch naming them can change the reason and detail.
                let before = |name: &str| fields.contains_key(name).then(|| lead.text(name));
                let disposition_before =
                    (before("disposition_reason"), before("disposition_detail"));
                lead.memo.under(self.rules.id());
                let touch_rule = self.rules.lifecycle.touch.as_ref();
                let touch_before = touch_rule
                    .map(|p| self.judge(&mut lead.memo, Memo::TOUCH, p, &Facts::new(&lead.fields)));
                // What the patch changes makes stale what the rules reading it said.
                let mut stale = 0;
                for (k, v) in fields.named() {
                    // A patch older than the value it would replace does not undo it.
                    if lead.fields.set(k, v, at) == Some(true) {
                        stale |= self.rules.slots_reading(k);
                    }
                }
                lead.memo.forget(stale);
                if disposition_before
                    .0
                    .is_some_and(|b| !lead.text_is("disposition_reason", b.as_deref()))
                {
                    lead.reason_changed_at = Some(at);
                }
                if disposition_before
                    .1
                    .is_some_and(|b| !lead.text_is("disposition_detail", b.as_deref()))
                {
                    lead.detail_changed_at = Some(at);
                }
                let l = &self.rules.lifecycle;
                // The patch as a map only for rules that read `change` (the shipped ones do not).
                let change = if [
                    Some(&l.sales_ready),
                    l.closed.as_ref(),
                    l.converted.as_ref(),
                ]
                .into_iter()
                .chain([touch_rule])
                .flatten()
                .any(Predicate::uses_change)
                {
                    fields.to_map()
                } else {
                    serde_json::Map::new()
                };
                let facts = Facts::with_change(&lead.fields, &change);
                let memo = &mut lead.memo;
                let verdict = Verdict {
                    ready: self.judge(memo, Memo::SALES_READY, &l.sales_ready, &facts),
                    closed: l
                        .closed
                        .as_ref()
                        .is_some_and(|p| self.judge(memo, Memo::CLOSED, p, &facts)),
                    converted: l
                        .converted
                        .as_ref()
                        .is_some_and(|p| self.judge(memo, Memo::CONVERTED, p, &facts)),
                };
                let touched = match (touch_rule, touch_before) {
                    (Some(p), Some(false)) => self.judge(memo, Memo::TOUCH, p, &facts),
                    _ => false,
                };
                self.know_segment(lead);
                self.lifecycle(lead, at, verdict, true);
                if touched {
                    lead.add_touch(state::Touch { at, event: e.event });
                }
            }
            Patch::Other(other) => match &**other {
                Change::Activity { activity } => {
                    lead.last_activity_at = Some(lead.last_activity_at.map_or(at, |t| t.max(at)));
                    if self
                        .rules
                        .touch_kinds
                        .iter()
                        .any(|k| k.eq_ignore_ascii_case(activity.kind.trim()))
                        && self.activity_counts(lead, activity)
                    {
                        lead.add_touch(state::Touch { at, event: e.event });
                    }
                }
                Change::Deleted {} | Change::Merged { .. } => {
                    lead.deleted_at = Some(at);
                    lead.ended_at = Some(at);
                    lead.episode = None;
                }
                // A patch is never kept as `Other` (see `Patch::from`).
                Change::Forgotten {} | Change::Updated { .. } => {}
            },
        }
        // A close-out is judged on the lead as it was at that moment: what events stamped with
        // the same instant (applied after it) set counts too. Its reason and detail are judged
        // as they stand `reason_grace` after the close (a reason sent as its own update a moment
        // later is the close's reason), unless the lead is sales-ready again by then.
        if let Some(c) = lead.closeouts.last() {
            let settings = self.settings(lead);
            let grace = settings
                .disposition
                .as_ref()
                .map_or(SignedDuration::ZERO, |d| d.reason_grace);
            let same = c.closed_at == at;
            let in_grace = lead.episode.is_none()
                && at > c.closed_at
                && at
                    <= At::new(
                        c.closed_at
                            .ts()
                            .saturating_add(grace)
                            .unwrap_or(Timestamp::MAX),
                    );
            if same || in_grace {
                let (reason, detail) = lead.disposition_since(c.sales_ready_at);
                let attempts = lead.touches_between(c.sales_ready_at, c.closed_at);
                let last_touch_at = lead.last_touch_between(c.sales_ready_at, c.closed_at);
                let last_activity_at = lead.last_activity_at;
                let c = lead.closeouts.last_mut().expect("checked");
                c.reason = reason;
                c.detail = detail;
                if same {
                    c.attempts = attempts;
                    c.last_activity_at = last_activity_at;
                    c.last_touch_at = last_touch_at;
                }
                c.owes = deadlines::judge(c, &settings);
                // Kept for the lead's life: no room left unused.
                c.owes.shrink_to_fit();
            }
        }
    }

    /// Whether an activity was a person's, so it counts as a touch and an attempt. By default:
    /// not when its source marks it `automated` (a nurture email, a sequence step); otherwise
    /// when its `by` is absent (the source does not say), the lead's owner, or someone in
    /// `[directory]` (compared trimmed and case-insensitively). `[first_touch] touch_counts`
    /// replaces the default. Activities that do not count still show the lead is active.
    fn activity_counts(&self, lead: &Lead, activity: &crate::event::Activity) -> bool {
        if let Some(p) = &self.rules.touch_counts {
            // The activity as the predicate sees it: its canonical fields, as on the wire.
            let view = match serde_json::to_value(activity) {
                Ok(serde_json::Value::Object(map)) => map,
                _ => serde_json::Map::new(),
            };
            return self.eval(p, &Facts::with_activity(&lead.fields, &view));
        }
        if activity.automated {
            return false;
        }
        let Some(by) = activity
            .by
            .as_deref()
            .map(str::trim)
            .filter(|b| !b.is_empty())
        else {
            return true;
        };
        let same = |id: &str| id.trim().eq_ignore_ascii_case(by);
        lead.owner.as_deref().is_some_and(same)
            || self
                .rules
                .directory
                .iter()
                .any(|(id, person)| same(id) || person.email.as_deref().is_some_and(same))
    }

    /// Owner, sales-readiness, close and conversion after a patch, and what they mean for the
    /// episode and its clocks.
    /// `judge`: a close is judged by the close-out rules (not when new rules are applied to a
    /// lead that had no event).
    fn lifecycle(&self, lead: &mut Lead, at: At, verdict: Verdict, judge: bool) {
        if !lead.text_is("owner", lead.owner.as_deref()) || lead.owner_since.is_none() {
            lead.owner = lead.text("owner");
            lead.owner_since = Some(at);
        }
        let Verdict {
            ready,
            closed,
            converted,
        } = verdict;
        if closed || converted {
            lead.ended_at.get_or_insert(at);
        } else if lead.deleted_at.is_none() {
            lead.ended_at = None;
        }
        // An episode is the handoff's whole life in sales: it ends only when the lead is closed,
        // converted, deleted or merged away, whatever `sales_ready` says while sales works it
        // ("Working - Contacted" is not sales-ready, and still the same handoff).
        let ended = closed || converted || lead.deleted_at.is_some();

        if ended && let Some(episode) = lead.episode.take() {
            // Closing (not converting) a lead that was sales-ready is judged by the close-out
            // rules.
            if judge && closed && !converted {
                let closeout = Closeout {
                    closed_at: at,
                    owner: lead.owner.clone(),
                    sales_ready_at: episode.started_at,
                    reason: lead.disposition_since(episode.started_at).0,
                    detail: lead.disposition_since(episode.started_at).1,
                    attempts: lead.touches_between(episode.started_at, at),
                    last_activity_at: lead.last_activity_at,
                    last_touch_at: lead.last_touch_between(episode.started_at, at),
                    owes: Vec::new(),
                };
                lead.push_closeout(closeout);
            }
        }
        if ready && !ended && lead.episode.is_none() {
            lead.episode = Some(Episode {
                started_at: at,
                unassigned_since: None,
                clock: None,
                handed_off_at: None,
            });
        }
        let owner_since = lead.owner_since.unwrap_or(at);
        if let Some(episode) = lead.episode.as_mut() {
            match &lead.owner {
                None => {
                    episode.clock = None;
                    episode
                        .unassigned_since
                        .get_or_insert(episode.started_at.max(owner_since));
                }
                Some(owner) => {
                    episode.unassigned_since = None;
                    if episode.clock.as_ref().is_none_or(|c| &c.owner != owner) {
                        let started_at = episode.started_at.max(owner_since);
                        episode.handed_off_at.get_or_insert(started_at);
                        episode.clock = Some(state::Clock {
                            started_at,
                            owner: owner.clone(),
                        });
                    }
                }
            }
        }
    }

    /// Every alert the lead is still owed (not fired, not cancelled), earliest first.
    fn pending<'a>(&self, state: &'a LeadState, settings: &'a Settings) -> Vec<Due<'a>> {
        let mut owed: Vec<Due> = deadlines::owed(&state.lead, settings)
            .into_iter()
            .filter(|d| Self::unfired(state, d))
            .collect();
        owed.sort_by_key(|d| (d.fire_at, d.level));
        owed
    }

    /// Whether an owed alert is still to fire: neither it nor one that said it already fired.
    fn unfired(state: &LeadState, d: &Due) -> bool {
        !state.has_fired(d.rule, d.level, At::new(d.clock), d.variant)
            && d.said_by
                .is_none_or(|s| !state.has_fired(s.rule, s.level, At::new(s.clock), s.variant))
    }

    /// The next instant at which [`Engine::fire_due`] has something to do for this lead.
    pub fn next_deadline(&self, state: &LeadState) -> Option<Timestamp> {
        if state.lead.episode.is_none() && state.lead.closeouts.is_empty() {
            return None;
        }
        let settings = self.settings(&state.lead);
        deadlines::owed(&state.lead, &settings)
            .iter()
            .filter(|d| Self::unfired(state, d))
            .map(|d| d.fire_at)
            .min()
    }

    /// As [`Engine::fire_due_with`], with a rotation of its own (one lead at a time).
    pub fn fire_due(&self, key: &str, state: &mut LeadState, now: Timestamp) -> Vec<Alert> {
        self.fire_due_with(key, state, now, &mut alerts::Rotation::new())
    }

    /// Alerts due at `now` for this lead, earliest first; marks them fired in the state. A
    /// reminder whose deadline has also passed (the daemon was down) is superseded by the breach.
    /// Suggested new owners come from `rotation`, which moves on.
    pub fn fire_due_with(
        &self,
        key: &str,
        state: &mut LeadState,
        now: Timestamp,
        rotation: &mut alerts::Rotation,
    ) -> Vec<Alert> {
        let settings = self.settings(&state.lead);
        let due: Vec<Due> = self
            .pending(state, &settings)
            .into_iter()
            .filter(|d| d.fire_at <= now)
            .collect();
        let mut alerts = Vec::new();
        // What each due alert's id is made of: marked fired once they are all built.
        let mut fired = Vec::with_capacity(due.len());
        for d in &due {
            fired.push((d.rule, d.level, d.clock, d.variant));
            // A reminder of a deadline already passed (the daemon was down, the rules changed)
            // is no use: the breach says it.
            let superseded = d.kind == deadlines::REMINDER && d.deadline <= now;
            if superseded {
                continue;
            }
            // The link of the system the lead came from (its key names that system).
            let link = [&state.lead.origin, &state.lead.source]
                .into_iter()
                .flatten()
                .find_map(|s| self.links.get(s))
                .map(String::as_str);
            let alert = alerts::build(
                &self.rules,
                &settings,
                key,
                &state.lead,
                d,
                now,
                link,
                rotation,
            );
            if alert.data.recipients.is_empty() {
                // Still delivered (routes go by role), but no one is named: an owner missing
                // from `[directory]`, or a manager nobody recorded.
                self.note(|| Diagnostic::NoRecipients {
                    lead: key.to_string(),
                    kind: alert.kind.clone(),
                    to: alert.data.to.clone(),
                });
            }
            alerts.push(alert);
        }
        drop(due);
        for (rule, level, clock, variant) in fired {
            state.mark_fired(rule, level, At::new(clock), variant);
        }
        alerts
    }

    /// Undoes the firing of `alert` (its write to Kafka failed for good), so it fires again.
    pub fn unfire(&self, state: &mut LeadState, alert: &Alert) {
        let d = &alert.data;
        state.unmark_fired(
            &d.rule,
            d.level,
            At::new(d.clock_started_at),
            deadlines::variant_of(&alert.kind),
        );
    }

    /// Whether a lead can be dropped: nothing pending, and either it ended (closed, converted,
    /// deleted, merged) `retention.ended` ago, or it has had no event for `retention.idle`.
    pub fn expired(&self, state: &LeadState, now: Timestamp) -> bool {
        let retention = self.retention;
        let past = |t: Option<At>, d: Duration| {
            let d = SignedDuration::try_from(d).unwrap_or(SignedDuration::MAX);
            t.is_some_and(|t| t.ts().saturating_add(d).unwrap_or(Timestamp::MAX) <= now)
        };
        let lead = &state.lead;
        let due = past(lead.ended_at, retention.ended)
            || past(lead.last_event_at, retention.idle)
            || lead.last_event_at.is_none();
        due && self.next_deadline(state).is_none()
    }
}

#[cfg(test)]
mod tests;
