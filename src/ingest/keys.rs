//! Lead keys and event ids: they become Kafka keys, so how long they may be is decided here for
//! every source; and the hashed id sources derive when their vendor gives none.
//!
//! One limit, in two places: a key a sender gives to be taken verbatim (the generic source's
//! `id`, `lead` and `into`) may be [`MAX_VERBATIM_KEY_LEN`] bytes, checked while the body is
//! read so its 400 names the field; a key leadwatch produces may be longer by the prefixes it
//! adds (a system name such as `salesforce:`, a replay's `replay:{run}:`), up to
//! [`MAX_KEY_LEN`], checked for every source once the body is parsed.

use super::error::{FieldProblem, IngestError};
use super::handler::Parsed;
use crate::event::Change;

/// Longest key a sender gives to be taken verbatim: the generic source's `id`, `lead` and
/// `into`, checked field by field while its body is read.
pub const MAX_VERBATIM_KEY_LEN: usize = 512;

/// Room for the prefixes leadwatch puts before a key (`salesforce:`, `replay:{run}:` …).
const PREFIX_ROOM: usize = 88;

/// Longest lead key or event id any source produces (a Kafka key; vendors' ids are far
/// shorter): a verbatim key and the prefixes leadwatch adds. `check_keys` refuses a longer one
/// as malformed, whatever the source.
pub const MAX_KEY_LEN: usize = MAX_VERBATIM_KEY_LEN + PREFIX_ROOM;

/// The systems whose lead keys name an object in their CRM, `{system}:{object id}`: the CRM
/// sinks build URLs from the id, so it may only be an id.
pub const NAMESPACES: [&str; 4] = ["hubspot", "salesforce", "marketo", "pipedrive"];

/// The system a key names by its prefix, in any case (`HubSpot:1` names `hubspot`).
pub fn namespace_of(key: &str) -> Option<&'static str> {
    let (prefix, _) = key.split_once(':')?;
    NAMESPACES
        .into_iter()
        .find(|ns| ns.eq_ignore_ascii_case(prefix))
}

/// Why a key in a system's namespace is no `{system}:{object id}` (the prefix in lowercase,
/// the id of letters and digits; Pipedrive's lead ids are UUIDs, so hyphens there too); `None`
/// for a good one and for keys of no system (taken verbatim).
pub fn object_id_problem(key: &str) -> Option<String> {
    let ns = namespace_of(key)?;
    let id = key.strip_prefix(ns).and_then(|rest| rest.strip_prefix(':'));
    let allowed = |c: char| c.is_ascii_alphanumeric() || (ns == "pipedrive" && c == '-');
    match id {
        Some(id) if !id.is_empty() && id.chars().all(allowed) => None,
        _ if ns == "pipedrive" => Some(format!(
            "a `{ns}:` key must be `{ns}:` and an id of letters, digits and hyphens"
        )),
        _ => Some(format!(
            "a `{ns}:` key must be `{ns}:` and an id of letters and digits"
        )),
    }
}

/// A vendor body could name a lead with megabytes, or smuggle a path into a CRM's URL through
/// an object id: refuse it as malformed.
pub(super) fn check_keys(parsed: Parsed) -> Result<Parsed, IngestError> {
    for e in &parsed.events {
        let into = match &e.change {
            Change::Merged { into } => Some(into),
            _ => None,
        };
        for (what, key) in [("lead", Some(&e.lead)), ("into", into)] {
            if let Some(problem) = key.and_then(|k| object_id_problem(k)) {
                return Err(IngestError::Malformed(vec![FieldProblem::new(
                    what, problem,
                )]));
            }
        }
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
    use crate::event::LeadEvent;

    /// What a parse made: one event on `lead`.
    fn one_event_on(lead: String) -> Parsed {
        Parsed {
            events: vec![LeadEvent {
                id: "e".into(),
                source: "s".into(),
                lead,
                occurred_at: jiff::Timestamp::UNIX_EPOCH,
                received_at: jiff::Timestamp::UNIX_EPOCH,
                change: Change::Deleted {},
            }],
            ..Default::default()
        }
    }

    /// Event ids are what the engine recognises a re-sent event by (per lead, in the state
    /// changelog) and what ingest drops vendor retries by: derived any other way after an
    /// upgrade, every retry and replay of an event already applied would be applied again (a
    /// replayed call counted as a second attempt). The ids of fixed inputs are literals,
    /// computed once. Do not update them; undo the change.
    #[test]
    fn event_id_derivations_are_pinned() {
        assert_eq!(
            [
                hashed_id("hubspot", &["62515", "contact.creation", "1551"]),
                hashed_id("marketo", &[]),
                // Length-prefixed: the same characters split otherwise give another id.
                hashed_id("x", &["ab", "c"]),
                hashed_id("x", &["a", "bc"]),
            ],
            [
                "hubspot:fbf63180f957df9166742079064da88b",
                "marketo:e3b0c44298fc1c149afbf4c8996fb924",
                "x:601d5476e2ccfe2c87a2bba7a3226597",
                "x:3fafa1cf2f19a7c1129beb20cf0983f7",
            ]
        );
        // In memory only, but one key space for every source: a source's name is part of it.
        assert_eq!(
            crate::ingest::dedupe::dedupe_key("web", "evt-1"),
            "web\u{0}evt-1"
        );
        assert_eq!(
            crate::ingest::replay::replay_id("1795860000000", "hubspot:abc"),
            "replay:1795860000000:hubspot:abc"
        );
    }

    #[test]
    fn absurdly_long_lead_keys_are_malformed() {
        let ok = one_event_on("marketo:1".into());
        assert!(check_keys(ok).is_ok());
        let long = one_event_on(format!("marketo:{}", "9".repeat(700)));
        assert!(matches!(
            check_keys(long),
            Err(IngestError::Malformed(ps)) if ps[0].field == "lead"
        ));
    }

    /// From any source, the vendors' own mappings and their merge targets included.
    #[test]
    fn an_object_id_in_a_systems_namespace_is_letters_and_digits() {
        for good in [
            "hubspot:1551",
            "salesforce:00Q5g00000ABCDEEA2",
            "marketo:4711",
            "pipedrive:0f6e2c1e-7c55-4d2b-9a4e-51b1c2a3d4e5",
            "L-1/../x",
            "crm:1/2",
        ] {
            assert!(check_keys(one_event_on(good.into())).is_ok(), "{good}");
        }
        for bad in [
            "hubspot:1/../../companies/5",
            "hubspot:",
            "HubSpot:1551",
            "salesforce:00Q?x=1",
            "marketo:1 2",
            "pipedrive:4711/../1",
            "hubspot:1551:2",
        ] {
            let Err(IngestError::Malformed(ps)) = check_keys(one_event_on(bad.into())) else {
                panic!("{bad} accepted");
            };
            assert_eq!(ps[0].field, "lead", "{bad}");
        }
        let mut merged = one_event_on("hubspot:7".into());
        merged.events[0].change = Change::Merged {
            into: "hubspot:8/../9".into(),
        };
        let Err(IngestError::Malformed(ps)) = check_keys(merged) else {
            panic!("a merge target with a path accepted");
        };
        assert_eq!(ps[0].field, "into");
    }

    #[test]
    fn a_produced_key_may_be_max_key_len_bytes_and_no_more() {
        let prefix = "marketo:";
        let longest = format!("{prefix}{}", "9".repeat(MAX_KEY_LEN - prefix.len()));
        assert!(check_keys(one_event_on(longest.clone())).is_ok());
        assert!(check_keys(one_event_on(format!("{longest}9"))).is_err());
    }
}
