//! Creates the daemon's topics at start when missing, with the right settings (compaction for
//! state and deliveries, long retention for dead letters); where the broker does not allow it,
//! says which topic is missing. Then verifies the topics as they are ([`verify_topics`]):
//! compaction where the daemon's guarantees need it, a `max.message.bytes` that takes what the
//! producer sends, and the replication minimums; a broker that cannot describe topic
//! configurations (the embedded one, `dev-broker`) is said so once, and the daemon goes on.

use std::time::Duration;

use rdkafka::ClientConfig;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, ResourceSpecifier, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::error::RDKafkaErrorCode;
use rdkafka::producer::{BaseProducer, Producer as _};

use super::Topics;

/// How long the dead-letter topic keeps a letter when the daemon creates it: letters are
/// replayed by hand once their cause is fixed, which may take a while (90 days).
pub const DLQ_RETENTION_MS: i64 = 90 * 24 * 3600 * 1000;

/// What the topics must be, beyond existing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Requirements {
    /// The producer's `message.max.bytes`: each topic's `max.message.bytes` must take it.
    pub message_max_bytes: usize,
    /// `kafka.min_replication_factor`: refused below it when set; warned below 3 when not.
    pub min_replication_factor: Option<i32>,
    /// `kafka.min_insync_replicas`: refused below it when set; warned below 2 when not.
    pub min_insync_replicas: Option<i32>,
}

/// A topic as the cluster describes it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TopicFacts {
    pub name: String,
    /// The fewest replicas of any of its partitions (from the metadata).
    pub replication: Option<i32>,
    /// Its configuration (`cleanup.policy`, `max.message.bytes`, `min.insync.replicas` …), when
    /// the broker could describe it.
    pub configs: Option<std::collections::HashMap<String, String>>,
}

/// What [`verify`] found: reasons to refuse to start, and warnings.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Verdict {
    pub refusals: Vec<String>,
    pub warnings: Vec<String>,
}

/// Checks the described `facts` of the daemon's `topics` against `req` (pure: the cluster was
/// asked before).
pub fn verify(topics: &Topics, facts: &[TopicFacts], req: &Requirements) -> Verdict {
    let mut v = Verdict::default();
    let (mut few_replicas, mut few_insync) = (Vec::new(), Vec::new());
    for (name, compacted) in topics.all() {
        let Some(f) = facts.iter().find(|f| f.name == name) else {
            continue;
        };
        if let Some(configs) = &f.configs {
            let policy = configs.get("cleanup.policy").map(String::as_str);
            if compacted
                && let Some(policy) = policy
                && !policy.split(',').any(|p| p.trim() == "compact")
            {
                v.refusals.push(format!(
                    "topic `{name}`: `cleanup.policy` is `{policy}`, it must include `compact` \
                     (its records are the latest of each key, kept until replaced: without \
                     compaction they are deleted after `retention.ms` and what they hold is \
                     lost); set `cleanup.policy=compact` on the topic"
                ));
            }
            if let Some(max) = configs
                .get("max.message.bytes")
                .and_then(|m| m.trim().parse::<usize>().ok())
                && max < req.message_max_bytes
            {
                v.refusals.push(format!(
                    "topic `{name}`: `max.message.bytes` is {max}, below the producer's \
                     `message.max.bytes` ({}): a record the producer sends could be refused by \
                     the broker; raise the topic's `max.message.bytes` or lower \
                     `kafka.options.\"message.max.bytes\"`",
                    req.message_max_bytes
                ));
            }
            if let Some(isr) = configs
                .get("min.insync.replicas")
                .and_then(|m| m.trim().parse::<i32>().ok())
            {
                match req.min_insync_replicas {
                    Some(min) if isr < min => v.refusals.push(format!(
                        "topic `{name}`: `min.insync.replicas` is {isr}, below \
                         `kafka.min_insync_replicas` ({min})"
                    )),
                    None if isr < 2 => few_insync.push(format!("{name} ({isr})")),
                    _ => {}
                }
            }
        }
        if let Some(rf) = f.replication {
            match req.min_replication_factor {
                Some(min) if rf < min => v.refusals.push(format!(
                    "topic `{name}`: replication factor is {rf}, below \
                     `kafka.min_replication_factor` ({min})"
                )),
                None if rf < 3 => few_replicas.push(format!("{name} ({rf})")),
                _ => {}
            }
        }
    }
    // One warning each, naming every topic: said once at start, not once per topic.
    if !few_replicas.is_empty() {
        v.warnings.push(format!(
            "replication factor below 3: {}; losing a broker may lose what it holds \
             (`kafka.min_replication_factor` makes this a refusal)",
            few_replicas.join(", ")
        ));
    }
    if !few_insync.is_empty() {
        v.warnings.push(format!(
            "`min.insync.replicas` below 2: {}; a write acknowledged by all in-sync replicas may \
             be on one broker only (`kafka.min_insync_replicas` makes this a refusal)",
            few_insync.join(", ")
        ));
    }
    v
}

#[derive(Debug, thiserror::Error)]
pub enum TopicError {
    #[error("creating the admin client: {0}")]
    Client(#[source] rdkafka::error::KafkaError),
    #[error("topic `{topic}` is missing and could not be created: {reason}")]
    Missing { topic: String, reason: String },
    #[error("listing topics: {0}")]
    Metadata(#[source] rdkafka::error::KafkaError),
    #[error("the Kafka topics are not as the daemon needs them:\n  {}", .0.join("\n  "))]
    Unfit(Vec<String>),
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
    let dlq_retention = DLQ_RETENTION_MS.to_string();
    let new: Vec<NewTopic<'_>> = wanted
        .iter()
        .map(|(name, compacted)| {
            let topic = NewTopic::new(name, partitions, TopicReplication::Fixed(replication));
            if *compacted {
                topic.set("cleanup.policy", "compact")
            } else if *name == topics.dlq {
                topic.set("retention.ms", &dlq_retention)
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

/// How librdkafka's mock cluster (the embedded broker, `dev-broker`) names itself.
const MOCK_CLUSTER_ID: &str = "mockCluster";

/// The cluster's id, if it tells.
async fn cluster_id(base: &ClientConfig) -> Option<String> {
    let base = base.clone();
    tokio::task::spawn_blocking(move || {
        let client: BaseProducer = base.create().ok()?;
        client.client().fetch_cluster_id(Duration::from_secs(10))
    })
    .await
    .ok()
    .flatten()
}

/// The daemon's topics as the cluster describes them: replication from the metadata, and each
/// topic's configuration — all of them `None` when the broker cannot describe configurations
/// (the reason given).
async fn describe(
    base: &ClientConfig,
    topics: &Topics,
) -> Result<(Vec<TopicFacts>, Option<String>), TopicError> {
    let metadata = metadata(base).await?;
    let mut facts: Vec<TopicFacts> = topics
        .all()
        .iter()
        .filter_map(|(name, _)| {
            let t = metadata.topics().iter().find(|t| t.name() == *name)?;
            Some(TopicFacts {
                name: name.to_string(),
                replication: t
                    .partitions()
                    .iter()
                    .map(|p| p.replicas().len() as i32)
                    .min(),
                configs: None,
            })
        })
        .collect();
    if let Some(id) = cluster_id(base).await
        && id.starts_with(MOCK_CLUSTER_ID)
    {
        // It would take the request and never answer: no wait for a timeout at every start.
        return Ok((facts, Some(format!("librdkafka's mock cluster (`{id}`)"))));
    }
    let admin: AdminClient<DefaultClientContext> = base.create().map_err(TopicError::Client)?;
    let specs: Vec<ResourceSpecifier<'_>> = facts
        .iter()
        .map(|f| ResourceSpecifier::Topic(&f.name))
        .collect();
    let opts = AdminOptions::new().request_timeout(Some(Duration::from_secs(10)));
    let results = match admin.describe_configs(specs.iter(), &opts).await {
        Ok(results) => results,
        Err(e) => return Ok((facts, Some(e.to_string()))),
    };
    let mut failed = None;
    for (f, result) in facts.iter_mut().zip(results) {
        match result {
            Ok(resource) => {
                f.configs = Some(
                    resource
                        .entries
                        .into_iter()
                        .filter_map(|e| Some((e.name, e.value?)))
                        .collect(),
                )
            }
            Err(code) => failed = Some(code.to_string()),
        }
    }
    Ok((facts, failed))
}

/// What [`verify_topics`] could check, and what it warned of.
#[derive(Debug, PartialEq, Eq)]
pub struct Verified {
    /// Whether the broker described the topics' configurations (if not, only the metadata —
    /// replication — was checked).
    pub described: bool,
    pub warnings: Vec<String>,
}

/// Verifies the daemon's topics as they are ([`verify`]): an error naming every topic and key
/// that is not as it must be; warnings logged. A broker that cannot describe topic
/// configurations is said so once, and the rest checked as far as its metadata tells.
pub async fn verify_topics(
    base: &ClientConfig,
    topics: &Topics,
    req: &Requirements,
) -> Result<Verified, TopicError> {
    let (facts, undescribed) = describe(base, topics).await?;
    let described = undescribed.is_none();
    if let Some(reason) = undescribed {
        tracing::warn!(
            %reason,
            "the broker cannot describe topic configurations: compaction, max.message.bytes and \
             min.insync.replicas of the daemon's topics are not verified (the embedded broker and \
             dev-broker cannot; a real cluster can)"
        );
    }
    let verdict = verify(topics, &facts, req);
    for warning in &verdict.warnings {
        tracing::warn!("{warning}");
    }
    if verdict.refusals.is_empty() {
        Ok(Verified {
            described,
            warnings: verdict.warnings,
        })
    } else {
        Err(TopicError::Unfit(verdict.refusals))
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    fn req() -> Requirements {
        Requirements {
            message_max_bytes: 1_000_000,
            min_replication_factor: None,
            min_insync_replicas: None,
        }
    }

    /// Every topic of `t`, described with `configs` (plus a fitting `max.message.bytes`), three
    /// replicas and `min.insync.replicas=2`, except as `change` says.
    fn facts(t: &Topics, change: impl Fn(&str, &mut TopicFacts)) -> Vec<TopicFacts> {
        t.all()
            .iter()
            .map(|(name, compacted)| {
                let policy = if *compacted { "compact" } else { "delete" };
                let configs: HashMap<String, String> = [
                    ("cleanup.policy", policy),
                    ("max.message.bytes", "1048588"),
                    ("min.insync.replicas", "2"),
                ]
                .into_iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect();
                let mut f = TopicFacts {
                    name: name.to_string(),
                    replication: Some(3),
                    configs: Some(configs),
                };
                change(name, &mut f);
                f
            })
            .collect()
    }

    fn set(f: &mut TopicFacts, key: &str, value: &str) {
        f.configs
            .as_mut()
            .unwrap()
            .insert(key.to_string(), value.to_string());
    }

    #[test]
    fn topics_as_the_daemon_creates_them_pass() {
        let t = Topics::new("lw");
        assert_eq!(
            verify(&t, &facts(&t, |_, _| {}), &req()),
            Verdict::default()
        );
        // `compact,delete` keeps the latest of each key too.
        let both = facts(&t, |name, f| {
            if name == "lw.state" {
                set(f, "cleanup.policy", "compact,delete");
            }
        });
        assert_eq!(verify(&t, &both, &req()), Verdict::default());
    }

    /// A pre-created `state` topic with `cleanup.policy=delete` would lose every lead's state
    /// after its retention: the daemon refuses to start, naming the topic and the key.
    #[test]
    fn a_changelog_without_compaction_or_a_topic_smaller_than_the_producers_records_is_refused() {
        let t = Topics::new("lw");
        let bad = facts(&t, |name, f| match name {
            "lw.state" => set(f, "cleanup.policy", "delete"),
            "lw.alerts" => set(f, "max.message.bytes", "500000"),
            _ => {}
        });
        let v = verify(&t, &bad, &req());
        assert_eq!(v.refusals.len(), 2, "{v:?}");
        assert!(
            v.refusals[0].starts_with(
                "topic `lw.state`: `cleanup.policy` is `delete`, it must include `compact`"
            ),
            "{v:?}"
        );
        assert!(
            v.refusals[1].starts_with(
                "topic `lw.alerts`: `max.message.bytes` is 500000, below the producer's \
                 `message.max.bytes` (1000000)"
            ),
            "{v:?}"
        );
        // A topic that need not be compacted may be anything.
        let fine = facts(&t, |name, f| {
            if name == "lw.events" {
                set(f, "cleanup.policy", "delete");
            }
        });
        assert!(verify(&t, &fine, &req()).refusals.is_empty());
    }

    /// Replication minimums: unset, a warning (one, naming every topic); set and missed, a
    /// refusal.
    #[test]
    fn replication_minimums_warn_when_unset_and_refuse_when_set_and_missed() {
        let t = Topics::new("lw");
        let thin = facts(&t, |name, f| {
            if name == "lw.state" || name == "lw.delivered" {
                f.replication = Some(1);
                set(f, "min.insync.replicas", "1");
            }
        });
        let v = verify(&t, &thin, &req());
        assert!(v.refusals.is_empty(), "{v:?}");
        assert_eq!(
            v.warnings,
            [
                "replication factor below 3: lw.state (1), lw.delivered (1); losing a broker may \
                 lose what it holds (`kafka.min_replication_factor` makes this a refusal)",
                "`min.insync.replicas` below 2: lw.state (1), lw.delivered (1); a write \
                 acknowledged by all in-sync replicas may be on one broker only \
                 (`kafka.min_insync_replicas` makes this a refusal)",
            ]
        );
        let strict = Requirements {
            min_replication_factor: Some(3),
            min_insync_replicas: Some(2),
            ..req()
        };
        let v = verify(&t, &thin, &strict);
        assert!(v.warnings.is_empty(), "{v:?}");
        assert!(v.refusals.contains(
            &"topic `lw.state`: replication factor is 1, below `kafka.min_replication_factor` (3)"
                .to_string()
        ));
        assert!(v.refusals.contains(
            &"topic `lw.delivered`: `min.insync.replicas` is 1, below `kafka.min_insync_replicas` (2)"
                .to_string()
        ));
        assert_eq!(v.refusals.len(), 4, "{v:?}");
        // Undescribed configurations: only the metadata's replication is checked.
        let undescribed: Vec<TopicFacts> = thin
            .into_iter()
            .map(|f| TopicFacts { configs: None, ..f })
            .collect();
        assert_eq!(verify(&t, &undescribed, &strict).refusals.len(), 2);
    }
}
