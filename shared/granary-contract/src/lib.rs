//! The contract every implementation of Granary's ports must keep, as test cases written against the
//! port traits only. An adapter's test suite supplies a [`Harness`] and instantiates every case with
//! [`contract_tests!`], so the embedded and the AWS adapters run the very same assertions.
//!
//! Races use separate connections ([`Harness::connect`] returns a new one each time); time-based cases
//! call [`Harness::advance`], which moves an injectable clock where the backend has one.

pub mod cases;

use async_trait::async_trait;
use granary_ports::{Backend, IndexSpec, KeyAttr, QueueSpec, Resources, TableSpec};
use std::time::Duration;

/// The table the cases write to.
pub const TABLE: &str = "contract";
/// Its sparse index on (`status`, `createdAt`).
pub const BY_STATUS: &str = "byStatus";
/// A queue with the harness's visibility timeout that redrives to [`DLQ`] after [`MAX_RECEIVES`] receives.
pub const WORK: &str = "contract-work";
/// The dead-letter queue of [`WORK`].
pub const DLQ: &str = "contract-work-dlq";
/// Receives after which a message of [`WORK`] goes to [`DLQ`].
pub const MAX_RECEIVES: u32 = 3;
/// The bucket the cases write to.
pub const BUCKET: &str = "granary-contract";

/// The resources the cases need, [`WORK`] hiding received messages for `visibility`.
pub fn resources(visibility: Duration) -> Resources {
    Resources {
        tables: vec![TableSpec {
            name: TABLE.into(),
            indexes: vec![IndexSpec::new(BY_STATUS, KeyAttr::string("status"), Some(KeyAttr::number("createdAt")))],
            ttl_attr: None,
        }],
        queues: vec![QueueSpec::new(WORK).with_visibility(visibility).with_dlq(DLQ, MAX_RECEIVES), QueueSpec::new(DLQ)],
        buckets: vec![BUCKET.into()],
    }
}

/// What a backend's test suite provides to run the contract.
#[async_trait]
pub trait Harness: Send + Sync {
    /// A new connection (client, pool) to the same backend state.
    async fn connect(&self) -> Backend;
    /// Moves the backend's time forward by `by`.
    async fn advance(&self, by: Duration);
    /// How long a nearline restore takes on this backend.
    fn restore_delay(&self) -> Duration;
    /// The visibility timeout the harness gave [`WORK`]: long with a movable clock, short where time is
    /// real.
    fn visibility(&self) -> Duration;
    /// The delay the delayed-message case uses (at most 15 minutes).
    fn delay(&self) -> Duration;
    /// Whether conditional writes hold when they race. DynamoDB and the embedded backend: yes. moto
    /// applies a condition and its write apart under concurrent requests (two racing increments both
    /// pass a guard), so on moto the race cases run their writers one after the other and check the
    /// conditions' meaning only.
    fn atomic_under_concurrency(&self) -> bool {
        true
    }
}

/// Instantiates every contract case as a `#[tokio::test]`, each with a fresh harness from `$make`
/// (an async expression).
#[macro_export]
macro_rules! contract_tests {
    ($make:expr) => {
        $crate::contract_tests!(@cases $make;
            put_if_absent, put_with_condition_on_attributes, update_if_condition, update_creates_when_allowed,
            not_equal_holds_on_absent_attribute, conditional_delete, transaction_all_or_nothing, transaction_outbox_event_sent_or_kept,
            transaction_rules, query_partition_sorted_and_paged, query_all_answers_each_query_in_order, query_sparse_index_paged,
            conditional_put_race_has_one_winner, guarded_counter_never_passes_limit, counter_gives_distinct_values,
            queue_send_receive_delete, queue_batch_limits, unacknowledged_message_comes_back,
            redrive_to_dead_letter_queue, delayed_message_invisible_until_due, change_visibility_hides_again,
            blob_put_get_head_copy_delete, nearline_get_refused_until_restored, signed_url_names_object);
    };
    (@cases $make:expr; $($case:ident),* $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn $case() {
                let harness = $make.await;
                $crate::cases::$case(&harness).await;
            }
        )*
    };
}
