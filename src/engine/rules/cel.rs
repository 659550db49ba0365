//! CEL (the Common Expression Language) over a lead: the rules' predicates are compiled once at
//! load, and evaluated against one root context built once, with the lead's fields bound in a
//! cheap child scope per evaluation.
//!
//! An expression sees `lead` (the lead's fields: every vendor field under its own name, and the
//! canonical aliases) and `change` (the fields of the patch being applied; empty otherwise).
//! Canonical numeric fields are numbers even when a vendor sends strings.

use std::fmt;
use std::sync::Arc;

use cel::ExecutionError;
use cel::common::traits::{Container, Indexer, Sizer};
use cel::common::types::{
    CelBool, CelDouble, CelInt, CelList, CelNull, CelString, CelUInt, MAP_TYPE, Type,
};
use cel::common::value::{CowVal, Val};
use serde_json::{Map, Value};

use crate::engine::fields::{FieldValue, LeadFields};

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
    /// It reads `change` (the fields of the event being applied): it can only be judged at an
    /// event, not of a lead as it stands.
    uses_change: bool,
    /// The fields it reads off `lead` and `change` by name (`lead.x`, `has(lead.x)`,
    /// `lead["x"]`, `"x" in lead`); `None` when it reads either as a whole (`lead[k]` with a
    /// computed `k`, `size(lead)`, a macro over its keys), so it may read any field.
    reads: Option<Vec<String>>,
}

impl fmt::Debug for Predicate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Predicate({}: {:?})", self.key, self.source)
    }
}

/// Why a predicate could not be evaluated; it then counts as false.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PredicateError {
    #[error("evaluating `{expr}`: {message}")]
    Execution { expr: String, message: String },
    #[error("`{expr}` gave {got}, not a boolean")]
    NotBool { expr: String, got: String },
    /// The lead has no such field (and neither `||`, `&&` nor `has()` decided without it): the
    /// comparison is false. Not a fault of the rule, but worth seeing when a name is mistyped.
    #[error("`{expr}`: the lead has no field `{field}`")]
    MissingField { expr: String, field: String },
}

/// What a predicate looks at: the lead's fields and the patch being applied, borrowed — CEL
/// reads them in place ([`FieldsVal`]), converting only the fields an expression touches.
#[derive(Clone, Copy)]
pub struct Facts<'a> {
    lead: &'a LeadFields,
    change: &'a Map<String, Value>,
    activity: &'a Map<String, Value>,
}

static NO_CHANGE: std::sync::LazyLock<Map<String, Value>> = std::sync::LazyLock::new(Map::new);

impl<'a> Facts<'a> {
    /// The lead's fields, with no change being applied.
    pub fn new(fields: &'a LeadFields) -> Self {
        Self {
            lead: fields,
            change: &NO_CHANGE,
            activity: &NO_CHANGE,
        }
    }

    pub fn with_change(fields: &'a LeadFields, change: &'a Map<String, Value>) -> Self {
        Self {
            lead: fields,
            change,
            activity: &NO_CHANGE,
        }
    }

    /// The lead's fields and an activity being applied (`[first_touch] touch_counts`).
    pub fn with_activity(fields: &'a LeadFields, activity: &'a Map<String, Value>) -> Self {
        Self {
            lead: fields,
            change: &NO_CHANGE,
            activity,
        }
    }
}

impl Predicate {
    pub fn compile(cel: &Cel, key: &str, source: &str) -> Result<Predicate, String> {
        Self::compile_seeing(cel, key, source, &[])
    }

    /// Compiles a predicate over an activity too (`activity.kind`, `activity.by`, and whatever
    /// the source supplies), besides `lead`: `[first_touch] touch_counts`.
    pub fn compile_for_activity(cel: &Cel, key: &str, source: &str) -> Result<Predicate, String> {
        Self::compile_seeing(cel, key, source, &["activity"])
    }

    fn compile_seeing(
        cel: &Cel,
        key: &str,
        source: &str,
        extra: &[&'static str],
    ) -> Result<Predicate, String> {
        let program = cel
            .env
            .compile(source)
            .map_err(|e| format!("not a valid CEL expression: {e}"))?;
        // A misspelt `lead` would compile and then fail on every evaluation: refused here.
        // The standard library's type names (`type(x) == string`) and namespaces
        // (`optional.of(x)`) are names too.
        let mut bound = vec![
            "lead",
            "change",
            "int",
            "uint",
            "double",
            "bool",
            "string",
            "bytes",
            "list",
            "map",
            "null_type",
            "type",
            "dyn",
            "optional",
            "google",
        ];
        bound.extend_from_slice(extra);
        comprehension_vars(program.expression(), &mut bound);
        let references = program.references();
        let mut unknown: Vec<&str> = references
            .variables()
            .into_iter()
            .filter(|v| !bound.contains(v))
            .collect();
        if !unknown.is_empty() {
            unknown.sort_unstable();
            return Err(format!(
                "unknown name{} {}: an expression sees `lead` (its fields, e.g. `lead.stage`) \
                 and `change` (the fields being changed)",
                if unknown.len() > 1 { "s" } else { "" },
                unknown
                    .iter()
                    .map(|v| format!("`{v}`"))
                    .collect::<Vec<_>>()
                    .join(", ")
            ));
        }
        let uses_change = references.has_variable("change");
        let mut reads = std::collections::BTreeSet::new();
        let reads = field_reads(program.expression(), &mut reads)
            .then(|| reads.into_iter().map(str::to_string).collect());
        Ok(Predicate {
            key: key.to_string(),
            source: source.to_string(),
            program: Arc::new(program),
            uses_change,
            reads,
        })
    }

    pub fn source(&self) -> &str {
        &self.source
    }

    /// Whether it reads `change`, so only an event can make it true.
    pub fn uses_change(&self) -> bool {
        self.uses_change
    }

    /// The fields it reads by name, sorted; `None` when it may read any field (see
    /// [`crate::engine::Projection`]).
    pub fn reads(&self) -> Option<&[String]> {
        self.reads.as_deref()
    }

    /// Evaluates over the facts. A missing field inside `||`/`&&` is absorbed by CEL; one that
    /// still fails the whole expression is an error (the caller counts it as false).
    pub fn eval(&self, cel: &Cel, facts: &Facts<'_>) -> Result<bool, PredicateError> {
        #[cfg(test)]
        EVALUATIONS.with(|n| n.set(n.get() + 1));
        // The three names resolved in place: no map of variables built (and dropped) per
        // evaluation, and nothing allocated for them.
        let bound = Bound {
            lead: FieldsVal::lead(facts.lead),
            change: FieldsVal::top(facts.change),
            activity: FieldsVal::nested(facts.activity),
        };
        let root: &cel::Context<'_, '_> = &cel.root;
        let mut scope = root.new_inner_scope();
        scope.set_variable_resolver(&bound);
        match self.program.execute(&scope) {
            Ok(cel::Value::Bool(b)) => Ok(b),
            Ok(other) => Err(PredicateError::NotBool {
                expr: self.source.clone(),
                got: format!("{other:?}"),
            }),
            Err(ExecutionError::NoSuchKey(field)) => Err(PredicateError::MissingField {
                expr: self.source.clone(),
                field: field.to_string(),
            }),
            Err(e) => Err(PredicateError::Execution {
                expr: self.source.clone(),
                message: e.to_string(),
            }),
        }
    }
}

/// The names an evaluation binds (`lead`, `change`, `activity`), each a view of what it reads.
struct Bound<'v> {
    lead: FieldsVal<'v>,
    change: FieldsVal<'v>,
    activity: FieldsVal<'v>,
}

impl cel::context::VariableResolver for Bound<'_> {
    fn resolve<'b>(&'b self, variable: &str) -> Option<CowVal<'b, 'b>> {
        let val: &dyn Val = match variable {
            "lead" => &self.lead,
            "change" => &self.change,
            "activity" => &self.activity,
            _ => return None,
        };
        Some(CowVal::Borrowed(val))
    }
}

#[cfg(test)]
thread_local! {
    /// Predicates evaluated on this thread (tests: what the engine's memo saves).
    static EVALUATIONS: std::cell::Cell<u64> = const { std::cell::Cell::new(0) };
}

/// How many predicates were evaluated on this thread so far.
#[cfg(test)]
pub fn evaluations() -> u64 {
    EVALUATIONS.with(std::cell::Cell::get)
}

/// The names macros bind (`x` in `lead.tags.exists(x, x == "vip")`), anywhere in `expr`.
fn comprehension_vars<'e>(expr: &'e cel::IdedExpr, out: &mut Vec<&'e str>) {
    use cel::common::ast::{EntryExpr, Expr, MapExpr, StructExpr};
    match &expr.expr {
        Expr::Unspecified | Expr::Ident(_) | Expr::Literal(_) => {}
        Expr::Call(call) => {
            if let Some(target) = &call.target {
                comprehension_vars(target, out);
            }
            for arg in &call.args {
                comprehension_vars(arg, out);
            }
        }
        Expr::Comprehension(c) => {
            out.push(&c.iter_var);
            if let Some(v) = &c.iter_var2 {
                out.push(v);
            }
            out.push(&c.accu_var);
            for e in [
                &c.iter_range,
                &c.accu_init,
                &c.loop_cond,
                &c.loop_step,
                &c.result,
            ] {
                comprehension_vars(e, out);
            }
        }
        Expr::List(list) => list
            .elements
            .iter()
            .for_each(|e| comprehension_vars(e, out)),
        Expr::Map(MapExpr { entries }) | Expr::Struct(StructExpr { entries, .. }) => {
            for e in entries {
                match &e.expr {
                    EntryExpr::MapEntry(m) => {
                        comprehension_vars(&m.key, out);
                        comprehension_vars(&m.value, out);
                    }
                    EntryExpr::StructField(f) => comprehension_vars(&f.value, out),
                }
            }
        }
        Expr::Select(select) => comprehension_vars(&select.operand, out),
    }
}

/// The names a predicate's fields are read through: the lead, and the patch being applied.
const FIELD_ROOTS: [&str; 2] = ["lead", "change"];

/// Adds to `out` the fields `expr` reads off `lead` or `change` by a literal name: `lead.x`,
/// `has(lead.x)`, `lead.?x`, `lead["x"]`, `lead[?"x"]`, `"x" in lead` (`lead.x.y` reads `x`).
/// False when it uses either otherwise (a computed key, `size(lead)`, `lead` handed to a
/// function or a macro, a comprehension over its keys): then it may read any field. A macro
/// variable that shadows `lead` counts as such a use (it errs towards keeping fields).
fn field_reads<'e>(expr: &'e cel::IdedExpr, out: &mut std::collections::BTreeSet<&'e str>) -> bool {
    use cel::common::ast::{EntryExpr, Expr, LiteralValue, MapExpr, StructExpr, operators};
    let is_root =
        |e: &cel::IdedExpr| matches!(&e.expr, Expr::Ident(n) if FIELD_ROOTS.contains(&n.as_str()));
    let literal = |e: &'e cel::IdedExpr| match &e.expr {
        Expr::Literal(LiteralValue::String(s)) => Some(s.inner()),
        _ => None,
    };
    match &expr.expr {
        Expr::Unspecified | Expr::Literal(_) => true,
        Expr::Ident(name) => !FIELD_ROOTS.contains(&name.as_str()),
        Expr::Select(select) if is_root(&select.operand) => {
            out.insert(&select.field);
            true
        }
        Expr::Select(select) => field_reads(&select.operand, out),
        Expr::Call(call) => {
            let by_name = matches!(
                call.func_name.as_str(),
                operators::INDEX | operators::OPT_INDEX | operators::OPT_SELECT
            );
            let (map, key) = match call.args.as_slice() {
                [map, key] if by_name && call.target.is_none() => (Some(map), Some(key)),
                [key, map] if call.func_name == operators::IN => (Some(map), Some(key)),
                _ => (None, None),
            };
            if let (Some(map), Some(key)) = (map, key)
                && is_root(map)
            {
                return match literal(key) {
                    Some(name) => {
                        out.insert(name);
                        true
                    }
                    None => false,
                };
            }
            call.target.iter().all(|t| field_reads(t, out))
                && call.args.iter().all(|a| field_reads(a, out))
        }
        Expr::Comprehension(c) => [
            &c.iter_range,
            &c.accu_init,
            &c.loop_cond,
            &c.loop_step,
            &c.result,
        ]
        .into_iter()
        .all(|e| field_reads(e, out)),
        Expr::List(list) => list.elements.iter().all(|e| field_reads(e, out)),
        Expr::Map(MapExpr { entries }) | Expr::Struct(StructExpr { entries, .. }) => {
            entries.iter().all(|e| match &e.expr {
                EntryExpr::MapEntry(m) => field_reads(&m.key, out) && field_reads(&m.value, out),
                EntryExpr::StructField(f) => field_reads(&f.value, out),
            })
        }
    }
}

/// A lead's fields, or a JSON object, seen as a CEL `map(string, dyn)` in place: `lead.stage`,
/// `has(lead.score)`, `"x" in lead` and `size(lead)` read the fields without copying them; a
/// value is converted only when an expression touches it. At the top level, canonical numeric
/// fields are numbers even when the vendor sent strings.
#[derive(Debug, Clone, Copy)]
pub struct FieldsVal<'v> {
    fields: Object<'v>,
    top: bool,
}

/// What a [`FieldsVal`] reads.
#[derive(Debug, Clone, Copy)]
enum Object<'v> {
    /// A lead's fields, as it holds them.
    Lead(&'v LeadFields),
    Json(&'v Map<String, Value>),
}

impl<'v> FieldsVal<'v> {
    fn lead(fields: &'v LeadFields) -> Self {
        Self {
            fields: Object::Lead(fields),
            top: true,
        }
    }

    fn top(fields: &'v Map<String, Value>) -> Self {
        Self {
            fields: Object::Json(fields),
            top: true,
        }
    }

    /// Not a lead: no canonical numeric fields.
    fn nested(fields: &'v Map<String, Value>) -> Self {
        Self {
            fields: Object::Json(fields),
            top: false,
        }
    }

    fn key(idx: &dyn Val) -> Option<&str> {
        idx.downcast_ref::<CelString>().map(|s| s.inner())
    }
}

impl<'v> Val for FieldsVal<'v> {
    fn get_type(&self) -> &Type {
        &MAP_TYPE
    }

    fn cel_type() -> &'static Type {
        &MAP_TYPE
    }

    fn as_indexer<'b, 'w>(&'b self) -> Option<&'b (dyn Indexer + 'w)>
    where
        Self: 'w,
    {
        Some(self)
    }

    fn as_container(&self) -> Option<&dyn Container> {
        Some(self)
    }

    fn as_sizer(&self) -> Option<&dyn Sizer> {
        Some(self)
    }

    fn clone_as_boxed<'w>(&self) -> Box<dyn Val + 'w>
    where
        Self: 'w,
    {
        Box::new(*self)
    }
}

impl<'v> Indexer for FieldsVal<'v> {
    fn get<'b, 'w>(&'b self, idx: &dyn Val) -> Result<CowVal<'b, 'w>, ExecutionError>
    where
        Self: 'w,
    {
        let Some(key) = Self::key(idx) else {
            return Err(ExecutionError::no_such_key("(not a string key)"));
        };
        let numeric = self.top && NUMERIC_FIELDS.contains(&key);
        let value = match self.fields {
            Object::Lead(fields) => fields.get(key).map(|v| match v {
                FieldValue::Number(n) if numeric => numeric_number(n),
                FieldValue::Number(n) => json_number(n),
                FieldValue::String(s) => numeric
                    .then(|| numeric_str(s))
                    .flatten()
                    .unwrap_or_else(|| Box::new(CelString::from(&**s))),
                FieldValue::Null => Box::new(CelNull),
                FieldValue::Bool(b) => Box::new(CelBool::from(*b)),
                FieldValue::Json(v) => json_val(v),
            }),
            Object::Json(fields) => fields.get(key).map(|value| {
                numeric
                    .then(|| numeric_val(value))
                    .flatten()
                    .unwrap_or_else(|| json_val(value))
            }),
        };
        match value {
            Some(value) => Ok(CowVal::Owned(value)),
            None => Err(ExecutionError::no_such_key(key)),
        }
    }

    fn steal<'w>(self: Box<Self>, idx: &dyn Val) -> Result<Box<dyn Val + 'w>, ExecutionError>
    where
        Self: 'w,
    {
        self.get(idx).map(CowVal::into_owned)
    }
}

impl Container for FieldsVal<'_> {
    fn contains(&self, idx: &dyn Val) -> Result<bool, ExecutionError> {
        Ok(Self::key(idx).is_some_and(|k| match self.fields {
            Object::Lead(fields) => fields.contains_key(k),
            Object::Json(fields) => fields.contains_key(k),
        }))
    }
}

impl Sizer for FieldsVal<'_> {
    fn size(&self) -> CelInt {
        let len = match self.fields {
            Object::Lead(fields) => fields.len(),
            Object::Json(fields) => fields.len(),
        };
        CelInt::from(len as i64)
    }
}

/// A number, or a string holding one (`"60"`, `" 1200.5 "`, `"1,200"`), as a CEL number.
fn numeric_val<'w>(v: &Value) -> Option<Box<dyn Val + 'w>> {
    match v {
        Value::Number(n) => Some(numeric_number(n)),
        Value::String(s) => numeric_str(s),
        _ => None,
    }
}

/// A number as a canonical numeric field is: an integer, else a double.
fn numeric_number<'w>(n: &serde_json::Number) -> Box<dyn Val + 'w> {
    match n.as_i64() {
        Some(i) => Box::new(CelInt::from(i)),
        None => Box::new(CelDouble::from(n.as_f64().unwrap_or(f64::NAN))),
    }
}

/// A string holding a number (`"60"`, `" 1200.5 "`, `"1,200"`), as a CEL number.
fn numeric_str<'w>(s: &str) -> Option<Box<dyn Val + 'w>> {
    let s = s.trim().replace(',', "");
    if let Ok(i) = s.parse::<i64>() {
        Some(Box::new(CelInt::from(i)))
    } else {
        s.parse::<f64>()
            .ok()
            .map(|f| Box::new(CelDouble::from(f)) as Box<dyn Val + 'w>)
    }
}

/// A JSON number as a CEL number: an integer, an unsigned integer, else a double.
fn json_number<'w>(n: &serde_json::Number) -> Box<dyn Val + 'w> {
    match (n.as_i64(), n.as_u64()) {
        (Some(i), _) => Box::new(CelInt::from(i)),
        (None, Some(u)) => Box::new(CelUInt::from(u)),
        _ => Box::new(CelDouble::from(n.as_f64().unwrap_or(f64::NAN))),
    }
}

/// A JSON value as a CEL value; strings and objects are borrowed, not copied.
fn json_val<'v, 'w>(v: &'v Value) -> Box<dyn Val + 'w>
where
    'v: 'w,
{
    match v {
        Value::Null => Box::new(CelNull),
        Value::Bool(b) => Box::new(CelBool::from(*b)),
        Value::Number(n) => json_number(n),
        Value::String(s) => Box::new(CelString::from(s.as_str())),
        Value::Array(items) => Box::new(CelList::from(
            items
                .iter()
                .map(json_val)
                .collect::<Vec<Box<dyn Val + 'w>>>(),
        )),
        Value::Object(obj) => Box::new(FieldsVal::nested(obj)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn eval(expr: &str, fields: Value) -> Result<bool, PredicateError> {
        let cel = Cel::default();
        let p = Predicate::compile(&cel, "test", expr).unwrap();
        p.eval(&cel, &Facts::new(&fields.as_object().unwrap().into()))
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
        assert!(matches!(
            eval("lead.score >= 60", json!({})),
            Err(PredicateError::MissingField { field, .. }) if field == "score"
        ));
        assert!(matches!(
            eval("lead.score > \"high\"", json!({"score": 3})),
            Err(PredicateError::Execution { .. })
        ));
        assert!(matches!(
            eval("lead.stage", json!({"stage": "x"})),
            Err(PredicateError::NotBool { .. })
        ));
    }

    #[test]
    fn a_misspelt_name_is_refused_at_load_and_macro_variables_are_not() {
        let cel = Cel::default();
        let e = Predicate::compile(&cel, "t", "leed.stage == \"MQL\" || stage == 1").unwrap_err();
        assert!(e.contains("unknown names `leed`, `stage`"), "{e}");
        for fine in [
            "type(lead.score) == int || type(lead.score) == string",
            "lead.tags.exists(t, t == \"vip\")",
            "lead.tags.all(t, lead.emails.exists(e, e.endsWith(t)))",
            "[1, 2].map(x, x * 2).size() == 2 && has(change.stage)",
        ] {
            assert!(Predicate::compile(&cel, "t", fine).is_ok(), "{fine}");
        }
    }

    /// The documented trap: an absent field fails its comparison, and a negation does not turn
    /// that into true; `has()` says what is meant.
    #[test]
    fn an_absent_field_under_a_negation_is_false_until_guarded_with_has() {
        let absent = json!({"stage": "MQL"});
        assert!(matches!(
            eval("lead.stage == \"MQL\" && !(lead.status in [\"Unqualified\"])", absent.clone()),
            Err(PredicateError::MissingField { field, .. }) if field == "status"
        ));
        let guarded =
            "lead.stage == \"MQL\" && (!has(lead.status) || !(lead.status in [\"Unqualified\"]))";
        assert!(eval(guarded, absent).unwrap());
        assert!(!eval(guarded, json!({"stage": "MQL", "status": "Unqualified"})).unwrap());
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
        let lead = fields.into();
        assert!(!p.eval(&cel, &Facts::new(&lead)).unwrap());
        assert!(p.eval(&cel, &Facts::with_change(&lead, fields)).unwrap());
    }
}
