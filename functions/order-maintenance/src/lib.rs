//! `order-maintenance`, on a schedule:
//!
//! - orders past their expiration date become EXPIRED, and a worker releases them (slots freed, the
//!   quota of files not downloaded given back, their hold on stored objects dropped);
//! - a storage suborder RUNNING for longer than `GRANARY_SUBORDER_TIMEOUT_HOURS` has its files still
//!   waiting on a restore or a storage service put in ERROR ("storage did not answer"), and moves on;
//! - an order whose files have waited for their owner longer than `GRANARY_ORDER_REMINDER_HOURS`
//!   gets a REMINDER event (once per that delay);
//! - dispatch is nudged, as a safety net for a nudge lost between a commit and its send.

use aws_lambda_events::event::cloudwatch_events::CloudWatchEvent;
use granary_domain::order::OrderStatus;
use granary_lambda::Config;
use granary_ports::{Backend, Update};
use granary_stores::StoreError;
use granary_stores::fulfilment::Fulfilment;
use granary_stores::orders::OrderStore;
use granary_stores::outbox::OutboxEvent;
use lambda_runtime::LambdaEvent;
use serde_json::{Value, json};

/// Most orders or suborders one run handles of each kind; the next run takes the rest.
const BATCH: usize = 200;

/// What one run did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Maintained {
    /// Orders expired.
    pub expired: usize,
    /// Files failed because their storage never answered.
    pub timed_out: usize,
    /// Reminders sent.
    pub reminded: usize,
}

/// The handler and what it needs, built once per cold start.
#[derive(Debug, Clone)]
pub struct OrderMaintenance {
    backend: Backend,
    config: Config,
    fulfilment: Fulfilment,
    orders: OrderStore,
    reminder_ms: i64,
}

impl OrderMaintenance {
    /// The handler over `backend`; reminders after `GRANARY_ORDER_REMINDER_HOURS` (default 72,
    /// REGARDS's `delayBeforeEmailNotification`).
    pub fn new(backend: Backend, config: Config) -> Self {
        let hours = granary_lambda::config::env_number::<i64>("GRANARY_ORDER_REMINDER_HOURS", 72).unwrap_or(72).max(1);
        let fulfilment =
            Fulfilment::new(&config.orders_table, &config.requests_table, &config.suborder_dispatch_queue, &config.order_events_queue);
        let orders = OrderStore::new(&config.orders_table, &config.requests_table);
        let backend = granary_ports::access::guard(backend, "order-maintenance", fulfilment.grants().and(orders.grants()));
        Self { fulfilment, orders, reminder_ms: hours * 3_600_000, backend, config }
    }

    /// One scheduled run.
    pub async fn handle(&self, _event: LambdaEvent<CloudWatchEvent>) -> Result<Value, lambda_runtime::Error> {
        let done = self.run().await?;
        if done != Maintained::default() {
            tracing::info!(expired = done.expired, timed_out = done.timed_out, reminded = done.reminded, "orders maintained");
        }
        Ok(json!({ "expired": done.expired, "timedOut": done.timed_out, "reminded": done.reminded }))
    }

    /// Expires, times out, reminds, then nudges dispatch.
    pub async fn run(&self) -> Result<Maintained, StoreError> {
        let now = self.backend.clock.now_ms();
        let mut done = Maintained::default();
        let mut events = Vec::new();
        for order in self.fulfilment.expired_by(&self.backend, now, BATCH).await? {
            let order_id = order.get_str("orderId").unwrap_or_default().to_owned();
            let status = order.get_str("status").and_then(OrderStatus::parse);
            if matches!(status, Some(OrderStatus::Deleted | OrderStatus::Expired)) {
                continue;
            }
            let release = OutboxEvent {
                event_id: format!("release:{order_id}"),
                queue: self.config.suborder_dispatch_queue.clone(),
                body: json!({ "release": { "orderId": order_id } }).to_string(),
            };
            let updates = vec![Update::set("availableFilesCount", 0)];
            if self.fulfilment.change_status(&self.backend, &order, OrderStatus::Expired, updates, std::slice::from_ref(&release)).await? {
                tracing::info!(order_id, "order expired");
                done.expired += 1;
                events.push(release);
            }
        }
        let timeout_ms = self.config.suborder_timeout_hours * 3_600_000;
        for s in self.fulfilment.running_since_before(&self.backend, now - timeout_ms, BATCH).await? {
            let order_id = s.get_str("orderId").unwrap_or_default().to_owned();
            let number = s.get_i64("number").unwrap_or(0) as u32;
            // A paused order's storage was not asked to go on: its time does not run out.
            let order = self.orders.get(&self.backend, &order_id).await?;
            if order.is_none_or(|o| o.get_str("status") != Some(OrderStatus::Running.as_str())) {
                continue;
            }
            let cause = format!("storage did not answer within {} hours", self.config.suborder_timeout_hours);
            for f in self.orders.suborder_files(&self.backend, &order_id, number).await? {
                if f.get_str("state") == Some("PENDING") && self.fulfilment.failed(&self.backend, &order_id, &f, &cause).await? {
                    done.timed_out += 1;
                }
            }
            // A processing that never ended (its job dead-lettered): the files stay as they are.
            let stuck = s.get("processing").is_some()
                && s.get("processedAt").is_none()
                && s.get_i64("processingStartedAt").is_some_and(|at| at < now - timeout_ms);
            if stuck {
                tracing::warn!(order_id, number, "processing did not end in time: the suborder's files are left as they are");
                events.extend(self.fulfilment.processed(&self.backend, &order_id, number).await?);
                continue;
            }
            events.extend(self.fulfilment.settle(&self.backend, &order_id, number).await?);
        }
        let mut after = None;
        loop {
            let (orders, next) = self.fulfilment.expiring(&self.backend, after, BATCH).await?;
            for order in orders {
                let waiting = order.get_i64("availableFilesCount").unwrap_or(0) > 0;
                let since = order.get_i64("remindedAt").or(order.get_i64("statusDate")).unwrap_or(now);
                if !waiting || now - since < self.reminder_ms {
                    continue;
                }
                let reminder = self.fulfilment.order_event(&order, "REMINDER", None, Some("files of this order wait to be downloaded"));
                let reminder = OutboxEvent { event_id: format!("{}:{now}", reminder.event_id), ..reminder };
                let staged = self.fulfilment.outbox().stage(&reminder, now);
                if self.orders.remind(&self.backend, &order, now, staged).await? {
                    done.reminded += 1;
                    events.push(reminder);
                }
            }
            match next {
                Some(c) => after = Some(c),
                None => break,
            }
        }
        events.push(self.fulfilment.nudge(&format!("schedule:{now}")));
        self.fulfilment.outbox().flush(&self.backend, &events).await?;
        Ok(done)
    }
}
