//! Files to store, end to end on the embedded backend: feature-ingest stages the job, storage-worker
//! copies the files (checksums verified while streaming), storage-ready finishes the request. Faults:
//! wrong checksums, short and missing sources, duplicate and late events, events for nothing waiting,
//! a timeout and an admin's retry.

use feature_ingest::FeatureIngest;
use granary_embedded::{Embedded, EmbeddedOptions};
use granary_lambda::Config;
use granary_lambda::sqs::sqs_event;
use granary_ports::{Backend, Key, ReceivedMessage};
use lambda_runtime::{Context, LambdaEvent};
use md5::{Digest, Md5};
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use storage_ready::StorageReady;
use storage_worker::StorageWorker;

struct Fixture {
    dir: tempfile::TempDir,
    backend: Backend,
    clock: Arc<granary_ports::ManualClock>,
    ingest: FeatureIngest,
    worker: StorageWorker,
    ready: StorageReady,
}

fn config() -> Config {
    let mut config = Config::defaults();
    config.storage_timeout_secs = 600;
    config
}

async fn fixture() -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let mut resources = granary_resources::from_template(granary_resources::TEMPLATE, |_| None).unwrap();
    // A recipient's own queue.
    resources.queues.push(granary_ports::QueueSpec::new("mirror"));
    let clock = Arc::new(granary_ports::ManualClock::starting_now());
    let mut options = EmbeddedOptions::new(dir.path().join("data"), resources);
    options.clock = clock.clone();
    let backend = Embedded::open(options).unwrap().backend();
    let model = json!({"type": "object", "x-granary-type": "DATA"});
    let compiled = granary_domain::model::compile_model("S2_L1C", &model).unwrap();
    granary_stores::models::ModelStore::new("features").put(&backend, &model, &compiled, "admin").await.unwrap();
    let sources = dir.path().join("sources");
    std::fs::create_dir_all(&sources).unwrap();
    // Ingest denies a file:// source outside the roots it is told of: the same as the worker's.
    let mut ingest_config = config();
    ingest_config.storage_file_roots = vec![sources.clone()];
    let worker = StorageWorker::with_settings(backend.clone(), config(), vec![sources], Duration::from_secs(5)).unwrap();
    Fixture {
        ingest: FeatureIngest::new(backend.clone(), ingest_config),
        ready: StorageReady::new(backend.clone(), config()),
        worker,
        backend,
        clock,
        dir,
    }
}

fn md5_hex(data: &[u8]) -> String {
    hex::encode(Md5::digest(data))
}

fn file_entry(url: &str, data_type: &str, size: usize, checksum: &str) -> Value {
    json!({"locations": [{"url": url}],
           "attributes": {"dataType": data_type, "mimeType": "application/octet-stream", "filename": "product.bin",
                          "filesize": size, "algorithm": "MD5", "checksum": checksum}})
}

fn creation(provider_id: &str, files: Vec<Value>, storages: Value) -> String {
    json!({
        "metadata": {"sessionOwner": "owner", "session": "s1", "storages": storages},
        "feature": {"type": "Feature", "id": provider_id, "entityType": "DATA", "model": "S2_L1C",
                    "geometry": null, "properties": {}, "files": files}
    })
    .to_string()
}

fn message(id: &str, body: &str, attrs: &[(&str, &str)]) -> ReceivedMessage {
    ReceivedMessage {
        message_id: id.into(),
        receipt_handle: format!("{id}.1"),
        body: body.into(),
        attributes: attrs.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect::<BTreeMap<_, _>>(),
        receive_count: 1,
        sent_at_ms: 0,
    }
}

impl Fixture {
    fn source(&self, name: &str, data: &[u8]) -> (PathBuf, String) {
        let path = self.dir.path().join("sources").join(name);
        std::fs::write(&path, data).unwrap();
        let url = url::Url::from_file_path(&path).unwrap().to_string();
        (path, url)
    }

    async fn submit(&self, request_id: &str, body: &str) {
        let event = sqs_event("feature-high", &[message(request_id, body, &[("regards.request.id", request_id)])]).unwrap();
        let r = self.ingest.handle(LambdaEvent::new(event, Context::default())).await.unwrap();
        assert!(r.batch_item_failures.is_empty());
    }

    /// Takes every message of `queue`, deleting them.
    async fn drain(&self, queue: &str) -> Vec<ReceivedMessage> {
        granary_testkit::drain(&self.backend, queue).await
    }

    /// Runs the storage worker on every job queued; returns the storage events it sent.
    async fn run_worker(&self) -> Vec<ReceivedMessage> {
        let jobs = self.drain("storage-jobs").await;
        for job in &jobs {
            let event = sqs_event("storage-jobs", std::slice::from_ref(job)).unwrap();
            let r = self.worker.handle(LambdaEvent::new(event, Context::default())).await.unwrap();
            assert!(r.batch_item_failures.is_empty(), "the worker failed a job");
        }
        self.drain("storage-ready").await
    }

    /// Delivers one message (`id`, body, attributes) to feature-ingest.
    async fn send(&self, (id, body, attrs): (String, String, Vec<(String, String)>)) {
        let attrs: Vec<(&str, &str)> = attrs.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        let event = sqs_event("feature-high", &[message(&id, &body, &attrs)]).unwrap();
        assert!(self.ingest.handle(LambdaEvent::new(event, Context::default())).await.unwrap().batch_item_failures.is_empty());
    }

    /// Deletes version 1 of `provider_id` through feature-ingest.
    async fn delete(&self, request_id: &str, provider_id: &str) {
        let urn = format!("URN:FEATURE:DATA:granary:{}:V1", granary_domain::entity_uuid(provider_id));
        let body = json!({"urn": urn, "priority": "NORMAL"}).to_string();
        let attrs = [("regards.request.id", request_id), ("regards.request.type", "DELETION")];
        let event = sqs_event("feature-high", &[message(request_id, &body, &attrs)]).unwrap();
        assert!(self.ingest.handle(LambdaEvent::new(event, Context::default())).await.unwrap().batch_item_failures.is_empty());
    }

    async fn deliver_events(&self, events: &[ReceivedMessage]) {
        let event = sqs_event("storage-ready", events).unwrap();
        let r = self.ready.handle(LambdaEvent::new(event, Context::default())).await.unwrap();
        assert!(r.batch_item_failures.is_empty());
    }

    async fn request(&self, id: &str) -> Value {
        let item = self.backend.table.get("requests", &Key::new(format!("R#{id}"), "R")).await.unwrap().expect("request recorded");
        Value::Object(item.attrs.clone())
    }

    async fn responses(&self, request_id: &str) -> Vec<String> {
        self.drain("feature-response")
            .await
            .iter()
            .map(|m| serde_json::from_str::<Value>(&m.body).unwrap())
            .filter(|e| e["requestId"] == request_id)
            .map(|e| e["state"].as_str().unwrap().to_owned())
            .collect()
    }

    async fn feature_files(&self, provider_id: &str) -> Vec<Value> {
        let key = Key::new(format!("F#{}", granary_domain::entity_uuid(provider_id)), "V001");
        let item = self.backend.table.get("features", &key).await.unwrap().expect("feature created");
        item.get("feature").unwrap()["files"].as_array().unwrap().clone()
    }
}

fn state(r: &Value) -> (String, String) {
    (r["state"].as_str().unwrap_or_default().to_owned(), r["step"].as_str().unwrap_or_default().to_owned())
}

fn pair(s: &str, t: &str) -> (String, String) {
    (s.to_owned(), t.to_owned())
}

#[tokio::test]
async fn stored_files_succeed_the_request_once_every_file_is_confirmed() {
    let f = fixture().await;
    let raw = vec![7u8; 300_000];
    let quicklook = b"a small picture".to_vec();
    let (_, raw_url) = f.source("raw.bin", &raw);
    let (_, ql_url) = f.source("ql.png", &quicklook);
    let files = vec![
        file_entry(&raw_url, "RAWDATA", raw.len(), &md5_hex(&raw).to_uppercase()),
        file_entry(&ql_url, "QUICKLOOK_SD", quicklook.len(), &md5_hex(&quicklook)),
    ];
    // RAWDATA to both locations, the quicklook to the online one only.
    let storages =
        json!([{"pluginBusinessId": "online", "storePath": "s2/l1c"}, {"pluginBusinessId": "nearline", "targetTypes": ["RAWDATA"]}]);
    f.submit("r1", &creation("p1", files, storages)).await;

    let r1 = f.request("r1").await;
    assert_eq!(state(&r1), pair("GRANTED", "REMOTE_STORAGE_REQUESTED"));
    assert_eq!(r1["storageRemaining"], 3);
    assert!(r1.get("purgeAt").is_none(), "a request in progress is never purged");
    assert_eq!(f.responses("r1").await, vec!["GRANTED"], "no SUCCESS before storage confirms");
    assert_eq!(f.feature_files("p1").await[0]["locations"].as_array().unwrap().len(), 1);

    let events = f.run_worker().await;
    assert_eq!(events.len(), 3);
    // Two of three confirmations: still waiting.
    f.deliver_events(&events[..2]).await;
    assert_eq!(state(&f.request("r1").await), pair("GRANTED", "REMOTE_STORAGE_REQUESTED"));
    f.deliver_events(&events[2..]).await;
    let r1 = f.request("r1").await;
    assert_eq!(state(&r1), pair("SUCCESS", "DONE"));
    assert_eq!(f.responses("r1").await, vec!["SUCCESS"]);
    // Finished: the record and its three storage tasks are purged together after the retention.
    let purge_at = r1["purgeAt"].as_i64().expect("a finished request carries purgeAt");
    let tasks = f.backend.table.query(granary_ports::Query::partition("requests", "R#r1")).await.unwrap().items;
    assert_eq!(tasks.len(), 4, "the record and its tasks");
    assert!(tasks.iter().all(|t| t.get_i64("purgeAt") == Some(purge_at)), "{tasks:?}");

    // The objects are there, named by checksum under the location's prefix and the store path.
    let raw_md5 = md5_hex(&raw);
    let (meta, _) = f.backend.blobs.get("storage", &format!("online/s2/l1c/{raw_md5}")).await.unwrap();
    assert_eq!((meta.size, meta.etag.as_str()), (raw.len() as u64, raw_md5.as_str()));
    let nearline = f.backend.blobs.head("storage", &format!("nearline/{raw_md5}")).await.unwrap().unwrap();
    assert_eq!(nearline.class, granary_ports::StorageClass::Nearline);
    assert!(f.backend.blobs.head("storage", &format!("nearline/{}", md5_hex(&quicklook))).await.unwrap().is_none());

    // The feature's files now list where they are stored, besides where they came from.
    let files = f.feature_files("p1").await;
    let mut raw_locations: Vec<(&str, &str)> = files[0]["locations"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| (l["storage"].as_str().unwrap_or("source"), l["url"].as_str().unwrap()))
        .collect();
    raw_locations.sort();
    let (online, nearline) = (format!("s3://storage/online/s2/l1c/{raw_md5}"), format!("s3://storage/nearline/{raw_md5}"));
    assert_eq!(raw_locations, vec![("nearline", nearline.as_str()), ("online", online.as_str()), ("source", raw_url.as_str())]);
    assert_eq!(files[1]["locations"].as_array().unwrap().len(), 2);

    // Every event delivered again: nothing changes, nothing is sent again.
    f.deliver_events(&events).await;
    assert_eq!(state(&f.request("r1").await), pair("SUCCESS", "DONE"));
    assert!(f.responses("r1").await.is_empty());
    assert_eq!(f.feature_files("p1").await, files);
    let session = granary_stores::sessions::SessionReader::new("requests").get(&f.backend, "owner", "s1").await.unwrap().unwrap();
    assert_eq!((session["referencingRequests"].as_i64(), session["runningReferencingRequests"].as_i64()), (Some(1), Some(0)));
    assert_eq!(session["referencedProducts"], 1);
}

#[tokio::test]
async fn a_wrong_checksum_or_a_missing_source_is_a_storage_error_and_leaves_nothing() {
    let mut f = fixture().await;
    // Ingest told that every path may be read, so that what refuses these sources is the worker's own
    // check (ingest's, which denies a source outside the roots at once, has its test in feature-ingest).
    let mut permissive = config();
    permissive.storage_file_roots = vec!["/".into()];
    f.ingest = FeatureIngest::new(f.backend.clone(), permissive);
    let good = b"good content".to_vec();
    let (path, url) = f.source("bad.bin", b"tampered content");
    let files = vec![
        file_entry(&url, "RAWDATA", 16, &md5_hex(&good)),
        file_entry("file:///nonexistent/x.bin", "RAWDATA", 5, &md5_hex(b"12345")),
        file_entry(&format!("file://{}/../../etc/passwd", f.dir.path().join("sources").display()), "RAWDATA", 4, &md5_hex(b"root")),
    ];
    f.submit("r2", &creation("p2", files, json!([{"pluginBusinessId": "online"}]))).await;
    let events = f.run_worker().await;
    f.deliver_events(&events).await;
    let r2 = f.request("r2").await;
    assert_eq!(state(&r2), pair("ERROR", "REMOTE_STORAGE_ERROR"));
    let errors: Vec<&str> = r2["errors"].as_array().unwrap().iter().map(|e| e.as_str().unwrap()).collect();
    assert_eq!(errors.len(), 3, "{errors:?}");
    assert!(errors.iter().any(|e| e.contains("checksum mismatch") || e.contains("declared 16")), "{errors:?}");
    assert!(errors.iter().any(|e| e.contains("cannot be read")), "{errors:?}");
    assert_eq!(f.responses("r2").await, vec!["GRANTED", "ERROR"]);
    // Nothing half-written: no object under the declared checksum.
    assert!(f.backend.blobs.head("storage", &format!("online/{}", md5_hex(&good))).await.unwrap().is_none());
    let blobs_dir = f.dir.path().join("data").join("blobs").join(".tmp");
    assert_eq!(std::fs::read_dir(&blobs_dir).unwrap().count(), 0, "no temporary file left behind");

    // The producer fixes its files; an admin retries: only the failed files are copied again.
    std::fs::write(&path, &good).unwrap();
    let recovery = granary_stores::recovery::Recovery::new("requests", "feature-response");
    let (outcome, sent) = recovery.retry(&f.backend, "r2").await.unwrap();
    assert_eq!(outcome, granary_stores::recovery::AdminOutcome::Done);
    recovery.outbox().flush(&f.backend, &sent).await.unwrap();
    assert_eq!(state(&f.request("r2").await), pair("GRANTED", "REMOTE_STORAGE_REQUESTED"));
    let jobs = f.drain("storage-jobs").await;
    let r2_job = jobs.iter().map(|m| serde_json::from_str::<Value>(&m.body).unwrap()).find(|j| j["requestId"] == "r2").unwrap();
    assert_eq!(r2_job["files"].as_array().unwrap().len(), 3, "the three failed files, again");
}

#[tokio::test]
async fn a_retried_storage_error_succeeds_when_the_source_is_fixed() {
    let f = fixture().await;
    let good = b"the real bytes".to_vec();
    let (path, url) = f.source("late.bin", b"not yet there!");
    f.submit(
        "r4",
        &creation("p4", vec![file_entry(&url, "RAWDATA", good.len(), &md5_hex(&good))], json!([{"pluginBusinessId": "online"}])),
    )
    .await;
    let events = f.run_worker().await;
    f.deliver_events(&events).await;
    let r4 = f.request("r4").await;
    assert_eq!(state(&r4), pair("ERROR", "REMOTE_STORAGE_ERROR"));
    assert!(r4.get("purgeAt").is_none(), "a request in error waits for an admin, however long");
    std::fs::write(&path, &good).unwrap();
    let recovery = granary_stores::recovery::Recovery::new("requests", "feature-response");
    let (_, sent) = recovery.retry(&f.backend, "r4").await.unwrap();
    recovery.outbox().flush(&f.backend, &sent).await.unwrap();
    let events = f.run_worker().await;
    f.deliver_events(&events).await;
    assert_eq!(state(&f.request("r4").await), pair("SUCCESS", "DONE"));
    assert_eq!(f.responses("r4").await, vec!["GRANTED", "ERROR", "GRANTED", "SUCCESS"]);
    let session = granary_stores::sessions::SessionReader::new("requests").get(&f.backend, "owner", "s1").await.unwrap().unwrap();
    assert_eq!((session["runningReferencingRequests"].as_i64(), session["inErrorReferencingRequests"].as_i64()), (Some(0), Some(0)));
}

#[tokio::test]
async fn a_timed_out_request_is_finished_by_a_late_confirmation() {
    let f = fixture().await;
    let data = b"slow storage".to_vec();
    let (_, url) = f.source("slow.bin", &data);
    f.submit(
        "r5",
        &creation("p5", vec![file_entry(&url, "RAWDATA", data.len(), &md5_hex(&data))], json!([{"pluginBusinessId": "online"}])),
    )
    .await;
    let release = delayed_release::DelayedRelease::new(f.backend.clone(), &config());
    f.clock.advance(chrono::Duration::minutes(11));
    assert_eq!(release.expire_remote_steps().await.unwrap(), 1);
    assert_eq!(state(&f.request("r5").await), pair("ERROR", "REMOTE_STORAGE_ERROR"));
    let events = f.run_worker().await;
    f.deliver_events(&events).await;
    assert_eq!(state(&f.request("r5").await), pair("SUCCESS", "DONE"));
    let session = granary_stores::sessions::SessionReader::new("requests").get(&f.backend, "owner", "s1").await.unwrap().unwrap();
    assert_eq!((session["runningReferencingRequests"].as_i64(), session["inErrorReferencingRequests"].as_i64()), (Some(0), Some(0)));
}

#[tokio::test]
async fn external_storage_events_in_regards_shapes_are_applied_and_strays_dead_lettered() {
    let f = fixture().await;
    let a = md5_hex(b"a");
    let b = md5_hex(b"b");
    let files = vec![file_entry("https://archive.invalid/a", "RAWDATA", 1, &a), file_entry("https://archive.invalid/b", "RAWDATA", 1, &b)];
    f.submit("r6", &creation("p6", files, json!([{"pluginBusinessId": "online"}]))).await;
    f.drain("storage-jobs").await;
    let group = json!({"groupId": "r6", "type": "STORAGE", "state": "SUCCESS",
        "success": [{"groupId": "r6", "requestChecksum": a, "requestStorage": "online",
                     "resultFile": {"location": {"storage": "online", "url": "s3://elsewhere/a"}}}]});
    let stray_group =
        json!({"type": "STORED", "checksum": a, "location": {"storage": "online", "url": "s3://x/a"}, "groupIds": ["nobody"]});
    let stray_file =
        json!({"type": "STORED", "checksum": "ffff", "location": {"storage": "online", "url": "s3://x/f"}, "groupIds": ["r6"]});
    let reference =
        json!({"type": "STORED", "checksum": b, "location": {"storage": "online", "url": "s3://elsewhere/b"}, "groupIds": ["r6"]});
    let msgs: Vec<ReceivedMessage> = [group, stray_group, stray_file, json!("not an event"), reference]
        .iter()
        .enumerate()
        .map(|(i, body)| message(&format!("e{i}"), &body.to_string(), &[]))
        .collect();
    f.deliver_events(&msgs).await;
    assert_eq!(state(&f.request("r6").await), pair("SUCCESS", "DONE"));
    let dead = f.drain("storage-ready-dead-letter").await;
    let reasons: Vec<&str> = dead.iter().map(|m| m.attributes[storage_ready::ATTR_REASON].as_str()).collect();
    assert_eq!(reasons.len(), 3, "{reasons:?}");
    assert!(reasons[0].contains("no request or order waits on group \"nobody\""), "{reasons:?}");
    assert!(reasons[1].contains("waits on no file of checksum ffff"), "{reasons:?}");
    assert!(reasons[2].contains("not a storage event"), "{reasons:?}");
}

#[tokio::test]
async fn unknown_locations_are_denied_at_registration() {
    let f = fixture().await;
    let files = vec![file_entry("https://archive.invalid/a", "RAWDATA", 1, &md5_hex(b"a"))];
    f.submit("r7", &creation("p7", files, json!([{"pluginBusinessId": "tape"}]))).await;
    let r7 = f.request("r7").await;
    assert_eq!(r7["state"], "DENIED");
    assert!(r7["errors"][0].as_str().unwrap().contains("no storage location is named \"tape\" (configured: nearline, online)"), "{r7}");
    assert!(f.drain("storage-jobs").await.is_empty());
}

#[tokio::test]
async fn a_deleted_feature_lets_its_files_go_and_a_shared_file_is_kept_until_its_last_owner_goes() {
    let f = fixture().await;
    let shared = b"shared by two products".to_vec();
    let own = b"only the first one's".to_vec();
    let (_, shared_url) = f.source("shared.bin", &shared);
    let (_, own_url) = f.source("own.bin", &own);
    let online = json!([{"pluginBusinessId": "online"}]);
    let shared_file = file_entry(&shared_url, "RAWDATA", shared.len(), &md5_hex(&shared));
    f.submit(
        "c1",
        &creation("first", vec![shared_file.clone(), file_entry(&own_url, "QUICKLOOK_SD", own.len(), &md5_hex(&own))], online.clone()),
    )
    .await;
    f.submit("c2", &creation("second", vec![shared_file], online)).await;
    let events = f.run_worker().await;
    f.deliver_events(&events).await;
    assert_eq!(state(&f.request("c1").await), pair("SUCCESS", "DONE"));
    assert_eq!(state(&f.request("c2").await), pair("SUCCESS", "DONE"));
    let owners = granary_stores::owners::FileOwners::new("features");
    let shared_object = granary_domain::storage::StoredObject { storage: "online".into(), checksum: md5_hex(&shared) };
    assert_eq!(owners.owners(&f.backend, &shared_object).await.unwrap(), 2);
    let object_exists = |checksum: String| {
        let blobs = f.backend.blobs.clone();
        async move { blobs.head("storage", &format!("online/{checksum}")).await.unwrap().is_some() }
    };

    f.delete("d1", "first").await;
    assert_eq!(state(&f.request("d1").await), pair("SUCCESS", "DONE"));
    f.run_worker().await;
    assert!(!object_exists(md5_hex(&own)).await, "the first product's own file is deleted with it");
    assert!(object_exists(md5_hex(&shared)).await, "the shared file is kept: the second product holds it");
    assert_eq!(owners.owners(&f.backend, &shared_object).await.unwrap(), 1);

    f.delete("d2", "second").await;
    f.run_worker().await;
    assert!(!object_exists(md5_hex(&shared)).await, "its last owner gone, the shared file is deleted");
    assert_eq!(owners.owners(&f.backend, &shared_object).await.unwrap(), 0);
}

#[tokio::test]
async fn an_override_lets_the_previous_versions_files_go_once_the_new_ones_are_stored() {
    let f = fixture().await;
    let kept = b"in both versions".to_vec();
    let old = b"only in version 1".to_vec();
    let new = b"only in version 2".to_vec();
    let (_, kept_url) = f.source("kept.bin", &kept);
    let (_, old_url) = f.source("old.bin", &old);
    let (_, new_url) = f.source("new.bin", &new);
    let online = json!([{"pluginBusinessId": "online"}]);
    let kept_file = file_entry(&kept_url, "RAWDATA", kept.len(), &md5_hex(&kept));
    f.submit("v1", &creation("product", vec![kept_file.clone(), file_entry(&old_url, "OTHER", old.len(), &md5_hex(&old))], online.clone()))
        .await;
    let events = f.run_worker().await;
    f.deliver_events(&events).await;
    let object_exists = |data: &[u8]| {
        let (blobs, key) = (f.backend.blobs.clone(), format!("online/{}", md5_hex(data)));
        async move { blobs.head("storage", &key).await.unwrap().is_some() }
    };
    assert!(object_exists(&old).await);

    let mut v2: Value =
        serde_json::from_str(&creation("product", vec![kept_file, file_entry(&new_url, "OTHER", new.len(), &md5_hex(&new))], online))
            .unwrap();
    v2["metadata"]["override"] = json!(true);
    f.submit("v2", &v2.to_string()).await;
    // Version 1 is gone, but its files stay until version 2's are stored.
    assert!(object_exists(&old).await);
    let events = f.run_worker().await;
    assert!(object_exists(&old).await, "nothing released before version 2 is stored");
    f.deliver_events(&events).await;
    assert_eq!(state(&f.request("v2").await), pair("SUCCESS", "DONE"));
    f.run_worker().await;
    assert!(!object_exists(&old).await, "version 1's own file is let go");
    assert!(object_exists(&kept).await, "the file both versions hold is kept");
    assert!(object_exists(&new).await);
}

#[tokio::test]
async fn a_patch_stores_its_files_and_replace_lets_the_files_not_sent_go() {
    let f = fixture().await;
    let first = b"first file".to_vec();
    let second = b"second file".to_vec();
    let third = b"third file".to_vec();
    let (_, first_url) = f.source("first.bin", &first);
    let (_, second_url) = f.source("second.bin", &second);
    let (_, third_url) = f.source("third.bin", &third);
    let online = json!([{"pluginBusinessId": "online"}]);
    f.submit("c", &creation("patched", vec![file_entry(&first_url, "RAWDATA", first.len(), &md5_hex(&first))], online.clone())).await;
    let events = f.run_worker().await;
    f.deliver_events(&events).await;
    let urn = format!("URN:FEATURE:DATA:granary:{}:V1", granary_domain::entity_uuid("patched"));
    let exists = |data: &[u8]| {
        let (blobs, key) = (f.backend.blobs.clone(), format!("online/{}", md5_hex(data)));
        async move { blobs.head("storage", &key).await.unwrap().is_some() }
    };
    let patch = |id: &str, file: Value, mode: &str| {
        let body = json!({"metadata": {"storages": online}, "feature": {"type": "Feature", "urn": urn, "files": [file]}}).to_string();
        let attrs = vec![
            ("regards.request.id".to_owned(), id.to_owned()),
            ("regards.request.type".to_owned(), "PATCH".to_owned()),
            ("regards.request.file_update_mode".to_owned(), mode.to_owned()),
        ];
        (id.to_owned(), body, attrs)
    };
    // APPEND (REGARDS's default): the second file is stored and added.
    f.send(patch("p1", file_entry(&second_url, "RAWDATA", second.len(), &md5_hex(&second)), "APPEND")).await;
    assert_eq!(state(&f.request("p1").await), pair("GRANTED", "REMOTE_STORAGE_REQUESTED"));
    let events = f.run_worker().await;
    f.deliver_events(&events).await;
    assert_eq!(state(&f.request("p1").await), pair("SUCCESS", "DONE"));
    assert_eq!(f.responses("p1").await, vec!["GRANTED", "SUCCESS"]);
    let files = f.feature_files("patched").await;
    assert_eq!(files.len(), 2);
    assert_eq!(files[1]["locations"][1]["url"], format!("s3://storage/online/{}", md5_hex(&second)));
    assert!(exists(&first).await && exists(&second).await);

    // REPLACE: the third file is the only one wanted; the other two are deleted from storage.
    f.send(patch("p2", file_entry(&third_url, "RAWDATA", third.len(), &md5_hex(&third)), "REPLACE")).await;
    let events = f.run_worker().await;
    f.deliver_events(&events).await;
    assert_eq!(state(&f.request("p2").await), pair("SUCCESS", "DONE"));
    let files = f.feature_files("patched").await;
    assert_eq!(files.len(), 1);
    assert_eq!(files[0]["attributes"]["checksum"], md5_hex(&third));
    assert!(!exists(&first).await && !exists(&second).await, "the files no longer wanted are deleted");
    assert!(exists(&third).await);

    // A mode that is neither is denied, naming the attribute.
    f.send(patch("p3", file_entry(&third_url, "RAWDATA", third.len(), &md5_hex(&third)), "MERGE")).await;
    let p3 = f.request("p3").await;
    assert_eq!(p3["state"], "DENIED");
    assert!(p3["errors"][0].as_str().unwrap().contains("regards.request.file_update_mode"), "{p3}");
}

#[tokio::test]
async fn a_confirmation_after_an_error_finishes_the_request_and_an_error_after_a_confirmation_changes_nothing() {
    let f = fixture().await;
    let a = md5_hex(b"a");
    let b = md5_hex(b"b");
    let files = vec![file_entry("https://archive.invalid/a", "RAWDATA", 1, &a), file_entry("https://archive.invalid/b", "RAWDATA", 1, &b)];
    f.submit("r8", &creation("p8", files, json!([{"pluginBusinessId": "online"}]))).await;
    f.drain("storage-jobs").await;
    let event = |kind: &str, checksum: &str, i: usize| {
        let body = json!({"type": kind, "checksum": checksum, "message": "tape drive offline",
                          "location": {"storage": "online", "url": format!("s3://elsewhere/{checksum}")}, "groupIds": ["r8"]});
        message(&format!("e{i}"), &body.to_string(), &[])
    };
    f.deliver_events(&[event("STORED", &a, 1), event("STORE_ERROR", &b, 2)]).await;
    let r8 = f.request("r8").await;
    assert_eq!(state(&r8), pair("ERROR", "REMOTE_STORAGE_ERROR"));
    assert!(r8["errors"][0].as_str().unwrap().contains("tape drive offline"), "{r8}");
    // The file was stored after all: the request succeeds.
    f.deliver_events(&[event("STORED", &b, 3)]).await;
    assert_eq!(state(&f.request("r8").await), pair("SUCCESS", "DONE"));
    // A late error for a stored file, and the same confirmation again: nothing changes.
    f.deliver_events(&[event("STORE_ERROR", &a, 4), event("STORED", &b, 5)]).await;
    assert_eq!(state(&f.request("r8").await), pair("SUCCESS", "DONE"));
    assert_eq!(f.responses("r8").await, vec!["GRANTED", "ERROR", "SUCCESS"]);
    let session = granary_stores::sessions::SessionReader::new("requests").get(&f.backend, "owner", "s1").await.unwrap().unwrap();
    assert_eq!((session["runningReferencingRequests"].as_i64(), session["inErrorReferencingRequests"].as_i64()), (Some(0), Some(0)));
    assert!(f.drain("storage-ready-dead-letter").await.is_empty());
}

#[tokio::test]
async fn s3_sources_are_copied_in_place_when_the_etag_is_the_md5_and_streamed_otherwise() {
    use sha2::Digest as _;
    let f = fixture().await;
    let data = b"an object already in a bucket".to_vec();
    let reader: granary_ports::BlobReader = Box::pin(std::io::Cursor::new(data.clone()));
    f.backend.blobs.put("incoming", "products/raw.bin", reader, granary_ports::StorageClass::Online).await.unwrap();
    let sha256 = hex::encode(sha2::Sha256::digest(&data));
    let mut by_sha = file_entry("s3://incoming/products/raw.bin", "RAWDATA", data.len(), &sha256);
    by_sha["attributes"]["algorithm"] = json!("SHA-256");
    let files = vec![file_entry("s3://incoming/products/raw.bin", "RAWDATA", data.len(), &md5_hex(&data))];
    f.submit("s1", &creation("by-md5", files, json!([{"pluginBusinessId": "online"}]))).await;
    f.submit("s2", &creation("by-sha", vec![by_sha], json!([{"pluginBusinessId": "nearline"}]))).await;
    let missing = vec![file_entry("s3://incoming/products/none.bin", "RAWDATA", 3, &md5_hex(b"abc"))];
    f.submit("s3", &creation("missing", missing, json!([{"pluginBusinessId": "online"}]))).await;
    let events = f.run_worker().await;
    f.deliver_events(&events).await;
    assert_eq!(state(&f.request("s1").await), pair("SUCCESS", "DONE"));
    assert_eq!(state(&f.request("s2").await), pair("SUCCESS", "DONE"));
    let s3 = f.request("s3").await;
    assert_eq!(state(&s3), pair("ERROR", "REMOTE_STORAGE_ERROR"));
    assert!(s3["errors"][0].as_str().unwrap().contains("no such object"), "{s3}");
    let copied = f.backend.blobs.head("storage", &format!("online/{}", md5_hex(&data))).await.unwrap().unwrap();
    assert_eq!(copied.size, data.len() as u64);
    let streamed = f.backend.blobs.head("storage", &format!("nearline/{sha256}")).await.unwrap().unwrap();
    assert_eq!((streamed.size, streamed.class), (data.len() as u64, granary_ports::StorageClass::Nearline));
}

#[tokio::test]
async fn s3_sources_outside_the_listed_buckets_are_storage_errors_before_any_read() {
    let f = fixture().await;
    let mut listed = config();
    listed.storage_source_buckets = Some(["incoming".to_owned()].into());
    let data = b"a producer's object".to_vec();
    for bucket in ["incoming", "elsewhere"] {
        let reader: granary_ports::BlobReader = Box::pin(std::io::Cursor::new(data.clone()));
        f.backend.blobs.put(bucket, "p/raw.bin", reader, granary_ports::StorageClass::Online).await.unwrap();
    }
    let worker = StorageWorker::with_settings(f.backend.clone(), listed, vec![], Duration::from_secs(5)).unwrap();
    let files = |bucket: &str| vec![file_entry(&format!("s3://{bucket}/p/raw.bin"), "RAWDATA", data.len(), &md5_hex(&data))];
    f.submit("ok", &creation("from-incoming", files("incoming"), json!([{"pluginBusinessId": "online"}]))).await;
    f.submit("no", &creation("from-elsewhere", files("elsewhere"), json!([{"pluginBusinessId": "online"}]))).await;
    let jobs = f.drain("storage-jobs").await;
    let r = worker.handle(LambdaEvent::new(sqs_event("storage-jobs", &jobs).unwrap(), Context::default())).await.unwrap();
    assert!(r.batch_item_failures.is_empty(), "a refused source is an answer, not a retry");
    let events = f.drain("storage-ready").await;
    f.deliver_events(&events).await;
    assert_eq!(state(&f.request("ok").await), pair("SUCCESS", "DONE"));
    let refused = f.request("no").await;
    assert_eq!(state(&refused), pair("ERROR", "REMOTE_STORAGE_ERROR"));
    assert!(refused["errors"][0].as_str().unwrap().contains("bucket elsewhere is not one Granary may read"), "{refused}");
}

#[tokio::test]
async fn a_blocking_recipient_holds_a_stored_request_until_it_acknowledges_before_or_after_storage() {
    use granary_domain::dissemination::{Recipient, RecipientFilter, Target};
    let f = fixture().await;
    let gate = Recipient {
        target: Target::Queue { queue: "mirror".into() },
        ack_required: true,
        blocking: true,
        filter: RecipientFilter::default(),
        secret: None,
    };
    granary_stores::dissemination::RecipientStore::new("features").put(&f.backend, "gate", &gate, "admin").await.unwrap();
    let storages = json!([{"pluginBusinessId": "online"}]);
    for (request_id, provider_id) in [("r1", "p1"), ("r2", "p2")] {
        let data = format!("the bytes of {provider_id}").into_bytes();
        let (_, url) = f.source(&format!("{provider_id}.bin"), &data);
        f.submit(request_id, &creation(provider_id, vec![file_entry(&url, "RAWDATA", data.len(), &md5_hex(&data))], storages.clone()))
            .await;
    }
    assert_eq!(state(&f.request("r1").await), pair("GRANTED", "REMOTE_STORAGE_REQUESTED"));
    assert_eq!(f.request("r1").await["blockedBy"], json!(["gate"]));
    // The gate gets both notifications, and acknowledges p1 before its file is stored.
    let d = dissemination::Dissemination::with_settings(f.backend.clone(), config(), Duration::ZERO, 3, Duration::ZERO).unwrap();
    let notifications = f.drain("feature-notification").await;
    assert_eq!(notifications.len(), 2);
    let r = d.handle(LambdaEvent::new(sqs_event("feature-notification", &notifications).unwrap(), Context::default())).await.unwrap();
    assert!(r.batch_item_failures.is_empty());
    let acks = acknowledgement::Acknowledgement::new(f.backend.clone(), config());
    let ack = |provider_id: &str| {
        let urn = format!("URN:FEATURE:DATA:granary:{}:V1", granary_domain::entity_uuid(provider_id));
        message(&format!("ack-{provider_id}"), &json!({"urn": urn, "recipientLabel": "gate"}).to_string(), &[])
    };
    let r = acks.handle(LambdaEvent::new(sqs_event("feature-ack", &[ack("p1")]).unwrap(), Context::default())).await.unwrap();
    assert!(r.batch_item_failures.is_empty());
    assert_eq!(state(&f.request("r1").await), pair("GRANTED", "REMOTE_STORAGE_REQUESTED"), "still storing");
    assert_eq!(f.responses("r1").await, vec!["GRANTED"]);

    // Stored: r1, acknowledged already, is done; r2 waits for the gate.
    let events = f.run_worker().await;
    f.deliver_events(&events).await;
    assert_eq!(state(&f.request("r1").await), pair("SUCCESS", "DONE"));
    assert_eq!(state(&f.request("r2").await), pair("GRANTED", "WAITING_BLOCKING_DISSEMINATION"));
    assert_eq!(f.feature_files("p2").await[0]["locations"].as_array().unwrap().len(), 2, "the stored location is added meanwhile");
    let mut sent: Vec<(String, String)> = f
        .drain("feature-response")
        .await
        .iter()
        .map(|m| serde_json::from_str::<Value>(&m.body).unwrap())
        .map(|e| (e["requestId"].as_str().unwrap().to_owned(), e["state"].as_str().unwrap().to_owned()))
        .collect();
    sent.sort();
    assert_eq!(sent, vec![pair("r1", "SUCCESS")], "r2's SUCCESS waits for the gate");
    // Events delivered again change nothing.
    f.deliver_events(&events).await;
    assert_eq!(state(&f.request("r2").await), pair("GRANTED", "WAITING_BLOCKING_DISSEMINATION"));

    let r = acks.handle(LambdaEvent::new(sqs_event("feature-ack", &[ack("p2")]).unwrap(), Context::default())).await.unwrap();
    assert!(r.batch_item_failures.is_empty());
    assert_eq!(state(&f.request("r2").await), pair("SUCCESS", "DONE"));
    assert_eq!(f.responses("r2").await, vec!["SUCCESS"]);

    // A patch of p1 (acknowledged before) whose files are stored before its notification reaches the
    // gate: the earlier acknowledgement does not answer it.
    let data = b"a second file of p1".to_vec();
    let (_, url) = f.source("p1-2.bin", &data);
    let urn = format!("URN:FEATURE:DATA:granary:{}:V1", granary_domain::entity_uuid("p1"));
    let patch = json!({"metadata": {"storages": storages},
        "feature": {"type": "Feature", "urn": urn, "id": "p1", "entityType": "DATA", "model": "S2_L1C", "geometry": null,
                    "properties": {}, "files": [file_entry(&url, "RAWDATA", data.len(), &md5_hex(&data))]}});
    f.send((
        "r3".into(),
        patch.to_string(),
        vec![("regards.request.id".into(), "r3".into()), ("regards.request.type".into(), "PATCH".into())],
    ))
    .await;
    let events = f.run_worker().await;
    f.deliver_events(&events).await;
    assert_eq!(
        state(&f.request("r3").await),
        pair("GRANTED", "WAITING_BLOCKING_DISSEMINATION"),
        "not released by p1's old acknowledgement"
    );
    let notifications = f.drain("feature-notification").await;
    let r = d.handle(LambdaEvent::new(sqs_event("feature-notification", &notifications).unwrap(), Context::default())).await.unwrap();
    assert!(r.batch_item_failures.is_empty());
    assert_eq!(state(&f.request("r3").await).1, "WAITING_BLOCKING_DISSEMINATION");
    let again = message("ack-p1-again", &json!({"urn": urn, "recipientLabel": "gate"}).to_string(), &[]);
    let r = acks.handle(LambdaEvent::new(sqs_event("feature-ack", &[again]).unwrap(), Context::default())).await.unwrap();
    assert!(r.batch_item_failures.is_empty());
    assert_eq!(state(&f.request("r3").await), pair("SUCCESS", "DONE"));
}
