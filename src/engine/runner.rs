//! The engine's shell: consumes `{prefix}.events` as a consumer group, applies each event to its
//! partition's state, writes each changed lead state to `{prefix}.state`, fires due deadlines
//! into `{prefix}.alerts`, and stores an event's offset only after what it caused is in Kafka.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use futures::stream::{FuturesOrdered, FuturesUnordered};
use futures::{FutureExt, StreamExt};
use jiff::Timestamp;
use rdkafka::ClientConfig;
use rdkafka::Message;
use tokio_util::sync::CancellationToken;

use super::Engine;
use super::partition::PartitionState;
use crate::alert::Alert;
use crate::bus::Topics;
use crate::bus::consumer::{self, Assignment};
use crate::bus::producer::Producer;
use crate::config::{EngineConfig, KafkaConfig};
use crate::event::LeadEvent;
use crate::telemetry::Metrics;

/// Everything the engine loop needs.
pub struct EngineRunner {
    pub engine: Engine,
    pub producer: Arc<Producer>,
    pub base: ClientConfig,
    pub kafka: KafkaConfig,
    pub topics: Topics,
    pub config: EngineConfig,
    pub metrics: Arc<Metrics>,
}

/// How long until `t`, from the wall clock.
fn until(t: Timestamp) -> Duration {
    let now = Timestamp::now();
    if t <= now {
        Duration::ZERO
    } else {
        Duration::try_from(t.duration_since(now)).unwrap_or(Duration::MAX)
    }
}

impl EngineRunner {
    /// Runs until `shutdown`; then finishes in-flight writes within `grace`, commits, and leaves
    /// the group. Work abandoned at the grace limit has no stored offset and is redone later.
    pub async fn run(
        self,
        shutdown: CancellationToken,
        grace: Duration,
    ) -> Result<(), rdkafka::error::KafkaError> {
        let Self {
            engine,
            producer,
            base,
            kafka,
            topics,
            config,
            metrics,
        } = self;
        let (consumer, mut assignments) = consumer::subscribe(
            &base,
            &kafka,
            &kafka.group_id,
            &topics.events,
            metrics.clone(),
        )?;
        tracing::info!(group = %kafka.group_id, topic = %topics.events, "engine started");

        let abandon = CancellationToken::new();
        let mut partitions: HashMap<i32, PartitionState> = HashMap::new();
        // Per consumed event, resolves to its offset once what it caused is acknowledged.
        let mut pending: FuturesOrdered<BoxFuture<'static, Option<(i32, i64)>>> =
            FuturesOrdered::new();
        // Fired alerts on their way to Kafka; an error hands the alert back to be fired again.
        let mut firing: FuturesUnordered<BoxFuture<'static, Result<(), (i32, Alert)>>> =
            FuturesUnordered::new();

        loop {
            let next = partitions.values().filter_map(|p| p.next_deadline()).min();
            let wake = next.map(until).unwrap_or(Duration::from_secs(3600));
            tokio::select! {
                biased;
                _ = shutdown.cancelled() => break,
                Some(change) = assignments.recv() => match change {
                    Assignment::Assigned(ps) => {
                        tracing::info!(partitions = ?ps, "engine assigned partitions");
                        for p in ps {
                            partitions.entry(p).or_default();
                        }
                    }
                    Assignment::Revoked(ps) => {
                        tracing::info!(partitions = ?ps, "engine partitions revoked");
                        for p in ps {
                            partitions.remove(&p);
                        }
                    }
                },
                Some(done) = pending.next(), if !pending.is_empty() => {
                    if let Some((partition, offset)) = done {
                        consumer::store(&consumer, &topics.events, partition, offset);
                    }
                }
                Some(result) = firing.next(), if !firing.is_empty() => {
                    if let Err((partition, alert)) = result
                        && let Some(ps) = partitions.get_mut(&partition)
                    {
                        ps.unfire(&engine, &alert);
                    }
                }
                received = consumer.recv(), if pending.len() < config.max_in_flight => {
                    let msg = match received {
                        Ok(msg) => msg,
                        Err(e) => {
                            tracing::warn!(error = %e, "engine consumer error");
                            continue;
                        }
                    };
                    let (partition, offset) = (msg.partition(), msg.offset());
                    let event = msg
                        .payload()
                        .ok_or_else(|| "empty message".to_string())
                        .and_then(|p| serde_json::from_slice::<LeadEvent>(p).map_err(|e| e.to_string()));
                    let event = match event {
                        Ok(event) => event,
                        Err(error) => {
                            // Not ours to fix: count it, log where it is, and move on.
                            metrics.engine_event("invalid");
                            tracing::error!(partition, offset, %error, "skipping an event that is not a LeadEvent");
                            pending.push_back(futures::future::ready(Some((partition, offset))).boxed());
                            continue;
                        }
                    };
                    let ps = partitions.entry(partition).or_default();
                    match ps.apply(&engine, &event) {
                        None => {
                            metrics.engine_event("duplicate");
                            pending.push_back(futures::future::ready(Some((partition, offset))).boxed());
                        }
                        Some(state) => {
                            metrics.engine_event("applied");
                            let payload = serde_json::to_vec(state).expect("lead state serializes");
                            let producer = producer.clone();
                            let topic = topics.state.clone();
                            let abandon = abandon.clone();
                            pending.push_back(
                                async move {
                                    producer
                                        .send_until_acked(&topic, &event.lead, &payload, &abandon)
                                        .await
                                        .then_some((partition, offset))
                                }
                                .boxed(),
                            );
                        }
                    }
                }
                _ = tokio::time::sleep(wake) => {}
            }

            // Fire whatever is due, also under a steady stream of events.
            if next.is_some_and(|t| t <= Timestamp::now()) {
                let now = Timestamp::now();
                for (&partition, ps) in partitions.iter_mut() {
                    for (alert, state) in ps.fire_due(&engine, now) {
                        metrics.alert_fired(&alert.kind);
                        tracing::info!(alert_id = %alert.id(), lead = %alert.data.lead, kind = %alert.kind, "alert fired");
                        firing.push(write_alert(
                            producer.clone(),
                            topics.clone(),
                            partition,
                            alert,
                            state,
                            abandon.clone(),
                        ));
                    }
                }
            }
            metrics.set_leads(partitions.values().map(|p| p.len() as i64).sum());
        }

        tracing::info!(in_flight = pending.len() + firing.len(), "engine stopping");
        let drain = async {
            while let Some(done) = pending.next().await {
                if let Some((partition, offset)) = done {
                    consumer::store(&consumer, &topics.events, partition, offset);
                }
            }
            while firing.next().await.is_some() {}
        };
        if tokio::time::timeout(grace, drain).await.is_err() {
            tracing::warn!(
                "grace period over; unfinished engine work will be redone after restart"
            );
            abandon.cancel();
        }
        consumer::close(consumer, Duration::from_secs(5)).await;
        tracing::info!("engine stopped");
        Ok(())
    }
}

/// Writes a fired alert, then (only once the alert is in Kafka) the state that says it fired:
/// a crash in between makes it fire again under the same id, never lose it.
fn write_alert(
    producer: Arc<Producer>,
    topics: Topics,
    partition: i32,
    alert: Alert,
    state: super::LeadState,
    abandon: CancellationToken,
) -> BoxFuture<'static, Result<(), (i32, Alert)>> {
    async move {
        let lead = alert.data.lead.clone();
        let payload = serde_json::to_vec(&alert).expect("alert serializes");
        if !producer
            .send_until_acked(&topics.alerts, &lead, &payload, &abandon)
            .await
        {
            return Err((partition, alert));
        }
        let state = serde_json::to_vec(&state).expect("lead state serializes");
        producer
            .send_until_acked(&topics.state, &lead, &state, &abandon)
            .await;
        Ok(())
    }
    .boxed()
}
