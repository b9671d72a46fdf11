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

/// Applies a patch feature to a stored one: properties merged, geometry replaced when the patch has one
/// (an absent or null geometry, REGARDS's UNLOCATED, keeps the stored one), `history.updatedBy` set.
/// The URN, version and `last` flag are the stored ones.
pub fn apply_patch(stored: &Value, patch: &Value, updated_by: &str) -> Value {
    let mut out = stored.clone();
    let Some(obj) = out.as_object_mut() else { return out };
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
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn properties_merge_deeply_and_null_removes() {
        let stored = json!({"urn": "U", "properties": {"a": 1, "b": 2, "quality": {"valid": true, "degraded": 3}}, "geometry": {"type": "Point", "coordinates": [0, 0]}});
        let patch = json!({"urn": "U", "properties": {"b": 20, "c": [1], "a": null, "quality": {"degraded": 0}}});
        let out = apply_patch(&stored, &patch, "ann");
        assert_eq!(out["properties"], json!({"b": 20, "c": [1], "quality": {"valid": true, "degraded": 0}}));
        assert_eq!(out["geometry"], stored["geometry"], "no geometry in the patch keeps the stored one");
        assert_eq!(out["history"]["updatedBy"], "ann");
        assert_eq!(out["urn"], "U");
    }

    #[test]
    fn geometry_is_replaced() {
        let stored = json!({"geometry": {"type": "Point", "coordinates": [0, 0]}, "bbox": [0, 0, 0, 0]});
        let patch = json!({"geometry": {"type": "Point", "coordinates": [1, 2]}});
        let out = apply_patch(&stored, &patch, "x");
        assert_eq!(out["geometry"]["coordinates"], json!([1, 2]));
        assert!(out.get("bbox").is_none(), "a stale bbox is dropped with the geometry it bounded");
        let unlocated = apply_patch(&stored, &json!({"geometry": null}), "x");
        assert_eq!(unlocated["geometry"], stored["geometry"]);
    }
}
