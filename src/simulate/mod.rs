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

use std::sync::mpsc::{Receiver, SyncSender};

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
///
/// Partitions share nothing, so each is run on a thread of its own (the machine's cores all
/// used) and their alerts are merged into the one order a single clock gives them: a deadline
/// fires before the first event later than it, deadlines due together fire earliest first, the
/// lower partition first on ties ([`Turn`]).
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
    events.retain(|e| e.occurred_at <= until);
    // When each applied event happens, in the order they apply: where a deadline falls among
    // them.
    let times: Vec<Timestamp> = events.iter().map(|e| e.occurred_at).collect();
    let mut own: Vec<Vec<(usize, LeadEvent)>> = (0..partitions).map(|_| Vec::new()).collect();
    for (i, event) in events.into_iter().enumerate() {
        own[crate::partitioner::partition_for(event.lead.as_bytes(), partitions) as usize]
            .push((i, event));
    }
    let start = from.unwrap_or(until);
    let mut card = Recorder::default();
    std::thread::scope(|s| {
        let times = &times;
        let (mut heads, lanes): (Vec<Option<Receiver<Out>>>, Vec<_>) = own
            .into_iter()
            .enumerate()
            .map(|(p, events)| {
                let (tx, rx) = std::sync::mpsc::sync_channel(1024);
                let lane = Lane {
                    engine,
                    partition: p,
                    times,
                    until,
                    out: tx,
                };
                (Some(rx), s.spawn(move || lane.run(start, events)))
            })
            .unzip();
        // Each partition's next alert; the earliest goes out first.
        let mut next: Vec<Option<Out>> = heads.iter().map(|_| None).collect();
        loop {
            for (head, next) in heads.iter_mut().zip(&mut next) {
                if next.is_some() {
                    continue;
                }
                let Some(rx) = head else { continue };
                match rx.recv() {
                    Ok(out) => *next = Some(out),
                    // Its sender dropped: the partition is done.
                    Err(_) => *head = None,
                }
            }
            let Some(first) = (0..next.len())
                .filter(|&i| next[i].is_some())
                .min_by_key(|&i| next[i].as_ref().map(|(turn, _)| *turn))
            else {
                break;
            };
            let (_, alert) = next[first].take().expect("chosen among those present");
            emit(&alert);
        }
        for lane in lanes {
            card.merge(
                lane.join()
                    .expect("a partition's thread ends with its scorecard"),
            );
        }
    });
    card.scorecard(from, until)
}

/// Where an alert falls in the one order of a single clock: before the event of index `.0`
/// (the file's length: after them all), at deadline `.1`, of partition `.2`.
type Turn = (usize, Timestamp, usize);

/// What a partition's thread sends: each alert as it fires (its part of the scorecard is what
/// the thread returns).
type Out = (Turn, Alert);

/// One partition run on a thread of its own.
struct Lane<'a> {
    engine: &'a Engine,
    partition: usize,
    /// When each event of the file applies, in order.
    times: &'a [Timestamp],
    until: Timestamp,
    out: SyncSender<Out>,
}

impl Lane<'_> {
    /// Applies the partition's `events` (with their index in the file's order), firing each
    /// deadline before the first event after it, and those up to `until` at the end; returns
    /// the partition's part of the scorecard.
    fn run(self, start: Timestamp, events: Vec<(usize, LeadEvent)>) -> Recorder {
        let engine = self.engine;
        let mut p = Simulated::new(engine, start);
        let mut card = Recorder::default();
        // The first event a deadline due now could still come before.
        let mut turn = 0;
        for (i, event) in &events {
            self.fire_before(&mut p, &mut card, turn, event.occurred_at, false);
            let before = scorecard::Before::of(p.state.lead(&event.lead).map(|s| &s.lead));
            p.step(engine, Input::Event(event), event.occurred_at);
            p.step(engine, Input::End, event.occurred_at);
            if let Some(after) = p.state.lead(&event.lead) {
                card.observe(engine, &event.lead, &before, &after.lead, event.occurred_at);
            }
            turn = i + 1;
        }
        self.fire_before(&mut p, &mut card, turn, self.until, true);
        for (key, state) in p.state.iter() {
            card.finish(engine, key, &state.lead, self.until);
        }
        card
    }

    /// Fires the partition's deadlines before `limit` (or up to it, `inclusive`), none of them
    /// before the event of index `turn` (the partition's last step came after those before it).
    fn fire_before(
        &self,
        p: &mut Simulated,
        card: &mut Recorder,
        mut turn: usize,
        limit: Timestamp,
        inclusive: bool,
    ) {
        while let Some(d) = p.wake {
            if d > limit || (d == limit && !inclusive) {
                break;
            }
            // Fired before the first event later than it, not before the partition's last step.
            turn = turn.max(self.times.partition_point(|t| *t <= d));
            for write in p.step(self.engine, Input::Tick, d) {
                let Write::Lead(write) = write else { continue };
                let origin = write.state.and_then(|s| s.lead.origin.as_deref());
                for alert in write.alerts {
                    card.alert(&alert, origin);
                    // The receiver is gone only when the run is (a panic elsewhere).
                    let _ = self.out.send(((turn, d, self.partition), alert));
                }
            }
        }
    }
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
