//! `simulate` joins each person's records into one lead, as the identity stage will before the
//! engine (`[identity]` of the rules file, [`crate::identity`]).
//!
//! The whole file is read, so the join is resolved first, over every event in the order they
//! apply (`occurred_at`, ties in file order); the engine then sees each event under its person's
//! final lead key, from the person's first event on. The daemon's live join (next: the identity
//! stage on Kafka, merging leads as identities are learned) must come to exactly this.

use crate::event::{Change, LeadEvent};
use crate::identity::{IdentityConfig, Resolver, assertions};

/// `events`, each under its person's lead key. A vendor's merge of a record into another of the
/// same person ends no lead (the person goes on under its key): it is left out. With the join
/// off, the events as they are.
pub fn join(identity: &IdentityConfig, mut events: Vec<LeadEvent>) -> Vec<LeadEvent> {
    if !identity.enabled {
        return events;
    }
    let mut order: Vec<usize> = (0..events.len()).collect();
    order.sort_by_key(|&i| events[i].occurred_at);
    let mut resolver = Resolver::default();
    for i in order {
        let e = &events[i];
        resolver.observe(&e.lead, &assertions(identity, e));
    }
    events.retain_mut(|e| {
        let lead = resolver.lead_of(&e.lead).expect("every record observed");
        if let Change::Merged { into } = &mut e.change
            && let Some(into_lead) = resolver.lead_of(into)
        {
            if into_lead == lead {
                return false;
            }
            *into = into_lead.to_string();
        }
        if e.lead != lead {
            e.lead = lead.to_string();
        }
        true
    });
    events
}
