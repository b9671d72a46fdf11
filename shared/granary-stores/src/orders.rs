//! Orders in the orders table: the order item (`O#<id>` / `O`) with its status, counts and the basket
//! it was made from; its label (`L#<owner>#<label>`, unique per owner); its suborders (`S#<n>`) and
//! files (`F#<n>#<i>`, by suborder and index, so an expansion that runs again writes the same keys).
//! An expansion holds a lease on the order and checkpoints where it is, so that one killed halfway is
//! taken up by the next delivery from its last checkpoint, and no two run at once.

use crate::StoreError;
use crate::outbox::{Outbox, OutboxEvent};
use granary_domain::basket::Basket;
use granary_domain::order::OrderStatus;
use granary_ports::{Backend, Cond, Cursor, Item, Key, PortError, Query, SortCond, TxOp, Update};
use serde_json::Value;

/// The partition of an order: its item, suborders and files.
pub fn order_partition(order_id: &str) -> String {
    format!("O#{order_id}")
}

/// The order item's key.
fn order_key(order_id: &str) -> Key {
    Key::new(order_partition(order_id), "O")
}

/// A suborder's sort key.
pub fn suborder_sk(number: u32) -> String {
    format!("S#{number:06}")
}

/// A file's sort key: its suborder and index there.
pub fn file_sk(suborder: u32, index: u64) -> String {
    format!("F#{suborder:06}#{index:05}")
}

fn label_key(owner: &str, label: &str) -> Key {
    Key::new(format!("L#{owner}#{label}"), "L")
}

/// The value every order carries in `orderList`, the partition of the `allOrders` index.
const ORDER_LIST: &str = "O";

/// Users' quotas set by admins, in the orders table (`Q#<user>` / `Q`); the others have the default.
#[derive(Debug, Clone)]
pub struct QuotaStore {
    orders: String,
}

impl QuotaStore {
    /// What it touches (see `granary_ports::access`).
    pub fn grants(&self) -> granary_ports::access::Grants {
        granary_ports::access::Grants::new().write_table(&self.orders)
    }
    /// Quotas kept in `orders`.
    pub fn new(orders: &str) -> Self {
        Self { orders: orders.to_owned() }
    }

    /// `user`'s quota, if an admin set one.
    pub async fn get(&self, backend: &Backend, user: &str) -> Result<Option<granary_domain::order::Quota>, StoreError> {
        let item = backend.table.get(&self.orders, &Key::new(format!("Q#{user}"), "Q")).await?;
        Ok(item.and_then(|i| i.get("quota").and_then(|q| serde_json::from_value(q.clone()).ok())))
    }

    /// Sets `user`'s quota.
    pub async fn put(&self, backend: &Backend, user: &str, quota: &granary_domain::order::Quota, by: &str) -> Result<(), StoreError> {
        let item = Item::new(Key::new(format!("Q#{user}"), "Q"))
            .with("quota", serde_json::to_value(quota).unwrap_or_default())
            .with("updatedBy", by)
            .with("updatedAt", backend.clock.now_ms());
        Ok(backend.table.put(&self.orders, item, None).await?)
    }
}

/// How an order creation ended.
#[derive(Debug, Clone, PartialEq)]
pub enum Created {
    /// The order exists, PENDING; its expansion message is staged.
    Order(Box<Item>, Vec<OutboxEvent>),
    /// The owner already has an order with this label.
    LabelTaken,
    /// The basket changed since it was read: read it again.
    BasketChanged,
}

/// How claiming an order's expansion ended.
#[derive(Debug, Clone, PartialEq)]
pub enum Claim {
    /// This caller holds the lease: the order as it is.
    Held(Box<Item>),
    /// Another expansion holds a live lease.
    Busy,
    /// The order is expanded already, or gone.
    Finished,
}

/// Orders, suborders and order files.
#[derive(Debug, Clone)]
pub struct OrderStore {
    orders: String,
    outbox: Outbox,
}

impl OrderStore {
    /// What it touches (see `granary_ports::access`).
    pub fn grants(&self) -> granary_ports::access::Grants {
        granary_ports::access::Grants::new().write_table(&self.orders).and(self.outbox.grants())
    }
    /// Orders in `orders`, the outbox in `requests`.
    pub fn new(orders: &str, requests: &str) -> Self {
        Self { orders: orders.to_owned(), outbox: Outbox::new(requests) }
    }

    /// The outbox its events are staged in.
    pub fn outbox(&self) -> &Outbox {
        &self.outbox
    }

    /// Creates order `order_id` of `basket`, PENDING, in one transaction with its label (unique per
    /// owner), the user's basket emptied when it was read at `basket_version` (`None` for a restart,
    /// whose basket is the old order's copy), and `event` (the expansion message) staged.
    pub async fn create(
        &self,
        backend: &Backend,
        order_id: &str,
        label: &str,
        basket: &Basket,
        basket_version: Option<i64>,
        extra: Vec<(&str, Value)>,
        event: OutboxEvent,
    ) -> Result<Created, StoreError> {
        let now = backend.clock.now_ms();
        let mut item = Item::new(order_key(order_id))
            .with("orderId", order_id)
            .with("owner", basket.owner.clone())
            .with("label", label)
            .with("status", OrderStatus::Pending.as_str())
            .with("statusDate", now)
            .with("createdAt", now)
            .with("orderList", ORDER_LIST)
            .with("basket", serde_json::to_value(basket).unwrap_or_default());
        for (name, value) in extra {
            item = item.with(name, value);
        }
        let mut ops = vec![
            TxOp::Put { table: self.orders.clone(), item: item.clone(), cond: Some(Cond::ItemAbsent) },
            TxOp::Put {
                table: self.orders.clone(),
                item: Item::new(label_key(&basket.owner, label)).with("orderId", order_id),
                cond: Some(Cond::ItemAbsent),
            },
            self.outbox.stage(&event, now),
        ];
        if let Some(version) = basket_version {
            // Emptied at its next version, not deleted: a change read before cannot land after.
            ops.push(crate::baskets::BasketStore::new(&self.orders).clear_op(&basket.owner, version, now));
        }
        match backend.table.transact(ops).await {
            Ok(()) => Ok(Created::Order(Box::new(item), vec![event])),
            Err(PortError::TransactionCanceled { index: 1, .. }) => Ok(Created::LabelTaken),
            Err(PortError::TransactionCanceled { index: 3, .. }) => Ok(Created::BasketChanged),
            Err(e) => Err(e.into()),
        }
    }

    /// The order item.
    pub async fn get(&self, backend: &Backend, order_id: &str) -> Result<Option<Item>, StoreError> {
        Ok(backend.table.get(&self.orders, &order_key(order_id)).await?)
    }

    /// A page of orders, newest first: an owner's, or (with `None`) everyone's.
    pub async fn list(
        &self,
        backend: &Backend,
        owner: Option<&str>,
        after: Option<Cursor>,
        size: usize,
    ) -> Result<(Vec<Item>, Option<Cursor>), StoreError> {
        let mut query = match owner {
            Some(o) => Query::partition(&self.orders, o).on_index("byOwner"),
            None => Query::partition(&self.orders, ORDER_LIST).on_index("allOrders"),
        }
        .descending()
        .limit(size);
        query.after = after;
        let page = backend.table.query(query).await?;
        Ok((page.items, page.next))
    }

    /// Suborder `number` of an order.
    pub async fn suborder(&self, backend: &Backend, order_id: &str, number: u32) -> Result<Option<Item>, StoreError> {
        Ok(backend.table.get(&self.orders, &Key::new(order_partition(order_id), suborder_sk(number))).await?)
    }

    /// The suborders of an order, by number.
    pub async fn suborders(&self, backend: &Backend, order_id: &str) -> Result<Vec<Item>, StoreError> {
        crate::all_items(
            backend,
            Query::partition(&self.orders, order_partition(order_id)).sorted(SortCond::BeginsWith("S#".into())).limit(1000),
        )
        .await
    }

    /// A page of an order's files (of one suborder when given), in suborder and index order.
    pub async fn files(
        &self,
        backend: &Backend,
        order_id: &str,
        suborder: Option<u32>,
        after: Option<Cursor>,
        size: usize,
    ) -> Result<(Vec<Item>, Option<Cursor>), StoreError> {
        let prefix = match suborder {
            Some(n) => format!("F#{n:06}#"),
            None => "F#".to_owned(),
        };
        let mut query = Query::partition(&self.orders, order_partition(order_id)).sorted(SortCond::BeginsWith(prefix)).limit(size);
        query.after = after;
        let page = backend.table.query(query).await?;
        Ok((page.items, page.next))
    }

    /// Every file of suborder `number` (at most 5,000, and a processing's output).
    pub async fn suborder_files(&self, backend: &Backend, order_id: &str, number: u32) -> Result<Vec<Item>, StoreError> {
        let q =
            Query::partition(&self.orders, order_partition(order_id)).sorted(SortCond::BeginsWith(format!("F#{number:06}#"))).limit(1000);
        crate::all_items(backend, q).await
    }

    /// Takes the lease on expanding `order_id` for `lease_ms` as `token`, unless another live lease
    /// holds it or the order is no longer PENDING.
    pub async fn claim(&self, backend: &Backend, order_id: &str, token: &str, lease_ms: i64) -> Result<Claim, StoreError> {
        let now = backend.clock.now_ms();
        let cond = Cond::And(vec![
            Cond::ItemExists,
            Cond::eq("status", OrderStatus::Pending.as_str()),
            Cond::Or(vec![Cond::absent("leaseUntil"), Cond::lt("leaseUntil", now), Cond::eq("lease", token)]),
        ]);
        let updates = vec![Update::set("lease", token), Update::set("leaseUntil", now + lease_ms)];
        match backend.table.update(&self.orders, &order_key(order_id), updates, Some(cond)).await {
            Ok(item) => Ok(Claim::Held(Box::new(item))),
            Err(PortError::ConditionFailed { .. }) => match self.get(backend, order_id).await? {
                Some(item) if item.get_str("status") == Some(OrderStatus::Pending.as_str()) => Ok(Claim::Busy),
                _ => Ok(Claim::Finished),
            },
            Err(e) => Err(e.into()),
        }
    }

    /// Records where the expansion holding `token` is, and extends its lease; false when it lost the
    /// lease (it must stop).
    pub async fn checkpoint(
        &self,
        backend: &Backend,
        order_id: &str,
        token: &str,
        checkpoint: Value,
        lease_ms: i64,
    ) -> Result<bool, StoreError> {
        let now = backend.clock.now_ms();
        let updates = vec![Update::set("checkpoint", checkpoint), Update::set("leaseUntil", now + lease_ms)];
        self.guarded(backend, order_id, token, updates).await
    }

    /// Applies `updates` to the order while `token` holds its lease and it is PENDING; false otherwise.
    pub async fn guarded(&self, backend: &Backend, order_id: &str, token: &str, updates: Vec<Update>) -> Result<bool, StoreError> {
        let cond = Cond::And(vec![Cond::eq("lease", token), Cond::eq("status", OrderStatus::Pending.as_str())]);
        match backend.table.update(&self.orders, &order_key(order_id), updates, Some(cond)).await {
            Ok(_) => Ok(true),
            Err(PortError::ConditionFailed { .. }) => Ok(false),
            Err(e) => Err(e.into()),
        }
    }

    /// Applies `updates` to the order while `token` holds its lease and it is PENDING, with `more` in the
    /// same transaction; false otherwise.
    pub async fn guarded_with(
        &self,
        backend: &Backend,
        order_id: &str,
        token: &str,
        updates: Vec<Update>,
        more: Vec<TxOp>,
    ) -> Result<bool, StoreError> {
        let cond = Cond::And(vec![Cond::eq("lease", token), Cond::eq("status", OrderStatus::Pending.as_str())]);
        let mut ops = vec![TxOp::Update { table: self.orders.clone(), key: order_key(order_id), updates, cond: Some(cond) }];
        ops.extend(more);
        match backend.table.transact(ops).await {
            Ok(()) => Ok(true),
            Err(PortError::TransactionCanceled { index: 0, .. }) => Ok(false),
            Err(e) => Err(e.into()),
        }
    }

    /// Records that `order` (as read) was reminded at `now`, with the reminder `event` staged; false when
    /// another run reminded it first.
    pub async fn remind(&self, backend: &Backend, order: &Item, now: i64, event: TxOp) -> Result<bool, StoreError> {
        let cond = match order.get_i64("remindedAt") {
            Some(at) => Cond::eq("remindedAt", at),
            None => Cond::absent("remindedAt"),
        };
        let ops = vec![
            TxOp::Update {
                table: self.orders.clone(),
                key: order.key.clone(),
                updates: vec![Update::set("remindedAt", now)],
                cond: Some(cond),
            },
            event,
        ];
        match backend.table.transact(ops).await {
            Ok(()) => Ok(true),
            Err(PortError::TransactionCanceled { .. }) => Ok(false),
            Err(e) => Err(e.into()),
        }
    }

    /// Writes `items` (suborders and files) in transactions of at most 100.
    pub async fn put_all(&self, backend: &Backend, items: Vec<Item>) -> Result<(), StoreError> {
        transact_all(backend, items.into_iter().map(|item| TxOp::Put { table: self.orders.clone(), item, cond: None }).collect()).await
    }

    /// Deletes what an expansion wrote past a checkpoint: files of the suborders open then at or past
    /// their count then (`open`: number and files), and every suborder and file numbered `from` or more.
    pub async fn truncate(&self, backend: &Backend, order_id: &str, open: &[(u32, u64)], from: u32) -> Result<usize, StoreError> {
        let partition = order_partition(order_id);
        let mut doomed = Vec::new();
        for (number, files) in open {
            let q = Query::partition(&self.orders, partition.clone())
                .sorted(SortCond::Between(Value::from(file_sk(*number, *files)), Value::from(format!("F#{number:06}#~"))));
            doomed.extend(crate::all_items(backend, q.limit(1000)).await?.into_iter().map(|i| i.key));
        }
        for prefix in ["F#", "S#"] {
            let q = Query::partition(&self.orders, partition.clone())
                .sorted(SortCond::Between(Value::from(format!("{prefix}{from:06}")), Value::from(format!("{prefix}~"))));
            doomed.extend(crate::all_items(backend, q.limit(1000)).await?.into_iter().map(|i| i.key));
        }
        let n = doomed.len();
        transact_all(backend, doomed.into_iter().map(|key| TxOp::Delete { table: self.orders.clone(), key, cond: None }).collect()).await?;
        Ok(n)
    }
}

/// Applies `ops` in transactions of at most 100 (each all or nothing; together, not).
async fn transact_all(backend: &Backend, mut ops: Vec<TxOp>) -> Result<(), StoreError> {
    while !ops.is_empty() {
        let rest = ops.split_off(ops.len().min(granary_ports::table::MAX_TRANSACTION_OPS));
        backend.table.transact(std::mem::replace(&mut ops, rest)).await?;
    }
    Ok(())
}
