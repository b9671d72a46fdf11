//! The tables, queues and buckets granary-local provisions on the embedded backend.

use granary_lambda::Config;
use granary_lambda::config::env_number;
use granary_ports::{IndexSpec, KeyAttr, QueueSpec, Resources, TableSpec};
use std::time::Duration;

/// Receives after which a feature request goes to the dead-letter queue
/// (`GRANARY_FEATURE_MAX_RECEIVES`, default 5).
pub fn feature_max_receives() -> Result<u32, String> {
    env_number("GRANARY_FEATURE_MAX_RECEIVES", 5)
}

/// How long a received feature request stays hidden (`GRANARY_FEATURE_VISIBILITY_SECS`, default 30).
pub fn feature_visibility() -> Result<Duration, String> {
    env_number("GRANARY_FEATURE_VISIBILITY_SECS", 30).map(Duration::from_secs)
}

/// The dead-letter queue of the feature queues (`GRANARY_FEATURE_DLQ`).
pub fn feature_dlq() -> String {
    granary_lambda::config::env_or("GRANARY_FEATURE_DLQ", "feature-dlq")
}

/// The queue of storage events (`GRANARY_STORAGE_READY_QUEUE`).
pub fn storage_ready_queue() -> String {
    granary_lambda::config::env_or("GRANARY_STORAGE_READY_QUEUE", "storage-ready")
}

/// Every resource, named by `config`.
pub fn resources(config: &Config) -> Result<Resources, String> {
    let dlq = feature_dlq();
    let (visibility, max_receives) = (feature_visibility()?, feature_max_receives()?);
    let mut queues: Vec<QueueSpec> = config
        .feature_queues
        .iter()
        .map(|q| QueueSpec::new(q.clone()).with_visibility(visibility).with_dlq(dlq.clone(), max_receives))
        .collect();
    queues.push(QueueSpec::new(dlq));
    queues.push(QueueSpec::new(config.response_queue.clone()));
    queues.push(QueueSpec::new(storage_ready_queue()));
    Ok(Resources {
        tables: vec![
            TableSpec { name: config.features_table.clone(), indexes: vec![], ttl_attr: None },
            TableSpec {
                name: config.requests_table.clone(),
                indexes: vec![IndexSpec::new(
                    granary_stores::outbox::OUTBOX_INDEX,
                    KeyAttr::string("outbox"),
                    Some(KeyAttr::number("createdAt")),
                )],
                ttl_attr: None,
            },
        ],
        queues,
        buckets: vec![],
    })
}
