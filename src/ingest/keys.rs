//! Lead keys and event ids: they become Kafka keys, so how long they may be is checked once for
//! every source; and the hashed id sources derive when their vendor gives none.

use super::error::{FieldProblem, IngestError};
use super::handler::Parsed;

/// Longest lead key or event id produced (a Kafka key; vendors' ids are far shorter).
pub const MAX_KEY_LEN: usize = 600;

/// A vendor body could name a lead with megabytes: refuse it as malformed.
pub(super) fn check_keys(parsed: Parsed) -> Result<Parsed, IngestError> {
    for e in &parsed.events {
        for (what, value) in [("lead", &e.lead), ("id", &e.id)] {
            if value.len() > MAX_KEY_LEN || value.trim().is_empty() {
                return Err(IngestError::Malformed(vec![FieldProblem::new(
                    what,
                    format!("the {what} must be 1 to {MAX_KEY_LEN} bytes long"),
                )]));
            }
            // Control characters are no part of a CRM id (and the engine keeps its own records
            // in the state changelog under keys that start with one).
            if value.chars().any(char::is_control) {
                return Err(IngestError::Malformed(vec![FieldProblem::new(
                    what,
                    format!("the {what} must not contain control characters"),
                )]));
            }
        }
    }
    Ok(parsed)
}

/// A stable event id from parts: `{prefix}:{first 32 hex digits of a hash of the parts}`. The
/// parts are length-prefixed, so moving a character between parts changes the id.
pub fn hashed_id(prefix: &str, parts: &[&str]) -> String {
    use sha2::{Digest, Sha256};
    let mut h = Sha256::new();
    for part in parts {
        h.update((part.len() as u64).to_be_bytes());
        h.update(part.as_bytes());
    }
    let digest = h.finalize();
    let hex: String = digest[..16].iter().map(|b| format!("{b:02x}")).collect();
    format!("{prefix}:{hex}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn absurdly_long_lead_keys_are_malformed() {
        use crate::event::{Change, LeadEvent};
        let event = |lead: String| LeadEvent {
            id: "e".into(),
            source: "s".into(),
            lead,
            occurred_at: jiff::Timestamp::UNIX_EPOCH,
            received_at: jiff::Timestamp::UNIX_EPOCH,
            change: Change::Deleted {},
        };
        let ok = Parsed {
            events: vec![event("marketo:1".into())],
            ..Default::default()
        };
        assert!(check_keys(ok).is_ok());
        let long = Parsed {
            events: vec![event(format!("marketo:{}", "9".repeat(700)))],
            ..Default::default()
        };
        assert!(matches!(
            check_keys(long),
            Err(IngestError::Malformed(ps)) if ps[0].field == "lead"
        ));
    }
}
