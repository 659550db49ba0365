//! The rules file (`rules.toml`): the one-page agreement between sales and marketing, compiled
//! once and validated as a whole (every problem with its key path).
//!
//! ```toml
//! default_calendar = "us"                         # optional; without it time runs around the clock
//!
//! [lifecycle]                                     # CEL over the lead's fields, as `lead`
//! sales_ready = 'lead.stage == "MQL" && lead.score >= 60'
//! closed      = 'lead.status in ["Unqualified", "Closed - Not Converted"]'
//! converted   = 'lead.status == "Converted"'
//! touch       = 'lead.status == "Working - Contacted"'   # a field change that counts as a touch
//!
//! [handoff]
//! assign_within = "15m"                           # → lead.unassigned, to the queue
//!
//! [first_touch]
//! within        = "4h"                            # → sla.first_touch.breached, to the owner
//! remind_before = "1h"                            # → sla.first_touch.reminder
//! escalate = [ { after = "8h", notify = "manager" },
//!              { after = "24h", notify = "marketing_ops", reassign = true } ]
//! touch_kinds = ["call", "email", "meeting", "sms"]
//!
//! [follow_up]
//! min_attempts = 3                                # → follow_up.insufficient_attempts
//! attempt_every = "1d"                            # → follow_up.attempt_overdue while open
//!
//! [disposition]
//! reasons = ["No budget", "Wrong contact"]        # → disposition.unknown_reason / missing_reason
//! vague = ["Not interested", "Other"]             # → disposition.vague_reason without a detail
//! detail_min_chars = 20
//! feedback_within = "5d"                          # → disposition.overdue / disposition.late
//!
//! [calendars.us]
//! time_zone = "America/New_York"
//! hours = { mon = "09:00-17:00", tue = "09:00-17:00" }
//! holidays = ["2026-11-26"]
//!
//! [[segments]]                                    # the first that matches applies
//! when = 'lead.region == "EMEA"'
//! calendar = "emea"
//! first_touch = { within = "2h" }
//!
//! pool = ["alice@example.com", "bob@example.com"] # suggested next owners (reassign = true)
//! [directory."alice@example.com"]
//! name = "Alice"
//! manager = "carol@example.com"
//! slack = "U024BE7LH"
//! [recipients]
//! marketing_ops = ["mops@example.com"]
//! queue = ["sdr-queue@example.com"]
//! ```

pub mod cel;

use std::collections::BTreeMap;
use std::sync::Arc;

use serde::Deserialize;

use super::calendar::{self, Calendar, SlaDuration};
use super::projection::Projection;
use crate::conf::from_value_lenient;
pub use cel::{Cel, Facts, Predicate, PredicateError};

/// Roles every lead has without `[recipients]`: its owner and the owner's manager.
pub const BUILTIN_ROLES: [&str; 2] = ["owner", "manager"];

/// The compiled rules.
#[derive(Debug, Clone)]
pub struct Rules {
    pub cel: Cel,
    pub lifecycle: Lifecycle,
    /// Activity kinds that count as a touch (lowercase).
    pub touch_kinds: Vec<String>,
    /// `[first_touch] touch_counts`: whether an activity (of a touch kind) was a person's and
    /// counts; `None`: the default (see [`crate::engine::Engine`]'s `activity_counts`).
    pub touch_counts: Option<Predicate>,
    /// What applies when no segment matches.
    pub base: Arc<Settings>,
    /// In file order; the first whose `when` holds applies.
    pub segments: Vec<Segment>,
    /// Owner ids → people.
    pub directory: BTreeMap<String, Person>,
    /// The fields a lead keeps under these rules ([`Rules::kept_fields`]).
    kept: Projection,
    /// Tells these rules from any other compiled in this process ([`Rules::id`]).
    id: u64,
}

/// The next [`Rules::id`].
static NEXT_ID: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);

/// `[lifecycle]`: when a lead is sales-ready, closed, converted, and which field change is a
/// touch.
#[derive(Debug, Clone)]
pub struct Lifecycle {
    pub sales_ready: Predicate,
    pub closed: Option<Predicate>,
    pub converted: Option<Predicate>,
    pub touch: Option<Predicate>,
}

#[derive(Debug, Clone)]
pub struct Segment {
    pub when: Predicate,
    pub settings: Arc<Settings>,
}

/// The rules as they apply to one lead: the top level, with a segment's overrides.
#[derive(Debug, Clone, Default)]
pub struct Settings {
    /// The segment's name (or `segments[i]`); `None` for the top level.
    pub segment: Option<String>,
    pub calendar: Option<Arc<Calendar>>,
    pub handoff: Option<Handoff>,
    pub first_touch: Option<FirstTouch>,
    pub follow_up: Option<FollowUp>,
    pub disposition: Option<DispositionRules>,
    /// Who may take a lead over when an escalation suggests a new owner.
    pub pool: Vec<String>,
    /// Role → ids (directory keys, emails, channels).
    pub recipients: BTreeMap<String, Vec<String>>,
}

/// `[handoff]`: a sales-ready lead must have an owner within `assign_within`.
#[derive(Debug, Clone, PartialEq)]
pub struct Handoff {
    pub assign_within: SlaDuration,
}

/// `[first_touch]`: the owner must touch the lead within `within`.
#[derive(Debug, Clone, PartialEq)]
pub struct FirstTouch {
    pub within: SlaDuration,
    pub remind_before: Option<SlaDuration>,
    pub escalate: Vec<Step>,
}

/// One step of the escalation ladder.
#[derive(Debug, Clone, PartialEq)]
pub struct Step {
    /// Counted from the clock start; later than `within` and than the step before.
    pub after: SlaDuration,
    /// The role the escalation is addressed to.
    pub notify: String,
    /// Suggest a new owner from the pool.
    pub reassign: bool,
}

/// `[follow_up]`: attempts owed before a lead may be disqualified.
#[derive(Debug, Clone, PartialEq)]
pub struct FollowUp {
    pub min_attempts: u32,
    /// While the episode is open, touched and below `min_attempts`: the next attempt is due this
    /// long after the last one (unset: no `follow_up.attempt_overdue`).
    pub attempt_every: Option<SlaDuration>,
}

/// `[disposition]`: what a close-out needs.
#[derive(Debug, Clone, PartialEq)]
pub struct DispositionRules {
    /// The agreed reasons (compared trimmed and case-insensitively).
    pub reasons: Vec<String>,
    /// Reasons that need a written detail.
    pub vague: Vec<String>,
    pub detail_min_chars: usize,
    pub feedback_within: Option<SlaDuration>,
    /// How long after a close its reason and detail are judged (wall-clock, not working time):
    /// a reason sent as its own update a moment after the status counts.
    pub reason_grace: jiff::SignedDuration,
}

/// The default `[disposition] reason_grace`.
pub const DEFAULT_REASON_GRACE: std::time::Duration = std::time::Duration::from_secs(5 * 60);

/// A wall-clock duration in the rules (`"5m"`, `"0s"`), read leniently like [`Sla`].
#[derive(Debug, Clone, PartialEq)]
struct Wall(Result<std::time::Duration, String>);

impl<'de> Deserialize<'de> for Wall {
    fn deserialize<D: serde::Deserializer<'de>>(de: D) -> Result<Self, D::Error> {
        let s = String::deserialize(de).map_err(|_| {
            serde::de::Error::custom("expected a duration such as \"5m\" or \"0s\"")
        })?;
        Ok(Wall(
            humantime::parse_duration(s.trim())
                .map_err(|e| format!("`{s}` is not a duration: {e}")),
        ))
    }
}

/// One person of `[directory]`.
#[derive(Debug, Clone, Default, PartialEq, eserde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Person {
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub email: Option<String>,
    /// Directory key of their manager.
    #[serde(default)]
    pub manager: Option<String>,
    #[serde(default)]
    pub slack: Option<String>,
    #[serde(default)]
    pub teams: Option<String>,
    /// Away (holiday, leave): never suggested as a new owner.
    #[serde(default)]
    pub away: bool,
}

/// A duration in the rules: working time or working days (see [`SlaDuration`]). Read leniently,
/// so a mistyped duration is reported with every other problem of the file (see [`sla`]).
#[derive(Debug, Clone, PartialEq)]
struct Sla(Result<SlaDuration, String>);

impl<'de> Deserialize<'de> for Sla {
    fn deserialize<D: serde::Deserializer<'de>>(de: D) -> Result<Self, D::Error> {
        let s = String::deserialize(de).map_err(|_| {
            serde::de::Error::custom("expected a duration such as \"30m\", \"4h\" or \"2d\"")
        })?;
        Ok(Sla(s.parse()))
    }
}

/// The duration at `key`, or a problem.
fn sla(value: &Option<Sla>, key: String, problems: &mut Found) -> Option<SlaDuration> {
    match value {
        Some(Sla(Ok(d))) => Some(*d),
        Some(Sla(Err(message))) => {
            problems.push((key, message.clone()));
            None
        }
        None => None,
    }
}

/// `"x"` or `["x", "y"]`.
#[derive(Debug, Clone, Default)]
struct OneOrMany(Vec<String>);

impl<'de> Deserialize<'de> for OneOrMany {
    fn deserialize<D: serde::Deserializer<'de>>(de: D) -> Result<Self, D::Error> {
        crate::conf::one_or_many(de, "expected a name or a list of names").map(OneOrMany)
    }
}

#[derive(eserde::Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRules {
    #[serde(default)]
    default_calendar: Option<String>,
    lifecycle: RawLifecycle,
    #[serde(default)]
    handoff: Option<RawHandoff>,
    #[serde(default)]
    first_touch: Option<RawFirstTouch>,
    #[serde(default)]
    follow_up: Option<RawFollowUp>,
    #[serde(default)]
    disposition: Option<RawDisposition>,
    #[serde(default)]
    calendars: BTreeMap<String, RawCalendar>,
    #[serde(default)]
    segments: Vec<RawSegment>,
    #[serde(default)]
    pool: Vec<String>,
    #[serde(default)]
    directory: BTreeMap<String, Person>,
    #[serde(default)]
    #[eserde(compat)]
    recipients: BTreeMap<String, OneOrMany>,
    /// `[identity]`: read by `crate::identity` from the same file; declared so it is a known key.
    #[serde(default)]
    #[eserde(compat)]
    #[allow(dead_code)]
    identity: Option<serde::de::IgnoredAny>,
}

#[derive(eserde::Deserialize)]
#[serde(deny_unknown_fields)]
struct RawLifecycle {
    sales_ready: String,
    #[serde(default)]
    closed: Option<String>,
    #[serde(default)]
    converted: Option<String>,
    #[serde(default)]
    touch: Option<String>,
}

#[derive(Clone, eserde::Deserialize)]
#[serde(deny_unknown_fields)]
struct RawHandoff {
    #[serde(default)]
    #[eserde(compat)]
    assign_within: Option<Sla>,
}

#[derive(Clone, eserde::Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFirstTouch {
    #[serde(default)]
    #[eserde(compat)]
    within: Option<Sla>,
    #[serde(default)]
    #[eserde(compat)]
    remind_before: Option<Sla>,
    #[serde(default)]
    escalate: Option<Vec<RawStep>>,
    #[serde(default)]
    touch_kinds: Option<Vec<String>>,
    #[serde(default)]
    touch_counts: Option<String>,
}

#[derive(Clone, eserde::Deserialize)]
#[serde(deny_unknown_fields)]
struct RawStep {
    #[eserde(compat)]
    after: Sla,
    #[serde(default)]
    notify: Option<String>,
    #[serde(default)]
    reassign: bool,
}

#[derive(Clone, eserde::Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFollowUp {
    #[serde(default)]
    min_attempts: Option<u32>,
    #[serde(default)]
    #[eserde(compat)]
    attempt_every: Option<Sla>,
}

#[derive(Clone, eserde::Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDisposition {
    #[serde(default)]
    reasons: Option<Vec<String>>,
    #[serde(default)]
    vague: Option<Vec<String>>,
    #[serde(default)]
    detail_min_chars: Option<u32>,
    #[serde(default)]
    #[eserde(compat)]
    feedback_within: Option<Sla>,
    #[serde(default)]
    #[eserde(compat)]
    reason_grace: Option<Wall>,
}

#[derive(eserde::Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCalendar {
    time_zone: String,
    #[serde(default)]
    hours: BTreeMap<String, String>,
    #[serde(default)]
    holidays: Vec<String>,
}

#[derive(eserde::Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSegment {
    #[serde(default)]
    name: Option<String>,
    when: String,
    #[serde(default)]
    calendar: Option<String>,
    #[serde(default)]
    handoff: Option<RawHandoff>,
    #[serde(default)]
    first_touch: Option<RawFirstTouch>,
    #[serde(default)]
    follow_up: Option<RawFollowUp>,
    #[serde(default)]
    disposition: Option<RawDisposition>,
    #[serde(default)]
    pool: Option<Vec<String>>,
    #[serde(default)]
    #[eserde(compat)]
    recipients: Option<BTreeMap<String, OneOrMany>>,
}

fn default_touch_kinds() -> Vec<String> {
    ["call", "email", "meeting", "sms"]
        .map(String::from)
        .to_vec()
}

/// Problems as `(key path, message)`.
type Found = Vec<(String, String)>;

impl Rules {
    /// Compiles rules from TOML text; problems are `(key path, message)`.
    pub fn parse(text: &str) -> Result<Rules, Found> {
        let value: serde_json::Value = config::Config::builder()
            .add_source(config::File::from_str(text, config::FileFormat::Toml))
            .build()
            .and_then(|c| c.try_deserialize())
            .map_err(|e| vec![(String::new(), e.to_string())])?;
        Self::from_value(&value)
    }

    /// Compiles rules from a rules file as read ([`crate::conf::load_file`] reads one, with the
    /// file named in every problem); problems are `(key path, message)`.
    pub fn from_value(value: &serde_json::Value) -> Result<Rules, Found> {
        // Unknown keys are listed with everything else the rest of the file shows.
        let (raw, mut problems): (RawRules, Found) = from_value_lenient(value)?;
        let cel = Cel::default();
        let compile = |key: &str, source: &str, problems: &mut Found| {
            Predicate::compile(&cel, key, source)
                .map_err(|e| problems.push((key.to_string(), e)))
                .ok()
        };

        let sales_ready = compile(
            "lifecycle.sales_ready",
            &raw.lifecycle.sales_ready,
            &mut problems,
        );
        let optional = |key: &str, source: &Option<String>, problems: &mut Found| {
            source.as_ref().and_then(|s| compile(key, s, problems))
        };
        let closed = optional("lifecycle.closed", &raw.lifecycle.closed, &mut problems);
        let converted = optional(
            "lifecycle.converted",
            &raw.lifecycle.converted,
            &mut problems,
        );
        let touch = optional("lifecycle.touch", &raw.lifecycle.touch, &mut problems);
        // An episode ends only when the lead is closed, converted, deleted or merged (not when it
        // stops being sales-ready): close-out rules without `closed` would never judge a close.
        let judges_closes = raw.follow_up.is_some()
            || raw.disposition.is_some()
            || raw
                .segments
                .iter()
                .any(|s| s.follow_up.is_some() || s.disposition.is_some());
        if judges_closes && raw.lifecycle.closed.is_none() {
            problems.push((
                "lifecycle.closed".into(),
                "[follow_up] and [disposition] judge close-outs: say when a lead is closed \
                 (e.g. 'lead.status in [\"Unqualified\"]')"
                    .into(),
            ));
        }

        // Calendars.
        let mut calendars: BTreeMap<String, Arc<Calendar>> = BTreeMap::new();
        for (name, c) in &raw.calendars {
            match Calendar::new(name, &c.time_zone, &c.hours, &c.holidays) {
                Ok(cal) => {
                    calendars.insert(name.clone(), Arc::new(cal));
                }
                Err(ps) => problems.extend(
                    ps.into_iter()
                        .map(|(k, m)| (format!("calendars.{name}.{k}"), m)),
                ),
            }
        }
        let known_calendar = |name: &str| raw.calendars.contains_key(name);
        let calendar_problem = |name: &str| {
            let known: Vec<&str> = raw.calendars.keys().map(String::as_str).collect();
            if known.is_empty() {
                format!("no calendar `{name}`: define it under [calendars.{name}]")
            } else {
                format!("no calendar `{name}` (defined: {})", known.join(", "))
            }
        };
        let default_calendar = match &raw.default_calendar {
            Some(name) if !known_calendar(name) => {
                problems.push(("default_calendar".into(), calendar_problem(name)));
                None
            }
            Some(name) => calendars.get(name).cloned(),
            None => None,
        };

        // Touch kinds: one list for every lead.
        let touch_kinds: Vec<String> = raw
            .first_touch
            .as_ref()
            .and_then(|f| f.touch_kinds.clone())
            .unwrap_or_else(default_touch_kinds)
            .into_iter()
            .map(|k| k.trim().to_lowercase())
            .collect();
        if touch_kinds.is_empty() || touch_kinds.iter().any(String::is_empty) {
            problems.push((
                "first_touch.touch_kinds".into(),
                "name at least one activity kind that counts as a touch, none blank".into(),
            ));
        }

        // Whose activities count: one rule for every lead.
        let touch_counts = raw
            .first_touch
            .as_ref()
            .and_then(|f| f.touch_counts.as_deref())
            .and_then(|source| {
                Predicate::compile_for_activity(&cel, "first_touch.touch_counts", source)
                    .map_err(|e| problems.push(("first_touch.touch_counts".into(), e)))
                    .ok()
            });

        // Directory.
        for (id, person) in &raw.directory {
            if let Some(m) = &person.manager
                && !raw.directory.contains_key(m)
            {
                problems.push((
                    format!("directory.{id}.manager"),
                    format!("`{m}` is not in the directory"),
                ));
            }
        }

        // The top level.
        let recipients = resolve_recipients(&raw.recipients, "recipients", &mut problems);
        let base = settings(
            None,
            "",
            default_calendar,
            raw.handoff.as_ref(),
            raw.first_touch.as_ref(),
            raw.follow_up.as_ref(),
            raw.disposition.as_ref(),
            raw.pool.clone(),
            recipients,
            &mut problems,
        );
        let base_problems = problems.len();

        // Segments: the top level with their overrides.
        let mut segments = Vec::new();
        for (i, s) in raw.segments.iter().enumerate() {
            let key = format!("segments[{i}]");
            let when = compile(&format!("{key}.when"), &s.when, &mut problems);
            if s.first_touch
                .as_ref()
                .is_some_and(|f| f.touch_counts.is_some())
            {
                problems.push((
                    format!("{key}.first_touch.touch_counts"),
                    "whose activities count applies to every lead: set it in [first_touch]".into(),
                ));
            }
            if s.first_touch
                .as_ref()
                .is_some_and(|f| f.touch_kinds.is_some())
            {
                problems.push((
                    format!("{key}.first_touch.touch_kinds"),
                    "touch kinds apply to every lead: set them in [first_touch]".into(),
                ));
            }
            let calendar = match &s.calendar {
                Some(name) if !known_calendar(name) => {
                    problems.push((format!("{key}.calendar"), calendar_problem(name)));
                    None
                }
                Some(name) => calendars.get(name).cloned(),
                None => base.calendar.clone(),
            };
            let mut recipients = base.recipients.clone();
            if let Some(r) = &s.recipients {
                recipients.extend(resolve_recipients(
                    r,
                    &format!("{key}.recipients"),
                    &mut problems,
                ));
            }
            let merged_handoff = merge_handoff(raw.handoff.as_ref(), s.handoff.as_ref());
            let merged_first = merge_first_touch(raw.first_touch.as_ref(), s.first_touch.as_ref());
            let merged_follow = merge_follow_up(raw.follow_up.as_ref(), s.follow_up.as_ref());
            let merged_disp = merge_disposition(raw.disposition.as_ref(), s.disposition.as_ref());
            let mut seg_problems = Vec::new();
            let settings = settings(
                Some(s.name.clone().unwrap_or_else(|| key.clone())),
                &format!("{key}."),
                calendar,
                merged_handoff.as_ref(),
                merged_first.as_ref(),
                merged_follow.as_ref(),
                merged_disp.as_ref(),
                s.pool.clone().unwrap_or_else(|| raw.pool.clone()),
                recipients,
                &mut seg_problems,
            );
            // What is wrong at the top level is reported there once, not for every segment.
            for (k, m) in seg_problems {
                let top = k.strip_prefix(&format!("{key}.")).unwrap_or(&k).to_string();
                if !problems[..base_problems].contains(&(top, m.clone())) {
                    problems.push((k, m));
                }
            }
            if let Some(when) = when {
                segments.push(Segment {
                    when,
                    settings: Arc::new(settings),
                });
            }
        }

        match sales_ready {
            Some(sales_ready) if problems.is_empty() => {
                let mut rules = Rules {
                    cel,
                    lifecycle: Lifecycle {
                        sales_ready,
                        closed,
                        converted,
                        touch,
                    },
                    touch_kinds,
                    touch_counts,
                    base: Arc::new(base),
                    segments,
                    directory: raw.directory,
                    kept: Projection::All,
                    id: NEXT_ID.fetch_add(1, std::sync::atomic::Ordering::Relaxed),
                };
                rules.kept = Projection::of(&rules);
                Ok(rules)
            }
            _ => Err(problems),
        }
    }

    /// The settings that apply to a lead: the first segment whose `when` holds, else the top
    /// level. A `when` that cannot be evaluated does not match; `on_error` hears of it, with
    /// whether it was only a missing field.
    pub fn settings_for(
        &self,
        facts: &Facts,
        mut on_error: impl FnMut(&str, bool),
    ) -> &Arc<Settings> {
        let segment = self.segment_for(facts, |i, missing| {
            on_error(&self.segments[i].when.key, missing)
        });
        self.settings_at(segment)
    }

    /// Which settings apply to a lead, as [`Rules::settings_for`] says: `Some(i)` segment `i`,
    /// `None` the top level.
    /// `on_error` hears of each `when` that could not be evaluated by its segment's index.
    pub fn segment_for(
        &self,
        facts: &Facts,
        mut on_error: impl FnMut(usize, bool),
    ) -> Option<usize> {
        for (i, s) in self.segments.iter().enumerate() {
            match s.when.eval(&self.cel, facts) {
                Ok(true) => return Some(i),
                Ok(false) => {}
                Err(e) => on_error(i, matches!(e, PredicateError::MissingField { .. })),
            }
        }
        None
    }

    /// The settings of segment `i`, or the top level's.
    pub fn settings_at(&self, segment: Option<usize>) -> &Arc<Settings> {
        segment
            .and_then(|i| self.segments.get(i))
            .map_or(&self.base, |s| &s.settings)
    }

    /// Tells these rules from any other compiled in this process (a clone is the same rules):
    /// what a lead remembers of the rules' verdicts holds for these only.
    pub fn id(&self) -> u64 {
        self.id
    }

    /// What a change of the field `field` makes the rules' verdicts on a lead stale: bits
    /// `1 << slot` of [`crate::engine::state::Memo`]'s slots (`[lifecycle]`'s predicates, and
    /// which segment applies), those whose predicates read it (or may read any field).
    pub fn slots_reading(&self, field: &str) -> u8 {
        use super::state::Memo;
        let reads = |p: &Predicate| {
            p.reads()
                .is_none_or(|r| r.binary_search_by(|x| x.as_str().cmp(field)).is_ok())
        };
        let l = &self.lifecycle;
        let mut mask = 0;
        for (slot, p) in [
            (Memo::SALES_READY, Some(&l.sales_ready)),
            (Memo::CLOSED, l.closed.as_ref()),
            (Memo::CONVERTED, l.converted.as_ref()),
            (Memo::TOUCH, l.touch.as_ref()),
        ] {
            if p.is_some_and(reads) {
                mask |= 1 << slot;
            }
        }
        if self.segments.iter().any(|s| reads(&s.when)) {
            mask |= 1 << Memo::SEGMENT;
        }
        mask
    }

    /// The fields a lead keeps under these rules: those its predicates read, and those the
    /// engine and alerts read (see [`Projection`]).
    pub fn kept_fields(&self) -> &Projection {
        &self.kept
    }

    /// Whether any rule concerns close-outs (so close-outs are worth recording).
    pub fn has_closeout_rules(&self) -> bool {
        std::iter::once(&self.base)
            .chain(self.segments.iter().map(|s| &s.settings))
            .any(|s| s.follow_up.is_some() || s.disposition.is_some())
    }
}

fn resolve_recipients(
    raw: &BTreeMap<String, OneOrMany>,
    key: &str,
    problems: &mut Found,
) -> BTreeMap<String, Vec<String>> {
    let mut out = BTreeMap::new();
    for (role, ids) in raw {
        if BUILTIN_ROLES.contains(&role.as_str()) {
            problems.push((
                format!("{key}.{role}"),
                format!("`{role}` is the lead's own {role}; name another role"),
            ));
            continue;
        }
        let ids: Vec<String> = ids
            .0
            .iter()
            .map(|s| s.trim().to_string())
            .filter(|s| !s.is_empty())
            .collect();
        if ids.is_empty() {
            problems.push((
                format!("{key}.{role}"),
                "name at least one recipient".into(),
            ));
            continue;
        }
        out.insert(role.clone(), ids);
    }
    out
}

/// A segment's table over the top level's: what the segment names wins, field by field.
fn merge<T: Clone>(
    base: Option<&T>,
    over: Option<&T>,
    fields: impl FnOnce(&T, &T) -> T,
) -> Option<T> {
    match (base, over) {
        (b, None) => b.cloned(),
        (None, Some(o)) => Some(o.clone()),
        (Some(b), Some(o)) => Some(fields(b, o)),
    }
}

fn merge_handoff(base: Option<&RawHandoff>, over: Option<&RawHandoff>) -> Option<RawHandoff> {
    merge(base, over, |b, o| RawHandoff {
        assign_within: o.assign_within.clone().or_else(|| b.assign_within.clone()),
    })
}

fn merge_first_touch(
    base: Option<&RawFirstTouch>,
    over: Option<&RawFirstTouch>,
) -> Option<RawFirstTouch> {
    merge(base, over, |b, o| RawFirstTouch {
        within: o.within.clone().or_else(|| b.within.clone()),
        remind_before: o.remind_before.clone().or_else(|| b.remind_before.clone()),
        escalate: o.escalate.clone().or_else(|| b.escalate.clone()),
        touch_kinds: None,
        touch_counts: None,
    })
}

fn merge_follow_up(base: Option<&RawFollowUp>, over: Option<&RawFollowUp>) -> Option<RawFollowUp> {
    merge(base, over, |b, o| RawFollowUp {
        min_attempts: o.min_attempts.or(b.min_attempts),
        attempt_every: o.attempt_every.clone().or_else(|| b.attempt_every.clone()),
    })
}

fn merge_disposition(
    base: Option<&RawDisposition>,
    over: Option<&RawDisposition>,
) -> Option<RawDisposition> {
    merge(base, over, |b, o| RawDisposition {
        reasons: o.reasons.clone().or_else(|| b.reasons.clone()),
        vague: o.vague.clone().or_else(|| b.vague.clone()),
        detail_min_chars: o.detail_min_chars.or(b.detail_min_chars),
        feedback_within: o
            .feedback_within
            .clone()
            .or_else(|| b.feedback_within.clone()),
        reason_grace: o.reason_grace.clone().or_else(|| b.reason_grace.clone()),
    })
}

/// Builds and checks one set of settings; `at` prefixes key paths (`""` or `segments[2].`).
#[allow(clippy::too_many_arguments)]
fn settings(
    segment: Option<String>,
    at: &str,
    calendar: Option<Arc<Calendar>>,
    handoff: Option<&RawHandoff>,
    first_touch: Option<&RawFirstTouch>,
    follow_up: Option<&RawFollowUp>,
    disposition: Option<&RawDisposition>,
    pool: Vec<String>,
    recipients: BTreeMap<String, Vec<String>>,
    problems: &mut Found,
) -> Settings {
    // Durations first, each problem under its key.
    let assign_within = handoff.and_then(|h| {
        sla(
            &h.assign_within,
            format!("{at}handoff.assign_within"),
            problems,
        )
    });
    let within =
        first_touch.and_then(|f| sla(&f.within, format!("{at}first_touch.within"), problems));
    let remind_before = first_touch.and_then(|f| {
        sla(
            &f.remind_before,
            format!("{at}first_touch.remind_before"),
            problems,
        )
    });
    let afters: Vec<Option<SlaDuration>> = first_touch
        .and_then(|f| f.escalate.as_ref())
        .into_iter()
        .flatten()
        .enumerate()
        .map(|(i, s)| {
            sla(
                &Some(s.after.clone()),
                format!("{at}first_touch.escalate[{i}].after"),
                problems,
            )
        })
        .collect();
    let attempt_every = follow_up.and_then(|f| {
        sla(
            &f.attempt_every,
            format!("{at}follow_up.attempt_every"),
            problems,
        )
    });
    let feedback_within = disposition.and_then(|d| {
        sla(
            &d.feedback_within,
            format!("{at}disposition.feedback_within"),
            problems,
        )
    });
    // Durations are compared as the calendar runs them, from a Monday morning: in 09:00–17:00,
    // `1d` is about 8 working hours, not 24.
    let reference = calendar::next_working(
        calendar.as_deref(),
        "2030-01-07T00:00:00Z".parse().expect("a valid instant"),
    );
    let span = |d: SlaDuration| calendar::add(calendar.as_deref(), reference, d);

    let mut problem = |key: String, message: String| problems.push((format!("{at}{key}"), message));
    let role_exists = |role: &str| BUILTIN_ROLES.contains(&role) || recipients.contains_key(role);
    let roles_known = || {
        let mut all: Vec<&str> = BUILTIN_ROLES.to_vec();
        all.extend(recipients.keys().map(String::as_str));
        all.join(", ")
    };

    let handoff = handoff.and_then(|h| match (&h.assign_within, assign_within) {
        (None, _) => {
            problem(
                "handoff.assign_within".into(),
                "is required: how soon a sales-ready lead must have an owner".into(),
            );
            None
        }
        (Some(_), None) => None,
        (Some(_), Some(assign_within)) => {
            if !role_exists("queue") {
                problem(
                    "handoff".into(),
                    "unassigned leads go to the `queue` role: add `queue = [\"…\"]` to [recipients]"
                        .into(),
                );
            }
            Some(Handoff { assign_within })
        }
    });

    let first_touch = first_touch.and_then(|f| {
        let within = match (&f.within, within) {
            (Some(_), Some(within)) => within,
            (Some(_), None) => return None,
            (None, _) => {
                problem(
                    "first_touch.within".into(),
                    "is required: how soon the owner must touch a sales-ready lead".into(),
                );
                return None;
            }
        };
        if let Some(r) = remind_before
            && r.nominal() >= within.nominal()
        {
            problem(
                "first_touch.remind_before".into(),
                format!("must be shorter than `within` ({within})"),
            );
        }
        let mut escalate = Vec::new();
        let mut previous = within;
        for (i, s) in f.escalate.iter().flatten().enumerate() {
            let key = format!("first_touch.escalate[{i}]");
            let Some(after) = afters.get(i).copied().flatten() else {
                continue;
            };
            if span(after) <= span(previous) {
                let what = if i == 0 {
                    format!("`within` ({within})")
                } else {
                    format!("the step before ({previous})")
                };
                problem(
                    format!("{key}.after"),
                    format!(
                        "must be later than {what}: steps strictly increase{}",
                        if calendar.is_some() {
                            " in the calendar's working time"
                        } else {
                            ""
                        }
                    ),
                );
            }
            previous = after;
            let notify = s.notify.clone().unwrap_or_default();
            if s.notify.is_none() {
                problem(
                    format!("{key}.notify"),
                    format!("is required: the role to notify, one of {}", roles_known()),
                );
            } else if !role_exists(&notify) {
                problem(
                    format!("{key}.notify"),
                    format!(
                        "no role `{notify}`: use one of {}, or add it to [recipients]",
                        roles_known()
                    ),
                );
            }
            if s.reassign && pool.is_empty() {
                problem(
                    format!("{key}.reassign"),
                    "suggesting a new owner needs a `pool` of owners to choose from".into(),
                );
            }
            escalate.push(Step {
                after,
                notify,
                reassign: s.reassign,
            });
        }
        Some(FirstTouch {
            within,
            remind_before,
            escalate,
        })
    });

    let follow_up = follow_up.and_then(|f| match f.min_attempts {
        None | Some(0) => {
            problem(
                "follow_up.min_attempts".into(),
                "is required and at least 1: attempts owed before a lead may be disqualified"
                    .into(),
            );
            None
        }
        Some(min_attempts) => Some(FollowUp {
            min_attempts,
            attempt_every,
        }),
    });

    let disposition = disposition.map(|d| {
        let clean = |list: &Option<Vec<String>>| -> Vec<String> {
            list.iter()
                .flatten()
                .map(|s| s.trim().to_string())
                .filter(|s| !s.is_empty())
                .collect()
        };
        let (reasons, vague) = (clean(&d.reasons), clean(&d.vague));
        if reasons.is_empty() && vague.is_empty() {
            problem(
                "disposition.reasons".into(),
                "list the agreed close-out reasons".into(),
            );
        }
        if d.detail_min_chars == Some(0) && !vague.is_empty() {
            problem(
                "disposition.detail_min_chars".into(),
                "must be at least 1: a vague reason needs a written detail".into(),
            );
        }
        for v in &vague {
            if reasons.iter().any(|r| r.eq_ignore_ascii_case(v)) {
                problem(
                    "disposition.vague".into(),
                    format!("`{v}` is listed in both `reasons` and `vague`"),
                );
            }
        }
        let reason_grace = match &d.reason_grace {
            None => DEFAULT_REASON_GRACE,
            Some(Wall(Ok(g))) if *g <= std::time::Duration::from_secs(24 * 3600) => *g,
            Some(Wall(Ok(_))) => {
                problem(
                    "disposition.reason_grace".into(),
                    "must be at most 24h: the reason alerts wait that long after a close".into(),
                );
                DEFAULT_REASON_GRACE
            }
            Some(Wall(Err(message))) => {
                problem("disposition.reason_grace".into(), message.clone());
                DEFAULT_REASON_GRACE
            }
        };
        DispositionRules {
            reasons,
            vague,
            detail_min_chars: d.detail_min_chars.unwrap_or(1) as usize,
            feedback_within,
            reason_grace: jiff::SignedDuration::try_from(reason_grace).expect("at most 24h"),
        }
    });
    if (follow_up.is_some() || disposition.is_some()) && !role_exists("marketing_ops") {
        problem(
            "recipients".into(),
            "close-out alerts go to the rep and to `marketing_ops`: add `marketing_ops = [\"…\"]` \
             to [recipients]"
                .into(),
        );
    }

    Settings {
        segment,
        calendar,
        handoff,
        first_touch,
        follow_up,
        disposition,
        pool,
        recipients,
    }
}

#[cfg(test)]
mod tests;
