//! GeoJSON geometry and bbox checks (RFC 7946): an invalid geometry is a DENIED error naming its path,
//! never a crash further down. Written here rather than with the `geojson` crate because that crate
//! parses the structure but accepts unclosed rings, short positions and inverted bboxes, and its errors
//! do not name the path inside the feature.

use serde_json::Value;

fn position(v: &Value, path: &str, errors: &mut Vec<String>) {
    match v.as_array() {
        Some(p) if (2..=3).contains(&p.len()) && p.iter().all(|c| c.as_f64().is_some_and(f64::is_finite)) => {
            let (lon, lat) = (p[0].as_f64().unwrap_or(0.0), p[1].as_f64().unwrap_or(0.0));
            if !(-180.0..=180.0).contains(&lon) || !(-90.0..=90.0).contains(&lat) {
                errors.push(format!("{path}: longitude {lon} or latitude {lat} out of range"));
            }
        }
        _ => errors.push(format!("{path}: a position is 2 or 3 finite numbers")),
    }
}

fn positions(v: &Value, path: &str, min: usize, errors: &mut Vec<String>) -> usize {
    match v.as_array() {
        Some(ps) => {
            if ps.len() < min {
                errors.push(format!("{path}: at least {min} positions"));
            }
            ps.iter().enumerate().for_each(|(i, p)| position(p, &format!("{path}[{i}]"), errors));
            ps.len()
        }
        None => {
            errors.push(format!("{path}: must be a list of positions"));
            0
        }
    }
}

fn rings(v: &Value, path: &str, errors: &mut Vec<String>) {
    let Some(rs) = v.as_array().filter(|r| !r.is_empty()) else {
        errors.push(format!("{path}: a polygon is a non-empty list of linear rings"));
        return;
    };
    for (i, ring) in rs.iter().enumerate() {
        let rpath = format!("{path}[{i}]");
        if positions(ring, &rpath, 4, errors) >= 4 {
            let r = ring.as_array().map(Vec::as_slice).unwrap_or_default();
            if r.first() != r.last() {
                errors.push(format!("{rpath}: a linear ring ends where it starts"));
            }
        }
    }
}

fn each(v: &Value, path: &str, errors: &mut Vec<String>, f: impl Fn(&Value, &str, &mut Vec<String>)) {
    match v.as_array() {
        Some(items) => items.iter().enumerate().for_each(|(i, item)| f(item, &format!("{path}[{i}]"), errors)),
        None => errors.push(format!("{path}: must be a list")),
    }
}

/// Every problem of a GeoJSON geometry at `path` (`null` is a feature without location).
pub fn check_geometry(g: &Value, path: &str, errors: &mut Vec<String>) {
    if g.is_null() {
        return;
    }
    let Some(kind) = g.get("type").and_then(Value::as_str) else {
        errors.push(format!("{path}.type: required (Point, LineString, Polygon, their Multi forms, or GeometryCollection)"));
        return;
    };
    if kind == "GeometryCollection" {
        each(g.get("geometries").unwrap_or(&Value::Null), &format!("{path}.geometries"), errors, check_geometry);
        return;
    }
    let c = g.get("coordinates").unwrap_or(&Value::Null);
    let cpath = format!("{path}.coordinates");
    match kind {
        "Point" => position(c, &cpath, errors),
        "MultiPoint" => {
            positions(c, &cpath, 0, errors);
        }
        "LineString" => {
            positions(c, &cpath, 2, errors);
        }
        "MultiLineString" => each(c, &cpath, errors, |v, p, e| {
            positions(v, p, 2, e);
        }),
        "Polygon" => rings(c, &cpath, errors),
        "MultiPolygon" => each(c, &cpath, errors, rings),
        other => errors.push(format!("{path}.type: unknown geometry type {other:?}")),
    }
}

/// Every problem of a bbox at `path`: 4 or 6 numbers (`[west, south, (low,) east, north, (high)]`),
/// south at most north and low at most high. West may exceed east: the box crosses the antimeridian.
pub fn check_bbox(b: &Value, path: &str, errors: &mut Vec<String>) {
    let nums: Option<Vec<f64>> = b.as_array().and_then(|a| a.iter().map(Value::as_f64).collect());
    let Some(n) = nums.filter(|n| n.len() == 4 || n.len() == 6) else {
        errors.push(format!("{path}: must be 4 or 6 numbers"));
        return;
    };
    let half = n.len() / 2;
    if n[1] > n[1 + half] || (half == 3 && n[2] > n[5]) {
        errors.push(format!("{path}: a minimum is greater than its maximum"));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn errors(g: Value) -> Vec<String> {
        let mut e = Vec::new();
        check_geometry(&g, "feature.geometry", &mut e);
        e
    }

    #[test]
    fn valid_geometries_pass() {
        for g in [
            json!(null),
            json!({"type": "Point", "coordinates": [1.4, 43.6]}),
            json!({"type": "Point", "coordinates": [1.4, 43.6, 150.0]}),
            json!({"type": "LineString", "coordinates": [[0, 0], [1, 1]]}),
            json!({"type": "Polygon", "coordinates": [[[1.0, 43.2], [2.4, 43.2], [2.4, 44.2], [1.0, 44.2], [1.0, 43.2]]]}),
            json!({"type": "MultiPolygon", "coordinates": [[[[0, 0], [1, 0], [1, 1], [0, 0]]]]}),
            json!({"type": "GeometryCollection", "geometries": [{"type": "Point", "coordinates": [0, 0]}]}),
        ] {
            assert_eq!(errors(g.clone()), Vec::<String>::new(), "{g}");
        }
    }

    #[test]
    fn invalid_geometries_are_named() {
        for (g, fragment) in [
            (json!({"type": "Point", "coordinates": [1]}), "coordinates"),
            (json!({"type": "Point", "coordinates": [200, 0]}), "out of range"),
            (json!({"type": "Point", "coordinates": ["a", "b"]}), "finite numbers"),
            (json!({"type": "LineString", "coordinates": [[0, 0]]}), "at least 2"),
            (json!({"type": "Polygon", "coordinates": [[[0, 0], [1, 0], [1, 1], [0, 1]]]}), "ends where it starts"),
            (json!({"type": "Polygon", "coordinates": [[[0, 0], [1, 0], [0, 0]]]}), "at least 4"),
            (json!({"type": "Circle", "coordinates": [0, 0]}), "unknown geometry type"),
            (json!({"coordinates": [0, 0]}), "type: required"),
            (json!({"type": "GeometryCollection", "geometries": [{"type": "Point"}]}), "geometries[0].coordinates"),
        ] {
            let e = errors(g.clone());
            assert!(e.iter().any(|m| m.contains(fragment)), "{g}: {e:?}");
        }
        let mut e = Vec::new();
        check_bbox(&json!([0, 10, 1, 5]), "feature.bbox", &mut e);
        check_bbox(&json!([0, 1]), "feature.bbox", &mut e);
        assert_eq!(e.len(), 2, "{e:?}");
    }
}
