//! What happens to an order after its expansion: which waiting suborders start (within a global pool
//! and a per-user limit), how each ordered file is made available (where it lives decides), the user's
//! quota windows, and the status an order ends in. Pure rules; suborder-dispatch, storage-ready and
//! order-api apply them.

use crate::catalog::ProductFile;
use crate::order::OrderStatus;
use crate::storage::{LocationClass, Locations};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap};

/// A suborder's state. Only storage suborders (of stored files) take slots: one of the pool while
/// RUNNING, one of its owner's from RUNNING until FINISHED.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum SuborderState {
    /// Waiting for a slot.
    Waiting,
    /// Its storage job runs: files are being made available.
    Running,
    /// Every file is available or in error; the owner has files to download.
    Done,
    /// Every file is downloaded or in a final error: its slot is free.
    Finished,
}

impl SuborderState {
    /// The stored name.
    pub fn as_str(self) -> &'static str {
        match self {
            SuborderState::Waiting => "WAITING",
            SuborderState::Running => "RUNNING",
            SuborderState::Done => "DONE",
            SuborderState::Finished => "FINISHED",
        }
    }
}

/// The limits dispatch keeps: X and Y of the issue.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DispatchLimits {
    /// Most storage suborders RUNNING at once over every user (the pool).
    pub pool: i64,
    /// Most storage suborders per user RUNNING or DONE (finished but not downloaded); REGARDS's 2.
    pub per_user: i64,
}

impl Default for DispatchLimits {
    fn default() -> Self {
        Self { pool: 20, per_user: 2 }
    }
}

/// A suborder waiting for a slot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Candidate {
    /// Its owner.
    pub owner: String,
    /// Its bytes.
    pub bytes: u64,
    /// When its order was made (ms).
    pub created_ms: i64,
    /// A tie-breaker that names it (order id and number).
    pub id: String,
}

/// The waiting suborders to start, as indexes into `waiting`, in start order: while the pool has room,
/// the user with the fewest suborders counted against the per-user limit (`counted`) goes first, with
/// their smallest suborder, then the older; a user at the limit waits. So one user's huge order cannot
/// starve another user's small one, and a user's small suborders pass their own large ones.
pub fn pick(waiting: &[Candidate], counted: &HashMap<String, i64>, pool_free: i64, per_user: i64) -> Vec<usize> {
    // Each user's suborders, best first.
    let mut by_user: BTreeMap<&str, Vec<usize>> = BTreeMap::new();
    for (i, c) in waiting.iter().enumerate() {
        by_user.entry(&c.owner).or_default().push(i);
    }
    for list in by_user.values_mut() {
        list.sort_by(|&a, &b| {
            let (a, b) = (&waiting[a], &waiting[b]);
            (a.bytes, a.created_ms, &a.id).cmp(&(b.bytes, b.created_ms, &b.id))
        });
        list.reverse(); // popped from the end
    }
    let mut counts: HashMap<&str, i64> = by_user.keys().map(|u| (*u, counted.get(*u).copied().unwrap_or(0))).collect();
    let mut out = Vec::new();
    while (out.len() as i64) < pool_free {
        let best = by_user
            .iter()
            .filter(|(u, list)| !list.is_empty() && counts[*u] < per_user)
            .map(|(u, list)| {
                let c = &waiting[*list.last().unwrap_or(&0)];
                ((counts[*u], c.bytes, c.created_ms, c.id.clone()), *u)
            })
            .min();
        let Some((_, user)) = best else { break };
        let Some(i) = by_user.get_mut(user).and_then(Vec::pop) else { break };
        *counts.entry(user).or_default() += 1;
        out.push(i);
    }
    out
}

/// How an ordered file is made available.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// Stored in an online location: available at once.
    Online {
        /// The bucket.
        bucket: String,
        /// The object key.
        key: String,
    },
    /// Stored in a nearline location: an S3 restore first, announced on the storage-ready queue.
    Nearline {
        /// The bucket.
        bucket: String,
        /// The object key.
        key: String,
    },
    /// Held by an external storage service (a location Granary does not manage): REGARDS's
    /// FilesRestorationRequestEvent, answered by FileReferenceEvent AVAILABLE or AVAILABILITY_ERROR.
    Service {
        /// The service's storage name.
        storage: String,
    },
    /// Only referenced by URL: available at once.
    Reference,
}

/// Reads `s3://<bucket>/<key>`.
pub fn parse_s3_url(url: &str) -> Option<(String, String)> {
    let rest = url.strip_prefix("s3://")?;
    let (bucket, key) = rest.split_once('/')?;
    (!bucket.is_empty() && !key.is_empty()).then(|| (bucket.to_owned(), key.to_owned()))
}

/// The built-in processing: a suborder's files packed into one zip with a manifest.
pub const PACK_PROCESS: &str = "granary-pack";
/// The storage name of the outputs of processing (objects in the staging bucket).
pub const PROCESSED_STORAGE: &str = "granary-processed";

/// The processing a dataset selection asks for (`processDatasetDescription.processBusinessId`).
pub fn process_id(description: Option<&serde_json::Value>) -> Option<&str> {
    description?.get("processBusinessId")?.as_str().filter(|p| !p.trim().is_empty())
}

/// Where `file` is made available from.
pub fn source_of(file: &ProductFile, locations: &Locations) -> Source {
    if file.reference {
        return Source::Reference;
    }
    let storage = file.storage.clone().unwrap_or_default();
    if storage == PROCESSED_STORAGE
        && let Some((bucket, key)) = parse_s3_url(&file.url)
    {
        return Source::Online { bucket, key };
    }
    match (locations.get(&storage), parse_s3_url(&file.url)) {
        (Some(l), Some((bucket, key))) if l.class == LocationClass::Online => Source::Online { bucket, key },
        (Some(_), Some((bucket, key))) => Source::Nearline { bucket, key },
        _ => Source::Service { storage },
    }
}

/// The checksum naming a stored object: the last segment of its key.
pub fn checksum_of_key(key: &str) -> &str {
    key.rsplit('/').next().unwrap_or(key)
}

/// The quota window holding `now_ms`: periods of `period_hours` from the epoch. Consumption is counted
/// per window; a file given back is taken off the window it was counted in.
pub fn quota_window(now_ms: i64, period_hours: i64) -> i64 {
    let period = period_hours.max(1) * 3_600_000;
    now_ms.div_euclid(period) * period
}

/// When the counters of the quota window starting at `window_ms` may be purged (epoch seconds, the TTL
/// value): a day after the window ends. Nothing reads a past window; a file given back after the purge
/// writes a counter that is purged again.
pub fn quota_window_purge_at(window_ms: i64, period_hours: i64) -> i64 {
    (window_ms + period_hours.max(1) * 3_600_000).div_euclid(1000) + 86_400
}

/// The status an order ends in once every suborder's files are available or in error: DONE when none
/// failed, FAILED when none was made available, DONE_WITH_WARNING otherwise.
pub fn final_status(made_available: i64, in_error: i64) -> OrderStatus {
    match (made_available > 0, in_error > 0) {
        (_, false) => OrderStatus::Done,
        (false, true) => OrderStatus::Failed,
        (true, true) => OrderStatus::DoneWithWarning,
    }
}

/// Files available or done with, out of all, in percent.
pub fn percent_completed(files: i64, made_available: i64, in_error: i64) -> i64 {
    if files <= 0 { 100 } else { ((made_available + in_error).clamp(0, files) * 100) / files }
}

/// The public id of an ordered file: its order, suborder and index (`<order>.<suborder>.<index>`).
pub fn file_id(order_id: &str, suborder: u32, index: u64) -> String {
    format!("{order_id}.{suborder}.{index}")
}

/// Reads a file id: order, suborder, index.
pub fn parse_file_id(id: &str) -> Option<(&str, u32, u64)> {
    let mut parts = id.rsplitn(3, '.');
    let index = parts.next()?.parse().ok()?;
    let suborder = parts.next()?.parse().ok()?;
    let order = parts.next().filter(|o| !o.is_empty() && o.len() <= 64 && o.chars().all(|c| c.is_ascii_alphanumeric() || c == '-'))?;
    Some((order, suborder, index))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::StorageLocation;

    fn c(owner: &str, bytes: u64, created_ms: i64) -> Candidate {
        Candidate { owner: owner.into(), bytes, created_ms, id: format!("{owner}-{bytes}-{created_ms}") }
    }

    fn counted(pairs: &[(&str, i64)]) -> HashMap<String, i64> {
        pairs.iter().map(|(u, n)| ((*u).to_owned(), *n)).collect()
    }

    #[test]
    fn the_user_with_fewest_counted_suborders_goes_first_then_the_smaller_then_the_older() {
        let waiting = vec![c("alice", 10, 1), c("alice", 5, 2), c("bob", 100, 0), c("carol", 100, 5), c("carol", 100, 3)];
        // alice holds one slot already: bob and carol (none) first; between them the smaller, then older.
        let picked = pick(&waiting, &counted(&[("alice", 1)]), 10, 2);
        let names: Vec<(&str, u64, i64)> =
            picked.iter().map(|&i| (waiting[i].owner.as_str(), waiting[i].bytes, waiting[i].created_ms)).collect();
        assert_eq!(names, [("bob", 100, 0), ("carol", 100, 3), ("alice", 5, 2), ("carol", 100, 5)]);
    }

    #[test]
    fn the_pool_and_the_per_user_limit_bound_what_starts() {
        let waiting: Vec<Candidate> = (0..10).map(|i| c("alice", i, i as i64)).chain((0..3).map(|i| c("bob", 1000 + i, 0))).collect();
        assert_eq!(pick(&waiting, &counted(&[]), 3, 2).len(), 3);
        let all = pick(&waiting, &counted(&[]), 100, 2);
        assert_eq!(all.iter().filter(|&&i| waiting[i].owner == "alice").count(), 2);
        assert_eq!(all.iter().filter(|&&i| waiting[i].owner == "bob").count(), 2);
        assert!(pick(&waiting, &counted(&[("alice", 2), ("bob", 5)]), 100, 2).is_empty());
        assert!(pick(&waiting, &counted(&[]), 0, 2).is_empty());
        assert!(pick(&waiting, &counted(&[]), -3, 2).is_empty());
    }

    #[test]
    fn a_huge_order_does_not_starve_a_small_one() {
        // alice has 1,000 small suborders waiting, bob one large one: bob starts in the first round.
        let mut waiting: Vec<Candidate> = (0..1000).map(|i| c("alice", 1, i)).collect();
        waiting.push(c("bob", u64::MAX, 9999));
        let picked = pick(&waiting, &counted(&[]), 2, 2);
        assert!(picked.iter().any(|&i| waiting[i].owner == "bob"));
    }

    #[test]
    fn a_file_is_made_available_from_where_it_lives() {
        let mut locations = Locations::new();
        locations
            .insert("online".into(), StorageLocation { bucket: "storage".into(), prefix: "online".into(), class: LocationClass::Online });
        locations
            .insert("cold".into(), StorageLocation { bucket: "storage".into(), prefix: "nearline".into(), class: LocationClass::Nearline });
        let file = |storage: Option<&str>, url: &str, reference: bool| ProductFile {
            data_type: "RAWDATA".into(),
            filename: "f".into(),
            mime_type: String::new(),
            size: 1,
            checksum: "abc".into(),
            algorithm: "MD5".into(),
            online: false,
            reference,
            storage: storage.map(str::to_owned),
            url: url.into(),
        };
        assert_eq!(
            source_of(&file(Some("online"), "s3://storage/online/abc", false), &locations),
            Source::Online { bucket: "storage".into(), key: "online/abc".into() }
        );
        assert_eq!(
            source_of(&file(Some("cold"), "s3://storage/nearline/x/abc", false), &locations),
            Source::Nearline { bucket: "storage".into(), key: "nearline/x/abc".into() }
        );
        assert_eq!(source_of(&file(Some("tape"), "https://tape/abc", false), &locations), Source::Service { storage: "tape".into() });
        assert_eq!(source_of(&file(None, "https://x/abc", true), &locations), Source::Reference);
        assert_eq!(checksum_of_key("nearline/x/abc"), "abc");
        assert_eq!(parse_s3_url("s3://b"), None);
    }

    #[test]
    fn orders_end_as_their_files_did() {
        assert_eq!(final_status(3, 0), OrderStatus::Done);
        assert_eq!(final_status(0, 0), OrderStatus::Done);
        assert_eq!(final_status(2, 1), OrderStatus::DoneWithWarning);
        assert_eq!(final_status(0, 4), OrderStatus::Failed);
        assert_eq!(percent_completed(4, 1, 1), 50);
        assert_eq!(percent_completed(0, 0, 0), 100);
        assert_eq!(percent_completed(3, 5, 0), 100);
    }

    #[test]
    fn quota_windows_are_periods_from_the_epoch() {
        let h = 3_600_000;
        assert_eq!(quota_window(5 * h + 10, 24), 0);
        assert_eq!(quota_window(25 * h, 24), 24 * h);
        // Purged a day after the window's end, in seconds.
        assert_eq!(quota_window_purge_at(24 * h, 24), (48 * h) / 1000 + 86_400);
        assert_eq!(quota_window(25 * h, 0), 25 * h);
    }

    #[test]
    fn file_ids_name_order_suborder_and_index() {
        let order = "0190a1b2-c3d4-7e5f-8a9b-0c1d2e3f4a5b";
        let id = file_id(order, 3, 17);
        assert_eq!(parse_file_id(&id), Some((order, 3, 17)));
        assert_eq!(parse_file_id("x.1"), None);
        assert_eq!(parse_file_id("../x.1.2"), None);
        assert_eq!(parse_file_id(".1.2"), None);
        assert_eq!(parse_file_id("a.b.2"), None);
    }
}
