//! The table port: DynamoDB's data model reduced to what Granary uses.
//!
//! Items are JSON objects with two string keys, `pk` and `sk`. Conditions and updates name top-level
//! attributes only (names of ASCII letters, digits and `_`), so that they translate one-to-one into a
//! DynamoDB ConditionExpression and into the WHERE clause of one SQL statement.

use crate::error::{PortError, PortResult};
use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// An item's primary key.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Key {
    /// Partition key.
    pub pk: String,
    /// Sort key.
    pub sk: String,
}

impl Key {
    /// A key from its two parts.
    pub fn new(pk: impl Into<String>, sk: impl Into<String>) -> Self {
        Self { pk: pk.into(), sk: sk.into() }
    }
}

/// An item: its key and its other attributes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Item {
    /// Primary key.
    pub key: Key,
    /// Attributes other than the key.
    pub attrs: Map<String, Value>,
}

impl Item {
    /// An item with no attributes but its key.
    pub fn new(key: Key) -> Self {
        Self { key, attrs: Map::new() }
    }

    /// The same item with `name` set to `value`.
    pub fn with(mut self, name: &str, value: impl Into<Value>) -> Self {
        self.attrs.insert(name.to_owned(), value.into());
        self
    }

    /// The attribute `name`, if present.
    pub fn get(&self, name: &str) -> Option<&Value> {
        self.attrs.get(name)
    }

    /// The attribute `name` as an integer, if it is one.
    pub fn get_i64(&self, name: &str) -> Option<i64> {
        self.attrs.get(name).and_then(Value::as_i64)
    }

    /// The attribute `name` as a string, if it is one.
    pub fn get_str(&self, name: &str) -> Option<&str> {
        self.attrs.get(name).and_then(Value::as_str)
    }
}

/// A comparison operator of a condition.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CmpOp {
    /// `=`
    Eq,
    /// `<>` (true when the attribute is absent, as in DynamoDB)
    Ne,
    /// `<`
    Lt,
    /// `<=`
    Le,
    /// `>`
    Gt,
    /// `>=`
    Ge,
}

impl CmpOp {
    /// The operator as DynamoDB and SQL both write it.
    pub fn symbol(self) -> &'static str {
        match self {
            CmpOp::Eq => "=",
            CmpOp::Ne => "<>",
            CmpOp::Lt => "<",
            CmpOp::Le => "<=",
            CmpOp::Gt => ">",
            CmpOp::Ge => ">=",
        }
    }
}

/// A condition on an item's attributes, evaluated by the backend inside the write it guards.
#[derive(Debug, Clone, PartialEq)]
pub enum Cond {
    /// The item exists (`attribute_exists(pk)`).
    ItemExists,
    /// The item does not exist (`attribute_not_exists(pk)`).
    ItemAbsent,
    /// The attribute is present.
    Exists(String),
    /// The attribute is absent.
    Absent(String),
    /// The attribute compares to a value. Comparisons other than `<>` are false on an absent attribute.
    Cmp(String, CmpOp, Value),
    /// All hold.
    And(Vec<Cond>),
    /// At least one holds.
    Or(Vec<Cond>),
    /// Does not hold.
    Not(Box<Cond>),
}

impl Cond {
    /// `name = value`
    pub fn eq(name: &str, value: impl Into<Value>) -> Self {
        Cond::Cmp(name.to_owned(), CmpOp::Eq, value.into())
    }
    /// `name <> value`
    pub fn ne(name: &str, value: impl Into<Value>) -> Self {
        Cond::Cmp(name.to_owned(), CmpOp::Ne, value.into())
    }
    /// `name < value`
    pub fn lt(name: &str, value: impl Into<Value>) -> Self {
        Cond::Cmp(name.to_owned(), CmpOp::Lt, value.into())
    }
    /// `name <= value`
    pub fn le(name: &str, value: impl Into<Value>) -> Self {
        Cond::Cmp(name.to_owned(), CmpOp::Le, value.into())
    }
    /// `name > value`
    pub fn gt(name: &str, value: impl Into<Value>) -> Self {
        Cond::Cmp(name.to_owned(), CmpOp::Gt, value.into())
    }
    /// `name >= value`
    pub fn ge(name: &str, value: impl Into<Value>) -> Self {
        Cond::Cmp(name.to_owned(), CmpOp::Ge, value.into())
    }
    /// `attribute_exists(name)`
    pub fn exists(name: &str) -> Self {
        Cond::Exists(name.to_owned())
    }
    /// `attribute_not_exists(name)`
    pub fn absent(name: &str) -> Self {
        Cond::Absent(name.to_owned())
    }
    /// The guard of a counter that may not reach `limit`: absent (counts as 0) or below `limit - by`.
    pub fn counter_below(name: &str, by: i64, limit: i64) -> Self {
        let ceiling = limit - by;
        if ceiling < 0 {
            // No increment of `by` can stay within the limit, even from zero.
            return Cond::And(vec![Cond::absent(name), Cond::exists(name)]);
        }
        Cond::Or(vec![Cond::absent(name), Cond::le(name, ceiling)])
    }

    /// How the condition evaluates against an item that does not exist. Needs no read: an absent item
    /// has no attributes.
    pub fn holds_on_absent_item(&self) -> bool {
        match self {
            Cond::ItemExists | Cond::Exists(_) => false,
            Cond::ItemAbsent | Cond::Absent(_) => true,
            Cond::Cmp(_, op, _) => *op == CmpOp::Ne,
            Cond::And(cs) => cs.iter().all(Cond::holds_on_absent_item),
            Cond::Or(cs) => cs.iter().any(Cond::holds_on_absent_item),
            Cond::Not(c) => !c.holds_on_absent_item(),
        }
    }

    /// Every attribute name the condition reads.
    pub fn attribute_names(&self) -> Vec<&str> {
        let mut out = Vec::new();
        self.collect_names(&mut out);
        out
    }

    fn collect_names<'a>(&'a self, out: &mut Vec<&'a str>) {
        match self {
            Cond::ItemExists | Cond::ItemAbsent => {}
            Cond::Exists(n) | Cond::Absent(n) | Cond::Cmp(n, _, _) => out.push(n),
            Cond::And(cs) | Cond::Or(cs) => cs.iter().for_each(|c| c.collect_names(out)),
            Cond::Not(c) => c.collect_names(out),
        }
    }
}

/// One change of an update.
#[derive(Debug, Clone, PartialEq)]
pub enum Update {
    /// Sets the attribute to the value.
    Set(String, Value),
    /// Removes the attribute.
    Remove(String),
    /// Adds to a numeric attribute, an absent one counting as 0 (DynamoDB's `ADD`).
    Add(String, i64),
}

impl Update {
    /// `SET name = value`
    pub fn set(name: &str, value: impl Into<Value>) -> Self {
        Update::Set(name.to_owned(), value.into())
    }
    /// `REMOVE name`
    pub fn remove(name: &str) -> Self {
        Update::Remove(name.to_owned())
    }
    /// `ADD name by`
    pub fn add(name: &str, by: i64) -> Self {
        Update::Add(name.to_owned(), by)
    }
    /// The attribute the update changes.
    pub fn attribute_name(&self) -> &str {
        match self {
            Update::Set(n, _) | Update::Remove(n) | Update::Add(n, _) => n,
        }
    }
}

/// A condition on the sort key of a query (the table's `sk`, or the index's sort attribute).
#[derive(Debug, Clone, PartialEq)]
pub enum SortCond {
    /// Equal to.
    Eq(Value),
    /// Less than.
    Lt(Value),
    /// Less than or equal to.
    Le(Value),
    /// Greater than.
    Gt(Value),
    /// Greater than or equal to.
    Ge(Value),
    /// Between the two, both included.
    Between(Value, Value),
    /// A string starting with the prefix.
    BeginsWith(String),
}

/// Where a query resumes: opaque to callers, handed back from one [`Page`] to the next query.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Cursor(pub String);

/// A query over one partition of a table or of one of its indexes.
#[derive(Debug, Clone, PartialEq)]
pub struct Query {
    /// Logical table name.
    pub table: String,
    /// Index name, or `None` for the table itself.
    pub index: Option<String>,
    /// The partition key value (`pk`, or the index's partition attribute).
    pub partition: Value,
    /// Optional condition on the sort key.
    pub sort: Option<SortCond>,
    /// Ascending sort order when true.
    pub ascending: bool,
    /// At most this many items in the page.
    pub limit: usize,
    /// Resume after this cursor.
    pub after: Option<Cursor>,
}

impl Query {
    /// The first page, ascending, of at most 100 items of the partition `pk` of `table`.
    pub fn partition(table: &str, pk: impl Into<Value>) -> Self {
        Self { table: table.to_owned(), index: None, partition: pk.into(), sort: None, ascending: true, limit: 100, after: None }
    }

    /// The same query over the index `index`.
    pub fn on_index(mut self, index: &str) -> Self {
        self.index = Some(index.to_owned());
        self
    }

    /// The same query with a sort-key condition.
    pub fn sorted(mut self, cond: SortCond) -> Self {
        self.sort = Some(cond);
        self
    }

    /// The same query, descending.
    pub fn descending(mut self) -> Self {
        self.ascending = false;
        self
    }

    /// The same query with another page size.
    pub fn limit(mut self, limit: usize) -> Self {
        self.limit = limit;
        self
    }
}

/// One page of query results.
#[derive(Debug, Clone, PartialEq)]
pub struct Page {
    /// Items in order.
    pub items: Vec<Item>,
    /// Where the next page starts, when there may be one.
    pub next: Option<Cursor>,
}

/// One operation of a transaction.
#[derive(Debug, Clone, PartialEq)]
pub enum TxOp {
    /// Puts the item if the condition holds.
    Put {
        /// Logical table name.
        table: String,
        /// The item to write.
        item: Item,
        /// Guard.
        cond: Option<Cond>,
    },
    /// Updates (or creates) the item if the condition holds.
    Update {
        /// Logical table name.
        table: String,
        /// Item key.
        key: Key,
        /// Changes.
        updates: Vec<Update>,
        /// Guard.
        cond: Option<Cond>,
    },
    /// Deletes the item if the condition holds.
    Delete {
        /// Logical table name.
        table: String,
        /// Item key.
        key: Key,
        /// Guard.
        cond: Option<Cond>,
    },
    /// Writes nothing, but fails the transaction unless the condition holds.
    Check {
        /// Logical table name.
        table: String,
        /// Item key.
        key: Key,
        /// Guard.
        cond: Cond,
    },
    /// An event to send with the state this transaction commits (the outbox). A backend whose queues
    /// share its transactions sends `message` to `queue` as part of the commit and remembers
    /// `event_id` as sent ([`Table::take_sent_with_commit`]); any other puts `row`, absent before, which
    /// the outbox sends and deletes after the commit ([`TxOp::into_row`]).
    Outbox {
        /// Logical table name of the outbox row.
        table: String,
        /// The outbox row.
        row: Item,
        /// The event's deterministic id.
        event_id: String,
        /// Destination queue.
        queue: String,
        /// The message to send.
        message: crate::queue::OutgoingMessage,
    },
}

impl TxOp {
    /// The table and key the operation touches.
    pub fn target(&self) -> (&str, &Key) {
        match self {
            TxOp::Put { table, item, .. } | TxOp::Outbox { table, row: item, .. } => (table, &item.key),
            TxOp::Update { table, key, .. } | TxOp::Delete { table, key, .. } | TxOp::Check { table, key, .. } => (table, key),
        }
    }
}

impl TxOp {
    /// The operation as a backend without transactional queues writes it: an outbox event becomes
    /// the put of its row, absent before; any other operation stays as it is.
    pub fn into_row(self) -> TxOp {
        match self {
            TxOp::Outbox { table, row, .. } => TxOp::Put { table, item: row, cond: Some(Cond::ItemAbsent) },
            op => op,
        }
    }
}

/// DynamoDB's limit on operations in one TransactWriteItems call.
pub const MAX_TRANSACTION_OPS: usize = 100;

/// Checks a transaction against the rules every backend enforces: 1 to 100 operations, each item at
/// most once, valid attribute names, and outbox messages a queue takes (so that no backend commits an
/// event that could never be sent).
pub fn validate_transaction(ops: &[TxOp]) -> PortResult<()> {
    if ops.is_empty() || ops.len() > MAX_TRANSACTION_OPS {
        return Err(PortError::Invalid(format!("a transaction takes 1 to {MAX_TRANSACTION_OPS} operations, not {}", ops.len())));
    }
    let mut seen = std::collections::HashSet::new();
    for op in ops {
        let (table, key) = op.target();
        if !seen.insert((table, key)) {
            return Err(PortError::Invalid(format!(
                "a transaction may touch an item once; ({}, {}) of {table} appears twice",
                key.pk, key.sk
            )));
        }
        if let TxOp::Outbox { queue, message, .. } = op {
            crate::queue::validate_send_batch(queue, std::slice::from_ref(message))?;
        }
    }
    Ok(())
}

/// Checks an update: at least one change, each attribute changed once, valid names.
pub fn validate_updates(updates: &[Update]) -> PortResult<()> {
    if updates.is_empty() {
        return Err(PortError::Invalid("an update needs at least one change".into()));
    }
    let mut seen = std::collections::HashSet::new();
    for u in updates {
        let name = u.attribute_name();
        validate_attribute_name(name)?;
        if !seen.insert(name) {
            return Err(PortError::Invalid(format!("an update may change attribute {name:?} once")));
        }
    }
    Ok(())
}

/// Checks that an attribute name can be used in conditions, updates and index definitions.
pub fn validate_attribute_name(name: &str) -> PortResult<()> {
    let ok = !name.is_empty()
        && name.len() <= 255
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
        && name != "pk"
        && name != "sk";
    if ok {
        Ok(())
    } else {
        Err(PortError::Invalid(format!("attribute name {name:?} must be 1 to 255 ASCII letters, digits or '_', and not a key name")))
    }
}

/// Items with conditional writes, small transactions and queries by key or index.
#[async_trait]
pub trait Table: Send + Sync {
    /// Reads one item, strongly consistent.
    async fn get(&self, table: &str, key: &Key) -> PortResult<Option<Item>>;

    /// Writes the whole item if `cond` holds (against the current item, or an absent one).
    async fn put(&self, table: &str, item: Item, cond: Option<Cond>) -> PortResult<()>;

    /// Applies `updates` to the item (creating it when absent) if `cond` holds, and returns the item as
    /// written.
    async fn update(&self, table: &str, key: &Key, updates: Vec<Update>, cond: Option<Cond>) -> PortResult<Item>;

    /// Deletes the item if `cond` holds, returning what was deleted. Deleting an absent item is not an
    /// error unless `cond` requires the item.
    async fn delete(&self, table: &str, key: &Key, cond: Option<Cond>) -> PortResult<Option<Item>>;

    /// Applies every operation or none.
    async fn transact(&self, ops: Vec<TxOp>) -> PortResult<()>;

    /// One page of a partition, in sort-key order.
    async fn query(&self, query: Query) -> PortResult<Page>;

    /// Whether transactions are committed one at a time, so that concurrent transactions on a common
    /// item both commit (DynamoDB cancels one of them with TransactionConflict). Callers send
    /// transactions at once only where this holds.
    fn serializes_transactions(&self) -> bool {
        false
    }

    /// Whether a transaction of this process sent the event `event_id` as it committed
    /// ([`TxOp::Outbox`]), so that it is not to be sent again; asking forgets the id, so the answer
    /// is true once (once in all when one id was committed twice before being asked about). A
    /// backend without transactional queues writes outbox rows instead and always answers false.
    fn take_sent_with_commit(&self, event_id: &str) -> bool {
        let _ = event_id;
        false
    }

    /// The first page of each query, in the order given. DynamoDB has no batch query, so by default
    /// they run concurrently; a backend that can answer them together does.
    async fn query_all(&self, queries: Vec<Query>) -> PortResult<Vec<Page>> {
        futures::future::try_join_all(queries.into_iter().map(|q| self.query(q))).await
    }
}
