//! Fixtures for the function crates' tests (a dev-dependency only): an embedded site on a temporary
//! directory with a manual clock, features ingested through the real feature-ingest handler, queues
//! drained, and HTTP handlers' answers read as JSON.

use feature_ingest::FeatureIngest;
use granary_embedded::{Embedded, EmbeddedOptions};
use granary_lambda::Config;
use granary_lambda::sqs::sqs_event;
use granary_ports::{Backend, ManualClock, ReceivedMessage};
use lambda_runtime::{Context, LambdaEvent};
use serde_json::{Value, json};
use std::sync::Arc;
use std::time::Duration;

/// An embedded site: the backend, its clock, and ingest.
pub struct Site {
    /// Holds the data directory for the site's life.
    pub dir: tempfile::TempDir,
    /// The ports.
    pub backend: Backend,
    /// The clock every port reads; tests move it.
    pub clock: Arc<ManualClock>,
    /// The configuration every handler is built with.
    pub config: Config,
    ingest: FeatureIngest,
    requests: std::sync::atomic::AtomicU64,
}

impl Site {
    /// A fresh site with `config`, and an open model `M` of each entity type (DATA and DATASET).
    pub async fn new(config: Config) -> Self {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let resources = granary_resources::from_template(granary_resources::TEMPLATE, |_| None).expect("the template's resources");
        let clock = Arc::new(ManualClock::starting_now());
        let mut options = EmbeddedOptions::new(dir.path().join("data"), resources);
        options.clock = clock.clone();
        let backend = Embedded::open(options).expect("an embedded backend").backend();
        for (name, kind) in [("M", "DATA"), ("DS_MODEL", "DATASET")] {
            let model = json!({"type": "object", "x-granary-type": kind});
            let compiled = granary_domain::model::compile_model(name, &model).expect("an open model");
            granary_stores::models::ModelStore::new(&config.features_table)
                .put(&backend, &model, &compiled, "admin")
                .await
                .expect("model stored");
        }
        let ingest = FeatureIngest::new(backend.clone(), config.clone());
        Self { dir, backend, clock, config, ingest, requests: Default::default() }
    }

    /// Creates each feature through feature-ingest (one message each); panics unless each succeeds.
    /// Returns their URNs.
    pub async fn create(&self, features: &[Value]) -> Vec<String> {
        let mut urns = Vec::new();
        for chunk in features.chunks(10) {
            let messages: Vec<ReceivedMessage> = chunk
                .iter()
                .map(|f| {
                    let n = self.requests.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    let id = format!("req-{n}-{}", f["id"].as_str().unwrap_or("x"));
                    let body = json!({"metadata": {"sessionOwner": "test", "session": "s1"}, "feature": f}).to_string();
                    message(&id, &body)
                })
                .collect();
            let event = sqs_event("feature-high", &messages).expect("an SQS event");
            let r = self.ingest.handle(LambdaEvent::new(event, Context::default())).await.expect("ingest runs");
            assert!(r.batch_item_failures.is_empty(), "ingest failed a creation");
            for f in chunk {
                let latest = granary_stores::features::FeatureStore::new(&self.config.features_table, &self.config.requests_table)
                    .latest_version(&self.backend, f["id"].as_str().unwrap_or_default())
                    .await
                    .expect("latest version");
                assert!(latest > 0, "feature {} was not created", f["id"]);
                let kind: granary_domain::EntityType =
                    serde_json::from_value(f["entityType"].clone()).unwrap_or(granary_domain::EntityType::Data);
                urns.push(
                    granary_domain::Urn::new(kind, &self.config.tenant, f["id"].as_str().unwrap_or_default(), latest)
                        .expect("a URN")
                        .to_string(),
                );
            }
        }
        urns
    }

    /// Delivers raw feature-ingest messages `(id, body, attributes)` at once.
    pub async fn ingest_raw(&self, messages: &[ReceivedMessage]) {
        let event = sqs_event("feature-high", messages).expect("an SQS event");
        let r = self.ingest.handle(LambdaEvent::new(event, Context::default())).await.expect("ingest runs");
        assert!(r.batch_item_failures.is_empty(), "ingest failed a message");
    }

    /// Takes every message of `queue`, deleting them.
    pub async fn drain(&self, queue: &str) -> Vec<ReceivedMessage> {
        let mut out = Vec::new();
        loop {
            let got = self.backend.queue.receive(queue, 10, None, Duration::ZERO).await.expect("receive");
            if got.is_empty() {
                return out;
            }
            self.backend.queue.delete_batch(queue, got.iter().map(|m| m.receipt_handle.clone()).collect()).await.expect("delete");
            out.extend(got);
        }
    }
}

/// An SQS message as a handler receives it.
pub fn message(id: &str, body: &str) -> ReceivedMessage {
    ReceivedMessage {
        message_id: id.into(),
        receipt_handle: format!("{id}.1"),
        body: body.into(),
        attributes: [("regards.request.id".to_owned(), id.to_owned())].into_iter().collect(),
        receive_count: 1,
        sent_at_ms: 0,
    }
}

/// A file entry of a feature: a reference at `url`, or, with `storage`, a stored copy there too.
pub fn file(name: &str, data_type: &str, size: u64, checksum: &str, url: &str, storage: Option<&str>) -> Value {
    let mut locations = vec![json!({"url": url})];
    if let Some(s) = storage {
        locations = vec![json!({"storage": s, "url": url})];
    }
    json!({"locations": locations,
           "attributes": {"dataType": data_type, "mimeType": "application/octet-stream", "filename": name,
                          "filesize": size, "algorithm": "MD5", "checksum": checksum}})
}

/// A dataset feature (model `DS_MODEL`) readable by `groups`.
pub fn dataset(id: &str, groups: &[&str], files: Vec<Value>) -> Value {
    json!({"type": "Feature", "id": id, "entityType": "DATASET", "model": "DS_MODEL", "geometry": null,
           "properties": {"label": format!("{id} label"), "accessGroups": groups}, "files": files})
}

/// A product (model `M`) of the datasets `tags`.
pub fn product(id: &str, tags: &[&str], properties: Value, geometry: Value, files: Vec<Value>) -> Value {
    json!({"type": "Feature", "id": id, "entityType": "DATA", "model": "M", "tags": tags, "geometry": geometry,
           "properties": properties, "files": files})
}

/// Answers a handler's response as `(status, JSON body)` (`Null` for an empty body).
pub fn answer(response: lambda_http::Response<lambda_http::Body>) -> (u16, Value) {
    let status = response.status().as_u16();
    let body = match response.body() {
        lambda_http::Body::Text(t) => serde_json::from_str(t).unwrap_or_else(|_| Value::from(t.clone())),
        lambda_http::Body::Binary(b) => serde_json::from_slice(b).unwrap_or(Value::Null),
        _ => Value::Null,
    };
    (status, body)
}
