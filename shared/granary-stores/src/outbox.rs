//! The outbox: events are staged in the same transaction as the state they report. Where the
//! backend's queues share its transactions (the embedded backend) the transaction sends them itself;
//! elsewhere (DynamoDB) each is a row that the handler sends and deletes after the commit, and a crash
//! between commit and send leaves the row, which the relay sends later. Each event has a deterministic
//! id, so a receiver drops a redelivery by id.

use granary_ports::{Backend, Item, Key, OutgoingMessage, PortResult, Query, SortCond, TxOp};
use serde_json::json;

/// The index listing pending outbox rows by creation time.
pub const OUTBOX_INDEX: &str = "outbox";

/// One event waiting to be sent.
#[derive(Debug, Clone, PartialEq)]
pub struct OutboxEvent {
    /// Deterministic event id.
    pub event_id: String,
    /// Destination queue.
    pub queue: String,
    /// Message body.
    pub body: String,
}

/// The outbox, its rows (where the backend writes rows) kept in the requests table.
#[derive(Debug, Clone)]
pub struct Outbox {
    table: String,
}

/// The message that carries `event`, its id in the `granary.event.id` attribute.
fn message(event: &OutboxEvent) -> OutgoingMessage {
    OutgoingMessage::new(event.body.clone()).attribute("granary.event.id", event.event_id.clone())
}

fn key(event_id: &str) -> Key {
    Key::new(format!("O#{event_id}"), "O")
}

impl Outbox {
    /// What it touches: events are staged in and relayed from its table (the queues they go to are their senders' grants).
    pub fn grants(&self) -> granary_ports::access::Grants {
        granary_ports::access::Grants::new().write_table(&self.table)
    }
    /// The outbox kept in `table`.
    pub fn new(table: &str) -> Self {
        Self { table: table.to_owned() }
    }

    /// The transaction operation recording `event`: sent as the transaction commits where the
    /// backend's queues share its transactions (the embedded backend), otherwise a row, once per id,
    /// that [`Outbox::flush`] or the relay sends.
    pub fn stage(&self, event: &OutboxEvent, now_ms: i64) -> TxOp {
        let row = Item::new(key(&event.event_id))
            .with("eventId", event.event_id.clone())
            .with("queue", event.queue.clone())
            .with("body", event.body.clone())
            .with("outbox", "pending")
            .with("createdAt", now_ms);
        TxOp::Outbox {
            table: self.table.clone(),
            row,
            event_id: event.event_id.clone(),
            queue: event.queue.clone(),
            message: message(event),
        }
    }

    /// Sends the events of a commit that are not sent yet: staged events the transaction sent as it
    /// committed are skipped, staged rows are sent and deleted, and events never staged (a nudge to a
    /// worker) are sent. Events go grouped by queue, in batches SQS takes, rows are deleted in
    /// transactions of up to 100. A crash in between leaves rows that the relay sends again:
    /// receivers drop the repeat by event id.
    pub async fn flush(&self, backend: &Backend, events: &[OutboxEvent]) -> PortResult<()> {
        let unsent: Vec<&OutboxEvent> = events.iter().filter(|e| !backend.table.take_sent_with_commit(&e.event_id)).collect();
        self.send_and_delete(backend, &unsent).await
    }

    /// Sends `events` and deletes their rows.
    ///
    /// The batches go out at once, not one after the other: on AWS that is one round trip instead of
    /// one per ten events, and the embedded backend commits writes that wait together in one
    /// transaction.
    async fn send_and_delete(&self, backend: &Backend, events: &[&OutboxEvent]) -> PortResult<()> {
        if events.is_empty() {
            return Ok(());
        }
        let mut by_queue: std::collections::BTreeMap<&str, Vec<OutgoingMessage>> = Default::default();
        for e in events {
            by_queue.entry(&e.queue).or_default().push(message(e));
        }
        let sends = by_queue
            .into_iter()
            .map(|(queue, msgs)| granary_ports::queue::send_all(backend.queue.as_ref(), queue, msgs, usize::MAX, |_| {}));
        futures::future::try_join_all(sends).await?;
        let deletes = events.chunks(granary_ports::table::MAX_TRANSACTION_OPS).map(|chunk| {
            let deletes = chunk.iter().map(|e| TxOp::Delete { table: self.table.clone(), key: key(&e.event_id), cond: None }).collect();
            backend.table.transact(deletes)
        });
        futures::future::try_join_all(deletes).await?;
        Ok(())
    }

    /// Sends every event staged before `older_than_ms` and still pending (the relay's sweep). Returns how
    /// many were sent.
    pub async fn relay(&self, backend: &Backend, older_than_ms: i64) -> PortResult<usize> {
        let mut sent = 0;
        loop {
            let q = Query::partition(&self.table, "pending").on_index(OUTBOX_INDEX).sorted(SortCond::Lt(json!(older_than_ms))).limit(100);
            let page = backend.table.query(q).await?;
            if page.items.is_empty() {
                return Ok(sent);
            }
            let events: Vec<OutboxEvent> = page
                .items
                .iter()
                .filter_map(|i| {
                    Some(OutboxEvent {
                        event_id: i.get_str("eventId")?.to_owned(),
                        queue: i.get_str("queue")?.to_owned(),
                        body: i.get_str("body")?.to_owned(),
                    })
                })
                .collect();
            self.send_and_delete(backend, &events.iter().collect::<Vec<_>>()).await?;
            sent += events.len();
            if events.len() < page.items.len() {
                // Rows this version cannot read stay for an operator; never spin on them.
                tracing::error!(count = page.items.len() - events.len(), "malformed outbox rows left in place");
                return Ok(sent);
            }
        }
    }
}
