//! What the engine's hot paths cost in allocator calls, counted by a global allocator of this test
//! binary (per thread, so tests running side by side do not count each other's).
//!
//! The engine works out when a lead next has something due after every event and every alert
//! it fires; with the shipped rules (calendars, segments, the escalation ladder, follow-up and
//! close-out rules) that must not copy the lead's owner, the roles or the close-outs.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::sync::Arc;

use jiff::Timestamp;
use leadwatch::engine::step::Input;
use leadwatch::engine::{Engine, PartitionState};
use leadwatch::event::{Activity, Change, LeadEvent};
use serde_json::json;

struct Counting;

thread_local! {
    static CALLS: Cell<usize> = const { Cell::new(0) };
}

fn count() {
    // `try_with`: the allocator may be called while the thread's locals are torn down.
    let _ = CALLS.try_with(|n| n.set(n.get() + 1));
}

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        count();
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        count();
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOC: Counting = Counting;

/// Allocator calls (alloc and realloc) `f` makes on this thread.
fn allocations<T>(f: impl FnOnce() -> T) -> (usize, T) {
    let before = CALLS.with(Cell::get);
    let out = f();
    (CALLS.with(Cell::get) - before, out)
}

fn event(id: &str, at: &str, change: Change) -> LeadEvent {
    let at: Timestamp = at.parse().unwrap();
    LeadEvent {
        id: id.into(),
        source: "hs".into(),
        lead: "hubspot:1".into(),
        occurred_at: at,
        received_at: at,
        change,
    }
}

/// An engine under the rules the project ships.
fn shipped_engine() -> Engine {
    let rules = leadwatch::engine::rules::Rules::parse(include_str!("../config/rules.toml"))
        .expect("the shipped rules");
    Engine::new(Arc::new(rules))
}

fn fields(v: serde_json::Value) -> Change {
    Change::Updated {
        fields: v.as_object().unwrap().clone(),
    }
}

#[test]
fn the_next_deadline_of_a_lead_is_found_without_copying_it() {
    let engine = shipped_engine();
    let mut p = PartitionState::default();
    let events = [
        event(
            "e1",
            "2026-11-02T14:00:00Z",
            fields(
                json!({"stage": "MQL", "score": 75, "employees": 40, "region": "NA",
                          "status": "New", "owner": "alice@example.com"}),
            ),
        ),
        event(
            "e2",
            "2026-11-02T15:00:00Z",
            Change::Activity {
                activity: Activity {
                    kind: "call".into(),
                    by: Some("alice@example.com".into()),
                    automated: false,
                },
            },
        ),
    ];
    for e in &events {
        p.step(&engine, Input::Event(e), e.occurred_at);
    }
    let state = p.lead("hubspot:1").expect("the lead");
    assert!(state.lead.episode.is_some(), "an open episode");
    let (calls, next) = allocations(|| engine.next_deadline(state));
    // The follow-up attempt is due a working day after the call (the first touch is done).
    assert_eq!(next, Some("2026-11-03T15:00:00Z".parse().unwrap()));
    assert!(
        calls <= 1,
        "{calls} allocator calls to find the next deadline (at most the list of what is owed)"
    );
}

/// An event re-sent to a lead the engine holds (a sender's retry) copies nothing: not even the
/// lead's key.
#[test]
fn a_re_sent_event_copies_nothing() {
    let engine = shipped_engine();
    let mut p = PartitionState::default();
    let first = event(
        "e1",
        "2026-11-02T14:00:00Z",
        fields(
            json!({"stage": "MQL", "score": 75, "status": "New", "owner": "alice@example.com",
                      "disposition_reason": "No budget", "disposition_detail": "Asked again in Q3"}),
        ),
    );
    p.step(&engine, Input::Event(&first), first.occurred_at);
    let (again, _) = allocations(|| {
        p.step(&engine, Input::Event(&first), first.occurred_at)
            .diagnostics
            .len()
    });
    assert!(
        again <= 1,
        "{again} allocator calls for a re-sent event (its diagnostic)"
    );
}

/// An event is read in one pass: what reading it allocates is what it holds (its strings, the
/// map of its fields), without buffering its keys first.
#[test]
fn reading_an_event_allocates_what_it_holds() {
    let fields: serde_json::Map<String, serde_json::Value> = (0..20)
        .map(|i| (format!("Field_{i}__c"), json!(format!("value {i}"))))
        .collect();
    let line = serde_json::to_vec(&json!({
        "id": "sf:00Q5g00000ABCDEF:1", "source": "salesforce", "lead": "salesforce:00Q5g00000ABCDEF",
        "occurred_at": "2026-11-02T14:00:00Z", "received_at": "2026-11-02T14:00:01Z",
        "type": "lead.updated", "fields": fields,
    }))
    .unwrap();
    let (calls, event) = allocations(|| serde_json::from_slice::<LeadEvent>(&line).unwrap());
    let Change::Updated { fields: read } = &event.change else {
        panic!("an update");
    };
    assert_eq!(read, &fields);
    // Its three strings, and each field's name and value, with room for the map's nodes.
    let held = 3 + 2 * fields.len();
    assert!(
        calls <= held + 4,
        "{calls} allocator calls to read an event holding {held} strings"
    );
}

/// `simulate` reads its file keeping only the fields the rules read: a Salesforce-sized snapshot
/// of 40 fields, long text among them, costs what the few kept fields hold, not the rest.
#[test]
fn reading_an_event_keeping_a_few_fields_copies_only_those() {
    let mut fields: serde_json::Map<String, serde_json::Value> = (0..38)
        .map(|i| {
            (
                format!("Field_{i}__c"),
                json!(format!("value {i} ").repeat(20)),
            )
        })
        .collect();
    fields.insert("stage".into(), json!("MQL"));
    fields.insert("owner".into(), json!("alice@example.com"));
    let line = serde_json::to_string(&json!({
        "id": "sf:00Q5g00000ABCDEF:1", "source": "salesforce", "lead": "salesforce:00Q5g00000ABCDEF",
        "occurred_at": "2026-11-02T14:00:00Z", "type": "lead.updated", "fields": fields,
    }))
    .unwrap();
    let keep = |name: &str| name == "stage" || name == "owner";
    let (calls, event) =
        allocations(|| leadwatch::event::Envelope::read_keeping(&line, &keep).unwrap());
    let Change::Updated { fields: read } = &event.change else {
        panic!("an update");
    };
    assert_eq!(read.len(), 2);
    // Three strings, two kept fields (name and value), and the map's node.
    assert!(
        calls <= 3 + 2 * 2 + 1,
        "{calls} allocator calls to read two fields of 40"
    );
}

/// A new owner restores a partition's leads from their records: each lead costs what decoding
/// its record holds, what looking at it again under the rules costs, and its deadline's two
/// entries (the timer and the lead's armed time) — its key is not copied on the way, nor is it
/// armed twice.
#[test]
fn restoring_a_lead_costs_its_record_and_its_deadline() {
    let engine = shipped_engine();
    let mut p = PartitionState::default();
    let first = event(
        "e1",
        "2026-11-02T14:00:00Z",
        fields(
            json!({"stage": "MQL", "score": 75, "employees": 40, "region": "NA",
                      "status": "New", "owner": "alice@example.com"}),
        ),
    );
    p.step(&engine, Input::Event(&first), first.occurred_at);
    let later: Timestamp = "2026-11-02T16:00:00Z".parse().unwrap();
    p.step(&engine, Input::Sweep, later);
    let held = p.lead("hubspot:1").expect("the lead");
    let next = engine.next_deadline(held).expect("a deadline");
    let record = held.encode();

    // What the parts cost alone: decoding the record, and looking at the lead again.
    let (decoding, decoded) = allocations(|| leadwatch::engine::LeadState::decode(&record));
    let mut decoded = decoded.expect("the record reads");
    let (looking, _) = allocations(|| {
        engine.project(&mut decoded);
        engine.reevaluate(&mut decoded, later);
        engine.next_deadline(&decoded)
    });

    let records: leadwatch::engine::step::Records = [("hubspot:1".to_string(), record)].into();
    let mut q = PartitionState::default();
    let (calls, wake) = allocations(|| {
        q.step(&engine, Input::Restore(records), later);
        q.step(&engine, Input::End, later).wake
    });
    assert_eq!(wake, Some(next), "the restored lead is armed as it was");
    // The deadline's two copies of the key, and the first node of each of the partition's maps
    // (its leads, its timers, its armed times).
    let parts = decoding + looking + 2 + 3;
    assert!(
        calls <= parts,
        "{calls} allocator calls to restore one lead, whose parts cost {parts} \
         ({decoding} decoding, {looking} looking again)"
    );
}

/// A Salesforce-sized snapshot of 40 fields, 12 of them kept, as the reorder window keeps it: the
/// kept names are the rules' own, shared, not copied into every event (nor then into the lead's
/// fields and their times); only the values are.
#[test]
fn a_kept_patch_copies_its_values_not_its_names() {
    let engine = shipped_engine();
    let mut fields: serde_json::Map<String, serde_json::Value> = (0..28)
        .map(|i| (format!("Field_{i}__c"), json!(format!("value {i}"))))
        .collect();
    let kept = [
        "stage",
        "status",
        "owner",
        "email",
        "name",
        "first_name",
        "last_name",
        "company",
        "score",
        "employees",
        "disposition_reason",
        "disposition_detail",
    ];
    for k in kept {
        fields.insert(k.into(), json!(format!("{k} value")));
    }
    let change = Change::Updated { fields };
    let (calls, patch) = allocations(|| engine.projection().logged(&change));
    let leadwatch::engine::Patch::Updated(patch) = patch else {
        panic!("an update");
    };
    assert_eq!(patch.len(), kept.len(), "every field named kept");
    // Each kept value, and the slice (allocated once, shrunk at most once).
    assert!(
        calls <= kept.len() + 2,
        "{calls} allocator calls to keep {} fields of 40",
        kept.len()
    );
}

/// A lead's state read back from its record: each field name is copied once from the record,
/// not through a string first.
#[test]
fn a_record_read_back_copies_each_name_once() {
    let engine = shipped_engine();
    let mut p = PartitionState::default();
    let fields: serde_json::Map<String, serde_json::Value> =
        (0..12).map(|i| (format!("f{i}"), json!(i))).collect();
    let e = event("e1", "2026-11-02T14:00:00Z", Change::Updated { fields });
    let engine = engine.keeping_every_field();
    p.step(&engine, Input::Event(&e), e.occurred_at);
    p.step(
        &engine,
        Input::Sweep,
        "2026-11-02T18:00:00Z".parse().unwrap(),
    );
    let state = p.lead("hubspot:1").expect("the lead");
    assert_eq!(state.lead.fields.len(), 12);
    let record = state.encode();
    let (calls, read) = allocations(|| leadwatch::engine::LeadState::decode(&record).unwrap());
    assert_eq!(read.lead.fields, state.lead.fields);
    // Each name twice (the fields and their times), the two slices with their growth, the
    // lead's few strings and lists.
    assert!(
        calls <= 2 * 12 + 16,
        "{calls} allocator calls to read 12 fields back"
    );
}

/// An alert's id is hashed from its parts without formatting them into strings of their own:
/// the id itself is the one allocation.
#[test]
fn an_alert_id_allocates_only_itself() {
    let clock: Timestamp = "2026-11-02T14:00:00Z".parse().unwrap();
    let (calls, id) = allocations(|| {
        leadwatch::alert::alert_id_of("hubspot:1", "first_touch", 0, clock, Some("reminder"))
    });
    assert!(id.starts_with("alert_") && id.len() == 38, "{id}");
    assert_eq!(calls, 1, "{calls} allocator calls for one alert id");
}

/// A rule is evaluated over the lead's fields in place: binding `lead`, `change` and `activity`
/// allocates nothing (what is left is CEL's own work on the values the rule reads and its list
/// literal; binding them as variables of a scope took 7 more: three names, three boxes, a map
/// node).
#[test]
fn evaluating_a_rule_binds_the_lead_without_allocating() {
    let rules = leadwatch::engine::rules::Rules::parse(include_str!("../config/rules.toml"))
        .expect("the shipped rules");
    let fields = json!({"stage": "MQL", "score": "75", "status": "New"});
    let fields: leadwatch::engine::LeadFields = fields.as_object().unwrap().into();
    let facts = leadwatch::engine::rules::Facts::new(&fields);
    let closed = rules.lifecycle.closed.as_ref().expect("a closed rule");
    let (calls, verdict) = allocations(|| closed.eval(&rules.cel, &facts));
    assert_eq!(verdict, Ok(false));
    assert!(
        calls <= 9,
        "{calls} allocator calls to evaluate `{}`",
        closed.source()
    );
}
