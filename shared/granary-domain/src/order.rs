//! Orders as REGARDS's rs-order has them: statuses, file states, labels, the split of an order's files
//! into suborders (per dataset; stored and referenced files never mixed; at most 5,000 files and a
//! configured number of bytes per stored suborder, 1,000 files per referenced one) and the expiration
//! date. Pure rules; order-create applies them while it streams a basket's products.

use crate::catalog::ProductFile;
use chrono::{DateTime, Duration, Utc};
use serde::{Deserialize, Serialize};

/// Most files of a suborder of stored files (REGARDS's `MAX_BUCKET_FILE_COUNT`, not configurable).
pub const MAX_BUCKET_FILE_COUNT: u64 = 5000;
/// Most files of a suborder of referenced files (REGARDS's `MAX_EXTERNAL_BUCKET_FILE_COUNT`).
pub const MAX_EXTERNAL_BUCKET_FILE_COUNT: u64 = 1000;
/// Longest order label.
pub const MAX_LABEL_CHARS: usize = 50;

/// REGARDS's OrderStatus.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum OrderStatus {
    /// Being expanded into suborders.
    Pending,
    /// Suborders exist; files are being made available.
    Running,
    /// Paused by its owner.
    Paused,
    /// Past its expiration date.
    Expired,
    /// No file could be made available.
    Failed,
    /// Some files failed, at least one is available.
    DoneWithWarning,
    /// Every file is available.
    Done,
    /// Deleted by its owner.
    Deleted,
    /// Could not be expanded.
    Error,
}

impl OrderStatus {
    /// The name REGARDS gives it.
    pub fn as_str(self) -> &'static str {
        match self {
            OrderStatus::Pending => "PENDING",
            OrderStatus::Running => "RUNNING",
            OrderStatus::Paused => "PAUSED",
            OrderStatus::Expired => "EXPIRED",
            OrderStatus::Failed => "FAILED",
            OrderStatus::DoneWithWarning => "DONE_WITH_WARNING",
            OrderStatus::Done => "DONE",
            OrderStatus::Deleted => "DELETED",
            OrderStatus::Error => "ERROR",
        }
    }

    /// The status named `s`.
    pub fn parse(s: &str) -> Option<Self> {
        serde_json::from_value(serde_json::Value::from(s)).ok()
    }
}

/// REGARDS's FileState of an ordered file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum FileState {
    /// Waiting to be made available.
    Pending,
    /// Ready to download.
    Available,
    /// Downloaded (final).
    Downloaded,
    /// The download failed (final).
    DownloadError,
    /// Processing failed (final).
    ProcessingError,
    /// Could not be made available (final).
    Error,
}

impl FileState {
    /// The name REGARDS gives it.
    pub fn as_str(self) -> &'static str {
        match self {
            FileState::Pending => "PENDING",
            FileState::Available => "AVAILABLE",
            FileState::Downloaded => "DOWNLOADED",
            FileState::DownloadError => "DOWNLOAD_ERROR",
            FileState::ProcessingError => "PROCESSING_ERROR",
            FileState::Error => "ERROR",
        }
    }
}

/// The actions REGARDS offers on an order in `status` (its HATEOAS links): `pause`, `resume`,
/// `delete`, `remove` (admins), `restart`, `retry`, `download` (with files available).
pub fn allowed_actions(status: OrderStatus, available_files: u64, admin: bool) -> Vec<&'static str> {
    use OrderStatus::*;
    let mut out = Vec::new();
    if matches!(status, Pending | Running) {
        out.push("pause");
    }
    if status == Paused {
        out.push("resume");
    }
    if matches!(status, Done | DoneWithWarning | Paused | Expired | Failed) {
        out.push("delete");
    }
    if admin && status == Deleted {
        out.push("remove");
    }
    if matches!(status, Done | DoneWithWarning | Failed) {
        out.push("restart");
    }
    if matches!(status, DoneWithWarning | Failed) {
        out.push("retry");
    }
    if status != Deleted && available_files > 0 {
        out.push("download");
    }
    out
}

/// An action on an order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OrderAction {
    /// Stop starting suborders.
    Pause,
    /// Start them again.
    Resume,
    /// Soft delete: files released, quota given back.
    Delete,
    /// Hard delete (admins, once DELETED).
    Remove,
    /// A new order from the same basket.
    Restart,
    /// Files in error go back to PENDING in new suborders.
    Retry,
}

/// Whether `action` is allowed on an order in `status`, or REGARDS's reason why not (the 409's text).
pub fn check_action(action: OrderAction, status: OrderStatus, admin: bool, has_processing: bool) -> Result<(), String> {
    use OrderStatus::*;
    let (ok, reason) = match action {
        OrderAction::Pause => (matches!(status, Pending | Running), "ORDER_MUST_BE_PENDING_OR_RUNNING"),
        OrderAction::Resume => (status == Paused, "ORDER_MUST_BE_PAUSED"),
        OrderAction::Delete => {
            (matches!(status, Done | DoneWithWarning | Paused | Expired | Failed), "ORDER_MUST_BE_DONE_OR_PAUSED_OR_EXPIRED_OR_FAILED")
        }
        OrderAction::Remove if !admin => (false, "ONLY_ADMINS_REMOVE_ORDERS"),
        OrderAction::Remove => (status == Deleted, "ORDER_MUST_BE_DELETED"),
        OrderAction::Restart => (matches!(status, Done | DoneWithWarning | Failed), "ORDER_MUST_BE_DONE_OR_FAILED"),
        OrderAction::Retry if has_processing => (false, "ORDER_HAS_PROCESSING"),
        OrderAction::Retry => (matches!(status, DoneWithWarning | Failed), "ORDER_MUST_BE_DONE_WITH_WARNING_OR_FAILED"),
    };
    if ok { Ok(()) } else { Err(format!("the order is {}: {reason}", status.as_str())) }
}

/// Checks an order label: at most 50 characters (REGARDS's TOO_MANY_CHARACTERS_IN_LABEL), not blank.
pub fn check_label(label: &str) -> Result<(), String> {
    if label.trim().is_empty() {
        return Err("label: must not be blank".into());
    }
    let n = label.chars().count();
    if n > MAX_LABEL_CHARS {
        return Err(format!("label: {n} characters; at most {MAX_LABEL_CHARS} (TOO_MANY_CHARACTERS_IN_LABEL)"));
    }
    Ok(())
}

/// The label of an order created at `now` without one.
pub fn default_label(now: DateTime<Utc>) -> String {
    format!("Order of {}", now.format("%Y-%m-%d %H:%M:%S%.3f"))
}

/// Durations of an order (REGARDS's order settings).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OrderSettings {
    /// Most bytes of a suborder of stored files (REGARDS: 100 MiB).
    pub suborder_max_bytes: u64,
    /// How long each suborder's files stay available, in hours (REGARDS: 240).
    pub suborder_duration_hours: i64,
    /// The longest an order lives, in hours (REGARDS: 168).
    pub expiration_max_hours: i64,
}

impl Default for OrderSettings {
    fn default() -> Self {
        Self { suborder_max_bytes: 100 * 1024 * 1024, suborder_duration_hours: 240, expiration_max_hours: 168 }
    }
}

impl OrderSettings {
    /// The expiration date of an order made at `now` with `internal` suborders of stored files: the
    /// suborder duration when there are none, else that duration times (`internal` + 2), capped by the
    /// longest an order lives.
    pub fn expiration(&self, now: DateTime<Utc>, internal: u64) -> DateTime<Utc> {
        let hours =
            if internal == 0 { self.suborder_duration_hours } else { self.suborder_duration_hours.saturating_mul(internal as i64 + 2) };
        now + Duration::hours(hours.min(self.expiration_max_hours))
    }
}

/// How much a user may retrieve of stored files per rolling period (REGARDS's DownloadQuotaLimits;
/// -1 is unlimited, as in REGARDS).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Quota {
    /// Most stored files made available per period; -1 for no limit.
    pub max_files: i64,
    /// Most bytes of stored files made available per period; -1 for no limit.
    pub max_bytes: i64,
    /// The rolling period, in hours.
    pub period_hours: i64,
}

impl Quota {
    /// No limit, over a day.
    pub const UNLIMITED: Quota = Quota { max_files: -1, max_bytes: -1, period_hours: 24 };

    /// Checks the limits, naming each problem.
    pub fn check(&self) -> Result<(), Vec<String>> {
        let mut errors = Vec::new();
        for (name, v) in [("maxFiles", self.max_files), ("maxBytes", self.max_bytes)] {
            if v < -1 {
                errors.push(format!("{name}: {v} is neither -1 (no limit) nor a count"));
            }
        }
        if !(1..=24 * 366).contains(&self.period_hours) {
            errors.push(format!("periodHours: {} must be 1 to 8784 (a year)", self.period_hours));
        }
        if errors.is_empty() { Ok(()) } else { Err(errors) }
    }
}

/// Stored files (made available by a storage service) or referenced ones (available at once).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum SuborderKind {
    /// Files Granary stores.
    Internal,
    /// Files only referenced by URL.
    External,
}

/// A suborder being filled.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Bucket {
    /// Its number in the order.
    pub number: u32,
    /// Files in it.
    pub files: u64,
    /// Their bytes.
    pub bytes: u64,
}

/// A suborder closed: no file will join it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ClosedSuborder {
    /// Stored or referenced files.
    pub kind: SuborderKind,
    /// Its number and content.
    pub bucket: Bucket,
}

/// Where a file went.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Placement {
    /// The suborder's number.
    pub suborder: u32,
    /// The file's index in it.
    pub index: u64,
    /// Whether the file alone is larger than a suborder may be (it then has a suborder of its own).
    pub oversized: bool,
    /// Suborders closed by placing it (before it, or its own when oversized).
    pub closed: Vec<ClosedSuborder>,
}

/// Splits files into suborders as they come, one dataset at a time; its state is small and
/// serializable, so an expansion can checkpoint it and resume.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Splitter {
    /// The number the next suborder gets.
    pub next_number: u32,
    /// The open suborder of stored files.
    pub internal: Option<Bucket>,
    /// The open suborder of referenced files.
    pub external: Option<Bucket>,
    /// Most bytes of a suborder of stored files.
    pub max_bytes: u64,
}

impl Splitter {
    /// A splitter whose first suborder is number 1.
    pub fn new(max_bytes: u64) -> Self {
        Self { next_number: 1, internal: None, external: None, max_bytes }
    }

    fn open(&mut self) -> Bucket {
        let b = Bucket { number: self.next_number, files: 0, bytes: 0 };
        self.next_number += 1;
        b
    }

    /// Places `file` in a suborder, closing the open one first when the file would pass its limits.
    pub fn place(&mut self, file: &ProductFile) -> Placement {
        let mut closed = Vec::new();
        if file.reference {
            if let Some(b) = self.external.filter(|b| b.files + 1 > MAX_EXTERNAL_BUCKET_FILE_COUNT) {
                closed.push(ClosedSuborder { kind: SuborderKind::External, bucket: b });
                self.external = None;
            }
            let mut b = match self.external {
                Some(b) => b,
                None => self.open(),
            };
            let index = b.files;
            b.files += 1;
            b.bytes = b.bytes.saturating_add(file.size);
            self.external = Some(b);
            return Placement { suborder: b.number, index, oversized: false, closed };
        }
        if file.size > self.max_bytes {
            // Alone in a suborder of its own, closed at once; the open one stays open.
            let mut own = self.open();
            own.files = 1;
            own.bytes = file.size;
            closed.push(ClosedSuborder { kind: SuborderKind::Internal, bucket: own });
            return Placement { suborder: own.number, index: 0, oversized: true, closed };
        }
        if let Some(b) = self.internal.filter(|b| b.files + 1 > MAX_BUCKET_FILE_COUNT || b.bytes.saturating_add(file.size) > self.max_bytes)
        {
            closed.push(ClosedSuborder { kind: SuborderKind::Internal, bucket: b });
            self.internal = None;
        }
        let mut b = match self.internal {
            Some(b) => b,
            None => self.open(),
        };
        let index = b.files;
        b.files += 1;
        b.bytes = b.bytes.saturating_add(file.size);
        self.internal = Some(b);
        Placement { suborder: b.number, index, oversized: false, closed }
    }

    /// Closes the open suborders (at the end of a dataset: suborders never mix datasets).
    pub fn finish(&mut self) -> Vec<ClosedSuborder> {
        let mut closed = Vec::new();
        if let Some(b) = self.internal.take() {
            closed.push(ClosedSuborder { kind: SuborderKind::Internal, bucket: b });
        }
        if let Some(b) = self.external.take() {
            closed.push(ClosedSuborder { kind: SuborderKind::External, bucket: b });
        }
        closed
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(size: u64, reference: bool) -> ProductFile {
        ProductFile {
            data_type: "RAWDATA".into(),
            filename: "f".into(),
            mime_type: String::new(),
            size,
            checksum: String::new(),
            algorithm: String::new(),
            online: reference,
            reference,
            storage: None,
            url: String::new(),
        }
    }

    #[test]
    fn stored_suborders_close_before_a_file_would_pass_the_byte_or_file_limit() {
        let mut s = Splitter::new(100);
        assert_eq!(s.place(&file(60, false)).suborder, 1);
        assert_eq!(s.place(&file(40, false)), Placement { suborder: 1, index: 1, oversized: false, closed: vec![] });
        let p = s.place(&file(1, false));
        assert_eq!((p.suborder, p.index), (2, 0));
        assert_eq!(p.closed, vec![ClosedSuborder { kind: SuborderKind::Internal, bucket: Bucket { number: 1, files: 2, bytes: 100 } }]);
        let mut s = Splitter::new(u64::MAX);
        let mut closed = vec![];
        for _ in 0..(2 * MAX_BUCKET_FILE_COUNT + 1) {
            closed.extend(s.place(&file(0, false)).closed);
        }
        closed.extend(s.finish());
        let sizes: Vec<u64> = closed.iter().map(|c| c.bucket.files).collect();
        assert_eq!(sizes, [MAX_BUCKET_FILE_COUNT, MAX_BUCKET_FILE_COUNT, 1]);
    }

    #[test]
    fn a_file_larger_than_a_suborder_gets_its_own_and_references_never_mix_with_stored_files() {
        let mut s = Splitter::new(100);
        s.place(&file(10, false));
        let big = s.place(&file(500, false));
        assert!(big.oversized);
        assert_eq!((big.suborder, big.index), (2, 0));
        assert_eq!(big.closed, vec![ClosedSuborder { kind: SuborderKind::Internal, bucket: Bucket { number: 2, files: 1, bytes: 500 } }]);
        // The open suborder stays open for the next small file.
        assert_eq!(s.place(&file(10, false)).suborder, 1);
        let r = s.place(&file(1 << 40, true));
        assert_eq!((r.suborder, r.oversized), (3, false));
        let mut closed = vec![];
        for _ in 0..MAX_EXTERNAL_BUCKET_FILE_COUNT {
            closed.extend(s.place(&file(1, true)).closed);
        }
        assert_eq!(closed.len(), 1);
        assert_eq!((closed[0].kind, closed[0].bucket.files), (SuborderKind::External, MAX_EXTERNAL_BUCKET_FILE_COUNT));
        let rest = s.finish();
        assert_eq!(
            rest.iter().map(|c| (c.kind, c.bucket.number, c.bucket.files)).collect::<Vec<_>>(),
            [(SuborderKind::Internal, 1, 2), (SuborderKind::External, 4, 1)]
        );
        assert_eq!(s.next_number, 5);
    }

    #[test]
    fn expiration_is_the_suborder_duration_times_internal_suborders_plus_two_capped() {
        let now: DateTime<Utc> = "2026-01-01T00:00:00Z".parse().unwrap();
        let s = OrderSettings { suborder_max_bytes: 1, suborder_duration_hours: 2, expiration_max_hours: 100 };
        assert_eq!(s.expiration(now, 0), now + Duration::hours(2));
        assert_eq!(s.expiration(now, 3), now + Duration::hours(10));
        assert_eq!(s.expiration(now, 1000), now + Duration::hours(100));
    }

    #[test]
    fn actions_follow_regards_preconditions() {
        assert_eq!(allowed_actions(OrderStatus::Running, 3, false), ["pause", "download"]);
        assert_eq!(allowed_actions(OrderStatus::Pending, 0, false), ["pause"]);
        assert_eq!(allowed_actions(OrderStatus::Paused, 0, false), ["resume", "delete"]);
        assert_eq!(allowed_actions(OrderStatus::DoneWithWarning, 1, false), ["delete", "restart", "retry", "download"]);
        assert_eq!(allowed_actions(OrderStatus::Done, 0, false), ["delete", "restart"]);
        assert_eq!(allowed_actions(OrderStatus::Deleted, 5, true), ["remove"]);
        assert!(allowed_actions(OrderStatus::Deleted, 5, false).is_empty());
        assert_eq!(allowed_actions(OrderStatus::Expired, 0, false), ["delete"]);
    }

    #[test]
    fn actions_are_checked_with_regards_reasons_and_agree_with_the_links() {
        use OrderAction::*;
        let all = [
            OrderStatus::Pending,
            OrderStatus::Running,
            OrderStatus::Paused,
            OrderStatus::Expired,
            OrderStatus::Failed,
            OrderStatus::DoneWithWarning,
            OrderStatus::Done,
            OrderStatus::Deleted,
            OrderStatus::Error,
        ];
        for status in all {
            for (action, rel) in
                [(Pause, "pause"), (Resume, "resume"), (Delete, "delete"), (Remove, "remove"), (Restart, "restart"), (Retry, "retry")]
            {
                assert_eq!(
                    check_action(action, status, true, false).is_ok(),
                    allowed_actions(status, 0, true).contains(&rel),
                    "{action:?} in {status:?}"
                );
            }
        }
        assert!(check_action(Pause, OrderStatus::Done, false, false).unwrap_err().contains("ORDER_MUST_BE_PENDING_OR_RUNNING"));
        assert!(check_action(Retry, OrderStatus::Failed, false, true).unwrap_err().contains("ORDER_HAS_PROCESSING"));
        assert!(check_action(Remove, OrderStatus::Deleted, false, false).is_err());
    }

    #[test]
    fn quotas_are_minus_one_or_counts_over_a_period() {
        assert!(Quota::UNLIMITED.check().is_ok());
        assert!(Quota { max_files: 10, max_bytes: 0, period_hours: 1 }.check().is_ok());
        assert_eq!(Quota { max_files: -2, max_bytes: -5, period_hours: 0 }.check().unwrap_err().len(), 3);
    }

    #[test]
    fn labels_are_fifty_characters_at_most() {
        assert!(check_label(&"é".repeat(50)).is_ok());
        assert!(check_label(&"a".repeat(51)).unwrap_err().contains("TOO_MANY_CHARACTERS_IN_LABEL"));
        assert!(check_label("  ").is_err());
        assert!(check_label(&default_label("2026-11-23T10:00:00Z".parse().unwrap())).is_ok());
        assert_eq!(OrderStatus::parse("DONE_WITH_WARNING"), Some(OrderStatus::DoneWithWarning));
        assert_eq!(OrderStatus::DoneWithWarning.as_str(), "DONE_WITH_WARNING");
    }
}
