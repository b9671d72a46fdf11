//! `storage-ready`: applies storage events to what waits on them. A file stored (or not) by Granary's
//! worker or by an external storage service (REGARDS's FileReferenceEvent and FileRequestsGroupEvent)
//! moves its task of a feature request; the last one finishes the request. An event that names no
//! waiting request or file, or that cannot be read, is moved to the dead-letter queue at once with its
//! reason (attribute `granary.dead-letter.reason`), so it neither blocks the batch nor comes back.
//!
//! Ordered files wait here too: S3's "Object Restore Completed" (EventBridge) or
//! `ObjectRestore:Completed` (S3 notification) makes every order file waiting on that object
//! AVAILABLE; a storage service's FileReferenceEvent AVAILABLE or AVAILABILITY_ERROR (or a
//! FileRequestsGroupEvent of type AVAILABILITY) answers the order files waiting on that checksum, as
//! REGARDS's rs-order matches them. The suborder and order follow (done, finished, final status).

use aws_lambda_events::event::sqs::{SqsBatchResponse, SqsEvent, SqsMessage};
use granary_domain::dispatch::checksum_of_key;
use granary_domain::storage::{FileResult, parse_storage_event};
use granary_lambda::{Config, sqs};
use granary_ports::{Backend, OutgoingMessage};
use granary_stores::fulfilment::Fulfilment;
use granary_stores::outbox::OutboxEvent;
use granary_stores::storage::{Recorded, StorageTracker};
use lambda_runtime::LambdaEvent;
use serde_json::Value;

/// The attribute naming why a storage event was dead-lettered.
pub const ATTR_REASON: &str = "granary.dead-letter.reason";

/// The handler and what it needs, built once per cold start.
#[derive(Debug, Clone)]
pub struct StorageReady {
    backend: Backend,
    config: Config,
    tracker: StorageTracker,
    fulfilment: Fulfilment,
}

/// What became of one message.
enum Fate {
    Done(Vec<OutboxEvent>),
    DeadLetter(String),
    Retry(String),
}

impl StorageReady {
    /// The handler over `backend`.
    pub fn new(backend: Backend, config: Config) -> Self {
        let tracker = StorageTracker::new(&config.features_table, &config.requests_table, &config.response_queue);
        let fulfilment =
            Fulfilment::new(&config.orders_table, &config.requests_table, &config.suborder_dispatch_queue, &config.order_events_queue);
        let grants = tracker
            .grants()
            .and(fulfilment.grants())
            .send(&config.storage_ready_dead_letter_queue)
            // An override's stored files let go the previous version's: a release job for the worker.
            .send(&config.storage_jobs_queue);
        Self { backend: granary_ports::access::guard(backend, "storage-ready", grants), config, tracker, fulfilment }
    }

    /// Handles one SQS batch; only messages that hit a transient failure are retried.
    pub async fn handle(&self, event: LambdaEvent<SqsEvent>) -> Result<SqsBatchResponse, lambda_runtime::Error> {
        let mut failed = Vec::new();
        let mut events = Vec::new();
        for msg in &event.payload.records {
            let id = msg.message_id.clone().unwrap_or_default();
            match self.apply(msg).await {
                Fate::Done(committed) => events.extend(committed),
                Fate::DeadLetter(reason) => {
                    tracing::warn!(message_id = %id, %reason, "storage event dropped to the dead-letter queue");
                    let mut out = OutgoingMessage::new(msg.body.clone().unwrap_or_default());
                    for (k, v) in &msg.message_attributes {
                        if let Some(v) = &v.string_value {
                            out = out.attribute(k, v.clone());
                        }
                    }
                    let out = out.attribute(ATTR_REASON, reason);
                    if let Err(e) = self.backend.queue.send_batch(&self.config.storage_ready_dead_letter_queue, vec![out]).await {
                        tracing::warn!(message_id = %id, error = %e, "cannot dead-letter the event; SQS will redeliver it");
                        failed.push(id);
                    }
                }
                Fate::Retry(error) => {
                    tracing::warn!(message_id = %id, %error, "storage event not applied; SQS will redeliver it");
                    failed.push(id);
                }
            }
        }
        if let Err(e) = self.tracker.outbox().flush(&self.backend, &events).await {
            tracing::warn!(error = %e, events = events.len(), "events left to the outbox relay");
        }
        Ok(sqs::batch_response(failed))
    }

    async fn apply(&self, msg: &SqsMessage) -> Fate {
        let body: Value = match serde_json::from_str(msg.body.as_deref().unwrap_or_default()) {
            Ok(b) => b,
            Err(e) => return Fate::DeadLetter(format!("body is not JSON: {e}")),
        };
        if is_restore_event(&body) {
            let Some(key) = restored_key(&body) else {
                return Fate::DeadLetter("an S3 restore completion without an object key".into());
            };
            return match self.fulfilment.answer(&self.backend, checksum_of_key(&key), Some(&key), None, None).await {
                Ok((0, _)) => Fate::DeadLetter(format!("an S3 restore completion of {key} that no order waits for")),
                Ok((_, events)) => Fate::Done(events),
                Err(e) if e.is_transient() => Fate::Retry(e.to_string()),
                Err(e) => Fate::DeadLetter(e.to_string()),
            };
        }
        let outcomes = match parse_storage_event(&body) {
            Ok(o) => o,
            Err(e) => return Fate::DeadLetter(e),
        };
        let mut events = Vec::new();
        let mut unknown = Vec::new();
        for outcome in &outcomes {
            // Availability answers are for orders; the others for feature requests.
            let error = match &outcome.result {
                FileResult::Available => Some(None),
                FileResult::AvailabilityError { cause } => Some(Some(cause.as_str())),
                _ => None,
            };
            if let Some(error) = error {
                match self.fulfilment.answer(&self.backend, &outcome.checksum, None, outcome.storage.as_deref(), error).await {
                    Ok((0, _)) => unknown.push(format!("no order file waits on checksum {}", outcome.checksum)),
                    Ok((_, committed)) => events.extend(committed),
                    Err(e) if e.is_transient() => return Fate::Retry(e.to_string()),
                    Err(e) => unknown.push(e.to_string()),
                }
                continue;
            }
            match self.tracker.record(&self.backend, outcome).await {
                Ok(Recorded::Applied(committed)) => events.extend(committed),
                Ok(Recorded::Duplicate) => {
                    tracing::info!(group_id = %outcome.group_id, checksum = %outcome.checksum, "storage event already applied")
                }
                Ok(Recorded::UnknownGroup) => unknown.push(format!("no request or order waits on group {:?}", outcome.group_id)),
                Ok(Recorded::UnknownFile) => unknown.push(format!(
                    "group {:?} waits on no file of checksum {} in {}",
                    outcome.group_id,
                    outcome.checksum,
                    outcome.storage.as_deref().unwrap_or("any location")
                )),
                Err(e) if e.is_transient() => return Fate::Retry(e.to_string()),
                Err(e) => unknown.push(e.to_string()),
            }
        }
        // What was applied stays applied; a part that names nothing waiting is kept for an operator.
        if !unknown.is_empty() {
            if !events.is_empty() {
                let _ = self.tracker.outbox().flush(&self.backend, &events).await;
            }
            return Fate::DeadLetter(unknown.join("; "));
        }
        Fate::Done(events)
    }
}

/// The object key of a restore completion (S3 notifications encode it as a form value).
fn restored_key(body: &Value) -> Option<String> {
    if let Some(key) = body.pointer("/detail/object/key").and_then(Value::as_str) {
        return Some(key.to_owned());
    }
    let encoded = body.pointer("/Records/0/s3/object/key").and_then(Value::as_str)?;
    Some(granary_lambda::http::percent_decode(&encoded.replace('+', " ")))
}

/// Whether `body` is S3's "Object Restore Completed" (EventBridge) or `ObjectRestore:Completed` (S3
/// notification) event.
fn is_restore_event(body: &Value) -> bool {
    body.get("detail-type").and_then(Value::as_str) == Some("Object Restore Completed")
        || body.pointer("/Records/0/eventName").and_then(Value::as_str).is_some_and(|n| n.starts_with("ObjectRestore:Completed"))
}
