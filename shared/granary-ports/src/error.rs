use thiserror::Error;

/// Result of a port operation.
pub type PortResult<T> = Result<T, PortError>;

/// What can go wrong behind a port. Variants say what the caller can do about it.
#[derive(Debug, Error, Clone, PartialEq)]
pub enum PortError {
    /// A conditional write found its condition false; nothing was written.
    #[error("condition failed on {table} item ({pk}, {sk}); nothing was written")]
    ConditionFailed {
        /// Logical table name.
        table: String,
        /// Partition key of the item.
        pk: String,
        /// Sort key of the item.
        sk: String,
    },
    /// A transaction was cancelled because one of its operations failed; nothing was written.
    #[error("transaction cancelled: operation {index} failed ({reason}); nothing was written")]
    TransactionCanceled {
        /// Position of the failing operation in the transaction.
        index: usize,
        /// Why it failed.
        reason: String,
    },
    /// The request breaks a rule of the port (batch size, name syntax, transaction shape).
    #[error("invalid request: {0}")]
    Invalid(String),
    /// The named table, queue, bucket or object does not exist.
    #[error("not found: {0}")]
    NotFound(String),
    /// A nearline object was read before a restore made it available.
    #[error("object {bucket}/{key} is in nearline storage: request a restore and wait for its completion event")]
    NotRestored {
        /// Bucket of the object.
        bucket: String,
        /// Key of the object.
        key: String,
    },
    /// A receipt handle no longer names a message in flight (deleted, or received again since).
    #[error("receipt handle {0} is stale: the message was deleted or received again")]
    StaleReceipt(String),
    /// A transient failure (throttling, busy database, network); the same call may succeed later.
    #[error("backend temporarily unavailable: {0}")]
    Unavailable(String),
    /// Any other backend failure.
    #[error("backend failure: {0}")]
    Backend(String),
}

impl PortError {
    /// Whether retrying the same call later may succeed.
    pub fn is_transient(&self) -> bool {
        matches!(self, PortError::Unavailable(_))
    }
}
