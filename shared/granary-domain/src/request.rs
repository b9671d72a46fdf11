//! Feature requests as REGARDS's producers send them, and the events that answer them.

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// Longest providerId accepted.
pub const MAX_PROVIDER_ID: usize = 100;
/// Longest session owner or session name accepted.
pub const MAX_SESSION: usize = 128;

/// The kind of a feature request (`regards.request.type`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "UPPERCASE")]
pub enum FeatureRequestType {
    /// Create a feature (or its next version).
    Creation,
    /// Patch a feature.
    Patch,
    /// Delete a feature.
    Deletion,
    /// Notify a feature to recipients.
    Notification,
}

impl FeatureRequestType {
    /// The attribute value naming the kind.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Creation => "CREATION",
            Self::Patch => "PATCH",
            Self::Deletion => "DELETION",
            Self::Notification => "NOTIFICATION",
        }
    }

    /// The kind named by an attribute value.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "CREATION" => Some(Self::Creation),
            "PATCH" => Some(Self::Patch),
            "DELETION" => Some(Self::Deletion),
            "NOTIFICATION" => Some(Self::Notification),
            _ => None,
        }
    }
}

/// Processing priority; each has its own queue.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize, PartialOrd, Ord, schemars::JsonSchema)]
#[serde(rename_all = "UPPERCASE")]
pub enum Priority {
    /// Served last.
    Low,
    /// The default.
    #[default]
    Normal,
    /// Served first.
    High,
}

/// State reported by a [`FeatureRequestEvent`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "UPPERCASE")]
pub enum RequestState {
    /// Registered and accepted.
    Granted,
    /// Refused at registration.
    Denied,
    /// Done.
    Success,
    /// Failed during processing.
    Error,
}

impl RequestState {
    /// The name in events.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Granted => "GRANTED",
            Self::Denied => "DENIED",
            Self::Success => "SUCCESS",
            Self::Error => "ERROR",
        }
    }

    /// Whether nothing more happens to a request in this state, so that its record may be purged after
    /// [`FINISHED_REQUEST_RETENTION_DAYS`]. ERROR is not: it waits for an admin's retry or deletion.
    pub fn is_finished(self) -> bool {
        matches!(self, Self::Success | Self::Denied)
    }
}

/// How long the record of a finished request (SUCCESS or DENIED) is kept, in days. It must outlast
/// SQS's longest message retention (14 days): the record is what makes a redelivered message, or a
/// new one reusing the request id, a duplicate. Past it the table's TTL deletes the record.
pub const FINISHED_REQUEST_RETENTION_DAYS: i64 = 30;
const _: () = assert!(FINISHED_REQUEST_RETENTION_DAYS > 14, "a record must outlive every message SQS may still deliver");

/// The TTL value (epoch seconds, as DynamoDB's TTL reads it) of a request finished at `finished_ms`.
pub fn finished_request_purge_at(finished_ms: i64) -> i64 {
    finished_ms.div_euclid(1000) + FINISHED_REQUEST_RETENTION_DAYS * 86_400
}

/// Where a file should be stored (REGARDS's StorageMetadata).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct StorageMetadata {
    /// Storage location name.
    pub plugin_business_id: String,
    /// Sub-path inside the location.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub store_path: Option<String>,
    /// Data types that go there.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub target_types: Vec<String>,
}

/// Session metadata of a creation (REGARDS's FeatureCreationSessionMetadata).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct CreationMetadata {
    /// Who produces the session.
    #[serde(default)]
    pub session_owner: String,
    /// The session.
    #[serde(default)]
    pub session: String,
    /// Storage targets.
    #[serde(default)]
    pub storages: Vec<StorageMetadata>,
    /// Priority.
    #[serde(default)]
    pub priority: Priority,
    /// Recipient acknowledged at once.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub acknowledged_recipient: Option<String>,
    /// Delete the previous version once this one is created.
    #[serde(default, rename = "override")]
    pub override_previous: bool,
    /// Turn a creation carrying an existing URN into a patch.
    #[serde(default)]
    pub update_if_exists: bool,
}

/// FeatureCreationRequestEvent: one feature to create.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct FeatureCreationRequestEvent {
    /// Session metadata.
    pub metadata: CreationMetadata,
    /// The GeoJSON feature.
    pub feature: Value,
}

/// Metadata of a patch (REGARDS's FeatureMetadata).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct UpdateMetadata {
    /// Storage targets for added files.
    #[serde(default)]
    pub storages: Vec<StorageMetadata>,
    /// Priority.
    #[serde(default)]
    pub priority: Priority,
    /// Recipient acknowledged by this patch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub acknowledged_recipient: Option<String>,
}

/// FeatureUpdateRequestEvent: a patch of one feature, named by its URN.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct FeatureUpdateRequestEvent {
    /// Metadata.
    #[serde(default)]
    pub metadata: UpdateMetadata,
    /// The patch: a GeoJSON feature with `urn`.
    pub feature: Value,
}

/// FeatureDeletionRequestEvent: the deletion of one feature version.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct FeatureDeletionRequestEvent {
    /// The URN to delete.
    pub urn: String,
    /// Priority.
    #[serde(default)]
    pub priority: Priority,
}

/// FeatureNotificationRequestEvent: tell recipients about one feature version again (action NOTIFIED).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct FeatureNotificationRequestEvent {
    /// The URN to notify.
    pub urn: String,
    /// Priority (required, as in REGARDS).
    pub priority: Priority,
    /// Only these recipients (labels); every matching recipient when empty.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub recipients: Vec<String>,
}

/// The HTTP notification collection: `POST /features/notifications`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct FeatureNotificationCollection {
    /// URNs to notify.
    pub features_urns: Vec<String>,
    /// Priority.
    #[serde(default)]
    pub priority: Priority,
    /// Only these recipients (labels); every matching recipient when empty.
    #[serde(default)]
    pub recipients: Vec<String>,
}

/// The HTTP update collection (REGARDS's FeatureUpdateCollection).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct FeatureUpdateCollection {
    /// Owner of the requests; the caller when absent.
    #[serde(default)]
    pub request_owner: Option<String>,
    /// Metadata shared by every patch.
    #[serde(default)]
    pub metadata: UpdateMetadata,
    /// The patches.
    pub features: Vec<Value>,
}

/// The HTTP deletion collection (REGARDS's FeatureDeletionCollection).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct FeatureDeletionCollection {
    /// URNs to delete.
    pub features_urns: Vec<String>,
    /// Priority.
    #[serde(default)]
    pub priority: Priority,
}

/// The HTTP creation collection (REGARDS's FeatureCreationCollection).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct FeatureCreationCollection {
    /// Owner of the requests; the caller when absent.
    #[serde(default)]
    pub request_owner: Option<String>,
    /// Metadata shared by every feature.
    pub metadata: CreationMetadata,
    /// The features.
    pub features: Vec<Value>,
}

/// FeatureRequestEvent: the answer to a request, on the response queue.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct FeatureRequestEvent {
    /// Deterministic id: `<requestId>:<state>`, so a receiver can drop redeliveries.
    pub event_id: String,
    /// The request kind.
    #[serde(rename = "type")]
    pub request_type: FeatureRequestType,
    /// The request id.
    pub request_id: String,
    /// The request owner.
    pub request_owner: String,
    /// The providerId, when known.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    /// The URN, when known.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub urn: Option<String>,
    /// The state reported.
    pub state: RequestState,
    /// Every error, when denied or failed.
    pub errors: Vec<String>,
}

impl FeatureRequestEvent {
    /// The event reporting `state` for a request.
    pub fn new(request_type: FeatureRequestType, request_id: &str, owner: &str, state: RequestState) -> Self {
        Self {
            event_id: format!("{request_id}:{}", state.as_str()),
            request_type,
            request_id: request_id.to_owned(),
            request_owner: owner.to_owned(),
            id: None,
            urn: None,
            state,
            errors: Vec::new(),
        }
    }
}

/// The parts of a creation that the rules need, once checked.
#[derive(Debug, Clone, PartialEq)]
pub struct ValidCreation {
    /// providerId.
    pub provider_id: String,
    /// Entity type.
    pub entity_type: crate::EntityType,
    /// Model name.
    pub model: String,
}

fn check_session_field(errors: &mut Vec<String>, name: &str, value: &str) {
    if value.trim().is_empty() {
        errors.push(format!("metadata.{name}: must not be blank"));
    } else if value.chars().count() > MAX_SESSION {
        errors.push(format!("metadata.{name}: longer than {MAX_SESSION} characters"));
    }
}

/// Checks a creation's metadata and the feature's identity fields, listing every error with its path.
pub fn validate_creation(event: &FeatureCreationRequestEvent) -> Result<ValidCreation, Vec<String>> {
    let mut errors = Vec::new();
    check_session_field(&mut errors, "sessionOwner", &event.metadata.session_owner);
    check_session_field(&mut errors, "session", &event.metadata.session);
    let f = &event.feature;
    if !f.is_object() {
        errors.push("feature: must be a GeoJSON Feature object".into());
        return Err(errors);
    }
    if f.get("type").and_then(Value::as_str) != Some("Feature") {
        errors.push("feature.type: must be \"Feature\"".into());
    }
    let provider_id = match f.get("id") {
        Some(Value::String(s)) if s.trim().is_empty() => {
            errors.push("feature.id: must not be blank".into());
            None
        }
        Some(Value::String(s)) if s.chars().count() > MAX_PROVIDER_ID => {
            errors.push(format!("feature.id: longer than {MAX_PROVIDER_ID} characters"));
            None
        }
        Some(Value::String(s)) => Some(s.clone()),
        Some(_) => {
            errors.push("feature.id: must be a string".into());
            None
        }
        None => {
            errors.push("feature.id: required (the providerId)".into());
            None
        }
    };
    let entity_type = match f.get("entityType").and_then(Value::as_str) {
        Some(s) => match s.parse::<crate::EntityType>() {
            Ok(t) => Some(t),
            Err(e) => {
                errors.push(format!("feature.entityType: {e}"));
                None
            }
        },
        None => {
            errors.push("feature.entityType: required (DATA, DATASET or COLLECTION)".into());
            None
        }
    };
    let model = match f.get("model").and_then(Value::as_str) {
        Some(m) if !m.trim().is_empty() => Some(m.to_owned()),
        _ => {
            errors.push("feature.model: required".into());
            None
        }
    };
    if let Some(p) = f.get("properties")
        && !p.is_object()
        && !p.is_null()
    {
        errors.push("feature.properties: must be an object".into());
    }
    check_location(f, &mut errors);
    crate::catalog::check_tags(f, &mut errors);
    crate::file::check_files(f.get("files").unwrap_or(&Value::Null), "feature.files", &mut errors);
    match (provider_id, entity_type, model) {
        (Some(provider_id), Some(entity_type), Some(model)) if errors.is_empty() => Ok(ValidCreation { provider_id, entity_type, model }),
        _ => Err(errors),
    }
}

/// Checks a patch: a feature object with a valid URN (of `tenant`) and, if any, an object of properties.
pub fn validate_patch(event: &FeatureUpdateRequestEvent, tenant: &str) -> Result<crate::Urn, Vec<String>> {
    let mut errors = Vec::new();
    let f = &event.feature;
    if !f.is_object() {
        return Err(vec!["feature: must be a GeoJSON Feature object".into()]);
    }
    let urn = match f.get("urn").and_then(Value::as_str) {
        None => {
            errors.push("feature.urn: required to patch a feature".into());
            None
        }
        Some(u) => parse_own_urn(u, tenant, "feature.urn").map_err(|e| errors.push(e)).ok(),
    };
    if let Some(p) = f.get("properties")
        && !p.is_object()
        && !p.is_null()
    {
        errors.push("feature.properties: must be an object".into());
    }
    check_location(f, &mut errors);
    crate::file::check_files(f.get("files").unwrap_or(&Value::Null), "feature.files", &mut errors);
    match urn {
        Some(u) if errors.is_empty() => Ok(u),
        _ => Err(errors),
    }
}

/// The geometry and bbox of a feature, when present.
fn check_location(f: &Value, errors: &mut Vec<String>) {
    match f.get("geometry") {
        None | Some(Value::Null) => {}
        Some(g) if g.is_object() => crate::geometry::check_geometry(g, "feature.geometry", errors),
        Some(_) => errors.push("feature.geometry: must be a GeoJSON geometry object or null".into()),
    }
    if let Some(b) = f.get("bbox").filter(|b| !b.is_null()) {
        crate::geometry::check_bbox(b, "feature.bbox", errors);
    }
}

/// Checks a deletion: a valid URN of `tenant`.
pub fn validate_deletion(event: &FeatureDeletionRequestEvent, tenant: &str) -> Result<crate::Urn, Vec<String>> {
    parse_own_urn(&event.urn, tenant, "urn").map_err(|e| vec![e])
}

/// Checks a notification request; returns the URN to notify, or every error.
pub fn validate_notification(event: &FeatureNotificationRequestEvent, tenant: &str) -> Result<crate::Urn, Vec<String>> {
    let mut errors = Vec::new();
    let urn = parse_own_urn(&event.urn, tenant, "urn").map_err(|e| errors.push(e)).ok();
    for (i, r) in event.recipients.iter().enumerate() {
        if r.trim().is_empty() || r.chars().count() > 128 {
            errors.push(format!("recipients[{i}]: a recipient label has 1 to 128 characters"));
        }
    }
    match urn {
        Some(urn) if errors.is_empty() => Ok(urn),
        _ => Err(errors),
    }
}

/// `text` as a URN of this deployment's `tenant`, or the error naming `path`.
fn parse_own_urn(text: &str, tenant: &str, path: &str) -> Result<crate::Urn, String> {
    match text.parse::<crate::Urn>() {
        Ok(urn) if urn.tenant == tenant => Ok(urn),
        Ok(urn) => Err(format!("{path}: tenant {:?} is not this deployment's ({tenant:?})", urn.tenant)),
        Err(e) => Err(format!("{path}: {e}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn finished_requests_are_purged_after_the_retention_which_outlasts_sqs_redelivery() {
        assert!(RequestState::Success.is_finished() && RequestState::Denied.is_finished());
        assert!(!RequestState::Error.is_finished() && !RequestState::Granted.is_finished());
        // 2026-01-01T00:00:00.999Z: seconds, not milliseconds, and 30 days on.
        assert_eq!(finished_request_purge_at(1_767_225_600_999), 1_767_225_600 + 30 * 86_400);
    }

    #[test]
    fn patches_and_deletions_need_a_urn_of_this_tenant() {
        let u = "URN:FEATURE:DATA:granary:0a52d09e-9b90-3b1b-8a3d-1c83f6b5953c:V1";
        let patch = |f: Value| FeatureUpdateRequestEvent { metadata: UpdateMetadata::default(), feature: f };
        assert!(validate_patch(&patch(json!({"urn": u, "properties": {"a": 1}})), "granary").is_ok());
        let e = validate_patch(&patch(json!({"properties": [], "geometry": 3})), "granary").unwrap_err();
        assert_eq!(e.len(), 3, "{e:?}");
        assert!(validate_patch(&patch(json!({"urn": u})), "other").unwrap_err()[0].contains("tenant"));
        let del = |urn: &str| FeatureDeletionRequestEvent { urn: urn.into(), priority: Priority::Normal };
        assert!(validate_deletion(&del(u), "granary").is_ok());
        assert!(validate_deletion(&del("URN:FEATURE:DATA:granary:x:V1"), "granary").unwrap_err()[0].starts_with("urn:"));
        let notify = |urn: &str, recipients: &[&str]| FeatureNotificationRequestEvent {
            urn: urn.into(),
            priority: Priority::High,
            recipients: recipients.iter().map(|r| (*r).to_owned()).collect(),
        };
        assert!(validate_notification(&notify(u, &["catalog"]), "granary").is_ok());
        let e = validate_notification(&notify(u, &["", "x"]), "other").unwrap_err();
        assert_eq!(e.len(), 2, "the tenant and the empty label: {e:?}");
        assert!(e[0].starts_with("urn: tenant") && e[1].starts_with("recipients[0]"), "{e:?}");
    }

    fn event(feature: Value) -> FeatureCreationRequestEvent {
        FeatureCreationRequestEvent {
            metadata: CreationMetadata { session_owner: "chain".into(), session: "s1".into(), ..Default::default() },
            feature,
        }
    }

    #[test]
    fn a_complete_creation_passes() {
        let v = validate_creation(&event(json!({"type": "Feature", "id": "p1", "entityType": "DATA", "model": "M", "properties": {}})))
            .unwrap();
        assert_eq!((v.provider_id.as_str(), v.entity_type, v.model.as_str()), ("p1", crate::EntityType::Data, "M"));
    }

    #[test]
    fn every_error_is_listed_with_its_path() {
        let mut e = event(json!({"type": "Feature", "id": "x".repeat(101), "entityType": "THING", "properties": []}));
        e.metadata.session = " ".into();
        let errors = validate_creation(&e).unwrap_err();
        assert_eq!(errors.len(), 5, "{errors:?}");
        for path in ["metadata.session:", "feature.id:", "feature.entityType:", "feature.model:", "feature.properties:"] {
            assert!(errors.iter().any(|m| m.starts_with(path)), "{path} missing from {errors:?}");
        }
    }

    #[test]
    fn a_non_object_feature_is_refused() {
        assert_eq!(validate_creation(&event(json!([1]))).unwrap_err(), vec!["feature: must be a GeoJSON Feature object"]);
    }

    #[test]
    fn event_ids_are_deterministic() {
        let a = FeatureRequestEvent::new(FeatureRequestType::Creation, "r1", "o", RequestState::Granted);
        assert_eq!(a.event_id, "r1:GRANTED");
        assert_eq!(serde_json::to_value(&a).unwrap()["type"], "CREATION");
    }
}
