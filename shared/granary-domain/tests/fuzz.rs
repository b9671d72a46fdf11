//! Property-based fuzz targets for the domain's parsers: the URN parser, the request-body, message
//! attribute and configuration parsers, the data-model compiler and validator, and the metalink writer.
//!
//! Each `fuzz_*` target runs `PROPTEST_CASES` cases (proptest's default of 256 when unset, so that
//! `cargo test` stays fast); `.ci/fuzz` runs them in release mode with many more, and `FUZZ_SECS` gives
//! each a soft time budget (no new batch of cases starts after it). A failing case is shrunk, its seed
//! saved in `proptest-regressions/fuzz.txt` (replayed first on every later run), and each bug found is
//! also kept below as an explicit `regression_*` test, which does not depend on proptest's seeds.

use granary_domain::body::{parse_creation, parse_deletion, parse_notification, parse_patch};
use granary_domain::catalog::ProductSearch;
use granary_domain::dispatch::{PACK_PROCESS, file_id, parse_file_id, parse_s3_url};
use granary_domain::feature::FileUpdateMode;
use granary_domain::metalink::{MetalinkFile, hash_type, metalink, safe_path};
use granary_domain::model::{Mode, ModelError, ModelValidator, compile_model};
use granary_domain::order::OrderStatus;
use granary_domain::processing::{ProcessRunner, parse_processes};
use granary_domain::request::{validate_deletion, validate_notification, validate_patch};
use granary_domain::storage::{parse_locations, parse_storage_event};
use granary_domain::urn::UrnError;
use granary_domain::{EntityType, FeatureRequestType, Urn};
use proptest::collection::vec;
use proptest::prelude::*;
use proptest::sample::{Index, select};
use proptest::test_runner::{Config, FileFailurePersistence, TestCaseError, TestRunner};
use quick_xml::events::Event;
use serde_json::{Map, Value, json};
use std::time::{Duration, Instant};

// ------------------------------------------------------------------------------------------------
// The harness.

/// Where failing seeds are kept. proptest's default (a directory parallel to `src/`) cannot be found
/// from an integration test, so the path is given: the crate's `proptest-regressions/`.
const REGRESSIONS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/proptest-regressions/fuzz.txt");

/// Cases per batch: the soft time budget is checked between batches.
const BATCH: u32 = 1_000;

/// Runs `test` on `PROPTEST_CASES` values of `strategy` (256 when unset) in batches, stopping early
/// once `FUZZ_SECS` (when set) have passed, and prints how many cases ran in how long (shown by
/// `--nocapture`, as `.ci/fuzz` runs it). A failure panics with proptest's shrunk input.
fn fuzz<S: Strategy>(name: &str, strategy: S, test: impl Fn(S::Value) -> Result<(), TestCaseError>) {
    // Config::default() reads PROPTEST_CASES itself.
    let total = Config::default().cases;
    let budget = std::env::var("FUZZ_SECS").ok().and_then(|s| s.parse().ok()).map(Duration::from_secs);
    let start = Instant::now();
    let mut done = 0;
    while done < total && budget.is_none_or(|b| start.elapsed() < b) {
        let cases = (total - done).min(BATCH);
        let config = Config {
            cases,
            failure_persistence: Some(Box::new(FileFailurePersistence::Direct(REGRESSIONS))),
            // Big JSON inputs shrink slowly; a minute of shrinking gives a readable input already.
            max_shrink_time: 60_000,
            max_shrink_iters: 1_000_000,
            ..Config::default()
        };
        if let Err(e) = TestRunner::new(config).run(&strategy, &test) {
            panic!("{name}: {e}");
        }
        done += cases;
    }
    eprintln!("fuzz {name}: {done} cases in {:.1} s", start.elapsed().as_secs_f64());
}

// ------------------------------------------------------------------------------------------------
// Strategies shared by the targets.

/// Pieces of text parsers and writers tend to mishandle: XML and JSON specials, control characters,
/// characters XML 1.0 forbids (NUL, U+FFFE, U+FFFF), right-to-left and zero-width marks, path tricks,
/// and the words the parsers look for.
const PIECES: &[&str] = &[
    "<",
    ">",
    "&",
    "\"",
    "'",
    "]]>",
    "<!--",
    "&amp;",
    "&#0;",
    "\u{0}",
    "\u{1}",
    "\u{8}",
    "\t",
    "\n",
    "\r",
    "\u{b}",
    "\u{1b}",
    "\u{7f}",
    "\u{85}",
    "\u{a0}",
    "\u{d7ff}",
    "\u{e000}",
    "\u{fffd}",
    "\u{fffe}",
    "\u{ffff}",
    "\u{1f600}",
    "\u{10ffff}",
    "\u{202e}",
    "\u{200b}",
    "\u{2028}",
    "\u{feff}",
    "é",
    "ß",
    "İ",
    "../",
    "..",
    ".",
    "/",
    "\\",
    "C:",
    ":",
    "~",
    "%2e%2e",
    " ",
    "a",
    "Z",
    "0",
    "9",
    "-",
    "_",
    "V",
    "URN",
    "FEATURE",
    "DATA",
    "{",
    "}",
    "[",
    "]",
    "#",
    "?",
    "=",
    "s3://",
    "file:///",
    "http://h/",
];

/// Whole strings with a meaning somewhere in the domain.
const WORDS: &[&str] = &[
    "",
    " ",
    "Feature",
    "DATA",
    "DATASET",
    "COLLECTION",
    "LOW",
    "NORMAL",
    "HIGH",
    "MD5",
    "SHA-256",
    "RAWDATA",
    "QUICKLOOK_SD",
    "application/zip",
    "Point",
    "Polygon",
    "GeometryCollection",
    "STORED",
    "STORE_ERROR",
    "AVAILABLE",
    "AVAILABILITY",
    "ONLINE",
    "NEARLINE",
    "FEATURE",
    "SUBORDER",
    "granary-pack",
    "URN:FEATURE:DATA:granary:a2beb1a6-a38c-3ac4-9fa5-89e495df2b02:V1",
    "5d41402abc4b2a76b9719d911017c592",
    "s3://bucket/key",
    "file:///data/x.zip",
    "2026-11-23T10:15:31Z",
    "STRING",
    "INTEGER",
    "DOUBLE",
    "DATE_ISO8601",
    "STRING_ARRAY",
    "INTEGER_RANGE",
    "PATTERN",
    "ENUMERATION",
    "DOUBLE_RANGE",
    "JSON_SCHEMA",
    "string",
    "integer",
    "object",
    "array",
    "date-time",
    "uri",
    "regex",
    "email",
    "#",
    "#/$defs/a",
    "#/properties/a",
    "http://example.invalid/schema",
    "https://json-schema.org/draft/2020-12/schema",
    "http://json-schema.org/draft-04/schema#",
    "^[0-9]{2}[A-Z]{3}$",
    "(a*)*$",
    "(?<=a)b",
    "\\p{L}+",
    "\\cA",
    "[",
    "a{100000}",
    "(?i)x",
];

/// Keys the parsers read, so that random objects reach past the first check.
const KEYS: &[&str] = &[
    "metadata",
    "feature",
    "priority",
    "override",
    "updateIfExists",
    "sessionOwner",
    "session",
    "acknowledgedRecipient",
    "storages",
    "pluginBusinessId",
    "storePath",
    "targetTypes",
    "urn",
    "recipients",
    "type",
    "id",
    "entityType",
    "model",
    "properties",
    "geometry",
    "bbox",
    "coordinates",
    "geometries",
    "tags",
    "files",
    "locations",
    "url",
    "storage",
    "attributes",
    "dataType",
    "mimeType",
    "filename",
    "filesize",
    "algorithm",
    "checksum",
    "groupId",
    "groupIds",
    "success",
    "errors",
    "requestChecksum",
    "requestStorage",
    "resultFile",
    "location",
    "metaInfo",
    "errorCause",
    "message",
    "bucket",
    "prefix",
    "class",
    "command",
    "lambda",
    "scope",
    "timeoutSecs",
    "name",
    "optional",
    "restriction",
    "pattern",
    "acceptableValues",
    "min",
    "max",
    "minExcluded",
    "maxExcluded",
    "jsonSchema",
    "fragments",
    "lowerBound",
    "upperBound",
    "x-granary-type",
    "a",
];

/// Any string, weighted towards the troublesome pieces and some very long ones.
fn nasty_string() -> BoxedStrategy<String> {
    prop_oneof![
        10 => short_string(),
        1 => (select(PIECES), 1..20_000usize).prop_map(|(p, n)| p.chars().cycle().take(n).collect()),
    ]
    .boxed()
}

/// Any string of at most a few dozen characters, weighted towards the troublesome pieces.
fn short_string() -> BoxedStrategy<String> {
    prop_oneof![
        3 => any::<String>(),
        2 => "[\\x00-\\x7f]{0,24}",
        2 => select(WORDS).prop_map(str::to_owned),
        3 => vec(select(PIECES), 0..12).prop_map(|p| p.concat()),
    ]
    .boxed()
}

fn json_key() -> BoxedStrategy<String> {
    prop_oneof![3 => select(KEYS).prop_map(str::to_owned), 1 => nasty_string()].boxed()
}

fn json_number() -> BoxedStrategy<Value> {
    prop_oneof![
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        // Non-finite floats have no JSON form.
        any::<f64>().prop_map(|f| serde_json::Number::from_f64(f).map_or(Value::Null, Value::Number)),
        select(&[0.0, -0.0, 0.5, -1.0, 90.0, 180.5, 2_147_483_648.0, 1e308, -1e-308][..]).prop_map(Value::from),
        select(vec![0_i64, 1, -1, 999, 1000, 86_400, 86_401, i64::from(i32::MAX), i64::from(i32::MIN), i64::MAX, i64::MIN])
            .prop_map(Value::from),
    ]
    .boxed()
}

fn json_leaf() -> BoxedStrategy<Value> {
    prop_oneof![
        1 => Just(Value::Null),
        1 => any::<bool>().prop_map(Value::Bool),
        2 => json_number(),
        2 => nasty_string().prop_map(Value::String),
        2 => select(WORDS).prop_map(Value::from),
    ]
    .boxed()
}

/// Any JSON value, up to 6 levels deep and about 100 nodes.
fn json_value() -> BoxedStrategy<Value> {
    json_leaf()
        .prop_recursive(6, 96, 8, |inner| {
            prop_oneof![
                vec(inner.clone(), 0..8).prop_map(Value::Array),
                vec((json_key(), inner), 0..8).prop_map(|kv| Value::Object(kv.into_iter().collect())),
            ]
        })
        .boxed()
}

/// One change to a valid document, at a node chosen among all of its nodes.
#[derive(Debug, Clone)]
enum Mutation {
    /// The key or element goes.
    Remove,
    /// Another value (usually of another type) in its place.
    Replace(Value),
    /// A string of that many characters in its place.
    Huge(usize),
    /// The value wrapped in that many arrays and objects, within what serde_json reads from text (128
    /// levels): no request body is deeper.
    Nest(usize),
    /// A new key (in an object) or element (in an array).
    Add(String, Value),
}

fn mutation() -> BoxedStrategy<Mutation> {
    prop_oneof![
        3 => Just(Mutation::Remove),
        4 => json_value().prop_map(Mutation::Replace),
        1 => (1..100_000usize).prop_map(Mutation::Huge),
        1 => (1..100usize).prop_map(Mutation::Nest),
        2 => (json_key(), json_value()).prop_map(|(k, v)| Mutation::Add(k, v)),
    ]
    .boxed()
}

/// How deep the values reaching the parsers may be: serde_json refuses deeper text (128 levels).
const MAX_DEPTH: usize = 128;

/// The number of nested arrays and objects of `v`.
fn depth_of(v: &Value) -> usize {
    match v {
        Value::Array(a) => 1 + a.iter().map(depth_of).max().unwrap_or(0),
        Value::Object(o) => 1 + o.values().map(depth_of).max().unwrap_or(0),
        _ => 0,
    }
}

#[derive(Debug, Clone)]
enum Step {
    Key(String),
    At(usize),
}

/// The paths of every node of `v`, the root first.
fn paths(v: &Value) -> Vec<Vec<Step>> {
    fn walk(v: &Value, here: &mut Vec<Step>, out: &mut Vec<Vec<Step>>) {
        out.push(here.clone());
        match v {
            Value::Object(m) => m.iter().for_each(|(k, c)| {
                here.push(Step::Key(k.clone()));
                walk(c, here, out);
                here.pop();
            }),
            Value::Array(a) => a.iter().enumerate().for_each(|(i, c)| {
                here.push(Step::At(i));
                walk(c, here, out);
                here.pop();
            }),
            _ => {}
        }
    }
    let mut out = Vec::new();
    walk(v, &mut Vec::new(), &mut out);
    out
}

fn node<'a>(v: &'a mut Value, path: &[Step]) -> Option<&'a mut Value> {
    path.iter().try_fold(v, |v, step| match step {
        Step::Key(k) => v.get_mut(k.as_str()),
        Step::At(i) => v.get_mut(*i),
    })
}

fn apply(v: &mut Value, at: Index, m: Mutation) {
    let all = paths(v);
    let path = &all[at.index(all.len())];
    match m {
        Mutation::Remove => {
            let Some((last, parent)) = path.split_last() else { return };
            match (node(v, parent), last) {
                (Some(Value::Object(o)), Step::Key(k)) => {
                    o.remove(k);
                }
                (Some(Value::Array(a)), Step::At(i)) => {
                    a.remove(*i);
                }
                _ => {}
            }
        }
        Mutation::Replace(new) => {
            if let Some(n) = node(v, path) {
                *n = new;
            }
        }
        Mutation::Huge(len) => {
            if let Some(n) = node(v, path) {
                *n = Value::String("é<&\u{0}x".chars().cycle().take(len).collect());
            }
        }
        Mutation::Nest(depth) => {
            let depth = depth.min(MAX_DEPTH.saturating_sub(depth_of(v)));
            if let Some(n) = node(v, path) {
                let mut inner = n.take();
                for d in 0..depth {
                    inner = if d % 2 == 0 { json!([inner]) } else { json!({ "type": inner }) };
                }
                *n = inner;
            }
        }
        Mutation::Add(key, new) => match node(v, path) {
            Some(Value::Object(o)) => {
                o.insert(key, new);
            }
            Some(Value::Array(a)) => a.push(new),
            Some(other) => *other = new,
            None => {}
        },
    }
}

/// `seed` changed by one to five mutations.
fn mutated(seed: Value) -> BoxedStrategy<Value> {
    vec((any::<Index>(), mutation()), 1..6)
        .prop_map(move |ms| {
            let mut v = seed.clone();
            for (at, m) in ms {
                apply(&mut v, at, m);
            }
            v
        })
        .boxed()
}

/// Text for the parsers that read configuration strings: any text, any JSON, mutated valid ones, and
/// valid ones cut short.
fn config_text(seed: Value) -> BoxedStrategy<String> {
    let text = seed.to_string();
    prop_oneof![
        1 => nasty_string(),
        2 => json_value().prop_map(|v| v.to_string()),
        4 => mutated(seed).prop_map(|v| v.to_string()),
        1 => any::<Index>().prop_map(move |i| text.chars().take(i.index(text.chars().count() + 1)).collect()),
    ]
    .boxed()
}

/// The ways a body reaches a parser: anything at all, or a valid one mutated.
fn body(seed: Value) -> BoxedStrategy<Value> {
    prop_oneof![1 => json_value(), 4 => mutated(seed)].boxed()
}

/// An Err's messages: at least one, each `<path>: <problem>`, neither part blank.
fn check_errors(errors: &[String]) -> Result<(), TestCaseError> {
    prop_assert!(!errors.is_empty(), "an Err lists at least one error");
    for e in errors {
        let (path, problem) = e.split_once(": ").unwrap_or_default();
        prop_assert!(!path.trim().is_empty() && !problem.trim().is_empty(), "{e:?} names no path or no problem in {errors:?}");
    }
    Ok(())
}

// ------------------------------------------------------------------------------------------------
// Valid documents, the seeds of the mutations (the examples of /work/shared/examples, trimmed).

fn creation() -> Value {
    json!({
        "metadata": {"sessionOwner": "s2-ingest-chain", "session": "2026-11-23", "priority": "HIGH", "override": false, "updateIfExists": false,
                     "storages": [{"pluginBusinessId": "nearline-archive", "storePath": "s2/l1c/2026/11/23", "targetTypes": ["RAWDATA"]}]},
        "feature": {
            "type": "Feature", "id": "S2A_MSIL1C_20261123T101531_N0511_R065_T31TCJ", "entityType": "DATA", "model": "S2_L1C",
            "tags": ["SENTINEL2_L1C"],
            "geometry": {"type": "GeometryCollection", "geometries": [
                {"type": "Polygon", "coordinates": [[[1.0, 43.2], [2.4, 43.2], [2.4, 44.2], [1.0, 44.2], [1.0, 43.2]]]},
                {"type": "Point", "coordinates": [1.4, 43.6, 150.0]}]},
            "bbox": [1.0, 43.2, 2.4, 44.2],
            "properties": {"mission": "S2A", "cloudCover": 12.4, "bands": ["B02", "B03"], "quality": {"valid": true, "degradedPixels": 0}},
            "files": [
                {"locations": [{"url": "s3://incoming-products/S2A.zip"}],
                 "attributes": {"dataType": "RAWDATA", "mimeType": "application/zip", "filename": "S2A.zip", "filesize": 734003200,
                                "algorithm": "MD5", "checksum": "5d41402abc4b2a76b9719d911017c592"}},
                {"locations": [{"storage": "quicklooks", "url": "https://quicklooks.example.invalid/T31TCJ.jpg"}],
                 "attributes": {"dataType": "QUICKLOOK_SD", "mimeType": "image/jpeg", "filename": "T31TCJ.jpg", "filesize": 48213,
                                "algorithm": "SHA-256", "checksum": "2c26b46b68ffc68ff99b453c1d30413413422d706483bfa0f98a5e886266e7ae"}}
            ]
        }
    })
}

fn patch() -> Value {
    json!({
        "metadata": {"priority": "NORMAL", "acknowledgedRecipient": "mirror", "storages": [{"pluginBusinessId": "online-s3", "storePath": "q"}]},
        "feature": {
            "type": "Feature", "urn": "URN:FEATURE:DATA:granary:a2beb1a6-a38c-3ac4-9fa5-89e495df2b02:V1",
            "properties": {"cloudCover": 9.8, "quality": {"valid": true}},
            "geometry": {"type": "MultiPolygon", "coordinates": [[[[0, 0], [1, 0], [1, 1], [0, 0]]]]},
            "files": [{"locations": [{"url": "https://quicklooks.example.invalid/v2.jpg"}],
                       "attributes": {"dataType": "QUICKLOOK_SD", "mimeType": "image/jpeg", "filename": "v2.jpg", "filesize": 50321,
                                      "algorithm": "MD5", "checksum": "e4d909c290d0fb1ca068ffaddf22cbd0"}}]
        }
    })
}

const URN: &str = "URN:FEATURE:DATA:granary:a2beb1a6-a38c-3ac4-9fa5-89e495df2b02:V1";

fn deletion() -> Value {
    json!({"urn": URN, "priority": "LOW"})
}

fn notification() -> Value {
    json!({"urn": URN, "priority": "NORMAL", "recipients": ["mirror-site-eu", "catalog-indexer"]})
}

fn storage_events() -> [Value; 3] {
    [
        json!({"type": "AVAILABLE", "message": "restored", "checksum": "5D41402ABC4B2A76B9719D911017C592",
               "location": {"storage": "nearline-archive", "url": "s3://granary-archive/s2/x.zip"},
               "metaInfo": {"checksum": "5d41402abc4b2a76b9719d911017c592", "algorithm": "MD5", "fileName": "x.zip", "fileSize": 7},
               "groupIds": ["order-4711-suborder-3", "other-group"]}),
        json!({"type": "STORED", "checksum": "ab", "location": {"storage": "online", "url": "s3://storage/online/ab"}, "groupIds": ["r1"]}),
        json!({"groupId": "r1", "type": "STORAGE",
               "success": [{"requestChecksum": "aa", "requestStorage": "online", "resultFile": {"location": {"storage": "online", "url": "s3://b/aa"}}}],
               "errors": [{"requestChecksum": "bb", "requestStorage": "online", "errorCause": "404"}]}),
    ]
}

fn locations() -> Value {
    json!({"online": {"bucket": "storage", "prefix": "online/s2", "class": "ONLINE"}, "cold": {"bucket": "archive", "class": "NEARLINE"}})
}

fn processes() -> Value {
    json!({"ndvi": {"command": ["python3", "/opt/ndvi.py", "--fast"], "scope": "FEATURE", "timeoutSecs": 600},
           "thumbs": {"lambda": "arn:aws:lambda:eu-west-1:123456789012:function:thumbs", "scope": "SUBORDER"}})
}

fn model_fixture() -> Value {
    serde_json::from_str(include_str!("fixtures/model-s2-l1c.json")).unwrap()
}

/// The mutations start from valid documents: if one stopped being valid, the targets would only test
/// the first check of each parser.
#[test]
fn the_seeds_are_valid() {
    assert!(parse_creation(&creation()).is_ok(), "{:?}", parse_creation(&creation()).err());
    let p = parse_patch(&patch()).unwrap();
    assert!(validate_patch(&p, "granary").is_ok());
    assert!(validate_deletion(&parse_deletion(&deletion()).unwrap(), "granary").is_ok());
    assert!(validate_notification(&parse_notification(&notification()).unwrap(), "granary").is_ok());
    for e in storage_events() {
        assert!(parse_storage_event(&e).is_ok(), "{e}");
    }
    assert_eq!(parse_locations(&locations().to_string()).unwrap().len(), 2);
    assert_eq!(parse_processes(&processes().to_string()).unwrap().len(), 2);
    assert!(compile_model("S2_L1C", &model_fixture()).is_ok());
}

// ------------------------------------------------------------------------------------------------
// 1. The URN parser.

fn entity_type() -> impl Strategy<Value = EntityType> {
    select(&[EntityType::Data, EntityType::Dataset, EntityType::Collection][..])
}

/// A tenant as the parser takes it: any text without `:` (up to 80 characters, so that some URNs are
/// too long).
fn tenant() -> impl Strategy<Value = String> {
    prop_oneof![3 => "[A-Za-z0-9_.-]{1,80}", 1 => "[^:]{1,30}"]
}

fn uuid() -> impl Strategy<Value = uuid::Uuid> {
    any::<[u8; 16]>().prop_map(uuid::Uuid::from_bytes)
}

/// The longest URN text accepted (the parser's own limit).
const MAX_URN_LEN: usize = 132;

#[test]
fn fuzz_urn_from_parts() {
    fuzz("urn_from_parts", (entity_type(), tenant(), uuid(), 1..=999u32), |(kind, tenant, uuid, version)| {
        let text = format!("URN:FEATURE:{}:{tenant}:{uuid}:V{version}", kind.as_str());
        let parsed = text.parse::<Urn>();
        if text.len() <= MAX_URN_LEN {
            prop_assert_eq!(parsed, Ok(Urn { entity_type: kind, tenant, uuid, version }));
        } else {
            prop_assert!(matches!(parsed, Err(UrnError::Shape(_))), "{} bytes accepted: {:?}", text.len(), parsed);
        }
        Ok(())
    });
}

#[test]
fn fuzz_urn_versions_out_of_range() {
    let version = prop_oneof![Just(0u64), 1000..=9999u64, 10_000..u64::MAX];
    fuzz("urn_versions_out_of_range", (entity_type(), uuid(), version, "0{0,2}"), |(kind, uuid, version, zeros)| {
        let parsed = format!("URN:FEATURE:{}:t:{uuid}:V{zeros}{version}", kind.as_str()).parse::<Urn>();
        let digits = zeros.len() + version.to_string().len();
        if digits <= 4 {
            prop_assert_eq!(parsed, Err(UrnError::Version(version)));
        } else {
            // More than 4 digits is not a version at all.
            prop_assert!(matches!(parsed, Err(UrnError::Shape(_))), "{parsed:?}");
        }
        Ok(())
    });
}

/// One edit of a URN's text.
#[derive(Debug, Clone)]
enum Edit {
    Delete(Index),
    Insert(Index, char),
    Replace(Index, char),
    Truncate(Index),
    Repeat(Index, Index),
    Case,
}

fn edit() -> impl Strategy<Value = Edit> {
    let ch = prop_oneof![
        3 => select(&[':', 'V', '0', '9', '-', 'a', 'F', 'f', 'g', ' ', '{', '}', '+', '\u{0}', 'é', '\u{1f600}', '\u{ff10}'][..]),
        1 => any::<char>(),
    ];
    prop_oneof![
        any::<Index>().prop_map(Edit::Delete),
        (any::<Index>(), ch.clone()).prop_map(|(i, c)| Edit::Insert(i, c)),
        (any::<Index>(), ch).prop_map(|(i, c)| Edit::Replace(i, c)),
        any::<Index>().prop_map(Edit::Truncate),
        (any::<Index>(), any::<Index>()).prop_map(|(a, b)| Edit::Repeat(a, b)),
        Just(Edit::Case),
    ]
}

/// Valid URNs in every form the parser might take (uuids hyphenated, simple, upper case or braced;
/// versions with leading zeros), then edited.
fn near_valid_urn() -> BoxedStrategy<String> {
    let text = (entity_type(), tenant(), uuid(), 1..=999u32, 0..4usize, "0{0,2}").prop_map(|(kind, tenant, uuid, version, form, zeros)| {
        let uuid = match form {
            0 => uuid.hyphenated().to_string(),
            1 => uuid.simple().to_string(),
            2 => uuid.hyphenated().to_string().to_uppercase(),
            _ => uuid.braced().to_string(),
        };
        format!("URN:FEATURE:{}:{tenant}:{uuid}:V{zeros}{version}", kind.as_str())
    });
    (text, vec(edit(), 0..4))
        .prop_map(|(text, edits)| {
            let mut chars: Vec<char> = text.chars().collect();
            for e in edits {
                let n = chars.len();
                match e {
                    Edit::Delete(i) if n > 0 => {
                        chars.remove(i.index(n));
                    }
                    Edit::Insert(i, c) => chars.insert(i.index(n + 1), c),
                    Edit::Replace(i, c) if n > 0 => chars[i.index(n)] = c,
                    Edit::Truncate(i) => chars.truncate(i.index(n + 1)),
                    Edit::Repeat(a, b) if n > 0 => {
                        let (a, b) = (a.index(n), b.index(n));
                        let piece: Vec<char> = chars[a.min(b)..=a.max(b)].to_vec();
                        chars.splice(a.max(b) + 1..a.max(b) + 1, piece);
                    }
                    Edit::Case => chars = chars.iter().collect::<String>().to_lowercase().chars().collect(),
                    _ => {}
                }
            }
            chars.into_iter().collect()
        })
        .boxed()
}

#[test]
fn fuzz_urn_near_valid_and_arbitrary_text() {
    let text = prop_oneof![4 => near_valid_urn(), 1 => nasty_string()];
    fuzz("urn_near_valid_and_arbitrary_text", text, |text| {
        match text.parse::<Urn>() {
            Ok(urn) => {
                // What is accepted is a URN that its canonical text names again, exactly.
                let canonical = urn.to_string();
                prop_assert_eq!(canonical.parse::<Urn>(), Ok(urn.clone()), "{:?} displays as {:?}", text, canonical);
                prop_assert!((1..=999).contains(&urn.version) && !urn.tenant.is_empty() && !urn.tenant.contains(':'));
            }
            Err(e) => prop_assert!(!e.to_string().is_empty()),
        }
        Ok(())
    });
}

// ------------------------------------------------------------------------------------------------
// 2. The request parsers.

/// An accepted body, written back as JSON, reads back as the same request: what the parser accepts,
/// its types hold without loss.
#[test]
fn fuzz_request_creation_bodies() {
    fuzz("request_creation_bodies", body(creation()), |body| {
        match parse_creation(&body) {
            Ok((event, valid)) => {
                prop_assert_eq!(Some(valid.provider_id.as_str()), event.feature["id"].as_str());
                prop_assert_eq!(Some(valid.entity_type.as_str()), event.feature["entityType"].as_str());
                let again = parse_creation(&serde_json::to_value(&event).unwrap());
                prop_assert_eq!(again.map(|(e, _)| e), Ok(event));
            }
            Err(errors) => check_errors(&errors)?,
        }
        Ok(())
    });
}

#[test]
fn fuzz_request_patch_bodies() {
    fuzz("request_patch_bodies", body(patch()), |body| {
        match parse_patch(&body) {
            Ok(event) => {
                prop_assert_eq!(parse_patch(&serde_json::to_value(&event).unwrap()), Ok(event.clone()));
                if let Err(errors) = validate_patch(&event, "granary") {
                    check_errors(&errors)?;
                }
            }
            Err(errors) => check_errors(&errors)?,
        }
        Ok(())
    });
}

#[test]
fn fuzz_request_deletion_and_notification_bodies() {
    let bodies = prop_oneof![body(deletion()), body(notification())];
    fuzz("request_deletion_and_notification_bodies", bodies, |body| {
        match parse_deletion(&body) {
            Ok(event) => {
                prop_assert_eq!(parse_deletion(&serde_json::to_value(&event).unwrap()), Ok(event.clone()));
                match validate_deletion(&event, "granary") {
                    Ok(urn) => prop_assert_eq!(urn.to_string().parse::<Urn>(), Ok(urn)),
                    Err(errors) => check_errors(&errors)?,
                }
            }
            Err(errors) => check_errors(&errors)?,
        }
        match parse_notification(&body) {
            Ok(event) => {
                prop_assert_eq!(parse_notification(&serde_json::to_value(&event).unwrap()), Ok(event.clone()));
                if let Err(errors) = validate_notification(&event, "granary") {
                    check_errors(&errors)?;
                }
            }
            Err(errors) => check_errors(&errors)?,
        }
        Ok(())
    });
}

/// Message attributes and query parameters: the request type, the file update mode, an order status,
/// and product search parameters (what is accepted reads back the same from its own parameters).
#[test]
fn fuzz_request_attributes_and_search_parameters() {
    let name = prop_oneof![
        select(&["from", "to", "bbox", "property.", "property.cloudCover", "page", "size"][..]).prop_map(str::to_owned),
        nasty_string()
    ];
    let value = prop_oneof![
        nasty_string(),
        select(&["2026-11-23T10:15:31.123456789+02:00", "-180,-90,180,90", "1,2,3", "NaN,0,1,1", "1e400,0,1,1"][..])
            .prop_map(str::to_owned),
    ];
    // Dates of every year RFC 3339 writes, the first and last days and hours more often, with any
    // offset (so that UTC may fall in another year).
    let date = (
        prop_oneof![select(vec![0u32, 9999]), 0..=9999u32],
        prop_oneof![select(vec![1u32, 12]), 1..=12u32],
        prop_oneof![select(vec![1u32, 31]), 1..=28u32],
        prop_oneof![select(vec![0u32, 23]), 0..24u32],
        -23..=23i32,
    )
        .prop_map(|(y, mo, d, h, oh)| format!("{y:04}-{mo:02}-{d:02}T{h:02}:59:59{}{:02}:00", if oh < 0 { '-' } else { '+' }, oh.abs()));
    let bbox = (-200.0..200.0f64, -100.0..100.0f64, -200.0..200.0f64, -100.0..100.0f64).prop_map(|(a, b, c, d)| format!("{a},{b},{c},{d}"));
    // Mostly parameters that may be right, so that searches are also accepted and read back.
    let param = prop_oneof![
        1 => (name, value),
        2 => (select(&["from", "to"][..]).prop_map(str::to_owned), date),
        1 => (Just("bbox".to_owned()), bbox),
        1 => ("property\\.[a-z.]{1,8}", nasty_string()),
    ];
    let input = (nasty_string(), vec(param, 0..4));
    fuzz("request_attributes_and_search_parameters", input, |(text, params)| {
        if let Some(kind) = FeatureRequestType::parse(&text) {
            prop_assert_eq!(kind.as_str(), text.as_str());
        }
        if let Err(e) = FileUpdateMode::parse(Some(&text)) {
            prop_assert!(e.contains("file_update_mode"), "{e}");
        }
        if let Some(status) = OrderStatus::parse(&text) {
            prop_assert_eq!(status.as_str(), text.as_str());
        }
        match ProductSearch::from_params(params.iter().map(|(n, v)| (n.as_str(), v.as_str())), &["page", "size"]) {
            Ok(search) => {
                let again = search.to_params();
                prop_assert_eq!(ProductSearch::from_params(again.iter().map(|(n, v)| (n.as_str(), v.as_str())), &[]), Ok(search));
            }
            Err(errors) => check_errors(&errors)?,
        }
        Ok(())
    });
}

#[test]
fn fuzz_request_storage_events() {
    let [a, b, c] = storage_events();
    let events = prop_oneof![1 => json_value(), 2 => mutated(a), 2 => mutated(b), 2 => mutated(c)];
    fuzz("request_storage_events", events, |event| {
        match parse_storage_event(&event) {
            Ok(outcomes) => {
                for o in outcomes {
                    prop_assert!(!o.checksum.trim().is_empty() && o.checksum == o.checksum.to_ascii_lowercase(), "{o:?}");
                    prop_assert!(!o.group_id.trim().is_empty(), "an outcome for no group: {o:?}");
                }
            }
            Err(e) => prop_assert!(!e.trim().is_empty()),
        }
        Ok(())
    });
}

#[test]
fn fuzz_request_location_and_process_configuration() {
    let texts = (config_text(locations()), config_text(processes()));
    fuzz("request_location_and_process_configuration", texts, |(locations, processes)| {
        match parse_locations(&locations) {
            Ok(all) => {
                for (name, l) in all {
                    prop_assert!(!name.trim().is_empty() && !l.bucket.trim().is_empty(), "{name:?} {l:?}");
                    // A prefix is a key prefix: it must not climb out of the bucket's tree.
                    let p = &l.prefix;
                    prop_assert!(!p.starts_with('/') && !p.contains(['\\', '\0']), "{p:?}");
                    prop_assert!(p.is_empty() || p.split('/').all(|s| !s.is_empty() && s != "." && s != ".."), "{p:?}");
                }
            }
            Err(e) => prop_assert!(!e.trim().is_empty()),
        }
        match parse_processes(&processes) {
            Ok(all) => {
                for (id, spec) in all {
                    prop_assert!(!id.trim().is_empty() && id != PACK_PROCESS, "{id:?}");
                    prop_assert!((1..=86_400).contains(&spec.timeout_secs), "{spec:?}");
                    match spec.runner {
                        ProcessRunner::Command(c) => prop_assert!(c.first().is_some_and(|p| !p.trim().is_empty()), "{c:?}"),
                        ProcessRunner::Lambda(f) => prop_assert!(!f.trim().is_empty()),
                    }
                }
            }
            Err(e) => prop_assert!(!e.trim().is_empty()),
        }
        Ok(())
    });
}

#[test]
fn fuzz_request_file_ids_and_s3_urls() {
    let order = prop_oneof!["[A-Za-z0-9-]{1,64}", nasty_string()];
    let parts = (order, any::<u32>(), any::<u64>());
    let text = prop_oneof![
        nasty_string(),
        "[0-9a-f.-]{0,20}\\.[0-9+-]{0,6}\\.[0-9+-]{0,6}",
        "s3://[^/]{0,8}(/[^/]{0,8}){0,3}",
        parts.clone().prop_map(|(o, s, i)| file_id(&o, s, i))
    ];
    fuzz("request_file_ids_and_s3_urls", (parts, text), |((order, suborder, index), text)| {
        let valid_order = !order.is_empty() && order.len() <= 64 && order.chars().all(|c| c.is_ascii_alphanumeric() || c == '-');
        let id = file_id(&order, suborder, index);
        prop_assert_eq!(parse_file_id(&id), valid_order.then_some((order.as_str(), suborder, index)));
        if let Some((o, _, _)) = parse_file_id(&text) {
            prop_assert!(!o.is_empty() && o.len() <= 64 && o.chars().all(|c| c.is_ascii_alphanumeric() || c == '-'), "{text:?}");
        }
        if let Some((bucket, key)) = parse_s3_url(&text) {
            prop_assert!(!bucket.is_empty() && !bucket.contains('/') && !key.is_empty(), "{text:?}");
            prop_assert_eq!(format!("s3://{bucket}/{key}"), text);
        }
        Ok(())
    });
}

// ------------------------------------------------------------------------------------------------
// 3. The data-model compiler and validator.

/// Attribute names, the last ones not allowed.
const ATTRIBUTE_NAMES: &[&str] = &["a", "attr", "cloudCover", "_x", "x-y", "x.y", "a/b", "~0", "$ref", "9a", ""];
/// How many of ATTRIBUTE_NAMES are allowed.
const ALLOWED_NAMES: usize = 5;
const TYPES: &[&str] = &[
    "STRING",
    "INTEGER",
    "LONG",
    "DOUBLE",
    "BOOLEAN",
    "DATE_ISO8601",
    "URL",
    "JSON",
    "STRING_ARRAY",
    "INTEGER_ARRAY",
    "LONG_ARRAY",
    "DOUBLE_ARRAY",
    "DATE_ARRAY",
    "INTEGER_RANGE",
    "LONG_RANGE",
    "DOUBLE_RANGE",
    "DATE_RANGE",
    "INTEGER_INTERVAL",
    "LONG_INTERVAL",
    "DOUBLE_INTERVAL",
    "DATE_INTERVAL",
    "FLOAT",
    "_ARRAY",
    "DATE",
];
const RESTRICTIONS: &[&str] =
    &["NO_RESTRICTION", "PATTERN", "ENUMERATION", "INTEGER_RANGE", "LONG_RANGE", "DOUBLE_RANGE", "JSON_SCHEMA", "RANGE"];
const SCHEMA_KEYWORDS: &[&str] = &[
    "type",
    "minimum",
    "maximum",
    "exclusiveMinimum",
    "exclusiveMaximum",
    "multipleOf",
    "minLength",
    "maxLength",
    "pattern",
    "format",
    "enum",
    "const",
    "required",
    "minItems",
    "maxItems",
    "uniqueItems",
    "minProperties",
    "maxProperties",
    "$ref",
    "$id",
    "$schema",
    "$anchor",
    "$dynamicRef",
    "dependentRequired",
    "contentEncoding",
    "default",
];
const SUBSCHEMA_KEYWORDS: &[&str] = &[
    "items",
    "not",
    "additionalProperties",
    "contains",
    "if",
    "then",
    "else",
    "propertyNames",
    "unevaluatedProperties",
    "additionalItems",
];
const SCHEMA_LIST_KEYWORDS: &[&str] = &["allOf", "anyOf", "oneOf", "prefixItems", "items"];
const SCHEMA_MAP_KEYWORDS: &[&str] = &["properties", "patternProperties", "$defs", "definitions", "dependentSchemas"];

fn restriction() -> BoxedStrategy<Value> {
    let field = |name: &'static str, good: BoxedStrategy<Value>| prop_oneof![1 => Just(None), 3 => good.prop_map(move |v| Some((name, v))), 1 => json_leaf().prop_map(move |v| Some((name, v)))];
    let number = || json_number().boxed();
    let kind = prop_oneof![4 => select(RESTRICTIONS).prop_map(Value::from), 1 => json_leaf()];
    (
        kind,
        field("pattern", select(WORDS).prop_map(Value::from).boxed()),
        field("acceptableValues", vec(json_leaf(), 0..4).prop_map(Value::Array).boxed()),
        field("min", number()),
        field("max", number()),
        field("minExcluded", any::<bool>().prop_map(Value::Bool).boxed()),
        field("maxExcluded", any::<bool>().prop_map(Value::Bool).boxed()),
        field("jsonSchema", schema().boxed()),
    )
        .prop_map(|(kind, a, b, c, d, e, f, g)| {
            let mut r = Map::new();
            r.insert("type".into(), kind);
            for (k, v) in [a, b, c, d, e, f, g].into_iter().flatten() {
                r.insert(k.into(), v);
            }
            Value::Object(r)
        })
        .boxed()
}

fn attribute() -> BoxedStrategy<Value> {
    let name = prop_oneof![4 => select(ATTRIBUTE_NAMES).prop_map(Value::from), 1 => json_leaf()];
    let ty = prop_oneof![6 => select(TYPES).prop_map(Value::from), 1 => json_leaf()];
    let optional = prop_oneof![3 => any::<bool>().prop_map(Value::Bool), 1 => json_leaf()];
    (name, ty, optional, prop::option::of(restriction()))
        .prop_map(|(name, ty, optional, restriction)| {
            let mut a = json!({"name": name, "type": ty, "optional": optional});
            if let Some(r) = restriction {
                a["restriction"] = r;
            }
            a
        })
        .boxed()
}

/// A restriction that fits an attribute of type `ty`, with random bounds, patterns and values.
fn fitting_restriction(ty: &str) -> BoxedStrategy<Value> {
    let enumeration = vec(json_leaf(), 1..4).prop_map(|v| json!({"type": "ENUMERATION", "acceptableValues": v}));
    let range = |kind: &'static str| {
        (json_number(), json_number(), any::<bool>(), any::<bool>())
            .prop_map(move |(min, max, a, b)| json!({"type": kind, "min": min, "max": max, "minExcluded": a, "maxExcluded": b}))
    };
    match ty.split('_').next().unwrap_or_default() {
        "STRING" => prop_oneof![select(WORDS).prop_map(|p| json!({"type": "PATTERN", "pattern": p})), enumeration].boxed(),
        "INTEGER" => prop_oneof![range("INTEGER_RANGE"), enumeration].boxed(),
        "LONG" => prop_oneof![range("LONG_RANGE"), enumeration].boxed(),
        "DOUBLE" => prop_oneof![range("DOUBLE_RANGE"), enumeration].boxed(),
        "JSON" => schema().prop_map(|s| json!({"type": "JSON_SCHEMA", "jsonSchema": s})).boxed(),
        _ => prop_oneof![Just(json!({"type": "NO_RESTRICTION"})), enumeration].boxed(),
    }
}

/// An attribute of a known type, with a restriction that fits it or none, and no name yet.
fn fitting_attribute() -> BoxedStrategy<Value> {
    (select(&TYPES[..21]), any::<bool>(), any::<bool>())
        .prop_flat_map(|(ty, optional, restricted)| {
            let restriction = if restricted { fitting_restriction(ty).prop_map(Some).boxed() } else { Just(None).boxed() };
            (Just(ty), Just(optional), restriction)
        })
        .prop_map(|(ty, optional, restriction)| {
            let mut a = json!({"type": ty, "optional": optional});
            if let Some(r) = restriction {
                a["restriction"] = r;
            }
            a
        })
        .boxed()
}

/// Named `<name><i>`: distinct and never blank, so that the model can compile.
fn fitting_attributes(most: usize) -> BoxedStrategy<Value> {
    vec((select(&ATTRIBUTE_NAMES[..ALLOWED_NAMES]), fitting_attribute()), 0..most)
        .prop_map(|attrs| {
            Value::Array(
                attrs
                    .into_iter()
                    .enumerate()
                    .map(|(i, (name, mut a))| {
                        a["name"] = json!(format!("{name}{i}"));
                        a
                    })
                    .collect(),
            )
        })
        .boxed()
}

/// A model in REGARDS's vocabulary whose attributes and restrictions fit their types, so that it
/// usually compiles.
fn fitting_model() -> BoxedStrategy<Value> {
    let fragment = (select(&["f", "quality"][..]), fitting_attributes(4));
    (select(&["DATA", "DATASET", "COLLECTION"][..]), fitting_attributes(6), vec(fragment, 0..3))
        .prop_map(|(kind, attributes, fragments)| {
            let fragments: Vec<Value> =
                fragments.into_iter().enumerate().map(|(i, (name, a))| json!({"name": format!("{name}{i}"), "attributes": a})).collect();
            json!({"name": "M", "type": kind, "attributes": attributes, "fragments": fragments})
        })
        .boxed()
}

/// A model in REGARDS's vocabulary: mostly well-typed, sometimes not.
fn regards_model() -> BoxedStrategy<Value> {
    let fragment = (prop_oneof![select(ATTRIBUTE_NAMES).prop_map(Value::from), json_leaf()], vec(attribute(), 0..4))
        .prop_map(|(name, attributes)| json!({"name": name, "attributes": attributes}));
    let kind = prop_oneof![3 => select(&["DATA", "DATASET", "COLLECTION"][..]).prop_map(Value::from), 1 => json_leaf()];
    (kind, vec(attribute(), 0..6), vec(fragment, 0..3), any::<bool>())
        .prop_map(|(kind, attributes, fragments, named)| {
            let mut m = json!({"type": kind, "attributes": attributes, "fragments": fragments});
            if named {
                m["name"] = json!("M");
            }
            m
        })
        .boxed()
}

/// A JSON Schema, built from its keywords with random values, up to 4 levels deep.
fn schema() -> BoxedStrategy<Value> {
    let keyword = (select(SCHEMA_KEYWORDS), json_leaf()).prop_map(|(k, v)| json!({ k: v }));
    let leaf = prop_oneof![1 => Just(json!({})), 1 => Just(json!(true)), 1 => Just(json!(false)), 4 => keyword];
    leaf.prop_recursive(4, 32, 4, |inner| {
        prop_oneof![
            vec((select(SUBSCHEMA_KEYWORDS), inner.clone()), 1..4)
                .prop_map(|kv| Value::Object(kv.into_iter().map(|(k, v)| (k.to_owned(), v)).collect())),
            (select(SCHEMA_LIST_KEYWORDS), vec(inner.clone(), 1..3)).prop_map(|(k, list)| json!({ k: list })),
            (select(SCHEMA_MAP_KEYWORDS), vec((json_key(), inner.clone()), 1..3))
                .prop_map(|(k, kv)| json!({ k: Value::Object(kv.into_iter().collect()) })),
            (inner, vec((select(SCHEMA_KEYWORDS), json_leaf()), 1..3)).prop_map(|(mut s, kws)| {
                if let Value::Object(m) = &mut s {
                    m.extend(kws.into_iter().map(|(k, v)| (k.to_owned(), v)));
                }
                s
            }),
        ]
    })
    .boxed()
}

/// The fixture, named as the targets compile models, so that its mutations are not all refused for
/// their name.
fn model_fixture_named_m() -> Value {
    let mut m = model_fixture();
    m["name"] = json!("M");
    m
}

fn model_definition() -> BoxedStrategy<Value> {
    prop_oneof![
        3 => regards_model(),
        3 => fitting_model(),
        2 => schema(),
        2 => mutated(model_fixture_named_m()),
        1 => json_value(),
    ]
    .boxed()
}

/// Properties that use the model's names, so that the checks reach its attributes.
fn properties() -> BoxedStrategy<Value> {
    // The names fitting_model gives its attributes and fragments (`<name><i>`), and bare ones.
    let name = prop_oneof![
        select(ATTRIBUTE_NAMES).prop_map(str::to_owned),
        (select(&["a", "attr", "cloudCover", "_x", "x-y", "f", "quality"][..]), 0..6usize).prop_map(|(n, i)| format!("{n}{i}"))
    ];
    let named = vec((name, json_value()), 0..6).prop_map(|kv| Value::Object(kv.into_iter().collect()));
    prop_oneof![3 => named, 1 => json_value(), 1 => mutated(json!({"mission": "S2A", "tileId": "31TCJ", "cloudCover": 12.4,
        "acquisitionDate": "2026-11-23T10:15:31Z", "bands": ["B02"], "validity": {"lowerBound": "2026-01-01T00:00:00Z"},
        "quality": {"valid": true, "degradedPixels": 0}}))]
    .boxed()
}

/// Every compile error names a path in the model; a compiled model builds its validator, and its
/// checks, in both modes, list errors that each name a path under `feature.properties`.
#[test]
fn fuzz_model_definitions_and_properties() {
    fuzz("model_definitions_and_properties", (model_definition(), properties()), |(definition, properties)| {
        match compile_model("M", &definition) {
            Ok(model) => {
                let validator = ModelValidator::new(model);
                prop_assert!(validator.is_ok(), "a compiled model must build its validator: {:?}", validator.err());
                let validator = validator.unwrap();
                for mode in [Mode::Creation, Mode::Patch] {
                    for e in validator.check(&properties, mode) {
                        let (path, problem) = e.split_once(": ").unwrap_or_default();
                        prop_assert!(path.starts_with("feature.properties") && !problem.trim().is_empty(), "{e:?}");
                    }
                }
                // A patch requires nothing: what passes at creation passes as a patch.
                if validator.check(&properties, Mode::Creation).is_empty() {
                    prop_assert_eq!(validator.check(&properties, Mode::Patch), Vec::<String>::new());
                }
            }
            Err(ModelError(errors)) => {
                prop_assert!(!errors.is_empty());
                for e in &errors {
                    prop_assert!(e.starts_with("model") && e.contains(": "), "{e:?} names no path");
                }
            }
        }
        Ok(())
    });
}

/// A one-attribute model of `ty` with `restriction`.
fn single(ty: &str, restriction: Value, optional: bool) -> ModelValidator {
    let def = json!({"name": "M", "type": "DATA", "attributes": [{"name": "attr", "type": ty, "optional": optional, "restriction": restriction}]});
    ModelValidator::new(compile_model("M", &def).unwrap()).unwrap()
}

fn passes(v: &ModelValidator, value: &Value) -> Result<(), TestCaseError> {
    for mode in [Mode::Creation, Mode::Patch] {
        let errors = v.check(&json!({ "attr": value }), mode);
        prop_assert!(errors.is_empty(), "{value} must pass ({mode:?}): {errors:?}");
    }
    Ok(())
}

fn fails(v: &ModelValidator, value: &Value) -> Result<(), TestCaseError> {
    for mode in [Mode::Creation, Mode::Patch] {
        let errors = v.check(&json!({ "attr": value }), mode);
        prop_assert!(!errors.is_empty(), "{value} must fail ({mode:?})");
        // The attribute, or a place inside it (an array's element, a range's bound).
        prop_assert!(errors.iter().all(|e| e.starts_with("feature.properties.attr")), "{errors:?}");
    }
    Ok(())
}

#[test]
fn fuzz_model_integer_and_double_ranges() {
    let input = (any::<i32>(), any::<i32>(), any::<bool>(), any::<bool>(), any::<Index>(), -1e12..1e12f64, -1e12..1e12f64, any::<Index>());
    fuzz("model_integer_and_double_ranges", input, |(a, b, min_excluded, max_excluded, pick, x, y, fraction)| {
        // Ranges that hold a value (an empty one is a mistake in the model, not what is tested here).
        let (min, max) = (a.min(b), a.max(b));
        let (min_excluded, max_excluded) = (min_excluded && max > min, max_excluded && i64::from(max) - i64::from(min) >= 2);
        let v = single(
            "INTEGER",
            json!({"type": "INTEGER_RANGE", "min": min, "max": max, "minExcluded": min_excluded, "maxExcluded": max_excluded}),
            false,
        );
        let (low, high) = (i64::from(min) + i64::from(min_excluded), i64::from(max) - i64::from(max_excluded));
        let inside = low + i64::try_from(pick.index(usize::try_from(high - low + 1).unwrap())).unwrap();
        passes(&v, &json!(inside))?;
        fails(&v, &json!(low - 1))?;
        fails(&v, &json!(high + 1))?;
        fails(&v, &json!(f64::from(min) + 0.5))?;
        // DOUBLE_RANGE, the bounds themselves in or out as the flags say.
        let (min, max) = (x.min(y), x.max(y));
        let (min_excluded, max_excluded) = (min_excluded && max > min, max_excluded && max > min);
        let v = single(
            "DOUBLE",
            json!({"type": "DOUBLE_RANGE", "min": min, "max": max, "minExcluded": min_excluded, "maxExcluded": max_excluded}),
            true,
        );
        let inside = (min + (max - min) * (fraction.index(1001) as f64 / 1000.0)).clamp(min, max);
        if (inside > min || !min_excluded) && (inside < max || !max_excluded) {
            passes(&v, &json!(inside))?;
        }
        if min_excluded {
            fails(&v, &json!(min))?
        } else {
            passes(&v, &json!(min))?
        }
        if max_excluded {
            fails(&v, &json!(max))?
        } else {
            passes(&v, &json!(max))?
        }
        fails(&v, &json!(min - 1.0 - min.abs() * 1e-9))?;
        fails(&v, &json!(max + 1.0 + max.abs() * 1e-9))?;
        Ok(())
    });
}

#[test]
fn fuzz_model_patterns_enumerations_and_dates() {
    // Patterns whose bodies proptest can generate matches of; the model anchors them.
    let pattern = select(&["[0-9]{2}[A-Z]{3}", "B[0-9]{2}", "[a-z]{1,8}(-[0-9]{1,3})?", "S2[ABC]_[A-Z0-9]{4,10}", "[é-ü]+"][..]);
    let pattern_and_match = pattern.prop_flat_map(|p| (Just(p), proptest::string::string_regex(p).unwrap()));
    // Distinct: JSON Schema's enum should not repeat a value.
    let choices = proptest::collection::btree_set(short_string(), 1..5).prop_map(|c| c.into_iter().collect::<Vec<_>>());
    let date = -62_135_596_800i64..253_402_300_799; // 0001-01-01 to 9999-12-31, in seconds
    let input = (pattern_and_match, choices, any::<Index>(), nasty_string(), date, 0..1_000_000_000u32);
    fuzz("model_patterns_enumerations_and_dates", input, |((pattern, matching), choices, pick, other, secs, nanos)| {
        let v = single("STRING", json!({"type": "PATTERN", "pattern": format!("^(?:{pattern})$")}), false);
        passes(&v, &json!(matching))?;
        fails(&v, &json!(format!("!{matching}")))?;
        fails(&v, &json!(3))?;
        let v = single("STRING_ARRAY", json!({"type": "ENUMERATION", "acceptableValues": choices}), false);
        let chosen = &choices[pick.index(choices.len())];
        passes(&v, &json!([chosen]))?;
        if !choices.contains(&other) {
            fails(&v, &json!([chosen, other]))?;
        }
        let v = single("DATE_INTERVAL", Value::Null, false);
        let date = chrono::DateTime::from_timestamp(secs, nanos).unwrap().to_rfc3339();
        passes(&v, &json!({"lowerBound": date, "upperBound": date}))?;
        fails(&v, &json!({"lowerBound": date.replace('T', " ").replace(':', "")}))?;
        Ok(())
    });
}

// ------------------------------------------------------------------------------------------------
// 4. The metalink writer.

/// Whether `c` may appear in an XML 1.0 document (the `Char` production).
fn is_xml_char(c: char) -> bool {
    matches!(c, '\t' | '\n' | '\r' | '\u{20}'..='\u{d7ff}' | '\u{e000}'..='\u{fffd}' | '\u{10000}'..='\u{10ffff}')
}

/// Reads `doc` to its end as an XML parser would, refusing what is not well-formed (quick-xml does
/// not check characters itself), and returns the names of its `<file>` elements and its hash count.
fn read_metalink(doc: &str) -> Result<(Vec<String>, usize), String> {
    if let Some(c) = doc.chars().find(|c| !is_xml_char(*c)) {
        return Err(format!("{c:?} is not an XML character"));
    }
    let mut reader = quick_xml::Reader::from_str(doc);
    let (mut names, mut hashes, mut depth, mut roots) = (Vec::new(), 0, 0usize, 0);
    loop {
        match reader.read_event().map_err(|e| e.to_string())? {
            Event::Eof => break,
            event @ (Event::Start(_) | Event::Empty(_)) => {
                let (Event::Start(e) | Event::Empty(e)) = &event else { unreachable!() };
                if depth == 0 {
                    roots += 1;
                }
                depth += usize::from(matches!(event, Event::Start(_)));
                for a in e.attributes() {
                    let a = a.map_err(|e| e.to_string())?;
                    let value = a.unescape_value().map_err(|e| e.to_string())?;
                    if e.name().as_ref() == b"file" && a.key.as_ref() == b"name" {
                        names.push(value.into_owned());
                    }
                }
                hashes += usize::from(e.name().as_ref() == b"hash");
            }
            Event::End(_) => depth -= 1,
            Event::Text(t) => {
                t.decode().map_err(|e| e.to_string())?;
            }
            Event::GeneralRef(r) => {
                if !(r.is_char_ref() || matches!(&*r, b"lt" | b"gt" | b"amp" | b"apos" | b"quot")) {
                    return Err(format!("undeclared entity {r:?}"));
                }
                r.resolve_char_ref().map_err(|e| e.to_string())?;
            }
            Event::Decl(_) => {}
            other => return Err(format!("unexpected {other:?}")),
        }
    }
    if depth != 0 || roots != 1 {
        return Err(format!("{roots} root elements, {depth} left open"));
    }
    Ok((names, hashes))
}

fn metalink_file() -> BoxedStrategy<MetalinkFile> {
    let name = prop_oneof![2 => nasty_string(), 1 => vec(nasty_string(), 1..4).prop_map(|p| safe_path(&p.iter().map(String::as_str).collect::<Vec<_>>()))];
    let algorithm = prop_oneof![
        select(&["MD5", "md5", "SHA-256", "sha_1", "SHA512", "Sha-384", "CRC32", ""][..]).prop_map(str::to_owned),
        nasty_string()
    ];
    (name, any::<u64>(), algorithm, nasty_string(), nasty_string())
        .prop_map(|(name, size, algorithm, checksum, url)| MetalinkFile { name, size, algorithm, checksum, url })
        .boxed()
}

#[test]
fn fuzz_metalink_documents_are_well_formed() {
    fuzz("metalink_documents_are_well_formed", (vec(metalink_file(), 0..8), nasty_string()), |(files, published)| {
        let doc = metalink(&files, &published);
        let read = read_metalink(&doc);
        prop_assert!(read.is_ok(), "{:?} in {}", read.as_ref().err(), doc);
        let (names, hashes) = read.unwrap();
        prop_assert_eq!(names.len(), files.len(), "one <file> per file");
        prop_assert_eq!(hashes, files.iter().filter(|f| hash_type(&f.algorithm).is_some()).count());
        for (name, f) in names.iter().zip(&files) {
            // A name made only of XML characters reads back as written.
            if f.name.chars().all(is_xml_char) {
                prop_assert_eq!(name, &f.name);
            }
        }
        Ok(())
    });
}

#[test]
fn fuzz_metalink_safe_paths_stay_inside() {
    fuzz("metalink_safe_paths_stay_inside", (vec(nasty_string(), 1..6), nasty_string()), |(parts, algorithm)| {
        let parts: Vec<&str> = parts.iter().map(String::as_str).collect();
        let path = safe_path(&parts);
        prop_assert!(!path.starts_with('/') && !path.contains(['\0', '\\']), "{path:?}");
        let segments: Vec<&str> = path.split('/').collect();
        prop_assert_eq!(segments.len(), parts.len(), "one segment per part: {:?}", path);
        for s in &segments {
            prop_assert!(!matches!(*s, "" | "." | ".."), "{path:?}");
            prop_assert!(!s.chars().any(char::is_control), "{path:?}");
            // A segment is already safe: made safe again, it is unchanged.
            prop_assert_eq!(&safe_path(&[s]), s);
        }
        if let Some(kind) = hash_type(&algorithm) {
            prop_assert!(["md5", "sha-1", "sha-256", "sha-384", "sha-512"].contains(&kind));
            prop_assert_eq!(hash_type(&algorithm.to_ascii_lowercase()), Some(kind));
        }
        Ok(())
    });
}

// ------------------------------------------------------------------------------------------------
// The bugs the targets found, kept as plain tests (the inputs are proptest's shrunk ones).

/// A uuid written without hyphens is 4 characters shorter than the one Display writes: the URN was
/// accepted though its own canonical text was refused as too long.
#[test]
fn regression_urn_whose_canonical_text_is_too_long_is_refused() {
    let text =
        "URN:FEATURE:COLLECTION:A_-__000aAAA_a0Aa0a_aAA-_AAAaA-A-000_-0-aAA0aaa-0Aa____a0aaa0-A-AAA_0:00000000000000000000000000000000:V10";
    // Within the 132-byte limit as written, 133 bytes once the uuid has its hyphens.
    assert_eq!(text.len(), 129);
    assert!(matches!(text.parse::<Urn>(), Err(UrnError::Shape(_))), "{:?}", text.parse::<Urn>());
    // The same URN with a shorter tenant is accepted, and its canonical text reads back to it.
    let short = text.replace("A_-__000", "");
    let urn = short.parse::<Urn>().unwrap();
    assert_eq!(urn.to_string().parse::<Urn>(), Ok(urn));
}

/// Control characters and the non-characters U+FFFE and U+FFFF were written as they are, making the
/// whole document malformed; U+FFFF survives safe_path, so a producer's file name could carry it.
#[test]
fn regression_metalink_replaces_characters_xml_cannot_carry() {
    let name = safe_path(&["product\u{ffff}", "a\u{fffe}b.zip"]);
    let files = [
        MetalinkFile { name: "\u{e}".into(), size: 0, algorithm: "MD5".into(), checksum: String::new(), url: String::new() },
        MetalinkFile { name, size: 1, algorithm: "SHA-256".into(), checksum: "ab\u{0}".into(), url: "https://h/\u{1b}x".into() },
    ];
    let doc = metalink(&files, "2026-11-23T10:00:00Z\u{8}");
    let (names, hashes) = read_metalink(&doc).unwrap_or_else(|e| panic!("{e}: {doc}"));
    assert_eq!(names, ["\u{fffd}", "product\u{fffd}/a\u{fffd}b.zip"]);
    assert_eq!(hashes, 2);
    assert!(doc.contains("<url>https://h/\u{fffd}x</url>") && doc.contains("<hash type=\"sha-256\">ab\u{fffd}</hash>"), "{doc}");
}

/// A blank search parameter name (`?=x`) gave an error starting with no name, and one holding ": "
/// an ambiguous one: such names are quoted.
#[test]
fn regression_search_parameter_names_that_are_not_plain_are_quoted() {
    let errors = |name: &str| ProductSearch::from_params([(name, "")], &[]).unwrap_err();
    assert!(errors("")[0].starts_with("\"\": not a search parameter"), "{:?}", errors(""));
    assert!(errors(": ")[0].starts_with("\": \": not a search parameter"), "{:?}", errors(": "));
    assert!(errors("cloudCover")[0].starts_with("cloudCover: not a search parameter"), "{:?}", errors("cloudCover"));
}

/// A FileReferenceEvent whose only group id is blank was answered as an outcome for the group "".
#[test]
fn regression_storage_event_blank_group_ids_name_no_group() {
    let event = json!({"type": "STORED", "checksum": "ab", "location": {"storage": "online", "url": "s3://storage/online/ab"},
                       "groupIds": [[null], "", " ", ["x"]]});
    assert!(parse_storage_event(&event).unwrap_err().contains("groupIds must list at least one group"));
    let mut with_one = event.clone();
    with_one["groupIds"] = json!(["", "r1"]);
    let outcomes = parse_storage_event(&with_one).unwrap();
    assert_eq!(outcomes.iter().map(|o| o.group_id.as_str()).collect::<Vec<_>>(), ["r1"]);
}

/// A date whose UTC instant leaves RFC 3339's years was accepted, and the search's own parameters
/// (`to_params`, in UTC) were then refused.
#[test]
fn regression_search_dates_stay_within_rfc3339_years_in_utc() {
    for date in ["9999-12-31T23:59:59-01:00", "0000-01-01T00:00:00+01:00"] {
        let errors = ProductSearch::from_params([("from", date)], &[]).unwrap_err();
        assert!(errors[0].contains("outside years 0000 to 9999 in UTC"), "{errors:?}");
    }
    let edge = ProductSearch::from_params([("to", "9999-12-31T22:59:59-01:00")], &[]).unwrap();
    let params = edge.to_params();
    assert_eq!(ProductSearch::from_params(params.iter().map(|(n, v)| (n.as_str(), v.as_str())), &[]), Ok(edge));
}
