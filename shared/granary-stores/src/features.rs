//! Features and their versions: every version of a providerId in one partition, sorted by version, so
//! the latest is the last item and the next version is taken by a put that fails if anyone took it first.

use crate::StoreError;
use crate::outbox::{Outbox, OutboxEvent};
use crate::requests::{Parked, RequestRecord, request_key};
use crate::sessions::{merge_session_ops, session_op};
use granary_domain::RequestState;
use granary_domain::feature::FileUpdateMode;
use granary_domain::session::Outcome;
use granary_domain::storage::{Locations, ReleaseJob, WorkerJob, objects_of};
use granary_domain::urn::{EntityType, MAX_VERSION, Urn, entity_uuid};
use granary_ports::{Backend, Cond, Item, Key, PortError, Query, TxOp, Update};
use serde_json::Value;

/// How often a creation retries when other writers keep taking the next version first.
const MAX_ATTEMPTS: u32 = 20;

fn partition(provider_id: &str) -> String {
    format!("F#{}", entity_uuid(provider_id))
}

fn version_key(provider_id: &str, version: u32) -> Key {
    Key::new(partition(provider_id), format!("V{version:03}"))
}

/// The version number of the first item of `page` (a [`FeatureStore::latest_query`]), 0 when none.
fn latest_of(page: &granary_ports::Page) -> u32 {
    page.items.first().and_then(|i| i.key.sk.strip_prefix('V')?.parse().ok()).unwrap_or(0)
}

/// A stored feature version.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredFeature {
    /// Its URN.
    pub urn: String,
    /// Whether it is the latest version.
    pub last: bool,
    /// The GeoJSON feature, with `urn` and `last` filled in.
    pub feature: Value,
    /// The session that created it (`sessionOwner`, `session`).
    pub session: Option<(String, String)>,
    /// How many patches it has had: a patch of what was read is guarded by it.
    pub revision: i64,
}

/// What a creation came to.
#[derive(Debug, Clone, PartialEq)]
pub enum CreationOutcome {
    /// This call created the version.
    Created {
        /// URN of the new version.
        urn: String,
        /// Events staged with it, to flush.
        events: Vec<OutboxEvent>,
    },
    /// The request id was already recorded (a redelivery, or a reuse of the id).
    AlreadyRecorded(Box<RequestRecord>),
}

/// What a patch or deletion came to.
#[derive(Debug, Clone, PartialEq)]
pub enum ChangeOutcome {
    /// This call changed the feature (or, for a deletion of an absent one, recorded that).
    Done {
        /// Events staged with it, to flush.
        events: Vec<OutboxEvent>,
        /// CREATED, UPDATED, DELETED or ALREADY_DELETED.
        action: &'static str,
    },
    /// No such feature version (a patch only).
    UnknownUrn,
    /// The request id was already recorded.
    AlreadyRecorded(Box<RequestRecord>),
}

/// How one attempt of a transaction that records a request ended.
enum Attempt {
    Committed,
    Recorded(Box<RequestRecord>),
    /// Another writer changed an item the transaction guards: read again and retry.
    Conflict,
}

/// A version ready to commit.
struct StagedVersion {
    urn: String,
    /// Request record first, then the feature, the previous version, the outbox events.
    ops: Vec<TxOp>,
    /// The session counters' update, kept apart so that a batch updates each session once.
    session: Option<TxOp>,
    events: Vec<OutboxEvent>,
}

/// A creation to record.
#[derive(Clone)]
pub struct NewVersion<'a> {
    /// The tenant of the URN.
    pub tenant: &'a str,
    /// providerId.
    pub provider_id: &'a str,
    /// Entity type.
    pub entity_type: EntityType,
    /// The GeoJSON feature as submitted.
    pub feature: &'a Value,
    /// The request, recorded in the same transaction (its state is set here).
    pub request: RequestRecord,
    /// Events to stage in the same transaction: built once the URN is known.
    pub events: &'a (dyn Fn(&str) -> Vec<OutboxEvent> + Send + Sync),
    /// A version the producer supplied (in the feature's URN); it must be after the latest.
    pub version: Option<u32>,
    /// Delete the previous latest version in the same transaction (REGARDS's `override`).
    pub override_previous: bool,
    /// Files to store: the request then waits in REMOTE_STORAGE_REQUESTED (its record's state and step
    /// say so) and the storage job is staged with it.
    pub storage: Option<crate::storage::PendingStorage>,
}

/// A patch as [`FeatureStore::patch`] applies it.
#[derive(Clone)]
pub struct PatchChange<'a> {
    /// The patch feature.
    pub patch: &'a Value,
    /// The version as the caller read it (saves the first read; a conflict reads it again).
    pub known: Option<&'a StoredFeature>,
    /// How the patch's files change the stored ones.
    pub mode: FileUpdateMode,
    /// The patch's files to store: the request then waits in REMOTE_STORAGE_REQUESTED (its record says
    /// so) and the storage job is staged with it.
    pub storage: Option<crate::storage::PendingStorage>,
    /// The recipient this patch acknowledges for (`metadata.acknowledgedRecipient`): the patch is
    /// not held for it.
    pub acknowledges: Option<&'a str>,
}

/// Writes and reads features.
#[derive(Debug, Clone)]
pub struct FeatureStore {
    features: String,
    requests: String,
    outbox: Outbox,
    /// Where stored files are let go when their feature is deleted: the locations they may be in and
    /// the storage worker's queue.
    release: Option<(Locations, String)>,
    /// Where notifications of changed features go, while automatic notification is on and someone
    /// may receive them.
    notifier: Option<Notifier>,
}

/// Notifications of changed features: the queue dissemination reads, and the recipients to send them to.
#[derive(Debug, Clone)]
pub struct Notifier {
    /// The notification queue.
    pub queue: String,
    /// The recipients while automatic notification is on and there is one (none otherwise); the
    /// caller keeps it current.
    pub recipients: std::sync::Arc<std::sync::RwLock<Option<std::sync::Arc<crate::dissemination::Recipients>>>>,
}

/// What notifying a change came to: the notification to stage, and the blocking recipients (those
/// that must acknowledge) its request waits for.
struct Notice {
    event: OutboxEvent,
    blocked_by: Vec<String>,
}

impl Notice {
    /// Holds `request`, done with its feature, until its blocking recipients acknowledge: GRANTED in
    /// step WAITING_BLOCKING_DISSEMINATION, its SUCCESS event left to the last acknowledgement.
    /// A request still waiting on storage only learns whom it waits for; storage-ready holds it.
    fn hold(&self, request: &mut RequestRecord, events: &mut Vec<OutboxEvent>) {
        if self.blocked_by.is_empty() {
            return;
        }
        request.blocked_by = self.blocked_by.clone();
        if request.state == RequestState::Success {
            request.state = RequestState::Granted;
            request.step = crate::dissemination::BLOCKING_STEP.into();
            events.retain(|e| !e.event_id.ends_with(":SUCCESS"));
        }
    }
}

impl FeatureStore {
    /// What it touches (see `granary_ports::access`).
    pub fn grants(&self) -> granary_ports::access::Grants {
        let mut grants =
            granary_ports::access::Grants::new().write_table(&self.features).write_table(&self.requests).and(self.outbox.grants());
        if let Some((_, queue)) = &self.release {
            grants = grants.send(queue);
        }
        if let Some(notifier) = &self.notifier {
            grants = grants.send(&notifier.queue);
        }
        grants
    }
    /// Features in `features`, requests and outbox in `requests`.
    pub fn new(features: &str, requests: &str) -> Self {
        Self { features: features.to_owned(), requests: requests.to_owned(), outbox: Outbox::new(requests), release: None, notifier: None }
    }

    /// The same store, letting the stored files of a deleted feature go (a release job on `jobs_queue`
    /// for the storage worker, staged with the deletion).
    pub fn releasing_files(mut self, locations: Locations, jobs_queue: &str) -> Self {
        self.release = Some((locations, jobs_queue.to_owned()));
        self
    }

    /// The same store, staging a notification of each created, updated or deleted feature with it
    /// while `notifier.enabled` holds.
    pub fn notifying(mut self, notifier: Notifier) -> Self {
        self.notifier = Some(notifier);
        self
    }

    /// The notification of `feature` for `action` by `request`, when automatic notification is on,
    /// with the blocking recipients that will receive it.
    fn notification(&self, action: &str, feature: &Value, request: &RequestRecord, acknowledges: Option<&str>) -> Option<Notice> {
        let notifier = self.notifier.as_ref()?;
        let recipients = notifier.recipients.read().unwrap_or_else(|p| p.into_inner()).clone()?;
        let urn = feature.get("urn").and_then(Value::as_str).or(request.urn.as_deref()).unwrap_or_default();
        let mut body = serde_json::json!({
            "metadata": {
                "action": action,
                "sessionOwner": request.session_owner,
                "session": request.session,
                "requestId": request.request_id,
                "requestOwner": request.request_owner,
            },
            "payload": feature,
        });
        let facts = granary_domain::dissemination::NotificationFacts::of(&body);
        let blocked_by: Vec<String> = recipients
            .all
            .iter()
            .filter(|(label, r)| r.blocking && r.ack_required && r.filter.accepts(&facts) && Some(label.as_str()) != acknowledges)
            .map(|(label, _)| label.clone())
            .collect();
        if !blocked_by.is_empty() {
            // Dissemination delivers to these and records that the request waits for them, whatever
            // its own (cached) view of the recipients.
            body["metadata"]["blockedBy"] = Value::from(blocked_by.clone());
        }
        let event = OutboxEvent {
            event_id: granary_domain::dissemination::notification_id(urn, action, &request.request_id),
            queue: notifier.queue.clone(),
            body: body.to_string(),
        };
        Some(Notice { event, blocked_by })
    }

    /// The release job of the feature version stored in `item`, if it has files that may be stored.
    fn release_event(&self, item: &Item) -> Option<OutboxEvent> {
        let urn = item.get_str("urn")?;
        self.release_event_of(urn, item.get("feature")?, &format!("{urn}:RELEASE"))
    }

    /// The release job letting `owner` go of the stored objects of `feature`'s files, if any may be stored.
    fn release_event_of(&self, owner: &str, feature: &Value, event_id: &str) -> Option<OutboxEvent> {
        let (locations, queue) = self.release.as_ref()?;
        let objects = objects_of(feature, locations);
        if objects.is_empty() {
            return None;
        }
        let job = WorkerJob::Release(ReleaseJob { owner: owner.to_owned(), objects });
        Some(OutboxEvent { event_id: event_id.to_owned(), queue: queue.clone(), body: serde_json::to_string(&job).unwrap_or_default() })
    }

    /// The latest version number of `provider_id`, 0 when none.
    pub async fn latest_version(&self, backend: &Backend, provider_id: &str) -> Result<u32, StoreError> {
        Ok(latest_of(&backend.table.query(self.latest_query(provider_id)).await?))
    }

    /// The query whose first item is the latest version of `provider_id`.
    fn latest_query(&self, provider_id: &str) -> Query {
        Query::partition(&self.features, partition(provider_id)).descending().limit(1)
    }

    /// Creates the next version of the providerId, records the request and stages its events, all in one
    /// transaction. Two creations of one providerId racing get two distinct versions; a request id
    /// already recorded creates nothing.
    pub async fn create_next_version(&self, backend: &Backend, new: NewVersion<'_>) -> Result<CreationOutcome, StoreError> {
        let now = backend.clock.now_ms();
        for _ in 0..MAX_ATTEMPTS {
            let page = backend.table.query(self.latest_query(new.provider_id)).await?;
            let staged = self.version_ops(&new, &page, now)?;
            let mut ops = staged.ops;
            ops.extend(staged.session);
            match backend.table.transact(ops).await {
                Ok(()) => return Ok(CreationOutcome::Created { urn: staged.urn, events: staged.events }),
                Err(PortError::TransactionCanceled { index: 0, .. }) => {
                    let existing = backend.table.get(&self.requests, &request_key(&new.request.request_id)).await?;
                    if let Some(item) = existing {
                        return Ok(CreationOutcome::AlreadyRecorded(Box::new(RequestRecord::from_item(&item)?)));
                    }
                    // The row vanished between the failed write and the read: try again.
                }
                // Someone took this version (or a later one) first: read the latest again.
                Err(PortError::TransactionCanceled { .. }) => {}
                Err(e) => return Err(e.into()),
            }
        }
        Err(StoreError::Contention(new.provider_id.to_owned(), MAX_ATTEMPTS))
    }

    /// Creates the next versions of several providerIds in one transaction (the creations of one SQS
    /// batch), or nothing: `Ok(None)` when the transaction did not commit as a whole (a request id
    /// already recorded, a version taken meanwhile, a limit of the table), and the caller then creates
    /// them one by one, which sorts out each case. Every providerId and request id must be distinct and
    /// no creation may supply its version.
    pub async fn create_batch(&self, backend: &Backend, news: &[NewVersion<'_>]) -> Result<Option<Vec<CreationOutcome>>, StoreError> {
        if news.iter().any(|n| n.version.is_some()) {
            return Ok(None);
        }
        let now = backend.clock.now_ms();
        let queries = news.iter().map(|n| self.latest_query(n.provider_id)).collect();
        let latest = backend.table.query_all(queries).await?;
        let mut ops = Vec::new();
        let mut sessions = Vec::new();
        let mut outcomes = Vec::with_capacity(news.len());
        for (new, latest) in news.iter().zip(&latest) {
            let Ok(staged) = self.version_ops(new, latest, now) else { return Ok(None) };
            ops.extend(staged.ops);
            sessions.extend(staged.session);
            outcomes.push(CreationOutcome::Created { urn: staged.urn, events: staged.events });
        }
        ops.extend(merge_session_ops(sessions));
        if ops.len() > granary_ports::table::MAX_TRANSACTION_OPS {
            return Ok(None);
        }
        match backend.table.transact(ops).await {
            Ok(()) => Ok(Some(outcomes)),
            Err(e) => {
                tracing::debug!(error = %e, creations = news.len(), "batch not committed as one; creating one by one");
                Ok(None)
            }
        }
    }

    /// The operations that create the version after the latest (the first item of `latest_page`; session
    /// counters apart), its URN and events.
    fn version_ops(&self, new: &NewVersion<'_>, latest_page: &granary_ports::Page, now: i64) -> Result<StagedVersion, StoreError> {
        let latest = latest_of(latest_page);
        let version = match new.version {
            Some(v) if v <= latest => {
                return Err(StoreError::VersionNotAfterLatest { provider_id: new.provider_id.to_owned(), supplied: v, latest });
            }
            Some(v) => v,
            None => latest + 1,
        };
        if version > MAX_VERSION {
            return Err(StoreError::VersionsExhausted(new.provider_id.to_owned()));
        }
        let urn = Urn::new(new.entity_type, new.tenant, new.provider_id, version)
            .map_err(|e| StoreError::Malformed(new.provider_id.to_owned(), e.to_string()))?
            .to_string();
        let mut feature = new.feature.clone();
        if let Some(obj) = feature.as_object_mut() {
            obj.insert("urn".into(), Value::from(urn.clone()));
            obj.insert("last".into(), Value::Bool(true));
        }
        let notice = self.notification("CREATED", &feature, &new.request, None);
        let item = Item::new(version_key(new.provider_id, version))
            .with("urn", urn.clone())
            .with("providerId", new.provider_id)
            .with("version", version)
            .with("last", true)
            .with("feature", feature)
            .with("createdAt", now)
            .with("requestId", new.request.request_id.clone());
        let item = match (&new.request.session_owner, &new.request.session) {
            (Some(o), Some(s)) => item.with("sessionOwner", o.clone()).with("session", s.clone()),
            _ => item,
        };
        let mut record = new.request.clone();
        record.urn = Some(urn.clone());
        let mut events = (new.events)(&urn);
        if let Some(notice) = notice {
            notice.hold(&mut record, &mut events);
            events.push(notice.event);
        }
        // The previous version's stored files, let go when it is deleted by this override: at once, or,
        // when this version has files to store, once they are (so that a file both share is kept).
        let release = match (new.override_previous, latest_page.items.first()) {
            (true, Some(previous)) => self.release_event(previous),
            _ => None,
        };
        let (request_op, tasks, session) = match &new.storage {
            None => {
                events.extend(release);
                let done = Outcome::Done { released: record.replaces_parked, changed: true };
                (record.write_op(&self.requests), vec![], session_op(&self.requests, &record, done))
            }
            Some(pending) => {
                let mut staged = crate::storage::stage(&self.requests, &record, &urn, pending, now);
                if let Some(release) = release {
                    staged.request_item = staged.request_item.with(
                        "releaseAfter",
                        serde_json::json!({ "eventId": release.event_id, "queue": release.queue, "body": release.body }),
                    );
                }
                events.push(staged.job);
                let TxOp::Put { cond, .. } = record.write_op(&self.requests) else { unreachable!("write_op is a put") };
                let put = TxOp::Put { table: self.requests.clone(), item: staged.request_item, cond };
                // Running until storage answers; a released request was counted running when parked.
                let session = if record.replaces_parked { None } else { session_op(&self.requests, &record, Outcome::Parked) };
                (put, staged.tasks, session)
            }
        };
        let previous = latest_page.items.first().filter(|_| latest > 0).and_then(|i| i.get("feature"));
        let catalog = crate::catalog::catalog_ops(&self.features, previous, item.get("feature"));
        let mut ops = vec![request_op, TxOp::Put { table: self.features.clone(), item, cond: Some(Cond::ItemAbsent) }];
        ops.extend(tasks);
        ops.extend(catalog);
        if latest > 0 && new.override_previous {
            ops.push(TxOp::Delete {
                table: self.features.clone(),
                key: version_key(new.provider_id, latest),
                cond: Some(Cond::ItemExists),
            });
        } else if latest > 0 {
            ops.push(TxOp::Update {
                table: self.features.clone(),
                key: version_key(new.provider_id, latest),
                updates: vec![Update::set("last", false)],
                cond: Some(Cond::ItemExists),
            });
        }
        ops.extend(events.iter().map(|e| self.outbox.stage(e, now)));
        Ok(StagedVersion { urn, ops, session, events })
    }

    /// Commits `ops`, whose first operation puts the request record if absent.
    async fn commit(&self, backend: &Backend, request_id: &str, ops: Vec<TxOp>) -> Result<Attempt, StoreError> {
        match backend.table.transact(ops).await {
            Ok(()) => Ok(Attempt::Committed),
            Err(PortError::TransactionCanceled { index: 0, .. }) => {
                match backend.table.get(&self.requests, &request_key(request_id)).await? {
                    Some(item) => Ok(Attempt::Recorded(Box::new(RequestRecord::from_item(&item)?))),
                    None => Ok(Attempt::Conflict),
                }
            }
            Err(PortError::TransactionCanceled { .. }) => Ok(Attempt::Conflict),
            Err(e) => Err(e.into()),
        }
    }

    fn request_op(&self, record: &RequestRecord) -> TxOp {
        record.write_op(&self.requests)
    }

    /// Parks a request until it is due, with its events (GRANTED), once per request id. Returns the
    /// existing record when the id is already recorded.
    pub async fn park(
        &self,
        backend: &Backend,
        request: &RequestRecord,
        parked: &Parked,
        events: &[OutboxEvent],
    ) -> Result<Option<Box<RequestRecord>>, StoreError> {
        // A released request parked again (still waiting behind its creation) replaces its own parked
        // record and was counted when first parked.
        let (cond, counters) = if request.replaces_parked {
            (Cond::Or(vec![Cond::ItemAbsent, Cond::eq("parked", true)]), None)
        } else {
            (Cond::ItemAbsent, session_op(&self.requests, request, Outcome::Parked))
        };
        let write = TxOp::Put { table: self.requests.clone(), item: request.parked_item(parked), cond: Some(cond) };
        self.record_with_events(backend, &request.request_id, write, counters, events).await
    }

    /// Patches the feature version `urn` with `patch` (see [`granary_domain::feature::apply_patch`]),
    /// keeping its version, recording the request and staging its events in one transaction. Concurrent
    /// patches of one feature each apply once: the write is guarded by the revision it read. `known`,
    /// the version as the caller read it, saves the first read; a conflict reads it again.
    pub async fn patch(
        &self,
        backend: &Backend,
        urn: &Urn,
        change: PatchChange<'_>,
        mut request: RequestRecord,
        events: &(dyn Fn(&str) -> Vec<OutboxEvent> + Send + Sync),
    ) -> Result<ChangeOutcome, StoreError> {
        let PatchChange { patch, known, mode, storage, acknowledges } = change;
        let key = Key::new(format!("F#{}", urn.uuid), format!("V{:03}", urn.version));
        let urn_text = urn.to_string();
        request.urn = Some(urn_text.clone());
        request.action = Some("UPDATED".into());
        let now = backend.clock.now_ms();
        let mut known = known.filter(|k| k.urn == urn_text).cloned();
        for _ in 0..MAX_ATTEMPTS {
            let read = match known.take() {
                Some(k) => k,
                None => match self.get(backend, urn).await? {
                    Some(k) => k,
                    None => return Ok(ChangeOutcome::UnknownUrn),
                },
            };
            (request.session_owner, request.session) = read.session.clone().unzip();
            let (revision, stored) = (read.revision, read.feature);
            let (patched, removed) = granary_domain::feature::apply_patch(&stored, patch, &request.request_owner, mode);
            let mut guard = vec![Cond::ItemExists, crate::revision_guard(revision)];
            // The latest version is copied into the catalog: only while it still is the latest.
            let catalog = if read.last {
                guard.push(Cond::eq("last", true));
                crate::catalog::catalog_ops(&self.features, Some(&stored), Some(&patched))
            } else {
                // Not the latest when read: only while it still is not (a deletion may promote it).
                guard.push(Cond::ne("last", true));
                vec![]
            };
            let mut staged = events(&urn_text);
            // Held per attempt: a retry starts again from the request as given.
            let mut held = request.clone();
            if let Some(notice) = self.notification("UPDATED", &patched, &request, acknowledges) {
                notice.hold(&mut held, &mut staged);
                staged.push(notice.event);
            }
            // Files a REPLACE no longer wants are let go at once.
            let removed = serde_json::json!({ "files": removed });
            staged.extend(self.release_event_of(&urn_text, &removed, &format!("{urn_text}:RELEASE:{}", request.request_id)));
            let (request_op, tasks, outcome) = match &storage {
                None => (self.request_op(&held), vec![], Some(Outcome::Done { released: request.replaces_parked, changed: true })),
                Some(pending) => {
                    let stored_files = crate::storage::stage(&self.requests, &held, &urn_text, pending, now);
                    staged.push(stored_files.job);
                    let TxOp::Put { cond, .. } = self.request_op(&held) else { unreachable!("write_op is a put") };
                    let put = TxOp::Put { table: self.requests.clone(), item: stored_files.request_item, cond };
                    (put, stored_files.tasks, (!request.replaces_parked).then_some(Outcome::Parked))
                }
            };
            let mut ops = vec![
                request_op,
                TxOp::Update {
                    table: self.features.clone(),
                    key: key.clone(),
                    updates: vec![Update::set("feature", patched), Update::set("revision", revision + 1), Update::set("updatedAt", now)],
                    cond: Some(Cond::And(guard)),
                },
            ];
            ops.extend(tasks);
            ops.extend(catalog);
            ops.extend(outcome.and_then(|o| session_op(&self.requests, &request, o)));
            ops.extend(staged.iter().map(|e| self.outbox.stage(e, now)));
            match self.commit(backend, &request.request_id, ops).await? {
                Attempt::Committed => return Ok(ChangeOutcome::Done { events: staged, action: "UPDATED" }),
                Attempt::Recorded(r) => return Ok(ChangeOutcome::AlreadyRecorded(r)),
                Attempt::Conflict => {}
            }
        }
        Err(StoreError::Contention(urn_text, MAX_ATTEMPTS))
    }

    /// Deletes the feature version `urn`, recording the request and staging its events in one
    /// transaction. When it was the latest version, the highest remaining one becomes the latest.
    /// Deleting an absent version records the request with the action ALREADY_DELETED.
    pub async fn delete(
        &self,
        backend: &Backend,
        urn: &Urn,
        mut request: RequestRecord,
        events: &(dyn Fn(&str) -> Vec<OutboxEvent> + Send + Sync),
    ) -> Result<ChangeOutcome, StoreError> {
        let partition = format!("F#{}", urn.uuid);
        let key = Key::new(partition.clone(), format!("V{:03}", urn.version));
        let urn_text = urn.to_string();
        request.urn = Some(urn_text.clone());
        let now = backend.clock.now_ms();
        for _ in 0..MAX_ATTEMPTS {
            let existing = backend.table.get(&self.features, &key).await?.filter(|i| i.get_str("urn") == Some(urn_text.as_str()));
            let action = if existing.is_some() { "DELETED" } else { "ALREADY_DELETED" };
            request.action = Some(action.into());
            if let Some(item) = &existing {
                request.session_owner = item.get_str("sessionOwner").map(str::to_owned);
                request.session = item.get_str("session").map(str::to_owned);
            }
            let mut staged = events(&urn_text);
            staged.extend(existing.as_ref().and_then(|item| self.release_event(item)));
            let deleted =
                existing.as_ref().and_then(|i| i.get("feature").cloned()).unwrap_or_else(|| serde_json::json!({ "urn": urn_text }));
            let mut held = request.clone();
            if let Some(notice) = self.notification(action, &deleted, &request, None) {
                notice.hold(&mut held, &mut staged);
                staged.push(notice.event);
            }
            let mut ops = vec![self.request_op(&held)];
            if let Some(item) = &existing {
                // Guarded by what was read: whether it is the latest (the catalog is moved on that
                // basis) and its revision.
                let was_last = item.get("last").and_then(Value::as_bool) == Some(true);
                let revision = item.get_i64("revision").unwrap_or(0);
                let cond = Cond::And(vec![
                    Cond::ItemExists,
                    if was_last { Cond::eq("last", true) } else { Cond::ne("last", true) },
                    crate::revision_guard(revision),
                ]);
                ops.push(TxOp::Delete { table: self.features.clone(), key: key.clone(), cond: Some(cond) });
                if was_last {
                    let below = Query::partition(&self.features, partition.clone())
                        .sorted(granary_ports::SortCond::Lt(Value::from(key.sk.clone())))
                        .descending()
                        .limit(1);
                    let prev = backend.table.query(below).await?.items.into_iter().next();
                    ops.extend(crate::catalog::catalog_ops(
                        &self.features,
                        item.get("feature"),
                        prev.as_ref().and_then(|p| p.get("feature")),
                    ));
                    if let Some(prev) = prev {
                        // Guarded by the revision read: the catalog now copies that very content.
                        let revision = prev.get_i64("revision").unwrap_or(0);
                        let guard = crate::revision_guard(revision);
                        ops.push(TxOp::Update {
                            table: self.features.clone(),
                            key: prev.key,
                            updates: vec![Update::set("last", true)],
                            cond: Some(Cond::And(vec![Cond::ItemExists, guard])),
                        });
                    }
                }
            } else {
                // Absent: record it only if it is still absent when the request is written.
                ops.push(TxOp::Check { table: self.features.clone(), key: key.clone(), cond: Cond::ItemAbsent });
            }
            ops.extend(session_op(
                &self.requests,
                &request,
                Outcome::Done { released: request.replaces_parked, changed: existing.is_some() },
            ));
            ops.extend(staged.iter().map(|e| self.outbox.stage(e, now)));
            match self.commit(backend, &request.request_id, ops).await? {
                Attempt::Committed => return Ok(ChangeOutcome::Done { events: staged, action }),
                Attempt::Recorded(r) => return Ok(ChangeOutcome::AlreadyRecorded(r)),
                Attempt::Conflict => {}
            }
        }
        Err(StoreError::Contention(urn_text, MAX_ATTEMPTS))
    }

    /// Notifies the feature version `stored` (action NOTIFIED): records the request and stages its
    /// events (the response events and the notification for recipients) in one transaction.
    pub async fn notify(
        &self,
        backend: &Backend,
        stored: &StoredFeature,
        mut request: RequestRecord,
        events: Vec<OutboxEvent>,
    ) -> Result<ChangeOutcome, StoreError> {
        request.urn = Some(stored.urn.clone());
        request.action = Some("NOTIFIED".into());
        if let Some((owner, session)) = &stored.session {
            request.session_owner = Some(owner.clone());
            request.session = Some(session.clone());
        }
        let now = backend.clock.now_ms();
        let mut ops = vec![self.request_op(&request)];
        ops.extend(session_op(&self.requests, &request, Outcome::Done { released: request.replaces_parked, changed: true }));
        ops.extend(events.iter().map(|e| self.outbox.stage(e, now)));
        match self.commit(backend, &request.request_id, ops).await? {
            Attempt::Committed => Ok(ChangeOutcome::Done { events, action: "NOTIFIED" }),
            Attempt::Recorded(r) => Ok(ChangeOutcome::AlreadyRecorded(r)),
            Attempt::Conflict => Err(StoreError::Contention(request.request_id, 1)),
        }
    }

    /// Records a request refused at registration, with its events, once.
    pub async fn record_denied(
        &self,
        backend: &Backend,
        request: RequestRecord,
        events: &[OutboxEvent],
    ) -> Result<Option<Box<RequestRecord>>, StoreError> {
        let outcome = if request.replaces_parked { Outcome::DeniedAfterParking } else { Outcome::Denied };
        let counters = session_op(&self.requests, &request, outcome);
        self.record_with_events(backend, &request.request_id, self.request_op(&request), counters, events).await
    }

    /// Commits the write of a request record with its events; returns the existing record when the id
    /// is already recorded.
    async fn record_with_events(
        &self,
        backend: &Backend,
        request_id: &str,
        write: TxOp,
        counters: Option<TxOp>,
        events: &[OutboxEvent],
    ) -> Result<Option<Box<RequestRecord>>, StoreError> {
        let now = backend.clock.now_ms();
        let mut ops = vec![write];
        ops.extend(counters);
        ops.extend(events.iter().map(|e| self.outbox.stage(e, now)));
        match self.commit(backend, request_id, ops).await? {
            Attempt::Committed => Ok(None),
            Attempt::Recorded(r) => Ok(Some(r)),
            // The record vanished between the failed write and the read: the caller's retry will tell.
            Attempt::Conflict => Err(StoreError::Contention(request_id.to_owned(), 1)),
        }
    }

    /// The feature version named by `urn`.
    pub async fn get(&self, backend: &Backend, urn: &Urn) -> Result<Option<StoredFeature>, StoreError> {
        let key = Key::new(format!("F#{}", urn.uuid), format!("V{:03}", urn.version));
        let Some(item) = backend.table.get(&self.features, &key).await? else { return Ok(None) };
        if item.get_str("urn") != Some(urn.to_string().as_str()) {
            // Same providerId and version, another entity type or tenant: not this URN.
            return Ok(None);
        }
        Ok(Some(stored_of(&item)))
    }

    /// The outbox of these tables.
    pub fn outbox(&self) -> &Outbox {
        &self.outbox
    }

    /// The latest version of `provider_id`, if any.
    pub async fn latest(&self, backend: &Backend, provider_id: &str) -> Result<Option<StoredFeature>, StoreError> {
        Ok(backend.table.query(self.latest_query(provider_id)).await?.items.first().map(stored_of))
    }
}

/// The stored feature version in `item`, `last` filled in from the item.
fn stored_of(item: &Item) -> StoredFeature {
    let urn = item.get_str("urn").unwrap_or_default().to_owned();
    let last = item.get("last").and_then(Value::as_bool).unwrap_or(false);
    let mut feature = item.get("feature").cloned().unwrap_or(Value::Null);
    if let Some(obj) = feature.as_object_mut() {
        obj.insert("last".into(), Value::Bool(last));
    }
    let session = match (item.get_str("sessionOwner"), item.get_str("session")) {
        (Some(o), Some(s)) => Some((o.to_owned(), s.to_owned())),
        _ => None,
    };
    let revision = item.get_i64("revision").unwrap_or(0);
    StoredFeature { urn, last, feature, session, revision }
}
