//! The tables, queues and buckets granary-local provisions on the embedded backend.

use granary_lambda::Config;
use granary_ports::{IndexSpec, QueueSpec, Resources, TableSpec};
use std::time::Duration;

/// Receives after which a feature request goes to the dead-letter queue.
pub const FEATURE_MAX_RECEIVES: u32 = 5;
/// How long a received feature request stays hidden.
pub const FEATURE_VISIBILITY: Duration = Duration::from_secs(30);

/// The dead-letter queue of the feature queues (`GRANARY_FEATURE_DLQ`).
pub fn feature_dlq() -> String {
    granary_lambda::config::env_or("GRANARY_FEATURE_DLQ", "feature-dlq")
}

/// The queue of storage events (`GRANARY_STORAGE_READY_QUEUE`).
pub fn storage_ready_queue() -> String {
    granary_lambda::config::env_or("GRANARY_STORAGE_READY_QUEUE", "storage-ready")
}

/// Every resource, named by `config`.
pub fn resources(config: &Config) -> Resources {
    let dlq = feature_dlq();
    let mut queues: Vec<QueueSpec> = config
        .feature_queues
        .iter()
        .map(|q| QueueSpec::new(q.clone()).with_visibility(FEATURE_VISIBILITY).with_dlq(dlq.clone(), FEATURE_MAX_RECEIVES))
        .collect();
    queues.push(QueueSpec::new(dlq));
    queues.push(QueueSpec::new(config.response_queue.clone()));
    queues.push(QueueSpec::new(storage_ready_queue()));
    Resources {
        tables: vec![
            TableSpec { name: config.features_table.clone(), indexes: vec![], ttl_attr: None },
            TableSpec {
                name: config.requests_table.clone(),
                indexes: vec![IndexSpec {
                    name: granary_stores::outbox::OUTBOX_INDEX.into(),
                    partition_attr: "outbox".into(),
                    sort_attr: Some("createdAt".into()),
                }],
                ttl_attr: None,
            },
        ],
        queues,
        buckets: vec![],
    }
}
