//! Granary's tables, queues and buckets are declared once, in `template.yaml`. This crate reads them
//! from there for every other side: granary-local provisions the embedded backend from it, the moto
//! bootstrap creates the same resources, and the Lambda functions learn their index definitions from it.
//!
//! Names: a function reads a resource's name from the environment variable the template sets to
//! `!Ref X` or `!GetAtt X.QueueName`; where that variable is unset (one machine, an emulator), the name
//! is the logical id in kebab case without its `Table`/`Queue`/`Bucket` suffix (`FeatureHighQueue` is
//! `feature-high`). Properties (indexes and their key types, TTL, visibility timeout, delay, redrive)
//! come from the template only.

pub mod declare;

use granary_ports::{AttrKind, IndexSpec, KeyAttr, QueueSpec, Resources, TableSpec};
use serde_json::Value;
use std::collections::HashMap;
use std::time::Duration;
use thiserror::Error;

/// The template this build was made from.
pub const TEMPLATE: &str = include_str!("../../../template.yaml");

/// What is wrong with a template.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum ResourceError {
    /// Not YAML.
    #[error("template is not valid YAML: {0}")]
    Yaml(String),
    /// A property has the wrong shape; the path names it.
    #[error("template {path}: {problem}")]
    Property {
        /// Where, as `Resources.X.Properties.Y`.
        path: String,
        /// What is wrong.
        problem: String,
    },
}

fn prop_err(path: &str, problem: &str) -> ResourceError {
    ResourceError::Property { path: path.to_owned(), problem: problem.to_owned() }
}

/// The default name of a logical id: kebab case, without its type suffix.
pub fn default_name(logical_id: &str) -> String {
    let base = ["Table", "Queue", "Bucket"].iter().find_map(|s| logical_id.strip_suffix(s)).filter(|b| !b.is_empty()).unwrap_or(logical_id);
    let mut out = String::new();
    for (i, c) in base.chars().enumerate() {
        if c.is_ascii_uppercase() {
            if i > 0 {
                out.push('-');
            }
            out.push(c.to_ascii_lowercase());
        } else {
            out.push(c);
        }
    }
    out
}

/// The logical id a property of the declaration refers to: `{"Ref": X}` or `{"Fn::GetAtt": [X, Attr]}`.
fn referenced(v: &Value) -> Option<String> {
    if let Some(Value::String(s)) = v.get("Ref") {
        return Some(s.clone());
    }
    v.get("Fn::GetAtt").and_then(|g| g.get(0)).and_then(Value::as_str).map(str::to_owned)
}

fn number(v: Option<&Value>, path: &str, default: u64) -> Result<u64, ResourceError> {
    match v {
        None => Ok(default),
        Some(Value::Number(n)) => n.as_u64().ok_or_else(|| prop_err(path, "must be a whole number")),
        Some(Value::String(s)) => s.parse().map_err(|_| prop_err(path, "must be a whole number")),
        Some(_) => Err(prop_err(path, "must be a whole number")),
    }
}

fn key_schema(schema: Option<&Value>, types: &HashMap<String, AttrKind>, path: &str) -> Result<(KeyAttr, Option<KeyAttr>), ResourceError> {
    let seq = schema.and_then(Value::as_array).ok_or_else(|| prop_err(path, "KeySchema must be a list"))?;
    let mut hash = None;
    let mut range = None;
    for el in seq {
        let name =
            el.get("AttributeName").and_then(Value::as_str).ok_or_else(|| prop_err(path, "KeySchema entry without AttributeName"))?;
        let kind = *types.get(name).ok_or_else(|| prop_err(path, &format!("{name} is not in AttributeDefinitions")))?;
        let attr = KeyAttr { name: name.to_owned(), kind };
        match el.get("KeyType").and_then(Value::as_str) {
            Some("HASH") => hash = Some(attr),
            Some("RANGE") => range = Some(attr),
            _ => return Err(prop_err(path, "KeyType must be HASH or RANGE")),
        }
    }
    Ok((hash.ok_or_else(|| prop_err(path, "no HASH key"))?, range))
}

/// The resources declared in `template` (SAM YAML), named from `env` (a lookup of environment variables).
pub fn from_template(template: &str, env: impl Fn(&str) -> Option<String>) -> Result<Resources, ResourceError> {
    from_declaration(&declare::declare(template).map_err(ResourceError::Yaml)?, env)
}

/// The resources of a declaration document (see [`declare`]), named from `env`.
fn from_declaration(declaration: &Value, env: impl Fn(&str) -> Option<String>) -> Result<Resources, ResourceError> {
    let refs = declaration.get("environment").and_then(Value::as_object);
    let name_of = |logical: &str| {
        refs.and_then(|r| r.get(logical))
            .and_then(Value::as_str)
            .and_then(&env)
            .filter(|v| !v.is_empty())
            .unwrap_or_else(|| default_name(logical))
    };
    let mut out = Resources::default();
    let resources = declaration.get("resources").and_then(Value::as_array).ok_or_else(|| prop_err("Resources", "missing"))?;
    let mut dlq_of: Vec<(usize, String)> = Vec::new();
    let mut queue_names: HashMap<String, String> = HashMap::new();
    for declared in resources {
        let (Some(id), kind, props) = (declared.get(0).and_then(Value::as_str), declared.get(1).and_then(Value::as_str), declared.get(2))
        else {
            continue;
        };
        let path = format!("Resources.{id}.Properties");
        match kind {
            Some("AWS::DynamoDB::Table") => {
                let mut types = HashMap::new();
                for d in props.and_then(|p| p.get("AttributeDefinitions")).and_then(Value::as_array).into_iter().flatten() {
                    let name = d
                        .get("AttributeName")
                        .and_then(Value::as_str)
                        .ok_or_else(|| prop_err(&path, "AttributeDefinitions entry without AttributeName"))?;
                    let kind = match d.get("AttributeType").and_then(Value::as_str) {
                        Some("S") => AttrKind::String,
                        Some("N") => AttrKind::Number,
                        _ => return Err(prop_err(&path, &format!("AttributeType of {name} must be S or N"))),
                    };
                    types.insert(name.to_owned(), kind);
                }
                let (pk, sk) = key_schema(props.and_then(|p| p.get("KeySchema")), &types, &format!("{path}.KeySchema"))?;
                if pk.name != "pk" || sk.as_ref().map(|s| s.name.as_str()) != Some("sk") {
                    return Err(prop_err(&format!("{path}.KeySchema"), "Granary tables are keyed by pk (HASH) and sk (RANGE), both S"));
                }
                let mut indexes = Vec::new();
                for (i, g) in
                    props.and_then(|p| p.get("GlobalSecondaryIndexes")).and_then(Value::as_array).into_iter().flatten().enumerate()
                {
                    let gpath = format!("{path}.GlobalSecondaryIndexes[{i}]");
                    let name = g.get("IndexName").and_then(Value::as_str).ok_or_else(|| prop_err(&gpath, "IndexName missing"))?;
                    let (partition, sort) = key_schema(g.get("KeySchema"), &types, &gpath)?;
                    indexes.push(IndexSpec { name: name.to_owned(), partition, sort });
                }
                let ttl = props
                    .and_then(|p| p.get("TimeToLiveSpecification"))
                    .filter(|t| t.get("Enabled").and_then(Value::as_bool) == Some(true))
                    .and_then(|t| t.get("AttributeName"))
                    .and_then(Value::as_str)
                    .map(str::to_owned);
                out.tables.push(TableSpec { name: name_of(id), indexes, ttl_attr: ttl });
            }
            Some("AWS::SQS::Queue") => {
                let get = |k: &str| props.and_then(|p| p.get(k));
                let mut q = QueueSpec::new(name_of(id));
                q.visibility_timeout = Duration::from_secs(number(get("VisibilityTimeout"), &format!("{path}.VisibilityTimeout"), 30)?);
                q.delay = Duration::from_secs(number(get("DelaySeconds"), &format!("{path}.DelaySeconds"), 0)?);
                if let Some(policy) = get("RedrivePolicy") {
                    let target = policy
                        .get("deadLetterTargetArn")
                        .and_then(referenced)
                        .ok_or_else(|| prop_err(&format!("{path}.RedrivePolicy"), "deadLetterTargetArn must be !GetAtt <Queue>.Arn"))?;
                    q.max_receive_count =
                        u32::try_from(number(policy.get("maxReceiveCount"), &format!("{path}.RedrivePolicy.maxReceiveCount"), 10)?)
                            .unwrap_or(u32::MAX);
                    dlq_of.push((out.queues.len(), target));
                }
                queue_names.insert(id.to_owned(), q.name.clone());
                out.queues.push(q);
            }
            Some("AWS::S3::Bucket") => out.buckets.push(name_of(id)),
            _ => {}
        }
    }
    for (index, target) in dlq_of {
        let name = queue_names.get(&target).ok_or_else(|| {
            prop_err(
                &format!("Resources.{}.Properties.RedrivePolicy", out.queues[index].name),
                &format!("{target} is not a queue of the template"),
            )
        })?;
        out.queues[index].dead_letter_queue = Some(name.clone());
    }
    Ok(out)
}

/// The declaration document of [`TEMPLATE`], made by the build script.
const DECLARATION: &str = include_str!(concat!(env!("OUT_DIR"), "/declaration.json"));

/// The resources of the template this build was made from, named from the process environment.
pub fn deployed() -> Result<Resources, ResourceError> {
    deployed_with(|var| std::env::var(var).ok())
}

/// The resources of the template this build was made from, named from `env`: [`from_template`] over
/// [`TEMPLATE`], from the declaration the build script made of it (no YAML to parse at a cold start).
pub fn deployed_with(env: impl Fn(&str) -> Option<String>) -> Result<Resources, ResourceError> {
    let declaration: Value = serde_json::from_str(DECLARATION).map_err(|e| ResourceError::Yaml(e.to_string()))?;
    from_declaration(&declaration, env)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_names_are_kebab_case_without_suffix() {
        assert_eq!(default_name("FeatureHighQueue"), "feature-high");
        assert_eq!(default_name("FeaturesTable"), "features");
        assert_eq!(default_name("FeatureDeadLetterQueue"), "feature-dead-letter");
        assert_eq!(default_name("Queue"), "queue");
    }

    #[test]
    fn the_template_declares_what_granary_uses() {
        let r = from_template(TEMPLATE, |_| None).unwrap();
        let high = r.queue("feature-high").expect("feature-high queue");
        assert_eq!(high.dead_letter_queue.as_deref(), Some("feature-dead-letter"));
        assert!(high.max_receive_count > 0);
        let requests = r.table("requests").expect("requests table");
        let outbox = requests.indexes.iter().find(|i| i.name == "outbox").expect("outbox index");
        assert_eq!(outbox.sort.as_ref().map(|s| s.kind), Some(AttrKind::Number));
    }

    #[test]
    fn names_come_from_the_variables_the_template_sets() {
        let r = from_template(TEMPLATE, |var| (var == "GRANARY_FEATURES_TABLE").then(|| "granary-FeaturesTable-X1".to_owned())).unwrap();
        assert!(r.table("granary-FeaturesTable-X1").is_some());
        assert!(r.table("features").is_none());
    }

    #[test]
    fn the_build_time_declaration_gives_what_the_template_gives() {
        let env = |var: &str| (var == "GRANARY_FEATURES_TABLE").then(|| "granary-FeaturesTable-X1".to_owned());
        let deployed = deployed_with(env).unwrap();
        assert_eq!(deployed, from_template(TEMPLATE, env).unwrap());
        assert!(deployed.table("granary-FeaturesTable-X1").is_some());
        assert!(deployed.queues.len() >= 10 && deployed.tables.len() >= 3, "{deployed:?}");
    }

    #[test]
    fn the_properties_left_out_of_the_declaration_are_not_read() {
        let env = |var: &str| (var == "GRANARY_ORDERS_TABLE").then(|| "granary-OrdersTable-X2".to_owned());
        let everything = declare::declare_keeping(TEMPLATE, |_| true).unwrap();
        assert_eq!(from_declaration(&everything, env).unwrap(), from_template(TEMPLATE, env).unwrap());
        assert!(everything.to_string().len() > declare::declare(TEMPLATE).unwrap().to_string().len(), "something is left out");
    }

    #[test]
    fn a_wrong_property_is_named() {
        let bad = TEMPLATE.replacen("VisibilityTimeout: 120", "VisibilityTimeout: soon", 1);
        match from_template(&bad, |_| None) {
            Err(ResourceError::Property { path, .. }) => assert!(path.ends_with(".VisibilityTimeout"), "{path}"),
            other => panic!("{other:?}"),
        }
    }
}
