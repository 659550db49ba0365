//! `leadwatch simulate`: the live engine's code ([`PartitionState`], [`Engine`]) over a file of
//! past events with a simulated clock, so an admin can test a rules file on last quarter's export
//! before deploying it.
//!
//! Events are applied in `occurred_at` order (file order for equal instants); before each event,
//! every deadline strictly before it fires, so an event stamped exactly at a deadline is applied
//! first; at the end, deadlines up to `until` fire. Each alert is the body a sink would receive,
//! with `fired_at` (simulated time) on top. The scorecard measures each owner and each source:
//! leads handed off, touched within the SLA, business time to first touch, attempts before close,
//! close-out reasons, leads never touched, attempts and close-outs that became overdue.
//!
//! Records of one person (a Marketo lead and its Salesforce lead) are one lead, as `[identity]`
//! of the rules file says ([`join`], [`run_joined`]).

mod files;
mod join;
mod scorecard;

use jiff::Timestamp;

use crate::alert::Alert;
use crate::engine::step::{Input, Write};
use crate::engine::{Engine, PartitionState};
use crate::event::LeadEvent;
pub use files::{BadLine, FileError, Fired, read_events, run_files};
pub use join::{Joined, join, run_joined};
use scorecard::Recorder;
pub use scorecard::{Report, Scorecard};

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
                    let origin = write.state.and_then(|s| s.lead.origin.as_deref());
                    for alert in &write.alerts {
                        card.alert(alert, origin);
                        emit(alert);
                    }
                }
            }
        };
    for event in events.iter().filter(|e| e.occurred_at <= until) {
        fire_before(&mut parts, &mut card, event.occurred_at, false);
        let p = &mut parts
            [crate::partitioner::partition_for(event.lead.as_bytes(), partitions) as usize];
        let before = scorecard::Before::of(p.state.lead(&event.lead).map(|s| &s.lead));
        p.step(engine, Input::Event(event), event.occurred_at);
        p.step(engine, Input::End, event.occurred_at);
        if let Some(after) = p.state.lead(&event.lead) {
            card.observe(engine, &event.lead, &before, &after.lead, event.occurred_at);
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
    fn step(&mut self, engine: &Engine, input: Input<'_>, now: Timestamp) -> Vec<Write<'_>> {
        let step = self.state.step(engine, input, now);
        self.wake = step.wake;
        step.writes
    }
}

#[cfg(test)]
mod tests;
