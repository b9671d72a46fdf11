//! The queue port on SQS standard queues. Queue URLs are looked up once and cached.

use crate::error::{code, port_error};
use async_trait::async_trait;
use aws_sdk_sqs::Client;
use aws_sdk_sqs::types::{
    DeleteMessageBatchRequestEntry, MessageAttributeValue, MessageSystemAttributeName, QueueAttributeName, SendMessageBatchRequestEntry,
};
use granary_ports::queue::{validate_batch_len, validate_send_batch};
use granary_ports::{OutgoingMessage, PortError, PortResult, Queue, QueueDepth, ReceivedMessage, Resources};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Mutex;
use std::time::Duration;

/// SQS's longest long-poll wait.
const MAX_WAIT: Duration = Duration::from_secs(20);

/// Queues on SQS.
pub struct AwsQueue {
    client: Client,
    prefix: String,
    declared: HashSet<String>,
    urls: Mutex<HashMap<String, String>>,
}

fn secs_ceil(d: Duration) -> i32 {
    i32::try_from(d.as_secs() + u64::from(d.subsec_nanos() > 0)).unwrap_or(i32::MAX)
}

impl AwsQueue {
    pub(crate) fn new(client: Client, prefix: &str, resources: &Resources) -> Self {
        Self {
            client,
            prefix: prefix.to_owned(),
            declared: resources.queues.iter().map(|q| q.name.clone()).collect(),
            urls: Mutex::new(HashMap::new()),
        }
    }

    /// The URL of a declared queue, looked up once.
    pub async fn url(&self, queue: &str) -> PortResult<String> {
        if !self.declared.contains(queue) {
            return Err(PortError::NotFound(format!("queue {queue} is not declared")));
        }
        if let Some(u) = self.urls.lock().unwrap_or_else(|p| p.into_inner()).get(queue) {
            return Ok(u.clone());
        }
        let out = self
            .client
            .get_queue_url()
            .queue_name(format!("{}{queue}", self.prefix))
            .send()
            .await
            .map_err(|e| port_error("GetQueueUrl", e))?;
        let url = out.queue_url.ok_or_else(|| PortError::Backend(format!("GetQueueUrl returned no URL for {queue}")))?;
        self.urls.lock().unwrap_or_else(|p| p.into_inner()).insert(queue.to_owned(), url.clone());
        Ok(url)
    }
}

#[async_trait]
impl Queue for AwsQueue {
    async fn send_batch(&self, queue: &str, messages: Vec<OutgoingMessage>) -> PortResult<Vec<String>> {
        validate_send_batch(queue, &messages)?;
        let url = self.url(queue).await?;
        let mut entries = Vec::with_capacity(messages.len());
        for (i, m) in messages.into_iter().enumerate() {
            let mut attrs = HashMap::new();
            for (k, v) in m.attributes {
                let value = MessageAttributeValue::builder()
                    .data_type("String")
                    .string_value(v)
                    .build()
                    .map_err(|e| PortError::Invalid(e.to_string()))?;
                attrs.insert(k, value);
            }
            let entry = SendMessageBatchRequestEntry::builder()
                .id(i.to_string())
                .message_body(m.body)
                .set_delay_seconds(m.delay.map(secs_ceil))
                .set_message_attributes((!attrs.is_empty()).then_some(attrs))
                .build()
                .map_err(|e| PortError::Invalid(e.to_string()))?;
            entries.push(entry);
        }
        let n = entries.len();
        let out = self
            .client
            .send_message_batch()
            .queue_url(url)
            .set_entries(Some(entries))
            .send()
            .await
            .map_err(|e| port_error("SendMessageBatch", e))?;
        if let Some(f) = out.failed.first() {
            let detail = format!("SendMessageBatch entry {} failed: {} {}", f.id, f.code, f.message.as_deref().unwrap_or(""));
            return Err(if f.sender_fault { PortError::Invalid(detail) } else { PortError::Unavailable(detail) });
        }
        let mut ids = vec![String::new(); n];
        for s in out.successful {
            if let Ok(i) = s.id.parse::<usize>()
                && i < n
            {
                ids[i] = s.message_id;
            }
        }
        Ok(ids)
    }

    async fn receive(&self, queue: &str, max: usize, visibility: Option<Duration>, wait: Duration) -> PortResult<Vec<ReceivedMessage>> {
        validate_batch_len("receive", max)?;
        let url = self.url(queue).await?;
        let out = self
            .client
            .receive_message()
            .queue_url(url)
            .max_number_of_messages(i32::try_from(max).unwrap_or(10))
            .set_visibility_timeout(visibility.map(secs_ceil))
            .wait_time_seconds(secs_ceil(wait.min(MAX_WAIT)))
            .message_attribute_names("All")
            .message_system_attribute_names(MessageSystemAttributeName::ApproximateReceiveCount)
            .message_system_attribute_names(MessageSystemAttributeName::SentTimestamp)
            .send()
            .await
            .map_err(|e| port_error("ReceiveMessage", e))?;
        Ok(out
            .messages
            .unwrap_or_default()
            .into_iter()
            .map(|m| {
                let sys = m.attributes.unwrap_or_default();
                let attributes: BTreeMap<String, String> =
                    m.message_attributes.unwrap_or_default().into_iter().filter_map(|(k, v)| Some((k, v.string_value?))).collect();
                ReceivedMessage {
                    message_id: m.message_id.unwrap_or_default(),
                    receipt_handle: m.receipt_handle.unwrap_or_default(),
                    body: m.body.unwrap_or_default(),
                    attributes,
                    receive_count: sys.get(&MessageSystemAttributeName::ApproximateReceiveCount).and_then(|c| c.parse().ok()).unwrap_or(1),
                    sent_at_ms: sys.get(&MessageSystemAttributeName::SentTimestamp).and_then(|c| c.parse().ok()).unwrap_or(0),
                }
            })
            .collect())
    }

    async fn delete_batch(&self, queue: &str, receipt_handles: Vec<String>) -> PortResult<()> {
        validate_batch_len("delete", receipt_handles.len())?;
        let url = self.url(queue).await?;
        let entries = receipt_handles
            .into_iter()
            .enumerate()
            .map(|(i, h)| {
                DeleteMessageBatchRequestEntry::builder()
                    .id(i.to_string())
                    .receipt_handle(h)
                    .build()
                    .map_err(|e| PortError::Invalid(e.to_string()))
            })
            .collect::<PortResult<Vec<_>>>()?;
        let out = self
            .client
            .delete_message_batch()
            .queue_url(url)
            .set_entries(Some(entries))
            .send()
            .await
            .map_err(|e| port_error("DeleteMessageBatch", e))?;
        // A stale handle is not an error (the message was received again); anything else is.
        match out.failed.iter().find(|f| f.code != "ReceiptHandleIsInvalid" && f.code != "InvalidParameterValue") {
            Some(f) => Err(PortError::Unavailable(format!("DeleteMessageBatch entry {} failed: {}", f.id, f.code))),
            None => Ok(()),
        }
    }

    async fn change_visibility(&self, queue: &str, receipt_handle: &str, timeout: Duration) -> PortResult<()> {
        let url = self.url(queue).await?;
        let result = self
            .client
            .change_message_visibility()
            .queue_url(url)
            .receipt_handle(receipt_handle)
            .visibility_timeout(secs_ceil(timeout))
            .send()
            .await;
        match result {
            Ok(_) => Ok(()),
            Err(e)
                if matches!(
                    code(&e),
                    Some("ReceiptHandleIsInvalid" | "MessageNotInflight" | "AWS.SimpleQueueService.MessageNotInflight")
                ) =>
            {
                Err(PortError::StaleReceipt(receipt_handle.to_owned()))
            }
            Err(e) => Err(port_error("ChangeMessageVisibility", e)),
        }
    }

    async fn depth(&self, queue: &str) -> PortResult<QueueDepth> {
        let url = self.url(queue).await?;
        let out = self
            .client
            .get_queue_attributes()
            .queue_url(url)
            .attribute_names(QueueAttributeName::ApproximateNumberOfMessages)
            .attribute_names(QueueAttributeName::ApproximateNumberOfMessagesNotVisible)
            .attribute_names(QueueAttributeName::ApproximateNumberOfMessagesDelayed)
            .send()
            .await
            .map_err(|e| port_error("GetQueueAttributes", e))?;
        let attrs = out.attributes.unwrap_or_default();
        let get = |n: QueueAttributeName| attrs.get(&n).and_then(|v| v.parse().ok()).unwrap_or(0);
        Ok(QueueDepth {
            visible: get(QueueAttributeName::ApproximateNumberOfMessages),
            in_flight: get(QueueAttributeName::ApproximateNumberOfMessagesNotVisible),
            delayed: get(QueueAttributeName::ApproximateNumberOfMessagesDelayed),
        })
    }
}
