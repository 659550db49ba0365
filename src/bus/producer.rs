//! The Kafka producer the roles write through: idempotent, acks=all, a few milliseconds of
//! linger so concurrent sends batch. The daemon runs one per role, built alike (`app`): no burst
//! of the engine's or the dispatcher's writes can take ingest's queue, and a revocation in one
//! consumer group purges ([`Producer::settle_revocation`]) only its own role's writes. It
//! watches its own health (readiness) and rebuilds itself
//! after a fatal error instead of answering 2xx on top of a broken idempotence sequence.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock, RwLock};
use std::time::Duration;

use backon::{ExponentialBuilder, Retryable};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, Message as _, OwnedHeaders, OwnedMessage};
use rdkafka::producer::{DeliveryFuture, FutureProducer, FutureRecord, Producer as _, PurgeConfig};
use rdkafka::{ClientConfig, ClientContext};
use tokio_util::sync::CancellationToken;

use super::backlog::{Backlog, Fullest};
use crate::clock::Clock;
use crate::telemetry::Metrics;

/// Most messages the producer queues before ingest answers 503 instead of queueing more.
const QUEUE_MAX_MESSAGES: i32 = 100_000;

/// The codec the producer compresses batches with unless `[kafka.options]` says otherwise.
pub const COMPRESSION: &str = "zstd";

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
    /// An error no retry can mend (see [`permanent`]).
    #[error("{0}")]
    Refused(Box<Refusal>),
    /// The embedded broker would trim records not consumed yet (see [`super::backlog`]).
    #[error(
        "{} [{}] holds {} bytes in {} records not consumed yet: the embedded broker trims a partition at 5 MiB",
        .0.topic, .0.partition, .0.bytes, .0.records
    )]
    Backlog(Fullest),
}

impl SendError {
    /// The error as Kafka gave it, classified: a refusal no retry can mend becomes
    /// [`SendError::Refused`] (with what was refused, from `record`).
    fn of(error: KafkaError, record: impl FnOnce() -> Record) -> Self {
        match permanent(&error) {
            Some(why) => SendError::Refused(Box::new(Refusal {
                error,
                why,
                record: record(),
            })),
            None => SendError::Kafka(error),
        }
    }
}

/// Why Kafka refused a record for good: the same record is refused again however often it is
/// sent, so it is never retried forever (see [`Producer::until_acked`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Permanent {
    /// Over the producer's or the broker's `message.max.bytes` (or the topic's
    /// `max.message.bytes`).
    TooLarge,
    /// A record the broker cannot take as it is (corrupt, bad timestamp, a format or compression
    /// it does not support, a policy that forbids it).
    Invalid,
    /// This client may not write to the topic (ACLs, SASL).
    NotAuthorized,
}

impl Permanent {
    /// The metric label and log word.
    pub fn label(self) -> &'static str {
        match self {
            Permanent::TooLarge => "too_large",
            Permanent::Invalid => "invalid_record",
            Permanent::NotAuthorized => "not_authorized",
        }
    }
}

/// Whether `error` is one no retry can mend, and why. Everything else (timeouts, leaders
/// moving, brokers down, a full queue) may succeed later and is retried. A cluster-level
/// authorization failure is not listed: for the idempotent producer it is fatal, and the
/// producer is rebuilt ([`Producer::supervise`]) rather than the record given up.
pub fn permanent(error: &KafkaError) -> Option<Permanent> {
    use RDKafkaErrorCode as C;
    let code = error.rdkafka_error_code()?;
    Some(match code {
        C::MessageSizeTooLarge | C::InvalidMessageSize | C::MessageBatchTooLarge => {
            Permanent::TooLarge
        }
        C::InvalidMessage
        | C::BadMessage
        | C::InvalidRecord
        | C::InvalidTimestamp
        | C::InvalidRequiredAcks
        | C::InvalidTopic
        | C::UnsupportedForMessageFormat
        | C::UnsupportedCompressionType
        | C::PolicyViolation
        | C::KeySerialization
        | C::ValueSerialization => Permanent::Invalid,
        C::TopicAuthorizationFailed
        | C::TransactionalIdAuthorizationFailed
        | C::SaslAuthenticationFailed
        | C::Authentication => Permanent::NotAuthorized,
        _ => return None,
    })
}

/// How much of a refused record a quarantine record keeps.
const EXCERPT_BYTES: usize = 512;

/// What a refused record was: enough to find and judge it, not the record itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    pub topic: String,
    /// Where it was sent, when a partition was named (else its key's).
    pub partition: Option<i32>,
    pub key: String,
    /// Its payload's size (0: a tombstone).
    pub bytes: usize,
    /// The start of its payload, lossily as text.
    pub excerpt: String,
}

impl Record {
    fn new(
        topic: &str,
        partition: Option<i32>,
        key: Option<&[u8]>,
        payload: Option<&[u8]>,
    ) -> Self {
        let payload = payload.unwrap_or_default();
        Self {
            topic: topic.to_string(),
            partition,
            key: String::from_utf8_lossy(key.unwrap_or_default()).into_owned(),
            bytes: payload.len(),
            excerpt: String::from_utf8_lossy(&payload[..payload.len().min(EXCERPT_BYTES)])
                .into_owned(),
        }
    }

    fn of_message(message: &OwnedMessage) -> Self {
        let partition = (message.partition() >= 0).then_some(message.partition());
        Self::new(message.topic(), partition, message.key(), message.payload())
    }
}

/// A record Kafka refused for good, and why.
#[derive(Debug)]
pub struct Refusal {
    pub error: KafkaError,
    pub why: Permanent,
    pub record: Record,
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "Kafka refused a record of {} bytes for {} (key {:?}) for good ({}): {}",
            self.record.bytes,
            self.record.topic,
            self.record.key,
            self.why.label(),
            self.error
        )
    }
}

/// How a write ended.
#[derive(Debug)]
pub enum Written {
    /// Kafka has it.
    Acked,
    /// Kafka refused it for good: retrying cannot help.
    Refused(Box<Refusal>),
    /// Given up (the grace period ended, or the partition moved).
    Abandoned,
}

/// Where records Kafka refuses for good are quarantined, and the clock that dates them.
struct Quarantine {
    topic: String,
    clock: Clock,
}

/// A record that could not be read, and where it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unreadable {
    pub topic: String,
    pub partition: i32,
    /// Its offset, where known (a changelog read back keeps only each key's latest value).
    pub offset: Option<i64>,
    /// Its key, where it matters (a changelog's record is found by it).
    pub key: Option<String>,
    /// Why it could not be read.
    pub reason: String,
}

/// The pseudo-sink of a quarantine record in the dead-letter topic: not a valid sink name, so
/// `dlq replay` of any sink passes it over.
pub const QUARANTINE_SINK: &str = "(quarantine)";

/// A producer and its health.
pub struct Producer {
    current: RwLock<(Arc<Inner>, ProducerContext)>,
    config: ClientConfig,
    /// The cluster answered the last health probe.
    reachable: AtomicBool,
    metrics: Arc<Metrics>,
    /// How many records librdkafka's queue holds (`queue.buffering.max.messages`, the user's
    /// if set): what [`Producer::has_room_for`] measures against.
    queue_max: usize,
    /// Where refused records go ([`Producer::quarantine_to`]); unset: they are only logged and
    /// counted.
    quarantine: OnceLock<Quarantine>,
    /// What is produced and not yet consumed, per partition, against the embedded broker's
    /// limits ([`Producer::guard_backlog`]); unset on a real cluster.
    backlog: OnceLock<Arc<Backlog>>,
    /// Its name in metrics and logs ([`Producer::name`]: `ingest`, `engine`, `dispatch`).
    name: OnceLock<&'static str>,
}

/// How long a revocation waits for a role's writes to be acknowledged before what is left is
/// purged (or, when kept partitions share the queue, left to land late):
/// [`Producer::settle_revocation`]'s timeout for the engine and the dispatcher alike.
pub const REVOKE_FLUSH: Duration = Duration::from_secs(5);

/// How a revocation left what the producer held ([`Producer::settle_revocation`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Settled {
    /// Everything queued was acknowledged.
    Flushed,
    /// The flush did not finish; what was left was purged: about this many records, which will
    /// not reach Kafka (those already on the wire may still land).
    Purged(u64),
    /// The flush did not finish and nothing was purged (records of partitions the member keeps
    /// share the queue): what was left may land after the next owner restored.
    Left,
}

/// A record on its way: resolves to Kafka's delivery report, as [`DeliveryFuture`] does, and
/// accounts the record in the backlog when one is kept for its topic.
pub struct Queued {
    future: DeliveryFuture,
    /// The backlog, the topic and the record's bytes, when accounted.
    note: Option<(Arc<Backlog>, String, u64)>,
}

impl std::future::Future for Queued {
    type Output = <DeliveryFuture as std::future::Future>::Output;

    fn poll(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Self::Output> {
        let out = std::pin::Pin::new(&mut self.future).poll(cx);
        if let std::task::Poll::Ready(Ok(Ok(delivered))) = &out
            && let Some((backlog, topic, bytes)) = self.note.take()
        {
            backlog.produced(&topic, delivered.partition, delivered.offset, bytes);
        }
        out
    }
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
        // Batches compressed: a lead's state records repeat their field names and much of the
        // lead, and vendor payloads (`.events`, `.raw`) are verbose JSON. A producer writes
        // several topics, so this holds for all of them (librdkafka has no per-topic setting for
        // a shared producer); the linger above gives a batch something to compress.
        config.set("compression.type", COMPRESSION);
        config.set("message.timeout.ms", "60000");
        config.set(
            "queue.buffering.max.messages",
            QUEUE_MAX_MESSAGES.to_string(),
        );
        for (k, v) in base.config_map() {
            config.set(k, v);
        }
        // `compression.codec` is librdkafka's other name for it: the user's choice, not two.
        if base.get("compression.codec").is_some() && base.get("compression.type").is_none() {
            config.remove("compression.type");
        }
        // … and the settings the 2xx promise rests on, which they may not.
        config.set("enable.idempotence", "true");
        config.set("acks", "all");
        config.set("partitioner", crate::partitioner::PARTITIONER);
        let ctx = ProducerContext::default();
        let inner = config.create_with_context(ctx.clone())?;
        // A value librdkafka took (it refuses one it cannot read, above).
        let queue_max = config
            .get("queue.buffering.max.messages")
            .and_then(|v| v.parse().ok())
            .unwrap_or(QUEUE_MAX_MESSAGES as usize);
        Ok(Arc::new(Self {
            current: RwLock::new((Arc::new(inner), ctx)),
            config,
            reachable: AtomicBool::new(false),
            metrics,
            queue_max,
            quarantine: OnceLock::new(),
            backlog: OnceLock::new(),
            name: OnceLock::new(),
        }))
    }

    /// Names the producer in metrics and logs. Set once; later calls are ignored.
    pub fn name(&self, name: &'static str) {
        let _ = self.name.set(name);
    }

    fn label(&self) -> &'static str {
        self.name.get().copied().unwrap_or("producer")
    }

    /// Keeps `backlog` (the embedded broker's limits): writes that could push a partition a
    /// consumer group of this process reads past it are refused ([`SendError::Backlog`]).
    pub fn guard_backlog(&self, backlog: Arc<Backlog>) {
        let _ = self.backlog.set(backlog);
    }

    /// The backlog kept, if any (the consumer-group skeleton reports what it consumed to it).
    pub fn backlog(&self) -> Option<&Arc<Backlog>> {
        self.backlog.get()
    }

    /// Holds room in the backlog kept (if any) for `records` (topic, key, payload), or refuses.
    fn reserve_backlog(
        &self,
        records: &[(&str, &str, Vec<u8>)],
    ) -> Result<Option<super::backlog::Reserved<'_>>, SendError> {
        let Some(backlog) = self.backlog.get() else {
            return Ok(None);
        };
        let writes: Vec<(&str, u64, u64)> = records
            .iter()
            .map(|(topic, key, payload)| (*topic, 1, (key.len() + payload.len()) as u64))
            .collect();
        let reserved = backlog.reserve(&writes);
        for (topic, bytes) in backlog.fullest_per_topic() {
            self.metrics
                .set_embedded_backlog(&topic, i64::try_from(bytes).unwrap_or(i64::MAX));
        }
        reserved.map(Some).map_err(SendError::Backlog)
    }

    /// Quarantines records Kafka refuses for good to `topic` (the dead-letter topic), dated by
    /// `clock`. Set once; later calls are ignored.
    pub fn quarantine_to(&self, topic: &str, clock: Clock) {
        let _ = self.quarantine.set(Quarantine {
            topic: topic.to_string(),
            clock,
        });
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
    ) -> Result<Queued, SendError> {
        self.enqueue_at(topic, None, key, payload)
    }

    /// As [`Producer::enqueue`], to a given partition (else the key's).
    pub fn enqueue_at(
        &self,
        topic: &str,
        partition: Option<i32>,
        key: &str,
        payload: Option<&[u8]>,
    ) -> Result<Queued, SendError> {
        self.enqueue_stamped(topic, partition, key, payload, None)
    }

    /// As [`Producer::enqueue_at`], a changelog record written by partition generation
    /// `generation`: a record carries it in its value's stamp already; a tombstone (no payload)
    /// carries it in its header ([`crate::stamp::TOMBSTONE_HEADER`]), so a restore tells an
    /// earlier owner's late tombstone from the current owner's.
    pub fn enqueue_as(
        &self,
        generation: u64,
        topic: &str,
        partition: Option<i32>,
        key: &str,
        payload: Option<&[u8]>,
    ) -> Result<Queued, SendError> {
        self.enqueue_stamped(topic, partition, key, payload, Some(generation))
    }

    fn enqueue_stamped(
        &self,
        topic: &str,
        partition: Option<i32>,
        key: &str,
        payload: Option<&[u8]>,
        generation: Option<u64>,
    ) -> Result<Queued, SendError> {
        let (inner, fatal) = self.inner();
        if fatal {
            return Err(SendError::Fatal);
        }
        let mut record: FutureRecord<'_, str, [u8]> = FutureRecord::to(topic).key(key);
        if let Some(partition) = partition {
            record = record.partition(partition);
        }
        let stamp;
        match (payload, generation) {
            (Some(payload), _) => record = record.payload(payload),
            (None, Some(generation)) => {
                stamp = crate::stamp::header(generation);
                record = record.headers(OwnedHeaders::new().insert(Header {
                    key: crate::stamp::TOMBSTONE_HEADER,
                    value: Some(stamp.as_slice()),
                }));
            }
            (None, None) => {}
        }
        let note = self.backlog.get().filter(|b| b.watches(topic)).map(|b| {
            let bytes = key.len() + payload.map_or(0, <[u8]>::len);
            (b.clone(), topic.to_string(), bytes as u64)
        });
        let future = inner.send_result(record).map_err(|(e, record)| match e {
            KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull) => SendError::QueueFull,
            KafkaError::MessageProduction(RDKafkaErrorCode::Fatal) => {
                self.mark_fatal();
                SendError::Fatal
            }
            // librdkafka refuses a record over `message.max.bytes` before sending it.
            e => SendError::of(e, || {
                Record::new(
                    topic,
                    partition,
                    record.key.map(str::as_bytes),
                    record.payload,
                )
            }),
        })?;
        Ok(Queued { future, note })
    }

    /// This producer instance can never deliver again: stop using it and rebuild.
    fn mark_fatal(&self) {
        let guard = self.current.read().expect("producer lock poisoned");
        guard.1.fatal.store(true, Ordering::SeqCst);
    }

    /// Whether `n` more messages would push the queue past 90 % (ingest answers 503 rather than
    /// start a request it may not finish).
    /// On the embedded broker, also whether `n` more records fit in the backlog of every
    /// partition a consumer group of this process reads (see [`super::backlog`]).
    pub fn has_room_for(&self, n: usize) -> bool {
        n <= self.room()
    }

    /// How many more messages the queue takes before it is 90 % full (0 on the embedded broker
    /// while a partition's backlog is full): what a burst of writes is paced by.
    pub fn room(&self) -> usize {
        if self.backlog.get().is_some_and(|b| b.any_full()) {
            return 0;
        }
        let (inner, _) = self.inner();
        let used = inner.in_flight_count().max(0) as usize;
        (self.queue_max * 9 / 10).saturating_sub(used)
    }

    /// Sends every record and waits for all delivery reports, up to `deadline`.
    pub async fn send_all(
        &self,
        records: &[(&str, &str, Vec<u8>)],
        deadline: Duration,
    ) -> Result<(), SendError> {
        // Held until every delivery report is in (they account what was written).
        let _room = self.reserve_backlog(records)?;
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
                Ok(Err((e, message))) => {
                    return Err(SendError::of(e, || Record::of_message(&message)));
                }
                Err(_canceled) => return Err(SendError::Kafka(KafkaError::Canceled)),
            }
        }
        Ok(())
    }

    /// Sends one record and retries (with backoff) until Kafka acknowledges it, or until
    /// `cancel` — then returns false and the caller's offset stays unstored, so the work is
    /// redone after a restart. A record Kafka refuses for good is quarantined instead
    /// ([`Producer::until_acked`]): true, the caller moves on.
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
        self.until_acked(
            topic,
            || self.enqueue_at(topic, partition, key, payload),
            cancel,
        )
        .await
    }

    /// Sends one changelog record of partition generation `generation` (a tombstone carries it
    /// in its header: [`Producer::enqueue_as`]), retrying what may succeed later, until Kafka
    /// acknowledges it, refuses it for good, or `abandon`: the caller decides what a refusal
    /// means.
    pub async fn write(
        &self,
        generation: u64,
        topic: &str,
        key: &str,
        payload: Option<&[u8]>,
        abandon: &CancellationToken,
    ) -> Written {
        write_with(
            topic,
            || self.enqueue_as(generation, topic, None, key, payload),
            abandon,
        )
        .await
    }

    /// Queues a write to `topic` with `enqueue` and waits for Kafka's acknowledgement; a failed
    /// write is queued again, with backoff, until `abandon`. True once Kafka has it — or once a
    /// record Kafka refused for good (too large, invalid, not authorized) is quarantined: it is
    /// never retried forever, so the work waiting on it moves on.
    ///
    /// `enqueue` is called for every attempt, so a caller can queue the entry as it is then (the
    /// dispatcher's ledger and backlog do: one lead's writes reach Kafka in the order of their
    /// snapshots, so the last holds the latest state, and a retry never carries older state than
    /// a write queued after it).
    pub async fn until_acked(
        &self,
        topic: &str,
        enqueue: impl Fn() -> Result<Queued, SendError>,
        abandon: &CancellationToken,
    ) -> bool {
        match write_with(topic, enqueue, abandon).await {
            Written::Acked => true,
            Written::Abandoned => false,
            Written::Refused(refusal) => self.quarantine(&refusal, abandon).await,
        }
    }

    /// Quarantines a refused record: logs what and why, counts it, and writes a small
    /// reference to it (topic, partition, key, size, the start of its payload, the reason) to
    /// the dead-letter topic. True once that is written, or when no retry could write it
    /// either (logged: it must not wedge what waits on it); false only when abandoned.
    pub async fn quarantine(&self, refusal: &Refusal, abandon: &CancellationToken) -> bool {
        let Record {
            topic,
            partition,
            key,
            bytes,
            excerpt,
        } = &refusal.record;
        self.metrics.record_quarantined(topic, refusal.why.label());
        tracing::error!(
            topic = %topic,
            partition = ?partition,
            key = %key,
            bytes,
            reason = refusal.why.label(),
            error = %refusal.error,
            "Kafka refused a record for good; it is quarantined to the dead-letter topic and the work that waited on it moves on"
        );
        let Some(quarantine) = self.quarantine.get() else {
            return true;
        };
        let letter = serde_json::json!({
            "sink": QUARANTINE_SINK,
            "alert": null,
            "attempts": 0,
            "error": format!("{}: {}", refusal.why.label(), refusal.error),
            "body_excerpt": excerpt,
            "dead_at": quarantine.clock.now(),
            "quarantined": {
                "topic": topic,
                "partition": partition,
                "key": key,
                "bytes": bytes,
                "reason": refusal.why.label(),
            },
        });
        self.write_letter(&quarantine.topic, key, &letter, abandon)
            .await
    }

    /// Dead-letters a record that could not be read: logs where it is and why, counts it
    /// (`leadwatch_kafka_records_unreadable_total{topic}`), and writes a reference (topic,
    /// partition, offset or key, reason) to the dead-letter topic. True once that is written
    /// (or when no dead-letter topic is set, or it was refused too: logged); false only when
    /// abandoned — the record's offset then stays unstored and it is read again.
    pub async fn dead_letter(&self, record: &Unreadable, abandon: &CancellationToken) -> bool {
        let Unreadable {
            topic,
            partition,
            offset,
            key,
            reason,
        } = record;
        self.metrics.record_unreadable(topic);
        tracing::error!(
            topic = %topic,
            partition,
            offset = ?offset,
            key = ?key,
            %reason,
            "a record could not be read; it is dead-lettered and skipped"
        );
        let Some(quarantine) = self.quarantine.get() else {
            return true;
        };
        let letter = serde_json::json!({
            "sink": QUARANTINE_SINK,
            "alert": null,
            "attempts": 0,
            "error": format!("unreadable: {reason}"),
            "body_excerpt": null,
            "dead_at": quarantine.clock.now(),
            "unreadable": {
                "topic": topic,
                "partition": partition,
                "offset": offset,
                "key": key,
                "reason": reason,
            },
        });
        let dlq_key = key
            .clone()
            .unwrap_or_else(|| format!("{topic}/{partition}/{}", offset.unwrap_or(-1)));
        self.write_letter(&quarantine.topic, &dlq_key, &letter, abandon)
            .await
    }

    /// Writes `letter` to the dead-letter topic `dlq` until acknowledged (see
    /// [`Producer::quarantine`] for what true and false mean).
    async fn write_letter(
        &self,
        dlq: &str,
        key: &str,
        letter: &serde_json::Value,
        abandon: &CancellationToken,
    ) -> bool {
        let letter = serde_json::to_vec(letter).expect("a dead letter serializes");
        match write_with(
            dlq,
            || self.enqueue_at(dlq, None, key, Some(&letter)),
            abandon,
        )
        .await
        {
            Written::Acked => true,
            Written::Abandoned => false,
            Written::Refused(again) => {
                tracing::error!(error = %again, "the dead letter was refused too; only this log line keeps it");
                true
            }
        }
    }

    /// At a revocation, before the partitions move (blocking: a rebalance callback, run off the
    /// runtime's other tasks by `bus::consumer`): waits up to `timeout` for everything queued to
    /// be acknowledged, so the next owner's restore reads every write made so far. When that
    /// does not finish (the broker unreachable, requests failing) and `may_purge`, what the
    /// producer still holds is purged — dropped unsent, so it cannot land after the next owner
    /// restored — and counted (`leadwatch_producer_purged_total{producer}`). librdkafka purges a
    /// producer's whole queue, not one partition's: the caller allows it only when every write
    /// queued is the revoked partitions' (the member keeps no other partition of its group, and
    /// those partitions' writes were stopped first, so no retry queues them again).
    pub fn settle_revocation(&self, timeout: Duration, may_purge: bool) -> Settled {
        let (inner, _) = self.inner();
        let Err(e) = inner.flush(timeout) else {
            return Settled::Flushed;
        };
        let held = u64::try_from(inner.in_flight_count()).unwrap_or(0);
        if !may_purge {
            tracing::warn!(error = %e, producer = self.label(), held, "a revocation's flush did not finish; the member keeps other partitions, whose writes share the queue, so nothing is purged: what is left may land after the next owner restored");
            return Settled::Left;
        }
        inner.purge(PurgeConfig::default().queue().inflight());
        // The purged records' delivery reports (their writers learn they were purged).
        let _ = inner.flush(Duration::from_millis(500));
        self.metrics.producer_purged(self.label(), held);
        tracing::warn!(error = %e, producer = self.label(), held, "a revocation's flush did not finish; what the producer held is purged, so it cannot land after the next owner restored");
        Settled::Purged(held)
    }

    /// Waits for everything queued to be acknowledged, at most `timeout`.
    pub async fn flush(&self, timeout: Duration) {
        let (inner, _) = self.inner();
        let _ = tokio::task::spawn_blocking(move || inner.flush(timeout)).await;
    }

    /// Probes the cluster every second (readiness, `leadwatch_producer_ready{producer=name}`) and
    /// rebuilds the producer after a fatal error.
    pub async fn supervise(
        self: Arc<Self>,
        name: &'static str,
        probe_topic: String,
        cancel: CancellationToken,
    ) {
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
                self.metrics.set_producer_ready(name, false);
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
            self.metrics.set_producer_ready(name, self.is_ready());
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

/// Queues a write to `topic` with `enqueue` and waits for Kafka's acknowledgement; a failed
/// write is queued again, with backoff, until it is acknowledged, refused for good, or
/// `abandon`.
async fn write_with(
    topic: &str,
    enqueue: impl Fn() -> Result<Queued, SendError>,
    abandon: &CancellationToken,
) -> Written {
    let attempt = || async {
        match enqueue()?.await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err((e, message))) => Err(SendError::of(e, || Record::of_message(&message))),
            Err(_) => Err(SendError::Kafka(KafkaError::Canceled)),
        }
    };
    let backoff = ExponentialBuilder::default()
        .with_min_delay(Duration::from_millis(100))
        .with_max_delay(Duration::from_secs(10))
        .with_jitter()
        .without_max_times();
    let retried = attempt
        .retry(backoff)
        .when(|e| !matches!(e, SendError::Refused(_)))
        .notify(
            |e, after| tracing::warn!(error = %e, ?after, topic, "write to Kafka failed; retrying"),
        );
    tokio::select! {
        result = retried => match result {
            Ok(()) => Written::Acked,
            Err(SendError::Refused(refusal)) => Written::Refused(refusal),
            // Only a refusal ends the retries; whatever else, the offset stays unstored.
            Err(e) => {
                tracing::error!(error = %e, topic, "write to Kafka given up");
                Written::Abandoned
            }
        },
        _ = abandon.cancelled() => Written::Abandoned,
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
    fn errors_no_retry_can_mend_are_told_from_those_that_pass() {
        use RDKafkaErrorCode as C;
        let produced = |code| permanent(&KafkaError::MessageProduction(code));
        for (code, why) in [
            (C::MessageSizeTooLarge, Permanent::TooLarge),
            (C::MessageBatchTooLarge, Permanent::TooLarge),
            (C::InvalidMessageSize, Permanent::TooLarge),
            (C::InvalidRecord, Permanent::Invalid),
            (C::InvalidMessage, Permanent::Invalid),
            (C::InvalidTimestamp, Permanent::Invalid),
            (C::PolicyViolation, Permanent::Invalid),
            (C::TopicAuthorizationFailed, Permanent::NotAuthorized),
            (C::SaslAuthenticationFailed, Permanent::NotAuthorized),
        ] {
            assert_eq!(produced(code), Some(why), "{code:?}");
        }
        for code in [
            C::MessageTimedOut,
            C::RequestTimedOut,
            C::NotLeaderForPartition,
            C::LeaderNotAvailable,
            C::NotEnoughReplicas,
            C::BrokerTransportFailure,
            C::AllBrokersDown,
            C::QueueFull,
            C::UnknownTopicOrPartition,
            // Fatal for the idempotent producer: it is rebuilt, the record retried.
            C::ClusterAuthorizationFailed,
            C::Fatal,
        ] {
            assert_eq!(produced(code), None, "{code:?} may pass on a retry");
        }
        assert_eq!(permanent(&KafkaError::Canceled), None);
    }

    /// A record over the producer's `message.max.bytes` (refused before it is sent) and one the
    /// broker refuses as too large (in its delivery report) are quarantined: the write returns,
    /// and the dead-letter topic holds a small reference saying what and why.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_record_kafka_refuses_for_good_is_quarantined_not_retried_forever() {
        use rdkafka::types::{RDKafkaApiKey, RDKafkaRespErr};
        let kafka =
            crate::bus::embedded::EmbeddedKafka::start(&[("state".into(), 1), ("dlq".into(), 1)])
                .unwrap();
        let mut cfg = ClientConfig::new();
        cfg.set("bootstrap.servers", kafka.bootstrap());
        cfg.set("message.max.bytes", "20000");
        let metrics = Arc::new(Metrics::new());
        let producer = Producer::new(&cfg, metrics.clone()).unwrap();
        producer.quarantine_to("dlq", Clock::system());
        let never = CancellationToken::new();
        let big = vec![b'x'; 50_000];
        let settled = tokio::time::timeout(
            Duration::from_secs(30),
            producer.send_until_acked("state", "L-big", Some(&big), &never),
        )
        .await
        .expect("not retried forever");
        assert!(settled, "quarantined: the caller moves on");
        // The broker refuses the next produce request as too large.
        kafka.request_errors(
            RDKafkaApiKey::Produce,
            &[RDKafkaRespErr::RD_KAFKA_RESP_ERR_MSG_SIZE_TOO_LARGE],
        );
        let settled = tokio::time::timeout(
            Duration::from_secs(30),
            producer.send_until_acked("state", "L-refused", Some(b"{}"), &never),
        )
        .await
        .expect("not retried forever");
        assert!(settled);
        let text = metrics.encode();
        assert!(
            text.contains(
                "leadwatch_kafka_records_quarantined_total{topic=\"state\",reason=\"too_large\"} 2"
            ),
            "{text}"
        );

        let letters = tokio::task::spawn_blocking(move || {
            crate::bus::changelog::read_partition(
                &cfg,
                "dlq",
                0,
                Duration::from_secs(20),
                &Clock::system(),
            )
            .unwrap()
            .records
        })
        .await
        .unwrap();
        let letter: serde_json::Value = serde_json::from_slice(&letters["L-big"]).unwrap();
        assert_eq!(letter["sink"], QUARANTINE_SINK);
        assert_eq!(letter["quarantined"]["topic"], "state");
        assert_eq!(letter["quarantined"]["bytes"], 50_000);
        assert_eq!(letter["quarantined"]["reason"], "too_large");
        assert!(letter["body_excerpt"].as_str().unwrap().len() <= EXCERPT_BYTES);
        assert!(letters.contains_key("L-refused"));
    }

    /// Reads partition `partition` of `topic` back (the last record per key).
    async fn landed(cfg: &ClientConfig, topic: &str, partition: i32) -> Vec<String> {
        let (cfg, topic) = (cfg.clone(), topic.to_string());
        let folded = tokio::task::spawn_blocking(move || {
            crate::bus::changelog::read_partition(
                &cfg,
                &topic,
                partition,
                Duration::from_secs(20),
                &Clock::system(),
            )
            .unwrap()
        })
        .await
        .unwrap();
        let mut keys: Vec<String> = folded.records.keys().cloned().collect();
        keys.sort();
        keys
    }

    /// A revocation whose flush cannot finish (the broker is down) purges what the producer
    /// holds when the member keeps no other partition: once the broker is back, the revoked
    /// partition's queued record never lands (before, librdkafka sent it then: after the next
    /// owner had restored, over its newer record). The producer goes on writing after the
    /// purge. When the member keeps other partitions, whose writes share the queue, nothing
    /// is purged: their records are not lost.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_revocation_whose_flush_cannot_finish_purges_what_would_land_late() {
        use rdkafka::error::RDKafkaErrorCode as C;
        let kafka = crate::bus::embedded::EmbeddedKafka::start(&[("state".into(), 2)]).unwrap();
        let mut cfg = ClientConfig::new();
        cfg.set("bootstrap.servers", kafka.bootstrap());
        let metrics = Arc::new(Metrics::new());
        let producer = Producer::new(&cfg, metrics.clone()).unwrap();
        producer.name("engine");
        let never = CancellationToken::new();
        let settle = |may_purge| {
            let producer = producer.clone();
            tokio::task::spawn_blocking(move || {
                producer.settle_revocation(Duration::from_millis(500), may_purge)
            })
        };
        for p in [0, 1] {
            assert!(
                producer
                    .send_until_acked_at("state", Some(p), "L-before", Some(b"1"), &never)
                    .await
            );
        }

        // Every partition revoked.
        kafka.broker_down();
        let late = producer
            .enqueue_at("state", Some(0), "L-late", Some(b"late"))
            .unwrap();
        let settled = settle(true).await.unwrap();
        assert!(
            matches!(settled, Settled::Purged(n) if n >= 1),
            "{settled:?}"
        );
        match late.await {
            Ok(Err((KafkaError::MessageProduction(C::PurgeQueue | C::PurgeInflight), _))) => {}
            other => panic!("the purged record's writer learns it was purged: {other:?}"),
        }
        kafka.broker_up();
        assert!(
            producer
                .send_until_acked_at("state", Some(0), "L-after", Some(b"2"), &never)
                .await,
            "the producer writes on after a purge"
        );
        assert_eq!(
            landed(&cfg, "state", 0).await,
            ["L-after", "L-before"],
            "the revoked partition's record, queued when its flush timed out, never lands"
        );
        assert!(
            metrics
                .encode()
                .contains("leadwatch_producer_purged_total{producer=\"engine\"}"),
            "{}",
            metrics.encode()
        );

        // Partition 0 revoked, partition 1 kept: its record is not purged, and lands.
        kafka.broker_down();
        let kept = producer
            .enqueue_at("state", Some(1), "L-kept", Some(b"kept"))
            .unwrap();
        assert_eq!(settle(false).await.unwrap(), Settled::Left);
        kafka.broker_up();
        assert!(
            matches!(kept.await, Ok(Ok(_))),
            "a kept partition's write lands"
        );
        assert_eq!(landed(&cfg, "state", 1).await, ["L-before", "L-kept"]);
    }

    /// What leadwatch writes is compressed on the broker without any setting (a lead's state
    /// records above all: issue 13's changelog bytes per lead are counted compressed), and a
    /// user's `compression.type` (another codec, or `none`) still wins.
    #[test]
    fn batches_are_compressed_unless_the_user_chose_otherwise() {
        let codec = |options: &[(&str, &str)]| {
            let producer = Producer::new(&base(options), Arc::new(Metrics::new())).unwrap();
            producer.config.get("compression.type").map(str::to_string)
        };
        assert_eq!(codec(&[]).as_deref(), Some("zstd"));
        assert_eq!(
            codec(&[("compression.type", "lz4")]).as_deref(),
            Some("lz4")
        );
        assert_eq!(
            codec(&[("compression.type", "none")]).as_deref(),
            Some("none")
        );
        assert_eq!(
            codec(&[("compression.codec", "lz4")]),
            None,
            "the user's alias alone"
        );
    }

    /// The room ingest keeps to answer 503 before librdkafka's queue is full is measured against
    /// the queue the producer really has: a user's `queue.buffering.max.messages` included.
    #[test]
    fn room_is_measured_against_the_configured_queue() {
        let room = |options: &[(&str, &str)], n| {
            Producer::new(&base(options), Arc::new(Metrics::new()))
                .unwrap()
                .has_room_for(n)
        };
        // (A fresh producer already counts a few of its own requests in its queue.)
        let small = [("queue.buffering.max.messages", "1000")];
        assert!(room(&small, 800), "800 of 1,000");
        assert!(!room(&small, 1000), "a full queue of 1,000 has no room");
        assert!(room(&[], 10_000), "the default queue");
        assert!(!room(&[], 100_000), "the default queue, full");
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
