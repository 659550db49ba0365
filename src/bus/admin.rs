//! Creates the daemon's topics at start when missing, with the right settings (compaction for
//! state and deliveries); where the broker does not allow it, checks that they exist.

use std::time::Duration;

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::error::RDKafkaErrorCode;
use rdkafka::ClientConfig;
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
}

/// Creates missing topics; existing ones are left as they are.
pub async fn ensure_topics(
    base: &ClientConfig,
    topics: &Topics,
    partitions: i32,
    replication: i32,
) -> Result<(), TopicError> {
    let admin: AdminClient<DefaultClientContext> = base.create().map_err(TopicError::Client)?;
    let new: Vec<NewTopic<'_>> = topics
        .all()
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
    let opts = AdminOptions::new().operation_timeout(Some(Duration::from_secs(10)));
    let results = match admin.create_topics(new.iter(), &opts).await {
        Ok(results) => results,
        Err(e) => {
            tracing::warn!(error = %e, "the broker did not create topics; checking they exist");
            return check_exist(base, topics, &e.to_string()).await;
        }
    };
    let mut refused = Vec::new();
    for result in results {
        match result {
            Ok(topic) => tracing::info!(%topic, "created topic"),
            Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((topic, code)) => refused.push((topic, code.to_string())),
        }
    }
    if refused.is_empty() {
        return Ok(());
    }
    let reason = refused
        .iter()
        .map(|(t, c)| format!("{t}: {c}"))
        .collect::<Vec<_>>()
        .join(", ");
    tracing::warn!(%reason, "topic creation refused; checking they exist");
    check_exist(base, topics, &reason).await
}

async fn check_exist(base: &ClientConfig, topics: &Topics, reason: &str) -> Result<(), TopicError> {
    let base = base.clone();
    let metadata = tokio::task::spawn_blocking(move || {
        let client: BaseProducer = base.create()?;
        client.client().fetch_metadata(None, Duration::from_secs(10))
    })
    .await
    .expect("metadata task panicked")
    .map_err(TopicError::Metadata)?;
    for (name, _) in topics.all() {
        let found = metadata
            .topics()
            .iter()
            .any(|t| t.name() == name && t.error().is_none() && !t.partitions().is_empty());
        if !found {
            return Err(TopicError::Missing {
                topic: name.to_string(),
                reason: reason.to_string(),
            });
        }
    }
    Ok(())
}
