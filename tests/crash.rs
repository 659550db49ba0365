//! Nothing lost, nothing doubled: the daemon as a child process against a broker in its own
//! process, killed with SIGKILL, stopped mid-run, restarted. The receiver counts raw deliveries.

mod support;

use leadwatch::clock::Clock;
use std::collections::{BTreeSet, HashMap};
use std::time::Duration;

use serde_json::json;
use support::process::{BrokerProcess, DaemonProcess};
use support::*;

const PATIENCE: Duration = Duration::from_secs(120);

/// The test config for a child daemon on `port`.
/// The child's config: it listens on a port of the kernel's choosing (see
/// `DaemonProcess::start_on_any_port`), so no other test can take it between asking and binding.
fn child_config(bootstrap: &str, receiver_url: &str) -> String {
    config_text(bootstrap, receiver_url, "") + "\n"
}

/// With partitions and replication set for brokers where the daemon creates the topics.
fn with_topics(config: String) -> String {
    config.replace(
        "session_timeout = \"6s\"",
        "session_timeout = \"6s\"\npartitions = 3\nreplication_factor = 1",
    )
}

/// Posts `n` sales-ready leads named `{prefix}-{i}`, 100 per request.
async fn post_leads(daemon: &DaemonProcess, prefix: &str, n: usize) {
    let now = now_plus(0);
    let events: Vec<serde_json::Value> = (0..n)
        .map(|i| {
            ready_event(
                &format!("{prefix}-ready-{i}"),
                &format!("{prefix}-{i}"),
                &now,
            )
        })
        .collect();
    for chunk in events.chunks(100) {
        let (status, _, body) =
            post_signed(&daemon.url("/webhooks/web"), SOURCE_SECRET, &json!(chunk)).await;
        assert_eq!(status, 202, "{body}");
    }
}

/// Every lead got alerts under exactly one id, and every copy of an id carries the same body.
fn assert_one_alert_per_lead(receiver: &Receiver, n: usize) {
    let mut by_lead: HashMap<String, Vec<(String, Vec<u8>)>> = HashMap::new();
    for r in receiver.all() {
        let lead = r.json()["data"]["lead"].as_str().unwrap().to_string();
        by_lead
            .entry(lead)
            .or_default()
            .push((r.header("webhook-id").to_string(), r.body.to_vec()));
    }
    assert_eq!(by_lead.len(), n, "leads with an alert");
    for (lead, copies) in by_lead {
        let (id, body) = &copies[0];
        for (other_id, other_body) in &copies {
            assert_eq!(other_id, id, "{lead} got two different alerts");
            assert_eq!(other_body, body, "{lead}: a repeat carries another body");
        }
    }
}

const APPLIED: &str = "leadwatch_engine_events_total{outcome=\"applied\"}";

/// The webhook-ids among `requests`, each once.
fn ids(requests: &[Received]) -> BTreeSet<String> {
    requests
        .iter()
        .map(|r| r.header("webhook-id").to_string())
        .collect()
}

/// Where the broker is and how the daemons are configured for it.
struct Setup {
    broker: BrokerProcess,
    /// The daemon creates the topics (a real broker) rather than finding them (dev-broker).
    creates_topics: bool,
}

impl Setup {
    fn dev_broker() -> Self {
        Self {
            broker: BrokerProcess::dev_broker(PREFIX, 3),
            creates_topics: false,
        }
    }

    fn tansu() -> Option<Self> {
        let path = std::env::var_os("LEADWATCH_TANSU")?;
        Some(Self {
            broker: BrokerProcess::tansu(std::path::Path::new(&path)),
            creates_topics: true,
        })
    }

    async fn start(
        &self,
        dir: &std::path::Path,
        name: &str,
        receiver: &Receiver,
        within: &str,
    ) -> DaemonProcess {
        self.start_with(dir, name, receiver, within, "").await
    }

    /// As [`Setup::start`], with `engine` added to the `[engine]` section.
    async fn start_with(
        &self,
        dir: &std::path::Path,
        name: &str,
        receiver: &Receiver,
        within: &str,
        engine: &str,
    ) -> DaemonProcess {
        let mut config = child_config(&self.broker.bootstrap, &receiver.url)
            .replace("[engine]\n", &format!("[engine]\n{engine}\n"));
        if self.creates_topics {
            config = with_topics(config);
        }
        DaemonProcess::start_on_any_port(dir, name, &config, &rules_text(within)).await
    }
}

/// Posts N leads, kills the daemon with SIGKILL before their deadlines, restarts it: every lead
/// gets its alert, exactly once.
async fn kill_9_before_the_deadlines(setup: Setup) {
    const N: usize = 40;
    let dir = tempfile::tempdir().unwrap();
    let receiver = Receiver::start().await;
    let a = setup.start(dir.path(), "a", &receiver, "12s").await;
    wait_for("daemon a ready", PATIENCE, || a.ready()).await;
    let posted = Clock::system().instant();
    post_leads(&a, "crash", N).await;
    a.wait_for_metric("daemon a to apply every event", APPLIED, PATIENCE, |v| {
        v >= N as f64
    })
    .await;
    assert!(
        (Clock::system().instant() - posted) < Duration::from_secs(12),
        "too slow to kill before the deadlines"
    );
    a.kill();
    assert_eq!(receiver.count(), 0, "alerts before their deadline");

    let b = setup.start(dir.path(), "b", &receiver, "12s").await;
    wait_for("every alert after the restart", PATIENCE, || async {
        receiver.distinct() >= N
    })
    .await;
    b.terminate();
    assert_eq!(
        receiver.count(),
        N,
        "raw deliveries: an alert was delivered twice"
    );
    assert_one_alert_per_lead(&receiver, N);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_before_the_deadlines_loses_and_doubles_nothing() {
    kill_9_before_the_deadlines(Setup::dev_broker()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs tansu: LEADWATCH_TANSU=$(scripts/install-tansu.sh) cargo test --test crash -- --ignored"]
async fn kill_9_before_the_deadlines_on_tansu() {
    kill_9_before_the_deadlines(Setup::tansu().expect("LEADWATCH_TANSU names the tansu binary"))
        .await;
}

/// Kills the daemon after it applied every event and fired every alert, but before it flushed
/// any of it (a flush interval no test outlasts): nothing of it reached Kafka and no event's
/// offset was stored, so the restarted daemon reads every event again and fires every alert
/// itself — each lead gets its alert, exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_between_apply_and_flush_loses_and_doubles_nothing() {
    const N: usize = 40;
    const FIRED: &str = "leadwatch_alerts_fired_total{type=\"sla.first_touch.breached\"}";
    let setup = Setup::dev_broker();
    let dir = tempfile::tempdir().unwrap();
    let receiver = Receiver::start().await;
    let a = setup
        .start_with(dir.path(), "a", &receiver, "2s", "flush_interval = \"1h\"")
        .await;
    wait_for("daemon a ready", PATIENCE, || a.ready()).await;
    post_leads(&a, "unflushed", N).await;
    a.wait_for_metric("daemon a to apply every event", APPLIED, PATIENCE, |v| {
        v >= N as f64
    })
    .await;
    a.wait_for_metric("daemon a to fire every alert", FIRED, PATIENCE, |v| {
        v >= N as f64
    })
    .await;
    a.kill();
    assert_eq!(receiver.count(), 0, "alerts written before their flush");

    let b = setup.start(dir.path(), "b", &receiver, "2s").await;
    wait_for("every alert after the restart", PATIENCE, || async {
        receiver.distinct() >= N
    })
    .await;
    assert_eq!(
        b.metric(APPLIED).await,
        N as f64,
        "b applies every event again: a stored no offset before its flush"
    );
    b.terminate();
    assert_eq!(
        receiver.count(),
        N,
        "raw deliveries: an alert was delivered twice"
    );
    assert_one_alert_per_lead(&receiver, N);
}

/// Kills the daemon while a slow endpoint is receiving alerts: every lead still gets its alert
/// answered, and a repeat (a delivery in flight at the kill) carries the same webhook-id and
/// body. A delivery counts once the receiver's answer is written back, not when the request
/// arrives: one cut off by the kill was never answered.
async fn kill_9_while_delivering(setup: Setup) {
    const N: usize = 30;
    let dir = tempfile::tempdir().unwrap();
    let receiver = Receiver::start_slow(Duration::from_millis(700)).await;
    let a = setup.start(dir.path(), "a", &receiver, "3s").await;
    wait_for("daemon a ready", PATIENCE, || a.ready()).await;
    post_leads(&a, "inflight", N).await;
    wait_for("deliveries to begin", PATIENCE, || async {
        receiver.count() >= 1
    })
    .await;
    a.kill();
    // In flight at the kill: arrived, never answered.
    let answered_before = ids(&receiver.answered());
    let cut_off: BTreeSet<String> = ids(&receiver.all())
        .difference(&answered_before)
        .cloned()
        .collect();
    assert!(!cut_off.is_empty(), "no delivery was in flight at the kill");
    let b = setup.start(dir.path(), "b", &receiver, "3s").await;
    // The deliveries cut off by the kill were never acknowledged: the restart makes them again.
    wait_for(
        "every alert answered after the restart",
        PATIENCE,
        || async { ids(&receiver.answered()).len() >= N },
    )
    .await;
    b.terminate();
    let answered = ids(&receiver.answered());
    assert_eq!(answered.len(), N, "alerts answered");
    assert!(
        cut_off.is_subset(&answered),
        "cut off by the kill and not made again: {:?}",
        cut_off.difference(&answered).collect::<Vec<_>>()
    );
    assert_one_alert_per_lead(&receiver, N);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_while_delivering_repeats_only_under_the_same_webhook_id() {
    kill_9_while_delivering(Setup::dev_broker()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs tansu: LEADWATCH_TANSU=$(scripts/install-tansu.sh) cargo test --test crash -- --ignored"]
async fn kill_9_while_delivering_on_tansu() {
    kill_9_while_delivering(Setup::tansu().expect("LEADWATCH_TANSU names the tansu binary")).await;
}

/// Two daemons share the partitions; one leaves mid-run; the other takes its leads over.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_leaving_the_group_moves_its_leads_without_losing_or_repeating_an_alert() {
    const N: usize = 40;
    let setup = Setup::dev_broker();
    let dir = tempfile::tempdir().unwrap();
    let receiver = Receiver::start().await;
    let a = setup.start(dir.path(), "a", &receiver, "12s").await;
    let b = setup.start(dir.path(), "b", &receiver, "12s").await;
    wait_for("both daemons ready", PATIENCE, || async {
        a.ready().await && b.ready().await
    })
    .await;
    post_leads(&a, "rebalance", N).await;
    // Every lead is held by one of them once its event is applied (the gauge is always
    // exported, so a daemon that holds none says 0).
    const LEADS: &str = "leadwatch_engine_leads";
    wait_for("every event applied by one of them", PATIENCE, || async {
        a.metric(LEADS).await + b.metric(LEADS).await >= N as f64
    })
    .await;
    let a_had = a.metric(LEADS).await;
    a.terminate();
    wait_for("every alert", PATIENCE, || async {
        receiver.distinct() >= N
    })
    .await;
    b.terminate();
    assert_eq!(
        receiver.count(),
        N,
        "raw deliveries: an alert was delivered twice"
    );
    assert_one_alert_per_lead(&receiver, N);
    // The split is the group's business, but a test where b did everything proves nothing.
    assert!(a_had > 0.0, "daemon a never held a partition");
}

/// Many leads restored after a restart; deadlines that passed during the downtime fire once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn state_is_restored_after_a_restart_and_missed_deadlines_fire_once() {
    const N: usize = 600;
    let setup = Setup::dev_broker();
    let dir = tempfile::tempdir().unwrap();
    let receiver = Receiver::start().await;
    let a = setup.start(dir.path(), "a", &receiver, "10s").await;
    wait_for("daemon a ready", PATIENCE, || a.ready()).await;
    let posted = Clock::system().instant();
    post_leads(&a, "restore", N).await;
    a.wait_for_metric("daemon a to apply every event", APPLIED, PATIENCE, |v| {
        v >= N as f64
    })
    .await;
    assert!(
        (Clock::system().instant() - posted) < Duration::from_secs(10),
        "too slow to stop before the deadlines"
    );
    a.terminate();
    assert_eq!(receiver.count(), 0);
    // Down while the deadlines pass.
    wait_for("the deadlines to pass", PATIENCE, || async {
        (Clock::system().instant() - posted) > Duration::from_secs(11)
    })
    .await;

    let b = setup.start(dir.path(), "b", &receiver, "10s").await;
    wait_for("every missed alert", PATIENCE, || async {
        receiver.distinct() >= N
    })
    .await;
    // Daemon a committed its offsets on the way out: b knows the leads from the changelog alone
    // and reads none of their events again. A new event is the one b applies.
    let (status, _, body) = post_signed(
        &b.url("/webhooks/web"),
        SOURCE_SECRET,
        &json!({"id": "restore-new", "type": "lead.updated", "lead": "restore-new",
                "occurred_at": now_plus(0), "fields": {"stage": "new"}}),
    )
    .await;
    assert_eq!(status, 202, "{body}");
    b.wait_for_metric("daemon b to apply the new event", APPLIED, PATIENCE, |v| {
        v >= 1.0
    })
    .await;
    assert_eq!(
        b.metric(APPLIED).await,
        1.0,
        "b applied events again instead of restoring state"
    );
    assert_eq!(
        b.metric_or_zero("leadwatch_engine_events_total{outcome=\"duplicate\"}")
            .await,
        0.0,
        "b read events a had committed"
    );
    assert_eq!(b.metric("leadwatch_engine_leads").await, N as f64 + 1.0);
    b.terminate();
    assert_eq!(
        receiver.count(),
        N,
        "raw deliveries: an alert was delivered twice"
    );
    assert_one_alert_per_lead(&receiver, N);
}
