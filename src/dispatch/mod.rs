//! The dispatcher: consumes `{prefix}.alerts` as its own consumer group and delivers each alert
//! to every sink, retrying transient failures; an alert's offset is stored once every sink has it.

pub mod retry;
pub mod sink;

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::future::BoxFuture;
use futures::stream::FuturesOrdered;
use futures::{FutureExt, StreamExt};
use rdkafka::{ClientConfig, Message};
use tokio_util::sync::CancellationToken;

use crate::alert::Alert;
use crate::bus::Topics;
use crate::bus::consumer;
use crate::config::{DispatchConfig, KafkaConfig};
use crate::telemetry::Metrics;
use retry::RetryPolicy;
use sink::Sink;

/// The sinks by name, and how to retry them.
pub struct Dispatcher {
    pub sinks: Arc<Vec<(String, Sink)>>,
    pub policy: RetryPolicy,
    pub base: ClientConfig,
    pub kafka: KafkaConfig,
    pub topics: Topics,
    pub config: DispatchConfig,
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
        let (consumer, mut assignments) = consumer::subscribe(
            &self.base,
            &self.kafka,
            &group,
            &self.topics.alerts,
            self.metrics.clone(),
        )?;
        tracing::info!(%group, topic = %self.topics.alerts, sinks = self.sinks.len(), "dispatcher started");
        let abandon = CancellationToken::new();
        let mut pending: FuturesOrdered<BoxFuture<'static, Option<(i32, i64)>>> =
            FuturesOrdered::new();

        loop {
            tokio::select! {
                biased;
                _ = shutdown.cancelled() => break,
                Some(change) = assignments.recv() => tracing::info!(?change, "dispatcher rebalance"),
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
                    let deliver = deliver_everywhere(
                        self.sinks.clone(),
                        self.policy.clone(),
                        self.metrics.clone(),
                        alert,
                        payload,
                    );
                    let abandon = abandon.clone();
                    pending.push_back(
                        async move {
                            tokio::select! {
                                _ = deliver => Some((partition, offset)),
                                _ = abandon.cancelled() => None,
                            }
                        }
                        .boxed(),
                    );
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
}

/// Delivers one alert to every sink at once; a slow sink does not hold back the others' requests.
async fn deliver_everywhere(
    sinks: Arc<Vec<(String, Sink)>>,
    policy: RetryPolicy,
    metrics: Arc<Metrics>,
    alert: Alert,
    body: Bytes,
) {
    let each = sinks.iter().map(|(name, sink)| {
        let (policy, metrics, alert, body) = (&policy, &metrics, &alert, &body);
        async move {
            match policy.deliver(name, sink, alert, body, metrics).await {
                Ok(()) => {
                    metrics.delivery(name, "delivered");
                    tracing::info!(sink = %name, alert_id = %alert.id(), "alert delivered");
                }
                Err(e) => {
                    metrics.delivery(name, "failed");
                    tracing::error!(sink = %name, alert_id = %alert.id(), error = %e, "alert not delivered; giving up on this sink");
                }
            }
        }
    });
    futures::future::join_all(each).await;
}
