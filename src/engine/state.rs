//! What the engine knows about one lead, and how an event changes it.
//!
//! A lead's state is a fold of its events in event-time order (ties in arrival order). Events
//! arrive out of order (CRM batches, retries, a slow MAP), so the state keeps the events of a
//! recent window ([`LeadState::log`]) on top of everything older folded into [`LeadState::base`];
//! an event that arrives late inside the window is put in its place and the window is folded
//! again. The outcome is the same whatever the arrival order, as long as the events arrive before
//! the deadlines they affect fire. An event older than the window is folded in after `base`,
//! where a field it sets is not taken when a newer value exists.
//!
//! Alerts that fired are remembered by what their ids are made of (rule, level, clock start,
//! variant), outside the fold: re-folding never makes one fire twice.

use std::collections::VecDeque;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::at::At;
use super::fields::{FieldValue, LeadFields, Name};
use crate::event::Change;

/// How many recent event ids a lead remembers, to ignore re-sent events.
pub const RECENT_EVENT_IDS: usize = 64;
/// How many fired alerts a lead remembers.
pub const FIRED_REMEMBERED: usize = 64;
/// The most events the reorder window holds, whatever their times.
pub const LOG_MAX: usize = 64;
/// How many touch times a lead keeps (attempts are counted from them).
pub const TOUCHES_KEPT: usize = 64;
/// How many close-outs a lead keeps (their alerts are derived from them).
pub const CLOSEOUTS_KEPT: usize = 4;

/// Everything the engine knows about one lead. Serialized as-is to the state changelog (an
/// empty base as the empty lead it stands for).
#[derive(Debug, Clone, Default, Deserialize)]
pub struct LeadState {
    /// The lead with every event older than the reorder window folded in; `None` while the
    /// window is empty (the lead itself is then the base, and is what is stored), and while the
    /// window opened on a lead with nothing yet, the base then being the empty lead
    /// ([`LeadState::window_base`]): a new lead does not hold a copy of nothing (456 bytes, in
    /// every lead's first hour; issue 13).
    #[serde(default)]
    pub base: Option<Box<Lead>>,
    /// The events of the reorder window, in event-time order (ties in arrival order).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub log: Vec<Logged>,
    /// `base` with `log` folded in: what the rules look at.
    #[serde(default)]
    pub lead: Lead,
    /// Arrival counter: orders events with the same timestamp.
    #[serde(default)]
    pub seq: u64,
    /// The most recent events applied (a stable 64-bit hash of each id), newest last.
    #[serde(default)]
    pub recent_events: VecDeque<u64>,
    /// Alerts already fired, newest last.
    #[serde(default, skip_serializing_if = "VecDeque::is_empty")]
    pub fired: VecDeque<Fired>,
    /// What this lead held when its partition last counted it (not stored; see [`Held`]).
    #[serde(skip)]
    pub held: Held,
    /// The deadline its partition armed it at (not stored; see [`Armed`]).
    #[serde(skip)]
    pub armed: Armed,
}

/// The base of a window opened on a lead with nothing yet.
static EMPTY: std::sync::LazyLock<Lead> = std::sync::LazyLock::new(Lead::default);

/// Two states are the same when their windows fold from the same lead, whether an empty base
/// is kept or not.
impl PartialEq for LeadState {
    fn eq(&self, other: &Self) -> bool {
        self.window_base() == other.window_base()
            && self.log == other.log
            && self.lead == other.lead
            && self.seq == other.seq
            && self.recent_events == other.recent_events
            && self.fired == other.fired
    }
}

/// Written as it always was: a window's base in full, the empty lead included, so that records
/// read the same in earlier builds.
impl Serialize for LeadState {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        #[derive(Serialize)]
        struct Written<'a> {
            #[serde(skip_serializing_if = "Option::is_none")]
            base: Option<&'a Lead>,
            #[serde(skip_serializing_if = "no_log")]
            log: &'a [Logged],
            lead: &'a Lead,
            seq: u64,
            recent_events: &'a VecDeque<u64>,
            #[serde(skip_serializing_if = "no_fired")]
            fired: &'a VecDeque<Fired>,
        }
        fn no_log(log: &&[Logged]) -> bool {
            log.is_empty()
        }
        fn no_fired(fired: &&VecDeque<Fired>) -> bool {
            fired.is_empty()
        }
        Written {
            base: self.window_base(),
            log: &self.log,
            lead: &self.lead,
            seq: self.seq,
            recent_events: &self.recent_events,
            fired: &self.fired,
        }
        .serialize(s)
    }
}

/// One alert that fired: what its id is made of (rule, level, clock start, variant). 32 bytes:
/// the rule and variant the engine fires are kept as places in [`NAMES`], not as strings of
/// their own (a lead remembers a few alerts for its whole life). Written as it always was: its
/// rule, level, clock and variant by name.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(from = "FiredStored")]
pub struct Fired {
    names: FiredNames,
    pub level: u32,
    pub clock: At,
}

/// The names of the rules and variants the engine fires alerts of ([`super::deadlines`]).
/// Only memory depends on it being complete: any other name is kept as a string.
const NAMES: [&str; 11] = [
    "handoff",
    "first_touch",
    "follow_up",
    "disposition",
    "reminder",
    super::deadlines::MISSING_REASON,
    super::deadlines::UNKNOWN_REASON,
    super::deadlines::VAGUE_REASON,
    super::deadlines::LATE,
    super::deadlines::ATTEMPT_OVERDUE,
    super::deadlines::OVERDUE,
];

#[derive(Debug, Clone, PartialEq, Eq)]
enum FiredNames {
    /// The rule's place in [`NAMES`], and the variant's plus one (0: none).
    Known { rule: u8, variant: u8 },
    /// A rule or variant not in [`NAMES`] (a record of another build).
    Other(Box<(Box<str>, Option<Box<str>>)>),
}

impl Fired {
    pub fn new(rule: &str, level: u32, clock: At, variant: Option<&str>) -> Fired {
        let place = |name: &str| NAMES.iter().position(|n| *n == name);
        let names = match (place(rule), variant.map(place)) {
            (Some(rule), None) => FiredNames::Known {
                rule: rule as u8,
                variant: 0,
            },
            (Some(rule), Some(Some(variant))) => FiredNames::Known {
                rule: rule as u8,
                variant: variant as u8 + 1,
            },
            _ => FiredNames::Other(Box::new((rule.into(), variant.map(Into::into)))),
        };
        Fired {
            names,
            level,
            clock,
        }
    }

    pub fn rule(&self) -> &str {
        match &self.names {
            FiredNames::Known { rule, .. } => NAMES[usize::from(*rule)],
            FiredNames::Other(names) => &names.0,
        }
    }

    pub fn variant(&self) -> Option<&str> {
        match &self.names {
            FiredNames::Known { variant: 0, .. } => None,
            FiredNames::Known { variant, .. } => Some(NAMES[usize::from(*variant) - 1]),
            FiredNames::Other(names) => names.1.as_deref(),
        }
    }

    /// The bytes it holds on the heap (only names not in [`NAMES`]).
    pub fn heap_bytes(&self) -> usize {
        match &self.names {
            FiredNames::Known { .. } => 0,
            FiredNames::Other(names) => {
                size_of_val(&**names) + names.0.len() + names.1.as_ref().map_or(0, |v| v.len())
            }
        }
    }

    /// Whether this is the alert made of these (what its id is made of).
    fn is(&self, rule: &str, level: u32, clock: At, variant: Option<&str>) -> bool {
        self.level == level
            && self.clock == clock
            && self.rule() == rule
            && self.variant() == variant
    }
}

/// [`Fired`] as the changelog holds it.
#[derive(Deserialize)]
struct FiredStored {
    rule: Box<str>,
    level: u32,
    clock: At,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    variant: Option<Box<str>>,
}

impl From<FiredStored> for Fired {
    fn from(f: FiredStored) -> Fired {
        Fired::new(&f.rule, f.level, f.clock, f.variant.as_deref())
    }
}

impl Serialize for Fired {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        /// [`FiredStored`], borrowing the names.
        #[derive(Serialize)]
        struct Written<'a> {
            rule: &'a str,
            level: u32,
            clock: At,
            #[serde(skip_serializing_if = "Option::is_none")]
            variant: Option<&'a str>,
        }
        Written {
            rule: self.rule(),
            level: self.level,
            clock: self.clock,
            variant: self.variant(),
        }
        .serialize(s)
    }
}

/// One touch of a lead.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Touch {
    pub at: At,
    /// The event it came from ([`event_key`]): an event replayed under a new id is the same
    /// touch, two calls logged in the same second are two.
    pub event: u64,
}

/// An event kept in the reorder window.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Logged {
    pub at: At,
    pub seq: u64,
    /// [`event_key`] of its id.
    #[serde(default)]
    pub event: u64,
    pub source: String,
    #[serde(flatten)]
    pub change: Patch,
}

/// An event's change as the reorder window keeps it: a patch's fields in a sorted slice rather
/// than a map (a one-field patch took a 630-byte tree node; issue 13), any other change as it
/// came. Written to the changelog, and read back, exactly as the [`Change`] it was.
#[derive(Debug, Clone, PartialEq)]
pub enum Patch {
    /// `lead.updated`: the fields it sets (`null` clears one).
    Updated(Fields),
    /// Any other change (boxed: an activity's strings would make every kept event 40 bytes
    /// larger).
    Other(Box<Change>),
}

impl From<Change> for Patch {
    fn from(change: Change) -> Self {
        match change {
            Change::Updated { fields } => Patch::Updated(fields.into_iter().collect()),
            other => Patch::Other(Box::new(other)),
        }
    }
}

impl Serialize for Patch {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        /// [`Change::Updated`] as it is written, borrowing the fields.
        #[derive(Serialize)]
        #[serde(tag = "type")]
        enum Written<'a> {
            #[serde(rename = "lead.updated")]
            Updated { fields: &'a Fields },
        }
        match self {
            Patch::Updated(fields) => Written::Updated { fields }.serialize(s),
            Patch::Other(change) => change.serialize(s),
        }
    }
}

impl<'de> Deserialize<'de> for Patch {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Change::deserialize(d).map(Patch::from)
    }
}

/// A patch's fields, sorted by name (the order a map of them iterates in, so a patch is folded
/// as before), their names shared ([`Name`]). Written as the map it was.
pub type Fields = super::fields::ByName<Value>;

/// The lead as the rules see it. Written as [`Stored`] (its fields as two maps, their values and
/// their times), and read back from it.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(from = "Stored")]
pub struct Lead {
    /// Every field kept, each patch merged in, with when it was last set (event time).
    pub fields: LeadFields,
    /// The configured source of its latest event.
    pub source: Option<String>,
    /// The configured source of its first event: where the lead came from.
    pub origin: Option<String>,
    /// The current owner, from the `owner` field.
    pub owner: Option<String>,
    /// Since when it has had this owner (or none).
    pub owner_since: Option<At>,
    /// The current sales-ready episode.
    pub episode: Option<Episode>,
    /// Deleted or merged away in its system.
    pub deleted_at: Option<At>,
    /// When it last stopped being workable (closed, converted, deleted), for retention.
    pub ended_at: Option<At>,
    /// Touches (activities of a touch kind, field changes matching `lifecycle.touch`), by time
    /// ascending, the newest [`TOUCHES_KEPT`].
    pub touches: Vec<Touch>,
    pub last_activity_at: Option<At>,
    /// When `disposition_reason` last changed value (event time; re-sending the same value is no
    /// change): a reason that stands from before an episode began is not that episode's reason.
    pub reason_changed_at: Option<At>,
    /// When `disposition_detail` last changed value, likewise.
    pub detail_changed_at: Option<At>,
    /// The latest close-outs of sales-ready episodes, oldest first.
    pub closeouts: Vec<Closeout>,
    /// The newest event time seen.
    pub last_event_at: Option<At>,
    /// What the rules last said of `fields` (not stored; see [`Memo`]).
    pub memo: Memo,
}

/// A lead as the changelog holds it, as every build wrote it: its fields' values (`fields`) and
/// their times (`field_at`) as two maps, the rest as the lead has it. Read into a lead
/// ([`Lead`]'s `Deserialize`); [`Written`] is the same, borrowing the lead.
#[derive(Deserialize)]
struct Stored {
    #[serde(default)]
    fields: LeadFields,
    #[serde(default, with = "crate::engine::record::time::map")]
    field_at: Vec<(Name, At)>,
    #[serde(default)]
    source: Option<String>,
    #[serde(default)]
    origin: Option<String>,
    #[serde(default)]
    owner: Option<String>,
    #[serde(default)]
    owner_since: Option<At>,
    #[serde(default)]
    episode: Option<Episode>,
    #[serde(default)]
    deleted_at: Option<At>,
    #[serde(default)]
    ended_at: Option<At>,
    #[serde(default)]
    touches: Vec<Touch>,
    #[serde(default)]
    last_activity_at: Option<At>,
    #[serde(default)]
    reason_changed_at: Option<At>,
    #[serde(default)]
    detail_changed_at: Option<At>,
    #[serde(default)]
    closeouts: Vec<Closeout>,
    #[serde(default)]
    last_event_at: Option<At>,
}

impl From<Stored> for Lead {
    fn from(s: Stored) -> Lead {
        Lead {
            fields: s.fields.with_times(s.field_at),
            source: s.source,
            origin: s.origin,
            owner: s.owner,
            owner_since: s.owner_since,
            episode: s.episode,
            deleted_at: s.deleted_at,
            ended_at: s.ended_at,
            touches: s.touches,
            last_activity_at: s.last_activity_at,
            reason_changed_at: s.reason_changed_at,
            detail_changed_at: s.detail_changed_at,
            closeouts: s.closeouts,
            last_event_at: s.last_event_at,
            memo: Memo::default(),
        }
    }
}

/// A lead written as [`Stored`] (the same names, in the same order), borrowing it.
#[derive(Serialize)]
struct Written<'a> {
    fields: super::fields::Values<'a>,
    #[serde(
        skip_serializing_if = "no_times",
        with = "crate::engine::record::time::map"
    )]
    field_at: &'a LeadFields,
    #[serde(skip_serializing_if = "Option::is_none")]
    source: &'a Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    origin: &'a Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    owner: &'a Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    owner_since: Option<At>,
    #[serde(skip_serializing_if = "Option::is_none")]
    episode: &'a Option<Episode>,
    #[serde(skip_serializing_if = "Option::is_none")]
    deleted_at: Option<At>,
    #[serde(skip_serializing_if = "Option::is_none")]
    ended_at: Option<At>,
    #[serde(skip_serializing_if = "<[Touch]>::is_empty")]
    touches: &'a [Touch],
    #[serde(skip_serializing_if = "Option::is_none")]
    last_activity_at: Option<At>,
    #[serde(skip_serializing_if = "Option::is_none")]
    reason_changed_at: Option<At>,
    #[serde(skip_serializing_if = "Option::is_none")]
    detail_changed_at: Option<At>,
    #[serde(skip_serializing_if = "<[Closeout]>::is_empty")]
    closeouts: &'a [Closeout],
    #[serde(skip_serializing_if = "Option::is_none")]
    last_event_at: Option<At>,
}

fn no_times(fields: &&LeadFields) -> bool {
    fields.times().next().is_none()
}

impl Serialize for Lead {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        Written {
            fields: self.fields.values(),
            field_at: &self.fields,
            source: &self.source,
            origin: &self.origin,
            owner: &self.owner,
            owner_since: self.owner_since,
            episode: &self.episode,
            deleted_at: self.deleted_at,
            ended_at: self.ended_at,
            touches: &self.touches,
            last_activity_at: self.last_activity_at,
            reason_changed_at: self.reason_changed_at,
            detail_changed_at: self.detail_changed_at,
            closeouts: &self.closeouts,
            last_event_at: self.last_event_at,
        }
        .serialize(s)
    }
}

/// Where `name` is in `items` (sorted by name), or where it would go: the lookup of [`Fields`],
/// [`LeadFields`].
pub(super) fn find_by_name<V>(items: &[(Name, V)], name: &str) -> Result<usize, usize> {
    items.binary_search_by(|(k, _)| (**k).cmp(name))
}

/// `all` sorted by name, a name given twice keeping its last value; taken as it is when sorted
/// already (a record's are). The order of [`Fields`] and [`LeadFields`].
pub(super) fn sorted_by_name<V>(mut all: Vec<(Name, V)>) -> Vec<(Name, V)> {
    if all.windows(2).all(|w| w[0].0 < w[1].0) {
        return all;
    }
    // Stable: of equal names, the last given stays last, and is the one kept.
    all.sort_by(|a, b| a.0.cmp(&b.0));
    let mut kept: Vec<(Name, V)> = Vec::with_capacity(all.len());
    for item in all {
        match kept.last_mut() {
            Some(last) if last.0 == item.0 => *last = item,
            _ => kept.push(item),
        }
    }
    kept
}

/// The bytes a lead held when its partition last counted it ([`super::footprint::of_state`]), so
/// that an event counts the lead once, after it, rather than before and after. Leads are equal
/// whatever their counts say.
#[derive(Debug, Clone, Copy, Default)]
pub struct Held(pub usize);

impl PartialEq for Held {
    fn eq(&self, _: &Self) -> bool {
        true
    }
}

/// The deadline a lead's partition armed it at, to find its entry in the partition's timers:
/// kept here rather than in a map of its own beside the leads (a second copy of every key).
/// Leads are equal whatever their partitions armed them at.
#[derive(Debug, Clone, Copy, Default)]
pub struct Armed(pub Option<At>);

impl PartialEq for Armed {
    fn eq(&self, _: &Self) -> bool {
        true
    }
}

/// What the rules last said of a lead's fields, so that a predicate is evaluated again only when
/// a field it reads changed (see `Engine::judge`): the verdicts of `[lifecycle]`'s predicates
/// that do not read `change`, and which settings (top level or segment) apply. A verdict is
/// true, false, or false for want of a field the predicate names (noted again each time it is
/// used, as an evaluation would be); one that failed otherwise is not remembered. Not stored in
/// the changelog: a lead read back, or looked at under other rules, starts with nothing known.
/// Leads are equal whatever their memos say.
#[derive(Debug, Clone, Copy, Default)]
pub struct Memo {
    /// The rules it holds for ([`super::rules::Rules::id`]); 0: none.
    rules: u64,
    /// Per slot ([`Memo::SALES_READY`] …): 0 unknown, 1 false, 2 true, `3 + j` false for want
    /// of the predicate's `j`th field read ([`super::rules::Predicate::reads`]).
    verdicts: [u8; 4],
    /// The settings that apply: 0 unknown, 1 the top level, `i + 2` segment `i`.
    segment: u16,
    /// The segments before it whose `when` lacked a field (bit `i`: segment `i`).
    segment_missing: u16,
}

/// A remembered verdict (see [`Memo`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Is(bool),
    /// False: the lead lacks the predicate's `j`th field read.
    Missing(usize),
}

impl Memo {
    pub const SALES_READY: u8 = 0;
    pub const CLOSED: u8 = 1;
    pub const CONVERTED: u8 = 2;
    pub const TOUCH: u8 = 3;
    /// Not a verdict: the bit that says which settings apply is to be found again.
    pub const SEGMENT: u8 = 4;

    /// Forgets everything unless it holds for the rules `rules`, and holds for them from now.
    pub fn under(&mut self, rules: u64) {
        if self.rules != rules {
            *self = Memo {
                rules,
                ..Memo::default()
            };
        }
    }

    /// Whether it holds for the rules `rules`.
    pub fn holds_for(&self, rules: u64) -> bool {
        self.rules == rules
    }

    /// The verdict of `slot`, when known.
    pub fn get(&self, slot: u8) -> Option<Verdict> {
        match self.verdicts[usize::from(slot)] {
            0 => None,
            1 => Some(Verdict::Is(false)),
            2 => Some(Verdict::Is(true)),
            j => Some(Verdict::Missing(usize::from(j - 3))),
        }
    }

    /// Remembers the verdict of `slot` (`None`: forgets it).
    pub fn set(&mut self, slot: u8, verdict: Option<Verdict>) {
        self.verdicts[usize::from(slot)] = match verdict {
            None => 0,
            Some(Verdict::Is(false)) => 1,
            Some(Verdict::Is(true)) => 2,
            Some(Verdict::Missing(j)) => u8::try_from(j + 3).unwrap_or(0),
        };
    }

    /// Forgets the slots of `mask` (bits `1 << slot`): a field they read changed.
    pub fn forget(&mut self, mask: u8) {
        for (slot, v) in self.verdicts.iter_mut().enumerate() {
            if mask & (1 << slot) != 0 {
                *v = 0;
            }
        }
        if mask & (1 << Self::SEGMENT) != 0 {
            self.segment = 0;
            self.segment_missing = 0;
        }
    }

    /// Which settings apply, when known: `None` the top level, `Some(i)` segment `i`; and the
    /// segments before it whose `when` lacked a field (bit `i`).
    pub fn segment(&self) -> Option<(Option<usize>, u16)> {
        match self.segment {
            0 => None,
            1 => Some((None, self.segment_missing)),
            i => Some((Some(usize::from(i) - 2), self.segment_missing)),
        }
    }

    /// Remembers which settings apply (`None`: the top level), and the segments before it that
    /// lacked a field.
    pub fn set_segment(&mut self, segment: Option<usize>, missing: u16) {
        self.segment = match segment {
            None => 1,
            Some(i) => u16::try_from(i + 2).unwrap_or(0),
        };
        self.segment_missing = missing;
    }
}

/// Two leads are the same whatever their memos know.
impl PartialEq for Memo {
    fn eq(&self, _: &Self) -> bool {
        true
    }
}

/// A sales-ready episode: from becoming sales-ready to being closed, converted, deleted or no
/// longer sales-ready.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Episode {
    /// When the lead became sales-ready.
    pub started_at: At,
    /// Since when it has been sales-ready without an owner (the handoff clock).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unassigned_since: Option<At>,
    /// The first-touch clock, running while it has an owner.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub clock: Option<Clock>,
    /// The first owner's clock start: when the lead was handed off (for the scorecard).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub handed_off_at: Option<At>,
}

/// The first-touch clock of one owner.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Clock {
    /// The later of sales-ready and owned; an owner change restarts the clock.
    pub started_at: At,
    pub owner: String,
}

/// A close of a lead that was sales-ready in that episode: what the close-out rules judge.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Closeout {
    pub closed_at: At,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub owner: Option<String>,
    pub sales_ready_at: At,
    /// The lead's `disposition_reason` and `disposition_detail` at the close.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
    /// Touches from the start of the episode to the close.
    pub attempts: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_activity_at: Option<At>,
    /// The episode's last touch at the close: the close-out was due `feedback_within` after it
    /// (or after the episode start, without one), as `disposition.overdue` was while it was open.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_touch_at: Option<At>,
    /// The alerts it owes, judged at the close under the rules then in force.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub owes: Vec<Owed>,
}

/// One alert a close-out owes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Owed {
    /// The alert type.
    pub kind: String,
    /// The deadline it reports (for `disposition.late`, when the close was due).
    pub deadline: At,
}

impl LeadState {
    /// The lead's record in the state changelog (format: [`super::record`]), by a writer that
    /// does not know its partition generation.
    pub fn encode(&self) -> Vec<u8> {
        self.encode_with(0)
    }

    /// The lead's record in the state changelog, written by partition generation `generation`.
    pub fn encode_with(&self, generation: u64) -> Vec<u8> {
        super::record::encode(self, generation)
    }

    /// A lead's record read back from the state changelog (this format or the JSON of earlier
    /// builds); `None` when it cannot be read.
    pub fn decode(record: &[u8]) -> Option<Self> {
        Self::decode_with_generation(record).map(|(_, state)| state)
    }

    /// A lead's record read back, with the partition generation that wrote it (0 when unknown).
    pub fn decode_with_generation(record: &[u8]) -> Option<(u64, Self)> {
        super::record::decode(record)
    }

    /// The lead the reorder window folds from: `None` while the window is empty.
    pub fn window_base(&self) -> Option<&Lead> {
        match &self.base {
            Some(base) => Some(base),
            None if !self.log.is_empty() => Some(&EMPTY),
            None => None,
        }
    }

    /// Opens the window: keeps the lead as it is, to fold again from (nothing when it is empty).
    pub fn open_window(&mut self) {
        self.base = (self.lead != *EMPTY).then(|| Box::new(self.lead.clone()));
    }

    /// Lets go of a base read back that is the empty lead (see [`LeadState::base`]).
    pub fn drop_empty_base(&mut self) {
        if !self.log.is_empty() && self.base.as_deref() == Some(&*EMPTY) {
            self.base = None;
        }
    }

    pub fn has_fired(&self, rule: &str, level: u32, clock: At, variant: Option<&str>) -> bool {
        self.fired.iter().any(|f| f.is(rule, level, clock, variant))
    }

    pub fn mark_fired(&mut self, rule: &str, level: u32, clock: At, variant: Option<&str>) {
        if self.has_fired(rule, level, clock, variant) {
            return;
        }
        if self.fired.len() == FIRED_REMEMBERED {
            self.fired.pop_front();
        } else {
            // A few alerts per lead: grown one at a time, not doubled (alerts are rare next to
            // events, and the deque lives as long as the lead).
            self.fired.reserve_exact(1);
        }
        self.fired
            .push_back(Fired::new(rule, level, clock, variant));
    }

    pub fn unmark_fired(&mut self, rule: &str, level: u32, clock: At, variant: Option<&str>) {
        self.fired.retain(|f| !f.is(rule, level, clock, variant));
    }

    /// Remembers an event id; false when it was already applied.
    pub fn remember(&mut self, id: &str) -> bool {
        self.remember_hash(id_hash(id))
    }

    /// As [`LeadState::remember`], with the id's hash ([`event_hashes`]).
    pub fn remember_hash(&mut self, h: u64) -> bool {
        if self.recent_events.contains(&h) {
            return false;
        }
        if self.recent_events.len() == RECENT_EVENT_IDS {
            self.recent_events.pop_front();
        }
        self.recent_events.push_back(h);
        true
    }

    /// Where an event at `at` goes in the log (after every event at or before `at`).
    pub fn position(&self, at: At) -> usize {
        self.log.partition_point(|e| e.at <= at)
    }
}

impl Lead {
    /// A string field, trimmed, `None` when absent or blank; numbers are written out.
    pub fn text(&self, name: &str) -> Option<String> {
        match self.fields.get(name)? {
            FieldValue::String(s) => Some(s.trim().to_string()).filter(|s| !s.is_empty()),
            FieldValue::Number(n) => Some(n.to_string()),
            _ => None,
        }
    }

    /// Whether [`Lead::text`] of `name` is `value`, without copying it.
    pub fn text_is(&self, name: &str, value: Option<&str>) -> bool {
        match self.fields.get(name) {
            Some(FieldValue::String(s)) => Some(s.trim()).filter(|s| !s.is_empty()) == value,
            Some(FieldValue::Number(_)) => self.text(name).as_deref() == value,
            _ => value.is_none(),
        }
    }

    /// The `disposition_reason` and `disposition_detail` that count for an episode begun at
    /// `since`: each only if it changed since (one whose change predates this state's record of
    /// changes counts).
    pub fn disposition_since(&self, since: At) -> (Option<String>, Option<String>) {
        let fresh = |changed: Option<At>| changed.is_none_or(|t| t >= since);
        (
            self.text("disposition_reason")
                .filter(|_| fresh(self.reason_changed_at)),
            self.text("disposition_detail")
                .filter(|_| fresh(self.detail_changed_at)),
        )
    }

    /// Records a touch; one event counts once, however often it is replayed.
    pub fn add_touch(&mut self, touch: Touch) {
        if self.touches.iter().any(|t| t.event == touch.event) {
            return;
        }
        let i = self.touches.partition_point(|t| t.at <= touch.at);
        // Grown one at a time, not doubled: a lead has a few touches, kept for its whole life.
        self.touches.reserve_exact(1);
        self.touches.insert(i, touch);
        if self.touches.len() > TOUCHES_KEPT {
            self.touches.remove(0);
        }
    }

    /// The first touch at or after `from`.
    pub fn first_touch_since(&self, from: At) -> Option<At> {
        let i = self.touches.partition_point(|t| t.at < from);
        self.touches.get(i).map(|t| t.at)
    }

    /// The touches at or after `from`: how many, and the last.
    pub fn touches_since(&self, from: At) -> (u32, Option<At>) {
        let i = self.touches.partition_point(|t| t.at < from);
        let since = &self.touches[i..];
        (since.len() as u32, since.last().map(|t| t.at))
    }

    /// The last touch in `[from, to]`.
    pub fn last_touch_between(&self, from: At, to: At) -> Option<At> {
        let end = self.touches.partition_point(|t| t.at <= to);
        self.touches[..end]
            .last()
            .map(|t| t.at)
            .filter(|t| *t >= from)
    }

    /// Touches in `[from, to]`.
    pub fn touches_between(&self, from: At, to: At) -> u32 {
        self.touches
            .iter()
            .filter(|t| t.at >= from && t.at <= to)
            .count() as u32
    }

    pub fn push_closeout(&mut self, c: Closeout) {
        // Grown one at a time, not doubled: a lead has a close-out or two, kept for its life.
        self.closeouts.reserve_exact(1);
        self.closeouts.push(c);
        if self.closeouts.len() > CLOSEOUTS_KEPT {
            self.closeouts.remove(0);
        }
    }
}

/// What identifies an event across replays: a stable hash of its id without the
/// `replay:{run}:` a replay from the raw topic puts in front.
pub fn event_key(id: &str) -> u64 {
    id_hash(original_id(id))
}

/// An id without the `replay:{run}:` a replay puts in front.
fn original_id(id: &str) -> &str {
    id.strip_prefix("replay:")
        .and_then(|rest| rest.split_once(':'))
        .map_or(id, |(_, original)| original)
}

/// An event id's hash as [`LeadState::remember`] keeps it, and its [`event_key`]: hashed once
/// when the id is not a replay's (they are then the same).
pub fn event_hashes(id: &str) -> (u64, u64) {
    let seen = id_hash(id);
    let original = original_id(id);
    if original.len() == id.len() {
        (seen, seen)
    } else {
        (seen, id_hash(original))
    }
}

/// A stable hash of an event id (the same in every build and version: it is stored).
fn id_hash(id: &str) -> u64 {
    use sha2::{Digest, Sha256};
    let digest = Sha256::digest(id.as_bytes());
    u64::from_be_bytes(digest[..8].try_into().expect("8 bytes"))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A lead's state in the changelog remembers the events it applied, and its touches, by these
    /// hashes: computed any other way after an upgrade, a re-sent or replayed event would be
    /// applied again (a replayed call counted as a second attempt). Literals computed once; do
    /// not update them, undo the change.
    /// Field times read in any order come out sorted by name, a name given twice with its last
    /// time, each with its field; a patch older than a field's time does not set it, and a field
    /// cleared keeps its time (so an older patch does not set it again either).
    #[test]
    fn field_times_are_kept_with_their_fields() {
        let t = |s: i64| At::new(jiff::Timestamp::from_second(s).unwrap());
        let name = |n: &str| Name::from(n);
        let mut fields =
            LeadFields::from_iter([("stage", serde_json::json!("MQL"))]).with_times(vec![
                (name("stage"), t(1)),
                (name("owner"), t(2)),
                (name("stage"), t(3)),
            ]);
        assert_eq!(
            fields.times().collect::<Vec<_>>(),
            [("owner", t(2)), ("stage", t(3))]
        );
        // `owner` has a time and no value: cleared.
        assert_eq!(fields.keys().collect::<Vec<_>>(), ["stage"]);
        assert_eq!(fields.set(&name("owner"), &"bob".into(), t(1)), None);
        assert_eq!(fields.set(&name("stage"), &"SQL".into(), t(2)), None);
        assert_eq!(fields.set(&name("stage"), &"SQL".into(), t(4)), Some(true));
        assert_eq!(fields.set(&name("stage"), &"SQL".into(), t(5)), Some(false));
        assert_eq!(fields.set(&name("email"), &"a@b".into(), t(4)), Some(true));
        assert_eq!(fields.set(&name("email"), &Value::Null, t(6)), Some(true));
        assert_eq!(fields.set(&name("email"), &"old@b".into(), t(5)), None);
        assert_eq!(fields.keys().collect::<Vec<_>>(), ["stage"]);
        assert_eq!(
            (
                fields.time("email"),
                fields.time("stage"),
                fields.time("score")
            ),
            (Some(t(6)), Some(t(5)), None)
        );
        assert_eq!(
            fields.names().collect::<Vec<_>>(),
            ["email", "owner", "stage"]
        );
        assert_eq!(fields.len(), 1);
    }

    /// The alerts a lead remembers take no heap for the names the engine fires; any other name
    /// (a record of another build) is kept as it came.
    #[test]
    fn fired_alerts_are_kept_small() {
        assert!(size_of::<Fired>() <= 32);
        let clock = At::new(jiff::Timestamp::UNIX_EPOCH);
        let known = Fired::new("first_touch", 0, clock, Some("reminder"));
        assert_eq!(known.heap_bytes(), 0);
        assert_eq!(
            (known.rule(), known.variant()),
            ("first_touch", Some("reminder"))
        );
        let other = Fired::new("first_touch", 2, clock, Some("nudge"));
        assert!(other.heap_bytes() > 0);
        assert_eq!(
            (other.rule(), other.variant()),
            ("first_touch", Some("nudge"))
        );
        let mut state = LeadState::default();
        state.mark_fired("handoff", 0, clock, None);
        assert!(state.has_fired("handoff", 0, clock, None));
        assert!(!state.has_fired("handoff", 0, clock, Some("reminder")));
    }

    #[test]
    fn event_keys_are_pinned() {
        assert_eq!(event_key("evt-1"), 8_881_273_919_641_520_361);
        // A replay (`replay:{run}:{id}`, the run in Unix milliseconds) is the original event.
        assert_eq!(event_key("replay:1795860000000:evt-1"), event_key("evt-1"));
        assert_eq!(
            event_key("hubspot:0123456789abcdef0123456789abcdef"),
            4_624_625_561_587_432_816
        );
        // Hashed once for both where the id is no replay's.
        assert_eq!(
            event_hashes("evt-1"),
            (8_881_273_919_641_520_361, 8_881_273_919_641_520_361)
        );
        let (seen, key) = event_hashes("replay:1795860000000:evt-1");
        assert_eq!(
            (seen, key),
            (id_hash("replay:1795860000000:evt-1"), event_key("evt-1"))
        );
        let mut state = LeadState::default();
        assert!(state.remember("evt-1"));
        assert_eq!(state.recent_events, [8_881_273_919_641_520_361]);
    }
}
