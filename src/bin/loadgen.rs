//! Load generator: posts signed canonical events to a running daemon and reports accepted
//! events per second and acknowledgement latency (time to the 202, which comes only after
//! Kafka's delivery report).
//!
//! `cargo run --release --bin loadgen -- --url http://127.0.0.1:8080/webhooks/web \
//!      --secret whsec_… --concurrency 32 --duration 30s`

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use clap::Parser;
use leadwatch::clock::Clock;
use leadwatch::signature::{self, WebhookSecret};

#[derive(Parser)]
#[command(about = "Posts signed lead events to leadwatch and measures acknowledgements")]
struct Args {
    /// The webhook endpoint of a `generic` source.
    #[arg(long)]
    url: String,
    /// The source's signing secret (`whsec_…`).
    #[arg(long, env = "LOADGEN_SECRET")]
    secret: String,
    /// Requests in flight at once.
    #[arg(long, default_value_t = 16)]
    concurrency: usize,
    /// How long to run (`30s`, `2m`).
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
    duration: Duration,
    /// Events per request (1–100).
    #[arg(long, default_value_t = 1)]
    batch: usize,
    /// Distinct leads the events spread over.
    #[arg(long, default_value_t = 10_000)]
    leads: u64,
}

#[derive(Default)]
struct Tally {
    latencies_us: Vec<u64>,
    statuses: BTreeMap<String, u64>,
    events: u64,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    anyhow::ensure!((1..=100).contains(&args.batch), "--batch must be 1 to 100");
    let secret: WebhookSecret = args
        .secret
        .parse()
        .map_err(|e| anyhow::anyhow!("--secret: {e}"))?;
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(args.concurrency)
        .timeout(Duration::from_secs(30))
        .build()?;
    let counter = Arc::new(AtomicU64::new(0));
    let clock = Clock::system();
    let run = format!("{:x}", clock.now().as_millisecond());
    let start = clock.instant();
    let end = start + args.duration;

    let workers: Vec<_> = (0..args.concurrency)
        .map(|_| {
            let (client, secret, counter, run, url, clock) = (
                client.clone(),
                secret.clone(),
                counter.clone(),
                run.clone(),
                args.url.clone(),
                clock.clone(),
            );
            let (batch, leads) = (args.batch, args.leads);
            tokio::spawn(async move {
                let mut tally = Tally::default();
                while clock.instant() < end {
                    let n = counter.fetch_add(batch as u64, Ordering::Relaxed);
                    let now = clock.now().to_string();
                    let events: Vec<serde_json::Value> = (n..n + batch as u64)
                        .map(|i| event(&run, i, leads, &now))
                        .collect();
                    let body = serde_json::to_vec(&events).expect("json");
                    let id = format!("msg_{run}_{n}");
                    let ts = clock.now().as_second();
                    let sent = clock.instant();
                    let mut request = client.post(&url).header("content-type", "application/json");
                    for (name, value) in signature::headers([&secret], &id, ts, &body) {
                        request = request.header(name, value);
                    }
                    let result = request.body(body).send().await;
                    let key = match result {
                        Ok(resp) => {
                            let status = resp.status().as_u16();
                            let _ = resp.bytes().await;
                            if status == 202 {
                                tally
                                    .latencies_us
                                    .push((clock.instant() - sent).as_micros() as u64);
                                tally.events += batch as u64;
                            }
                            status.to_string()
                        }
                        Err(e) if e.is_timeout() => "timeout".to_string(),
                        Err(_) => "error".to_string(),
                    };
                    *tally.statuses.entry(key).or_default() += 1;
                }
                tally
            })
        })
        .collect();

    let mut all = Tally::default();
    for w in workers {
        let t = w.await?;
        all.latencies_us.extend(t.latencies_us);
        all.events += t.events;
        for (k, v) in t.statuses {
            *all.statuses.entry(k).or_default() += v;
        }
    }
    let elapsed = (clock.instant() - start).as_secs_f64();
    all.latencies_us.sort_unstable();
    let pct = |p: f64| -> f64 {
        if all.latencies_us.is_empty() {
            return f64::NAN;
        }
        let i = ((all.latencies_us.len() as f64 - 1.0) * p).round() as usize;
        all.latencies_us[i] as f64 / 1000.0
    };
    let accepted = all.latencies_us.len();
    println!(
        "cores: {}",
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(0)
    );
    println!(
        "duration: {elapsed:.1} s, concurrency {}, batch {}",
        args.concurrency, args.batch
    );
    println!("requests: {:?}", all.statuses);
    println!(
        "accepted: {accepted} requests ({:.0}/s), {} events ({:.0} events/s)",
        accepted as f64 / elapsed,
        all.events,
        all.events as f64 / elapsed
    );
    println!(
        "ack latency: p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
        pct(0.50),
        pct(0.99),
        pct(1.0)
    );
    Ok(())
}

/// Every other event makes a lead sales-ready; the rest are calls on it.
fn event(run: &str, i: u64, leads: u64, now: &str) -> serde_json::Value {
    let lead = format!("load-{run}-{}", i % leads);
    if (i / leads).is_multiple_of(2) {
        serde_json::json!({
            "id": format!("{run}-{i}"), "type": "lead.updated", "lead": lead, "occurred_at": now,
            "fields": {"stage": "sales_ready", "owner": format!("rep-{}@example.com", i % 50), "score": 70}
        })
    } else {
        serde_json::json!({
            "id": format!("{run}-{i}"), "type": "lead.activity", "lead": lead, "occurred_at": now,
            "activity": {"kind": "call", "by": format!("rep-{}@example.com", i % 50)}
        })
    }
}
