//! The queue port on SQLite: one table of messages, ordered for receive by an index on
//! (queue, visible_at, seq) so that a receive reads exactly the rows it takes.

use crate::db::{Db, map_sql};
use async_trait::async_trait;
use granary_ports::queue::{validate_batch_len, validate_send_batch};
use granary_ports::{Clock, IdSource, OutgoingMessage, PortError, PortResult, Queue, QueueDepth, QueueSpec, ReceivedMessage, Resources};
use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;
use tokio::sync::Notify;

/// How often a waiting receive looks again for messages sent by another process or made due by time.
const POLL_INTERVAL: Duration = Duration::from_millis(50);

/// How far a clock reading may fall behind the latest one before it counts as the clock having gone
/// back (concurrent operations read the clock in no particular order).
const CLOCK_STEP_TOLERANCE_MS: i64 = 2_000;

/// Queues on SQLite.
///
/// A message's `visible_at` is a wall-clock time, while what it stands for (a delay, a visibility
/// timeout) is a duration. When the machine's clock is set back, every pending message would wait for
/// as long as the clock went back, so the queue moves them back with it: in the process that notices
/// first, from the latest time it read (or, after a restart, from the newest message), once (after
/// the move no message is dated after the clock, so no other process moves them again). A clock set
/// forward needs no move: delays end and hidden messages come back sooner, which at-least-once
/// delivery allows.
pub struct EmbeddedQueue {
    db: Arc<Db>,
    specs: HashMap<String, QueueSpec>,
    arrivals: HashMap<String, Arc<Notify>>,
    clock: Arc<dyn Clock>,
    ids: Arc<dyn IdSource>,
    /// The latest clock reading of this process (at open, the newest message's sending time).
    latest: AtomicI64,
    /// Held while pending messages are moved back, so that one task of this process moves them.
    moving_back: tokio::sync::Mutex<()>,
}

/// A message as it is inserted.
pub(crate) struct QueuedRow {
    message_id: String,
    body: String,
    attrs: String,
    visible_at: i64,
}

/// Inserts `rows` into `queue`, sent at `now`, on `conn` (inside the caller's transaction).
pub(crate) fn insert(conn: &rusqlite::Connection, queue: &str, rows: &[QueuedRow], now: i64) -> PortResult<()> {
    let mut stmt = conn
        .prepare_cached(
            "INSERT INTO queue_messages (queue, message_id, body, attrs, visible_at, receive_count, sent_at)
             VALUES (?1, ?2, ?3, ?4, ?5, 0, ?6)",
        )
        .map_err(map_sql)?;
    for r in rows {
        stmt.execute(rusqlite::params![queue, r.message_id, r.body, r.attrs, r.visible_at, now]).map_err(map_sql)?;
    }
    Ok(())
}

fn receipt(seq: i64, receive_count: i64) -> String {
    format!("{seq}.{receive_count}")
}

fn parse_receipt(handle: &str) -> PortResult<(i64, i64)> {
    handle
        .split_once('.')
        .and_then(|(a, b)| Some((a.parse().ok()?, b.parse().ok()?)))
        .ok_or_else(|| PortError::Invalid(format!("{handle:?} is not a receipt handle of this queue")))
}

fn ms(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

impl EmbeddedQueue {
    pub(crate) fn new(db: Arc<Db>, resources: &Resources, clock: Arc<dyn Clock>, ids: Arc<dyn IdSource>) -> PortResult<Self> {
        let specs: HashMap<_, _> = resources.queues.iter().map(|q| (q.name.clone(), q.clone())).collect();
        let arrivals = specs.keys().map(|k| (k.clone(), Arc::new(Notify::new()))).collect();
        let latest = AtomicI64::new(db.newest_message_sent_at()?.unwrap_or(i64::MIN));
        Ok(Self { db, specs, arrivals, clock, ids, latest, moving_back: tokio::sync::Mutex::new(()) })
    }

    /// The time now, in milliseconds; when the clock has gone back since the latest reading, pending
    /// messages are first moved back with it (see [`EmbeddedQueue`]).
    pub(crate) async fn now(&self) -> PortResult<i64> {
        let now = self.clock.now_ms();
        let latest = self.latest.fetch_max(now, Ordering::SeqCst);
        if now.saturating_add(CLOCK_STEP_TOLERANCE_MS) >= latest {
            return Ok(now);
        }
        let _one_at_a_time = self.moving_back.lock().await;
        let latest = self.latest.load(Ordering::SeqCst);
        if now.saturating_add(CLOCK_STEP_TOLERANCE_MS) >= latest {
            return Ok(now);
        }
        let moved = self
            .db
            .write(move |conn| {
                let tx = conn.savepoint().map_err(map_sql)?;
                let newest: Option<i64> = tx.query_row("SELECT max(sent_at) FROM queue_messages", [], |r| r.get(0)).map_err(map_sql)?;
                // Nothing dated after the clock: no message to move (or another process moved them).
                let Some(newest) = newest.filter(|n| *n > now.saturating_add(CLOCK_STEP_TOLERANCE_MS)) else { return Ok(None) };
                let back = latest.max(newest).saturating_sub(now);
                let n = tx
                    .execute("UPDATE queue_messages SET visible_at = visible_at - ?1, sent_at = sent_at - ?1", [back])
                    .map_err(map_sql)?;
                tx.commit().map_err(map_sql)?;
                Ok(Some((back, n)))
            })
            .await?;
        if let Some((back_ms, messages)) = moved {
            tracing::warn!(back_ms, messages, "the clock went back: pending messages' delays and visibility timeouts moved back with it");
            for n in self.arrivals.values() {
                n.notify_waiters();
            }
        }
        self.latest.store(now, Ordering::SeqCst);
        Ok(now)
    }

    /// The rows `messages` make in `queue`, sent at `now` (their ids drawn, their delays applied).
    pub(crate) fn rows(&self, queue: &str, messages: Vec<OutgoingMessage>, now: i64) -> PortResult<Vec<QueuedRow>> {
        let spec = self.spec(queue)?;
        Ok(messages
            .into_iter()
            .map(|m| QueuedRow {
                message_id: self.ids.new_id().to_string(),
                attrs: serde_json::to_string(&m.attributes).unwrap_or_else(|_| "{}".into()),
                visible_at: now.saturating_add(ms(m.delay.unwrap_or(spec.delay))),
                body: m.body,
            })
            .collect())
    }

    /// Wakes the receives waiting on `queue`: messages were committed to it.
    pub(crate) fn announce(&self, queue: &str) {
        if let Some(n) = self.arrivals.get(queue) {
            n.notify_waiters();
        }
    }

    fn spec(&self, queue: &str) -> PortResult<&QueueSpec> {
        self.specs.get(queue).ok_or_else(|| PortError::NotFound(format!("queue {queue} is not declared")))
    }

    async fn receive_now(&self, spec: &QueueSpec, max: usize, visibility: Duration) -> PortResult<Vec<ReceivedMessage>> {
        let now = self.now().await?;
        let queue = spec.name.clone();
        let redrive = spec.dead_letter_queue.clone().filter(|_| spec.max_receive_count > 0).map(|d| (d, spec.max_receive_count));
        let hidden_until = now.saturating_add(ms(visibility));
        // Most polls of a quiet queue find nothing: a read says so without taking the write lock.
        let name = queue.clone();
        let ready: bool = self
            .db
            .run(move |conn| {
                conn.prepare_cached("SELECT EXISTS (SELECT 1 FROM queue_messages WHERE queue = ?1 AND visible_at <= ?2)")
                    .map_err(map_sql)?
                    .query_row(rusqlite::params![name, now], |r| r.get(0))
                    .map_err(map_sql)
            })
            .await?;
        if !ready {
            return Ok(Vec::new());
        }
        let (moved, mut got) = self
            .db
            .write(move |conn| {
                let tx = conn.savepoint().map_err(map_sql)?;
                // Messages already received max_receive_count times go to the dead-letter queue instead
                // of being delivered again, as SQS's redrive policy does.
                let mut moved = 0;
                if let Some((dlq, max_receives)) = &redrive {
                    moved = tx
                        .prepare_cached(
                            "UPDATE queue_messages SET queue = ?1, receive_count = 0, visible_at = ?2
                             WHERE seq IN (SELECT seq FROM queue_messages WHERE queue = ?3 AND visible_at <= ?2
                                           ORDER BY visible_at, seq LIMIT ?4)
                               AND receive_count >= ?5",
                        )
                        .map_err(map_sql)?
                        .execute(rusqlite::params![dlq, now, queue, max as i64, i64::from(*max_receives)])
                        .map_err(map_sql)?;
                }
                let mut stmt = tx
                    .prepare_cached(
                        "UPDATE queue_messages SET visible_at = ?1, receive_count = receive_count + 1
                         WHERE seq IN (SELECT seq FROM queue_messages WHERE queue = ?2 AND visible_at <= ?3
                                       ORDER BY visible_at, seq LIMIT ?4)
                         RETURNING seq, message_id, body, attrs, receive_count, sent_at",
                    )
                    .map_err(map_sql)?;
                let rows = stmt
                    .query_map(rusqlite::params![hidden_until, queue, now, max as i64], |r| {
                        Ok((
                            r.get::<_, i64>(0)?,
                            r.get::<_, String>(1)?,
                            r.get::<_, String>(2)?,
                            r.get::<_, String>(3)?,
                            r.get::<_, i64>(4)?,
                            r.get::<_, i64>(5)?,
                        ))
                    })
                    .map_err(map_sql)?
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(map_sql)?;
                drop(stmt);
                tx.commit().map_err(map_sql)?;
                Ok((moved, rows))
            })
            .await?;
        if moved > 0 {
            if let Some(n) = spec.dead_letter_queue.as_ref().and_then(|d| self.arrivals.get(d)) {
                n.notify_waiters();
            }
            tracing::warn!(queue = %spec.name, moved, "messages moved to the dead-letter queue after too many receives");
        }
        got.sort_by_key(|r| r.0);
        got.into_iter()
            .map(|(seq, message_id, body, attrs, count, sent_at)| {
                Ok(ReceivedMessage {
                    message_id,
                    receipt_handle: receipt(seq, count),
                    body,
                    attributes: serde_json::from_str(&attrs).map_err(|e| PortError::Backend(format!("stored attributes: {e}")))?,
                    receive_count: u32::try_from(count).unwrap_or(u32::MAX),
                    sent_at_ms: sent_at,
                })
            })
            .collect()
    }
}

#[async_trait]
impl Queue for EmbeddedQueue {
    async fn send_batch(&self, queue: &str, messages: Vec<OutgoingMessage>) -> PortResult<Vec<String>> {
        self.spec(queue)?;
        validate_send_batch(queue, &messages)?;
        let now = self.now().await?;
        let rows = self.rows(queue, messages, now)?;
        let ids: Vec<String> = rows.iter().map(|r| r.message_id.clone()).collect();
        let queue_name = queue.to_owned();
        self.db
            .write(move |conn| {
                let tx = conn.savepoint().map_err(map_sql)?;
                insert(&tx, &queue_name, &rows, now)?;
                tx.commit().map_err(map_sql)
            })
            .await?;
        self.announce(queue);
        Ok(ids)
    }

    async fn receive(&self, queue: &str, max: usize, visibility: Option<Duration>, wait: Duration) -> PortResult<Vec<ReceivedMessage>> {
        let spec = self.spec(queue)?.clone();
        validate_batch_len("receive", max)?;
        let visibility = visibility.unwrap_or(spec.visibility_timeout);
        let deadline = tokio::time::Instant::now() + wait;
        let arrivals = self.arrivals.get(queue).cloned().unwrap_or_default();
        loop {
            // Register interest before looking, so a send between the look and the wait is not missed.
            let notified = arrivals.notified();
            let got = self.receive_now(&spec, max, visibility).await?;
            let now = tokio::time::Instant::now();
            if !got.is_empty() || now >= deadline {
                return Ok(got);
            }
            let pause = POLL_INTERVAL.min(deadline - now);
            let _ = tokio::time::timeout(pause, notified).await;
        }
    }

    async fn delete_batch(&self, queue: &str, receipt_handles: Vec<String>) -> PortResult<()> {
        self.spec(queue)?;
        validate_batch_len("delete", receipt_handles.len())?;
        let parsed = receipt_handles.iter().map(|h| parse_receipt(h)).collect::<PortResult<Vec<_>>>()?;
        let queue = queue.to_owned();
        self.db
            .write(move |conn| {
                let tx = conn.savepoint().map_err(map_sql)?;
                {
                    let mut stmt = tx
                        .prepare_cached("DELETE FROM queue_messages WHERE seq = ?1 AND receive_count = ?2 AND queue = ?3")
                        .map_err(map_sql)?;
                    for (seq, count) in parsed {
                        stmt.execute(rusqlite::params![seq, count, queue]).map_err(map_sql)?;
                    }
                }
                tx.commit().map_err(map_sql)
            })
            .await
    }

    async fn change_visibility(&self, queue: &str, receipt_handle: &str, timeout: Duration) -> PortResult<()> {
        self.spec(queue)?;
        let (seq, count) = parse_receipt(receipt_handle)?;
        let visible_at = self.now().await?.saturating_add(ms(timeout));
        let (queue, handle) = (queue.to_owned(), receipt_handle.to_owned());
        let changed = self
            .db
            .write(move |conn| {
                conn.prepare_cached("UPDATE queue_messages SET visible_at = ?1 WHERE seq = ?2 AND receive_count = ?3 AND queue = ?4")
                    .map_err(map_sql)?
                    .execute(rusqlite::params![visible_at, seq, count, queue])
                    .map_err(map_sql)
            })
            .await?;
        if changed == 1 { Ok(()) } else { Err(PortError::StaleReceipt(handle)) }
    }

    async fn depth(&self, queue: &str) -> PortResult<QueueDepth> {
        self.spec(queue)?;
        let now = self.now().await?;
        let queue = queue.to_owned();
        self.db
            .run(move |conn| {
                conn.query_row(
                    "SELECT coalesce(sum(visible_at <= ?2), 0),
                            coalesce(sum(visible_at > ?2 AND receive_count > 0), 0),
                            coalesce(sum(visible_at > ?2 AND receive_count = 0), 0)
                     FROM queue_messages WHERE queue = ?1",
                    rusqlite::params![queue, now],
                    |r| {
                        Ok(QueueDepth {
                            visible: r.get::<_, i64>(0)? as u64,
                            in_flight: r.get::<_, i64>(1)? as u64,
                            delayed: r.get::<_, i64>(2)? as u64,
                        })
                    },
                )
                .map_err(map_sql)
            })
            .await
    }
}
