//! Data models, kept in the features table (`M#<name>`), with their compiled schemas, and a cache of
//! ready validators for the functions that check features.

use crate::StoreError;
use granary_domain::EntityType;
use granary_domain::model::{CompiledModel, ModelValidator};
use granary_ports::{Backend, Item, Key, Update};
use serde_json::Value;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

fn key(name: &str) -> Key {
    Key::new(format!("M#{name}"), "M")
}

/// A stored model.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredModel {
    /// The definition as given.
    pub definition: Value,
    /// Its compiled form.
    pub compiled: CompiledModel,
    /// How many times it was written.
    pub revision: i64,
    /// Who wrote it last.
    pub updated_by: String,
}

/// Reads and writes models.
#[derive(Debug, Clone)]
pub struct ModelStore {
    table: String,
}

impl ModelStore {
    /// What it touches (see `granary_ports::access`).
    pub fn grants(&self) -> granary_ports::access::Grants {
        granary_ports::access::Grants::new().write_table(&self.table)
    }
    /// Models kept in `table` (the features table).
    pub fn new(table: &str) -> Self {
        Self { table: table.to_owned() }
    }

    /// Writes (or replaces) a model; returns its new revision.
    pub async fn put(&self, backend: &Backend, definition: &Value, model: &CompiledModel, updated_by: &str) -> Result<i64, StoreError> {
        let mut updates = vec![
            Update::set("name", model.name.clone()),
            Update::set("definition", definition.clone()),
            Update::set("creationSchema", model.creation_schema.clone()),
            Update::set("patchSchema", model.patch_schema.clone()),
            Update::set("updatedBy", updated_by),
            Update::set("updatedAt", backend.clock.now_ms()),
            Update::add("revision", 1),
        ];
        match model.entity_type {
            Some(t) => updates.push(Update::set("entityType", t.as_str())),
            None => updates.push(Update::remove("entityType")),
        }
        let item = backend.table.update(&self.table, &key(&model.name), updates, None).await?;
        Ok(item.get_i64("revision").unwrap_or(1))
    }

    /// The model `name`, if defined.
    pub async fn get(&self, backend: &Backend, name: &str) -> Result<Option<StoredModel>, StoreError> {
        let Some(item) = backend.table.get(&self.table, &key(name)).await? else { return Ok(None) };
        Ok(Some(stored(&item, name)?))
    }
}

fn stored(item: &Item, name: &str) -> Result<StoredModel, StoreError> {
    let bad = |what: &str| StoreError::Malformed(item.key.pk.clone(), what.to_owned());
    Ok(StoredModel {
        definition: item.get("definition").cloned().ok_or_else(|| bad("definition"))?,
        compiled: CompiledModel {
            name: name.to_owned(),
            entity_type: item.get_str("entityType").and_then(|t| t.parse::<EntityType>().ok()),
            creation_schema: item.get("creationSchema").cloned().ok_or_else(|| bad("creationSchema"))?,
            patch_schema: item.get("patchSchema").cloned().ok_or_else(|| bad("patchSchema"))?,
        },
        revision: item.get_i64("revision").unwrap_or(0),
        updated_by: item.get_str("updatedBy").unwrap_or_default().to_owned(),
    })
}

/// Validators by model name, compiled once and kept for `ttl`: a model changed by an admin applies to
/// requests processed after at most `ttl`.
#[derive(Debug)]
pub struct ModelCache {
    store: ModelStore,
    ttl: Duration,
    entries: Mutex<HashMap<String, (Instant, Arc<ModelValidator>)>>,
}

impl ModelCache {
    /// What it touches: it only reads models.
    pub fn grants(&self) -> granary_ports::access::Grants {
        granary_ports::access::Grants::new().read_table(&self.store.table)
    }
    /// A cache over `store`.
    pub fn new(store: ModelStore, ttl: Duration) -> Self {
        Self { store, ttl, entries: Mutex::new(HashMap::new()) }
    }

    /// The validator of model `name`, or `None` when no such model is defined (never cached, so a model
    /// defined just now is seen at once).
    pub async fn get(&self, backend: &Backend, name: &str) -> Result<Option<Arc<ModelValidator>>, StoreError> {
        if let Some((at, v)) = self.entries.lock().unwrap_or_else(|p| p.into_inner()).get(name)
            && at.elapsed() < self.ttl
        {
            return Ok(Some(v.clone()));
        }
        let Some(model) = self.store.get(backend, name).await? else { return Ok(None) };
        let validator =
            Arc::new(ModelValidator::new(model.compiled).map_err(|e| StoreError::Malformed(format!("M#{name}"), e.to_string()))?);
        self.entries.lock().unwrap_or_else(|p| p.into_inner()).insert(name.to_owned(), (Instant::now(), validator.clone()));
        Ok(Some(validator))
    }
}
