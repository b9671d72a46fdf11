//! Session counters (REGARDS's FeatureSessionProperty), one item per session in the requests table,
//! updated with `ADD` in the transaction that records each request's outcome, so they hold under
//! concurrent handlers and count each request once.

use crate::StoreError;
use crate::requests::RequestRecord;
use granary_domain::session::{Outcome, all_counters, increments};
use granary_ports::{Backend, Key, Query, TxOp, Update};
use serde_json::{Map, Value};

fn key(owner: &str, session: &str) -> Key {
    Key::new(format!("S#{owner}"), session)
}

/// The counter updates of `record`'s outcome, if it belongs to a session.
pub fn session_op(table: &str, record: &RequestRecord, outcome: Outcome) -> Option<TxOp> {
    let (owner, session) = (record.session_owner.as_ref()?, record.session.as_ref()?);
    let mut updates: Vec<Update> = increments(record.request_type, outcome).into_iter().map(|(name, by)| Update::add(name, by)).collect();
    if updates.is_empty() {
        return None;
    }
    updates.push(Update::set("sessionOwner", owner.clone()));
    updates.push(Update::set("session", session.clone()));
    Some(TxOp::Update { table: table.to_owned(), key: key(owner, session), updates, cond: None })
}

/// One session's counters, every counter present (0 when never counted).
pub fn counters_of(item_attrs: &Map<String, Value>) -> Map<String, Value> {
    let mut out = Map::new();
    for name in all_counters() {
        out.insert(name.to_owned(), item_attrs.get(name).cloned().unwrap_or(Value::from(0)));
    }
    out
}

/// Reads session counters.
#[derive(Debug, Clone)]
pub struct SessionReader {
    table: String,
}

impl SessionReader {
    /// Sessions kept in `table` (the requests table).
    pub fn new(table: &str) -> Self {
        Self { table: table.to_owned() }
    }

    /// The counters of one session.
    pub async fn get(&self, backend: &Backend, owner: &str, session: &str) -> Result<Option<Map<String, Value>>, StoreError> {
        Ok(backend.table.get(&self.table, &key(owner, session)).await?.map(|i| counters_of(&i.attrs)))
    }

    /// The sessions of an owner, with their counters, by session name (at most 1000).
    pub async fn of_owner(&self, backend: &Backend, owner: &str) -> Result<Vec<(String, Map<String, Value>)>, StoreError> {
        let page = backend.table.query(Query::partition(&self.table, format!("S#{owner}")).limit(1000)).await?;
        Ok(page.items.into_iter().map(|i| (i.key.sk.clone(), counters_of(&i.attrs))).collect())
    }
}
