//! Load generator: posts signed canonical events to a running daemon and reports accepted
//! events per second and acknowledgement latency (time to the 202, which comes only after
//! Kafka's delivery report).
//!
//! `cargo run --release --bin loadgen -- --url http://127.0.0.1:8080/webhooks/web \
//!      --secret whsec_… --concurrency 32 --duration 30s`
//!
//! Event `i` goes to lead `i mod leads`, so the leads are taken one after another and each gets
//! its events in turn: on even rounds an update that makes it sales-ready, on odd rounds a call.
//! `--payload realistic` makes each update what a vendor snapshot becomes (about 40 fields of a
//! Salesforce Lead with address, custom fields and 1–2 KB of description, plus the canonical
//! aliases the default mapping adds); `--events N` stops after N events (e.g. `--leads 200000
//! --events 400000`: every lead updated, then called), and the last line is the count accepted,
//! `accepted_events=N`, for scripts to wait on; `--retry` retries 503s until accepted.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use clap::{Parser, ValueEnum};
use leadwatch::clock::Clock;
use leadwatch::signature::{self, WebhookSecret};

// Only the Salesforce field set is used here; the rest serves `enginebench`.
#[allow(dead_code)]
#[path = "shared/vendor.rs"]
mod vendor;

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
    /// How long to run (`30s`, `2m`); default 30s, or unbounded with `--events`.
    #[arg(long, value_parser = humantime::parse_duration)]
    duration: Option<Duration>,
    /// Stop after this many events (the last requests may end a little short of a batch).
    #[arg(long)]
    events: Option<u64>,
    /// Retry a request answered 503 (after its Retry-After, at most 1 s) until it is accepted,
    /// so that every event lands; the statuses then count every attempt.
    #[arg(long)]
    retry: bool,
    /// What an update carries.
    #[arg(long, value_enum, default_value_t = Payload::Minimal)]
    payload: Payload,
    /// Events per request (1–100).
    #[arg(long, default_value_t = 1)]
    batch: usize,
    /// Append the lead of every event answered 202 to this file, one a line (a fault run
    /// compares them with the leads alerted).
    #[arg(long)]
    accepted_leads: Option<std::path::PathBuf>,
    /// Distinct leads the events spread over.
    #[arg(long, default_value_t = 10_000)]
    leads: u64,
}

#[derive(Clone, Copy, ValueEnum)]
enum Payload {
    /// Stage, owner and score: three fields.
    Minimal,
    /// A vendor's snapshot: about 40 fields, some long text, and the canonical aliases.
    Realistic,
}

#[derive(Default)]
struct Tally {
    latencies_us: Vec<u64>,
    statuses: BTreeMap<String, u64>,
    events: u64,
    /// The leads of the events answered 202 (kept only with `--accepted-leads`).
    accepted_leads: Vec<String>,
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
    let end = match (args.duration, args.events) {
        (Some(d), _) => Some(start + d),
        (None, Some(_)) => None,
        (None, None) => Some(start + Duration::from_secs(30)),
    };
    let limit = args.events.unwrap_or(u64::MAX);

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
            let (batch, leads, payload, retry) = (args.batch, args.leads, args.payload, args.retry);
            let keep_leads = args.accepted_leads.is_some();
            tokio::spawn(async move {
                let mut tally = Tally::default();
                while end.is_none_or(|end| clock.instant() < end) {
                    let n = counter.fetch_add(batch as u64, Ordering::Relaxed);
                    if n >= limit {
                        break;
                    }
                    let upto = (n + batch as u64).min(limit);
                    let now = clock.now();
                    let events: Vec<serde_json::Value> = (n..upto)
                        .map(|i| event(&run, i, leads, now, payload))
                        .collect();
                    let sent_events = events.len() as u64;
                    let sent_leads: Vec<String> = if keep_leads {
                        events
                            .iter()
                            .filter_map(|e| e["lead"].as_str().map(str::to_string))
                            .collect()
                    } else {
                        Vec::new()
                    };
                    let body = serde_json::to_vec(&events).expect("json");
                    let id = format!("msg_{run}_{n}");
                    let sent = clock.instant();
                    // With `--retry`, a 503 is retried as a vendor would: the same body and
                    // ids, after the Retry-After (at most a second), freshly signed.
                    loop {
                        let ts = clock.now().as_second();
                        let mut request =
                            client.post(&url).header("content-type", "application/json");
                        for (name, value) in signature::headers([&secret], &id, ts, &body) {
                            request = request.header(name, value);
                        }
                        let result = request.body(body.clone()).send().await;
                        let (key, wait) = match result {
                            Ok(resp) => {
                                let status = resp.status().as_u16();
                                let wait = resp
                                    .headers()
                                    .get("retry-after")
                                    .and_then(|v| v.to_str().ok())
                                    .and_then(|v| v.parse::<u64>().ok())
                                    .map_or(Duration::from_millis(200), |s| {
                                        Duration::from_secs(s).min(Duration::from_secs(1))
                                    });
                                let _ = resp.bytes().await;
                                if status == 202 {
                                    tally
                                        .latencies_us
                                        .push((clock.instant() - sent).as_micros() as u64);
                                    tally.events += sent_events;
                                    tally.accepted_leads.extend(sent_leads.iter().cloned());
                                }
                                (status.to_string(), (status == 503).then_some(wait))
                            }
                            Err(e) if e.is_timeout() => ("timeout".to_string(), None),
                            Err(_) => ("error".to_string(), None),
                        };
                        *tally.statuses.entry(key).or_default() += 1;
                        match wait {
                            Some(wait) if retry => tokio::time::sleep(wait).await,
                            _ => break,
                        }
                    }
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
        all.accepted_leads.extend(t.accepted_leads);
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
    if let Some(path) = &args.accepted_leads {
        use std::io::Write as _;
        let mut file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)?;
        let mut text = String::new();
        for lead in &all.accepted_leads {
            text.push_str(lead);
            text.push('\n');
        }
        file.write_all(text.as_bytes())?;
    }
    println!("accepted_events={}", all.events);
    Ok(())
}

/// Every other event makes a lead sales-ready; the rest are calls on it.
fn event(
    run: &str,
    i: u64,
    leads: u64,
    now: jiff::Timestamp,
    payload: Payload,
) -> serde_json::Value {
    let lead = format!("load-{run}-{}", i % leads);
    if (i / leads).is_multiple_of(2) {
        let owner = format!("rep-{}@example.com", i % 50);
        let fields = match payload {
            Payload::Minimal => {
                serde_json::json!({"stage": "sales_ready", "owner": owner, "score": 70})
            }
            Payload::Realistic => realistic_fields((i % leads) as usize, &owner, now),
        };
        serde_json::json!({
            "id": format!("{run}-{i}"), "type": "lead.updated", "lead": lead,
            "occurred_at": now.to_string(), "fields": fields
        })
    } else {
        serde_json::json!({
            "id": format!("{run}-{i}"), "type": "lead.activity", "lead": lead, "occurred_at": now.to_string(),
            "activity": {"kind": "call", "by": format!("rep-{}@example.com", i % 50)}
        })
    }
}

/// A Salesforce Lead snapshot of lead `i` (about 40 fields, `null` for `xsi:nil`) with the
/// canonical aliases the default mapping adds, as the generic source takes it.
fn realistic_fields(i: usize, owner: &str, now: jiff::Timestamp) -> serde_json::Value {
    let mut fields = serde_json::Map::new();
    for (name, value) in vendor::salesforce_lead_fields(i, "sales_ready", owner, now, now, None) {
        fields.insert(
            name,
            value.map_or(serde_json::Value::Null, serde_json::Value::String),
        );
    }
    // The canonical names the default Salesforce mapping adds.
    for &(canonical, from) in leadwatch::ingest::salesforce::DEFAULT_FIELDS {
        if let Some(v) = fields.get(from).cloned() {
            fields.insert(canonical.into(), v);
        }
    }
    fields.insert("employees".into(), serde_json::json!(i * 37 % 3000));
    fields.insert(
        "annual_revenue".into(),
        serde_json::json!((i % 90 + 10) * 100_000),
    );
    serde_json::Value::Object(fields)
}
