//! The rules file (`rules.toml`): the agreement between sales and marketing, compiled once.
//!
//! ```toml
//! [lifecycle]
//! sales_ready = 'lead.stage == "sales_ready"'   # CEL over the lead's fields
//!
//! [first_touch]
//! within = "4h"                                 # the owner must touch the lead within this
//! touch_kinds = ["call", "email", "meeting", "sms"]
//! ```

use std::fmt;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use serde_json::{Map, Value};

use crate::config::{HumanDuration, Problem, Problems, from_value, read_toml};

/// The compiled rules.
#[derive(Debug, Clone)]
pub struct Rules {
    /// When a lead is sales-ready.
    pub sales_ready: Predicate,
    pub first_touch: FirstTouch,
}

/// `[first_touch]`: the owner of a sales-ready lead must touch it within `within`.
#[derive(Debug, Clone)]
pub struct FirstTouch {
    pub within: Duration,
    /// Activity kinds that count as a touch.
    pub touch_kinds: Vec<String>,
}

#[derive(eserde::Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRules {
    lifecycle: RawLifecycle,
    first_touch: RawFirstTouch,
}

#[derive(eserde::Deserialize)]
#[serde(deny_unknown_fields)]
struct RawLifecycle {
    sales_ready: String,
}

#[derive(eserde::Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFirstTouch {
    #[eserde(compat)]
    within: HumanDuration,
    #[serde(default = "default_touch_kinds")]
    touch_kinds: Vec<String>,
}

fn default_touch_kinds() -> Vec<String> {
    ["call", "email", "meeting", "sms"]
        .map(String::from)
        .to_vec()
}

impl Rules {
    /// Reads and compiles a rules file, listing every problem with its key path.
    pub fn load(path: &Path) -> Result<Rules, Problems> {
        let problem = |key: &str, message: String| Problem {
            file: path.to_path_buf(),
            key: key.to_string(),
            message,
        };
        let value = read_toml(path).map_err(|e| {
            Problems(vec![problem(
                "",
                format!("cannot read the rules file: {e}"),
            )])
        })?;
        Self::from_value(&value)
            .map_err(|ps| Problems(ps.into_iter().map(|(k, m)| problem(&k, m)).collect()))
    }

    /// Compiles rules from TOML text; problems are `(key path, message)`.
    pub fn parse(text: &str) -> Result<Rules, Vec<(String, String)>> {
        let value: serde_json::Value = config::Config::builder()
            .add_source(config::File::from_str(text, config::FileFormat::Toml))
            .build()
            .and_then(|c| c.try_deserialize())
            .map_err(|e| vec![(String::new(), e.to_string())])?;
        Self::from_value(&value)
    }

    fn from_value(value: &serde_json::Value) -> Result<Rules, Vec<(String, String)>> {
        let raw: RawRules = from_value(value)?;
        let mut problems = Vec::new();
        let sales_ready = Predicate::compile(&raw.lifecycle.sales_ready)
            .map_err(|e| problems.push(("lifecycle.sales_ready".to_string(), e)))
            .ok();
        if raw.first_touch.touch_kinds.is_empty() {
            problems.push((
                "first_touch.touch_kinds".into(),
                "name at least one activity kind that counts as a touch".into(),
            ));
        }
        match sales_ready {
            Some(sales_ready) if problems.is_empty() => Ok(Rules {
                sales_ready,
                first_touch: FirstTouch {
                    within: raw.first_touch.within.0,
                    touch_kinds: raw
                        .first_touch
                        .touch_kinds
                        .into_iter()
                        .map(|k| k.to_lowercase())
                        .collect(),
                },
            }),
            _ => Err(problems),
        }
    }
}

/// A compiled CEL expression over a lead, which sees the lead's fields as `lead`.
#[derive(Clone)]
pub struct Predicate {
    source: String,
    program: Arc<cel::Program>,
    env: Arc<cel::Env>,
}

impl fmt::Debug for Predicate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Predicate({:?})", self.source)
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

impl Predicate {
    pub fn compile(source: &str) -> Result<Predicate, String> {
        let env = Arc::new(cel::Env::stdlib());
        let program = env
            .compile(source)
            .map_err(|e| format!("not a valid CEL expression: {e}"))?;
        Ok(Predicate {
            source: source.to_string(),
            program: Arc::new(program),
            env,
        })
    }

    pub fn source(&self) -> &str {
        &self.source
    }

    /// Evaluates over the lead's fields. A missing field inside `||`/`&&` is absorbed by CEL; one
    /// that still fails the whole expression is an error (the caller counts it as false).
    pub fn eval(&self, fields: &Map<String, Value>) -> Result<bool, PredicateError> {
        let lead = cel::to_value(fields).map_err(|e| PredicateError::Execution {
            expr: self.source.clone(),
            message: e.to_string(),
        })?;
        let mut ctx = cel::Context::with_env(self.env.clone());
        ctx.add_variable_from_value("lead", lead);
        match self.program.execute(&ctx) {
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

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn fields(v: Value) -> Map<String, Value> {
        v.as_object().unwrap().clone()
    }

    #[test]
    fn the_minimal_rules_compile_and_evaluate() {
        let rules = Rules::parse(
            r#"
[lifecycle]
sales_ready = 'lead.stage == "sales_ready"'
[first_touch]
within = "4h"
"#,
        )
        .unwrap();
        assert_eq!(rules.first_touch.within, Duration::from_secs(4 * 3600));
        assert_eq!(
            rules.first_touch.touch_kinds,
            ["call", "email", "meeting", "sms"]
        );
        let p = &rules.sales_ready;
        assert!(p.eval(&fields(json!({"stage": "sales_ready"}))).unwrap());
        assert!(!p.eval(&fields(json!({"stage": "new"}))).unwrap());
        // Absent field: an error, which the engine counts as false.
        assert!(p.eval(&fields(json!({}))).is_err());
    }

    #[test]
    fn sub_second_and_day_durations() {
        for (text, want) in [
            ("250ms", Duration::from_millis(250)),
            ("2days", Duration::from_secs(172_800)),
        ] {
            let rules = Rules::parse(&format!(
                "[lifecycle]\nsales_ready = 'true'\n[first_touch]\nwithin = \"{text}\"\n"
            ))
            .unwrap();
            assert_eq!(rules.first_touch.within, want);
        }
    }

    #[test]
    fn all_problems_are_listed_with_key_paths() {
        let problems = Rules::parse(
            r#"
[lifecycle]
sales_ready = 'lead.stage == '
[first_touch]
within = "soon"
extra = 1
"#,
        )
        .unwrap_err();
        let keys: Vec<&str> = problems.iter().map(|(k, _)| k.as_str()).collect();
        assert!(keys.contains(&"first_touch.within"), "{problems:?}");
        assert!(
            problems.iter().any(|(_, m)| m.contains("extra")),
            "{problems:?}"
        );
        // A bad expression is reported along with the rest once the shape is right.
        let problems = Rules::parse(
            "[lifecycle]\nsales_ready = 'lead.stage == '\n[first_touch]\nwithin = \"4h\"\n",
        )
        .unwrap_err();
        assert_eq!(problems[0].0, "lifecycle.sales_ready");
    }
}
