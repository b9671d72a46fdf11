//! Publishing to notification topics Granary does not own (a recipient's SNS topic).

use crate::{PortError, PortResult};
use async_trait::async_trait;

/// Publishes a message to a topic.
#[async_trait]
pub trait Topics: Send + Sync + std::fmt::Debug {
    /// Publishes `message` to `topic_arn` with string message `attributes`. Throttling and network
    /// trouble are [`PortError::Unavailable`]; a topic that refuses (unknown, not allowed) is
    /// [`PortError::Backend`].
    async fn publish(&self, topic_arn: &str, message: &str, attributes: &[(&str, &str)]) -> PortResult<()>;
}

/// Where no topic can be reached (one machine, no AWS): every publication says so.
#[derive(Debug, Default, Clone, Copy)]
pub struct NoTopics;

#[async_trait]
impl Topics for NoTopics {
    async fn publish(&self, topic_arn: &str, _message: &str, _attributes: &[(&str, &str)]) -> PortResult<()> {
        Err(PortError::Backend(format!("SNS topic {topic_arn} cannot be reached on this backend: use a queue or a webhook recipient")))
    }
}
