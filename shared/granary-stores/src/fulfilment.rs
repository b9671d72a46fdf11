//! Orders after their expansion, in the orders table: dispatch slots, each ordered file's way to
//! AVAILABLE, DOWNLOADED or ERROR, the user's quota consumption, and the suborder and order states that
//! follow. Every change is one transaction of the file, its suborder's counters and its order's, so
//! the counters never drift from the files, and every guard is in the write: twenty dispatchers at once
//! never take more slots than there are, and a crash between two writes leaves a state the next
//! delivery (or the safety-net schedule) carries on from.
//!
//! Items: the pool (`DISPATCH` / `POOL`, `running`), a user's slots (`U#<owner>` / `U`, `slots`), a
//! user's quota consumption per window (`QU#<owner>` / `<window start ms>`, `files` and `bytes`), and
//! the files waiting on a restore or a storage service (`W#<checksum>` / `<order>#<file sk>`, with the
//! object key or storage they wait on). Suborders carry `dispatchState` and `dispatchKey` while
//! WAITING or RUNNING, the `suborders` index's keys.

use crate::StoreError;
use crate::orders::{order_partition, suborder_sk};
use crate::outbox::{Outbox, OutboxEvent};
use granary_domain::dispatch::{DispatchLimits, SuborderState, final_status, percent_completed};
use granary_domain::order::{FileState, OrderStatus, Quota};
use granary_ports::{Backend, Cond, Item, Key, PortError, Query, SortCond, TxOp, Update};
use serde_json::{Value, json};

/// The index of WAITING and RUNNING suborders (partition `dispatchState`, sort `dispatchKey`).
pub const SUBORDER_INDEX: &str = "suborders";

/// The index key of a waiting suborder: smaller first, then older.
pub fn waiting_key(bytes: u64, created_ms: i64, order_id: &str, number: u32) -> String {
    format!("{bytes:020}#{created_ms:013}#{order_id}#{number:06}")
}

fn running_key(started_ms: i64, order_id: &str, number: u32) -> String {
    format!("{started_ms:013}#{order_id}#{number:06}")
}

pub(crate) fn order_key(order_id: &str) -> Key {
    Key::new(order_partition(order_id), "O")
}

pub(crate) fn suborder_key(order_id: &str, number: u32) -> Key {
    Key::new(order_partition(order_id), suborder_sk(number))
}

pub(crate) fn pool_key() -> Key {
    Key::new("DISPATCH", "POOL")
}

pub(crate) fn user_key(owner: &str) -> Key {
    Key::new(format!("U#{owner}"), "U")
}

/// The updates giving `files` and `bytes` (negative) back to the quota window a file was reserved in,
/// keeping the window's purge time, which the file carries (files reserved before it had none).
pub(crate) fn quota_give_back_updates(file: &Item, files: i64, bytes: i64) -> Vec<Update> {
    let mut updates = vec![Update::add("files", files), Update::add("bytes", bytes)];
    if let Some(purge_at) = file.get_i64("quotaPurgeAt") {
        updates.push(Update::set(crate::PURGE_AT, purge_at));
    }
    updates
}

pub(crate) fn waiter_key(checksum: &str, order_id: &str, file_sk: &str) -> Key {
    Key::new(format!("W#{checksum}"), format!("{order_id}#{file_sk}"))
}

/// How a start ended.
#[derive(Debug, Clone, PartialEq)]
pub enum Start {
    /// The suborder runs; its storage job message is staged.
    Started(Vec<OutboxEvent>),
    /// The pool is full.
    PoolFull,
    /// Its owner has no slot left.
    UserFull,
    /// It is not waiting any more (another dispatcher started it), or its order is not RUNNING.
    NotStartable,
}

/// What a file is waiting on once reserved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Wait {
    /// Nothing: available at once.
    Nothing,
    /// An object restore, announced with this key.
    Restore(String),
    /// A storage service's AVAILABLE event for this storage.
    Service(String),
}

/// One file to reserve in a suborder's storage job.
#[derive(Debug, Clone, PartialEq)]
pub struct Reservation {
    /// The file's sort key.
    pub file_sk: String,
    /// Its size.
    pub size: u64,
    /// Its checksum.
    pub checksum: String,
    /// What it waits on.
    pub wait: Wait,
}

/// How a reservation ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reserved {
    /// Every file is reserved (and the online ones available).
    Done,
    /// The user's quota has no room for them all.
    QuotaExceeded,
    /// A file is no longer PENDING and unreserved (read again).
    Changed,
}

/// Orders' fulfilment.
#[derive(Debug, Clone)]
pub struct Fulfilment {
    pub(crate) orders: String,
    pub(crate) outbox: Outbox,
    dispatch_queue: String,
    events_queue: String,
}

impl Fulfilment {
    /// What it touches: the orders table, the outbox, and the queues its staged events are sent to at once.
    pub fn grants(&self) -> granary_ports::access::Grants {
        granary_ports::access::Grants::new()
            .write_table(&self.orders)
            .and(self.outbox.grants())
            .send(&self.dispatch_queue)
            .send(&self.events_queue)
    }
    /// Over `orders`, with its outbox in `requests`; nudges go to `dispatch_queue`, order events to
    /// `events_queue`.
    pub fn new(orders: &str, requests: &str, dispatch_queue: &str, events_queue: &str) -> Self {
        Self {
            orders: orders.to_owned(),
            outbox: Outbox::new(requests),
            dispatch_queue: dispatch_queue.to_owned(),
            events_queue: events_queue.to_owned(),
        }
    }

    /// REGARDS's OrderResponseDtoEvent for `order` (the order item), once per `key`: SUBORDER_DONE
    /// (with `suborder`), DONE or FAILED, with the link to the order's metalink. `owner` tells a mailer
    /// whom to tell.
    pub fn order_event(&self, order: &Item, status: &str, suborder: Option<u32>, message: Option<&str>) -> OutboxEvent {
        let order_id = order.get_str("orderId").unwrap_or_default();
        let total = order.get_i64("internalSuborders").unwrap_or(0) + order.get_i64("externalSuborders").unwrap_or(0);
        let key = suborder.map_or_else(|| status.to_owned(), |n| format!("{status}:{n}"));
        OutboxEvent {
            event_id: format!("order-event:{order_id}:{key}"),
            queue: self.events_queue.clone(),
            body: json!({
                "status": status,
                "orderId": order_id,
                "owner": order.get_str("owner"),
                "label": order.get_str("label"),
                "correlationId": order.get_str("correlationId"),
                "message": message,
                "downloadLink": format!("/user/orders/{order_id}/metalink/download"),
                "errorType": (status == "FAILED").then_some("INTERNAL_ERROR"),
                "errors": [],
                "totalSubOrders": total,
                "subOrderId": suborder,
            })
            .to_string(),
        }
    }

    /// The outbox its events are staged in.
    pub fn outbox(&self) -> &Outbox {
        &self.outbox
    }

    /// The message that asks for a dispatch, staged once per `cause`.
    pub fn nudge(&self, cause: &str) -> OutboxEvent {
        OutboxEvent {
            event_id: format!("dispatch:{cause}"),
            queue: self.dispatch_queue.clone(),
            body: json!({ "dispatch": { "reason": cause } }).to_string(),
        }
    }

    pub(crate) fn update(&self, key: Key, updates: Vec<Update>, cond: Option<Cond>) -> TxOp {
        TxOp::Update { table: self.orders.clone(), key, updates, cond }
    }

    /// Storage suborders running now.
    pub async fn pool_running(&self, backend: &Backend) -> Result<i64, StoreError> {
        Ok(backend.table.get(&self.orders, &pool_key()).await?.and_then(|i| i.get_i64("running")).unwrap_or(0))
    }

    /// `owner`'s storage suborders counted against the per-user limit.
    pub async fn user_slots(&self, backend: &Backend, owner: &str) -> Result<i64, StoreError> {
        Ok(backend.table.get(&self.orders, &user_key(owner)).await?.and_then(|i| i.get_i64("slots")).unwrap_or(0))
    }

    /// Up to `limit` suborders in `state` (WAITING: smaller, then older, first; RUNNING: longest running
    /// first), from `after` on.
    pub async fn in_state(
        &self,
        backend: &Backend,
        state: SuborderState,
        after: Option<granary_ports::Cursor>,
        limit: usize,
    ) -> Result<(Vec<Item>, Option<granary_ports::Cursor>), StoreError> {
        let mut q = Query::partition(&self.orders, state.as_str()).on_index(SUBORDER_INDEX).limit(limit);
        q.after = after;
        let page = backend.table.query(q).await?;
        Ok((page.items, page.next))
    }

    /// RUNNING suborders started before `before_ms`.
    pub async fn running_since_before(&self, backend: &Backend, before_ms: i64, limit: usize) -> Result<Vec<Item>, StoreError> {
        let q = Query::partition(&self.orders, SuborderState::Running.as_str())
            .on_index(SUBORDER_INDEX)
            .sorted(SortCond::Lt(Value::from(format!("{before_ms:013}"))))
            .limit(limit);
        Ok(backend.table.query(q).await?.items)
    }

    /// Starts a WAITING storage suborder if the pool and its owner have a slot and its order is RUNNING:
    /// slots taken, suborder RUNNING and its storage job staged, all in one transaction.
    pub async fn start(&self, backend: &Backend, suborder: &Item, limits: DispatchLimits) -> Result<Start, StoreError> {
        let order_id = suborder.get_str("orderId").unwrap_or_default().to_owned();
        let number = suborder.get_i64("number").unwrap_or(0) as u32;
        let owner = suborder.get_str("slotOwner").unwrap_or_default().to_owned();
        let now = backend.clock.now_ms();
        let job = OutboxEvent {
            event_id: format!("start:{order_id}:{number}"),
            queue: self.dispatch_queue.clone(),
            body: json!({ "start": { "orderId": order_id, "suborder": number } }).to_string(),
        };
        let ops = vec![
            self.update(pool_key(), vec![Update::add("running", 1)], Some(Cond::counter_below("running", 1, limits.pool))),
            self.update(user_key(&owner), vec![Update::add("slots", 1)], Some(Cond::counter_below("slots", 1, limits.per_user))),
            self.update(
                suborder_key(&order_id, number),
                vec![
                    Update::set("state", SuborderState::Running.as_str()),
                    Update::set("dispatchState", SuborderState::Running.as_str()),
                    Update::set("dispatchKey", running_key(now, &order_id, number)),
                    Update::set("startedAt", now),
                ],
                Some(Cond::eq("state", SuborderState::Waiting.as_str())),
            ),
            TxOp::Check { table: self.orders.clone(), key: order_key(&order_id), cond: Cond::eq("status", OrderStatus::Running.as_str()) },
            self.outbox.stage(&job, now),
        ];
        match backend.table.transact(ops).await {
            Ok(()) => Ok(Start::Started(vec![job])),
            Err(PortError::TransactionCanceled { index: 0, .. }) => Ok(Start::PoolFull),
            Err(PortError::TransactionCanceled { index: 1, .. }) => Ok(Start::UserFull),
            Err(PortError::TransactionCanceled { .. }) => Ok(Start::NotStartable),
            Err(e) => Err(e.into()),
        }
    }

    /// Reserves `files` of suborder `number` of `owner`'s order: counted in the user's quota window
    /// (unless unlimited), the online ones AVAILABLE, the others recorded as waiting on their restore
    /// or service. All or nothing.
    pub async fn reserve(
        &self,
        backend: &Backend,
        order_id: &str,
        number: u32,
        owner: &str,
        quota: &Quota,
        files: &[Reservation],
    ) -> Result<Reserved, StoreError> {
        let now = backend.clock.now_ms();
        let limited = quota.max_files >= 0 || quota.max_bytes >= 0;
        let window = granary_domain::dispatch::quota_window(now, quota.period_hours);
        let purge_at = granary_domain::dispatch::quota_window_purge_at(window, quota.period_hours);
        let mut ops = Vec::new();
        if limited {
            let n = files.len() as i64;
            let bytes: i64 = files.iter().map(|f| i64::try_from(f.size).unwrap_or(i64::MAX)).fold(0, i64::saturating_add);
            let mut conds = Vec::new();
            if quota.max_files >= 0 {
                conds.push(Cond::counter_below("files", n, quota.max_files));
            }
            if quota.max_bytes >= 0 {
                conds.push(Cond::counter_below("bytes", bytes, quota.max_bytes));
            }
            ops.push(self.update(
                Key::new(format!("QU#{owner}"), window.to_string()),
                vec![Update::add("files", n), Update::add("bytes", bytes), Update::set(crate::PURGE_AT, purge_at)],
                Some(Cond::And(conds)),
            ));
        }
        let mut available = 0;
        for f in files {
            let mut updates = vec![Update::set("reservedAt", now)];
            if limited {
                updates.push(Update::set("quotaPk", format!("QU#{owner}")));
                updates.push(Update::set("quotaSk", window.to_string()));
                // What the window's counter carries, so that a give-back keeps it.
                updates.push(Update::set("quotaPurgeAt", purge_at));
            }
            let (waiting_on, wait_detail) = match &f.wait {
                Wait::Nothing => (None, None),
                Wait::Restore(key) => (Some("RESTORE"), Some(("key", key))),
                Wait::Service(storage) => (Some("SERVICE"), Some(("storage", storage))),
            };
            match waiting_on {
                None => {
                    available += 1;
                    updates.push(Update::set("state", FileState::Available.as_str()));
                    updates.push(Update::set("availableAt", now));
                }
                Some(w) => updates.push(Update::set("waitingOn", w)),
            }
            let file_key = Key::new(order_partition(order_id), f.file_sk.clone());
            ops.push(self.update(
                file_key,
                updates,
                Some(Cond::And(vec![Cond::eq("state", FileState::Pending.as_str()), Cond::absent("reservedAt")])),
            ));
            if let Some((name, value)) = wait_detail {
                let waiter = Item::new(waiter_key(&f.checksum, order_id, &f.file_sk))
                    .with("orderId", order_id)
                    .with("fileSk", f.file_sk.clone())
                    .with(name, value.clone());
                ops.push(TxOp::Put { table: self.orders.clone(), item: waiter, cond: None });
            }
        }
        // Only while the suborder runs: a released (deleted, expired) order takes no quota.
        ops.push(self.update(
            suborder_key(order_id, number),
            vec![Update::add("pending", -available)],
            Some(Cond::eq("state", SuborderState::Running.as_str())),
        ));
        if available > 0 {
            ops.push(self.update(
                order_key(order_id),
                vec![Update::add("madeAvailable", available), Update::add("availableFilesCount", available)],
                None,
            ));
        }
        match backend.table.transact(ops).await {
            Ok(()) => Ok(Reserved::Done),
            Err(PortError::TransactionCanceled { index: 0, .. }) if limited => Ok(Reserved::QuotaExceeded),
            Err(PortError::TransactionCanceled { .. }) => Ok(Reserved::Changed),
            Err(e) => Err(e.into()),
        }
    }

    /// The files waiting on the object `key` (a completed restore) or on `storage` (a service's event)
    /// for `checksum`: `(order id, file sort key)`.
    pub async fn waiting_for(
        &self,
        backend: &Backend,
        checksum: &str,
        key: Option<&str>,
        storage: Option<&str>,
    ) -> Result<Vec<(String, String)>, StoreError> {
        let q = Query::partition(&self.orders, format!("W#{checksum}")).limit(1000);
        let waiters = crate::all_items(backend, q).await?;
        Ok(waiters
            .into_iter()
            .filter(|w| match (key, storage) {
                (Some(k), _) => w.get_str("key") == Some(k),
                (None, Some(s)) => w.get_str("storage") == Some(s),
                (None, None) => w.get_str("storage").is_some(),
            })
            .map(|w| (w.get_str("orderId").unwrap_or_default().to_owned(), w.get_str("fileSk").unwrap_or_default().to_owned()))
            .collect())
    }

    /// A file of an order.
    pub async fn file(&self, backend: &Backend, order_id: &str, file_sk: &str) -> Result<Option<Item>, StoreError> {
        Ok(backend.table.get(&self.orders, &Key::new(order_partition(order_id), file_sk)).await?)
    }

    /// A PENDING file became available (its restore or service answered). False when it was not
    /// PENDING any more (answered before, timed out, or its order went).
    pub async fn arrived(&self, backend: &Backend, order_id: &str, file: &Item) -> Result<bool, StoreError> {
        let now = backend.clock.now_ms();
        let number = file.get_i64("suborder").unwrap_or(0) as u32;
        let ops = vec![
            self.update(
                file.key.clone(),
                vec![Update::set("state", FileState::Available.as_str()), Update::set("availableAt", now), Update::remove("waitingOn")],
                Some(Cond::eq("state", FileState::Pending.as_str())),
            ),
            self.update(suborder_key(order_id, number), vec![Update::add("pending", -1)], None),
            self.update(order_key(order_id), vec![Update::add("madeAvailable", 1), Update::add("availableFilesCount", 1)], None),
        ];
        self.transition(backend, ops).await
    }

    /// A PENDING file cannot be made available, for `cause`: ERROR, its quota given back.
    pub async fn failed(&self, backend: &Backend, order_id: &str, file: &Item, cause: &str) -> Result<bool, StoreError> {
        let now = backend.clock.now_ms();
        let number = file.get_i64("suborder").unwrap_or(0) as u32;
        let mut ops = vec![
            self.update(
                file.key.clone(),
                vec![
                    Update::set("state", FileState::Error.as_str()),
                    Update::set("cause", cause),
                    Update::set("failedAt", now),
                    Update::remove("waitingOn"),
                ],
                // As read: the quota given back is the one this copy names, once.
                Some(Cond::And(vec![
                    Cond::eq("state", FileState::Pending.as_str()),
                    match file.get_i64("reservedAt") {
                        Some(at) => Cond::eq("reservedAt", at),
                        None => Cond::absent("reservedAt"),
                    },
                    match file.get_i64("givenBackAt") {
                        Some(at) => Cond::eq("givenBackAt", at),
                        None => Cond::absent("givenBackAt"),
                    },
                ])),
            ),
            self.update(suborder_key(order_id, number), vec![Update::add("pending", -1), Update::add("open", -1)], None),
            self.update(order_key(order_id), vec![Update::add("filesInErrorCount", 1)], None),
        ];
        if file.get("givenBackAt").is_none() {
            ops.extend(self.quota_give_back(file));
        }
        self.transition(backend, ops).await
    }

    /// An AVAILABLE file was handed to its owner: DOWNLOADED. False when it was not AVAILABLE.
    pub async fn downloaded(&self, backend: &Backend, order_id: &str, file: &Item) -> Result<bool, StoreError> {
        let now = backend.clock.now_ms();
        let number = file.get_i64("suborder").unwrap_or(0) as u32;
        let ops = vec![
            self.update(
                file.key.clone(),
                vec![Update::set("state", FileState::Downloaded.as_str()), Update::set("downloadedAt", now)],
                Some(Cond::eq("state", FileState::Available.as_str())),
            ),
            self.update(suborder_key(order_id, number), vec![Update::add("open", -1)], None),
            self.update(order_key(order_id), vec![Update::add("availableFilesCount", -1), Update::add("downloadedCount", 1)], None),
        ];
        self.transition(backend, ops).await
    }

    /// Applies a file's transition; false when the file is not in the state it leaves.
    async fn transition(&self, backend: &Backend, ops: Vec<TxOp>) -> Result<bool, StoreError> {
        match backend.table.transact(ops).await {
            Ok(()) => Ok(true),
            Err(PortError::TransactionCanceled { index: 0, .. }) => Ok(false),
            Err(e) => Err(e.into()),
        }
    }

    fn quota_give_back(&self, file: &Item) -> Option<TxOp> {
        let (pk, sk) = (file.get_str("quotaPk")?, file.get_str("quotaSk")?);
        let size = file.get("file").and_then(|f| f.get("size")).and_then(Value::as_i64).unwrap_or(0);
        Some(self.update(Key::new(pk, sk), quota_give_back_updates(file, -1, -size), None))
    }

    /// Replaces the processed `inputs` of suborder `number` by `outputs` (new file items, AVAILABLE, at
    /// most 90): the outputs first (once: a run after a crash finds them and goes on), then the inputs
    /// deleted 45 at a time with the counters they held. [`Fulfilment::processed`] ends the processing.
    pub async fn replace(
        &self,
        backend: &Backend,
        order_id: &str,
        number: u32,
        outputs: Vec<Item>,
        inputs: &[Item],
    ) -> Result<(), StoreError> {
        let n = outputs.len() as i64;
        if n > 0 {
            let mut ops: Vec<TxOp> =
                outputs.into_iter().map(|item| TxOp::Put { table: self.orders.clone(), item, cond: Some(Cond::ItemAbsent) }).collect();
            // Only while the suborder runs: a late run after a release or removal writes nothing.
            let running = Some(Cond::eq("state", SuborderState::Running.as_str()));
            ops.push(self.update(suborder_key(order_id, number), vec![Update::add("open", n), Update::add("filesCount", n)], running));
            ops.push(self.update(
                order_key(order_id),
                vec![Update::add("filesCount", n), Update::add("madeAvailable", n), Update::add("availableFilesCount", n)],
                None,
            ));
            match backend.table.transact(ops).await {
                Ok(()) => {}
                // Written by an earlier run (the outputs are all or none there), or the suborder is
                // no longer running: its inputs are not touched.
                Err(PortError::TransactionCanceled { index, .. }) if index as i64 >= n => return Ok(()),
                Err(PortError::TransactionCanceled { .. }) => {}
                Err(e) => return Err(e.into()),
            }
        }
        // The run's first input (its number) goes last, so a delivery after a crash still finds the run.
        let mut inputs = inputs.to_vec();
        inputs.sort_by(|a, b| b.key.sk.cmp(&a.key.sk));
        for chunk in inputs.chunks(45) {
            let mut ops = Vec::new();
            let (mut available, mut open) = (0, 0);
            for f in chunk {
                let state = f.get_str("state").unwrap_or_default();
                if state == FileState::Available.as_str() {
                    available += 1;
                    open += 1;
                }
                ops.push(TxOp::Delete { table: self.orders.clone(), key: f.key.clone(), cond: Some(Cond::eq("state", state)) });
            }
            let n = chunk.len() as i64;
            ops.push(self.update(suborder_key(order_id, number), vec![Update::add("open", -open), Update::add("filesCount", -n)], None));
            ops.push(self.update(
                order_key(order_id),
                vec![Update::add("filesCount", -n), Update::add("madeAvailable", -n), Update::add("availableFilesCount", -available)],
                None,
            ));
            match backend.table.transact(ops).await {
                Ok(()) => {}
                // One file changed meanwhile (downloaded, or deleted by an earlier run): each alone.
                Err(PortError::TransactionCanceled { .. }) => {
                    for f in chunk {
                        self.remove_input(backend, order_id, number, &f.key).await?;
                    }
                }
                Err(e) => return Err(e.into()),
            }
        }
        Ok(())
    }

    /// Removes one processed input as it is now, with the counters it holds.
    async fn remove_input(&self, backend: &Backend, order_id: &str, number: u32, key: &Key) -> Result<(), StoreError> {
        for _ in 0..3 {
            let Some(f) = backend.table.get(&self.orders, key).await? else { return Ok(()) };
            let state = f.get_str("state").unwrap_or_default().to_owned();
            if state != FileState::Available.as_str() && state != FileState::Downloaded.as_str() {
                return Ok(());
            }
            let available = i64::from(state == FileState::Available.as_str());
            let ops = vec![
                TxOp::Delete { table: self.orders.clone(), key: key.clone(), cond: Some(Cond::eq("state", state.as_str())) },
                self.update(suborder_key(order_id, number), vec![Update::add("open", -available), Update::add("filesCount", -1)], None),
                self.update(
                    order_key(order_id),
                    vec![Update::add("filesCount", -1), Update::add("madeAvailable", -1), Update::add("availableFilesCount", -available)],
                    None,
                ),
            ];
            match backend.table.transact(ops).await {
                Ok(()) => return Ok(()),
                Err(PortError::TransactionCanceled { .. }) => continue,
                Err(e) => return Err(e.into()),
            }
        }
        Ok(())
    }

    /// A processing failed on `inputs` of suborder `number`: those still AVAILABLE end in ERROR with
    /// `cause` (their quota given back); those the user already downloaded stay so.
    pub async fn processing_failed(
        &self,
        backend: &Backend,
        order_id: &str,
        number: u32,
        inputs: &[Item],
        cause: &str,
    ) -> Result<(), StoreError> {
        let now = backend.clock.now_ms();
        // The run's first input (its number) goes last, so a delivery after a crash still finds the run.
        let mut inputs: Vec<&Item> = inputs.iter().filter(|f| f.get_str("state") == Some(FileState::Available.as_str())).collect();
        inputs.sort_by(|a, b| b.key.sk.cmp(&a.key.sk));
        for file in inputs {
            let mut ops = vec![
                self.update(
                    file.key.clone(),
                    vec![Update::set("state", FileState::Error.as_str()), Update::set("cause", cause), Update::set("failedAt", now)],
                    Some(Cond::eq("state", FileState::Available.as_str())),
                ),
                self.update(suborder_key(order_id, number), vec![Update::add("open", -1)], None),
                self.update(
                    order_key(order_id),
                    vec![Update::add("filesInErrorCount", 1), Update::add("madeAvailable", -1), Update::add("availableFilesCount", -1)],
                    None,
                ),
            ];
            if file.get("givenBackAt").is_none() {
                ops.extend(self.quota_give_back(file));
            }
            self.transition(backend, ops).await?;
        }
        Ok(())
    }

    /// Ends suborder `number`'s processing, then settles it; returns the events to send.
    pub async fn processed(&self, backend: &Backend, order_id: &str, number: u32) -> Result<Vec<OutboxEvent>, StoreError> {
        let now = backend.clock.now_ms();
        backend.table.update(&self.orders, &suborder_key(order_id, number), vec![Update::set("processedAt", now)], None).await?;
        self.settle(backend, order_id, number).await
    }

    /// Records the download of `files` of `order_id` (those AVAILABLE become DOWNLOADED), then settles
    /// their suborders; returns the events to send.
    pub async fn record_downloads(&self, backend: &Backend, order_id: &str, files: &[&Item]) -> Result<Vec<OutboxEvent>, StoreError> {
        let mut suborders = std::collections::BTreeSet::new();
        for item in files {
            if self.downloaded(backend, order_id, item).await? {
                suborders.insert(item.get_i64("suborder").unwrap_or(0) as u32);
            }
        }
        let mut events = Vec::new();
        for n in suborders {
            events.extend(self.settle(backend, order_id, n).await?);
        }
        Ok(events)
    }

    /// Applies a restore's completion (the object `key`) or a storage service's answer (`storage`) for
    /// `checksum` to every file waiting on it: AVAILABLE, or ERROR for `error`. Returns how many files
    /// waited (answered or not: the waiters stay, so a repeated answer is known and changes nothing),
    /// and the events to send.
    pub async fn answer(
        &self,
        backend: &Backend,
        checksum: &str,
        key: Option<&str>,
        storage: Option<&str>,
        error: Option<&str>,
    ) -> Result<(usize, Vec<OutboxEvent>), StoreError> {
        let waiting = self.waiting_for(backend, checksum, key, storage).await?;
        let mut events = Vec::new();
        for (order_id, file_sk) in &waiting {
            let Some(file) = self.file(backend, order_id, file_sk).await? else { continue };
            // A file answered before, timed out, or whose order went is left as it is.
            match error {
                None => self.arrived(backend, order_id, &file).await?,
                Some(cause) => self.failed(backend, order_id, &file, cause).await?,
            };
            events.extend(self.settle(backend, order_id, file.get_i64("suborder").unwrap_or(0) as u32).await?);
        }
        Ok((waiting.len(), events))
    }

    /// Moves suborder `number` on as far as its counters allow (RUNNING with nothing pending: DONE, its
    /// pool slot freed; DONE with nothing open: FINISHED, its owner's slot freed), then the order (every
    /// storage suborder DONE or FINISHED: its final status). Each step is guarded by the state it leaves,
    /// so concurrent callers move it once. Returns the events to send (dispatch nudges).
    pub async fn settle(&self, backend: &Backend, order_id: &str, number: u32) -> Result<Vec<OutboxEvent>, StoreError> {
        let mut events = Vec::new();
        for _ in 0..2 {
            let Some(s) = backend.table.get(&self.orders, &suborder_key(order_id, number)).await? else { break };
            let state = s.get_str("state").unwrap_or_default();
            let internal = s.get_str("kind") != Some("EXTERNAL");
            let now = backend.clock.now_ms();
            let ready = state == SuborderState::Running.as_str() && s.get_i64("pending").unwrap_or(1) <= 0;
            if ready && s.get("processing").is_some() && s.get("processedAt").is_none() {
                // Its files go through processing first (once asked, the worker finishes it).
                if s.get("processingStartedAt").is_none() {
                    let job = OutboxEvent {
                        event_id: format!("process:{order_id}:{number}"),
                        queue: self.dispatch_queue.clone(),
                        body: json!({ "process": { "orderId": order_id, "suborder": number } }).to_string(),
                    };
                    let ops = vec![
                        self.update(
                            s.key.clone(),
                            vec![Update::set("processingStartedAt", now)],
                            Some(Cond::And(vec![Cond::absent("processingStartedAt"), Cond::eq("state", SuborderState::Running.as_str())])),
                        ),
                        self.outbox.stage(&job, now),
                    ];
                    match backend.table.transact(ops).await {
                        Ok(()) => events.push(job),
                        Err(PortError::TransactionCanceled { .. }) => {}
                        Err(e) => return Err(e.into()),
                    }
                }
                break;
            }
            let step = if ready {
                let nudge = self.nudge(&format!("{order_id}:{number}:done"));
                let order = backend.table.get(&self.orders, &order_key(order_id)).await?.unwrap_or_else(|| Item::new(order_key(order_id)));
                let told = self.order_event(&order, "SUBORDER_DONE", Some(number), None);
                let ops = vec![
                    self.update(
                        s.key.clone(),
                        vec![
                            Update::set("state", SuborderState::Done.as_str()),
                            Update::set("doneAt", now),
                            Update::remove("dispatchState"),
                            Update::remove("dispatchKey"),
                        ],
                        Some(Cond::eq("state", SuborderState::Running.as_str())),
                    ),
                    self.update(pool_key(), vec![Update::add("running", -1)], None),
                    self.update(order_key(order_id), vec![Update::add("suborderDone", 1)], None),
                    self.outbox.stage(&nudge, now),
                    self.outbox.stage(&told, now),
                ];
                Some((ops, vec![nudge, told]))
            } else if state == SuborderState::Done.as_str() && s.get_i64("open").unwrap_or(1) <= 0 {
                let nudge = self.nudge(&format!("{order_id}:{number}:finished"));
                let mut ops = vec![self.update(
                    s.key.clone(),
                    vec![Update::set("state", SuborderState::Finished.as_str()), Update::set("finishedAt", now)],
                    Some(Cond::eq("state", SuborderState::Done.as_str())),
                )];
                // Only storage suborders hold a slot of their owner's.
                if internal {
                    ops.push(self.update(user_key(s.get_str("slotOwner").unwrap_or_default()), vec![Update::add("slots", -1)], None));
                    ops.push(self.outbox.stage(&nudge, now));
                    Some((ops, vec![nudge]))
                } else {
                    Some((ops, vec![]))
                }
            } else {
                None
            };
            let Some((ops, staged)) = step else { break };
            match backend.table.transact(ops).await {
                Ok(()) => events.extend(staged),
                Err(PortError::TransactionCanceled { .. }) => {}
                Err(e) => return Err(e.into()),
            }
        }
        events.extend(self.settle_order(backend, order_id).await?);
        Ok(events)
    }

    /// Gives a RUNNING order its final status once every storage suborder is DONE or FINISHED, with its
    /// event (DONE, or FAILED; DONE_WITH_WARNING is told as DONE with a message). Returns the events
    /// to send.
    pub async fn settle_order(&self, backend: &Backend, order_id: &str) -> Result<Vec<OutboxEvent>, StoreError> {
        let Some(order) = backend.table.get(&self.orders, &order_key(order_id)).await? else { return Ok(vec![]) };
        let done = order.get_i64("suborderDone").unwrap_or(0);
        // A retry being prepared reopens suborders: the order is not over until it is done.
        if order.get_str("status") != Some(OrderStatus::Running.as_str())
            || done < order.get_i64("internalSuborders").unwrap_or(0)
            || order.get("retrying").is_some()
        {
            return Ok(vec![]);
        }
        let available = order.get_i64("madeAvailable").unwrap_or(0);
        let errors = order.get_i64("filesInErrorCount").unwrap_or(0);
        let status = final_status(available, errors);
        let now = backend.clock.now_ms();
        let updates = vec![
            Update::set("status", status.as_str()),
            Update::set("statusDate", now),
            Update::set("percentCompleted", percent_completed(order.get_i64("filesCount").unwrap_or(0), available, errors)),
        ];
        let cond =
            Cond::And(vec![Cond::eq("status", OrderStatus::Running.as_str()), Cond::eq("suborderDone", done), Cond::absent("retrying")]);
        let told = self.final_event(&order, status);
        let ops = vec![self.update(order_key(order_id), updates, Some(cond)), self.outbox.stage(&told, now)];
        match backend.table.transact(ops).await {
            Ok(()) => {
                tracing::info!(order_id, status = status.as_str(), available, errors, "order done");
                Ok(vec![told])
            }
            Err(PortError::TransactionCanceled { .. }) => Ok(vec![]),
            Err(e) => Err(e.into()),
        }
    }

    /// The event telling that `order` ended in `status`.
    pub fn final_event(&self, order: &Item, status: OrderStatus) -> OutboxEvent {
        match status {
            OrderStatus::Failed => self.order_event(order, "FAILED", None, Some("no file could be made available")),
            OrderStatus::DoneWithWarning => self.order_event(order, "DONE", None, Some("some files could not be made available")),
            _ => self.order_event(order, "DONE", None, None),
        }
    }
}
