//! The bodies feature-api answers with, typed so that the OpenAPI document is derived from them.

use granary_stores::requests::RequestRecord;
use schemars::JsonSchema;
use serde::Serialize;
use serde_json::{Map, Value};

/// A request a submission granted: it is on its priority's queue.
#[derive(Debug, Clone, Serialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct GrantedRequest {
    /// The request id, to follow with `GET /features/requests/{requestId}`.
    pub request_id: String,
    /// What the entry named: the providerId of a creation, the URN of a change or notification.
    pub id: Option<String>,
}

/// An entry a submission denied, with every error.
#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct DeniedEntry {
    /// Its position in the submitted list.
    pub index: usize,
    /// What the entry named, when it could be read.
    pub id: Option<String>,
    /// Every error, each naming its path.
    pub errors: Vec<String>,
}

/// The answer to a submission (REGARDS's RequestInfo): 202 when at least one entry was granted.
#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct SubmissionAnswer {
    /// Granted entries.
    pub granted: Vec<GrantedRequest>,
    /// Denied entries.
    pub denied: Vec<DeniedEntry>,
}

/// One feature version.
#[derive(Debug, Clone, Serialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct FeatureAnswer {
    /// Its URN.
    pub urn: String,
    /// Whether it is the latest version of its providerId.
    pub last: bool,
    /// The GeoJSON feature.
    pub feature: Value,
    /// What was disseminated of it, per recipient (REGARDS's FeatureDisseminationInfo).
    pub dissemination_info: Vec<granary_stores::dissemination::DisseminationInfo>,
}

/// A data model as stored.
#[derive(Debug, Clone, Serialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ModelAnswer {
    /// Its name.
    pub name: String,
    /// How many times it was defined.
    pub revision: i64,
    /// The entity type it is for, when it says.
    #[serde(rename = "type")]
    pub entity_type: Option<String>,
    /// The definition as given (`GET` only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub definition: Option<Value>,
    /// The JSON Schema creations are checked against.
    pub schema: Value,
    /// Who defined it last (`GET` only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub updated_by: Option<String>,
}

/// One session's counters.
#[derive(Debug, Clone, Serialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SessionAnswer {
    /// The session owner.
    pub session_owner: String,
    /// The session.
    pub session: String,
    /// REGARDS's counters by name (`referencingRequests`, `runningUpdateRequests`, …), and per
    /// recipient `<label>.pending` (delivered, acknowledgement awaited) and `<label>.done`.
    pub counters: Map<String, Value>,
}

/// The sessions of an owner.
#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct SessionList {
    /// The sessions, by name.
    pub content: Vec<SessionAnswer>,
}

/// A link of a paged body.
#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct Link {
    /// `next`.
    pub rel: String,
    /// The path and query of the linked page.
    pub href: String,
}

/// The page metadata of a paged body.
#[derive(Debug, Clone, Serialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PageMetadata {
    /// The page size asked for.
    pub size: usize,
    /// How many elements this page holds.
    pub number_of_elements: usize,
}

/// A page of requests, in REGARDS's paged shape.
#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct RequestPageAnswer {
    /// The requests, oldest first.
    pub content: Vec<RequestRecord>,
    /// Page metadata.
    pub metadata: PageMetadata,
    /// `next` when more may follow.
    pub links: Vec<Link>,
}

/// The storage locations in force: those of the deployment's configuration, replaced or completed by
/// those admins defined.
#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct LocationList {
    /// Locations by name (REGARDS's `pluginBusinessId`, what `metadata.storages[].pluginBusinessId` names).
    pub locations: granary_domain::storage::Locations,
}

/// The recipients, and whether features are notified automatically.
#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct RecipientList {
    /// Whether created, updated and deleted features are notified automatically.
    pub active: bool,
    /// Recipients by label (secrets are never shown).
    pub recipients: std::collections::BTreeMap<String, granary_domain::dissemination::Recipient>,
}

/// The automatic-notification switch.
#[derive(Debug, Clone, Serialize, serde::Deserialize, JsonSchema)]
pub struct NotificationSettings {
    /// Whether created, updated and deleted features are notified automatically (REGARDS's "active
    /// notification"; on by default).
    pub active: bool,
}

/// A dataset as users find it.
#[derive(Debug, Clone, Serialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct DatasetAnswer {
    /// The dataset's URN (its latest version).
    pub urn: String,
    /// Its providerId, which products name in their `tags`.
    pub provider_id: String,
    /// `properties.label`, else the providerId.
    pub label: String,
    /// Who may see it (`public`: everyone).
    pub access_groups: Vec<String>,
    /// Its properties.
    pub properties: Value,
    /// Its files (RAWDATA ones go with any order of its products).
    pub files: Vec<granary_domain::catalog::ProductFile>,
}

/// The datasets a caller may see, in REGARDS's paged shape (one page).
#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct DatasetPage {
    /// The datasets.
    pub content: Vec<DatasetAnswer>,
    /// Page metadata.
    pub metadata: PageMetadata,
    /// Always empty: every visible dataset is on the one page.
    pub links: Vec<Link>,
}

/// A product as users find it: its latest version, with its files as an order sees them.
#[derive(Debug, Clone, Serialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ProductAnswer {
    /// The product's URN.
    pub urn: String,
    /// Its providerId.
    pub provider_id: String,
    /// DATA or DATASET.
    pub entity_type: String,
    /// Its data model.
    pub model: String,
    /// The datasets (and other tags) it names.
    pub tags: Vec<String>,
    /// Its GeoJSON geometry.
    pub geometry: Value,
    /// Its properties.
    pub properties: Value,
    /// Its files: type, size, checksum, whether online, whether only referenced.
    pub files: Vec<granary_domain::catalog::ProductFile>,
    /// Whether it is the latest version (on `GET /products/{urn}`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last: Option<bool>,
}

/// A page of products, in REGARDS's paged shape.
#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct ProductPage {
    /// The products, in the catalog's order.
    pub content: Vec<ProductAnswer>,
    /// Page metadata.
    pub metadata: PageMetadata,
    /// `next` when more may follow.
    pub links: Vec<Link>,
}
