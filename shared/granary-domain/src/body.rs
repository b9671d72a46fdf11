//! Reading request bodies so that every problem is listed: serde stops at the first wrong field, so the
//! typed metadata fields (priority, flags, names, storages) are checked one by one first, and a wrong
//! one is reported and replaced by its default before the body is deserialised; the validators then add
//! the feature's own errors. Each path is reported once.

use crate::request::{
    FeatureCreationRequestEvent, FeatureDeletionRequestEvent, FeatureNotificationRequestEvent, FeatureUpdateRequestEvent,
};
use serde::de::DeserializeOwned;
use serde_json::{Map, Value};

/// The JSON type a field must have.
#[derive(Clone, Copy)]
enum Shape {
    Priority,
    Bool,
    Text,
    TextList,
    ObjectList,
}

fn check_fields(obj: &mut Map<String, Value>, path: &str, fields: &[(&str, Shape)], errors: &mut Vec<String>) {
    for (name, shape) in fields {
        let Some(v) = obj.get(*name) else { continue };
        let problem = match shape {
            Shape::Priority => match v.as_str() {
                Some("LOW" | "NORMAL" | "HIGH") => None,
                _ => Some(format!("{v} is not LOW, NORMAL or HIGH")),
            },
            Shape::Bool => (!v.is_boolean()).then(|| format!("{v} is not true or false")),
            Shape::Text => (!v.is_string() && !v.is_null()).then(|| format!("{v} is not a string")),
            Shape::TextList => {
                (!v.as_array().is_some_and(|a| a.iter().all(Value::is_string))).then(|| "must be a list of strings".to_owned())
            }
            Shape::ObjectList => {
                (!v.as_array().is_some_and(|a| a.iter().all(Value::is_object))).then(|| "must be a list of objects".to_owned())
            }
        };
        if let Some(problem) = problem {
            errors.push(format!("{path}{name}: {problem}"));
            match shape {
                // A required priority goes on as the default, so that it is not reported missing too.
                Shape::Priority => {
                    obj.insert((*name).to_owned(), Value::from("NORMAL"));
                }
                _ => {
                    obj.remove(*name);
                }
            }
        }
    }
}

/// Deserialises `body` once its checked fields are sane; a remaining serde error is listed too.
fn finish<T: DeserializeOwned>(body: Value, mut errors: Vec<String>) -> Result<T, Vec<String>> {
    match serde_json::from_value::<T>(body) {
        Ok(v) if errors.is_empty() => Ok(v),
        Ok(_) => Err(errors),
        Err(e) => {
            errors.push(format!("body: {e}"));
            Err(errors)
        }
    }
}

fn object(body: &Value) -> Result<Map<String, Value>, Vec<String>> {
    body.as_object().cloned().ok_or_else(|| vec!["body: must be a JSON object".to_owned()])
}

const METADATA: &[(&str, Shape)] = &[
    ("priority", Shape::Priority),
    ("override", Shape::Bool),
    ("updateIfExists", Shape::Bool),
    ("sessionOwner", Shape::Text),
    ("session", Shape::Text),
    ("acknowledgedRecipient", Shape::Text),
    ("storages", Shape::ObjectList),
];

fn check_metadata(obj: &mut Map<String, Value>, errors: &mut Vec<String>) {
    match obj.get_mut("metadata") {
        Some(Value::Object(m)) => {
            check_fields(m, "metadata.", METADATA, errors);
            check_storages(m, errors);
        }
        Some(_) => {
            errors.push("metadata: must be an object".into());
            obj.insert("metadata".into(), Value::Object(Map::new()));
        }
        None => {}
    }
}

/// `metadata.storages` (REGARDS's StorageMetadata): each names its location (`pluginBusinessId`, not
/// blank) and may give a `storePath` and the `targetTypes` (data types) that go there. A wrong list is
/// reported and dropped, so that deserialising does not report it again.
fn check_storages(metadata: &mut Map<String, Value>, errors: &mut Vec<String>) {
    let Some(Value::Array(storages)) = metadata.get("storages") else { return };
    let before = errors.len();
    for (i, storage) in storages.iter().enumerate() {
        let at = format!("metadata.storages[{i}]");
        match storage.get("pluginBusinessId") {
            Some(Value::String(id)) if !id.trim().is_empty() => {}
            Some(Value::String(_)) => errors.push(format!("{at}.pluginBusinessId: must not be blank")),
            None | Some(Value::Null) => errors.push(format!("{at}.pluginBusinessId: required (the storage location's name)")),
            Some(_) => errors.push(format!("{at}.pluginBusinessId: must be a string")),
        }
        if let Some(path) = storage.get("storePath").filter(|p| !p.is_null() && !p.is_string()) {
            errors.push(format!("{at}.storePath: {path} is not a string"));
        }
        match storage.get("targetTypes") {
            None | Some(Value::Null) => {}
            Some(Value::Array(types)) => {
                for t in types {
                    if !t.as_str().is_some_and(|t| crate::file::DATA_TYPES.contains(&t)) {
                        errors.push(format!("{at}.targetTypes: {t} is not one of {}", crate::file::DATA_TYPES.join(", ")));
                    }
                }
            }
            Some(other) => errors.push(format!("{at}.targetTypes: {other} is not a list of data types")),
        }
    }
    if errors.len() > before {
        metadata.remove("storages");
    }
}

/// Keeps the first error of each path (`metadata.priority: …`), in order.
fn dedupe(errors: Vec<String>) -> Vec<String> {
    let mut seen = std::collections::HashSet::new();
    errors.into_iter().filter(|e| seen.insert(e.split(':').next().unwrap_or_default().to_owned())).collect()
}

/// A FeatureCreationRequestEvent, or every problem of its shape and of its feature.
pub fn parse_creation(body: &Value) -> Result<(FeatureCreationRequestEvent, crate::request::ValidCreation), Vec<String>> {
    let mut obj = object(body)?;
    let mut errors = Vec::new();
    check_metadata(&mut obj, &mut errors);
    if !obj.contains_key("metadata") {
        errors.push("metadata: required (sessionOwner, session, priority)".into());
        obj.insert("metadata".into(), Value::Object(Map::new()));
    }
    if !obj.contains_key("feature") {
        errors.push("feature: required (the GeoJSON feature)".into());
        obj.insert("feature".into(), Value::Null);
    }
    let event: FeatureCreationRequestEvent = match finish(Value::Object(obj), vec![]) {
        Ok(e) => e,
        Err(more) => return Err(dedupe([errors, more].concat())),
    };
    match crate::request::validate_creation(&event) {
        Ok(valid) if errors.is_empty() => Ok((event, valid)),
        Ok(_) => Err(dedupe(errors)),
        Err(more) => Err(dedupe([errors, more].concat())),
    }
}

/// A FeatureUpdateRequestEvent, or every problem of its shape.
pub fn parse_patch(body: &Value) -> Result<FeatureUpdateRequestEvent, Vec<String>> {
    let mut obj = object(body)?;
    let mut errors = Vec::new();
    check_metadata(&mut obj, &mut errors);
    finish(Value::Object(obj), errors).map_err(dedupe)
}

/// A FeatureDeletionRequestEvent, or every problem of its shape.
pub fn parse_deletion(body: &Value) -> Result<FeatureDeletionRequestEvent, Vec<String>> {
    let mut obj = object(body)?;
    let mut errors = Vec::new();
    check_fields(&mut obj, "", &[("priority", Shape::Priority), ("urn", Shape::Text)], &mut errors);
    finish(Value::Object(obj), errors).map_err(dedupe)
}

/// A FeatureNotificationRequestEvent, or every problem of its shape.
pub fn parse_notification(body: &Value) -> Result<FeatureNotificationRequestEvent, Vec<String>> {
    let mut obj = object(body)?;
    let mut errors = Vec::new();
    check_fields(&mut obj, "", &[("priority", Shape::Priority), ("urn", Shape::Text), ("recipients", Shape::TextList)], &mut errors);
    finish(Value::Object(obj), errors).map_err(dedupe)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_wrong_metadata_field_does_not_hide_the_features_errors() {
        let body = json!({
            "metadata": {"sessionOwner": "s", "session": "x", "priority": "URGENT", "override": "yes"},
            "feature": {"type": "Feature", "id": "y".repeat(101), "entityType": "THING", "model": "M", "geometry": null}
        });
        let errors = parse_creation(&body).unwrap_err();
        for expected in ["metadata.priority: \"URGENT\"", "metadata.override:", "feature.id: longer than 100", "feature.entityType:"] {
            assert!(errors.iter().any(|e| e.starts_with(expected)), "{expected} missing from {errors:?}");
        }
        assert_eq!(errors.len(), 4, "{errors:?}");
    }

    #[test]
    fn every_wrong_storage_is_named_and_good_ones_pass() {
        let body = |storages: Value| {
            json!({"metadata": {"sessionOwner": "o", "session": "s", "storages": storages},
                   "feature": {"type": "Feature", "id": "p", "entityType": "DATA", "model": "M", "geometry": null}})
        };
        let good = json!([{"pluginBusinessId": "disk", "storePath": "a/b", "targetTypes": ["RAWDATA", "QUICKLOOK_SD"]}, {"pluginBusinessId": "s3"}]);
        let (event, _) = parse_creation(&body(good)).unwrap();
        assert_eq!(event.metadata.storages.len(), 2);
        assert_eq!(event.metadata.storages[0].target_types, vec!["RAWDATA".to_owned(), "QUICKLOOK_SD".to_owned()]);
        let bad = json!([{"storePath": 5}, {"pluginBusinessId": " ", "targetTypes": ["RAWDATA", "PICTURE"]}, {"pluginBusinessId": "x", "targetTypes": "RAWDATA"}]);
        let errors = parse_creation(&body(bad)).unwrap_err();
        let expected = [
            "metadata.storages[0].pluginBusinessId: required",
            "metadata.storages[0].storePath: 5 is not a string",
            "metadata.storages[1].pluginBusinessId: must not be blank",
            "metadata.storages[1].targetTypes: \"PICTURE\" is not one of",
            "metadata.storages[2].targetTypes: \"RAWDATA\" is not a list",
        ];
        assert_eq!(errors.len(), expected.len(), "{errors:?}");
        for (e, x) in errors.iter().zip(expected) {
            assert!(e.starts_with(x), "{e:?} should start with {x:?}");
        }
    }

    #[test]
    fn missing_parts_and_wrong_bodies_are_named() {
        assert_eq!(parse_creation(&json!([1])).unwrap_err(), vec!["body: must be a JSON object"]);
        let errors = parse_creation(&json!({})).unwrap_err();
        assert!(errors[0].starts_with("metadata: required") && errors[1].starts_with("feature: required"), "{errors:?}");
        let errors = parse_notification(&json!({"urn": 3, "priority": "SOON", "recipients": [1]})).unwrap_err();
        assert_eq!(errors.len(), 4, "the three fields, then the urn serde could not find: {errors:?}");
        assert!(parse_deletion(&json!({"urn": "URN:x", "priority": "LOW"})).is_ok());
        assert!(parse_patch(&json!({"metadata": {"priority": 1}, "feature": {}})).unwrap_err()[0].starts_with("metadata.priority"));
    }
}
