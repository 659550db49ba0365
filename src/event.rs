//! The canonical lead event: what every source turns its payload into, and the only format on the
//! `{prefix}.events` topic. Nothing after ingest knows a vendor's format.

use jiff::Timestamp;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// One thing that happened to one lead. Read by [`Envelope`] (one pass over the JSON object,
/// no buffering of its keys as `#[serde(flatten)]` would).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct LeadEvent {
    /// Stable and unique per source event: the engine ignores an id it has already applied, so a
    /// sender's retry (after a 503) changes nothing.
    pub id: String,
    /// The configured source name (`[sources.NAME]`) the event came through.
    pub source: String,
    /// The lead key; the Kafka key of the event, and `data.lead` in alerts.
    pub lead: String,
    /// When it happened, by the source's clock. Deadlines are computed from this.
    pub occurred_at: Timestamp,
    /// When leadwatch accepted it.
    pub received_at: Timestamp,
    #[serde(flatten)]
    pub change: Change,
}

/// What changed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type")]
pub enum Change {
    /// A patch of the lead's fields: keys not mentioned keep their value; `null` clears one.
    #[serde(rename = "lead.updated")]
    Updated { fields: Map<String, Value> },
    /// Something a person did to the lead (a call, an email, a meeting …).
    #[serde(rename = "lead.activity")]
    Activity { activity: Activity },
    /// The lead was deleted in its system: its episode ends, and its state is tombstoned after
    /// the retention.
    #[serde(rename = "lead.deleted")]
    Deleted {},
    /// The lead was merged into another record (`into`, a lead key): as deleted, for this key.
    #[serde(rename = "lead.merged")]
    Merged { into: String },
    /// Erase everything leadwatch holds on the lead (a data-protection request; `leadwatch forget`).
    #[serde(rename = "lead.forgotten")]
    Forgotten {},
}

/// The types of [`Change`], as on the wire.
#[derive(Clone, Copy)]
enum ChangeType {
    Updated,
    Activity,
    Deleted,
    Merged,
    Forgotten,
}

/// The names of [`ChangeType`]s, in the same order.
const CHANGE_TYPES: &[&str] = &[
    "lead.updated",
    "lead.activity",
    "lead.deleted",
    "lead.merged",
    "lead.forgotten",
];

/// An event's `type`, read without copying it: a name that is no type is refused once the whole
/// object is read (as the derived reader did), so a missing `id` is said first.
struct TypeName(Result<ChangeType, String>);

impl<'de> Deserialize<'de> for TypeName {
    fn deserialize<D: serde::Deserializer<'de>>(de: D) -> Result<Self, D::Error> {
        struct Name;
        impl serde::de::Visitor<'_> for Name {
            type Value = TypeName;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("variant identifier")
            }
            fn visit_str<E: serde::de::Error>(self, name: &str) -> Result<TypeName, E> {
                let types = [
                    ChangeType::Updated,
                    ChangeType::Activity,
                    ChangeType::Deleted,
                    ChangeType::Merged,
                    ChangeType::Forgotten,
                ];
                Ok(TypeName(
                    CHANGE_TYPES
                        .iter()
                        .position(|t| *t == name)
                        .map(|i| types[i])
                        .ok_or_else(|| name.to_string()),
                ))
            }
        }
        de.deserialize_str(Name)
    }
}

/// An event as read, before what a reader may leave out is settled: [`LeadEvent`] requires
/// `source` and `received_at`; `leadwatch simulate` defaults them. The one reader of events:
/// the daemon's and simulate's. Keys it does not know are skipped, as the derived reader with
/// a flattened [`Change`] did; a change's own keys (`fields`, `activity`, `into`) are read for
/// its type only, so a key of another type may hold anything.
#[derive(Debug, Clone, PartialEq)]
pub struct Envelope {
    pub id: String,
    pub source: Option<String>,
    pub lead: String,
    pub occurred_at: Timestamp,
    pub received_at: Option<Timestamp>,
    pub change: Change,
}

impl<'de> Deserialize<'de> for Envelope {
    fn deserialize<D: serde::Deserializer<'de>>(de: D) -> Result<Self, D::Error> {
        de.deserialize_map(EnvelopeVisitor {
            strict: false,
            keep: None,
        })
    }
}

impl Envelope {
    /// Reads an event's JSON keeping, of a `lead.updated`'s fields, only those `keep` names:
    /// the others are skipped unread (never copied), as a lead would drop them. What `leadwatch
    /// simulate` reads its file with; the same event as reading it whole and dropping them.
    pub fn read_keeping(json: &str, keep: &dyn Fn(&str) -> bool) -> serde_json::Result<Envelope> {
        let mut de = serde_json::Deserializer::from_str(json);
        let envelope = serde::Deserializer::deserialize_map(
            &mut de,
            EnvelopeVisitor {
                strict: false,
                keep: Some(keep),
            },
        )?;
        de.end()?;
        Ok(envelope)
    }
}

/// A `fields` object read keeping only the names `.0` keeps; anything else read as is (and
/// refused later as no map, as the whole reader refuses it).
struct Kept<'k>(&'k dyn Fn(&str) -> bool);

impl<'de> serde::de::DeserializeSeed<'de> for Kept<'_> {
    type Value = Value;

    fn deserialize<D: serde::Deserializer<'de>>(self, de: D) -> Result<Value, D::Error> {
        de.deserialize_any(self)
    }
}

impl<'de> serde::de::Visitor<'de> for Kept<'_> {
    type Value = Value;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("any valid JSON value")
    }

    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let mut kept = Map::new();
        while let Some(Name(name)) = map.next_key()? {
            if (self.0)(&name) {
                kept.insert(name.into_owned(), map.next_value()?);
            } else {
                map.next_value::<serde::de::IgnoredAny>()?;
            }
        }
        Ok(Value::Object(kept))
    }

    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        // Not a map: refused as such whatever it holds.
        while seq.next_element::<serde::de::IgnoredAny>()?.is_some() {}
        Ok(Value::Array(Vec::new()))
    }

    fn visit_bool<E>(self, v: bool) -> Result<Value, E> {
        Ok(Value::Bool(v))
    }

    fn visit_i64<E>(self, v: i64) -> Result<Value, E> {
        Ok(Value::from(v))
    }

    fn visit_u64<E>(self, v: u64) -> Result<Value, E> {
        Ok(Value::from(v))
    }

    fn visit_f64<E>(self, v: f64) -> Result<Value, E> {
        Ok(Value::from(v))
    }

    fn visit_str<E>(self, v: &str) -> Result<Value, E> {
        Ok(Value::String(v.to_string()))
    }

    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }
}

/// A key, borrowed from the input where it can be.
struct Name<'de>(std::borrow::Cow<'de, str>);

impl<'de> Deserialize<'de> for Name<'de> {
    fn deserialize<D: serde::Deserializer<'de>>(de: D) -> Result<Self, D::Error> {
        struct Visit;
        impl<'de> serde::de::Visitor<'de> for Visit {
            type Value = Name<'de>;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a string key")
            }
            fn visit_borrowed_str<E>(self, v: &'de str) -> Result<Name<'de>, E> {
                Ok(Name(std::borrow::Cow::Borrowed(v)))
            }
            fn visit_str<E>(self, v: &str) -> Result<Name<'de>, E> {
                Ok(Name(std::borrow::Cow::Owned(v.to_string())))
            }
        }
        de.deserialize_str(Visit)
    }
}

impl<'de> Deserialize<'de> for LeadEvent {
    fn deserialize<D: serde::Deserializer<'de>>(de: D) -> Result<Self, D::Error> {
        let e = de.deserialize_map(EnvelopeVisitor {
            strict: true,
            keep: None,
        })?;
        Ok(LeadEvent {
            id: e.id,
            source: e.source.unwrap_or_default(),
            lead: e.lead,
            occurred_at: e.occurred_at,
            received_at: e.received_at.unwrap_or(e.occurred_at),
            change: e.change,
        })
    }
}

/// Reads an event's object; `strict`: `source` and `received_at` are required; `keep`: of the
/// fields, only those it keeps are read.
struct EnvelopeVisitor<'k> {
    strict: bool,
    keep: Option<&'k dyn Fn(&str) -> bool>,
}

impl<'de> serde::de::Visitor<'de> for EnvelopeVisitor<'_> {
    type Value = Envelope;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        // As the derived reader said it.
        f.write_str("struct LeadEvent")
    }

    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<Envelope, A::Error> {
        use serde::de::Error;
        /// Sets a key's value once: a key given twice is refused.
        fn once<T>(slot: &mut Option<T>, key: &'static str, value: T) -> Result<(), String> {
            if slot.is_some() {
                return Err(format!("duplicate field `{key}`"));
            }
            *slot = Some(value);
            Ok(())
        }
        /// The keys of an event's object (read without copying them).
        #[derive(Deserialize)]
        #[serde(field_identifier, rename_all = "snake_case")]
        enum Key {
            Id,
            Source,
            Lead,
            OccurredAt,
            ReceivedAt,
            Type,
            Fields,
            Activity,
            Into,
            #[serde(other)]
            Other,
        }
        let (mut id, mut lead) = (None::<String>, None::<String>);
        // `Some(None)`: given as `null`, which only a lenient reader takes.
        let mut source: Option<Option<String>> = None;
        let mut received_at: Option<Option<Timestamp>> = None;
        let mut occurred_at: Option<Timestamp> = None;
        let mut kind: Option<TypeName> = None;
        let (mut fields, mut activity, mut into) = (None::<Value>, None::<Value>, None::<Value>);
        while let Some(key) = map.next_key::<Key>()? {
            let set = match key {
                Key::Id => once(&mut id, "id", map.next_value()?),
                Key::Source if self.strict => once(&mut source, "source", Some(map.next_value()?)),
                Key::Source => once(&mut source, "source", map.next_value()?),
                Key::Lead => once(&mut lead, "lead", map.next_value()?),
                Key::OccurredAt => once(&mut occurred_at, "occurred_at", map.next_value()?),
                Key::ReceivedAt if self.strict => {
                    once(&mut received_at, "received_at", Some(map.next_value()?))
                }
                Key::ReceivedAt => once(&mut received_at, "received_at", map.next_value()?),
                Key::Type => once(&mut kind, "type", map.next_value()?),
                Key::Fields => match self.keep {
                    Some(keep) => once(&mut fields, "fields", map.next_value_seed(Kept(keep))?),
                    None => once(&mut fields, "fields", map.next_value()?),
                },
                Key::Activity => once(&mut activity, "activity", map.next_value()?),
                Key::Into => once(&mut into, "into", map.next_value()?),
                Key::Other => {
                    map.next_value::<serde::de::IgnoredAny>()?;
                    Ok(())
                }
            };
            set.map_err(A::Error::custom)?;
        }
        let id = id.ok_or_else(|| A::Error::missing_field("id"))?;
        if self.strict && source.is_none() {
            return Err(A::Error::missing_field("source"));
        }
        let lead = lead.ok_or_else(|| A::Error::missing_field("lead"))?;
        let occurred_at = occurred_at.ok_or_else(|| A::Error::missing_field("occurred_at"))?;
        if self.strict && received_at.is_none() {
            return Err(A::Error::missing_field("received_at"));
        }
        let kind = match kind.ok_or_else(|| A::Error::missing_field("type"))?.0 {
            Ok(kind) => kind,
            Err(name) => return Err(A::Error::unknown_variant(&name, CHANGE_TYPES)),
        };
        let required = |value: Option<Value>, key: &'static str| {
            value.ok_or_else(|| A::Error::missing_field(key))
        };
        let read = |e: serde_json::Error| A::Error::custom(e);
        let change = match kind {
            ChangeType::Updated => Change::Updated {
                fields: match required(fields, "fields")? {
                    Value::Object(fields) => fields,
                    other => Map::deserialize(other).map_err(read)?,
                },
            },
            ChangeType::Activity => Change::Activity {
                activity: Activity::deserialize(required(activity, "activity")?).map_err(read)?,
            },
            ChangeType::Deleted => Change::Deleted {},
            ChangeType::Merged => Change::Merged {
                into: String::deserialize(required(into, "into")?).map_err(read)?,
            },
            ChangeType::Forgotten => Change::Forgotten {},
        };
        Ok(Envelope {
            id,
            source: source.flatten(),
            lead,
            occurred_at,
            received_at: received_at.flatten(),
            change,
        })
    }
}

/// A logged activity on a lead.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Activity {
    /// `call`, `email`, `meeting`, `sms`, … as the source names it.
    pub kind: String,
    /// Who did it, when the source says.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub by: Option<String>,
    /// Done by a program, not a person, as the vendor itself tells apart (a Salesforce list
    /// email, a Marketo program email): such an activity is recorded but never a touch by
    /// default. `false` — and absent on the wire — when the source gives no such hint.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub automated: bool,
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A field's number reads back from `{prefix}.events` as the number ingest parsed: a vendor's
    /// integer beyond 64 bits (or a long decimal) is a float, and without serde_json's
    /// `float_roundtrip` the engine read it back one step off (found by fuzzing).
    /// `automated` is on the wire only when true: an activity no source marked reads (and is
    /// written) exactly as before it existed.
    #[test]
    fn automated_is_written_only_when_true() {
        let mut activity = Activity {
            kind: "email".into(),
            by: None,
            automated: false,
        };
        assert_eq!(
            serde_json::to_value(&activity).unwrap(),
            serde_json::json!({"kind": "email"})
        );
        activity.automated = true;
        let wire = serde_json::to_value(&activity).unwrap();
        assert_eq!(
            wire,
            serde_json::json!({"kind": "email", "automated": true})
        );
        assert_eq!(serde_json::from_value::<Activity>(wire).unwrap(), activity);
    }

    /// The reader as it was derived (a flattened [`Change`], whose keys serde buffers): the
    /// reference the hand-written one is held to.
    #[derive(Debug, Deserialize)]
    struct Derived {
        id: String,
        source: String,
        lead: String,
        occurred_at: Timestamp,
        received_at: Timestamp,
        #[serde(flatten)]
        change: Change,
    }

    /// Issue 13: events are read in one pass, and read as the derived reader read them: the same
    /// event from every valid object, the same refusal (bar where in the line it is reported)
    /// of every invalid one.
    #[test]
    fn events_read_as_the_derived_reader_read_them() {
        let head = r#""id":"e1","source":"web","lead":"web:1","occurred_at":"2026-11-25T09:30:00Z","received_at":"2026-11-25T10:00:00Z""#;
        let bodies = [
            r#""type":"lead.updated","fields":{"stage":"MQL","score":75,"tags":["a"],"x":null}"#,
            r#""fields":{"stage":"MQL"},"type":"lead.updated","extra":{"a":[1,2]}"#,
            r#""type":"lead.activity","activity":{"kind":"call","by":"alice","automated":true}"#,
            r#""type":"lead.activity","activity":{"kind":"call"},"fields":[1]"#,
            r#""type":"lead.deleted""#,
            r#""type":"lead.deleted","into":5"#,
            r#""type":"lead.merged","into":"web:2""#,
            r#""type":"lead.forgotten""#,
            // Refused:
            r#""fields":{"stage":"MQL"}"#,
            r#""type":"lead.renamed""#,
            r#""type":"lead.updated""#,
            r#""type":"lead.updated","fields":[1]"#,
            r#""type":"lead.updated","fields":"x""#,
            r#""type":"lead.updated","fields":5"#,
            r#""type":"lead.updated","fields":true"#,
            r#""type":"lead.updated","fields":null"#,
            r#""type":"lead.updated","fields":{"stage":"a","stage":"b","\u0073tage":"c"}"#,
            r#""type":"lead.activity","activity":{"by":"alice"}"#,
            r#""type":"lead.merged""#,
            r#""type":"lead.merged","into":7"#,
        ];
        let position = without_position;
        let mut lines = Vec::new();
        for body in bodies {
            lines.push(format!("{{{head},{body}}}"));
            // Each of the envelope's keys missing, given twice, or of the wrong type.
            for key in ["id", "source", "lead", "occurred_at", "received_at"] {
                let value: serde_json::Value =
                    serde_json::from_str(&format!("{{{head},{body}}}")).unwrap();
                let mut without = value.as_object().unwrap().clone();
                without.remove(key);
                lines.push(serde_json::to_string(&without).unwrap());
                lines.push(format!(
                    "{{{head},{body},\"{key}\":\"2026-11-25T11:00:00Z\"}}"
                ));
                let mut wrong = value.as_object().unwrap().clone();
                wrong.insert(key.into(), serde_json::json!(null));
                lines.push(serde_json::to_string(&wrong).unwrap());
            }
        }
        lines.extend(["[]".into(), "5".into(), "{}".into(), r#"{"id":1}"#.into()]);
        for line in &lines {
            let derived = serde_json::from_str::<Derived>(line).map(|d| LeadEvent {
                id: d.id,
                source: d.source,
                lead: d.lead,
                occurred_at: d.occurred_at,
                received_at: d.received_at,
                change: d.change,
            });
            // Read keeping only `stage` of the fields: as read whole with the others dropped.
            let whole = serde_json::from_str::<Envelope>(line).map(|mut e| {
                if let Change::Updated { fields } = &mut e.change {
                    fields.retain(|k, _| k == "stage");
                }
                e
            });
            match (Envelope::read_keeping(line, &|k| k == "stage"), whole) {
                (Ok(kept), Ok(whole)) => assert_eq!(kept, whole, "{line}"),
                (Err(kept), Err(whole)) => assert_eq!(
                    position(&kept.to_string()),
                    position(&whole.to_string()),
                    "{line}"
                ),
                (kept, whole) => panic!("{line}: kept {kept:?}, whole {whole:?}"),
            }
            let read = serde_json::from_str::<LeadEvent>(line);
            match (read, derived) {
                (Ok(read), Ok(derived)) => assert_eq!(read, derived, "{line}"),
                (Err(read), Err(derived)) => assert_eq!(
                    position(&read.to_string()),
                    position(&derived.to_string()).replace("struct Derived", "struct LeadEvent"),
                    "{line}"
                ),
                (read, derived) => panic!("{line}: read {read:?}, derived {derived:?}"),
            }
        }
        // Where the derived reader said "expected variant index 0 <= i < 5", a type that is no
        // string is said to be no name of one.
        let line = format!("{{{head},\"type\":5}}");
        let e = serde_json::from_str::<LeadEvent>(&line).unwrap_err();
        assert_eq!(
            position(&e.to_string()),
            "invalid type: integer `5`, expected variant identifier"
        );
    }

    /// An error's message without where in the line it was found.
    fn without_position(message: &str) -> &str {
        message
            .rfind(" at line ")
            .map_or(message, |i| &message[..i])
    }

    #[test]
    fn a_number_too_long_for_an_integer_reads_back_as_parsed() {
        let body = br#"{"id":"pd:1","source":"pd","lead":"pd:1",
            "occurred_at":"2026-11-25T09:30:00Z","received_at":"2026-11-25T10:00:00Z",
            "type":"lead.updated",
            "fields":{"org_id":88666266666666666666666666666666666666666666001}}"#;
        let parsed: LeadEvent = serde_json::from_slice(body).expect("an event");
        let record = serde_json::to_vec(&parsed).expect("an event serializes");
        let read: LeadEvent = serde_json::from_slice(&record).expect("the record reads back");
        assert_eq!(read, parsed);
    }
}
