//! The catalog users order from: datasets (DATASET features), the products that name them in their
//! `tags`, who may see them, how products are searched, and what a product's files are to an order.
//! A search is by dataset, time range (one configured date property), bounding box and equality on
//! properties; it is not a full-text or OpenSearch catalog.

use crate::storage::{LocationClass, Locations};
use crate::urn::{Urn, entity_uuid};
use chrono::{DateTime, Datelike, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::collections::BTreeMap;
use uuid::Uuid;

/// The access group that opens a dataset to everyone, anonymous callers included (for reading).
pub const PUBLIC_GROUP: &str = "public";

/// The file types an order retrieves (REGARDS's `DataTypeLight` ALL).
pub const ORDERABLE_TYPES: [&str; 4] = ["RAWDATA", "QUICKLOOK_SD", "QUICKLOOK_MD", "QUICKLOOK_HD"];

/// Most tags of a feature: the catalog copies a feature once per tag in the transaction that changes
/// it, and a DynamoDB transaction holds 100 operations and 4 MB.
pub const MAX_TAGS: usize = 10;

/// Checks a feature's `tags` (absent, or at most [`MAX_TAGS`] non-blank strings), naming each problem.
pub fn check_tags(feature: &Value, errors: &mut Vec<String>) {
    match feature.get("tags") {
        None | Some(Value::Null) => {}
        Some(Value::Array(tags)) => {
            if tags.len() > MAX_TAGS {
                errors.push(format!("feature.tags: {} tags; at most {MAX_TAGS}", tags.len()));
            }
            for (i, t) in tags.iter().enumerate() {
                match t.as_str() {
                    Some(s) if !s.trim().is_empty() && s.chars().count() <= 255 => {}
                    Some(_) => errors.push(format!("feature.tags[{i}]: must be 1 to 255 characters, not blank")),
                    None => errors.push(format!("feature.tags[{i}]: must be a string (a dataset's providerId or URN)")),
                }
            }
        }
        Some(_) => errors.push("feature.tags: must be an array of dataset providerIds or URNs".into()),
    }
}

/// Whether `feature` is a dataset.
pub fn is_dataset(feature: &Value) -> bool {
    feature.get("entityType").and_then(Value::as_str) == Some("DATASET")
}

/// The uuid a dataset is known by, from a tag or a reference naming it: a URN (any version) gives its
/// uuid, anything else is a providerId.
pub fn dataset_uuid(reference: &str) -> Uuid {
    match reference.parse::<Urn>() {
        Ok(urn) => urn.uuid,
        Err(_) => entity_uuid(reference),
    }
}

/// The datasets `feature` belongs to: the uuids of its `tags`, each once, in tag order.
pub fn datasets_of(feature: &Value) -> Vec<Uuid> {
    let mut out: Vec<Uuid> = Vec::new();
    for tag in feature.get("tags").and_then(Value::as_array).into_iter().flatten().filter_map(Value::as_str) {
        let id = dataset_uuid(tag);
        if !out.contains(&id) {
            out.push(id);
        }
    }
    out
}

/// A dataset's access groups (`properties.accessGroups`).
pub fn access_groups(dataset: &Value) -> Vec<&str> {
    dataset.pointer("/properties/accessGroups").and_then(Value::as_array).into_iter().flatten().filter_map(Value::as_str).collect()
}

/// A dataset's label (`properties.label`, else its providerId).
pub fn dataset_label(dataset: &Value) -> String {
    dataset
        .pointer("/properties/label")
        .and_then(Value::as_str)
        .or_else(|| dataset.get("id").and_then(Value::as_str))
        .unwrap_or_default()
        .to_owned()
}

/// Who reads the catalog: an admin, a caller with groups, or an anonymous caller (no groups).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Reader {
    /// Admins see every dataset.
    pub admin: bool,
    /// The caller's groups (none when anonymous).
    pub groups: Vec<String>,
}

impl Reader {
    /// An anonymous caller: public datasets only.
    pub fn anonymous() -> Self {
        Self::default()
    }

    /// Whether this caller may see `dataset`: admins see all, everyone sees the `public` ones, and a
    /// caller in one of a dataset's access groups sees it.
    pub fn sees(&self, dataset: &Value) -> bool {
        self.admin || access_groups(dataset).iter().any(|g| *g == PUBLIC_GROUP || self.groups.iter().any(|mine| mine == g))
    }
}

/// A product search: every given criterion must hold.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ProductSearch {
    /// The date property at or after this instant.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from: Option<DateTime<Utc>>,
    /// The date property at or before this instant.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub to: Option<DateTime<Utc>>,
    /// The geometry intersects `[minLon, minLat, maxLon, maxLat]`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bbox: Option<[f64; 4]>,
    /// Properties (dotted paths under `properties`) equal to these values (an array property holds it).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub properties: BTreeMap<String, String>,
}

/// The prefix of property criteria in search parameters (`property.cloudCover=12.4`).
pub const PROPERTY_PARAM: &str = "property.";

impl ProductSearch {
    /// Reads search parameters (`from`, `to`, ISO-8601; `bbox=minLon,minLat,maxLon,maxLat`;
    /// `property.<path>=<value>`), naming every one that is wrong or unknown. `ignored` names
    /// parameters that are not search criteria (paging).
    pub fn from_params<'a>(params: impl IntoIterator<Item = (&'a str, &'a str)>, ignored: &[&str]) -> Result<Self, Vec<String>> {
        let mut search = Self::default();
        let mut errors = Vec::new();
        for (name, value) in params {
            match name {
                "from" | "to" => match DateTime::parse_from_rfc3339(value).map(|t| t.with_timezone(&Utc)) {
                    // In UTC the instant may leave RFC 3339's years (0000-01-01T00:00:00+01:00 is in
                    // year -1), and to_params then wrote what this refuses (found by tests/fuzz.rs).
                    Ok(t) if !(0..=9999).contains(&t.year()) => {
                        errors.push(format!("{name}: {value:?} is outside years 0000 to 9999 in UTC"))
                    }
                    Ok(t) if name == "from" => search.from = Some(t),
                    Ok(t) => search.to = Some(t),
                    Err(_) => errors.push(format!("{name}: {value:?} is not an ISO-8601 date with a time zone")),
                },
                "bbox" => match parse_bbox(value) {
                    Ok(b) => search.bbox = Some(b),
                    Err(e) => errors.push(format!("bbox: {e}")),
                },
                _ if name.starts_with(PROPERTY_PARAM) && name.len() > PROPERTY_PARAM.len() => {
                    search.properties.insert(name[PROPERTY_PARAM.len()..].to_owned(), value.to_owned());
                }
                _ if ignored.contains(&name) => {}
                // A name that is not plain is quoted: a blank one (`?=x`) left the error with no name
                // at all, and one holding ": " made it ambiguous (found by tests/fuzz.rs).
                _ => errors.push(format!(
                    "{}: not a search parameter (from, to, bbox, {PROPERTY_PARAM}<name>{})",
                    if !name.is_empty() && name.chars().all(|c| c.is_ascii_alphanumeric() || "._-[]".contains(c)) {
                        name.to_owned()
                    } else {
                        format!("{name:?}")
                    },
                    if ignored.is_empty() { String::new() } else { format!(", {}", ignored.join(", ")) }
                )),
            }
        }
        if let (Some(f), Some(t)) = (search.from, search.to)
            && f > t
        {
            errors.push("from: must not be after to".into());
        }
        if errors.is_empty() { Ok(search) } else { Err(errors) }
    }

    /// The same search as parameters (what [`ProductSearch::from_params`] reads).
    pub fn to_params(&self) -> Vec<(String, String)> {
        let mut out = Vec::new();
        if let Some(f) = self.from {
            out.push(("from".to_owned(), f.to_rfc3339()));
        }
        if let Some(t) = self.to {
            out.push(("to".to_owned(), t.to_rfc3339()));
        }
        if let Some(b) = self.bbox {
            out.push(("bbox".to_owned(), b.iter().map(f64::to_string).collect::<Vec<_>>().join(",")));
        }
        out.extend(self.properties.iter().map(|(k, v)| (format!("{PROPERTY_PARAM}{k}"), v.clone())));
        out
    }

    /// Whether `product` matches, its date read from the property `date_property` (a dotted path under
    /// `properties`; a date, or a range `{lowerBound, upperBound}` that must overlap).
    pub fn matches(&self, product: &Value, date_property: &str) -> bool {
        if self.from.is_some() || self.to.is_some() {
            let Some((start, end)) = property(product, date_property).and_then(date_span) else { return false };
            if self.from.is_some_and(|f| end < f) || self.to.is_some_and(|t| start > t) {
                return false;
            }
        }
        if let Some(b) = self.bbox {
            let Some(g) = product.get("geometry").and_then(geometry_bbox) else { return false };
            if g[0] > b[2] || g[2] < b[0] || g[1] > b[3] || g[3] < b[1] {
                return false;
            }
        }
        self.properties.iter().all(|(path, wanted)| property(product, path).is_some_and(|v| value_equals(v, wanted)))
    }
}

fn parse_bbox(text: &str) -> Result<[f64; 4], String> {
    let parts: Vec<f64> = text
        .split(',')
        .map(|p| p.trim().parse::<f64>())
        .collect::<Result<_, _>>()
        .map_err(|_| format!("{text:?} is not four numbers minLon,minLat,maxLon,maxLat"))?;
    let [min_lon, min_lat, max_lon, max_lat] = parts[..] else {
        return Err(format!("{text:?} is not four numbers minLon,minLat,maxLon,maxLat"));
    };
    if !(-180.0..=180.0).contains(&min_lon) || !(-180.0..=180.0).contains(&max_lon) {
        return Err("longitudes must be within -180..180".into());
    }
    if !(-90.0..=90.0).contains(&min_lat) || !(-90.0..=90.0).contains(&max_lat) {
        return Err("latitudes must be within -90..90".into());
    }
    if min_lon > max_lon || min_lat > max_lat {
        return Err("the minimum must not exceed the maximum".into());
    }
    Ok([min_lon, min_lat, max_lon, max_lat])
}

/// The value at the dotted `path` under the product's `properties`.
fn property<'a>(product: &'a Value, path: &str) -> Option<&'a Value> {
    path.split('.').try_fold(product.get("properties")?, |v, part| v.get(part))
}

fn date_span(v: &Value) -> Option<(DateTime<Utc>, DateTime<Utc>)> {
    let parse = |v: &Value| DateTime::parse_from_rfc3339(v.as_str()?).ok().map(|t| t.with_timezone(&Utc));
    match v {
        Value::String(_) => parse(v).map(|t| (t, t)),
        Value::Object(o) => Some((parse(o.get("lowerBound")?)?, parse(o.get("upperBound")?)?)),
        _ => None,
    }
}

fn value_equals(v: &Value, wanted: &str) -> bool {
    match v {
        Value::String(s) => s == wanted,
        Value::Number(n) => wanted.parse::<f64>().is_ok_and(|w| n.as_f64() == Some(w)),
        Value::Bool(b) => wanted.parse::<bool>().is_ok_and(|w| *b == w),
        Value::Array(items) => items.iter().any(|i| value_equals(i, wanted)),
        _ => false,
    }
}

/// The bounding box `[minLon, minLat, maxLon, maxLat]` of a GeoJSON geometry, `None` without positions.
pub fn geometry_bbox(geometry: &Value) -> Option<[f64; 4]> {
    fn walk(v: &Value, b: &mut Option<[f64; 4]>) {
        let Some(items) = v.as_array() else { return };
        if let (Some(x), Some(y)) = (items.first().and_then(Value::as_f64), items.get(1).and_then(Value::as_f64)) {
            let e = b.get_or_insert([x, y, x, y]);
            *e = [e[0].min(x), e[1].min(y), e[2].max(x), e[3].max(y)];
        } else {
            items.iter().for_each(|i| walk(i, b));
        }
    }
    let mut b = None;
    match geometry.get("type").and_then(Value::as_str) {
        Some("GeometryCollection") => {
            for g in geometry.get("geometries").and_then(Value::as_array).into_iter().flatten() {
                if let Some(inner) = geometry_bbox(g) {
                    walk(&serde_json::json!([[inner[0], inner[1]], [inner[2], inner[3]]]), &mut b);
                }
            }
        }
        _ => walk(geometry.get("coordinates")?, &mut b),
    }
    b
}

/// One of a product's files as an order sees it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ProductFile {
    /// RAWDATA, QUICKLOOK_SD, ...
    pub data_type: String,
    /// The file's name.
    pub filename: String,
    /// Its MIME type.
    pub mime_type: String,
    /// Its size in bytes.
    pub size: u64,
    /// Its checksum (lower case).
    pub checksum: String,
    /// The checksum's algorithm.
    pub algorithm: String,
    /// Whether it can be read at once (a reference, or stored in an online location).
    pub online: bool,
    /// Whether it is only referenced (an external URL), not stored by a storage service.
    pub reference: bool,
    /// The storage location holding it, when stored.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub storage: Option<String>,
    /// Where it is: the stored object's URL, or the reference.
    pub url: String,
}

/// The files of `product` (any entity), as an order sees them: a file with a location in a storage
/// (`storage` set) is internal, online when that storage is an ONLINE location of `locations`; any
/// other is a reference at its first URL.
pub fn product_files(product: &Value, locations: &Locations) -> Vec<ProductFile> {
    let files = product.get("files").and_then(Value::as_array).map(Vec::as_slice).unwrap_or_default();
    files
        .iter()
        .map(|f| {
            let text = |name: &str| f.pointer(&format!("/attributes/{name}")).and_then(Value::as_str).unwrap_or_default().to_owned();
            let all: Vec<&Value> = f.get("locations").and_then(Value::as_array).into_iter().flatten().collect();
            let url_of = |l: &Value| l.get("url").and_then(Value::as_str).unwrap_or_default().to_owned();
            // Prefer an online stored copy, then any stored copy.
            let stored = all.iter().filter(|l| l.get("storage").and_then(Value::as_str).is_some()).min_by_key(|l| !is_online(l, locations));
            let (online, reference, storage, url) = match stored {
                Some(l) => (is_online(l, locations), false, l.get("storage").and_then(Value::as_str).map(str::to_owned), url_of(l)),
                None => (true, true, None, all.first().map(|l| url_of(l)).unwrap_or_default()),
            };
            ProductFile {
                data_type: text("dataType"),
                filename: text("filename"),
                mime_type: text("mimeType"),
                size: f.pointer("/attributes/filesize").and_then(Value::as_u64).unwrap_or(0),
                checksum: text("checksum").to_ascii_lowercase(),
                algorithm: text("algorithm"),
                online,
                reference,
                storage,
                url,
            }
        })
        .collect()
}

fn is_online(location: &Value, locations: &Locations) -> bool {
    location.get("storage").and_then(Value::as_str).and_then(|s| locations.get(s)).is_some_and(|l| l.class == LocationClass::Online)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn product() -> Value {
        json!({
            "id": "p1", "entityType": "DATA", "tags": ["DS1", "URN:FEATURE:DATASET:granary:6a1f4e1c-4b9a-3c5e-9c1a-0d2b3c4d5e6f:V2", "DS1"],
            "geometry": {"type": "Polygon", "coordinates": [[[1.0, 43.2], [2.4, 43.2], [2.4, 44.2], [1.0, 44.2], [1.0, 43.2]]]},
            "properties": {"mission": "S2A", "cloudCover": 12.5, "bands": ["B02", "B03"], "valid": true,
                           "acquisitionDate": "2026-11-23T10:15:31Z", "quality": {"level": "L1C"},
                           "span": {"lowerBound": "2026-01-01T00:00:00Z", "upperBound": "2026-01-31T00:00:00Z"}}
        })
    }

    fn search(params: &[(&str, &str)]) -> ProductSearch {
        ProductSearch::from_params(params.iter().copied(), &[]).unwrap()
    }

    #[test]
    fn tags_name_datasets_by_provider_id_or_urn_once_each() {
        let ds = datasets_of(&product());
        assert_eq!(ds, vec![entity_uuid("DS1"), "6a1f4e1c-4b9a-3c5e-9c1a-0d2b3c4d5e6f".parse().unwrap()]);
        assert_eq!(dataset_uuid("URN:FEATURE:DATASET:granary:6a1f4e1c-4b9a-3c5e-9c1a-0d2b3c4d5e6f:V1"), ds[1]);
        assert!(datasets_of(&json!({"id": "x"})).is_empty());
    }

    #[test]
    fn tags_are_a_short_list_of_names() {
        let check = |f: Value| {
            let mut e = vec![];
            check_tags(&f, &mut e);
            e
        };
        assert!(check(json!({})).is_empty() && check(json!({"tags": ["A", "B"]})).is_empty());
        assert_eq!(check(json!({"tags": (0..11).map(|i| i.to_string()).collect::<Vec<_>>()})), ["feature.tags: 11 tags; at most 10"]);
        assert_eq!(check(json!({"tags": [" ", 3]})).len(), 2);
        assert_eq!(check(json!({"tags": "A"})).len(), 1);
    }

    #[test]
    fn readers_see_public_datasets_and_those_of_their_groups() {
        let public = json!({"properties": {"accessGroups": ["public", "s2"]}});
        let closed = json!({"properties": {"accessGroups": ["s2"]}});
        let none = json!({"properties": {}});
        let member = Reader { admin: false, groups: vec!["s2".into()] };
        let other = Reader { admin: false, groups: vec!["s1".into()] };
        let admin = Reader { admin: true, groups: vec![] };
        assert!(Reader::anonymous().sees(&public) && !Reader::anonymous().sees(&closed));
        assert!(member.sees(&closed) && !other.sees(&closed) && other.sees(&public));
        assert!(admin.sees(&none) && !member.sees(&none));
    }

    #[test]
    fn dates_match_inclusively_and_ranges_by_overlap() {
        let p = product();
        assert!(search(&[("from", "2026-11-23T10:15:31Z"), ("to", "2026-11-23T10:15:31Z")]).matches(&p, "acquisitionDate"));
        assert!(!search(&[("from", "2026-11-23T10:15:32Z")]).matches(&p, "acquisitionDate"));
        assert!(!search(&[("to", "2026-11-23T10:15:30+00:00")]).matches(&p, "acquisitionDate"));
        assert!(search(&[("from", "2026-01-31T00:00:00Z")]).matches(&p, "span"));
        assert!(!search(&[("to", "2025-12-31T23:59:59Z")]).matches(&p, "span"));
        // No such date: a time criterion does not match.
        assert!(!search(&[("from", "2000-01-01T00:00:00Z")]).matches(&p, "missing"));
        assert!(search(&[]).matches(&p, "missing"));
    }

    #[test]
    fn boxes_match_when_they_intersect_the_geometry() {
        let p = product();
        assert!(search(&[("bbox", "2,44,3,45")]).matches(&p, "d"));
        assert!(search(&[("bbox", "0,40,10,50")]).matches(&p, "d"));
        assert!(!search(&[("bbox", "2.5,44,3,45")]).matches(&p, "d"));
        assert!(!search(&[("bbox", "0,0,1,1")]).matches(&json!({"geometry": null}), "d"));
        let point = json!({"type": "Point", "coordinates": [1.4, 43.6]});
        assert_eq!(geometry_bbox(&point), Some([1.4, 43.6, 1.4, 43.6]));
        let coll = json!({"type": "GeometryCollection", "geometries": [point, {"type": "Point", "coordinates": [-1, 50]}]});
        assert_eq!(geometry_bbox(&coll), Some([-1.0, 43.6, 1.4, 50.0]));
    }

    #[test]
    fn properties_match_by_value_of_their_type() {
        let p = product();
        assert!(search(&[("property.mission", "S2A"), ("property.cloudCover", "12.5")]).matches(&p, "d"));
        assert!(search(&[("property.bands", "B03"), ("property.valid", "true"), ("property.quality.level", "L1C")]).matches(&p, "d"));
        assert!(!search(&[("property.mission", "S2B")]).matches(&p, "d"));
        assert!(!search(&[("property.cloudCover", "12")]).matches(&p, "d"));
        assert!(!search(&[("property.absent", "x")]).matches(&p, "d"));
    }

    #[test]
    fn bad_parameters_are_each_named() {
        let errors = ProductSearch::from_params(
            [("from", "yesterday"), ("bbox", "1,2,3"), ("color", "red"), ("page", "x"), ("to", "2026-01-01T00:00:00Z")],
            &["page"],
        )
        .unwrap_err();
        assert_eq!(errors.len(), 3, "{errors:?}");
        assert!(errors[0].starts_with("from:") && errors[1].starts_with("bbox:") && errors[2].starts_with("color:"), "{errors:?}");
        let reversed = ProductSearch::from_params([("from", "2026-02-01T00:00:00Z"), ("to", "2026-01-01T00:00:00Z")], &[]);
        assert_eq!(reversed.unwrap_err(), vec!["from: must not be after to"]);
        assert!(ProductSearch::from_params([("bbox", "10,0,5,1")], &[]).is_err());
        let s = search(&[("from", "2026-01-01T00:00:00Z"), ("bbox", "1,2,3,4"), ("property.a.b", "c")]);
        let params = s.to_params();
        assert_eq!(ProductSearch::from_params(params.iter().map(|(k, v)| (k.as_str(), v.as_str())), &[]).unwrap(), s);
    }

    #[test]
    fn files_are_internal_when_stored_and_online_by_their_location_class() {
        let locations: Locations = crate::storage::parse_locations(
            r#"{"online": {"bucket": "b", "class": "ONLINE"}, "nearline": {"bucket": "b", "prefix": "n", "class": "NEARLINE"}}"#,
        )
        .unwrap();
        let attrs =
            |c: &str| json!({"dataType": "RAWDATA", "mimeType": "m", "filename": "f", "filesize": 10, "algorithm": "MD5", "checksum": c});
        let p = json!({"files": [
            {"locations": [{"url": "https://x/a"}], "attributes": attrs("AA")},
            {"locations": [{"url": "s3://src/b"}, {"storage": "nearline", "url": "s3://b/n/b"}], "attributes": attrs("bb")},
            {"locations": [{"storage": "nearline", "url": "s3://b/n/c"}, {"storage": "online", "url": "s3://b/c"}], "attributes": attrs("cc")},
        ]});
        let files = product_files(&p, &locations);
        assert_eq!(
            (files[0].reference, files[0].online, files[0].url.as_str(), files[0].checksum.as_str()),
            (true, true, "https://x/a", "aa")
        );
        assert_eq!((files[1].reference, files[1].online, files[1].storage.as_deref()), (false, false, Some("nearline")));
        assert_eq!((files[2].reference, files[2].online, files[2].url.as_str()), (false, true, "s3://b/c"));
    }
}
