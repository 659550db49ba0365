//! Wiring: the embedded broker when none is configured, topics, the producer, and the roles this
//! instance runs (ingest, engine, dispatch), started together and stopped in order. The root
//! configuration ([`config`]) and the HTTP listener ([`http`]) live here too.

use std::future::Future;
use std::sync::Arc;

use anyhow::Context as _;
use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;

use crate::bus::embedded::EmbeddedKafka;
use crate::bus::producer::Producer;
use crate::bus::{self, Topics, admin};
use crate::clock::Clock;
use crate::engine::Engine;
use crate::ingest::Ingest;
use crate::runner::Context;
use crate::runner::dispatch::Dispatcher;
use crate::runner::engine::EngineRunner;
use crate::telemetry::Metrics;

pub mod config;
pub mod http;

pub use config::{Config, Role, Roles};

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
                match config::load_rules(&path) {
                    Ok(rules) => {
                        tracing::info!(rules = %path.display(), "rules reloaded");
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
    }

    let producer = Producer::new(&base, metrics.clone()).context("creating the Kafka producer")?;
    // Records Kafka refuses for good are quarantined next to the dead letters.
    producer.quarantine_to(&topics.dlq, clock.clone());
    let stop_http = CancellationToken::new();
    let stop_work = CancellationToken::new();
    let stop_supervisor = CancellationToken::new();
    // One shutdown deadline for all stages: the roles drain their in-flight work within most of
    // it, leaving the rest to leave the group and flush the producer.
    let grace = config.shutdown_grace;
    let drain = grace.mul_f64(0.7);
    let supervisor = tokio::spawn(
        producer
            .clone()
            .supervise(topics.events.clone(), stop_supervisor.clone()),
    );

    let ctx = Context {
        base: base.clone(),
        kafka: config.kafka.clone(),
        topics: topics.clone(),
        producer: producer.clone(),
        metrics: metrics.clone(),
        clock: clock.clone(),
    };
    let mut workers = Vec::new();
    if config.roles.engine {
        let runner = EngineRunner {
            engine: Engine::new(Arc::new(config.rules.clone()))
                .with_reorder_window(config.engine.reorder_window.0)
                .with_retention(config.engine.retention())
                .with_links(config.source_links()),
            rules: rules_rx.clone(),
            config: config.engine.clone(),
            ctx: ctx.clone(),
        };
        let stop = stop_work.clone();
        workers.push((
            "engine",
            tokio::spawn(async move { runner.run(stop, drain).await }),
        ));
    }
    if config.roles.dispatch {
        let dispatcher = Dispatcher::new(
            config.dispatch_sections(),
            config.engine.restore_timeout.0,
            &ctx,
        )
        .context("building the sinks")?;
        let stop = stop_work.clone();
        workers.push((
            "dispatch",
            tokio::spawn(async move { dispatcher.run(stop, drain).await }),
        ));
    }

    let ingest = config.roles.ingest.then(|| {
        Arc::new(Ingest::new(
            &config.sources,
            producer.clone(),
            &topics,
            &config.server,
            metrics.clone(),
            clock.clone(),
        ))
    });
    let app = http::router(ingest, producer.clone(), metrics.clone());
    tracing::info!(listen = %listener.local_addr()?, "listening");
    let mut http = tokio::spawn(http::serve(
        listener,
        app,
        config.server.header_read_timeout.0,
        stop_http.clone(),
        drain,
    ));

    // Run until asked to stop — or until a role stops on its own (a panic, a fatal error): then
    // the daemon stops too, and exits with an error, rather than stay up and ready while doing
    // nothing (a supervisor such as Kubernetes restarts it).
    let mut failed: Option<anyhow::Error> = None;
    let mut http_done = false;
    {
        let roles = async {
            if workers.is_empty() {
                // An instance that only takes webhooks.
                return std::future::pending().await;
            }
            futures::future::select_all(
                workers
                    .iter_mut()
                    .map(|(role, task)| Box::pin(async move { (*role, task.await) })),
            )
            .await
            .0
        };
        tokio::select! {
            _ = shutdown => {}
            (role, result) = roles => {
                let error = match result {
                    Ok(Ok(())) => anyhow::anyhow!("the {role} role stopped on its own"),
                    Ok(Err(e)) => anyhow::anyhow!("the {role} role failed: {e}"),
                    Err(e) => anyhow::anyhow!("the {role} role panicked: {e}"),
                };
                tracing::error!(error = %error, "stopping the daemon");
                failed = Some(error);
            }
            served = &mut http => {
                http_done = true;
                let error = anyhow::anyhow!("the HTTP server stopped on its own: {served:?}");
                tracing::error!(error = %error, "stopping the daemon");
                failed = Some(error);
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
    for (role, worker) in workers {
        if worker.is_finished() && failed.is_some() {
            continue;
        }
        match tokio::time::timeout_at(deadline, worker).await {
            Ok(Ok(Ok(()))) => {}
            Ok(Ok(Err(e))) => tracing::error!(role, error = %e, "stopped with an error"),
            Ok(Err(e)) => tracing::error!(role, error = %e, "task failed"),
            Err(_) => tracing::warn!(role, "did not stop within the grace period"),
        }
    }
    let left = deadline
        .saturating_duration_since(clock.instant())
        .max(std::time::Duration::from_secs(1));
    producer.flush(left).await;
    stop_supervisor.cancel();
    let _ = supervisor.await;
    reloader.abort();
    drop(producer);
    drop(embedded);
    tracing::info!("stopped");
    match failed {
        Some(e) => Err(e),
        None => Ok(()),
    }
}
