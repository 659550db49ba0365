//! `[identity]`, a section of the rules file (so `leadwatch simulate` joins exactly as the daemon
//! will): whether records of one person are joined, by which identities, asserted by which
//! systems, and whose word counts for each field.
//!
//! ```toml
//! [identity]
//! enabled = true                                  # default; with no section: the email join
//! sources = ["salesforce", "hubspot", "pipedrive", "marketo"]   # default; add "generic" for
//!                                                 # records whose key names no system
//! [[identity.keys]]                               # default: these two
//! source = "marketo"                              # records of this system carry …
//! field = "sfdcLeadId"                            # … this field of their events (vendor or canonical name)
//! record = "salesforce"                           # … naming a record there: `salesforce:{value}`
//! [[identity.keys]]
//! source = "hubspot"
//! field = "salesforceleadid"
//! record = "salesforce"
//!
//! [identity.system_of_record]                     # per canonical field, systems in order of
//! owner = "crm"                                   # precedence; "crm" is salesforce, hubspot,
//! score = ["marketo", "hubspot"]                  # pipedrive; "map" is marketo, hubspot;
//! company = []                                    # [] is the newest value, whoever set it
//! ```
//!
//! The system of a record is the prefix of its key (`marketo:501` → `marketo`); a key that
//! names no system is `generic`'s.

use std::collections::BTreeMap;

use serde::Deserialize;
use serde_json::Value;

use crate::conf::{KeyProblems, from_value_lenient, nested};
use crate::ingest::fields::{CANONICAL, is_canonical};
use crate::ingest::{NAMESPACES, namespace_of};

/// The CRMs: their record's key names a joined lead, and by default their word counts for the
/// fields sales owns.
pub const CRM: [&str; 3] = ["salesforce", "hubspot", "pipedrive"];

/// The marketing-automation systems (HubSpot is both): by default their word counts for score.
pub const MAP: [&str; 2] = ["marketo", "hubspot"];

/// The system of records whose key names none.
pub const GENERIC: &str = "generic";

/// Which systems may assert identities unless `sources` says otherwise: the CRMs and the MAPs.
const DEFAULT_SOURCES: [&str; 4] = ["salesforce", "hubspot", "pipedrive", "marketo"];

/// The fields whose system of record is the CRM unless configured.
const CRM_FIELDS: [&str; 5] = [
    "owner",
    "status",
    "stage",
    "disposition_reason",
    "disposition_detail",
];

/// The fields whose system of record is the MAP unless configured.
const MAP_FIELDS: [&str; 1] = ["score"];

/// The system a record belongs to: its key's prefix, or [`GENERIC`].
pub fn system_of(record: &str) -> &'static str {
    namespace_of(record).unwrap_or(GENERIC)
}

/// `[identity]`, validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdentityConfig {
    /// Whether records are joined at all; off: every record is a lead of its own, as before.
    pub enabled: bool,
    /// The identities besides the email that sources supply.
    pub keys: Vec<Key>,
    /// The systems whose records may assert identities; others' records stay leads of their own.
    pub sources: Vec<String>,
    /// Canonical field → its systems of record, first first; fields not named: the defaults.
    system_of_record: BTreeMap<String, Vec<String>>,
}

/// An identity a system's records carry in a field: the key of a record in another system.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Key {
    /// The system whose records carry it.
    pub source: String,
    /// The field of their events' patches that holds it (as the event has it: a vendor's name
    /// such as `sfdcLeadId`, or a canonical name).
    pub field: String,
    /// The system whose record the value names: the identity is `{record}:{value}`.
    pub record: String,
}

impl Default for IdentityConfig {
    /// No `[identity]` section: the email join, by the CRMs and MAPs, with the default keys and
    /// systems of record.
    fn default() -> Self {
        Self {
            enabled: true,
            keys: default_keys(),
            sources: DEFAULT_SOURCES.map(String::from).to_vec(),
            system_of_record: BTreeMap::new(),
        }
    }
}

fn default_keys() -> Vec<Key> {
    [("marketo", "sfdcLeadId"), ("hubspot", "salesforceleadid")]
        .map(|(source, field)| Key {
            source: source.into(),
            field: field.into(),
            record: "salesforce".into(),
        })
        .to_vec()
}

fn yes() -> bool {
    true
}

/// A system or a list of them.
struct Systems(Vec<String>);

impl<'de> Deserialize<'de> for Systems {
    fn deserialize<D: serde::Deserializer<'de>>(de: D) -> Result<Self, D::Error> {
        crate::conf::one_or_many(de, "expected a system name or a list of them").map(Systems)
    }
}

#[derive(eserde::Deserialize)]
#[serde(deny_unknown_fields)]
struct RawIdentity {
    #[serde(default = "yes")]
    enabled: bool,
    #[serde(default)]
    #[eserde(compat)]
    keys: Option<Vec<Key>>,
    #[serde(default)]
    sources: Option<Vec<String>>,
    #[serde(default)]
    #[eserde(compat)]
    system_of_record: BTreeMap<String, Systems>,
}

/// The systems a record key can name, and `generic`.
fn known_system(name: &str) -> bool {
    name == GENERIC || NAMESPACES.contains(&name)
}

fn systems_list() -> String {
    let mut all = NAMESPACES.to_vec();
    all.push(GENERIC);
    all.join(", ")
}

impl IdentityConfig {
    /// `[identity]` of a rules file's TOML text, as [`IdentityConfig::from_rules`].
    pub fn parse(rules: &str) -> Result<IdentityConfig, KeyProblems> {
        let value: Value = ::config::Config::builder()
            .add_source(::config::File::from_str(rules, ::config::FileFormat::Toml))
            .build()
            .and_then(|c| c.try_deserialize())
            .map_err(|e| vec![(String::new(), e.to_string())])?;
        Self::from_rules(&value)
    }

    /// `[identity]` of a rules file as read (the whole file: other sections are the engine's);
    /// problems keyed from the file's top (`identity.keys[0].record`).
    pub fn from_rules(rules: &Value) -> Result<IdentityConfig, KeyProblems> {
        match rules.get("identity") {
            None => Ok(IdentityConfig::default()),
            Some(section) => {
                Self::from_value(section).map_err(|ps| nested("identity", ps).collect())
            }
        }
    }

    /// The section itself; problems keyed relative to it.
    pub fn from_value(section: &Value) -> Result<IdentityConfig, KeyProblems> {
        let (raw, mut problems): (RawIdentity, KeyProblems) = from_value_lenient(section)?;
        let sources = match raw.sources {
            Some(sources) => sources,
            None => DEFAULT_SOURCES.map(String::from).to_vec(),
        };
        for (i, s) in sources.iter().enumerate() {
            if !known_system(s) {
                problems.push((
                    format!("sources[{i}]"),
                    format!("`{s}` is not one of {}", systems_list()),
                ));
            } else if sources[..i].contains(s) {
                problems.push((format!("sources[{i}]"), format!("`{s}` is listed twice")));
            }
        }
        // The default keys of the systems that may assert; configured keys are checked.
        let keys = raw.keys.unwrap_or_else(|| {
            default_keys()
                .into_iter()
                .filter(|k| sources.contains(&k.source))
                .collect()
        });
        for (i, k) in keys.iter().enumerate() {
            let at = |what: &str| format!("keys[{i}].{what}");
            if !known_system(&k.source) {
                problems.push((
                    at("source"),
                    format!("`{}` is not one of {}", k.source, systems_list()),
                ));
            } else if !sources.contains(&k.source) {
                problems.push((
                    at("source"),
                    format!(
                        "`{}` may not assert identities: add it to identity.sources",
                        k.source
                    ),
                ));
            }
            if k.field.trim().is_empty() {
                problems.push((at("field"), "must name a field".into()));
            } else if k.field == "email" {
                problems.push((at("field"), "the email is an identity already".into()));
            }
            if !NAMESPACES.contains(&k.record.as_str()) {
                problems.push((
                    at("record"),
                    format!("`{}` is not one of {}", k.record, NAMESPACES.join(", ")),
                ));
            }
            if keys[..i]
                .iter()
                .any(|o| o.source == k.source && o.field == k.field)
            {
                problems.push((
                    format!("keys[{i}]"),
                    format!("`{}` of `{}` is listed twice", k.field, k.source),
                ));
            }
        }
        let mut system_of_record = BTreeMap::new();
        for (field, Systems(systems)) in raw.system_of_record {
            let key = format!("system_of_record.{field}");
            if !is_canonical(&field) {
                let names: Vec<&str> = CANONICAL.iter().map(|(n, _)| *n).collect();
                problems.push((
                    key.clone(),
                    format!(
                        "not a canonical field; expected one of {}",
                        names.join(", ")
                    ),
                ));
            }
            let mut expanded: Vec<String> = Vec::new();
            for (i, s) in systems.iter().enumerate() {
                let named: &[&str] = match s.as_str() {
                    "crm" => &CRM,
                    "map" => &MAP,
                    s if NAMESPACES.contains(&s) => &[s],
                    _ => {
                        problems.push((
                            format!("{key}[{i}]"),
                            format!(
                                "`{s}` is not `crm`, `map` or one of {}",
                                NAMESPACES.join(", ")
                            ),
                        ));
                        &[]
                    }
                };
                for n in named {
                    if !expanded.iter().any(|e| e == n) {
                        expanded.push(n.to_string());
                    }
                }
            }
            system_of_record.insert(field, expanded);
        }
        if !problems.is_empty() {
            return Err(problems);
        }
        Ok(IdentityConfig {
            enabled: raw.enabled,
            keys,
            sources,
            system_of_record,
        })
    }

    /// The systems of record of `field`, first first; empty: the newest value counts.
    pub fn systems_of_record(&self, field: &str) -> &[String] {
        if let Some(s) = self.system_of_record.get(field) {
            return s;
        }
        static CRMS: std::sync::LazyLock<Vec<String>> =
            std::sync::LazyLock::new(|| CRM.map(String::from).to_vec());
        static MAPS: std::sync::LazyLock<Vec<String>> =
            std::sync::LazyLock::new(|| MAP.map(String::from).to_vec());
        if CRM_FIELDS.contains(&field) {
            &CRMS
        } else if MAP_FIELDS.contains(&field) {
            &MAPS
        } else {
            &[]
        }
    }

    /// Where a value of `field` from `system` stands: `Some(0)` for its first system of record,
    /// `Some(1)` the next …; `None` for a system that is none of them (its value counts only
    /// where no system of record set one).
    pub fn precedence(&self, field: &str, system: &str) -> Option<usize> {
        self.systems_of_record(field)
            .iter()
            .position(|s| s == system)
    }

    /// Whether a newer value of `field` from system `incoming` replaces the value the lead holds,
    /// set by system `held` (`None`: the lead holds none): unless the holder stands higher
    /// (a system of record over any other, or an earlier one in the list), the newer value wins.
    pub fn replaces(&self, field: &str, held: Option<&str>, incoming: &str) -> bool {
        let Some(held) = held else { return true };
        let rank = |system| self.precedence(field, system).unwrap_or(usize::MAX);
        rank(incoming) <= rank(held)
    }

    /// Whether a field of an event's patch is read to join records (so a reader that keeps only
    /// some fields keeps it).
    pub fn reads(&self, field: &str) -> bool {
        self.enabled && (field == "email" || self.keys.iter().any(|k| k.field == field))
    }

    /// Whether records of `system` may assert identities.
    pub fn asserts(&self, system: &str) -> bool {
        self.enabled && self.sources.iter().any(|s| s == system)
    }
}
