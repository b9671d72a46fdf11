//! Baskets, one item per user in the orders table (`B#<owner>` / `B`), written only if its version is
//! still the one read: two concurrent changes of one basket both land, the second after reading the
//! first (the caller retries on [`BasketWrite::Conflict`]). Versions only grow: an emptied basket is
//! an empty one at the next version, never a deleted item.

use crate::StoreError;
use granary_domain::basket::Basket;
use granary_ports::{Backend, Cond, Item, Key, PortError, TxOp};
use serde::Deserialize;

/// A basket item stays under DynamoDB's 400 KB with room for its keys and version.
pub const MAX_BASKET_BYTES: usize = 350_000;

fn key(owner: &str) -> Key {
    Key::new(format!("B#{owner}"), "B")
}

/// How a basket write ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BasketWrite {
    /// Written.
    Written,
    /// Someone changed the basket since it was read: read it again and redo the change.
    Conflict,
    /// The basket would be too large to keep.
    TooLarge(usize),
}

/// Reads and writes baskets.
#[derive(Debug, Clone)]
pub struct BasketStore {
    orders: String,
}

impl BasketStore {
    /// What it touches (see `granary_ports::access`).
    pub fn grants(&self) -> granary_ports::access::Grants {
        granary_ports::access::Grants::new().write_table(&self.orders)
    }
    /// Baskets kept in the `orders` table.
    pub fn new(orders: &str) -> Self {
        Self { orders: orders.to_owned() }
    }

    /// `owner`'s basket (empty when none) and the version it was read at (0 for none).
    pub async fn read(&self, backend: &Backend, owner: &str) -> Result<(Basket, i64), StoreError> {
        match backend.table.get(&self.orders, &key(owner)).await? {
            None => Ok((Basket::empty(owner), 0)),
            Some(item) => {
                let basket = item
                    .get("basket")
                    .and_then(|b| Basket::deserialize(b).ok())
                    .ok_or_else(|| StoreError::Malformed(format!("basket of {owner}"), "no readable basket".into()))?;
                Ok((basket, item.get_i64("version").unwrap_or(0)))
            }
        }
    }

    /// Writes `basket` if it is still at `version` (as read).
    pub async fn write(&self, backend: &Backend, basket: &Basket, version: i64) -> Result<BasketWrite, StoreError> {
        let value = serde_json::to_value(basket).unwrap_or_default();
        let size = value.to_string().len();
        if size > MAX_BASKET_BYTES {
            return Ok(BasketWrite::TooLarge(size));
        }
        let item =
            Item::new(key(&basket.owner)).with("basket", value).with("version", version + 1).with("updatedAt", backend.clock.now_ms());
        let cond = if version == 0 { Cond::ItemAbsent } else { Cond::eq("version", version) };
        match backend.table.put(&self.orders, item, Some(cond)).await {
            Ok(()) => Ok(BasketWrite::Written),
            Err(PortError::ConditionFailed { .. }) => Ok(BasketWrite::Conflict),
            Err(e) => Err(e.into()),
        }
    }

    /// Empties `owner`'s basket if it is still at `version`. The emptied basket is written, not
    /// deleted, at the next version: a version never comes back, so a change read before the emptying
    /// cannot land after it.
    pub async fn clear(&self, backend: &Backend, owner: &str, version: i64) -> Result<BasketWrite, StoreError> {
        self.write(backend, &Basket::empty(owner), version).await
    }

    /// The write that empties `owner`'s basket read at `version`, for a caller's transaction.
    pub fn clear_op(&self, owner: &str, version: i64, now_ms: i64) -> TxOp {
        let item = Item::new(key(owner))
            .with("basket", serde_json::to_value(Basket::empty(owner)).unwrap_or_default())
            .with("version", version + 1)
            .with("updatedAt", now_ms);
        let cond = if version == 0 { Cond::ItemAbsent } else { Cond::eq("version", version) };
        TxOp::Put { table: self.orders.clone(), item, cond: Some(cond) }
    }
}
