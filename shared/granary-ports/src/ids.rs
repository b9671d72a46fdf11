//! Identifiers, injectable so tests can pin them.

use std::sync::atomic::{AtomicU64, Ordering};
use uuid::Uuid;

/// A source of new unique ids.
pub trait IdSource: Send + Sync {
    /// A new id, never returned before by this source.
    fn new_id(&self) -> Uuid;
}

/// Time-ordered random ids (UUID v7): unique across processes, and sorting by id sorts by creation.
#[derive(Debug, Default, Clone, Copy)]
pub struct RandomIds;

impl IdSource for RandomIds {
    fn new_id(&self) -> Uuid {
        Uuid::now_v7()
    }
}

/// Predictable ids for tests: `00000000-0000-0000-0000-000000000001`, then `...002`, and so on.
#[derive(Debug, Default)]
pub struct SequentialIds {
    next: AtomicU64,
}

impl IdSource for SequentialIds {
    fn new_id(&self) -> Uuid {
        Uuid::from_u128(u128::from(self.next.fetch_add(1, Ordering::Relaxed) + 1))
    }
}
