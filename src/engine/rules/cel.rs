//! CEL (the Common Expression Language) over a lead: the rules' predicates are compiled once at
//! load, and evaluated against one root context built once, with the lead's fields bound in a
//! cheap child scope per evaluation.
//!
//! An expression sees `lead` (the lead's fields: every vendor field under its own name, and the
//! canonical aliases) and `change` (the fields of the patch being applied; empty otherwise).
//! Canonical numeric fields are numbers even when a vendor sends strings.

use std::fmt;
use std::sync::Arc;

use serde_json::{Map, Value};

/// Canonical fields that are numbers, whatever the vendor sent.
pub const NUMERIC_FIELDS: [&str; 3] = ["score", "employees", "annual_revenue"];

/// The root context every evaluation borrows: the standard library, built once.
#[derive(Clone)]
pub struct Cel {
    env: Arc<cel::Env>,
    root: Arc<cel::Context<'static, 'static>>,
}

impl Default for Cel {
    fn default() -> Self {
        let env = Arc::new(cel::Env::stdlib());
        let root = Arc::new(cel::Context::with_env(env.clone()));
        Self { env, root }
    }
}

impl fmt::Debug for Cel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Cel")
    }
}

/// A compiled CEL expression that must give a boolean.
#[derive(Clone)]
pub struct Predicate {
    /// Where it is in the rules file (`lifecycle.sales_ready`, `segments[1].when`): the label of
    /// its error counter.
    pub key: String,
    source: String,
    program: Arc<cel::Program>,
}

impl fmt::Debug for Predicate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Predicate({}: {:?})", self.key, self.source)
    }
}

/// Why a predicate could not be evaluated; it then counts as false.
#[derive(Debug, thiserror::Error)]
pub enum PredicateError {
    #[error("evaluating `{expr}`: {message}")]
    Execution { expr: String, message: String },
    #[error("`{expr}` gave {got}, not a boolean")]
    NotBool { expr: String, got: String },
}

/// What a predicate looks at, converted once per evaluation round.
pub struct Facts {
    lead: cel::Value,
    change: cel::Value,
}

impl Facts {
    /// The lead's fields, with no change being applied.
    pub fn new(fields: &Map<String, Value>) -> Self {
        Self::with_change(fields, &Map::new())
    }

    pub fn with_change(fields: &Map<String, Value>, change: &Map<String, Value>) -> Self {
        Self {
            lead: fields_value(fields),
            change: fields_value(change),
        }
    }
}

impl Predicate {
    pub fn compile(cel: &Cel, key: &str, source: &str) -> Result<Predicate, String> {
        let program = cel
            .env
            .compile(source)
            .map_err(|e| format!("not a valid CEL expression: {e}"))?;
        Ok(Predicate {
            key: key.to_string(),
            source: source.to_string(),
            program: Arc::new(program),
        })
    }

    pub fn source(&self) -> &str {
        &self.source
    }

    /// Evaluates over the facts. A missing field inside `||`/`&&` is absorbed by CEL; one that
    /// still fails the whole expression is an error (the caller counts it as false).
    pub fn eval(&self, cel: &Cel, facts: &Facts) -> Result<bool, PredicateError> {
        let mut scope = cel.root.new_inner_scope();
        scope.add_variable_from_value("lead", facts.lead.clone());
        scope.add_variable_from_value("change", facts.change.clone());
        match self.program.execute(&scope) {
            Ok(cel::Value::Bool(b)) => Ok(b),
            Ok(other) => Err(PredicateError::NotBool {
                expr: self.source.clone(),
                got: format!("{other:?}"),
            }),
            Err(e) => Err(PredicateError::Execution {
                expr: self.source.clone(),
                message: e.to_string(),
            }),
        }
    }
}

/// The lead's fields as a CEL map, canonical numeric fields made numbers.
fn fields_value(fields: &Map<String, Value>) -> cel::Value {
    let map: std::collections::HashMap<cel::objects::Key, cel::Value> = fields
        .iter()
        .map(|(k, v)| {
            let value = if NUMERIC_FIELDS.contains(&k.as_str()) {
                numeric(v).unwrap_or_else(|| json_to_cel(v))
            } else {
                json_to_cel(v)
            };
            (cel::objects::Key::String(Arc::new(k.clone())), value)
        })
        .collect();
    cel::Value::Map(cel::objects::Map { map: Arc::new(map) })
}

/// A number, or a string holding one (`"60"`, `" 1200.5 "`, `"1,200"`).
pub fn numeric(v: &Value) -> Option<cel::Value> {
    match v {
        Value::Number(n) => Some(
            n.as_i64()
                .map(cel::Value::Int)
                .unwrap_or_else(|| cel::Value::Float(n.as_f64().unwrap_or(f64::NAN))),
        ),
        Value::String(s) => {
            let s = s.trim().replace(',', "");
            s.parse::<i64>()
                .map(cel::Value::Int)
                .ok()
                .or_else(|| s.parse::<f64>().ok().map(cel::Value::Float))
        }
        _ => None,
    }
}

fn json_to_cel(v: &Value) -> cel::Value {
    match v {
        Value::Null => cel::Value::Null,
        Value::Bool(b) => cel::Value::Bool(*b),
        Value::Number(n) => match (n.as_i64(), n.as_u64()) {
            (Some(i), _) => cel::Value::Int(i),
            (None, Some(u)) => cel::Value::UInt(u),
            _ => cel::Value::Float(n.as_f64().unwrap_or(f64::NAN)),
        },
        Value::String(s) => cel::Value::String(Arc::new(s.clone())),
        Value::Array(items) => cel::Value::List(Arc::new(items.iter().map(json_to_cel).collect())),
        Value::Object(obj) => fields_value(obj),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn eval(expr: &str, fields: Value) -> Result<bool, PredicateError> {
        let cel = Cel::default();
        let p = Predicate::compile(&cel, "test", expr).unwrap();
        p.eval(&cel, &Facts::new(fields.as_object().unwrap()))
    }

    #[test]
    fn canonical_numbers_are_numbers_even_when_sent_as_strings() {
        assert!(eval("lead.score >= 60", json!({"score": "75"})).unwrap());
        assert!(!eval("lead.score >= 60", json!({"score": "59"})).unwrap());
        assert!(eval("lead.employees > 1000", json!({"employees": "1,200"})).unwrap());
        assert!(
            eval(
                "lead.annual_revenue >= 2.5",
                json!({"annual_revenue": "2.5"})
            )
            .unwrap()
        );
        // Other fields keep their type.
        assert!(eval("lead.zip == \"02134\"", json!({"zip": "02134"})).unwrap());
    }

    #[test]
    fn absent_fields_are_absorbed_by_or_and_has_and_otherwise_errors() {
        assert!(
            eval(
                "lead.score >= 60 || lead.stage == \"SQL\"",
                json!({"stage": "SQL"})
            )
            .unwrap()
        );
        assert!(!eval("has(lead.score) && lead.score >= 60", json!({})).unwrap());
        assert!(eval("lead.score >= 60", json!({})).is_err());
        assert!(matches!(
            eval("lead.stage", json!({"stage": "x"})),
            Err(PredicateError::NotBool { .. })
        ));
    }

    #[test]
    fn lists_and_the_change_being_applied() {
        assert!(
            eval(
                "lead.status in [\"Unqualified\", \"Closed - Not Converted\"]",
                json!({"status": "Unqualified"})
            )
            .unwrap()
        );
        let cel = Cel::default();
        let p = Predicate::compile(&cel, "t", "has(change.notes_last_contacted)").unwrap();
        let fields = json!({"notes_last_contacted": "x"});
        let fields = fields.as_object().unwrap();
        assert!(!p.eval(&cel, &Facts::new(fields)).unwrap());
        assert!(p.eval(&cel, &Facts::with_change(fields, fields)).unwrap());
    }
}
