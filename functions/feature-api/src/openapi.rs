//! feature-api's operations in the OpenAPI document (see [`granary_lambda::openapi`]), with the JSON
//! Schemas of its own body types.

use crate::answers::{
    DatasetPage, FeatureAnswer, LocationList, ModelAnswer, NotificationSettings, ProductAnswer, ProductPage, RecipientList,
    RequestPageAnswer, SessionAnswer, SessionList, SubmissionAnswer,
};
use granary_domain::FeatureCreationCollection;
use granary_domain::request::{FeatureDeletionCollection, FeatureNotificationCollection, FeatureUpdateCollection};
use granary_lambda::openapi::{ANYONE, Operation, QueryParam, schema};
use granary_stores::requests::RequestRecord;
use schemars::JsonSchema;
use serde_json::Value;

/// A data model definition: either REGARDS's vocabulary `{name, type: DATA|DATASET|COLLECTION,
/// attributes: [{name, type, optional, restriction}], fragments: [{name, attributes}]}` or a JSON
/// Schema document (`{"type": "object", …}`, with `x-granary-type` for the entity type).
#[derive(JsonSchema)]
#[allow(dead_code)] // Only its schema is used.
struct ModelDefinition(Value);

const SUBMISSION_PROBLEMS: &[u16] = &[400, 403, 413];

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
        who: "producers and admins; other users for features of a dataset they may see",
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

/// The OpenAPI document of feature-api's routes alone (granary-local serves every function's).
pub fn document() -> Value {
    granary_lambda::openapi::document(&[OPERATIONS])
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
