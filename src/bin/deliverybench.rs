//! Delivery benchmark: alerts delivered per second to a local signed-webhook receiver, and the
//! delay from a deadline passing to the alert arriving (p50/p99), everything in one process on
//! the embedded Kafka (librdkafka's mock cluster).
//!
//! - `--mode pipeline` (default): N sales-ready leads posted through ingest (signed webhooks),
//!   the engine fires each first-touch breach at its deadline, the dispatcher delivers it. The
//!   delay is receiver arrival minus the alert's `deadline`: detection plus delivery.
//! - `--mode dispatch`: N alerts produced straight into `{prefix}.alerts` with `deadline` = the
//!   moment of producing: the dispatcher alone.
//!
//! `--spread 10s` spreads the deadlines over ten seconds (a steady flow, for latency); the
//! default `0s` makes them all due at once (a burst, for throughput).
//!
//! `cargo run --release --bin deliverybench -- --leads 5000 [--mode dispatch] [--spread 10s]`

use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::post;
use clap::Parser;
use jiff::Timestamp;
use leadwatch::bus::Topics;
use leadwatch::bus::embedded::EmbeddedKafka;
use leadwatch::clock::Clock;
use leadwatch::signature::{self, WebhookSecret};

const SECRET: &str = "whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD";
const PREFIX: &str = "bench";

#[derive(Parser)]
#[command(about = "Measures alert delivery: alerts/s and deadline-to-arrival delay")]
struct Args {
    /// Leads (pipeline) or alerts (dispatch).
    #[arg(long, default_value_t = 2000)]
    leads: usize,
    /// `pipeline` (ingest → engine → dispatch) or `dispatch` (alerts produced directly).
    #[arg(long, default_value = "pipeline")]
    mode: String,
    /// Spread the deadlines over this long (`0s`: all at once).
    #[arg(long, default_value = "0s", value_parser = humantime::parse_duration)]
    spread: Duration,
    /// The first-touch SLA in pipeline mode (time to post every lead before the first deadline).
    #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
    within: Duration,
    /// Partitions of the topics.
    #[arg(long, default_value_t = 6)]
    partitions: i32,
    /// librdkafka options for the daemon's clients, `key=value` (e.g. `fetch.wait.max.ms=10`).
    #[arg(long = "kafka-option")]
    kafka_options: Vec<String>,
}

/// What the receiver got: (arrival, deadline) of each alert's first delivery, and how many
/// came again (a doubled delivery must not count as throughput).
#[derive(Default)]
struct Received {
    first: Vec<(Timestamp, Timestamp)>,
    ids: std::collections::HashSet<String>,
    duplicates: usize,
}

type Arrivals = Arc<Mutex<Received>>;

async fn receive(
    State(arrivals): State<Arrivals>,
    headers: axum::http::HeaderMap,
    body: Bytes,
) -> StatusCode {
    let now = Clock::system().now();
    let alert: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
    let id = headers
        .get("webhook-id")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string();
    if let Some(deadline) = alert["data"]["deadline"]
        .as_str()
        .and_then(|d| d.parse::<Timestamp>().ok())
    {
        let mut got = arrivals.lock().expect("lock");
        if got.ids.insert(id) {
            got.first.push((now, deadline));
        } else {
            got.duplicates += 1;
        }
    }
    StatusCode::NO_CONTENT
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    anyhow::ensure!(
        matches!(args.mode.as_str(), "pipeline" | "dispatch"),
        "--mode is pipeline or dispatch"
    );
    let topics = Topics::new(PREFIX);
    let specs: Vec<(String, i32)> = topics
        .all()
        .iter()
        .map(|(t, _)| (t.to_string(), args.partitions))
        .collect();
    let kafka = EmbeddedKafka::start(&specs)?;

    let arrivals: Arrivals = Arc::default();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let receiver = format!("http://{}/alerts", listener.local_addr()?);
    let app = Router::new()
        .route("/alerts", post(receive))
        .with_state(arrivals.clone());
    tokio::spawn(async move { axum::serve(listener, app).await });

    let dir = std::env::temp_dir().join(format!("deliverybench-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let roles = if args.mode == "dispatch" {
        r#"["dispatch"]"#
    } else {
        r#"["ingest", "engine", "dispatch"]"#
    };
    std::fs::write(
        dir.join("rules.toml"),
        format!(
            "[lifecycle]\nsales_ready = 'lead.stage == \"sales_ready\"'\n[first_touch]\nwithin = \"{}ms\"\n",
            args.within.as_millis()
        ),
    )?;
    let mut options = String::new();
    for o in &args.kafka_options {
        let (k, v) = o
            .split_once('=')
            .ok_or_else(|| anyhow::anyhow!("--kafka-option takes key=value"))?;
        options.push_str(&format!("\"{k}\" = \"{v}\"\n"));
    }
    let config_path = dir.join("leadwatch.toml");
    std::fs::write(
        &config_path,
        format!(
            r#"
roles = {roles}
[kafka]
brokers = "{bootstrap}"
topic_prefix = "{PREFIX}"
partitions = {partitions}
[kafka.options]
{options}
[sources.web]
kind = "generic"
secret = "{SECRET}"
[sinks.hook]
kind = "webhook"
url = "{receiver}"
secret = "{SECRET}"
"#,
            bootstrap = kafka.bootstrap(),
            partitions = args.partitions,
        ),
    )?;
    let config = leadwatch::app::Config::load(&config_path).map_err(|p| anyhow::anyhow!("{p}"))?;
    let daemon_listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let ingest = format!("http://{}/webhooks/web", daemon_listener.local_addr()?);
    let health = format!("http://{}/readyz", daemon_listener.local_addr()?);
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let daemon = tokio::spawn(leadwatch::app::run(config, daemon_listener, async {
        let _ = stopped.await;
    }));
    let client = reqwest::Client::new();
    while !client
        .get(&health)
        .send()
        .await
        .is_ok_and(|r| r.status().is_success())
    {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Let both consumer groups join before the clock starts.
    tokio::time::sleep(Duration::from_secs(4)).await;

    let n = args.leads;
    let run = format!("{:x}", Clock::system().now().as_millisecond());
    let started = Clock::system().now();
    let batches = n.div_ceil(100);
    let pace = args.spread / batches.max(1) as u32;
    if args.mode == "dispatch" {
        let producer: rdkafka::producer::FutureProducer = rdkafka::ClientConfig::new()
            .set("bootstrap.servers", kafka.bootstrap())
            .set("linger.ms", "5")
            .create()?;
        for b in 0..batches {
            let mut sends = Vec::new();
            for i in b * 100..((b + 1) * 100).min(n) {
                let mut alert =
                    leadwatch::dispatch::template::sample_alert("sla.first_touch.breached");
                let now = Clock::system().now();
                alert.data.lead = format!("bench-{run}-{i}");
                alert.data.alert_id = format!("alert_{run}_{i}");
                alert.data.deadline = now;
                alert.timestamp = now;
                let body = serde_json::to_vec(&alert)?;
                let key = alert.data.lead.clone();
                let producer = producer.clone();
                sends.push(async move {
                    producer
                        .send(
                            rdkafka::producer::FutureRecord::to(&format!("{PREFIX}.alerts"))
                                .key(&key)
                                .payload(&body),
                            Duration::from_secs(30),
                        )
                        .await
                        .map(|_| ())
                        .map_err(|(e, _)| e)
                });
            }
            for r in futures::future::join_all(sends).await {
                r?;
            }
            tokio::time::sleep(pace).await;
        }
    } else {
        let secret: WebhookSecret = SECRET.parse().map_err(|e| anyhow::anyhow!("{e}"))?;
        for b in 0..batches {
            let now = Clock::system().now().to_string();
            let events: Vec<serde_json::Value> = (b * 100..((b + 1) * 100).min(n))
                .map(|i| {
                    serde_json::json!({
                        "id": format!("{run}-{i}"), "type": "lead.updated",
                        "lead": format!("bench-{run}-{i}"), "occurred_at": now,
                        "fields": {"stage": "sales_ready", "owner": format!("rep-{}@example.com", i % 50)}
                    })
                })
                .collect();
            let body = serde_json::to_vec(&events)?;
            let id = format!("msg_{run}_{b}");
            let ts = Clock::system().now().as_second();
            let mut request = client
                .post(&ingest)
                .header("content-type", "application/json");
            for (name, value) in signature::headers([&secret], &id, ts, &body) {
                request = request.header(name, value);
            }
            let status = request.body(body).send().await?.status();
            anyhow::ensure!(status.as_u16() == 202, "ingest answered {status}");
            tokio::time::sleep(pace).await;
        }
    }
    let posted = Clock::system().now().duration_since(started);

    let deadline = Clock::system().instant() + Duration::from_secs(600) + args.within + args.spread;
    while arrivals.lock().expect("lock").first.len() < n {
        anyhow::ensure!(
            Clock::system().instant() < deadline,
            "only {} of {n} alerts arrived",
            arrivals.lock().expect("lock").first.len()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let (got, duplicates) = {
        let r = arrivals.lock().expect("lock");
        (r.first.clone(), r.duplicates)
    };
    let _ = stop.send(());
    let _ = daemon.await;

    let first = got.iter().map(|(a, _)| *a).min().expect("arrivals");
    let last = got.iter().map(|(a, _)| *a).max().expect("arrivals");
    let first_due = got.iter().map(|(_, d)| *d).min().expect("arrivals");
    let span = last.duration_since(first).as_secs_f64();
    let mut delays: Vec<f64> = got
        .iter()
        .map(|(a, d)| a.duration_since(*d).as_secs_f64() * 1000.0)
        .collect();
    delays.sort_by(f64::total_cmp);
    let pct = |p: f64| delays[((delays.len() as f64 - 1.0) * p).round() as usize];
    println!(
        "cores: {}",
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    println!(
        "mode {}, {} alerts, {} partitions, deadlines spread over {:?} (posted in {:.1} s)",
        args.mode,
        n,
        args.partitions,
        args.spread,
        posted.as_secs_f64()
    );
    println!(
        "delivered: {} in {:.2} s from first to last arrival ({:.0} alerts/s); {:.2} s from the first deadline to the last arrival ({:.0} alerts/s)",
        got.len(),
        span,
        got.len() as f64 / span.max(1e-9),
        last.duration_since(first_due).as_secs_f64(),
        got.len() as f64 / last.duration_since(first_due).as_secs_f64().max(1e-9),
    );
    println!("delivered twice: {duplicates}");
    println!(
        "deadline → arrival: p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
        pct(0.5),
        pct(0.99),
        pct(1.0)
    );
    drop(kafka);
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}
