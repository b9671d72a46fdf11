//! `order-create`: expands a PENDING order (message `{"orderId"}`) into suborders and files.
//!
//! For each dataset selection of the order's basket, it reads the selected products batch by batch
//! (memory holds one batch, whatever the order's size), keeps the files the dataset's file filters keep
//! (plus the dataset's own RAWDATA files when a product of it is ordered), and places each in a
//! suborder: per dataset, stored and referenced files apart, at most 5,000 files and
//! `GRANARY_ORDER_SUBORDER_MAX_MIB` per stored suborder, 1,000 files per referenced one, a file larger
//! than the limit alone (with a warning). After each batch it writes the files and closed suborders,
//! then checkpoints where it is (under a lease, so two deliveries never expand one order at once); a
//! delivery after a crash truncates what the last checkpoint does not cover and resumes from it, so no
//! suborder or file is written twice. Only the last write makes the order visible as RUNNING (DONE with
//! only referenced files, DONE_WITH_WARNING with nothing to order), with its expiration date.

use aws_lambda_events::event::sqs::{SqsBatchResponse, SqsEvent};
use chrono::{DateTime, Utc};
use granary_domain::basket::Basket;
use granary_domain::catalog::{ProductFile, dataset_uuid, product_files};
use granary_domain::dispatch::{PACK_PROCESS, SuborderState, process_id};
use granary_domain::order::{ClosedSuborder, FileState, OrderSettings, OrderStatus, Splitter, SuborderKind};
use granary_domain::storage::Locations;
use granary_lambda::{Config, sqs};
use granary_ports::{Backend, Item, Key, Update};
use granary_stores::StoreError;
use granary_stores::fulfilment::{Fulfilment, waiting_key};
use granary_stores::orders::{Claim, OrderStore, file_sk, order_partition, suborder_sk};
use granary_stores::selection::{Position, Selections};
use lambda_runtime::LambdaEvent;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

/// Most warnings kept on an order: the order item must stay under 400 KB.
const MAX_WARNINGS: usize = 100;

/// The expansion message.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ExpandOrder {
    /// The order to expand.
    pub order_id: String,
}

/// What one dataset of the order came to.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DatasetTask {
    /// The dataset's URN.
    pub dataset_ipid: String,
    /// Its label.
    pub dataset_label: String,
    /// Products ordered.
    pub objects_count: u64,
    /// Files ordered.
    pub files_count: u64,
    /// Their bytes.
    pub files_size: u64,
    /// The processing its suborders go through (the built-in `granary-pack` or a configured one).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub process_business_id: Option<String>,
    /// The parameters the selection gives its processing.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub process_parameters: Option<serde_json::Value>,
}

/// Totals of an order's files.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Totals {
    /// Files.
    pub files: u64,
    /// Bytes.
    pub bytes: u64,
    /// Files referenced (available at once).
    pub external_files: u64,
    /// Suborders of stored files.
    pub internal_suborders: u64,
    /// Suborders of referenced files.
    pub external_suborders: u64,
}

/// Where an expansion is; written after every batch.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Checkpoint {
    /// The dataset selection being read (index in the basket).
    pub dataset: usize,
    /// Where in it.
    pub position: Position,
    /// The suborders being filled.
    pub splitter: Splitter,
    /// The order so far.
    pub totals: Totals,
    /// The current dataset so far.
    pub current: DatasetTask,
    /// The datasets done.
    pub tasks: Vec<DatasetTask>,
    /// Warnings (files larger than a suborder may be).
    pub warnings: Vec<String>,
}

/// The order being expanded, as its suborders name it.
struct OrderRef<'a> {
    id: &'a str,
    owner: &'a str,
    created_ms: i64,
}

/// The handler and what it needs, built once per cold start.
#[derive(Debug, Clone)]
pub struct OrderCreate {
    backend: Backend,
    orders: OrderStore,
    fulfilment: Fulfilment,
    selections: Selections,
    settings: OrderSettings,
    locations: Locations,
    /// The ids of the configured processings (`GRANARY_PROCESSES`).
    processes: std::collections::BTreeSet<String>,
    lease_ms: i64,
}

/// Why an expansion stopped before the end.
enum Stop {
    /// Another delivery holds the lease, or this one lost it: SQS delivers again later.
    Busy,
    /// A port failed.
    Store(StoreError),
}

impl From<StoreError> for Stop {
    fn from(e: StoreError) -> Self {
        Stop::Store(e)
    }
}

impl OrderCreate {
    /// The handler over `backend`, configured by `config`; leases last `GRANARY_ORDER_LEASE_SECS`
    /// (default 900, the function's timeout).
    pub fn new(backend: Backend, config: Config) -> Self {
        let lease_secs = granary_lambda::config::env_number::<i64>("GRANARY_ORDER_LEASE_SECS", 900).unwrap_or(900).max(1);
        let orders = OrderStore::new(&config.orders_table, &config.requests_table);
        let fulfilment =
            Fulfilment::new(&config.orders_table, &config.requests_table, &config.suborder_dispatch_queue, &config.order_events_queue);
        let selections = Selections::new(&config.features_table, &config.requests_table, &config.search_date_property);
        let backend =
            granary_ports::access::guard(backend, "order-create", orders.grants().and(fulfilment.grants()).and(selections.grants()));
        Self {
            orders,
            fulfilment,
            selections,
            settings: config.order_settings,
            locations: config.locations(),
            processes: config.processes().into_keys().collect(),
            lease_ms: lease_secs * 1000,
            backend,
        }
    }

    /// Handles one SQS batch; orders that could not be finished now are retried by SQS.
    pub async fn handle(&self, event: LambdaEvent<SqsEvent>) -> Result<SqsBatchResponse, lambda_runtime::Error> {
        let mut failed = Vec::new();
        for msg in &event.payload.records {
            let id = msg.message_id.clone().unwrap_or_default();
            let order: ExpandOrder = match serde_json::from_str(msg.body.as_deref().unwrap_or_default()) {
                Ok(o) => o,
                Err(e) => {
                    // Nothing to retry: Granary writes these messages itself.
                    tracing::error!(message_id = %id, error = %e, "order-create message is not {{orderId}}; dropped");
                    continue;
                }
            };
            let token = uuid::Uuid::new_v4().to_string();
            match self.expand(&order.order_id, &token).await {
                Ok(()) => {}
                Err(Stop::Busy) => {
                    tracing::info!(order_id = %order.order_id, "another expansion holds the order; retried later");
                    failed.push(id);
                }
                Err(Stop::Store(e)) => {
                    tracing::warn!(order_id = %order.order_id, error = %e, "expansion interrupted; SQS will redeliver it");
                    // The lease goes with it, so that the redelivery resumes rather than finding
                    // the order held until the lease runs out (which matters where the visibility
                    // timeout is shorter than the lease). If this write fails too, the lease runs out.
                    let release = vec![Update::remove("lease"), Update::remove("leaseUntil")];
                    if let Err(e) = self.orders.guarded(&self.backend, &order.order_id, &token, release).await {
                        tracing::warn!(order_id = %order.order_id, error = %e, "lease not released; it runs out");
                    }
                    failed.push(id);
                }
            }
        }
        Ok(sqs::batch_response(failed))
    }

    /// Expands `order_id` to the end, from its last checkpoint.
    async fn expand(&self, order_id: &str, token: &str) -> Result<(), Stop> {
        let order = match self.orders.claim(&self.backend, order_id, token, self.lease_ms).await? {
            Claim::Held(item) => item,
            Claim::Busy => return Err(Stop::Busy),
            Claim::Finished => return Ok(()),
        };
        let owner = order.get_str("owner").unwrap_or_default().to_owned();
        let order_ref = OrderRef { id: order_id, owner: &owner, created_ms: order.get_i64("createdAt").unwrap_or(0) };
        let basket: Basket = order
            .get("basket")
            .and_then(|b| serde_json::from_value(b.clone()).ok())
            .ok_or_else(|| StoreError::Malformed(format!("order {order_id}"), "no readable basket".into()))?;
        let mut cp = match order.get("checkpoint").and_then(|c| serde_json::from_value::<Checkpoint>(c.clone()).ok()) {
            Some(cp) => {
                // Whatever was written after the checkpoint goes: it is written again from there.
                let open: Vec<(u32, u64)> =
                    [cp.splitter.internal, cp.splitter.external].into_iter().flatten().map(|b| (b.number, b.files)).collect();
                let removed = self.orders.truncate(&self.backend, order_id, &open, cp.splitter.next_number).await?;
                tracing::info!(order_id, dataset = cp.dataset, removed, "resuming the expansion from its checkpoint");
                cp
            }
            None => Checkpoint {
                dataset: 0,
                position: Position::Named(0),
                splitter: Splitter::new(self.settings.suborder_max_bytes),
                totals: Totals::default(),
                current: DatasetTask::default(),
                tasks: vec![],
                warnings: vec![],
            },
        };
        while let Some(selection) = basket.dataset_selections.get(cp.dataset) {
            cp.current.dataset_ipid.clone_from(&selection.dataset_ipid);
            cp.current.dataset_label.clone_from(&selection.dataset_label);
            match process_id(selection.process_dataset_description.as_ref()) {
                Some(id) if id == PACK_PROCESS || self.processes.contains(id) => {
                    cp.current.process_business_id = Some(id.to_owned());
                    cp.current.process_parameters =
                        selection.process_dataset_description.as_ref().and_then(|d| d.get("parameters")).filter(|p| !p.is_null()).cloned();
                }
                Some(other) if cp.current.process_business_id.is_none() && cp.warnings.len() < MAX_WARNINGS => {
                    let warning = format!(
                        "processing {other:?} of {} is not one Granary runs (built-in granary-pack, or one of GRANARY_PROCESSES): its files are ordered as they are",
                        selection.dataset_label
                    );
                    if !cp.warnings.contains(&warning) {
                        cp.warnings.push(warning);
                    }
                }
                _ => {}
            }
            let filter = selection.file_filter();
            let dataset = dataset_uuid(&selection.dataset_ipid);
            let mut selected = self.selections.selected(dataset, &selection.items_selections, cp.position.clone());
            // A checkpoint after each batch: a crash redoes at most one batch's files.
            loop {
                let Some(products) = selected.next(&self.backend).await? else { break };
                let mut items = Vec::new();
                for product in &products {
                    cp.current.objects_count += 1;
                    let files: Vec<ProductFile> = product_files(product, &self.locations).into_iter().filter(|f| filter.keeps(f)).collect();
                    for file in &files {
                        self.place(&order_ref, &mut cp, product, file, &mut items);
                    }
                }
                cp.position = selected.position.clone();
                self.orders.put_all(&self.backend, items).await?;
                self.save(order_id, token, &cp).await?;
            }
            // The dataset's own RAWDATA files go with any of its products (the file filters apply).
            let mut items = Vec::new();
            if cp.current.objects_count > 0
                && let Some(ds) = self.selections.catalog().dataset_by_uuid(&self.backend, dataset).await?
            {
                for file in product_files(&ds, &self.locations).iter().filter(|f| f.data_type == "RAWDATA" && filter.keeps(f)) {
                    self.place(&order_ref, &mut cp, &ds, file, &mut items);
                }
            }
            for closed in cp.splitter.finish() {
                items.push(self.suborder_item(&order_ref, &cp.current, &closed));
                count_suborder(&mut cp.totals, &closed);
            }
            self.orders.put_all(&self.backend, items).await?;
            if cp.current.objects_count > 0 {
                cp.tasks.push(std::mem::take(&mut cp.current));
            }
            cp.current = DatasetTask::default();
            cp.dataset += 1;
            cp.position = Position::Named(0);
            self.save(order_id, token, &cp).await?;
        }
        self.finish(order_id, token, &order, &cp).await
    }

    /// Places one file of `product` in a suborder, adding its item (and those of suborders it closes).
    fn place(&self, order: &OrderRef, cp: &mut Checkpoint, product: &Value, file: &ProductFile, items: &mut Vec<Item>) {
        let placement = cp.splitter.place(file);
        if placement.oversized && cp.warnings.len() < MAX_WARNINGS {
            cp.warnings.push(format!(
                "file {} of {} ({} bytes) is larger than a suborder may be ({} bytes): it has a suborder of its own",
                file.filename,
                product.get("urn").and_then(Value::as_str).unwrap_or_default(),
                file.size,
                self.settings.suborder_max_bytes
            ));
        }
        for closed in &placement.closed {
            items.push(self.suborder_item(order, &cp.current, closed));
            count_suborder(&mut cp.totals, closed);
        }
        let state = if file.reference { FileState::Available } else { FileState::Pending };
        let text = |name: &str| product.get(name).and_then(Value::as_str).unwrap_or_default().to_owned();
        items.push(
            Item::new(Key::new(order_partition(order.id), file_sk(placement.suborder, placement.index)))
                .with("state", state.as_str())
                .with("suborder", placement.suborder)
                .with("urn", text("urn"))
                .with("providerId", text("id"))
                .with("file", serde_json::to_value(file).unwrap_or_default()),
        );
        cp.current.files_count += 1;
        cp.current.files_size = cp.current.files_size.saturating_add(file.size);
        cp.totals.files += 1;
        cp.totals.bytes = cp.totals.bytes.saturating_add(file.size);
        if file.reference {
            cp.totals.external_files += 1;
        }
    }

    fn suborder_item(&self, order: &OrderRef, task: &DatasetTask, closed: &ClosedSuborder) -> Item {
        let number = closed.bucket.number;
        let mut item = Item::new(Key::new(order_partition(order.id), suborder_sk(number)))
            .with("orderId", order.id)
            .with("number", number)
            .with("datasetIpid", task.dataset_ipid.clone())
            .with("kind", serde_json::to_value(closed.kind).unwrap_or_default())
            .with("filesCount", closed.bucket.files)
            .with("filesSize", closed.bucket.bytes);
        if let (Some(process), SuborderKind::Internal) = (&task.process_business_id, closed.kind) {
            item = item.with("processing", process.clone());
            if let Some(parameters) = &task.process_parameters {
                item = item.with("processParameters", parameters.clone());
            }
        }
        match closed.kind {
            // Referenced files are available at once: such a suborder is done when made (REGARDS's
            // ended external FilesTask), and finished once its files are downloaded.
            SuborderKind::External => item.with("state", SuborderState::Done.as_str()).with("pending", 0).with("open", closed.bucket.files),
            // A stored one waits in the dispatch index for a slot: smaller, then older, first.
            // Its counters (files not yet available; files not yet downloaded or failed) start full; a
            // retry adds the files it puts back.
            SuborderKind::Internal => item
                .with("state", SuborderState::Waiting.as_str())
                .with("pending", closed.bucket.files)
                .with("open", closed.bucket.files)
                .with("slotOwner", order.owner)
                .with("dispatchState", SuborderState::Waiting.as_str())
                .with("dispatchKey", waiting_key(closed.bucket.bytes, order.created_ms, order.id, number)),
        }
    }

    async fn save(&self, order_id: &str, token: &str, cp: &Checkpoint) -> Result<(), Stop> {
        let value = serde_json::to_value(cp).unwrap_or_default();
        if self.orders.checkpoint(&self.backend, order_id, token, value, self.lease_ms).await? { Ok(()) } else { Err(Stop::Busy) }
    }

    /// The one write that makes the order visible as expanded.
    async fn finish(&self, order_id: &str, token: &str, order: &Item, cp: &Checkpoint) -> Result<(), Stop> {
        let now = self.backend.clock.now_ms();
        let t = cp.totals;
        let objects: u64 = cp.tasks.iter().map(|d| d.objects_count).sum();
        let created = order.get_i64("createdAt").unwrap_or(now);
        let created_at = DateTime::<Utc>::from_timestamp_millis(created).unwrap_or_default();
        let expires = self.settings.expiration(created_at, t.internal_suborders).timestamp_millis();
        let (status, message, percent) = if t.files == 0 {
            let why = if objects == 0 { "features do not exist anymore" } else { "No file match filters" };
            (OrderStatus::DoneWithWarning, Some(why.to_owned()), 100)
        } else if t.internal_suborders == 0 {
            (OrderStatus::Done, None, 100)
        } else {
            (OrderStatus::Running, None, (t.external_files * 100 / t.files) as i64)
        };
        let mut updates = vec![
            Update::set("status", status.as_str()),
            Update::set("statusDate", now),
            Update::set("expiresAt", expires),
            Update::set("expiryList", granary_stores::lifecycle::EXPIRY_LIST),
            Update::set("filesCount", t.files),
            Update::set("filesSize", t.bytes),
            Update::set("availableFilesCount", t.external_files),
            Update::set("madeAvailable", t.external_files),
            Update::set("suborderDone", 0),
            Update::set("filesInErrorCount", 0),
            Update::set("percentCompleted", percent),
            Update::set("internalSuborders", t.internal_suborders),
            Update::set("externalSuborders", t.external_suborders),
            Update::set("waitingForUser", t.external_files > 0),
            Update::set("datasetTasks", serde_json::to_value(&cp.tasks).unwrap_or_default()),
            Update::set("warnings", json!(cp.warnings)),
            Update::remove("checkpoint"),
            Update::remove("leaseUntil"),
        ];
        if let Some(m) = message {
            updates.push(Update::set("message", m));
        }
        // Its suborders wait for dispatch: the nudge is staged with the status that lets them start.
        // An order over at once (referenced files only, or nothing) is told so.
        let mut events = vec![self.fulfilment.nudge(&format!("{order_id}:expanded"))];
        if status != OrderStatus::Running {
            events.push(self.fulfilment.final_event(order, status));
        }
        let staged = events.iter().map(|e| self.fulfilment.outbox().stage(e, now)).collect();
        if !self.orders.guarded_with(&self.backend, order_id, token, updates, staged).await? {
            return Err(Stop::Busy);
        }
        if let Err(e) = self.fulfilment.outbox().flush(&self.backend, &events).await {
            tracing::warn!(order_id, error = %e, "order events left to the outbox relay");
        }
        tracing::info!(
            order_id,
            status = status.as_str(),
            files = t.files,
            suborders = t.internal_suborders + t.external_suborders,
            "order expanded"
        );
        Ok(())
    }
}

fn count_suborder(totals: &mut Totals, closed: &ClosedSuborder) {
    match closed.kind {
        SuborderKind::Internal => totals.internal_suborders += 1,
        SuborderKind::External => totals.external_suborders += 1,
    }
}
