//! The SLA engine. [`Engine`] is pure: `(state, event)` → new state, and `(state, now)` → alerts.
//! No I/O and no clock reads, so the same code runs live ([`runner`]) and over past events.
//! [`partition::PartitionState`] holds one Kafka partition's leads and their deadlines.

pub mod partition;
pub mod rules;
pub mod runner;

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;

use jiff::{SignedDuration, Timestamp};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::alert::{Alert, AlertData, alert_id};
use crate::event::{Change, LeadEvent};
use crate::telemetry::Metrics;
use rules::Rules;

/// How many recent event ids a lead remembers, to ignore re-sent events.
const RECENT_EVENT_IDS: usize = 64;

/// Everything the engine knows about one lead. Serialized as-is to the state changelog.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct LeadState {
    /// The lead's fields, every patch merged in.
    pub fields: Map<String, Value>,
    /// When the current sales-ready episode began; `None` when the lead is not sales-ready.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sales_ready_at: Option<Timestamp>,
    /// The current owner, from the `owner` field.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub owner: Option<String>,
    /// When the current owner was assigned.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub owner_since: Option<Timestamp>,
    /// The first-touch SLA clock, running while the lead is sales-ready and owned.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub first_touch: Option<Clock>,
    /// When each field was last set, in event time: a patch that arrives late does not
    /// overwrite a newer value.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub field_at: BTreeMap<String, Timestamp>,
    /// The newest event time seen (retention counts from it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_event_at: Option<Timestamp>,
    /// Ids of the most recent events applied, newest last.
    #[serde(default)]
    pub recent_events: VecDeque<String>,
    /// Alerts already fired, as (rule, level, clock start) — what their ids are made of — newest
    /// last. Nothing fires twice under one id, whatever order events arrive in.
    #[serde(default, skip_serializing_if = "VecDeque::is_empty")]
    pub fired: VecDeque<Fired>,
}

/// One alert that fired.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Fired {
    pub rule: String,
    pub level: u32,
    pub clock: Timestamp,
}

/// How many fired alerts a lead remembers.
const FIRED_REMEMBERED: usize = 32;

impl LeadState {
    pub fn has_fired(&self, rule: &str, level: u32, clock: Timestamp) -> bool {
        self.fired
            .iter()
            .any(|f| f.rule == rule && f.level == level && f.clock == clock)
    }

    fn mark_fired(&mut self, rule: &str, level: u32, clock: Timestamp) {
        if self.fired.len() == FIRED_REMEMBERED {
            self.fired.pop_front();
        }
        self.fired.push_back(Fired {
            rule: rule.to_string(),
            level,
            clock,
        });
    }
}

/// One SLA clock of one lead.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Clock {
    /// When it started: the later of sales-ready and owned (event time).
    pub started_at: Timestamp,
    /// The owner it runs for; a new owner restarts the clock.
    pub owner: String,
    /// The first touch at or after `started_at`, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub touched_at: Option<Timestamp>,
}

/// What applying an event did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Applied {
    /// The state changed (write it to the changelog).
    Changed,
    /// The event id was already applied; nothing changed.
    Duplicate,
    /// The lead is to be erased (tombstone it).
    Forget,
}

/// The rules, compiled, and what is needed to evaluate them.
#[derive(Clone)]
pub struct Engine {
    rules: Arc<Rules>,
    metrics: Arc<Metrics>,
}

impl Engine {
    pub fn new(rules: Arc<Rules>, metrics: Arc<Metrics>) -> Self {
        Self { rules, metrics }
    }

    pub fn rules(&self) -> &Rules {
        &self.rules
    }

    /// Applies one event to a lead's state.
    pub fn apply(&self, state: &mut LeadState, event: &LeadEvent) -> Applied {
        if state.recent_events.iter().any(|id| id == &event.id) {
            return Applied::Duplicate;
        }
        if state.recent_events.len() == RECENT_EVENT_IDS {
            state.recent_events.pop_front();
        }
        state.recent_events.push_back(event.id.clone());

        state.last_event_at = Some(match state.last_event_at {
            Some(t) => t.max(event.occurred_at),
            None => event.occurred_at,
        });

        match &event.change {
            Change::Forgotten {} => return Applied::Forget,
            Change::Deleted {} | Change::Merged { .. } => {
                state.sales_ready_at = None;
                state.first_touch = None;
            }
            Change::Updated { fields } => {
                let at = event.occurred_at;
                for (k, v) in fields {
                    // Applied by event time: a late patch does not undo a newer one.
                    if state.field_at.get(k).is_some_and(|newer| *newer > at) {
                        continue;
                    }
                    state.field_at.insert(k.clone(), at);
                    if v.is_null() {
                        state.fields.remove(k);
                    } else {
                        state.fields.insert(k.clone(), v.clone());
                    }
                }
                self.update_lifecycle(state, at);
            }
            Change::Activity { activity } => {
                let kind = activity.kind.to_lowercase();
                let counts = self.rules.first_touch.touch_kinds.contains(&kind);
                if let Some(clock) = state.first_touch.as_mut()
                    && counts
                    && event.occurred_at >= clock.started_at
                {
                    clock.touched_at = Some(match clock.touched_at {
                        Some(t) => t.min(event.occurred_at),
                        None => event.occurred_at,
                    });
                }
            }
        }
        Applied::Changed
    }

    fn update_lifecycle(&self, state: &mut LeadState, at: Timestamp) {
        let owner = state
            .fields
            .get("owner")
            .and_then(Value::as_str)
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(str::to_string);
        if owner != state.owner {
            state.owner_since = owner.as_ref().map(|_| at);
            state.owner = owner;
        }

        let ready = match self.rules.sales_ready.eval(&state.fields) {
            Ok(ready) => ready,
            Err(e) => {
                tracing::debug!(error = %e, "lifecycle.sales_ready counted as false");
                self.metrics.rule_errors("lifecycle.sales_ready");
                false
            }
        };
        match (ready, state.sales_ready_at) {
            (true, None) => state.sales_ready_at = Some(at),
            (false, Some(_)) => {
                // The episode ends: no clock runs for a lead that is not sales-ready.
                state.sales_ready_at = None;
                state.first_touch = None;
            }
            _ => {}
        }

        match (&state.sales_ready_at, &state.owner, &state.owner_since) {
            (Some(ready_at), Some(owner), Some(owner_since)) => {
                let started_at = (*ready_at).max(*owner_since);
                match state.first_touch.as_mut() {
                    Some(clock) if &clock.owner == owner => {}
                    // Events that arrived out of order corrected who owned the lead when this
                    // clock started: the same clock (same start, same alert ids), another owner.
                    Some(clock) if clock.started_at == started_at => clock.owner = owner.clone(),
                    _ => {
                        state.first_touch = Some(Clock {
                            started_at,
                            owner: owner.clone(),
                            touched_at: None,
                        })
                    }
                }
            }
            _ => state.first_touch = None,
        }
    }

    /// Whether a lead can be dropped: nothing pending, and no event for `retention`.
    pub fn expired(
        &self,
        state: &LeadState,
        now: Timestamp,
        retention: std::time::Duration,
    ) -> bool {
        let retention = SignedDuration::try_from(retention).unwrap_or(SignedDuration::MAX);
        self.next_deadline(state).is_none()
            && state
                .last_event_at
                .is_none_or(|t| t.saturating_add(retention).unwrap_or(Timestamp::MAX) <= now)
    }

    /// The next instant at which [`Engine::fire_due`] has something to do for this lead.
    pub fn next_deadline(&self, state: &LeadState) -> Option<Timestamp> {
        let clock = state.first_touch.as_ref()?;
        if state.has_fired("first_touch", 0, clock.started_at) {
            return None;
        }
        let deadline = self.first_touch_deadline(clock);
        match clock.touched_at {
            Some(t) if t <= deadline => None,
            _ => Some(deadline),
        }
    }

    fn first_touch_deadline(&self, clock: &Clock) -> Timestamp {
        let within =
            SignedDuration::try_from(self.rules.first_touch.within).unwrap_or(SignedDuration::MAX);
        clock
            .started_at
            .saturating_add(within)
            .unwrap_or(Timestamp::MAX)
    }

    /// Alerts due at `now` for this lead; marks them fired in the state.
    pub fn fire_due(&self, lead: &str, state: &mut LeadState, now: Timestamp) -> Vec<Alert> {
        let Some(deadline) = self.next_deadline(state) else {
            return Vec::new();
        };
        if deadline > now {
            return Vec::new();
        }
        let sales_ready_at = state.sales_ready_at;
        let Some(clock) = state.first_touch.clone() else {
            return Vec::new();
        };
        state.mark_fired("first_touch", 0, clock.started_at);
        let within = humantime::format_duration(self.rules.first_touch.within);
        let message = format!(
            "Lead {lead} has been sales-ready and owned by {} since {}, with no touch within {within}: \
             the first-touch deadline passed at {deadline}.",
            clock.owner, clock.started_at
        );
        vec![Alert {
            kind: "sla.first_touch.breached".into(),
            timestamp: now,
            data: AlertData {
                alert_id: alert_id(lead, "first_touch", 0, clock.started_at),
                lead: lead.to_string(),
                owner: Some(clock.owner.clone()),
                rule: "first_touch".into(),
                level: 0,
                to: vec!["owner".into()],
                recipients: Vec::new(),
                sales_ready_at,
                clock_started_at: clock.started_at,
                deadline,
                suggested_owner: None,
                disposition: None,
                lead_info: Default::default(),
                link: None,
                message,
            },
        }]
    }

    /// Undoes the firing of `alert` (its write to Kafka failed for good), so it fires again.
    pub fn unfire(&self, state: &mut LeadState, alert: &Alert) {
        let d = &alert.data;
        state
            .fired
            .retain(|f| !(f.rule == d.rule && f.level == d.level && f.clock == d.clock_started_at));
    }
}

#[cfg(test)]
mod tests;
