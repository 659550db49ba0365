//! Measures the engine alone, without Kafka, on one core (figures for the closing notes): events
//! applied per second with every rule on (the shipped rules: business calendars, segments,
//! handoff, reminders, the escalation ladder, follow-up and close-out reasons), and the memory and
//! changelog bytes of an open lead.
//!
//! Each lead lives a realistic life: created with a vendor's worth of fields, scored into
//! sales-ready, assigned, called (most of them), closed with a reason (some of them). Events are
//! stepped in time order through the same entry point the live engine and `simulate` use
//! (`PartitionState::step`, state records encoded as the daemon writes them), and deadlines fire
//! as the simulated clock passes them.
//!
//! `--shape vendor` (the default) makes the events what the default HubSpot and Salesforce
//! mappings produce from those vendors' own payloads (see `shared/vendor.rs`: HubSpot property
//! changes one per event, Salesforce snapshots of about 40 fields with long text, mixed);
//! `--shape canonical` keeps the earlier compact events of a single canonical shape. Besides
//! events/s it reports allocator calls per event (alloc and realloc, counted by the global
//! allocator below), bytes held per lead and changelog bytes per lead: each lead's record, and
//! what the records take on the broker compressed in producer batches (see [`BATCHES`]).
//!
//! `--write-events FILE` writes the events as JSON lines (the format `leadwatch simulate`
//! reads) and exits without running the engine.
//!
//! Last, the leads are restored from their records as a new owner of the partitions would
//! (`Input::Restore`), timed and their allocator calls counted.
//!
//! `cargo run --release --bin enginebench -- --leads 200000 [--shape vendor|canonical]
//! [--rules config/rules.toml] [--write-events FILE]`

use std::io::Write as _;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use clap::{Parser, ValueEnum};
use jiff::{SignedDuration, Timestamp};
use leadwatch::clock::Clock;
use leadwatch::engine::step::{Input, Write};
use leadwatch::engine::{Engine, PartitionState};
use leadwatch::event::{Activity, Change, LeadEvent};
use serde_json::json;

#[derive(Parser)]
struct Args {
    /// Leads to run through.
    #[arg(long, default_value_t = 200_000)]
    leads: usize,
    /// The rules file (default: the shipped example, every rule on).
    #[arg(long)]
    rules: Option<PathBuf>,
    /// What the events look like.
    #[arg(long, value_enum, default_value_t = Shape::Vendor)]
    shape: Shape,
    /// Write the events to this file, one JSON line each (`leadwatch simulate`'s format), and
    /// exit without running the engine.
    #[arg(long)]
    write_events: Option<PathBuf>,
    /// Also print where the leads' bytes go, part by part.
    #[arg(long)]
    breakdown: bool,
}

#[derive(Clone, Copy, ValueEnum)]
enum Shape {
    /// HubSpot property changes and Salesforce snapshots, through the vendors' own parsers.
    Vendor,
    /// Compact canonical events, a handful of fields each.
    Canonical,
}

#[path = "shared/vendor.rs"]
mod vendor;

/// Counts the bytes allocated and not yet freed, so memory per lead is what the leads hold,
/// not what the allocator keeps around; and the calls into the allocator (alloc and realloc),
/// the cost per event the engine work should bring down.
struct Counting;

static LIVE: AtomicUsize = AtomicUsize::new(0);
static CALLS: AtomicUsize = AtomicUsize::new(0);

unsafe impl std::alloc::GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: std::alloc::Layout) -> *mut u8 {
        LIVE.fetch_add(layout.size(), Ordering::Relaxed);
        CALLS.fetch_add(1, Ordering::Relaxed);
        unsafe { std::alloc::System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: std::alloc::Layout) {
        LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
        unsafe { std::alloc::System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: std::alloc::Layout, new_size: usize) -> *mut u8 {
        LIVE.fetch_add(new_size, Ordering::Relaxed);
        LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
        CALLS.fetch_add(1, Ordering::Relaxed);
        unsafe { std::alloc::System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOC: Counting = Counting;

fn live_bytes() -> usize {
    LIVE.load(Ordering::Relaxed)
}

fn alloc_calls() -> usize {
    CALLS.load(Ordering::Relaxed)
}

/// The events of lead `i`, starting at `start`.
fn life(i: usize, start: Timestamp) -> Vec<LeadEvent> {
    let lead = format!("hubspot:{}", 100_000 + i);
    let ev = |n: usize, secs: i64, change: Change| LeadEvent {
        id: format!("{lead}-{n}"),
        source: "hs".into(),
        lead: lead.clone(),
        occurred_at: start + SignedDuration::from_secs(secs),
        received_at: start + SignedDuration::from_secs(secs),
        change,
    };
    let fields = |v: serde_json::Value| Change::Updated {
        fields: v.as_object().expect("object").clone(),
    };
    let owner = ["alice@example.com", "bob@example.com", "dave@example.com"][i % 3];
    let mut events = vec![
        ev(
            0,
            0,
            fields(json!({
                "firstname": "Jane", "lastname": format!("Doe {i}"), "first_name": "Jane", "last_name": format!("Doe {i}"),
                "email": format!("jane.doe{i}@example.org"), "company": format!("Company {}", i % 5000),
                "employees": (i * 37 % 3000).to_string(), "annual_revenue": "2500000", "industry": "Software",
                "region": if i.is_multiple_of(4) { "EMEA" } else { "NA" }, "job_title": "VP Marketing",
                "lifecyclestage": "lead", "stage": "lead", "score": "20", "hs_lead_status": "NEW", "status": "New",
                "country": "US", "phone": "+1 555 0100", "hs_analytics_source": "ORGANIC_SEARCH",
            })),
        ),
        ev(
            1,
            600,
            fields(
                json!({"lifecyclestage": "marketingqualifiedlead", "stage": "MQL", "hubspotscore": "75", "score": "75"}),
            ),
        ),
        ev(
            2,
            900,
            fields(json!({"hubspot_owner_id": owner, "owner": owner})),
        ),
    ];
    if i % 10 < 7 {
        events.push(ev(
            3,
            3_600 + (i % 7_200) as i64,
            Change::Activity {
                activity: Activity {
                    kind: "call".into(),
                    by: Some(owner.into()),
                    automated: false,
                },
            },
        ));
    }
    if i % 10 < 3 {
        let reason = ["No budget", "Not interested", "Bad timing"][i % 3];
        events.push(ev(
            4,
            86_400,
            fields(json!({"status": "Unqualified", "hs_lead_status": "UNQUALIFIED", "disposition_reason": reason})),
        ));
    }
    events
}

/// Records per producer batch the compressed changelog figure is given for: a batch is what one
/// partition's writes add up to within the producer's linger (5 ms), a few records when events
/// trickle in, hundreds when the engine catches up.
const BATCHES: [usize; 3] = [10, 100, 1000];

/// A Kafka record batch's header (v2), uncompressed.
const BATCH_HEADER: usize = 61;

/// Bytes per record that `records` take on the broker written in batches of `batch`: each
/// batch's records (framed roughly as Kafka does: a few bytes of header, the key, the value)
/// compressed with the producer's codec at its default level, plus the batch header.
fn written_per_lead(records: &[(&str, Vec<u8>)], batch: usize) -> f64 {
    assert_eq!(leadwatch::bus::producer::COMPRESSION, "zstd");
    let mut total = 0;
    for chunk in records.chunks(batch) {
        let mut framed = Vec::new();
        for (key, value) in chunk {
            // Length, attributes, timestamp and offset deltas, header count: about 7 bytes.
            framed.extend_from_slice(&[0; 7]);
            framed.extend_from_slice(key.as_bytes());
            framed.extend_from_slice(&(value.len() as u32).to_le_bytes()[..2]);
            framed.extend_from_slice(value);
        }
        total += zstd::bulk::compress(&framed, 0)
            .expect("zstd compresses")
            .len()
            + BATCH_HEADER;
    }
    total as f64 / records.len().max(1) as f64
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let path = args.rules.unwrap_or_else(|| {
        PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/config/rules.toml"))
    });
    let rules = leadwatch::app::config::load_rules(&path)
        .map_err(|e| anyhow::anyhow!("{e}"))?
        .rules;
    let engine = Engine::new(Arc::new(rules));

    // A week of leads, one every few seconds, in time order.
    let base: Timestamp = "2026-11-02T14:00:00Z".parse()?;
    let start = |i: usize| base + SignedDuration::from_secs(3 * i as i64);
    let mut events: Vec<LeadEvent> = match args.shape {
        Shape::Canonical => (0..args.leads).flat_map(|i| life(i, start(i))).collect(),
        Shape::Vendor => {
            let vendors = vendor::Vendors::new();
            (0..args.leads)
                .flat_map(|i| vendors.life(i, start(i)))
                .collect()
        }
    };
    // Stable: a lead's events at the same instant keep their order.
    events.sort_by_key(|e| e.occurred_at);
    let n = events.len();

    if let Some(file) = &args.write_events {
        let mut out = std::io::BufWriter::new(std::fs::File::create(file)?);
        for event in &events {
            serde_json::to_writer(&mut out, event)?;
            out.write_all(b"\n")?;
        }
        out.flush()?;
        let bytes = std::fs::metadata(file)?.len();
        println!(
            "wrote {n} events for {} leads to {} ({:.0} MB, {:.0} bytes per line)",
            args.leads,
            file.display(),
            bytes as f64 / 1e6,
            bytes as f64 / n.max(1) as f64
        );
        return Ok(());
    }
    let event_bytes: usize = events
        .iter()
        .map(|e| serde_json::to_vec(e).map_or(0, |v| v.len()))
        .sum();

    let live_before = live_bytes();
    let calls_before = alloc_calls();
    let mut p = PartitionState::default();
    let mut wake = None;
    let mut alerts = 0usize;
    let clock = Clock::system();
    let started = clock.instant();
    for (i, event) in events.iter().enumerate() {
        // The live engine sweeps (closes passed reorder windows) once a minute.
        if i.is_multiple_of(2_000) {
            p.step(&engine, Input::Sweep, event.occurred_at);
        }
        while let Some(d) = wake {
            if d >= event.occurred_at {
                break;
            }
            let step = p.step(&engine, Input::Tick, d);
            wake = step.wake;
            alerts += step
                .writes
                .iter()
                .map(|w| match w {
                    Write::Lead(w) => w.alerts.len(),
                    Write::Rotation(_) => 0,
                })
                .sum::<usize>();
        }
        p.step(&engine, Input::Event(event), event.occurred_at);
        // Every event up to this one is read: deadlines fire as the clock passes them.
        wake = p.step(&engine, Input::End, event.occurred_at).wake;
    }
    // An hour later every window has closed: the steady state of leads waiting on people.
    let later = events.last().map_or(base, |e| e.occurred_at) + SignedDuration::from_hours(2);
    p.step(&engine, Input::Sweep, later);
    let elapsed = clock.instant() - started;
    let calls = alloc_calls() - calls_before;
    let live_after = live_bytes();
    if args.breakdown {
        breakdown(p.iter().map(|(_, s)| s));
    }

    let open = p.iter().filter(|(_, s)| s.lead.episode.is_some()).count();
    // One record per lead, as the changelog holds it after one update each (key, value).
    let records: Vec<(&str, Vec<u8>)> = p.iter().map(|(k, s)| (k, s.encode())).collect();
    let json: Vec<(&str, Vec<u8>)> = p
        .iter()
        .map(|(k, s)| (k, serde_json::to_vec(s).expect("a state as JSON")))
        .collect();
    let state_bytes: usize = records.iter().map(|(_, r)| r.len()).sum();
    println!("rules: {}", path.display());
    println!(
        "events: {n} for {} leads ({:.1} per lead, {} shape, {:.0} bytes per event as JSON); alerts fired: {alerts}",
        p.len(),
        n as f64 / p.len().max(1) as f64,
        match args.shape {
            Shape::Vendor => "vendor",
            Shape::Canonical => "canonical",
        },
        event_bytes as f64 / n.max(1) as f64,
    );
    println!(
        "engine: {:.0} events/s on one core ({:.1} µs/event, deadlines firing as time passes)",
        n as f64 / elapsed.as_secs_f64(),
        elapsed.as_secs_f64() * 1e6 / n as f64
    );
    println!(
        "allocations: {:.1} allocator calls per event (alloc and realloc, ticks and sweeps included)",
        calls as f64 / n.max(1) as f64
    );
    let held = live_after.saturating_sub(live_before) as f64;
    println!(
        "memory: {:.0} bytes allocated per lead held, windows closed ({} leads, {open} of them in an open episode)",
        held / p.len().max(1) as f64,
        p.len(),
    );
    println!(
        "memory: {:.0} bytes per open lead (everything held, closed leads included, over the open ones)",
        held / open.max(1) as f64,
    );
    println!(
        "changelog: {:.0} bytes per lead state (the record; {:.0} as the JSON of earlier builds)",
        state_bytes as f64 / p.len().max(1) as f64,
        json.iter().map(|(_, r)| r.len()).sum::<usize>() as f64 / p.len().max(1) as f64
    );
    // The same leads read back from their records, as a new owner of the partitions restores
    // them: decoded and looked at again under the rules (`Input::Restore`).
    let restore: leadwatch::engine::step::Records = records
        .iter()
        .map(|(k, r)| (k.to_string(), r.clone()))
        .collect();
    let leads = p.len();
    let calls_before = alloc_calls();
    let started = clock.instant();
    let mut q = PartitionState::default();
    q.step(&engine, Input::Restore(restore), later);
    let restored = clock.instant() - started;
    println!(
        "restore: {:.2} µs per lead ({} leads, {:.1} allocator calls per lead)",
        restored.as_secs_f64() * 1e6 / leads.max(1) as f64,
        q.len(),
        (alloc_calls() - calls_before) as f64 / leads.max(1) as f64,
    );
    for batch in BATCHES {
        println!(
            "changelog: {:.0} bytes per lead written to the broker in {} batches of {batch} records ({:.0} as JSON)",
            written_per_lead(&records, batch),
            leadwatch::bus::producer::COMPRESSION,
            written_per_lead(&json, batch),
        );
    }
    Ok(())
}

/// Where the bytes of these leads' states go: each part's allocated bytes per lead, measured on
/// clones of the states by clearing one part after another (a clone's vectors are exactly
/// their length, so slack the originals have is not in the parts). The partition's own maps are
/// what `memory:` counts beyond the states.
fn breakdown<'a>(states: impl Iterator<Item = &'a leadwatch::engine::LeadState>) {
    let before = live_bytes();
    let mut clones: Vec<Box<leadwatch::engine::LeadState>> =
        states.map(|s| Box::new(s.clone())).collect();
    let n = clones.len().max(1) as f64;
    let total = live_bytes() - before;
    let mut parts: Vec<(&str, usize)> = Vec::new();
    let mut cut = |name: &'static str, f: &dyn Fn(&mut leadwatch::engine::LeadState)| {
        let b = live_bytes();
        for s in clones.iter_mut() {
            f(s);
        }
        parts.push((name, b - live_bytes()));
    };
    cut("base", &|s| s.base = None);
    cut("log", &|s| s.log = Vec::new());
    cut("recent_events", &|s| s.recent_events = Default::default());
    cut("fired", &|s| s.fired = Default::default());
    cut("lead.fields (and their times)", &|s| {
        s.lead.fields = Default::default()
    });
    cut("lead.touches", &|s| s.lead.touches = Default::default());
    cut("lead.closeouts", &|s| s.lead.closeouts = Default::default());
    cut("lead strings", &|s| {
        s.lead.source = None;
        s.lead.origin = None;
        s.lead.owner = None;
        if let Some(c) = s.lead.episode.as_mut().and_then(|e| e.clock.as_mut()) {
            c.owner = String::new();
        }
    });
    let rest = live_bytes() - before;
    println!(
        "breakdown: {:.0} bytes per lead in clones of the states, by part:",
        total as f64 / n
    );
    for (name, bytes) in parts {
        println!("  {name}: {:.0}", bytes as f64 / n);
    }
    println!(
        "  the rest (the state itself, {} bytes, in its box): {:.0}",
        std::mem::size_of::<leadwatch::engine::LeadState>(),
        rest as f64 / n
    );
    drop(clones);
}
