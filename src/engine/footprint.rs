//! About how many bytes a lead's state holds in memory: what `[engine] memory_budget_mib` is
//! measured against. An estimate (the heap of its strings, maps and lists, with a per-entry
//! overhead), cheap enough to take on every event; not the allocator's exact count.

use std::mem::size_of;

use serde_json::{Map, Value};

use super::state::{Closeout, Fired, Lead, LeadState, Logged, Patch, Touch};

/// What one map entry costs beyond its key and value (tree or table nodes, their slack).
const ENTRY: usize = 32;

/// About the bytes `state` holds: itself, its lead, and its reorder window (the lead's base copy
/// and the events waiting in it).
pub fn of_state(state: &LeadState) -> usize {
    size_of::<LeadState>()
        + of_lead(&state.lead)
        + state
            .base
            .as_ref()
            .map_or(0, |b| size_of::<Lead>() + of_lead(b))
        + state.log.iter().map(of_logged).sum::<usize>()
        + state.recent_events.len() * size_of::<u64>()
        + state
            .fired
            .iter()
            .map(|f: &Fired| size_of::<Fired>() + f.heap_bytes())
            .sum::<usize>()
}

fn of_lead(lead: &Lead) -> usize {
    lead.fields.heap_bytes()
        + text(&lead.source)
        + text(&lead.origin)
        + text(&lead.owner)
        + lead
            .episode
            .as_ref()
            .and_then(|e| e.clock.as_ref())
            .map_or(0, |c| c.owner.len())
        + lead.touches.len() * size_of::<Touch>()
        + lead.closeouts.iter().map(of_closeout).sum::<usize>()
}

fn of_closeout(c: &Closeout) -> usize {
    size_of::<Closeout>()
        + text(&c.owner)
        + text(&c.reason)
        + text(&c.detail)
        + c.owes.iter().map(|o| ENTRY + o.kind.len()).sum::<usize>()
}

fn of_logged(logged: &Logged) -> usize {
    size_of::<Logged>()
        + logged.source.len()
        + match &logged.change {
            // Each value's own heap: the slice already holds the values themselves.
            Patch::Updated(fields) => {
                fields.heap_bytes()
                    + fields
                        .iter()
                        .map(|(_, v)| of_value(v) - size_of::<Value>())
                        .sum::<usize>()
            }
            Patch::Other(other) => size_of_val(&**other),
        }
}

/// The bytes a JSON value takes: itself and its heap.
pub(super) fn of_value(v: &Value) -> usize {
    size_of::<Value>()
        + match v {
            Value::String(s) => s.len(),
            Value::Array(items) => items.iter().map(of_value).sum(),
            Value::Object(map) => of_map(map),
            Value::Null | Value::Bool(_) | Value::Number(_) => 0,
        }
}

fn of_map(map: &Map<String, Value>) -> usize {
    map.iter().map(|(k, v)| ENTRY + k.len() + of_value(v)).sum()
}

fn text(s: &Option<String>) -> usize {
    s.as_ref().map_or(0, String::len)
}
