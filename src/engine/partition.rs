//! One Kafka partition's leads and their deadlines — all deadlines in one ordered set, so the
//! shell sleeps until the earliest (mini-redis' expiry pattern), never a task per lead — and the
//! engine's one entry point, [`PartitionState::step`]: every decision about a partition's input is
//! made here, and the shell only carries it out.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::Arc;

use foldhash::fast::RandomState;
use jiff::Timestamp;

use super::at::At;
use super::state::{Armed, Held};
use super::step::{Diagnostic, Input, LeadWrite, Records, Step, Write};
use super::{Applied, Engine, LeadState, Notes, footprint};
use crate::alert::Alert;
use crate::event::LeadEvent;

#[derive(Debug, Default)]
pub struct PartitionState {
    /// Each lead's state, boxed: a table keeps up to half its slots empty, and a slot of the
    /// state itself (over 500 bytes) cost more than the state's own heap (issue 13).
    /// Each key is held once and shared with `timers` and `windowed`; the deadline a lead is
    /// armed at, to find its entry in `timers`, is kept in its state ([`Armed`]).
    /// Hashed with foldhash (seeded per process) rather than SipHash: an event hashes its lead's
    /// key about 7 times across these maps (issue 13).
    leads: HashMap<Arc<str>, Box<LeadState>, RandomState>,
    /// `(deadline, lead)` for every lead with something due.
    timers: BTreeSet<(At, Arc<str>)>,
    /// Leads with events in their reorder window (two copies of themselves until it closes).
    windowed: HashSet<Arc<str>, RandomState>,
    /// Where the pools' round-robin stands in this partition.
    rotation: super::alerts::Rotation,
    /// The rotation moved since it was last written.
    rotation_moved: bool,
    /// Every message accepted so far has been read ([`Input::End`], and no message since).
    at_end: bool,
    /// The newest `received_at` of the events read: every event received before it has been read.
    seen_until: Option<Timestamp>,
    /// What the engine notices during a step (see [`Engine::noting`]).
    notes: Notes,
    /// About the bytes the leads hold ([`footprint`]): counted anew at each sweep, restore,
    /// reload and shrink, and moved by each event in between.
    held: usize,
}

/// What a step decided, in order, before its writes are handed out (they borrow the states).
#[derive(Default)]
struct Plan {
    writes: Vec<Planned>,
    diagnostics: Vec<Diagnostic>,
}

enum Planned {
    /// A lead's alerts, then its state (`state`) or its tombstone.
    Lead {
        lead: String,
        alerts: Vec<Alert>,
        state: bool,
    },
    /// The partition's rotation record.
    Rotation(Vec<u8>),
}

impl Plan {
    fn lead(&mut self, lead: &str, alerts: Vec<Alert>, state: bool) {
        self.writes.push(Planned::Lead {
            lead: lead.to_string(),
            alerts,
            state,
        });
    }
}

/// The key of the partition's own record in the state changelog (the round-robin of the pools).
/// Starts with a control character, which no lead key has (ingest refuses them).
pub const ROTATION_KEY: &str = "\u{1}leadwatch.rotation";

impl PartitionState {
    /// The engine's one entry point: what `input`, happening at `now`, does to the partition,
    /// and what the shell is to do about it — the records to write, in order, what to count and
    /// log, and when to wake next (see [`Input`] and [`Step`]). Pure: no I/O, no clock.
    pub fn step(&mut self, engine: &Engine, input: Input<'_>, now: Timestamp) -> Step<'_> {
        // What the engine notices on the way (rules that fail) is noted on this step's copy.
        let engine = engine.noting(&self.notes);
        let mut plan = Plan::default();
        match input {
            Input::Event(event) => self.on_event(&engine, event, &mut plan),
            Input::NotAnEvent => self.at_end = false,
            Input::End => self.at_end = true,
            Input::Tick => self.on_tick(&engine, now, usize::MAX, &mut plan),
            Input::TickUpTo(most) => self.on_tick(&engine, now, most, &mut plan),
            Input::Sweep => {
                self.close_windows(&engine, now);
                for lead in self.drop_expired(&engine, now) {
                    plan.lead(&lead, Vec::new(), false);
                    plan.diagnostics.push(Diagnostic::Expired { lead });
                }
                self.count_held();
            }
            Input::Shrink => {
                let windowed = self.windowed.len();
                self.close_windows(&engine, now);
                self.count_held();
                plan.diagnostics.push(Diagnostic::WindowShrunk {
                    folded: windowed - self.windowed.len(),
                });
            }
            Input::Restore(records) => {
                let unreadable = self.put_back(records);
                if !unreadable.is_empty() {
                    plan.diagnostics
                        .push(Diagnostic::Unreadable { keys: unreadable });
                }
                self.look_again(&engine, now);
                self.count_held();
            }
            Input::Reload => {
                self.look_again(&engine, now);
                self.count_held();
            }
            Input::Unwritten(alerts) => {
                for alert in alerts {
                    self.fire_again(&engine, alert);
                }
            }
        }
        let mut diagnostics = self.notes.take();
        if diagnostics.is_empty() {
            diagnostics = plan.diagnostics;
        } else {
            diagnostics.append(&mut plan.diagnostics);
        }
        let wake = self.at_end.then(|| self.next_deadline()).flatten();
        // The states are handed out as they stand after the step, for the shell to encode.
        let leads = &self.leads;
        let writes = plan
            .writes
            .into_iter()
            .filter_map(|planned| match planned {
                Planned::Lead {
                    lead,
                    alerts,
                    state,
                } => {
                    // Planned only for leads the step keeps.
                    let state = if state {
                        Some(&**leads.get(lead.as_str())?)
                    } else {
                        None
                    };
                    Some(Write::Lead(LeadWrite {
                        lead,
                        alerts,
                        state,
                    }))
                }
                Planned::Rotation(rotation) => Some(Write::Rotation(rotation)),
            })
            .collect();
        Step {
            writes,
            diagnostics,
            wake,
        }
    }

    pub fn len(&self) -> usize {
        self.leads.len()
    }

    /// About the bytes this partition's leads hold in memory ([`footprint::of_state`]).
    pub fn held_bytes(&self) -> usize {
        self.held
    }

    fn count_held(&mut self) {
        self.held = self
            .leads
            .values_mut()
            .map(|state| {
                state.held = Held(footprint::of_state(state));
                state.held.0
            })
            .sum();
    }

    pub fn is_empty(&self) -> bool {
        self.leads.is_empty()
    }

    pub fn lead(&self, key: &str) -> Option<&LeadState> {
        self.leads.get(key).map(|s| &**s)
    }

    /// Every lead and its state.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &LeadState)> {
        self.leads.iter().map(|(k, s)| (&**k, &**s))
    }

    /// The earliest deadline in this partition.
    pub fn next_deadline(&self) -> Option<Timestamp> {
        self.timers.first().map(|(t, _)| t.ts())
    }

    /// Applies an event: the lead's new state to write (or its tombstone), nothing for a
    /// duplicate.
    fn on_event(&mut self, engine: &Engine, event: &LeadEvent, plan: &mut Plan) {
        self.seen_until = Some(
            self.seen_until
                .map_or(event.received_at, |t| t.max(event.received_at)),
        );
        self.at_end = false;
        let key = &event.lead;
        // The key is copied for a lead not seen before only.
        if !self.leads.contains_key(key.as_str()) {
            self.leads.insert(Arc::from(key.as_str()), Box::default());
        }
        let state = self.leads.get_mut(key.as_str()).expect("inserted");
        let applied = engine.apply(state, event);
        let held = footprint::of_state(state);
        self.held = (self.held + held).saturating_sub(state.held.0);
        state.held = Held(held);
        match applied {
            Applied::Duplicate => plan.diagnostics.push(Diagnostic::Duplicate),
            Applied::Forget => {
                self.remove(key);
                plan.lead(key, Vec::new(), false);
                plan.diagnostics
                    .push(Diagnostic::Forgotten { lead: key.clone() });
            }
            Applied::Changed => {
                if !self.windowed.contains(key.as_str())
                    && let Some((shared, _)) = self.leads.get_key_value(key.as_str())
                {
                    self.windowed.insert(shared.clone());
                }
                self.rearm(engine, key);
                plan.lead(key, Vec::new(), true);
                plan.diagnostics.push(Diagnostic::Applied);
            }
        }
    }

    /// Deadlines up to this instant may fire: `now` once every event accepted so far has been
    /// read. Otherwise the partition is behind, and a touch that happened in time but still waits
    /// in it must get its chance to cancel the breach first.
    fn horizon(&self, now: Timestamp) -> Option<Timestamp> {
        if self.at_end {
            Some(now)
        } else {
            self.seen_until.map(|t| t.min(now))
        }
    }

    /// How many leads have a deadline due by the horizon at `now` (not fired yet).
    pub fn due(&self, now: Timestamp) -> usize {
        let Some(horizon) = self.horizon(now) else {
            return 0;
        };
        let horizon = At::new(horizon);
        self.timers
            .iter()
            .take_while(|(deadline, _)| *deadline <= horizon)
            .count()
    }

    /// Fires what is due by the horizon (of at most `most` leads, the earliest first), stamped
    /// `now`: per lead, its alerts, then its state that says they fired; then the rotation, if
    /// it moved.
    fn on_tick(&mut self, engine: &Engine, now: Timestamp, most: usize, plan: &mut Plan) {
        let Some(horizon) = self.horizon(now) else {
            return;
        };
        if self.next_deadline().is_none_or(|d| d > horizon) {
            return;
        }
        for (lead, mut alerts) in self.fire(engine, horizon, most) {
            // Then the state as it is now, recording these alerts as fired.
            if !self.leads.contains_key(lead.as_str()) {
                continue;
            }
            for alert in &mut alerts {
                alert.timestamp = now;
                plan.diagnostics.push(Diagnostic::AlertFired {
                    id: alert.id().to_string(),
                    lead: alert.data.lead.clone(),
                    kind: alert.kind.clone(),
                });
            }
            plan.lead(&lead, alerts, true);
        }
        // The pools' round-robin moved: kept in this partition of the changelog, so the next
        // owner of the partition goes on from there.
        if std::mem::take(&mut self.rotation_moved) {
            let rotation = serde_json::to_vec(&self.rotation).expect("rotation serializes");
            plan.writes.push(Planned::Rotation(rotation));
        }
    }

    /// Closes the reorder windows that `now` has left behind, so quiet leads hold one copy of
    /// themselves.
    fn close_windows(&mut self, engine: &Engine, now: Timestamp) {
        let leads = &mut self.leads;
        self.windowed.retain(|key| {
            leads
                .get_mut(key)
                .is_some_and(|state| engine.settle(state, now))
        });
    }

    fn remove(&mut self, key: &str) {
        self.windowed.remove(key);
        if let Some((key, state)) = self.leads.remove_entry(key) {
            self.held = self.held.saturating_sub(state.held.0);
            if let Armed(Some(old)) = state.armed {
                self.timers.remove(&(old, key));
            }
        }
    }

    /// Drops leads past their retention (see [`Engine::expired`]); returns their keys.
    fn drop_expired(&mut self, engine: &Engine, now: Timestamp) -> Vec<String> {
        let gone: Vec<String> = self
            .leads
            .iter()
            .filter(|(_, s)| engine.expired(s, now))
            .map(|(k, _)| k.to_string())
            .collect();
        for key in &gone {
            self.remove(key);
        }
        gone
    }

    /// Puts back the records read from the changelog: leads' states, and the partition's
    /// rotation. Returns how many could not be read.
    fn put_back(&mut self, records: Records) -> Vec<String> {
        let mut unreadable = Vec::new();
        for (key, bytes) in records {
            if key == ROTATION_KEY {
                match serde_json::from_slice(&bytes) {
                    Ok(rotation) => self.rotation = rotation,
                    Err(_) => unreadable.push(key),
                }
                continue;
            }
            let Some(state) = LeadState::decode(&bytes) else {
                unreadable.push(key);
                continue;
            };
            let key: Arc<str> = key.into();
            if !state.log.is_empty() {
                self.windowed.insert(key.clone());
            }
            // Armed by [`Self::look_again`], which a restore goes on to, once it is under the
            // rules in force.
            self.leads.insert(key, Box::new(state));
        }
        unreadable
    }

    /// New rules at `now`: every lead keeps only the fields they read ([`Engine::project`]), is
    /// looked at again under them (see [`Engine::reevaluate`]), and its deadlines recomputed.
    fn look_again(&mut self, engine: &Engine, now: Timestamp) {
        self.timers.clear();
        // Nothing is armed now: each lead's deadline goes straight in.
        for (key, state) in &mut self.leads {
            // Restored records may hold fields these rules do not read (an older version kept
            // them all; the rules before a reload read others).
            engine.project(state);
            engine.reevaluate(state, now);
            let deadline = engine.next_deadline(state).map(At::new);
            state.armed = Armed(deadline);
            if let Some(deadline) = deadline {
                self.timers.insert((deadline, key.clone()));
            }
        }
    }

    fn rearm(&mut self, engine: &Engine, key: &str) {
        let Some((shared, _)) = self.leads.get_key_value(key) else {
            return;
        };
        let shared = shared.clone();
        let state = self.leads.get_mut(key).expect("found");
        if let Some(old) = state.armed.0.take() {
            self.timers.remove(&(old, shared.clone()));
        }
        if let Some(deadline) = engine.next_deadline(state).map(At::new) {
            state.armed = Armed(Some(deadline));
            self.timers.insert((deadline, shared));
        }
    }

    /// Fires what is due at `now`, of at most `most` leads: per lead, its key and alerts. The
    /// lead's state now records them as fired.
    fn fire(&mut self, engine: &Engine, now: Timestamp, most: usize) -> Vec<(String, Vec<Alert>)> {
        let mut fired = Vec::new();
        let mut looked = 0;
        while let Some((deadline, key)) = self.timers.first().cloned() {
            if deadline > At::new(now) || looked == most {
                break;
            }
            looked += 1;
            self.timers.pop_first();
            if let Some(state) = self.leads.get_mut(&*key) {
                state.armed = Armed(None);
                let before = self.rotation.clone();
                let alerts = engine.fire_due_with(&key, state, now, &mut self.rotation);
                self.rotation_moved |= self.rotation != before;
                if !alerts.is_empty() {
                    fired.push((key.to_string(), alerts));
                }
            }
            self.rearm(engine, &key);
        }
        fired
    }

    /// Lets `alert` fire again (its write to Kafka failed).
    fn fire_again(&mut self, engine: &Engine, alert: &Alert) {
        if let Some(state) = self.leads.get_mut(alert.data.lead.as_str()) {
            engine.unfire(state, alert);
            self.rearm(engine, &alert.data.lead);
        }
    }
}
