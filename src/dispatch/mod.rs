//! The dispatcher: consumes `{prefix}.alerts` as its own consumer group and delivers each alert
//! to every sink that does not have it yet ([`ledger`]), retrying transient failures; an alert's
//! offset is stored once every sink has it and that is recorded in `{prefix}.delivered`.

pub mod ledger;
pub mod retry;
pub mod sink;

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::future::BoxFuture;
use futures::stream::FuturesOrdered;
use futures::{FutureExt, StreamExt};
use rdkafka::{ClientConfig, Message};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::alert::Alert;
use crate::bus::Topics;
use crate::bus::changelog::{Restored, Restorer};
use crate::bus::consumer::{self, Assignment, RebalanceHooks};
use crate::bus::producer::Producer;
use crate::config::{DispatchConfig, KafkaConfig};
use crate::telemetry::Metrics;
use ledger::Ledger;
use retry::RetryPolicy;
use sink::Sink;

type Slots = crate::bus::changelog::Slots<Ledger, (i64, Alert, Bytes)>;
use crate::bus::changelog::Slot;
type Pending = FuturesOrdered<BoxFuture<'static, Option<(i32, i64)>>>;

/// The sinks by name, and how to retry them.
pub struct Dispatcher {
    pub sinks: Arc<Vec<(String, Sink)>>,
    pub policy: RetryPolicy,
    pub producer: Arc<Producer>,
    pub base: ClientConfig,
    pub kafka: KafkaConfig,
    pub topics: Topics,
    pub config: DispatchConfig,
    pub restore_timeout: Duration,
    pub metrics: Arc<Metrics>,
}

impl Dispatcher {
    /// Builds the sinks of `[sinks.*]`.
    pub fn sinks_from_config(
        sinks: &std::collections::BTreeMap<String, crate::config::SinkConfig>,
        config: &DispatchConfig,
    ) -> Result<Vec<(String, Sink)>, reqwest::Error> {
        let client = reqwest::Client::builder()
            .timeout(*config.request_timeout)
            .connect_timeout(*config.request_timeout)
            .user_agent(concat!("leadwatch/", env!("CARGO_PKG_VERSION")))
            .build()?;
        Ok(sinks
            .iter()
            .map(|(name, cfg)| (name.clone(), Sink::from_config(cfg, client.clone())))
            .collect())
    }

    /// Runs until `shutdown`; deliveries still retrying after `grace` are abandoned unacknowledged
    /// and redone (same webhook-id) after a restart.
    pub async fn run(
        self,
        shutdown: CancellationToken,
        grace: Duration,
    ) -> Result<(), rdkafka::error::KafkaError> {
        let group = format!("{}.dispatch", self.kafka.group_id);
        let producer = self.producer.clone();
        let hooks = RebalanceHooks {
            pause_on_assign: true,
            report_end: false,
            on_revoke: Some(Box::new(move || {
                producer.flush_blocking(Duration::from_secs(5))
            })),
        };
        let (consumer, mut assignments) = consumer::subscribe(
            &self.base,
            &self.kafka,
            &group,
            &self.topics.alerts,
            self.metrics.clone(),
            hooks,
        )?;
        tracing::info!(%group, topic = %self.topics.alerts, sinks = self.sinks.len(), "dispatcher started");
        let restorer = Restorer {
            base: self.base.clone(),
            topic: self.topics.delivered.clone(),
            timeout: self.restore_timeout,
        };
        let (restored_tx, mut restored_rx) = mpsc::unbounded_channel::<Restored>();
        let mut slots: Slots = Slots::default();
        let abandon = CancellationToken::new();
        let mut pending: Pending = FuturesOrdered::new();

        loop {
            tokio::select! {
                biased;
                _ = shutdown.cancelled() => break,
                Some(change) = assignments.recv() => match change {
                    Assignment::Assigned(ps) => {
                        tracing::info!(partitions = ?ps, "dispatcher assigned partitions; restoring deliveries");
                        slots.assigned(ps, &restorer, &restored_tx);
                    }
                    Assignment::Revoked(ps) => {
                        tracing::info!(partitions = ?ps, "dispatcher partitions revoked");
                        slots.revoked(&ps);
                    }
                },
                Some(done) = restored_rx.recv() => {
                    if !slots.is_current(&done) {
                        continue;
                    }
                    let Restored { partition, generation, result } = done;
                    let ledger = match result {
                        Ok(snapshot) => {
                            let (ledger, broken) = Ledger::from_snapshot(snapshot);
                            if broken > 0 {
                                tracing::error!(partition, broken, "delivery records could not be read");
                            }
                            ledger
                        }
                        Err(e) => {
                            tracing::error!(partition, error = %e, "restoring deliveries failed; retrying");
                            restorer.spawn(partition, generation, Duration::from_secs(1), restored_tx.clone());
                            continue;
                        }
                    };
                    tracing::info!(partition, leads = ledger.len(), "deliveries restored");
                    for (offset, alert, body) in slots.ready(partition, ledger.clone()) {
                        pending.push_back(self.deliver(&ledger, partition, offset, alert, body, &abandon));
                    }
                    consumer::resume(&consumer, &self.topics.alerts, partition);
                }
                Some(done) = pending.next(), if !pending.is_empty() => {
                    if let Some((partition, offset)) = done {
                        consumer::store(&consumer, &self.topics.alerts, partition, offset);
                    }
                }
                received = consumer.recv(), if pending.len() < self.config.max_in_flight => {
                    let msg = match received {
                        Ok(msg) => msg,
                        Err(e) => {
                            tracing::warn!(error = %e, "dispatcher consumer error");
                            continue;
                        }
                    };
                    let (partition, offset) = (msg.partition(), msg.offset());
                    let payload = Bytes::copy_from_slice(msg.payload().unwrap_or_default());
                    let alert: Alert = match serde_json::from_slice(&payload) {
                        Ok(alert) => alert,
                        Err(error) => {
                            tracing::error!(partition, offset, %error, "skipping a message that is not an alert");
                            pending.push_back(futures::future::ready(Some((partition, offset))).boxed());
                            continue;
                        }
                    };
                    match slots.route(partition) {
                        Slot::Restoring { waiting, .. } => waiting.push((offset, alert, payload)),
                        Slot::Ready(ledger) => {
                            let ledger = ledger.clone();
                            pending.push_back(self.deliver(&ledger, partition, offset, alert, payload, &abandon));
                        }
                    }
                }
            }
        }

        tracing::info!(in_flight = pending.len(), "dispatcher stopping");
        let drain = async {
            while let Some(done) = pending.next().await {
                if let Some((partition, offset)) = done {
                    consumer::store(&consumer, &self.topics.alerts, partition, offset);
                }
            }
        };
        if tokio::time::timeout(grace, drain).await.is_err() {
            tracing::warn!("grace period over; undelivered alerts will be delivered after restart");
            abandon.cancel();
        }
        consumer::close(consumer, Duration::from_secs(5)).await;
        tracing::info!("dispatcher stopped");
        Ok(())
    }

    /// Delivers one alert to every sink that does not have it yet, all at once (a slow sink does
    /// not hold back the others), recording each delivery; resolves to the offset to store.
    fn deliver(
        &self,
        ledger: &Ledger,
        partition: i32,
        offset: i64,
        alert: Alert,
        body: Bytes,
        abandon: &CancellationToken,
    ) -> BoxFuture<'static, Option<(i32, i64)>> {
        let (sinks, policy, metrics, producer) = (
            self.sinks.clone(),
            self.policy.clone(),
            self.metrics.clone(),
            self.producer.clone(),
        );
        let (ledger, topic, abandon) = (
            ledger.clone(),
            self.topics.delivered.clone(),
            abandon.clone(),
        );
        async move {
            let lead = alert.data.lead.clone();
            let already = ledger.delivered(&lead, alert.id());
            let each = sinks.iter().filter(|(name, _)| !already.contains(name)).map(|(name, sink)| {
                let (policy, metrics, alert, body, ledger, producer, topic, abandon, lead) =
                    (&policy, &metrics, &alert, &body, &ledger, &producer, &topic, &abandon, &lead);
                async move {
                    match policy.deliver(name, sink, alert, body, metrics).await {
                        Ok(()) => {
                            metrics.delivery(name, "delivered");
                            tracing::info!(sink = %name, alert_id = %alert.id(), "alert delivered");
                            ledger.record(producer, topic, lead, alert.id(), name, abandon).await
                        }
                        Err(e) => {
                            metrics.delivery(name, "failed");
                            tracing::error!(sink = %name, alert_id = %alert.id(), error = %e, "alert not delivered; giving up on this sink");
                            true
                        }
                    }
                }
            });
            let all_recorded = futures::future::join_all(each).await.into_iter().all(|ok| ok);
            all_recorded.then_some((partition, offset))
        }
        .boxed()
    }
}
