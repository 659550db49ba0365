//! The one Kafka producer every role writes through: idempotent, acks=all, a few milliseconds of
//! linger so concurrent sends batch. It watches its own health (readiness) and rebuilds itself
//! after a fatal error instead of answering 2xx on top of a broken idempotence sequence.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use backon::{ExponentialBuilder, Retryable};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::{DeliveryFuture, FutureProducer, FutureRecord, Producer as _};
use rdkafka::{ClientConfig, ClientContext};
use tokio_util::sync::CancellationToken;

use crate::telemetry::Metrics;

/// Most messages the producer queues before ingest answers 503 instead of queueing more.
const QUEUE_MAX_MESSAGES: i32 = 100_000;

/// Notices fatal errors (librdkafka raises them when the idempotent producer cannot guarantee
/// order or exactly-once delivery any more).
#[derive(Clone, Default)]
pub struct ProducerContext {
    fatal: Arc<AtomicBool>,
}

impl ClientContext for ProducerContext {
    fn error(&self, error: KafkaError, reason: &str) {
        if matches!(error, KafkaError::Global(RDKafkaErrorCode::Fatal)) {
            tracing::error!(%error, reason, "fatal Kafka producer error; rebuilding the producer");
            self.fatal.store(true, Ordering::SeqCst);
        } else {
            tracing::warn!(%error, reason, "Kafka client error");
        }
    }
}

type Inner = FutureProducer<ProducerContext>;

#[derive(Debug, thiserror::Error)]
pub enum SendError {
    #[error("the producer's queue is nearly full")]
    QueueFull,
    #[error("the producer hit a fatal error and is being rebuilt")]
    Fatal,
    #[error("Kafka did not acknowledge in time")]
    Timeout,
    #[error("Kafka refused the message: {0}")]
    Kafka(#[source] KafkaError),
}

/// The shared producer.
pub struct Producer {
    current: RwLock<(Arc<Inner>, ProducerContext)>,
    config: ClientConfig,
    /// The cluster answered the last health probe.
    reachable: AtomicBool,
    metrics: Arc<Metrics>,
}

impl std::fmt::Debug for Producer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Producer")
            .field("reachable", &self.reachable.load(Ordering::Relaxed))
            .finish()
    }
}

impl Producer {
    /// `base` holds the brokers and the user's options; the guarantees are set on top.
    pub fn new(base: &ClientConfig, metrics: Arc<Metrics>) -> Result<Arc<Self>, KafkaError> {
        let mut config = ClientConfig::new();
        // Defaults a user may change in `[kafka.options]` …
        config.set("linger.ms", "5");
        config.set("message.timeout.ms", "60000");
        config.set(
            "queue.buffering.max.messages",
            QUEUE_MAX_MESSAGES.to_string(),
        );
        for (k, v) in base.config_map() {
            config.set(k, v);
        }
        // … and the settings the 2xx promise rests on, which they may not.
        config.set("enable.idempotence", "true");
        config.set("acks", "all");
        config.set("partitioner", crate::partitioner::PARTITIONER);
        let ctx = ProducerContext::default();
        let inner = config.create_with_context(ctx.clone())?;
        Ok(Arc::new(Self {
            current: RwLock::new((Arc::new(inner), ctx)),
            config,
            reachable: AtomicBool::new(false),
            metrics,
        }))
    }

    fn inner(&self) -> (Arc<Inner>, bool) {
        let guard = self.current.read().expect("producer lock poisoned");
        (guard.0.clone(), guard.1.fatal.load(Ordering::SeqCst))
    }

    /// Healthy and the cluster answers: ingest can accept webhooks.
    pub fn is_ready(&self) -> bool {
        let (_, fatal) = self.inner();
        !fatal && self.reachable.load(Ordering::SeqCst)
    }

    /// Queues one record (no payload: a tombstone); the future resolves on Kafka's delivery report.
    pub fn enqueue(
        &self,
        topic: &str,
        key: &str,
        payload: Option<&[u8]>,
    ) -> Result<DeliveryFuture, SendError> {
        self.enqueue_at(topic, None, key, payload)
    }

    /// As [`Producer::enqueue`], to a given partition (else the key's).
    pub fn enqueue_at(
        &self,
        topic: &str,
        partition: Option<i32>,
        key: &str,
        payload: Option<&[u8]>,
    ) -> Result<DeliveryFuture, SendError> {
        let (inner, fatal) = self.inner();
        if fatal {
            return Err(SendError::Fatal);
        }
        let mut record: FutureRecord<'_, str, [u8]> = FutureRecord::to(topic).key(key);
        if let Some(partition) = partition {
            record = record.partition(partition);
        }
        if let Some(payload) = payload {
            record = record.payload(payload);
        }
        inner.send_result(record).map_err(|(e, _)| match e {
            KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull) => SendError::QueueFull,
            KafkaError::MessageProduction(RDKafkaErrorCode::Fatal) => {
                self.mark_fatal();
                SendError::Fatal
            }
            e => SendError::Kafka(e),
        })
    }

    /// This producer instance can never deliver again: stop using it and rebuild.
    fn mark_fatal(&self) {
        let guard = self.current.read().expect("producer lock poisoned");
        guard.1.fatal.store(true, Ordering::SeqCst);
    }

    /// Whether `n` more messages would push the queue past 90 % (ingest answers 503 rather than
    /// start a request it may not finish).
    pub fn has_room_for(&self, n: usize) -> bool {
        let (inner, _) = self.inner();
        let used = inner.in_flight_count().max(0) as usize;
        used + n <= (QUEUE_MAX_MESSAGES as usize) * 9 / 10
    }

    /// Sends every record and waits for all delivery reports, up to `deadline`.
    pub async fn send_all(
        &self,
        records: &[(&str, &str, Vec<u8>)],
        deadline: Duration,
    ) -> Result<(), SendError> {
        if !self.has_room_for(records.len()) {
            return Err(SendError::QueueFull);
        }
        let futures = records
            .iter()
            .map(|(topic, key, payload)| self.enqueue(topic, key, Some(payload.as_slice())))
            .collect::<Result<Vec<_>, _>>()?;
        let reports = tokio::time::timeout(deadline, futures::future::join_all(futures))
            .await
            .map_err(|_| SendError::Timeout)?;
        for report in reports {
            match report {
                Ok(Ok(_)) => {}
                Ok(Err((e, _))) => return Err(SendError::Kafka(e)),
                Err(_canceled) => return Err(SendError::Kafka(KafkaError::Canceled)),
            }
        }
        Ok(())
    }

    /// Sends one record and retries (with backoff) until Kafka acknowledges it, or until
    /// `cancel` — then returns false and the caller's offset stays unstored, so the work is
    /// redone after a restart.
    pub async fn send_until_acked(
        &self,
        topic: &str,
        key: &str,
        payload: Option<&[u8]>,
        cancel: &CancellationToken,
    ) -> bool {
        self.send_until_acked_at(topic, None, key, payload, cancel)
            .await
    }

    /// As [`Producer::send_until_acked`], to a given partition (else the key's).
    pub async fn send_until_acked_at(
        &self,
        topic: &str,
        partition: Option<i32>,
        key: &str,
        payload: Option<&[u8]>,
        cancel: &CancellationToken,
    ) -> bool {
        until_acked(
            topic,
            || self.enqueue_at(topic, partition, key, payload),
            cancel,
        )
        .await
    }

    /// As [`Producer::flush`], blocking the calling thread (rebalance callbacks, which run inside
    /// a consumer's poll on a runtime worker: the runtime is told, so its other tasks — ingest
    /// answering webhooks — move to another worker meanwhile).
    pub fn flush_blocking(&self, timeout: Duration) {
        let (inner, _) = self.inner();
        let flush = || {
            if let Err(e) = inner.flush(timeout) {
                tracing::warn!(error = %e, "flush did not finish");
            }
        };
        let multi_thread = tokio::runtime::Handle::try_current()
            .is_ok_and(|h| h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread);
        if multi_thread {
            tokio::task::block_in_place(flush);
        } else {
            flush();
        }
    }

    /// Waits for everything queued to be acknowledged, at most `timeout`.
    pub async fn flush(&self, timeout: Duration) {
        let (inner, _) = self.inner();
        let _ = tokio::task::spawn_blocking(move || inner.flush(timeout)).await;
    }

    /// Probes the cluster every second (readiness) and rebuilds the producer after a fatal error.
    pub async fn supervise(self: Arc<Self>, probe_topic: String, cancel: CancellationToken) {
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = cancel.cancelled() => return,
            }
            let (inner, fatal) = self.inner();
            // librdkafka reports some fatal errors under their own code (e.g. an authorization
            // failure while acquiring the idempotence PID): ask it directly too.
            if fatal || inner.client().fatal_error().is_some() {
                self.mark_fatal();
                self.metrics.set_producer_ready(false);
                self.rebuild();
                continue;
            }
            let topic = probe_topic.clone();
            let reachable = tokio::task::spawn_blocking(move || {
                inner
                    .client()
                    .fetch_metadata(Some(&topic), Duration::from_secs(2))
                    .is_ok()
            })
            .await
            .unwrap_or(false);
            let was = self.reachable.swap(reachable, Ordering::SeqCst);
            if was != reachable {
                if reachable {
                    tracing::info!("Kafka answers; ready");
                } else {
                    tracing::warn!("Kafka does not answer; not ready");
                }
            }
            self.metrics.set_producer_ready(self.is_ready());
        }
    }

    fn rebuild(&self) {
        let ctx = ProducerContext::default();
        match self.config.create_with_context::<_, Inner>(ctx.clone()) {
            Ok(fresh) => {
                let old = {
                    let mut guard = self.current.write().expect("producer lock poisoned");
                    std::mem::replace(&mut *guard, (Arc::new(fresh), ctx))
                };
                tracing::info!("producer rebuilt after a fatal error");
                self.metrics.producer_rebuilt();
                // Dropping a producer waits on librdkafka; do it off the runtime.
                std::thread::spawn(move || drop(old));
            }
            Err(e) => tracing::error!(error = %e, "rebuilding the producer failed; will retry"),
        }
    }
}

/// Queues a write to `topic` with `enqueue` and waits for Kafka's acknowledgement; a failed write
/// is queued again, with backoff, until `abandon`. True once Kafka has it.
///
/// `enqueue` is called for every attempt, so a caller can queue the entry as it is then (the
/// dispatcher's ledger and backlog do: one lead's writes reach Kafka in the order of their
/// snapshots, so the last holds the latest state, and a retry never carries older state than a
/// write queued after it).
pub async fn until_acked(
    topic: &str,
    enqueue: impl Fn() -> Result<DeliveryFuture, SendError>,
    abandon: &CancellationToken,
) -> bool {
    let attempt = || async {
        match enqueue()?.await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err((e, _))) => Err(SendError::Kafka(e)),
            Err(_) => Err(SendError::Kafka(KafkaError::Canceled)),
        }
    };
    let backoff = ExponentialBuilder::default()
        .with_min_delay(Duration::from_millis(100))
        .with_max_delay(Duration::from_secs(10))
        .with_jitter()
        .without_max_times();
    let retried = attempt.retry(backoff).notify(
        |e, after| tracing::warn!(error = %e, ?after, topic, "write to Kafka failed; retrying"),
    );
    tokio::select! {
        result = retried => result.is_ok(),
        _ = abandon.cancelled() => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn base(options: &[(&str, &str)]) -> ClientConfig {
        let mut cfg = ClientConfig::new();
        cfg.set("bootstrap.servers", "127.0.0.1:1");
        for (k, v) in options {
            cfg.set(*k, *v);
        }
        cfg
    }

    #[test]
    fn tls_sasl_and_zstd_options_reach_librdkafka() {
        // librdkafka refuses these at creation unless built with OpenSSL and zstd.
        let ok = Producer::new(
            &base(&[
                ("security.protocol", "SASL_SSL"),
                ("sasl.mechanisms", "PLAIN"),
                ("sasl.username", "user"),
                ("sasl.password", "secret"),
                ("compression.type", "zstd"),
            ]),
            Arc::new(Metrics::new()),
        );
        assert!(ok.is_ok(), "{:?}", ok.err());
        // And they are really passed: a wrong value is librdkafka's error, naming the property.
        let err = Producer::new(
            &base(&[("security.protocol", "carrier_pigeon")]),
            Arc::new(Metrics::new()),
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("security.protocol"), "{err}");
    }
}
