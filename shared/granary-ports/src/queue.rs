//! The queue port: SQS standard queues as Granary uses them.

use crate::error::{PortError, PortResult};
use async_trait::async_trait;
use std::collections::BTreeMap;
use std::time::Duration;

/// SQS's limit on messages in one send, receive or delete call.
pub const MAX_BATCH: usize = 10;
/// SQS's limit on a message's delay.
pub const MAX_DELAY: Duration = Duration::from_secs(15 * 60);
/// The largest message body accepted (SQS's classic limit of 256 KiB, body and attributes).
pub const MAX_MESSAGE_BYTES: usize = 256 * 1024;
/// The largest send batch, all messages together (SQS's classic limit).
pub const MAX_BATCH_BYTES: usize = 256 * 1024;

/// Groups messages into send batches that keep both SQS limits: 10 messages, 256 KiB in all.
pub fn batches(messages: Vec<OutgoingMessage>) -> Vec<Vec<OutgoingMessage>> {
    let mut out: Vec<Vec<OutgoingMessage>> = Vec::new();
    let mut bytes = 0;
    for m in messages {
        let size = m.size();
        match out.last_mut() {
            Some(batch) if batch.len() < MAX_BATCH && bytes + size <= MAX_BATCH_BYTES => {
                bytes += size;
                batch.push(m);
            }
            _ => {
                bytes = size;
                out.push(vec![m]);
            }
        }
    }
    out
}

/// Sends `messages` to `queue` in batches SQS takes, `at_once` batches at a time, telling `sent` how
/// many went out after each group. Sends made at once are one round trip instead of one per ten
/// messages on AWS, and one transaction of the embedded queue (which commits writes that wait
/// together): a producer beside a busy runner then waits for the write lock once per group.
pub async fn send_all(
    port: &dyn Queue,
    queue: &str,
    messages: Vec<OutgoingMessage>,
    at_once: usize,
    mut sent: impl FnMut(usize),
) -> PortResult<()> {
    let mut batches = batches(messages).into_iter().peekable();
    while batches.peek().is_some() {
        let group: Vec<Vec<OutgoingMessage>> = batches.by_ref().take(at_once.max(1)).collect();
        let n = group.iter().map(Vec::len).sum();
        futures::future::try_join_all(group.into_iter().map(|batch| port.send_batch(queue, batch))).await?;
        sent(n);
    }
    Ok(())
}

/// Up to `batch_size` messages of `queue`, as an event source mapping gathers them: one receive of at
/// most ten (SQS's limit) that waits up to `wait`; when it comes back full and more are wanted, the
/// other receives at once, without waiting (so the embedded backend commits them together). When one
/// of those fails, the batch goes on with what the others took; anything the failed one took anyway
/// (its answer lost) comes back after its visibility timeout.
pub async fn receive_up_to(port: &dyn Queue, queue: &str, batch_size: usize, wait: Duration) -> PortResult<Vec<ReceivedMessage>> {
    let mut messages = port.receive(queue, batch_size.min(MAX_BATCH), None, wait).await?;
    if messages.len() < MAX_BATCH || batch_size <= MAX_BATCH {
        return Ok(messages);
    }
    let sizes = (MAX_BATCH..batch_size).step_by(MAX_BATCH).map(|taken| (batch_size - taken).min(MAX_BATCH));
    let receives = sizes.map(|n| port.receive(queue, n, None, Duration::ZERO));
    for outcome in futures::future::join_all(receives).await {
        match outcome {
            Ok(got) => messages.extend(got),
            Err(e) => tracing::warn!(%queue, error = %e, "a receive of the batch failed; the batch goes on with what was received"),
        }
    }
    Ok(messages)
}

/// A message to send.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct OutgoingMessage {
    /// The body, usually JSON.
    pub body: String,
    /// String message attributes.
    pub attributes: BTreeMap<String, String>,
    /// How long the message stays invisible after sending (at most 15 minutes); `None` takes the
    /// queue's default delay.
    pub delay: Option<Duration>,
}

impl OutgoingMessage {
    /// A message with a body and no attributes.
    pub fn new(body: impl Into<String>) -> Self {
        Self { body: body.into(), ..Self::default() }
    }

    /// The same message with one more attribute.
    pub fn attribute(mut self, name: &str, value: impl Into<String>) -> Self {
        self.attributes.insert(name.to_owned(), value.into());
        self
    }

    /// The same message with a delay.
    pub fn delayed(mut self, delay: Duration) -> Self {
        self.delay = Some(delay);
        self
    }

    /// Size as SQS counts it: body plus attribute names and values.
    pub fn size(&self) -> usize {
        self.body.len() + self.attributes.iter().map(|(k, v)| k.len() + v.len() + "String".len()).sum::<usize>()
    }
}

/// A received message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReceivedMessage {
    /// Id given at send time.
    pub message_id: String,
    /// Handle for delete and visibility changes, valid for this receive only.
    pub receipt_handle: String,
    /// The body.
    pub body: String,
    /// String message attributes.
    pub attributes: BTreeMap<String, String>,
    /// How many times the message has been received, this time included.
    pub receive_count: u32,
    /// When it was sent, in epoch milliseconds.
    pub sent_at_ms: i64,
}

/// Approximate numbers of messages in a queue.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct QueueDepth {
    /// Ready to receive.
    pub visible: u64,
    /// Received and neither deleted nor back yet.
    pub in_flight: u64,
    /// Sent with a delay that has not passed.
    pub delayed: u64,
}

impl QueueDepth {
    /// Every message the queue holds.
    pub fn total(&self) -> u64 {
        self.visible + self.in_flight + self.delayed
    }
}

/// Checks a send batch against SQS's rules.
pub fn validate_send_batch(queue: &str, messages: &[OutgoingMessage]) -> PortResult<()> {
    if messages.is_empty() || messages.len() > MAX_BATCH {
        return Err(PortError::Invalid(format!("a send batch to {queue} takes 1 to {MAX_BATCH} messages, not {}", messages.len())));
    }
    let total: usize = messages.iter().map(OutgoingMessage::size).sum();
    if total > MAX_BATCH_BYTES && messages.len() > 1 {
        return Err(PortError::Invalid(format!("a send batch to {queue} is {total} bytes in all; the limit is {MAX_BATCH_BYTES}")));
    }
    for (i, m) in messages.iter().enumerate() {
        if m.size() > MAX_MESSAGE_BYTES {
            return Err(PortError::Invalid(format!("message {i} to {queue} is {} bytes; the limit is {MAX_MESSAGE_BYTES}", m.size())));
        }
        if m.delay.is_some_and(|d| d > MAX_DELAY) {
            return Err(PortError::Invalid(format!("message {i} to {queue} asks a delay over 15 minutes")));
        }
    }
    Ok(())
}

/// Checks the size of a receive or delete batch.
pub fn validate_batch_len(what: &str, len: usize) -> PortResult<()> {
    if len == 0 || len > MAX_BATCH {
        return Err(PortError::Invalid(format!("a {what} batch takes 1 to {MAX_BATCH} messages, not {len}")));
    }
    Ok(())
}

/// Standard queues with at-least-once delivery.
#[async_trait]
pub trait Queue: Send + Sync {
    /// Sends up to 10 messages; returns their ids in order.
    async fn send_batch(&self, queue: &str, messages: Vec<OutgoingMessage>) -> PortResult<Vec<String>>;

    /// Receives up to `max` (1 to 10) visible messages, hiding them for `visibility` (or the queue's
    /// timeout). Waits up to `wait` for one to arrive when none is visible. A message received more
    /// times than the queue's redrive allows moves to its dead-letter queue instead.
    async fn receive(&self, queue: &str, max: usize, visibility: Option<Duration>, wait: Duration) -> PortResult<Vec<ReceivedMessage>>;

    /// Deletes received messages by receipt handle. Stale handles are ignored, as SQS does.
    async fn delete_batch(&self, queue: &str, receipt_handles: Vec<String>) -> PortResult<()>;

    /// Changes how long a received message stays hidden, counted from now.
    async fn change_visibility(&self, queue: &str, receipt_handle: &str, timeout: Duration) -> PortResult<()>;

    /// Approximate depth.
    async fn depth(&self, queue: &str) -> PortResult<QueueDepth>;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batches_keep_count_and_size_limits() {
        let small: Vec<OutgoingMessage> = (0..25).map(|i| OutgoingMessage::new(i.to_string())).collect();
        assert_eq!(batches(small).iter().map(Vec::len).collect::<Vec<_>>(), vec![10, 10, 5]);
        let big: Vec<OutgoingMessage> = (0..5).map(|_| OutgoingMessage::new("x".repeat(100 * 1024))).collect();
        let grouped = batches(big);
        assert_eq!(grouped.iter().map(Vec::len).collect::<Vec<_>>(), vec![2, 2, 1]);
        assert!(grouped.iter().all(|b| validate_send_batch("q", b).is_ok()));
    }
}
