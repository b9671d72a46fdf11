//! The blob store port on the filesystem: objects under `<data dir>/blobs/<bucket>/<key>`, their
//! metadata (class, size, ETag, restore state) in SQLite, written after the file is in place so an
//! object appears whole or not at all.

use crate::db::{Db, map_sql};
use async_trait::async_trait;
use granary_ports::blob::{validate_bucket, validate_key};
use granary_ports::{
    BlobMeta, BlobReader, BlobStore, Clock, IdSource, OutgoingMessage, PortError, PortResult, Queue, RestoreStatus, StorageClass,
};
use hmac::{Hmac, Mac};
use md5::{Digest, Md5};
use sha2::Sha256;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Why a signed URL is refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SignedUrlError {
    /// The URL's time has passed.
    #[error("the signed URL has expired")]
    Expired,
    /// The signature does not match the bucket, key and expiry (tampered, or from another data directory).
    #[error("the signed URL's signature does not match")]
    BadSignature,
}

/// Blobs on the filesystem.
pub struct EmbeddedBlobs {
    db: Arc<Db>,
    root: PathBuf,
    clock: Arc<dyn Clock>,
    ids: Arc<dyn IdSource>,
    restore_delay: Duration,
    base_url: String,
    signing_key: Vec<u8>,
}

/// Percent-encodes everything but unreserved characters and `/`.
fn encode_path(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~/".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

fn io_err(what: &str, path: &Path, e: std::io::Error) -> PortError {
    PortError::Backend(format!("{what} {}: {e}", path.display()))
}

fn load_or_create_key(path: &Path) -> PortResult<Vec<u8>> {
    if let Ok(k) = std::fs::read(path)
        && k.len() == 32
    {
        return Ok(k);
    }
    std::fs::create_dir_all(path.parent().unwrap_or(Path::new("."))).map_err(|e| io_err("cannot create", path, e))?;
    let key: [u8; 32] = rand::random();
    let tmp = path.with_extension(format!("tmp{}", std::process::id()));
    std::fs::write(&tmp, key).map_err(|e| io_err("cannot write", &tmp, e))?;
    // Another process may have created the key meanwhile: the first one in place wins, and all use it.
    match std::fs::hard_link(&tmp, path) {
        Ok(()) | Err(_) => {
            let _ = std::fs::remove_file(&tmp);
        }
    }
    std::fs::read(path).map_err(|e| io_err("cannot read", path, e))
}

/// How long an upload's temporary file may go unwritten before it counts as abandoned (its writer was
/// killed): a live upload writes it continuously.
const ABANDONED_AFTER: Duration = Duration::from_secs(15 * 60);

/// Removes the temporary files of uploads whose writer died (another process may share the data
/// directory, so only files untouched for [`ABANDONED_AFTER`]).
fn remove_abandoned_uploads(tmp: &Path) {
    let Ok(entries) = std::fs::read_dir(tmp) else { return };
    for entry in entries.flatten() {
        let stale =
            entry.metadata().and_then(|m| m.modified()).ok().and_then(|t| t.elapsed().ok()).is_some_and(|age| age > ABANDONED_AFTER);
        if stale && std::fs::remove_file(entry.path()).is_ok() {
            tracing::info!(path = %entry.path().display(), "removed an abandoned upload");
        }
    }
}

type Row = (String, i64, String, Option<i64>, Option<i64>);

impl EmbeddedBlobs {
    pub(crate) fn open(
        db: Arc<Db>,
        data_dir: &Path,
        clock: Arc<dyn Clock>,
        ids: Arc<dyn IdSource>,
        restore_delay: Duration,
        base_url: String,
    ) -> PortResult<Self> {
        let root = data_dir.join("blobs");
        std::fs::create_dir_all(root.join(".tmp")).map_err(|e| io_err("cannot create", &root, e))?;
        remove_abandoned_uploads(&root.join(".tmp"));
        let signing_key = load_or_create_key(&data_dir.join("keys").join("blob-url.key"))?;
        Ok(Self { db, root, clock, ids, restore_delay, base_url: base_url.trim_end_matches('/').to_owned(), signing_key })
    }

    fn object_path(&self, bucket: &str, key: &str) -> PortResult<PathBuf> {
        validate_bucket(bucket)?;
        validate_key(key)?;
        Ok(self.root.join(bucket).join(key))
    }

    fn signature(&self, bucket: &str, key: &str, expires: i64) -> Hmac<Sha256> {
        let mut mac = Hmac::<Sha256>::new_from_slice(&self.signing_key).unwrap_or_else(|_| unreachable!("HMAC takes any key length"));
        mac.update(format!("GET\n{bucket}\n{key}\n{expires}").as_bytes());
        mac
    }

    /// Checks a signed URL's parts: `expires` (epoch seconds) and `signature` (hex) for `bucket`/`key`.
    pub fn verify_signed(&self, bucket: &str, key: &str, expires: i64, signature: &str) -> Result<(), SignedUrlError> {
        let sig = hex::decode(signature).map_err(|_| SignedUrlError::BadSignature)?;
        self.signature(bucket, key, expires).verify_slice(&sig).map_err(|_| SignedUrlError::BadSignature)?;
        if self.clock.now().timestamp() >= expires {
            return Err(SignedUrlError::Expired);
        }
        Ok(())
    }

    async fn row(&self, bucket: &str, key: &str) -> PortResult<Option<Row>> {
        let (b, k) = (bucket.to_owned(), key.to_owned());
        self.db
            .run(move |conn| {
                conn.prepare_cached("SELECT class, size, etag, restore_ready_at, restore_until FROM blobs WHERE bucket = ?1 AND key = ?2")
                    .map_err(map_sql)?
                    .query_row([&b, &k], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?)))
                    .map(Some)
                    .or_else(|e| if e == rusqlite::Error::QueryReturnedNoRows { Ok(None) } else { Err(e) })
                    .map_err(map_sql)
            })
            .await
    }

    fn meta(&self, row: &Row) -> BlobMeta {
        let (class, size, etag, ready_at, until) = row;
        let class = StorageClass::parse(class).unwrap_or(StorageClass::Online);
        let now = self.clock.now_ms();
        let restore = match (class, ready_at, until) {
            (StorageClass::Online, ..) => RestoreStatus::NotNeeded,
            (StorageClass::Nearline, Some(ready), Some(until)) if *ready <= now && now < *until => {
                RestoreStatus::Restored { until: chrono::DateTime::from_timestamp_millis(*until).unwrap_or_default() }
            }
            (StorageClass::Nearline, Some(_), Some(until)) if now < *until => RestoreStatus::InProgress,
            (StorageClass::Nearline, ..) => RestoreStatus::NotRequested,
        };
        BlobMeta { size: u64::try_from(*size).unwrap_or(0), class, etag: etag.clone(), restore }
    }

    /// Streams `body` into a temporary file, hashing it, then moves it into place.
    async fn write_object(&self, path: &Path, mut body: BlobReader) -> PortResult<(u64, String)> {
        let tmp = self.root.join(".tmp").join(self.ids.new_id().to_string());
        let mut file = tokio::fs::File::create(&tmp).await.map_err(|e| io_err("cannot create", &tmp, e))?;
        let mut md5 = Md5::new();
        let mut size = 0u64;
        let mut buf = vec![0u8; 64 * 1024];
        let result: Result<(), std::io::Error> = async {
            loop {
                let n = body.read(&mut buf).await?;
                if n == 0 {
                    break;
                }
                md5.update(&buf[..n]);
                size += n as u64;
                file.write_all(&buf[..n]).await?;
            }
            file.flush().await?;
            file.sync_data().await
        }
        .await;
        drop(file);
        if let Err(e) = result {
            let _ = tokio::fs::remove_file(&tmp).await;
            return Err(io_err("cannot write", &tmp, e));
        }
        if let Some(parent) = path.parent() {
            tokio::fs::create_dir_all(parent).await.map_err(|e| io_err("cannot create", parent, e))?;
        }
        tokio::fs::rename(&tmp, path).await.map_err(|e| io_err("cannot move into", path, e))?;
        Ok((size, hex::encode(md5.finalize())))
    }

    async fn record(&self, bucket: &str, key: &str, class: StorageClass, size: u64, etag: &str) -> PortResult<()> {
        let (b, k, c, e) = (bucket.to_owned(), key.to_owned(), class.as_str(), etag.to_owned());
        self.db
            .write(move |conn| {
                conn.prepare_cached(
                    "INSERT INTO blobs (bucket, key, class, size, etag) VALUES (?1, ?2, ?3, ?4, ?5)
                     ON CONFLICT (bucket, key) DO UPDATE SET class = excluded.class, size = excluded.size, etag = excluded.etag,
                       restore_ready_at = NULL, restore_until = NULL, restore_announced = 0",
                )
                .map_err(map_sql)?
                .execute(rusqlite::params![b, k, c, size as i64, e])
                .map_err(map_sql)
                .map(drop)
            })
            .await
    }
}

#[async_trait]
impl BlobStore for EmbeddedBlobs {
    async fn put(&self, bucket: &str, key: &str, body: BlobReader, class: StorageClass) -> PortResult<BlobMeta> {
        let path = self.object_path(bucket, key)?;
        let (size, etag) = self.write_object(&path, body).await?;
        self.record(bucket, key, class, size, &etag).await?;
        let restore = if class == StorageClass::Online { RestoreStatus::NotNeeded } else { RestoreStatus::NotRequested };
        Ok(BlobMeta { size, class, etag, restore })
    }

    async fn get(&self, bucket: &str, key: &str) -> PortResult<(BlobMeta, BlobReader)> {
        let path = self.object_path(bucket, key)?;
        let row = self.row(bucket, key).await?.ok_or_else(|| PortError::NotFound(format!("object {bucket}/{key}")))?;
        let meta = self.meta(&row);
        if matches!(meta.restore, RestoreStatus::NotRequested | RestoreStatus::InProgress) {
            return Err(PortError::NotRestored { bucket: bucket.to_owned(), key: key.to_owned() });
        }
        let file = tokio::fs::File::open(&path).await.map_err(|e| io_err("cannot open", &path, e))?;
        Ok((meta, Box::pin(file)))
    }

    async fn head(&self, bucket: &str, key: &str) -> PortResult<Option<BlobMeta>> {
        self.object_path(bucket, key)?;
        Ok(self.row(bucket, key).await?.map(|r| self.meta(&r)))
    }

    async fn copy(&self, from_bucket: &str, from_key: &str, to_bucket: &str, to_key: &str, class: StorageClass) -> PortResult<BlobMeta> {
        let to_path = self.object_path(to_bucket, to_key)?;
        let (_, reader) = self.get(from_bucket, from_key).await?;
        let (size, etag) = self.write_object(&to_path, reader).await?;
        self.record(to_bucket, to_key, class, size, &etag).await?;
        let restore = if class == StorageClass::Online { RestoreStatus::NotNeeded } else { RestoreStatus::NotRequested };
        Ok(BlobMeta { size, class, etag, restore })
    }

    async fn delete(&self, bucket: &str, key: &str) -> PortResult<()> {
        let path = self.object_path(bucket, key)?;
        let (b, k) = (bucket.to_owned(), key.to_owned());
        self.db
            .write(move |conn| conn.execute("DELETE FROM blobs WHERE bucket = ?1 AND key = ?2", [&b, &k]).map_err(map_sql).map(drop))
            .await?;
        match tokio::fs::remove_file(&path).await {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(io_err("cannot delete", &path, e)),
        }
    }

    async fn request_restore(&self, bucket: &str, key: &str, days: u32) -> PortResult<RestoreStatus> {
        self.object_path(bucket, key)?;
        let now = self.clock.now_ms();
        let ready = now.saturating_add(i64::try_from(self.restore_delay.as_millis()).unwrap_or(i64::MAX));
        let until = ready.saturating_add(i64::from(days.max(1)) * 86_400_000);
        let (b, k) = (bucket.to_owned(), key.to_owned());
        // Starts a restore only where none is running or valid: the guard is in the statement.
        self.db
            .write(move |conn| {
                conn.prepare_cached(
                    "UPDATE blobs SET restore_ready_at = ?3, restore_until = ?4, restore_announced = 0
                     WHERE bucket = ?1 AND key = ?2 AND class = 'NEARLINE'
                       AND (restore_until IS NULL OR restore_until <= ?5)",
                )
                .map_err(map_sql)?
                .execute(rusqlite::params![b, k, ready, until, now])
                .map_err(map_sql)
            })
            .await?;
        let row = self.row(bucket, key).await?.ok_or_else(|| PortError::NotFound(format!("object {bucket}/{key}")))?;
        Ok(self.meta(&row).restore)
    }

    async fn signed_get_url(&self, bucket: &str, key: &str, expires_in: Duration) -> PortResult<String> {
        self.object_path(bucket, key)?;
        let expires = self.clock.now().timestamp() + i64::try_from(expires_in.as_secs()).unwrap_or(i64::MAX / 2);
        let sig = hex::encode(self.signature(bucket, key, expires).finalize().into_bytes());
        Ok(format!("{}/blobs/{}/{}?expires={expires}&signature={sig}", self.base_url, encode_path(bucket), encode_path(key)))
    }
}

/// Sends S3-shaped "Object Restore Completed" events for restores whose delay has passed.
pub(crate) async fn announce_completed_restores(blobs: &EmbeddedBlobs, queue: &dyn Queue, queue_name: &str) -> PortResult<usize> {
    let now = blobs.clock.now_ms();
    let due: Vec<(String, String, i64, String, i64, i64)> = blobs
        .db
        .run(move |conn| {
            conn.prepare_cached(
                "SELECT bucket, key, size, etag, restore_ready_at, restore_until FROM blobs
                 WHERE restore_ready_at IS NOT NULL AND restore_announced = 0 AND restore_ready_at <= ?1 LIMIT 500",
            )
            .map_err(map_sql)?
            .query_map([now], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?, r.get(5)?)))
            .map_err(map_sql)?
            .collect::<Result<Vec<_>, _>>()
            .map_err(map_sql)
        })
        .await?;
    for chunk in due.chunks(granary_ports::queue::MAX_BATCH) {
        let messages = chunk
            .iter()
            .map(|(bucket, key, size, etag, ready, until)| {
                let time = chrono::DateTime::from_timestamp_millis(*ready).unwrap_or_default();
                let expiry = chrono::DateTime::from_timestamp_millis(*until).unwrap_or_default();
                let event = serde_json::json!({
                    "version": "0",
                    "id": blobs.ids.new_id().to_string(),
                    "detail-type": "Object Restore Completed",
                    "source": "aws.s3",
                    "account": "000000000000",
                    "time": time.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
                    "region": "local",
                    "resources": [format!("arn:aws:s3:::{bucket}")],
                    "detail": {
                        "version": "0",
                        "bucket": {"name": bucket},
                        "object": {"key": key, "size": size, "etag": etag},
                        "request-id": format!("{ready}"),
                        "requester": "s3.amazonaws.com",
                        "restore-expiry-time": expiry.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
                        "source-storage-class": "GLACIER"
                    }
                });
                OutgoingMessage::new(event.to_string())
            })
            .collect();
        queue.send_batch(queue_name, messages).await?;
        let marks: Vec<(String, String, i64)> = chunk.iter().map(|(b, k, _, _, ready, _)| (b.clone(), k.clone(), *ready)).collect();
        blobs
            .db
            .write(move |conn| {
                let tx = conn.savepoint().map_err(map_sql)?;
                for (b, k, ready) in &marks {
                    tx.execute(
                        "UPDATE blobs SET restore_announced = 1 WHERE bucket = ?1 AND key = ?2 AND restore_ready_at = ?3",
                        rusqlite::params![b, k, ready],
                    )
                    .map_err(map_sql)?;
                }
                tx.commit().map_err(map_sql)
            })
            .await?;
    }
    Ok(due.len())
}
