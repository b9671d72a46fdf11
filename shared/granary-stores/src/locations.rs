//! Storage locations defined by admins, kept in the features table (one partition, sorted by name),
//! over the deployment's configured ones (`GRANARY_STORAGE_LOCATIONS`): a location an admin defines
//! with the name of a configured one replaces it.

use crate::StoreError;
use granary_domain::storage::{Locations, StorageLocation};
use granary_ports::{Backend, Item, Key, Query};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const PARTITION: &str = "LOCATIONS";

/// Admin-defined storage locations.
#[derive(Debug, Clone)]
pub struct LocationStore {
    table: String,
}

impl LocationStore {
    /// What it touches (see `granary_ports::access`).
    pub fn grants(&self) -> granary_ports::access::Grants {
        granary_ports::access::Grants::new().write_table(&self.table)
    }
    /// Locations kept in `table` (the features table).
    pub fn new(table: &str) -> Self {
        Self { table: table.to_owned() }
    }

    /// Defines (or replaces) location `name`; true when it is new.
    pub async fn put(&self, backend: &Backend, name: &str, location: &StorageLocation, by: &str) -> Result<bool, StoreError> {
        let key = Key::new(PARTITION, name);
        let existed = backend.table.get(&self.table, &key).await?.is_some();
        let item = Item::new(key)
            .with("location", serde_json::to_value(location).unwrap_or_default())
            .with("updatedBy", by)
            .with("updatedAt", backend.clock.now_ms());
        backend.table.put(&self.table, item, None).await?;
        Ok(!existed)
    }

    /// Every admin-defined location.
    pub async fn list(&self, backend: &Backend) -> Result<Locations, StoreError> {
        crate::all_items(backend, Query::partition(&self.table, PARTITION))
            .await?
            .into_iter()
            .map(|item| {
                let malformed = |why: String| StoreError::Malformed(format!("{PARTITION}/{}", item.key.sk), why);
                let location =
                    serde_json::from_value(item.get("location").cloned().ok_or_else(|| malformed("no location attribute".into()))?)
                        .map_err(|e| malformed(format!("location: {e}")))?;
                Ok((item.key.sk, location))
            })
            .collect()
    }
}

/// The locations in force (configured ones, replaced or completed by admin-defined ones), read again
/// after `ttl`, or at once when a name is asked for that the copy lacks (a location defined just now).
#[derive(Debug)]
pub struct LocationCache {
    store: LocationStore,
    configured: Locations,
    ttl: Duration,
    cached: Mutex<Option<(Instant, Arc<Locations>)>>,
}

impl LocationCache {
    /// What it touches: it only reads locations.
    pub fn grants(&self) -> granary_ports::access::Grants {
        granary_ports::access::Grants::new().read_table(&self.store.table)
    }
    /// The configured locations, with those defined in `store`.
    pub fn new(store: LocationStore, configured: Locations, ttl: Duration) -> Self {
        Self { store, configured, ttl, cached: Mutex::new(None) }
    }

    /// The locations in force; read again when older than the ttl or lacking one of `names`.
    pub async fn get(&self, backend: &Backend, names: &[&str]) -> Result<Arc<Locations>, StoreError> {
        if let Some((at, l)) = self.cached.lock().unwrap_or_else(|p| p.into_inner()).as_ref()
            && at.elapsed() < self.ttl
            && names.iter().all(|n| l.contains_key(*n))
        {
            return Ok(l.clone());
        }
        let mut all = self.configured.clone();
        all.extend(self.store.list(backend).await?);
        let all = Arc::new(all);
        *self.cached.lock().unwrap_or_else(|p| p.into_inner()) = Some((Instant::now(), all.clone()));
        Ok(all)
    }
}
