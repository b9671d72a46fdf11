//! `suborder-dispatch`: starts waiting storage suborders within the limits, and runs their storage
//! jobs. Its queue carries two messages:
//!
//! - `{"dispatch": {"reason"}}`, a nudge sent on every event that frees a slot (an order expanded, a
//!   suborder done or finished) and by order-maintenance's schedule as a safety net. One dispatch serves
//!   a whole batch of nudges. While the pool (`GRANARY_ORDER_POOL_MAX`) has room it starts, among the
//!   WAITING suborders of RUNNING orders, the next one of the user with the fewest suborders counted
//!   against `GRANARY_ORDER_USER_MAX` (RUNNING, or DONE and not yet downloaded), that user's smallest in
//!   bytes, then the older. Each start takes the pool slot and the user slot in the transaction that
//!   makes the suborder RUNNING and stages its storage job, each guarded by its limit: dispatchers
//!   running at once never exceed a limit, and a crash leaks no slot.
//! - `{"start": {"orderId", "suborder"}}`, a suborder's storage job: each PENDING file is counted in its
//!   owner's quota (those past it end in ERROR "quota exceeded") and claimed as the order's (so it is
//!   not deleted under the order), then an online file is AVAILABLE at once, a nearline one gets an S3
//!   restore request (its completion reaches storage-ready), and one held by an external storage
//!   service is asked for by a REGARDS FilesRestorationRequestEvent (at most 1,000 checksums each, on
//!   `GRANARY_FILES_RESTORATION_QUEUE`; answered on the storage-ready queue). A job that runs again
//!   skips what it reserved before and asks again for what still waits: restore requests and
//!   restoration events are idempotent.

use aws_lambda_events::event::sqs::{SqsBatchResponse, SqsEvent};
use granary_domain::catalog::ProductFile;
use granary_domain::dispatch::{Candidate, DispatchLimits, PACK_PROCESS, PROCESSED_STORAGE, Source, SuborderState, pick, source_of};
use granary_domain::order::{FileState, OrderStatus, Quota};
use granary_domain::processing::Processes;
use granary_domain::storage::{Locations, ReleaseJob, StoredObject, WorkerJob};
use granary_lambda::{Config, sqs};
use granary_ports::access::Access;
use granary_ports::{Backend, Functions, Item, NoFunctions, OutgoingMessage, PortError, RestoreStatus, StorageClass};
use granary_stores::StoreError;
use granary_stores::fulfilment::{Fulfilment, Reservation, Reserved, Start, Wait};
use granary_stores::orders::{OrderStore, QuotaStore};
use granary_stores::outbox::OutboxEvent;
use granary_stores::owners::{Claim, FileOwners};
use lambda_runtime::LambdaEvent;
use md5::{Digest, Md5};
use serde::{Deserialize, Serialize};
use serde_json::json;
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

mod processing;

/// Most WAITING suborders one dispatch round reads (smallest first).
const SCAN: usize = 1000;
/// Most pages of WAITING suborders one dispatch round reads.
const MAX_PAGES: usize = 10;
/// Files reserved per transaction (each may add a waiter item; DynamoDB takes 100 operations).
const RESERVE_CHUNK: usize = 45;
/// Most checksums per FilesRestorationRequestEvent (REGARDS's MAX_REQUEST_PER_GROUP).
pub const MAX_CHECKSUMS_PER_EVENT: usize = 1000;

/// The index, in its suborder, of the file a processing makes (past any suborder's 5,000 files).
pub const OUTPUT_INDEX: u64 = 99_999;

/// A writer that hashes what goes through it (the processed zip's checksum, whatever its upload).
struct Md5Writer<W> {
    inner: W,
    md5: Md5,
}

impl<W: std::io::Write> std::io::Write for Md5Writer<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.md5.update(&buf[..n]);
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

/// A message of the dispatch queue.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum DispatchMessage {
    /// Start what the limits allow.
    Dispatch {
        /// Why (logged).
        #[serde(default)]
        reason: String,
    },
    /// Release a DELETED or EXPIRED order: slots, quota, its hold on stored objects.
    #[serde(rename_all = "camelCase")]
    Release {
        /// The order.
        order_id: String,
    },
    /// Run a suborder's processing (files made available, before it is done).
    #[serde(rename_all = "camelCase")]
    Process {
        /// The order.
        order_id: String,
        /// The suborder.
        suborder: u32,
    },
    /// Build the zip of an order's available files in the staging bucket.
    #[serde(rename_all = "camelCase")]
    Zip {
        /// The order.
        order_id: String,
        /// Which build (the order's zip item names the one it waits for).
        zip_id: i64,
    },
    /// Put a retried order's files in error back to PENDING.
    #[serde(rename_all = "camelCase")]
    Retry {
        /// The order.
        order_id: String,
    },
    /// Remove a released order's items.
    #[serde(rename_all = "camelCase")]
    Remove {
        /// The order.
        order_id: String,
    },
    /// Run a RUNNING suborder's storage job.
    #[serde(rename_all = "camelCase")]
    Start {
        /// Its order.
        order_id: String,
        /// Its number.
        suborder: u32,
    },
}

/// What one dispatch did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Dispatched {
    /// Suborders started.
    pub started: usize,
}

/// The handler and what it needs, built once per cold start.
#[derive(Debug, Clone)]
pub struct SuborderDispatch {
    backend: Backend,
    config: Config,
    fulfilment: Fulfilment,
    orders: OrderStore,
    quotas: QuotaStore,
    owners: FileOwners,
    locations: Locations,
    limits: DispatchLimits,
    processes: Processes,
    functions: Arc<dyn Functions>,
}

impl SuborderDispatch {
    /// The handler over `backend`, configured by `config`.
    pub fn new(backend: Backend, config: Config) -> Self {
        let fulfilment =
            Fulfilment::new(&config.orders_table, &config.requests_table, &config.suborder_dispatch_queue, &config.order_events_queue);
        let orders = OrderStore::new(&config.orders_table, &config.requests_table);
        let quotas = QuotaStore::new(&config.orders_table);
        let owners = FileOwners::new(&config.features_table);
        let zips = granary_stores::zips::ZipStore::new(&config.orders_table);
        let grants = [orders.grants(), quotas.grants(), owners.grants(), zips.grants()]
            .into_iter()
            .fold(fulfilment.grants(), granary_ports::access::Grants::and)
            .send(&config.files_restoration_queue)
            // Released orders let go of their stored objects through the storage worker.
            .send(&config.storage_jobs_queue)
            // Zips and processing outputs are written to the staging bucket, and outputs read back.
            .bucket(&config.staging_bucket, Access::Write)
            .bucket(&config.staging_bucket, Access::Read)
            .and(config.location_grants(&[Access::Read, Access::Restore]));
        Self {
            backend: granary_ports::access::guard(backend, "suborder-dispatch", grants),
            fulfilment,
            orders,
            quotas,
            owners,
            locations: config.locations(),
            limits: config.dispatch_limits,
            processes: config.processes(),
            functions: Arc::new(NoFunctions),
            config,
        }
    }

    /// The same, calling configured processings' Lambda functions through `functions` (without it,
    /// only command processings run).
    pub fn with_functions(mut self, functions: Arc<dyn Functions>) -> Self {
        self.functions = functions;
        self
    }

    /// Handles one SQS batch: every storage job, then one dispatch for all the nudges.
    pub async fn handle(&self, event: LambdaEvent<SqsEvent>) -> Result<SqsBatchResponse, lambda_runtime::Error> {
        let mut failed = Vec::new();
        let mut nudges = Vec::new();
        for msg in &event.payload.records {
            let id = msg.message_id.clone().unwrap_or_default();
            match serde_json::from_str::<DispatchMessage>(msg.body.as_deref().unwrap_or_default()) {
                Ok(DispatchMessage::Dispatch { reason }) => nudges.push((id, reason)),
                Ok(DispatchMessage::Start { order_id, suborder }) => {
                    if let Err(e) = self.run_job(&order_id, suborder).await {
                        tracing::warn!(order_id, suborder, error = %e, "storage job interrupted; SQS will redeliver it");
                        failed.push(id);
                    }
                }
                Ok(DispatchMessage::Release { order_id }) => match self.release(&order_id).await {
                    // Released slots may let others start.
                    Ok(()) => nudges.push((String::new(), format!("{order_id} released"))),
                    Err(e) => {
                        tracing::warn!(order_id, error = %e, "release interrupted; SQS will redeliver it");
                        failed.push(id);
                    }
                },
                Ok(DispatchMessage::Process { order_id, suborder }) => {
                    if let Err(e) = self.process(&order_id, suborder).await {
                        tracing::warn!(order_id, suborder, error = %e, "processing interrupted; SQS will redeliver it");
                        failed.push(id);
                    }
                }
                Ok(DispatchMessage::Zip { order_id, zip_id }) => {
                    if let Err(e) = self.build_zip(&order_id, zip_id).await {
                        tracing::warn!(order_id, error = %e, "zip interrupted; SQS will redeliver it");
                        failed.push(id);
                    }
                }
                Ok(DispatchMessage::Retry { order_id }) => match self.retry(&order_id).await {
                    Ok(()) => nudges.push((String::new(), format!("{order_id} retried"))),
                    Err(e) => {
                        tracing::warn!(order_id, error = %e, "retry interrupted; SQS will redeliver it");
                        failed.push(id);
                    }
                },
                // Released first (again, harmlessly): a removal overtaking its release leaks nothing.
                Ok(DispatchMessage::Remove { order_id }) => match self.remove(&order_id).await {
                    Ok(n) => tracing::info!(order_id, items = n, "order removed"),
                    Err(e) => {
                        tracing::warn!(order_id, error = %e, "removal interrupted; SQS will redeliver it");
                        failed.push(id);
                    }
                },
                // Nothing to retry: Granary writes these messages itself.
                Err(e) => tracing::error!(message_id = %id, error = %e, "not a dispatch message; dropped"),
            }
        }
        if !nudges.is_empty() {
            let reasons: Vec<&str> = nudges.iter().map(|(_, r)| r.as_str()).collect();
            match self.dispatch().await {
                Ok(d) => tracing::info!(started = d.started, ?reasons, "dispatched"),
                Err(e) => {
                    tracing::warn!(error = %e, "dispatch interrupted; SQS will redeliver its nudges");
                    failed.extend(nudges.into_iter().map(|(id, _)| id).filter(|id| !id.is_empty()));
                }
            }
        }
        Ok(sqs::batch_response(failed))
    }

    /// Starts waiting suborders while the pool has room and their owners have slots.
    pub async fn dispatch(&self) -> Result<Dispatched, StoreError> {
        let mut report = Dispatched::default();
        let mut statuses: HashMap<String, bool> = HashMap::new();
        // A few rounds: a round that lost races to other dispatchers reads the state again.
        'rounds: for _ in 0..10 {
            let free = self.limits.pool - self.fulfilment.pool_running(&self.backend).await?;
            if free <= 0 {
                break;
            }
            // Page on (smallest first) until there are enough suborders that could start: those of
            // paused orders or of users at their limit do not hide the others.
            let mut startable = Vec::new();
            let mut counted: HashMap<String, i64> = HashMap::new();
            let mut cursor = None;
            for _ in 0..MAX_PAGES {
                let (waiting, next) = self.fulfilment.in_state(&self.backend, SuborderState::Waiting, cursor, SCAN).await?;
                for s in waiting {
                    let order_id = s.get_str("orderId").unwrap_or_default().to_owned();
                    let running = match statuses.get(&order_id) {
                        Some(r) => *r,
                        None => {
                            let order = self.orders.get(&self.backend, &order_id).await?;
                            let r = order.is_some_and(|o| o.get_str("status") == Some(OrderStatus::Running.as_str()));
                            statuses.insert(order_id.clone(), r);
                            r
                        }
                    };
                    let owner = s.get_str("slotOwner").unwrap_or_default().to_owned();
                    if !counted.contains_key(&owner) {
                        let n = self.fulfilment.user_slots(&self.backend, &owner).await?;
                        counted.insert(owner.clone(), n);
                    }
                    if running && counted[&owner] < self.limits.per_user {
                        startable.push(s);
                    }
                }
                match next {
                    Some(c) if (startable.len() as i64) < free => cursor = Some(c),
                    _ => break,
                }
            }
            let candidates: Vec<Candidate> = startable
                .iter()
                .map(|s| Candidate {
                    owner: s.get_str("slotOwner").unwrap_or_default().to_owned(),
                    bytes: s.get_i64("filesSize").unwrap_or(0).max(0) as u64,
                    created_ms: 0,
                    // The index key orders by size, then order age: it breaks ties the same way.
                    id: s.get_str("dispatchKey").unwrap_or_default().to_owned(),
                })
                .collect();
            let picked = pick(&candidates, &counted, free, self.limits.per_user);
            if picked.is_empty() {
                break;
            }
            let mut progressed = false;
            let mut events = Vec::new();
            for i in picked {
                match self.fulfilment.start(&self.backend, &startable[i], self.limits).await? {
                    Start::Started(staged) => {
                        events.extend(staged);
                        report.started += 1;
                        progressed = true;
                    }
                    Start::PoolFull => {
                        self.flush(&events).await;
                        break 'rounds;
                    }
                    Start::UserFull | Start::NotStartable => {}
                }
            }
            self.flush(&events).await;
            if !progressed {
                break;
            }
        }
        Ok(report)
    }

    /// Releases a DELETED or EXPIRED order, then asks the storage worker to drop the order's hold on
    /// its stored objects (those no one else holds are deleted).
    pub async fn release(&self, order_id: &str) -> Result<(), StoreError> {
        let (objects, events) = self.fulfilment.release(&self.backend, order_id, &self.locations).await?;
        let objects: Vec<StoredObject> = objects.into_iter().collect();
        let jobs: Vec<OutgoingMessage> = objects
            .chunks(500)
            .map(|chunk| {
                let job = WorkerJob::Release(ReleaseJob { owner: format!("order:{order_id}"), objects: chunk.to_vec() });
                OutgoingMessage::new(serde_json::to_string(&job).unwrap_or_default())
            })
            .collect();
        for batch in granary_ports::queue::batches(jobs) {
            self.backend.queue.send_batch(&self.config.storage_jobs_queue, batch).await?;
        }
        self.flush(&events).await;
        tracing::info!(order_id, objects = objects.len(), "order released");
        Ok(())
    }

    /// Builds zip `zip_id` of an order into the staging bucket (`zips/<order>/<zip id>.zip`), records
    /// the downloads of the files in it, and marks the order's zip item READY (EMPTY with nothing to
    /// put in it), unless another build replaced it.
    pub async fn build_zip(&self, order_id: &str, zip_id: i64) -> Result<(), StoreError> {
        let zips = granary_stores::zips::ZipStore::new(&self.config.orders_table);
        if !zips.building(&self.backend, order_id, zip_id).await? {
            return Ok(());
        }
        let plan = granary_stores::archive::plan(&self.backend, &self.orders, order_id, &self.locations).await?;
        if plan.entries.is_empty() {
            zips.finish(&self.backend, order_id, zip_id, None).await?;
            return Ok(());
        }
        let key = format!("zips/{order_id}/{zip_id}.zip");
        let (reader, writer) = tokio::io::duplex(256 * 1024);
        let rt = tokio::runtime::Handle::current();
        let (backend, entries, notice) = (self.backend.clone(), plan.entries.clone(), plan.notice.clone());
        let writing = tokio::task::spawn_blocking(move || {
            let out = tokio_util::io::SyncIoBridge::new_with_handle(writer, rt.clone());
            granary_stores::archive::write_zip(&rt, &backend, &entries, &notice, out)
        });
        let stored = self.backend.blobs.put(&self.config.staging_bucket, &key, Box::pin(reader), StorageClass::Online).await;
        let written = match writing.await {
            Ok(Ok(written)) => written,
            Ok(Err(e)) => return Err(StoreError::Port(PortError::Unavailable(format!("writing the zip: {e}")))),
            Err(e) => return Err(StoreError::Port(PortError::Unavailable(format!("the zip writer stopped: {e}")))),
        };
        stored?;
        let files: Vec<&Item> = written.iter().filter_map(|&i| plan.files.get(i)).collect();
        let events = self.fulfilment.record_downloads(&self.backend, order_id, &files).await?;
        self.flush(&events).await;
        zips.finish(&self.backend, order_id, zip_id, Some(&key)).await?;
        tracing::info!(order_id, files = files.len(), key, "zip built");
        Ok(())
    }

    /// Runs suborder `number`'s processing: a configured one (see the `processing` module), or
    /// Granary's built-in `granary-pack`: its available files packed into one zip with a MANIFEST.txt
    /// (name, size, checksum of each) in the staging bucket (`processed/<order>/<n>.zip`), which
    /// replaces them as the suborder's file; then the suborder is done. A delivery after a crash skips
    /// what is done.
    pub async fn process(&self, order_id: &str, number: u32) -> Result<(), StoreError> {
        let Some(s) = self.orders.suborder(&self.backend, order_id, number).await? else { return Ok(()) };
        if s.get_str("state") != Some(SuborderState::Running.as_str()) || s.get("processedAt").is_some() {
            let events = self.fulfilment.settle(&self.backend, order_id, number).await?;
            self.flush(&events).await;
            return Ok(());
        }
        let process = s.get_str("processing").unwrap_or_default().to_owned();
        if process != PACK_PROCESS {
            let Some(spec) = self.processes.get(&process).cloned() else {
                // Configured when ordered, gone since: the files stay as they are.
                tracing::warn!(order_id, number, process, "processing no longer configured (GRANARY_PROCESSES): files left as they are");
                let events = self.fulfilment.processed(&self.backend, order_id, number).await?;
                self.flush(&events).await;
                return Ok(());
            };
            return self.run_configured(order_id, number, &s, &process, &spec).await;
        }
        let output_sk = granary_stores::orders::file_sk(number, OUTPUT_INDEX);
        let inputs: Vec<Item> = self
            .orders
            .suborder_files(&self.backend, order_id, number)
            .await?
            .into_iter()
            .filter(|f| f.key.sk != output_sk && matches!(f.get_str("state"), Some("AVAILABLE" | "DOWNLOADED")))
            .collect();
        let mut entries = Vec::new();
        let mut manifest = Vec::new();
        let mut packed = Vec::new();
        for f in &inputs {
            let Some(pf) = product_file(f) else { continue };
            if let Source::Online { bucket, key } | Source::Nearline { bucket, key } = source_of(&pf, &self.locations) {
                let name = granary_domain::metalink::safe_path(&[f.get_str("providerId").unwrap_or_default(), &pf.filename]);
                manifest.push(format!("{name}\t{}\t{}:{}", pf.size, pf.algorithm, pf.checksum));
                entries.push(granary_stores::archive::ZipEntry { name, bucket, key });
                packed.push(f.clone());
            }
        }
        let key = format!("processed/{order_id}/{number}.zip");
        let (reader, writer) = tokio::io::duplex(256 * 1024);
        let rt = tokio::runtime::Handle::current();
        let backend = self.backend.clone();
        let writing = tokio::task::spawn_blocking(move || {
            let mut out = Md5Writer { inner: tokio_util::io::SyncIoBridge::new_with_handle(writer, rt.clone()), md5: Md5::new() };
            let written = granary_stores::archive::write_zip_with(&rt, &backend, &entries, &[], Some(&manifest), &mut out)?;
            Ok::<_, std::io::Error>((written, hex::encode(out.md5.finalize())))
        });
        let stored = self.backend.blobs.put(&self.config.staging_bucket, &key, Box::pin(reader), StorageClass::Online).await;
        let (written, md5) = match writing.await {
            Ok(Ok(done)) => done,
            Ok(Err(e)) => return Err(StoreError::Port(PortError::Unavailable(format!("packing the suborder: {e}")))),
            Err(e) => return Err(StoreError::Port(PortError::Unavailable(format!("the packing stopped: {e}")))),
        };
        let meta = stored?;
        let output_file = ProductFile {
            data_type: "RAWDATA".into(),
            filename: format!("order-{}-suborder-{number}.zip", order_id.split('-').next_back().unwrap_or(order_id)),
            mime_type: "application/zip".into(),
            size: meta.size,
            checksum: md5,
            algorithm: "MD5".into(),
            online: true,
            reference: false,
            storage: Some(PROCESSED_STORAGE.into()),
            url: format!("s3://{}/{key}", self.config.staging_bucket),
        };
        let output = Item::new(granary_ports::Key::new(granary_stores::orders::order_partition(order_id), output_sk))
            .with("state", FileState::Available.as_str())
            .with("suborder", number)
            .with("urn", "")
            .with("providerId", format!("suborder-{number}"))
            .with("processedFrom", written.len())
            .with("availableAt", self.backend.clock.now_ms())
            .with("file", serde_json::to_value(&output_file).unwrap_or_default());
        let replaced: Vec<Item> = written.iter().filter_map(|&i| packed.get(i).cloned()).collect();
        self.fulfilment.replace(&self.backend, order_id, number, vec![output], &replaced).await?;
        let events = self.fulfilment.processed(&self.backend, order_id, number).await?;
        self.flush(&events).await;
        tracing::info!(order_id, number, files = replaced.len(), key, "suborder processed");
        Ok(())
    }

    /// Releases, then removes every item of a deleted order.
    pub async fn remove(&self, order_id: &str) -> Result<usize, StoreError> {
        self.release(order_id).await?;
        self.fulfilment.remove(&self.backend, order_id, &self.locations).await
    }

    /// Puts a retried order's files in error back to PENDING (see [`Fulfilment::retry`]).
    pub async fn retry(&self, order_id: &str) -> Result<(), StoreError> {
        let Some(order) = self.orders.get(&self.backend, order_id).await? else { return Ok(()) };
        if order.get("retrying").is_none() {
            return Ok(());
        }
        let created = order.get_i64("createdAt").unwrap_or(0);
        let (files, events) = self.fulfilment.retry(&self.backend, order_id, created).await?;
        self.flush(&events).await;
        tracing::info!(order_id, files, "files in error back to PENDING");
        Ok(())
    }

    async fn flush(&self, events: &[OutboxEvent]) {
        if events.is_empty() {
            return;
        }
        if let Err(e) = self.fulfilment.outbox().flush(&self.backend, events).await {
            tracing::warn!(error = %e, events = events.len(), "events left to the outbox relay");
        }
    }

    /// Runs suborder `number`'s storage job (again, when redelivered).
    pub async fn run_job(&self, order_id: &str, number: u32) -> Result<(), StoreError> {
        let Some(order) = self.orders.get(&self.backend, order_id).await? else { return Ok(()) };
        if order.get_str("status") != Some(OrderStatus::Running.as_str()) {
            // Paused, deleted or expired: resuming sends the job again.
            tracing::info!(order_id, number, status = order.get_str("status"), "storage job not run: the order is not RUNNING");
            return Ok(());
        }
        let Some(suborder) = self.orders.suborder(&self.backend, order_id, number).await? else { return Ok(()) };
        if suborder.get_str("state") != Some(SuborderState::Running.as_str()) {
            // Done already: a delivery after a crash between its last write and the order's settles it.
            let events = self.fulfilment.settle(&self.backend, order_id, number).await?;
            self.flush(&events).await;
            return Ok(());
        }
        let owner = suborder.get_str("slotOwner").unwrap_or_default().to_owned();
        let quota = self.quotas.get(&self.backend, &owner).await?.unwrap_or(self.config.default_quota);
        let files = self.orders.suborder_files(&self.backend, order_id, number).await?;
        for page in files.chunks(100) {
            self.make_available(order_id, number, &owner, &quota, page).await?;
        }
        let events = self.fulfilment.settle(&self.backend, order_id, number).await?;
        self.flush(&events).await;
        Ok(())
    }

    /// One page of a suborder's files: reserves those not reserved yet, then asks for every one still
    /// waiting.
    async fn make_available(&self, order_id: &str, number: u32, owner: &str, quota: &Quota, files: &[Item]) -> Result<(), StoreError> {
        let order_owner = format!("order:{order_id}");
        let mut reservations = Vec::new();
        for f in files.iter().filter(|f| f.get_str("state") == Some(FileState::Pending.as_str()) && f.get("reservedAt").is_none()) {
            let Some(pf) = product_file(f) else { continue };
            let source = source_of(&pf, &self.locations);
            if let Source::Online { bucket, key } | Source::Nearline { bucket, key } = &source {
                let object = StoredObject { storage: pf.storage.clone().unwrap_or_default(), checksum: pf.checksum.clone() };
                if self.owners.claim(&self.backend, &object, bucket, key, &order_owner).await? == Claim::BeingDeleted {
                    self.fulfilment.failed(&self.backend, order_id, f, "the file is being deleted from its storage").await?;
                    continue;
                }
            }
            let wait = match source {
                Source::Online { .. } | Source::Reference => Wait::Nothing,
                Source::Nearline { key, .. } => Wait::Restore(key),
                Source::Service { storage } => Wait::Service(storage),
            };
            reservations.push(Reservation { file_sk: f.key.sk.clone(), size: pf.size, checksum: pf.checksum.clone(), wait });
        }
        for chunk in reservations.chunks(RESERVE_CHUNK) {
            match self.fulfilment.reserve(&self.backend, order_id, number, owner, quota, chunk).await? {
                Reserved::Done => {}
                // One at a time: what fits is reserved, the rest fails.
                Reserved::QuotaExceeded | Reserved::Changed => {
                    for r in chunk {
                        if self.fulfilment.reserve(&self.backend, order_id, number, owner, quota, std::slice::from_ref(r)).await?
                            == Reserved::QuotaExceeded
                            && let Some(file) = self.fulfilment.file(&self.backend, order_id, &r.file_sk).await?
                        {
                            self.fulfilment.failed(&self.backend, order_id, &file, "quota exceeded").await?;
                        }
                    }
                }
            }
        }
        // Everything reserved and still waiting is asked for (again, on a redelivery).
        let mut by_service: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for f in files {
            let Some(current) = self.fulfilment.file(&self.backend, order_id, &f.key.sk).await? else { continue };
            if current.get_str("state") != Some(FileState::Pending.as_str()) {
                continue;
            }
            let Some(pf) = product_file(&current) else { continue };
            match (current.get_str("waitingOn"), source_of(&pf, &self.locations)) {
                (Some("RESTORE"), Source::Nearline { bucket, key }) => self.restore(order_id, &current, &bucket, &key).await?,
                (Some("SERVICE"), Source::Service { storage }) => by_service.entry(storage).or_default().push(pf.checksum),
                _ => {}
            }
        }
        for (storage, checksums) in by_service {
            self.ask_service(order_id, number, &storage, checksums).await?;
        }
        Ok(())
    }

    async fn restore(&self, order_id: &str, file: &Item, bucket: &str, key: &str) -> Result<(), StoreError> {
        let days = u32::try_from((self.config.order_settings.suborder_duration_hours + 23) / 24).unwrap_or(1).max(1);
        match self.backend.blobs.request_restore(bucket, key, days).await {
            // Restored before (for another order): readable now.
            Ok(RestoreStatus::Restored { .. } | RestoreStatus::NotNeeded) => {
                self.fulfilment.arrived(&self.backend, order_id, file).await?;
            }
            Ok(RestoreStatus::InProgress | RestoreStatus::NotRequested) => {}
            Err(PortError::NotFound(what)) => {
                self.fulfilment.failed(&self.backend, order_id, file, &format!("the stored file is missing: {what}")).await?;
            }
            Err(e) => return Err(e.into()),
        }
        Ok(())
    }

    /// Sends REGARDS's FilesRestorationRequestEvent for `checksums` held by `storage`, 1,000 at most each.
    async fn ask_service(&self, order_id: &str, number: u32, storage: &str, checksums: Vec<String>) -> Result<(), StoreError> {
        let hours = self.config.order_settings.suborder_duration_hours;
        let messages: Vec<OutgoingMessage> = checksums
            .chunks(MAX_CHECKSUMS_PER_EVENT)
            .enumerate()
            .map(|(i, chunk)| {
                let body = json!({ "checksums": chunk, "availabilityHours": hours, "groupId": format!("order:{order_id}:{number}:{i}") });
                OutgoingMessage::new(body.to_string()).attribute("granary.storage", storage)
            })
            .collect();
        for batch in granary_ports::queue::batches(messages) {
            self.backend.queue.send_batch(&self.config.files_restoration_queue, batch).await?;
        }
        Ok(())
    }
}

fn product_file(file: &Item) -> Option<ProductFile> {
    file.get("file").and_then(|f| serde_json::from_value::<ProductFile>(f.clone()).ok()).or_else(|| {
        tracing::error!(file = %file.key.sk, "an order file without a readable description");
        None::<ProductFile>
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Value;

    #[test]
    fn messages_read_as_written() {
        let start: DispatchMessage = serde_json::from_value(json!({"start": {"orderId": "o1", "suborder": 3}})).unwrap();
        assert_eq!(start, DispatchMessage::Start { order_id: "o1".into(), suborder: 3 });
        let nudge: DispatchMessage = serde_json::from_value(json!({"dispatch": {"reason": "x"}})).unwrap();
        assert_eq!(nudge, DispatchMessage::Dispatch { reason: "x".into() });
        assert!(serde_json::from_value::<DispatchMessage>(Value::Null).is_err());
    }
}
