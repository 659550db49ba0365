//! Alerts: what the engine decides and the dispatcher delivers. The JSON form is exactly the body
//! a webhook sink receives.

use jiff::Timestamp;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// One alert, as delivered: `{"type":…,"timestamp":…,"data":{…}}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Alert {
    /// `sla.first_touch.breached`, …
    #[serde(rename = "type")]
    pub kind: String,
    /// When the engine fired it.
    pub timestamp: Timestamp,
    pub data: AlertData,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AlertData {
    /// Deterministic: the same after any retry, restart, replay or rules edit (see [`alert_id`]).
    pub alert_id: String,
    pub lead: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub owner: Option<String>,
    /// The rule of the rules file that was broken (`first_touch`, …).
    pub rule: String,
    /// 0 for the breach itself, n for the n-th escalation step.
    pub level: u32,
    pub sales_ready_at: Timestamp,
    /// When this SLA clock started (the later of sales-ready and owned; an owner change restarts it).
    pub clock_started_at: Timestamp,
    pub deadline: Timestamp,
    /// One sentence a person can act on.
    pub message: String,
}

impl Alert {
    pub fn id(&self) -> &str {
        &self.data.alert_id
    }
}

/// The id of an alert: a hash of (lead, rule, level, start of that SLA clock). It does not depend
/// on the deadline, so editing the rules never makes an alert that already fired fire again.
pub fn alert_id(lead: &str, rule: &str, level: u32, clock_started_at: Timestamp) -> String {
    let mut h = Sha256::new();
    for part in [
        lead,
        rule,
        &level.to_string(),
        &clock_started_at.to_string(),
    ] {
        h.update((part.len() as u64).to_be_bytes());
        h.update(part.as_bytes());
    }
    let digest = h.finalize();
    let hex: String = digest[..16].iter().map(|b| format!("{b:02x}")).collect();
    format!("alert_{hex}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_deterministic_and_distinguish_each_part() {
        let t: Timestamp = "2026-11-22T10:00:00Z".parse().unwrap();
        let a = alert_id("L-1", "first_touch", 0, t);
        assert_eq!(a, alert_id("L-1", "first_touch", 0, t));
        assert!(a.starts_with("alert_") && a.len() == 6 + 32);
        assert_ne!(a, alert_id("L-2", "first_touch", 0, t));
        assert_ne!(a, alert_id("L-1", "handoff", 0, t));
        assert_ne!(a, alert_id("L-1", "first_touch", 1, t));
        assert_ne!(
            a,
            alert_id(
                "L-1",
                "first_touch",
                0,
                t + jiff::SignedDuration::from_secs(1)
            )
        );
        // Length-prefixed parts: moving a character between parts changes the id.
        assert_ne!(alert_id("L-1f", "irst_touch", 0, t), a);
    }
}
