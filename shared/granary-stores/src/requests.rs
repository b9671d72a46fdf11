//! Feature requests as recorded: one item per request id, written with its outcome and its events.

use crate::StoreError;
use granary_domain::{FeatureRequestType, RequestState};
use granary_ports::{Backend, Item, Key};
use serde::Serialize;
use serde_json::Value;

/// A recorded request, as `GET /features/requests/{id}` shows it.
#[derive(Debug, Clone, PartialEq, Serialize)]
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
    /// The SQS message that carried it, to tell a redelivery from a new message reusing the id.
    #[serde(skip)]
    pub message_id: String,
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
        for (name, v) in [
            ("providerId", &self.provider_id),
            ("urn", &self.urn),
            ("sessionOwner", &self.session_owner),
            ("session", &self.session),
            ("action", &self.action),
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
            message_id: s("messageId").unwrap_or_default(),
        })
    }
}

/// Reads requests.
#[derive(Debug, Clone)]
pub struct RequestReader {
    table: String,
}

impl RequestReader {
    /// Requests kept in `table`.
    pub fn new(table: &str) -> Self {
        Self { table: table.to_owned() }
    }

    /// The request `request_id`, if recorded.
    pub async fn get(&self, backend: &Backend, request_id: &str) -> Result<Option<RequestRecord>, StoreError> {
        match backend.table.get(&self.table, &request_key(request_id)).await? {
            Some(item) => Ok(Some(RequestRecord::from_item(&item)?)),
            None => Ok(None),
        }
    }
}
