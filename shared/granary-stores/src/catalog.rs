//! The catalog: a copy of each providerId's latest version, filed under every dataset it names in its
//! tags (`D#<dataset uuid>` / `P#<product uuid>`), and of each dataset under `DS` / `<uuid>`. The
//! copies are written in the transaction that changes the latest version (creation, patch, deletion,
//! stored locations), so the catalog never disagrees with the versions; searching a dataset reads one
//! partition, page by page.

use crate::StoreError;
use granary_domain::catalog::{ProductSearch, Reader, dataset_uuid, datasets_of, is_dataset};
use granary_domain::entity_uuid;
use granary_ports::{Backend, Cursor, Item, Key, Query, SortCond, TxOp};
use serde_json::Value;
use uuid::Uuid;

/// Catalog items read per query while scanning a dataset.
const SCAN_PAGE: usize = 100;

/// The partition listing the datasets.
const DATASETS: &str = "DS";

fn dataset_partition(dataset: Uuid) -> String {
    format!("D#{dataset}")
}

/// Where the latest version `feature` is filed.
fn slots(feature: &Value) -> Vec<Key> {
    let Some(provider_id) = feature.get("id").and_then(Value::as_str) else { return vec![] };
    let uuid = entity_uuid(provider_id);
    if is_dataset(feature) {
        return vec![Key::new(DATASETS, uuid.to_string())];
    }
    datasets_of(feature).into_iter().map(|d| Key::new(dataset_partition(d), format!("P#{uuid}"))).collect()
}

/// The writes that move the catalog from the latest version `before` to `after` (either absent):
/// copies of `after` where it is filed, and removal from where only `before` was.
pub(crate) fn catalog_ops(features: &str, before: Option<&Value>, after: Option<&Value>) -> Vec<TxOp> {
    let old = before.map(slots).unwrap_or_default();
    let new = after.map(slots).unwrap_or_default();
    let mut ops: Vec<TxOp> =
        old.into_iter().filter(|k| !new.contains(k)).map(|key| TxOp::Delete { table: features.to_owned(), key, cond: None }).collect();
    if let Some(feature) = after {
        let urn = feature.get("urn").and_then(Value::as_str).unwrap_or_default();
        ops.extend(new.into_iter().map(|key| TxOp::Put {
            table: features.to_owned(),
            item: Item::new(key).with("urn", urn).with("feature", feature.clone()),
            cond: None,
        }));
    }
    ops
}

/// A page of catalog entries.
#[derive(Debug, Clone, PartialEq)]
pub struct CatalogPage {
    /// The features, in the catalog's order (by uuid of providerId).
    pub features: Vec<Value>,
    /// Where the next page starts, when there may be one.
    pub next: Option<Cursor>,
}

/// Reads the catalog.
#[derive(Debug, Clone)]
pub struct Catalog {
    features: String,
}

impl Catalog {
    /// What it touches: searches read the features table (catalog copies are written by `FeatureStore`'s transactions).
    pub fn grants(&self) -> granary_ports::access::Grants {
        granary_ports::access::Grants::new().read_table(&self.features)
    }
    /// The catalog kept in the `features` table.
    pub fn new(features: &str) -> Self {
        Self { features: features.to_owned() }
    }

    /// Every dataset's latest version.
    pub async fn datasets(&self, backend: &Backend) -> Result<Vec<Value>, StoreError> {
        let items = crate::all_items(backend, Query::partition(&self.features, DATASETS).limit(1000)).await?;
        Ok(items.into_iter().filter_map(|i| i.get("feature").cloned()).collect())
    }

    /// The latest version of the dataset named by `reference` (providerId or URN).
    pub async fn dataset(&self, backend: &Backend, reference: &str) -> Result<Option<Value>, StoreError> {
        self.dataset_by_uuid(backend, dataset_uuid(reference)).await
    }

    /// The latest version of the dataset whose providerId has the uuid `dataset`.
    pub async fn dataset_by_uuid(&self, backend: &Backend, dataset: Uuid) -> Result<Option<Value>, StoreError> {
        let key = Key::new(DATASETS, dataset.to_string());
        Ok(backend.table.get(&self.features, &key).await?.and_then(|i| i.get("feature").cloned()))
    }

    /// A page of at most `limit` products of `dataset` (its uuid), after `after` (a previous page's
    /// cursor).
    pub async fn products(&self, backend: &Backend, dataset: Uuid, after: Option<Cursor>, limit: usize) -> Result<CatalogPage, StoreError> {
        let mut query = Query::partition(&self.features, dataset_partition(dataset)).limit(limit);
        query.after = after;
        self.page(backend, query).await
    }

    /// The products of `dataset` after the product whose providerId has the uuid `after` (exclusive),
    /// at most `limit`: for pages that end where the caller stopped reading, not where the table did.
    pub async fn products_after(
        &self,
        backend: &Backend,
        dataset: Uuid,
        after: Option<Uuid>,
        limit: usize,
    ) -> Result<CatalogPage, StoreError> {
        let mut query = Query::partition(&self.features, dataset_partition(dataset)).limit(limit);
        if let Some(a) = after {
            query = query.sorted(SortCond::Gt(Value::from(format!("P#{a}"))));
        }
        self.page(backend, query).await
    }

    /// The copies one query of the catalog reads.
    async fn page(&self, backend: &Backend, query: Query) -> Result<CatalogPage, StoreError> {
        let page = backend.table.query(query).await?;
        Ok(CatalogPage { features: page.items.into_iter().filter_map(|i| i.get("feature").cloned()).collect(), next: page.next })
    }

    /// The datasets `reader` may see.
    pub async fn visible_datasets(&self, backend: &Backend, reader: &Reader) -> Result<Vec<Value>, StoreError> {
        Ok(self.datasets(backend).await?.into_iter().filter(|d| reader.sees(d)).collect())
    }

    /// The dataset named by `reference` (providerId or URN), if `reader` may see it.
    pub async fn visible_dataset(&self, backend: &Backend, reader: &Reader, reference: &str) -> Result<Option<Value>, StoreError> {
        Ok(self.dataset(backend, reference).await?.filter(|d| reader.sees(d)))
    }

    /// The first of `product`'s datasets that `reader` may see: a product is visible through it, and
    /// does not exist for a reader who sees none.
    pub async fn visible_through(&self, backend: &Backend, reader: &Reader, product: &Value) -> Result<Option<Value>, StoreError> {
        if is_dataset(product) {
            return Ok(reader.sees(product).then(|| product.clone()));
        }
        for dataset in datasets_of(product) {
            if let Some(d) = self.dataset_by_uuid(backend, dataset).await?.filter(|d| reader.sees(d)) {
                return Ok(Some(d));
            }
        }
        Ok(None)
    }

    /// Up to `size` products of `dataset` that `search` matches, after the product whose uuid is
    /// `after`, and the uuid to resume after when more may follow. Reads the dataset's partition in
    /// pages until the page is full: a search is a filtered scan of one dataset.
    pub async fn search(
        &self,
        backend: &Backend,
        dataset: Uuid,
        search: &ProductSearch,
        date_property: &str,
        mut after: Option<Uuid>,
        size: usize,
    ) -> Result<(Vec<Value>, Option<Uuid>), StoreError> {
        let mut found = Vec::new();
        loop {
            let page = self.products_after(backend, dataset, after, SCAN_PAGE).await?;
            let exhausted = page.next.is_none();
            for product in page.features {
                after = product.get("id").and_then(Value::as_str).map(entity_uuid);
                if search.matches(&product, date_property) {
                    found.push(product);
                    if found.len() == size {
                        return Ok((found, after));
                    }
                }
            }
            if exhausted {
                return Ok((found, None));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn keys(ops: &[TxOp]) -> Vec<(&'static str, String, String)> {
        ops.iter()
            .map(|op| match op {
                TxOp::Put { item, .. } => ("put", item.key.pk.clone(), item.key.sk.clone()),
                TxOp::Delete { key, .. } => ("delete", key.pk.clone(), key.sk.clone()),
                _ => ("other", String::new(), String::new()),
            })
            .collect()
    }

    #[test]
    fn products_are_filed_under_each_tag_and_leave_the_tags_they_drop() {
        let p = entity_uuid("p1");
        let (a, b, c) = (entity_uuid("A"), entity_uuid("B"), entity_uuid("C"));
        let v1 = json!({"id": "p1", "entityType": "DATA", "urn": "u1", "tags": ["A", "B"]});
        let v2 = json!({"id": "p1", "entityType": "DATA", "urn": "u2", "tags": ["B", "C"]});
        assert_eq!(
            keys(&catalog_ops("f", None, Some(&v1))),
            vec![("put", format!("D#{a}"), format!("P#{p}")), ("put", format!("D#{b}"), format!("P#{p}"))]
        );
        assert_eq!(
            keys(&catalog_ops("f", Some(&v1), Some(&v2))),
            vec![
                ("delete", format!("D#{a}"), format!("P#{p}")),
                ("put", format!("D#{b}"), format!("P#{p}")),
                ("put", format!("D#{c}"), format!("P#{p}"))
            ]
        );
        assert_eq!(keys(&catalog_ops("f", Some(&v2), None)).len(), 2);
        let ds = json!({"id": "A", "entityType": "DATASET", "tags": ["X"]});
        assert_eq!(keys(&catalog_ops("f", None, Some(&ds))), vec![("put", "DS".to_owned(), a.to_string())]);
        assert!(catalog_ops("f", None, Some(&json!({"id": "q", "entityType": "DATA"}))).is_empty());
    }
}
