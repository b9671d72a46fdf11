//! Requests in error, and getting them out of it: a message that kept failing (it reached the feature
//! dead-letter queue) is recorded as a request in ERROR, step LOCAL_ERROR, with its message kept; a
//! request waiting on a remote answer past its deadline moves to its error step; an admin retries a
//! request in error (it is parked due now, and delayed-release sends it back to its queue) or deletes
//! it. Every change is one conditional write with its events, so two admins or two sweeps racing do
//! the work once.

use crate::StoreError;
use crate::outbox::{Outbox, OutboxEvent};
use crate::requests::{Parked, RequestRecord, request_key};
use crate::sessions::session_op;
use granary_domain::session::Outcome;
use granary_domain::{FeatureRequestEvent, FeatureRequestType, RequestState, entity_uuid};
use granary_ports::{Backend, Cond, Item, PortError, Query, SortCond, TxOp, Update};
use serde_json::Value;

/// The sparse index of requests waiting on a remote answer, by deadline.
pub const TIMEOUT_INDEX: &str = "timeouts";
/// The one partition of [`TIMEOUT_INDEX`].
pub(crate) const TIMEOUT_PARTITION: &str = "timeout";

/// The error step a remote step times out into (REGARDS's FeatureRequestStep).
pub fn error_step_of(step: &str) -> Option<&'static str> {
    match step {
        "REMOTE_STORAGE_REQUESTED" | "REMOTE_STORAGE_DELETION_REQUESTED" => Some("REMOTE_STORAGE_ERROR"),
        "REMOTE_NOTIFICATION_REQUESTED" => Some("REMOTE_NOTIFICATION_ERROR"),
        _ => None,
    }
}

/// The updates that put a request in the remote step `step` until `deadline_ms`, keeping the message
/// that carried it so that an admin can retry it if it times out.
pub fn enter_remote_step(step: &str, now_ms: i64, deadline_ms: i64, message: &Parked) -> Vec<Update> {
    vec![
        Update::set("step", step),
        Update::set("stepSince", now_ms),
        Update::set("timeoutShard", TIMEOUT_PARTITION),
        Update::set("timeoutAt", deadline_ms),
        Update::set("queue", message.queue.clone()),
        Update::set("message", message.body.clone()),
        Update::set("messageAttributes", serde_json::to_value(&message.attributes).unwrap_or_default()),
    ]
}

/// What an admin's retry or delete came to.
#[derive(Debug, Clone, PartialEq)]
pub enum AdminOutcome {
    /// Done.
    Done,
    /// No such request.
    Unknown,
    /// The request is not in ERROR (its state is given).
    NotInError(RequestState),
    /// The request is in error but its message was not kept, so it cannot run again.
    NothingToRetry,
}

/// Requests in error.
#[derive(Debug, Clone)]
pub struct Recovery {
    table: String,
    response_queue: String,
    outbox: Outbox,
}

impl Recovery {
    /// What it touches (see `granary_ports::access`).
    pub fn grants(&self) -> granary_ports::access::Grants {
        granary_ports::access::Grants::new().write_table(&self.table).and(self.outbox.grants()).send(&self.response_queue)
    }
    /// Requests (and the outbox) in `table`; ERROR and GRANTED events go to `response_queue`.
    pub fn new(table: &str, response_queue: &str) -> Self {
        Self { table: table.to_owned(), response_queue: response_queue.to_owned(), outbox: Outbox::new(table) }
    }

    /// The outbox the events are staged in.
    pub fn outbox(&self) -> &Outbox {
        &self.outbox
    }

    fn event(&self, record: &RequestRecord, state: RequestState, errors: Vec<String>) -> OutboxEvent {
        let mut e = FeatureRequestEvent::new(record.request_type, &record.request_id, &record.request_owner, state);
        e.id = record.provider_id.clone();
        e.urn = record.urn.clone();
        e.errors = errors;
        OutboxEvent {
            event_id: e.event_id.clone(),
            queue: self.response_queue.clone(),
            body: serde_json::to_string(&e).unwrap_or_default(),
        }
    }

    /// Records the request of a message that kept failing (ERROR, LOCAL_ERROR, its message kept for a
    /// retry) with its ERROR event, unless the request reached a final state meanwhile. A request that
    /// was parked (counted as running) stops running. Returns the events to send, empty when nothing
    /// was recorded.
    pub async fn record_failed(&self, backend: &Backend, record: &RequestRecord, message: &Parked) -> Result<Vec<OutboxEvent>, StoreError> {
        let existing = backend.table.get(&self.table, &request_key(&record.request_id)).await?;
        let was_parked = existing.as_ref().is_some_and(|i| i.get("parked").and_then(Value::as_bool) == Some(true));
        if existing.is_some() && !was_parked {
            // Processed (or recorded in error) after all: the dead letter is a leftover copy.
            return Ok(vec![]);
        }
        let mut record = record.clone();
        if let Some(item) = &existing {
            // Keep what the parked record knew (its session above all: it is counted there).
            let parked = RequestRecord::from_item(item)?;
            record.session_owner = record.session_owner.or(parked.session_owner);
            record.session = record.session.or(parked.session);
            record.provider_id = record.provider_id.or(parked.provider_id);
            record.urn = record.urn.or(parked.urn);
        }
        let item = with_message(record.to_item(), message);
        let cond = if was_parked { Cond::eq("parked", true) } else { Cond::ItemAbsent };
        let events = vec![self.event(&record, RequestState::Error, record.errors.clone())];
        let now = backend.clock.now_ms();
        let mut ops = vec![TxOp::Put { table: self.table.clone(), item, cond: Some(cond) }];
        ops.extend(session_op(&self.table, &record, Outcome::Failed { was_running: was_parked }));
        ops.extend(events.iter().map(|e| self.outbox.stage(e, now)));
        match backend.table.transact(ops).await {
            Ok(()) => Ok(events),
            // Changed meanwhile (processed, or recorded by a concurrent copy): let SQS bring it again.
            Err(PortError::TransactionCanceled { .. }) => Err(StoreError::Contention(record.request_id, 1)),
            Err(e) => Err(e.into()),
        }
    }

    /// Puts request `request_id`, done, in ERROR / REMOTE_NOTIFICATION_ERROR: its notification kept
    /// failing. The notification is kept as its message, so that an admin's retry sends it again (to
    /// the recipients that did not get it). Returns the events to send; none when the request is
    /// unknown or already in error.
    pub async fn record_notification_failed(
        &self,
        backend: &Backend,
        request_id: &str,
        errors: Vec<String>,
        message: &Parked,
    ) -> Result<Vec<OutboxEvent>, StoreError> {
        let Some(item) = backend.table.get(&self.table, &request_key(request_id)).await? else { return Ok(vec![]) };
        let record = RequestRecord::from_item(&item)?;
        if record.state == RequestState::Error {
            return Ok(vec![]);
        }
        let now = backend.clock.now_ms();
        let events = vec![self.event(&record, RequestState::Error, errors.clone())];
        let mut ops = vec![TxOp::Update {
            table: self.table.clone(),
            key: item.key.clone(),
            updates: vec![
                Update::set("state", RequestState::Error.as_str()),
                Update::set("step", "REMOTE_NOTIFICATION_ERROR"),
                Update::set("errors", Value::from(errors)),
                Update::set("queue", message.queue.clone()),
                Update::set("message", message.body.clone()),
                Update::set("messageAttributes", serde_json::to_value(&message.attributes).unwrap_or_default()),
            ],
            cond: Some(Cond::eq("state", record.state.as_str())),
        }];
        ops.extend(session_op(&self.table, &record, Outcome::FailedAfterDone));
        ops.extend(events.iter().map(|e| self.outbox.stage(e, now)));
        match backend.table.transact(ops).await {
            Ok(()) => Ok(events),
            Err(PortError::TransactionCanceled { .. }) => Err(StoreError::Contention(request_id.to_owned(), 1)),
            Err(e) => Err(e.into()),
        }
    }

    /// A retried notification reached its recipients: the request, released by an admin's retry, is
    /// SUCCESS again. Returns the events to send; none when it was not waiting on that.
    pub async fn notification_delivered(&self, backend: &Backend, request_id: &str) -> Result<Vec<OutboxEvent>, StoreError> {
        let Some(item) = backend.table.get(&self.table, &request_key(request_id)).await? else { return Ok(vec![]) };
        let record = RequestRecord::from_item(&item)?;
        if record.state != RequestState::Granted || !matches!(record.step.as_str(), "LOCAL_SCHEDULED" | "LOCAL_DELAYED") {
            return Ok(vec![]);
        }
        let now = backend.clock.now_ms();
        let events = vec![self.event(&record, RequestState::Success, vec![])];
        let mut ops = vec![TxOp::Update {
            table: self.table.clone(),
            key: item.key.clone(),
            updates: [
                crate::storage::success_updates(now),
                vec![Update::remove("parked"), Update::remove("dueShard"), Update::remove("dueAt"), Update::remove("pendingFeature")],
            ]
            .concat(),
            cond: Some(Cond::And(vec![Cond::eq("state", RequestState::Granted.as_str()), Cond::eq("step", record.step.clone())])),
        }];
        ops.extend(session_op(&self.table, &record, Outcome::Done { released: true, changed: false }));
        ops.extend(events.iter().map(|e| self.outbox.stage(e, now)));
        match backend.table.transact(ops).await {
            Ok(()) => Ok(events),
            Err(PortError::TransactionCanceled { .. }) => Ok(vec![]),
            Err(e) => Err(e.into()),
        }
    }

    /// Moves up to `limit` requests whose remote step is past its deadline to the step's error step,
    /// with their ERROR events; returns the events to send.
    pub async fn expire_remote_steps(&self, backend: &Backend, limit: usize) -> Result<Vec<OutboxEvent>, StoreError> {
        let now = backend.clock.now_ms();
        let q =
            Query::partition(&self.table, TIMEOUT_PARTITION).on_index(TIMEOUT_INDEX).sorted(SortCond::Le(Value::from(now))).limit(limit);
        let mut sent = Vec::new();
        for item in backend.table.query(q).await?.items {
            let record = RequestRecord::from_item(&item)?;
            let deadline = item.get_i64("timeoutAt").unwrap_or_default();
            let Some(error_step) = error_step_of(&record.step) else {
                tracing::error!(request_id = %record.request_id, step = %record.step, "a deadline on a step that has no error step; left in place");
                continue;
            };
            let waited = (now - item.get_i64("stepSince").unwrap_or(deadline)).max(0);
            let error = format!(
                "{}: no answer before the deadline ({} s in the step); an admin may retry or delete the request",
                record.step,
                waited / 1000
            );
            let events = vec![self.event(&record, RequestState::Error, vec![error.clone()])];
            let mut ops = vec![TxOp::Update {
                table: self.table.clone(),
                key: item.key.clone(),
                updates: vec![
                    Update::set("state", RequestState::Error.as_str()),
                    Update::set("step", error_step),
                    Update::set("errors", Value::from(vec![error])),
                    Update::remove("timeoutShard"),
                    Update::remove("timeoutAt"),
                ],
                // Only if it is still waiting in that step with that deadline.
                cond: Some(Cond::And(vec![Cond::eq("step", record.step.clone()), Cond::eq("timeoutAt", deadline)])),
            }];
            ops.extend(session_op(&self.table, &record, Outcome::Failed { was_running: true }));
            ops.extend(events.iter().map(|e| self.outbox.stage(e, now)));
            match backend.table.transact(ops).await {
                Ok(()) => sent.extend(events),
                // The answer came (or another sweep won) meanwhile.
                Err(PortError::TransactionCanceled { .. }) => {}
                Err(e) => return Err(e.into()),
            }
        }
        Ok(sent)
    }

    /// Retries a request in error: it is parked due now (GRANTED, LOCAL_DELAYED) with its GRANTED
    /// event, and delayed-release sends its message back to its queue. Returns the events to send.
    pub async fn retry(&self, backend: &Backend, request_id: &str) -> Result<(AdminOutcome, Vec<OutboxEvent>), StoreError> {
        let Some(item) = backend.table.get(&self.table, &request_key(request_id)).await? else {
            return Ok((AdminOutcome::Unknown, vec![]));
        };
        let record = RequestRecord::from_item(&item)?;
        if record.state != RequestState::Error {
            return Ok((AdminOutcome::NotInError(record.state), vec![]));
        }
        // Files that could not be stored are stored again; the feature itself is not created again.
        if let Some(events) = crate::storage::retry(backend, &self.table, &self.response_queue, &item).await? {
            return Ok((AdminOutcome::Done, events));
        }
        if item.get_str("message").is_none() {
            return Ok((AdminOutcome::NothingToRetry, vec![]));
        }
        let now = backend.clock.now_ms();
        let mut updates = vec![
            Update::set("state", RequestState::Granted.as_str()),
            Update::set("step", "LOCAL_DELAYED"),
            Update::set("errors", Value::Array(vec![])),
            Update::set("parked", true),
            Update::set("dueShard", crate::requests::DUE_PARTITION),
            Update::set("dueAt", now),
        ];
        if let (FeatureRequestType::Creation, Some(provider_id)) = (record.request_type, &record.provider_id) {
            // Pending again: changes of its feature wait behind it.
            updates.push(Update::set("pendingFeature", entity_uuid(provider_id).to_string()));
        }
        let events = vec![self.event(&record, RequestState::Granted, vec![])];
        let mut ops = vec![TxOp::Update {
            table: self.table.clone(),
            key: item.key.clone(),
            updates,
            cond: Some(Cond::And(vec![Cond::eq("state", RequestState::Error.as_str()), Cond::exists("message")])),
        }];
        // Out of error, running again in its session.
        ops.extend(session_op(&self.table, &record, Outcome::Retried));
        ops.extend(events.iter().map(|e| self.outbox.stage(e, now)));
        match backend.table.transact(ops).await {
            Ok(()) => Ok((AdminOutcome::Done, events)),
            Err(PortError::TransactionCanceled { .. }) => {
                // Another admin retried (or deleted) it first.
                let state = self.state_of(backend, request_id).await?;
                Ok((state.map_or(AdminOutcome::Unknown, AdminOutcome::NotInError), vec![]))
            }
            Err(e) => Err(e.into()),
        }
    }

    /// Deletes a request in error (its id may then be used again).
    pub async fn delete(&self, backend: &Backend, request_id: &str) -> Result<AdminOutcome, StoreError> {
        let key = request_key(request_id);
        let Some(item) = backend.table.get(&self.table, &key).await? else { return Ok(AdminOutcome::Unknown) };
        let record = RequestRecord::from_item(&item)?;
        if record.state != RequestState::Error {
            return Ok(AdminOutcome::NotInError(record.state));
        }
        let mut ops = vec![TxOp::Delete { table: self.table.clone(), key, cond: Some(Cond::eq("state", RequestState::Error.as_str())) }];
        ops.extend(session_op(&self.table, &record, Outcome::DeletedInError));
        match backend.table.transact(ops).await {
            Ok(()) => Ok(AdminOutcome::Done),
            Err(PortError::TransactionCanceled { .. }) => {
                let state = self.state_of(backend, request_id).await?;
                Ok(state.map_or(AdminOutcome::Unknown, AdminOutcome::NotInError))
            }
            Err(e) => Err(e.into()),
        }
    }

    async fn state_of(&self, backend: &Backend, request_id: &str) -> Result<Option<RequestState>, StoreError> {
        match backend.table.get(&self.table, &request_key(request_id)).await? {
            Some(item) => Ok(Some(RequestRecord::from_item(&item)?.state)),
            None => Ok(None),
        }
    }
}

/// `item` with the message that carried its request, to send again on a retry.
fn with_message(item: Item, message: &Parked) -> Item {
    item.with("queue", message.queue.clone())
        .with("message", message.body.clone())
        .with("messageAttributes", serde_json::to_value(&message.attributes).unwrap_or_default())
}
