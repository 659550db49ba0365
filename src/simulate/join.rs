//! `simulate` joins each person's records into one lead, as the identity stage will before the
//! engine (`[identity]` of the rules file, [`crate::identity`]).
//!
//! The whole file is read, so the join is resolved first, over every event in the order they
//! apply (`occurred_at`, ties in file order); the engine then sees each event under its person's
//! final lead key, from the person's first event on. The daemon's live join (next: the identity
//! stage on Kafka, merging leads as identities are learned) must come to exactly this.

use std::collections::HashMap;

use jiff::Timestamp;

use super::Scorecard;
use crate::alert::Alert;
use crate::engine::Engine;
use crate::event::{Change, LeadEvent};
use crate::identity::{IdentityConfig, Resolver, assertions};

/// The events of a file, joined.
#[derive(Debug)]
pub struct Joined {
    /// Each under its person's lead key.
    pub events: Vec<LeadEvent>,
    /// The records of each lead made of several, least key first.
    pub records: HashMap<String, Vec<String>>,
}

/// `events`, each under its person's lead key. A vendor's merge of a record into another of the
/// same person ends no lead (the person goes on under its key): it is left out. With the join
/// off, the events as they are.
pub fn join(identity: &IdentityConfig, mut events: Vec<LeadEvent>) -> Joined {
    let mut records = HashMap::new();
    if !identity.enabled {
        return Joined { events, records };
    }
    let mut order: Vec<usize> = (0..events.len()).collect();
    order.sort_by_key(|&i| events[i].occurred_at);
    let mut resolver = Resolver::default();
    for i in order {
        let e = &events[i];
        let asserted = assertions(identity, e);
        // Most events (a call, a property change) say nothing of who the record is.
        if asserted.is_empty() && resolver.lead_of(&e.lead).is_some() {
            continue;
        }
        resolver.observe(&e.lead, &asserted);
    }
    events.retain_mut(|e| {
        let lead = resolver.lead_of(&e.lead).expect("every record observed");
        if let Change::Merged { into } = &mut e.change {
            match resolver.lead_of(into) {
                Some(into_lead) if into_lead == lead => return false,
                Some(into_lead) => *into = into_lead.to_string(),
                // Merged into a record the file never shows: the record leaves its person, who
                // goes on under the others (ended only when it was the person's one record).
                None if resolver.records_of(&e.lead).len() > 1 => return false,
                None => {}
            }
        }
        if e.lead != lead {
            if !records.contains_key(lead) {
                let all = resolver.records_of(&e.lead);
                records.insert(
                    lead.to_string(),
                    all.into_iter().map(String::from).collect(),
                );
            }
            e.lead = lead.to_string();
        }
        true
    });
    Joined { events, records }
}

/// [`super::run`] over the events joined as `identity` says; each alert of a lead of several
/// records lists them (`data.records`).
pub fn run_joined(
    engine: &Engine,
    identity: &IdentityConfig,
    events: Vec<LeadEvent>,
    until: Option<Timestamp>,
    partitions: i32,
    mut emit: impl FnMut(&Alert),
) -> Scorecard {
    // Events after `until` are not applied, so they join no one either.
    let mut events = events;
    if let Some(until) = until {
        events.retain(|e| e.occurred_at <= until);
    }
    let Joined { events, records } = join(identity, events);
    if !records.is_empty() {
        // `simulate` joins as `[identity]` says; the daemon does not join yet (issue 15's
        // identity stage), so say so where the joined alerts are read.
        eprintln!(
            "simulate: {} leads are joined from several records as [identity] says (alerts list them \
             in data.records); the daemon does not join yet: [identity] enabled = false simulates it as it runs today",
            records.len()
        );
    }
    super::run(engine, events, until, partitions, |alert| {
        match records.get(&alert.data.lead) {
            Some(all) => {
                let mut alert = alert.clone();
                alert.data.records = all.clone();
                emit(&alert)
            }
            None => emit(alert),
        }
    })
}
