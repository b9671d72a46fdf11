//! The table port on SQLite: one SQLite table per logical table, the item's attributes in a JSON `doc`
//! column, secondary indexes as partial expression indexes over that column.

use crate::EmbeddedQueue;
use crate::db::{Db, map_sql};
use crate::queue::QueuedRow;
use crate::sql::{self, Fragment, index_expr, table_ident};
use async_trait::async_trait;
use granary_ports::table::validate_transaction;
use granary_ports::{Cond, Cursor, Item, Key, Page, PortError, PortResult, Query, Resources, Table, TxOp, Update};
use rusqlite::types::Value as SqlValue;
use rusqlite::{Connection, params_from_iter};
use serde_json::{Map, Value};
use std::collections::{HashMap, HashSet};
use std::sync::Arc;

/// Queries of at most this many items run on the calling thread (see [`EmbeddedTable::query`]).
const SHORT_QUERY_LIMIT: usize = 10;

/// Most event ids remembered as sent with a commit (see [`SentEvents`]): a caller asks about its
/// events right after its commit, so this holds the commits of the moment (a batch of 100 creations
/// sends 200 to 300 events), and the ids of events no caller asks about; about 300 kB at most.
const MAX_REMEMBERED_SENDS: usize = 4_096;

/// The ids of events sent with a commit that no caller has asked about yet, oldest first.
#[derive(Default)]
struct SentEvents {
    ids: HashSet<String>,
    /// The order they came in (ids already asked about are skipped when their turn comes).
    order: std::collections::VecDeque<String>,
}

impl SentEvents {
    /// Remembers `ids`; past [`MAX_REMEMBERED_SENDS`] the oldest are forgotten (asked about or not).
    /// A caller asks right after its commit, so those are ids nobody will ask about (a handler that
    /// failed between its commit and its flush); one that is asked about after all is sent once more,
    /// and its receiver drops the repeat by id.
    fn remember(&mut self, ids: impl IntoIterator<Item = String>) {
        for id in ids {
            if self.ids.insert(id.clone()) {
                self.order.push_back(id);
            }
        }
        while self.order.len() > MAX_REMEMBERED_SENDS {
            let Some(oldest) = self.order.pop_front() else { break };
            self.ids.remove(&oldest);
        }
    }
}

/// Tables on SQLite.
pub struct EmbeddedTable {
    db: Arc<Db>,
    /// The queues of the same database, which outbox events of a transaction join ([`TxOp::Outbox`]).
    queue: Arc<EmbeddedQueue>,
    /// Event ids sent with a commit and not yet asked about ([`Table::take_sent_with_commit`]).
    sent: std::sync::Mutex<SentEvents>,
    /// Index name to (partition attribute, sort attribute), per table.
    indexes: HashMap<String, HashMap<String, (String, Option<String>)>>,
    /// The TTL attribute of each table that has one.
    ttl: Vec<(String, String)>,
}

impl EmbeddedTable {
    pub(crate) fn new(db: Arc<Db>, resources: &Resources, queue: Arc<EmbeddedQueue>) -> Self {
        let indexes = resources.index_keys();
        let ttl = resources.tables.iter().filter_map(|t| Some((t.name.clone(), t.ttl_attr.clone()?))).collect();
        Self { db, queue, sent: Default::default(), indexes, ttl }
    }

    /// Deletes up to `limit` items per table whose TTL attribute (epoch seconds) is before `now_secs`,
    /// as DynamoDB's TTL does in the cloud (there within a few days; here whenever this runs). Returns
    /// how many were deleted. Items without the attribute, or with a value that is not a number, stay.
    pub async fn purge_expired(&self, now_secs: i64, limit: usize) -> PortResult<usize> {
        let mut purged = 0;
        for (table, attr) in &self.ttl {
            let (ident, expr) = (table_ident(table)?, index_expr(attr)?);
            let limit = i64::try_from(limit).unwrap_or(i64::MAX);
            purged += self
                .db
                .write(move |conn| {
                    conn.execute(
                        &format!(
                            "DELETE FROM {ident} WHERE (pk, sk) IN (SELECT pk, sk FROM {ident} \
                             WHERE {expr} IS NOT NULL AND typeof({expr}) IN ('integer', 'real') AND {expr} < ?1 LIMIT ?2)"
                        ),
                        rusqlite::params![now_secs, limit],
                    )
                    .map_err(map_sql)
                })
                .await?;
        }
        Ok(purged)
    }

    /// The (partition, sort) attributes of the index `query` reads, `None` for the table itself.
    fn index_of(&self, query: &Query) -> PortResult<Option<(String, Option<String>)>> {
        self.check_table(&query.table)?;
        let Some(name) = &query.index else { return Ok(None) };
        let keys = self.indexes[&query.table].get(name).cloned();
        keys.map(Some).ok_or_else(|| PortError::NotFound(format!("index {name} of table {}", query.table)))
    }

    fn check_table(&self, table: &str) -> PortResult<()> {
        if self.indexes.contains_key(table) { Ok(()) } else { Err(PortError::NotFound(format!("table {table} is not declared"))) }
    }
}

fn parse_doc(doc: &str) -> PortResult<Map<String, Value>> {
    serde_json::from_str(doc).map_err(|e| PortError::Backend(format!("stored item is not a JSON object: {e}")))
}

fn condition_failed(table: &str, key: &Key) -> PortError {
    PortError::ConditionFailed { table: table.to_owned(), pk: key.pk.clone(), sk: key.sk.clone() }
}

fn validate_attrs(item: &Item) -> PortResult<()> {
    item.attrs.keys().try_for_each(|k| granary_ports::table::validate_attribute_name(k))
}

/// The stored document of `item`, its attribute names checked. Made before a write joins the queue
/// of writes, so that the one committing thread does not spend its time serialising.
fn item_doc(item: &Item) -> PortResult<String> {
    validate_attrs(item)?;
    serde_json::to_string(&item.attrs).map_err(|e| PortError::Invalid(format!("item {:?}: {e}", item.key)))
}

/// Writes the whole item if `cond` holds. The guard is in the statement's WHERE clause.
fn put_on(conn: &Connection, table: &str, item: &Item, cond: Option<&Cond>) -> PortResult<()> {
    put_doc_on(conn, table, &item.key, item_doc(item)?, cond)
}

/// Writes `doc` as the item at `key` if `cond` holds.
fn put_doc_on(conn: &Connection, table: &str, key: &Key, doc: String, cond: Option<&Cond>) -> PortResult<()> {
    let ident = table_ident(table)?;
    let mut f = Fragment::default();
    let changed = match cond {
        None => conn
            .prepare_cached(&format!(
                "INSERT INTO {ident} (pk, sk, doc) VALUES (?1, ?2, ?3) ON CONFLICT (pk, sk) DO UPDATE SET doc = excluded.doc"
            ))
            .map_err(map_sql)?
            .execute(rusqlite::params![key.pk, key.sk, doc])
            .map_err(map_sql)?,
        Some(c) if c.holds_on_absent_item() => {
            f.params = vec![key.pk.clone().into(), key.sk.clone().into(), doc.into()];
            f.sql =
                format!("INSERT INTO {ident} (pk, sk, doc) VALUES (?, ?, ?) ON CONFLICT (pk, sk) DO UPDATE SET doc = excluded.doc WHERE ");
            sql::cond(c, &mut f)?;
            conn.prepare_cached(&f.sql).map_err(map_sql)?.execute(params_from_iter(f.params.iter())).map_err(map_sql)?
        }
        Some(c) => {
            f.params = vec![doc.into(), key.pk.clone().into(), key.sk.clone().into()];
            f.sql = format!("UPDATE {ident} SET doc = ? WHERE pk = ? AND sk = ? AND ");
            sql::cond(c, &mut f)?;
            conn.prepare_cached(&f.sql).map_err(map_sql)?.execute(params_from_iter(f.params.iter())).map_err(map_sql)?
        }
    };
    if changed == 1 { Ok(()) } else { Err(condition_failed(table, key)) }
}

/// Applies `updates` if `cond` holds, creating the item when absent and allowed; returns the new item.
fn update_on(conn: &Connection, table: &str, key: &Key, updates: &[Update], cond: Option<&Cond>) -> PortResult<Item> {
    granary_ports::table::validate_updates(updates)?;
    let ident = table_ident(table)?;
    let mut f = Fragment::default();
    let may_create = cond.is_none_or(Cond::holds_on_absent_item);
    if may_create {
        f.sql = format!("INSERT INTO {ident} (pk, sk, doc) VALUES (?, ?, ");
        f.params = vec![key.pk.clone().into(), key.sk.clone().into()];
        sql::updated_doc("'{}'", updates, &mut f)?;
        f.sql.push_str(") ON CONFLICT (pk, sk) DO UPDATE SET doc = ");
        sql::updated_doc("doc", updates, &mut f)?;
        if let Some(c) = cond {
            f.sql.push_str(" WHERE ");
            sql::cond(c, &mut f)?;
        }
    } else {
        f.sql = format!("UPDATE {ident} SET doc = ");
        sql::updated_doc("doc", updates, &mut f)?;
        f.sql.push_str(" WHERE pk = ? AND sk = ? AND ");
        f.params.push(key.pk.clone().into());
        f.params.push(key.sk.clone().into());
        sql::cond(cond.unwrap_or(&Cond::ItemExists), &mut f)?;
    }
    f.sql.push_str(" RETURNING doc");
    let doc: Option<String> = conn
        .prepare_cached(&f.sql)
        .map_err(map_sql)?
        .query_row(params_from_iter(f.params.iter()), |r| r.get(0))
        .map(Some)
        .or_else(|e| if e == rusqlite::Error::QueryReturnedNoRows { Ok(None) } else { Err(e) })
        .map_err(map_sql)?;
    match doc {
        Some(d) => Ok(Item { key: key.clone(), attrs: parse_doc(&d)? }),
        None => Err(condition_failed(table, key)),
    }
}

/// Deletes the item if `cond` holds. Runs inside a transaction: when no row is deleted, telling an
/// absent item from a false condition needs a second look at the same snapshot.
fn delete_on(conn: &Connection, table: &str, key: &Key, cond: Option<&Cond>) -> PortResult<Option<Item>> {
    let ident = table_ident(table)?;
    let mut f = Fragment {
        sql: format!("DELETE FROM {ident} WHERE pk = ? AND sk = ? AND "),
        params: vec![key.pk.clone().into(), key.sk.clone().into()],
    };
    sql::cond(cond.unwrap_or(&Cond::And(vec![])), &mut f)?;
    f.sql.push_str(" RETURNING doc");
    let mut stmt = conn.prepare_cached(&f.sql).map_err(map_sql)?;
    let doc: Option<String> = stmt
        .query_row(params_from_iter(f.params.iter()), |r| r.get(0))
        .map(Some)
        .or_else(|e| if e == rusqlite::Error::QueryReturnedNoRows { Ok(None) } else { Err(e) })
        .map_err(map_sql)?;
    if let Some(d) = doc {
        return Ok(Some(Item { key: key.clone(), attrs: parse_doc(&d)? }));
    }
    match cond {
        None => Ok(None),
        Some(c) if !c.holds_on_absent_item() => Err(condition_failed(table, key)),
        Some(_) => {
            let exists: bool = conn
                .query_row(&format!("SELECT EXISTS (SELECT 1 FROM {ident} WHERE pk = ?1 AND sk = ?2)"), [&key.pk, &key.sk], |r| r.get(0))
                .map_err(map_sql)?;
            if exists { Err(condition_failed(table, key)) } else { Ok(None) }
        }
    }
}

/// Fails unless `cond` holds for the item (present or absent).
fn check_on(conn: &Connection, table: &str, key: &Key, cond: &Cond) -> PortResult<()> {
    let ident = table_ident(table)?;
    let mut f = Fragment {
        sql: format!(
            "SELECT EXISTS (SELECT 1 FROM {ident} WHERE pk = ? AND sk = ?), EXISTS (SELECT 1 FROM {ident} WHERE pk = ? AND sk = ? AND "
        ),
        params: vec![key.pk.clone().into(), key.sk.clone().into(), key.pk.clone().into(), key.sk.clone().into()],
    };
    sql::cond(cond, &mut f)?;
    f.sql.push(')');
    let (exists, holds): (bool, bool) = conn
        .prepare_cached(&f.sql)
        .map_err(map_sql)?
        .query_row(params_from_iter(f.params.iter()), |r| Ok((r.get(0)?, r.get(1)?)))
        .map_err(map_sql)?;
    let ok = if exists { holds } else { cond.holds_on_absent_item() };
    if ok { Ok(()) } else { Err(condition_failed(table, key)) }
}

fn query_on(conn: &Connection, q: &Query, index: Option<&(String, Option<String>)>) -> PortResult<Page> {
    let ident = table_ident(&q.table)?;
    let (part_expr, sort_expr) = match index {
        None => ("pk".to_owned(), Some("sk".to_owned())),
        Some((p, s)) => (index_expr(p)?, s.as_deref().map(index_expr).transpose()?),
    };
    // The columns that order the results and make the cursor unique.
    let mut order_cols: Vec<String> = Vec::new();
    if let Some(s) = &sort_expr {
        order_cols.push(s.clone());
    }
    if index.is_some() {
        order_cols.push("pk".into());
        order_cols.push("sk".into());
    }
    let mut f = Fragment {
        sql: format!("SELECT pk, sk, doc, {} FROM {ident} WHERE {part_expr} = ?", order_cols.join(", ")),
        params: vec![sql::scalar(&q.partition)?],
    };
    if let Some(c) = &q.sort {
        let Some(s) = &sort_expr else {
            return Err(PortError::Invalid(format!("index {:?} has no sort key to put a condition on", q.index)));
        };
        sql::sort_cond(s, c, &mut f)?;
    }
    let (cmp, dir) = if q.ascending { (">", "ASC") } else { ("<", "DESC") };
    if let Some(Cursor(c)) = &q.after {
        let values: Vec<Value> = serde_json::from_str(c)
            .ok()
            .filter(|v: &Vec<Value>| v.len() == order_cols.len())
            .ok_or_else(|| PortError::Invalid("the query cursor is not one this table handed out".into()))?;
        let placeholders = vec!["?"; values.len()].join(", ");
        f.sql.push_str(&format!(" AND ({}) {cmp} ({placeholders})", order_cols.join(", ")));
        for v in &values {
            f.params.push(sql::scalar(v)?);
        }
    }
    let order: Vec<String> = order_cols.iter().map(|c| format!("{c} {dir}")).collect();
    f.sql.push_str(&format!(" ORDER BY {} LIMIT ?", order.join(", ")));
    let limit = q.limit.clamp(1, 10_000);
    f.params.push(SqlValue::Integer(limit as i64 + 1));
    let mut stmt = conn.prepare_cached(&f.sql).map_err(map_sql)?;
    let ncols = order_cols.len();
    let rows = stmt
        .query_map(params_from_iter(f.params.iter()), |r| {
            let pk: String = r.get(0)?;
            let sk: String = r.get(1)?;
            let doc: String = r.get(2)?;
            let mut cursor = Vec::with_capacity(ncols);
            for i in 0..ncols {
                cursor.push(match r.get::<_, SqlValue>(3 + i)? {
                    SqlValue::Integer(n) => Value::from(n),
                    SqlValue::Real(x) => Value::from(x),
                    SqlValue::Text(s) => Value::from(s),
                    _ => Value::Null,
                });
            }
            Ok((pk, sk, doc, cursor))
        })
        .map_err(map_sql)?;
    let mut items = Vec::new();
    let mut last_cursor = None;
    let mut more = false;
    for row in rows {
        let (pk, sk, doc, cursor) = row.map_err(map_sql)?;
        if items.len() == limit {
            more = true;
            break;
        }
        items.push(Item { key: Key { pk, sk }, attrs: parse_doc(&doc)? });
        last_cursor = Some(cursor);
    }
    let next = if more { last_cursor.map(|c| Cursor(Value::Array(c).to_string())) } else { None };
    Ok(Page { items, next })
}

#[async_trait]
impl Table for EmbeddedTable {
    /// SQLite has one writer: every transaction waits its turn, none is refused for another's.
    fn serializes_transactions(&self) -> bool {
        true
    }

    async fn get(&self, table: &str, key: &Key) -> PortResult<Option<Item>> {
        self.check_table(table)?;
        let ident = table_ident(table)?;
        let key = key.clone();
        self.db.read_here(move |conn| {
            let doc: Option<String> = conn
                .prepare_cached(&format!("SELECT doc FROM {ident} WHERE pk = ?1 AND sk = ?2"))
                .map_err(map_sql)?
                .query_row([&key.pk, &key.sk], |r| r.get(0))
                .map(Some)
                .or_else(|e| if e == rusqlite::Error::QueryReturnedNoRows { Ok(None) } else { Err(e) })
                .map_err(map_sql)?;
            doc.map(|d| Ok(Item { key, attrs: parse_doc(&d)? })).transpose()
        })
    }

    async fn put(&self, table: &str, item: Item, cond: Option<Cond>) -> PortResult<()> {
        self.check_table(table)?;
        let (table, doc) = (table.to_owned(), item_doc(&item)?);
        self.db.write(move |conn| put_doc_on(conn, &table, &item.key, doc, cond.as_ref())).await
    }

    async fn update(&self, table: &str, key: &Key, updates: Vec<Update>, cond: Option<Cond>) -> PortResult<Item> {
        self.check_table(table)?;
        let (table, key) = (table.to_owned(), key.clone());
        self.db.write(move |conn| update_on(conn, &table, &key, &updates, cond.as_ref())).await
    }

    async fn delete(&self, table: &str, key: &Key, cond: Option<Cond>) -> PortResult<Option<Item>> {
        self.check_table(table)?;
        let (table, key) = (table.to_owned(), key.clone());
        self.db
            .write(move |conn| {
                let tx = conn.savepoint().map_err(map_sql)?;
                let out = delete_on(&tx, &table, &key, cond.as_ref())?;
                tx.commit().map_err(map_sql)?;
                Ok(out)
            })
            .await
    }

    /// Outbox events are inserted into their queues inside the transaction: sent exactly when the
    /// state they report commits, with no row to write, send and delete after.
    async fn transact(&self, ops: Vec<TxOp>) -> PortResult<()> {
        validate_transaction(&ops)?;
        for op in &ops {
            self.check_table(op.target().0)?;
        }
        // The queue's clock is read (and its moved-back check run) only for a transaction that sends.
        let now = if ops.iter().any(|op| matches!(op, TxOp::Outbox { .. })) { self.queue.now().await? } else { 0 };
        let sends = ops
            .iter()
            .filter_map(|op| match op {
                TxOp::Outbox { event_id, queue, message, .. } => Some((event_id, queue, message)),
                _ => None,
            })
            .map(|(event_id, queue, message)| Ok((event_id.clone(), queue.clone(), self.queue.rows(queue, vec![message.clone()], now)?)))
            .collect::<PortResult<Vec<(String, String, Vec<QueuedRow>)>>>()?;
        let sends = self
            .db
            .write(move |conn| {
                let tx = conn.savepoint().map_err(map_sql)?;
                for (index, op) in ops.iter().enumerate() {
                    let result = match op {
                        TxOp::Put { table, item, cond } => put_on(&tx, table, item, cond.as_ref()),
                        TxOp::Update { table, key, updates, cond } => update_on(&tx, table, key, updates, cond.as_ref()).map(drop),
                        TxOp::Delete { table, key, cond } => delete_on(&tx, table, key, cond.as_ref()).map(drop),
                        TxOp::Check { table, key, cond } => check_on(&tx, table, key, cond),
                        TxOp::Outbox { .. } => Ok(()),
                    };
                    match result {
                        Ok(()) => {}
                        Err(PortError::ConditionFailed { .. }) => {
                            return Err(PortError::TransactionCanceled { index, reason: "ConditionalCheckFailed".into() });
                        }
                        Err(e) => return Err(e),
                    }
                }
                for (_, queue, rows) in &sends {
                    crate::queue::insert(&tx, queue, rows, now)?;
                }
                tx.commit().map_err(map_sql)?;
                Ok(sends)
            })
            .await?;
        if !sends.is_empty() {
            let mut sent = self.sent.lock().unwrap_or_else(|p| p.into_inner());
            sent.remember(sends.iter().map(|(id, _, _)| id.clone()));
        }
        let queues: std::collections::BTreeSet<&str> = sends.iter().map(|(_, q, _)| q.as_str()).collect();
        for q in queues {
            self.queue.announce(q);
        }
        Ok(())
    }

    fn take_sent_with_commit(&self, event_id: &str) -> bool {
        self.sent.lock().unwrap_or_else(|p| p.into_inner()).ids.remove(event_id)
    }

    async fn query(&self, query: Query) -> PortResult<Page> {
        let index = self.index_of(&query)?;
        // A page of a few items (a latest-version lookup is a page of one) is read through an index,
        // its work bounded by its limit: like a read by key, on the calling thread, where handing it
        // to a blocking thread and back would cost more than the read.
        if query.limit <= SHORT_QUERY_LIMIT {
            return self.db.read_here(|conn| query_on(conn, &query, index.as_ref()));
        }
        self.db.run(move |conn| query_on(conn, &query, index.as_ref())).await
    }

    /// Every query on one connection in one trip to the blocking pool: a batch's lookups would
    /// otherwise wake as many threads as it has queries.
    async fn query_all(&self, queries: Vec<Query>) -> PortResult<Vec<Page>> {
        let planned = queries.into_iter().map(|q| Ok((self.index_of(&q)?, q))).collect::<PortResult<Vec<_>>>()?;
        self.db.run(move |conn| planned.iter().map(|(index, query)| query_on(conn, query, index.as_ref())).collect()).await
    }
}
