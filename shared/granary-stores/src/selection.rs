//! What a basket's dataset selection selects, read batch by batch: first the products its selections
//! name by URN, then one scan of the dataset for its search selections, so that a product selected
//! twice is read once, and memory holds one batch (plus the named URNs) however large the dataset.

use crate::StoreError;
use crate::catalog::Catalog;
use crate::features::FeatureStore;
use granary_domain::basket::DatedItemsSelection;
use granary_domain::catalog::ProductSearch;
use granary_domain::{Urn, entity_uuid};
use granary_ports::{Backend, Cursor};
use serde_json::Value;
use std::collections::BTreeSet;
use uuid::Uuid;

/// Products read per batch.
pub const BATCH: usize = 100;

/// Resolves product ids and reads what selections select.
#[derive(Debug, Clone)]
pub struct Selections {
    catalog: Catalog,
    features: FeatureStore,
    date_property: String,
}

/// Where a [`Selected`] reading is: resumable from here.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum Position {
    /// Reading the named URNs, from this index of the sorted list.
    Named(usize),
    /// Scanning the dataset, after this cursor.
    Scan(Option<Cursor>),
    /// Everything was read.
    Done,
}

/// The products of one dataset selection, batch by batch.
#[derive(Debug)]
pub struct Selected<'a> {
    selections: &'a Selections,
    dataset: Uuid,
    named: Vec<String>,
    /// The providerIds (their uuids) the named URNs are versions of: a search does not select them
    /// again in another version.
    named_products: BTreeSet<Uuid>,
    searches: Vec<(&'a DatedItemsSelection, ProductSearch)>,
    /// Where the next batch starts.
    pub position: Position,
}

impl Selections {
    /// What it touches: selections only read the catalog and feature versions.
    pub fn grants(&self) -> granary_ports::access::Grants {
        self.catalog.grants()
    }
    /// Over the features table `features` (catalog and versions) and `requests`; `date_property`
    /// is the property time-range searches read.
    pub fn new(features: &str, requests: &str, date_property: &str) -> Self {
        Self { catalog: Catalog::new(features), features: FeatureStore::new(features, requests), date_property: date_property.to_owned() }
    }

    /// The catalog read.
    pub fn catalog(&self) -> &Catalog {
        &self.catalog
    }

    /// The product version `id` names: a URN, or a providerId meaning its latest version.
    pub async fn resolve(&self, backend: &Backend, id: &str) -> Result<Option<Value>, StoreError> {
        let stored = match id.parse::<Urn>() {
            Ok(urn) => self.features.get(backend, &urn).await?,
            Err(_) => self.features.latest(backend, id).await?,
        };
        Ok(stored.map(|s| s.feature))
    }

    /// The products `items` (the dated selections of the dataset `dataset`) select, from `position`.
    pub fn selected<'a>(&'a self, dataset: Uuid, items: &'a [DatedItemsSelection], position: Position) -> Selected<'a> {
        let mut named_set = BTreeSet::new();
        let mut searches = Vec::new();
        for item in items {
            let request = &item.selection_request.request;
            if request.entity_ids_to_include.is_empty() {
                // A search that no longer parses selects nothing (it was checked when made).
                if let Ok(search) = request.search() {
                    searches.push((item, search));
                }
            } else {
                named_set.extend(request.entity_ids_to_include.iter().cloned());
            }
        }
        let named_products = named_set.iter().filter_map(|u| u.parse::<Urn>().ok()).map(|u| u.uuid).collect();
        Selected { selections: self, dataset, named: named_set.into_iter().collect(), named_products, searches, position }
    }
}

impl Selected<'_> {
    /// The next batch of selected products (each a feature version with its `urn`), `None` at the end.
    pub async fn next(&mut self, backend: &Backend) -> Result<Option<Vec<Value>>, StoreError> {
        loop {
            match self.position.clone() {
                Position::Done => return Ok(None),
                Position::Named(from) if from >= self.named.len() => {
                    self.position = if self.searches.is_empty() { Position::Done } else { Position::Scan(None) };
                }
                Position::Named(from) => {
                    let to = (from + BATCH).min(self.named.len());
                    // Collected first: a lazy map of borrowing closures would not be Send for every lifetime.
                    let mut reads = Vec::with_capacity(to - from);
                    for urn in &self.named[from..to] {
                        reads.push(self.selections.resolve(backend, urn));
                    }
                    let found: Vec<Value> = futures_join(reads).await?.into_iter().flatten().collect();
                    self.position = Position::Named(to);
                    if !found.is_empty() {
                        return Ok(Some(found));
                    }
                }
                Position::Scan(after) => {
                    let page = self.selections.catalog.products(backend, self.dataset, after, BATCH).await?;
                    self.position = match page.next {
                        Some(c) => Position::Scan(Some(c)),
                        None => Position::Done,
                    };
                    let date = &self.selections.date_property;
                    let found: Vec<Value> = page
                        .features
                        .into_iter()
                        .filter(|p| !self.named_products.contains(&entity_uuid(p.get("id").and_then(Value::as_str).unwrap_or_default())))
                        .filter(|p| self.searches.iter().any(|(item, search)| item.selection_request.selects(p, search, date)))
                        .collect();
                    if !found.is_empty() {
                        return Ok(Some(found));
                    }
                }
            }
        }
    }
}

/// Runs the reads ten at a time (enough to hide latency, few enough not to throttle a table), in order.
async fn futures_join<F, T>(reads: Vec<F>) -> Result<Vec<T>, StoreError>
where
    F: std::future::Future<Output = Result<T, StoreError>>,
{
    use futures::{StreamExt, TryStreamExt};
    futures::stream::iter(reads).buffered(10).try_collect().await
}
