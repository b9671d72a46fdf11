//! `feature-api`: the HTTP face of feature management. Submissions are checked, given request ids and
//! queued by priority, exactly as producers' SQS messages are; reads serve requests and features.
//!
//! Routes:
//! - `POST /features`: a FeatureCreationCollection; answers 202 with the granted and denied features.
//! - `PATCH /features`: a FeatureUpdateCollection (each feature names its `urn`); the same answer.
//! - `DELETE /features`: a FeatureDeletionCollection (`featuresUrns`); the same answer.
//! - `GET /features/requests/{requestId}`: one request's state, step, URN and errors.
//! - `POST /features/requests/{requestId}/retry` (admin): a request in ERROR runs again.
//! - `DELETE /features/requests/{requestId}` (admin): a request in ERROR is forgotten.
//! - `GET /features/requests?state=|sessionOwner=&session=[&type=&from=&to=&size=&page=]` (admin):
//!   requests page by page, oldest first.
//! - `GET /features/{urn}`: one feature version, `last` telling whether it is the latest.
//! - `GET /features/sessions/{sessionOwner}[/{session}]` (producers, admins): REGARDS's session
//!   counters.
//! - `PUT /models/{name}` (admin): a data model, in REGARDS's vocabulary or as a JSON Schema; 201 when
//!   new, 200 when replaced, 400 with every problem of the definition.
//! - `GET /models/{name}`: the model, its compiled schema and revision.
//! - `PUT /storage-locations/{name}` (admin): a storage location `{bucket, prefix, class}`; 201 when
//!   new, 200 when replaced.
//! - `GET /storage-locations`: the locations in force (configured and defined).
//! - `PUT /recipients/{label}`, `DELETE /recipients/{label}`, `GET /recipients` (admin): the recipients
//!   of notifications; `PUT /notification-settings` (admin): the automatic-notification switch.
//! - `GET /datasets`, `GET /datasets/{dataset}/products`, `GET /products/{urn}`, and the same under
//!   `/public` for anonymous callers: the catalog (see `search`).

pub mod answers;
pub mod openapi;
mod search;

use answers::{
    DeniedEntry, FeatureAnswer, GrantedRequest, Link, LocationList, ModelAnswer, NotificationSettings, PageMetadata, RecipientList,
    RequestPageAnswer, SessionAnswer, SessionList, SubmissionAnswer,
};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use granary_domain::RequestState;
use granary_domain::catalog::Reader;
use granary_domain::model::{ModelError, compile_model};
use granary_domain::request::{
    FeatureDeletionCollection, FeatureDeletionRequestEvent, FeatureNotificationCollection, FeatureNotificationRequestEvent,
    FeatureUpdateCollection, FeatureUpdateRequestEvent, validate_creation, validate_deletion, validate_notification, validate_patch,
};
use granary_domain::{FeatureCreationCollection, FeatureCreationRequestEvent, FeatureRequestType, Priority, Urn};
use granary_lambda::http::{bad_request, body_text, conflict, forbidden, json, not_found, percent_decode, unauthorized, unavailable};
use granary_lambda::{Config, Identity};
use granary_ports::queue::{MAX_MESSAGE_BYTES, batches};
use granary_ports::{Backend, OutgoingMessage};
use granary_stores::catalog::Catalog;
use granary_stores::dissemination::{DisseminationLog, RecipientStore};
use granary_stores::features::FeatureStore;
use granary_stores::locations::LocationStore;
use granary_stores::models::ModelStore;
use granary_stores::recovery::{AdminOutcome, Recovery};
use granary_stores::requests::{RequestFilter, RequestReader};
use granary_stores::sessions::SessionReader;
use lambda_http::RequestExt;
use lambda_http::{Body, Request, Response};
use serde_json::Value;

/// Most features accepted in one submission (REGARDS's bulk size).
pub const MAX_FEATURES_PER_SUBMISSION: usize = 1000;

/// The handler and what it needs, built once per cold start.
#[derive(Debug, Clone)]
pub struct FeatureApi {
    backend: Backend,
    config: Config,
    features: FeatureStore,
    requests: RequestReader,
    models: ModelStore,
    sessions: SessionReader,
    recovery: Recovery,
    locations: LocationStore,
    recipients: RecipientStore,
    disseminated: DisseminationLog,
    catalog: Catalog,
}

/// The error of a route, answered as problem+json.
type RouteResult = Result<Response<Body>, Response<Body>>;

fn unavailable_on(e: impl std::fmt::Display) -> Response<Body> {
    tracing::error!(error = %e, "storage failure");
    unavailable("storage is temporarily unavailable; retry later")
}

impl FeatureApi {
    /// The handler over `backend`, configured by `config`.
    pub fn new(backend: Backend, config: Config) -> Self {
        let features = FeatureStore::new(&config.features_table, &config.requests_table);
        let requests = RequestReader::new(&config.requests_table);
        let models = ModelStore::new(&config.features_table);
        let sessions = SessionReader::new(&config.requests_table);
        let recovery = Recovery::new(&config.requests_table, &config.response_queue);
        let locations = LocationStore::new(&config.features_table);
        let recipients = RecipientStore::new(&config.features_table);
        let disseminated = DisseminationLog::new(&config.features_table, &config.requests_table, &config.response_queue);
        let catalog = Catalog::new(&config.features_table);
        let grants = [requests.grants(), models.grants(), sessions.grants(), recovery.grants(), locations.grants(), recipients.grants()]
            .into_iter()
            .chain([disseminated.grants(), catalog.grants()])
            .fold(features.grants(), granary_ports::access::Grants::and)
            // Submissions go to the feature queues; a retried storage error sends its job again.
            .send(&config.feature_queues[0])
            .send(&config.feature_queues[1])
            .send(&config.feature_queues[2])
            .send(&config.storage_jobs_queue);
        let backend = granary_ports::access::guard(backend, "feature-api", grants);
        Self { backend, config, features, requests, models, sessions, recovery, locations, recipients, disseminated, catalog }
    }

    /// Answers one API Gateway (HTTP API) request.
    pub async fn handle(&self, req: Request) -> Result<Response<Body>, lambda_http::Error> {
        Ok(self.route(req).await.unwrap_or_else(|problem| problem))
    }

    async fn route(&self, req: Request) -> RouteResult {
        let path = req.uri().path().trim_end_matches('/').to_owned();
        let segments: Vec<&str> = path.trim_start_matches('/').split('/').collect();
        // The catalog: anonymous reads under /public (routes without the JWT authorizer), the same
        // reads with a token elsewhere.
        let (reader, catalog_path, base, identity) = match segments.as_slice() {
            ["public", rest @ ..] => (Reader::anonymous(), rest, "/public", None),
            all => {
                let identity = Identity::from_request(&req, &self.config.groups_claim).ok_or_else(unauthorized)?;
                (Reader { admin: identity.is_admin(), groups: identity.groups.clone() }, all, "", Some(identity))
            }
        };
        match (req.method().as_str(), catalog_path) {
            ("GET", ["datasets"]) => return self.list_datasets(&reader).await,
            ("GET", ["datasets", dataset, "products"]) => return self.search_products(&reader, &percent_decode(dataset), &req, base).await,
            ("GET", ["products", urn]) => return self.get_product(&reader, &percent_decode(urn)).await,
            _ => {}
        }
        // Only the catalog is served under /public.
        let Some(identity) = identity else { return Err(not_found(&format!("no route {} {path}", req.method()))) };
        match (req.method().as_str(), segments.as_slice()) {
            ("POST", ["features"]) => self.submit(&identity, &req, FeatureRequestType::Creation).await,
            ("PATCH", ["features"]) => self.submit(&identity, &req, FeatureRequestType::Patch).await,
            ("DELETE", ["features"]) => self.submit(&identity, &req, FeatureRequestType::Deletion).await,
            ("POST", ["features", "notifications"]) => self.submit(&identity, &req, FeatureRequestType::Notification).await,
            ("GET", ["features", "requests"]) => self.list_requests(&identity, &req).await,
            ("GET", ["features", "sessions", owner]) => self.sessions(&identity, &percent_decode(owner), None).await,
            ("GET", ["features", "sessions", owner, session]) => {
                self.sessions(&identity, &percent_decode(owner), Some(&percent_decode(session))).await
            }
            ("GET", ["features", "requests", id]) => self.get_request(&identity, id).await,
            ("POST", ["features", "requests", id, "retry"]) => self.retry_request(&identity, id).await,
            ("DELETE", ["features", "requests", id]) => self.delete_request(&identity, id).await,
            ("PUT", ["models", name]) => self.put_model(&identity, name, &req).await,
            ("GET", ["models", name]) => self.get_model(name).await,
            ("PUT", ["storage-locations", name]) => self.put_location(&identity, name, &req).await,
            ("GET", ["storage-locations"]) => self.list_locations().await,
            ("PUT", ["recipients", label]) => self.put_recipient(&identity, &percent_decode(label), &req).await,
            ("DELETE", ["recipients", label]) => self.delete_recipient(&identity, &percent_decode(label)).await,
            ("GET", ["recipients"]) => self.list_recipients(&identity).await,
            ("PUT", ["notification-settings"]) => self.put_settings(&identity, &req).await,
            ("GET", ["features", urn]) => self.get_feature(&identity, &reader, &percent_decode(urn)).await,
            (method, _) => Err(not_found(&format!("no route {method} {path}"))),
        }
    }

    /// Turns a submitted collection into one request message per feature, each checked as ingest will
    /// check it; sends the valid ones to the queue of their priority.
    async fn submit(&self, identity: &Identity, req: &Request, kind: FeatureRequestType) -> RouteResult {
        if !identity.is_producer() {
            return Err(forbidden("submitting feature requests needs the producer or admin group"));
        }
        let text = body_text(req.body()).map_err(|e| bad_request(&e, &[]))?;
        let malformed = |what: &str, e: serde_json::Error| bad_request(&format!("the body is not a {what}"), &[format!("body: {e}")]);
        let tenant = &self.config.tenant;
        // Each entry: what identifies it in the answer, and the request body or every error.
        type Entry = (Option<String>, Result<Value, Vec<String>>);
        let (owner, priority, entries): (Option<String>, Priority, Vec<Entry>) = match kind {
            FeatureRequestType::Creation => {
                let c: FeatureCreationCollection = serde_json::from_str(text).map_err(|e| malformed("FeatureCreationCollection", e))?;
                let entries = c
                    .features
                    .into_iter()
                    .map(|feature| {
                        let event = FeatureCreationRequestEvent { metadata: c.metadata.clone(), feature };
                        let id = event.feature.get("id").and_then(Value::as_str).map(str::to_owned);
                        (id, validate_creation(&event).map(|_| serde_json::to_value(&event).unwrap_or_default()))
                    })
                    .collect();
                (c.request_owner, c.metadata.priority, entries)
            }
            FeatureRequestType::Patch => {
                let c: FeatureUpdateCollection = serde_json::from_str(text).map_err(|e| malformed("FeatureUpdateCollection", e))?;
                let entries = c
                    .features
                    .into_iter()
                    .map(|feature| {
                        let event = FeatureUpdateRequestEvent { metadata: c.metadata.clone(), feature };
                        let id = event.feature.get("urn").and_then(Value::as_str).map(str::to_owned);
                        (id, validate_patch(&event, tenant).map(|_| serde_json::to_value(&event).unwrap_or_default()))
                    })
                    .collect();
                (c.request_owner, c.metadata.priority, entries)
            }
            FeatureRequestType::Notification => {
                let c: FeatureNotificationCollection =
                    serde_json::from_str(text).map_err(|e| malformed("FeatureNotificationCollection", e))?;
                let entries = c
                    .features_urns
                    .into_iter()
                    .map(|urn| {
                        let event =
                            FeatureNotificationRequestEvent { urn: urn.clone(), priority: c.priority, recipients: c.recipients.clone() };
                        (Some(urn), validate_notification(&event, tenant).map(|_| serde_json::to_value(&event).unwrap_or_default()))
                    })
                    .collect();
                (None, c.priority, entries)
            }
            FeatureRequestType::Deletion => {
                let c: FeatureDeletionCollection = serde_json::from_str(text).map_err(|e| malformed("FeatureDeletionCollection", e))?;
                let entries = c
                    .features_urns
                    .into_iter()
                    .map(|urn| {
                        let event = FeatureDeletionRequestEvent { urn: urn.clone(), priority: c.priority };
                        (Some(urn), validate_deletion(&event, tenant).map(|_| serde_json::to_value(&event).unwrap_or_default()))
                    })
                    .collect();
                (None, c.priority, entries)
            }
        };
        if entries.is_empty() || entries.len() > MAX_FEATURES_PER_SUBMISSION {
            return Err(bad_request(
                "wrong number of features",
                &[format!("features: {} given; 1 to {MAX_FEATURES_PER_SUBMISSION} accepted", entries.len())],
            ));
        }
        let owner = owner.filter(|o| !o.is_empty()).unwrap_or_else(|| identity.user.clone());
        let queue = self.config.feature_queue(priority).to_owned();
        let date = self.backend.clock.now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
        let mut granted = Vec::new();
        let mut denied = Vec::new();
        let mut problems = Vec::new();
        let mut outgoing = Vec::new();
        for (i, (id, checked)) in entries.into_iter().enumerate() {
            match checked {
                Ok(body) => {
                    let request_id = self.backend.ids.new_id().to_string();
                    let message = OutgoingMessage::new(body.to_string())
                        .attribute("regards.request.type", kind.as_str())
                        .attribute("regards.request.id", request_id.clone())
                        .attribute("regards.request.owner", owner.clone())
                        .attribute("regards.request.date", date.clone());
                    if message.size() > MAX_MESSAGE_BYTES {
                        let error = format!("feature: {} bytes, more than the {MAX_MESSAGE_BYTES} a queue message carries", message.size());
                        problems.push(format!("features[{i}].{}", error.trim_start_matches("feature.")));
                        denied.push(DeniedEntry { index: i, id, errors: vec![error] });
                        continue;
                    }
                    outgoing.push(message);
                    granted.push(GrantedRequest { request_id, id });
                }
                Err(errors) => {
                    problems.extend(errors.iter().map(|e| format!("features[{i}].{}", e.trim_start_matches("feature."))));
                    denied.push(DeniedEntry { index: i, id, errors });
                }
            }
        }
        if granted.is_empty() {
            return Err(bad_request("every feature was denied", &problems));
        }
        for batch in batches(outgoing) {
            self.backend.queue.send_batch(&queue, batch).await.map_err(unavailable_on)?;
        }
        Ok(json(202, &SubmissionAnswer { granted, denied }))
    }

    async fn put_model(&self, identity: &Identity, name: &str, req: &Request) -> RouteResult {
        if !identity.is_admin() {
            return Err(forbidden("defining data models needs the admin group"));
        }
        if name.is_empty() || name.len() > 128 || !name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-') {
            return Err(bad_request("invalid model name", &[format!("name: {name:?} must be 1 to 128 letters, digits, '_' or '-'")]));
        }
        let text = body_text(req.body()).map_err(|e| bad_request(&e, &[]))?;
        // Measured before parsing too: repeated keys would shrink an oversized body below the limit.
        let limit = granary_domain::model::MAX_DEFINITION_BYTES;
        if text.len() > limit {
            return Err(bad_request("invalid data model", &[format!("model: {} bytes of JSON; at most {limit}", text.len())]));
        }
        let definition: Value = serde_json::from_str(text).map_err(|e| bad_request("the body is not JSON", &[format!("body: {e}")]))?;
        let compiled = compile_model(name, &definition).map_err(|ModelError(errors)| bad_request("invalid data model", &errors))?;
        let revision = self.models.put(&self.backend, &definition, &compiled, &identity.user).await.map_err(unavailable_on)?;
        let status = if revision == 1 { 201 } else { 200 };
        let answer = ModelAnswer {
            name: name.to_owned(),
            revision,
            entity_type: compiled.entity_type.map(|t| t.as_str().to_owned()),
            definition: None,
            schema: compiled.creation_schema,
            updated_by: None,
        };
        Ok(json(status, &answer))
    }

    async fn put_location(&self, identity: &Identity, name: &str, req: &Request) -> RouteResult {
        if !identity.is_admin() {
            return Err(forbidden("defining storage locations needs the admin group"));
        }
        if name.is_empty() || name.len() > 128 || !name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-') {
            return Err(bad_request("invalid location name", &[format!("name: {name:?} must be 1 to 128 letters, digits, '_' or '-'")]));
        }
        let text = body_text(req.body()).map_err(|e| bad_request(&e, &[]))?;
        let body: Value = serde_json::from_str(text).map_err(|e| bad_request("the body is not JSON", &[format!("body: {e}")]))?;
        // The same checks as the deployment's configuration, and S3's rules for the bucket.
        let locations = granary_domain::storage::parse_locations(&serde_json::json!({ name: body }).to_string())
            .map_err(|e| bad_request("invalid storage location", &[e]))?;
        let location = locations.get(name).cloned().ok_or_else(|| bad_request("invalid storage location", &[]))?;
        granary_ports::blob::validate_bucket(&location.bucket)
            .map_err(|e| bad_request("invalid storage location", &[format!("bucket: {e}")]))?;
        if !self.config.location_bucket_allowed(&location.bucket) {
            let why = format!(
                "bucket: {} is not one Granary may store into (GRANARY_LOCATION_BUCKETS, the LocationBuckets parameter)",
                location.bucket
            );
            return Err(bad_request("invalid storage location", &[why]));
        }
        let created = self.locations.put(&self.backend, name, &location, &identity.user).await.map_err(unavailable_on)?;
        Ok(json(if created { 201 } else { 200 }, &LocationList { locations }))
    }

    async fn list_locations(&self) -> RouteResult {
        let locations = self.all_locations().await.map_err(|b| *b)?;
        Ok(json(200, &LocationList { locations }))
    }

    async fn put_recipient(&self, identity: &Identity, label: &str, req: &Request) -> RouteResult {
        if !identity.is_admin() {
            return Err(forbidden("defining recipients needs the admin group"));
        }
        let text = body_text(req.body()).map_err(|e| bad_request(&e, &[]))?;
        let recipient: granary_domain::dissemination::Recipient =
            serde_json::from_str(text).map_err(|e| bad_request("the body is not a recipient", &[format!("body: {e}")]))?;
        let mut errors = granary_domain::dissemination::check_recipient(label, &recipient);
        if let granary_domain::dissemination::Target::Queue { queue } = &recipient.target {
            // A queue URL names its queue last; Granary's own queues would loop or forge its messages.
            let name = queue.rsplit('/').next().unwrap_or(queue);
            if self.config.internal_queues().contains(&name) {
                errors.push(format!("target.queue: {name} is one of Granary's own queues"));
            }
        }
        // A webhook dissemination may not call is refused now, not at every delivery.
        if let granary_domain::dissemination::Target::Webhook { url } = &recipient.target
            && let (Ok(parsed), Ok(policy)) = (url::Url::parse(url), &self.config.outbound)
            && let Err(e) = policy.check_url(&parsed)
        {
            errors.push(format!("target.url: {e}"));
        }
        if !errors.is_empty() {
            return Err(bad_request("invalid recipient", &errors));
        }
        let created = self.recipients.put(&self.backend, label, &recipient, &identity.user).await.map_err(unavailable_on)?;
        if !(recipient.blocking && recipient.ack_required) {
            self.release_held_by(label).await?;
        }
        let mut shown = recipient;
        shown.secret = None;
        let answer = RecipientList {
            active: self.recipients.active(&self.backend).await.map_err(unavailable_on)?,
            recipients: [(label.to_owned(), shown)].into(),
        };
        Ok(json(if created { 201 } else { 200 }, &answer))
    }

    async fn delete_recipient(&self, identity: &Identity, label: &str) -> RouteResult {
        if !identity.is_admin() {
            return Err(forbidden("removing recipients needs the admin group"));
        }
        let existed = self.recipients.delete(&self.backend, label).await.map_err(unavailable_on)?;
        // Also when it was gone already: a release that failed after the deletion is done now.
        self.release_held_by(label).await?;
        if existed {
            Ok(Response::builder().status(204).body(Body::Empty).unwrap_or_default())
        } else {
            Err(not_found(&format!("no recipient {label}")))
        }
    }

    /// Lets go the requests recipient `label` held, now that it no longer blocks.
    async fn release_held_by(&self, label: &str) -> Result<(), Response<Body>> {
        let events = self.disseminated.release_held_by(&self.backend, label).await.map_err(unavailable_on)?;
        if !events.is_empty() {
            tracing::info!(%label, released = events.len(), "requests the recipient held are done");
        }
        if let Err(e) = self.disseminated.outbox().flush(&self.backend, &events).await {
            tracing::warn!(error = %e, "events left to the outbox relay");
        }
        Ok(())
    }

    async fn list_recipients(&self, identity: &Identity) -> RouteResult {
        if !identity.is_admin() {
            return Err(forbidden("listing recipients needs the admin group"));
        }
        let recipients = self
            .recipients
            .list(&self.backend)
            .await
            .map_err(unavailable_on)?
            .into_iter()
            .map(|(label, mut r)| {
                r.secret = None;
                (label, r)
            })
            .collect();
        Ok(json(200, &RecipientList { active: self.recipients.active(&self.backend).await.map_err(unavailable_on)?, recipients }))
    }

    async fn put_settings(&self, identity: &Identity, req: &Request) -> RouteResult {
        if !identity.is_admin() {
            return Err(forbidden("changing notification settings needs the admin group"));
        }
        let text = body_text(req.body()).map_err(|e| bad_request(&e, &[]))?;
        let settings: NotificationSettings =
            serde_json::from_str(text).map_err(|e| bad_request("the body is not {active: true|false}", &[format!("body: {e}")]))?;
        self.recipients.set_active(&self.backend, settings.active, &identity.user).await.map_err(unavailable_on)?;
        Ok(json(200, &settings))
    }

    async fn get_model(&self, name: &str) -> RouteResult {
        match self.models.get(&self.backend, name).await.map_err(unavailable_on)? {
            Some(m) => Ok(json(
                200,
                &ModelAnswer {
                    name: name.to_owned(),
                    revision: m.revision,
                    entity_type: m.compiled.entity_type.map(|t| t.as_str().to_owned()),
                    definition: Some(m.definition),
                    schema: m.compiled.creation_schema,
                    updated_by: Some(m.updated_by),
                },
            )),
            None => Err(not_found(&format!("no model {name}"))),
        }
    }

    /// `GET /features/requests?state=&sessionOwner=&session=&type=&from=&to=&size=&page=` (admin):
    /// a page of requests, oldest first, in REGARDS's paged shape; `page` is the cursor the previous
    /// page's `next` link carries.
    async fn list_requests(&self, identity: &Identity, req: &Request) -> RouteResult {
        if !identity.is_admin() {
            return Err(forbidden("listing requests needs the admin group"));
        }
        let params = req.query_string_parameters();
        let mut errors = Vec::new();
        let mut filter = RequestFilter::default();
        if let Some(s) = params.first("state") {
            match serde_json::from_value::<RequestState>(Value::from(s)) {
                Ok(state) => filter.state = Some(state),
                Err(_) => errors.push(format!("state: {s:?} is not GRANTED, DENIED, SUCCESS or ERROR")),
            }
        }
        if let Some(t) = params.first("type") {
            match FeatureRequestType::parse(t) {
                Some(kind) => filter.request_type = Some(kind),
                None => errors.push(format!("type: {t:?} is not CREATION, PATCH, DELETION or NOTIFICATION")),
            }
        }
        match (params.first("sessionOwner"), params.first("session")) {
            (Some(o), Some(s)) => filter.session = Some((o.to_owned(), s.to_owned())),
            (None, None) => {}
            _ => errors.push("session: sessionOwner and session go together".into()),
        }
        for (name, slot) in [("from", &mut filter.from), ("to", &mut filter.to)] {
            if let Some(v) = params.first(name) {
                match chrono::DateTime::parse_from_rfc3339(v) {
                    Ok(t) => *slot = Some(t.timestamp_millis()),
                    Err(_) => errors.push(format!("{name}: {v:?} is not an ISO-8601 date")),
                }
            }
        }
        let size = match params.first("size").map(str::parse::<usize>) {
            None => 20,
            Some(Ok(n)) if (1..=1000).contains(&n) => n,
            Some(_) => {
                errors.push("size: must be 1 to 1000".into());
                20
            }
        };
        if params.first("state").is_none() && params.first("sessionOwner").is_none() && params.first("session").is_none() {
            errors.push("state or sessionOwner and session: one of them is required".into());
        }
        let after = match params.first("page").map(|p| URL_SAFE_NO_PAD.decode(p).ok().and_then(|b| String::from_utf8(b).ok())) {
            None => None,
            Some(Some(cursor)) => Some(cursor),
            Some(None) => {
                errors.push("page: not a cursor this API handed out".into());
                None
            }
        };
        if !errors.is_empty() {
            return Err(bad_request("invalid request filter", &errors));
        }
        let page = match self.requests.list(&self.backend, &filter, size, after.as_deref()).await {
            Ok(p) => p,
            Err(granary_stores::StoreError::Port(granary_ports::PortError::Invalid(e))) => {
                return Err(bad_request("invalid page", &[format!("page: {e}")]));
            }
            Err(e) => return Err(unavailable_on(e)),
        };
        let mut links = Vec::new();
        if let Some(next) = page.next {
            let mut query: Vec<String> =
                params.iter().filter(|(k, _)| *k != "page").map(|(k, v)| format!("{k}={}", form_encode(v))).collect();
            query.push(format!("page={}", URL_SAFE_NO_PAD.encode(next)));
            links.push(Link { rel: "next".into(), href: format!("/features/requests?{}", query.join("&")) });
        }
        let metadata = PageMetadata { size, number_of_elements: page.content.len() };
        Ok(json(200, &RequestPageAnswer { content: page.content, metadata, links }))
    }

    /// The counters of one session, or of every session of an owner (producers and admins).
    async fn sessions(&self, identity: &Identity, owner: &str, session: Option<&str>) -> RouteResult {
        if !identity.is_producer() {
            return Err(forbidden("session counters are for producers and admins"));
        }
        match session {
            Some(s) => match self.sessions.get(&self.backend, owner, s).await.map_err(unavailable_on)? {
                Some(counters) => Ok(json(200, &SessionAnswer { session_owner: owner.to_owned(), session: s.to_owned(), counters })),
                None => Err(not_found(&format!("no session {owner}/{s}"))),
            },
            None => {
                let all = self.sessions.of_owner(&self.backend, owner).await.map_err(unavailable_on)?;
                let content = all
                    .into_iter()
                    .map(|(session, counters)| SessionAnswer { session_owner: owner.to_owned(), session, counters })
                    .collect();
                Ok(json(200, &SessionList { content }))
            }
        }
    }

    async fn get_request(&self, identity: &Identity, request_id: &str) -> RouteResult {
        let record = self.requests.get(&self.backend, request_id).await.map_err(unavailable_on)?;
        match record {
            // Only the owner and admins learn that a request exists.
            Some(r) if identity.is_admin() || r.request_owner == identity.user => Ok(json(200, &r)),
            _ => Err(not_found(&format!("no request {request_id}"))),
        }
    }

    /// `POST /features/requests/{requestId}/retry` (admin): a request in ERROR runs again; it is
    /// parked due now and delayed-release sends its message back to its queue.
    async fn retry_request(&self, identity: &Identity, request_id: &str) -> RouteResult {
        if !identity.is_admin() {
            return Err(forbidden("retrying requests needs the admin group"));
        }
        let (outcome, events) = self.recovery.retry(&self.backend, request_id).await.map_err(unavailable_on)?;
        self.admin_outcome(request_id, outcome, "retried").map_err(|p| *p)?;
        if let Err(e) = self.recovery.outbox().flush(&self.backend, &events).await {
            tracing::warn!(error = %e, "GRANTED event left to the outbox relay");
        }
        match self.requests.get(&self.backend, request_id).await.map_err(unavailable_on)? {
            Some(r) => Ok(json(202, &r)),
            None => Err(not_found(&format!("no request {request_id}"))),
        }
    }

    /// `DELETE /features/requests/{requestId}` (admin): forgets a request in ERROR.
    async fn delete_request(&self, identity: &Identity, request_id: &str) -> RouteResult {
        if !identity.is_admin() {
            return Err(forbidden("deleting requests needs the admin group"));
        }
        let outcome = self.recovery.delete(&self.backend, request_id).await.map_err(unavailable_on)?;
        self.admin_outcome(request_id, outcome, "deleted").map_err(|p| *p)?;
        Ok(Response::builder().status(204).body(Body::Empty).unwrap_or_default())
    }

    fn admin_outcome(&self, request_id: &str, outcome: AdminOutcome, verb: &str) -> Result<(), Box<Response<Body>>> {
        match outcome {
            AdminOutcome::Done => Ok(()),
            AdminOutcome::Unknown => Err(Box::new(not_found(&format!("no request {request_id}")))),
            AdminOutcome::NotInError(state) => Err(Box::new(conflict(&format!(
                "request {request_id} is {}, not ERROR: only requests in error are {verb}",
                state.as_str()
            )))),
            AdminOutcome::NothingToRetry => Err(Box::new(conflict(&format!(
                "request {request_id} is in error but its message was not kept: it cannot run again; delete it"
            )))),
        }
    }

    /// One feature version: producers and admins read any; other users only those of a dataset they
    /// may see (the rest do not exist for them).
    async fn get_feature(&self, identity: &Identity, reader: &Reader, urn_text: &str) -> RouteResult {
        let urn: Urn = urn_text.parse().map_err(|e: granary_domain::UrnError| bad_request("invalid URN", &[format!("urn: {e}")]))?;
        if urn.tenant != self.config.tenant {
            return Err(not_found(&format!("no feature {urn}")));
        }
        match self.features.get(&self.backend, &urn).await.map_err(unavailable_on)? {
            Some(f)
                if !identity.is_producer()
                    && self.catalog.visible_through(&self.backend, reader, &f.feature).await.map_err(unavailable_on)?.is_none() =>
            {
                Err(not_found(&format!("no feature {urn}")))
            }
            Some(f) => {
                let dissemination_info = self.disseminated.of(&self.backend, &f.urn).await.map_err(unavailable_on)?;
                Ok(json(200, &FeatureAnswer { urn: f.urn, last: f.last, feature: f.feature, dissemination_info }))
            }
            None => Err(not_found(&format!("no feature {urn}"))),
        }
    }
}

/// Encodes a query value.
fn form_encode(v: &str) -> String {
    v.bytes()
        .map(|b| if b.is_ascii_alphanumeric() || b"-._~".contains(&b) { (b as char).to_string() } else { format!("%{b:02X}") })
        .collect()
}
