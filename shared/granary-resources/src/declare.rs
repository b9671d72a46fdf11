//! The part of a SAM template that declares tables, queues and buckets, as a small JSON document.
//!
//! Shared by the crate and its build script (which includes this file by path): the build script
//! reduces the template this build was made from once, so a Lambda's cold start reads a few kilobytes
//! of JSON instead of parsing 50 kB of YAML (some 3 ms of a 5 ms start). A template given at run time
//! (granary-local `--template`) goes through the same reduction.
//!
//! The document: `{"environment": {"<logical id>": "<variable>"}, "resources": [["<logical id>",
//! "<type>", <properties>], …]}`, in the template's order. `environment` maps each resource an
//! environment variable refers to (`!Ref X`, `!GetAtt X.QueueName`) to that variable. Properties keep
//! CloudFormation's short-form tags in their long form (`!GetAtt X.Arn` is `{"Fn::GetAtt": ["X",
//! "Arn"]}`), since JSON has no tags.

use serde_json::{Map, Value as Json, json};
use serde_yaml::Value as Yaml;

/// The resource types Granary provisions and names.
const DECLARED_TYPES: [&str; 3] = ["AWS::DynamoDB::Table", "AWS::SQS::Queue", "AWS::S3::Bucket"];

/// The properties Granary reads of its resources (the crate's `from_declaration`); the rest
/// (encryption, lifecycle rules, tags…) is the template's business, and leaving it out makes what a
/// cold start parses a quarter smaller. A test checks that keeping everything reads the same.
const READ_PROPERTIES: [&str; 7] = [
    "AttributeDefinitions",
    "KeySchema",
    "GlobalSecondaryIndexes",
    "TimeToLiveSpecification",
    "VisibilityTimeout",
    "DelaySeconds",
    "RedrivePolicy",
];

/// The declaration document of `template` (SAM YAML), or why it is not YAML.
pub fn declare(template: &str) -> Result<Json, String> {
    declare_keeping(template, |property| READ_PROPERTIES.contains(&property))
}

/// The declaration document of `template`, with the resources' properties `keep` says yes to.
pub fn declare_keeping(template: &str, keep: impl Fn(&str) -> bool) -> Result<Json, String> {
    let doc: Yaml = serde_yaml::from_str(template).map_err(|e| e.to_string())?;
    let Some(Yaml::Mapping(resources)) = doc.get("Resources") else {
        // Without resources the document says so; reading it names what is missing.
        return Ok(json!({"environment": {}, "resources": null}));
    };
    let mut environment = Map::new();
    let mut collect = |vars: Option<&Yaml>| {
        if let Some(Yaml::Mapping(m)) = vars {
            for (name, value) in m {
                if let (Some(name), Some(target)) = (name.as_str(), referenced(value)) {
                    environment.insert(target, Json::String(name.to_owned()));
                }
            }
        }
    };
    fn variables(v: Option<&Yaml>) -> Option<&Yaml> {
        v.and_then(|f| f.get("Environment")).and_then(|e| e.get("Variables"))
    }
    collect(variables(doc.get("Globals").and_then(|g| g.get("Function"))));
    let mut declared = Vec::new();
    for (id, resource) in resources {
        collect(variables(resource.get("Properties")));
        let (Some(id), Some(kind)) = (id.as_str(), resource.get("Type").and_then(Yaml::as_str)) else { continue };
        if DECLARED_TYPES.contains(&kind) {
            let mut properties = resource.get("Properties").map_or(Json::Null, to_json);
            if let Json::Object(props) = &mut properties {
                props.retain(|key, _| keep(key));
            }
            declared.push(json!([id, kind, properties]));
        }
    }
    Ok(json!({"environment": environment, "resources": declared}))
}

/// The logical id a value refers to: `!Ref X`, `!GetAtt X.Attr`, `{Ref: X}`, `{Fn::GetAtt: [X, Attr]}`.
fn referenced(v: &Yaml) -> Option<String> {
    match v {
        Yaml::Tagged(t) => {
            let tag = t.tag.to_string();
            match (tag.trim_start_matches('!'), &t.value) {
                ("Ref", Yaml::String(s)) => Some(s.clone()),
                ("GetAtt", Yaml::String(s)) => s.split('.').next().map(str::to_owned),
                ("GetAtt", Yaml::Sequence(seq)) => seq.first().and_then(Yaml::as_str).map(str::to_owned),
                _ => None,
            }
        }
        Yaml::Mapping(m) => {
            if let Some(Yaml::String(s)) = m.get("Ref") {
                return Some(s.clone());
            }
            match m.get("Fn::GetAtt") {
                Some(Yaml::Sequence(seq)) => seq.first().and_then(Yaml::as_str).map(str::to_owned),
                Some(Yaml::String(s)) => s.split('.').next().map(str::to_owned),
                _ => None,
            }
        }
        _ => None,
    }
}

/// A YAML value as JSON: tags in CloudFormation's long form, keys as strings.
fn to_json(v: &Yaml) -> Json {
    match v {
        Yaml::Null => Json::Null,
        Yaml::Bool(b) => Json::Bool(*b),
        Yaml::Number(n) => n
            .as_u64()
            .map(Json::from)
            .or_else(|| n.as_i64().map(Json::from))
            .or_else(|| n.as_f64().and_then(serde_json::Number::from_f64).map(Json::Number))
            .unwrap_or(Json::Null),
        Yaml::String(s) => Json::String(s.clone()),
        Yaml::Sequence(seq) => Json::Array(seq.iter().map(to_json).collect()),
        Yaml::Mapping(m) => Json::Object(
            m.iter()
                .map(|(k, v)| {
                    let key = match k {
                        Yaml::String(s) => s.clone(),
                        other => serde_yaml::to_string(other).unwrap_or_default().trim_end().to_owned(),
                    };
                    (key, to_json(v))
                })
                .collect(),
        ),
        Yaml::Tagged(t) => {
            let tag = t.tag.to_string();
            let tag = tag.trim_start_matches('!');
            match (tag, &t.value) {
                ("Ref", value) => json!({"Ref": to_json(value)}),
                ("GetAtt", Yaml::String(s)) => {
                    let (resource, attribute) = s.split_once('.').unwrap_or((s, ""));
                    json!({"Fn::GetAtt": [resource, attribute]})
                }
                (other, value) => json!({ format!("Fn::{other}"): to_json(value) }),
            }
        }
    }
}
