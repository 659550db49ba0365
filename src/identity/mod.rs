//! The identity join: which records of the systems (`marketo:501`, `salesforce:00Q…`) are one
//! person, and that person's lead key, so the rules see one lead per person.
//!
//! Its place in the flow (DESIGN.md): ingest writes each system's record as it comes
//! (`{prefix}.records`, key = record key); the identity stage joins them and writes
//! `{prefix}.events` (key = the person's lead key) for the engine. This module is the stage's
//! pure core: the configuration (`[identity]` of the rules file, [`IdentityConfig`]), what an
//! event asserts ([`assertions`]) and the [`Resolver`] that groups records into persons. No I/O,
//! no clock. Today `leadwatch simulate` joins with it (over the whole file, before the engine);
//! the daemon does not join yet.
//!
//! Identities: the normalised email ([`normalize_email`]); the configured keys (a field of one
//! system's records that names a record of another, such as Marketo's `sfdcLeadId`); a vendor's
//! own merge (`lead.merged` names the record it went into); and each record's own key.

mod config;
mod resolver;

use serde_json::Value;

pub use config::{CRM, GENERIC, IdentityConfig, Key, MAP, system_of};
pub use resolver::{Resolved, Resolver};

use crate::event::{Change, LeadEvent};

/// Something that says who a record is.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Identity {
    /// A normalised email address.
    Email(String),
    /// A record key (`salesforce:00Q…`): the record itself, and any record that names it.
    Record(String),
}

/// Where on a record an identity sits: a later event that sets the same slot replaces it (an
/// email that changes moves the record), one that does not mention it leaves it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Slot {
    Email,
    /// The configured key of this index ([`IdentityConfig::keys`]).
    Key(usize),
    /// The record a vendor merged this one into.
    MergedInto,
}

/// An email as identity: trimmed and lower-cased; empty (or no string): none.
pub fn normalize_email(value: &Value) -> Option<String> {
    let email = value.as_str()?.trim();
    (!email.is_empty()).then(|| email.to_lowercase())
}

/// A key's value as identity: a string or a whole number, trimmed; empty: none.
fn key_value(value: &Value) -> Option<String> {
    let v = match value {
        Value::String(s) => s.trim().to_string(),
        Value::Number(n) if n.is_u64() || n.is_i64() => n.to_string(),
        _ => return None,
    };
    (!v.is_empty()).then_some(v)
}

/// A Salesforce record id in the 18-character form its records' keys carry (`salesforce:{Id}`,
/// as its API and outbound messages send it): a 15-character id (what a report, a formula or a
/// synced field may hold) gains its three check characters, which encode, five characters at a
/// time, which are upper-case letters. Anything else is left as it is.
pub fn salesforce_id18(id: &str) -> std::borrow::Cow<'_, str> {
    const CHECK: &[u8; 32] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ012345";
    if id.len() != 15 || !id.bytes().all(|b| b.is_ascii_alphanumeric()) {
        return id.into();
    }
    let mut full = String::with_capacity(18);
    full.push_str(id);
    for chunk in id.as_bytes().chunks(5) {
        let bits = chunk
            .iter()
            .enumerate()
            .filter(|(_, b)| b.is_ascii_uppercase())
            .fold(0, |n, (i, _)| n | 1 << i);
        full.push(char::from(CHECK[bits]));
    }
    full.into()
}

/// What `event` says of its record's identities: each slot it sets, with the identity now there
/// (`None`: it cleared it). Nothing when the join is off or the record's system may not assert
/// identities.
pub fn assertions(config: &IdentityConfig, event: &LeadEvent) -> Vec<(Slot, Option<Identity>)> {
    let system = system_of(&event.lead);
    if !config.asserts(system) {
        return Vec::new();
    }
    match &event.change {
        Change::Updated { fields } => {
            let mut found = Vec::new();
            if let Some(email) = fields.get("email") {
                found.push((Slot::Email, normalize_email(email).map(Identity::Email)));
            }
            for (i, key) in config.keys.iter().enumerate() {
                if key.source != system {
                    continue;
                }
                if let Some(value) = fields.get(&key.field) {
                    let record = key_value(value).map(|v| match key.record.as_str() {
                        "salesforce" => format!("salesforce:{}", salesforce_id18(&v)),
                        system => format!("{system}:{v}"),
                    });
                    found.push((Slot::Key(i), record.map(Identity::Record)));
                }
            }
            found
        }
        Change::Merged { into } => vec![(Slot::MergedInto, Some(Identity::Record(into.clone())))],
        _ => Vec::new(),
    }
}

#[cfg(test)]
mod tests;
