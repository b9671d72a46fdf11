//! What a patch does to a stored feature: REGARDS's merge rules, as pure functions.

use serde_json::{Map, Value};

/// Merges `patch` into `target`: objects merge key by key (fragments too), any other value replaces,
/// and `null` removes the property.
pub fn merge_properties(target: &mut Map<String, Value>, patch: &Map<String, Value>) {
    for (k, v) in patch {
        match (target.get_mut(k), v) {
            (_, Value::Null) => {
                target.remove(k);
            }
            (Some(Value::Object(t)), Value::Object(p)) => merge_properties(t, p),
            _ => {
                target.insert(k.clone(), v.clone());
            }
        }
    }
}

/// How a patch's files change the stored ones (REGARDS's `regards.request.file_update_mode`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum FileUpdateMode {
    /// The patch's files are added; a file already there (same checksum) gains the patch's locations.
    #[default]
    Append,
    /// The patch's files are the feature's files; the others are no longer wanted.
    Replace,
}

impl FileUpdateMode {
    /// The mode a message attribute names; absent is APPEND, REGARDS's default.
    pub fn parse(value: Option<&str>) -> Result<Self, String> {
        match value.map(str::trim) {
            None | Some("") => Ok(Self::Append),
            Some(v) if v.eq_ignore_ascii_case("APPEND") => Ok(Self::Append),
            Some(v) if v.eq_ignore_ascii_case("REPLACE") => Ok(Self::Replace),
            Some(v) => Err(format!("message attribute regards.request.file_update_mode: {v:?} is not APPEND or REPLACE")),
        }
    }
}

fn checksum_of(file: &Value) -> String {
    file.pointer("/attributes/checksum").and_then(Value::as_str).unwrap_or_default().to_ascii_lowercase()
}

/// `file` with the locations of `other` it lacks.
fn with_locations_of(mut file: Value, other: &Value) -> Value {
    if let (Some(theirs), Some(Value::Array(ours))) = (other.get("locations").and_then(Value::as_array), file.get_mut("locations")) {
        for l in theirs {
            if !ours.contains(l) {
                ours.push(l.clone());
            }
        }
    }
    file
}

/// Applies the patch's `files` (when it has the key) to `out` by `mode`; returns the stored files no
/// longer wanted (REPLACE only). A file is the same file when its checksum is.
fn apply_files(out: &mut Map<String, Value>, patch: &Value, mode: FileUpdateMode) -> Vec<Value> {
    let Some(Value::Array(incoming)) = patch.get("files") else { return vec![] };
    let stored: Vec<Value> = match out.get("files") {
        Some(Value::Array(f)) => f.clone(),
        _ => vec![],
    };
    let (files, removed) = match mode {
        FileUpdateMode::Append => {
            let mut files = stored;
            for new in incoming {
                match files.iter_mut().find(|f| checksum_of(f) == checksum_of(new)) {
                    Some(existing) => *existing = with_locations_of(existing.clone(), new),
                    None => files.push(new.clone()),
                }
            }
            (files, vec![])
        }
        FileUpdateMode::Replace => {
            let files: Vec<Value> = incoming
                .iter()
                .map(|new| match stored.iter().find(|f| checksum_of(f) == checksum_of(new)) {
                    // Where the file is already stored stays known.
                    Some(old) => with_locations_of(new.clone(), old),
                    None => new.clone(),
                })
                .collect();
            let removed = stored.into_iter().filter(|old| !incoming.iter().any(|n| checksum_of(n) == checksum_of(old))).collect();
            (files, removed)
        }
    };
    out.insert("files".into(), Value::Array(files));
    removed
}

/// Applies a patch feature to a stored one: properties merged, geometry replaced when the patch has one
/// (an absent or null geometry, REGARDS's UNLOCATED, keeps the stored one), files appended or replaced
/// by `mode`, `history.updatedBy` set. The URN, version and `last` flag are the stored ones. Returns the
/// patched feature and the stored files it no longer holds.
pub fn apply_patch(stored: &Value, patch: &Value, updated_by: &str, mode: FileUpdateMode) -> (Value, Vec<Value>) {
    let mut out = stored.clone();
    let Some(obj) = out.as_object_mut() else { return (out, vec![]) };
    let removed = apply_files(obj, patch, mode);
    if let Some(Value::Object(p)) = patch.get("properties") {
        let props = obj.entry("properties").or_insert_with(|| Value::Object(Map::new()));
        if !props.is_object() {
            *props = Value::Object(Map::new());
        }
        if let Value::Object(t) = props {
            merge_properties(t, p);
        }
    }
    match patch.get("geometry") {
        None | Some(Value::Null) => {}
        Some(g) => {
            obj.insert("geometry".into(), g.clone());
            match patch.get("bbox") {
                Some(b) => obj.insert("bbox".into(), b.clone()),
                None => obj.remove("bbox"),
            };
        }
    }
    let history = obj.entry("history").or_insert_with(|| Value::Object(Map::new()));
    if let Value::Object(h) = history {
        h.insert("updatedBy".into(), Value::from(updated_by));
    }
    (out, removed)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn properties_merge_deeply_and_null_removes() {
        let stored = json!({"urn": "U", "properties": {"a": 1, "b": 2, "quality": {"valid": true, "degraded": 3}}, "geometry": {"type": "Point", "coordinates": [0, 0]}});
        let patch = json!({"urn": "U", "properties": {"b": 20, "c": [1], "a": null, "quality": {"degraded": 0}}});
        let (out, _) = apply_patch(&stored, &patch, "ann", FileUpdateMode::Append);
        assert_eq!(out["properties"], json!({"b": 20, "c": [1], "quality": {"valid": true, "degraded": 0}}));
        assert_eq!(out["geometry"], stored["geometry"], "no geometry in the patch keeps the stored one");
        assert_eq!(out["history"]["updatedBy"], "ann");
        assert_eq!(out["urn"], "U");
    }

    #[test]
    fn geometry_is_replaced() {
        let stored = json!({"geometry": {"type": "Point", "coordinates": [0, 0]}, "bbox": [0, 0, 0, 0]});
        let patch = json!({"geometry": {"type": "Point", "coordinates": [1, 2]}});
        let (out, _) = apply_patch(&stored, &patch, "x", FileUpdateMode::Append);
        assert_eq!(out["geometry"]["coordinates"], json!([1, 2]));
        assert!(out.get("bbox").is_none(), "a stale bbox is dropped with the geometry it bounded");
        let (unlocated, _) = apply_patch(&stored, &json!({"geometry": null}), "x", FileUpdateMode::Append);
        assert_eq!(unlocated["geometry"], stored["geometry"]);
    }

    fn file(checksum: &str, url: &str) -> Value {
        json!({"locations": [{"url": url}], "attributes": {"checksum": checksum, "filename": checksum}})
    }

    #[test]
    fn append_adds_files_and_locations_and_replace_drops_the_files_not_sent() {
        let stored = json!({"files": [file("aa", "file:///a"), file("bb", "file:///b")]});
        let mut stored_a = stored.clone();
        stored_a["files"][0]["locations"].as_array_mut().unwrap().push(json!({"storage": "online", "url": "s3://s/aa"}));
        let patch = json!({"files": [file("AA", "https://mirror/a"), file("cc", "file:///c")]});
        let (out, removed) = apply_patch(&stored_a, &patch, "x", FileUpdateMode::Append);
        let urls = |v: &Value| v["locations"].as_array().unwrap().iter().map(|l| l["url"].as_str().unwrap().to_owned()).collect::<Vec<_>>();
        assert_eq!(out["files"].as_array().unwrap().len(), 3);
        assert_eq!(urls(&out["files"][0]), vec!["file:///a", "s3://s/aa", "https://mirror/a"]);
        assert!(removed.is_empty());
        let (out, removed) = apply_patch(&stored_a, &patch, "x", FileUpdateMode::Replace);
        assert_eq!(out["files"].as_array().unwrap().len(), 2);
        assert_eq!(urls(&out["files"][0]), vec!["https://mirror/a", "file:///a", "s3://s/aa"], "where it is stored stays known");
        assert_eq!(removed, vec![file("bb", "file:///b")]);
        let (out, removed) = apply_patch(&stored, &json!({"properties": {}}), "x", FileUpdateMode::Replace);
        assert_eq!((out["files"].clone(), removed.len()), (stored["files"].clone(), 0), "a patch without files keeps them");
    }

    #[test]
    fn the_mode_attribute_is_append_by_default_and_checked() {
        assert_eq!(FileUpdateMode::parse(None), Ok(FileUpdateMode::Append));
        assert_eq!(FileUpdateMode::parse(Some("replace")), Ok(FileUpdateMode::Replace));
        assert!(FileUpdateMode::parse(Some("MERGE")).unwrap_err().contains("\"MERGE\" is not APPEND or REPLACE"));
    }
}
