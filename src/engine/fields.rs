//! A lead's fields held compactly (issue 13): a vector sorted by name rather than a map, each name
//! shared rather than copied into every lead, each value as small as it can be kept.
//!
//! Names come from a finite set, the fields the rules' [`super::Projection`] keeps: the
//! projection holds one shared copy of each ([`Name`]), and a lead's fields, its field times and
//! its window's patches point at it (re-pointed when a state is read back or the rules change:
//! [`super::Projection::state`]). A name no projection knows (a projection keeping every field)
//! is a copy of its own. Values are strings, numbers and booleans kept as such; only arrays and
//! objects, rare in a lead's fields, stay JSON.
//!
//! Written to the changelog, and read back, exactly as the map of JSON values it was: a record
//! reads the same in earlier builds and this one, either way round.

use std::sync::Arc;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Number, Value};

use super::at::At;

/// A field's name, shared by every lead that has the field.
pub type Name = Arc<str>;

/// A name read from a record: copied once from the record's bytes (not first into a `String`).
pub struct Key(pub Name);

impl<'de> Deserialize<'de> for Key {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visit;
        impl serde::de::Visitor<'_> for Visit {
            type Value = Name;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a field name")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Name, E> {
                Ok(Name::from(v))
            }
        }
        d.deserialize_str(Visit).map(Key)
    }
}

/// One field's value.
#[derive(Debug, Clone, PartialEq)]
pub enum FieldValue {
    /// Only in a record written so (an event's `null` clears a field).
    Null,
    Bool(bool),
    Number(Number),
    /// Boxed (16 bytes, not 24: never grown).
    String(Box<str>),
    /// An array or an object, as it came.
    Json(Box<Value>),
}

impl FieldValue {
    /// The value of `v`, copied.
    pub fn of(v: &Value) -> Self {
        match v {
            Value::Null => FieldValue::Null,
            Value::Bool(b) => FieldValue::Bool(*b),
            Value::Number(n) => FieldValue::Number(n.clone()),
            Value::String(s) => FieldValue::String(s.as_str().into()),
            other => FieldValue::Json(Box::new(other.clone())),
        }
    }

    /// The value as JSON.
    pub fn to_json(&self) -> Value {
        match self {
            FieldValue::Null => Value::Null,
            FieldValue::Bool(b) => Value::Bool(*b),
            FieldValue::Number(n) => Value::Number(n.clone()),
            FieldValue::String(s) => Value::String(s.to_string()),
            FieldValue::Json(v) => (**v).clone(),
        }
    }

    pub fn as_str(&self) -> Option<&str> {
        match self {
            FieldValue::String(s) => Some(s),
            _ => None,
        }
    }

    /// The bytes it holds on the heap.
    pub fn heap_bytes(&self) -> usize {
        match self {
            FieldValue::String(s) => s.len(),
            FieldValue::Json(v) => super::footprint::of_value(v),
            FieldValue::Null | FieldValue::Bool(_) | FieldValue::Number(_) => 0,
        }
    }
}

impl From<Value> for FieldValue {
    fn from(v: Value) -> Self {
        match v {
            Value::String(s) => FieldValue::String(s.into_boxed_str()),
            Value::Array(_) | Value::Object(_) => FieldValue::Json(Box::new(v)),
            other => FieldValue::of(&other),
        }
    }
}

/// The same value as the JSON `v` (numbers as JSON compares them).
impl PartialEq<Value> for FieldValue {
    fn eq(&self, v: &Value) -> bool {
        match (self, v) {
            (FieldValue::Null, Value::Null) => true,
            (FieldValue::Bool(a), Value::Bool(b)) => a == b,
            (FieldValue::Number(a), Value::Number(b)) => a == b,
            (FieldValue::String(a), Value::String(b)) => **a == **b,
            (FieldValue::Json(a), b) => **a == *b,
            _ => false,
        }
    }
}

/// Written as the JSON value it stands for.
impl Serialize for FieldValue {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            FieldValue::Null => s.serialize_unit(),
            FieldValue::Bool(b) => s.serialize_bool(*b),
            FieldValue::Number(n) => n.serialize(s),
            FieldValue::String(v) => s.serialize_str(v),
            FieldValue::Json(v) => v.serialize(s),
        }
    }
}

impl<'de> Deserialize<'de> for FieldValue {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Value::deserialize(d).map(FieldValue::from)
    }
}

/// Values by name, sorted by name, each name shared ([`Name`]): a lead's fields
/// ([`LeadFields`]) and a window patch's ([`super::state::Fields`]). Written as the map it was:
/// names in order, as a map of them iterates.
#[derive(Debug, Clone, PartialEq)]
pub struct ByName<V>(Box<[(Name, V)]>);

/// One of a lead's fields: its value and when it was last set. One entry per field, so that
/// whatever else the engine learns of a field joins it here rather than in a map of its own.
#[derive(Debug, Clone, PartialEq)]
pub struct Field {
    /// `None` once a patch cleared it: its time is kept, so an older patch does not set it again.
    pub value: Option<FieldValue>,
    /// When it was last set (event time); `None` for a value read from a record that kept no
    /// time of it.
    pub at: Option<At>,
}

/// A lead's fields, with their times. A dozen fields took about 1 KB as a map (a tree node, and
/// a copy of every name) and as much again for their times; here 48 bytes each, the names
/// shared. Written to the changelog as the two maps they were: `fields` (the values, see
/// [`LeadFields::values`]) and `field_at` (the times, [`LeadFields::times`]).
pub type LeadFields = ByName<Field>;

impl<V> Default for ByName<V> {
    fn default() -> Self {
        ByName(Box::default())
    }
}

impl<V> ByName<V> {
    /// Names (shared already) and values in any order; a name given twice keeps its last value.
    pub fn from_named(all: Vec<(Name, V)>) -> Self {
        ByName(super::state::sorted_by_name(all).into_boxed_slice())
    }

    fn find(&self, name: &str) -> Result<usize, usize> {
        super::state::find_by_name(&self.0, name)
    }

    /// The names and entries, sorted by name, each name as it is shared.
    pub fn named(&self) -> impl Iterator<Item = (&Name, &V)> {
        self.0.iter().map(|(k, v)| (k, v))
    }

    /// Every name held, sorted.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.0.iter().map(|(k, _)| &**k)
    }

    /// Keeps the names `keep` keeps, each as `keep` leaves it (see
    /// [`super::Projection::intern`]).
    pub fn keep(&mut self, mut keep: impl FnMut(&mut Name) -> bool) {
        if self.0.iter_mut().all(|(k, _)| keep(k)) {
            return;
        }
        let mut all = std::mem::take(&mut self.0).into_vec();
        all.retain_mut(|(k, _)| keep(k));
        self.0 = all.into_boxed_slice();
    }

    /// The bytes its slice holds on the heap (its names are shared; its values' own heap not
    /// counted).
    fn slice_bytes(&self) -> usize {
        self.0.len() * size_of::<(Name, V)>()
    }
}

impl Serialize for ByName<Value> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_map(self.iter())
    }
}

impl ByName<Value> {
    pub fn get(&self, name: &str) -> Option<&Value> {
        self.find(name).ok().map(|i| &self.0[i].1)
    }

    pub fn contains_key(&self, name: &str) -> bool {
        self.find(name).is_ok()
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The names and values, sorted by name.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &Value)> {
        self.0.iter().map(|(k, v)| (&**k, v))
    }

    /// The names, sorted.
    pub fn keys(&self) -> impl Iterator<Item = &str> {
        self.names()
    }

    /// The fields as a map (what a rule reading `change` is given).
    pub fn to_map(&self) -> Map<String, Value> {
        self.iter()
            .map(|(k, v)| (k.to_string(), v.clone()))
            .collect()
    }

    /// The bytes it holds on the heap (its names are shared, its values' own heap not counted).
    pub fn heap_bytes(&self) -> usize {
        self.slice_bytes()
    }
}

/// Names and values in any order; a name given twice keeps its last value.
impl<K: AsRef<str>> FromIterator<(K, Value)> for ByName<Value> {
    fn from_iter<I: IntoIterator<Item = (K, Value)>>(items: I) -> Self {
        let all = items
            .into_iter()
            .map(|(k, v)| (Name::from(k.as_ref()), v))
            .collect();
        ByName::from_named(all)
    }
}

impl LeadFields {
    /// The value of `name`, if it has one.
    pub fn get(&self, name: &str) -> Option<&FieldValue> {
        self.find(name)
            .ok()
            .and_then(|i| self.0[i].1.value.as_ref())
    }

    /// When `name` was last set.
    pub fn time(&self, name: &str) -> Option<At> {
        self.find(name).ok().and_then(|i| self.0[i].1.at)
    }

    pub fn contains_key(&self, name: &str) -> bool {
        self.get(name).is_some()
    }

    /// How many fields have a value.
    pub fn len(&self) -> usize {
        self.0.iter().filter(|(_, f)| f.value.is_some()).count()
    }

    pub fn is_empty(&self) -> bool {
        self.0.iter().all(|(_, f)| f.value.is_none())
    }

    /// The names and values, sorted by name.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &FieldValue)> {
        self.0
            .iter()
            .filter_map(|(k, f)| Some((&**k, f.value.as_ref()?)))
    }

    /// The names that have a value, sorted.
    pub fn keys(&self) -> impl Iterator<Item = &str> {
        self.iter().map(|(k, _)| k)
    }

    /// The names and times, sorted by name.
    pub fn times(&self) -> impl Iterator<Item = (&str, At)> {
        self.0.iter().filter_map(|(k, f)| Some((&**k, f.at?)))
    }

    /// Sets `name` to `v` at `at` as a patch does (`null` clears it): `None` when the field was
    /// set later than `at` already (an older patch does not undo a newer value), else whether its
    /// value changed.
    pub fn set(&mut self, name: &Name, v: &Value, at: At) -> Option<bool> {
        match self.find(name) {
            Ok(i) => {
                let field = &mut self.0[i].1;
                if field.at.is_some_and(|t| t > at) {
                    return None;
                }
                field.at = Some(at);
                let changed = match (&field.value, v) {
                    (None, Value::Null) => false,
                    (Some(_), Value::Null) => {
                        field.value = None;
                        true
                    }
                    (Some(old), v) if *old == *v => false,
                    (_, v) => {
                        field.value = Some(FieldValue::of(v));
                        true
                    }
                };
                Some(changed)
            }
            Err(i) => {
                // A boxed slice grows by one: a lead gains its fields in its first events and
                // keeps them for its whole life, with no room left unused.
                let mut all = std::mem::take(&mut self.0).into_vec();
                all.reserve_exact(1);
                let value = (!v.is_null()).then(|| FieldValue::of(v));
                let changed = value.is_some();
                all.insert(
                    i,
                    (
                        name.clone(),
                        Field {
                            value,
                            at: Some(at),
                        },
                    ),
                );
                self.0 = all.into_boxed_slice();
                Some(changed)
            }
        }
    }

    /// These fields with these times (names in any order, a name given twice keeping its last
    /// time): a time whose field has no value is that of a field cleared.
    pub fn with_times(self, times: Vec<(Name, At)>) -> Self {
        if times.is_empty() {
            return self;
        }
        let mut all = self.0.into_vec();
        for (name, at) in super::state::sorted_by_name(times) {
            match super::state::find_by_name(&all, &name) {
                Ok(i) => all[i].1.at = Some(at),
                Err(i) => all.insert(
                    i,
                    (
                        name,
                        Field {
                            value: None,
                            at: Some(at),
                        },
                    ),
                ),
            }
        }
        ByName(all.into_boxed_slice())
    }

    /// The fields as a map of JSON values.
    pub fn to_map(&self) -> Map<String, Value> {
        self.iter()
            .map(|(k, v)| (k.to_string(), v.to_json()))
            .collect()
    }

    /// The values, written as the map of JSON values they were (the `fields` of a record).
    pub fn values(&self) -> Values<'_> {
        Values(self)
    }

    /// The bytes it holds on the heap: its slice and its values' own (its names are shared).
    pub fn heap_bytes(&self) -> usize {
        self.slice_bytes()
            + self
                .0
                .iter()
                .filter_map(|(_, f)| f.value.as_ref())
                .map(FieldValue::heap_bytes)
                .sum::<usize>()
    }
}

/// A lead's field values, written as the map of JSON values they were.
pub struct Values<'a>(&'a LeadFields);

impl Serialize for Values<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_map(self.0.iter())
    }
}

/// Names and values in any order; a name given twice keeps its last value. No times.
impl<K: AsRef<str>> FromIterator<(K, Value)> for LeadFields {
    fn from_iter<I: IntoIterator<Item = (K, Value)>>(items: I) -> Self {
        let all = items
            .into_iter()
            .map(|(k, v)| {
                let field = Field {
                    value: Some(FieldValue::from(v)),
                    at: None,
                };
                (Name::from(k.as_ref()), field)
            })
            .collect();
        ByName::from_named(all)
    }
}

impl From<Map<String, Value>> for LeadFields {
    fn from(map: Map<String, Value>) -> Self {
        map.into_iter().collect()
    }
}

impl From<&Map<String, Value>> for LeadFields {
    fn from(map: &Map<String, Value>) -> Self {
        map.iter().map(|(k, v)| (k, v.clone())).collect()
    }
}

/// The values of a record's `fields`, with no times (those are its `field_at`: see
/// [`LeadFields::with_times`]).
impl<'de> Deserialize<'de> for LeadFields {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visit;
        impl<'de> serde::de::Visitor<'de> for Visit {
            type Value = LeadFields;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a map of field names to values")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut map: A,
            ) -> Result<LeadFields, A::Error> {
                // At most a few hundred entries preallocated, whatever the record claims.
                let mut items = Vec::with_capacity(map.size_hint().unwrap_or(0).min(256));
                while let Some((Key(k), v)) = map.next_entry::<Key, FieldValue>()? {
                    items.push((
                        k,
                        Field {
                            value: Some(v),
                            at: None,
                        },
                    ));
                }
                Ok(ByName::from_named(items))
            }
        }
        d.deserialize_map(Visit)
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;
    use serde_json::json;

    use super::*;

    /// JSON values as vendors send them: strings (long ones too), numbers of each kind,
    /// booleans, nulls, and now and then a list or an object.
    fn value() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            any::<i64>().prop_map(|i| json!(i)),
            any::<u64>().prop_map(|u| json!(u)),
            (-1e12f64..1e12).prop_map(|f| json!(f)),
            "\\PC{0,40}".prop_map(Value::String),
        ];
        leaf.prop_recursive(2, 8, 4, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
                prop::collection::btree_map("[a-z]{1,6}", inner, 0..4)
                    .prop_map(|m| Value::Object(m.into_iter().collect())),
            ]
        })
    }

    fn fields() -> impl Strategy<Value = Map<String, Value>> {
        prop::collection::btree_map("[a-zA-Z_]{1,12}", value(), 0..16)
            .prop_map(|m| m.into_iter().collect())
    }

    proptest! {
        /// A lead's fields are written as the map they stand for, byte for byte, in JSON and in
        /// MessagePack (what earlier builds wrote and read), and read back from either the same.
        #[test]
        fn written_and_read_as_the_map_they_were(map in fields()) {
            let compact = LeadFields::from(&map);
            prop_assert_eq!(
                serde_json::to_vec(&compact.values()).unwrap(),
                serde_json::to_vec(&map).unwrap()
            );
            prop_assert_eq!(msgpack(&compact.values()), msgpack(&map));
            let from_json: LeadFields =
                serde_json::from_slice(&serde_json::to_vec(&map).unwrap()).unwrap();
            prop_assert_eq!(&from_json, &compact);
            let from_msgpack: LeadFields = rmp_serde::from_slice(&msgpack(&map)).unwrap();
            prop_assert_eq!(&from_msgpack, &compact);
            prop_assert_eq!(compact.to_map(), map);
        }

        /// Setting fields one by one keeps them as a map of them would be.
        #[test]
        fn set_as_a_map_is(patches in prop::collection::vec(fields(), 0..6)) {
            let (mut compact, mut map) = (LeadFields::default(), Map::new());
            let at = At::new(jiff::Timestamp::UNIX_EPOCH);
            for patch in &patches {
                for (k, v) in patch {
                    let name = Name::from(k.as_str());
                    let changed = compact.set(&name, v, at).expect("not older");
                    let before = map.get(k).cloned();
                    if v.is_null() {
                        map.remove(k);
                    } else {
                        map.insert(k.clone(), v.clone());
                    }
                    prop_assert_eq!(changed, before != map.get(k).cloned());
                }
            }
            prop_assert_eq!(compact.to_map(), map);
        }
    }

    /// `v` in MessagePack, as the changelog writes a state.
    fn msgpack<T: Serialize>(v: &T) -> Vec<u8> {
        let mut out = Vec::new();
        let mut ser = rmp_serde::Serializer::new(&mut out).with_struct_map();
        v.serialize(&mut ser).unwrap();
        out
    }

    #[test]
    fn values_are_kept_compact() {
        assert!(size_of::<(Name, Field)>() <= 48);
        let fields: LeadFields = [("stage", json!("MQL")), ("score", json!(80))]
            .into_iter()
            .collect();
        assert_eq!(
            fields.get("stage").and_then(FieldValue::as_str),
            Some("MQL")
        );
        assert_eq!(fields.get("score"), Some(&FieldValue::Number(80.into())));
        assert_eq!(fields.keys().collect::<Vec<_>>(), ["score", "stage"]);
    }
}
