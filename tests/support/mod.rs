//! What the end-to-end tests share: a real Kafka-protocol endpoint (librdkafka's mock cluster on
//! its own thread), the daemon started in-process on 127.0.0.1:0, a real HTTP receiver for
//! alerts, and helpers to sign, post and wait on conditions with a deadline.
#![allow(dead_code)]

use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use leadwatch::app::Config;
use leadwatch::bus::Topics;
use leadwatch::bus::embedded::EmbeddedKafka;
use leadwatch::clock::Clock;
use leadwatch::signature::WebhookSecret;
use tokio::sync::oneshot;

pub mod api;
pub mod process;

pub const SOURCE_SECRET: &str = "whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD";
pub const SINK_SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
pub const PREFIX: &str = "lwtest";

/// Logs go through the test harness (shown for failing tests only).
pub fn init_test_logs() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_test_writer()
        .try_init();
}

/// Starts the mock cluster with the daemon's topics.
pub fn kafka(partitions: i32) -> EmbeddedKafka {
    let topics = Topics::new(PREFIX);
    let specs: Vec<(String, i32)> = topics
        .all()
        .iter()
        .map(|(t, _)| (t.to_string(), partitions))
        .collect();
    EmbeddedKafka::start(&specs).expect("mock cluster")
}

/// Waits until `check` holds, polling; fails the test after `deadline`.
pub async fn wait_for<F, Fut>(what: &str, deadline: Duration, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let start = Clock::system().instant();
    loop {
        if check().await {
            return;
        }
        assert!(
            (Clock::system().instant() - start) < deadline,
            "timed out after {deadline:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// One request the receiver got.
#[derive(Debug, Clone)]
pub struct Received {
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Received {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).expect("alert body is JSON")
    }
    pub fn header(&self, name: &str) -> &str {
        self.headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
    }
}

/// A real HTTP server on 127.0.0.1 standing in for an alert endpoint.
pub struct Receiver {
    pub url: String,
    received: Arc<Mutex<Vec<Received>>>,
    answered: Arc<Mutex<Vec<Received>>>,
    _stop: oneshot::Sender<()>,
}

impl Receiver {
    pub async fn start() -> Self {
        Self::start_slow(Duration::ZERO).await
    }

    /// A receiver that takes `delay` to answer each request (a slow endpoint); requests are
    /// recorded as they arrive ([`Receiver::all`]), and again once answered
    /// ([`Receiver::answered`]).
    pub async fn start_slow(delay: Duration) -> Self {
        Self::serve(delay, None).await
    }

    /// A receiver that records each request as it arrives and holds its answer until `release`
    /// says true (a sink whose response is held).
    pub async fn start_held(release: tokio::sync::watch::Receiver<bool>) -> Self {
        Self::serve(Duration::ZERO, Some(release)).await
    }

    async fn serve(delay: Duration, hold: Option<tokio::sync::watch::Receiver<bool>>) -> Self {
        let received = Arc::new(Mutex::new(Vec::new()));
        let answered = Arc::new(Mutex::new(Vec::new()));
        let app = Router::new().route("/alerts", post(record)).with_state((
            received.clone(),
            answered.clone(),
            delay,
            hold,
        ));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop, stopped) = oneshot::channel::<()>();
        tokio::spawn(async move {
            axum::serve(listener, app)
                .with_graceful_shutdown(async {
                    let _ = stopped.await;
                })
                .await
                .unwrap();
        });
        Self {
            url: format!("http://{addr}/alerts"),
            received,
            answered,
            _stop: stop,
        }
    }

    /// Every request, as it arrived (answered or not).
    pub fn all(&self) -> Vec<Received> {
        self.received.lock().unwrap().clone()
    }

    /// The requests whose answer was written back: a delivery cut off before its answer (the
    /// sender died, or gave up) is not one.
    pub fn answered(&self) -> Vec<Received> {
        self.answered.lock().unwrap().clone()
    }

    pub fn count(&self) -> usize {
        self.received.lock().unwrap().len()
    }

    /// Distinct alert ids received.
    pub fn distinct(&self) -> usize {
        let mut ids: Vec<String> = self
            .all()
            .iter()
            .map(|r| r.header("webhook-id").to_string())
            .collect();
        ids.sort();
        ids.dedup();
        ids.len()
    }
}

type ReceiverState = (
    Arc<Mutex<Vec<Received>>>,
    Arc<Mutex<Vec<Received>>>,
    Duration,
    Option<tokio::sync::watch::Receiver<bool>>,
);

/// Records the request, waits `delay` (and for the release, when held), answers 200. The answer's body records the request as
/// answered when the server takes it to write back, after the status line and headers: a
/// request whose sender is gone by then is dropped with its handler, unanswered.
async fn record(
    State((received, answered, delay, hold)): State<ReceiverState>,
    headers: HeaderMap,
    body: Bytes,
) -> (StatusCode, axum::body::Body) {
    let request = Received { headers, body };
    received.lock().unwrap().push(request.clone());
    if !delay.is_zero() {
        tokio::time::sleep(delay).await;
    }
    if let Some(mut hold) = hold {
        let _ = hold.wait_for(|released| *released).await;
    }
    let written = futures::stream::once(async move {
        answered.lock().unwrap().push(request);
        Ok::<_, std::convert::Infallible>(Bytes::from_static(b"ok"))
    });
    (StatusCode::OK, axum::body::Body::from_stream(written))
}

/// The daemon, running in-process against `bootstrap`.
pub struct Daemon {
    pub addr: SocketAddr,
    pub dir: tempfile::TempDir,
    stop: Option<oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<anyhow::Result<()>>>,
}

/// The test configuration: the generic source `web`, a webhook sink to `receiver_url`, and
/// `within` as the first-touch SLA.
pub fn config_text(bootstrap: &str, receiver_url: &str, extra: &str) -> String {
    format!(
        r#"
shutdown_grace = "5s"
[server]
listen = "127.0.0.1:0"
ack_timeout = "1s"
retry_after = "2s"
[kafka]
brokers = "{bootstrap}"
topic_prefix = "{PREFIX}"
group_id = "lwtest"
session_timeout = "6s"
[engine]
restore_timeout = "20s"
[dispatch]
retry_min_delay = "100ms"
retry_max_delay = "1s"
[sources.web]
kind = "generic"
secret = "{SOURCE_SECRET}"
[sinks.receiver]
kind = "webhook"
url = "{receiver_url}"
secret = "{SINK_SECRET}"
{extra}
"#
    )
}

pub fn rules_text(within: &str) -> String {
    format!(
        r#"
[lifecycle]
sales_ready = 'lead.stage == "sales_ready"'
[first_touch]
within = "{within}"
"#
    )
}

impl Daemon {
    pub async fn start(config: &str, rules: &str) -> Self {
        Self::start_with_reloads(config, rules).await.0
    }

    /// As [`Daemon::start`]; a message on the returned sender is a SIGHUP (the rules file,
    /// `dir/rules.toml`, is read again).
    pub async fn start_with_reloads(
        config: &str,
        rules: &str,
    ) -> (Self, tokio::sync::mpsc::UnboundedSender<()>) {
        init_test_logs();
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("rules.toml"), rules).unwrap();
        let path: PathBuf = dir.path().join("leadwatch.toml");
        std::fs::write(&path, config).unwrap();
        let cfg = Config::load_with_env(&path, Vec::new()).expect("valid test config");
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop, stopped) = oneshot::channel::<()>();
        let (reload, reloads) = tokio::sync::mpsc::unbounded_channel();
        let task = tokio::spawn(leadwatch::app::run_with_reloads(
            cfg,
            listener,
            async {
                let _ = stopped.await;
            },
            reloads,
        ));
        let daemon = Self {
            addr,
            dir,
            stop: Some(stop),
            task: Some(task),
        };
        (daemon, reload)
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// Sends the stop (SIGTERM) without waiting for it: the daemon drains meanwhile.
    pub fn begin_stop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }

    /// Graceful stop, as on SIGTERM.
    pub async fn stop(mut self) {
        self.begin_stop();
        if let Some(task) = self.task.take() {
            task.await.unwrap().unwrap();
        }
    }

    /// Its `/metrics`, as text.
    pub async fn metrics(&self) -> String {
        reqwest::get(self.url("/metrics"))
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    }

    /// The value of one metric line (name and labels exactly as exported). The test fails
    /// when there is none, naming what is exported: a renamed metric never reads as 0.
    pub async fn metric(&self, line_prefix: &str) -> f64 {
        metric_in(&self.metrics().await, line_prefix)
    }

    /// As [`Daemon::metric`], 0 for a series never counted; its family must be exported.
    /// See [`metric_or_zero_in`].
    pub async fn metric_or_zero(&self, line_prefix: &str) -> f64 {
        metric_or_zero_in(&self.metrics().await, line_prefix)
    }

    /// Waits for `what`: one metric line exported with a value that satisfies `holds`; fails
    /// the test after `deadline`, naming the metric, its last value or what is exported.
    pub async fn wait_for_metric(
        &self,
        what: &str,
        line_prefix: &str,
        deadline: Duration,
        holds: impl Fn(f64) -> bool,
    ) {
        wait_for_metric_in(what, line_prefix, deadline, holds, || async {
            Some(self.metrics().await)
        })
        .await
    }
}

/// The value of the sample line of a `/metrics` text that starts with `line_prefix` (the
/// metric's name and labels, exactly as exported: `leadwatch_engine_events_total{outcome="applied"}`),
/// if there is one.
pub fn find_metric(text: &str, line_prefix: &str) -> Option<f64> {
    text.lines().find_map(|l| {
        l.strip_prefix(line_prefix)
            .and_then(|rest| rest.trim().parse().ok())
    })
}

/// As [`find_metric`]; the test fails when the line is missing, naming what is exported.
pub fn metric_in(text: &str, line_prefix: &str) -> f64 {
    find_metric(text, line_prefix).unwrap_or_else(|| panic!("{}", not_exported(text, line_prefix)))
}

/// As [`metric_in`], 0 for a series never counted: prometheus-client exports no label set that
/// was never incremented. Only where absence means zero: the metric's family must be exported
/// (its `# TYPE` line, there once any of its series was counted), so a renamed metric or family
/// still fails the test.
pub fn metric_or_zero_in(text: &str, line_prefix: &str) -> f64 {
    let name = sample_name(line_prefix);
    let family = name.strip_suffix("_total").unwrap_or(name);
    let typed = |f: &str| {
        text.lines().any(|l| {
            l.strip_prefix("# TYPE ")
                .and_then(|rest| rest.split(' ').next())
                == Some(f)
        })
    };
    assert!(
        typed(family) || typed(name),
        "no metric family `{family}` is exported, so `{line_prefix}` cannot be read as 0; {}",
        exported(text)
    );
    find_metric(text, line_prefix).unwrap_or(0.0)
}

/// Waits for `what`: polls `fetch` (a `/metrics` text, `None` while it cannot be read) until
/// the line `line_prefix` is exported with a value that satisfies `holds`; fails the test after
/// `deadline`. Absence is "not yet", never 0: a wait on a renamed metric times out.
pub async fn wait_for_metric_in<F, Fut>(
    what: &str,
    line_prefix: &str,
    deadline: Duration,
    holds: impl Fn(f64) -> bool,
    mut fetch: F,
) where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<String>>,
{
    let start = Clock::system().instant();
    loop {
        let text = fetch().await;
        let value = text.as_deref().and_then(|t| find_metric(t, line_prefix));
        if value.is_some_and(&holds) {
            return;
        }
        if (Clock::system().instant() - start) >= deadline {
            match (&text, value) {
                (None, _) => panic!("timed out after {deadline:?} waiting for {what}: no /metrics"),
                (Some(_), Some(v)) => {
                    panic!(
                        "timed out after {deadline:?} waiting for {what}: `{line_prefix}` is {v}"
                    )
                }
                (Some(t), None) => panic!(
                    "timed out after {deadline:?} waiting for {what}: {}",
                    not_exported(t, line_prefix)
                ),
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The name of a sample line, without its labels and value.
fn sample_name(line: &str) -> &str {
    line.split(['{', ' ']).next().unwrap_or(line)
}

/// Says that `line_prefix` is not in a `/metrics` text, and what is.
fn not_exported(text: &str, line_prefix: &str) -> String {
    let name = sample_name(line_prefix);
    let series: Vec<&str> = text
        .lines()
        .filter(|l| !l.starts_with('#') && sample_name(l) == name)
        .collect();
    let series = if series.is_empty() {
        format!("no `{name}` at all")
    } else {
        format!("`{name}` has only {}", series.join(", "))
    };
    format!(
        "no metric line starts with `{line_prefix}` ({series}); {}",
        exported(text)
    )
}

/// The names of the metrics in a `/metrics` text.
fn exported(text: &str) -> String {
    let mut names: Vec<&str> = text
        .lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .map(sample_name)
        .collect();
    names.sort();
    names.dedup();
    format!("the metrics exported: {}", names.join(", "))
}

/// Signs `body` per Standard Webhooks with `secret`, now.
pub fn signed_headers(secret: &str, id: &str, body: &[u8]) -> Vec<(String, String)> {
    let secret: WebhookSecret = secret.parse().unwrap();
    let ts = Clock::system().now().as_second();
    vec![
        ("webhook-id".into(), id.into()),
        ("webhook-timestamp".into(), ts.to_string()),
        ("webhook-signature".into(), secret.sign(id, ts, body)),
        ("content-type".into(), "application/json".into()),
    ]
}

/// POSTs a signed body; returns the status and the JSON answer.
pub async fn post_signed(
    url: &str,
    secret: &str,
    body: &serde_json::Value,
) -> (u16, HeaderMap, serde_json::Value) {
    let bytes = serde_json::to_vec(body).unwrap();
    let id = format!("msg_{}", uuid_like(&bytes));
    let mut req = reqwest::Client::new().post(url).body(bytes.clone());
    for (k, v) in signed_headers(secret, &id, &bytes) {
        req = req.header(k, v);
    }
    let resp = req.send().await.unwrap();
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    let json = resp.json().await.unwrap_or(serde_json::Value::Null);
    (status, headers, json)
}

fn uuid_like(bytes: &[u8]) -> String {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    bytes.hash(&mut h);
    format!("{:016x}", h.finish())
}

/// RFC 3339 of now plus `millis`.
pub fn now_plus(millis: i64) -> String {
    (Clock::system().now() + jiff::SignedDuration::from_millis(millis)).to_string()
}

pub fn ready_event(id: &str, lead: &str, at: &str) -> serde_json::Value {
    serde_json::json!({
        "id": id, "type": "lead.updated", "lead": lead, "occurred_at": at,
        "fields": {"stage": "sales_ready", "owner": "alice@example.com"}
    })
}

pub fn call_event(id: &str, lead: &str, at: &str) -> serde_json::Value {
    serde_json::json!({
        "id": id, "type": "lead.activity", "lead": lead, "occurred_at": at,
        "activity": {"kind": "call", "by": "alice@example.com"}
    })
}

/// A vendor fixture (`tests/fixtures/VENDOR/NAME`): an HTTP request as text. Returns its headers
/// (without Host) and its body.
pub fn fixture(vendor: &str, name: &str) -> (Vec<(String, String)>, String) {
    let path = format!(
        "{}/tests/fixtures/{vendor}/{name}",
        env!("CARGO_MANIFEST_DIR")
    );
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
    let (head, body) = text
        .split_once("\n\n")
        .expect("a blank line after the headers");
    let headers = head
        .lines()
        .skip(1)
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .filter(|(k, _)| !k.eq_ignore_ascii_case("host"))
        .collect();
    let body = body.strip_suffix('\n').unwrap_or(body).to_string();
    (headers, body)
}

/// POSTs `body` with `headers`; returns the status, the headers and the body as text.
pub async fn post_with(
    url: &str,
    headers: &[(String, String)],
    body: impl Into<Vec<u8>>,
) -> (u16, HeaderMap, String) {
    let mut req = reqwest::Client::new().post(url).body(body.into());
    for (k, v) in headers {
        req = req.header(k, v);
    }
    let resp = req.send().await.unwrap();
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    (status, headers, resp.text().await.unwrap())
}

/// HubSpot's v3 signature headers for a POST of `body` to `public_url`, signed now.
pub fn hubspot_v3(secret: &str, public_url: &str, body: &str) -> Vec<(String, String)> {
    use base64::Engine as _;
    use hmac::{KeyInit, Mac};
    let ts = Clock::system().now().as_millisecond().to_string();
    let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(secret.as_bytes()).unwrap();
    mac.update(format!("POST{public_url}{body}{ts}").as_bytes());
    let sig = base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes());
    vec![
        ("X-HubSpot-Signature-v3".into(), sig),
        ("X-HubSpot-Request-Timestamp".into(), ts),
    ]
}

/// Reads every record of one topic (all its partitions), waiting until at least `min` arrived.
pub async fn read_topic(
    bootstrap: &str,
    topic: &str,
    min: usize,
) -> Vec<(String, serde_json::Value)> {
    use rdkafka::Message;
    use rdkafka::consumer::{BaseConsumer, Consumer};
    let bootstrap = bootstrap.to_string();
    let topic = topic.to_string();
    tokio::task::spawn_blocking(move || {
        let consumer: BaseConsumer = rdkafka::ClientConfig::new()
            .set("bootstrap.servers", &bootstrap)
            .set("group.id", "lwtest-read")
            .create()
            .unwrap();
        let md = consumer
            .fetch_metadata(Some(&topic), Duration::from_secs(10))
            .unwrap();
        let mut tpl = rdkafka::TopicPartitionList::new();
        for p in md.topics()[0].partitions() {
            tpl.add_partition_offset(&topic, p.id(), rdkafka::Offset::Beginning)
                .unwrap();
        }
        consumer.assign(&tpl).unwrap();
        let mut out = Vec::new();
        let deadline = Clock::system().instant() + Duration::from_secs(30);
        loop {
            match consumer.poll(Duration::from_millis(300)) {
                Some(Ok(m)) => {
                    // A changelog record's JSON is its body, after its header.
                    let payload = m.payload().unwrap_or_default();
                    let body = leadwatch::stamp::read(payload).map_or(payload, |r| r.1);
                    out.push((
                        String::from_utf8_lossy(m.key().unwrap_or_default()).into_owned(),
                        serde_json::from_slice(body).unwrap_or(serde_json::Value::Null),
                    ))
                }
                _ if out.len() >= min => return out,
                _ => assert!(
                    Clock::system().instant() < deadline,
                    "only {} record(s) on {topic}, wanted {min}",
                    out.len()
                ),
            }
        }
    })
    .await
    .unwrap()
}

/// Over the partitions of `{prefix}.alerts`: the offsets the dispatcher of `group` committed
/// (every alert before them settled or skipped for good), and the end offsets.
pub async fn alerts_committed(bootstrap: &str, group: &str) -> (i64, i64) {
    use rdkafka::consumer::{BaseConsumer, Consumer};
    let (bootstrap, group) = (bootstrap.to_string(), format!("{group}.dispatch"));
    tokio::task::spawn_blocking(move || {
        let consumer: BaseConsumer = rdkafka::ClientConfig::new()
            .set("bootstrap.servers", &bootstrap)
            .set("group.id", &group)
            .create()
            .unwrap();
        let topic = format!("{PREFIX}.alerts");
        let timeout = Duration::from_secs(10);
        let md = consumer.fetch_metadata(Some(&topic), timeout).unwrap();
        let mut tpl = rdkafka::TopicPartitionList::new();
        let mut end = 0;
        for p in md.topics()[0].partitions() {
            tpl.add_partition(&topic, p.id());
            end += consumer
                .fetch_watermarks(&topic, p.id(), timeout)
                .unwrap()
                .1;
        }
        let committed = consumer
            .committed_offsets(tpl, timeout)
            .unwrap()
            .elements()
            .iter()
            .map(|e| e.offset().to_raw().filter(|o| *o >= 0).unwrap_or(0))
            .sum();
        (committed, end)
    })
    .await
    .unwrap()
}

/// A dispatcher alone (`roles = ["dispatch"]`) in the group `group`, with `dispatch` (more keys
/// of `[dispatch]`) and `sinks`.
pub fn dispatch_config(bootstrap: &str, group: &str, dispatch: &str, sinks: &str) -> String {
    format!(
        r#"
roles = ["dispatch"]
shutdown_grace = "5s"
[server]
listen = "127.0.0.1:0"
[kafka]
brokers = "{bootstrap}"
topic_prefix = "{PREFIX}"
group_id = "{group}"
session_timeout = "6s"
[engine]
restore_timeout = "20s"
[dispatch]
request_timeout = "2s"
retry_jitter = 0.0
{dispatch}
{sinks}
"#
    )
}
