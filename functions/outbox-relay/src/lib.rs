//! `outbox-relay`: on a schedule, sends the events that a handler committed but did not get to send
//! (it crashed or timed out between its transaction and its send). Handlers normally send their own
//! events at once; this is the safety net that makes "written with the state it reports" also mean
//! "delivered". On the embedded backend a transaction sends its events as it commits and writes no
//! row, so there the relay finds only rows written before that (or by another backend's runner).

use aws_lambda_events::event::cloudwatch_events::CloudWatchEvent;
use granary_lambda::Config;
use granary_lambda::config::env_number;
use granary_ports::Backend;
use granary_stores::outbox::Outbox;
use lambda_runtime::LambdaEvent;

/// The handler and what it needs, built once per cold start.
#[derive(Debug, Clone)]
pub struct OutboxRelay {
    backend: Backend,
    outbox: Outbox,
    grace_ms: i64,
}

impl OutboxRelay {
    /// The relay over `backend`. `GRANARY_OUTBOX_GRACE_MS` (default 10000) is how old a pending event
    /// must be before the relay sends it, leaving the writing handler time to send it itself.
    pub fn new(backend: Backend, config: &Config) -> Result<Self, String> {
        let outbox = Outbox::new(&config.requests_table);
        // Every queue an event is staged for.
        let queues = [
            &config.response_queue,
            &config.notification_queue,
            &config.storage_jobs_queue,
            &config.order_create_queue,
            &config.suborder_dispatch_queue,
            &config.order_events_queue,
        ];
        let grants = queues.into_iter().fold(outbox.grants(), |g, q| g.send(q));
        let backend = granary_ports::access::guard(backend, "outbox-relay", grants);
        Ok(Self { backend, outbox, grace_ms: env_number("GRANARY_OUTBOX_GRACE_MS", 10_000)? })
    }

    /// Handles one scheduled event; returns how many events were sent.
    pub async fn handle(&self, _event: LambdaEvent<CloudWatchEvent>) -> Result<serde_json::Value, lambda_runtime::Error> {
        let before = self.backend.clock.now_ms() - self.grace_ms;
        let sent = self.outbox.relay(&self.backend, before).await?;
        if sent > 0 {
            tracing::info!(sent, "relayed events left in the outbox");
        }
        Ok(serde_json::json!({ "sent": sent }))
    }
}
