//! The blob store port on S3. Online is S3 Standard, nearline the Glacier Flexible Retrieval class.
//! Puts stream: one PutObject for bodies up to the part size, a multipart upload above it, so memory
//! stays at one part whatever the object size.

use crate::error::{code, port_error};
use async_trait::async_trait;
use aws_sdk_s3::Client;
use aws_sdk_s3::presigning::PresigningConfig;
use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::types::{CompletedMultipartUpload, CompletedPart, GlacierJobParameters, RestoreRequest, StorageClass as S3Class, Tier};
use granary_ports::blob::{validate_bucket, validate_key};
use granary_ports::{BlobMeta, BlobReader, BlobStore, PortError, PortResult, RestoreStatus, StorageClass};
use std::time::Duration;
use tokio::io::AsyncReadExt;

/// Size of one part of a multipart upload (S3 takes 5 MiB to 5 GiB).
const PART_SIZE: usize = 8 * 1024 * 1024;

/// Blobs on S3.
pub struct AwsBlobs {
    client: Client,
    prefix: String,
}

fn s3_class(class: StorageClass) -> S3Class {
    match class {
        StorageClass::Online => S3Class::Standard,
        StorageClass::Nearline => S3Class::Glacier,
    }
}

fn class_of(name: Option<&str>) -> StorageClass {
    match name {
        Some("GLACIER" | "DEEP_ARCHIVE") => StorageClass::Nearline,
        _ => StorageClass::Online,
    }
}

/// Reads S3's `x-amz-restore` header: `ongoing-request="false", expiry-date="Fri, 21 Dec 2012 00:00:00 GMT"`.
fn restore_status(class: StorageClass, header: Option<&str>) -> RestoreStatus {
    if class == StorageClass::Online {
        return RestoreStatus::NotNeeded;
    }
    let Some(h) = header else { return RestoreStatus::NotRequested };
    if h.contains("ongoing-request=\"true\"") {
        return RestoreStatus::InProgress;
    }
    let until = h
        .split("expiry-date=\"")
        .nth(1)
        .and_then(|rest| rest.split('"').next())
        .and_then(|d| chrono::DateTime::parse_from_rfc2822(d).ok())
        .map(|d| d.with_timezone(&chrono::Utc))
        .unwrap_or_else(|| chrono::Utc::now() + chrono::Duration::days(1));
    RestoreStatus::Restored { until }
}

fn etag(raw: Option<&str>) -> String {
    raw.unwrap_or_default().trim_matches('"').to_owned()
}

/// Percent-encodes a key for CopySource, keeping `/`.
fn encode_key(key: &str) -> String {
    key.bytes()
        .map(|b| if b.is_ascii_alphanumeric() || b"-._~/".contains(&b) { (b as char).to_string() } else { format!("%{b:02X}") })
        .collect()
}

impl AwsBlobs {
    pub(crate) fn new(client: Client, prefix: &str) -> Self {
        Self { client, prefix: prefix.to_owned() }
    }

    fn bucket(&self, bucket: &str, key: &str) -> PortResult<String> {
        validate_bucket(bucket)?;
        validate_key(key)?;
        Ok(format!("{}{bucket}", self.prefix))
    }

    async fn multipart(
        &self,
        bucket: &str,
        key: &str,
        class: StorageClass,
        first: Vec<u8>,
        body: &mut BlobReader,
    ) -> PortResult<(u64, String)> {
        let created = self
            .client
            .create_multipart_upload()
            .bucket(bucket)
            .key(key)
            .storage_class(s3_class(class))
            .send()
            .await
            .map_err(|e| port_error("CreateMultipartUpload", e))?;
        let upload_id = created.upload_id.ok_or_else(|| PortError::Backend("CreateMultipartUpload returned no upload id".into()))?;
        let result: PortResult<(u64, String)> = async {
            let mut parts = Vec::new();
            let mut size = 0u64;
            let mut chunk = first;
            let mut number = 1;
            loop {
                size += chunk.len() as u64;
                let part = self
                    .client
                    .upload_part()
                    .bucket(bucket)
                    .key(key)
                    .upload_id(&upload_id)
                    .part_number(number)
                    .body(ByteStream::from(chunk))
                    .send()
                    .await
                    .map_err(|e| port_error("UploadPart", e))?;
                parts.push(CompletedPart::builder().part_number(number).set_e_tag(part.e_tag).build());
                number += 1;
                chunk = read_chunk(body).await?;
                if chunk.is_empty() {
                    break;
                }
            }
            let done = self
                .client
                .complete_multipart_upload()
                .bucket(bucket)
                .key(key)
                .upload_id(&upload_id)
                .multipart_upload(CompletedMultipartUpload::builder().set_parts(Some(parts)).build())
                .send()
                .await
                .map_err(|e| port_error("CompleteMultipartUpload", e))?;
            Ok((size, etag(done.e_tag.as_deref())))
        }
        .await;
        if result.is_err() {
            // Nothing half-written stays: the parts are dropped with the upload.
            let _ = self.client.abort_multipart_upload().bucket(bucket).key(key).upload_id(&upload_id).send().await;
        }
        result
    }
}

/// Reads up to one part.
async fn read_chunk(body: &mut BlobReader) -> PortResult<Vec<u8>> {
    let mut buf = Vec::with_capacity(PART_SIZE);
    let mut limited = body.take(PART_SIZE as u64);
    limited.read_to_end(&mut buf).await.map_err(|e| PortError::Backend(format!("reading the object body: {e}")))?;
    Ok(buf)
}

#[async_trait]
impl BlobStore for AwsBlobs {
    async fn put(&self, bucket: &str, key: &str, mut body: BlobReader, class: StorageClass) -> PortResult<BlobMeta> {
        let physical = self.bucket(bucket, key)?;
        let first = read_chunk(&mut body).await?;
        let (size, tag) = if first.len() < PART_SIZE {
            let size = first.len() as u64;
            let out = self
                .client
                .put_object()
                .bucket(&physical)
                .key(key)
                .storage_class(s3_class(class))
                .body(ByteStream::from(first))
                .send()
                .await
                .map_err(|e| port_error("PutObject", e))?;
            (size, etag(out.e_tag.as_deref()))
        } else {
            self.multipart(&physical, key, class, first, &mut body).await?
        };
        let restore = if class == StorageClass::Online { RestoreStatus::NotNeeded } else { RestoreStatus::NotRequested };
        Ok(BlobMeta { size, class, etag: tag, restore })
    }

    async fn get(&self, bucket: &str, key: &str) -> PortResult<(BlobMeta, BlobReader)> {
        let physical = self.bucket(bucket, key)?;
        let result = self.client.get_object().bucket(&physical).key(key).send().await;
        let out = match result {
            Ok(out) => out,
            Err(e) if code(&e) == Some("InvalidObjectState") => {
                return Err(PortError::NotRestored { bucket: bucket.to_owned(), key: key.to_owned() });
            }
            Err(e) if code(&e) == Some("NoSuchKey") => return Err(PortError::NotFound(format!("object {bucket}/{key}"))),
            Err(e) => return Err(port_error("GetObject", e)),
        };
        let class = class_of(out.storage_class.as_ref().map(|c| c.as_str()));
        let meta = BlobMeta {
            size: u64::try_from(out.content_length.unwrap_or(0)).unwrap_or(0),
            class,
            etag: etag(out.e_tag.as_deref()),
            restore: restore_status(class, out.restore.as_deref()),
        };
        Ok((meta, Box::pin(out.body.into_async_read())))
    }

    async fn head(&self, bucket: &str, key: &str) -> PortResult<Option<BlobMeta>> {
        let physical = self.bucket(bucket, key)?;
        match self.client.head_object().bucket(&physical).key(key).send().await {
            Ok(out) => {
                let class = class_of(out.storage_class.as_ref().map(|c| c.as_str()));
                Ok(Some(BlobMeta {
                    size: u64::try_from(out.content_length.unwrap_or(0)).unwrap_or(0),
                    class,
                    etag: etag(out.e_tag.as_deref()),
                    restore: restore_status(class, out.restore.as_deref()),
                }))
            }
            Err(e) if matches!(code(&e), Some("NotFound" | "NoSuchKey")) => Ok(None),
            Err(e) => Err(port_error("HeadObject", e)),
        }
    }

    async fn copy(&self, from_bucket: &str, from_key: &str, to_bucket: &str, to_key: &str, class: StorageClass) -> PortResult<BlobMeta> {
        let source = self.bucket(from_bucket, from_key)?;
        let target = self.bucket(to_bucket, to_key)?;
        let result = self
            .client
            .copy_object()
            .copy_source(format!("{source}/{}", encode_key(from_key)))
            .bucket(&target)
            .key(to_key)
            .storage_class(s3_class(class))
            .send()
            .await;
        match result {
            Ok(_) => {}
            Err(e) if code(&e) == Some("InvalidObjectState") => {
                return Err(PortError::NotRestored { bucket: from_bucket.to_owned(), key: from_key.to_owned() });
            }
            Err(e) if code(&e) == Some("NoSuchKey") => return Err(PortError::NotFound(format!("object {from_bucket}/{from_key}"))),
            Err(e) => return Err(port_error("CopyObject", e)),
        }
        self.head(to_bucket, to_key).await?.ok_or_else(|| PortError::Backend(format!("copied object {to_bucket}/{to_key} is missing")))
    }

    async fn delete(&self, bucket: &str, key: &str) -> PortResult<()> {
        let physical = self.bucket(bucket, key)?;
        self.client.delete_object().bucket(physical).key(key).send().await.map_err(|e| port_error("DeleteObject", e))?;
        Ok(())
    }

    async fn request_restore(&self, bucket: &str, key: &str, days: u32) -> PortResult<RestoreStatus> {
        let physical = self.bucket(bucket, key)?;
        let meta = self.head(bucket, key).await?.ok_or_else(|| PortError::NotFound(format!("object {bucket}/{key}")))?;
        if meta.class == StorageClass::Online || matches!(meta.restore, RestoreStatus::InProgress | RestoreStatus::Restored { .. }) {
            return Ok(meta.restore);
        }
        let request = RestoreRequest::builder()
            .days(i32::try_from(days.max(1)).unwrap_or(1))
            .glacier_job_parameters(
                GlacierJobParameters::builder().tier(Tier::Standard).build().map_err(|e| PortError::Invalid(e.to_string()))?,
            )
            .build();
        match self.client.restore_object().bucket(physical).key(key).restore_request(request).send().await {
            Ok(_) => {}
            Err(e) if code(&e) == Some("RestoreAlreadyInProgress") => {}
            Err(e) => return Err(port_error("RestoreObject", e)),
        }
        Ok(self.head(bucket, key).await?.map_or(RestoreStatus::InProgress, |m| m.restore))
    }

    async fn signed_get_url(&self, bucket: &str, key: &str, expires_in: Duration) -> PortResult<String> {
        let physical = self.bucket(bucket, key)?;
        let config = PresigningConfig::expires_in(expires_in).map_err(|e| PortError::Invalid(format!("presigned URL expiry: {e}")))?;
        let req =
            self.client.get_object().bucket(physical).key(key).presigned(config).await.map_err(|e| port_error("presign GetObject", e))?;
        Ok(req.uri().to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn restore_header_is_read() {
        assert_eq!(restore_status(StorageClass::Nearline, None), RestoreStatus::NotRequested);
        assert_eq!(restore_status(StorageClass::Nearline, Some("ongoing-request=\"true\"")), RestoreStatus::InProgress);
        let r = restore_status(StorageClass::Nearline, Some("ongoing-request=\"false\", expiry-date=\"Fri, 21 Dec 2012 00:00:00 GMT\""));
        assert!(matches!(r, RestoreStatus::Restored { until } if until.timestamp() == 1_356_048_000));
        assert_eq!(restore_status(StorageClass::Online, None), RestoreStatus::NotNeeded);
    }
}
