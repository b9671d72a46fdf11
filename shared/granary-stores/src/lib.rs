//! Granary's domain stores: features, feature requests and the event outbox, written over the generic
//! ports. Each store is a capability (what a function may do), so a function links only the stores it
//! uses, which maps one-to-one onto its IAM policy.

pub mod archive;
pub mod baskets;
pub mod catalog;
pub mod dissemination;
pub mod features;
pub mod fulfilment;
pub mod lifecycle;
pub mod locations;
pub mod models;
pub mod orders;
pub mod outbox;
pub mod owners;
pub mod recovery;
pub mod requests;
pub mod selection;
pub mod sessions;
pub mod storage;
pub mod zips;

use granary_ports::{Backend, Item, PortError, Query};
use thiserror::Error;

/// The TTL attribute of the requests and orders tables (epoch seconds): an item carrying it is deleted
/// once that time has passed (by DynamoDB's TTL in the cloud, by granary-local's purge on the embedded
/// backend). It is set on finished requests and on past quota windows.
pub const PURGE_AT: &str = "purgeAt";

/// What a store operation can fail with.
#[derive(Debug, Error)]
pub enum StoreError {
    /// Every version 1..=999 of the providerId is taken.
    #[error("providerId {0:?} already has version 999, the last one allowed")]
    VersionsExhausted(String),
    /// A creation supplied a version that is not after the latest one.
    #[error("version {supplied} is not after the latest version {latest} of providerId {provider_id:?}")]
    VersionNotAfterLatest {
        /// The providerId.
        provider_id: String,
        /// The supplied version.
        supplied: u32,
        /// The latest stored version.
        latest: u32,
    },
    /// Writers kept taking the next version first; the caller may retry the whole request later.
    #[error("could not take a version for providerId {0:?} after {1} attempts under contention")]
    Contention(String, u32),
    /// A stored item is not what this version of Granary writes.
    #[error("stored item {0} is malformed: {1}")]
    Malformed(String, String),
    /// The port failed.
    #[error(transparent)]
    Port(#[from] PortError),
}

impl StoreError {
    /// Whether retrying later may succeed.
    pub fn is_transient(&self) -> bool {
        match self {
            StoreError::Contention(..) => true,
            StoreError::Port(e) => e.is_transient(),
            _ => false,
        }
    }
}

/// The guard of a write over a feature version read at `revision` (0: never patched): the revision is
/// still that one.
pub(crate) fn revision_guard(revision: i64) -> granary_ports::Cond {
    if revision == 0 { granary_ports::Cond::absent("revision") } else { granary_ports::Cond::eq("revision", revision) }
}

/// Every item `query` matches, reading page after page.
pub(crate) async fn all_items(backend: &Backend, mut query: Query) -> Result<Vec<Item>, StoreError> {
    let mut items = Vec::new();
    loop {
        let page = backend.table.query(query.clone()).await?;
        items.extend(page.items);
        match page.next {
            Some(c) => query.after = Some(c),
            None => return Ok(items),
        }
    }
}
