//! `storage-worker`: runs the storage jobs feature-ingest stages. Each file is copied from its source
//! (`file://` under the allowed roots, `http(s)://` streamed, `s3://` by CopyObject when its MD5 is the
//! object's ETag, streamed otherwise) into its storage location, its checksum computed with the declared
//! algorithm while it streams. A mismatch, a short or long source, or a source that cannot be read fails
//! the upload itself, so nothing half-written or wrong is ever visible; the file is reported
//! STORE_ERROR. Each file's outcome goes to the storage-ready queue as a REGARDS FileReferenceEvent.
//!
//! Redelivery is safe: the object key is the checksum, and a file whose object is already there with
//! its size is reported STORED without a second copy.

use aws_lambda_events::event::sqs::{SqsBatchResponse, SqsEvent, SqsMessage};
use digest::DynDigest;
use granary_domain::file::ChecksumAlgorithm;
use granary_domain::storage::{
    FileToStore, LocationClass, ReleaseJob, StorageJob, StorageLocation, StoredObject, WorkerJob, file_reference_event,
};
use granary_lambda::outbound::{OutboundHttp, Refusal, Timeouts, describe};
use granary_lambda::{Config, sqs};
use granary_ports::access::Access;
use granary_ports::{Backend, BlobReader, OutgoingMessage, PortError, StorageClass};
use granary_stores::locations::{LocationCache, LocationStore};
use granary_stores::owners::{Claim, FileOwners};
use lambda_runtime::LambdaEvent;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, ReadBuf};

/// The handler and what it needs, built once per cold start.
#[derive(Clone)]
pub struct StorageWorker {
    backend: Backend,
    config: Config,
    locations: Arc<LocationCache>,
    file_roots: Vec<PathBuf>,
    /// For `http(s)` sources, held to the outbound policy and built at its first use.
    http: Arc<OutboundHttp>,
    owners: FileOwners,
}

impl std::fmt::Debug for StorageWorker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StorageWorker").field("locations", &self.locations).field("file_roots", &self.file_roots).finish_non_exhaustive()
    }
}

/// A file's copy failed for a reason that another try may not have (the destination failed): the
/// message is retried.
#[derive(Debug)]
struct Transient(String);

impl StorageWorker {
    /// The worker over `backend`, its settings from the environment: `file://` sources are read only
    /// under the directories listed in `GRANARY_STORAGE_FILE_ROOTS` (comma-separated; none by default),
    /// and `http(s)` sources time out after `GRANARY_STORAGE_SOURCE_TIMEOUT_SECS` (default 60) without data.
    pub fn new(backend: Backend, config: Config) -> Result<Self, String> {
        let file_roots = config.storage_file_roots.clone();
        let timeout = granary_lambda::config::env_number("GRANARY_STORAGE_SOURCE_TIMEOUT_SECS", 60u64)?;
        Self::with_settings(backend, config, file_roots, Duration::from_secs(timeout))
    }

    /// The worker reading `file://` sources under `file_roots` only, and giving up on an `http(s)`
    /// source silent for `source_timeout`.
    pub fn with_settings(backend: Backend, config: Config, file_roots: Vec<PathBuf>, source_timeout: Duration) -> Result<Self, String> {
        config.check()?;
        let file_roots = file_roots
            .into_iter()
            .map(|r| std::fs::canonicalize(&r).map_err(|e| format!("GRANARY_STORAGE_FILE_ROOTS: {}: {e}", r.display())))
            .collect::<Result<Vec<_>, _>>()?;
        let ttl = granary_lambda::config::env_number("GRANARY_MODEL_CACHE_SECS", 30u64)?;
        let locations = LocationCache::new(LocationStore::new(&config.features_table), config.locations(), Duration::from_secs(ttl));
        let owners = FileOwners::new(&config.features_table);
        let mut grants = locations.grants().and(owners.grants()).send(&config.storage_ready_queue).and(config.location_grants(&[
            Access::Read,
            Access::Write,
            Access::Delete,
        ]));
        // Sources: objects of the buckets the configuration lists (IAM grants the same in the cloud).
        match &config.storage_source_buckets {
            None => grants = grants.any(granary_ports::access::Kind::Bucket, Access::Read),
            Some(buckets) => {
                for bucket in buckets {
                    grants = grants.bucket(bucket, Access::Read);
                }
            }
        }
        let backend = granary_ports::access::guard(backend, "storage-worker", grants);
        let timeouts = Timeouts { connect: Duration::from_secs(10), read: Some(source_timeout), total: None };
        let http = Arc::new(OutboundHttp::new(config.outbound(), timeouts));
        Ok(Self { locations: Arc::new(locations), owners, backend, config, file_roots, http })
    }

    /// Runs a batch of storage jobs concurrently; a job whose files could not all be copied or
    /// reported for a transient reason is retried whole (files already stored are not copied again).
    pub async fn handle(&self, event: LambdaEvent<SqsEvent>) -> Result<SqsBatchResponse, lambda_runtime::Error> {
        let runs = event.payload.records.iter().map(|m| self.run_message(m));
        let outcomes = futures::future::join_all(runs).await;
        let failed = event
            .payload
            .records
            .iter()
            .zip(outcomes)
            .filter_map(|(m, ok)| if ok { None } else { Some(m.message_id.clone().unwrap_or_default()) })
            .collect();
        Ok(sqs::batch_response(failed))
    }

    async fn run_message(&self, msg: &SqsMessage) -> bool {
        let job: WorkerJob = match serde_json::from_str(msg.body.as_deref().unwrap_or_default()) {
            Ok(job) => job,
            Err(e) => {
                // Only Granary writes this queue: a body it cannot have written goes to the DLQ.
                tracing::error!(message_id = ?msg.message_id, error = %e, "not a storage job; left to the dead-letter queue");
                return false;
            }
        };
        let outcome = match &job {
            WorkerJob::Store(job) => self.run(job).await,
            WorkerJob::Release(job) => self.release(job).await,
        };
        match outcome {
            Ok(()) => true,
            Err(Transient(e)) => {
                tracing::warn!(message_id = ?msg.message_id, error = %e, "storage job not finished; SQS will redeliver it");
                false
            }
        }
    }

    /// Drops `job.owner`'s ownership of its objects and deletes those no one owns any more.
    async fn release(&self, job: &ReleaseJob) -> Result<(), Transient> {
        let transient = |e: granary_stores::StoreError| Transient(e.to_string());
        let orphans = self.owners.release(&self.backend, &job.owner, &job.objects).await.map_err(transient)?;
        for orphan in orphans {
            if !self.owners.begin_delete(&self.backend, &orphan).await.map_err(transient)? {
                continue;
            }
            self.backend.blobs.delete(&orphan.bucket, &orphan.key).await.map_err(|e| Transient(e.to_string()))?;
            self.owners.end_delete(&self.backend, &orphan).await.map_err(transient)?;
            tracing::info!(owner = %job.owner, bucket = %orphan.bucket, key = %orphan.key, "stored object deleted: no owner left");
        }
        Ok(())
    }

    /// Makes the job's feature an owner of `file`'s object before it is copied, so that no release
    /// deletes it meanwhile; waits a little for a deletion in progress to finish.
    async fn claim(&self, job: &StorageJob, file: &FileToStore, bucket: &str) -> Result<(), Transient> {
        let object = StoredObject { storage: file.storage.clone(), checksum: file.checksum.clone() };
        for _ in 0..20 {
            match self.owners.claim(&self.backend, &object, bucket, &file.key, &job.urn).await {
                Ok(Claim::Held) => return Ok(()),
                Ok(Claim::BeingDeleted) => tokio::time::sleep(Duration::from_millis(250)).await,
                Err(e) => return Err(Transient(e.to_string())),
            }
        }
        Err(Transient(format!("{} in {} is still being deleted", file.checksum, file.storage)))
    }

    /// Stores every file of `job` and reports each on the storage-ready queue.
    async fn run(&self, job: &StorageJob) -> Result<(), Transient> {
        let mut reports = Vec::with_capacity(job.files.len());
        // One lookup for the whole job (an unknown name reloads the admin-defined locations once).
        let names: Vec<&str> = job.files.iter().map(|f| f.storage.as_str()).collect();
        let locations = self.locations.get(&self.backend, &names).await.map_err(|e| Transient(e.to_string()))?;
        for file in &job.files {
            let result = match locations.get(&file.storage) {
                Some(location) => {
                    self.claim(job, file, &location.bucket).await?;
                    self.store(file, location).await?
                }
                None => Err(format!("no storage location is named {:?}", file.storage)),
            };
            match &result {
                Ok(url) => tracing::info!(request_id = %job.request_id, checksum = %file.checksum, %url, "file stored"),
                Err(cause) => tracing::warn!(request_id = %job.request_id, checksum = %file.checksum, %cause, "file not stored"),
            }
            let event = file_reference_event(job, file, &result);
            reports.push(
                OutgoingMessage::new(event.to_string()).attribute("granary.event.id", format!("{}:{}", job.request_id, file.task_id())),
            );
        }
        for batch in granary_ports::queue::batches(reports) {
            self.backend.queue.send_batch(&self.config.storage_ready_queue, batch).await.map_err(|e| Transient(e.to_string()))?;
        }
        Ok(())
    }

    /// Copies one file: `Ok(Ok(url))` stored, `Ok(Err(cause))` the file cannot be stored (its source or
    /// its declaration is wrong), `Err` the destination failed and a retry may work.
    async fn store(&self, file: &FileToStore, location: &StorageLocation) -> Result<Result<String, String>, Transient> {
        let class = match location.class {
            LocationClass::Online => StorageClass::Online,
            LocationClass::Nearline => StorageClass::Nearline,
        };
        let url = format!("s3://{}/{}", location.bucket, file.key);
        // A location defined before the allowed buckets changed: refused, not retried.
        if !self.config.location_bucket_allowed(&location.bucket) {
            return Ok(Err(format!("bucket {} is not one Granary may store into (GRANARY_LOCATION_BUCKETS)", location.bucket)));
        }
        let blobs = &self.backend.blobs;
        match blobs.head(&location.bucket, &file.key).await {
            Ok(Some(meta)) if meta.size == file.filesize => return Ok(Ok(url)),
            Ok(_) => {}
            Err(e) => return Err(Transient(format!("cannot look at {url}: {e}"))),
        }
        let Some(algorithm) = ChecksumAlgorithm::parse(&file.algorithm) else {
            return Ok(Err(format!("checksum algorithm {:?} is not one Granary computes", file.algorithm)));
        };
        let source = match self.open(file, algorithm, &location.bucket, class).await {
            Ok(Opened::Reader(reader)) => reader,
            Ok(Opened::Copied) => return Ok(Ok(url)),
            Err(SourceError::Refused(cause)) => return Ok(Err(cause)),
            Err(SourceError::Transient(e)) => return Err(Transient(e)),
        };
        let failure = Arc::new(Mutex::new(None));
        let verifying = Verifying::new(source, algorithm, &file.checksum, file.filesize, failure.clone());
        match blobs.put(&location.bucket, &file.key, Box::pin(verifying), class).await {
            Ok(_) => Ok(Ok(url)),
            Err(e) => {
                // The source's fault (read error, wrong size or checksum) is the file's; anything else is
                // the destination's, and worth another try.
                if let Some(cause) = failure.lock().unwrap_or_else(|p| p.into_inner()).take() {
                    return Ok(Err(format!("{} from {}: {cause}", file.filename, file.source)));
                }
                Err(Transient(format!("cannot write {url}: {e}")))
            }
        }
    }

    async fn open(
        &self,
        file: &FileToStore,
        algorithm: ChecksumAlgorithm,
        bucket: &str,
        class: StorageClass,
    ) -> Result<Opened, SourceError> {
        let refused = |cause: String| Err(SourceError::Refused(format!("{} from {}: {cause}", file.filename, file.source)));
        let parsed = match url::Url::parse(&file.source) {
            Ok(u) => u,
            Err(e) => return refused(format!("not a URL: {e}")),
        };
        match parsed.scheme() {
            "file" => {
                let Ok(path) = parsed.to_file_path() else { return refused("not a local path".into()) };
                let path = match tokio::fs::canonicalize(&path).await {
                    Ok(p) => p,
                    Err(e) => return refused(format!("cannot be read: {e}")),
                };
                if !self.file_roots.iter().any(|root| path.starts_with(root)) {
                    return refused("file:// sources are read only under the directories of GRANARY_STORAGE_FILE_ROOTS".into());
                }
                match tokio::fs::File::open(&path).await {
                    Ok(f) => Ok(Opened::Reader(Box::pin(f))),
                    Err(e) => refused(format!("cannot be read: {e}")),
                }
            }
            "http" | "https" => {
                // Refused before anything is resolved or sent when the outbound policy forbids it.
                let request = match self.http.request(reqwest::Method::GET, parsed.as_str()) {
                    Ok(request) => request,
                    Err(Refusal::Refused(e)) => return refused(e),
                    Err(Refusal::Client(e)) => return Err(SourceError::Transient(e)),
                };
                let response = match request.send().await {
                    Ok(r) => r,
                    Err(e) => return refused(format!("cannot be fetched: {}", describe(&e))),
                };
                if !response.status().is_success() {
                    return refused(format!("the source answered {}", response.status()));
                }
                use futures::TryStreamExt;
                let stream = response.bytes_stream().map_err(std::io::Error::other);
                Ok(Opened::Reader(Box::pin(tokio_util::io::StreamReader::new(stream))))
            }
            "s3" => {
                let from_bucket = parsed.host_str().unwrap_or_default().to_owned();
                let from_key = parsed.path().trim_start_matches('/').to_owned();
                if !self.config.source_bucket_allowed(&from_bucket) {
                    return refused(format!(
                        "bucket {from_bucket} is not one Granary may read files from (GRANARY_STORAGE_SOURCE_BUCKETS)"
                    ));
                }
                let blobs = &self.backend.blobs;
                let meta = match blobs.head(&from_bucket, &from_key).await {
                    Ok(Some(m)) => m,
                    Ok(None) => return refused("no such object".into()),
                    Err(PortError::Invalid(e)) => return refused(e),
                    Err(e) => return Err(SourceError::Transient(e.to_string())),
                };
                if meta.size != file.filesize {
                    return refused(format!("the object has {} bytes, the file declares {}", meta.size, file.filesize));
                }
                // A single-part object's ETag is its MD5: when it is the declared checksum, S3 copies it
                // without the bytes passing through here.
                if algorithm == ChecksumAlgorithm::Md5 && meta.etag.eq_ignore_ascii_case(&file.checksum) {
                    return match blobs.copy(&from_bucket, &from_key, bucket, &file.key, class).await {
                        Ok(_) => Ok(Opened::Copied),
                        Err(e) => Err(SourceError::Transient(format!("cannot copy: {e}"))),
                    };
                }
                match blobs.get(&from_bucket, &from_key).await {
                    Ok((_, reader)) => Ok(Opened::Reader(reader)),
                    Err(e @ (PortError::NotFound(_) | PortError::NotRestored { .. })) => refused(e.to_string()),
                    Err(e) => Err(SourceError::Transient(e.to_string())),
                }
            }
            other => refused(format!("scheme {other}:// is not one Granary copies from (file, http, https, s3)")),
        }
    }
}

enum Opened {
    Reader(BlobReader),
    /// Copied in place by the blob store.
    Copied,
}

enum SourceError {
    Refused(String),
    Transient(String),
}

fn hasher(algorithm: ChecksumAlgorithm) -> Box<dyn DynDigest + Send> {
    match algorithm {
        ChecksumAlgorithm::Md5 => Box::new(md5::Md5::default()),
        ChecksumAlgorithm::Sha1 => Box::new(sha1::Sha1::default()),
        ChecksumAlgorithm::Sha256 => Box::new(sha2::Sha256::default()),
        ChecksumAlgorithm::Sha512 => Box::new(sha2::Sha512::default()),
    }
}

/// Passes a source through, hashing and counting it; ends in an error instead of end-of-file when the
/// size or the checksum is not the declared one, so the upload it feeds fails and leaves nothing. The
/// cause is also written to `failure`, to tell it from a failure of the destination.
pub struct Verifying {
    inner: BlobReader,
    hasher: Option<Box<dyn DynDigest + Send>>,
    expected: String,
    declared: u64,
    read: u64,
    failure: Arc<Mutex<Option<String>>>,
}

impl Verifying {
    /// Verifies `inner` against `checksum` (hex, any case) of `algorithm` and `size` bytes.
    pub fn new(inner: BlobReader, algorithm: ChecksumAlgorithm, checksum: &str, size: u64, failure: Arc<Mutex<Option<String>>>) -> Self {
        Self { inner, hasher: Some(hasher(algorithm)), expected: checksum.to_ascii_lowercase(), declared: size, read: 0, failure }
    }

    fn fail(&mut self, cause: String) -> Poll<std::io::Result<()>> {
        *self.failure.lock().unwrap_or_else(|p| p.into_inner()) = Some(cause.clone());
        Poll::Ready(Err(std::io::Error::new(std::io::ErrorKind::InvalidData, cause)))
    }
}

impl AsyncRead for Verifying {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        match self.inner.as_mut().poll_read(cx, buf) {
            Poll::Pending => return Poll::Pending,
            Poll::Ready(Err(e)) => return self.fail(format!("reading the source failed: {e}")),
            Poll::Ready(Ok(())) => {}
        }
        let new = &buf.filled()[before..];
        let n = new.len() as u64;
        if let Some(h) = self.hasher.as_mut() {
            h.update(new);
        }
        self.read += n;
        if self.read > self.declared {
            // An error returns no data (AsyncRead's contract).
            buf.set_filled(before);
            let declared = self.declared;
            return self.fail(format!("the source has more than the declared {declared} bytes"));
        }
        if n == 0 && buf.remaining() > 0 {
            // End of the source.
            if self.read < self.declared {
                let (read, declared) = (self.read, self.declared);
                return self.fail(format!("the source ended after {read} of the declared {declared} bytes"));
            }
            if let Some(h) = self.hasher.take() {
                let computed = hex::encode(h.finalize());
                if computed != self.expected {
                    let expected = self.expected.clone();
                    return self.fail(format!("checksum mismatch: declared {expected}, computed {computed}"));
                }
            }
        }
        Poll::Ready(Ok(()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncReadExt;

    async fn read_all(
        data: &'static [u8],
        algorithm: ChecksumAlgorithm,
        checksum: &str,
        size: u64,
    ) -> (Result<Vec<u8>, String>, Option<String>) {
        let failure = Arc::new(Mutex::new(None));
        let mut v = Verifying::new(Box::pin(data), algorithm, checksum, size, failure.clone());
        let mut out = Vec::new();
        let r = v.read_to_end(&mut out).await.map(|_| out).map_err(|e| e.to_string());
        let cause = failure.lock().unwrap().clone();
        (r, cause)
    }

    #[tokio::test]
    async fn a_source_matching_its_declaration_passes_through() {
        let (r, cause) = read_all(b"hello", ChecksumAlgorithm::Md5, "5D41402ABC4B2A76B9719D911017C592", 5).await;
        assert_eq!(r.unwrap(), b"hello");
        assert_eq!(cause, None);
        let sha256 = "2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824";
        assert!(read_all(b"hello", ChecksumAlgorithm::Sha256, sha256, 5).await.0.is_ok());
        let sha1 = "aaf4c61ddcc5e8a2dabede0f3b482cd9aea9434d";
        assert!(read_all(b"hello", ChecksumAlgorithm::Sha1, sha1, 5).await.0.is_ok());
    }

    #[tokio::test]
    async fn a_wrong_checksum_or_size_fails_the_stream_naming_why() {
        let md5 = "5d41402abc4b2a76b9719d911017c592";
        let (r, cause) = read_all(b"hellx", ChecksumAlgorithm::Md5, md5, 5).await;
        assert!(r.is_err());
        assert!(cause.unwrap().starts_with(&format!("checksum mismatch: declared {md5}, computed ")));
        let (r, cause) = read_all(b"hel", ChecksumAlgorithm::Md5, md5, 5).await;
        assert!(r.is_err());
        assert_eq!(cause.unwrap(), "the source ended after 3 of the declared 5 bytes");
        let (r, cause) = read_all(b"hello world", ChecksumAlgorithm::Md5, md5, 5).await;
        assert!(r.is_err());
        assert_eq!(cause.unwrap(), "the source has more than the declared 5 bytes");
    }
}
