//! The state changelog's record format: how a [`LeadState`] is written to `{prefix}.state` and
//! read back. One home for it; [`LeadState::encode`] and [`LeadState::decode`] call here.
//!
//! A record is a header, then the state:
//!
//! - one byte, the format version: [`V1`]. Records written before versions existed are JSON and
//!   start with `{`: they are still read, so an upgrade needs no migration step. Any other first
//!   byte is a format this build does not know (a newer build wrote it): the record is refused as
//!   unreadable, never guessed at.
//! - the writer's partition generation, an unsigned LEB128 varint (0 while the writer does not
//!   know it): a reader can tell a late write of an old owner from the current owner's.
//! - the state in MessagePack, structs as maps of their field names, so a field added with
//!   `#[serde(default)]` reads older records as JSON did; times as `[seconds, nanoseconds]`
//!   (see [`time`]) instead of RFC 3339 strings.

use serde::{Deserialize, Serialize};

use super::state::LeadState;

/// Version 1: MessagePack with named fields and integer times, under the header of
/// [`crate::stamp`].
pub const V1: u8 = crate::stamp::V1;

/// The deepest nesting a record may have: a state's own (a few levels) around field values that
/// were JSON (which serde_json bounds at 128), with room to spare. Deeper is refused rather than
/// risk the stack.
const MAX_DEPTH: usize = 256;

/// `state`'s record, as written by partition generation `generation`.
pub fn encode(state: &LeadState, generation: u64) -> Vec<u8> {
    let mut out = Vec::with_capacity(256);
    crate::stamp::write(&mut out, generation);
    let mut ser = rmp_serde::Serializer::new(&mut out).with_struct_map();
    state.serialize(&mut ser).expect("lead state serializes");
    out
}

/// A record read back: the writer's partition generation (0 for JSON records, which predate
/// it) and the state; `None` when it cannot be read (corrupt, trailing bytes, or a version this
/// build does not know).
pub fn decode(record: &[u8]) -> Option<(u64, LeadState)> {
    let (generation, body) = crate::stamp::read(record)?;
    let mut state: LeadState = if crate::stamp::is_unstamped(record) {
        // What builds before versions wrote.
        serde_json::from_slice(body).ok()?
    } else {
        // Read from the slice itself, which is left with what the state did not take.
        let mut de = rmp_serde::Deserializer::new(body);
        de.set_max_depth(MAX_DEPTH);
        let state = LeadState::deserialize(&mut de).ok()?;
        if !de.get_ref().is_empty() {
            return None;
        }
        state
    };
    state.drop_empty_base();
    Some((generation, state))
}

/// Times in a state ([`At`](super::at::At), and a lead's field times as a map of them): an RFC
/// 3339 string in human-readable formats (JSON: what other uses of a state, and old records,
/// have), `[seconds, nanoseconds]` since the Unix epoch in binary ones; as a [`jiff::Timestamp`]
/// was written before states held their times as [`At`](super::at::At).
pub mod time {
    use jiff::Timestamp;
    use serde::de::Error as _;
    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    use crate::engine::at::At;

    impl Serialize for At {
        fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
            let t = self.ts();
            if s.is_human_readable() {
                t.serialize(s)
            } else {
                (t.as_second(), t.subsec_nanosecond()).serialize(s)
            }
        }
    }

    impl<'de> Deserialize<'de> for At {
        fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
            if d.is_human_readable() {
                Timestamp::deserialize(d).map(At::new)
            } else {
                let (second, nanosecond) = <(i64, i32)>::deserialize(d)?;
                Timestamp::new(second, nanosecond)
                    .map(At::new)
                    .map_err(D::Error::custom)
            }
        }
    }

    /// A lead's field times, as a map of names to times: written from its fields
    /// ([`LeadFields::times`]), read as names and times (see [`LeadFields::with_times`]).
    pub mod map {
        use super::*;
        use crate::engine::fields::{Key, LeadFields, Name};

        pub fn serialize<S: Serializer>(fields: &&LeadFields, s: S) -> Result<S::Ok, S::Error> {
            s.collect_map(fields.times())
        }

        pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<(Name, At)>, D::Error> {
            struct Visit;
            impl<'de> serde::de::Visitor<'de> for Visit {
                type Value = Vec<(Name, At)>;
                fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                    f.write_str("a map of field names to times")
                }
                fn visit_map<A: serde::de::MapAccess<'de>>(
                    self,
                    mut map: A,
                ) -> Result<Vec<(Name, At)>, A::Error> {
                    // At most a few hundred entries preallocated, whatever the record claims.
                    let mut items = Vec::with_capacity(map.size_hint().unwrap_or(0).min(256));
                    while let Some((Key(k), t)) = map.next_entry::<Key, At>()? {
                        items.push((k, t));
                    }
                    Ok(items)
                }
            }
            d.deserialize_map(Visit)
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::VecDeque;

    use jiff::Timestamp;
    use proptest::prelude::*;
    use serde_json::{Map, Value};

    use super::*;
    use crate::engine::at::At;
    use crate::engine::fields::{LeadFields, Name};
    use crate::engine::state::{Closeout, Episode, Fired, Lead, Logged, Owed, Touch};
    use crate::event::{Activity, Change};

    /// A record an earlier build wrote (JSON, times as RFC 3339): a merged, then disqualified
    /// lead with its reorder window.
    const JSON_RECORD: &str = r#"{"base":{"fields":{}},"log":[{"at":"2026-11-25T09:00:00Z","seq":1,"event":6522563882090672066,"source":"web","type":"lead.updated","fields":{"email":"a@b.example","employees":1200,"owner":"alice@example.com","region":"EMEA","score":80,"stage":"sales_ready"}},{"at":"2026-11-25T09:00:00Z","seq":2,"event":4982578321610624675,"source":"web","type":"lead.deleted"},{"at":"2026-11-25T09:00:00Z","seq":3,"event":6272644759089308359,"source":"web","type":"lead.merged","into":"lead-43"},{"at":"2026-11-25T09:00:00Z","seq":4,"event":9506936346477806086,"source":"web","type":"lead.updated","fields":{"reason":"Not a fit","reason_detail":"too small","status":"Unqualified"}},{"at":"2026-11-25T09:30:00.25Z","seq":5,"event":12031348021767555146,"source":"web","type":"lead.updated","fields":{"reason":"Other","status":"Unqualified"}}],"lead":{"fields":{"email":"a@b.example","employees":1200,"owner":"alice@example.com","reason":"Other","reason_detail":"too small","region":"EMEA","score":80,"stage":"sales_ready","status":"Unqualified"},"field_at":{"email":"2026-11-25T09:00:00Z","employees":"2026-11-25T09:00:00Z","owner":"2026-11-25T09:00:00Z","reason":"2026-11-25T09:30:00.25Z","reason_detail":"2026-11-25T09:00:00Z","region":"2026-11-25T09:00:00Z","score":"2026-11-25T09:00:00Z","stage":"2026-11-25T09:00:00Z","status":"2026-11-25T09:30:00.25Z"},"source":"web","origin":"web","owner":"alice@example.com","owner_since":"2026-11-25T09:00:00Z","ended_at":"2026-11-25T09:00:00Z","last_event_at":"2026-11-25T09:30:00.25Z"},"seq":5,"recent_events":[6522563882090672066,4982578321610624675,6272644759089308359,9506936346477806086,12031348021767555146]}"#;

    /// An upgrade needs no migration: a record of an earlier build reads back as the state it
    /// was, and that state's JSON (what other uses of a state see) is what it was.
    #[test]
    fn a_json_record_of_an_earlier_build_reads_back_as_it_was() {
        let (generation, state) = decode(JSON_RECORD.as_bytes()).expect("an old record reads");
        assert_eq!(generation, 0);
        assert_eq!(state.log.len(), 5);
        // Its window opened on a lead with nothing yet: that empty base is not held, but is
        // written back as it was.
        assert!(state.base.is_none());
        assert_eq!(
            state.lead.last_event_at,
            Some("2026-11-25T09:30:00.25Z".parse().unwrap())
        );
        let json: Value = serde_json::from_str(JSON_RECORD).unwrap();
        assert_eq!(serde_json::to_value(&state).unwrap(), json);
    }

    /// A window's patch, kept as a sorted slice rather than a map, is written byte for byte as
    /// the change it was, in both formats: records of either build read in the other.
    #[test]
    fn a_kept_patch_is_written_as_the_change_it_was() {
        use crate::engine::state::Patch;
        use crate::event::Change;
        let json: Value = serde_json::from_str(JSON_RECORD).unwrap();
        for entry in json["log"].as_array().unwrap() {
            let change: Change = serde_json::from_value(entry.clone()).unwrap();
            let patch = Patch::from(change.clone());
            assert_eq!(msgpack(&patch), msgpack(&change), "{entry}");
            assert_eq!(
                serde_json::to_string(&patch).unwrap(),
                serde_json::to_string(&change).unwrap()
            );
            let back: Patch =
                serde_json::from_str(&serde_json::to_string(&change).unwrap()).unwrap();
            assert_eq!(back, patch);
        }
    }

    fn msgpack<T: Serialize>(value: &T) -> Vec<u8> {
        let mut out = Vec::new();
        let mut ser = rmp_serde::Serializer::new(&mut out).with_struct_map();
        value.serialize(&mut ser).unwrap();
        out
    }

    /// A record written now is versioned and compact: it reads back as the same state, with the
    /// writer's generation, in two thirds of the bytes of the JSON it replaces (before
    /// compression), with no time spelled out as text.
    #[test]
    fn a_record_reads_back_as_the_state_and_generation_written() {
        let state = decode(JSON_RECORD.as_bytes()).unwrap().1;
        for generation in [0, 1, 127, 128, 300, u64::MAX] {
            let record = encode(&state, generation);
            assert_eq!(record[0], V1);
            assert_eq!(decode(&record), Some((generation, state.clone())));
        }
        let record = state.encode();
        assert!(
            record.len() * 3 < JSON_RECORD.len() * 2,
            "{} bytes against {} as JSON",
            record.len(),
            JSON_RECORD.len()
        );
        assert!(
            !record.windows(5).any(|w| w == b"2026-"),
            "times are integers"
        );
    }

    /// A record this build cannot read is refused (the restore counts and dead-letters it),
    /// never taken for another state: a version from a newer build, a body cut short or with
    /// bytes after it, a generation that does not end.
    #[test]
    fn a_record_of_an_unknown_version_or_damaged_is_unreadable() {
        let state = decode(JSON_RECORD.as_bytes()).unwrap().1;
        let record = encode(&state, 3);
        let mut newer = record.clone();
        newer[0] = V1 + 1;
        assert_eq!(decode(&newer), None, "a newer version");
        assert_eq!(decode(&record[..record.len() - 1]), None, "cut short");
        let mut longer = record.clone();
        longer.push(0);
        assert_eq!(decode(&longer), None, "bytes after the state");
        assert_eq!(decode(&[V1, 0x80, 0x80]), None, "a generation cut short");
        assert_eq!(
            decode(&[
                V1, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01
            ]),
            None,
            "a generation over 64 bits"
        );
        assert_eq!(decode(&[]), None, "empty");
        assert_eq!(decode(b"\"not a record\""), None, "JSON, not a state");
    }

    /// A restore reports a record of a newer build unreadable (the shell counts and
    /// dead-letters it, and that lead starts afresh) and restores the others, old and new.
    #[test]
    fn a_restore_reports_a_record_of_a_newer_version_unreadable() {
        use crate::engine::partition::PartitionState;
        use crate::engine::step::{Diagnostic, Input, Records};

        let state = decode(JSON_RECORD.as_bytes()).unwrap().1;
        let mut newer = encode(&state, 0);
        newer[0] = V1 + 1;
        let records = Records::from([
            ("L-newer".to_string(), newer),
            ("L-json".to_string(), JSON_RECORD.as_bytes().to_vec()),
            ("L-v1".to_string(), encode(&state, 2)),
        ]);
        let rules = crate::engine::rules::Rules::parse(
            "[lifecycle]\nsales_ready = 'lead.stage == \"sales_ready\"'\n[first_touch]\nwithin = \"4h\"\n",
        )
        .unwrap();
        let engine = crate::engine::Engine::new(std::sync::Arc::new(rules));
        let mut p = PartitionState::default();
        let now = "2026-11-25T10:00:00Z".parse().unwrap();
        let step = p.step(&engine, Input::Restore(records), now);
        let unreadable: Vec<&String> = step
            .diagnostics
            .iter()
            .flat_map(|d| match d {
                Diagnostic::Unreadable { keys } => keys.iter().collect(),
                _ => Vec::new(),
            })
            .collect();
        assert_eq!(unreadable, ["L-newer"]);
        assert!(p.lead("L-newer").is_none());
        assert_eq!(p.lead("L-json").map(|s| s.seq), Some(5));
        assert_eq!(p.lead("L-v1").map(|s| s.seq), Some(5));
    }

    /// Instants of jiff's whole range (held at the ends of [`At`]'s span beyond it) and of ours.
    fn time() -> impl Strategy<Value = At> {
        let (min, max) = (
            Timestamp::MIN.as_nanosecond(),
            Timestamp::MAX.as_nanosecond(),
        );
        prop_oneof![
            (min..=max).prop_map(|n| At::new(Timestamp::from_nanosecond(n).unwrap())),
            (1_700_000_000i64..1_900_000_000, 0..1_000_000_000i32)
                .prop_map(|(s, ns)| At::new(Timestamp::new(s, ns).unwrap())),
        ]
    }

    /// A rule's or variant's name: one the engine fires, or any other.
    fn fired_name() -> impl Strategy<Value = String> {
        prop_oneof![
            text(),
            prop::sample::select(vec![
                "first_touch",
                "reminder",
                "disposition",
                "disposition.late"
            ])
            .prop_map(String::from),
        ]
    }

    fn text() -> impl Strategy<Value = String> {
        prop_oneof!["[a-z_]{0,8}", ".{0,12}"]
    }

    fn value() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::from),
            any::<i64>().prop_map(Value::from),
            any::<u64>().prop_map(Value::from),
            any::<f64>()
                .prop_filter("finite", |f| f.is_finite())
                .prop_map(Value::from),
            text().prop_map(Value::from),
        ];
        leaf.prop_recursive(3, 24, 4, |inner| {
            prop_oneof![
                proptest::collection::vec(inner.clone(), 0..4).prop_map(Value::from),
                proptest::collection::btree_map(text(), inner, 0..4)
                    .prop_map(|m| Value::Object(m.into_iter().collect())),
            ]
        })
    }

    fn fields() -> impl Strategy<Value = Map<String, Value>> {
        proptest::collection::btree_map(text(), value(), 0..5).prop_map(|m| m.into_iter().collect())
    }

    fn change() -> impl Strategy<Value = Change> {
        prop_oneof![
            fields().prop_map(|fields| Change::Updated { fields }),
            (text(), proptest::option::of(text()), any::<bool>()).prop_map(
                |(kind, by, automated)| Change::Activity {
                    activity: Activity {
                        kind,
                        by,
                        automated
                    }
                }
            ),
            Just(Change::Deleted {}),
            text().prop_map(|into| Change::Merged { into }),
            Just(Change::Forgotten {}),
        ]
    }

    fn opt_time() -> impl Strategy<Value = Option<At>> {
        proptest::option::of(time())
    }

    fn closeout() -> impl Strategy<Value = Closeout> {
        (
            (time(), proptest::option::of(text()), time()),
            (proptest::option::of(text()), proptest::option::of(text())),
            (any::<u32>(), opt_time(), opt_time()),
            proptest::collection::vec((text(), time()), 0..3),
        )
            .prop_map(
                |(
                    (closed_at, owner, sales_ready_at),
                    (reason, detail),
                    (attempts, last_activity_at, last_touch_at),
                    owes,
                )| Closeout {
                    closed_at,
                    owner,
                    sales_ready_at,
                    reason,
                    detail,
                    attempts,
                    last_activity_at,
                    last_touch_at,
                    owes: owes
                        .into_iter()
                        .map(|(kind, deadline)| Owed { kind, deadline })
                        .collect(),
                },
            )
    }

    fn episode() -> impl Strategy<Value = Episode> {
        (
            time(),
            opt_time(),
            proptest::option::of((time(), text())),
            opt_time(),
        )
            .prop_map(
                |(started_at, unassigned_since, clock, handed_off_at)| Episode {
                    started_at,
                    unassigned_since,
                    clock: clock.map(|(started_at, owner)| crate::engine::state::Clock {
                        started_at,
                        owner,
                    }),
                    handed_off_at,
                },
            )
    }

    // Fields set one by one on a default: a field the state gains (with its default) needs no
    // change here.
    #[allow(clippy::field_reassign_with_default)]
    fn lead() -> impl Strategy<Value = Lead> {
        (
            (
                fields().prop_map(LeadFields::from),
                proptest::collection::btree_map(text(), time(), 0..4).prop_map(|m| {
                    m.into_iter()
                        .map(|(k, t)| (Name::from(k), t))
                        .collect::<Vec<_>>()
                }),
                proptest::option::of(text()),
                proptest::option::of(text()),
                proptest::option::of(text()),
            ),
            (
                opt_time(),
                proptest::option::of(episode()),
                opt_time(),
                opt_time(),
            ),
            proptest::collection::vec((time(), any::<u64>()), 0..4),
            (opt_time(), opt_time(), opt_time(), opt_time()),
            proptest::collection::vec(closeout(), 0..3),
        )
            .prop_map(|(a, b, touches, c, closeouts)| {
                let mut lead = Lead::default();
                let (fields, times, source, origin, owner) = a;
                lead.fields = fields.with_times(times);
                (lead.source, lead.origin, lead.owner) = (source, origin, owner);
                (
                    lead.owner_since,
                    lead.episode,
                    lead.deleted_at,
                    lead.ended_at,
                ) = b;
                lead.touches = touches
                    .into_iter()
                    .map(|(at, event)| Touch { at, event })
                    .collect();
                (
                    lead.last_activity_at,
                    lead.reason_changed_at,
                    lead.detail_changed_at,
                    lead.last_event_at,
                ) = c;
                lead.closeouts = closeouts;
                lead
            })
    }

    // Fields set one by one on a default: a field the state gains (with its default) needs no
    // change here.
    #[allow(clippy::field_reassign_with_default)]
    fn state() -> impl Strategy<Value = LeadState> {
        (
            proptest::option::of(lead()),
            proptest::collection::vec((time(), any::<u64>(), any::<u64>(), text(), change()), 0..4),
            lead(),
            any::<u64>(),
            proptest::collection::vec(any::<u64>(), 0..4),
            proptest::collection::vec(
                (
                    fired_name(),
                    any::<u32>(),
                    time(),
                    proptest::option::of(fired_name()),
                ),
                0..3,
            ),
        )
            .prop_map(|(base, log, lead, seq, recent, fired)| {
                let mut state = LeadState::default();
                state.base = base.map(Box::new);
                state.log = log
                    .into_iter()
                    .map(|(at, seq, event, source, change)| Logged {
                        at,
                        seq,
                        event,
                        source,
                        change: change.into(),
                    })
                    .collect();
                state.lead = lead;
                state.seq = seq;
                state.recent_events = VecDeque::from(recent);
                state.fired = fired
                    .into_iter()
                    .map(|(rule, level, clock, variant)| {
                        Fired::new(&rule, level, clock, variant.as_deref())
                    })
                    .collect();
                state
            })
    }

    proptest! {
        /// Every state survives encode → decode, with its generation; and its JSON, as an
        /// earlier build wrote it, decodes to the same state.
        #[test]
        fn every_state_reads_back_as_written(state in state(), generation in any::<u64>()) {
            prop_assert_eq!(decode(&encode(&state, generation)), Some((generation, state.clone())));
            let json = serde_json::to_vec(&state).unwrap();
            prop_assert_eq!(decode(&json), Some((0, state)));
        }
    }
}
