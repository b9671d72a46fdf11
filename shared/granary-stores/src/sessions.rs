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

/// `ops` (session counter updates) with the updates of each session merged into one operation: a
/// transaction may touch an item once, and one update costs less than many.
pub fn merge_session_ops(ops: Vec<TxOp>) -> Vec<TxOp> {
    let mut merged: Vec<TxOp> = Vec::new();
    for op in ops {
        let TxOp::Update { table, key, updates, cond: None } = op else {
            merged.push(op);
            continue;
        };
        let same = merged.iter_mut().find_map(|m| match m {
            TxOp::Update { table: t, key: k, updates: u, cond: None } if *t == table && *k == key => Some(u),
            _ => None,
        });
        let Some(into) = same else {
            merged.push(TxOp::Update { table, key, updates, cond: None });
            continue;
        };
        for update in updates {
            let existing = into.iter_mut().find(|u| u.attribute_name() == update.attribute_name());
            match (existing, update) {
                (Some(Update::Add(_, total)), Update::Add(_, by)) => *total += by,
                (Some(slot), other) => *slot = other,
                (None, other) => into.push(other),
            }
        }
    }
    merged
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
    /// What it touches (see `granary_ports::access`).
    pub fn grants(&self) -> granary_ports::access::Grants {
        granary_ports::access::Grants::new().write_table(&self.table)
    }
    /// Sessions kept in `table` (the requests table).
    pub fn new(table: &str) -> Self {
        Self { table: table.to_owned() }
    }

    /// The counters of one session, its recipients' `<recipient>.pending` and `.done` included.
    pub async fn get(&self, backend: &Backend, owner: &str, session: &str) -> Result<Option<Map<String, Value>>, StoreError> {
        let Some(item) = backend.table.get(&self.table, &key(owner, session)).await? else { return Ok(None) };
        let mut counters = counters_of(&item.attrs);
        for (name, n) in crate::dissemination::recipient_counters(backend, &self.table, owner, session).await? {
            counters.insert(name, Value::from(n));
        }
        Ok(Some(counters))
    }

    /// The sessions of an owner, with their counters, by session name (at most 1000).
    pub async fn of_owner(&self, backend: &Backend, owner: &str) -> Result<Vec<(String, Map<String, Value>)>, StoreError> {
        let page = backend.table.query(Query::partition(&self.table, format!("S#{owner}")).limit(1000)).await?;
        let mut sessions = Vec::with_capacity(page.items.len());
        for item in page.items {
            let mut counters = counters_of(&item.attrs);
            for (name, n) in crate::dissemination::recipient_counters(backend, &self.table, owner, &item.key.sk).await? {
                counters.insert(name, Value::from(n));
            }
            sessions.push((item.key.sk.clone(), counters));
        }
        Ok(sessions)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn updates_of_one_session_merge_into_one_operation_and_others_stay_apart() {
        let add = |owner: &str, session: &str, updates: Vec<Update>| TxOp::Update {
            table: "requests".into(),
            key: key(owner, session),
            updates,
            cond: None,
        };
        let merged = merge_session_ops(vec![
            add("o", "s1", vec![Update::add("referencingRequests", 1), Update::set("session", "s1")]),
            add("o", "s2", vec![Update::add("referencingRequests", 1)]),
            add("o", "s1", vec![Update::add("referencingRequests", 1), Update::add("referencedProducts", 1)]),
            add("o", "s1", vec![Update::add("referencingRequests", -3)]),
        ]);
        assert_eq!(merged.len(), 2, "one operation per session: {merged:?}");
        let TxOp::Update { key: k, updates, .. } = &merged[0] else { panic!("an update") };
        assert_eq!(*k, key("o", "s1"));
        assert_eq!(
            *updates,
            vec![Update::add("referencingRequests", -1), Update::set("session", "s1"), Update::add("referencedProducts", 1)]
        );
        let TxOp::Update { key: k, updates, .. } = &merged[1] else { panic!("an update") };
        assert_eq!((k.clone(), updates.clone()), (key("o", "s2"), vec![Update::add("referencingRequests", 1)]));
    }
}
