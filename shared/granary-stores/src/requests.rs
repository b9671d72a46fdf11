//! Feature requests as recorded: one item per request id, written with its outcome and its events.

use crate::StoreError;
use granary_domain::urn::entity_uuid;
use granary_domain::{FeatureRequestType, RequestState};
use granary_ports::{Backend, Cond, Item, Key, Query, SortCond, TxOp, Update};
use serde::Serialize;
use serde_json::Value;
use std::collections::BTreeMap;

/// A recorded request, as `GET /features/requests/{id}` shows it.
#[derive(Debug, Clone, PartialEq, Serialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RequestRecord {
    /// Request id.
    pub request_id: String,
    /// Kind.
    #[serde(rename = "type")]
    pub request_type: FeatureRequestType,
    /// Owner.
    pub request_owner: String,
    /// Last state reported.
    pub state: RequestState,
    /// Processing step (REGARDS's FeatureRequestStep).
    pub step: String,
    /// providerId, when known.
    pub provider_id: Option<String>,
    /// URN, when known.
    pub urn: Option<String>,
    /// Errors.
    pub errors: Vec<String>,
    /// What was done to the feature (CREATED, UPDATED, DELETED, ALREADY_DELETED), once done.
    pub action: Option<String>,
    /// Session owner.
    pub session_owner: Option<String>,
    /// Session.
    pub session: Option<String>,
    /// When registered (epoch ms).
    pub registered_at: i64,
    /// The creation this request waits behind (a patch or deletion of a feature not created yet).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub waiting_for: Option<String>,
    /// The blocking recipients whose acknowledgement it waits for (step
    /// WAITING_BLOCKING_DISSEMINATION) once its feature is changed.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub blocked_by: Vec<String>,
    /// The SQS message that carried it, to tell a redelivery from a new message reusing the id.
    #[serde(skip)]
    pub message_id: String,
    /// Whether writing this record may replace a parked record of the same id (a released request).
    #[serde(skip)]
    pub replaces_parked: bool,
}

/// The sparse index of parked requests by due time.
pub const DUE_INDEX: &str = "due";
/// The one partition of [`DUE_INDEX`]: at most a few thousand requests are parked at once, and each is
/// written twice (park, release), well within one partition's throughput.
pub(crate) const DUE_PARTITION: &str = "due";

/// Where a parked request goes back to when it is due, and what it carried.
#[derive(Debug, Clone, PartialEq)]
pub struct Parked {
    /// When it may be processed, in epoch milliseconds.
    pub due_at: i64,
    /// The queue it goes back to (its priority's).
    pub queue: String,
    /// The message body.
    pub body: String,
    /// The message attributes.
    pub attributes: BTreeMap<String, String>,
}

/// The value of the `bySession` index for a session.
pub fn session_key(owner: &str, session: &str) -> String {
    format!("{owner}#{session}")
}

/// The index of requests by state, newest last.
pub const BY_STATE_INDEX: &str = "byState";
/// The index of requests by session, newest last.
pub const BY_SESSION_INDEX: &str = "bySession";

/// What to list.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RequestFilter {
    /// Requests in this state.
    pub state: Option<RequestState>,
    /// Requests of this session (`sessionOwner`, `session`).
    pub session: Option<(String, String)>,
    /// Requests of this kind.
    pub request_type: Option<FeatureRequestType>,
    /// Registered at or after (epoch ms).
    pub from: Option<i64>,
    /// Registered at or before (epoch ms).
    pub to: Option<i64>,
}

/// A page of requests, with where the next one starts.
#[derive(Debug, Clone, PartialEq)]
pub struct RequestPage {
    /// The requests, oldest first.
    pub content: Vec<RequestRecord>,
    /// The cursor of the next page, if there may be one.
    pub next: Option<String>,
}

/// The key of a request.
pub fn request_key(request_id: &str) -> Key {
    Key::new(format!("R#{request_id}"), "R")
}

impl RequestRecord {
    /// The item storing the record.
    pub fn to_item(&self) -> Item {
        let mut item = Item::new(request_key(&self.request_id))
            .with("requestId", self.request_id.clone())
            .with("type", self.request_type.as_str())
            .with("requestOwner", self.request_owner.clone())
            .with("state", self.state.as_str())
            .with("step", self.step.clone())
            .with("errors", Value::from(self.errors.clone()))
            .with("registeredAt", self.registered_at)
            .with("messageId", self.message_id.clone());
        if let (Some(owner), Some(session)) = (&self.session_owner, &self.session) {
            item = item.with("sessionKey", session_key(owner, session));
        }
        if !self.blocked_by.is_empty() {
            item = item.with("blockedBy", Value::from(self.blocked_by.clone()));
        }
        if self.state.is_finished() {
            // A record is written finished at once only when it is registered (`registeredAt` is then).
            item = item.with(crate::PURGE_AT, granary_domain::request::finished_request_purge_at(self.registered_at));
        }
        for (name, v) in [
            ("providerId", &self.provider_id),
            ("urn", &self.urn),
            ("sessionOwner", &self.session_owner),
            ("session", &self.session),
            ("action", &self.action),
            ("waitingFor", &self.waiting_for),
        ] {
            if let Some(v) = v {
                item = item.with(name, v.clone());
            }
        }
        item
    }

    /// The record stored in `item`.
    pub fn from_item(item: &Item) -> Result<Self, StoreError> {
        let bad = |what: &str| StoreError::Malformed(item.key.pk.clone(), what.to_owned());
        let s = |name: &str| item.get_str(name).map(str::to_owned);
        Ok(Self {
            request_id: s("requestId").ok_or_else(|| bad("requestId"))?,
            request_type: serde_json::from_value(item.get("type").cloned().unwrap_or_default()).map_err(|_| bad("type"))?,
            request_owner: s("requestOwner").unwrap_or_default(),
            state: serde_json::from_value(item.get("state").cloned().unwrap_or_default()).map_err(|_| bad("state"))?,
            step: s("step").unwrap_or_default(),
            provider_id: s("providerId"),
            urn: s("urn"),
            errors: serde_json::from_value(item.get("errors").cloned().unwrap_or(Value::Array(vec![]))).map_err(|_| bad("errors"))?,
            action: s("action"),
            session_owner: s("sessionOwner"),
            session: s("session"),
            registered_at: item.get_i64("registeredAt").unwrap_or_default(),
            waiting_for: s("waitingFor"),
            blocked_by: serde_json::from_value(item.get("blockedBy").cloned().unwrap_or(Value::Array(vec![])))
                .map_err(|_| bad("blockedBy"))?,
            message_id: s("messageId").unwrap_or_default(),
            replaces_parked: false,
        })
    }

    /// The transaction operation writing this record: only if no record has the id, or, for a released
    /// request, over its parked record.
    pub fn write_op(&self, table: &str) -> TxOp {
        let cond = if self.replaces_parked { Cond::Or(vec![Cond::ItemAbsent, Cond::eq("parked", true)]) } else { Cond::ItemAbsent };
        TxOp::Put { table: table.to_owned(), item: self.to_item(), cond: Some(cond) }
    }

    /// The item of this record parked until `parked.due_at`. A parked creation is also listed as
    /// pending for the feature it will create, until its final record replaces this item.
    pub fn parked_item(&self, parked: &Parked) -> Item {
        let mut item = self.to_item();
        if let (FeatureRequestType::Creation, Some(provider_id)) = (self.request_type, &self.provider_id) {
            item = item.with("pendingFeature", entity_uuid(provider_id).to_string());
        }
        item.with("parked", true)
            .with("dueShard", DUE_PARTITION)
            .with("dueAt", parked.due_at)
            .with("queue", parked.queue.clone())
            .with("message", parked.body.clone())
            .with("messageAttributes", serde_json::to_value(&parked.attributes).unwrap_or_default())
    }
}

/// Parked requests that are due, oldest first, at most `limit`.
pub async fn due_requests(backend: &Backend, table: &str, now_ms: i64, limit: usize) -> Result<Vec<(RequestRecord, Parked)>, StoreError> {
    let q = Query::partition(table, DUE_PARTITION).on_index(DUE_INDEX).sorted(SortCond::Le(Value::from(now_ms))).limit(limit);
    let page = backend.table.query(q).await?;
    page.items
        .iter()
        .map(|item| {
            let bad = |what: &str| StoreError::Malformed(item.key.pk.clone(), what.to_owned());
            let parked = Parked {
                due_at: item.get_i64("dueAt").ok_or_else(|| bad("dueAt"))?,
                queue: item.get_str("queue").ok_or_else(|| bad("queue"))?.to_owned(),
                body: item.get_str("message").ok_or_else(|| bad("message"))?.to_owned(),
                attributes: serde_json::from_value(item.get("messageAttributes").cloned().unwrap_or_default())
                    .map_err(|_| bad("messageAttributes"))?,
            };
            Ok((RequestRecord::from_item(item)?, parked))
        })
        .collect()
}

/// The index of parked creations by the uuid of the feature they will create.
pub const PENDING_CREATION_INDEX: &str = "pendingCreation";

/// A creation not processed yet, as a patch or deletion of its feature sees it.
#[derive(Debug, Clone, PartialEq)]
pub struct PendingCreation {
    /// Its request id.
    pub request_id: String,
    /// When it is due.
    pub due_at: i64,
    /// Its session (the feature's, once created).
    pub session: Option<(String, String)>,
}

/// The last-due creation still in flight for the feature of uuid `feature_uuid`, if any.
pub async fn pending_creation(backend: &Backend, table: &str, feature_uuid: &str) -> Result<Option<PendingCreation>, StoreError> {
    let q = Query::partition(table, feature_uuid).on_index(PENDING_CREATION_INDEX).descending().limit(1);
    let page = backend.table.query(q).await?;
    Ok(page.items.first().map(|item| PendingCreation {
        request_id: item.get_str("requestId").unwrap_or_default().to_owned(),
        due_at: item.get_i64("dueAt").unwrap_or_default(),
        session: match (item.get_str("sessionOwner"), item.get_str("session")) {
            (Some(o), Some(s)) => Some((o.to_owned(), s.to_owned())),
            _ => None,
        },
    }))
}

/// Takes a released request out of the due index (it is back on its queue), if it is still parked.
/// Returns whether it was.
pub async fn mark_released(backend: &Backend, table: &str, request_id: &str) -> Result<bool, StoreError> {
    let result = backend
        .table
        .update(
            table,
            &request_key(request_id),
            vec![Update::remove("dueShard"), Update::set("step", "LOCAL_SCHEDULED")],
            Some(Cond::And(vec![Cond::eq("parked", true), Cond::exists("dueShard")])),
        )
        .await;
    match result {
        Ok(_) => Ok(true),
        Err(granary_ports::PortError::ConditionFailed { .. }) => Ok(false),
        Err(e) => Err(e.into()),
    }
}

/// Reads requests.
#[derive(Debug, Clone)]
pub struct RequestReader {
    table: String,
}

impl RequestReader {
    /// What it touches: reads requests, and records a dead letter as a request in error.
    pub fn grants(&self) -> granary_ports::access::Grants {
        granary_ports::access::Grants::new().write_table(&self.table)
    }
    /// Requests kept in `table`.
    pub fn new(table: &str) -> Self {
        Self { table: table.to_owned() }
    }

    /// One page of the requests matching `filter` (a state or a session is required: each is an
    /// index), oldest first. The type filter applies within the page, which may then hold fewer than
    /// `size` requests while more follow.
    pub async fn list(
        &self,
        backend: &Backend,
        filter: &RequestFilter,
        size: usize,
        after: Option<&str>,
    ) -> Result<RequestPage, StoreError> {
        let (index, partition) = match (&filter.session, filter.state) {
            (Some((owner, session)), _) => (BY_SESSION_INDEX, session_key(owner, session)),
            (None, Some(state)) => (BY_STATE_INDEX, state.as_str().to_owned()),
            (None, None) => return Err(StoreError::Malformed("request filter".into(), "a state or a session is required".into())),
        };
        let mut q = Query::partition(&self.table, partition).on_index(index).limit(size);
        q.sort = match (filter.from, filter.to) {
            (Some(a), Some(b)) => Some(SortCond::Between(Value::from(a), Value::from(b))),
            (Some(a), None) => Some(SortCond::Ge(Value::from(a))),
            (None, Some(b)) => Some(SortCond::Le(Value::from(b))),
            (None, None) => None,
        };
        q.after = after.map(|c| granary_ports::Cursor(c.to_owned()));
        let page = backend.table.query(q).await?;
        let content = page
            .items
            .iter()
            .map(RequestRecord::from_item)
            .collect::<Result<Vec<_>, _>>()?
            .into_iter()
            .filter(|r| filter.request_type.is_none_or(|t| r.request_type == t))
            .filter(|r| filter.state.is_none_or(|s| r.state == s))
            .collect();
        Ok(RequestPage { content, next: page.next.map(|c| c.0) })
    }

    /// The request `request_id`, if recorded.
    pub async fn get(&self, backend: &Backend, request_id: &str) -> Result<Option<RequestRecord>, StoreError> {
        match backend.table.get(&self.table, &request_key(request_id)).await? {
            Some(item) => Ok(Some(RequestRecord::from_item(&item)?)),
            None => Ok(None),
        }
    }
}
