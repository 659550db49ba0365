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
//! `cargo run --release --bin enginebench -- --leads 200000 [--rules config/rules.toml]`

use std::path::PathBuf;
use std::sync::Arc;

use clap::Parser;
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
}

/// Counts the bytes allocated and not yet freed, so memory per lead is what the leads hold,
/// not what the allocator keeps around.
struct Counting;

static LIVE: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

unsafe impl std::alloc::GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: std::alloc::Layout) -> *mut u8 {
        LIVE.fetch_add(layout.size(), std::sync::atomic::Ordering::Relaxed);
        unsafe { std::alloc::System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: std::alloc::Layout) {
        LIVE.fetch_sub(layout.size(), std::sync::atomic::Ordering::Relaxed);
        unsafe { std::alloc::System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static ALLOC: Counting = Counting;

fn live_bytes() -> usize {
    LIVE.load(std::sync::atomic::Ordering::Relaxed)
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

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let path = args.rules.unwrap_or_else(|| {
        PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/config/rules.toml"))
    });
    let rules = leadwatch::app::config::load_rules(&path).map_err(|e| anyhow::anyhow!("{e}"))?;
    let engine = Engine::new(Arc::new(rules));

    // A week of leads, one every few seconds, in time order.
    let base: Timestamp = "2026-11-02T14:00:00Z".parse()?;
    let mut events: Vec<LeadEvent> = (0..args.leads)
        .flat_map(|i| life(i, base + SignedDuration::from_secs(3 * i as i64)))
        .collect();
    events.sort_by_key(|e| e.occurred_at);
    let n = events.len();

    let live_before = live_bytes();
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
    let live_after = live_bytes();

    let open = p.iter().filter(|(_, s)| s.lead.episode.is_some()).count();
    let state_bytes: usize = p.iter().map(|(_, s)| s.encode().len()).sum();
    println!("rules: {}", path.display());
    println!("events: {n} for {} leads; alerts fired: {alerts}", p.len());
    println!(
        "engine: {:.0} events/s on one core ({:.1} µs/event, deadlines firing as time passes)",
        n as f64 / elapsed.as_secs_f64(),
        elapsed.as_secs_f64() * 1e6 / n as f64
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
        "changelog: {:.0} bytes per lead state (JSON)",
        state_bytes as f64 / p.len().max(1) as f64
    );
    Ok(())
}
