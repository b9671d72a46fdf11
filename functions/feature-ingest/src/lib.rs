//! `feature-ingest`: takes feature requests from the HIGH, NORMAL and LOW queues, validates them,
//! versions and stores the features, and answers each request with FeatureRequestEvents.
//!
//! Every message's effect and its dedupe record (the request record) are one transaction, so a
//! redelivered message changes nothing; only messages that hit a transient failure are reported back
//! as batch item failures.

use aws_lambda_events::event::sqs::{SqsBatchResponse, SqsEvent, SqsMessage};
use granary_domain::body::{parse_creation, parse_deletion, parse_notification, parse_patch};
use granary_domain::feature::FileUpdateMode;
use granary_domain::model::Mode;
use granary_domain::request::StorageMetadata;
use granary_domain::request::{validate_deletion, validate_notification, validate_patch};
use granary_domain::storage::{FileToStore, plan_storage};
use granary_domain::{EntityType, Priority, Urn};
use granary_domain::{FeatureRequestEvent, FeatureRequestType, RequestState};
use granary_lambda::{Config, sqs};
use granary_ports::Backend;
use granary_stores::StoreError;
use granary_stores::dissemination::{RecipientCache, RecipientStore, Recipients};
use granary_stores::features::{ChangeOutcome, CreationOutcome, FeatureStore, NewVersion, Notifier, PatchChange};
use granary_stores::locations::{LocationCache, LocationStore};
use granary_stores::models::{ModelCache, ModelStore};
use granary_stores::outbox::OutboxEvent;
use granary_stores::recovery::Recovery;
use granary_stores::requests::{Parked, PendingCreation, RequestReader, RequestRecord, pending_creation};
use granary_stores::storage::{PendingStorage, STORAGE_STEP};
use lambda_runtime::LambdaEvent;
use serde_json::Value;
use std::collections::BTreeMap;
use std::sync::Arc;

/// Message attribute naming the request kind.
pub const ATTR_TYPE: &str = "regards.request.type";
/// Message attribute carrying the request id.
pub const ATTR_ID: &str = "regards.request.id";
/// Message attribute carrying the request owner.
pub const ATTR_OWNER: &str = "regards.request.owner";
/// Message attribute carrying the request date.
pub const ATTR_DATE: &str = "regards.request.date";
/// Message attribute carrying how a patch's files change the stored ones (APPEND, the default, or REPLACE).
pub const ATTR_FILE_UPDATE_MODE: &str = "regards.request.file_update_mode";
/// Message attribute delayed-release puts on a request it sends back to its queue.
pub use granary_lambda::sqs::ATTR_RELEASED;

/// How long a change waiting behind its feature's creation waits again when it comes back before the
/// creation has finished (the creation was released but is still on its queue).
pub const WAIT_RETRY_MS: i64 = 1_000;

/// Plain creations committed in one transaction: ten stay well within a transaction's 100 operations
/// (each writes its version, its request and two or three outbox events; the session counters are
/// merged).
const CREATIONS_PER_TRANSACTION: usize = 10;

/// The handler and what it needs, built once per cold start.
#[derive(Debug, Clone)]
pub struct FeatureIngest {
    backend: Backend,
    config: Config,
    store: FeatureStore,
    requests: RequestReader,
    recovery: Recovery,
    models: Arc<ModelCache>,
    locations: Arc<LocationCache>,
    recipients: Arc<RecipientCache>,
    /// The recipients changed features are notified to, while automatic notification is on and
    /// there is one (the store reads it).
    notifying: Arc<std::sync::RwLock<Option<Arc<Recipients>>>>,
}

/// A message's request as far as it could be read.
struct Envelope {
    request_id: String,
    owner: String,
    request_type: Option<FeatureRequestType>,
    body: Result<Value, String>,
    /// `regards.request.date`, when given.
    date: Option<Result<chrono::DateTime<chrono::Utc>, String>>,
    /// Put back on its queue by delayed-release: it was parked, and its GRANTED event already sent.
    released: bool,
    /// Every message attribute, kept with a parked request.
    attributes: BTreeMap<String, String>,
    /// The session a creation names in its metadata (patches and deletions count in their feature's).
    session: Option<(String, String)>,
    /// Events committed for this message, sent with the rest of the batch's.
    pending: std::sync::Mutex<Vec<OutboxEvent>>,
}

impl Envelope {
    /// The attributes a parked request goes back to its queue with: its own, and its request id, which
    /// a message without one took from its SQS message id.
    fn parked_attributes(&self) -> BTreeMap<String, String> {
        let mut attributes = self.attributes.clone();
        attributes.insert(ATTR_ID.to_owned(), self.request_id.clone());
        attributes
    }

    /// Sends `events` with the batch's, after this message's transaction has committed them.
    fn defer(&self, events: &[OutboxEvent]) {
        self.pending.lock().unwrap_or_else(|p| p.into_inner()).extend_from_slice(events);
    }
}

/// A valid creation with nothing that needs the one-by-one path, ready to join a batch's transaction.
struct PlainCreation<'m> {
    msg: &'m SqsMessage,
    env: Envelope,
    prepared: Prepared,
}

/// What a plain creation will record.
struct Prepared {
    record: RequestRecord,
    provider_id: String,
    entity_type: EntityType,
    feature: Value,
    override_previous: bool,
}

fn envelope(msg: &SqsMessage) -> Envelope {
    let message_id = msg.message_id.clone().unwrap_or_default();
    let body = msg
        .body
        .as_deref()
        .ok_or_else(|| "message has no body".to_owned())
        .and_then(|b| serde_json::from_str::<Value>(b).map_err(|e| format!("body is not valid JSON: {e}")));
    let declared = sqs::attribute(msg, ATTR_TYPE);
    let request_type = match declared {
        Some(t) => FeatureRequestType::parse(t),
        // Without the attribute, infer as the design says: a feature with session metadata is a creation;
        // a feature with a urn and no session metadata is a patch.
        None => body.as_ref().ok().and_then(|b| {
            let has_session = b.pointer("/metadata/sessionOwner").is_some() || b.pointer("/metadata/session").is_some();
            match (b.get("feature"), has_session) {
                (Some(_), true) => Some(FeatureRequestType::Creation),
                (Some(f), false) if f.get("urn").is_some() => Some(FeatureRequestType::Patch),
                _ => None,
            }
        }),
    };
    let owner = sqs::attribute(msg, ATTR_OWNER)
        .map(str::to_owned)
        .or_else(|| body.as_ref().ok()?.pointer("/metadata/sessionOwner")?.as_str().map(str::to_owned))
        .unwrap_or_else(|| "unknown".to_owned());
    let session = body.as_ref().ok().and_then(|b| {
        let owner = b.pointer("/metadata/sessionOwner")?.as_str().filter(|s| !s.trim().is_empty())?;
        let session = b.pointer("/metadata/session")?.as_str().filter(|s| !s.trim().is_empty())?;
        Some((owner.to_owned(), session.to_owned()))
    });
    Envelope {
        // A message without an id takes its SQS message id, which a redelivery keeps.
        request_id: sqs::attribute(msg, ATTR_ID).filter(|s| !s.is_empty()).map_or(message_id, str::to_owned),
        owner,
        request_type,
        body,
        date: sqs::attribute(msg, ATTR_DATE).map(|d| {
            chrono::DateTime::parse_from_rfc3339(d)
                .map(|t| t.with_timezone(&chrono::Utc))
                .map_err(|e| format!("message attribute {ATTR_DATE} {d:?} is not an ISO-8601 date: {e}"))
        }),
        released: sqs::attribute(msg, ATTR_RELEASED).is_some(),
        attributes: msg.message_attributes.iter().filter_map(|(k, v)| Some((k.clone(), v.string_value.clone()?))).collect(),
        session,
        pending: std::sync::Mutex::new(Vec::new()),
    }
}

impl FeatureIngest {
    /// The handler over `backend`, configured by `config`.
    pub fn new(backend: Backend, config: Config) -> Self {
        let notifying = Arc::new(std::sync::RwLock::new(None));
        let store = FeatureStore::new(&config.features_table, &config.requests_table)
            .releasing_files(config.locations(), &config.storage_jobs_queue)
            .notifying(Notifier { queue: config.notification_queue.clone(), recipients: notifying.clone() });
        let ttl = granary_lambda::config::env_number("GRANARY_MODEL_CACHE_SECS", 30u64).unwrap_or_else(|e| {
            tracing::warn!(error = %e, "using the default model cache time of 30 s");
            30
        });
        let models = Arc::new(ModelCache::new(ModelStore::new(&config.features_table), std::time::Duration::from_secs(ttl)));
        let requests = RequestReader::new(&config.requests_table);
        let recovery = Recovery::new(&config.requests_table, &config.response_queue);
        let locations = Arc::new(LocationCache::new(
            LocationStore::new(&config.features_table),
            config.locations(),
            std::time::Duration::from_secs(ttl),
        ));
        let recipients = Arc::new(RecipientCache::new(RecipientStore::new(&config.features_table), std::time::Duration::from_secs(ttl)));
        let grants = [requests.grants(), recovery.grants(), models.grants(), locations.grants(), recipients.grants()]
            .into_iter()
            .fold(store.grants(), granary_ports::access::Grants::and)
            // A patch naming an acknowledged recipient sends the acknowledgement.
            .send(&config.ack_queue);
        let backend = granary_ports::access::guard(backend, "feature-ingest", grants);
        Self { backend, config, store, requests, recovery, models, locations, recipients, notifying }
    }

    /// Handles one SQS batch; only messages that hit a transient failure are retried.
    ///
    /// Runs of consecutive plain creations (no date, no URN, distinct providerIds and request ids,
    /// valid) are committed ten to a transaction; the rest, and ten that do not commit as one, go one
    /// message at a time. The batch's order is kept either way.
    pub async fn handle(&self, event: LambdaEvent<SqsEvent>) -> Result<SqsBatchResponse, lambda_runtime::Error> {
        // Changed features are notified while automatic notification is on and someone may receive them.
        match self.recipients.get(&self.backend).await {
            Ok(r) => *self.notifying.write().unwrap_or_else(|p| p.into_inner()) = (r.active && !r.all.is_empty()).then_some(r),
            Err(e) => {
                // Whom to tell is unknown: a change made now could go untold (or unheld by a
                // blocking recipient). The whole batch comes back from SQS instead.
                tracing::warn!(error = %e, "recipients not read; the batch is left to SQS to deliver again");
                let ids = event.payload.records.iter().map(|m| m.message_id.clone().unwrap_or_default()).collect();
                return Ok(sqs::batch_response(ids));
            }
        }
        let mut failed = Vec::new();
        let mut events = Vec::new();
        let mut run: Vec<PlainCreation<'_>> = Vec::new();
        for msg in &event.payload.records {
            // The body is read once here, whichever path the message then takes.
            let env = envelope(msg);
            if !self.is_dead_letter(msg) {
                match self.plain_creation(msg, &env, &run).await {
                    Ok(Some(prepared)) => {
                        run.push(PlainCreation { msg, env, prepared });
                        continue;
                    }
                    Ok(None) => {}
                    Err(e) => tracing::debug!(error = %e, "creation not prepared for a batch; processed alone"),
                }
            }
            self.create_run(std::mem::take(&mut run), &mut events, &mut failed).await;
            self.process_alone(msg, env, &mut events, &mut failed).await;
        }
        self.create_run(run, &mut events, &mut failed).await;
        // The batch's events go out together. They are committed already: if sending fails, the
        // outbox relay sends them later, so the messages are not failed for it.
        if let Err(e) = self.store.outbox().flush(&self.backend, &events).await {
            tracing::warn!(error = %e, events = events.len(), "events left to the outbox relay");
        }
        Ok(sqs::batch_response(failed))
    }

    /// Processes one message on its own, collecting its events or its failure.
    async fn process_alone(&self, msg: &SqsMessage, env: Envelope, events: &mut Vec<OutboxEvent>, failed: &mut Vec<String>) {
        let outcome = if self.is_dead_letter(msg) { self.record_dead_letter(msg, &env).await } else { self.process(msg, env).await };
        match outcome {
            Ok(committed) => events.extend(committed),
            Err(e) => {
                let id = msg.message_id.clone().unwrap_or_default();
                tracing::warn!(message_id = %id, error = %e, transient = e.is_transient(), "feature request not processed; SQS will redeliver it");
                failed.push(id);
            }
        }
    }

    /// `msg` as a creation that can join `run` in one transaction, or `None` when it needs the one-by-one
    /// path (another kind, a date, a URN, an error to report, a providerId or request id already in the run).
    async fn plain_creation(&self, msg: &SqsMessage, env: &Envelope, run: &[PlainCreation<'_>]) -> Result<Option<Prepared>, StoreError> {
        if env.request_type != Some(FeatureRequestType::Creation)
            || env.date.is_some()
            || env.released
            || msg.body.as_ref().is_none_or(|b| b.len() > granary_ports::queue::MAX_MESSAGE_BYTES)
        {
            return Ok(None);
        }
        let Ok(body) = &env.body else { return Ok(None) };
        let Ok((event, valid)) = parse_creation(body) else { return Ok(None) };
        if event.feature.get("urn").is_some()
            || env.attributes.contains_key(ATTR_FILE_UPDATE_MODE)
            || !event.metadata.storages.is_empty()
            || run.iter().any(|c| c.prepared.provider_id == valid.provider_id || c.env.request_id == env.request_id)
        {
            return Ok(None);
        }
        let properties = event.feature.get("properties").cloned().unwrap_or(Value::Null);
        if !self.model_errors(&valid.model, Some(valid.entity_type), &properties, Mode::Creation).await?.is_empty() {
            return Ok(None);
        }
        let mut record = self.record(msg, env, FeatureRequestType::Creation, RequestState::Success, "DONE");
        record.provider_id = Some(valid.provider_id.clone());
        record.action = Some("CREATED".into());
        Ok(Some(Prepared {
            record,
            provider_id: valid.provider_id,
            entity_type: valid.entity_type,
            feature: event.feature,
            override_previous: event.metadata.override_previous,
        }))
    }

    /// Commits a run of plain creations, [`CREATIONS_PER_TRANSACTION`] to a transaction. The
    /// transactions all count in their session's counters: they go at once only to a table that
    /// serializes transactions (the embedded one commits them together), else one after the other
    /// (DynamoDB refuses concurrent transactions on one item). A chunk that does not commit as one (or
    /// holds a single creation) is processed one creation at a time.
    async fn create_run(&self, run: Vec<PlainCreation<'_>>, events: &mut Vec<OutboxEvent>, failed: &mut Vec<String>) {
        let mut chunks: Vec<Vec<PlainCreation<'_>>> = Vec::new();
        let mut rest = run.into_iter().peekable();
        while rest.peek().is_some() {
            chunks.push(rest.by_ref().take(CREATIONS_PER_TRANSACTION).collect());
        }
        let committed = if self.backend.table.serializes_transactions() {
            futures::future::join_all(chunks.iter().map(|chunk| self.create_together(chunk))).await
        } else {
            let mut committed = Vec::with_capacity(chunks.len());
            for chunk in &chunks {
                committed.push(self.create_together(chunk).await);
            }
            committed
        };
        for (chunk, outcomes) in chunks.into_iter().zip(committed) {
            match outcomes {
                Some(outcomes) => {
                    for (c, outcome) in chunk.iter().zip(outcomes) {
                        if let CreationOutcome::Created { urn, events: committed } = outcome {
                            tracing::info!(request_id = %c.env.request_id, %urn, "feature created");
                            events.extend(committed);
                        }
                    }
                }
                None => {
                    for c in chunk {
                        self.process_alone(c.msg, c.env, events, failed).await;
                    }
                }
            }
        }
    }

    /// Creates `chunk` in one transaction; `None` when it holds a single creation or does not commit as
    /// one.
    async fn create_together(&self, chunk: &[PlainCreation<'_>]) -> Option<Vec<CreationOutcome>> {
        if chunk.len() < 2 {
            return None;
        }
        let kind = FeatureRequestType::Creation;
        let makers: Vec<_> =
            chunk.iter().map(|c| move |urn: &str| self.done_events(kind, &c.env, urn, Some(&c.prepared.provider_id))).collect();
        let news: Vec<NewVersion<'_>> = chunk
            .iter()
            .zip(&makers)
            .map(|(c, make_events)| NewVersion {
                tenant: &self.config.tenant,
                provider_id: &c.prepared.provider_id,
                entity_type: c.prepared.entity_type,
                feature: &c.prepared.feature,
                request: c.prepared.record.clone(),
                events: make_events,
                version: None,
                override_previous: c.prepared.override_previous,
                storage: None,
            })
            .collect();
        match self.store.create_batch(&self.backend, &news).await {
            Ok(outcomes) => outcomes,
            Err(e) => {
                tracing::debug!(error = %e, "batch of creations not prepared; creating one by one");
                None
            }
        }
    }

    /// Whether `msg` comes from the feature dead-letter queue.
    fn is_dead_letter(&self, msg: &SqsMessage) -> bool {
        msg.event_source_arn.as_deref().and_then(|arn| arn.rsplit(':').next()) == Some(self.config.feature_dead_letter_queue.as_str())
    }

    /// Records the request of a message that kept failing as a request in ERROR (step LOCAL_ERROR),
    /// its message kept so that an admin can retry it; nothing is lost, and the admin sees why.
    async fn record_dead_letter(&self, msg: &SqsMessage, env: &Envelope) -> Result<Vec<OutboxEvent>, StoreError> {
        let kind = env.request_type.unwrap_or(FeatureRequestType::Creation);
        let body = env.body.as_ref().ok();
        let text = |pointer: &str| body.and_then(|b| b.pointer(pointer)).and_then(Value::as_str).map(str::to_owned);
        let priority = body
            .and_then(|b| b.pointer("/metadata/priority").or_else(|| b.get("priority")))
            .and_then(|p| serde_json::from_value(p.clone()).ok())
            .unwrap_or_default();
        let mut record = self.record(msg, env, kind, RequestState::Error, "LOCAL_ERROR");
        record.provider_id = if kind == FeatureRequestType::Creation { text("/feature/id") } else { None };
        record.urn = text("/feature/urn").or_else(|| text("/urn"));
        record.errors = vec![format!(
            "processing failed on every delivery and the message went to the dead-letter queue (see the logs of request {}); an admin may retry it (POST /features/requests/{{requestId}}/retry) or delete it",
            env.request_id
        )];
        let message = Parked {
            due_at: 0,
            queue: self.config.feature_queue(priority).to_owned(),
            body: msg.body.clone().unwrap_or_default(),
            attributes: env.parked_attributes(),
        };
        let events = self.recovery.record_failed(&self.backend, &record, &message).await?;
        if events.is_empty() {
            tracing::info!(request_id = %env.request_id, "dead letter of a request processed meanwhile: dropped");
        } else {
            tracing::warn!(request_id = %env.request_id, "request recorded in error from the dead-letter queue");
        }
        Ok(events)
    }

    fn event(
        &self,
        kind: FeatureRequestType,
        env: &Envelope,
        state: RequestState,
        urn: Option<&str>,
        provider_id: Option<&str>,
        errors: Vec<String>,
    ) -> OutboxEvent {
        let mut e = FeatureRequestEvent::new(kind, &env.request_id, &env.owner, state);
        e.urn = urn.map(str::to_owned);
        e.id = provider_id.map(str::to_owned);
        e.errors = errors;
        OutboxEvent {
            event_id: e.event_id.clone(),
            queue: self.config.response_queue.clone(),
            body: serde_json::to_string(&e).unwrap_or_default(),
        }
    }

    /// The events reporting a request done: SUCCESS, after GRANTED unless GRANTED went out when the
    /// request was parked.
    fn done_events(&self, kind: FeatureRequestType, env: &Envelope, urn: &str, provider_id: Option<&str>) -> Vec<OutboxEvent> {
        let mut out = Vec::with_capacity(2);
        if !env.released {
            out.push(self.event(kind, env, RequestState::Granted, Some(urn), provider_id, vec![]));
        }
        out.push(self.event(kind, env, RequestState::Success, Some(urn), provider_id, vec![]));
        out
    }

    /// Parks a valid request dated in the future (step LOCAL_DELAYED) until delayed-release sends it
    /// back to the queue of `priority`; true when it was parked (or already was).
    async fn park_if_early(
        &self,
        msg: &SqsMessage,
        env: &Envelope,
        kind: FeatureRequestType,
        priority: Priority,
        provider_id: Option<&str>,
        session: Option<&(String, String)>,
    ) -> Result<bool, StoreError> {
        let due = match &env.date {
            Some(Ok(d)) if !env.released && *d > self.backend.clock.now() => *d,
            _ => return Ok(false),
        };
        let mut record = self.record(msg, env, kind, RequestState::Granted, "LOCAL_DELAYED");
        record.provider_id = provider_id.map(str::to_owned);
        if let Some((owner, name)) = session {
            record.session_owner = Some(owner.clone());
            record.session = Some(name.clone());
        }
        let parked = Parked {
            due_at: due.timestamp_millis(),
            queue: self.config.feature_queue(priority).to_owned(),
            body: msg.body.clone().unwrap_or_default(),
            attributes: env.parked_attributes(),
        };
        let events = [self.event(kind, env, RequestState::Granted, None, provider_id, vec![])];
        match self.store.park(&self.backend, &record, &parked, &events).await? {
            None => {
                tracing::info!(request_id = %env.request_id, due = %due, "request parked until its date");
                env.defer(&events);
            }
            Some(existing) => self.on_known_request(msg, env, &existing).await?,
        }
        Ok(true)
    }

    /// Every error of `properties` against the model `name` (and of the entity type, when given).
    async fn model_errors(
        &self,
        name: &str,
        entity_type: Option<EntityType>,
        properties: &Value,
        mode: Mode,
    ) -> Result<Vec<String>, StoreError> {
        let Some(validator) = self.models.get(&self.backend, name).await? else {
            return Ok(vec![format!("feature.model: unknown model {name:?} (an admin defines it with PUT /models/{name})")]);
        };
        let mut errors = Vec::new();
        if let (Some(expected), Some(given)) = (validator.model.entity_type, entity_type)
            && expected != given
        {
            errors.push(format!("feature.entityType: model {name:?} is for {} features, not {}", expected.as_str(), given.as_str()));
        }
        errors.extend(validator.check(properties, mode));
        Ok(errors)
    }

    /// The record of a request carried by `msg`.
    fn record(&self, msg: &SqsMessage, env: &Envelope, kind: FeatureRequestType, state: RequestState, step: &str) -> RequestRecord {
        RequestRecord {
            request_id: env.request_id.clone(),
            request_type: kind,
            request_owner: env.owner.clone(),
            state,
            step: step.into(),
            provider_id: None,
            urn: None,
            errors: vec![],
            action: None,
            session_owner: env.session.as_ref().map(|s| s.0.clone()),
            session: env.session.as_ref().map(|s| s.1.clone()),
            registered_at: self.backend.clock.now_ms(),
            waiting_for: None,
            message_id: msg.message_id.clone().unwrap_or_default(),
            replaces_parked: env.released,
            blocked_by: vec![],
        }
    }

    async fn deny(
        &self,
        msg: &SqsMessage,
        env: &Envelope,
        kind: FeatureRequestType,
        provider_id: Option<String>,
        errors: Vec<String>,
    ) -> Result<(), StoreError> {
        let mut record = self.record(msg, env, kind, RequestState::Denied, "LOCAL_DENIED");
        record.provider_id = provider_id.clone();
        record.errors = errors.clone();
        self.keep_parked_session(env, &mut record).await?;
        let events = [self.event(kind, env, RequestState::Denied, None, provider_id.as_deref(), errors)];
        match self.store.record_denied(&self.backend, record.clone(), &events).await? {
            None => env.defer(&events),
            Some(existing) => self.on_known_request(msg, env, &existing).await?,
        }
        Ok(())
    }

    /// A released request was counted as running in the session it was parked under (a change waiting
    /// behind a creation, its creation's): it stops running there.
    async fn keep_parked_session(&self, env: &Envelope, record: &mut RequestRecord) -> Result<(), StoreError> {
        if env.released
            && record.session.is_none()
            && let Some(parked) = self.requests.get(&self.backend, &env.request_id).await?
        {
            record.session_owner = parked.session_owner;
            record.session = parked.session;
        }
        Ok(())
    }

    /// A request id already recorded: a redelivery of the same message changes nothing; another message
    /// reusing the id is denied as a duplicate (reported, not recorded over the first).
    async fn on_known_request(&self, msg: &SqsMessage, env: &Envelope, existing: &RequestRecord) -> Result<(), StoreError> {
        if msg.message_id.as_deref() == Some(existing.message_id.as_str()) {
            tracing::info!(request_id = %env.request_id, "redelivered message: already processed");
            return Ok(());
        }
        if env.released {
            // A release sent twice (a crash between its send and its mark).
            tracing::info!(request_id = %env.request_id, "request already parked or processed");
            return Ok(());
        }
        let mut e = FeatureRequestEvent::new(existing.request_type, &env.request_id, &env.owner, RequestState::Denied);
        e.errors = vec![format!("regards.request.id {:?} is already used by another request", env.request_id)];
        e.event_id = format!("{}:DUPLICATE:{}", env.request_id, msg.message_id.as_deref().unwrap_or_default());
        let event = OutboxEvent {
            event_id: e.event_id.clone(),
            queue: self.config.response_queue.clone(),
            body: serde_json::to_string(&e).unwrap_or_default(),
        };
        env.defer(&[event]);
        Ok(())
    }

    /// Processes one message; returns the events its transaction committed, to send.
    async fn process(&self, msg: &SqsMessage, env: Envelope) -> Result<Vec<OutboxEvent>, StoreError> {
        self.process_envelope(msg, &env).await?;
        Ok(env.pending.into_inner().unwrap_or_else(|p| p.into_inner()))
    }

    async fn process_envelope(&self, msg: &SqsMessage, env: &Envelope) -> Result<(), StoreError> {
        let Some(kind) = env.request_type else {
            let errors = vec![match msg.message_attributes.get(ATTR_TYPE) {
                Some(_) => format!("message attribute {ATTR_TYPE} must be CREATION, PATCH, DELETION or NOTIFICATION"),
                None => format!("message attribute {ATTR_TYPE} is missing and the body is neither a creation nor a patch"),
            }];
            return self.deny(msg, env, FeatureRequestType::Creation, None, errors).await;
        };
        if let Some(Err(e)) = &env.date {
            return self.deny(msg, env, kind, None, vec![e.clone()]).await;
        }
        let size = msg.body.as_ref().map_or(0, String::len);
        if size > granary_ports::queue::MAX_MESSAGE_BYTES {
            // SQS never delivers one; a direct invocation might.
            let error = format!("body: {size} bytes, more than the {} a queue message carries", granary_ports::queue::MAX_MESSAGE_BYTES);
            return self.deny(msg, env, kind, None, vec![error]).await;
        }
        let body = match &env.body {
            Ok(b) => b.clone(),
            Err(e) => return self.deny(msg, env, kind, None, vec![e.clone()]).await,
        };
        match kind {
            FeatureRequestType::Creation => self.create(msg, env, body).await,
            FeatureRequestType::Patch | FeatureRequestType::Deletion => self.change(msg, env, kind, body).await,
            FeatureRequestType::Notification => self.notify(msg, env, body).await,
        }
    }

    /// A patch or a deletion of one feature version.
    async fn change(&self, msg: &SqsMessage, env: &Envelope, kind: FeatureRequestType, body: Value) -> Result<(), StoreError> {
        let tenant = &self.config.tenant;
        let parsed = if kind == FeatureRequestType::Patch {
            parse_patch(&body).and_then(|p| {
                validate_patch(&p, tenant).map(|urn| (urn, Some((p.feature, p.metadata.storages, p.metadata.acknowledged_recipient))))
            })
        } else {
            parse_deletion(&body).and_then(|d| validate_deletion(&d, tenant).map(|urn| (urn, None)))
        };
        let (urn, patch) = match parsed {
            Ok(p) => p,
            Err(errors) => return self.deny(msg, env, kind, None, errors).await,
        };
        let mode = match FileUpdateMode::parse(env.attributes.get(ATTR_FILE_UPDATE_MODE).map(String::as_str)) {
            Ok(mode) => mode,
            Err(error) => return self.deny(msg, env, kind, None, vec![error]).await,
        };
        let (patch, to_store, acknowledged) = match patch {
            None => (None, vec![], None),
            Some((feature, storages, acknowledged)) => match self.plan(&feature, &storages).await? {
                Ok(files) => (Some(feature), files, acknowledged.filter(|label| !label.trim().is_empty())),
                Err(errors) => return self.deny(msg, env, kind, None, errors).await,
            },
        };
        let priority = match &patch {
            Some(_) => body.pointer("/metadata/priority").and_then(|p| serde_json::from_value(p.clone()).ok()).unwrap_or_default(),
            None => body.get("priority").and_then(|p| serde_json::from_value(p.clone()).ok()).unwrap_or_default(),
        };
        let stored = self.store.get(&self.backend, &urn).await?;
        let Some(stored) = stored else {
            // Order per product: a change of a feature whose creation is still in flight waits behind it.
            if let Some(pending) = pending_creation(&self.backend, &self.config.requests_table, &urn.uuid.to_string()).await? {
                return self.wait_behind(msg, env, kind, priority, &urn, &pending).await;
            }
            if patch.is_some() {
                return self.deny(msg, env, kind, None, vec![format!("feature.urn: no feature {urn}")]).await;
            }
            // A deletion of an absent feature is recorded as ALREADY_DELETED, on its date.
            if self.park_if_early(msg, env, kind, priority, None, None).await? {
                return Ok(());
            }
            return self.apply_change(msg, env, kind, &urn, None, None).await;
        };
        if let Some(p) = &patch {
            let model = stored.feature.get("model").and_then(Value::as_str).unwrap_or_default().to_owned();
            let properties = p.get("properties").cloned().unwrap_or(Value::Null);
            let errors = self.model_errors(&model, None, &properties, Mode::Patch).await?;
            if !errors.is_empty() {
                return self.deny(msg, env, kind, None, errors).await;
            }
        }
        if self.park_if_early(msg, env, kind, priority, None, stored.session.as_ref()).await? {
            return Ok(());
        }
        let change = patch.as_ref().map(|p| PatchChange {
            patch: p,
            known: Some(&stored),
            mode,
            storage: self.pending_storage(to_store),
            acknowledges: acknowledged.as_deref(),
        });
        self.apply_change(msg, env, kind, &urn, change, acknowledged.as_deref()).await
    }

    /// A notification of one feature version to recipients (action NOTIFIED).
    async fn notify(&self, msg: &SqsMessage, env: &Envelope, body: Value) -> Result<(), StoreError> {
        let kind = FeatureRequestType::Notification;
        let parsed = parse_notification(&body).and_then(|n| validate_notification(&n, &self.config.tenant).map(|urn| (urn, n)));
        let (urn, event) = match parsed {
            Ok(p) => p,
            Err(errors) => return self.deny(msg, env, kind, None, errors).await,
        };
        let Some(stored) = self.store.get(&self.backend, &urn).await? else {
            if let Some(pending) = pending_creation(&self.backend, &self.config.requests_table, &urn.uuid.to_string()).await? {
                return self.wait_behind(msg, env, kind, event.priority, &urn, &pending).await;
            }
            return self.deny(msg, env, kind, None, vec![format!("urn: no feature {urn}")]).await;
        };
        if self.park_if_early(msg, env, kind, event.priority, None, stored.session.as_ref()).await? {
            return Ok(());
        }
        let mut record = self.record(msg, env, kind, RequestState::Success, "DONE");
        self.keep_parked_session(env, &mut record).await?;
        let (session_owner, session) = stored.session.clone().unzip();
        let mut notification = serde_json::json!({
            "metadata": {
                "action": "NOTIFIED",
                "sessionOwner": session_owner,
                "session": session,
                "requestId": env.request_id,
                "requestOwner": env.owner,
            },
            "payload": stored.feature,
        });
        if !event.recipients.is_empty() {
            notification["recipients"] = serde_json::json!(event.recipients);
        }
        let mut events = self.done_events(kind, env, &stored.urn, None);
        events.push(OutboxEvent {
            event_id: format!("{}:NOTIFIED:{}", stored.urn, env.request_id),
            queue: self.config.notification_queue.clone(),
            body: notification.to_string(),
        });
        match self.store.notify(&self.backend, &stored, record, events).await? {
            ChangeOutcome::Done { events, .. } => {
                tracing::info!(request_id = %env.request_id, %urn, "feature notified");
                env.defer(&events);
                Ok(())
            }
            ChangeOutcome::UnknownUrn => self.deny(msg, env, kind, None, vec![format!("urn: no feature {urn}")]).await,
            ChangeOutcome::AlreadyRecorded(existing) => self.on_known_request(msg, env, &existing).await,
        }
    }

    /// Parks a patch or deletion of `urn` behind the creation `pending` of its feature, with GRANTED
    /// the first time; delayed-release sends it back once the creation is due, and again every
    /// [`WAIT_RETRY_MS`] while the creation has not finished.
    async fn wait_behind(
        &self,
        msg: &SqsMessage,
        env: &Envelope,
        kind: FeatureRequestType,
        priority: Priority,
        urn: &Urn,
        pending: &PendingCreation,
    ) -> Result<(), StoreError> {
        let now = self.backend.clock.now_ms();
        let own_date = match &env.date {
            Some(Ok(d)) if !env.released => d.timestamp_millis(),
            _ => 0,
        };
        let due_at = (pending.due_at + 1).max(now + WAIT_RETRY_MS).max(own_date);
        let mut record = self.record(msg, env, kind, RequestState::Granted, "LOCAL_DELAYED");
        record.urn = Some(urn.to_string());
        record.waiting_for = Some(pending.request_id.clone());
        if let Some((owner, name)) = &pending.session {
            record.session_owner = Some(owner.clone());
            record.session = Some(name.clone());
        }
        let parked = Parked {
            due_at,
            queue: self.config.feature_queue(priority).to_owned(),
            body: msg.body.clone().unwrap_or_default(),
            attributes: env.parked_attributes(),
        };
        let events =
            if env.released { vec![] } else { vec![self.event(kind, env, RequestState::Granted, Some(&urn.to_string()), None, vec![])] };
        match self.store.park(&self.backend, &record, &parked, &events).await? {
            None => {
                tracing::info!(request_id = %env.request_id, %urn, creation = %pending.request_id, "waiting behind the feature's creation");
                env.defer(&events);
                Ok(())
            }
            Some(existing) => self.on_known_request(msg, env, &existing).await,
        }
    }

    /// Applies a validated patch (or, without one, the deletion) of `urn`. A patch naming an
    /// `acknowledged` recipient acknowledges the feature for it (an acknowledgement staged with the
    /// patch, for the acknowledgement function, as REGARDS's internal DisseminationAckEvent).
    async fn apply_change(
        &self,
        msg: &SqsMessage,
        env: &Envelope,
        kind: FeatureRequestType,
        urn: &Urn,
        patch: Option<PatchChange<'_>>,
        acknowledged: Option<&str>,
    ) -> Result<(), StoreError> {
        let mut record = self.record(msg, env, kind, RequestState::Success, "DONE");
        self.keep_parked_session(env, &mut record).await?;
        let waits_for_storage = patch.as_ref().is_some_and(|p| p.storage.is_some());
        if waits_for_storage {
            // Not done until storage has confirmed every file: GRANTED now, SUCCESS from storage-ready.
            record.state = RequestState::Granted;
            record.step = STORAGE_STEP.into();
        }
        let make_events = |urn: &str| {
            let mut events = self.done_events(kind, env, urn, None);
            if waits_for_storage {
                events.retain(|e| !e.event_id.ends_with(":SUCCESS"));
            }
            if let Some(label) = acknowledged {
                events.push(OutboxEvent {
                    event_id: format!("{urn}:ACK:{label}:{}", env.request_id),
                    queue: self.config.ack_queue.clone(),
                    body: serde_json::json!({ "urn": urn, "recipientLabel": label }).to_string(),
                });
            }
            events
        };
        let outcome = match patch {
            Some(p) => self.store.patch(&self.backend, urn, p, record, &make_events).await?,
            None => self.store.delete(&self.backend, urn, record, &make_events).await?,
        };
        match outcome {
            ChangeOutcome::Done { events, action } => {
                tracing::info!(request_id = %env.request_id, %urn, action, "feature changed");
                env.defer(&events);
                Ok(())
            }
            ChangeOutcome::UnknownUrn => self.deny(msg, env, kind, None, vec![format!("feature.urn: no feature {urn}")]).await,
            ChangeOutcome::AlreadyRecorded(existing) => self.on_known_request(msg, env, &existing).await,
        }
    }

    /// Which of `feature`'s files go to which of the locations in force, or what is wrong with `storages`.
    async fn plan(&self, feature: &Value, storages: &[StorageMetadata]) -> Result<Result<Vec<FileToStore>, Vec<String>>, StoreError> {
        if storages.is_empty() {
            return Ok(Ok(vec![]));
        }
        let names: Vec<&str> = storages.iter().map(|s| s.plugin_business_id.as_str()).collect();
        let locations = self.locations.get(&self.backend, &names).await?;
        Ok(plan_storage(feature, storages, &locations).and_then(|files| {
            let refused = self.refused_sources(&files);
            if refused.is_empty() { Ok(files) } else { Err(refused) }
        }))
    }

    /// The files whose source the storage worker would refuse anyway: denied at once, with the reason,
    /// rather than granted and failed later.
    fn refused_sources(&self, files: &[FileToStore]) -> Vec<String> {
        let mut errors = Vec::new();
        for f in files {
            let at = format!("feature.files ({}).locations[0].url", f.filename);
            let Ok(url) = url::Url::parse(&f.source) else {
                errors.push(format!("{at}: {:?} is not a URL", f.source));
                continue;
            };
            let refusal = match url.scheme() {
                // Lexically here (the worker resolves links and checks again): a path with `..` or
                // outside every root is refused.
                "file" => match url.to_file_path() {
                    Ok(path)
                        if !path.components().any(|c| c == std::path::Component::ParentDir)
                            && self.config.storage_file_roots.iter().any(|root| path.starts_with(root)) =>
                    {
                        None
                    }
                    _ => Some("file:// sources are read only under the directories of GRANARY_STORAGE_FILE_ROOTS".to_owned()),
                },
                "s3" => {
                    let bucket = url.host_str().unwrap_or_default();
                    (!self.config.source_bucket_allowed(bucket))
                        .then(|| format!("bucket {bucket} is not one Granary may read files from (GRANARY_STORAGE_SOURCE_BUCKETS)"))
                }
                "http" | "https" => self.config.outbound.as_ref().ok().and_then(|policy| policy.check_url(&url).err()),
                other => Some(format!("scheme {other}:// is not one Granary copies from (file, http, https, s3)")),
            };
            if let Some(why) = refusal
                && !errors.iter().any(|e: &String| e.starts_with(&at))
            {
                errors.push(format!("{at}: {why}"));
            }
        }
        errors
    }

    /// The storage step of a request with `files` to store, none without.
    fn pending_storage(&self, files: Vec<FileToStore>) -> Option<PendingStorage> {
        (!files.is_empty()).then(|| PendingStorage {
            files,
            timeout_ms: i64::try_from(self.config.storage_timeout_secs.saturating_mul(1000)).unwrap_or(i64::MAX),
            jobs_queue: self.config.storage_jobs_queue.clone(),
        })
    }

    /// A creation of the next version of a providerId.
    async fn create(&self, msg: &SqsMessage, env: &Envelope, body: Value) -> Result<(), StoreError> {
        let kind = FeatureRequestType::Creation;
        let (event, valid) = match parse_creation(&body) {
            Ok(parsed) => parsed,
            Err(errors) => {
                let provider_id = body.pointer("/feature/id").and_then(Value::as_str).map(str::to_owned);
                return self.deny(msg, env, kind, provider_id, errors).await;
            }
        };
        // The mode matters to patches only, but a wrong one is an error wherever it is sent.
        if let Err(error) = FileUpdateMode::parse(env.attributes.get(ATTR_FILE_UPDATE_MODE).map(String::as_str)) {
            return self.deny(msg, env, kind, Some(valid.provider_id.clone()), vec![error]).await;
        }
        let mut record = self.record(msg, env, kind, RequestState::Success, "DONE");
        record.provider_id = Some(valid.provider_id.clone());
        record.action = Some("CREATED".into());
        let properties = event.feature.get("properties").cloned().unwrap_or(Value::Null);
        let model_errors = self.model_errors(&valid.model, Some(valid.entity_type), &properties, Mode::Creation).await?;
        if !model_errors.is_empty() {
            return self.deny(msg, env, kind, Some(valid.provider_id.clone()), model_errors).await;
        }
        // A creation may name its URN: it must be this providerId's, and new unless updateIfExists
        // turns the creation into a patch of it.
        let supplied = match event.feature.get("urn").and_then(Value::as_str) {
            None => None,
            Some(text) => match text.parse::<Urn>() {
                Err(e) => return self.deny(msg, env, kind, Some(valid.provider_id.clone()), vec![format!("feature.urn: {e}")]).await,
                Ok(urn) => {
                    let expected = Urn::new(valid.entity_type, &self.config.tenant, &valid.provider_id, urn.version).ok();
                    if expected.as_ref() != Some(&urn) {
                        let error = format!(
                            "feature.urn: {urn} is not a URN of providerId {:?} ({})",
                            valid.provider_id,
                            valid.entity_type.as_str()
                        );
                        return self.deny(msg, env, kind, Some(valid.provider_id.clone()), vec![error]).await;
                    }
                    if self.store.get(&self.backend, &urn).await?.is_some() {
                        if event.metadata.update_if_exists {
                            let mut metadata = serde_json::json!({ "priority": event.metadata.priority });
                            if let Some(label) = &event.metadata.acknowledged_recipient {
                                metadata["acknowledgedRecipient"] = Value::from(label.clone());
                            }
                            let patch = serde_json::json!({ "feature": event.feature, "metadata": metadata });
                            return self.change(msg, env, FeatureRequestType::Patch, patch).await;
                        }
                        let error = format!("feature.urn: {urn} already exists (set metadata.updateIfExists to patch it)");
                        return self.deny(msg, env, kind, Some(valid.provider_id.clone()), vec![error]).await;
                    }
                    Some(urn)
                }
            },
        };
        let to_store = match self.plan(&event.feature, &event.metadata.storages).await? {
            Ok(files) => files,
            Err(errors) => return self.deny(msg, env, kind, Some(valid.provider_id.clone()), errors).await,
        };
        if self.park_if_early(msg, env, kind, event.metadata.priority, Some(&valid.provider_id), None).await? {
            return Ok(());
        }
        let storage = self.pending_storage(to_store);
        if storage.is_some() {
            // Not done until storage has confirmed every file: GRANTED now, SUCCESS from storage-ready.
            record.state = RequestState::Granted;
            record.step = STORAGE_STEP.into();
        }
        let waits_for_storage = storage.is_some();
        let make_events = |urn: &str| {
            let mut events = self.done_events(kind, env, urn, Some(&valid.provider_id));
            if waits_for_storage {
                events.retain(|e| !e.event_id.ends_with(":SUCCESS"));
            }
            events
        };
        let outcome = self
            .store
            .create_next_version(
                &self.backend,
                NewVersion {
                    tenant: &self.config.tenant,
                    provider_id: &valid.provider_id,
                    entity_type: valid.entity_type,
                    feature: &event.feature,
                    request: record,
                    events: &make_events,
                    version: supplied.as_ref().map(|u| u.version),
                    override_previous: event.metadata.override_previous,
                    storage,
                },
            )
            .await;
        match outcome {
            Ok(CreationOutcome::Created { urn, events }) => {
                tracing::info!(request_id = %env.request_id, %urn, "feature created");
                env.defer(&events);
                Ok(())
            }
            Ok(CreationOutcome::AlreadyRecorded(existing)) => self.on_known_request(msg, env, &existing).await,
            Err(StoreError::VersionsExhausted(p)) => {
                self.deny(msg, env, kind, Some(p.clone()), vec![format!("feature.id: providerId {p:?} already has 999 versions")]).await
            }
            Err(StoreError::VersionNotAfterLatest { provider_id, supplied, latest }) => {
                let error = format!("feature.urn: version {supplied} is not after the latest version {latest}");
                self.deny(msg, env, kind, Some(provider_id), vec![error]).await
            }
            Err(e) => Err(e),
        }
    }
}
