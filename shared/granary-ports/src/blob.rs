//! The blob store port: S3 as Granary uses it, with an online and a nearline class.

use crate::error::{PortError, PortResult};
use async_trait::async_trait;
use chrono::{DateTime, Utc};
use std::pin::Pin;
use std::time::Duration;
use tokio::io::AsyncRead;

/// A streamed object body.
pub type BlobReader = Pin<Box<dyn AsyncRead + Send>>;

/// Checks a bucket name against S3's rules.
pub fn validate_bucket(bucket: &str) -> PortResult<()> {
    // S3's general purpose bucket naming rules, all of them: a name S3 refuses would otherwise be a
    // 5xx at the first write instead of a 400 where it was given.
    let ok = (3..=63).contains(&bucket.len())
        && bucket.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.')
        && !bucket.starts_with(['-', '.'])
        && !bucket.ends_with(['-', '.'])
        && !bucket.contains("..")
        && bucket.parse::<std::net::Ipv4Addr>().is_err()
        && !["xn--", "sthree-", "amzn-s3-demo-"].iter().any(|p| bucket.starts_with(p))
        && !["-s3alias", "--ol-s3", ".mrap", "--x-s3", "--table-s3"].iter().any(|s| bucket.ends_with(s));
    if ok { Ok(()) } else { Err(PortError::Invalid(format!("bucket name {bucket:?} is not a valid S3 bucket name"))) }
}

/// Checks an object key: no empty, `.` or `..` segment, no leading `/`, no backslash or NUL, so a key
/// can never name a path outside its bucket on the filesystem, and behaves the same on S3.
pub fn validate_key(key: &str) -> PortResult<()> {
    let bad = key.is_empty()
        || key.len() > 1024
        || key.starts_with('/')
        || key.contains(['\\', '\0'])
        || key.split('/').any(|seg| seg.is_empty() || seg == "." || seg == "..");
    if bad {
        Err(PortError::Invalid(format!("object key {key:?} must be 1 to 1024 bytes of '/'-separated non-empty segments, none '.' or '..'")))
    } else {
        Ok(())
    }
}

/// Where an object lives, and so how it is read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StorageClass {
    /// Readable at once (S3 Standard).
    Online,
    /// Readable only after a restore (S3 Glacier classes).
    Nearline,
}

impl StorageClass {
    /// The name stored and shown for the class.
    pub fn as_str(self) -> &'static str {
        match self {
            StorageClass::Online => "ONLINE",
            StorageClass::Nearline => "NEARLINE",
        }
    }

    /// The class of a stored name.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "ONLINE" => Some(StorageClass::Online),
            "NEARLINE" => Some(StorageClass::Nearline),
            _ => None,
        }
    }
}

/// Restore state of an object.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RestoreStatus {
    /// Online: nothing to restore.
    NotNeeded,
    /// Nearline, no restore asked.
    NotRequested,
    /// A restore was asked and has not completed.
    InProgress,
    /// Restored and readable until the given time.
    Restored {
        /// When the restored copy expires.
        until: DateTime<Utc>,
    },
}

/// What a head returns.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlobMeta {
    /// Size in bytes.
    pub size: u64,
    /// Class.
    pub class: StorageClass,
    /// MD5 of the content, hex, as S3's ETag of a single-part upload.
    pub etag: String,
    /// Restore state.
    pub restore: RestoreStatus,
}

/// Object storage.
#[async_trait]
pub trait BlobStore: Send + Sync {
    /// Streams `body` into a new object, replacing any; the object appears whole or not at all.
    async fn put(&self, bucket: &str, key: &str, body: BlobReader, class: StorageClass) -> PortResult<BlobMeta>;

    /// Streams an object. A nearline object is refused until restored.
    async fn get(&self, bucket: &str, key: &str) -> PortResult<(BlobMeta, BlobReader)>;

    /// Metadata of an object, if it exists.
    async fn head(&self, bucket: &str, key: &str) -> PortResult<Option<BlobMeta>>;

    /// Copies an object into another (or the same) bucket and class.
    async fn copy(&self, from_bucket: &str, from_key: &str, to_bucket: &str, to_key: &str, class: StorageClass) -> PortResult<BlobMeta>;

    /// Deletes an object; deleting an absent object is not an error.
    async fn delete(&self, bucket: &str, key: &str) -> PortResult<()>;

    /// Asks a nearline object to be restored for `days`. Completion is announced by an event on the
    /// storage-ready queue, in S3's "Object Restore Completed" shape.
    async fn request_restore(&self, bucket: &str, key: &str, days: u32) -> PortResult<RestoreStatus>;

    /// A URL that reads the object without other credentials until `expires_in` has passed.
    async fn signed_get_url(&self, bucket: &str, key: &str, expires_in: Duration) -> PortResult<String>;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bucket_names_follow_every_s3_rule() {
        for good in ["storage", "order-staging", "a.b-c.d", "abc", "my-bucket-2026"] {
            assert!(validate_bucket(good).is_ok(), "{good}");
        }
        for bad in [
            "ab",
            "Storage",
            "under_score",
            "-lead",
            "trail-",
            "trail.",
            "two..dots",
            "192.168.1.1",
            "xn--bucket",
            "sthree-b",
            "b-s3alias",
            "b--ol-s3",
            "b.mrap",
            "b--x-s3",
            "../x",
            "bucket/key",
        ] {
            assert!(validate_bucket(bad).is_err(), "{bad}");
        }
        assert!(validate_bucket(&"a".repeat(64)).is_err());
    }
}
