//! Recipients, the automatic-notification switch and what was disseminated, in the features table:
//! recipients in one partition sorted by label, the switch as one item, and one item per feature and
//! recipient (`N#<urn>` / `<label>`) with the dissemination and acknowledgement dates.
//!
//! Per session and recipient, the REGARDS counters `<recipient>.pending` (delivered, acknowledgement
//! awaited) and `<recipient>.done` (delivered and acknowledged, or needing no acknowledgement) are kept
//! in the requests table next to the session's own counters, one item per session and recipient (a
//! label may hold characters an attribute name may not). They move in the transaction that records
//! the delivery or the acknowledgement, so each notification counts once.
//!
//! A request whose notification goes to a blocking recipient waits, GRANTED in step
//! WAITING_BLOCKING_DISSEMINATION, until every blocking recipient it names (`blockedBy`) has
//! acknowledged its feature; then it is SUCCESS with its event.

use crate::StoreError;
use crate::outbox::{Outbox, OutboxEvent};
use crate::requests::{RequestRecord, request_key};
use granary_domain::RequestState;
use granary_domain::dissemination::Recipient;
use granary_ports::{Backend, Cond, Item, Key, PortError, Query, TxOp, Update};
use serde::Serialize;
use serde_json::Value;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const RECIPIENTS: &str = "RECIPIENTS";

fn settings_key() -> Key {
    Key::new("SETTINGS", "notification")
}

fn info_key(urn: &str, label: &str) -> Key {
    Key::new(format!("N#{urn}"), label)
}

/// The marker of notification `event_id` recorded for recipient `label` (labels hold no `#`), written
/// once with the delivery: a redelivered notification, even one older than the latest, counts once.
fn marker_key(urn: &str, label: &str, event_id: &str) -> Key {
    Key::new(format!("N#{urn}"), format!("{label}#{event_id}"))
}

/// Recipients and the switch.
#[derive(Debug, Clone)]
pub struct RecipientStore {
    table: String,
}

impl RecipientStore {
    /// What it touches (see `granary_ports::access`).
    pub fn grants(&self) -> granary_ports::access::Grants {
        granary_ports::access::Grants::new().write_table(&self.table)
    }
    /// Kept in `table` (the features table).
    pub fn new(table: &str) -> Self {
        Self { table: table.to_owned() }
    }

    /// Defines (or replaces) recipient `label`; true when it is new.
    pub async fn put(&self, backend: &Backend, label: &str, recipient: &Recipient, by: &str) -> Result<bool, StoreError> {
        let key = Key::new(RECIPIENTS, label);
        let existed = backend.table.get(&self.table, &key).await?.is_some();
        let item = Item::new(key)
            .with("recipient", serde_json::to_value(recipient).unwrap_or_default())
            .with("updatedBy", by)
            .with("updatedAt", backend.clock.now_ms());
        backend.table.put(&self.table, item, None).await?;
        Ok(!existed)
    }

    /// Removes recipient `label`; true when it existed.
    pub async fn delete(&self, backend: &Backend, label: &str) -> Result<bool, StoreError> {
        Ok(backend.table.delete(&self.table, &Key::new(RECIPIENTS, label), None).await?.is_some())
    }

    /// Every recipient, by label.
    pub async fn list(&self, backend: &Backend) -> Result<Vec<(String, Recipient)>, StoreError> {
        crate::all_items(backend, Query::partition(&self.table, RECIPIENTS))
            .await?
            .into_iter()
            .map(|item| {
                let malformed = |why: String| StoreError::Malformed(format!("{RECIPIENTS}/{}", item.key.sk), why);
                let r = serde_json::from_value(item.get("recipient").cloned().ok_or_else(|| malformed("no recipient attribute".into()))?)
                    .map_err(|e| malformed(format!("recipient: {e}")))?;
                Ok((item.key.sk, r))
            })
            .collect()
    }

    /// Whether features are notified automatically (on by default, as in REGARDS).
    pub async fn active(&self, backend: &Backend) -> Result<bool, StoreError> {
        Ok(backend.table.get(&self.table, &settings_key()).await?.and_then(|i| i.get("active").and_then(Value::as_bool)).unwrap_or(true))
    }

    /// Turns automatic notification on or off.
    pub async fn set_active(&self, backend: &Backend, active: bool, by: &str) -> Result<(), StoreError> {
        let item = Item::new(settings_key()).with("active", active).with("updatedBy", by).with("updatedAt", backend.clock.now_ms());
        Ok(backend.table.put(&self.table, item, None).await?)
    }
}

/// Recipients and the switch as a function sees them, read again after `ttl`.
#[derive(Debug)]
pub struct RecipientCache {
    store: RecipientStore,
    ttl: Duration,
    cached: Mutex<Option<(Instant, Arc<Recipients>)>>,
}

/// A snapshot of the recipients and the switch.
#[derive(Debug, Default)]
pub struct Recipients {
    /// Whether features are notified automatically.
    pub active: bool,
    /// The recipients by label.
    pub all: Vec<(String, Recipient)>,
}

impl RecipientCache {
    /// What it touches: it only reads recipients.
    pub fn grants(&self) -> granary_ports::access::Grants {
        granary_ports::access::Grants::new().read_table(&self.store.table)
    }
    /// A cache over `store`.
    pub fn new(store: RecipientStore, ttl: Duration) -> Self {
        Self { store, ttl, cached: Mutex::new(None) }
    }

    /// The snapshot in force.
    pub async fn get(&self, backend: &Backend) -> Result<Arc<Recipients>, StoreError> {
        if let Some((at, r)) = self.cached.lock().unwrap_or_else(|p| p.into_inner()).as_ref()
            && at.elapsed() < self.ttl
        {
            return Ok(r.clone());
        }
        let r = Arc::new(Recipients { active: self.store.active(backend).await?, all: self.store.list(backend).await? });
        *self.cached.lock().unwrap_or_else(|p| p.into_inner()) = Some((Instant::now(), r.clone()));
        Ok(r)
    }
}

/// The step of a request waiting for its blocking recipients' acknowledgements.
pub const BLOCKING_STEP: &str = "WAITING_BLOCKING_DISSEMINATION";

/// How often a delivery or an acknowledgement racing another on the same item is tried.
const MAX_ATTEMPTS: u32 = 10;

/// What was disseminated of a feature to one recipient (REGARDS's FeatureDisseminationInfo).
#[derive(Debug, Clone, PartialEq, Serialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct DisseminationInfo {
    /// The recipient's label.
    pub label: String,
    /// When the last notification reached it (epoch ms).
    pub dissemination_date: i64,
    /// When it acknowledged (the dissemination date when it needs no acknowledgement).
    pub ack_date: Option<i64>,
    /// Whether it blocks its requests until it acknowledges.
    pub blocking: bool,
}

/// What an acknowledgement came to.
#[derive(Debug, Clone, PartialEq)]
pub enum Ack {
    /// Recorded now; the events of the requests it let finish are to be sent.
    Recorded(Vec<OutboxEvent>),
    /// Acknowledged before; the first date is kept.
    AlreadyAcknowledged(Vec<OutboxEvent>),
    /// Nothing was disseminated of that URN to that recipient.
    Unknown,
}

/// One notification delivered to one recipient.
#[derive(Debug, Clone, Copy)]
pub struct Delivery<'a> {
    /// The feature notified.
    pub urn: &'a str,
    /// The recipient's label.
    pub label: &'a str,
    /// The recipient.
    pub recipient: &'a Recipient,
    /// The notification's id.
    pub event_id: &'a str,
    /// The request that changed the feature (empty when unknown).
    pub request_id: &'a str,
    /// Whether that request waits for this recipient's acknowledgement (the notification's
    /// `metadata.blockedBy` names it, as feature-ingest decided when it held the request).
    pub holds_request: bool,
    /// The session of the notification (`sessionOwner`, `session`), for the recipient's counters.
    pub session: Option<(&'a str, &'a str)>,
}

/// The item of one session's counters for one recipient. The owner's length comes first so that no
/// two (owner, session) pairs share a partition.
fn recipient_counters_key(owner: &str, session: &str, label: &str) -> Key {
    Key::new(recipient_counters_partition(owner, session), label)
}

fn recipient_counters_partition(owner: &str, session: &str) -> String {
    format!("SR#{}#{owner}#{session}", owner.len())
}

/// The request ids listed in attribute `name` of a delivery record (`awaiting`, `released`).
fn request_ids(item: &Item, name: &str) -> Vec<String> {
    item.get(name).and_then(|v| serde_json::from_value(v.clone()).ok()).unwrap_or_default()
}

/// The condition that a delivery record still names the last notification `item` names.
fn same_last_notification(item: &Item) -> Cond {
    match item.get_str("lastEventId") {
        Some(last) => Cond::eq("lastEventId", last),
        None => Cond::absent("lastEventId"),
    }
}

/// The session an item names (`sessionOwner`, `session`).
fn session_of(item: &Item) -> Option<(String, String)> {
    Some((item.get_str("sessionOwner")?.to_owned(), item.get_str("session")?.to_owned()))
}

/// Deliveries and acknowledgements, and the requests held by blocking recipients.
#[derive(Debug, Clone)]
pub struct DisseminationLog {
    table: String,
    requests: String,
    response_queue: String,
    outbox: Outbox,
}

impl DisseminationLog {
    /// What it touches (see `granary_ports::access`).
    pub fn grants(&self) -> granary_ports::access::Grants {
        granary_ports::access::Grants::new()
            .write_table(&self.table)
            .write_table(&self.requests)
            .and(self.outbox.grants())
            .send(&self.response_queue)
    }
    /// Deliveries in `table` (the features table); the recipients' session counters, the requests
    /// and the outbox in `requests`; the events of released requests to `response_queue`.
    pub fn new(table: &str, requests: &str, response_queue: &str) -> Self {
        Self {
            table: table.to_owned(),
            requests: requests.to_owned(),
            response_queue: response_queue.to_owned(),
            outbox: Outbox::new(requests),
        }
    }

    /// The outbox the events of released requests are staged in.
    pub fn outbox(&self) -> &Outbox {
        &self.outbox
    }

    /// The update of recipient `label`'s counters in `session` by (`pending`, `done`).
    fn counters_op(&self, session: &(String, String), label: &str, pending: i64, done: i64) -> TxOp {
        let (owner, name) = session;
        let mut updates =
            vec![Update::set("label", label), Update::set("sessionOwner", owner.clone()), Update::set("session", name.clone())];
        updates.push(Update::add("pending", pending));
        updates.push(Update::add("done", done));
        TxOp::Update { table: self.requests.clone(), key: recipient_counters_key(owner, name, label), updates, cond: None }
    }

    /// Records that notification `d.event_id` of `d.urn` goes to recipient `d.label`, once per
    /// notification (a redelivered one, even an older one, changes nothing), with the recipient's
    /// session counters. Called before the notification is sent, so that an acknowledgement never
    /// finds its delivery unrecorded. True when recorded now.
    ///
    /// A recipient that needs an acknowledgement has one outstanding per feature: a new notification
    /// before the acknowledgement keeps it pending (counted once), and the one acknowledgement answers
    /// both, releasing every request that waits for it.
    pub async fn delivered(&self, backend: &Backend, d: &Delivery<'_>) -> Result<bool, StoreError> {
        let key = info_key(d.urn, d.label);
        let marker = marker_key(d.urn, d.label, d.event_id);
        let session = d.session.map(|(o, s)| (o.to_owned(), s.to_owned()));
        for attempt in 0..MAX_ATTEMPTS {
            let now = backend.clock.now_ms();
            let previous = backend.table.get(&self.table, &key).await?;
            let outstanding = previous.as_ref().is_some_and(|i| i.get("ackDate").is_none());
            let mut updates = vec![
                Update::set("label", d.label),
                Update::set("disseminationDate", now),
                Update::set("blocking", d.recipient.blocking),
                Update::set("lastEventId", d.event_id),
            ];
            let mut counters = Vec::new();
            let mut counted_in = session.clone();
            if d.recipient.ack_required {
                updates.push(Update::remove("ackDate"));
                if outstanding {
                    // Still the one acknowledgement awaited, counted where it was first pending.
                    counted_in = previous.as_ref().and_then(session_of);
                } else if let Some(s) = &session {
                    counters.push((s.clone(), 1, 0));
                }
                // The requests this acknowledgement will release: those still waiting, and this one.
                let mut awaiting: Vec<String> = match (&previous, outstanding) {
                    (Some(p), true) => request_ids(p, "awaiting"),
                    _ => vec![],
                };
                if d.holds_request && !d.request_id.is_empty() && !awaiting.iter().any(|r| r == d.request_id) {
                    awaiting.push(d.request_id.to_owned());
                }
                updates.push(Update::set("awaiting", Value::from(awaiting)));
            } else {
                updates.push(Update::set("ackDate", now));
                updates.push(Update::set("awaiting", Value::Array(vec![])));
                if outstanding && let Some(s) = previous.as_ref().and_then(session_of) {
                    counters.push((s, -1, 0));
                }
                if let Some(s) = &session {
                    counters.push((s.clone(), 0, 1));
                }
            }
            match &counted_in {
                Some((owner, name)) => {
                    updates.push(Update::set("sessionOwner", owner.clone()));
                    updates.push(Update::set("session", name.clone()));
                }
                None => {
                    updates.push(Update::remove("sessionOwner"));
                    updates.push(Update::remove("session"));
                }
            }
            // Only over the state read (the last notification recorded, acknowledged or not): a racing
            // delivery or acknowledgement makes this one read again, so no `awaiting` entry is lost.
            let state = match &previous {
                None => Cond::ItemAbsent,
                Some(p) => {
                    Cond::And(vec![same_last_notification(p), if outstanding { Cond::absent("ackDate") } else { Cond::exists("ackDate") }])
                }
            };
            let mut ops = vec![
                TxOp::Update { table: self.table.clone(), key: key.clone(), updates, cond: Some(state) },
                TxOp::Put {
                    table: self.table.clone(),
                    item: Item::new(marker.clone()).with("requestId", d.request_id).with("at", now),
                    cond: Some(Cond::ItemAbsent),
                },
            ];
            ops.extend(crate::sessions::merge_session_ops(
                counters.iter().map(|(s, pending, done)| self.counters_op(s, d.label, *pending, *done)).collect(),
            ));
            match backend.table.transact(ops).await {
                Ok(()) => return Ok(true),
                Err(PortError::TransactionCanceled { .. }) => {
                    if backend.table.get(&self.table, &marker).await?.is_some() {
                        return Ok(false);
                    }
                }
                // DynamoDB cancels transactions that meet on an item (the session counters of a
                // batch's deliveries) as a conflict: tried again after a short, growing pause.
                Err(e) if e.is_transient() => tokio::time::sleep(Duration::from_millis(10 << attempt.min(6))).await,
                Err(e) => return Err(e.into()),
            }
        }
        Err(StoreError::Contention(format!("{}/{}", d.urn, d.label), MAX_ATTEMPTS))
    }

    /// Records `label`'s acknowledgement of `urn`, keeping the first date, moves the recipient's
    /// session counters from pending to done, and releases the requests that waited for it (and for
    /// no other blocking recipient still unacknowledged).
    pub async fn acknowledge(&self, backend: &Backend, urn: &str, label: &str) -> Result<Ack, StoreError> {
        let key = info_key(urn, label);
        for _ in 0..MAX_ATTEMPTS {
            let Some(info) = backend.table.get(&self.table, &key).await? else { return Ok(Ack::Unknown) };
            let awaiting = request_ids(&info, "awaiting");
            if info.get("ackDate").is_some() {
                // Released before, unless a crash came between the acknowledgement and the release.
                return Ok(Ack::AlreadyAcknowledged(self.release_all(backend, &request_ids(&info, "released")).await?));
            }
            // Over the notification read: one recorded meanwhile (its request added to `awaiting`)
            // makes this acknowledgement read again, and release that request too.
            let last = same_last_notification(&info);
            let mut ops = vec![TxOp::Update {
                table: self.table.clone(),
                key: key.clone(),
                // Those waiting are released just after, from the list read here (kept as `released`
                // for a repeated acknowledgement to finish, should this one stop in between).
                updates: vec![
                    Update::set("ackDate", backend.clock.now_ms()),
                    Update::set("awaiting", Value::Array(vec![])),
                    Update::set("released", Value::from(awaiting.clone())),
                ],
                cond: Some(Cond::And(vec![Cond::ItemExists, Cond::absent("ackDate"), last])),
            }];
            ops.extend(session_of(&info).map(|s| self.counters_op(&s, label, -1, 1)));
            match backend.table.transact(ops).await {
                Ok(()) => return Ok(Ack::Recorded(self.release_all(backend, &awaiting).await?)),
                Err(PortError::TransactionCanceled { .. }) => continue,
                Err(e) => return Err(e.into()),
            }
        }
        Err(StoreError::Contention(format!("{urn}/{label}"), MAX_ATTEMPTS))
    }

    async fn release_all(&self, backend: &Backend, request_ids: &[String]) -> Result<Vec<OutboxEvent>, StoreError> {
        let mut events = Vec::new();
        for id in request_ids {
            events.extend(self.release_if_acknowledged(backend, id).await?);
        }
        Ok(events)
    }

    /// Finishes request `request_id` (SUCCESS, with its event) if it waits in
    /// [`BLOCKING_STEP`] and every recipient it waits for has acknowledged its feature, or is no longer
    /// a blocking recipient (removed, or changed by an admin). Returns the events to send; none when
    /// it still waits or was not waiting.
    ///
    /// Whoever changes one side calls this after its own write (the acknowledgement after recording
    /// it; storage-ready after moving the request into the step), so the later of the two sees both.
    pub async fn release_if_acknowledged(&self, backend: &Backend, request_id: &str) -> Result<Vec<OutboxEvent>, StoreError> {
        let Some(item) = backend.table.get(&self.requests, &request_key(request_id)).await? else { return Ok(vec![]) };
        let record = RequestRecord::from_item(&item)?;
        if record.state != RequestState::Granted || record.step != BLOCKING_STEP {
            return Ok(vec![]);
        }
        let urn = record.urn.clone().unwrap_or_default();
        let event_id = granary_domain::dissemination::notification_id(&urn, record.action.as_deref().unwrap_or_default(), request_id);
        for label in &record.blocked_by {
            // Acknowledged for this request: its notification was recorded for the recipient, and an
            // acknowledgement came since (none awaited, and this request not among those waiting).
            let info = backend.table.get(&self.table, &info_key(&urn, label)).await?;
            let acked =
                info.as_ref().is_some_and(|i| i.get("ackDate").is_some() && !request_ids(i, "awaiting").iter().any(|r| r == request_id))
                    && backend.table.get(&self.table, &marker_key(&urn, label, &event_id)).await?.is_some();
            if !acked && self.still_blocking(backend, label).await? {
                return Ok(vec![]);
            }
        }
        let event = crate::storage::request_event(&record, RequestState::Success, vec![], &self.response_queue);
        let now = backend.clock.now_ms();
        let tasks = crate::storage::all_tasks(backend, &self.requests, request_id).await?;
        crate::storage::purge_tasks(backend, &self.requests, &tasks, now).await?;
        let ops = vec![
            TxOp::Update {
                table: self.requests.clone(),
                key: item.key.clone(),
                updates: crate::storage::success_updates(now),
                cond: Some(Cond::And(vec![Cond::eq("state", RequestState::Granted.as_str()), Cond::eq("step", BLOCKING_STEP)])),
            },
            self.outbox.stage(&event, now),
        ];
        match backend.table.transact(ops).await {
            Ok(()) => {
                tracing::info!(request_id, %urn, "every blocking recipient acknowledged: request done");
                Ok(vec![event])
            }
            // Released by a racing acknowledgement.
            Err(PortError::TransactionCanceled { .. }) => Ok(vec![]),
            Err(e) => Err(e.into()),
        }
    }

    /// Whether recipient `label` is defined and blocks (it must acknowledge).
    async fn still_blocking(&self, backend: &Backend, label: &str) -> Result<bool, StoreError> {
        let item = backend.table.get(&self.table, &Key::new(RECIPIENTS, label)).await?;
        let recipient: Option<Recipient> = item.and_then(|i| serde_json::from_value(i.get("recipient")?.clone()).ok());
        Ok(recipient.is_some_and(|r| r.blocking && r.ack_required))
    }

    /// Releases the requests recipient `label` held, once it no longer blocks (an admin removed it or
    /// made it non-blocking): each is SUCCESS unless another blocking recipient still holds it.
    /// Returns the events to send.
    pub async fn release_held_by(&self, backend: &Backend, label: &str) -> Result<Vec<OutboxEvent>, StoreError> {
        if self.still_blocking(backend, label).await? {
            return Ok(vec![]);
        }
        let granted = Query::partition(&self.requests, RequestState::Granted.as_str()).on_index(crate::requests::BY_STATE_INDEX);
        let held: Vec<String> = crate::all_items(backend, granted)
            .await?
            .iter()
            .filter(|i| i.get_str("step") == Some(BLOCKING_STEP))
            .filter_map(|i| RequestRecord::from_item(i).ok())
            .filter(|r| r.blocked_by.iter().any(|l| l == label))
            .map(|r| r.request_id)
            .collect();
        self.release_all(backend, &held).await
    }

    /// What was disseminated of `urn`, by recipient label.
    pub async fn of(&self, backend: &Backend, urn: &str) -> Result<Vec<DisseminationInfo>, StoreError> {
        let items = crate::all_items(backend, Query::partition(&self.table, format!("N#{urn}"))).await?;
        Ok(items
            .iter()
            // Delivery markers (`<label>#<event id>`) aside.
            .filter(|i| !i.key.sk.contains('#'))
            .map(|i| DisseminationInfo {
                label: i.key.sk.clone(),
                dissemination_date: i.get_i64("disseminationDate").unwrap_or_default(),
                ack_date: i.get_i64("ackDate"),
                blocking: i.get("blocking").and_then(Value::as_bool).unwrap_or(false),
            })
            .collect())
    }
}

/// The recipients' counters of session (`owner`, `session`) in the requests table `table`, named as
/// REGARDS names them: `<recipient>.pending` and `<recipient>.done`.
pub async fn recipient_counters(backend: &Backend, table: &str, owner: &str, session: &str) -> Result<Vec<(String, i64)>, StoreError> {
    let items = crate::all_items(backend, Query::partition(table, recipient_counters_partition(owner, session))).await?;
    Ok(items
        .iter()
        .flat_map(|i| {
            let label = &i.key.sk;
            [(format!("{label}.pending"), i.get_i64("pending").unwrap_or(0)), (format!("{label}.done"), i.get_i64("done").unwrap_or(0))]
        })
        .collect())
}
