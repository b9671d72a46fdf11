//! The embedded implementation of Granary's ports: one data directory holding a SQLite database (WAL)
//! for tables and queues, and a tree of files for blobs.
//!
//! It is the default backend of `granary-local` and a real option for a small site, not a mock: every
//! guard sits inside the SQL statement that writes, just as it sits in a DynamoDB ConditionExpression,
//! so separate connections and separate processes sharing a directory keep the same guarantees.

mod blob;
mod db;
mod queue;
mod sql;
mod table;

pub use blob::{EmbeddedBlobs, SignedUrlError};
pub use queue::EmbeddedQueue;
pub use table::EmbeddedTable;

/// The bytes SQLite holds in this process now (page caches, prepared statements, schemas), all
/// databases together: what a memory measurement sets apart to tell SQLite's bounded caches from the
/// rest of the process.
#[allow(unsafe_code)]
pub fn sqlite_memory_used() -> i64 {
    // SAFETY: sqlite3_memory_used takes no argument and reads SQLite's global allocation counter under
    // SQLite's own mutex (the bundled library is built with SQLITE_THREADSAFE=1 and memory statistics
    // on, their default).
    unsafe { rusqlite::ffi::sqlite3_memory_used() }
}

use granary_ports::{Backend, Clock, IdSource, PortResult, RandomIds, Resources, SystemClock};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

/// How to open an embedded backend.
#[derive(Clone)]
pub struct EmbeddedOptions {
    /// The data directory; created when missing.
    pub data_dir: PathBuf,
    /// Tables, queues and buckets to provision.
    pub resources: Resources,
    /// Time source (a manual clock in tests).
    pub clock: Arc<dyn Clock>,
    /// Id source.
    pub ids: Arc<dyn IdSource>,
    /// How long a nearline restore takes.
    pub restore_delay: Duration,
    /// Base of signed blob URLs, such as `http://127.0.0.1:8080`.
    pub public_base_url: String,
}

impl EmbeddedOptions {
    /// Options with the system clock, random ids, a 60 s restore delay and a local base URL.
    pub fn new(data_dir: impl Into<PathBuf>, resources: Resources) -> Self {
        Self {
            data_dir: data_dir.into(),
            resources,
            clock: Arc::new(SystemClock),
            ids: Arc::new(RandomIds),
            restore_delay: Duration::from_secs(60),
            public_base_url: "http://127.0.0.1:8080".to_owned(),
        }
    }
}

/// The embedded backend: all ports over one data directory.
#[derive(Clone)]
pub struct Embedded {
    /// Tables.
    pub table: Arc<EmbeddedTable>,
    /// Queues.
    pub queue: Arc<EmbeddedQueue>,
    /// Blobs.
    pub blobs: Arc<EmbeddedBlobs>,
    options: EmbeddedOptions,
}

impl Embedded {
    /// Opens (creating when needed) the backend in `options.data_dir` and provisions its resources.
    pub fn open(options: EmbeddedOptions) -> PortResult<Self> {
        std::fs::create_dir_all(&options.data_dir)
            .map_err(|e| granary_ports::PortError::Backend(format!("cannot create data directory {}: {e}", options.data_dir.display())))?;
        let db = Arc::new(db::Db::open(&options.data_dir.join("granary.sqlite3"))?);
        db.provision(&options.resources)?;
        db::Db::checkpoint_in_background(&db)?;
        let queue = Arc::new(EmbeddedQueue::new(db.clone(), &options.resources, options.clock.clone(), options.ids.clone())?);
        let table = Arc::new(EmbeddedTable::new(db.clone(), &options.resources, queue.clone()));
        let blobs = Arc::new(EmbeddedBlobs::open(
            db,
            &options.data_dir,
            options.clock.clone(),
            options.ids.clone(),
            options.restore_delay,
            options.public_base_url.clone(),
        )?);
        Ok(Self { table, queue, blobs, options })
    }

    /// The ports as the handlers take them.
    pub fn backend(&self) -> Backend {
        Backend {
            table: self.table.clone(),
            queue: self.queue.clone(),
            blobs: self.blobs.clone(),
            clock: self.options.clock.clone(),
            ids: self.options.ids.clone(),
        }
    }

    /// The data directory.
    pub fn data_dir(&self) -> &Path {
        &self.options.data_dir
    }

    /// Deletes the items whose TTL has passed on the backend's clock, up to `limit` per table: what
    /// DynamoDB's TTL does in the cloud. Returns how many were deleted.
    pub async fn purge_expired(&self, limit: usize) -> PortResult<usize> {
        self.table.purge_expired(self.options.clock.now_ms().div_euclid(1000), limit).await
    }

    /// Sends an "Object Restore Completed" event to `queue` for every restore whose delay has passed,
    /// as S3 does through EventBridge. Returns how many were announced.
    pub async fn announce_completed_restores(&self, queue: &str) -> PortResult<usize> {
        blob::announce_completed_restores(&self.blobs, self.queue.as_ref(), queue).await
    }
}
