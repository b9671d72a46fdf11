//! Data models: REGARDS's attribute vocabulary (or a JSON Schema document) compiled to a JSON Schema
//! that checks a feature's `properties`, once per model, for creation (mandatory attributes required)
//! and for patches (nothing required).
//!
//! The REGARDS form, as `PUT /models/{name}` takes it:
//!
//! ```json
//! {"name": "S2_L1C", "type": "DATA", "description": "…",
//!  "attributes": [{"name": "cloudCover", "type": "DOUBLE", "optional": false,
//!                  "restriction": {"type": "DOUBLE_RANGE", "min": 0, "max": 100, "maxExcluded": false}}],
//!  "fragments": [{"name": "quality", "attributes": [{"name": "valid", "type": "BOOLEAN"}]}]}
//! ```
//!
//! Types: STRING, INTEGER (32-bit), LONG, DOUBLE, BOOLEAN, DATE_ISO8601, URL, JSON; STRING_ARRAY,
//! INTEGER_ARRAY, LONG_ARRAY, DOUBLE_ARRAY, DATE_ARRAY; INTEGER_RANGE, LONG_RANGE, DOUBLE_RANGE,
//! DATE_RANGE and the same with `_INTERVAL`, each an object `{"lowerBound", "upperBound"}`.
//! Restrictions: PATTERN (`pattern`), ENUMERATION (`acceptableValues`), INTEGER_RANGE, LONG_RANGE,
//! DOUBLE_RANGE (`min`, `max`, `minExcluded`, `maxExcluded`, inclusive by default), JSON_SCHEMA
//! (`jsonSchema`). On arrays and ranges a restriction applies to each value. Attribute names are
//! case-sensitive and a property the model does not define is an error.
//!
//! The JSON Schema form: any other JSON object is taken as the schema of `properties` itself, with
//! an optional `"x-granary-type": "DATA"`.

use crate::EntityType;
use serde_json::{Map, Value, json};
use thiserror::Error;

/// Why a model definition is refused; every problem is listed with its path.
#[derive(Debug, Error, PartialEq, Eq)]
#[error("invalid data model: {}", .0.join("; "))]
pub struct ModelError(pub Vec<String>);

/// A model, compiled.
#[derive(Debug, Clone, PartialEq)]
pub struct CompiledModel {
    /// Name.
    pub name: String,
    /// The entity type its features have, if the model says.
    pub entity_type: Option<EntityType>,
    /// Schema of `properties` at creation.
    pub creation_schema: Value,
    /// Schema of `properties` in a patch.
    pub patch_schema: Value,
}

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
];

fn scalar_schema(base: &str) -> Value {
    match base {
        "STRING" => json!({"type": "string"}),
        "INTEGER" => json!({"type": "integer", "minimum": i32::MIN, "maximum": i32::MAX}),
        "LONG" => json!({"type": "integer"}),
        "DOUBLE" => json!({"type": "number"}),
        "BOOLEAN" => json!({"type": "boolean"}),
        "DATE_ISO8601" | "DATE" => json!({"type": "string", "format": "date-time"}),
        "URL" => json!({"type": "string", "format": "uri"}),
        _ => json!({}),
    }
}

/// The restriction as schema keywords for one value of base type `base`.
fn restriction_schema(base: &str, r: &Value, path: &str, errors: &mut Vec<String>) -> Map<String, Value> {
    let mut out = Map::new();
    let kind = match r.get("type") {
        None | Some(Value::Null) => "NO_RESTRICTION",
        Some(Value::String(k)) => k.as_str(),
        Some(_) => {
            errors.push(format!("{path}.restriction.type: must be a string"));
            return out;
        }
    };
    match kind {
        "NO_RESTRICTION" => {}
        "PATTERN" => match r.get("pattern").and_then(Value::as_str) {
            Some(p) if base == "STRING" => {
                out.insert("pattern".into(), Value::from(p));
            }
            Some(_) => errors.push(format!("{path}.restriction: PATTERN applies to STRING attributes, not {base}")),
            None => errors.push(format!("{path}.restriction.pattern: required")),
        },
        "ENUMERATION" => match r.get("acceptableValues").and_then(Value::as_array) {
            Some(values) if !values.is_empty() => {
                out.insert("enum".into(), Value::Array(values.clone()));
            }
            _ => errors.push(format!("{path}.restriction.acceptableValues: a non-empty list is required")),
        },
        "INTEGER_RANGE" | "LONG_RANGE" | "DOUBLE_RANGE" => {
            let fits = match kind {
                "DOUBLE_RANGE" => base == "DOUBLE",
                _ => base == "INTEGER" || base == "LONG",
            };
            if !fits {
                errors.push(format!("{path}.restriction: {kind} does not apply to {base} attributes"));
            }
            for (bound, excluded, inclusive_kw, exclusive_kw) in
                [("min", "minExcluded", "minimum", "exclusiveMinimum"), ("max", "maxExcluded", "maximum", "exclusiveMaximum")]
            {
                match r.get(bound) {
                    None | Some(Value::Null) => {}
                    Some(v) if v.is_number() => {
                        let kw = if r.get(excluded).and_then(Value::as_bool).unwrap_or(false) { exclusive_kw } else { inclusive_kw };
                        out.insert(kw.into(), v.clone());
                    }
                    Some(_) => errors.push(format!("{path}.restriction.{bound}: must be a number")),
                }
            }
            // An empty range would refuse every value: a mistake, said now rather than at each feature.
            if let (Some(min), Some(max)) = (r.get("min").and_then(Value::as_f64), r.get("max").and_then(Value::as_f64)) {
                let excluded = |k: &str| r.get(k).and_then(Value::as_bool).unwrap_or(false);
                if min > max || (min == max && (excluded("minExcluded") || excluded("maxExcluded"))) {
                    errors.push(format!("{path}.restriction: the range from {min} to {max} holds no value"));
                }
            }
        }
        "JSON_SCHEMA" => match r.get("jsonSchema") {
            Some(s) if s.is_object() || s.is_boolean() => {
                out.insert("allOf".into(), json!([s]));
            }
            _ => errors.push(format!("{path}.restriction.jsonSchema: a JSON Schema object is required")),
        },
        other => errors.push(format!("{path}.restriction.type: unknown restriction {other:?}")),
    }
    out
}

/// Whether `name` may name an attribute or a fragment: 1 to 64 letters, digits, `_` or `-`, the
/// first a letter or `_` (no `.` or `$`, which would read as a path or a JSON Schema keyword).
fn is_attribute_name(name: &str) -> bool {
    name.len() <= 64
        && name.chars().next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
}

fn attribute_schema(attr: &Value, path: &str, errors: &mut Vec<String>) -> Option<(String, Value, bool)> {
    let Some(name) = attr.get("name").and_then(Value::as_str).filter(|n| !n.is_empty()) else {
        errors.push(format!("{path}.name: required (a string)"));
        return None;
    };
    if !is_attribute_name(name) {
        let shown: String = name.chars().take(64).collect();
        errors.push(format!("{path}.name: {shown:?} must be 1 to 64 letters, digits, '_' or '-', the first a letter or '_'"));
        return None;
    }
    let path = format!("{path}({name})");
    let Some(ty) = attr.get("type").and_then(Value::as_str) else {
        errors.push(format!("{path}.type: required"));
        return None;
    };
    if !TYPES.contains(&ty) {
        errors.push(format!("{path}.type: unknown type {ty:?}"));
        return None;
    }
    let optional = match attr.get("optional") {
        None | Some(Value::Null) => false,
        Some(Value::Bool(b)) => *b,
        Some(_) => {
            errors.push(format!("{path}.optional: must be true or false"));
            false
        }
    };
    let (base, shape) = match ty.rsplit_once('_') {
        Some((b, "ARRAY")) => (b, "ARRAY"),
        Some((b, "RANGE" | "INTERVAL")) => (b, "RANGE"),
        _ => (ty, "SCALAR"),
    };
    let base = if base == "DATE" { "DATE_ISO8601" } else { base };
    let mut value = match scalar_schema(base) {
        Value::Object(m) => m,
        _ => Map::new(),
    };
    match attr.get("restriction") {
        None | Some(Value::Null) => {}
        Some(r @ Value::Object(_)) => value.extend(restriction_schema(base, r, &path, errors)),
        Some(_) => errors.push(format!("{path}.restriction: must be an object with a type")),
    }
    let schema = match shape {
        "ARRAY" => json!({"type": "array", "items": value}),
        "RANGE" => json!({
            "type": "object",
            "properties": {"lowerBound": value, "upperBound": value},
            "additionalProperties": false
        }),
        _ => Value::Object(value),
    };
    Some((name.to_owned(), schema, optional))
}

fn object_schema(attrs: &[Value], fragments: &[Value], path: &str, required_mode: bool, errors: &mut Vec<String>) -> Value {
    let mut properties = Map::new();
    let mut required = Vec::new();
    for (i, a) in attrs.iter().enumerate() {
        if let Some((name, schema, optional)) = attribute_schema(a, &format!("{path}attributes[{i}]"), errors) {
            if properties.insert(name.clone(), schema).is_some() {
                errors.push(format!("{path}attributes[{i}].name: {name:?} is defined twice"));
            }
            if !optional && required_mode {
                required.push(Value::from(name));
            }
        }
    }
    for (i, f) in fragments.iter().enumerate() {
        let fpath = format!("{path}fragments[{i}]");
        let Some(name) = f.get("name").and_then(Value::as_str).filter(|n| !n.is_empty()) else {
            errors.push(format!("{fpath}.name: required"));
            continue;
        };
        if !is_attribute_name(name) {
            errors.push(format!("{fpath}.name: {name:?} must be 1 to 64 letters, digits, '_' or '-', the first a letter or '_'"));
            continue;
        }
        let inner: Vec<Value> = f.get("attributes").and_then(Value::as_array).cloned().unwrap_or_default();
        let schema = object_schema(&inner, &[], &format!("{fpath}."), required_mode, errors);
        // A fragment is required when it holds a mandatory attribute.
        if required_mode && schema.get("required").and_then(Value::as_array).is_some_and(|r| !r.is_empty()) {
            required.push(Value::from(name));
        }
        if properties.insert(name.to_owned(), schema).is_some() {
            errors.push(format!("{fpath}.name: {name:?} is defined twice"));
        }
    }
    let mut out = json!({"type": "object", "properties": properties, "additionalProperties": false});
    if !required.is_empty() {
        out["required"] = Value::Array(required);
    }
    out
}

/// The largest model definition accepted, in bytes of JSON.
pub const MAX_DEFINITION_BYTES: usize = 64 * 1024;

/// Compiles a model definition named `name`, in REGARDS's vocabulary or as a JSON Schema.
pub fn compile_model(name: &str, definition: &Value) -> Result<CompiledModel, ModelError> {
    let Some(def) = definition.as_object() else {
        return Err(ModelError(vec!["model: must be a JSON object".into()]));
    };
    let mut errors = Vec::new();
    // A model is one item of the features table (at most 400 KB on DynamoDB), with its compiled forms.
    let size = definition.to_string().len();
    if size > MAX_DEFINITION_BYTES {
        return Err(ModelError(vec![format!("model: {size} bytes of JSON; at most {MAX_DEFINITION_BYTES}")]));
    }
    let regards_form = def.contains_key("attributes") || def.contains_key("fragments");
    if regards_form {
        for key in ["type", "name"] {
            if def.get(key).is_some_and(|v| !v.is_string()) {
                errors.push(format!("model.{key}: must be a string"));
            }
        }
        if def.get("fragments").is_some_and(|f| !f.is_array()) {
            errors.push("model.fragments: must be a list".into());
        }
    }
    let type_field = if regards_form { def.get("type") } else { def.get("x-granary-type") }.and_then(Value::as_str);
    let entity_type = match type_field {
        Some(t) => match t.parse::<EntityType>() {
            Ok(e) => Some(e),
            Err(e) => {
                errors.push(format!("model.type: {e}"));
                None
            }
        },
        _ => None,
    };
    if let Some(n) = def.get("name").and_then(Value::as_str)
        && n != name
    {
        errors.push(format!("model.name: {n:?} differs from the name in the path, {name:?}"));
    }
    let (creation_schema, patch_schema) = if regards_form {
        let attrs = def.get("attributes").and_then(Value::as_array).cloned().unwrap_or_default();
        let fragments = def.get("fragments").and_then(Value::as_array).cloned().unwrap_or_default();
        if def.get("attributes").is_some_and(|a| !a.is_array()) {
            errors.push("model.attributes: must be a list".into());
        }
        let creation = object_schema(&attrs, &fragments, "model.", true, &mut errors);
        let patch = object_schema(&attrs, &fragments, "model.", false, &mut Vec::new());
        (creation, patch)
    } else {
        let mut schema = definition.clone();
        if let Some(m) = schema.as_object_mut() {
            m.remove("x-granary-type");
            m.remove("name");
        }
        let mut patch = schema.clone();
        if let Some(m) = patch.as_object_mut() {
            m.remove("required");
        }
        (schema, patch)
    };
    for (mode, schema) in [("creation", &creation_schema), ("patch", &patch_schema)] {
        if let Err(e) = jsonschema::options().should_validate_formats(true).build(schema) {
            errors.push(format!("model: the {mode} schema does not compile: {e}"));
        }
    }
    if errors.is_empty() {
        Ok(CompiledModel { name: name.to_owned(), entity_type, creation_schema, patch_schema })
    } else {
        Err(ModelError(errors))
    }
}

/// A model ready to check properties: both schemas compiled.
pub struct ModelValidator {
    /// The model.
    pub model: CompiledModel,
    creation: jsonschema::Validator,
    patch: jsonschema::Validator,
}

impl std::fmt::Debug for ModelValidator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ModelValidator").field("model", &self.model.name).finish_non_exhaustive()
    }
}

/// Which checks apply.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// A creation: mandatory attributes are required.
    Creation,
    /// A patch: any subset of the attributes.
    Patch,
}

impl ModelValidator {
    /// Compiles both schemas of `model`.
    pub fn new(model: CompiledModel) -> Result<Self, ModelError> {
        let build = |s: &Value| jsonschema::options().should_validate_formats(true).build(s).map_err(|e| ModelError(vec![e.to_string()]));
        Ok(Self { creation: build(&model.creation_schema)?, patch: build(&model.patch_schema)?, model })
    }

    /// Every error of `properties`, each starting with its path (`feature.properties.cloudCover: …`).
    pub fn check(&self, properties: &Value, mode: Mode) -> Vec<String> {
        let validator = match mode {
            Mode::Creation => &self.creation,
            Mode::Patch => &self.patch,
        };
        let empty = Value::Object(Map::new());
        let instance = if properties.is_null() { &empty } else { properties };
        validator
            .iter_errors(instance)
            .map(|e| {
                let pointer = e.instance_path().as_str().to_owned();
                let dotted = pointer.split('/').filter(|s| !s.is_empty()).collect::<Vec<_>>().join(".");
                let path = if dotted.is_empty() { "feature.properties".to_owned() } else { format!("feature.properties.{dotted}") };
                format!("{path}: {e}")
            })
            .collect()
    }
}

#[cfg(test)]
mod tests;
