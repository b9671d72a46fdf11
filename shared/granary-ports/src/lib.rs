//! Granary's generic ports: the small set of storage and messaging capabilities every other crate is
//! written against.
//!
//! Each port mirrors the AWS service it stands for closely enough that a DynamoDB, SQS or S3 adapter is a
//! thin mapping, and is small enough that the embedded adapter (SQLite and the filesystem) can keep the
//! same guarantees with every guard inside one SQL statement:
//!
//! - [`Table`]: items with a partition and sort key, conditional put/update/delete, small transactions,
//!   queries by key and by secondary index, guarded counters.
//! - [`Queue`]: batch send with attributes and delay, receive with a visibility timeout, batch delete,
//!   approximate depth and redrive to a dead-letter queue.
//! - [`BlobStore`]: streamed put and get, head, copy, delete, signed URLs, online and nearline classes.
//! - [`Functions`]: synchronous calls to functions Granary does not own (a configured processing).
//! - [`Topics`]: publications to topics Granary does not own (a recipient's SNS topic).
//! - [`access`]: what a function may touch, and a backend that holds it to that.
//! - [`Clock`] and [`IdSource`]: injectable so that tests move time and pin ids.
//!
//! The contract those guarantees form is the `granary-contract` crate, run against every adapter.

pub mod access;
pub mod blob;
pub mod clock;
mod error;
pub mod functions;
pub mod ids;
pub mod queue;
pub mod resources;
pub mod table;
pub mod topics;

pub use blob::{BlobMeta, BlobReader, BlobStore, RestoreStatus, StorageClass};
pub use clock::{Clock, ManualClock, SystemClock};
pub use error::{PortError, PortResult};
pub use functions::{Functions, NoFunctions};
pub use ids::{IdSource, RandomIds, SequentialIds};
pub use queue::{OutgoingMessage, Queue, QueueDepth, ReceivedMessage};
pub use resources::{AttrKind, IndexSpec, KeyAttr, QueueSpec, Resources, TableSpec};
pub use table::{Cond, Cursor, Item, Key, Page, Query, SortCond, Table, TxOp, Update};
pub use topics::{NoTopics, Topics};

use std::sync::Arc;

/// Every port one process needs, built once per cold start and shared by the handlers.
#[derive(Clone)]
pub struct Backend {
    /// Items with conditional writes and indexes.
    pub table: Arc<dyn Table>,
    /// Message queues.
    pub queue: Arc<dyn Queue>,
    /// Object storage.
    pub blobs: Arc<dyn BlobStore>,
    /// The time source every rule reads.
    pub clock: Arc<dyn Clock>,
    /// The source of new ids.
    pub ids: Arc<dyn IdSource>,
}

impl std::fmt::Debug for Backend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Backend").finish_non_exhaustive()
    }
}
