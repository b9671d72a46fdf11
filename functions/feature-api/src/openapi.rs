//! The OpenAPI 3.1 document of the HTTP API, built from [`OPERATIONS`] and the JSON Schemas derived
//! from the handlers' own body types, so that it changes when they do. A workspace test fails when a
//! route of granary-local (or of the template) is missing from it.

use crate::answers::{
    DatasetPage, FeatureAnswer, LocationList, ModelAnswer, NotificationSettings, ProductAnswer, ProductPage, RecipientList,
    RequestPageAnswer, SessionAnswer, SessionList, SubmissionAnswer,
};
use granary_domain::FeatureCreationCollection;
use granary_domain::request::{FeatureDeletionCollection, FeatureNotificationCollection, FeatureUpdateCollection};
use granary_lambda::http::Problem;
use granary_stores::requests::RequestRecord;
use schemars::generate::SchemaSettings;
use schemars::{JsonSchema, Schema, SchemaGenerator};
use serde_json::{Map, Value, json};

/// A data model definition: either REGARDS's vocabulary `{name, type: DATA|DATASET|COLLECTION,
/// attributes: [{name, type, optional, restriction}], fragments: [{name, attributes}]}` or a JSON
/// Schema document (`{"type": "object", …}`, with `x-granary-type` for the entity type).
#[derive(JsonSchema)]
#[allow(dead_code)] // Only its schema is used.
struct ModelDefinition(Value);

/// Derives the schema of a body type.
type SchemaOf = fn(&mut SchemaGenerator) -> Schema;

fn schema<T: JsonSchema>(g: &mut SchemaGenerator) -> Schema {
    g.subschema_for::<T>()
}

/// A query parameter of an operation.
#[derive(Debug, Clone, Copy)]
pub struct QueryParam {
    /// Its name.
    pub name: &'static str,
    /// What it does.
    pub description: &'static str,
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

const SUBMISSION_PROBLEMS: &[u16] = &[400, 403, 413];

/// Who may call the anonymous catalog routes; their operations carry no security requirement.
const ANYONE: &str = "anyone, without a token (public datasets only)";

const SEARCH_QUERY: &[QueryParam] = &[
    QueryParam { name: "from", description: "ISO-8601: the date property (GRANARY_SEARCH_DATE_PROPERTY) at or after this instant" },
    QueryParam { name: "to", description: "ISO-8601: the date property at or before this instant" },
    QueryParam { name: "bbox", description: "minLon,minLat,maxLon,maxLat: the geometry intersects this box" },
    QueryParam {
        name: "property.<name>",
        description: "a property (dotted path under properties) equal to this value; repeatable with other names",
    },
    QueryParam { name: "size", description: "products per page, 1 to 500 (default 20)" },
    QueryParam { name: "page", description: "the cursor of the previous page's next link" },
];

/// Every operation feature-api serves.
pub const OPERATIONS: &[Operation] = &[
    Operation {
        method: "POST",
        path: "/features",
        summary: "Submit creations (a FeatureCreationCollection); each granted feature becomes a CREATION request on its priority's queue",
        who: "producer, admin",
        query: &[],
        body: Some(schema::<FeatureCreationCollection>),
        ok: (202, schema::<SubmissionAnswer>),
        problems: SUBMISSION_PROBLEMS,
    },
    Operation {
        method: "PATCH",
        path: "/features",
        summary: "Submit patches (a FeatureUpdateCollection, each feature naming its urn)",
        who: "producer, admin",
        query: &[],
        body: Some(schema::<FeatureUpdateCollection>),
        ok: (202, schema::<SubmissionAnswer>),
        problems: SUBMISSION_PROBLEMS,
    },
    Operation {
        method: "DELETE",
        path: "/features",
        summary: "Submit deletions (a FeatureDeletionCollection)",
        who: "producer, admin",
        query: &[],
        body: Some(schema::<FeatureDeletionCollection>),
        ok: (202, schema::<SubmissionAnswer>),
        problems: SUBMISSION_PROBLEMS,
    },
    Operation {
        method: "POST",
        path: "/features/notifications",
        summary: "Submit notifications of feature versions to recipients (action NOTIFIED)",
        who: "producer, admin",
        query: &[],
        body: Some(schema::<FeatureNotificationCollection>),
        ok: (202, schema::<SubmissionAnswer>),
        problems: SUBMISSION_PROBLEMS,
    },
    Operation {
        method: "GET",
        path: "/features/requests",
        summary: "List requests by state or by session, oldest first, page by page",
        who: "admin",
        query: &[
            QueryParam { name: "state", description: "GRANTED, DENIED, SUCCESS or ERROR (this or a session is required)" },
            QueryParam { name: "sessionOwner", description: "with session: the requests of one session" },
            QueryParam { name: "session", description: "with sessionOwner" },
            QueryParam { name: "type", description: "CREATION, PATCH, DELETION or NOTIFICATION" },
            QueryParam { name: "from", description: "registered at or after (ISO-8601)" },
            QueryParam { name: "to", description: "registered at or before (ISO-8601)" },
            QueryParam { name: "size", description: "1 to 1000, default 20" },
            QueryParam { name: "page", description: "the cursor of the previous page's next link" },
        ],
        body: None,
        ok: (200, schema::<RequestPageAnswer>),
        problems: &[400, 403],
    },
    Operation {
        method: "GET",
        path: "/features/requests/{requestId}",
        summary: "One request: type, state, step, providerId, URN, errors, session",
        who: "the request's owner, admin (404 for anyone else)",
        query: &[],
        body: None,
        ok: (200, schema::<RequestRecord>),
        problems: &[404],
    },
    Operation {
        method: "POST",
        path: "/features/requests/{requestId}/retry",
        summary: "Run a request in ERROR again: parked due now (GRANTED, LOCAL_DELAYED), its message goes back to its queue",
        who: "admin",
        query: &[],
        body: None,
        ok: (202, schema::<RequestRecord>),
        problems: &[403, 404, 409],
    },
    Operation {
        method: "DELETE",
        path: "/features/requests/{requestId}",
        summary: "Forget a request in ERROR (204)",
        who: "admin",
        query: &[],
        body: None,
        ok: (204, schema::<()>),
        problems: &[403, 404, 409],
    },
    Operation {
        method: "GET",
        path: "/features/sessions/{sessionOwner}",
        summary: "The session counters of every session of an owner",
        who: "producer, admin",
        query: &[],
        body: None,
        ok: (200, schema::<SessionList>),
        problems: &[403],
    },
    Operation {
        method: "GET",
        path: "/features/sessions/{sessionOwner}/{session}",
        summary: "The counters of one session (REGARDS's FeatureSessionProperty names)",
        who: "producer, admin",
        query: &[],
        body: None,
        ok: (200, schema::<SessionAnswer>),
        problems: &[403, 404],
    },
    Operation {
        method: "GET",
        path: "/features/{urn}",
        summary: "One feature version; last tells whether it is the latest",
        who: "any authenticated user",
        query: &[],
        body: None,
        ok: (200, schema::<FeatureAnswer>),
        problems: &[400, 404],
    },
    Operation {
        method: "PUT",
        path: "/models/{name}",
        summary: "Define or replace a data model (201 when new, 200 when replaced)",
        who: "admin",
        query: &[],
        body: Some(schema::<ModelDefinition>),
        ok: (201, schema::<ModelAnswer>),
        problems: &[400, 403],
    },
    Operation {
        method: "GET",
        path: "/models/{name}",
        summary: "A data model: its definition, compiled JSON Schema and revision",
        who: "any authenticated user",
        query: &[],
        body: None,
        ok: (200, schema::<ModelAnswer>),
        problems: &[404],
    },
    Operation {
        method: "PUT",
        path: "/storage-locations/{name}",
        summary: "Define or replace a storage location (201 when new, 200 when replaced); answers the location",
        who: "admin",
        query: &[],
        body: Some(schema::<granary_domain::storage::StorageLocation>),
        ok: (201, schema::<LocationList>),
        problems: &[400, 403],
    },
    Operation {
        method: "PUT",
        path: "/recipients/{label}",
        summary: "Define or replace a recipient of notifications (201 when new, 200 when replaced); its secret is never shown back",
        who: "admin",
        query: &[],
        body: Some(schema::<granary_domain::dissemination::Recipient>),
        ok: (201, schema::<RecipientList>),
        problems: &[400, 403],
    },
    Operation {
        method: "DELETE",
        path: "/recipients/{label}",
        summary: "Remove a recipient",
        who: "admin",
        query: &[],
        body: None,
        ok: (204, schema::<()>),
        problems: &[403, 404],
    },
    Operation {
        method: "GET",
        path: "/recipients",
        summary: "The recipients and the automatic-notification switch",
        who: "admin",
        query: &[],
        body: None,
        ok: (200, schema::<RecipientList>),
        problems: &[403],
    },
    Operation {
        method: "PUT",
        path: "/notification-settings",
        summary: "Turn the automatic notification of created, updated and deleted features on or off",
        who: "admin",
        query: &[],
        body: Some(schema::<NotificationSettings>),
        ok: (200, schema::<NotificationSettings>),
        problems: &[400, 403],
    },
    Operation {
        method: "GET",
        path: "/storage-locations",
        summary: "The storage locations in force: the deployment's configured ones, replaced or completed by those admins defined",
        who: "any authenticated user",
        query: &[],
        body: None,
        ok: (200, schema::<LocationList>),
        problems: &[],
    },
    Operation {
        method: "GET",
        path: "/datasets",
        summary: "The datasets the caller may see (public ones, those of the caller's access groups; all for admins), each with its files",
        who: "any authenticated user",
        query: &[],
        body: None,
        ok: (200, schema::<DatasetPage>),
        problems: &[],
    },
    Operation {
        method: "GET",
        path: "/datasets/{dataset}/products",
        summary: "Search a dataset's products (latest versions) by time range, bounding box and property equality; 404 for a dataset the caller may not see",
        who: "any authenticated user",
        query: SEARCH_QUERY,
        body: None,
        ok: (200, schema::<ProductPage>),
        problems: &[400, 404],
    },
    Operation {
        method: "GET",
        path: "/products/{urn}",
        summary: "One product version with its files; 404 when none of its datasets is visible to the caller",
        who: "any authenticated user",
        query: &[],
        body: None,
        ok: (200, schema::<ProductAnswer>),
        problems: &[400, 404],
    },
    Operation {
        method: "GET",
        path: "/public/datasets",
        summary: "The public datasets",
        who: ANYONE,
        query: &[],
        body: None,
        ok: (200, schema::<DatasetPage>),
        problems: &[],
    },
    Operation {
        method: "GET",
        path: "/public/datasets/{dataset}/products",
        summary: "Search a public dataset's products",
        who: ANYONE,
        query: SEARCH_QUERY,
        body: None,
        ok: (200, schema::<ProductPage>),
        problems: &[400, 404],
    },
    Operation {
        method: "GET",
        path: "/public/products/{urn}",
        summary: "One product of a public dataset",
        who: ANYONE,
        query: &[],
        body: None,
        ok: (200, schema::<ProductAnswer>),
        problems: &[400, 404],
    },
];

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        201 => "Created",
        202 => "Accepted",
        400 => "Bad Request: every error listed",
        401 => "Unauthorized: no valid bearer token",
        403 => "Forbidden: the caller's groups do not allow it",
        204 => "No Content",
        404 => "Not Found",
        409 => "Conflict: the request is not in ERROR",
        413 => "Content Too Large: over 10 MB",
        503 => "Service Unavailable: retry later",
        _ => "",
    }
}

/// The OpenAPI 3.1 document of the HTTP API.
pub fn document() -> Value {
    let settings = SchemaSettings::draft2020_12().with(|s| s.definitions_path = "/components/schemas".into());
    let mut g = SchemaGenerator::new(settings);
    let problem = g.subschema_for::<Problem>();
    let mut paths = Map::new();
    for op in OPERATIONS {
        let mut parameters: Vec<Value> = op
            .path
            .split('/')
            .filter_map(|seg| seg.strip_prefix('{')?.strip_suffix('}'))
            .map(|name| json!({"name": name, "in": "path", "required": true, "schema": {"type": "string"}}))
            .collect();
        parameters.extend(
            op.query.iter().map(|q| json!({"name": q.name, "in": "query", "description": q.description, "schema": {"type": "string"}})),
        );
        let mut responses = Map::new();
        let ok = match op.ok.0 {
            204 => json!({"description": reason(204)}),
            status => json!({"description": reason(status), "content": {"application/json": {"schema": (op.ok.1)(&mut g)}}}),
        };
        responses.insert(op.ok.0.to_string(), ok);
        let anonymous = op.who == ANYONE;
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
            "description": "Feature management and the catalog over HTTP. Every route but those under /public takes a JWT bearer token (API Gateway's JWT authorizer; granary-local signs its own). Errors are RFC 9457 problem+json listing every error.",
        },
        "security": [{"bearerAuth": []}],
        "paths": paths,
        "components": {
            "securitySchemes": {"bearerAuth": {"type": "http", "scheme": "bearer", "bearerFormat": "JWT"}},
            "schemas": g.take_definitions(true),
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_schema_reference_resolves_and_bodies_carry_their_fields() {
        let doc = document();
        let text = doc.to_string();
        let schemas = doc["components"]["schemas"].as_object().unwrap();
        for part in text.split("\"$ref\":\"#/components/schemas/").skip(1) {
            let name = &part[..part.find('"').unwrap()];
            assert!(schemas.contains_key(name), "dangling $ref to {name}");
        }
        let creation = &schemas["FeatureCreationCollection"]["properties"];
        assert!(creation["features"].is_object() && creation["metadata"].is_object(), "{creation}");
        assert!(schemas["RequestRecord"]["properties"]["step"].is_object());
        assert_eq!(
            doc["paths"]["/features"]["post"]["responses"]["400"]["content"]["application/problem+json"]["schema"]["$ref"],
            "#/components/schemas/Problem"
        );
    }
}
