//! An order's life after its expansion: status changes guarded by the status read (pause, resume,
//! delete, expire), and the work they leave to a worker: releasing a deleted or expired order (its
//! slots freed, the quota of files not downloaded given back, its hold on stored objects dropped) and
//! removing one (every item gone). Each step is guarded by the state it leaves, so a worker that runs
//! again after a crash carries on without doing anything twice.

use crate::StoreError;
use crate::fulfilment::{Fulfilment, order_key, pool_key, user_key, waiter_key};
use crate::orders::order_partition;
use crate::outbox::OutboxEvent;
use granary_domain::catalog::ProductFile;
use granary_domain::dispatch::{Source, SuborderState, source_of};
use granary_domain::order::{FileState, OrderStatus};
use granary_domain::storage::{Locations, StoredObject};
use granary_ports::{Backend, Cond, Item, Key, PortError, Query, SortCond, TxOp, Update};
use std::collections::{BTreeMap, BTreeSet};

/// The sparse index of orders that will expire (partition `expiryList`, sort `expiresAt`).
pub const EXPIRY_INDEX: &str = "expiring";
/// The value every order that can still expire carries in `expiryList`.
pub const EXPIRY_LIST: &str = "E";

impl Fulfilment {
    /// Moves `order` (as read) from its status to `to` with `updates`, staging `events` in the same
    /// transaction; false when its status changed since it was read.
    pub async fn change_status(
        &self,
        backend: &Backend,
        order: &Item,
        to: OrderStatus,
        mut updates: Vec<Update>,
        events: &[OutboxEvent],
    ) -> Result<bool, StoreError> {
        let now = backend.clock.now_ms();
        let from = order.get_str("status").unwrap_or_default();
        updates.push(Update::set("status", to.as_str()));
        updates.push(Update::set("statusDate", now));
        if matches!(to, OrderStatus::Deleted | OrderStatus::Expired) {
            // Nothing left to expire.
            updates.push(Update::remove("expiryList"));
        }
        let mut ops = vec![self.update(order.key.clone(), updates, Some(Cond::eq("status", from)))];
        ops.extend(events.iter().map(|e| self.outbox.stage(e, now)));
        match backend.table.transact(ops).await {
            Ok(()) => Ok(true),
            Err(PortError::TransactionCanceled { index: 0, .. }) => Ok(false),
            Err(e) => Err(e.into()),
        }
    }

    /// Orders past their expiration date at `now` that have not expired yet (at most `limit`).
    pub async fn expired_by(&self, backend: &Backend, now_ms: i64, limit: usize) -> Result<Vec<Item>, StoreError> {
        let q = Query::partition(&self.orders, EXPIRY_LIST).on_index(EXPIRY_INDEX).sorted(SortCond::Lt(now_ms.into())).limit(limit);
        Ok(backend.table.query(q).await?.items)
    }

    /// Orders that can still expire, oldest expiration first, from `after` (for reminders).
    pub async fn expiring(
        &self,
        backend: &Backend,
        after: Option<granary_ports::Cursor>,
        limit: usize,
    ) -> Result<(Vec<Item>, Option<granary_ports::Cursor>), StoreError> {
        let mut q = Query::partition(&self.orders, EXPIRY_LIST).on_index(EXPIRY_INDEX).limit(limit);
        q.after = after;
        let page = backend.table.query(q).await?;
        Ok((page.items, page.next))
    }

    /// Releases a DELETED or EXPIRED order: every suborder FINISHED with its slots freed, the quota of
    /// each file not downloaded given back. Returns the stored objects the order may hold (to release
    /// as owner `order:<id>`) and the events to send.
    pub async fn release(
        &self,
        backend: &Backend,
        order_id: &str,
        locations: &Locations,
    ) -> Result<(BTreeSet<StoredObject>, Vec<OutboxEvent>), StoreError> {
        let now = backend.clock.now_ms();
        let partition = order_partition(order_id);
        let suborders = crate::all_items(
            backend,
            Query::partition(&self.orders, partition.clone()).sorted(SortCond::BeginsWith("S#".into())).limit(1000),
        )
        .await?;
        for s in suborders {
            self.release_suborder(backend, order_id, s, now).await?;
        }
        let mut objects = BTreeSet::new();
        let mut after = None;
        loop {
            let mut q = Query::partition(&self.orders, partition.clone()).sorted(SortCond::BeginsWith("F#".into())).limit(500);
            q.after = after;
            let page = backend.table.query(q).await?;
            let mut give_back = Vec::new();
            for f in &page.items {
                let Some(pf) = f.get("file").and_then(|v| serde_json::from_value::<ProductFile>(v.clone()).ok()) else { continue };
                if let Source::Online { .. } | Source::Nearline { .. } = source_of(&pf, locations) {
                    objects.insert(StoredObject { storage: pf.storage.clone().unwrap_or_default(), checksum: pf.checksum.clone() });
                }
                let state = f.get_str("state").unwrap_or_default();
                if (state == FileState::Pending.as_str() || state == FileState::Available.as_str())
                    && f.get("quotaPk").is_some()
                    && f.get("givenBackAt").is_none()
                {
                    give_back.push((f, pf.size));
                }
            }
            // A transaction per 45 files: each file marked once, with its window's counter (at most 45
            // windows): 90 operations at most.
            for chunk in give_back.chunks(45) {
                // Per window: what goes back, and a file of it (which carries the window's purge time).
                let mut windows: BTreeMap<(String, String), (i64, i64, &Item)> = BTreeMap::new();
                let mut ops = Vec::new();
                for (f, size) in chunk {
                    let key = (f.get_str("quotaPk").unwrap_or_default().to_owned(), f.get_str("quotaSk").unwrap_or_default().to_owned());
                    let w = windows.entry(key).or_insert((0, 0, *f));
                    w.0 -= 1;
                    w.1 -= i64::try_from(*size).unwrap_or(i64::MAX);
                    ops.push(self.update(f.key.clone(), vec![Update::set("givenBackAt", now)], Some(Cond::absent("givenBackAt"))));
                }
                for ((pk, sk), (files, bytes, file)) in windows {
                    ops.push(self.update(Key::new(pk, sk), crate::fulfilment::quota_give_back_updates(file, files, bytes), None));
                }
                match backend.table.transact(ops).await {
                    // Given back by an earlier run: the next page.
                    Ok(()) | Err(PortError::TransactionCanceled { .. }) => {}
                    Err(e) => return Err(e.into()),
                }
            }
            match page.next {
                Some(c) => after = Some(c),
                None => break,
            }
        }
        Ok((objects, vec![self.nudge(&format!("{order_id}:released"))]))
    }

    /// Puts the files in ERROR of an order being retried (RUNNING with `retrying`) back to PENDING, each
    /// suborder holding some waiting for dispatch again (its owner's slot freed if it held one), then
    /// ends the retry. Returns how many files, and the events to send.
    pub async fn retry(&self, backend: &Backend, order_id: &str, created_ms: i64) -> Result<(usize, Vec<OutboxEvent>), StoreError> {
        let partition = order_partition(order_id);
        let mut by_suborder: BTreeMap<u32, Vec<(Key, Option<String>)>> = BTreeMap::new();
        let mut after = None;
        loop {
            let mut q = Query::partition(&self.orders, partition.clone()).sorted(SortCond::BeginsWith("F#".into())).limit(1000);
            q.after = after;
            let page = backend.table.query(q).await?;
            for f in page.items.iter().filter(|f| matches!(f.get_str("state"), Some("ERROR" | "DOWNLOAD_ERROR"))) {
                let checksum = f.get("file").and_then(|v| v.get("checksum")).and_then(|c| c.as_str()).map(str::to_owned);
                by_suborder.entry(f.get_i64("suborder").unwrap_or(0) as u32).or_default().push((f.key.clone(), checksum));
            }
            match page.next {
                Some(c) => after = Some(c),
                None => break,
            }
        }
        let mut retried = 0;
        for (number, files) in by_suborder {
            // 45 files and their waiters a transaction: a late answer to an earlier request must not make a
            // reset file available before it is reserved again.
            let chunks: Vec<&[(Key, Option<String>)]> = files.chunks(45).collect();
            for (i, chunk) in chunks.iter().enumerate() {
                // The suborder's state decides the transition; a change meanwhile is read again.
                for _ in 0..10 {
                    let Some(s) = backend.table.get(&self.orders, &crate::fulfilment::suborder_key(order_id, number)).await? else { break };
                    let state = s.get_str("state").unwrap_or_default().to_owned();
                    let n = chunk.len() as i64;
                    let mut updates = vec![Update::add("pending", n), Update::add("open", n)];
                    let mut ops = Vec::new();
                    // Dispatch sees it again only with its last chunk of files reset.
                    if i + 1 == chunks.len() {
                        let bytes = s.get_i64("filesSize").unwrap_or(0).max(0) as u64;
                        updates.push(Update::set("dispatchState", SuborderState::Waiting.as_str()));
                        updates.push(Update::set("dispatchKey", crate::fulfilment::waiting_key(bytes, created_ms, order_id, number)));
                    }
                    if state == SuborderState::Done.as_str() || state == SuborderState::Finished.as_str() {
                        updates.push(Update::set("state", SuborderState::Waiting.as_str()));
                        ops.push(self.update(
                            order_key(order_id),
                            vec![Update::add("suborderDone", -1), Update::add("filesInErrorCount", -n)],
                            None,
                        ));
                        if state == SuborderState::Done.as_str() {
                            ops.push(self.update(
                                user_key(s.get_str("slotOwner").unwrap_or_default()),
                                vec![Update::add("slots", -1)],
                                None,
                            ));
                        }
                    } else {
                        ops.push(self.update(order_key(order_id), vec![Update::add("filesInErrorCount", -n)], None));
                    }
                    ops.push(self.update(s.key.clone(), updates, Some(Cond::eq("state", state.as_str()))));
                    for (key, checksum) in chunk.iter() {
                        if let Some(sum) = checksum {
                            ops.push(TxOp::Delete { table: self.orders.clone(), key: waiter_key(sum, order_id, &key.sk), cond: None });
                        }
                        ops.push(self.update(
                            key.clone(),
                            vec![
                                Update::set("state", FileState::Pending.as_str()),
                                Update::remove("cause"),
                                Update::remove("failedAt"),
                                Update::remove("reservedAt"),
                                Update::remove("quotaPk"),
                                Update::remove("quotaSk"),
                                Update::remove("waitingOn"),
                            ],
                            Some(Cond::Or(vec![Cond::eq("state", "ERROR"), Cond::eq("state", "DOWNLOAD_ERROR")])),
                        ));
                    }
                    match backend.table.transact(ops).await {
                        Ok(()) => {
                            retried += chunk.len();
                            break;
                        }
                        Err(PortError::TransactionCanceled { .. }) => continue,
                        Err(e) => return Err(e.into()),
                    }
                }
            }
        }
        backend.table.update(&self.orders, &order_key(order_id), vec![Update::remove("retrying")], None).await?;
        let mut events = vec![self.nudge(&format!("{order_id}:retried:{}", backend.clock.now_ms()))];
        events.extend(self.settle_order(backend, order_id).await?);
        Ok((retried, events))
    }

    /// Finishes one suborder of a released order, freeing the slots it holds; a state changed meanwhile
    /// (a storage answer settling it) is read again, so no slot is left behind.
    async fn release_suborder(&self, backend: &Backend, order_id: &str, mut s: Item, now: i64) -> Result<(), StoreError> {
        for _ in 0..10 {
            let state = s.get_str("state").unwrap_or_default().to_owned();
            let internal = s.get_str("kind") != Some("EXTERNAL");
            let owner = s.get_str("slotOwner").unwrap_or_default().to_owned();
            let mut ops = vec![self.update(
                s.key.clone(),
                vec![
                    Update::set("state", SuborderState::Finished.as_str()),
                    Update::set("releasedAt", now),
                    Update::remove("dispatchState"),
                    Update::remove("dispatchKey"),
                ],
                Some(Cond::eq("state", state.as_str())),
            )];
            // The slots it held: the pool's while RUNNING, its owner's while RUNNING or DONE.
            match state.as_str() {
                "RUNNING" => {
                    ops.push(self.update(pool_key(), vec![Update::add("running", -1)], None));
                    ops.push(self.update(user_key(&owner), vec![Update::add("slots", -1)], None));
                }
                "DONE" if internal => ops.push(self.update(user_key(&owner), vec![Update::add("slots", -1)], None)),
                "WAITING" | "DONE" => {}
                _ => return Ok(()),
            }
            match backend.table.transact(ops).await {
                Ok(()) => return Ok(()),
                Err(PortError::TransactionCanceled { .. }) => {
                    let number = s.get_i64("number").unwrap_or(0) as u32;
                    let Some(again) = backend.table.get(&self.orders, &crate::fulfilment::suborder_key(order_id, number)).await? else {
                        return Ok(());
                    };
                    s = again;
                }
                Err(e) => return Err(e.into()),
            }
        }
        Err(StoreError::Contention(format!("suborder of order {order_id}"), 10))
    }

    /// Removes every item of a (released) order: files, suborders, waiters, its label, then the order.
    pub async fn remove(&self, backend: &Backend, order_id: &str, locations: &Locations) -> Result<usize, StoreError> {
        let Some(order) = backend.table.get(&self.orders, &order_key(order_id)).await? else { return Ok(0) };
        let partition = order_partition(order_id);
        let mut removed = 0;
        loop {
            let q = Query::partition(&self.orders, partition.clone()).sorted(SortCond::BeginsWith("F#".into())).limit(45);
            let page = backend.table.query(q).await?;
            if page.items.is_empty() {
                break;
            }
            let mut ops = Vec::new();
            for f in &page.items {
                ops.push(TxOp::Delete { table: self.orders.clone(), key: f.key.clone(), cond: None });
                let pf = f.get("file").and_then(|v| serde_json::from_value::<ProductFile>(v.clone()).ok());
                if let Some(pf) = pf.filter(|pf| matches!(source_of(pf, locations), Source::Nearline { .. } | Source::Service { .. })) {
                    ops.push(TxOp::Delete { table: self.orders.clone(), key: waiter_key(&pf.checksum, order_id, &f.key.sk), cond: None });
                }
            }
            removed += page.items.len();
            backend.table.transact(ops).await?;
        }
        let rest = crate::all_items(backend, Query::partition(&self.orders, partition).limit(100)).await?;
        let mut ops: Vec<TxOp> = rest
            .iter()
            .filter(|i| i.key.sk != "O")
            .map(|i| TxOp::Delete { table: self.orders.clone(), key: i.key.clone(), cond: None })
            .collect();
        for chunk in ops.chunks(100) {
            backend.table.transact(chunk.to_vec()).await?;
        }
        removed += ops.len();
        ops = vec![TxOp::Delete { table: self.orders.clone(), key: order_key(order_id), cond: None }];
        if let (Some(owner), Some(label)) = (order.get_str("owner"), order.get_str("label")) {
            ops.push(TxOp::Delete { table: self.orders.clone(), key: Key::new(format!("L#{owner}#{label}"), "L"), cond: None });
        }
        backend.table.transact(ops).await?;
        Ok(removed + 1)
    }
}
