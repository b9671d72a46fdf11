//! The SQLite database: connections, pragmas and schema.

use crate::sql::{index_expr, quote_ident, table_ident};
use granary_ports::{PortError, PortResult, Resources};
use rusqlite::{Connection, ErrorCode, OpenFlags};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;

/// Most idle reading connections kept; more readers at once open connections that are closed after.
const MAX_IDLE_READERS: usize = 8;

/// How often the background checkpoint runs.
const CHECKPOINT_EVERY: Duration = Duration::from_millis(200);

/// A pool of connections to one database file. Each operation borrows a connection on a blocking thread.
pub(crate) struct Db {
    path: PathBuf,
    idle: Mutex<Vec<Connection>>,
    /// The writes of this process waiting for their turn, and whether a blocking thread is committing
    /// them. SQLite lets one writer in at a time and makes the others sleep in its busy handler (1 ms,
    /// then 2, 5, 10 … 100 ms), so the writes of this process queue here instead, and one blocking
    /// thread at a time takes every write queued and commits them together (see [`Db::write`]).
    /// Writers in other processes still meet the busy timeout.
    pending: Mutex<PendingWrites>,
    /// The connection every write of this process goes through, whose page cache stays valid from one
    /// write to the next (another connection's write would invalidate it). Only the committing thread
    /// takes it.
    writer: Mutex<Option<Connection>>,
}

/// Most writes committed in one transaction.
const MAX_GROUP: usize = 256;

#[derive(Default)]
struct PendingWrites {
    jobs: Vec<Box<dyn WriteJob>>,
    /// A blocking thread is committing writes, and will take these before it stops.
    committing: bool,
}

/// A write waiting to be committed with others: it runs in a savepoint of the group's transaction,
/// then learns whether the transaction committed.
trait WriteJob: Send {
    fn run(&mut self, conn: &mut Connection);
    fn finish(self: Box<Self>, committed: Result<(), &PortError>);
}

struct Job<T, F> {
    f: Option<F>,
    out: Option<PortResult<T>>,
    answer: tokio::sync::oneshot::Sender<PortResult<T>>,
}

impl<T: Send, F: FnOnce(&mut Connection) -> PortResult<T> + Send> WriteJob for Job<T, F> {
    fn run(&mut self, conn: &mut Connection) {
        let Some(f) = self.f.take() else { return };
        let out = (|| {
            // Prepared once per connection: this runs for every write, on the one committing thread.
            conn.prepare_cached("SAVEPOINT granary_write").and_then(|mut s| s.execute([])).map_err(map_sql)?;
            // A panicking write fails alone: its savepoint is rolled back and the others go on.
            let out = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| f(conn)))
                .unwrap_or_else(|_| Err(PortError::Backend("a database write panicked".into())));
            if out.is_err() {
                conn.execute_batch("ROLLBACK TO granary_write").map_err(map_sql)?;
            }
            conn.prepare_cached("RELEASE granary_write").and_then(|mut s| s.execute([])).map_err(map_sql)?;
            out
        })();
        self.out = Some(out);
    }

    fn finish(self: Box<Self>, committed: Result<(), &PortError>) {
        let out = match committed {
            Ok(()) => self.out.unwrap_or_else(|| Err(PortError::Backend("a database write did not run".into()))),
            Err(e) => Err(e.clone()),
        };
        let _ = self.answer.send(out);
    }
}

impl Db {
    pub(crate) fn open(path: &Path) -> PortResult<Self> {
        let db = Self { path: path.to_owned(), idle: Mutex::new(Vec::new()), pending: Mutex::default(), writer: Mutex::new(None) };
        let conn = db.connect(false)?;
        db.idle.lock().unwrap_or_else(|p| p.into_inner()).push(conn);
        Ok(db)
    }

    /// Checkpoints the write-ahead log every [`CHECKPOINT_EVERY`] on a thread of its own, for as long as
    /// `db` lives, so that writers do not stop to copy the log into the database themselves (SQLite's
    /// automatic checkpoint runs inside the commit that crosses its threshold, holding up every writer
    /// behind it). The automatic checkpoint stays as a backstop, at a higher threshold.
    pub(crate) fn checkpoint_in_background(db: &std::sync::Arc<Self>) -> PortResult<()> {
        let conn = db.connect(false)?;
        let weak = std::sync::Arc::downgrade(db);
        std::thread::Builder::new()
            .name("granary-checkpoint".into())
            .spawn(move || {
                while weak.strong_count() > 0 {
                    std::thread::sleep(CHECKPOINT_EVERY);
                    if let Err(e) = conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(())) {
                        tracing::debug!(error = %e, "background checkpoint skipped");
                    }
                }
            })
            .map_err(|e| PortError::Backend(format!("cannot start the checkpoint thread: {e}")))?;
        Ok(())
    }

    /// A new connection. The writer's page cache is 16 MB, a reader's 4 MB: readers come and go in a
    /// pool of up to [`MAX_IDLE_READERS`], and each fills its cache as it scans (16 MB each put a
    /// runner that had served a few large scans at 400 MB).
    fn connect(&self, writer: bool) -> PortResult<Connection> {
        let conn = Connection::open_with_flags(
            &self.path,
            OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_CREATE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )
        .map_err(|e| PortError::Backend(format!("cannot open {}: {e}", self.path.display())))?;
        conn.busy_timeout(Duration::from_secs(30)).map_err(map_sql)?;
        // 8 KiB pages measured faster for this workload; the page size only applies to a new file.
        conn.execute_batch(
            "PRAGMA page_size = 8192; PRAGMA journal_mode = WAL; PRAGMA synchronous = NORMAL; \
             PRAGMA foreign_keys = OFF; PRAGMA temp_store = MEMORY; PRAGMA wal_autocheckpoint = 8000;",
        )
        .map_err(map_sql)?;
        conn.execute_batch(if writer { "PRAGMA cache_size = -16000;" } else { "PRAGMA cache_size = -4000;" }).map_err(map_sql)?;
        // Statements are built per table, operation and condition: the default 16 would thrash, and
        // parsing SQL again took a third of the ingest's time.
        conn.set_prepared_statement_cache_capacity(256);
        // A statement whose plan might depend on the values bound to it (with STAT4, which the bundled
        // SQLite has) is compiled again at every new binding; these statements have one good plan.
        conn.set_db_config(rusqlite::config::DbConfig::SQLITE_DBCONFIG_ENABLE_QPSG, true).map_err(map_sql)?;
        Ok(conn)
    }

    /// Runs `f`, which only reads, with a connection on a blocking thread.
    pub(crate) async fn run<T, F>(self: &std::sync::Arc<Self>, f: F) -> PortResult<T>
    where
        T: Send + 'static,
        F: FnOnce(&mut Connection) -> PortResult<T> + Send + 'static,
    {
        let db = self.clone();
        tokio::task::spawn_blocking(move || db.read_here(f)).await.map_err(|e| PortError::Backend(format!("database task failed: {e}")))?
    }

    /// Runs `f`, which writes, in a savepoint of a transaction committed on a blocking thread: `f` is all
    /// or nothing (an error rolls its savepoint back), and its answer comes once the transaction has
    /// committed. The writes queued while one group commits are committed together as the next group,
    /// one commit for all of them (group commit): under 200 concurrent writers each write used to take
    /// a turn on the lock, a transaction and a commit of its own, and a blocking thread to wait on.
    pub(crate) async fn write<T, F>(self: &std::sync::Arc<Self>, f: F) -> PortResult<T>
    where
        T: Send + 'static,
        F: FnOnce(&mut Connection) -> PortResult<T> + Send + 'static,
    {
        let (answer, answered) = tokio::sync::oneshot::channel();
        let start = {
            let mut pending = self.pending.lock().unwrap_or_else(|p| p.into_inner());
            pending.jobs.push(Box::new(Job { f: Some(f), out: None, answer }));
            !std::mem::replace(&mut pending.committing, true)
        };
        if start {
            let db = self.clone();
            tokio::task::spawn_blocking(move || db.commit_pending());
        }
        answered.await.map_err(|_| PortError::Backend("the database write was dropped".into()))?
    }

    /// Commits the queued writes group by group until none is left.
    fn commit_pending(&self) {
        loop {
            let group: Vec<Box<dyn WriteJob>> = {
                let mut pending = self.pending.lock().unwrap_or_else(|p| p.into_inner());
                if pending.jobs.is_empty() {
                    pending.committing = false;
                    return;
                }
                let n = pending.jobs.len().min(MAX_GROUP);
                pending.jobs.drain(..n).collect()
            };
            self.commit_group(group);
        }
    }

    fn commit_group(&self, mut group: Vec<Box<dyn WriteJob>>) {
        let mut writer = self.writer.lock().unwrap_or_else(|p| p.into_inner());
        let conn = match writer.take() {
            Some(c) => Ok(c),
            None => self.connect(true),
        };
        let mut conn = match conn {
            Ok(c) => c,
            Err(e) => return group.into_iter().for_each(|j| j.finish(Err(&e))),
        };
        if let Err(e) = conn.execute_batch("BEGIN IMMEDIATE").map_err(map_sql) {
            *writer = Some(conn);
            return group.into_iter().for_each(|j| j.finish(Err(&e)));
        }
        let mut lost = false;
        for job in &mut group {
            job.run(&mut conn);
            // Some errors (a full disk, an I/O error) make SQLite roll the whole transaction back:
            // the writes before are undone, and the ones after must not run outside it.
            if conn.is_autocommit() {
                lost = true;
                break;
            }
        }
        let committed = if lost {
            Err(PortError::Unavailable("the database rolled the transaction back; try again".into()))
        } else {
            conn.execute_batch("COMMIT").map_err(map_sql)
        };
        if committed.is_err() {
            let _ = conn.execute_batch("ROLLBACK");
        }
        // A connection left inside a transaction (a failed rollback) is not reused.
        if conn.is_autocommit() {
            *writer = Some(conn);
        }
        drop(writer);
        for job in group {
            job.finish(committed.as_ref().map(|_| ()));
        }
    }

    /// Runs `f`, which only reads, with a pooled connection on the calling thread. For a read of a few
    /// rows by key this takes tens of microseconds, less than handing it to a blocking thread and back
    /// (a read never waits for a writer in WAL mode); longer reads go through [`Db::run`].
    pub(crate) fn read_here<T>(&self, f: impl FnOnce(&mut Connection) -> PortResult<T>) -> PortResult<T> {
        let mut conn = match self.idle.lock().unwrap_or_else(|p| p.into_inner()).pop() {
            Some(c) => c,
            None => self.connect(false)?,
        };
        let out = f(&mut conn);
        self.put_back(conn);
        out
    }

    /// Returns a reading connection to the pool, unless it is left inside a transaction or the pool is full.
    fn put_back(&self, conn: Connection) {
        if conn.is_autocommit() {
            let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
            if idle.len() < MAX_IDLE_READERS {
                idle.push(conn);
            }
        }
    }

    /// When the newest queued message was sent (milliseconds), if any message is queued.
    pub(crate) fn newest_message_sent_at(&self) -> PortResult<Option<i64>> {
        self.read_here(|conn| conn.query_row("SELECT max(sent_at) FROM queue_messages", [], |r| r.get(0)).map_err(map_sql))
    }

    /// Creates the schema and every declared table and index, idempotently.
    pub(crate) fn provision(&self, resources: &Resources) -> PortResult<()> {
        let mut conn = self.idle.lock().unwrap_or_else(|p| p.into_inner()).pop().map_or_else(|| self.connect(false), Ok)?;
        let mut ddl = String::from(
            "CREATE TABLE IF NOT EXISTS queue_messages (
                seq INTEGER PRIMARY KEY AUTOINCREMENT,
                queue TEXT NOT NULL,
                message_id TEXT NOT NULL,
                body TEXT NOT NULL,
                attrs TEXT NOT NULL,
                visible_at INTEGER NOT NULL,
                receive_count INTEGER NOT NULL DEFAULT 0,
                sent_at INTEGER NOT NULL
            );
            CREATE INDEX IF NOT EXISTS queue_messages_ready ON queue_messages(queue, visible_at, seq);
            CREATE TABLE IF NOT EXISTS blobs (
                bucket TEXT NOT NULL,
                key TEXT NOT NULL,
                class TEXT NOT NULL,
                size INTEGER NOT NULL,
                etag TEXT NOT NULL,
                restore_ready_at INTEGER,
                restore_until INTEGER,
                restore_announced INTEGER NOT NULL DEFAULT 0,
                PRIMARY KEY (bucket, key)
            ) WITHOUT ROWID;
            CREATE INDEX IF NOT EXISTS blobs_restores ON blobs(restore_announced, restore_ready_at)
                WHERE restore_ready_at IS NOT NULL AND restore_announced = 0;\n",
        );
        for t in &resources.tables {
            let ident = table_ident(&t.name)?;
            ddl.push_str(&format!(
                "CREATE TABLE IF NOT EXISTS {ident} (pk TEXT NOT NULL, sk TEXT NOT NULL, doc TEXT NOT NULL, \
                 PRIMARY KEY (pk, sk)) WITHOUT ROWID;\n"
            ));
            for ix in &t.indexes {
                let name = quote_ident(&format!("ix_{}_{}", t.name, ix.name))?;
                let part = index_expr(&ix.partition.name)?;
                let cols = match &ix.sort {
                    Some(s) => format!("{part}, {}, pk, sk", index_expr(&s.name)?),
                    None => format!("{part}, pk, sk"),
                };
                ddl.push_str(&format!("CREATE INDEX IF NOT EXISTS {name} ON {ident} ({cols}) WHERE {part} IS NOT NULL;\n"));
            }
            if let Some(ttl) = &t.ttl_attr {
                // What `EmbeddedTable::purge_expired` reads: only the items carrying the attribute.
                let name = quote_ident(&format!("ttl_{}", t.name))?;
                let expr = index_expr(ttl)?;
                ddl.push_str(&format!("CREATE INDEX IF NOT EXISTS {name} ON {ident} ({expr}) WHERE {expr} IS NOT NULL;\n"));
            }
        }
        let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate).map_err(map_sql)?;
        tx.execute_batch(&ddl).map_err(map_sql)?;
        tx.commit().map_err(map_sql)?;
        self.idle.lock().unwrap_or_else(|p| p.into_inner()).push(conn);
        Ok(())
    }
}

/// Maps a SQLite error to a port error, busy and locked databases being transient.
pub(crate) fn map_sql(e: rusqlite::Error) -> PortError {
    match e.sqlite_error_code() {
        Some(ErrorCode::DatabaseBusy | ErrorCode::DatabaseLocked) => PortError::Unavailable(e.to_string()),
        _ => PortError::Backend(e.to_string()),
    }
}
