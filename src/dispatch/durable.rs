//! Writing one lead's entry of the dispatcher's compacted topics — the delivery ledger
//! (`{prefix}.delivered`, [`super::ledger`]) and the retry backlog (`{prefix}.alerts.retry`,
//! [`super::backlog`]) — until Kafka has it.

use std::time::Duration;

use backon::{ExponentialBuilder, Retryable};
use rdkafka::error::KafkaError;
use rdkafka::producer::DeliveryFuture;
use tokio_util::sync::CancellationToken;

use crate::bus::producer::SendError;

/// Queues a write to `topic` with `enqueue` and waits for Kafka's acknowledgement; a failed write
/// is queued again, with backoff, until `abandon`. True once Kafka has it.
///
/// `enqueue` snapshots the entry as it is when the write is queued, every time: one lead's
/// writes reach Kafka in the order of their snapshots, so the last holds the latest state, and a
/// retry never carries older state than a write queued after it.
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
