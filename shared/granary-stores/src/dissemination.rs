//! Recipients, the automatic-notification switch and what was disseminated, in the features table:
//! recipients in one partition sorted by label, the switch as one item, and one item per feature and
//! recipient (`N#<urn>` / `<label>`) with the dissemination and acknowledgement dates.

use crate::StoreError;
use granary_domain::dissemination::Recipient;
use granary_ports::{Backend, Cond, Item, Key, PortError, Query, Update};
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
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ack {
    /// Recorded now.
    Recorded,
    /// Acknowledged before; the first date is kept.
    AlreadyAcknowledged,
    /// Nothing was disseminated of that URN to that recipient.
    Unknown,
}

/// Deliveries and acknowledgements.
#[derive(Debug, Clone)]
pub struct DisseminationLog {
    table: String,
}

impl DisseminationLog {
    /// What it touches (see `granary_ports::access`).
    pub fn grants(&self) -> granary_ports::access::Grants {
        granary_ports::access::Grants::new().write_table(&self.table)
    }
    /// Kept in `table` (the features table).
    pub fn new(table: &str) -> Self {
        Self { table: table.to_owned() }
    }

    /// Records that notification `event_id` of `urn` reached recipient `label`, once per notification
    /// (a redelivered one does not move the date). True when recorded now.
    pub async fn delivered(&self, backend: &Backend, urn: &str, label: &str, r: &Recipient, event_id: &str) -> Result<bool, StoreError> {
        let now = backend.clock.now_ms();
        let mut updates = vec![
            Update::set("label", label),
            Update::set("disseminationDate", now),
            Update::set("blocking", r.blocking),
            Update::set("lastEventId", event_id),
        ];
        updates.push(if r.ack_required { Update::remove("ackDate") } else { Update::set("ackDate", now) });
        match backend.table.update(&self.table, &info_key(urn, label), updates, Some(Cond::ne("lastEventId", event_id))).await {
            Ok(_) => Ok(true),
            Err(PortError::ConditionFailed { .. }) => Ok(false),
            Err(e) => Err(e.into()),
        }
    }

    /// Records `label`'s acknowledgement of `urn`, keeping the first date.
    pub async fn acknowledge(&self, backend: &Backend, urn: &str, label: &str) -> Result<Ack, StoreError> {
        let cond = Cond::And(vec![Cond::ItemExists, Cond::absent("ackDate")]);
        match backend
            .table
            .update(&self.table, &info_key(urn, label), vec![Update::set("ackDate", backend.clock.now_ms())], Some(cond))
            .await
        {
            Ok(_) => Ok(Ack::Recorded),
            Err(PortError::ConditionFailed { .. }) => Ok(if backend.table.get(&self.table, &info_key(urn, label)).await?.is_some() {
                Ack::AlreadyAcknowledged
            } else {
                Ack::Unknown
            }),
            Err(e) => Err(e.into()),
        }
    }

    /// What was disseminated of `urn`, by recipient label.
    pub async fn of(&self, backend: &Backend, urn: &str) -> Result<Vec<DisseminationInfo>, StoreError> {
        let items = crate::all_items(backend, Query::partition(&self.table, format!("N#{urn}"))).await?;
        Ok(items
            .iter()
            .map(|i| DisseminationInfo {
                label: i.key.sk.clone(),
                dissemination_date: i.get_i64("disseminationDate").unwrap_or_default(),
                ack_date: i.get_i64("ackDate"),
                blocking: i.get("blocking").and_then(Value::as_bool).unwrap_or(false),
            })
            .collect())
    }
}
