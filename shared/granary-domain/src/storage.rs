//! Storing a feature's files: storage locations, which file goes where (a request's
//! `metadata.storages`), the storage job the worker runs, and the storage events that come back (from
//! Granary's own worker, or from an external storage service in REGARDS's shapes).

use crate::file::ChecksumAlgorithm;
use crate::request::StorageMetadata;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::collections::BTreeMap;

/// At most this many files to store per request: the request, its file tasks and its events are one
/// transaction (DynamoDB takes 100 operations).
pub const MAX_FILES_TO_STORE: usize = 40;

/// How a location's objects are read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "UPPERCASE")]
pub enum LocationClass {
    /// Readable at once (S3 Standard; a plain directory on one machine).
    Online,
    /// Readable after a restore (S3 Glacier classes).
    Nearline,
}

/// A storage location, named as REGARDS names it (`pluginBusinessId`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct StorageLocation {
    /// The bucket (a directory under the data directory on one machine).
    pub bucket: String,
    /// Key prefix inside the bucket, without a leading or trailing `/` (may be empty).
    #[serde(default)]
    pub prefix: String,
    /// Online or nearline.
    pub class: LocationClass,
}

/// Storage locations by name.
pub type Locations = BTreeMap<String, StorageLocation>;

/// Reads the locations' configuration: a JSON object `{"<name>": {"bucket", "prefix", "class"}}`.
pub fn parse_locations(text: &str) -> Result<Locations, String> {
    let locations: Locations =
        serde_json::from_str(text).map_err(|e| format!("storage locations must be a JSON object of {{bucket, prefix, class}}: {e}"))?;
    for (name, l) in &locations {
        if name.trim().is_empty() {
            return Err("a storage location has a blank name".into());
        }
        if l.bucket.trim().is_empty() {
            return Err(format!("storage location {name:?}: bucket must not be blank"));
        }
        if !l.prefix.is_empty() && !is_clean_path(&l.prefix) {
            return Err(format!("storage location {name:?}: prefix {:?} must be '/'-separated names, none '.' or '..'", l.prefix));
        }
    }
    Ok(locations)
}

/// Whether `path` is relative, made of non-empty segments, none `.` or `..`, with no backslash or NUL.
fn is_clean_path(path: &str) -> bool {
    !path.starts_with('/')
        && !path.contains(['\\', '\0'])
        && path.split('/').all(|s| !s.is_empty() && s != "." && s != "..")
        && path.len() <= 512
}

/// One file to copy into one location.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct FileToStore {
    /// The file's checksum (hex, lower case), which names it in the location.
    pub checksum: String,
    /// The checksum's algorithm, as given (MD5, SHA-256, ...).
    pub algorithm: String,
    /// The file's name.
    pub filename: String,
    /// Its size in bytes, as declared.
    pub filesize: u64,
    /// Its data type (RAWDATA, QUICKLOOK_SD, ...).
    pub data_type: String,
    /// Where to copy it from (the first of its locations).
    pub source: String,
    /// The location's name.
    pub storage: String,
    /// The object key in the location's bucket.
    pub key: String,
}

impl FileToStore {
    /// The file task's identity within its request: checksum and location.
    pub fn task_id(&self) -> String {
        task_id(&self.checksum, &self.storage)
    }
}

/// The identity of a file task: checksum and location.
pub fn task_id(checksum: &str, storage: &str) -> String {
    format!("{}#{storage}", checksum.to_ascii_lowercase())
}

/// What the storage worker is asked to do for one request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StorageJob {
    /// The request whose files these are (the group id of the storage events that answer).
    pub request_id: String,
    /// The feature that holds them.
    pub urn: String,
    /// The files.
    pub files: Vec<FileToStore>,
}

/// A stored object, as its owners know it: its location and checksum (its key follows from them).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StoredObject {
    /// The location's name.
    pub storage: String,
    /// The file's checksum, lower case.
    pub checksum: String,
}

/// What the storage worker is asked to do when an owner lets its files go (its feature deleted, or
/// replaced by an override): drop its ownership of each object, and delete the objects no one owns.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ReleaseJob {
    /// The owner letting go (a feature's URN).
    pub owner: String,
    /// The objects it may hold.
    pub objects: Vec<StoredObject>,
}

/// A message of the storage worker's queue.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum WorkerJob {
    /// Copy files in.
    Store(StorageJob),
    /// Let files go.
    Release(ReleaseJob),
}

/// The objects `feature`'s files may be stored as: each checksum in each location (an owner holds
/// only those it claimed; the others are skipped when released).
pub fn objects_of(feature: &Value, locations: &Locations) -> Vec<StoredObject> {
    let files = feature.get("files").and_then(Value::as_array).map(Vec::as_slice).unwrap_or_default();
    let mut out: Vec<StoredObject> = files
        .iter()
        .filter_map(|f| f.pointer("/attributes/checksum").and_then(Value::as_str))
        .flat_map(|c| locations.keys().map(move |s| StoredObject { storage: s.clone(), checksum: c.to_ascii_lowercase() }))
        .collect();
    out.sort();
    out.dedup();
    out
}

/// Which of `feature`'s files go to which location, by `storages` (REGARDS's StorageMetadata: a
/// location with no target types takes every file). A file no location takes is referenced as given.
/// Every problem is named by its path.
pub fn plan_storage(feature: &Value, storages: &[StorageMetadata], locations: &Locations) -> Result<Vec<FileToStore>, Vec<String>> {
    let mut errors = Vec::new();
    for (i, s) in storages.iter().enumerate() {
        if !locations.contains_key(&s.plugin_business_id) {
            let known: Vec<&str> = locations.keys().map(String::as_str).collect();
            errors.push(format!(
                "metadata.storages[{i}].pluginBusinessId: no storage location is named {:?} (configured: {})",
                s.plugin_business_id,
                if known.is_empty() { "none".to_owned() } else { known.join(", ") }
            ));
        }
        if let Some(p) = s.store_path.as_deref().map(|p| p.trim_matches('/')).filter(|p| !p.is_empty())
            && !is_clean_path(p)
        {
            errors.push(format!("metadata.storages[{i}].storePath: {p:?} must be '/'-separated names, none '.' or '..'"));
        }
    }
    if !errors.is_empty() {
        return Err(errors);
    }
    let mut out: Vec<FileToStore> = Vec::new();
    let files = feature.get("files").and_then(Value::as_array).map(Vec::as_slice).unwrap_or_default();
    for file in files {
        let attr = |name: &str| file.pointer(&format!("/attributes/{name}"));
        let text = |name: &str| attr(name).and_then(Value::as_str).unwrap_or_default().to_owned();
        let data_type = text("dataType");
        let checksum = text("checksum").to_ascii_lowercase();
        let source = file.pointer("/locations/0/url").and_then(Value::as_str).unwrap_or_default().to_owned();
        for s in storages {
            if !s.target_types.is_empty() && !s.target_types.contains(&data_type) {
                continue;
            }
            let Some(location) = locations.get(&s.plugin_business_id) else { continue };
            if out.iter().any(|f| f.checksum == checksum && f.storage == s.plugin_business_id) {
                continue;
            }
            let store_path = s.store_path.as_deref().map(|p| p.trim_matches('/')).unwrap_or_default();
            let key = [location.prefix.as_str(), store_path, checksum.as_str()]
                .iter()
                .filter(|p| !p.is_empty())
                .copied()
                .collect::<Vec<_>>()
                .join("/");
            out.push(FileToStore {
                checksum: checksum.clone(),
                algorithm: text("algorithm"),
                filename: text("filename"),
                filesize: attr("filesize").and_then(Value::as_u64).unwrap_or_default(),
                data_type: data_type.clone(),
                source: source.clone(),
                storage: s.plugin_business_id.clone(),
                key,
            });
        }
    }
    if out.len() > MAX_FILES_TO_STORE {
        return Err(vec![format!("feature.files: {} files to store; at most {MAX_FILES_TO_STORE} per request", out.len())]);
    }
    Ok(out)
}

/// What a storage event says of one file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FileResult {
    /// Stored at `url`.
    Stored {
        /// Where it now is.
        url: String,
    },
    /// Not stored, for `cause`.
    StoreError {
        /// Why.
        cause: String,
    },
    /// Made available (restored) for download.
    Available,
    /// Could not be made available, for `cause`.
    AvailabilityError {
        /// Why.
        cause: String,
    },
}

/// One file's outcome, as read from a storage event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StorageOutcome {
    /// The group (for stored files, the request id).
    pub group_id: String,
    /// The file's checksum, lower case.
    pub checksum: String,
    /// The location, when the event names it.
    pub storage: Option<String>,
    /// What happened.
    pub result: FileResult,
}

fn text_at<'a>(v: &'a Value, pointer: &str) -> Option<&'a str> {
    v.pointer(pointer).and_then(Value::as_str).filter(|s| !s.trim().is_empty())
}

/// Reads a storage event: REGARDS's FileReferenceEvent (one file, for each of its `groupIds`) or
/// FileRequestsGroupEvent (a group's `success` and `errors`). Granary's own worker sends the first.
pub fn parse_storage_event(body: &Value) -> Result<Vec<StorageOutcome>, String> {
    if body.get("groupId").is_some() && (body.get("success").is_some() || body.get("errors").is_some()) {
        return parse_group_event(body);
    }
    let kind = text_at(body, "/type")
        .ok_or("not a storage event: no type (FileReferenceEvent) nor groupId with success/errors (FileRequestsGroupEvent)")?;
    let checksum = text_at(body, "/checksum")
        .or_else(|| text_at(body, "/metaInfo/checksum"))
        .ok_or("FileReferenceEvent: checksum is required")?
        .to_ascii_lowercase();
    let storage = text_at(body, "/location/storage").map(str::to_owned);
    let message = text_at(body, "/message").unwrap_or("no cause given").to_owned();
    let result = match kind {
        "STORED" => FileResult::Stored {
            url: text_at(body, "/location/url").ok_or("FileReferenceEvent STORED: location.url is required")?.to_owned(),
        },
        "STORE_ERROR" => FileResult::StoreError { cause: message },
        "AVAILABLE" => FileResult::Available,
        "AVAILABILITY_ERROR" => FileResult::AvailabilityError { cause: message },
        other => {
            return Err(format!(
                "FileReferenceEvent: type {other:?} is not one Granary waits for (STORED, STORE_ERROR, AVAILABLE, AVAILABILITY_ERROR)"
            ));
        }
    };
    let groups: Vec<String> = match body.get("groupIds") {
        // A blank id names no group (as a FileRequestsGroupEvent's blank groupId): it was answered as
        // an outcome for the group "" (found by tests/fuzz.rs).
        Some(Value::Array(ids)) => ids.iter().filter_map(Value::as_str).filter(|g| !g.trim().is_empty()).map(str::to_owned).collect(),
        _ => vec![],
    };
    if groups.is_empty() {
        return Err("FileReferenceEvent: groupIds must list at least one group".into());
    }
    Ok(groups
        .into_iter()
        .map(|group_id| StorageOutcome { group_id, checksum: checksum.clone(), storage: storage.clone(), result: result.clone() })
        .collect())
}

fn parse_group_event(body: &Value) -> Result<Vec<StorageOutcome>, String> {
    let group = text_at(body, "/groupId").ok_or("FileRequestsGroupEvent: groupId must be a non-blank string")?;
    let kind = text_at(body, "/type").unwrap_or("STORAGE");
    let list = |name: &str| -> Result<Vec<Value>, String> {
        match body.get(name) {
            None | Some(Value::Null) => Ok(vec![]),
            Some(Value::Array(a)) => Ok(a.clone()),
            Some(other) => Err(format!("FileRequestsGroupEvent: {name} must be a list, not {other}")),
        }
    };
    let mut out = Vec::new();
    for (entry, ok) in list("success")?.into_iter().map(|e| (e, true)).chain(list("errors")?.into_iter().map(|e| (e, false))) {
        let checksum = text_at(&entry, "/requestChecksum")
            .or_else(|| text_at(&entry, "/resultFile/metaInfo/checksum"))
            .ok_or("FileRequestsGroupEvent: an entry has no requestChecksum")?
            .to_ascii_lowercase();
        let storage = text_at(&entry, "/requestStorage").or_else(|| text_at(&entry, "/resultFile/location/storage")).map(str::to_owned);
        let cause = text_at(&entry, "/errorCause").unwrap_or("no cause given").to_owned();
        let result = match (kind, ok) {
            ("AVAILABILITY", true) => FileResult::Available,
            ("AVAILABILITY", false) => FileResult::AvailabilityError { cause },
            (_, true) => FileResult::Stored {
                url: text_at(&entry, "/resultFile/location/url")
                    .ok_or("FileRequestsGroupEvent: a success entry has no resultFile.location.url")?
                    .to_owned(),
            },
            (_, false) => FileResult::StoreError { cause },
        };
        out.push(StorageOutcome { group_id: group.to_owned(), checksum, storage, result });
    }
    Ok(out)
}

/// The FileReferenceEvent Granary's worker sends for one stored (or failed) file.
pub fn file_reference_event(job: &StorageJob, file: &FileToStore, result: &Result<String, String>) -> Value {
    let (kind, url, message) = match result {
        Ok(url) => ("STORED", Some(url.as_str()), None),
        Err(cause) => ("STORE_ERROR", None, Some(cause.as_str())),
    };
    serde_json::json!({
        "type": kind,
        "checksum": file.checksum,
        "owners": [job.urn],
        "location": { "storage": file.storage, "url": url },
        "metaInfo": {
            "checksum": file.checksum,
            "algorithm": file.algorithm,
            "fileName": file.filename,
            "fileSize": file.filesize,
            "type": file.data_type,
        },
        "groupIds": [job.request_id],
        "message": message,
    })
}

/// Whether `name` is a checksum algorithm the worker can compute.
pub fn known_algorithm(name: &str) -> Option<ChecksumAlgorithm> {
    ChecksumAlgorithm::parse(name)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn locations() -> Locations {
        parse_locations(
            r#"{"online": {"bucket": "storage", "prefix": "online", "class": "ONLINE"},
                            "archive": {"bucket": "storage", "prefix": "nearline", "class": "NEARLINE"}}"#,
        )
        .unwrap()
    }

    fn file(data_type: &str, checksum: &str) -> Value {
        json!({"locations": [{"url": format!("file:///in/{checksum}")}],
               "attributes": {"dataType": data_type, "mimeType": "application/zip", "filename": "f.zip",
                              "filesize": 10, "algorithm": "MD5", "checksum": checksum}})
    }

    fn storage(name: &str, path: Option<&str>, types: &[&str]) -> StorageMetadata {
        StorageMetadata {
            plugin_business_id: name.into(),
            store_path: path.map(str::to_owned),
            target_types: types.iter().map(|t| t.to_string()).collect(),
        }
    }

    #[test]
    fn target_types_pick_the_location_and_untargeted_files_stay_referenced() {
        let a = "a".repeat(32);
        let b = "B".repeat(32);
        let feature = json!({"files": [file("RAWDATA", &a), file("QUICKLOOK_SD", &b)]});
        let plan = plan_storage(&feature, &[storage("archive", Some("/s2/l1c/"), &["RAWDATA"])], &locations()).unwrap();
        assert_eq!(plan.len(), 1, "the quicklook is referenced, not stored: {plan:?}");
        assert_eq!(plan[0].key, format!("nearline/s2/l1c/{a}"));
        assert_eq!(plan[0].source, format!("file:///in/{a}"));
        let plan = plan_storage(&feature, &[storage("online", None, &[]), storage("archive", None, &["RAWDATA"])], &locations()).unwrap();
        let ids: Vec<String> = plan.iter().map(FileToStore::task_id).collect();
        assert_eq!(ids, vec![format!("{a}#online"), format!("{a}#archive"), format!("{}#online", b.to_lowercase())]);
    }

    #[test]
    fn unknown_locations_and_escaping_store_paths_are_named() {
        let feature = json!({"files": [file("RAWDATA", &"a".repeat(32))]});
        let errors =
            plan_storage(&feature, &[storage("tape", None, &[]), storage("online", Some("a/../../etc"), &[])], &locations()).unwrap_err();
        assert_eq!(errors.len(), 2, "{errors:?}");
        assert!(
            errors[0]
                .starts_with("metadata.storages[0].pluginBusinessId: no storage location is named \"tape\" (configured: archive, online)")
        );
        assert!(errors[1].starts_with("metadata.storages[1].storePath:"), "{errors:?}");
    }

    #[test]
    fn too_many_files_to_store_are_refused() {
        let files: Vec<Value> = (0..=MAX_FILES_TO_STORE).map(|i| file("RAWDATA", &format!("{i:032x}"))).collect();
        let errors = plan_storage(&json!({ "files": files }), &[storage("online", None, &[])], &locations()).unwrap_err();
        assert!(errors[0].contains("at most 40"), "{errors:?}");
    }

    #[test]
    fn worker_jobs_read_back_as_what_they_are() {
        let release = WorkerJob::Release(ReleaseJob {
            owner: "URN:X".into(),
            objects: vec![StoredObject { storage: "online".into(), checksum: "ab".into() }],
        });
        let text = serde_json::to_string(&release).unwrap();
        assert_eq!(serde_json::from_str::<WorkerJob>(&text).unwrap(), release);
        let store = WorkerJob::Store(StorageJob { request_id: "r".into(), urn: "URN:X".into(), files: vec![] });
        assert_eq!(serde_json::from_str::<WorkerJob>(&serde_json::to_string(&store).unwrap()).unwrap(), store);
        let feature = json!({"files": [file("RAWDATA", "AA"), file("OTHER", "aa"), file("OTHER", "bb")]});
        let objects: Vec<String> = objects_of(&feature, &locations()).iter().map(|o| format!("{}/{}", o.storage, o.checksum)).collect();
        assert_eq!(objects, vec!["archive/aa", "archive/bb", "online/aa", "online/bb"]);
    }

    #[test]
    fn bad_location_configuration_is_named() {
        assert!(parse_locations(r#"{"x": {"bucket": "b", "class": "TAPE"}}"#).unwrap_err().contains("storage locations must be"));
        assert!(parse_locations(r#"{"x": {"bucket": " ", "class": "ONLINE"}}"#).unwrap_err().contains("\"x\": bucket"));
        assert!(parse_locations(r#"{"x": {"bucket": "b", "prefix": "../up", "class": "ONLINE"}}"#).unwrap_err().contains("prefix"));
    }

    #[test]
    fn file_reference_events_are_read_per_group() {
        let e = json!({"type": "STORED", "checksum": "ABC", "location": {"storage": "online", "url": "s3://b/k"},
                       "groupIds": ["r1", "r2"]});
        let out = parse_storage_event(&e).unwrap();
        assert_eq!(out.len(), 2);
        assert_eq!(
            out[1],
            StorageOutcome {
                group_id: "r2".into(),
                checksum: "abc".into(),
                storage: Some("online".into()),
                result: FileResult::Stored { url: "s3://b/k".into() }
            }
        );
        let e = json!({"type": "STORE_ERROR", "checksum": "abc", "message": "disk full", "groupIds": ["r1"]});
        assert_eq!(parse_storage_event(&e).unwrap()[0].result, FileResult::StoreError { cause: "disk full".into() });
        for (bad, why) in [
            (json!({"type": "STORED", "checksum": "a", "groupIds": ["r"]}), "location.url"),
            (json!({"type": "COPIED", "checksum": "a", "groupIds": ["r"]}), "COPIED"),
            (json!({"type": "STORED", "location": {"url": "u"}, "groupIds": ["r"]}), "checksum"),
            (json!({"type": "STORED", "checksum": "a", "location": {"url": "u"}}), "groupIds"),
            (json!([1, 2]), "not a storage event"),
        ] {
            assert!(parse_storage_event(&bad).unwrap_err().contains(why), "{bad} should fail naming {why}");
        }
    }

    #[test]
    fn group_events_list_successes_and_errors() {
        let e = json!({"groupId": "r1", "type": "STORAGE", "state": "ERROR",
            "success": [{"groupId": "r1", "requestChecksum": "aa", "requestStorage": "online",
                         "resultFile": {"location": {"storage": "online", "url": "s3://b/aa"}}}],
            "errors": [{"groupId": "r1", "requestChecksum": "bb", "requestStorage": "online", "errorCause": "404"}]});
        let out = parse_storage_event(&e).unwrap();
        assert_eq!(out[0].result, FileResult::Stored { url: "s3://b/aa".into() });
        assert_eq!(out[1].result, FileResult::StoreError { cause: "404".into() });
        let restore = json!({"groupId": "g", "type": "AVAILABILITY", "success": [{"requestChecksum": "cc"}]});
        assert_eq!(parse_storage_event(&restore).unwrap()[0].result, FileResult::Available);
        assert!(parse_storage_event(&json!({"groupId": "g", "success": 3})).unwrap_err().contains("success must be a list"));
    }

    #[test]
    fn the_worker_event_reads_back_as_what_it_reports() {
        let job = StorageJob { request_id: "r".into(), urn: "URN:X".into(), files: vec![] };
        let f = FileToStore {
            checksum: "ab".into(),
            algorithm: "MD5".into(),
            filename: "f".into(),
            filesize: 1,
            data_type: "RAWDATA".into(),
            source: "file:///f".into(),
            storage: "online".into(),
            key: "online/ab".into(),
        };
        let stored = parse_storage_event(&file_reference_event(&job, &f, &Ok("s3://storage/online/ab".into()))).unwrap();
        assert_eq!(stored[0].result, FileResult::Stored { url: "s3://storage/online/ab".into() });
        assert_eq!(stored[0].storage.as_deref(), Some("online"));
        let failed = parse_storage_event(&file_reference_event(&job, &f, &Err("404".into()))).unwrap();
        assert_eq!(failed[0].result, FileResult::StoreError { cause: "404".into() });
    }
}
