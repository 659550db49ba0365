//! The vocabulary of the engine's one entry point, [`PartitionState::step`]: what a shell hands
//! in ([`Input`]) and what it gets back ([`Step`]) — the records to write, in the order and
//! chaining they must reach Kafka in, what to count and log, and when to wake next.
//!
//! [`PartitionState::step`]: super::partition::PartitionState::step

use std::collections::HashMap;

use jiff::Timestamp;

use super::LeadState;
use super::rules::PredicateError;
use crate::alert::Alert;
use crate::event::LeadEvent;

/// What happened to a partition, handed to [`PartitionState::step`] with the time it happened.
///
/// [`PartitionState::step`]: super::partition::PartitionState::step
#[derive(Debug)]
pub enum Input<'a> {
    /// An event read from the partition. Its `received_at` tells how far the partition has been
    /// read (see [`Input::Tick`]); the partition is not known to be read to its end any more.
    Event(&'a LeadEvent),
    /// A message of the partition that is not an event (it is skipped): the partition is not
    /// known to be read to its end any more.
    NotAnEvent,
    /// Every message of the partition accepted so far has been read.
    End,
    /// Time passed: fire what is due. Deadlines fire up to `now` when the partition is read to its
    /// end; otherwise only up to the newest `received_at` read (and never past `now`), so a touch
    /// that happened in time but still waits in the partition cancels the breach first. Alerts
    /// are stamped `now`.
    Tick,
    /// As [`Input::Tick`], firing the due deadlines of at most this many leads, the earliest
    /// first (a shell paces a burst by it). The others stay due, to fire at a later tick: the
    /// step's `wake` is then at or before `now`.
    TickUpTo(usize),
    /// Closes the reorder windows `now` has left behind (quiet leads then hold one copy of
    /// themselves) and drops the leads past their retention ([`super::Engine::with_retention`]).
    Sweep,
    /// Memory is over budget: the engine's reorder window was shrunk (the shell hands a copy of
    /// the engine with a shorter one), and every window is closed as far as it says now, so
    /// events fold early (see [`Diagnostic::WindowShrunk`]).
    Shrink,
    /// The partition's records in the state changelog (the latest value of each key): they are
    /// put back, then every lead is looked at again under the rules in force, as on
    /// [`Input::Reload`] — rules edited while nobody owned the partition apply from `now`.
    Restore(Records),
    /// The engine handed in has new rules: every lead is looked at again under them at `now`, and
    /// its deadlines follow them.
    Reload,
    /// The alerts of a [`LeadWrite`] that was not written: they fire again.
    Unwritten(&'a [Alert]),
}

/// The latest value of each key of one partition of the state changelog.
pub type Records = HashMap<String, Vec<u8>>;

/// What a shell does for one [`Input`]. It borrows the partition's leads (their state records
/// are encoded when the shell asks: a shell that writes nothing pays nothing), so it is carried
/// out before the partition is stepped again.
#[derive(Debug, Default)]
pub struct Step<'a> {
    /// The records to write, in this order (see [`Write`] for what each waits for).
    pub writes: Vec<Write<'a>>,
    /// What to count and log, in the order it happened.
    pub diagnostics: Vec<Diagnostic>,
    /// When the partition next has something to fire, if it may fire then: `None` when nothing
    /// is due, or while it is not read to its end (the messages still to read wake the shell).
    pub wake: Option<Timestamp>,
}

/// One write to Kafka.
#[derive(Debug, Clone, PartialEq)]
pub enum Write<'a> {
    /// Records of one lead, keyed by it (see [`LeadWrite`]).
    Lead(LeadWrite<'a>),
    /// The partition's own record in the state changelog (where the pools' round-robin stands),
    /// under [`super::partition::ROTATION_KEY`], to this very partition. Not chained: a later one
    /// carries everything an earlier one did.
    Rotation(Vec<u8>),
}

/// One lead's records. They are written after every earlier write of the lead has been
/// acknowledged, and not at all if one of those failed: so a lead's records reach Kafka in the
/// order they were made — an alert before the state that marks it fired, an older state never
/// after a newer one.
#[derive(Debug, Clone, PartialEq)]
pub struct LeadWrite<'a> {
    /// The lead: the key of every record.
    pub lead: String,
    /// Alerts for `{prefix}.alerts`, in order, queued together ([`LeadWrite::alert_records`]).
    /// If this write is not made, hand them back as [`Input::Unwritten`]: they fire again (under
    /// the same ids).
    pub alerts: Vec<Alert>,
    /// Then, once every alert is acknowledged, the lead's state for `{prefix}.state`
    /// ([`LeadWrite::state_record`]); `None` is a tombstone.
    pub state: Option<&'a LeadState>,
}

impl LeadWrite<'_> {
    /// The alerts' records, in order.
    pub fn alert_records(&self) -> Vec<Vec<u8>> {
        self.alerts
            .iter()
            .map(|a| serde_json::to_vec(a).expect("alert serializes"))
            .collect()
    }

    /// The state's record; `None` for a tombstone.
    pub fn state_record(&self) -> Option<Vec<u8>> {
        self.state_record_of(0)
    }

    /// The state's record as written by partition generation `generation`; `None` for a
    /// tombstone.
    pub fn state_record_of(&self, generation: u64) -> Option<Vec<u8>> {
        self.state.map(|state| state.encode_with(generation))
    }
}

/// What the engine noticed while stepping: the shell counts and logs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Diagnostic {
    /// An event changed its lead's state.
    Applied,
    /// An event the lead had already seen (by id): nothing changed.
    Duplicate,
    /// An event asked to erase its lead: its state is tombstoned.
    Forgotten { lead: String },
    /// A rule counted as false because the lead lacks a field it names (`field`, where the
    /// evaluation names it: not for a segment's `when`).
    RuleMissingField { rule: String, field: Option<String> },
    /// A rule failed to evaluate and counted as false (`error`, where the evaluation says it: not
    /// for a segment's `when`).
    RuleError {
        rule: String,
        error: Option<PredicateError>,
    },
    /// An alert fired.
    AlertFired {
        id: String,
        lead: String,
        kind: String,
    },
    /// An alert names nobody (an owner missing from `[directory]`, a manager nobody recorded):
    /// still written, for routes go by role.
    NoRecipients {
        lead: String,
        kind: String,
        to: Vec<String>,
    },
    /// A lead past its retention, dropped: its state is tombstoned.
    Expired { lead: String },
    /// Over the memory budget, this many leads' reorder windows were folded early.
    WindowShrunk { folded: usize },
    /// Records of the changelog that could not be read, by key: their leads start afresh.
    Unreadable { keys: Vec<String> },
}
