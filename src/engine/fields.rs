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

/// A lead's fields. A dozen fields took about 1 KB as a map (a tree node, and a copy of every
/// name); here 40 bytes each, the names shared.
pub type LeadFields = ByName<FieldValue>;

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

    pub fn get(&self, name: &str) -> Option<&V> {
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
    pub fn iter(&self) -> impl Iterator<Item = (&str, &V)> {
        self.0.iter().map(|(k, v)| (&**k, v))
    }

    /// The names and values, sorted by name, each name as it is shared.
    pub fn named(&self) -> impl Iterator<Item = (&Name, &V)> {
        self.0.iter().map(|(k, v)| (k, v))
    }

    /// The names, sorted.
    pub fn keys(&self) -> impl Iterator<Item = &str> {
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

impl<V: Serialize> Serialize for ByName<V> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_map(self.iter())
    }
}

impl ByName<Value> {
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
    /// Sets `name` to `v` as a patch does (`null` clears it); whether its value changed.
    pub fn set(&mut self, name: &Name, v: &Value) -> bool {
        match (self.find(name), v) {
            (Ok(i), Value::Null) => {
                let mut all = std::mem::take(&mut self.0).into_vec();
                all.remove(i);
                self.0 = all.into_boxed_slice();
                true
            }
            (Err(_), Value::Null) => false,
            (Ok(i), v) if self.0[i].1 == *v => false,
            (Ok(i), v) => {
                self.0[i].1 = FieldValue::of(v);
                true
            }
            (Err(i), v) => {
                // A boxed slice grows by one: a lead gains its fields in its first events and
                // keeps them for its whole life, with no room left unused.
                let mut all = std::mem::take(&mut self.0).into_vec();
                all.reserve_exact(1);
                all.insert(i, (name.clone(), FieldValue::of(v)));
                self.0 = all.into_boxed_slice();
                true
            }
        }
    }

    /// The fields as a map of JSON values.
    pub fn to_map(&self) -> Map<String, Value> {
        self.iter()
            .map(|(k, v)| (k.to_string(), v.to_json()))
            .collect()
    }

    /// The bytes it holds on the heap: its slice and its values' own (its names are shared).
    pub fn heap_bytes(&self) -> usize {
        self.slice_bytes() + self.0.iter().map(|(_, v)| v.heap_bytes()).sum::<usize>()
    }
}

/// Names and values in any order; a name given twice keeps its last value.
impl<K: AsRef<str>> FromIterator<(K, Value)> for LeadFields {
    fn from_iter<I: IntoIterator<Item = (K, Value)>>(items: I) -> Self {
        let all = items
            .into_iter()
            .map(|(k, v)| (Name::from(k.as_ref()), FieldValue::from(v)))
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
                    items.push((k, v));
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
                serde_json::to_vec(&compact).unwrap(),
                serde_json::to_vec(&map).unwrap()
            );
            prop_assert_eq!(msgpack(&compact), msgpack(&map));
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
            for patch in &patches {
                for (k, v) in patch {
                    let name = Name::from(k.as_str());
                    let changed = compact.set(&name, v);
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
        assert!(size_of::<(Name, FieldValue)>() <= 40);
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
