//! Canonical field names and the per-source mapping onto them.
//!
//! Every vendor field reaches the engine under its own name (`lifecyclestage`, `OwnerId`, …).
//! The canonical names below are aliases added to the same patch, so rules read the same
//! `lead.stage` or `lead.owner` whatever system a lead lives in. Each source kind has a default
//! mapping (canonical name → vendor field) that `[sources.NAME.fields]` overrides per name; an
//! empty string turns a default off.

use std::collections::BTreeMap;

use serde_json::{Map, Number, Value};

/// What a canonical field holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A string (numbers and booleans are written out; an empty string clears the field).
    Text,
    /// A JSON number, even when the vendor sends a string (HubSpot sends every property as one).
    Number,
}

/// The canonical names rules can rely on.
pub const CANONICAL: &[(&str, Kind)] = &[
    ("stage", Kind::Text),
    ("status", Kind::Text),
    ("owner", Kind::Text),
    ("score", Kind::Number),
    ("email", Kind::Text),
    ("phone", Kind::Text),
    ("company", Kind::Text),
    ("first_name", Kind::Text),
    ("last_name", Kind::Text),
    ("name", Kind::Text),
    ("job_title", Kind::Text),
    ("disposition_reason", Kind::Text),
    ("disposition_detail", Kind::Text),
    ("employees", Kind::Number),
    ("annual_revenue", Kind::Number),
    ("industry", Kind::Text),
    ("region", Kind::Text),
    ("country", Kind::Text),
    ("lead_source", Kind::Text),
];

pub fn is_canonical(name: &str) -> bool {
    CANONICAL.iter().any(|(n, _)| *n == name)
}

/// `[sources.NAME.fields]` keys that are neither canonical names nor one of `extra` (a
/// source's own structural keys), as problems keyed `fields.KEY`.
pub fn unknown_names(
    fields: &std::collections::BTreeMap<String, String>,
    extra: &[&str],
) -> crate::conf::KeyProblems {
    let mut problems = Vec::new();
    for key in fields.keys() {
        if !is_canonical(key) && !extra.contains(&key.as_str()) {
            let mut known: Vec<&str> = CANONICAL.iter().map(|(n, _)| *n).collect();
            known.extend_from_slice(extra);
            problems.push((
                format!("fields.{key}"),
                format!("unknown field name; expected one of {}", known.join(", ")),
            ));
        }
    }
    problems
}

fn kind_of(name: &str) -> Kind {
    CANONICAL
        .iter()
        .find(|(n, _)| *n == name)
        .map(|(_, k)| *k)
        .unwrap_or(Kind::Text)
}

/// A source's mapping: canonical name → where the value sits in the vendor's data (a field name,
/// or for Marketo a JSON pointer).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mapping {
    pairs: Vec<(String, String)>,
}

impl Mapping {
    /// The defaults with the configured overrides on top (`""` removes a default). Keys that are
    /// not canonical names are left out (the config check reports them).
    pub fn new(defaults: &[(&str, &str)], overrides: &BTreeMap<String, String>) -> Self {
        let mut merged: BTreeMap<String, String> = defaults
            .iter()
            .map(|(c, v)| (c.to_string(), v.to_string()))
            .collect();
        for (c, v) in overrides {
            if is_canonical(c) {
                merged.insert(c.clone(), v.clone());
            }
        }
        Self {
            pairs: merged.into_iter().filter(|(_, v)| !v.is_empty()).collect(),
        }
    }

    /// Where `canonical` comes from, if mapped.
    pub fn source_of(&self, canonical: &str) -> Option<&str> {
        self.pairs
            .iter()
            .find(|(c, _)| c == canonical)
            .map(|(_, v)| v.as_str())
    }

    /// Adds the canonical alias of every mapped value that `get` finds into `patch`.
    pub fn add_aliases<'v>(
        &self,
        get: impl Fn(&str) -> Option<&'v Value>,
        patch: &mut Map<String, Value>,
    ) {
        for (canonical, from) in &self.pairs {
            if let Some(value) = get(from)
                && let Some(normalized) = normalize(canonical, value)
            {
                patch.insert(canonical.clone(), normalized);
            }
        }
    }

    /// [`Mapping::add_aliases`] over a flat object of vendor fields.
    pub fn add_aliases_from(&self, vendor: &Map<String, Value>, patch: &mut Map<String, Value>) {
        self.add_aliases(|name| vendor.get(name), patch);
    }
}

/// The value of a canonical field, or `None` to leave it out (a number that does not parse).
/// `null` and the empty string clear the field.
pub fn normalize(canonical: &str, value: &Value) -> Option<Value> {
    let value = unwrap_vendor_value(value);
    match (kind_of(canonical), value) {
        (_, Value::Null) => Some(Value::Null),
        (_, Value::String(s)) if s.trim().is_empty() => Some(Value::Null),
        (Kind::Number, Value::Number(n)) => Some(Value::Number(n.clone())),
        (Kind::Number, Value::String(s)) => parse_number(s).map(Value::Number),
        (Kind::Number, _) => None,
        (Kind::Text, Value::String(s)) => Some(Value::String(s.trim().to_string())),
        (Kind::Text, Value::Number(n)) => Some(Value::String(n.to_string())),
        (Kind::Text, Value::Bool(b)) => Some(Value::String(b.to_string())),
        (Kind::Text, _) => None,
    }
}

/// Vendors wrap some values: a list of `{value, primary}` (Pipedrive's emails and phones), a
/// custom field `{type, value}`, a reference `{id, name}`. The canonical field takes the value.
fn unwrap_vendor_value(value: &Value) -> &Value {
    match value {
        Value::Array(items) => {
            let primary = items
                .iter()
                .find(|i| i.get("primary").and_then(Value::as_bool) == Some(true))
                .or_else(|| items.first());
            match primary {
                Some(item) => unwrap_vendor_value(item),
                None => &Value::Null,
            }
        }
        Value::Object(obj) => obj
            .get("value")
            .or_else(|| obj.get("id"))
            .map(unwrap_vendor_value)
            .unwrap_or(&Value::Null),
        other => other,
    }
}

/// `"42"`, `" 1,200 "`, `"5.0E7"` → a JSON number (an integer when it is one).
fn parse_number(s: &str) -> Option<Number> {
    let cleaned: String = s.trim().chars().filter(|c| *c != ',').collect();
    if let Ok(i) = cleaned.parse::<i64>() {
        return Some(Number::from(i));
    }
    let f = cleaned.parse::<f64>().ok().filter(|f| f.is_finite())?;
    if f.fract() == 0.0 && f.abs() < 9.0e15 {
        Some(Number::from(f as i64))
    } else {
        Number::from_f64(f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn numbers_become_numbers_and_text_becomes_text() {
        assert_eq!(normalize("score", &json!("42")), Some(json!(42)));
        assert_eq!(normalize("score", &json!(" 1,200 ")), Some(json!(1200)));
        assert_eq!(
            normalize("annual_revenue", &json!("5.0E7")),
            Some(json!(50000000))
        );
        assert_eq!(normalize("score", &json!("12.5")), Some(json!(12.5)));
        assert_eq!(normalize("score", &json!("lots")), None);
        assert_eq!(normalize("score", &json!("")), Some(Value::Null));
        assert_eq!(normalize("owner", &json!(12345)), Some(json!("12345")));
        assert_eq!(normalize("owner", &json!(" ")), Some(Value::Null));
        assert_eq!(normalize("stage", &json!(true)), Some(json!("true")));
    }

    #[test]
    fn wrapped_vendor_values_are_unwrapped() {
        let emails = json!([{"label":"home","value":"x@home.example","primary":false},
                            {"label":"work","value":"jane@acme.example","primary":true}]);
        assert_eq!(
            normalize("email", &emails),
            Some(json!("jane@acme.example"))
        );
        assert_eq!(
            normalize("score", &json!({"type":"double","value":77})),
            Some(json!(77))
        );
        assert_eq!(
            normalize("owner", &json!({"id":9,"name":"Al"})),
            Some(json!("9"))
        );
        assert_eq!(normalize("email", &json!([])), Some(Value::Null));
    }

    #[test]
    fn overrides_replace_and_remove_defaults() {
        let defaults = [("score", "hubspotscore"), ("stage", "lifecyclestage")];
        let overrides = BTreeMap::from([
            ("score".to_string(), "custom_score".to_string()),
            ("stage".to_string(), String::new()),
            ("email".to_string(), "email".to_string()),
        ]);
        let m = Mapping::new(&defaults, &overrides);
        assert_eq!(m.source_of("score"), Some("custom_score"));
        assert_eq!(m.source_of("stage"), None);
        assert_eq!(m.source_of("email"), Some("email"));

        let vendor = json!({"custom_score": "88", "hubspotscore": "1", "lifecyclestage": "lead"});
        let mut patch = vendor.as_object().unwrap().clone();
        m.add_aliases_from(vendor.as_object().unwrap(), &mut patch);
        assert_eq!(patch["score"], json!(88));
        assert!(!patch.contains_key("stage"));
        // The vendor's own fields stay as they came.
        assert_eq!(patch["hubspotscore"], json!("1"));
    }
}
