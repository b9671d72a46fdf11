//! Declarations of the tables, queues and buckets a deployment has: the properties an adapter needs to
//! honour (indexes, visibility timeouts, redrive), whatever provisions them.

use std::time::Duration;

/// The type of a key attribute, as DynamoDB declares it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AttrKind {
    /// A string (`S`).
    String,
    /// A number (`N`).
    Number,
}

/// An attribute used as a key of an index.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyAttr {
    /// Attribute name.
    pub name: String,
    /// Its type.
    pub kind: AttrKind,
}

impl KeyAttr {
    /// A string key attribute.
    pub fn string(name: &str) -> Self {
        Self { name: name.to_owned(), kind: AttrKind::String }
    }
    /// A number key attribute.
    pub fn number(name: &str) -> Self {
        Self { name: name.to_owned(), kind: AttrKind::Number }
    }
}

/// A secondary index over a table: items carrying the partition attribute are found by it, sorted by
/// the sort attribute when given. Items without the partition attribute are not in the index (sparse).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IndexSpec {
    /// Index name, as queries name it.
    pub name: String,
    /// The attribute holding the index partition key.
    pub partition: KeyAttr,
    /// The attribute holding the index sort key, if any.
    pub sort: Option<KeyAttr>,
}

impl IndexSpec {
    /// An index named `name` over `partition` and `sort`.
    pub fn new(name: &str, partition: KeyAttr, sort: Option<KeyAttr>) -> Self {
        Self { name: name.to_owned(), partition, sort }
    }
}

/// A table: items keyed by `pk` and `sk` (both strings), with secondary indexes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TableSpec {
    /// Logical table name.
    pub name: String,
    /// Secondary indexes.
    pub indexes: Vec<IndexSpec>,
    /// The attribute holding an expiry time in epoch seconds, if items expire.
    pub ttl_attr: Option<String>,
}

/// A queue and its delivery rules.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueueSpec {
    /// Logical queue name.
    pub name: String,
    /// How long a received message stays invisible unless deleted.
    pub visibility_timeout: Duration,
    /// Default delay of a message sent without one.
    pub delay: Duration,
    /// Receives after which the message moves to `dead_letter_queue` (when set).
    pub max_receive_count: u32,
    /// The queue that takes messages received `max_receive_count` times without being deleted.
    pub dead_letter_queue: Option<String>,
}

impl QueueSpec {
    /// A queue with SQS's defaults (30 s visibility, no delay) and no dead-letter queue.
    pub fn new(name: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            visibility_timeout: Duration::from_secs(30),
            delay: Duration::ZERO,
            max_receive_count: 0,
            dead_letter_queue: None,
        }
    }

    /// The same queue redriving to `dlq` after `max_receive_count` receives.
    pub fn with_dlq(mut self, dlq: impl Into<String>, max_receive_count: u32) -> Self {
        self.dead_letter_queue = Some(dlq.into());
        self.max_receive_count = max_receive_count;
        self
    }

    /// The same queue with another visibility timeout.
    pub fn with_visibility(mut self, timeout: Duration) -> Self {
        self.visibility_timeout = timeout;
        self
    }
}

/// Every resource of a deployment.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Resources {
    /// Tables.
    pub tables: Vec<TableSpec>,
    /// Queues, dead-letter queues included.
    pub queues: Vec<QueueSpec>,
    /// Bucket names.
    pub buckets: Vec<String>,
}

impl Resources {
    /// The table named `name`.
    pub fn table(&self, name: &str) -> Option<&TableSpec> {
        self.tables.iter().find(|t| t.name == name)
    }

    /// For each table, its indexes by name with their (partition, sort) attribute names: what a query
    /// on an index needs to know.
    pub fn index_keys(&self) -> std::collections::HashMap<String, std::collections::HashMap<String, (String, Option<String>)>> {
        self.tables
            .iter()
            .map(|t| {
                let ix = t
                    .indexes
                    .iter()
                    .map(|i| (i.name.clone(), (i.partition.name.clone(), i.sort.as_ref().map(|s| s.name.clone()))))
                    .collect();
                (t.name.clone(), ix)
            })
            .collect()
    }

    /// The queue named `name`.
    pub fn queue(&self, name: &str) -> Option<&QueueSpec> {
        self.queues.iter().find(|q| q.name == name)
    }
}
