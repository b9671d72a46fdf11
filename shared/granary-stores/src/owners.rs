//! Who holds a stored object. An object (one checksum in one location) has an item counting its owners
//! (`B#<location>#<checksum>` / `B`) and one item per owner (same partition, `W#<owner>`), in the
//! features table. The storage worker claims an object for a feature before it copies the file, so an
//! object being copied for someone is never deleted; a release drops one owner, and only an object
//! whose count reached zero is deleted, in three steps that a redelivery resumes: mark it `deleting`
//! (only while no one owns it, and a claim refuses a marked object), delete the blob, delete the item.
//! A file shared with another feature, or still held by an order, is kept.

use crate::StoreError;
use granary_domain::storage::StoredObject;
use granary_ports::{Backend, Cond, Item, Key, PortError, TxOp, Update};

fn partition(object: &StoredObject) -> String {
    format!("B#{}#{}", object.storage, object.checksum)
}

fn object_key(object: &StoredObject) -> Key {
    Key::new(partition(object), "B")
}

fn owner_key(object: &StoredObject, owner: &str) -> Key {
    Key::new(partition(object), format!("W#{owner}"))
}

/// What a claim came to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Claim {
    /// The owner now holds the object (or already did).
    Held,
    /// The object is being deleted: claim again once the deletion is done.
    BeingDeleted,
}

/// Where an object no one owns lives, to delete it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Orphan {
    /// The object.
    pub object: StoredObject,
    /// Its bucket.
    pub bucket: String,
    /// Its key.
    pub key: String,
}

/// Owners of stored objects.
#[derive(Debug, Clone)]
pub struct FileOwners {
    table: String,
}

impl FileOwners {
    /// What it touches (see `granary_ports::access`).
    pub fn grants(&self) -> granary_ports::access::Grants {
        granary_ports::access::Grants::new().write_table(&self.table)
    }
    /// Owners kept in `table` (the features table).
    pub fn new(table: &str) -> Self {
        Self { table: table.to_owned() }
    }

    /// Makes `owner` one of the owners of `object` (at `bucket`/`key`), once.
    pub async fn claim(&self, backend: &Backend, object: &StoredObject, bucket: &str, key: &str, owner: &str) -> Result<Claim, StoreError> {
        let ops = vec![
            TxOp::Update {
                table: self.table.clone(),
                key: object_key(object),
                updates: vec![
                    Update::add("owners", 1),
                    Update::set("storage", object.storage.clone()),
                    Update::set("checksum", object.checksum.clone()),
                    Update::set("bucket", bucket),
                    Update::set("key", key),
                ],
                cond: Some(Cond::absent("deleting")),
            },
            TxOp::Put {
                table: self.table.clone(),
                item: Item::new(owner_key(object, owner)).with("owner", owner),
                cond: Some(Cond::ItemAbsent),
            },
        ];
        match backend.table.transact(ops).await {
            Ok(()) => Ok(Claim::Held),
            Err(PortError::TransactionCanceled { .. }) => {
                if backend.table.get(&self.table, &owner_key(object, owner)).await?.is_some() {
                    Ok(Claim::Held)
                } else {
                    Ok(Claim::BeingDeleted)
                }
            }
            Err(e) => Err(e.into()),
        }
    }

    /// How many owners `object` has (0 when it has no item).
    pub async fn owners(&self, backend: &Backend, object: &StoredObject) -> Result<i64, StoreError> {
        Ok(backend.table.get(&self.table, &object_key(object)).await?.and_then(|i| i.get_i64("owners")).unwrap_or(0))
    }

    /// Drops `owner` from each of `objects` it holds; returns the objects (of those) that no one owns
    /// now, or that a deletion left half done.
    pub async fn release(&self, backend: &Backend, owner: &str, objects: &[StoredObject]) -> Result<Vec<Orphan>, StoreError> {
        let mut orphans = Vec::new();
        for object in objects {
            if backend.table.get(&self.table, &owner_key(object, owner)).await?.is_some() {
                let ops = vec![
                    TxOp::Delete { table: self.table.clone(), key: owner_key(object, owner), cond: Some(Cond::ItemExists) },
                    TxOp::Update {
                        table: self.table.clone(),
                        key: object_key(object),
                        updates: vec![Update::add("owners", -1)],
                        cond: Some(Cond::ItemExists),
                    },
                ];
                match backend.table.transact(ops).await {
                    // Released by a concurrent copy of this job: the same outcome.
                    Ok(()) | Err(PortError::TransactionCanceled { .. }) => {}
                    Err(e) => return Err(e.into()),
                }
            }
            if let Some(item) = backend.table.get(&self.table, &object_key(object)).await?
                && item.get_i64("owners").unwrap_or(0) <= 0
            {
                orphans.push(Orphan {
                    object: object.clone(),
                    bucket: item.get_str("bucket").unwrap_or_default().to_owned(),
                    key: item.get_str("key").unwrap_or_default().to_owned(),
                });
            }
        }
        Ok(orphans)
    }

    /// Marks an orphan as being deleted, if still no one owns it; false when someone claimed it meanwhile.
    pub async fn begin_delete(&self, backend: &Backend, orphan: &Orphan) -> Result<bool, StoreError> {
        let cond = Cond::And(vec![Cond::ItemExists, Cond::Or(vec![Cond::eq("owners", 0), Cond::eq("deleting", true)])]);
        match backend.table.update(&self.table, &object_key(&orphan.object), vec![Update::set("deleting", true)], Some(cond)).await {
            Ok(_) => Ok(true),
            Err(PortError::ConditionFailed { .. }) => Ok(false),
            Err(e) => Err(e.into()),
        }
    }

    /// Forgets an object whose blob is deleted.
    pub async fn end_delete(&self, backend: &Backend, orphan: &Orphan) -> Result<(), StoreError> {
        match backend.table.delete(&self.table, &object_key(&orphan.object), Some(Cond::eq("deleting", true))).await {
            Ok(_) | Err(PortError::ConditionFailed { .. }) => Ok(()),
            Err(e) => Err(e.into()),
        }
    }
}
