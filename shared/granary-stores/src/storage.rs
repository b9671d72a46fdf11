//! Feature files on their way to storage. A creation whose files go to storage writes, in its own
//! transaction, one task item per file and location (`R#<requestId>` / `S#<checksum>#<location>`, next
//! to the request), counts them on the request (`storageRemaining`, `storageFailed`), puts the request
//! in REMOTE_STORAGE_REQUESTED with a deadline, and stages the storage job for the worker. Each storage
//! event then moves one task out of PENDING (a conditional write, so a duplicate changes nothing), and
//! the event that brings the count to zero finishes the request: SUCCESS with the stored locations added
//! to the feature's files, or ERROR in REMOTE_STORAGE_ERROR naming each file that failed.

use crate::StoreError;
use crate::outbox::{Outbox, OutboxEvent};
use crate::requests::{RequestRecord, request_key};
use crate::sessions::{merge_session_ops, session_op};
use granary_domain::session::Outcome;
use granary_domain::storage::{FileResult, FileToStore, StorageJob, StorageOutcome, task_id};
use granary_domain::{FeatureRequestEvent, RequestState, Urn};
use granary_ports::{Backend, Cond, Item, Key, PortError, Query, SortCond, TxOp, Update};
use serde_json::Value;

/// The step of a request waiting for its files to be stored.
pub const STORAGE_STEP: &str = "REMOTE_STORAGE_REQUESTED";
/// The step of a request whose files could not all be stored (retryable by an admin).
pub const STORAGE_ERROR_STEP: &str = "REMOTE_STORAGE_ERROR";

const PENDING: &str = "PENDING";
const STORED: &str = "STORED";
const FAILED: &str = "ERROR";
const MAX_ATTEMPTS: u32 = 10;

fn task_key(request_id: &str, task: &str) -> Key {
    Key::new(format!("R#{request_id}"), format!("S#{task}"))
}

/// Files of a creation to store, and how long storage may take.
#[derive(Debug, Clone, PartialEq)]
pub struct PendingStorage {
    /// The files, one per location.
    pub files: Vec<FileToStore>,
    /// How long the worker and storage-ready may take before the request times out (ms).
    pub timeout_ms: i64,
    /// The storage worker's queue.
    pub jobs_queue: String,
}

/// What a creation with files to store adds to its transaction.
pub(crate) struct StagedStorage {
    /// The request item, in REMOTE_STORAGE_REQUESTED with its deadline and counts.
    pub request_item: Item,
    /// One task per file and location.
    pub tasks: Vec<TxOp>,
    /// The storage job for the worker.
    pub job: OutboxEvent,
}

fn job_event(job: &StorageJob, attempt: i64, queue: &str) -> OutboxEvent {
    let suffix = if attempt == 0 { String::new() } else { format!(":{attempt}") };
    OutboxEvent {
        event_id: format!("{}:STORE{suffix}", job.request_id),
        queue: queue.to_owned(),
        body: serde_json::to_string(job).unwrap_or_default(),
    }
}

fn remote_step(item: Item, now: i64, timeout_ms: i64, queue: &str, job_body: &str, count: usize) -> Item {
    item.with("stepSince", now)
        .with("timeoutShard", crate::recovery::TIMEOUT_PARTITION)
        .with("timeoutAt", now + timeout_ms)
        .with("storageTimeoutMs", timeout_ms)
        .with("storageRemaining", count as i64)
        .with("storageFailed", 0)
        .with("queue", queue.to_owned())
        .with("message", job_body.to_owned())
}

/// The request item and the tasks of a creation of `urn` whose files go to storage.
pub(crate) fn stage(table: &str, record: &RequestRecord, urn: &str, pending: &PendingStorage, now: i64) -> StagedStorage {
    let job = StorageJob { request_id: record.request_id.clone(), urn: urn.to_owned(), files: pending.files.clone() };
    let event = job_event(&job, 0, &pending.jobs_queue);
    let request_item = remote_step(record.to_item(), now, pending.timeout_ms, &pending.jobs_queue, &event.body, pending.files.len());
    let tasks = pending
        .files
        .iter()
        .map(|f| {
            let item = Item::new(task_key(&record.request_id, &f.task_id()))
                .with("state", PENDING)
                .with("file", serde_json::to_value(f).unwrap_or_default());
            TxOp::Put { table: table.to_owned(), item, cond: Some(Cond::ItemAbsent) }
        })
        .collect();
    StagedStorage { request_item, tasks, job: event }
}

/// What a storage event came to.
#[derive(Debug, Clone, PartialEq)]
pub enum Recorded {
    /// The file's task moved; the events (the request's SUCCESS or ERROR, when it finished) to send.
    Applied(Vec<OutboxEvent>),
    /// The task had that outcome already (a redelivery, or an error after the file was stored).
    Duplicate,
    /// No request has this group id.
    UnknownGroup,
    /// The request has no such file to store.
    UnknownFile,
}

/// Storage tasks of feature requests.
#[derive(Debug, Clone)]
pub struct StorageTracker {
    features: String,
    requests: String,
    response_queue: String,
    outbox: Outbox,
}

impl StorageTracker {
    /// What it touches (see `granary_ports::access`).
    pub fn grants(&self) -> granary_ports::access::Grants {
        granary_ports::access::Grants::new()
            .write_table(&self.features)
            .write_table(&self.requests)
            .and(self.outbox.grants())
            .send(&self.response_queue)
    }
    /// Features in `features`, requests, tasks and outbox in `requests`; request events to `response_queue`.
    pub fn new(features: &str, requests: &str, response_queue: &str) -> Self {
        Self {
            features: features.to_owned(),
            requests: requests.to_owned(),
            response_queue: response_queue.to_owned(),
            outbox: Outbox::new(requests),
        }
    }

    /// The outbox the events are staged in.
    pub fn outbox(&self) -> &Outbox {
        &self.outbox
    }

    async fn tasks(&self, backend: &Backend, request_id: &str, prefix: &str) -> Result<Vec<Item>, StoreError> {
        let q = Query::partition(&self.requests, format!("R#{request_id}")).sorted(SortCond::BeginsWith(format!("S#{prefix}")));
        Ok(backend.table.query(q).await?.items)
    }

    /// Applies one file's outcome to its task, and finishes the request when it was the last one.
    pub async fn record(&self, backend: &Backend, outcome: &StorageOutcome) -> Result<Recorded, StoreError> {
        let now = backend.clock.now_ms();
        let prefix = match &outcome.storage {
            Some(s) => task_id(&outcome.checksum, s),
            None => format!("{}#", outcome.checksum),
        };
        let mut applied = false;
        for _ in 0..MAX_ATTEMPTS {
            let exact = format!("S#{prefix}");
            let found =
                self.tasks(backend, &outcome.group_id, &prefix).await?.into_iter().find(|t| outcome.storage.is_none() || t.key.sk == exact);
            let Some(task) = found else {
                return Ok(match backend.table.get(&self.requests, &request_key(&outcome.group_id)).await? {
                    None => Recorded::UnknownGroup,
                    Some(_) => Recorded::UnknownFile,
                });
            };
            let state = task.get_str("state").unwrap_or_default().to_owned();
            let (task_updates, counts): (Vec<Update>, Vec<Update>) = match (&outcome.result, state.as_str()) {
                (FileResult::Stored { url }, PENDING) => (
                    vec![Update::set("state", STORED), Update::set("url", url.clone()), Update::set("at", now)],
                    vec![Update::add("storageRemaining", -1)],
                ),
                (FileResult::Stored { url }, FAILED) => (
                    vec![Update::set("state", STORED), Update::set("url", url.clone()), Update::remove("cause"), Update::set("at", now)],
                    vec![Update::add("storageFailed", -1)],
                ),
                (FileResult::StoreError { cause }, PENDING) => (
                    vec![Update::set("state", FAILED), Update::set("cause", cause.clone()), Update::set("at", now)],
                    vec![Update::add("storageRemaining", -1), Update::add("storageFailed", 1)],
                ),
                (FileResult::Available | FileResult::AvailabilityError { .. }, _) => return Ok(Recorded::UnknownFile),
                // Stored already, or failed again: nothing changes, but the request may still need finishing
                // (a crash between the task's write and the finish).
                _ => break,
            };
            let ops = vec![
                TxOp::Update {
                    table: self.requests.clone(),
                    key: task.key.clone(),
                    updates: task_updates,
                    cond: Some(Cond::eq("state", state)),
                },
                TxOp::Update {
                    table: self.requests.clone(),
                    key: request_key(&outcome.group_id),
                    updates: counts,
                    cond: Some(Cond::exists("storageRemaining")),
                },
            ];
            match backend.table.transact(ops).await {
                Ok(()) => {
                    applied = true;
                    break;
                }
                Err(PortError::TransactionCanceled { .. }) => continue,
                Err(e) => return Err(e.into()),
            }
        }
        let events = self.finish_if_done(backend, &outcome.group_id).await?;
        Ok(if applied || !events.is_empty() { Recorded::Applied(events) } else { Recorded::Duplicate })
    }

    /// Finishes the request when none of its files is pending: SUCCESS (its stored locations added to
    /// the feature) or ERROR naming each failed file. Returns the events to send.
    async fn finish_if_done(&self, backend: &Backend, request_id: &str) -> Result<Vec<OutboxEvent>, StoreError> {
        for _ in 0..MAX_ATTEMPTS {
            let Some(item) = backend.table.get(&self.requests, &request_key(request_id)).await? else { return Ok(vec![]) };
            let (Some(remaining), Some(failed)) = (item.get_i64("storageRemaining"), item.get_i64("storageFailed")) else {
                return Ok(vec![]);
            };
            let record = RequestRecord::from_item(&item)?;
            if record.step == crate::dissemination::BLOCKING_STEP {
                // Stored and held; a redelivered event tries the release again (it may have failed).
                return self.dissemination_log().release_if_acknowledged(backend, request_id).await;
            }
            let success = failed == 0;
            let finishing = remaining == 0
                && record.state != RequestState::Success
                && (record.step == STORAGE_STEP || (record.step == STORAGE_ERROR_STEP && success));
            if !finishing {
                return Ok(vec![]);
            }
            let tasks = all_tasks(backend, &self.requests, request_id).await?;
            let mut stored = Vec::new();
            let mut errors = Vec::new();
            for t in &tasks {
                let file: Option<FileToStore> = t.get("file").and_then(|f| serde_json::from_value(f.clone()).ok());
                let Some(file) = file else { continue };
                match t.get_str("state") {
                    Some(STORED) => stored.push((file, t.get_str("url").unwrap_or_default().to_owned())),
                    _ => errors.push(format!(
                        "file {} ({}) not stored in {}: {}",
                        file.filename,
                        file.checksum,
                        file.storage,
                        t.get_str("cause").unwrap_or("no answer")
                    )),
                }
            }
            let now = backend.clock.now_ms();
            // Stored, but held until its blocking recipients acknowledge (see `dissemination`).
            let held = success && !record.blocked_by.is_empty();
            let (state, step) = match (success, held) {
                (true, true) => (RequestState::Granted, crate::dissemination::BLOCKING_STEP),
                (true, false) => (RequestState::Success, "DONE"),
                (false, _) => (RequestState::Error, STORAGE_ERROR_STEP),
            };
            let mut updates = vec![
                Update::set("state", state.as_str()),
                Update::set("step", step),
                Update::set("errors", Value::from(errors.clone())),
                Update::remove("timeoutShard"),
                Update::remove("timeoutAt"),
            ];
            if state.is_finished() {
                purge_tasks(backend, &self.requests, &tasks, now).await?;
                updates.push(purge_update(now));
            }
            let mut ops = vec![TxOp::Update {
                table: self.requests.clone(),
                key: item.key.clone(),
                updates,
                cond: Some(Cond::And(vec![
                    Cond::eq("step", record.step.clone()),
                    Cond::eq("storageRemaining", 0),
                    Cond::eq("storageFailed", failed),
                ])),
            }];
            ops.extend(self.locations_op(backend, &record, &stored).await?);
            let outcomes = if record.step == STORAGE_STEP {
                vec![if success { Outcome::Done { released: true, changed: true } } else { Outcome::Failed { was_running: true } }]
            } else {
                // Out of error after all (a late confirmation): running again, then done.
                vec![Outcome::Retried, Outcome::Done { released: true, changed: true }]
            };
            ops.extend(merge_session_ops(outcomes.into_iter().filter_map(|o| session_op(&self.requests, &record, o)).collect()));
            let mut events = if held { vec![] } else { vec![self.event(&record, state, errors)] };
            // The files of the version this one overrides, let go now that this one's are stored.
            if let Some(release) = item.get("releaseAfter") {
                let text = |name: &str| release.get(name).and_then(Value::as_str).map(str::to_owned);
                if let (Some(event_id), Some(queue), Some(body)) = (text("eventId"), text("queue"), text("body")) {
                    events.push(OutboxEvent { event_id, queue, body });
                }
            }
            ops.extend(events.iter().map(|e| self.outbox.stage(e, now)));
            match backend.table.transact(ops).await {
                Ok(()) => {
                    tracing::info!(request_id, state = state.as_str(), stored = stored.len(), "storage of the request's files finished");
                    if held {
                        // Its recipients may have acknowledged already: then it is done now.
                        events.extend(self.dissemination_log().release_if_acknowledged(backend, request_id).await?);
                    }
                    return Ok(events);
                }
                Err(PortError::TransactionCanceled { .. }) => continue,
                Err(e) => return Err(e.into()),
            }
        }
        Err(StoreError::Contention(request_id.to_owned(), MAX_ATTEMPTS))
    }

    /// The write adding the stored locations to the feature's files, guarded by the revision read, with
    /// the catalog's copy when it is the latest version; none when the feature is gone or nothing was
    /// stored.
    async fn locations_op(
        &self,
        backend: &Backend,
        record: &RequestRecord,
        stored: &[(FileToStore, String)],
    ) -> Result<Vec<TxOp>, StoreError> {
        let Some(urn) = record.urn.as_deref().and_then(|u| u.parse::<Urn>().ok()) else { return Ok(vec![]) };
        if stored.is_empty() {
            return Ok(vec![]);
        }
        let key = Key::new(format!("F#{}", urn.uuid), format!("V{:03}", urn.version));
        let Some(item) = backend.table.get(&self.features, &key).await? else {
            // Deleted meanwhile (a deletion, or an override by the next version): nothing to record on.
            // Said aloud, since a feature lost any other way would look the same.
            tracing::warn!(request_id = %record.request_id, urn = %urn, files = stored.len(), "files stored for a feature version that no longer exists: no location recorded");
            return Ok(vec![]);
        };
        let mut feature = item.get("feature").cloned().unwrap_or(Value::Null);
        let revision = item.get_i64("revision").unwrap_or(0);
        if let Some(files) = feature.get_mut("files").and_then(Value::as_array_mut) {
            for file in files {
                let checksum = file.pointer("/attributes/checksum").and_then(Value::as_str).unwrap_or_default().to_ascii_lowercase();
                for (f, url) in stored.iter().filter(|(f, _)| f.checksum == checksum) {
                    let location = serde_json::json!({ "storage": f.storage, "url": url });
                    if let Some(locations) = file.get_mut("locations").and_then(Value::as_array_mut)
                        && !locations.contains(&location)
                    {
                        locations.push(location);
                    }
                }
            }
        }
        let mut guard = vec![Cond::ItemExists, crate::revision_guard(revision)];
        // The latest version is copied into the catalog: only while it still is the latest.
        let mut ops = vec![];
        if item.get("last").and_then(Value::as_bool) == Some(true) {
            guard.push(Cond::eq("last", true));
            ops = crate::catalog::catalog_ops(&self.features, item.get("feature"), Some(&feature));
        } else {
            guard.push(Cond::ne("last", true));
        }
        ops.insert(
            0,
            TxOp::Update {
                table: self.features.clone(),
                key,
                updates: vec![Update::set("feature", feature), Update::set("revision", revision + 1)],
                cond: Some(Cond::And(guard)),
            },
        );
        Ok(ops)
    }

    /// The log of these tables, to release a request its blocking recipients have acknowledged.
    fn dissemination_log(&self) -> crate::dissemination::DisseminationLog {
        crate::dissemination::DisseminationLog::new(&self.features, &self.requests, &self.response_queue)
    }

    fn event(&self, record: &RequestRecord, state: RequestState, errors: Vec<String>) -> OutboxEvent {
        request_event(record, state, errors, &self.response_queue)
    }
}

pub(crate) fn request_event(record: &RequestRecord, state: RequestState, errors: Vec<String>, queue: &str) -> OutboxEvent {
    let mut e = FeatureRequestEvent::new(record.request_type, &record.request_id, &record.request_owner, state);
    e.id = record.provider_id.clone();
    e.urn = record.urn.clone();
    e.errors = errors;
    OutboxEvent { event_id: e.event_id.clone(), queue: queue.to_owned(), body: serde_json::to_string(&e).unwrap_or_default() }
}

pub(crate) async fn all_tasks(backend: &Backend, requests: &str, request_id: &str) -> Result<Vec<Item>, StoreError> {
    crate::all_items(backend, Query::partition(requests, format!("R#{request_id}")).sorted(SortCond::BeginsWith("S#".into()))).await
}

/// The updates that finish a request record: SUCCESS, DONE, and purged with its tasks after the
/// retention (see [`purge_tasks`]).
pub(crate) fn success_updates(now_ms: i64) -> Vec<Update> {
    vec![Update::set("state", RequestState::Success.as_str()), Update::set("step", "DONE"), purge_update(now_ms)]
}

/// The update marking a request (or one of its tasks) finished at `now_ms` for the table's TTL.
fn purge_update(now_ms: i64) -> Update {
    Update::set(crate::PURGE_AT, granary_domain::request::finished_request_purge_at(now_ms))
}

/// Marks the task items of a request (its files to store, from [`all_tasks`]) to be purged at the same time as
/// the record. Called before the record is finished: after a crash between the two, the redelivered
/// event finishes the record and marks the tasks again; the other way round, tasks could outlive the
/// record for good.
pub(crate) async fn purge_tasks(backend: &Backend, requests: &str, tasks: &[Item], now_ms: i64) -> Result<(), StoreError> {
    for task in tasks {
        if task.get_i64(crate::PURGE_AT).is_some() {
            continue;
        }
        match backend.table.update(requests, &task.key, vec![purge_update(now_ms)], Some(Cond::ItemExists)).await {
            // Deleted meanwhile (an admin deleted the request): nothing to purge.
            Ok(_) | Err(PortError::ConditionFailed { .. }) => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

/// Retries the storage of a request in REMOTE_STORAGE_ERROR: its files not stored go back to
/// PENDING, the request back to REMOTE_STORAGE_REQUESTED with a new deadline, and a storage job for
/// those files is staged, with the GRANTED event. `None` when the request is not such a request.
pub(crate) async fn retry(
    backend: &Backend,
    requests: &str,
    response_queue: &str,
    item: &Item,
) -> Result<Option<Vec<OutboxEvent>>, StoreError> {
    let record = RequestRecord::from_item(item)?;
    let (Some(timeout_ms), Some(queue)) = (item.get_i64("storageTimeoutMs"), item.get_str("queue")) else { return Ok(None) };
    if record.step != STORAGE_ERROR_STEP || record.state != RequestState::Error {
        return Ok(None);
    }
    let tasks = all_tasks(backend, requests, &record.request_id).await?;
    let again: Vec<&Item> = tasks.iter().filter(|t| t.get_str("state") != Some(STORED)).collect();
    let files: Vec<FileToStore> = again.iter().filter_map(|t| serde_json::from_value(t.get("file")?.clone()).ok()).collect();
    let attempt = item.get_i64("storageAttempts").unwrap_or(0) + 1;
    let job = StorageJob { request_id: record.request_id.clone(), urn: record.urn.clone().unwrap_or_default(), files };
    let now = backend.clock.now_ms();
    let events = vec![request_event(&record, RequestState::Granted, vec![], response_queue), job_event(&job, attempt, queue)];
    let mut ops = vec![TxOp::Update {
        table: requests.to_owned(),
        key: item.key.clone(),
        updates: vec![
            Update::set("state", RequestState::Granted.as_str()),
            Update::set("step", STORAGE_STEP),
            Update::set("errors", Value::Array(vec![])),
            Update::set("stepSince", now),
            Update::set("timeoutShard", crate::recovery::TIMEOUT_PARTITION),
            Update::set("timeoutAt", now + timeout_ms),
            Update::set("storageRemaining", again.len() as i64),
            Update::set("storageFailed", 0),
            Update::set("storageAttempts", attempt),
            Update::set("message", events[1].body.clone()),
        ],
        cond: Some(Cond::And(vec![Cond::eq("state", RequestState::Error.as_str()), Cond::eq("step", STORAGE_ERROR_STEP)])),
    }];
    for t in &again {
        ops.push(TxOp::Update {
            table: requests.to_owned(),
            key: t.key.clone(),
            updates: vec![Update::set("state", PENDING), Update::remove("cause")],
            cond: Some(Cond::eq("state", t.get_str("state").unwrap_or_default())),
        });
    }
    ops.extend(session_op(requests, &record, Outcome::Retried));
    let outbox = Outbox::new(requests);
    ops.extend(events.iter().map(|e| outbox.stage(e, now)));
    match backend.table.transact(ops).await {
        Ok(()) => Ok(Some(events)),
        Err(PortError::TransactionCanceled { .. }) => Err(StoreError::Contention(record.request_id, 1)),
        Err(e) => Err(e.into()),
    }
}
