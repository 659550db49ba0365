//! Wiring: the embedded broker when none is configured, topics, the producers, and the roles this
//! instance runs (ingest, engine, dispatch), started together and stopped in order. The root
//! configuration ([`config`]) and the HTTP listener ([`http`]) live here too.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;

use crate::bus::backlog::Backlog;
use crate::bus::embedded::EmbeddedKafka;
use crate::bus::producer::Producer;
use crate::bus::{self, Topics, admin};
use crate::clock::Clock;
use crate::engine::Engine;
use crate::ingest::Ingest;
use crate::runner::Context;
use crate::runner::dispatch::Dispatcher;
use crate::runner::engine::EngineRunner;
use crate::runner::health::Liveness;
use crate::telemetry::Metrics;

pub mod config;
pub mod http;

pub use config::{Config, Role, Roles};

/// Shortest and longest wait before a failed role is started again.
const RESTART_BACKOFF: (Duration, Duration) = (Duration::from_secs(1), Duration::from_secs(60));

/// Runs `role` (each run started by `start`, handed the stop token) until `stop`: a run that
/// panics, fails, or ends on its own before `stop` is logged, counted
/// (`leadwatch_role_restarts_total{role}`) and started again after a backoff (1 s, doubling to
/// a minute; back to 1 s after a run that lasted a minute). A role that cannot get going never
/// turns, so `/healthz` fails after the stall time.
async fn supervise<F, Fut>(
    role: &'static str,
    mut start: F,
    stop: CancellationToken,
    liveness: Arc<Liveness>,
    metrics: Arc<Metrics>,
) where
    F: FnMut(CancellationToken) -> Fut,
    Fut: Future<Output = anyhow::Result<()>> + Send + 'static,
{
    let clock = Clock::system();
    let mut backoff = RESTART_BACKOFF.0;
    // Registered once: a run counts as progress only once it turns (its consumer group reports),
    // so a role failing before that stalls however often it is restarted.
    liveness.stage(role);
    loop {
        let started = clock.instant();
        let outcome = tokio::spawn(start(stop.clone())).await;
        if stop.is_cancelled() {
            if let Ok(Err(e)) | Err(e) = outcome.map_err(anyhow::Error::from) {
                tracing::error!(role, error = %e, "stopped with an error");
            }
            return;
        }
        let error = match outcome {
            Ok(Ok(())) => anyhow::anyhow!("the {role} role stopped on its own"),
            Ok(Err(e)) => e.context(format!("the {role} role failed")),
            Err(e) => anyhow::anyhow!("the {role} role panicked: {e}"),
        };
        if clock.instant() - started > RESTART_BACKOFF.1 {
            backoff = RESTART_BACKOFF.0;
        }
        metrics.role_restarted(role);
        tracing::error!(role, error = format!("{error:#}"), after = ?backoff, "restarting the role");
        tokio::select! {
            _ = tokio::time::sleep(backoff) => {}
            _ = stop.cancelled() => return,
        }
        backoff = (backoff * 2).min(RESTART_BACKOFF.1);
    }
}

/// Looks for stalls every second, so `leadwatch_stalled{stage}` is current whether or not
/// `/healthz` is asked, and logs each stall as it begins.
async fn watch_stalls(liveness: Arc<Liveness>, stop: CancellationToken) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    let mut known = std::collections::BTreeSet::new();
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.cancelled() => return,
        }
        let now: std::collections::BTreeSet<_> = liveness
            .stalled()
            .into_iter()
            .map(|s| (s.stage, s.partition, s.waiting))
            .collect();
        for (stage, partition, waiting) in now.difference(&known) {
            tracing::error!(stage, ?partition, %waiting, "no progress for the stall time; /healthz fails until it moves");
        }
        known = now;
    }
}

/// Builds the producer `name` (`ingest`, `engine` or `dispatch`) as every producer of the
/// daemon is built: named in its metrics, records Kafka refuses for good quarantined next to the
/// dead letters, the embedded broker's `backlog` (if any) guarded, and its own supervisor
/// (readiness, a rebuild after a fatal error) running until `stop`.
fn start_producer(
    name: &'static str,
    base: &rdkafka::ClientConfig,
    topics: &Topics,
    backlog: Option<Arc<Backlog>>,
    metrics: &Arc<Metrics>,
    clock: &Clock,
    stop: &CancellationToken,
) -> anyhow::Result<(Arc<Producer>, tokio::task::JoinHandle<()>)> {
    let producer = Producer::new(base, metrics.clone())
        .with_context(|| format!("creating the Kafka producer ({name})"))?;
    producer.name(name);
    producer.quarantine_to(&topics.dlq, clock.clone());
    if let Some(backlog) = backlog {
        producer.guard_backlog(backlog);
    }
    let supervisor = tokio::spawn(producer.clone().supervise(
        name,
        topics.events.clone(),
        stop.clone(),
    ));
    Ok((producer, supervisor))
}

/// Runs the daemon on `listener` until `shutdown` resolves, then stops within the grace period:
/// stop accepting HTTP, finish in-flight work, commit, flush, exit.
pub async fn run(
    config: Config,
    listener: TcpListener,
    shutdown: impl Future<Output = ()>,
) -> anyhow::Result<()> {
    let (_never, reloads) = mpsc::unbounded_channel();
    run_with_reloads(config, listener, shutdown, reloads).await
}

/// As [`run`]; each message on `reloads` (SIGHUP) reads the rules file again. Valid rules apply
/// to open leads at once; invalid ones are logged with every problem and the old rules stay.
pub async fn run_with_reloads(
    config: Config,
    listener: TcpListener,
    shutdown: impl Future<Output = ()>,
    mut reloads: mpsc::UnboundedReceiver<()>,
) -> anyhow::Result<()> {
    // The one clock every component reads.
    let clock = Clock::system();
    let metrics = Arc::new(Metrics::new());
    let (rules_tx, rules_rx) = watch::channel(Arc::new(config.rules.clone()));
    let reloader = {
        let (path, metrics) = (config.rules_path.clone(), metrics.clone());
        tokio::spawn(async move {
            while reloads.recv().await.is_some() {
                // `[identity]` is checked with the rest; the daemon does not join yet.
                match config::load_rules(&path).map(|file| file.rules) {
                    Ok(rules) => {
                        tracing::info!(rules = %path.display(), "rules reloaded");
                        let missing = rules
                            .kept_fields()
                            .missing_after(rules_tx.borrow().kept_fields());
                        if !missing.is_empty() {
                            tracing::warn!(
                                fields = %missing.join(", "),
                                "the new rules read lead fields the rules before did not keep: \
                                 each lead gets them with its next event that carries them, or \
                                 from `leadwatch replay`"
                            );
                            for field in &missing {
                                metrics.field_missing_after_reload(field);
                            }
                        }
                        metrics.rules_reload("applied");
                        let _ = rules_tx.send(Arc::new(rules));
                    }
                    Err(problems) => {
                        for p in &problems.0 {
                            tracing::error!(problem = %p, "rules not reloaded");
                        }
                        metrics.rules_reload("invalid");
                    }
                }
            }
        })
    };
    let topics = Topics::new(&config.kafka.topic_prefix);

    let embedded;
    let bootstrap = if config.kafka.is_embedded() {
        let specs: Vec<(String, i32)> = topics
            .all()
            .iter()
            .map(|(t, _)| (t.to_string(), config.kafka.partitions))
            .collect();
        let kafka = EmbeddedKafka::start(&specs)?;
        tracing::warn!(
            bootstrap = kafka.bootstrap(),
            "no kafka.brokers configured: running on the EMBEDDED in-memory Kafka (librdkafka's mock \
             cluster). Events, lead state and alerts live in memory only, only the most recent are \
             kept, and all of it is gone when the daemon stops. Set kafka.brokers for production."
        );
        let bootstrap = kafka.bootstrap().to_string();
        embedded = Some(kafka);
        bootstrap
    } else {
        embedded = None;
        config.kafka.brokers.clone()
    };
    let base = bus::client_config(&config.kafka, &bootstrap);
    if embedded.is_none() {
        admin::ensure_topics(
            &base,
            &topics,
            config.kafka.partitions,
            config.kafka.replication_factor,
        )
        .await
        .context("preparing the Kafka topics")?;
        admin::check_copartitioned(&base, &topics)
            .await
            .context("checking the Kafka topics")?;
        let requirements = admin::Requirements {
            message_max_bytes: config.kafka.message_max_bytes(),
            min_replication_factor: config.kafka.min_replication_factor,
            min_insync_replicas: config.kafka.min_insync_replicas,
        };
        admin::verify_topics(&base, &topics, &requirements)
            .await
            .context("verifying the Kafka topics")?;
    }

    // The mock cluster trims what was not read yet: writes wait for the consumers instead. One
    // backlog for the process, which every producer guards and every consumer reports to.
    let backlog = embedded.is_some().then(|| Arc::new(Backlog::embedded()));
    let stop_http = CancellationToken::new();
    let stop_work = CancellationToken::new();
    let stop_supervisor = CancellationToken::new();
    // One shutdown deadline for all stages: the roles drain their in-flight work within most of
    // it, leaving the rest to leave the group and flush the producers.
    let grace = config.shutdown_grace;
    let drain = grace.mul_f64(0.7);
    let build = |name| {
        start_producer(
            name,
            &base,
            &topics,
            backlog.clone(),
            &metrics,
            &clock,
            &stop_supervisor,
        )
    };
    // Each role writes through a producer of its own. The engine and the dispatcher are
    // different consumer groups: a revocation of one purges (when its flush cannot finish) only
    // its own producer's queue, never the other's writes. And ingest has its own, so a burst of
    // theirs (alerts falling due after an outage, a restore or a reload) cannot fill the queue
    // ingest answers webhooks by.
    let mut producers = Vec::new();
    for (role, name) in [
        (config.roles.engine, "engine"),
        (config.roles.dispatch, "dispatch"),
        (config.roles.ingest, "ingest"),
    ] {
        if role {
            producers.push((name, build(name)?));
        }
    }
    if producers.is_empty() {
        // No role at all (refused by the configuration's check): one producer for the probes.
        producers.push(("ingest", build("ingest")?));
    }
    let producer_of = |name: &str| {
        producers
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, (producer, _))| producer.clone())
    };
    let first = producers[0].1.0.clone();
    let ingest_producer = producer_of("ingest").unwrap_or_else(|| first.clone());

    let liveness = Liveness::new(clock.clone(), config.stall_timeout, metrics.clone());
    let ctx = Context {
        base: base.clone(),
        kafka: config.kafka.clone(),
        topics: topics.clone(),
        producer: first.clone(),
        metrics: metrics.clone(),
        clock: clock.clone(),
        liveness: Some(liveness.clone()),
    };
    // Each role runs under a supervisor that restarts it (with backoff, counted) when it panics
    // or fails: nothing a role meets stops the daemon. A role that cannot get going stops
    // turning, and `/healthz` says so.
    let watcher = tokio::spawn(watch_stalls(liveness.clone(), stop_supervisor.clone()));
    let mut workers = Vec::new();
    if let Some(producer) = producer_of("engine") {
        let ctx = Context {
            producer,
            ..ctx.clone()
        };
        let rules_rx = rules_rx.clone();
        let engine = config.engine.clone();
        let links = config.source_links();
        let start = move |stop: CancellationToken| {
            let rules = rules_rx.borrow().clone();
            let runner = EngineRunner {
                engine: Engine::new(rules)
                    .with_reorder_window(engine.reorder_window.0)
                    .with_retention(engine.retention())
                    .with_links(links.clone()),
                rules: rules_rx.clone(),
                config: engine.clone(),
                ctx: ctx.clone(),
            };
            async move { runner.run(stop, drain).await.map_err(anyhow::Error::from) }
        };
        workers.push((
            "engine",
            tokio::spawn(supervise(
                "engine",
                start,
                stop_work.clone(),
                liveness.clone(),
                metrics.clone(),
            )),
        ));
    }
    if let Some(producer) = producer_of("dispatch") {
        let ctx = Context {
            producer,
            ..ctx.clone()
        };
        // Built once here, so a configuration the sinks refuse stops the start with its reason.
        let first = Dispatcher::new(
            config.dispatch_sections(),
            config.engine.restore_timeout.0,
            &ctx,
        )
        .context("building the sinks")?;
        let first = std::sync::Mutex::new(Some(first));
        let sections = (
            config.dispatch.clone(),
            config.sinks.clone(),
            config.routes.clone(),
        );
        let (ctx, restore_timeout) = (ctx.clone(), config.engine.restore_timeout.0);
        let start = move |stop: CancellationToken| {
            let built = first
                .lock()
                .expect("dispatcher slot")
                .take()
                .map(Ok)
                .unwrap_or_else(|| {
                    let (dispatch, sinks, routes) = &sections;
                    let sections = crate::dispatch::DispatchSections {
                        dispatch,
                        sinks,
                        routes,
                    };
                    Dispatcher::new(sections, restore_timeout, &ctx)
                });
            async move { built?.run(stop, drain).await.map_err(anyhow::Error::from) }
        };
        workers.push((
            "dispatch",
            tokio::spawn(supervise(
                "dispatch",
                start,
                stop_work.clone(),
                liveness.clone(),
                metrics.clone(),
            )),
        ));
    }

    let ingest = config.roles.ingest.then(|| {
        Arc::new(Ingest::new(
            &config.sources,
            ingest_producer.clone(),
            &topics,
            &config.server,
            metrics.clone(),
            clock.clone(),
        ))
    });
    let draining = CancellationToken::new();
    let app = http::router(
        ingest,
        ingest_producer.clone(),
        metrics.clone(),
        clock.clone(),
        liveness.clone(),
        draining.clone(),
    );
    tracing::info!(listen = %listener.local_addr()?, "listening");
    let mut http = tokio::spawn(http::serve(
        listener,
        app,
        config.server.header_read_timeout.0,
        stop_http.clone(),
        drain,
    ));

    // Run until asked to stop (the roles restart themselves; only the HTTP server stopping on
    // its own stops the daemon, with an error).
    let mut failed: Option<anyhow::Error> = None;
    let mut http_done = false;
    tokio::select! {
        _ = shutdown => {}
        served = &mut http => {
            http_done = true;
            let error = anyhow::anyhow!("the HTTP server stopped on its own: {served:?}");
            tracing::error!(error = %error, "stopping the daemon");
            failed = Some(error);
        }
    }
    if !http_done && !config.server.drain_delay.0.is_zero() {
        // Readiness off first; the listener keeps serving while the orchestrator stops sending
        // requests here (a second signal still exits at once).
        let delay = config.server.drain_delay.0;
        draining.cancel();
        tracing::info!(
            ?delay,
            "draining: /readyz answers 503, requests are still served"
        );
        tokio::select! {
            _ = tokio::time::sleep(delay) => {}
            served = &mut http => {
                http_done = true;
                tracing::error!(?served, "the HTTP server stopped on its own while draining");
            }
        }
    }
    let deadline = clock.instant() + grace;
    tracing::info!(?grace, "shutting down");
    // Stop taking webhooks and stop the roles together: each drains within `drain`.
    stop_http.cancel();
    stop_work.cancel();
    if !http_done {
        let _ = tokio::time::timeout_at(deadline, &mut http).await;
    }
    // Ingest takes no more requests: what it queued is flushed first, while the roles drain.
    let left = |clock: &Clock| {
        deadline
            .saturating_duration_since(clock.instant())
            .max(std::time::Duration::from_secs(1))
    };
    if config.roles.ingest {
        ingest_producer.flush(left(&clock)).await;
    }
    for (role, worker) in workers {
        match tokio::time::timeout_at(deadline, worker).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::error!(role, error = %e, "supervisor failed"),
            Err(_) => tracing::warn!(role, "did not stop within the grace period"),
        }
    }
    for (name, (producer, _)) in &producers {
        if *name != "ingest" {
            producer.flush(left(&clock)).await;
        }
    }
    stop_supervisor.cancel();
    for (_, (_, supervisor)) in producers.iter_mut() {
        let _ = supervisor.await;
    }
    let _ = watcher.await;
    reloader.abort();
    drop(ingest_producer);
    drop(first);
    drop(producers);
    drop(embedded);
    tracing::info!("stopped");
    match failed {
        Some(e) => Err(e),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;

    /// A role that panics is started again after a backoff, and counted; the supervisor ends
    /// only when asked to stop.
    #[tokio::test(start_paused = true)]
    async fn a_role_that_panics_is_restarted_and_counted() {
        let metrics = Arc::new(Metrics::new());
        let liveness = Liveness::new(Clock::system(), Duration::from_secs(60), metrics.clone());
        let stop = CancellationToken::new();
        let runs = Arc::new(AtomicUsize::new(0));
        let start = {
            let runs = runs.clone();
            move |stop: CancellationToken| {
                let run = runs.fetch_add(1, Ordering::SeqCst);
                async move {
                    match run {
                        0 => panic!("a poison message"),
                        1 => anyhow::bail!("the consumer could not be created"),
                        _ => {
                            stop.cancelled().await;
                            Ok(())
                        }
                    }
                }
            }
        };
        let supervisor = tokio::spawn(supervise(
            "engine",
            start,
            stop.clone(),
            liveness,
            metrics.clone(),
        ));
        while runs.load(Ordering::SeqCst) < 3 {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert!(
            metrics
                .encode()
                .contains("leadwatch_role_restarts_total{role=\"engine\"} 2")
        );
        assert!(!supervisor.is_finished(), "the third run keeps going");
        stop.cancel();
        supervisor.await.unwrap();
        assert_eq!(runs.load(Ordering::SeqCst), 3);
    }
}
