//! `delayed-release`: on a schedule, sends parked feature requests (step LOCAL_DELAYED, dated in the
//! future) back to the queue of their priority once their date has come, marked so that ingest
//! processes them instead of parking them again.
//!
//! Waiting is parking, not redelivery: a delayed request sits in the requests table, not in SQS, so it
//! never counts towards a queue's maxReceiveCount. A release is at least once: if the function stops
//! between the send and the mark, the next run sends it again, and ingest drops the second copy.

use aws_lambda_events::event::cloudwatch_events::CloudWatchEvent;
use granary_lambda::Config;
use granary_ports::{Backend, OutgoingMessage};
use granary_stores::recovery::Recovery;
use granary_stores::requests::{due_requests, mark_released};
use lambda_runtime::LambdaEvent;

use granary_lambda::sqs::ATTR_RELEASED;
/// Requests released per query page.
const PAGE: usize = 100;

/// The handler and what it needs, built once per cold start.
#[derive(Debug, Clone)]
pub struct DelayedRelease {
    backend: Backend,
    requests_table: String,
    recovery: Recovery,
}

impl DelayedRelease {
    /// The handler over `backend`.
    pub fn new(backend: Backend, config: &Config) -> Self {
        let recovery = Recovery::new(&config.requests_table, &config.response_queue);
        // Parked requests go back to the feature queue of their priority.
        let grants = config.feature_queues.iter().fold(recovery.grants(), |g, q| g.send(q));
        Self {
            backend: granary_ports::access::guard(backend, "delayed-release", grants),
            requests_table: config.requests_table.clone(),
            recovery,
        }
    }

    /// Releases every request due now; returns how many.
    pub async fn release_due(&self) -> Result<usize, granary_stores::StoreError> {
        let mut released = 0;
        loop {
            let now = self.backend.clock.now_ms();
            let due = due_requests(&self.backend, &self.requests_table, now, PAGE).await?;
            if due.is_empty() {
                return Ok(released);
            }
            for (record, parked) in &due {
                let mut message = OutgoingMessage::new(parked.body.clone());
                message.attributes = parked.attributes.clone();
                message = message.attribute(ATTR_RELEASED, "true");
                self.backend.queue.send_batch(&parked.queue, vec![message]).await?;
                if mark_released(&self.backend, &self.requests_table, &record.request_id).await? {
                    released += 1;
                }
            }
        }
    }

    /// Moves every request past its remote step's deadline to its error step; returns how many.
    pub async fn expire_remote_steps(&self) -> Result<usize, granary_stores::StoreError> {
        let mut expired = 0;
        loop {
            let events = self.recovery.expire_remote_steps(&self.backend, PAGE).await?;
            if events.is_empty() {
                return Ok(expired);
            }
            expired += events.len();
            // Committed with the state: if sending fails the outbox relay sends them later.
            if let Err(e) = self.recovery.outbox().flush(&self.backend, &events).await {
                tracing::warn!(error = %e, "ERROR events left to the outbox relay");
            }
        }
    }

    /// Handles one scheduled event.
    pub async fn handle(&self, _event: LambdaEvent<CloudWatchEvent>) -> Result<serde_json::Value, lambda_runtime::Error> {
        let released = self.release_due().await?;
        if released > 0 {
            tracing::info!(released, "released parked requests whose date has come");
        }
        let expired = self.expire_remote_steps().await?;
        if expired > 0 {
            tracing::warn!(expired, "requests moved to their error step: no remote answer before the deadline");
        }
        Ok(serde_json::json!({ "released": released, "expired": expired }))
    }
}
