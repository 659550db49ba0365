//! Measures the engine against a broker process (figures for the closing notes):
//!
//! - `restore`: writes N open leads' state to `{prefix}.state`, then reads every partition back
//!   the way a newly assigned engine does, reporting the time, the changelog bytes per lead and
//!   the resident memory per lead.
//! - `engine`: writes N events to `{prefix}.events`, runs the engine on them, and reports
//!   events per second (each one applied and its state written back and acknowledged).
//!
//! `cargo run --release --bin statebench -- --brokers 127.0.0.1:9092 restore --leads 1000000`

use std::sync::Arc;
use std::time::Duration;

use clap::{Parser, Subcommand};
use jiff::Timestamp;
use leadwatch::bus::KafkaConfig;
use leadwatch::bus::changelog;
use leadwatch::bus::producer::Producer;
use leadwatch::bus::{self, Topics, admin};
use leadwatch::clock::Clock;
use leadwatch::engine::rules::Rules;
use leadwatch::engine::step::{Diagnostic, Input};
use leadwatch::engine::{Engine, EngineConfig, LeadState, PartitionState};
use leadwatch::event::{Change, LeadEvent};
use leadwatch::runner::Context;
use leadwatch::runner::engine::EngineRunner;
use leadwatch::telemetry::Metrics;
use tokio_util::sync::CancellationToken;

#[derive(Parser)]
struct Args {
    #[arg(long)]
    brokers: String,
    #[arg(long, default_value_t = 6)]
    partitions: i32,
    /// Topic prefix; a fresh one per run by default.
    #[arg(long)]
    prefix: Option<String>,
    #[command(subcommand)]
    what: What,
}

#[derive(Subcommand)]
enum What {
    Restore {
        #[arg(long, default_value_t = 1_000_000)]
        leads: usize,
    },
    Engine {
        #[arg(long, default_value_t = 200_000)]
        events: usize,
    },
}

const RULES: &str =
    "[lifecycle]\nsales_ready = 'lead.stage == \"sales_ready\"'\n[first_touch]\nwithin = \"4h\"\n";

fn rss_bytes() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map_or(0, |kb| kb * 1024)
}

fn event(i: usize, now: Timestamp) -> LeadEvent {
    let fields = serde_json::json!({
        "stage": "sales_ready", "owner": format!("rep-{}@example.com", i % 50),
        "score": 70 + (i % 30) as i64, "email": format!("lead{i}@example.org"), "company": format!("Company {}", i % 5000),
    });
    LeadEvent {
        id: format!("evt-{i}"),
        source: "bench".into(),
        lead: format!("lead-{i}"),
        occurred_at: now,
        received_at: now,
        change: Change::Updated {
            fields: fields.as_object().unwrap().clone(),
        },
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    leadwatch::telemetry::init_tracing();
    let clock = Clock::system();
    let prefix = args
        .prefix
        .clone()
        .unwrap_or_else(|| format!("bench{}", clock.now().as_second()));
    let kafka = KafkaConfig {
        brokers: args.brokers.clone(),
        topic_prefix: prefix.clone(),
        group_id: format!("{prefix}.group"),
        partitions: args.partitions,
        replication_factor: 1,
        session_timeout: Duration::from_secs(10),
        min_replication_factor: None,
        min_insync_replicas: None,
        instance_id: None,
        options: Default::default(),
    };
    let topics = Topics::new(&prefix);
    let base = bus::client_config(&kafka, &kafka.brokers);
    admin::ensure_topics(&base, &topics, args.partitions, 1).await?;
    let metrics = Arc::new(Metrics::new());
    let producer = Producer::new(&base, metrics.clone())?;
    let engine = Engine::new(Arc::new(
        Rules::parse(RULES).map_err(|e| anyhow::anyhow!("{e:?}"))?,
    ));
    let now = clock.now();
    println!(
        "cores: {}",
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );

    match args.what {
        What::Restore { leads } => {
            // The state an open lead has after its sales-ready event.
            let started = clock.instant();
            let states = (0..leads).map(|i| {
                let ev = event(i, now);
                let mut state = LeadState::default();
                engine.apply(&mut state, &ev);
                (ev.lead, state.encode())
            });
            let bytes = produce_all(&producer, &topics.state, states).await?;
            println!(
                "wrote {leads} lead states in {:.1} s: {} bytes per lead in the changelog (key + record, before compression)",
                (clock.instant() - started).as_secs_f64(),
                bytes / leads.max(1)
            );

            let rss_before = rss_bytes();
            let started = clock.instant();
            let mut restored: Vec<PartitionState> = Vec::new();
            for p in 0..args.partitions {
                let (base, topic, clock) = (base.clone(), topics.state.clone(), clock.clone());
                let snapshot = tokio::task::spawn_blocking(move || {
                    changelog::read_partition(&base, &topic, p, Duration::from_secs(1800), &clock)
                })
                .await??;
                let mut ps = PartitionState::default();
                let step = ps.step(&engine, Input::Restore(snapshot), now);
                anyhow::ensure!(
                    !step
                        .diagnostics
                        .iter()
                        .any(|d| matches!(d, Diagnostic::Unreadable { .. })),
                    "a record of the changelog could not be read"
                );
                restored.push(ps);
            }
            let elapsed = (clock.instant() - started).as_secs_f64();
            let n: usize = restored.iter().map(|p| p.len()).sum();
            let rss_after = rss_bytes();
            println!(
                "restored {n} leads from {} partitions in {elapsed:.1} s ({:.0} leads/s); resident memory +{} MiB = {} bytes per lead",
                args.partitions,
                n as f64 / elapsed,
                (rss_after.saturating_sub(rss_before)) / (1024 * 1024),
                rss_after.saturating_sub(rss_before) / n.max(1) as u64
            );
        }
        What::Engine { events } => {
            let started = clock.instant();
            let records = (0..events).map(|i| {
                let ev = event(i, now);
                let payload = serde_json::to_vec(&ev).expect("an event serializes");
                (ev.lead, payload)
            });
            produce_all(&producer, &topics.events, records).await?;
            println!(
                "wrote {events} events in {:.1} s",
                (clock.instant() - started).as_secs_f64()
            );
            let (_rules_tx, rules) = tokio::sync::watch::channel(Arc::new(engine.rules().clone()));
            let runner = EngineRunner {
                engine,
                rules,
                config: EngineConfig::default(),
                ctx: Context {
                    base: base.clone(),
                    kafka,
                    topics,
                    producer: producer.clone(),
                    metrics: metrics.clone(),
                    clock: clock.clone(),
                    liveness: None,
                },
            };
            let stop = CancellationToken::new();
            let task = tokio::spawn(runner.run(stop.clone(), Duration::from_secs(10)));
            let applied = || {
                metrics
                    .encode()
                    .lines()
                    .find_map(|l| {
                        l.strip_prefix("leadwatch_engine_events_total{outcome=\"applied\"} ")
                            .map(str::to_string)
                    })
                    .and_then(|v| v.parse::<f64>().ok())
                    .unwrap_or(0.0) as usize
            };
            // Timed from the first applied event (group join and restore excluded).
            while applied() == 0 {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            let started = clock.instant();
            while applied() < events {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            let elapsed = (clock.instant() - started).as_secs_f64();
            println!(
                "engine applied {events} events (each state written and acknowledged) in {elapsed:.1} s: {:.0} events/s",
                events as f64 / elapsed
            );
            stop.cancel();
            task.await??;
        }
    }
    Ok(())
}

/// Produces every `(key, value)` record to `topic`, at most 50,000 unacknowledged at once;
/// returns the bytes produced (keys and values).
async fn produce_all(
    producer: &Producer,
    topic: &str,
    records: impl Iterator<Item = (String, Vec<u8>)>,
) -> anyhow::Result<usize> {
    let mut bytes = 0;
    let mut in_flight = Vec::new();
    for (key, value) in records {
        bytes += key.len() + value.len();
        in_flight.push(producer.enqueue(topic, &key, Some(&value))?);
        if in_flight.len() >= 50_000 {
            for d in in_flight.drain(..) {
                d.await?.map_err(|(e, _)| e)?;
            }
        }
    }
    for d in in_flight {
        d.await?.map_err(|(e, _)| e)?;
    }
    Ok(bytes)
}
