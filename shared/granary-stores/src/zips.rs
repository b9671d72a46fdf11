//! The zip of an order being built in the cloud, one item per order (`O#<order>` / `Z`): BUILDING with
//! the id of the build it waits for, then READY with the object's key (or EMPTY), then CONSUMED once
//! handed out, so that the next request builds a zip of the files available then.

use crate::StoreError;
use crate::orders::order_partition;
use granary_ports::{Backend, Cond, Item, Key, PortError, Update};

/// How long a build may take before another request starts a new one.
pub const BUILD_TIMEOUT_MS: i64 = 15 * 60 * 1000;

fn key(order_id: &str) -> Key {
    Key::new(order_partition(order_id), "Z")
}

/// Where an order's zip is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ZipState {
    /// Nothing built, or the last one handed out or failed: build one.
    None,
    /// Build `0` is running.
    Building(i64),
    /// Build done at this key.
    Ready(i64, String),
    /// Build done, with nothing to put in it.
    Empty(i64),
}

/// Zips of orders, in the orders table.
#[derive(Debug, Clone)]
pub struct ZipStore {
    orders: String,
}

impl ZipStore {
    /// What it touches (see `granary_ports::access`).
    pub fn grants(&self) -> granary_ports::access::Grants {
        granary_ports::access::Grants::new().write_table(&self.orders)
    }
    /// Kept in `orders`.
    pub fn new(orders: &str) -> Self {
        Self { orders: orders.to_owned() }
    }

    /// The state of `order_id`'s zip at `now`.
    pub async fn state(&self, backend: &Backend, order_id: &str) -> Result<ZipState, StoreError> {
        let Some(item) = backend.table.get(&self.orders, &key(order_id)).await? else { return Ok(ZipState::None) };
        let id = item.get_i64("zipId").unwrap_or(0);
        Ok(match item.get_str("state") {
            Some("BUILDING") if backend.clock.now_ms() - item.get_i64("startedAt").unwrap_or(0) < BUILD_TIMEOUT_MS => {
                ZipState::Building(id)
            }
            Some("READY") => ZipState::Ready(id, item.get_str("key").unwrap_or_default().to_owned()),
            Some("EMPTY") => ZipState::Empty(id),
            _ => ZipState::None,
        })
    }

    /// Starts build `zip_id` unless the item changed since `seen` was read; false then.
    pub async fn start(&self, backend: &Backend, order_id: &str, seen: &ZipState, zip_id: i64) -> Result<bool, StoreError> {
        let cond = match seen {
            ZipState::None => Cond::Or(vec![Cond::ItemAbsent, Cond::ne("state", "READY")]),
            ZipState::Building(id) | ZipState::Ready(id, _) | ZipState::Empty(id) => Cond::eq("zipId", *id),
        };
        let item = Item::new(key(order_id)).with("state", "BUILDING").with("zipId", zip_id).with("startedAt", backend.clock.now_ms());
        match backend.table.put(&self.orders, item, Some(cond)).await {
            Ok(()) => Ok(true),
            Err(PortError::ConditionFailed { .. }) => Ok(false),
            Err(e) => Err(e.into()),
        }
    }

    /// Whether build `zip_id` is still the one waited for.
    pub async fn building(&self, backend: &Backend, order_id: &str, zip_id: i64) -> Result<bool, StoreError> {
        let item = backend.table.get(&self.orders, &key(order_id)).await?;
        Ok(item.is_some_and(|i| i.get_str("state") == Some("BUILDING") && i.get_i64("zipId") == Some(zip_id)))
    }

    /// Ends build `zip_id`: READY at `object`, or EMPTY.
    pub async fn finish(&self, backend: &Backend, order_id: &str, zip_id: i64, object: Option<&str>) -> Result<(), StoreError> {
        let mut updates = vec![Update::set("state", if object.is_some() { "READY" } else { "EMPTY" })];
        if let Some(k) = object {
            updates.push(Update::set("key", k));
        }
        match backend.table.update(&self.orders, &key(order_id), updates, Some(Cond::eq("zipId", zip_id))).await {
            Ok(_) | Err(PortError::ConditionFailed { .. }) => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    /// Marks build `zip_id` handed out.
    pub async fn consume(&self, backend: &Backend, order_id: &str, zip_id: i64) -> Result<(), StoreError> {
        match backend
            .table
            .update(&self.orders, &key(order_id), vec![Update::set("state", "CONSUMED")], Some(Cond::eq("zipId", zip_id)))
            .await
        {
            Ok(_) | Err(PortError::ConditionFailed { .. }) => Ok(()),
            Err(e) => Err(e.into()),
        }
    }
}
