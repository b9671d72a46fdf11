//! The OpenAPI 3.1 document of the HTTP API, built from every function's operation table and the JSON
//! Schemas derived from the handlers' own body types, so that it changes when they do. A workspace test
//! fails when a route of granary-local (or of the template) is missing from it.

use crate::http::Problem;
use schemars::generate::SchemaSettings;
use schemars::{JsonSchema, Schema, SchemaGenerator};
use serde_json::{Map, Value, json};

/// Derives the schema of a body type.
pub type SchemaOf = fn(&mut SchemaGenerator) -> Schema;

/// The schema of `T`, registered in the document's components.
pub fn schema<T: JsonSchema>(g: &mut SchemaGenerator) -> Schema {
    g.subschema_for::<T>()
}

/// A query parameter of an operation.
#[derive(Debug, Clone, Copy)]
pub struct QueryParam {
    /// Its name.
    pub name: &'static str,
    /// What it does.
    pub description: &'static str,
    /// The values it takes.
    pub kind: QueryKind,
}

/// The values a query parameter takes, as its schema says them.
#[derive(Debug, Clone, Copy)]
pub enum QueryKind {
    /// Any text.
    Text,
    /// A whole number from 1 to this.
    Size(u32),
    /// An ISO-8601 instant with its time zone.
    Instant,
    /// One of these words.
    OneOf(&'static [&'static str]),
}

impl QueryKind {
    fn schema(self) -> Value {
        match self {
            QueryKind::Text => json!({"type": "string"}),
            QueryKind::Size(max) => json!({"type": "integer", "minimum": 1, "maximum": max}),
            QueryKind::Instant => json!({"type": "string", "format": "date-time"}),
            QueryKind::OneOf(words) => json!({"type": "string", "enum": words}),
        }
    }
}

/// The schema of a path parameter, by its name (each name has one meaning across the API).
fn path_schema(name: &str) -> Value {
    match name {
        "datasetSelectionId" => json!({"type": "integer", "minimum": 0}),
        "orderId" => json!({"type": "string", "format": "uuid"}),
        "itemsSelectionDate" => json!({"type": "string", "format": "date-time"}),
        "urn" => json!({"type": "string", "pattern": "^URN:FEATURE:(DATA|DATASET|COLLECTION):[^:]+:[0-9a-fA-F-]{32,36}:V[1-9][0-9]{0,2}$"}),
        "fileId" => json!({"type": "string", "pattern": "^[0-9a-f-]{36}\\.[0-9]+\\.[0-9]+$"}),
        "name" | "label" => json!({"type": "string", "pattern": "^[A-Za-z0-9_-]{1,128}$"}),
        _ => json!({"type": "string", "minLength": 1}),
    }
}

/// One operation of the HTTP API.
#[derive(Debug, Clone, Copy)]
pub struct Operation {
    /// HTTP method.
    pub method: &'static str,
    /// Path template, `{param}` segments as in the template's HttpApi events.
    pub path: &'static str,
    /// What it does.
    pub summary: &'static str,
    /// Who may call it.
    pub who: &'static str,
    /// Query parameters.
    pub query: &'static [QueryParam],
    /// The request body's type.
    pub body: Option<SchemaOf>,
    /// The success status and the answer's type.
    pub ok: (u16, SchemaOf),
    /// The problem+json statuses it may answer besides 401 and 503.
    pub problems: &'static [u16],
}

/// Who may call the anonymous routes; their operations carry no security requirement.
pub const ANYONE: &str = "anyone, without a token (public datasets only)";
/// Who may call the routes an order token opens; their operations carry no bearer requirement either.
pub const ORDER_TOKEN_HOLDER: &str = "anyone holding the order's orderToken (no bearer token)";

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        201 => "Created",
        202 => "Accepted",
        302 => "Found: redirected (Location) to a short-lived signed URL",
        400 => "Bad Request: every error listed",
        401 => "Unauthorized: no valid bearer token",
        403 => "Forbidden: the caller's groups do not allow it",
        204 => "No Content",
        404 => "Not Found",
        409 => "Conflict: not allowed in the current state",
        413 => "Content Too Large: over 10 MB",
        422 => "Unprocessable: it ended in error (the cause is given)",
        503 => "Service Unavailable: retry later",
        _ => "",
    }
}

/// The OpenAPI 3.1 document of the HTTP API.
pub fn document(tables: &[&[Operation]]) -> Value {
    let settings = SchemaSettings::draft2020_12().with(|s| s.definitions_path = "/components/schemas".into());
    let mut g = SchemaGenerator::new(settings);
    let problem = g.subschema_for::<Problem>();
    let mut paths = Map::new();
    for op in tables.iter().flat_map(|t| t.iter()) {
        let mut parameters: Vec<Value> = op
            .path
            .split('/')
            .filter_map(|seg| seg.strip_prefix('{')?.strip_suffix('}'))
            .map(|name| json!({"name": name, "in": "path", "required": true, "schema": path_schema(name)}))
            .collect();
        parameters.extend(
            op.query.iter().map(|q| json!({"name": q.name, "in": "query", "description": q.description, "schema": q.kind.schema()})),
        );
        let mut responses = Map::new();
        let ok = match op.ok.0 {
            // No body: a redirect, nothing to say, or a HEAD.
            status if matches!(status, 204 | 302) || op.method == "HEAD" => json!({"description": reason(status)}),
            status => json!({"description": reason(status), "content": {"application/json": {"schema": (op.ok.1)(&mut g)}}}),
        };
        // A PUT that answers 201 when it creates answers 200 when it replaces.
        if op.method == "PUT" && op.ok.0 == 201 {
            let mut replaced = ok.clone();
            replaced["description"] = json!("OK: replaced");
            responses.insert("200".into(), replaced);
        }
        responses.insert(op.ok.0.to_string(), ok);
        let anonymous = op.who == ANYONE || op.who == ORDER_TOKEN_HOLDER;
        let always: &[u16] = if anonymous { &[503] } else { &[401, 503] };
        for status in op.problems.iter().chain(always) {
            responses.insert(
                status.to_string(),
                json!({"description": reason(*status), "content": {"application/problem+json": {"schema": problem}}}),
            );
        }
        let mut operation = json!({
            "summary": op.summary,
            "description": format!("Who: {}.", op.who),
            "parameters": parameters,
            "responses": responses,
        });
        if anonymous {
            operation["security"] = json!([]);
        }
        if let Some(body) = op.body {
            operation["requestBody"] = json!({"required": true, "content": {"application/json": {"schema": body(&mut g)}}});
        }
        let entry = paths.entry(op.path).or_insert_with(|| json!({}));
        entry[op.method.to_ascii_lowercase()] = operation;
    }
    json!({
        "openapi": "3.1.0",
        "info": {
            "title": "Granary HTTP API",
            "version": env!("CARGO_PKG_VERSION"),
            "description": "Feature management, the catalog, baskets and orders over HTTP. Every route but those under /public takes a JWT bearer token (API Gateway's JWT authorizer; granary-local signs its own). Errors are RFC 9457 problem+json listing every error.",
        },
        "security": [{"bearerAuth": []}],
        "paths": paths,
        "components": {
            "securitySchemes": {"bearerAuth": {"type": "http", "scheme": "bearer", "bearerFormat": "JWT"}},
            "schemas": g.take_definitions(true),
        },
    })
}
