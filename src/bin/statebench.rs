//! Measures the engine against a broker process (figures for the closing notes):
//!
//! - `restore`: writes N open leads' state to `{prefix}.state`, then reads it back twice: with a
//!   plain consumer that only counts the records (the broker's own ceiling), and as the engine
//!   does (its runner joining a group and restoring every partition it is assigned, until it
//!   holds every lead), reporting the times, the changelog bytes per lead and the resident
//!   memory per lead.
//! - `engine`: writes N events to `{prefix}.events` (`--per-lead K` consecutive events per
//!   lead), runs the engine on them, and reports events per second (each one applied and its
//!   state written back and acknowledged); then what it wrote to `{prefix}.state`: records per
//!   lead and bytes per lead, as produced and as fetched from the broker (compressed batches).
//!
//! `cargo run --release --bin statebench -- --brokers 127.0.0.1:9092 restore --leads 1000000`

use std::sync::Arc;
use std::time::Duration;

use clap::{Parser, Subcommand};
use jiff::Timestamp;
use leadwatch::bus::KafkaConfig;
use leadwatch::bus::producer::Producer;
use leadwatch::bus::{self, Topics, admin};
use leadwatch::clock::Clock;
use leadwatch::engine::rules::Rules;
use leadwatch::engine::{Engine, EngineConfig, LeadState};
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
    /// The engine's `[engine] memory_budget_mib` for the run. A million open leads hold about
    /// 1.1 GB by the engine's own estimate, over the default budget (640, for a 1 GiB pod): with
    /// it, the restore also folds every reorder window early (what the budget is for), which
    /// is not the restore's time. Pass 640 to measure that too.
    #[arg(long, default_value_t = 4096)]
    memory_budget_mib: usize,
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
        /// Events per lead, one after another (a lead's events within one flush interval).
        #[arg(long, default_value_t = 1)]
        per_lead: usize,
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

/// CPU seconds this process has used so far, all threads, user and system (`/proc/self/stat`,
/// in the kernel's 100 Hz ticks): on a shared machine, wall-clock figures wander with the
/// others' load, and this does not (the broker's own CPU is its process's, not counted).
fn cpu_seconds() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    // The fields after the command's closing parenthesis; utime and stime are the 12th and 13th.
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map_or(Vec::new(), |(_, rest)| rest.split_whitespace().collect());
    let ticks = |i: usize| fields.get(i).and_then(|v| v.parse::<f64>().ok());
    ticks(11)
        .zip(ticks(12))
        .map_or(0.0, |(u, s)| (u + s) / 100.0)
}

/// Event `i` of lead `lead`.
fn event(i: usize, lead: usize, now: Timestamp) -> LeadEvent {
    let fields = serde_json::json!({
        "stage": "sales_ready", "owner": format!("rep-{}@example.com", i % 50),
        "score": 70 + (i % 30) as i64, "email": format!("lead{lead}@example.org"), "company": format!("Company {}", lead % 5000),
    });
    LeadEvent {
        id: format!("evt-{i}"),
        source: "bench".into(),
        lead: format!("lead-{lead}"),
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
    let config = EngineConfig {
        memory_budget_mib: args.memory_budget_mib,
        ..EngineConfig::default()
    };
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
                let ev = event(i, i, now);
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

            // The broker's ceiling: one plain consumer, nothing decoded.
            let cpu = cpu_seconds();
            let read = read_all(&base, &topics.state, args.partitions, &clock)?;
            println!(
                "plain consumer read {} records ({} MiB fetched) in {:.1} s: {:.0} records/s; {:.1} CPU-seconds in this process",
                read.records,
                read.fetched / (1024 * 1024),
                read.seconds,
                read.records as f64 / read.seconds,
                cpu_seconds() - cpu
            );

            // The engine's restore: its runner joins a group, is assigned every partition,
            // restores each and holds every lead.
            let rss_before = rss_bytes();
            let cpu = cpu_seconds();
            let started = clock.instant();
            let (_rules_tx, stop, task) = spawn_engine(
                (engine, config),
                &base,
                kafka,
                topics,
                &producer,
                &metrics,
                &clock,
            );
            let held = || metric(&metrics, "leadwatch_engine_leads ") as usize;
            // Until it holds every lead, or (a broker whose end offsets fall short: tansu's)
            // what it holds has not moved for 20 s; timed to the last change.
            let (mut last, mut changed) = (0, clock.instant());
            while last < leads && (last == 0 || clock.instant() - changed < Duration::from_secs(20))
            {
                anyhow::ensure!(
                    clock.instant() - started < Duration::from_secs(1800),
                    "the engine held {last} of {leads} leads after 30 minutes"
                );
                tokio::time::sleep(Duration::from_millis(20)).await;
                let now_held = held();
                if now_held != last {
                    (last, changed) = (now_held, clock.instant());
                }
            }
            if last < leads {
                println!(
                    "the engine holds {last} of {leads} leads: the rest were past the broker's end offsets"
                );
            }
            let elapsed = (changed - started).as_secs_f64();
            // Up to now: the wait for no further change is idle.
            let cpu = cpu_seconds() - cpu;
            let rss_after = rss_bytes();
            println!(
                "engine restored {last} leads from {} partitions in {elapsed:.1} s, joining the group included ({:.0} leads/s; {cpu:.1} CPU-seconds in this process, {:.1} µs per lead); resident memory +{} MiB = {} bytes per lead",
                args.partitions,
                last as f64 / elapsed,
                cpu * 1e6 / last.max(1) as f64,
                (rss_after.saturating_sub(rss_before)) / (1024 * 1024),
                rss_after.saturating_sub(rss_before) / last.max(1) as u64
            );
            stop.cancel();
            task.await??;
        }
        What::Engine { events, per_lead } => {
            let per_lead = per_lead.max(1);
            let started = clock.instant();
            let records = (0..events).map(|i| {
                let ev = event(i, i / per_lead, now);
                let payload = serde_json::to_vec(&ev).expect("an event serializes");
                (ev.lead, payload)
            });
            produce_all(&producer, &topics.events, records).await?;
            println!(
                "wrote {events} events in {:.1} s",
                (clock.instant() - started).as_secs_f64()
            );
            let topics_state = topics.state.clone();
            let (_rules_tx, stop, task) = spawn_engine(
                (engine, config),
                &base,
                kafka,
                topics,
                &producer,
                &metrics,
                &clock,
            );
            let applied = || {
                metric(
                    &metrics,
                    "leadwatch_engine_events_total{outcome=\"applied\"} ",
                ) as usize
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
            let leads = events.div_ceil(per_lead);
            let read = read_all(&base, &topics_state, args.partitions, &clock)?;
            println!(
                "changelog: {} records for {leads} leads ({per_lead} events each): {:.2} per lead; {:.0} bytes per lead as produced (key + record), {:.0} as fetched from the broker (compressed batches)",
                read.records,
                read.records as f64 / leads as f64,
                read.bytes as f64 / leads as f64,
                read.fetched as f64 / leads as f64,
            );
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

/// What one consumer read of a whole topic.
struct ReadAll {
    records: usize,
    /// Keys and values, as produced.
    bytes: usize,
    /// Bytes the consumer received from the brokers (record batches as stored: compressed).
    fetched: u64,
    seconds: f64,
}

/// Counts what the brokers send a consumer (librdkafka's statistics).
#[derive(Default)]
struct Fetched(std::sync::atomic::AtomicU64);

impl rdkafka::ClientContext for Fetched {
    fn stats(&self, stats: rdkafka::Statistics) {
        let rx: u64 = stats.brokers.values().map(|b| b.rxbytes).sum();
        self.0.store(rx, std::sync::atomic::Ordering::Relaxed);
    }
}
impl rdkafka::consumer::ConsumerContext for Fetched {}

/// Reads every partition of `topic` with one plain consumer (no group, nothing decoded) to its
/// end (as the broker reports it reached): what the broker can serve, the ceiling of any
/// restore.
fn read_all(
    base: &rdkafka::ClientConfig,
    topic: &str,
    partitions: i32,
    clock: &Clock,
) -> anyhow::Result<ReadAll> {
    use rdkafka::Message;
    use rdkafka::consumer::{BaseConsumer, Consumer};
    use rdkafka::error::KafkaError;
    let mut cfg = base.clone();
    cfg.set("group.id", format!("{topic}.bench"))
        .set("enable.auto.commit", "false")
        .set("enable.partition.eof", "true")
        .set("statistics.interval.ms", "100")
        .set("fetch.max.bytes", "52428800")
        .set("max.partition.fetch.bytes", "10485760");
    let consumer: BaseConsumer<Fetched> = cfg.create_with_context(Fetched::default())?;
    let mut tpl = rdkafka::TopicPartitionList::new();
    let mut remaining = std::collections::HashSet::new();
    let mut ends = 0;
    for p in 0..partitions {
        let (low, high) = consumer.fetch_watermarks(topic, p, Duration::from_secs(10))?;
        ends += high - low;
        if high > low {
            remaining.insert(p);
            tpl.add_partition_offset(topic, p, rdkafka::Offset::Beginning)?;
        }
    }
    let started = clock.instant();
    consumer.assign(&tpl)?;
    let (mut records, mut bytes) = (0, 0);
    while !remaining.is_empty() {
        anyhow::ensure!(
            clock.instant() - started < Duration::from_secs(1800),
            "reading {topic} took over 30 minutes"
        );
        match consumer.poll(Duration::from_millis(200)) {
            None => {}
            Some(Ok(msg)) => {
                records += 1;
                bytes += msg.key().map_or(0, <[u8]>::len) + msg.payload().map_or(0, <[u8]>::len);
            }
            Some(Err(KafkaError::PartitionEOF(p))) => {
                remaining.remove(&p);
            }
            Some(Err(e)) => return Err(e.into()),
        }
    }
    let seconds = (clock.instant() - started).as_secs_f64();
    if ends != records as i64 {
        // Tansu reports a partition's end as its last batch's first offset + 1.
        println!(
            "({topic}: {records} records read to the end; the broker's end offsets say {ends})"
        );
    }
    // The statistics of the last fetches.
    let settle = clock.instant();
    while clock.instant() - settle < Duration::from_millis(500) {
        let _ = consumer.poll(Duration::from_millis(50));
    }
    Ok(ReadAll {
        records,
        bytes,
        fetched: consumer
            .context()
            .0
            .load(std::sync::atomic::Ordering::Relaxed),
        seconds,
    })
}

/// The engine's runner on the cluster of `base` under `engine`'s rules and `config`, spawned:
/// the rules' sender (kept, so the runner sees no reload), the token that stops it, and its task.
fn spawn_engine(
    (engine, config): (Engine, EngineConfig),
    base: &rdkafka::ClientConfig,
    kafka: KafkaConfig,
    topics: Topics,
    producer: &Arc<Producer>,
    metrics: &Arc<Metrics>,
    clock: &Clock,
) -> (
    tokio::sync::watch::Sender<Arc<Rules>>,
    CancellationToken,
    tokio::task::JoinHandle<Result<(), rdkafka::error::KafkaError>>,
) {
    let (rules_tx, rules) = tokio::sync::watch::channel(Arc::new(engine.rules().clone()));
    let runner = EngineRunner {
        engine,
        rules,
        config,
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
    (rules_tx, stop, task)
}

/// The value of the metric line starting with `prefix` (name, labels and a space); 0 if none.
fn metric(metrics: &Metrics, prefix: &str) -> f64 {
    metrics
        .encode()
        .lines()
        .find_map(|l| l.strip_prefix(prefix).map(str::to_string))
        .and_then(|v| v.trim().parse::<f64>().ok())
        .unwrap_or(0.0)
}
