//! Creates the daemon's topics at start when missing, with the right settings (compaction for
//! state and deliveries); where the broker does not allow it, says which topic is missing.

use std::time::Duration;

use rdkafka::ClientConfig;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::error::RDKafkaErrorCode;
use rdkafka::producer::{BaseProducer, Producer as _};

use super::Topics;

#[derive(Debug, thiserror::Error)]
pub enum TopicError {
    #[error("creating the admin client: {0}")]
    Client(#[source] rdkafka::error::KafkaError),
    #[error("topic `{topic}` is missing and could not be created: {reason}")]
    Missing { topic: String, reason: String },
    #[error("listing topics: {0}")]
    Metadata(#[source] rdkafka::error::KafkaError),
    #[error(
        "`{a}` has {a_n} partitions but `{b}` has {b_n}: they must match, because a lead's \
         state is read back from the partition with the number of its events' partition"
    )]
    NotCoPartitioned {
        a: String,
        a_n: usize,
        b: String,
        b_n: usize,
    },
}

/// The cluster's metadata: every topic and its partitions.
async fn metadata(base: &ClientConfig) -> Result<rdkafka::metadata::Metadata, TopicError> {
    let base = base.clone();
    tokio::task::spawn_blocking(move || {
        let client: BaseProducer = base.create()?;
        client
            .client()
            .fetch_metadata(None, Duration::from_secs(10))
    })
    .await
    .expect("metadata task panicked")
    .map_err(TopicError::Metadata)
}

/// Checks that each input topic and its changelog have the same number of partitions.
pub async fn check_copartitioned(base: &ClientConfig, topics: &Topics) -> Result<(), TopicError> {
    let metadata = metadata(base).await?;
    let count = |name: &str| {
        metadata
            .topics()
            .iter()
            .find(|t| t.name() == name)
            .map_or(0, |t| t.partitions().len())
    };
    for (a, b) in [
        (&topics.events, &topics.state),
        (&topics.alerts, &topics.delivered),
        (&topics.alerts, &topics.retry),
    ] {
        let (a_n, b_n) = (count(a), count(b));
        if a_n != b_n {
            return Err(TopicError::NotCoPartitioned {
                a: a.clone(),
                a_n,
                b: b.clone(),
                b_n,
            });
        }
    }
    Ok(())
}

/// The topics of `topics` the cluster does not have yet.
async fn missing(base: &ClientConfig, topics: &Topics) -> Result<Vec<(String, bool)>, TopicError> {
    let metadata = metadata(base).await?;
    Ok(topics
        .all()
        .iter()
        .filter(|(name, _)| {
            !metadata
                .topics()
                .iter()
                .any(|t| t.name() == *name && t.error().is_none() && !t.partitions().is_empty())
        })
        .map(|(name, compacted)| (name.to_string(), *compacted))
        .collect())
}

/// Creates missing topics; existing ones are left as they are.
pub async fn ensure_topics(
    base: &ClientConfig,
    topics: &Topics,
    partitions: i32,
    replication: i32,
) -> Result<(), TopicError> {
    let wanted = missing(base, topics).await?;
    if wanted.is_empty() {
        return Ok(());
    }
    let admin: AdminClient<DefaultClientContext> = base.create().map_err(TopicError::Client)?;
    let new: Vec<NewTopic<'_>> = wanted
        .iter()
        .map(|(name, compacted)| {
            let topic = NewTopic::new(name, partitions, TopicReplication::Fixed(replication));
            if *compacted {
                topic.set("cleanup.policy", "compact")
            } else {
                topic
            }
        })
        .collect();
    let opts = AdminOptions::new()
        .operation_timeout(Some(Duration::from_secs(10)))
        .request_timeout(Some(Duration::from_secs(15)));
    let reason = match admin.create_topics(new.iter(), &opts).await {
        Ok(results) => {
            let mut refused = Vec::new();
            for result in results {
                match result {
                    Ok(topic) => tracing::info!(%topic, "created topic"),
                    Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
                    Err((topic, code)) => refused.push(format!("{topic}: {code}")),
                }
            }
            if refused.is_empty() {
                return Ok(());
            }
            refused.join(", ")
        }
        Err(e) => e.to_string(),
    };
    match missing(base, topics).await?.into_iter().next() {
        None => Ok(()),
        Some((topic, _)) => Err(TopicError::Missing { topic, reason }),
    }
}
