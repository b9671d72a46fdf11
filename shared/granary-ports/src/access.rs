//! What a function may touch, and a backend that holds it to that: IAM's least privilege, the same on
//! one machine as in the cloud.
//!
//! Each function declares its [`Grants`], built from the stores it uses, and wraps its backend with
//! [`guard`]. A call outside them fails with [`PortError::Backend`] naming the function, the access
//! and the resource, as IAM's AccessDenied would in the cloud, so every test on the embedded backend
//! proves the grants are enough; a workspace test proves the template's policies grant exactly them.

use crate::{Backend, Cond};
use crate::{
    BlobMeta, BlobReader, BlobStore, Item, Key, OutgoingMessage, Page, PortError, PortResult, Query, Queue, QueueDepth, ReceivedMessage,
    RestoreStatus, StorageClass, Table, TxOp, Update,
};
use async_trait::async_trait;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

/// The kind of a resource.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Kind {
    /// A table.
    Table,
    /// A queue.
    Queue,
    /// A bucket.
    Bucket,
}

/// What may be done to a resource (IAM actions come in these groups in the template's policies).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Access {
    /// Tables: GetItem, Query. Buckets: GetObject (also what a signed URL carries), HeadObject.
    Read,
    /// Tables: PutItem, UpdateItem, DeleteItem, TransactWriteItems. Buckets: PutObject.
    Write,
    /// Buckets: DeleteObject.
    Delete,
    /// Buckets: RestoreObject.
    Restore,
    /// Queues: SendMessage.
    Send,
    /// Queues: ReceiveMessage, DeleteMessage, ChangeMessageVisibility, GetQueueAttributes.
    Consume,
}

/// The name of a grant to every resource of its kind.
pub const ANY: &str = "*";

/// One grant: an access to a named resource.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Grant {
    /// The resource's kind.
    pub kind: Kind,
    /// Its name, as the ports see it (the configured name).
    pub name: String,
    /// The access.
    pub access: Access,
}

/// A set of grants.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Grants(BTreeSet<Grant>);

impl Grants {
    /// No grant.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds `access` to `name` of `kind`.
    pub fn with(mut self, kind: Kind, name: &str, access: Access) -> Self {
        self.0.insert(Grant { kind, name: name.to_owned(), access });
        self
    }

    /// Reads of table `name`.
    pub fn read_table(self, name: &str) -> Self {
        self.with(Kind::Table, name, Access::Read)
    }

    /// Reads and writes of table `name`.
    pub fn write_table(self, name: &str) -> Self {
        self.read_table(name).with(Kind::Table, name, Access::Write)
    }

    /// Sends to queue `name`.
    pub fn send(self, name: &str) -> Self {
        self.with(Kind::Queue, name, Access::Send)
    }

    /// `access` to bucket `name`.
    pub fn bucket(self, name: &str, access: Access) -> Self {
        self.with(Kind::Bucket, name, access)
    }

    /// These grants and `other`'s.
    pub fn and(mut self, other: Grants) -> Self {
        self.0.extend(other.0);
        self
    }

    /// `access` to every resource of `kind` (on one machine, where no list narrows it).
    pub fn any(self, kind: Kind, access: Access) -> Self {
        self.with(kind, ANY, access)
    }

    /// Whether `access` to `name` of `kind` is granted.
    pub fn allows(&self, kind: Kind, name: &str, access: Access) -> bool {
        self.0.contains(&Grant { kind, name: name.to_owned(), access }) || self.0.contains(&Grant { kind, name: ANY.to_owned(), access })
    }

    /// Every grant, in order.
    pub fn iter(&self) -> impl Iterator<Item = &Grant> {
        self.0.iter()
    }
}

/// The grants each function guarded in this process was given (the template test reads them).
static GRANTED: std::sync::Mutex<BTreeMap<&'static str, Grants>> = std::sync::Mutex::new(BTreeMap::new());

/// The grants `function` was last guarded with in this process.
pub fn granted(function: &str) -> Option<Grants> {
    GRANTED.lock().unwrap_or_else(std::sync::PoisonError::into_inner).get(function).cloned()
}

/// `backend`, held to `grants` for `function` (named in every refusal).
pub fn guard(backend: Backend, function: &'static str, grants: Grants) -> Backend {
    GRANTED.lock().unwrap_or_else(std::sync::PoisonError::into_inner).insert(function, grants.clone());
    let guard = Arc::new(Guard { function, grants });
    Backend {
        table: Arc::new(GuardedTable { inner: backend.table, guard: guard.clone() }),
        queue: Arc::new(GuardedQueue { inner: backend.queue, guard: guard.clone() }),
        blobs: Arc::new(GuardedBlobs { inner: backend.blobs, guard }),
        clock: backend.clock,
        ids: backend.ids,
    }
}

#[derive(Debug)]
struct Guard {
    function: &'static str,
    grants: Grants,
}

impl Guard {
    fn check(&self, kind: Kind, name: &str, access: Access) -> PortResult<()> {
        if self.grants.allows(kind, name, access) {
            return Ok(());
        }
        tracing::error!(function = self.function, ?kind, name, ?access, "access denied: not in the function's grants");
        Err(PortError::Backend(format!(
            "access denied: {} may not {access:?} {kind:?} {name} (add it to the function's grants and its template policy)",
            self.function
        )))
    }
}

struct GuardedTable {
    inner: Arc<dyn Table>,
    guard: Arc<Guard>,
}

#[async_trait]
impl Table for GuardedTable {
    fn serializes_transactions(&self) -> bool {
        self.inner.serializes_transactions()
    }

    fn take_sent_with_commit(&self, event_id: &str) -> bool {
        self.inner.take_sent_with_commit(event_id)
    }

    async fn get(&self, table: &str, key: &Key) -> PortResult<Option<Item>> {
        self.guard.check(Kind::Table, table, Access::Read)?;
        self.inner.get(table, key).await
    }

    async fn put(&self, table: &str, item: Item, cond: Option<Cond>) -> PortResult<()> {
        self.guard.check(Kind::Table, table, Access::Write)?;
        self.inner.put(table, item, cond).await
    }

    async fn update(&self, table: &str, key: &Key, updates: Vec<Update>, cond: Option<Cond>) -> PortResult<Item> {
        self.guard.check(Kind::Table, table, Access::Write)?;
        self.inner.update(table, key, updates, cond).await
    }

    async fn delete(&self, table: &str, key: &Key, cond: Option<Cond>) -> PortResult<Option<Item>> {
        self.guard.check(Kind::Table, table, Access::Write)?;
        self.inner.delete(table, key, cond).await
    }

    async fn transact(&self, ops: Vec<TxOp>) -> PortResult<()> {
        for op in &ops {
            // A condition check needs dynamodb:ConditionCheckItem, which only the write policies grant.
            self.guard.check(Kind::Table, op.target().0, Access::Write)?;
            if let TxOp::Outbox { queue, .. } = op {
                // Sent with the commit where the backend can, by the outbox after it elsewhere. On
                // DynamoDB the commit itself needs no SQS right; the flush after it does, so the
                // grants are the same either way.
                self.guard.check(Kind::Queue, queue, Access::Send)?;
            }
        }
        self.inner.transact(ops).await
    }

    async fn query(&self, query: Query) -> PortResult<Page> {
        self.guard.check(Kind::Table, &query.table, Access::Read)?;
        self.inner.query(query).await
    }

    async fn query_all(&self, queries: Vec<Query>) -> PortResult<Vec<Page>> {
        for q in &queries {
            self.guard.check(Kind::Table, &q.table, Access::Read)?;
        }
        self.inner.query_all(queries).await
    }
}

struct GuardedQueue {
    inner: Arc<dyn Queue>,
    guard: Arc<Guard>,
}

#[async_trait]
impl Queue for GuardedQueue {
    async fn send_batch(&self, queue: &str, messages: Vec<OutgoingMessage>) -> PortResult<Vec<String>> {
        self.guard.check(Kind::Queue, queue, Access::Send)?;
        self.inner.send_batch(queue, messages).await
    }

    async fn receive(&self, queue: &str, max: usize, visibility: Option<Duration>, wait: Duration) -> PortResult<Vec<ReceivedMessage>> {
        self.guard.check(Kind::Queue, queue, Access::Consume)?;
        self.inner.receive(queue, max, visibility, wait).await
    }

    async fn delete_batch(&self, queue: &str, receipt_handles: Vec<String>) -> PortResult<()> {
        self.guard.check(Kind::Queue, queue, Access::Consume)?;
        self.inner.delete_batch(queue, receipt_handles).await
    }

    async fn change_visibility(&self, queue: &str, receipt_handle: &str, timeout: Duration) -> PortResult<()> {
        self.guard.check(Kind::Queue, queue, Access::Consume)?;
        self.inner.change_visibility(queue, receipt_handle, timeout).await
    }

    async fn depth(&self, queue: &str) -> PortResult<QueueDepth> {
        self.guard.check(Kind::Queue, queue, Access::Consume)?;
        self.inner.depth(queue).await
    }
}

struct GuardedBlobs {
    inner: Arc<dyn BlobStore>,
    guard: Arc<Guard>,
}

#[async_trait]
impl BlobStore for GuardedBlobs {
    async fn put(&self, bucket: &str, key: &str, body: BlobReader, class: StorageClass) -> PortResult<BlobMeta> {
        self.guard.check(Kind::Bucket, bucket, Access::Write)?;
        self.inner.put(bucket, key, body, class).await
    }

    async fn get(&self, bucket: &str, key: &str) -> PortResult<(BlobMeta, BlobReader)> {
        self.guard.check(Kind::Bucket, bucket, Access::Read)?;
        self.inner.get(bucket, key).await
    }

    async fn head(&self, bucket: &str, key: &str) -> PortResult<Option<BlobMeta>> {
        self.guard.check(Kind::Bucket, bucket, Access::Read)?;
        self.inner.head(bucket, key).await
    }

    async fn copy(&self, from_bucket: &str, from_key: &str, to_bucket: &str, to_key: &str, class: StorageClass) -> PortResult<BlobMeta> {
        self.guard.check(Kind::Bucket, from_bucket, Access::Read)?;
        self.guard.check(Kind::Bucket, to_bucket, Access::Write)?;
        self.inner.copy(from_bucket, from_key, to_bucket, to_key, class).await
    }

    async fn delete(&self, bucket: &str, key: &str) -> PortResult<()> {
        self.guard.check(Kind::Bucket, bucket, Access::Delete)?;
        self.inner.delete(bucket, key).await
    }

    async fn request_restore(&self, bucket: &str, key: &str, days: u32) -> PortResult<RestoreStatus> {
        self.guard.check(Kind::Bucket, bucket, Access::Restore)?;
        self.inner.request_restore(bucket, key, days).await
    }

    async fn signed_get_url(&self, bucket: &str, key: &str, expires_in: Duration) -> PortResult<String> {
        // The URL carries the signer's right to read.
        self.guard.check(Kind::Bucket, bucket, Access::Read)?;
        self.inner.signed_get_url(bucket, key, expires_in).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grants_allow_what_they_name_and_any_grants_a_whole_kind() {
        let g = Grants::new().read_table("orders").send("events").any(Kind::Bucket, Access::Read);
        assert!(g.allows(Kind::Table, "orders", Access::Read));
        assert!(!g.allows(Kind::Table, "orders", Access::Write), "read is not write");
        assert!(!g.allows(Kind::Table, "features", Access::Read));
        assert!(g.allows(Kind::Queue, "events", Access::Send) && !g.allows(Kind::Queue, "events", Access::Consume));
        assert!(g.allows(Kind::Bucket, "any-bucket", Access::Read) && !g.allows(Kind::Bucket, "any-bucket", Access::Write));
        assert!(Grants::new().write_table("t").allows(Kind::Table, "t", Access::Read), "who writes a table reads it");
    }

    #[test]
    fn guard_names_what_it_refuses() {
        let e =
            Guard { function: "f", grants: Grants::new().read_table("orders") }.check(Kind::Table, "orders", Access::Write).unwrap_err();
        assert!(e.to_string().contains("access denied: f may not Write Table orders"), "{e}");
        assert!(!e.is_transient(), "a denial is not retried");
    }
}
