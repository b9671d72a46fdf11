//! `acknowledgement`: records a recipient's acknowledgement of a feature (REGARDS's
//! DisseminationAckEvent `{urn, recipientLabel}`): the acknowledgement date of that feature and
//! recipient, set once (a repeated acknowledgement keeps the first date), the recipient's session
//! counters moved from pending to done, and the requests held by that blocking recipient released
//! once every blocking recipient they wait for has acknowledged. An acknowledgement of
//! something never sent to that recipient, or that cannot be read, is moved to the dead-letter queue at
//! once with its reason (attribute `granary.dead-letter.reason`).

use aws_lambda_events::event::sqs::{SqsBatchResponse, SqsEvent, SqsMessage};
use granary_lambda::{Config, sqs};
use granary_ports::{Backend, OutgoingMessage};
use granary_stores::dissemination::{Ack, DisseminationLog};
use lambda_runtime::LambdaEvent;
use serde_json::Value;

/// The attribute naming why an acknowledgement was dead-lettered.
pub const ATTR_REASON: &str = "granary.dead-letter.reason";

/// The handler and what it needs, built once per cold start.
#[derive(Debug, Clone)]
pub struct Acknowledgement {
    backend: Backend,
    log: DisseminationLog,
    dead_letter_queue: String,
}

impl Acknowledgement {
    /// The handler over `backend`; strays go to `GRANARY_ACK_DEAD_LETTER_QUEUE`.
    pub fn new(backend: Backend, config: Config) -> Self {
        let log = DisseminationLog::new(&config.features_table, &config.requests_table, &config.response_queue);
        let dead_letter_queue = granary_lambda::config::env_or("GRANARY_ACK_DEAD_LETTER_QUEUE", "feature-ack-dead-letter");
        let grants = log.grants().send(&dead_letter_queue);
        Self { log, dead_letter_queue, backend: granary_ports::access::guard(backend, "acknowledgement", grants) }
    }

    /// Handles one SQS batch; only acknowledgements that hit a storage failure are retried.
    pub async fn handle(&self, event: LambdaEvent<SqsEvent>) -> Result<SqsBatchResponse, lambda_runtime::Error> {
        let mut failed = Vec::new();
        for msg in &event.payload.records {
            let outcome = match self.apply(msg).await {
                Ok(None) => Ok(()),
                Ok(Some(reason)) => {
                    tracing::warn!(message_id = ?msg.message_id, %reason, "acknowledgement dropped to the dead-letter queue");
                    let out = OutgoingMessage::new(msg.body.clone().unwrap_or_default()).attribute(ATTR_REASON, reason);
                    self.backend.queue.send_batch(&self.dead_letter_queue, vec![out]).await.map(drop).map_err(|e| e.to_string())
                }
                Err(e) => Err(e),
            };
            if let Err(e) = outcome {
                tracing::warn!(message_id = ?msg.message_id, error = %e, "acknowledgement not recorded; SQS will redeliver it");
                failed.push(msg.message_id.clone().unwrap_or_default());
            }
        }
        Ok(sqs::batch_response(failed))
    }

    /// Records one acknowledgement; `Ok(Some(reason))` when it names nothing that was sent.
    async fn apply(&self, msg: &SqsMessage) -> Result<Option<String>, String> {
        let body: Value = match serde_json::from_str(msg.body.as_deref().unwrap_or_default()) {
            Ok(b) => b,
            Err(e) => return Ok(Some(format!("body is not JSON: {e}"))),
        };
        let text = |name: &str| body.get(name).and_then(Value::as_str).filter(|s| !s.trim().is_empty());
        let (Some(urn), Some(label)) = (text("urn"), text("recipientLabel")) else {
            return Ok(Some("a DisseminationAckEvent needs urn and recipientLabel, both non-blank strings".into()));
        };
        let released = match self.log.acknowledge(&self.backend, urn, label).await.map_err(|e| e.to_string())? {
            Ack::Recorded(released) => {
                tracing::info!(%urn, %label, "acknowledged");
                released
            }
            Ack::AlreadyAcknowledged(released) => {
                tracing::info!(%urn, %label, "acknowledged again; the first date is kept");
                released
            }
            Ack::Unknown => return Ok(Some(format!("nothing of {urn} was disseminated to recipient {label:?}"))),
        };
        if let Err(e) = self.log.outbox().flush(&self.backend, &released).await {
            tracing::warn!(error = %e, "events left to the outbox relay");
        }
        Ok(None)
    }
}
