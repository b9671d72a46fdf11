//! What must stay true across crates: every configuration variable the code reads is documented in the
//! README and every documented one is read; every crate says what it is for; every function is in the
//! README, the template and the workspace; every local route is declared in the template.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_owned()
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let p = entry.unwrap().path();
        let name = p.file_name().unwrap().to_string_lossy().into_owned();
        if p.is_dir() && name != "target" && !name.starts_with('.') {
            rust_files(&p, out);
        } else if name.ends_with(".rs") {
            out.push(p);
        }
    }
}

/// Every `GRANARY_*` name quoted in `text`.
fn granary_vars(text: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let mut rest = text;
    while let Some(i) = rest.find("GRANARY_") {
        let tail = &rest[i..];
        let end = tail.find(|c: char| !(c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_')).unwrap_or(tail.len());
        let name = &tail[..end];
        if name.len() > "GRANARY_".len() && !name.ends_with('_') {
            out.insert(name.to_owned());
        }
        rest = &tail[end..];
    }
    out
}

fn readme() -> String {
    std::fs::read_to_string(root().join("README.md")).unwrap()
}

/// The README section starting at `heading`, up to the next heading of the same level.
fn section(text: &str, heading: &str) -> String {
    let start = text.find(heading).unwrap_or_else(|| panic!("README has no section {heading:?}"));
    let body = &text[start + heading.len()..];
    let end = body.find("\n## ").unwrap_or(body.len());
    body[..end].to_owned()
}

#[test]
fn configuration_table_matches_the_code() {
    let mut files = Vec::new();
    for dir in ["shared", "functions", "infra"] {
        rust_files(&root().join(dir), &mut files);
    }
    let mut in_code = BTreeSet::new();
    for f in files.iter().filter(|f| !f.components().any(|c| c.as_os_str() == "tests")) {
        in_code.extend(granary_vars(&std::fs::read_to_string(f).unwrap()));
    }
    // Variables only tests set for their child processes are not configuration.
    in_code.retain(|v| !v.starts_with("GRANARY_RACE_"));
    let documented = granary_vars(&section(&readme(), "## Configuration"));
    let undocumented: Vec<_> = in_code.difference(&documented).collect();
    let stale: Vec<_> = documented.difference(&in_code).collect();
    assert!(undocumented.is_empty(), "read by the code but missing from the README's configuration table: {undocumented:?}");
    assert!(stale.is_empty(), "in the README's configuration table but read by no code: {stale:?}");
}

#[test]
fn every_crate_says_what_it_is_for() {
    let manifest = std::fs::read_to_string(root().join("Cargo.toml")).unwrap();
    let members: Vec<&str> = manifest
        .lines()
        .skip_while(|l| !l.starts_with("members"))
        .skip(1)
        .take_while(|l| !l.starts_with(']'))
        .map(|l| l.trim().trim_matches(|c| c == '"' || c == ','))
        .collect();
    assert!(members.len() >= 8, "{members:?}");
    for m in members {
        let dir = root().join(m);
        let toml = std::fs::read_to_string(dir.join("Cargo.toml")).unwrap();
        for entry in ["src/lib.rs", "src/main.rs"] {
            let p = dir.join(entry);
            if let Ok(text) = std::fs::read_to_string(&p) {
                assert!(text.trim_start().starts_with("//!"), "{} has no crate-level documentation", p.display());
            }
        }
        assert!(toml.contains("[lints]") && toml.contains("workspace = true"), "{m} does not take the workspace lints");
    }
}

#[test]
fn every_function_is_in_the_readme_the_template_and_the_workspace() {
    let template = std::fs::read_to_string(root().join("template.yaml")).unwrap();
    let table = section(&readme(), "## Functions");
    for entry in std::fs::read_dir(root().join("functions")).unwrap() {
        let name = entry.unwrap().file_name().to_string_lossy().into_owned();
        assert!(table.contains(&format!("`{name}`")), "function {name} is missing from the README's function table");
        assert!(template.contains(&format!("Binary: {name}")), "function {name} has no BuildProperties.Binary in template.yaml");
        let toml = std::fs::read_to_string(root().join("functions").join(&name).join("Cargo.toml")).unwrap();
        assert!(toml.contains(&format!("name = \"{name}\"")) && toml.contains("[[bin]]"), "function {name} has no [[bin]] of its name");
    }
}

#[test]
fn every_local_route_is_declared_in_the_template() {
    let template = std::fs::read_to_string(root().join("template.yaml")).unwrap();
    for route in granary_local::apigw::ROUTES {
        let pair = template
            .split("Type: HttpApi")
            .skip(1)
            .any(|ev| ev.contains(&format!("Method: {}\n", route.method)) && ev.contains(&format!("Path: {}\n", route.template)));
        assert!(pair, "route {} {} of granary-local is not an HttpApi event in template.yaml", route.method, route.template);
    }
}

#[test]
fn anonymous_routes_agree_in_granary_local_the_template_and_the_openapi_document() {
    let template = std::fs::read_to_string(root().join("template.yaml")).unwrap();
    let doc = granary_local::apigw::openapi_document();
    for route in granary_local::apigw::ROUTES {
        let event = template
            .split("Type: HttpApi")
            .skip(1)
            .find(|ev| ev.contains(&format!("Method: {}\n", route.method)) && ev.contains(&format!("Path: {}\n", route.template)))
            .unwrap_or_else(|| panic!("no HttpApi event for {} {}", route.method, route.template));
        // An event's text runs on to the next event (indented 8) or resource: only its own lines count.
        let unguarded = event
            .lines()
            .skip(1)
            .take_while(|l| l.trim().is_empty() || l.len() - l.trim_start().len() > 8)
            .any(|l| l.trim() == "Authorizer: NONE");
        assert_eq!(unguarded, !route.authorized, "{} {}: template says Authorizer NONE = {unguarded}", route.method, route.template);
        let op = &doc["paths"][route.template][route.method.to_ascii_lowercase()];
        assert_eq!(op["security"] == serde_json::json!([]), !route.authorized, "{} {}: OpenAPI security", route.method, route.template);
    }
}

#[test]
fn the_openapi_document_covers_every_route_and_only_those() {
    let doc = granary_local::apigw::openapi_document();
    let paths = doc["paths"].as_object().unwrap();
    for route in granary_local::apigw::ROUTES {
        let op = &paths.get(route.template).unwrap_or(&serde_json::Value::Null)[route.method.to_ascii_lowercase()];
        assert!(op.is_object(), "route {} {} of granary-local is missing from the OpenAPI document", route.method, route.template);
        assert!(op["responses"].as_object().is_some_and(|r| !r.is_empty()), "{} {} has no responses", route.method, route.template);
    }
    for (path, ops) in paths {
        for method in ops.as_object().unwrap().keys() {
            let served = granary_local::apigw::ROUTES.iter().any(|r| r.template == path && r.method.eq_ignore_ascii_case(method));
            assert!(served, "the OpenAPI document describes {method} {path}, which granary-local does not serve");
        }
    }
    // Each operation is described once: a second description of it silently replaced the first.
    let tables = [feature_api::openapi::OPERATIONS, basket_api::openapi::OPERATIONS, order_api::openapi::OPERATIONS];
    let mut seen = std::collections::BTreeSet::new();
    for op in tables.iter().flat_map(|t| t.iter()) {
        assert!(seen.insert((op.method, op.path)), "{} {} is described twice in the operation tables", op.method, op.path);
    }
    // Every schema reference resolves, in the whole document as served.
    let text = doc.to_string();
    let schemas = doc["components"]["schemas"].as_object().unwrap();
    for part in text.split("\"$ref\":\"#/components/schemas/").skip(1) {
        let name = &part[..part.find('"').unwrap()];
        assert!(schemas.contains_key(name), "dangling $ref to {name}");
    }
    let creation = &schemas["FeatureCreationCollection"]["properties"];
    assert!(creation["features"].is_object() && creation["metadata"].is_object(), "{creation}");
    assert!(schemas["BasketSelectionRequest"]["properties"]["entityIdsToInclude"].is_object());
    assert_eq!(
        doc["paths"]["/features"]["post"]["responses"]["400"]["content"]["application/problem+json"]["schema"]["$ref"],
        "#/components/schemas/Problem"
    );
    // The copy in docs/ is the generated one.
    let committed: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(root().join("docs/openapi.json")).unwrap()).unwrap();
    assert!(committed == doc, "docs/openapi.json is stale: cargo run -q -p granary-local -- openapi > docs/openapi.json");
}

#[test]
fn configuration_defaults_are_the_template_names() {
    // With no variable set, a function's default names must be those the local side provisions.
    let config = granary_lambda::Config::from_env();
    let resources = granary_resources::from_template(granary_resources::TEMPLATE, |_| None).unwrap();
    for table in [&config.features_table, &config.requests_table] {
        assert!(resources.table(table).is_some(), "table {table} (a Config default) is not declared in template.yaml");
    }
    for queue in config.feature_queues.iter().chain([&config.response_queue, &config.notification_queue]) {
        assert!(resources.queue(queue).is_some(), "queue {queue} (a Config default) is not declared in template.yaml");
    }
    // And every variable the template sets for a resource is one the README documents.
    let template: serde_yaml::Value = serde_yaml::from_str(granary_resources::TEMPLATE).unwrap();
    let vars = template["Globals"]["Function"]["Environment"]["Variables"].as_mapping().unwrap();
    let configuration = section(&readme(), "## Configuration");
    let documented = granary_vars(&configuration);
    for (k, _) in vars {
        let k = k.as_str().unwrap();
        let listed = documented.contains(k) || configuration.contains(&format!("| `{k}` |"));
        assert!(listed, "template variable {k} is not in the README's configuration table");
    }
}

/// The template, parsed (tags kept).
fn template() -> serde_yaml::Value {
    serde_yaml::from_str(granary_resources::TEMPLATE).unwrap()
}

/// Visits every value of `v` with its path.
fn walk<'a>(v: &'a serde_yaml::Value, path: &str, visit: &mut dyn FnMut(&str, &'a serde_yaml::Value)) {
    visit(path, v);
    match v {
        serde_yaml::Value::Mapping(m) => {
            for (k, child) in m {
                walk(child, &format!("{path}.{}", k.as_str().unwrap_or("?")), visit);
            }
        }
        serde_yaml::Value::Sequence(s) => {
            for (i, child) in s.iter().enumerate() {
                walk(child, &format!("{path}[{i}]"), visit);
            }
        }
        serde_yaml::Value::Tagged(t) => walk(&t.value, path, visit),
        _ => {}
    }
}

/// The attributes `!GetAtt` may read, by resource type (those the template uses are enough).
fn attributes(kind: &str) -> &'static [&'static str] {
    match kind {
        "AWS::SQS::Queue" => &["Arn", "QueueName", "QueueUrl"],
        "AWS::DynamoDB::Table" => &["Arn", "StreamArn"],
        "AWS::S3::Bucket" => &["Arn", "DomainName", "RegionalDomainName"],
        "AWS::Serverless::Function" => &["Arn"],
        "AWS::Events::Rule" => &["Arn"],
        "AWS::Logs::LogGroup" => &["Arn"],
        _ => &[],
    }
}

#[test]
fn every_reference_in_the_template_names_something_declared() {
    // cfn-lint and sam validate do not look inside SAM function properties (policies, events,
    // Globals): a wrong name there fails only at deploy time.
    let t = template();
    let names = |section: &str| -> BTreeSet<String> {
        t[section].as_mapping().map(|m| m.keys().filter_map(|k| k.as_str().map(str::to_owned)).collect()).unwrap_or_default()
    };
    let (parameters, resources, conditions) = (names("Parameters"), names("Resources"), names("Conditions"));
    let pseudo = ["AWS::AccountId", "AWS::NoValue", "AWS::Partition", "AWS::Region", "AWS::StackId", "AWS::StackName", "AWS::URLSuffix"];
    let kind = |r: &str| t["Resources"][r]["Type"].as_str().unwrap_or_default().to_owned();
    let mut problems = Vec::new();
    let check_ref = |at: &str, name: &str, problems: &mut Vec<String>| {
        if !(parameters.contains(name) || resources.contains(name) || pseudo.contains(&name)) {
            problems.push(format!("{at}: Ref {name} names no parameter or resource"));
        }
    };
    let check_getatt = |at: &str, target: &str, problems: &mut Vec<String>| {
        let Some((resource, attribute)) = target.split_once('.') else {
            return problems.push(format!("{at}: GetAtt {target} is not Resource.Attribute"));
        };
        if !resources.contains(resource) {
            return problems.push(format!("{at}: GetAtt {target} names no resource"));
        }
        if !attributes(&kind(resource)).contains(&attribute) {
            problems.push(format!("{at}: GetAtt {target}: {} has no attribute {attribute} known here", kind(resource)));
        }
    };
    walk(&t, "", &mut |at, v| {
        let serde_yaml::Value::Tagged(tagged) = v else { return };
        let tag = tagged.tag.to_string();
        match (tag.as_str(), &tagged.value) {
            ("!Ref", serde_yaml::Value::String(name)) => check_ref(at, name, &mut problems),
            ("!GetAtt", serde_yaml::Value::String(target)) => check_getatt(at, target, &mut problems),
            ("!Sub", value) => {
                let (text, local) = match value {
                    serde_yaml::Value::String(s) => (s.clone(), BTreeSet::new()),
                    // `!Sub [text, {Name: value}]`: the names the map defines are its own.
                    serde_yaml::Value::Sequence(s) => (
                        s[0].as_str().unwrap_or_default().to_owned(),
                        s.get(1)
                            .and_then(|m| m.as_mapping())
                            .map(|m| m.keys().filter_map(|k| k.as_str().map(str::to_owned)).collect())
                            .unwrap_or_default(),
                    ),
                    _ => (String::new(), BTreeSet::new()),
                };
                for part in text.split("${").skip(1) {
                    let name = &part[..part.find('}').unwrap_or(part.len())];
                    if name.starts_with('!') || local.contains(name) {
                        continue;
                    }
                    if name.contains('.') && !name.starts_with("AWS::") {
                        check_getatt(at, name, &mut problems);
                    } else {
                        check_ref(at, name, &mut problems);
                    }
                }
            }
            ("!If", serde_yaml::Value::Sequence(s)) => {
                let condition = s[0].as_str().unwrap_or_default();
                if !conditions.contains(condition) {
                    problems.push(format!("{at}: If {condition} names no condition"));
                }
            }
            _ => {}
        }
    });
    assert!(problems.is_empty(), "template.yaml:\n{}", problems.join("\n"));
}

#[test]
fn every_function_of_the_template_is_a_binary_of_the_workspace_with_sound_triggers() {
    let t = template();
    let global_timeout = t["Globals"]["Function"]["Timeout"].as_u64().unwrap();
    let resources = t["Resources"].as_mapping().unwrap();
    let mut binaries = BTreeSet::new();
    let mut problems = Vec::new();
    for (id, r) in resources {
        let id = id.as_str().unwrap();
        if r["Type"] != "AWS::Serverless::Function" {
            continue;
        }
        let binary = r["Metadata"]["BuildProperties"]["Binary"].as_str().unwrap_or_else(|| panic!("{id} has no BuildProperties.Binary"));
        assert_eq!(r["Metadata"]["BuildMethod"], "rust-cargolambda", "{id}");
        assert!(binaries.insert(binary.to_owned()), "{id}: binary {binary} is used twice");
        let manifest = root().join("functions").join(binary).join("Cargo.toml");
        let toml = std::fs::read_to_string(&manifest).unwrap_or_else(|_| panic!("{id}: binary {binary} has no crate functions/{binary}"));
        assert!(toml.contains("[[bin]]") && toml.contains(&format!("name = \"{binary}\"")), "{id}: {binary} is not a [[bin]]");
        // Built from its own crate's directory, cargo resolves that crate's features alone: a function
        // links only the SDK clients it asks for (from the workspace root, every member's are unified).
        assert_eq!(r["Properties"]["CodeUri"].as_str(), Some(format!("functions/{binary}").as_str()), "{id}: CodeUri");
        let timeout = r["Properties"]["Timeout"].as_u64().unwrap_or(global_timeout);
        for (name, event) in r["Properties"]["Events"].as_mapping().into_iter().flatten() {
            let at = format!("{id}.Events.{}", name.as_str().unwrap());
            let p = &event["Properties"];
            if event["Type"] != "SQS" {
                continue;
            }
            // Lambda's limits for a standard queue: 10 a batch without a batching window, 10,000 with.
            let batch = p["BatchSize"].as_u64().unwrap_or(10);
            let window = p["MaximumBatchingWindowInSeconds"].as_u64().unwrap_or(0);
            if batch == 0 || batch > if window > 0 { 10_000 } else { 10 } {
                problems.push(format!("{at}: BatchSize {batch} with a batching window of {window} s"));
            }
            if p["FunctionResponseTypes"].as_sequence().is_none_or(|s| !s.iter().any(|v| v == "ReportBatchItemFailures")) {
                problems.push(format!("{at}: no ReportBatchItemFailures"));
            }
            let concurrency = p["ScalingConfig"]["MaximumConcurrency"].as_u64();
            if concurrency.is_some_and(|c| !(2..=1000).contains(&c)) {
                problems.push(format!("{at}: MaximumConcurrency {concurrency:?} is not between 2 and 1000"));
            }
            // AWS's advice: a queue's visibility timeout at least six times its function's timeout.
            let queue = match &p["Queue"] {
                serde_yaml::Value::Tagged(g) => g.value.as_str().unwrap_or_default().trim_end_matches(".Arn").to_owned(),
                other => panic!("{at}: Queue is not a !GetAtt: {other:?}"),
            };
            let visibility = t["Resources"][queue.as_str()]["Properties"]["VisibilityTimeout"].as_u64().unwrap_or(30);
            if visibility < 6 * timeout {
                problems.push(format!("{at}: queue {queue} has a visibility timeout of {visibility} s, under 6 x {timeout} s"));
            }
            if t["Resources"][queue.as_str()]["Properties"]["RedrivePolicy"].is_null() {
                problems.push(format!("{at}: queue {queue} has no dead-letter queue"));
            }
        }
    }
    assert!(problems.is_empty(), "template.yaml:\n{}", problems.join("\n"));
    let crates: BTreeSet<String> =
        std::fs::read_dir(root().join("functions")).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
    assert_eq!(binaries, crates, "functions of the template and of the workspace");
}

#[test]
fn every_resource_name_a_function_reads_is_set_by_the_template_to_that_resource() {
    // A name left to its default would be right on one machine and wrong in the cloud, where the
    // stack names resources itself.
    let config = std::fs::read_to_string(root().join("shared/granary-lambda/src/config.rs")).unwrap();
    let t = template();
    let vars = &t["Globals"]["Function"]["Environment"]["Variables"];
    let resources = t["Resources"].as_mapping().unwrap();
    let mut checked = 0;
    for part in config.split("env_or(\"").skip(1) {
        let var = &part[..part.find('"').unwrap()];
        let default = part[var.len()..].split('"').nth(2).unwrap_or_default();
        let Some((id, _)) = resources.iter().find(|(id, r)| {
            let id = id.as_str().unwrap();
            granary_resources::default_name(id) == default
                && ["AWS::SQS::Queue", "AWS::DynamoDB::Table", "AWS::S3::Bucket"].contains(&r["Type"].as_str().unwrap_or_default())
        }) else {
            continue;
        };
        let id = id.as_str().unwrap();
        let set = match &vars[var] {
            serde_yaml::Value::Tagged(g) => g.value.as_str().unwrap_or_default().to_owned(),
            other => panic!("{var} (default {default}, resource {id}) is not set from the template: {other:?}"),
        };
        assert!(set == id || set == format!("{id}.QueueName"), "{var} is set to {set}, not to {id}");
        checked += 1;
    }
    assert!(checked >= 15, "only {checked} resource names found in config.rs");
}

#[test]
fn every_checkov_check_skipped_is_listed_in_the_template_with_its_reason() {
    let skips = template()["Metadata"]["CheckovSkips"].as_sequence().cloned().unwrap_or_default();
    assert!(!skips.is_empty(), "template.yaml lists no Metadata.CheckovSkips (.ci/run reads them there)");
    let mut ids = BTreeSet::new();
    for skip in &skips {
        let id = skip["Id"].as_str().unwrap_or_default();
        assert!(id.starts_with("CKV_") && ids.insert(id.to_owned()), "skip {id:?} is not a check id, or is listed twice");
        assert!(skip["Reason"].as_str().is_some_and(|r| r.len() >= 40), "skip {id} gives no reason");
    }
}

/// A value of the template's Globals as the stack gives it with default parameters (names as the
/// local side gives them).
fn deployed_value(t: &serde_yaml::Value, v: &serde_yaml::Value) -> Option<String> {
    match v {
        serde_yaml::Value::String(s) => Some(s.clone()),
        serde_yaml::Value::Number(n) => Some(n.to_string()),
        serde_yaml::Value::Tagged(g) => {
            let tag = g.tag.to_string();
            match (tag.as_str(), &g.value) {
                ("!Ref", serde_yaml::Value::String(name)) if !t["Parameters"][name.as_str()].is_null() => {
                    deployed_value(t, &t["Parameters"][name.as_str()]["Default"])
                }
                ("!Ref", serde_yaml::Value::String(name)) => Some(granary_resources::default_name(name)),
                ("!GetAtt", serde_yaml::Value::String(target)) => Some(granary_resources::default_name(target.split('.').next().unwrap())),
                ("!Join", serde_yaml::Value::Sequence(parts)) => {
                    // A list parameter left to its default: an empty string.
                    let list = deployed_value(t, &parts[1])?;
                    Some(list.split(',').filter(|s| !s.is_empty()).collect::<Vec<_>>().join(parts[0].as_str()?))
                }
                _ => None,
            }
        }
        _ => None,
    }
}

/// What the template grants a function, as (kind, logical id or bucket name, access), with the list
/// parameters `lists` (a policy under a condition counts when the list its condition tests is not empty).
fn template_grants(
    t: &serde_yaml::Value,
    function: &str,
    lists: &std::collections::BTreeMap<&str, Vec<&str>>,
) -> BTreeSet<(granary_ports::access::Kind, String, granary_ports::access::Access)> {
    use granary_ports::access::{Access, Kind};
    // The resources a policy names: `!Ref X`, `!GetAtt X.Arn`, `!Sub "${X.Arn}/..."`, or bucket ARNs
    // built from a list parameter (`!Split [",", !Sub [text, {Name: !Join [sep, !Ref List]}]]`).
    let targets = |v: &serde_yaml::Value| -> Vec<String> {
        let serde_yaml::Value::Tagged(g) = v else { panic!("{function}: a policy names {v:?}, not a !Ref, !GetAtt, !Sub or !Split") };
        if g.tag != "!Split" {
            let s = g.value.as_str().unwrap_or_default().trim_start_matches("${");
            return vec![s.split(['.', '}']).next().unwrap().to_owned()];
        }
        let serde_yaml::Value::Tagged(sub) = &g.value[1] else { panic!("{function}: a !Split of no !Sub") };
        let mut text = sub.value[0].as_str().unwrap().to_owned();
        for (name, join) in sub.value[1].as_mapping().unwrap() {
            let serde_yaml::Value::Tagged(join) = join else { panic!("{function}: a !Sub variable that is no !Join") };
            let serde_yaml::Value::Tagged(list) = &join.value[1] else { panic!("{function}: a !Join of no !Ref") };
            let values = lists.get(list.value.as_str().unwrap()).cloned().unwrap_or_default();
            text = text.replace(&format!("${{{}}}", name.as_str().unwrap()), &values.join(join.value[0].as_str().unwrap()));
        }
        text.split(',').map(|arn| arn.trim_start_matches("arn:aws:s3:::").trim_end_matches("/*").to_owned()).collect()
    };
    let condition_holds = |name: &str| -> bool {
        // Each condition tests that one list parameter is not empty.
        let text = serde_yaml::to_string(&t["Conditions"][name]).unwrap();
        lists.iter().any(|(list, values)| text.contains(&format!("!Ref {list}")) && !values.is_empty())
    };
    let mut out = BTreeSet::new();
    for policy in t["Resources"][function]["Properties"]["Policies"].as_sequence().into_iter().flatten() {
        let policy = match policy {
            serde_yaml::Value::Tagged(g) => {
                assert_eq!(g.tag.to_string(), "!If", "{function}: a policy tagged {}", g.tag);
                if !condition_holds(g.value[0].as_str().unwrap()) {
                    continue;
                }
                &g.value[1]
            }
            plain => plain,
        };
        let (kind, body) = policy.as_mapping().and_then(|m| m.iter().next()).unwrap();
        let kind = kind.as_str().unwrap();
        let mut add = |k: Kind, ids: Vec<String>, accesses: &[Access]| {
            for id in ids {
                for a in accesses {
                    out.insert((k, id.clone(), *a));
                }
            }
        };
        match kind {
            "DynamoDBCrudPolicy" => add(Kind::Table, targets(&body["TableName"]), &[Access::Read, Access::Write]),
            "DynamoDBReadPolicy" => add(Kind::Table, targets(&body["TableName"]), &[Access::Read]),
            "SQSSendMessagePolicy" => add(Kind::Queue, targets(&body["QueueName"]), &[Access::Send]),
            "S3CrudPolicy" => add(Kind::Bucket, targets(&body["BucketName"]), &[Access::Read, Access::Write, Access::Delete]),
            "S3ReadPolicy" => add(Kind::Bucket, targets(&body["BucketName"]), &[Access::Read]),
            "S3WritePolicy" => add(Kind::Bucket, targets(&body["BucketName"]), &[Access::Write]),
            "Statement" => {
                for statement in body.as_sequence().unwrap() {
                    for action in statement["Action"].as_sequence().unwrap() {
                        let access = match action.as_str().unwrap() {
                            // ListBucket only makes a missing key a 404: part of reading.
                            "s3:GetObject" | "s3:ListBucket" => Access::Read,
                            "s3:PutObject" => Access::Write,
                            "s3:DeleteObject" => Access::Delete,
                            "s3:RestoreObject" => Access::Restore,
                            // A processing's functions are no port: the operator names them.
                            "lambda:InvokeFunction" => continue,
                            other => panic!("{function}: action {other} has no port access here"),
                        };
                        let resources: Vec<String> = match &statement["Resource"] {
                            serde_yaml::Value::Sequence(s) => s.iter().flat_map(&targets).collect(),
                            one => targets(one),
                        };
                        add(Kind::Bucket, resources, &[access]);
                    }
                }
            }
            other => panic!("{function}: policy {other} is not one this test reads"),
        }
    }
    out
}

#[tokio::test]
async fn every_function_is_granted_exactly_what_its_stores_use() {
    // With the template's defaults, then with every list parameter set (the conditional policies on).
    grants_agree(&std::collections::BTreeMap::new()).await;
    let lists = std::collections::BTreeMap::from([
        ("SourceBuckets", vec!["producer-drop", "partner-archive"]),
        ("LocationBuckets", vec!["mission-archive"]),
        ("ProcessFunctionArns", vec!["arn:aws:lambda:eu-west-1:123456789012:function:thumbs"]),
    ]);
    grants_agree(&lists).await;
}

async fn grants_agree(lists: &std::collections::BTreeMap<&str, Vec<&str>>) {
    use granary_ports::access::{Kind, granted};
    let t = template();
    let vars = t["Globals"]["Function"]["Environment"]["Variables"].as_mapping().unwrap();
    let mut env: std::collections::BTreeMap<String, String> =
        vars.iter().filter_map(|(k, v)| Some((k.as_str()?.to_owned(), deployed_value(&t, v)?))).collect();
    for (var, list) in [("GRANARY_STORAGE_SOURCE_BUCKETS", "SourceBuckets"), ("GRANARY_LOCATION_BUCKETS", "LocationBuckets")] {
        if let Some(values) = lists.get(list) {
            env.insert(var.to_owned(), values.join(","));
        }
    }
    let config = granary_lambda::Config::from_lookup(|name| env.get(name).cloned());
    let site = granary_testkit::Site::new(config.clone()).await;
    let (b, c) = (site.backend.clone(), config.clone());
    // Each handler guards its backend with its grants as it is built.
    drop(feature_api::FeatureApi::new(b.clone(), c.clone()));
    drop(feature_ingest::FeatureIngest::new(b.clone(), c.clone()));
    drop(outbox_relay::OutboxRelay::new(b.clone(), &c).unwrap());
    drop(delayed_release::DelayedRelease::new(b.clone(), &c));
    drop(storage_worker::StorageWorker::new(b.clone(), c.clone()).unwrap());
    drop(storage_ready::StorageReady::new(b.clone(), c.clone()));
    drop(dissemination::Dissemination::new(b.clone(), c.clone()).unwrap());
    drop(acknowledgement::Acknowledgement::new(b.clone(), c.clone()));
    drop(basket_api::BasketApi::new(b.clone(), c.clone()));
    drop(order_api::OrderApi::new(b.clone(), c.clone()));
    drop(order_create::OrderCreate::new(b.clone(), c.clone()));
    drop(suborder_dispatch::SuborderDispatch::new(b.clone(), c.clone()));
    drop(order_maintenance::OrderMaintenance::new(b, c));

    let resources = t["Resources"].as_mapping().unwrap();
    let logical_id = |kind: Kind, name: &str| -> String {
        // A bucket a list parameter names is no resource of the stack: its name stands.
        if kind == Kind::Bucket && lists.values().flatten().any(|b| *b == name) {
            return name.to_owned();
        }
        let wanted = match kind {
            Kind::Table => "AWS::DynamoDB::Table",
            Kind::Queue => "AWS::SQS::Queue",
            Kind::Bucket => "AWS::S3::Bucket",
        };
        resources
            .iter()
            .map(|(id, r)| (id.as_str().unwrap(), r))
            .find(|(id, r)| r["Type"] == wanted && granary_resources::default_name(id) == name)
            .unwrap_or_else(|| panic!("{kind:?} {name} is not a resource of the template"))
            .0
            .to_owned()
    };
    let mut problems = Vec::new();
    for (id, r) in resources {
        if r["Type"] != "AWS::Serverless::Function" {
            continue;
        }
        let id = id.as_str().unwrap();
        let binary = r["Metadata"]["BuildProperties"]["Binary"].as_str().unwrap();
        let grants = granted(binary).unwrap_or_else(|| panic!("{binary} guarded no backend with its grants"));
        let needed: BTreeSet<_> = grants.iter().map(|g| (g.kind, logical_id(g.kind, &g.name), g.access)).collect();
        let given = template_grants(&t, id, lists);
        // The S3 client is linked into the functions that touch buckets, and only those.
        let manifest = std::fs::read_to_string(root().join("functions").join(binary).join("Cargo.toml")).unwrap();
        let links_s3 = manifest.lines().any(|l| l.starts_with("granary-lambda") && l.contains("\"s3\""));
        if links_s3 != grants.iter().any(|g| g.kind == Kind::Bucket) {
            problems.push(format!("{binary}: granary-lambda's s3 feature is {links_s3} but its grants say otherwise"));
        }
        for missing in needed.difference(&given) {
            problems.push(format!("{id} uses {:?} of {} {:?}, which the template does not grant", missing.2, missing.1, missing.0));
        }
        for extra in given.difference(&needed) {
            problems.push(format!("{id} is granted {:?} of {} {:?}, which its stores do not use", extra.2, extra.1, extra.0));
        }
    }
    assert!(problems.is_empty(), "template.yaml and the functions' grants disagree:\n{}", problems.join("\n"));
}
