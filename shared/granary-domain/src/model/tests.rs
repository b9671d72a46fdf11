//! Table-driven checks: every type by every restriction it admits, in both modes, each with a value
//! that passes and one that fails.

use super::*;
use serde_json::json;

/// (type, restriction or null, a value that passes, a value that fails)
fn table() -> Vec<(&'static str, Value, Value, Value)> {
    let none = Value::Null;
    vec![
        ("STRING", none.clone(), json!("x"), json!(3)),
        ("STRING", json!({"type": "PATTERN", "pattern": "^[0-9]{2}[A-Z]{3}$"}), json!("31TCJ"), json!("31tcj")),
        ("STRING", json!({"type": "ENUMERATION", "acceptableValues": ["S2A", "S2B"]}), json!("S2A"), json!("S2D")),
        ("INTEGER", none.clone(), json!(5), json!(5.5)),
        ("INTEGER", none.clone(), json!(-7), json!(3_000_000_000_i64)),
        ("INTEGER", json!({"type": "INTEGER_RANGE", "min": 1, "max": 143}), json!(143), json!(144)),
        ("INTEGER", json!({"type": "INTEGER_RANGE", "min": 1, "max": 143, "maxExcluded": true}), json!(142), json!(143)),
        ("INTEGER", json!({"type": "ENUMERATION", "acceptableValues": [1, 2]}), json!(2), json!(3)),
        ("LONG", none.clone(), json!(3_000_000_000_i64), json!("3")),
        ("LONG", json!({"type": "LONG_RANGE", "min": 0, "max": 10, "maxExcluded": true}), json!(9), json!(10)),
        ("DOUBLE", none.clone(), json!(1.5), json!("1.5")),
        ("DOUBLE", json!({"type": "DOUBLE_RANGE", "min": 0, "max": 100}), json!(100), json!(100.1)),
        ("DOUBLE", json!({"type": "DOUBLE_RANGE", "min": 0, "max": 100, "minExcluded": true}), json!(0.1), json!(0)),
        ("BOOLEAN", none.clone(), json!(true), json!("true")),
        ("DATE_ISO8601", none.clone(), json!("2026-11-23T10:15:31Z"), json!("23/11/2026")),
        ("URL", none.clone(), json!("https://example.org/landing"), json!("not a url")),
        ("JSON", json!({"type": "JSON_SCHEMA", "jsonSchema": {"type": "object", "required": ["a"]}}), json!({"a": 1}), json!({"b": 1})),
        ("STRING_ARRAY", none.clone(), json!(["B02", "B03"]), json!("B02")),
        ("STRING_ARRAY", json!({"type": "PATTERN", "pattern": "^B[0-9]{2}$"}), json!(["B02"]), json!(["X"])),
        ("STRING_ARRAY", json!({"type": "ENUMERATION", "acceptableValues": ["B02", "B03"]}), json!(["B03"]), json!(["B04"])),
        ("INTEGER_ARRAY", none.clone(), json!([1, 2]), json!([1.5])),
        ("INTEGER_ARRAY", json!({"type": "INTEGER_RANGE", "min": 0, "max": 9}), json!([0, 9]), json!([10])),
        ("LONG_ARRAY", none.clone(), json!([3_000_000_000_i64]), json!(["1"])),
        ("DOUBLE_ARRAY", json!({"type": "DOUBLE_RANGE", "min": 0, "max": 1}), json!([0.5]), json!([2])),
        ("DATE_ARRAY", none.clone(), json!(["2026-01-01T00:00:00Z"]), json!(["x"])),
        ("INTEGER_RANGE", none.clone(), json!({"lowerBound": 1, "upperBound": 2}), json!({"lowerBound": "a"})),
        ("LONG_INTERVAL", json!({"type": "LONG_RANGE", "min": 0}), json!({"lowerBound": 0}), json!({"lowerBound": -1})),
        (
            "DOUBLE_INTERVAL",
            json!({"type": "DOUBLE_RANGE", "min": 0, "max": 10}),
            json!({"lowerBound": 1.0, "upperBound": 2.0}),
            json!({"upperBound": 11}),
        ),
        (
            "DATE_INTERVAL",
            none.clone(),
            json!({"lowerBound": "2026-01-01T00:00:00Z", "upperBound": "2026-02-01T00:00:00Z"}),
            json!({"lowerBound": "yesterday"}),
        ),
        ("DOUBLE_RANGE", none, json!({"lowerBound": 1}), json!({"lower": 1})),
    ]
}

fn model_with(ty: &str, restriction: &Value, optional: bool) -> ModelValidator {
    let mut attr = json!({"name": "attr", "type": ty, "optional": optional});
    if !restriction.is_null() {
        attr["restriction"] = restriction.clone();
    }
    let compiled = compile_model("M", &json!({"name": "M", "type": "DATA", "attributes": [attr]}))
        .unwrap_or_else(|e| panic!("{ty} {restriction}: {e}"));
    ModelValidator::new(compiled).unwrap()
}

#[test]
fn every_type_by_every_restriction_in_both_modes() {
    for (ty, restriction, good, bad) in table() {
        let v = model_with(ty, &restriction, false);
        for mode in [Mode::Creation, Mode::Patch] {
            let ok = v.check(&json!({ "attr": good }), mode);
            assert!(ok.is_empty(), "{ty} {restriction} {mode:?}: {good} must pass: {ok:?}");
            let errors = v.check(&json!({ "attr": bad }), mode);
            assert!(!errors.is_empty(), "{ty} {restriction} {mode:?}: {bad} must fail");
            assert!(errors.iter().all(|e| e.starts_with("feature.properties.attr")), "{ty}: errors name the attribute: {errors:?}");
        }
        let missing_creation = v.check(&json!({}), Mode::Creation);
        assert_eq!(missing_creation.len(), 1, "{ty}: a mandatory attribute is required at creation");
        assert!(missing_creation[0].contains("attr"), "{missing_creation:?}");
        assert!(v.check(&json!({}), Mode::Patch).is_empty(), "{ty}: a patch needs no attribute");
        assert!(model_with(ty, &restriction, true).check(&json!({}), Mode::Creation).is_empty(), "{ty}: optional");
    }
}

#[test]
fn names_are_case_sensitive_and_unknown_properties_refused() {
    let v = model_with("STRING", &Value::Null, true);
    let errors = v.check(&json!({"Attr": "x", "other": 1}), Mode::Creation);
    assert_eq!(errors.len(), 1, "one error listing the unexpected properties: {errors:?}");
    assert!(errors[0].contains("Attr") && errors[0].contains("other"), "{errors:?}");
}

#[test]
fn the_brief_example_model_compiles_and_checks_its_example_feature() {
    let model: Value = serde_json::from_str(include_str!("../../tests/fixtures/model-s2-l1c.json")).unwrap();
    let v = ModelValidator::new(compile_model("S2_L1C", &model).unwrap()).unwrap();
    assert_eq!(v.model.entity_type, Some(EntityType::Data));
    let good = json!({"mission": "S2A", "tileId": "31TCJ", "cloudCover": 12.4, "orbit": 65, "acquisitionDate": "2026-11-23T10:15:31Z",
                       "bands": ["B02"], "quality": {"valid": true, "degradedPixels": 0}});
    assert_eq!(v.check(&good, Mode::Creation), Vec::<String>::new());
    let mut bad = good.clone();
    bad["cloudCover"] = json!(120);
    bad["quality"]["degradedPixels"] = json!(120_560_400);
    bad["orbit"] = json!("65");
    let errors = v.check(&bad, Mode::Creation);
    assert_eq!(errors.len(), 3, "every error listed: {errors:?}");
    for path in ["feature.properties.cloudCover", "feature.properties.quality.degradedPixels", "feature.properties.orbit"] {
        assert!(errors.iter().any(|e| e.starts_with(path)), "{path} in {errors:?}");
    }
    let missing = v.check(&json!({"mission": "S2A"}), Mode::Creation);
    assert!(missing.iter().any(|e| e.contains("quality")), "a fragment with a mandatory attribute is required: {missing:?}");
}

#[test]
fn a_json_schema_document_is_a_model_too() {
    let schema = json!({"type": "object", "properties": {"a": {"type": "integer"}}, "required": ["a"], "x-granary-type": "DATASET"});
    let v = ModelValidator::new(compile_model("J", &schema).unwrap()).unwrap();
    assert_eq!(v.model.entity_type, Some(EntityType::Dataset));
    assert!(v.check(&json!({"a": 1}), Mode::Creation).is_empty());
    assert!(!v.check(&json!({}), Mode::Creation).is_empty());
    assert!(v.check(&json!({}), Mode::Patch).is_empty());
}

#[test]
fn bad_models_are_refused_with_every_problem() {
    let def = json!({"name": "M", "type": "THING", "attributes": [
        {"name": "a", "type": "STRING", "restriction": {"type": "INTEGER_RANGE", "min": 0}},
        {"name": "b", "type": "FLOAT"},
        {"type": "STRING"},
        {"name": "c", "type": "INTEGER", "restriction": {"type": "PATTERN", "pattern": "x"}},
        {"name": "d", "type": "STRING", "restriction": {"type": "ENUMERATION", "acceptableValues": []}}
    ]});
    let ModelError(errors) = compile_model("M", &def).unwrap_err();
    assert_eq!(errors.len(), 6, "{errors:?}");
    assert!(compile_model("N", &json!({"name": "M", "attributes": []})).is_err(), "name must match the path");
    assert!(compile_model("M", &json!([1])).is_err());
}

#[test]
fn malformed_vocabulary_models_are_refused_not_read_as_json_schema() {
    let base = json!({"name": "C", "type": "DATA", "attributes": [
        {"name": "n", "type": "INTEGER", "optional": true, "restriction": {"type": "INTEGER_RANGE", "min": 0, "max": 9}}]});
    assert!(compile_model("C", &base).is_ok());
    let broken = |pointer: &str, value: Value| {
        let mut m = base.clone();
        *m.pointer_mut(pointer).unwrap() = value;
        compile_model("C", &m).err().map(|e| e.0.join("; ")).unwrap_or_default()
    };
    assert!(broken("/type", json!(12345)).contains("model.type: must be a string"));
    assert!(broken("/name", json!([])).contains("model.name: must be a string"));
    assert!(broken("/attributes/0/optional", json!("yes")).contains("optional: must be true or false"));
    assert!(broken("/attributes/0/restriction", json!(true)).contains("restriction: must be an object"));
    assert!(broken("/attributes/0/restriction/type", json!(1)).contains("restriction.type: must be a string"));
    assert!(broken("/attributes/0/restriction/min", json!(10)).contains("holds no value"));
    for bad_name in ["", "a.b", "$ref", "../n", "1st"] {
        assert!(broken("/attributes/0/name", json!(bad_name)).contains(".name:"), "{bad_name:?}");
    }
    let huge = json!({"type": "object", "description": "x".repeat(MAX_DEFINITION_BYTES)});
    assert!(compile_model("C", &huge).unwrap_err().0[0].contains("at most"));
}
