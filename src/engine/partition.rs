//! One Kafka partition's leads and their deadlines: all deadlines in one ordered set, so the
//! runner sleeps until the earliest (mini-redis' expiry pattern), never a task per lead.

use std::collections::{BTreeSet, HashMap};

use jiff::Timestamp;

use super::{Applied, Engine, LeadState};
use crate::alert::Alert;
use crate::event::LeadEvent;

/// What an applied event means for the changelog.
#[derive(Debug, PartialEq)]
pub enum Write<'a> {
    /// Nothing changed (a duplicate).
    Nothing,
    /// Write the lead's new state.
    State(&'a LeadState),
    /// Erase the lead.
    Tombstone,
}

#[derive(Debug, Default)]
pub struct PartitionState {
    leads: HashMap<String, LeadState>,
    /// `(deadline, lead)` for every lead with something due.
    timers: BTreeSet<(Timestamp, String)>,
    /// The deadline each lead is armed at, to find its entry in `timers`.
    armed: HashMap<String, Timestamp>,
    /// Leads with events in their reorder window (two copies of themselves until it closes).
    windowed: std::collections::HashSet<String>,
    /// Where the pools' round-robin stands in this partition.
    rotation: super::alerts::Rotation,
    /// The rotation moved since it was last written.
    rotation_moved: bool,
}

/// The key of the partition's own record in the state changelog (the round-robin of the pools).
/// Starts with a control character, which no lead key has (ingest refuses them).
pub const ROTATION_KEY: &str = "\u{1}leadwatch.rotation";

impl PartitionState {
    pub fn len(&self) -> usize {
        self.leads.len()
    }

    pub fn is_empty(&self) -> bool {
        self.leads.is_empty()
    }

    pub fn lead(&self, key: &str) -> Option<&LeadState> {
        self.leads.get(key)
    }

    /// Applies an event; says what to write to the changelog.
    pub fn apply(&mut self, engine: &Engine, event: &LeadEvent) -> Write<'_> {
        let state = self.leads.entry(event.lead.clone()).or_default();
        match engine.apply(state, event) {
            Applied::Duplicate => Write::Nothing,
            Applied::Forget => {
                self.remove(&event.lead);
                Write::Tombstone
            }
            Applied::Changed => {
                self.windowed.insert(event.lead.clone());
                self.rearm(engine, &event.lead);
                match self.leads.get(&event.lead) {
                    Some(state) => Write::State(state),
                    None => Write::Nothing,
                }
            }
        }
    }

    /// Closes the reorder windows that `now` has left behind, so quiet leads hold one copy of
    /// themselves; returns how many leads still have one open.
    pub fn settle(&mut self, engine: &Engine, now: Timestamp) -> usize {
        let leads = &mut self.leads;
        self.windowed.retain(|key| {
            leads
                .get_mut(key)
                .is_some_and(|state| engine.settle(state, now))
        });
        self.windowed.len()
    }

    fn remove(&mut self, key: &str) {
        self.windowed.remove(key);
        self.leads.remove(key);
        if let Some(old) = self.armed.remove(key) {
            self.timers.remove(&(old, key.to_string()));
        }
    }

    /// Drops leads past their retention (see [`Engine::expired`]); returns their keys (to
    /// tombstone).
    pub fn expire(
        &mut self,
        engine: &Engine,
        now: Timestamp,
        retention: super::Retention,
    ) -> Vec<String> {
        let gone: Vec<String> = self
            .leads
            .iter()
            .filter(|(_, s)| engine.expired(s, now, retention))
            .map(|(k, _)| k.clone())
            .collect();
        for key in &gone {
            self.remove(key);
        }
        gone
    }

    /// The rotation to write to the changelog (under [`ROTATION_KEY`], in this partition), when
    /// it moved since the last call.
    pub fn take_rotation(&mut self) -> Option<Vec<u8>> {
        std::mem::take(&mut self.rotation_moved)
            .then(|| serde_json::to_vec(&self.rotation).expect("rotation serializes"))
    }

    /// Puts back a record read from the changelog: a lead's state, or the partition's rotation.
    /// Returns false when it cannot be read.
    pub fn restore_record(&mut self, engine: &Engine, key: String, bytes: &[u8]) -> bool {
        if key == ROTATION_KEY {
            return match serde_json::from_slice(bytes) {
                Ok(rotation) => {
                    self.rotation = rotation;
                    true
                }
                Err(_) => false,
            };
        }
        match serde_json::from_slice::<LeadState>(bytes) {
            Ok(state) => {
                self.restore(engine, key, state);
                true
            }
            Err(_) => false,
        }
    }

    /// Puts a lead's state back as it was known (restore from the changelog).
    pub fn restore(&mut self, engine: &Engine, key: String, state: LeadState) {
        if !state.log.is_empty() {
            self.windowed.insert(key.clone());
        }
        self.leads.insert(key.clone(), state);
        self.rearm(engine, &key);
    }

    /// New rules at `now`: every lead looked at again under them (see [`Engine::reevaluate`]),
    /// and its deadlines recomputed.
    pub fn reload(&mut self, engine: &Engine, now: Timestamp) {
        self.timers.clear();
        self.armed.clear();
        let keys: Vec<String> = self.leads.keys().cloned().collect();
        for key in keys {
            if let Some(state) = self.leads.get_mut(&key) {
                engine.reevaluate(state, now);
            }
            self.rearm(engine, &key);
        }
    }

    /// Every lead and its state.
    pub fn iter(&self) -> impl Iterator<Item = (&String, &LeadState)> {
        self.leads.iter()
    }

    fn rearm(&mut self, engine: &Engine, key: &str) {
        if let Some(old) = self.armed.remove(key) {
            self.timers.remove(&(old, key.to_string()));
        }
        if let Some(deadline) = self.leads.get(key).and_then(|s| engine.next_deadline(s)) {
            self.timers.insert((deadline, key.to_string()));
            self.armed.insert(key.to_string(), deadline);
        }
    }

    /// The earliest deadline in this partition.
    pub fn next_deadline(&self) -> Option<Timestamp> {
        self.timers.first().map(|(t, _)| *t)
    }

    /// Fires everything due at `now`: per lead, its key and alerts. The lead's state now records
    /// them as fired; write it ([`PartitionState::lead`]) only after they are written.
    pub fn fire_due(&mut self, engine: &Engine, now: Timestamp) -> Vec<(String, Vec<Alert>)> {
        let mut fired = Vec::new();
        while let Some((deadline, key)) = self.timers.first().cloned() {
            if deadline > now {
                break;
            }
            self.timers.pop_first();
            self.armed.remove(&key);
            if let Some(state) = self.leads.get_mut(&key) {
                let before = self.rotation.clone();
                let alerts = engine.fire_due_with(&key, state, now, &mut self.rotation);
                self.rotation_moved |= self.rotation != before;
                if !alerts.is_empty() {
                    fired.push((key.clone(), alerts));
                }
            }
            self.rearm(engine, &key);
        }
        fired
    }

    /// Lets `alert` fire again (its write to Kafka failed).
    pub fn unfire(&mut self, engine: &Engine, alert: &Alert) {
        if let Some(state) = self.leads.get_mut(&alert.data.lead) {
            engine.unfire(state, alert);
            self.rearm(engine, &alert.data.lead);
        }
    }
}
