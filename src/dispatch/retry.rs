//! Retrying one delivery: exponential backoff with jitter (`backon`), the sink's `Retry-After`
//! honoured (clamped), permanent errors not retried.

use std::sync::Arc;
use std::time::Duration;

use backon::{ExponentialBuilder, Retryable};
use bytes::Bytes;

use super::sink::{DeliveryError, Sink};
use crate::alert::Alert;
use crate::config::DispatchConfig;
use crate::telemetry::Metrics;

/// The longest `Retry-After` we honour; a sink asking for more gets this.
const MAX_RETRY_AFTER: Duration = Duration::from_secs(3600);

#[derive(Debug, Clone)]
pub struct RetryPolicy {
    pub min_delay: Duration,
    pub max_delay: Duration,
    pub max_retries: usize,
}

impl From<&DispatchConfig> for RetryPolicy {
    fn from(c: &DispatchConfig) -> Self {
        Self {
            min_delay: *c.retry_min_delay,
            max_delay: *c.retry_max_delay,
            max_retries: c.max_retries,
        }
    }
}

impl RetryPolicy {
    pub async fn deliver(
        &self,
        name: &str,
        sink: &Sink,
        alert: &Alert,
        body: &Bytes,
        metrics: &Arc<Metrics>,
    ) -> Result<(), DeliveryError> {
        let backoff = ExponentialBuilder::default()
            .with_min_delay(self.min_delay)
            .with_max_delay(self.max_delay)
            .with_max_times(self.max_retries)
            .with_jitter();
        (|| sink.deliver(alert, body))
            .retry(backoff)
            .when(|e: &DeliveryError| e.retriable)
            .adjust(|e: &DeliveryError, planned| match e.retry_after {
                Some(asked) => planned.map(|_| asked.min(MAX_RETRY_AFTER)),
                None => planned,
            })
            .notify(|e: &DeliveryError, after: Duration| {
                metrics.delivery(name, "retried");
                tracing::warn!(sink = name, alert_id = %alert.id(), error = %e, ?after, "delivery failed; retrying");
            })
            .await
    }
}
